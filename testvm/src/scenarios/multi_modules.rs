// SPDX-License-Identifier: Apache-2.0
//! One node with two configs (two MachineConfigs), three boots, two scenarios:
//!
//! - **several modules** (scenario 5): `kd1_main` pulls in `kd1_dep` first (from the
//!   image's modules.dep), gets its parameters, and finds its firmware; ten bench modules
//!   load in the same set list.
//! - **broken module** (scenario 4): `broken` ships an e1000 with a wrong vermagic (the
//!   loader's preflight refuses it, the in-tree e1000 stays); `failinit` swaps e1000 and then
//!   loads a module whose init fails (the loader rolls back to the in-tree e1000). The
//!   network stays up, the status says why, and no reboot loop follows over two more boots.
//! - **journal priorities** (issue 8): the units log to the journal only, as shipped;
//!   `unpublished` maps only the newer kernel to an image the registry does not have, so
//!   every boot's pull fails its prefetch (without holding back the first apply's reboot),
//!   and `journalctl -p err` must list that and the loader's errors (see
//!   journal_priorities.rs).
//!
//! The bench of loader against modprobe runs in the last boot (see bench.rs).

use anyhow::Result;
use kmod_day1_contract::SetState;
use serde_json::json;

use crate::bench;
use crate::guest_overlay::UnitLog;
use crate::lab::{Lab, NodeOptions};
use crate::markers::first_line;
use crate::modules_build::BENCH_MODULES;
use crate::node_config::{module_set, NodeConfigFile};
use crate::qemu::{BootEnd, Machine};
use crate::scenarios::e1000_node::boot_logged;
use crate::scenarios::facts::{check_boot_ends, check_end, check_network, BootFacts};
use crate::scenarios::report::Report;

/// Config name of the working modules (also used by the bench).
pub const MULTI_CONFIG: &str = "50-kd1-multi";

/// Config name of the sets that fail.
pub const BROKEN_CONFIG: &str = "60-kd1-broken";

/// Repository that is never pushed: the `unpublished` set's image for the newer kernel.
pub const UNPUBLISHED_REPO: &str = "kd1/unpublished";

/// The node after its three boots.
pub struct MultiNode {
    /// The machine.
    pub machine: Machine,
}

fn bench_names() -> Vec<String> {
    (0..BENCH_MODULES)
        .map(|i| format!("kd1_bench{i}"))
        .collect()
}

/// The configs.
pub fn configs(lab: &Lab) -> Vec<NodeConfigFile> {
    let mut kd1 = module_set(
        "kd1",
        &lab.image_ref("kd1/kd1"),
        &[("kd1_main", &["level=7", "greeting=hello"])],
        &[],
    );
    kd1["firmwarePath"] = json!("/firmware");
    let names = bench_names();
    let bench_mods: Vec<(&str, &[&str])> = names.iter().map(|n| (n.as_str(), &[][..])).collect();
    let bench = module_set("bench", &lab.image_ref("kd1/bench"), &bench_mods, &[]);
    // An image for the newer kernel only, not built yet: the running kernel has none.
    let unpublished = json!({
        "name": "unpublished",
        "kernelMappings": [{
            "literal": lab.img.upgrade.release,
            "containerImage": lab.image_ref(UNPUBLISHED_REPO),
        }],
        "modules": [{"name": "kd1_dep"}],
    });
    vec![
        NodeConfigFile {
            name: MULTI_CONFIG.into(),
            module_sets: vec![kd1, bench],
        },
        NodeConfigFile {
            name: BROKEN_CONFIG.into(),
            module_sets: vec![
                module_set(
                    "broken",
                    &lab.image_ref("kd1/broken"),
                    &[("e1000", &[])],
                    &["e1000"],
                ),
                module_set(
                    "failinit",
                    &lab.image_ref("kd1/failinit"),
                    &[("e1000", &[]), ("kd1_fail", &[])],
                    &["e1000"],
                ),
                unpublished,
            ],
        },
    ]
}

/// Boots the node three times (first apply, then two more).
pub fn run(lab: &Lab) -> Result<MultiNode> {
    let mut machine = lab.node(
        "multi",
        &NodeOptions {
            configs: configs(lab),
            bench_script: Some(bench::script(MULTI_CONFIG, "bench")),
            files: bench::config_files(lab, MULTI_CONFIG, "bench"),
            unit_log: UnitLog::Journal,
            ..NodeOptions::default()
        },
    )?;
    let mut reg = vec![];
    for _ in 0..3 {
        let end = boot_logged(lab, &mut machine, &mut reg, &mut || false)?;
        if !matches!(end, BootEnd::Reboot | BootEnd::PowerOff) {
            break;
        }
    }
    Ok(MultiNode { machine })
}

/// Scenario 5: several modules.
pub fn several_modules(n: &MultiNode) -> Report {
    let mut r = Report::new("several-modules");
    let Some(b) = n.machine.boots.get(1) else {
        r.error = Some("the node did not reach its second boot".into());
        return r;
    };
    check_end(&mut r, &n.machine.boots[0], BootEnd::Reboot);
    check_end(&mut r, b, BootEnd::PowerOff);
    let f = BootFacts::new(b);
    let status = f.status();
    let kd1 = status
        .as_ref()
        .and_then(|s| s.sets.iter().find(|s| s.set == "kd1").cloned());
    let order: Vec<String> = kd1
        .as_ref()
        .map(|s| s.modules.iter().map(|m| m.name.clone()).collect())
        .unwrap_or_default();
    r.check(
        "kd1 set loaded, dependency first",
        kd1.as_ref().map(|s| s.state) == Some(SetState::Loaded) && order == ["kd1_dep", "kd1_main"],
        format!(
            "state {:?}, load order {order:?}",
            kd1.as_ref().map(|s| s.state)
        ),
        || f.file("status").unwrap_or_default(),
    );
    let t_dep = first_line(&b.serial, "kd1_dep: loaded").and_then(|(t, _)| t);
    let t_main = first_line(&b.serial, "kd1_main: loaded").and_then(|(t, _)| t);
    r.check(
        "kernel log: kd1_dep initialised before kd1_main",
        matches!((t_dep, t_main), (Some(a), Some(b)) if a <= b),
        format!("kd1_dep at {t_dep:?} s, kd1_main at {t_main:?} s"),
        || f.excerpt("kd1_"),
    );
    let level = f.get("param.kd1_main.level");
    let greeting = f.get("param.kd1_main.greeting");
    r.check(
        "parameters visible in /sys/module/kd1_main/parameters",
        level == Some("7") && greeting == Some("hello"),
        format!("level={level:?} greeting={greeting:?}"),
        || f.excerpt("kd1_main"),
    );
    let fw_files = f.file("firmware_files").unwrap_or_default();
    let fw_loaded = b
        .serial
        .contains("kd1_main: firmware kd1/kd1-fw.bin loaded");
    r.check(
        "firmware file in place and found by the module",
        fw_files.contains("kd1/kd1-fw.bin") && fw_loaded,
        format!(
            "firmware files [{}], module {}",
            fw_files.trim().replace('\n', " "),
            if fw_loaded {
                "loaded it"
            } else {
                "did not load it"
            }
        ),
        || f.excerpt("kd1_main: firmware"),
    );
    let loaded = f.get("modules").unwrap_or_default();
    let bench_loaded = bench_names()
        .iter()
        .filter(|m| loaded.split_whitespace().any(|x| x == m.as_str()))
        .count();
    r.check(
        "ten modules of one set loaded",
        bench_loaded == BENCH_MODULES,
        format!("{bench_loaded} of {BENCH_MODULES} bench modules in /proc/modules"),
        || loaded.to_owned(),
    );
    r
}

/// Scenario 4: broken module.
pub fn broken_module(n: &MultiNode) -> Report {
    let mut r = Report::new("broken-module");
    let boots = &n.machine.boots;
    check_boot_ends(
        &mut r,
        "one reboot for the first apply, then no reboot loop over two more boots",
        boots,
        0,
        &[BootEnd::Reboot, BootEnd::PowerOff, BootEnd::PowerOff],
    );
    for b in boots.iter().skip(1) {
        let f = BootFacts::new(b);
        let n = b.number;
        let status = f.status();
        let set = |name: &str| {
            status
                .as_ref()
                .and_then(|s| s.sets.iter().find(|x| x.set == name).cloned())
        };
        let broken = set("broken");
        r.check(
            &format!("boot {n}: wrong vermagic refused, status says why"),
            broken.as_ref().is_some_and(|s| {
                s.state == SetState::Failed
                    && s.error
                        .as_deref()
                        .unwrap_or_default()
                        .to_lowercase()
                        .contains("vermagic")
            }),
            format!(
                "state {:?}, error {:?}",
                broken.as_ref().map(|s| s.state),
                broken.as_ref().and_then(|s| s.error.clone())
            ),
            || f.file("status").unwrap_or_else(|| f.journal()),
        );
        let fail = set("failinit");
        r.check(
            &format!("boot {n}: failing init rolled back"),
            fail.as_ref()
                .is_some_and(|s| s.state == SetState::Failed && s.rolled_back),
            format!(
                "state {:?}, rolledBack {:?}, error {:?}",
                fail.as_ref().map(|s| s.state),
                fail.as_ref().map(|s| s.rolled_back),
                fail.as_ref().and_then(|s| s.error.clone())
            ),
            || f.journal(),
        );
        r.check(
            &format!("boot {n}: in-tree e1000 back and bound"),
            !f.oot_e1000() && f.get("eth0_driver") == Some("e1000"),
            format!(
                "e1000 version {}, eth0 driver {:?}",
                f.e1000_version(),
                f.get("eth0_driver")
            ),
            || f.excerpt("e1000"),
        );
        check_network(&mut r, &f);
        r.check(
            &format!("boot {n}: the loader exits 1 (failed and rolled back)"),
            f.unit_prop("kmod-day1-load.service", "ExecMainStatus")
                .as_deref()
                == Some("1"),
            format!(
                "ExecMainStatus={:?}",
                f.unit_prop("kmod-day1-load.service", "ExecMainStatus")
            ),
            || f.journal(),
        );
    }
    r
}
