// SPDX-License-Identifier: Apache-2.0
//! The systemd units of `units/`, embedded as they are in the repository.

use crate::{image_delivery, Delivery};

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
        Delivery::Embedded { .. } | Delivery::Image { .. } => "/usr/local/bin",
        Delivery::Layered => "/usr/bin",
    }
}

/// The units (name, contents) for a delivery.
pub fn units(delivery: &Delivery) -> Vec<(&'static str, String)> {
    let dir = bin_dir(delivery);
    let mut units: Vec<(&'static str, String)> = [
        ("kmod-day1-load.service", LOAD_UNIT),
        ("kmod-day1-pull.service", PULL_UNIT),
        ("kmod-day1-pull-shutdown.service", PULL_SHUTDOWN_UNIT),
    ]
    .into_iter()
    .map(|(name, text)| (name, text.replace("/usr/local/bin/", &format!("{dir}/"))))
    .collect();
    if let Delivery::Image { node_image } = delivery {
        // The binaries arrive after the network is up, at the earliest at the first boot of
        // the MachineConfig: each unit is skipped (a condition, not a 203/EXEC failure) while
        // its binary is not there, and the pull units wait for the install unit.
        for (name, text) in &mut units {
            let (bin, after_install) = match *name {
                "kmod-day1-load.service" => ("kmod-day1-load", false),
                _ => ("kmod-day1-pull", true),
            };
            let mut lines = String::from(
                "# --delivery image: the install unit brings the binary; skipped until it is there.\n",
            );
            if after_install {
                lines.push_str(&format!(
                    "Wants={0}\nAfter={0}\n",
                    image_delivery::INSTALL_UNIT_NAME
                ));
            }
            lines.push_str(&format!("ConditionFileIsExecutable={dir}/{bin}\n"));
            *text = insert_before_service(text, &lines);
        }
        units.push((
            image_delivery::INSTALL_UNIT_NAME,
            image_delivery::install_unit(node_image),
        ));
    }
    units
}

/// `text` with `lines` added at the end of its `[Unit]` section.
fn insert_before_service(text: &str, lines: &str) -> String {
    let at = text
        .find("\n[Service]")
        .expect("every unit of units/ has a [Service] section");
    let at = if text[..at].ends_with('\n') {
        at
    } else {
        at + 1
    };
    format!("{}{lines}{}", &text[..at], &text[at..])
}

/// The node binaries' file names.
pub const NODE_BINARIES: [&str; 2] = ["kmod-day1-load", "kmod-day1-pull"];
