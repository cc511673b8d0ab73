// SPDX-License-Identifier: Apache-2.0
//! The scenarios of issue 5 (and issue 8's journal priorities, issue 14's modprobe
//! configuration), each a named test with pass/fail and evidence. Nodes are shared by
//! scenarios that are steps of the same life (see each file), so the suite fits CI's time
//! budget; every scenario still runs on its own with `testvm scenario NAME`.

pub mod e1000_node;
pub mod facts;
pub mod journal_priorities;
pub mod kmod_update;
pub mod lanes;
pub mod mco_rollout;
pub mod modprobe_config;
pub mod multi_modules;
pub mod nic_not_bound;
pub mod no_in_tree_driver;
pub mod ostree_initramfs;
pub mod ostree_node;
pub mod ostree_upgrade_no_image;
pub mod policy_reject;
pub mod power_cut;
pub mod registry_down;
pub mod report;
pub mod sig_enforced;

use std::time::Instant;

use anyhow::{bail, Result};
use tracing::{error, info};

use crate::bench;
use crate::dirs::Dirs;
use crate::lab::{Lab, Shared};
use crate::ostree_image;
use e1000_node::Stage;
use lanes::{Job, Part};
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
    "ostree-upgrade-no-image",
    "overlay-initrd",
    "initramfs-stage",
    "mco-rollout-prestaged",
    "kmod-update",
    "mco-rollout",
    "node-image-missing",
];

/// The outcome of a run of scenarios.
pub struct Outcome {
    /// One report per scenario.
    pub reports: Vec<Report>,
    /// Timings text.
    pub bench: String,
    /// Seconds spent in setup, by step.
    pub setup_secs: Vec<(String, f64)>,
}

fn failed(name: &str, e: &anyhow::Error) -> Report {
    error!("scenario {name}: {e:#}");
    let mut r = Report::new(name);
    r.error = Some(format!("{e:#}"));
    r
}

/// What was asked for.
pub struct Wants {
    names: Vec<String>,
    bench: bool,
}

impl Wants {
    fn has(&self, n: &str) -> bool {
        self.names.iter().any(|x| x == n)
    }
}

/// One node's life and the scenarios it reports.
struct Node<'a> {
    /// For the log.
    name: &'static str,
    /// The scenarios it reports (any of them wanted runs it).
    scenarios: &'static [&'static str],
    /// Seconds it took in CI's last run (one lane), to balance the lanes.
    secs: u32,
    /// Whether `bench` boots it for its timings.
    bench: bool,
    /// Whether it needs the ostree tools root (built before lanes start).
    ostree: bool,
    run: fn(&mut Lab, &Wants) -> Result<Part>,
    wants: &'a Wants,
}

impl Node<'_> {
    fn wanted(&self) -> bool {
        (self.wants.bench && self.bench) || self.scenarios.iter().any(|n| self.wants.has(n))
    }
}

impl Job for Node<'_> {
    fn expected_secs(&self) -> u32 {
        self.secs
    }

    fn run(&self, lab: &mut Lab) -> Part {
        let t = Instant::now();
        let part = (self.run)(lab, self.wants).unwrap_or_else(|e| self.not_run(&e));
        info!("{} node: {:.0} s", self.name, t.elapsed().as_secs_f64());
        part
    }

    fn not_run(&self, e: &anyhow::Error) -> Part {
        let w = self.wants;
        Part {
            reports: self
                .scenarios
                .iter()
                .filter(|n| w.has(n))
                .map(|n| failed(n, e))
                .collect(),
            bench: String::new(),
        }
    }
}

/// Every node, in report order.
fn nodes(wants: &Wants) -> Vec<Node<'_>> {
    let node = |name, scenarios, secs, run| Node {
        name,
        scenarios,
        secs,
        bench: false,
        ostree: false,
        run,
        wants,
    };
    vec![
        Node {
            bench: true,
            ..node(
                "e1000",
                &["first-apply", "cached-boot", "kernel-upgrade"],
                256,
                run_e1000,
            )
        },
        Node {
            bench: true,
            ..node(
                "multi",
                &["several-modules", "broken-module", "journal-priorities"],
                182,
                run_multi,
            )
        },
        node("modprobe-config", &["modprobe-config"], 93, |lab, _| {
            one(modprobe_config::run(lab))
        }),
        Node {
            bench: true,
            ..node(
                "no-in-tree initrd",
                &["no-in-tree-driver-initrd"],
                71,
                |lab, w| install_time(no_in_tree_driver::run_initrd(lab)?, w),
            )
        },
        Node {
            bench: true,
            ..node(
                "no-in-tree bundle",
                &["no-in-tree-driver-bundle"],
                145,
                |lab, w| install_time(no_in_tree_driver::run_bundle(lab)?, w),
            )
        },
        node("registry-down", &["registry-down"], 275, |lab, _| {
            one(registry_down::run(lab))
        }),
        node("nic-not-bound", &["nic-not-bound"], 144, |lab, _| {
            one(nic_not_bound::run(lab))
        }),
        node("power-cut", &["power-cut"], 143, |lab, _| {
            one(power_cut::run(lab))
        }),
        node("policy-reject", &["policy-reject"], 137, |lab, _| {
            one(policy_reject::run(lab))
        }),
        node("sig-enforced", &["sig-enforced"], 108, |lab, _| {
            one(sig_enforced::run(lab))
        }),
        Node {
            ostree: true,
            bench: true,
            ..node(
                "ostree",
                &[
                    "ostree-first-apply",
                    "ostree-cached-boot",
                    "ostree-staged-upgrade",
                    "ostree-rollback",
                ],
                319,
                run_ostree,
            )
        },
        Node {
            ostree: true,
            ..node(
                "ostree-noimg",
                &["ostree-upgrade-no-image"],
                280,
                |lab, _| one(ostree_upgrade_no_image::run(lab)),
            )
        },
        Node {
            ostree: true,
            ..node(
                "ostree-initramfs",
                &["overlay-initrd", "initramfs-stage"],
                300,
                |lab, w| {
                    Ok(Part {
                        reports: ostree_initramfs::run(
                            lab,
                            w.has("overlay-initrd"),
                            w.has("initramfs-stage"),
                        )?,
                        bench: String::new(),
                    })
                },
            )
        },
        Node {
            ostree: true,
            bench: true,
            ..node(
                "mco-prestaged",
                &["mco-rollout-prestaged", "kmod-update"],
                520,
                |lab, w| {
                    let update = w.has("kmod-update");
                    let later = if update {
                        kmod_update::later_states(lab)?
                    } else {
                        vec![]
                    };
                    let (mut n, ok) = mco_rollout::prestaged_node(lab, &later)?;
                    let mut reports = vec![mco_rollout::rollout_prestaged(&n)];
                    if update {
                        if ok {
                            kmod_update::boot(&mut n, lab)?;
                        }
                        reports.push(kmod_update::report(lab, &n));
                    }
                    let mut bench = String::new();
                    if w.bench {
                        let fact = |k| {
                            reports
                                .iter()
                                .find_map(|r| r.fact_value(k))
                                .unwrap_or("?")
                                .to_owned()
                        };
                        bench = format!(
                            "MachineConfigPool rollout, first apply with the prestage: {} reboots\n",
                            fact("reboots for a first apply through MCO with a prestage")
                        );
                        if update {
                            bench += &format!(
                                "MachineConfigPool kmod update: {} reboots with --on-change reboot, {} with next-boot\n",
                                fact("reboots per kmod update with --on-change reboot"),
                                fact("reboots per kmod update with --on-change next-boot")
                            );
                        }
                    }
                    Ok(Part { reports, bench })
                },
            )
        },
        Node {
            ostree: true,
            bench: true,
            ..node("mco-rollout", &["mco-rollout"], 409, |lab, w| {
                let r = mco_rollout::rollout(lab)?;
                let mut bench = String::new();
                if w.bench {
                    let fact = |k| r.fact_value(k).unwrap_or("?").to_owned();
                    bench = format!(
                        "MachineConfigPool rollout, first apply without a prestage: {} reboots; MachineConfig {}\n",
                        fact("reboots for a first apply through MCO without a prestage"),
                        fact("MachineConfig size (e1000, --delivery image)")
                    );
                }
                Ok(Part {
                    reports: vec![r],
                    bench,
                })
            })
        },
        Node {
            ostree: true,
            ..node(
                "node-image-missing",
                &["node-image-missing"],
                308,
                |lab, _| one(mco_rollout::image_missing(lab)),
            )
        },
    ]
}

/// An install-time node's part: with the bench, the reboots it cost and the sizes of what
/// carried kmod-day1 (from its report's facts).
fn install_time(r: Report, w: &Wants) -> Result<Part> {
    let mut bench = String::new();
    if w.bench {
        let fact = |k| r.fact_value(k).unwrap_or("?");
        bench = format!(
            "install time, {}: {} reboots added by kmod-day1 (KMM: 1, and only with a working in-tree NIC driver); {}\n",
            r.scenario,
            fact("reboots added by kmod-day1"),
            fact("carried by")
        );
    }
    Ok(Part {
        reports: vec![r],
        bench,
    })
}

fn one(r: Result<Report>) -> Result<Part> {
    Ok(Part {
        reports: vec![r?],
        bench: String::new(),
    })
}

/// Lanes when `KMOD_DAY1_VM_LANES` does not say: CI's machine has 2 cores.
const DEFAULT_LANES: usize = 2;

/// How many lanes: `KMOD_DAY1_VM_LANES`, else [`DEFAULT_LANES`]; timings (`bench`) take 1.
fn lanes(bench_only: bool) -> usize {
    if bench_only {
        return 1;
    }
    std::env::var("KMOD_DAY1_VM_LANES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_LANES)
}

/// Runs the named scenarios (and the bench boots when `with_bench`), in lanes side by
/// side unless only timings are asked for.
pub fn run(dirs: Dirs, names: &[&str], with_bench: bool) -> Result<Outcome> {
    for n in names {
        if !NAMES.contains(n) {
            bail!(
                "unknown scenario {n:?}; the scenarios are: {}",
                NAMES.join(", ")
            );
        }
    }
    let wants = Wants {
        names: names.iter().map(|n| (*n).to_owned()).collect(),
        bench: with_bench,
    };
    let nodes: Vec<Node> = nodes(&wants).into_iter().filter(Node::wanted).collect();
    let lanes = lanes(names.is_empty()).min(nodes.len().max(1));
    crate::dirs::check_free_space(&dirs.work, lanes)?;
    let shared = Shared::prepare(dirs)?;
    let mut setup_secs = shared.setup_secs.clone();
    if nodes.iter().any(|n| n.ostree) {
        let t = Instant::now();
        ostree_image::ensure_tools(&shared.dirs, &shared.img)?;
        setup_secs.push(("ostree tools".into(), t.elapsed().as_secs_f64()));
    }
    crate::qemu::set_vcpus(if lanes > 1 { 1 } else { 2 });
    let jobs: Vec<&dyn Job> = nodes.iter().map(|n| n as &dyn Job).collect();
    let (parts, lane_secs) = lanes::run(&shared, &jobs, lanes);
    setup_secs.extend(lane_secs);
    let mut reports = vec![];
    let mut bench_text = String::new();
    if with_bench && lanes > 1 {
        bench_text.push_str(&format!(
            "(measured with {lanes} lanes of nodes side by side: `make bench` boots alone)\n"
        ));
    }
    for p in parts {
        reports.extend(p.reports);
        bench_text.push_str(&p.bench);
    }
    Ok(Outcome {
        reports,
        bench: bench_text,
        setup_secs,
    })
}

fn run_e1000(lab: &mut Lab, w: &Wants) -> Result<Part> {
    let stage = if w.bench {
        Stage::Baseline
    } else if w.has("kernel-upgrade") {
        Stage::Upgrade
    } else if w.has("cached-boot") {
        Stage::Cached
    } else {
        Stage::FirstApply
    };
    let n = e1000_node::run(lab, stage)?;
    let mut p = Part::default();
    if w.has("first-apply") {
        p.reports.push(e1000_node::first_apply(&n));
    }
    if w.has("cached-boot") {
        p.reports.push(e1000_node::cached_boot(&n));
    }
    if w.has("kernel-upgrade") {
        p.reports
            .push(e1000_node::kernel_upgrade(&n, &lab.img.upgrade.release));
    }
    if w.bench {
        p.reports.push(e1000_node::baseline(&n));
        p.bench = e1000_node::timings(&n);
    }
    Ok(p)
}

fn run_multi(lab: &mut Lab, w: &Wants) -> Result<Part> {
    let n = multi_modules::run(lab)?;
    let mut p = Part::default();
    if w.has("several-modules") {
        p.reports.push(multi_modules::several_modules(&n));
    }
    if w.has("broken-module") {
        p.reports.push(multi_modules::broken_module(&n));
    }
    if w.has("journal-priorities") {
        p.reports.push(journal_priorities::journal_priorities(&n));
    }
    if let Some(b) = bench::bench_boot(&n.machine.boots) {
        p.bench.push_str(&format!(
            "kmod-day1-load vs modprobe (same boot {}, same store tree):\n",
            b.number
        ));
        p.bench.push_str(&bench::loader_vs_modprobe(b));
    }
    if let Some(last) = n.machine.boots.last() {
        p.bench
            .push_str(&bench::milestones("several configs, 5 sets", last));
    }
    Ok(p)
}

fn run_ostree(lab: &mut Lab, w: &Wants) -> Result<Part> {
    let stage = if w.bench || w.has("ostree-rollback") {
        ostree_node::Stage::Rollback
    } else if w.has("ostree-staged-upgrade") {
        ostree_node::Stage::Upgrade
    } else if w.has("ostree-cached-boot") {
        ostree_node::Stage::Cached
    } else {
        ostree_node::Stage::FirstApply
    };
    let n = ostree_node::run(lab, stage)?;
    let (base, upgrade) = (&lab.img.base.release, &lab.img.upgrade.release);
    let mut p = Part::default();
    if w.has("ostree-first-apply") {
        p.reports.push(ostree_node::first_apply(&n));
    }
    if w.has("ostree-cached-boot") {
        p.reports.push(ostree_node::cached_boot(&n));
    }
    if w.has("ostree-staged-upgrade") {
        p.reports
            .push(ostree_node::staged_upgrade(&n, base, upgrade));
    }
    if w.has("ostree-rollback") {
        p.reports.push(ostree_node::rollback(&n, base));
    }
    if w.bench {
        p.bench = ostree_node::timings(&n);
    }
    Ok(p)
}
