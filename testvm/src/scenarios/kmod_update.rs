// SPDX-License-Identifier: Apache-2.0
//! Scenario **kmod-update** (issue 10): a new version of the kmod image rolled out to a pool
//! that runs the e1000 config already, the README's way: the prestage of the new version
//! first, then the MachineConfig, with `mcgen --output disruption-policy`.
//!
//! The node is `mco-rollout-prestaged`'s (boots 1-2: v1 applied, loaded). Its later boots
//! each apply a cluster state (`cluster_state`) as the user would between them:
//!
//! 3. **the prestage of v2** (the MachineConfig still v1): the pod stores v2 beside v1; once
//!    it is Ready, an *unrelated* reboot (an admin, a BMC);
//! 4. the node boots **v1** from the store: nothing downloaded, no reboot asked by the pull.
//!    Then **the MachineConfig of v2 with `--on-change reboot`**: MCD writes it and reboots
//!    (drained), MCO's one reboot;
//! 5. **v2** loads before NetworkManager, nothing downloaded. Then **the prestage and the
//!    MachineConfig of v3 with `--on-change next-boot`**: the pod stores v3, MCD writes the
//!    config with no reboot (policy `None` for the files, `DaemonReload` for the units), the
//!    node powers off as a node would go down at its next maintenance;
//! 6. **v3** loads, nothing downloaded.
//!
//! v3 stands for "the next version" of the `next-boot` half: the images v1, v2 and v3 hold
//! the same e1000.ko and differ by one file, so their layers and manifest digests differ
//! and the status's manifest digest says which one is loaded.
//!
//! Left out, as for the stand-ins: the API server (a state is written on the disk before the
//! first boot and applied by the boot that names it), the rollout of the DaemonSet's pods
//! across a pool (one node), MCO's merge of the pool's MachineConfigs.

use anyhow::Result;
use kmod_day1_contract::SetState;

use crate::lab::Lab;
use crate::node_config::{module_set, NodeConfigFile};
use crate::qemu::{Boot, BootEnd};
use crate::registry::blob_downloads;
use crate::scenarios::facts::{check_boot_ends, check_oot_before_nm, BootFacts};
use crate::scenarios::mco_rollout::{
    boot_until, check_mcd_rebooted, pool_output, ClusterObjects, PRESTAGED_BOOTS,
};
use crate::scenarios::ostree_node::OstreeNode;
use crate::scenarios::report::Report;

/// The kmod image repositories of v1, v2 and v3 (`Lab::push_images`).
const VERSIONS: [(&str, &str); 3] = [
    ("v1", "kd1/e1000"),
    ("v2", "kd1/e1000-v2"),
    ("v3", "kd1/e1000-v3"),
];

/// The boots after the first apply: the cluster state each applies (kernel command line)
/// and how it ends.
const UPDATE_BOOTS: [(&str, BootEnd); 4] = [
    ("kd1.cluster=2 kd1.unrelated_reboot", BootEnd::Reboot),
    ("kd1.cluster=3", BootEnd::Reboot),
    ("kd1.cluster=4", BootEnd::PowerOff),
    ("", BootEnd::PowerOff),
];

/// The e1000 config with the image of `repo`, under the name v1's config has.
fn config(lab: &Lab, repo: &str) -> NodeConfigFile {
    NodeConfigFile {
        name: "99-kd1-e1000".into(),
        module_sets: vec![module_set(
            "e1000",
            &lab.image_ref(repo),
            &[("e1000", &[])],
            &["e1000"],
        )],
    }
}

/// The cluster states 2, 3 and 4 (see the module doc).
pub fn later_states(lab: &mut Lab) -> Result<Vec<ClusterObjects>> {
    let image = lab.node_image()?;
    let v1 = config(lab, VERSIONS[0].1);
    let v2 = config(lab, VERSIONS[1].1);
    let v3 = config(lab, VERSIONS[2].1);
    let out = |cfg: &NodeConfigFile, output: &str, extra: &[&str]| {
        pool_output(lab, cfg, output, extra, &image)
    };
    let policy = |cfg: &NodeConfigFile, on_change: &str| {
        out(cfg, "disruption-policy", &["--on-change", on_change])
    };
    let prestage_v2 = out(&v2, "prestage", &[])?;
    Ok(vec![
        ClusterObjects::new(out(&v1, "machineconfig", &[])?, Some(prestage_v2.clone())),
        ClusterObjects {
            machine_config: out(&v2, "machineconfig", &[])?,
            policy: policy(&v2, "reboot")?,
            prestage: Some(prestage_v2),
        },
        ClusterObjects {
            machine_config: out(&v3, "machineconfig", &[])?,
            policy: policy(&v3, "next-boot")?,
            prestage: Some(out(&v3, "prestage", &[])?),
        },
    ])
}

/// Boots the prestaged node (after its first apply) through [`UPDATE_BOOTS`].
pub fn boot(n: &mut OstreeNode, lab: &Lab) -> Result<()> {
    for (extra, end) in UPDATE_BOOTS {
        if !boot_until(n, lab, extra, &[end])? {
            break;
        }
    }
    Ok(())
}

/// Which of v1, v2, v3 the status says is loaded for set e1000 (by manifest digest), and
/// the digest.
fn loaded_version(lab: &Lab, f: &BootFacts) -> (&'static str, String) {
    let Some(st) = f.status() else {
        return ("(no status)", String::new());
    };
    let Some(set) = st.sets.iter().find(|s| s.set == "e1000") else {
        return ("(no set e1000)", String::new());
    };
    let digest = set.manifest_digest.clone().unwrap_or_default();
    if set.state != SetState::Loaded {
        return ("(not loaded)", digest);
    }
    let version = VERSIONS
        .iter()
        .find(|(_, repo)| {
            lab.images
                .get(&format!("{repo}:{}", st.kernel_release))
                .is_some_and(|p| p.digest == digest)
        })
        .map_or("(unknown digest)", |(v, _)| *v);
    (version, digest)
}

fn check_loaded(r: &mut Report, lab: &Lab, f: &BootFacts, want: &str, why: &str) {
    let (v, digest) = loaded_version(lab, f);
    r.check(
        &format!("boot {}: {want} is loaded ({why})", f.boot.number),
        v == want,
        format!("loaded {v} ({digest})"),
        || f.file("status").unwrap_or_default(),
    );
    check_oot_before_nm(r, f);
}

/// Blob downloads of kmod image `repo` in a boot's registry log.
fn blobs_of(log: &str, repo: &str) -> usize {
    let needle = format!("/{repo}/blobs/");
    blob_downloads(log)
        .iter()
        .filter(|l| l.contains(&needle))
        .count()
}

/// Where `needle` first appears in a boot's serial log.
fn at(b: &Boot, needle: &str) -> Option<usize> {
    b.serial.find(needle)
}

/// `kmod-update`, from boots 3-6 of the prestaged node.
pub fn report(lab: &Lab, n: &OstreeNode) -> Report {
    let mut r = Report::new("kmod-update");
    let first = PRESTAGED_BOOTS.len();
    let boots = &n.machine.boots;
    let want: Vec<BootEnd> = UPDATE_BOOTS.iter().map(|(_, e)| e.clone()).collect();
    check_boot_ends(
        &mut r,
        "the unrelated reboot, MCO's reboot for v2 (--on-change reboot), then two power-offs: v3 (--on-change next-boot) needs none",
        boots,
        first,
        &want,
    );
    let ends = |i: usize| boots.get(i).map(|b| b.end.clone());
    r.fact(
        "reboots per kmod update with --on-change reboot",
        format!(
            "{} (KMM: 1)",
            usize::from(ends(first + 1) == Some(BootEnd::Reboot))
        ),
    );
    r.fact(
        "reboots per kmod update with --on-change next-boot",
        format!(
            "{} (the new version loads at the next reboot)",
            usize::from(ends(first + 2) == Some(BootEnd::Reboot))
        ),
    );

    // Boot 3: the prestage of v2, then the unrelated reboot (so only the markers before
    // the pull exist).
    let Some(b3) = boots.get(first) else {
        return r;
    };
    let f3 = BootFacts::prepull(b3);
    check_loaded(&mut r, lab, &f3, "v1", "the MachineConfig is v1's");
    let log3 = n.segment(first);
    let v2_blobs = blobs_of(log3, VERSIONS[1].1);
    let ready = at(b3, "KD1-MARK kubelet.ready");
    let unrelated = at(b3, "KD1-MARK unrelated_reboot=1");
    r.check(
        "boot 3: the prestage pod of v2 stored it (blobs fetched) and got Ready before the unrelated reboot; the pull asked no reboot",
        v2_blobs > 0
            && matches!((ready, unrelated), (Some(a), Some(b)) if a < b)
            && !b3.serial.contains("reboot: requested"),
        format!(
            "{v2_blobs} v2 blob downloads; Ready {}, unrelated reboot {}",
            if ready.is_some() { "marked" } else { "missing" },
            if unrelated.is_some() { "marked" } else { "missing" }
        ),
        || {
            let f = BootFacts::new(b3);
            format!("{}\n{}", f.excerpt("kubelet"), f.excerpt("unrelated"))
        },
    );

    // Boot 4: v1 from the store, then the MachineConfig of v2 and MCD's reboot.
    let Some(b4) = boots.get(first + 1) else {
        return r;
    };
    let f4 = BootFacts::prepull(b4);
    check_loaded(
        &mut r,
        lab,
        &f4,
        "v1",
        "after the unrelated reboot, from the store: v2's prestage kept v1",
    );
    let blobs4 = blob_downloads(n.segment(first + 1)).len();
    r.check(
        "boot 4: after the unrelated reboot nothing was downloaded and the pull asked no reboot",
        blobs4 == 0 && !b4.serial.contains("reboot: requested"),
        format!("{blobs4} blob downloads"),
        || BootFacts::new(b4).excerpt("reboot:"),
    );
    check_mcd_rebooted(&mut r, &BootFacts::new(b4));

    // Boot 5: v2, then v3's prestage and MachineConfig with next-boot.
    let Some(b5) = boots.get(first + 2) else {
        return r;
    };
    let f5 = BootFacts::new(b5);
    check_loaded(
        &mut r,
        lab,
        &f5,
        "v2",
        "MCO's reboot was the only one for v2",
    );
    let log5 = n.segment(first + 2);
    let (v2_5, v3_5) = (blobs_of(log5, VERSIONS[1].1), blobs_of(log5, VERSIONS[2].1));
    let ready = at(b5, "KD1-MARK kubelet.ready");
    let applied = b5
        .serial
        .lines()
        .find(|l| l.contains("KD1-MCD applied") && l.contains("without a reboot"));
    let applied_at = applied.and_then(|l| at(b5, l));
    let last_pull = f5.file("last_pull").unwrap_or_default();
    r.check(
        "boot 5: no v2 blob downloaded; v3's pod stored v3 and got Ready before MCD applied v3's MachineConfig without a reboot (next-boot); the pull asked no reboot",
        v2_5 == 0
            && v3_5 > 0
            && matches!((ready, applied_at), (Some(a), Some(b)) if a < b)
            && last_pull.contains("\"notNeeded\""),
        format!(
            "{v2_5} v2 and {v3_5} v3 blob downloads; MCD: {}",
            applied.map_or("(no rebootless apply)", str::trim)
        ),
        || format!("{last_pull}\n{}", f5.excerpt("KD1-MCD")),
    );

    // Boot 6: v3 at the next boot, nothing downloaded.
    let Some(b6) = boots.get(first + 3) else {
        return r;
    };
    let f6 = BootFacts::new(b6);
    check_loaded(
        &mut r,
        lab,
        &f6,
        "v3",
        "at the boot after next-boot's apply",
    );
    let blobs6 = blob_downloads(n.segment(first + 3)).len();
    let last_pull = f6.file("last_pull").unwrap_or_default();
    r.check(
        "boot 6: nothing downloaded, the pull asked no reboot",
        blobs6 == 0 && last_pull.contains("\"notNeeded\""),
        format!("{blobs6} blob downloads"),
        || last_pull.clone(),
    );
    r
}
