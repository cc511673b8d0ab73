// SPDX-License-Identifier: Apache-2.0
//! One node with the e1000 config, booted in sequence; each scenario asserts on its part:
//!
//! 1. boots 1-2, **first apply**: boot 1 on the in-tree e1000, the pull stores the image
//!    and reboots once; boot 2 swaps to the out-of-tree e1000 before NetworkManager.
//! 2. boot 3, **cached boot**: no blob of the running kernel's image downloaded, no reboot
//!    asked by kmod-day1-pull, swap before NetworkManager. After its final markers a kernel
//!    update is installed as a package manager and `kernel-install` do (files, then the boot
//!    entry; until then the node has no trace of that kernel), and the node reboots.
//! 3. boot 4, **kernel upgrade**: the node boots the new kernel's entry; the stop step fetched
//!    its image during boot 3's shutdown, so the swap happens on that first boot without a
//!    reboot or a download.
//! 4. boot 5, **baseline** for the bench: `kmod_day1.disable` on the base kernel.
//!
//! Reusing one node is honest here: each step starts from the state the previous left,
//! which is exactly the sequence a real node goes through.

use anyhow::Result;
use kmod_day1_contract::SetState;

use crate::bench;
use crate::lab::{Lab, NodeOptions};
use crate::node_config::{module_set, NodeConfigFile};
use crate::qemu::{BootEnd, Machine};
use crate::registry::blob_downloads;
use crate::scenarios::facts::{check_end, check_network, check_oot_before_nm, BootFacts};
use crate::scenarios::report::Report;

/// How far to take the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Boots 1-2.
    FirstApply,
    /// + boot 3.
    Cached,
    /// + boot 4.
    Upgrade,
    /// + boot 5.
    Baseline,
}

/// The node and what the registry saw during each boot.
pub struct E1000Node {
    /// The machine and its boots.
    pub machine: Machine,
    /// Registry log lines written during each boot (same index as the boots).
    pub registry: Vec<String>,
    /// Boots of the first apply (until the first power-off).
    pub first_apply_boots: usize,
    /// Layer digests of the running (base) kernel's image.
    pub base_layers: Vec<String>,
}

/// The config: swap e1000 for the image tagged with the kernel release.
pub fn config(lab: &Lab) -> NodeConfigFile {
    NodeConfigFile {
        name: "99-kd1-e1000".into(),
        module_sets: vec![module_set(
            "e1000",
            &lab.image_ref("kd1/e1000"),
            &[("e1000", &[])],
            &["e1000"],
        )],
    }
}

/// Boots one more time, recording the registry log lines of that boot.
pub fn boot_logged(
    lab: &Lab,
    m: &mut Machine,
    reg: &mut Vec<String>,
    cut: &mut dyn FnMut() -> bool,
) -> Result<BootEnd> {
    let before = lab.registry.log().len();
    let end = m.boot(cut)?.end.clone();
    reg.push(
        lab.registry
            .log()
            .get(before..)
            .unwrap_or_default()
            .to_owned(),
    );
    Ok(end)
}

/// Runs the node up to `stage`.
pub fn run(lab: &Lab, stage: Stage) -> Result<E1000Node> {
    let mut machine = lab.node(
        "e1000",
        &NodeOptions {
            configs: vec![config(lab)],
            // The newer kernel arrives as an update during the cached boot, not before.
            kernel_update: Some(lab.img.upgrade.release.clone()),
            ..NodeOptions::default()
        },
    )?;
    let mut registry = vec![];
    for _ in 0..3 {
        if boot_logged(lab, &mut machine, &mut registry, &mut || false)? != BootEnd::Reboot {
            break;
        }
    }
    let first_apply_boots = machine.boots.len();
    let healthy = machine.boots.last().map(|b| b.end == BootEnd::PowerOff) == Some(true);
    if stage >= Stage::Cached && healthy {
        // The cached boot installs the kernel update (files, then its boot entry) after its
        // pull, and reboots: the stop step fetches the new kernel's image at that shutdown.
        machine.extra_cmdline = if stage >= Stage::Upgrade {
            "kd1.install_kernel_update".into()
        } else {
            String::new()
        };
        boot_logged(lab, &mut machine, &mut registry, &mut || false)?;
        machine.extra_cmdline.clear();
    }
    if stage >= Stage::Upgrade && healthy {
        // The boot loader's default entry is now the new kernel's (written by the update).
        machine.kernel = lab.img.upgrade.clone();
        boot_logged(lab, &mut machine, &mut registry, &mut || false)?;
        machine.kernel = lab.img.base.clone();
    }
    if stage >= Stage::Baseline && healthy {
        machine.extra_cmdline = "kmod_day1.disable".into();
        boot_logged(lab, &mut machine, &mut registry, &mut || false)?;
        machine.extra_cmdline.clear();
    }
    let base_layers = base_layers(lab);
    Ok(E1000Node {
        machine,
        registry,
        first_apply_boots,
        base_layers,
    })
}

/// Layer digests of the base kernel's `kd1/e1000` image (what a cached boot must not fetch).
pub fn base_layers(lab: &Lab) -> Vec<String> {
    lab.images
        .get(&format!("kd1/e1000:{}", lab.img.base.release))
        .map(|i| i.layers.clone())
        .unwrap_or_default()
}

/// Scenario 1: first apply.
pub fn first_apply(n: &E1000Node) -> Report {
    let mut r = Report::new("first-apply");
    let boots = &n.machine.boots;
    r.check(
        "first apply takes exactly one reboot (2 boots)",
        n.first_apply_boots == 2,
        format!(
            "{} boots: {:?}",
            n.first_apply_boots,
            boots.iter().map(|b| &b.end).collect::<Vec<_>>()
        ),
        || {
            boots
                .iter()
                .map(|b| b.summary())
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
    r.fact(
        "reboots for a first apply",
        format!("{} (KMM needs 2)", n.first_apply_boots.saturating_sub(1)),
    );
    let Some(b1) = boots.first() else {
        r.error = Some("no boot happened".into());
        return r;
    };
    check_end(&mut r, b1, BootEnd::Reboot);
    let f1 = BootFacts::prepull(b1);
    r.check(
        "boot 1: in-tree e1000 and network up before the pull downloaded",
        f1.in_tree_link_before_pull(),
        format!("e1000 version {}, eth0 {}", f1.e1000_version(), f1.ipv4()),
        || f1.excerpt("e1000"),
    );
    r.check(
        "boot 1: the loader found nothing stored",
        f1.set_state("e1000") == Some(SetState::NotStored),
        format!("status: {:?}", f1.set_state("e1000")),
        || {
            f1.file("status")
                .unwrap_or_else(|| f1.excerpt("kmod-day1-load"))
        },
    );
    let blobs = n
        .registry
        .first()
        .map(|l| blob_downloads(l).len())
        .unwrap_or(0);
    r.check(
        "boot 1: the pull downloaded the image",
        blobs > 0,
        format!("{blobs} blob downloads"),
        || f1.excerpt("kmod-day1-pull"),
    );
    let Some(b2) = boots.get(1) else {
        r.error = Some("no second boot".into());
        return r;
    };
    check_end(&mut r, b2, BootEnd::PowerOff);
    let f2 = BootFacts::new(b2);
    check_oot_before_nm(&mut r, &f2);
    r.check(
        "boot 2: status says loaded",
        f2.set_state("e1000") == Some(SetState::Loaded),
        format!("status: {:?}", f2.set_state("e1000")),
        || f2.file("status").unwrap_or_default(),
    );
    r.check(
        "boot 2: kmod-day1-pull succeeded without a reboot",
        f2.unit_prop("kmod-day1-pull.service", "Result").as_deref() == Some("success"),
        format!(
            "pull Result={:?} ExecMainStatus={:?}",
            f2.unit_prop("kmod-day1-pull.service", "Result"),
            f2.unit_prop("kmod-day1-pull.service", "ExecMainStatus")
        ),
        || f2.journal(),
    );
    r
}

/// Scenario 2: cached boot.
pub fn cached_boot(n: &E1000Node) -> Report {
    let mut r = Report::new("cached-boot");
    let Some(b) = n.machine.boots.get(n.first_apply_boots) else {
        r.error = Some(format!(
            "the cached boot did not happen (first apply: {} boots)",
            n.first_apply_boots
        ));
        return r;
    };
    let f = BootFacts::new(b);
    if f.get("kernel_update_installed").is_some() {
        // The kernel update's reboot, not the pull's.
        check_end(&mut r, b, BootEnd::Reboot);
        let last_pull = f.file("last_pull").unwrap_or_default();
        r.check(
            "the reboot is the kernel update's: the pull asked for none",
            f.get("end") == Some("kernel-update") && !last_pull.contains("\"requested\""),
            format!("final marker end={:?}", f.get("end")),
            || last_pull.clone(),
        );
    } else {
        check_end(&mut r, b, BootEnd::PowerOff);
    }
    check_oot_before_nm(&mut r, &f);
    let seg = n
        .registry
        .get(n.first_apply_boots)
        .map(String::as_str)
        .unwrap_or_default();
    // The stop step may fetch the new kernel's image at this boot's shutdown: only the
    // running kernel's blobs count.
    let blobs: Vec<String> = blob_downloads(seg)
        .into_iter()
        .filter(|l| {
            n.base_layers.is_empty() || n.base_layers.iter().any(|d| l.contains(d.as_str()))
        })
        .collect();
    r.check(
        "no blob of the running kernel's image downloaded",
        blobs.is_empty(),
        format!("{} blob downloads", blobs.len()),
        || blobs.join("\n"),
    );
    r.check(
        "status says loaded",
        f.set_state("e1000") == Some(SetState::Loaded),
        format!("{:?}", f.set_state("e1000")),
        || f.file("status").unwrap_or_default(),
    );
    r
}

/// Scenario 7: kernel upgrade without an extra reboot.
pub fn kernel_upgrade(n: &E1000Node, upgrade_kernel: &str) -> Report {
    let mut r = Report::new("kernel-upgrade");
    let idx = n.first_apply_boots + 1;
    let Some(b) = n.machine.boots.get(idx) else {
        r.error = Some("the boot on the upgraded kernel did not happen".into());
        return r;
    };
    r.check(
        "the boot runs the upgraded kernel",
        b.kernel == upgrade_kernel && BootFacts::new(b).get("uname") == Some(upgrade_kernel),
        format!(
            "booted {}, uname {:?}",
            b.kernel,
            BootFacts::new(b).get("uname")
        ),
        || BootFacts::new(b).excerpt("Linux version"),
    );
    // The update as a real node gets it: no trace of the new kernel until the previous
    // boot installed it, after that boot's pull.
    let before = &n.machine.boots[idx - 1];
    let (pre, fin) = (BootFacts::prepull(before), BootFacts::new(before));
    let entries = |f: &BootFacts| f.file("boot_entries").unwrap_or_default();
    let after = fin.get("entries_after_update").unwrap_or_default();
    r.check(
        "the new kernel's boot entry appeared during the previous boot, after its pull",
        !entries(&pre).contains(upgrade_kernel)
            && !entries(&fin).contains(upgrade_kernel)
            && after.contains(upgrade_kernel)
            && fin.get("kernel_update_installed") == Some(upgrade_kernel),
        format!(
            "boot {} entries before the pull: {:?}; after the update: {after:?}",
            before.number,
            entries(&pre).lines().collect::<Vec<_>>(),
        ),
        || fin.excerpt("kd1-kernel-update"),
    );
    // The prefetch: the stop step fetched the new kernel's image at that boot's shutdown.
    let stop_lines: Vec<&str> = before
        .serial
        .lines()
        .filter(|l| l.contains("kmod-day1-pull") && l.contains(upgrade_kernel))
        .collect();
    r.check(
        "the stop step fetched the new kernel's image during the previous boot's shutdown",
        stop_lines.iter().any(|l| l.contains("committed"))
            && fin.file("store").is_some_and(|s| {
                !s.lines()
                    .any(|l| l.contains("/refs/") && l.contains(upgrade_kernel))
            }),
        format!(
            "{} stop-step lines naming {upgrade_kernel}; no ref for it before the shutdown",
            stop_lines.len()
        ),
        || stop_lines.join("\n"),
    );
    let f = BootFacts::new(b);
    let verdict = f.status().and_then(|s| s.preflight).map(|p| {
        p.sets
            .iter()
            .map(|s| format!("{}/{}: {}", s.config, s.set, s.state))
            .collect::<Vec<_>>()
    });
    r.check(
        "its status carries the upgrade preflight made before the reboot: would swap",
        verdict
            .as_ref()
            .is_some_and(|v| !v.is_empty() && v.iter().all(|s| s.ends_with("wouldSwap"))),
        format!("{verdict:?}"),
        || f.file("status").unwrap_or_default(),
    );
    if let Some(p) = f.status().and_then(|s| s.preflight) {
        for s in p.sets {
            if let Some(v) = s.symbol_versions {
                // Debian ships no symvers with its kernels: said, not compared.
                r.fact(
                    &format!("{}/{} symbol versions", s.config, s.set),
                    v.summary(),
                );
            }
        }
    }
    check_end(&mut r, b, BootEnd::PowerOff);
    check_oot_before_nm(&mut r, &f);
    let seg = n.registry.get(idx).map(String::as_str).unwrap_or_default();
    r.check(
        "no blob downloaded on the new kernel's first boot",
        blob_downloads(seg).is_empty(),
        format!("{} blob downloads", blob_downloads(seg).len()),
        || blob_downloads(seg).join("\n"),
    );
    r.fact(
        "extra reboots for a kernel upgrade",
        format!("{} (KMM needs 1)", usize::from(b.end == BootEnd::Reboot)),
    );
    r
}

/// The baseline boot (kmod-day1 disabled), for the bench; checked like a plain boot.
pub fn baseline(n: &E1000Node) -> Report {
    let mut r = Report::new("baseline-disabled");
    let Some(b) = n.machine.boots.get(n.first_apply_boots + 2) else {
        r.error = Some("the baseline boot did not happen".into());
        return r;
    };
    check_end(&mut r, b, BootEnd::PowerOff);
    let f = BootFacts::new(b);
    r.check(
        "kmod_day1.disable: in-tree e1000, loader skipped",
        !f.oot_e1000() && f.file("status").is_none(),
        format!(
            "e1000 version {}, status file {}",
            f.e1000_version(),
            if f.file("status").is_some() {
                "present"
            } else {
                "absent"
            }
        ),
        || f.journal(),
    );
    check_network(&mut r, &f);
    r
}

/// The timings of the bench's life of this node: boot milestones, with and without
/// kmod-day1, reboots per first apply and per kernel upgrade.
pub fn timings(n: &E1000Node) -> String {
    let mut t = String::new();
    let b = &n.machine.boots;
    let fa = n.first_apply_boots;
    t.push_str("boot milestones (seconds since kernel start, TCG):\n");
    for (label, i) in [
        ("first apply, in-tree boot", 0),
        ("first apply, swap boot", 1),
        ("cached boot", fa),
        ("upgraded kernel, first boot", fa + 1),
        ("kmod_day1.disable", fa + 2),
    ] {
        if let Some(boot) = b.get(i) {
            t.push_str(&bench::milestones(label, boot));
        }
    }
    if let (Some(with), Some(without)) = (b.get(fa), b.get(fa + 2)) {
        t.push_str("with / without kmod-day1 (cached boot vs kmod_day1.disable, same node):\n");
        t.push_str(&bench::ratio(with, without));
    }
    t.push_str(&format!(
        "reboots: first apply {} (KMM: 2), kernel upgrade {} extra (KMM: 1)\n",
        fa.saturating_sub(1),
        b.get(fa + 1)
            .map_or("?".into(), |x| usize::from(x.end == BootEnd::Reboot)
                .to_string())
    ));
    t
}
