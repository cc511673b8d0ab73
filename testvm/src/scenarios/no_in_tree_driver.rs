// SPDX-License-Identifier: Apache-2.0
//! Scenarios **no-in-tree-driver-initrd** and **no-in-tree-driver-bundle** (issue 12): nodes
//! whose kernel has no in-tree e1000 anywhere (removed from the module tree, so not in the
//! dracut initramfs built from it either), the hardware neither the in-tree driver nor a pull
//! can serve. The store is prepared on this machine by `kmod-day1-pull --kernel-release` (the
//! node's registry reached through a registries.conf remap), never on the node. One boot per
//! node:
//!
//! - initrd: `mcgen --output initrd` appended to the dracut initramfs (the kernel takes
//!   concatenated archives), the same store in the Ignition config (`--bundle`) for the real
//!   root: the out-of-tree e1000's kernel log marker comes before the real root's systemd
//!   starts (its second "running in system mode" line); the real root's loader finds it loaded
//!   with the same srcversion (nothing to do); network up; no reboot;
//! - bundle: the store in the Ignition config only: the real root's loader loads the
//!   out-of-tree e1000 before NetworkManager on the first boot, no blob fetched, no reboot;
//!   the same node with the pull-based config alone has no network, status `notStored`, and
//!   does not reboot (the reason the bundle exists).
//!
//! The initramfs is built with the host's dracut (Debian 12, the guest's systemd version)
//! from the node's own module tree (`--kmoddir`).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use kmod_day1_contract::SetState;

use crate::cmd::{run as run_cmd, stdout};
use crate::dirs::write_file;
use crate::guest_overlay::{self, Overlay, UnitLog};
use crate::ignition_apply;
use crate::lab::Lab;
use crate::markers::kernel_time;
use crate::modules_build::OOT_E1000_MARKER;
use crate::qemu::{BootEnd, Machine};
use crate::registry::blob_downloads;
use crate::scenarios::e1000_node::{boot_logged, config};
use crate::scenarios::facts::{check_end, check_network, check_oot_before_nm, BootFacts};
use crate::scenarios::report::Report;
use crate::vm_image::{self, VmFiles};

/// dracut modules of the initramfs: systemd's, and what a virtio root needs (TESTVM-NOTES).
const DRACUT_MODULES: &str =
    "systemd systemd-initrd dracut-systemd base fs-lib rootfs-block udev-rules kernel-modules";
const DRACUT_DRIVERS: &str = "virtio_blk virtio_pci ext4 crc32c_generic";
/// The pull's retry budget on the node without the bundle (as in `registry-down`).
const PULL_BUDGET_DROPIN: &str =
    "[Service]\nExecStart=\nExecStart=/usr/local/bin/kmod-day1-pull --budget 40\n";
/// The kernel log line systemd writes when it starts, in the initramfs then in the real root.
const SYSTEMD_START: &str = "running in system mode";

/// How a node without an in-tree e1000 gets kmod-day1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Delivery {
    /// The store in the Ignition config (`mcgen --bundle`).
    bundle: bool,
    /// `mcgen --output initrd` appended to the dracut initramfs.
    initrd: bool,
}

/// A node whose kernel has no in-tree e1000 anywhere, booting a dracut initramfs built from
/// its own module tree, with the e1000 config delivered as `d` says.
fn node(lab: &Lab, name: &str, d: Delivery, r: &mut Report) -> Result<Machine> {
    let dir = lab.dirs.fresh_work_dir(name)?;
    let files = VmFiles::new(&dir);
    let kver = lab.img.base.release.clone();
    let cfg = config(lab);

    // The store, prepared here for the node's kernel.
    let store = dir.join("store");
    prepare_store(lab, &dir, &store, &cfg.to_json()?, &kver)?;
    let spec = dir.join("spec.yaml");
    write_file(&spec, cfg.to_spec())?;

    // The node: the e1000 config (and with a bundle, the same store) by mcgen's Ignition,
    // and no in-tree e1000 at all.
    vm_image::copy_root(&lab.img, &files.root)?;
    let ign_work = dir.join("ignition");
    std::fs::create_dir_all(&ign_work)?;
    let mut mcgen = Command::new(&lab.tools.mcgen);
    mcgen
        .arg("-f")
        .arg(&spec)
        .args([
            "-o",
            "ignition",
            "--delivery",
            "embedded",
            "--node-binaries",
        ])
        .arg(&lab.tools.node_bins);
    if d.bundle {
        mcgen.arg("--bundle").arg(&store);
    }
    let ign = stdout(&mut mcgen).context("generating the Ignition config with mcgen")?;
    if d.bundle && !d.initrd {
        r.fact(
            "carried by",
            format!("an Ignition config of {} bytes with the bundle", ign.len()),
        );
    }
    ignition_apply::apply(&ign, &files.root, &ign_work)?;
    guest_overlay::install(
        &files.root,
        &Overlay {
            registry: lab.registry.guest_addr(),
            bench_script: None,
            unit_log: UnitLog::Console,
        },
    )?;
    if !d.bundle && !d.initrd {
        // Without a network the pull retries until its budget (600 s) is spent: shorter here.
        write_file(
            &files
                .root
                .join("etc/systemd/system/kmod-day1-pull.service.d/80-testvm.conf"),
            PULL_BUDGET_DROPIN,
        )?;
    }
    let modules = files.root.join("lib/modules").join(&kver);
    let in_tree = modules.join("kernel/drivers/net/ethernet/intel/e1000");
    std::fs::remove_dir_all(&in_tree)
        .with_context(|| format!("removing the in-tree e1000 {}", in_tree.display()))?;
    run_cmd(Command::new("depmod").arg("-b").arg(&files.root).arg(&kver))?;

    // The node's initramfs (dracut, from the node's module tree), and the initrd.
    let dracut_img = dir.join("dracut.img");
    run_cmd(
        Command::new("dracut")
            .args(["-q", "--force", "--no-hostonly", "--reproducible"])
            .arg("--kmoddir")
            .arg(&modules)
            .args(["-m", DRACUT_MODULES, "--drivers", DRACUT_DRIVERS])
            .arg("--tmpdir")
            .arg(&dir)
            .arg(&dracut_img)
            .arg(&kver),
    )
    .context("building the node's initramfs with dracut (dracut-core)")?;
    let listing = stdout(Command::new("lsinitrd").arg(&dracut_img))?;
    let e1000_in_initramfs: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains("/e1000.ko"))
        .collect();
    r.check(
        "the node's dracut initramfs has no in-tree e1000 (nor has its module tree)",
        e1000_in_initramfs.is_empty() && !in_tree.exists(),
        format!("{} e1000.ko in the initramfs", e1000_in_initramfs.len()),
        || e1000_in_initramfs.join("\n"),
    );
    let mut kernel = lab.img.base.clone();
    kernel.initrd = dracut_img.clone();
    if d.initrd {
        let initrd = dir.join("kmod-day1.img");
        let notes = run_cmd(
            Command::new(&lab.tools.mcgen)
                .arg("-f")
                .arg(&spec)
                .args(["-o", "initrd", "--kernel-release", &kver, "--bundle"])
                .arg(&store)
                .arg("--loader")
                .arg(lab.tools.node_bins.join("kmod-day1-load"))
                .arg("--modprobe-d")
                .arg(files.root.join("etc/modprobe.d"))
                .arg("--output-file")
                .arg(&initrd),
        )
        .context("writing the initrd with mcgen")?;
        r.fact(
            "mcgen",
            String::from_utf8_lossy(&notes.stderr).trim().to_owned(),
        );
        let combined = dir.join("initramfs-with-kmod-day1.img");
        let mut bytes = std::fs::read(&dracut_img)?;
        let dracut_len = bytes.len();
        bytes.extend(std::fs::read(&initrd)?);
        std::fs::write(&combined, &bytes)?;
        r.fact(
            "carried by",
            format!(
                "an initrd of {} bytes (gzip cpio) appended to dracut's {dracut_len}",
                bytes.len() - dracut_len
            ),
        );
        kernel.initrd = combined;
    }
    vm_image::make_disk(&files.root, &files.disk)?;
    std::fs::remove_dir_all(&files.root)?;
    Ok(Machine::new(name, &dir, &files.disk, kernel))
}

/// Runs the scenario `no-in-tree-driver-initrd`.
pub fn run_initrd(lab: &mut Lab) -> Result<Report> {
    let mut r = Report::new("no-in-tree-driver-initrd");
    let d = Delivery {
        bundle: true,
        initrd: true,
    };
    let mut m = node(lab, "no-in-tree", d, &mut r)?;
    let mut reg = vec![];
    boot_logged(lab, &mut m, &mut reg, &mut || false)?;
    let b = &m.boots[0];
    check_end(&mut r, b, BootEnd::PowerOff);
    let f = BootFacts::new(b);

    let times = |needle: &str| -> Vec<f64> {
        b.serial
            .lines()
            .filter(|l| l.contains(needle))
            .filter_map(kernel_time)
            .collect()
    };
    let oot = times(OOT_E1000_MARKER).first().copied();
    let starts = times(SYSTEMD_START);
    let real_root = starts.get(1).copied();
    r.check(
        "the out-of-tree e1000 is loaded in the initramfs, before the real root's systemd starts",
        matches!((oot, starts.first(), real_root), (Some(o), Some(&i), Some(rr)) if i < o && o < rr),
        format!("OOT e1000 at {oot:?} s, systemd started at {starts:?} s (initramfs, real root)"),
        || f.excerpt(OOT_E1000_MARKER),
    );
    let nothing_to_do = b
        .serial
        .lines()
        .any(|l| l.contains("e1000 already loaded (srcversion") && l.contains("nothing to do"));
    r.check(
        "in the real root the loader finds it loaded with the same srcversion: nothing to do",
        nothing_to_do && f.oot_e1000(),
        format!(
            "e1000 version {}, nothing to do: {nothing_to_do}",
            f.e1000_version()
        ),
        || f.excerpt("already loaded"),
    );
    check_network(&mut r, &f);
    reboots_fact(&mut r, &m);
    Ok(r)
}

/// The reboots a node's boots cost (each one asked by the node, none by the harness).
fn reboots_fact(r: &mut Report, m: &Machine) {
    let n = m.boots.iter().filter(|b| b.end == BootEnd::Reboot).count();
    r.fact("reboots added by kmod-day1", n.to_string());
}

/// Runs the scenario `no-in-tree-driver-bundle`: two nodes without an in-tree e1000, one
/// boot each. With the bundle in its Ignition config: the out-of-tree e1000 before
/// NetworkManager, network up, no pull needed, no reboot. With a pull-based config only: no
/// network, the status says not stored, the pull fails without a reboot (no reboot loop).
pub fn run_bundle(lab: &mut Lab) -> Result<Report> {
    let mut r = Report::new("no-in-tree-driver-bundle");
    let with = Delivery {
        bundle: true,
        initrd: false,
    };
    let mut m = node(lab, "no-in-tree-bundle", with, &mut r)?;
    let mut reg = vec![];
    boot_logged(lab, &mut m, &mut reg, &mut || false)?;
    let b = &m.boots[0];
    check_end(&mut r, b, BootEnd::PowerOff);
    let f = BootFacts::new(b);
    check_oot_before_nm(&mut r, &f);
    r.check(
        "the bundle: the set is loaded from the store Ignition wrote, no blob fetched",
        f.set_state("e1000") == Some(SetState::Loaded) && blob_downloads(&reg[0]).is_empty(),
        format!(
            "e1000 set {:?}, blob downloads {}",
            f.set_state("e1000"),
            blob_downloads(&reg[0]).len()
        ),
        || f.file("status").unwrap_or_default(),
    );
    reboots_fact(&mut r, &m);

    let without = Delivery {
        bundle: false,
        initrd: false,
    };
    let mut m = node(lab, "no-in-tree-pull", without, &mut r)?;
    let mut reg = vec![];
    boot_logged(lab, &mut m, &mut reg, &mut || false)?;
    let b = &m.boots[0];
    check_end(&mut r, b, BootEnd::PowerOff);
    let f = BootFacts::new(b);
    r.check(
        "a pull-based config alone: no network (no e1000 at all), status notStored, no reboot",
        !f.network_up() && f.set_state("e1000") == Some(SetState::NotStored),
        format!(
            "eth0 {:?}, e1000 set {:?}, boot ended {:?}",
            f.ipv4(),
            f.set_state("e1000"),
            b.end
        ),
        || f.excerpt("kmod-day1-pull"),
    );
    Ok(r)
}

/// `kmod-day1-pull --kernel-release` on this machine, as an admin prepares a bundle: the
/// node's config, the registry of the config (`10.0.2.2:PORT`) remapped to where this
/// machine reaches it.
pub(crate) fn prepare_store(
    lab: &Lab,
    dir: &Path,
    store: &Path,
    config: &str,
    kver: &str,
) -> Result<()> {
    let work = dir.join("prepare");
    write_file(&work.join("config.d/99-kd1-e1000.json"), config)?;
    write_file(
        &work.join("registries.conf"),
        format!(
            "[[registry]]\nprefix = \"{}\"\nlocation = \"{}\"\ninsecure = true\n",
            lab.registry.guest_addr(),
            lab.registry.host_addr()
        ),
    )?;
    write_file(
        &work.join("policy.json"),
        r#"{"default": [{"type": "insecureAcceptAnything"}]}"#,
    )?;
    std::fs::create_dir_all(work.join("registries.d"))?;
    std::fs::create_dir_all(work.join("certs.d"))?;
    write_file(&work.join("cmdline"), "\n")?;
    write_file(&work.join("boot_id"), "prepare\n")?;
    run_cmd(
        Command::new(lab.tools.node_bins.join("kmod-day1-pull"))
            .arg("--config-dir")
            .arg(work.join("config.d"))
            .arg("--store")
            .arg(store)
            .args(["--kernel-release", kver])
            .arg("--registries-conf")
            .arg(work.join("registries.conf"))
            .arg("--policy")
            .arg(work.join("policy.json"))
            .arg("--registries.d")
            .arg(work.join("registries.d"))
            .arg("--certs-dir")
            .arg(work.join("certs.d"))
            .arg("--cmdline")
            .arg(work.join("cmdline"))
            .arg("--boot-id")
            .arg(work.join("boot_id"))
            .arg("--status")
            .arg(work.join("status.json")),
    )
    .context("preparing the store with kmod-day1-pull --kernel-release")?;
    Ok(())
}
