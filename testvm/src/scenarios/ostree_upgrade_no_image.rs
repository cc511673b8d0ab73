// SPDX-License-Identifier: Apache-2.0
//! Scenario **ostree-upgrade-no-image** (issue 9): an OS update to a kernel nobody built the
//! kmod image for, the commonest way a fleet meets a new kernel too early. The RHCOS-like
//! node's config names `kd1/e1000-base-only`, pushed for the base kernel only:
//!
//! 1. boot 1: first apply on the in-tree driver, the pull stores the base kernel's image and
//!    asks its guarded reboot;
//! 2. boot 2: the out-of-tree driver; then MCO's OS update is staged (`ostree admin deploy
//!    --stage`) and the node reboots. At that shutdown the pull's stop step finds no image for
//!    the new kernel (the registry answers 404) and the upgrade preflight says so, one
//!    warning line, before the reboot;
//! 3. boots 3 and 4, the new kernel: the in-tree e1000 and the network; the loader's status
//!    says the set is not stored and carries the preflight's verdict; the pull fails without
//!    asking a reboot; no reboot loop.

use anyhow::Result;
use kmod_day1_contract::SetState;

use crate::bls_boot::Choice;
use crate::kmod_image::{self, ImageSpec};
use crate::lab::Lab;
use crate::node_config::{module_set, NodeConfigFile};
use crate::qemu::BootEnd;
use crate::scenarios::facts::{check_boot_ends, check_network, check_oot_before_nm, BootFacts};
use crate::scenarios::ostree_node::{check_ostree_boot, OstreeNode};
use crate::scenarios::report::Report;

/// The repository that holds an image for the base kernel only.
const REPO: &str = "kd1/e1000-base-only";

/// Runs the scenario.
pub fn run(lab: &mut Lab) -> Result<Report> {
    let mut r = Report::new("ostree-upgrade-no-image");
    let (base, upgrade) = (
        lab.img.base.release.clone(),
        lab.img.upgrade.release.clone(),
    );
    let work = lab.dirs.fresh_work_dir("images-base-only")?;
    let e1000 = lab
        .modules
        .get(&base)
        .map(|m| m.e1000.clone())
        .ok_or_else(|| anyhow::anyhow!("no modules built for {base}"))?;
    kmod_image::build_and_push(
        &ImageSpec {
            repo: REPO.into(),
            kernel: base.clone(),
            modules: vec![e1000],
            files: vec![],
        },
        &work,
        &lab.registry.host_addr(),
    )?;
    let config = NodeConfigFile {
        name: "99-kd1-e1000".into(),
        module_sets: vec![module_set(
            "e1000",
            &lab.image_ref(REPO),
            &[("e1000", &[])],
            &["e1000"],
        )],
    };
    let mut n = OstreeNode::new(lab, "ostree-noimg", vec![config])?;
    // Boot 1 asks its reboot; boot 2 stages the update (and reboots); boots 3-4 are the new
    // kernel's. A boot that ends otherwise stops the sequence: the checks say which.
    for (extra, want) in [
        ("", BootEnd::Reboot),
        ("kd1.stage_os_update", BootEnd::Reboot),
        ("", BootEnd::PowerOff),
        ("", BootEnd::PowerOff),
    ] {
        if n.boot(lab, Choice::Default, extra)? != want {
            break;
        }
    }
    let boots = &n.machine.boots;
    check_boot_ends(
        &mut r,
        "first apply's reboot, the staging boot's reboot, then two power-offs (no reboot loop)",
        boots,
        0,
        &[
            BootEnd::Reboot,
            BootEnd::Reboot,
            BootEnd::PowerOff,
            BootEnd::PowerOff,
        ],
    );
    let Some(sb) = boots.get(1) else {
        r.error = Some(format!(
            "the staging boot did not happen ({} boots)",
            boots.len()
        ));
        return Ok(r);
    };
    check_oot_before_nm(&mut r, &BootFacts::new(sb));
    // The console drop-in puts the stop step's lines in the serial log, after the reboot.
    let after_reboot = sb
        .serial
        .split_once("KD1-MARK stage.reboot")
        .map_or("", |(_, a)| a);
    let preflight = after_reboot
        .lines()
        .find(|l| {
            l.contains("upgrade preflight")
                && l.contains(&format!("the node will boot {upgrade}"))
                && l.contains("in-tree driver")
        })
        .map(str::trim);
    r.check(
        &format!(
            "boot {}: after the reboot was asked, the preflight line names the new kernel and the in-tree driver",
            sb.number
        ),
        preflight.is_some(),
        preflight.unwrap_or("(no such line)").to_owned(),
        || after_reboot.lines().take(80).collect::<Vec<_>>().join("\n"),
    );
    for i in [2, 3] {
        let Some(b) = boots.get(i) else {
            continue;
        };
        let f = BootFacts::new(b);
        r.check(
            &format!("boot {}: the new kernel, on the in-tree e1000", b.number),
            f.get("uname") == Some(upgrade.as_str()) && !f.oot_e1000(),
            format!(
                "uname {:?}, e1000 version {}",
                f.get("uname"),
                f.e1000_version()
            ),
            || f.excerpt("e1000"),
        );
        check_network(&mut r, &f);
        check_ostree_boot(&mut r, &f);
        let status = f.status();
        let preflight = status.as_ref().and_then(|s| s.preflight.as_ref());
        r.check(
            &format!(
                "boot {}: status says not stored, with the preflight made before this boot",
                b.number
            ),
            f.set_state("e1000") == Some(SetState::NotStored)
                && preflight.is_some_and(|p| {
                    p.kernel_release.as_str() == upgrade
                        && p.sets.iter().any(|s| s.state == "notStored")
                }),
            format!(
                "{:?}; preflight for {:?}: {:?}",
                f.set_state("e1000"),
                preflight.map(|p| p.kernel_release.to_string()),
                preflight.map(|p| p.sets.iter().map(|s| s.state.clone()).collect::<Vec<_>>())
            ),
            || f.file("status").unwrap_or_default(),
        );
        let result = f.unit_prop("kmod-day1-pull.service", "Result");
        r.check(
            &format!(
                "boot {}: the pull fails (no image for {upgrade}) and asks no reboot",
                b.number
            ),
            result.as_deref() != Some("success") && b.end == BootEnd::PowerOff,
            format!("Result={result:?}, boot ended {:?}", b.end),
            || f.journal(),
        );
    }
    r.fact(
        "reboots after the staged update",
        boots
            .iter()
            .skip(2)
            .filter(|b| b.end == BootEnd::Reboot)
            .count()
            .to_string(),
    );
    Ok(r)
}
