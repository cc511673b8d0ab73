// SPDX-License-Identifier: Apache-2.0
//! Scenario 3, **registry down**: the node boots on the in-tree driver, the pull fails with a
//! clear message and no reboot; once the registry is back, the next boot pulls and reboots
//! once, and the boot after it swaps.

use anyhow::Result;
use kmod_day1_contract::SetState;

use crate::lab::{Lab, NodeOptions};
use crate::qemu::BootEnd;
use crate::scenarios::e1000_node::{boot_logged, config};
use crate::scenarios::facts::{
    check_boot_ends, check_end, check_network, check_oot_before_nm, BootFacts,
};
use crate::scenarios::report::Report;

/// The pull's retry budget on this node: the default (600 s) is made for real registries
/// that come back; the scenario only needs to see it give up (test-only drop-in).
const PULL_BUDGET_DROPIN: &str = "ExecStart=\nExecStart=/usr/local/bin/kmod-day1-pull --budget 40";

/// Runs the scenario.
pub fn run(lab: &mut Lab) -> Result<Report> {
    let mut r = Report::new("registry-down");
    let mut m = lab.node(
        "regdown",
        &NodeOptions {
            configs: vec![config(lab)],
            pull_dropin: Some(PULL_BUDGET_DROPIN.into()),
            ..NodeOptions::default()
        },
    )?;
    let mut reg = vec![];
    lab.registry.stop()?;
    let end1 = boot_logged(lab, &mut m, &mut reg, &mut || false);
    lab.registry.resume()?;
    end1?;
    let b1 = &m.boots[0];
    check_end(&mut r, b1, BootEnd::PowerOff);
    let f1 = BootFacts::new(b1);
    r.check(
        "registry down: in-tree e1000",
        !f1.oot_e1000(),
        format!("e1000 version {}", f1.e1000_version()),
        || f1.excerpt("e1000"),
    );
    check_network(&mut r, &f1);
    let journal = f1.journal();
    let pull_error = journal
        .lines()
        .chain(b1.serial.lines())
        .find(|l| l.contains("kmod-day1-pull") && (l.contains("ERROR") || l.contains("failed")))
        .unwrap_or("(no error line from kmod-day1-pull)")
        .to_owned();
    let result = f1.unit_prop("kmod-day1-pull.service", "Result");
    let status = f1.unit_prop("kmod-day1-pull.service", "ExecMainStatus");
    r.check(
        "registry down: the pull unit fails with a message",
        result.as_deref() != Some("success") && status.as_deref() == Some("1"),
        format!("Result={result:?} ExecMainStatus={status:?}; {pull_error}"),
        || journal.clone(),
    );
    r.fact(
        "pull error while the registry was down",
        pull_error.trim().to_owned(),
    );
    r.check(
        "registry down: the loader found nothing stored",
        f1.set_state("e1000") == Some(SetState::NotStored),
        format!("{:?}", f1.set_state("e1000")),
        || f1.file("status").unwrap_or_default(),
    );
    // The registry is back.
    for _ in 0..2 {
        let end = boot_logged(lab, &mut m, &mut reg, &mut || false)?;
        if end != BootEnd::Reboot {
            break;
        }
    }
    check_boot_ends(
        &mut r,
        "registry back: one reboot, then a power-off",
        &m.boots,
        1,
        &[BootEnd::Reboot, BootEnd::PowerOff],
    );
    if let Some(b) = m.boots.get(2) {
        check_oot_before_nm(&mut r, &BootFacts::new(b));
    }
    r.fact(
        "reboots",
        format!(
            "{}",
            m.boots.iter().filter(|b| b.end == BootEnd::Reboot).count()
        ),
    );
    Ok(r)
}
