// SPDX-License-Identifier: Apache-2.0
//! Scenario **nic-not-bound** (issue 11): the out-of-tree e1000 of the image was built without
//! the VM NIC's device ID (`0x100E`) in its table, as a driver for another NIC model would be.
//! Its init returns 0 and it binds nothing. A node of its own, three boots: the first apply
//! (in-tree driver, pull, one reboot), then two boots where the loader loads it, sees the NIC
//! unbound (no alias matches its modalias), rolls back to the in-tree e1000, checks the NIC
//! bound to it again and records `notBound`; the network comes up and nothing reboots.

use anyhow::Result;
use kmod_day1_contract::SetState;

use crate::lab::{Lab, NodeOptions};
use crate::modules_build::OOT_E1000_MARKER;
use crate::node_config::{module_set, NodeConfigFile};
use crate::qemu::BootEnd;
use crate::scenarios::e1000_node::boot_logged;
use crate::scenarios::facts::{check_boot_ends, check_network, BootFacts};
use crate::scenarios::report::Report;

/// The node's config.
const CONFIG: &str = "99-kd1-e1000-other-nic";

/// Runs the scenario.
pub fn run(lab: &mut Lab) -> Result<Report> {
    let mut r = Report::new("nic-not-bound");
    let cfg = NodeConfigFile {
        name: CONFIG.into(),
        module_sets: vec![module_set(
            "e1000",
            &lab.image_ref("kd1/e1000-no-nic-id"),
            &[("e1000", &[])],
            &["e1000"],
        )],
    };
    let mut m = lab.node(
        "nicnotbound",
        &NodeOptions {
            configs: vec![cfg],
            ..NodeOptions::default()
        },
    )?;
    let mut reg = vec![];
    // The first apply ends in one reboot; then two more boots show no reboot loop.
    for _ in 0..3 {
        boot_logged(lab, &mut m, &mut reg, &mut || false)?;
    }
    check_boot_ends(
        &mut r,
        "first apply: one reboot; then two boots that power off (no reboot loop)",
        &m.boots,
        0,
        &[BootEnd::Reboot, BootEnd::PowerOff, BootEnd::PowerOff],
    );
    for b in m.boots.iter().skip(1) {
        let f = BootFacts::new(b);
        let n = b.number;
        let set = f
            .status()
            .and_then(|s| s.sets.into_iter().find(|x| x.set == "e1000"));
        let nic = set.as_ref().and_then(|s| s.devices.first().cloned());
        r.check(
            &format!("boot {n}: the set is notBound and rolled back; the NIC recorded unbound, driven by the in-tree e1000 again"),
            set.as_ref()
                .is_some_and(|s| s.state == SetState::NotBound && s.rolled_back && s.error.is_some())
                && nic.as_ref().is_some_and(|d| {
                    !d.bound
                        && d.driver_module.as_deref() == Some("e1000")
                        && d.error.as_deref().is_some_and(|e| e.contains("no alias of e1000 matches its modalias"))
                }),
            format!(
                "state {:?}, rolled back {:?}, device {nic:?}",
                set.as_ref().map(|s| s.state),
                set.as_ref().map(|s| s.rolled_back)
            ),
            || f.file("status").unwrap_or_default(),
        );
        let loaded_oot = b.serial.contains(OOT_E1000_MARKER);
        let bound_again = b
            .serial
            .lines()
            .any(|l| l.contains("rollback: pci ") && l.contains("bound to in-tree e1000 again"));
        r.check(
            &format!("boot {n}: the out-of-tree e1000 really loaded, and the rollback saw the NIC bound to the in-tree e1000"),
            loaded_oot && bound_again && !f.oot_e1000(),
            format!(
                "out-of-tree marker in the kernel log: {loaded_oot}; bound again: {bound_again}; e1000 version now {}",
                f.e1000_version()
            ),
            || f.excerpt(CONFIG),
        );
        check_network(&mut r, &f);
    }
    if let Some(b) = m.boots.get(1) {
        let line = b
            .serial
            .lines()
            .find(|l| l.contains("failed and rolled back: not bound"))
            .unwrap_or("(no line)");
        r.fact("loader", line.trim());
    }
    Ok(r)
}
