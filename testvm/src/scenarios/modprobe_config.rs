// SPDX-License-Identifier: Apache-2.0
//! Scenario **modprobe config** (issue 14): the node's modprobe configuration applies to what
//! kmod-day1-load loads, as it would with modprobe. A node of its own, two boots (the first
//! apply's pull and reboot, then the swap):
//!
//! - `/etc/modprobe.d/kd1.conf` gives `kd1_main` an option (`level=5`) and a softdep
//!   (`pre: dummy`, an in-tree module); the kernel command line gives it another
//!   (`kd1_main.greeting=fromcmdline`): both show in `/sys/module/kd1_main/parameters`, and
//!   `dummy` is loaded before it;
//! - `kmod-day1-load --dry-run --json`, run just before the real run of the same boot (a
//!   test-only `ExecStartPre=`), plans the order the loader then logs to the kernel log and
//!   records in its status;
//! - the `failinit` set swaps e1000 and then fails (`kd1_fail`'s init fails): the rollback
//!   loads the in-tree e1000 back with its `/etc/modprobe.d` option (`copybreak=123`).

use anyhow::Result;
use kmod_day1_contract::SetState;

use crate::lab::{Lab, NodeOptions};
use crate::node_config::{module_set, NodeConfigFile};
use crate::qemu::BootEnd;
use crate::scenarios::e1000_node::boot_logged;
use crate::scenarios::facts::{check_boot_ends, check_end, check_network, BootFacts};
use crate::scenarios::report::Report;

/// The node's config.
pub const CONFIG: &str = "70-kd1-modprobe";

/// The node's modprobe configuration.
const MODPROBE_CONF: &str = "# testvm: modprobe-config\n\
options kd1_main level=5\n\
softdep kd1_main pre: dummy\n\
options e1000 copybreak=123\n";

/// A module parameter on the kernel command line (kmod reads it from /proc/cmdline, and so
/// does kmod-day1-load; the kernel itself does not apply it to a module loaded later).
const CMDLINE: &str = "kd1_main.greeting=fromcmdline";

/// The dry run, just before the real run, into /run (a test-only drop-in).
const DRY_RUN_DROPIN: &str = "[Service]\n\
ExecStartPre=-/bin/sh -c '/usr/local/bin/kmod-day1-load --dry-run --json > /run/kd1-dry-run.json'\n";

/// Run by the final marker unit: the dry run's plan and e1000's copybreak as markers.
const MARK_SCRIPT: &str = r#"#!/bin/bash
# testvm modprobe-config: the dry run's plan and e1000's copybreak.
mark() { printf 'KD1-MARK final.%s=%s\n' "$1" "$2" >&3; }
i=0
while IFS= read -r line; do
    mark "dry_run.b64.$i" "$line"
    i=$((i + 1))
done < <(base64 -w 600 /run/kd1-dry-run.json 2>/dev/null)
mark e1000_copybreak "$(cat /sys/module/e1000/parameters/copybreak 2>/dev/null || echo none)"
"#;

/// Runs the scenario.
pub fn run(lab: &mut Lab) -> Result<Report> {
    let mut r = Report::new("modprobe-config");
    let cfg = NodeConfigFile {
        name: CONFIG.into(),
        module_sets: vec![
            module_set("kd1", &lab.image_ref("kd1/kd1"), &[("kd1_main", &[])], &[]),
            module_set(
                "failinit",
                &lab.image_ref("kd1/failinit"),
                &[("e1000", &[]), ("kd1_fail", &[])],
                &["e1000"],
            ),
        ],
    };
    let mut m = lab.node(
        "modprobe",
        &NodeOptions {
            configs: vec![cfg],
            bench_script: Some(MARK_SCRIPT.into()),
            files: vec![
                ("/etc/modprobe.d/kd1.conf".into(), MODPROBE_CONF.into()),
                (
                    "/etc/systemd/system/kmod-day1-load.service.d/80-testvm-dry-run.conf".into(),
                    DRY_RUN_DROPIN.into(),
                ),
            ],
            ..NodeOptions::default()
        },
    )?;
    m.extra_cmdline = CMDLINE.into();
    let mut reg = vec![];
    for _ in 0..2 {
        if boot_logged(lab, &mut m, &mut reg, &mut || false)? != BootEnd::Reboot {
            break;
        }
    }
    check_boot_ends(
        &mut r,
        "first apply: one reboot, then the swap boot powers off",
        &m.boots,
        0,
        &[BootEnd::Reboot, BootEnd::PowerOff],
    );
    let Some(b) = m.boots.get(1) else {
        return Ok(r);
    };
    check_end(&mut r, b, BootEnd::PowerOff);
    let f = BootFacts::new(b);
    check_network(&mut r, &f);

    // Options from /etc/modprobe.d and the command line.
    let level = f.get("param.kd1_main.level");
    let greeting = f.get("param.kd1_main.greeting");
    r.check(
        "kd1_main has level=5 from /etc/modprobe.d and greeting=fromcmdline from the kernel command line",
        level == Some("5") && greeting == Some("fromcmdline"),
        format!("level={level:?} greeting={greeting:?}"),
        || f.excerpt("kd1_main"),
    );

    // The softdep, and one order: the dry run's, the status file's, the kernel log's.
    let status = f.status();
    let set = |name: &str| {
        status
            .as_ref()
            .and_then(|s| s.sets.iter().find(|x| x.set == name).cloned())
    };
    let loaded: Vec<String> = set("kd1")
        .map(|s| s.modules.iter().map(|m| m.name.clone()).collect())
        .unwrap_or_default();
    let pos = |n: &str| loaded.iter().position(|x| x == n);
    r.check(
        "the softdep pre: module dummy is loaded before kd1_main",
        matches!((pos("dummy"), pos("kd1_main")), (Some(a), Some(b)) if a < b),
        format!("kd1 set loaded {loaded:?}"),
        || f.file("status").unwrap_or_default(),
    );
    let dry: Option<serde_json::Value> = f
        .file("dry_run")
        .and_then(|t| serde_json::from_str(&t).ok());
    let planned: Vec<String> = dry
        .as_ref()
        .and_then(|d| {
            d["sets"]
                .as_array()?
                .iter()
                .find(|s| s["set"] == "kd1")?
                .get("load")?
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter_map(|m| m["name"].as_str().map(str::to_owned))
                        .collect()
                })
        })
        .unwrap_or_default();
    let label = format!("{CONFIG}/kd1: loaded ");
    let logged: Vec<String> = b
        .serial
        .lines()
        .filter_map(|l| l.split_once(&label))
        .filter_map(|(_, rest)| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    r.check(
        "the dry run's order is the order the loader loaded (status) and logged (kernel log)",
        !planned.is_empty() && planned == loaded && planned == logged,
        format!("dry run {planned:?}, status {loaded:?}, kernel log {logged:?}"),
        || {
            format!(
                "dry run:\n{}\n--- kernel log ---\n{}",
                f.file("dry_run")
                    .unwrap_or_else(|| "(no dry_run marker)".into()),
                f.excerpt(&format!("{CONFIG}/kd1"))
            )
        },
    );
    r.fact("kd1 load order", planned.join(", "));

    // The rollback loads the in-tree e1000 back with its modprobe.d option. When udev's
    // coldplug is still running (a slow boot), udev's own modprobe may load it first, between
    // the loader's unload and its reload: the loader then says so and checks the NIC is bound
    // to it again. Either way the node's modprobe.d applies, which is what this asserts.
    let failinit = set("failinit");
    let copybreak = f.get("e1000_copybreak");
    let said = |what: &str| {
        b.serial
            .lines()
            .any(|l| l.contains(&format!("{CONFIG}/failinit: rollback: {what}")))
    };
    let by = if said("loaded back in-tree e1000") {
        "the loader"
    } else if said("in-tree e1000 was loaded meanwhile (udev)") {
        "udev's modprobe, during the rollback"
    } else {
        "nobody said"
    };
    let rebound = b.serial.lines().any(|l| {
        l.contains(&format!("{CONFIG}/failinit: rollback: "))
            && l.contains("bound to in-tree e1000 again")
    });
    r.check(
        "failinit: rolled back, the in-tree e1000 loaded back with copybreak=123 from /etc/modprobe.d and the NIC bound to it",
        failinit
            .as_ref()
            .is_some_and(|s| s.state == SetState::Failed && s.rolled_back)
            && by != "nobody said"
            && rebound
            && !f.oot_e1000()
            && copybreak == Some("123"),
        format!(
            "state {:?}, loaded back by {by}, NIC bound again: {rebound}, e1000 version {}, copybreak {copybreak:?}",
            failinit.as_ref().map(|s| s.state),
            f.e1000_version()
        ),
        || f.excerpt("failinit"),
    );
    Ok(r)
}
