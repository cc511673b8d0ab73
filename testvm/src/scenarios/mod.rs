// SPDX-License-Identifier: Apache-2.0
//! The scenarios of issue 5 (and issue 8's journal priorities, issue 14's modprobe
//! configuration), each a named test with pass/fail and evidence. Nodes are shared by
//! scenarios that are steps of the same life (see each file), so the suite fits CI's time
//! budget; every scenario still runs on its own with `testvm scenario NAME`.

pub mod e1000_node;
pub mod facts;
pub mod journal_priorities;
pub mod modprobe_config;
pub mod multi_modules;
pub mod nic_not_bound;
pub mod no_in_tree_driver;
pub mod ostree_node;
pub mod policy_reject;
pub mod power_cut;
pub mod registry_down;
pub mod report;
pub mod sig_enforced;

use std::time::Instant;

use anyhow::{bail, Result};
use tracing::{error, info};

use crate::bench;
use crate::lab::Lab;
use e1000_node::Stage;
use report::Report;

/// Every scenario, in the order `all` runs them.
pub const NAMES: &[&str] = &[
    "first-apply",
    "cached-boot",
    "kernel-upgrade",
    "several-modules",
    "broken-module",
    "journal-priorities",
    "modprobe-config",
    "no-in-tree-driver-initrd",
    "no-in-tree-driver-bundle",
    "registry-down",
    "nic-not-bound",
    "power-cut",
    "policy-reject",
    "sig-enforced",
    "ostree-first-apply",
    "ostree-cached-boot",
    "ostree-staged-upgrade",
    "ostree-rollback",
];

/// The outcome of a run of scenarios, with the bench timings gathered on the way.
pub struct Outcome {
    /// One report per scenario.
    pub reports: Vec<Report>,
    /// Timings text.
    pub bench: String,
}

fn failed(name: &str, e: &anyhow::Error) -> Report {
    error!("scenario {name}: {e:#}");
    let mut r = Report::new(name);
    r.error = Some(format!("{e:#}"));
    r
}

/// Runs the named scenarios (and the bench boot when `with_bench`).
pub fn run(lab: &mut Lab, names: &[&str], with_bench: bool) -> Result<Outcome> {
    for n in names {
        if !NAMES.contains(n) {
            bail!(
                "unknown scenario {n:?}; the scenarios are: {}",
                NAMES.join(", ")
            );
        }
    }
    let wants = |n: &str| names.contains(&n);
    let mut reports = vec![];
    let mut bench_text = String::new();
    let stage = if with_bench {
        Some(Stage::Baseline)
    } else if wants("kernel-upgrade") {
        Some(Stage::Upgrade)
    } else if wants("cached-boot") {
        Some(Stage::Cached)
    } else if wants("first-apply") {
        Some(Stage::FirstApply)
    } else {
        None
    };
    if let Some(stage) = stage {
        let t = Instant::now();
        match e1000_node::run(lab, stage) {
            Ok(n) => {
                if wants("first-apply") {
                    reports.push(e1000_node::first_apply(&n));
                }
                if wants("cached-boot") {
                    reports.push(e1000_node::cached_boot(&n));
                }
                if wants("kernel-upgrade") {
                    reports.push(e1000_node::kernel_upgrade(&n, &lab.img.upgrade.release));
                }
                if with_bench {
                    reports.push(e1000_node::baseline(&n));
                    let b = &n.machine.boots;
                    let fa = n.first_apply_boots;
                    bench_text.push_str("boot milestones (seconds since kernel start, TCG):\n");
                    for (label, i) in [
                        ("first apply, in-tree boot", 0),
                        ("first apply, swap boot", 1),
                        ("cached boot", fa),
                        ("upgraded kernel, first boot", fa + 1),
                        ("kmod_day1.disable", fa + 2),
                    ] {
                        if let Some(boot) = b.get(i) {
                            bench_text.push_str(&bench::milestones(label, boot));
                        }
                    }
                    if let (Some(with), Some(without)) = (b.get(fa), b.get(fa + 2)) {
                        bench_text.push_str("with / without kmod-day1 (cached boot vs kmod_day1.disable, same node):\n");
                        bench_text.push_str(&bench::ratio(with, without));
                    }
                    bench_text.push_str(&format!(
                        "reboots: first apply {} (KMM: 2), kernel upgrade {} extra (KMM: 1)\n",
                        fa.saturating_sub(1),
                        b.get(fa + 1).map_or("?".into(), |x| usize::from(
                            x.end == crate::qemu::BootEnd::Reboot
                        )
                        .to_string())
                    ));
                }
            }
            Err(e) => {
                for n in ["first-apply", "cached-boot", "kernel-upgrade"]
                    .into_iter()
                    .filter(|n| wants(n))
                {
                    reports.push(failed(n, &e));
                }
            }
        }
        info!("e1000 node: {:.0} s", t.elapsed().as_secs_f64());
    }
    if wants("several-modules")
        || wants("broken-module")
        || wants("journal-priorities")
        || with_bench
    {
        let t = Instant::now();
        match multi_modules::run(lab) {
            Ok(n) => {
                if wants("several-modules") {
                    reports.push(multi_modules::several_modules(&n));
                }
                if wants("broken-module") {
                    reports.push(multi_modules::broken_module(&n));
                }
                if wants("journal-priorities") {
                    reports.push(journal_priorities::journal_priorities(&n));
                }
                if let Some(b) = bench::bench_boot(&n.machine.boots) {
                    bench_text.push_str(&format!(
                        "kmod-day1-load vs modprobe (same boot {}, same store tree):\n",
                        b.number
                    ));
                    bench_text.push_str(&bench::loader_vs_modprobe(b));
                }
                if let Some(last) = n.machine.boots.last() {
                    bench_text.push_str(&bench::milestones("several configs, 5 sets", last));
                }
            }
            Err(e) => {
                for n in ["several-modules", "broken-module", "journal-priorities"]
                    .into_iter()
                    .filter(|n| wants(n))
                {
                    reports.push(failed(n, &e));
                }
            }
        }
        info!("multi node: {:.0} s", t.elapsed().as_secs_f64());
    }
    if wants("modprobe-config") {
        let t = Instant::now();
        reports.push(modprobe_config::run(lab).unwrap_or_else(|e| failed("modprobe-config", &e)));
        info!("modprobe-config node: {:.0} s", t.elapsed().as_secs_f64());
    }
    if wants("no-in-tree-driver-initrd") {
        let t = Instant::now();
        reports.push(
            no_in_tree_driver::run_initrd(lab)
                .unwrap_or_else(|e| failed("no-in-tree-driver-initrd", &e)),
        );
        info!("no-in-tree node: {:.0} s", t.elapsed().as_secs_f64());
    }
    if wants("no-in-tree-driver-bundle") {
        let t = Instant::now();
        reports.push(
            no_in_tree_driver::run_bundle(lab)
                .unwrap_or_else(|e| failed("no-in-tree-driver-bundle", &e)),
        );
        info!(
            "no-in-tree bundle nodes: {:.0} s",
            t.elapsed().as_secs_f64()
        );
    }
    if wants("registry-down") {
        let t = Instant::now();
        reports.push(registry_down::run(lab).unwrap_or_else(|e| failed("registry-down", &e)));
        info!("registry-down node: {:.0} s", t.elapsed().as_secs_f64());
    }
    if wants("nic-not-bound") {
        let t = Instant::now();
        reports.push(nic_not_bound::run(lab).unwrap_or_else(|e| failed("nic-not-bound", &e)));
        info!("nic-not-bound node: {:.0} s", t.elapsed().as_secs_f64());
    }
    if wants("power-cut") {
        let t = Instant::now();
        reports.push(power_cut::run(lab).unwrap_or_else(|e| failed("power-cut", &e)));
        info!("power-cut node: {:.0} s", t.elapsed().as_secs_f64());
    }
    if wants("policy-reject") {
        let t = Instant::now();
        reports.push(policy_reject::run(lab).unwrap_or_else(|e| failed("policy-reject", &e)));
        info!("policy-reject node: {:.0} s", t.elapsed().as_secs_f64());
    }
    if wants("sig-enforced") {
        let t = Instant::now();
        reports.push(sig_enforced::run(lab).unwrap_or_else(|e| failed("sig-enforced", &e)));
        info!("sig-enforced node: {:.0} s", t.elapsed().as_secs_f64());
    }
    let ostree_stage = if wants("ostree-rollback") {
        Some(ostree_node::Stage::Rollback)
    } else if wants("ostree-staged-upgrade") {
        Some(ostree_node::Stage::Upgrade)
    } else if wants("ostree-cached-boot") {
        Some(ostree_node::Stage::Cached)
    } else if wants("ostree-first-apply") {
        Some(ostree_node::Stage::FirstApply)
    } else {
        None
    };
    if let Some(stage) = ostree_stage {
        let t = Instant::now();
        let (base, upgrade) = (&lab.img.base.release, &lab.img.upgrade.release);
        match ostree_node::run(lab, stage) {
            Ok(n) => {
                if wants("ostree-first-apply") {
                    reports.push(ostree_node::first_apply(&n));
                }
                if wants("ostree-cached-boot") {
                    reports.push(ostree_node::cached_boot(&n));
                }
                if wants("ostree-staged-upgrade") {
                    reports.push(ostree_node::staged_upgrade(&n, base, upgrade));
                }
                if wants("ostree-rollback") {
                    reports.push(ostree_node::rollback(&n, base));
                }
            }
            Err(e) => {
                for n in [
                    "ostree-first-apply",
                    "ostree-cached-boot",
                    "ostree-staged-upgrade",
                    "ostree-rollback",
                ]
                .into_iter()
                .filter(|n| wants(n))
                {
                    reports.push(failed(n, &e));
                }
            }
        }
        info!("ostree node: {:.0} s", t.elapsed().as_secs_f64());
    }
    Ok(Outcome {
        reports,
        bench: bench_text,
    })
}
