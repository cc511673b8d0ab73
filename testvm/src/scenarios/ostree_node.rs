// SPDX-License-Identifier: Apache-2.0
//! One RHCOS-like node (`ostree_image.rs`) with the e1000 config, booted in sequence by the
//! harness as its boot loader (`bls_boot.rs`); each scenario asserts on its part:
//!
//! 1. boots 1-2, **ostree-first-apply**: the checks of `first-apply`, on the deployment.
//! 2. boot 3, **ostree-cached-boot**: the checks of `cached-boot`. With the staged upgrade, this
//!    boot then stages the newer commit as MCO does (`ostree admin deploy --stage`, reboot
//!    seconds later); the pull's stop step fetches the new kernel's image at that shutdown,
//!    before ostree-finalize-staged writes its entry.
//! 3. boot 4, **ostree-staged-upgrade**: the new default entry swaps on its first boot, no
//!    reboot, no download.
//! 4. boot 5, **ostree-rollback**: the harness picks the other entry, as a user in the boot
//!    menu: the base kernel again, no pull, no reboot.

use anyhow::Result;
use kmod_day1_contract::SetState;

use crate::bench;
use crate::bls_boot::{self, BootEntry, Choice};
use crate::lab::{Lab, NodeOptions};
use crate::node_config::NodeConfigFile;
use crate::ostree_image::{self, Variant};
use crate::qemu::{BootEnd, Machine};
use crate::registry::blob_downloads;
use crate::scenarios::e1000_node::{self, boot_logged};
use crate::scenarios::facts::{check_end, check_oot_before_nm, BootFacts};
use crate::scenarios::report::Report;

/// Per-boot timeout of this node unless `KMOD_DAY1_VM_BOOT_TIMEOUT` says otherwise: a boot
/// and its shutdown take 1-2.5 minutes under TCG on a busy machine; a hung one must not
/// cost 8.
const BOOT_TIMEOUT_SECS: u64 = 300;

/// How far to take the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Boots 1-2.
    FirstApply,
    /// + boot 3.
    Cached,
    /// Boot 3 stages the update, + boot 4.
    Upgrade,
    /// + boot 5.
    Rollback,
}

/// The node, what the registry saw per boot, and what the boot loader saw per boot.
pub struct OstreeNode {
    /// The machine and its boots.
    pub machine: Machine,
    /// Registry log lines written during each boot (same index as the boots).
    pub registry: Vec<String>,
    /// Boots of the first apply (until the first power-off).
    pub first_apply_boots: usize,
    /// Per boot: the entries on the disk before it, highest version first.
    pub entries: Vec<Vec<BootEntry>>,
    /// Per boot: the entry booted.
    pub picked: Vec<BootEntry>,
    /// Layer digests of the base kernel's image (what a cached boot must not fetch).
    pub base_layers: Vec<String>,
}

impl OstreeNode {
    /// A fresh ostree node named `name` with `configs`, not booted yet.
    pub fn new(lab: &Lab, name: &str, configs: Vec<NodeConfigFile>) -> Result<Self> {
        Self::with_variant(lab, name, configs, &Variant::default())
    }

    /// [`OstreeNode::new`], changed as `v` says.
    pub fn with_variant(
        lab: &Lab,
        name: &str,
        configs: Vec<NodeConfigFile>,
        v: &Variant,
    ) -> Result<Self> {
        let mut machine = ostree_image::node_variant(
            lab,
            name,
            &NodeOptions {
                configs,
                ..NodeOptions::default()
            },
            v,
        )?;
        machine.default_timeout(BOOT_TIMEOUT_SECS);
        Ok(Self {
            machine,
            registry: vec![],
            first_apply_boots: 0,
            entries: vec![],
            picked: vec![],
            base_layers: lab
                .images
                .get(&format!("kd1/e1000:{}", lab.img.base.release))
                .map(|i| i.layers.clone())
                .unwrap_or_default(),
        })
    }

    /// Boots the entry `choice` picks, with `extra` on the kernel command line.
    pub fn boot(&mut self, lab: &Lab, choice: Choice, extra: &str) -> Result<BootEnd> {
        let m = &mut self.machine;
        let (e, all) = bls_boot::select(m, choice)?;
        self.entries.push(all);
        self.picked.push(e);
        m.extra_cmdline = extra.to_owned();
        let end = boot_logged(lab, m, &mut self.registry, &mut || false);
        m.extra_cmdline.clear();
        end
    }

    /// Index of the cached boot (which stages the update when the upgrade runs).
    fn cached_boot(&self) -> usize {
        self.first_apply_boots
    }

    /// The registry log lines of boot `i`.
    pub fn segment(&self, i: usize) -> &str {
        self.registry.get(i).map(String::as_str).unwrap_or_default()
    }
}

/// Runs the node up to `stage`.
pub fn run(lab: &Lab, stage: Stage) -> Result<OstreeNode> {
    let mut n = OstreeNode::new(lab, "ostree", vec![e1000_node::config(lab)])?;
    for _ in 0..3 {
        if n.boot(lab, Choice::Default, "")? != BootEnd::Reboot {
            break;
        }
    }
    n.first_apply_boots = n.machine.boots.len();
    let healthy = n.machine.boots.last().map(|b| b.end == BootEnd::PowerOff) == Some(true);
    if stage >= Stage::Cached && healthy {
        let stage_update = if stage >= Stage::Upgrade {
            "kd1.stage_os_update"
        } else {
            ""
        };
        n.boot(lab, Choice::Default, stage_update)?;
    }
    if stage >= Stage::Upgrade && healthy {
        n.boot(lab, Choice::Default, "")?;
    }
    if stage >= Stage::Rollback && healthy {
        n.boot(lab, Choice::Rollback, "")?;
    }
    Ok(n)
}

/// The deployment booted: `ostree=` on the command line, `/usr` read-only, `/usr/local` in
/// `/var`, the binaries Ignition wrote under the stateroot's `/var/usrlocal/bin`.
pub fn check_ostree_boot(r: &mut Report, f: &BootFacts) {
    let n = f.boot.number;
    let m = &f.boot.markers;
    let usr = m.get("ostree.usr_options").unwrap_or("?");
    r.check(
        &format!("boot {n}: an ostree deployment, /usr read-only, /usr/local in /var"),
        f.get("cmdline")
            .is_some_and(|c| c.contains("ostree=/ostree/boot."))
            && usr.split(',').any(|o| o == "ro")
            && m.get("ostree.usr_local") == Some("../var/usrlocal")
            && m.get("ostree.pull_binary") == Some("/var/usrlocal/bin/kmod-day1-pull"),
        format!(
            "/usr {usr}; /usr/local -> {:?}; kmod-day1-pull at {:?}",
            m.get("ostree.usr_local"),
            m.get("ostree.pull_binary")
        ),
        || {
            format!(
                "cmdline {:?}\n{}",
                f.get("cmdline"),
                m.file("ostree.admin_status").unwrap_or_default()
            )
        },
    );
}

/// `ostree-first-apply`: the checks of `first-apply`.
pub fn first_apply(n: &OstreeNode) -> Report {
    let mut r = Report::new("ostree-first-apply");
    let boots = &n.machine.boots;
    r.check(
        "first apply takes exactly one reboot (2 boots)",
        n.first_apply_boots == 2,
        format!(
            "{} boots: {:?}",
            n.first_apply_boots,
            boots[..n.first_apply_boots.min(boots.len())]
                .iter()
                .map(|b| &b.end)
                .collect::<Vec<_>>()
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
        "boot 1: in-tree e1000 and network up before the pull downloaded, on the deployment",
        f1.in_tree_link_before_pull() && f1.get("cmdline").is_some_and(|c| c.contains("ostree=")),
        format!(
            "e1000 version {}, eth0 {}, cmdline {:?}",
            f1.e1000_version(),
            f1.ipv4(),
            f1.get("cmdline")
        ),
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
    let blobs = blob_downloads(n.segment(0)).len();
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
    check_ostree_boot(&mut r, &f2);
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
            "pull Result={:?}",
            f2.unit_prop("kmod-day1-pull.service", "Result")
        ),
        || f2.journal(),
    );
    r
}

/// `ostree-cached-boot`: the checks of `cached-boot` (the boot may then stage the update).
pub fn cached_boot(n: &OstreeNode) -> Report {
    let mut r = Report::new("ostree-cached-boot");
    let Some(b) = n.machine.boots.get(n.cached_boot()) else {
        r.error = Some(format!(
            "the cached boot did not happen (first apply: {} boots)",
            n.first_apply_boots
        ));
        return r;
    };
    let f = BootFacts::new(b);
    let last_pull = f.file("last_pull").unwrap_or_default();
    if b.markers.get("stage.reboot").is_some() {
        // The OS update's reboot, not the pull's.
        check_end(&mut r, b, BootEnd::Reboot);
        r.check(
            "the reboot is the OS update's: the pull asked for none",
            !last_pull.is_empty() && !last_pull.contains("\"requested\""),
            "last-pull.json without a reboot request".to_owned(),
            || last_pull.clone(),
        );
    } else {
        check_end(&mut r, b, BootEnd::PowerOff);
    }
    check_oot_before_nm(&mut r, &f);
    check_ostree_boot(&mut r, &f);
    // The stop step fetches the new kernel's image at this boot's shutdown when it staged
    // the update: only the running kernel's blobs count.
    let blobs: Vec<String> = blob_downloads(n.segment(n.cached_boot()))
        .into_iter()
        .filter(|l| n.base_layers.is_empty() || n.base_layers.iter().any(|d| l.contains(d)))
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

/// `ostree-staged-upgrade`.
pub fn staged_upgrade(n: &OstreeNode, base: &str, upgrade: &str) -> Report {
    let mut r = Report::new("ostree-staged-upgrade");
    let (si, ui) = (n.cached_boot(), n.cached_boot() + 1);
    let boots = &n.machine.boots;
    let (Some(sb), Some(ub)) = (boots.get(si), boots.get(ui)) else {
        r.error = Some(format!(
            "the staging boot and the new kernel's boot did not both happen ({} boots)",
            boots.len()
        ));
        return r;
    };
    let m = &sb.markers;
    let before = m.get("stage.entries_before").unwrap_or("?");
    let staged = m.get("stage.entries_staged").unwrap_or("?");
    r.check(
        &format!("boot {}: staged the newer commit while running; no boot entry for it yet", sb.number),
        m.get("stage.staged_file") == Some("present")
            && m.get("stage.staged_modules").is_some_and(|s| s.contains(upgrade))
            && before.contains(base)
            && !before.contains(upgrade)
            && !staged.contains(upgrade),
        format!(
            "/run/ostree/staged-deployment {:?}; deploy --stage took {:?} ms; entries before {before:?}, after staging {staged:?}",
            m.get("stage.staged_file"),
            m.get("stage.deploy_ms")
        ),
        || BootFacts::new(sb).excerpt("KD1-MARK stage."),
    );
    check_end(&mut r, sb, BootEnd::Reboot);
    // The stop step's lines (console drop-in) after the reboot was asked, naming the new kernel.
    let after_reboot = sb
        .serial
        .split_once("KD1-MARK stage.reboot")
        .map_or("", |(_, a)| a);
    let stop: Vec<&str> = after_reboot
        .lines()
        .filter(|l| l.contains("kmod-day1-pull") && l.contains(upgrade))
        .collect();
    let seg = n.segment(si);
    r.check(
        &format!("boot {}: the stop step fetched the new kernel's image during the shutdown", sb.number),
        stop.iter().any(|l| l.contains("committed")) && !blob_downloads(seg).is_empty(),
        format!(
            "{} stop-step lines naming {upgrade} after the reboot was asked; {} blob downloads in that boot",
            stop.len(),
            blob_downloads(seg).len()
        ),
        || BootFacts::new(sb).excerpt("KD1-MARK stage.reboot"),
    );
    let entries = n.entries.get(ui).cloned().unwrap_or_default();
    r.check(
        "ostree-finalize-staged wrote the new entry at that shutdown: default, the old one kept as rollback",
        entries.len() == 2
            && entries[0].release() == upgrade
            && entries[1].release() == base,
        format!(
            "entries: {:?}",
            entries
                .iter()
                .map(|e| format!("{} v{} {}", e.file, e.version, e.release()))
                .collect::<Vec<_>>()
        ),
        String::new,
    );
    let f = BootFacts::new(ub);
    r.check(
        &format!("boot {}: runs the new kernel", ub.number),
        f.get("uname") == Some(upgrade),
        format!("uname {:?}", f.get("uname")),
        || f.excerpt("Linux version"),
    );
    let prev = ub.markers.file("ostree.prev_shutdown").unwrap_or_default();
    let prev_stop: Vec<&str> = prev
        .lines()
        .filter(|l| l.contains("kmod-day1-pull") && l.contains(upgrade))
        .collect();
    r.check(
        &format!("boot {}: the previous boot's journal shows kmod-day1-pull-shutdown.service fetching {upgrade}", ub.number),
        prev_stop.iter().any(|l| l.contains("committed")),
        format!("{} lines of the stop step naming {upgrade}", prev_stop.len()),
        || prev.clone(),
    );
    check_end(&mut r, ub, BootEnd::PowerOff);
    check_oot_before_nm(&mut r, &f);
    check_ostree_boot(&mut r, &f);
    r.check(
        &format!("boot {}: status says loaded", ub.number),
        f.set_state("e1000") == Some(SetState::Loaded),
        format!("{:?}", f.set_state("e1000")),
        || f.file("status").unwrap_or_default(),
    );
    let status = f.status();
    let symbols = status
        .as_ref()
        .and_then(|s| s.preflight.as_ref())
        .and_then(|p| p.sets.iter().find(|s| s.set == "e1000"))
        .and_then(|s| s.symbol_versions.clone());
    r.check(
        &format!(
            "boot {}: the preflight made before it compared the module's symbol CRCs with the deployment's symvers.gz",
            ub.number
        ),
        symbols.as_ref().is_some_and(|v| {
            v.table.as_deref().is_some_and(|t| t.ends_with("symvers.gz"))
                && v.checked > 0
                && v.mismatches.is_empty()
        }),
        symbols
            .as_ref()
            .map_or("no symbolVersions in the status's preflight".into(), |v| {
                v.summary()
            }),
        || f.file("status").unwrap_or_default(),
    );
    let useg = n.segment(ui);
    r.check(
        &format!(
            "boot {}: no blob downloaded on the new kernel's first boot",
            ub.number
        ),
        blob_downloads(useg).is_empty(),
        format!("{} blob downloads", blob_downloads(useg).len()),
        || blob_downloads(useg).join("\n"),
    );
    r.fact(
        "extra reboots for a staged OS update",
        format!("{} (KMM needs 1)", usize::from(ub.end == BootEnd::Reboot)),
    );
    r
}

/// `ostree-rollback`.
pub fn rollback(n: &OstreeNode, base: &str) -> Report {
    let mut r = Report::new("ostree-rollback");
    let i = n.cached_boot() + 2;
    let Some(b) = n.machine.boots.get(i) else {
        r.error = Some("the rollback boot did not happen".into());
        return r;
    };
    let f = BootFacts::new(b);
    let picked = n.picked.get(i);
    r.check(
        &format!("boot {}: the rollback entry, the base kernel", b.number),
        picked.is_some_and(|e| e.release() == base && e.version == 1)
            && f.get("uname") == Some(base),
        format!(
            "picked {:?}, uname {:?}",
            picked.map(|e| (&e.file, e.version)),
            f.get("uname")
        ),
        || f.excerpt("Linux version"),
    );
    check_end(&mut r, b, BootEnd::PowerOff);
    check_oot_before_nm(&mut r, &f);
    let seg = n.segment(i);
    r.check(
        &format!("boot {}: no blob downloaded", b.number),
        blob_downloads(seg).is_empty(),
        format!("{} blob downloads", blob_downloads(seg).len()),
        || blob_downloads(seg).join("\n"),
    );
    r.check(
        &format!("boot {}: status says loaded", b.number),
        f.set_state("e1000") == Some(SetState::Loaded),
        format!("{:?}", f.set_state("e1000")),
        || f.file("status").unwrap_or_default(),
    );
    r
}

/// The bench's figures of this node: reboots for the staged OS update, and the time the
/// pull's stop step took at each shutdown (from the next boot's journal of the previous one).
pub fn timings(n: &OstreeNode) -> String {
    let boots = &n.machine.boots;
    let staging = n.cached_boot();
    let mut t = String::new();
    if let Some(ub) = boots.get(staging + 1) {
        t.push_str(&format!(
            "staged OS update (ostree node): {} extra reboots (KMM: 1)\n",
            usize::from(ub.end == BootEnd::Reboot)
        ));
    }
    let mut fetching = None;
    let mut others = vec![];
    for (i, b) in boots.iter().enumerate().skip(1) {
        let prev = b.markers.file("ostree.prev_shutdown").unwrap_or_default();
        if let Some(secs) = bench::stop_step_secs(&prev) {
            if i == staging + 1 {
                fetching = Some(secs);
            } else {
                others.push(secs);
            }
        }
    }
    let n_others = others.len();
    t.push_str(&format!(
        "pull stop step per shutdown (Stopping to Stopped, TCG): {} at the staged update's (fetched the new kernel's image); median {} over {n_others} others (nothing new to fetch)\n",
        fetching.map_or("?".into(), |s| format!("{s:.2} s")),
        bench::median(others).map_or("?".into(), |s| format!("{s:.2} s")),
    ));
    t
}
