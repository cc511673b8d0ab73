// SPDX-License-Identifier: Apache-2.0
//! What the harness adds to the node besides kmod-day1 itself: the marker units, log
//! forwarding of the kmod-day1 units to the console (unless the node logs as shipped), and
//! the registry settings.

use std::path::Path;

use anyhow::{Context, Result};

use crate::dirs::write_file;

const MARK_SCRIPT: &str = include_str!("../fixtures/guest/kd1-mark");

/// Marks the state once the network is online, before kmod-day1-pull runs (kept even
/// when the pull then reboots the node).
const PREPULL_UNIT: &str = "[Unit]
Description=testvm: markers before kmod-day1-pull
Wants=network-online.target
After=network-online.target NetworkManager.service kmod-day1-load.service
Before=kmod-day1-pull.service

[Service]
Type=oneshot
ExecStart=/usr/local/libexec/kd1-mark prepull

[Install]
WantedBy=multi-user.target
";

/// Marks the final state and powers the VM off, unless a reboot is pending.
const FINAL_UNIT: &str = "[Unit]
Description=testvm: final markers, then power off
Wants=network-online.target
After=multi-user.target network-online.target kmod-day1-pull.service kd1-mark-prepull.service

[Service]
Type=oneshot
ExecStart=/usr/local/libexec/kd1-mark final poweroff

[Install]
WantedBy=multi-user.target
";

/// The kmod-day1 units' logs also go to the kernel log, hence to the serial console with
/// kernel timestamps (a test-only drop-in: the product units are unchanged).
/// Where a node's held-back kernel update waits (`lab.rs`), as a package manager's download.
pub const KERNEL_UPDATE_DIR: &str = "/var/cache/kd1-kernel-update";

/// A kernel update during a running boot, as a package manager and `kernel-install` do it:
/// the kernel and its modules in place, then its BLS entry, then a reboot a few seconds
/// later; only on a boot with `kd1.install_kernel_update` on its command line. It runs after
/// the final markers (which then do not power off), so they show the node before the update.
const KERNEL_UPDATE_UNIT: &str = "[Unit]
Description=testvm: install the held-back kernel update, then reboot
ConditionKernelCommandLine=kd1.install_kernel_update
ConditionPathExists=/var/cache/kd1-kernel-update/release
After=multi-user.target kmod-day1-pull.service kd1-mark-final.service

[Service]
Type=oneshot
ExecStart=/usr/local/libexec/kd1-kernel-update

[Install]
WantedBy=multi-user.target
";

const KERNEL_UPDATE_SCRIPT: &str = r#"#!/bin/bash
# testvm: install the held-back kernel (files, modules, then the boot entry), then reboot.
set -euo pipefail
src=/var/cache/kd1-kernel-update
k=$(cat "$src/release")
cp -a "$src/modules/$k" /usr/lib/modules/
cp -a "$src"/boot/* /boot/
mkdir -p /boot/loader/entries
printf 'title Debian GNU/Linux 12 (%s)\nversion %s\nlinux /vmlinuz-%s\ninitrd /initrd.img-%s\noptions root=/dev/vda rw\n' \
    "$k" "$k" "$k" "$k" > "/boot/loader/entries/debian-$k.conf.tmp"
mv "/boot/loader/entries/debian-$k.conf.tmp" "/boot/loader/entries/debian-$k.conf"
rm -rf "$src"
sync
echo "KD1-MARK final.kernel_update_installed=$k" > /dev/kmsg
echo "KD1-MARK final.entries_after_update=$(ls /boot/loader/entries | tr '\n' ' ')" > /dev/kmsg
sleep 3
systemctl reboot --no-block
"#;

const LOG_DROPIN: &str = "[Service]
StandardOutput=kmsg
StandardError=kmsg
";

/// Where the kmod-day1 units' stdout and stderr go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnitLog {
    /// The journal and the kernel log, hence the serial console (test-only drop-in), so
    /// the serial log tells the node's story.
    #[default]
    Console,
    /// The journal only, as the units ship (systemd's default output): what a node's
    /// operator reads with `journalctl`.
    Journal,
}

/// Options of the overlay.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    /// `10.0.2.2:PORT` of the test registry, marked insecure (plain HTTP).
    pub registry: String,
    /// A bench script run by the final marker unit, if any.
    pub bench_script: Option<String>,
    /// Where the kmod-day1 units log.
    pub unit_log: UnitLog,
}

/// Writes the overlay into the root filesystem at `root`.
pub fn install(root: &Path, o: &Overlay) -> Result<()> {
    install_inner(root, o).context("adding the test units to the VM root")
}

fn install_inner(root: &Path, o: &Overlay) -> Result<()> {
    let libexec = root.join("usr/local/libexec");
    write_file(&libexec.join("kd1-mark"), MARK_SCRIPT)?;
    chmod(&libexec.join("kd1-mark"), 0o755)?;
    write_file(&libexec.join("kd1-kernel-update"), KERNEL_UPDATE_SCRIPT)?;
    chmod(&libexec.join("kd1-kernel-update"), 0o755)?;
    if let Some(b) = &o.bench_script {
        write_file(&libexec.join("kd1-bench"), b)?;
        chmod(&libexec.join("kd1-bench"), 0o755)?;
    }
    let sd = root.join("etc/systemd/system");
    for (name, text) in [
        ("kd1-mark-prepull.service", PREPULL_UNIT),
        ("kd1-mark-final.service", FINAL_UNIT),
        ("kd1-kernel-update.service", KERNEL_UPDATE_UNIT),
    ] {
        write_file(&sd.join(name), text)?;
        let wants = sd.join("multi-user.target.wants");
        std::fs::create_dir_all(&wants)?;
        let link = wants.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("/etc/systemd/system/{name}"), &link)
            .with_context(|| format!("enabling {name}"))?;
    }
    if o.unit_log == UnitLog::Console {
        for unit in [
            "kmod-day1-load.service",
            "kmod-day1-pull.service",
            "kmod-day1-pull-shutdown.service",
            "kmod-day1-install.service",
        ] {
            write_file(
                &sd.join(format!("{unit}.d/90-testvm-console.conf")),
                LOG_DROPIN,
            )?;
        }
    }
    // journald forwards the units' stdout/stderr to kmsg only up to MaxLevelKMsg (notice by
    // default): the info lines (pulling, committed, loaded) are the story.
    write_file(
        &root.join("etc/systemd/journald.conf.d/90-testvm.conf"),
        "[Journal]\nMaxLevelKMsg=info\n",
    )?;
    // Kernel info lines (the out-of-tree e1000's marker, kd1_main's firmware line, the
    // kmod-day1 units' logs) must reach the serial console.
    write_file(
        &root.join("etc/sysctl.d/99-testvm-console.conf"),
        "kernel.printk = 7 4 1 7\n",
    )?;
    // The trust policy every node has (the pull refuses to run without one): RHCOS's default,
    // which accepts any image; Debian's minbase root has no containers-common to ship it.
    write_file(
        &root.join("etc/containers/policy.json"),
        "{\"default\": [{\"type\": \"insecureAcceptAnything\"}]}\n",
    )?;
    write_file(
        &root.join("etc/containers/registries.conf"),
        format!(
            "# testvm: the test registry on the host speaks plain HTTP.\n[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
            o.registry
        ),
    )?;
    Ok(())
}

fn chmod(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_units_and_registry_settings() {
        let d = tempfile::tempdir().unwrap();
        install(
            d.path(),
            &Overlay {
                registry: "10.0.2.2:5000".into(),
                ..Overlay::default()
            },
        )
        .unwrap();
        let dropin = "etc/systemd/system/kmod-day1-pull.service.d/90-testvm-console.conf";
        assert!(d.path().join(dropin).exists());
        let j = tempfile::tempdir().unwrap();
        install(
            j.path(),
            &Overlay {
                registry: "10.0.2.2:5000".into(),
                unit_log: UnitLog::Journal,
                ..Overlay::default()
            },
        )
        .unwrap();
        assert!(!j.path().join(dropin).exists());
        let r = std::fs::read_to_string(d.path().join("etc/containers/registries.conf")).unwrap();
        assert!(r.contains("location = \"10.0.2.2:5000\"") && r.contains("insecure = true"));
        let p = std::fs::read_to_string(d.path().join("etc/containers/policy.json")).unwrap();
        assert!(p.contains("insecureAcceptAnything"));
        assert!(d
            .path()
            .join("etc/systemd/system/multi-user.target.wants/kd1-mark-final.service")
            .is_symlink());
        assert!(d.path().join("usr/local/libexec/kd1-mark").exists());
    }
}
