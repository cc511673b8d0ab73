// SPDX-License-Identifier: Apache-2.0
//! The systemd units of `units/`, embedded as they are in the repository.

use crate::Delivery;

/// The loader unit, as in `units/kmod-day1-load.service`.
pub const LOAD_UNIT: &str = include_str!("../../units/kmod-day1-load.service");
/// The pull unit, as in `units/kmod-day1-pull.service`.
pub const PULL_UNIT: &str = include_str!("../../units/kmod-day1-pull.service");
/// The pull's stop step at shutdown, as in `units/kmod-day1-pull-shutdown.service`.
pub const PULL_SHUTDOWN_UNIT: &str = include_str!("../../units/kmod-day1-pull-shutdown.service");

/// Where the node binaries live for a delivery: `/usr/local/bin` is writable on RHCOS (it
/// is `/var/usrlocal/bin`), `/usr/bin` belongs to the OS image when it is layered.
pub fn bin_dir(delivery: &Delivery) -> &'static str {
    match delivery {
        Delivery::Embedded { .. } => "/usr/local/bin",
        Delivery::Layered => "/usr/bin",
    }
}

/// The units (name, contents) for a delivery.
pub fn units(delivery: &Delivery) -> Vec<(&'static str, String)> {
    let dir = bin_dir(delivery);
    [
        ("kmod-day1-load.service", LOAD_UNIT),
        ("kmod-day1-pull.service", PULL_UNIT),
        ("kmod-day1-pull-shutdown.service", PULL_SHUTDOWN_UNIT),
    ]
    .into_iter()
    .map(|(name, text)| (name, text.replace("/usr/local/bin/", &format!("{dir}/"))))
    .collect()
}

/// The node binaries' file names.
pub const NODE_BINARIES: [&str; 2] = ["kmod-day1-load", "kmod-day1-pull"];
