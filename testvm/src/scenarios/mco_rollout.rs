// SPDX-License-Identifier: Apache-2.0
//! Scenarios **mco-rollout-prestaged**, **mco-rollout** and **node-image-missing** (issue 10): a MachineConfig reaching a
//! *running* RHCOS-like node that has no kmod-day1 at all, as MCO delivers one to a pool.
//!
//! The node is the ostree node with podman (RHCOS ships it). The MachineConfig is what a user
//! applies, `mcgen --output machineconfig --node-image REF@DIGEST`; the node image is
//! `make node-image`'s layout pushed with skopeo to the lane's registry. The MCD stand-in
//! (`mcd_standin`, in the guest as `kd1-mcd`) applies it once the node is up, with MCO's
//! default disruption policy, as MCD applies a new rendered config: files and units written,
//! a drain (logged: there are no pods), `systemctl reboot`.
//!
//! **mco-rollout-prestaged**, the README's workflow: the prestage objects first (`mcgen
//! --output prestage`), their DaemonSet's pod run by the kubelet stand-in (`kubelet_standin`)
//! until it is Ready (the binaries installed, the kmod image stored for the running kernel,
//! nothing loaded), then the MachineConfig. Boot 1 ends in MCD's reboot; boot 2 loads the
//! out-of-tree driver before NetworkManager, downloads nothing and asks no reboot: 1 reboot.
//!
//! **mco-rollout**, without a prestage: boot 1 runs the in-tree driver and MCD reboots the
//! node (MCO's drained reboot); boot 2's `kmod-day1-install.service` pulls the node image with
//! the node's podman and installs the binaries after the loader's turn, so the pull stores the
//! kmod image and asks the one guarded reboot the contract allows; boot 3 loads the
//! out-of-tree driver before NetworkManager, with nothing downloaded. 2 reboots, as KMM.
//!
//! **node-image-missing**: the MachineConfig pins a node image digest the registry does not
//! have. MCD's reboot, then a boot where the install fails with one journal line, nothing
//! else runs, no reboot: the in-tree driver and the network.
//!
//! Left out (say so in the docs): the rendered config is this one MachineConfig, not merged
//! with the pool's others (MCD diffs whole rendered configs; the diff here is the same
//! files and units); the pull secret (`/var/lib/kubelet/config.json`) is absent: the test
//! registry needs none.

use anyhow::Result;
use kmod_day1_contract::SetState;

use crate::bls_boot::Choice;
use crate::cluster_state::{self, ClusterState};
use crate::dirs::write_file;
use crate::kubelet_standin;
use crate::lab::Lab;
use crate::mcd_standin::guest;
use crate::node_config::{pool_output_for, NodeConfigFile};
use crate::qemu::BootEnd;
use crate::registry::blob_downloads;
use crate::scenarios::e1000_node;
use crate::scenarios::facts::{check_boot_ends, check_network, check_oot_before_nm, BootFacts};
use crate::scenarios::ostree_node::{check_ostree_boot, OstreeNode};
use crate::scenarios::report::Report;

/// `MachineConfiguration/cluster` with no node disruption policy: MCO's defaults alone.
const NO_POLICY: &str = "apiVersion: operator.openshift.io/v1
kind: MachineConfiguration
metadata:
  name: cluster
spec: {}
";

/// What the user has applied to the cluster: the pool's MachineConfig,
/// `MachineConfiguration/cluster` and, when prestaged, the prestage objects.
pub struct ClusterObjects {
    /// The MachineConfig (the pool's rendered config here).
    pub machine_config: String,
    /// `MachineConfiguration/cluster`.
    pub policy: String,
    /// `mcgen --output prestage`.
    pub prestage: Option<String>,
}

impl ClusterObjects {
    /// `machine_config` with MCO's default disruption policy.
    pub fn new(machine_config: String, prestage: Option<String>) -> Self {
        Self {
            machine_config,
            policy: NO_POLICY.to_owned(),
            prestage,
        }
    }
}

/// A node with no kmod-day1, the MCD stand-in and `first.machine_config` handed to it; with
/// a prestage, the kubelet stand-in runs its pod first and MCD applies the MachineConfig
/// once it is Ready. `later` are the cluster states 2, 3, … a boot may apply
/// (`cluster_state`).
pub fn node(
    lab: &Lab,
    name: &str,
    first: &ClusterObjects,
    later: &[ClusterObjects],
) -> Result<OstreeNode> {
    let work = lab.dirs.fresh_work_dir(&format!("{name}-mco"))?;
    let desired = work.join("desired.yaml");
    write_file(&desired, &first.machine_config)?;
    let policy = work.join("machineconfiguration.yaml");
    write_file(&policy, &first.policy)?;
    let prestaged = first.prestage.is_some() || later.iter().any(|s| s.prestage.is_some());
    let after = prestaged.then_some(kubelet_standin::UNIT_NAME);
    let mut v = guest::ostree_variant(&lab.tools.kd1_mcd, &desired, &policy, after);
    if let Some(objects) = &first.prestage {
        let script = kubelet_standin::pod_script(objects)?;
        let name = kubelet_standin::SCRIPT.trim_start_matches("/usr/local/libexec/");
        v.scripts.push((name.to_owned(), script));
    }
    if prestaged {
        v.units.push((
            kubelet_standin::UNIT_NAME.into(),
            kubelet_standin::UNIT.into(),
        ));
    }
    for (i, s) in later.iter().enumerate() {
        let n = i + 2;
        let state = ClusterState {
            machine_config: work.join(format!("desired-{n}.yaml")),
            policy: work.join(format!("machineconfiguration-{n}.yaml")),
            pod: s.prestage.as_ref().map(|_| work.join(format!("pod-{n}"))),
        };
        write_file(&state.machine_config, &s.machine_config)?;
        write_file(&state.policy, &s.policy)?;
        if let (Some(objects), Some(pod)) = (&s.prestage, &state.pod) {
            write_file(pod, kubelet_standin::pod_script(objects)?)?;
        }
        v.var_files.extend(cluster_state::var_files(n, &state));
    }
    if !later.is_empty() {
        v.scripts.push((
            cluster_state::SCRIPT_NAME.into(),
            cluster_state::SCRIPT.into(),
        ));
        v.units.extend([
            (cluster_state::UNIT_NAME.into(), cluster_state::UNIT.into()),
            (
                cluster_state::REBOOT_UNIT_NAME.into(),
                cluster_state::REBOOT_UNIT.into(),
            ),
        ]);
    }
    let mut n = OstreeNode::with_variant(lab, name, vec![], &v)?;
    // Pulls and containers under TCG: more than an ostree node's usual 300 s per boot.
    n.machine.default_timeout(MCO_BOOT_TIMEOUT_SECS);
    Ok(n)
}

/// Per-boot timeout of these nodes.
const MCO_BOOT_TIMEOUT_SECS: u64 = 480;

/// mcgen's `output` (and `extra` arguments) for `cfg`, pinning `node_image`.
pub fn pool_output(
    lab: &Lab,
    cfg: &NodeConfigFile,
    output: &str,
    extra: &[&str],
    node_image: &str,
) -> Result<String> {
    let work = lab
        .dirs
        .fresh_work_dir(&format!("{}-mcgen-{output}", cfg.name))?;
    pool_output_for(cfg, &lab.tools, &work, output, extra, node_image)
}

/// The e1000 config's MachineConfig pinning `node_image`, and its size.
fn machine_config(lab: &Lab, node_image: &str) -> Result<(String, usize)> {
    let mc = pool_output(
        lab,
        &e1000_node::config(lab),
        "machineconfig",
        &[],
        node_image,
    )?;
    let size = mc.len();
    Ok((mc, size))
}

/// Boots `n` with `extra` on the command line until a boot ends otherwise than `want` says,
/// at most `want.len()` times; whether every boot ended as wanted.
pub fn boot_until(n: &mut OstreeNode, lab: &Lab, extra: &str, want: &[BootEnd]) -> Result<bool> {
    for w in want {
        if n.boot(lab, Choice::Default, extra)? != *w {
            return Ok(false);
        }
    }
    Ok(true)
}

/// MCD's reboot, as the stand-in logs it in boot `b`.
pub fn check_mcd_rebooted(r: &mut Report, f: &BootFacts) {
    let line = f
        .boot
        .serial
        .lines()
        .find(|l| l.contains("KD1-MCD rebooting into"));
    let drained = f.boot.serial.contains("drain: node cordoned");
    r.check(
        &format!(
            "boot {}: the MCD stand-in applied the MachineConfig to the running node, drained and rebooted it",
            f.boot.number
        ),
        line.is_some() && drained,
        line.map_or("(no KD1-MCD line)".into(), |l| l.trim().to_owned()),
        || f.excerpt("KD1-MCD"),
    );
}

/// Boot 1 of both: the node as it was before the MachineConfig, and MCD's reboot.
fn check_first_boot(r: &mut Report, n: &OstreeNode) -> bool {
    let Some(b1) = n.machine.boots.first() else {
        r.error = Some("no boot happened".into());
        return false;
    };
    // The markers at network-online.target: on these nodes (no loader ordering udev before
    // NetworkManager) that comes before the e1000 has even bound under TCG, so the driver and
    // the network are checked on the last boot.
    let f1 = BootFacts::prepull(b1);
    r.check(
        "boot 1: no kmod-day1 yet: no out-of-tree e1000, no loader status",
        !f1.oot_e1000() && f1.status().is_none(),
        format!(
            "e1000 version {}, loader status {}",
            f1.e1000_version(),
            if f1.status().is_some() {
                "present"
            } else {
                "absent"
            }
        ),
        || f1.excerpt("e1000"),
    );
    check_mcd_rebooted(r, &BootFacts::new(b1));
    true
}

/// Boots of the prestaged first apply.
pub const PRESTAGED_BOOTS: [BootEnd; 2] = [BootEnd::Reboot, BootEnd::PowerOff];

/// The prestaged node after its first apply ([`PRESTAGED_BOOTS`]); `later` are the
/// cluster states its later boots may apply.
pub fn prestaged_node(lab: &mut Lab, later: &[ClusterObjects]) -> Result<(OstreeNode, bool)> {
    let image = lab.node_image()?;
    let (mc, _) = machine_config(lab, &image)?;
    let cfg = e1000_node::config(lab);
    let prestage = pool_output(lab, &cfg, "prestage", &[], &image)?;
    let first = ClusterObjects::new(mc, Some(prestage));
    let mut n = node(lab, "mco-prestaged", &first, later)?;
    let ok = boot_until(&mut n, lab, "", &PRESTAGED_BOOTS)?;
    Ok((n, ok))
}

/// `mco-rollout-prestaged`, from the first two boots of [`prestaged_node`].
pub fn rollout_prestaged(n: &OstreeNode) -> Report {
    let mut r = Report::new("mco-rollout-prestaged");
    let want = PRESTAGED_BOOTS;
    let all = &n.machine.boots;
    let boots = &all[..all.len().min(want.len())];
    check_boot_ends(
        &mut r,
        "MCO's reboot, then a power-off: the only reboot is MCO's",
        boots,
        0,
        &want,
    );
    r.fact(
        "reboots for a first apply through MCO with a prestage",
        format!(
            "{} (KMM: 2)",
            boots.iter().filter(|b| b.end == BootEnd::Reboot).count()
        ),
    );
    if !check_first_boot(&mut r, n) {
        return r;
    }
    let b1 = &boots[0];
    let ready = b1.markers.get("kubelet.ready");
    let blobs1 = blob_downloads(n.segment(0)).len();
    r.check(
        "boot 1: the prestage pod got Ready (binaries installed, the image stored) before MCD applied the MachineConfig, with no reboot of its own",
        ready.is_some()
            && blobs1 > 0
            && !b1.serial.contains("reboot: requested")
            && b1.serial.find("KD1-MARK kubelet.ready") < b1.serial.find("KD1-MCD rebooting into"),
        format!(
            "Ready after {} s; {blobs1} blob downloads",
            ready.unwrap_or("?")
        ),
        || {
            let f = BootFacts::new(b1);
            format!("{}\n{}", f.excerpt("kubelet"), f.excerpt("KD1-MCD"))
        },
    );
    let Some(b2) = boots.get(1) else {
        return r;
    };
    let f2 = BootFacts::new(b2);
    check_oot_before_nm(&mut r, &f2);
    check_network(&mut r, &f2);
    check_ostree_boot(&mut r, &f2);
    let blobs = blob_downloads(n.segment(1)).len();
    let last_pull = f2.file("last_pull").unwrap_or_default();
    r.check(
        "boot 2: status says loaded; nothing downloaded; the pull asked no reboot; the install unit found the binaries in place",
        f2.set_state("e1000") == Some(SetState::Loaded)
            && blobs == 0
            && last_pull.contains("\"notNeeded\"")
            && b2.serial.contains("kmod-day1-install: the node binaries of sha256:"),
        format!(
            "{:?}, {blobs} blob downloads, last pull reboot {}",
            f2.set_state("e1000"),
            if last_pull.contains("\"notNeeded\"") { "notNeeded" } else { "?" }
        ),
        || format!("{last_pull}\n{}", f2.excerpt("kmod-day1-install")),
    );
    r
}

/// `mco-rollout`.
pub fn rollout(lab: &mut Lab) -> Result<Report> {
    let mut r = Report::new("mco-rollout");
    let image = lab.node_image()?;
    let digest = image.rsplit_once('@').map_or("", |(_, d)| d).to_owned();
    let (mc, size) = machine_config(lab, &image)?;
    r.fact(
        "MachineConfig size (e1000, --delivery image)",
        format!("{size} bytes"),
    );
    let mut n = node(lab, "mco-rollout", &ClusterObjects::new(mc, None), &[])?;
    let want = [BootEnd::Reboot, BootEnd::Reboot, BootEnd::PowerOff];
    boot_until(&mut n, lab, "", &want)?;
    let boots = &n.machine.boots;
    check_boot_ends(
        &mut r,
        "MCO's reboot, then the pull's, then a power-off",
        boots,
        0,
        &want,
    );
    r.fact(
        "reboots for a first apply through MCO without a prestage",
        format!(
            "{} (KMM: 2)",
            boots.iter().filter(|b| b.end == BootEnd::Reboot).count()
        ),
    );
    if !check_first_boot(&mut r, &n) {
        return Ok(r);
    }
    let Some(b2) = boots.get(1) else {
        return Ok(r);
    };
    let f2 = BootFacts::new(b2);
    let installed = format!("installed kmod-day1-load kmod-day1-pull of {digest}");
    r.check(
        "boot 2: MCD's boot check completed the update; the install unit put the binaries in place with the node's podman",
        b2.serial.contains("KD1-MCD update to") && b2.serial.contains(&installed),
        installed.clone(),
        || f2.excerpt("kmod-day1-install"),
    );
    let pre = BootFacts::prepull(b2);
    r.check(
        "boot 2: the loader's turn came before the binaries: the in-tree e1000, no loader status",
        !pre.oot_e1000() && pre.status().is_none(),
        format!(
            "e1000 version {}, loader status {}",
            pre.e1000_version(),
            if pre.status().is_some() {
                "present"
            } else {
                "absent"
            }
        ),
        || pre.excerpt("kmod-day1-load"),
    );
    let asked = b2.serial.contains("reboot: requested");
    r.check(
        "boot 2: the pull stored the image and asked its one guarded reboot",
        asked && !blob_downloads(n.segment(1)).is_empty(),
        format!(
            "reboot requested: {asked}; {} blob downloads",
            blob_downloads(n.segment(1)).len()
        ),
        || f2.excerpt("reboot:"),
    );
    let Some(b3) = boots.get(2) else {
        return Ok(r);
    };
    let f3 = BootFacts::new(b3);
    check_oot_before_nm(&mut r, &f3);
    check_network(&mut r, &f3);
    check_ostree_boot(&mut r, &f3);
    let blobs = blob_downloads(n.segment(2)).len();
    r.check(
        "boot 3: status says loaded, nothing downloaded, the guard holds the one reboot",
        f3.set_state("e1000") == Some(SetState::Loaded)
            && blobs == 0
            && f3
                .file("reboots")
                .is_some_and(|g| g.matches("\"kernelRelease\"").count() == 1),
        format!("{:?}, {blobs} blob downloads", f3.set_state("e1000")),
        || f3.file("reboots").unwrap_or_default(),
    );
    Ok(r)
}

/// `node-image-missing`.
pub fn image_missing(lab: &mut Lab) -> Result<Report> {
    let mut r = Report::new("node-image-missing");
    // A digest nobody pushed: the registry answers 404 for it.
    let image = format!(
        "{}@sha256:{}",
        lab.image_ref(crate::node_image::REPO),
        "0123456789abcdef".repeat(4)
    );
    let (mc, _) = machine_config(lab, &image)?;
    let mut n = node(
        lab,
        "node-image-missing",
        &ClusterObjects::new(mc, None),
        &[],
    )?;
    let want = [BootEnd::Reboot, BootEnd::PowerOff];
    boot_until(&mut n, lab, "", &want)?;
    check_boot_ends(
        &mut r,
        "MCO's reboot, then a power-off: kmod-day1 asks none",
        &n.machine.boots,
        0,
        &want,
    );
    if !check_first_boot(&mut r, &n) {
        return Ok(r);
    }
    let Some(b2) = n.machine.boots.get(1) else {
        return Ok(r);
    };
    let f = BootFacts::new(b2);
    let errors = f.file("journal_err.kmod-day1-install").unwrap_or_default();
    let ours: Vec<&str> = errors
        .lines()
        .filter(|l| l.starts_with("kmod-day1-install:"))
        .collect();
    let want_line = format!(
        "kmod-day1-install: podman could not pull the node image {image} (5 tries); the node binaries are unchanged"
    );
    r.check(
        "boot 2: one journal line at err naming the node image",
        ours == [want_line.as_str()],
        ours.join(" | "),
        || errors.clone(),
    );
    let store = f.file("store").unwrap_or_default();
    r.check(
        "boot 2: no binaries, so the load and pull units were skipped: the in-tree e1000 drives eth0",
        !f.oot_e1000()
            && f.get("eth0_driver") == Some("e1000")
            && f.status().is_none()
            && !store.contains("node-binaries.json")
            && f.unit_prop("kmod-day1-install.service", "Result")
                .as_deref()
                == Some("exit-code"),
        format!(
            "e1000 version {}, loader status {}, install record {}, install Result={:?}",
            f.e1000_version(),
            if f.status().is_some() {
                "present"
            } else {
                "absent"
            },
            if store.contains("node-binaries.json") {
                "present"
            } else {
                "absent"
            },
            f.unit_prop("kmod-day1-install.service", "Result")
        ),
        || f.journal(),
    );
    check_network(&mut r, &f);
    Ok(r)
}
