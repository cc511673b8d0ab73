// SPDX-License-Identifier: Apache-2.0
//! The VM's root filesystem: Debian bookworm from debootstrap with two kernels (the one the
//! node boots, and a newer one installed beside it, as after an OS update that is staged but
//! not booted yet), NetworkManager set up for the e1000 NIC without a default route, and a
//! quiet serial console. Built once per recipe and cached; each run copies it and turns the
//! copy into a disk with `mkfs.ext4 -d` (no loop mounts).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::apt_mirror::Mirror;
use crate::cmd::{run, sh};
use crate::dirs::{recipe_key, tmp_sibling, write_file, Dirs};

const SUITE: &str = "bookworm";

/// debootstrap `--include`: `libpam-systemd` must be named (debootstrap does not resolve
/// polkitd's logind alternative). `ca-certificates`: every real node has a CA bundle, and
/// kmod-day1-pull's TLS client setup needs one even for a plain-HTTP registry.
const PACKAGES: &str = "systemd,systemd-sysv,libpam-systemd,udev,dbus,network-manager,kmod,\
linux-image-amd64,initramfs-tools,iproute2,ca-certificates";

/// The only network profile: DHCP from QEMU's user network, never a default route, no DNS,
/// no IPv6. The VM can reach 10.0.2.2 (the host) and nothing else.
const NM_PROFILE: &str = "[connection]
id=testvm-nic
type=ethernet
autoconnect=true

[ipv4]
method=auto
never-default=true
ignore-auto-dns=true

[ipv6]
method=disabled
";

const NM_CONF: &str = "[main]
no-auto-default=*
";

/// Units that would only add noise or try the internet: the serial getty's vhangup can
/// swallow console output; the timers are periodic maintenance.
const MASKED: &[&str] = &[
    "serial-getty@ttyS0.service",
    "getty@tty1.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-networkd.service",
];

/// A kernel installed in the image, with its boot files copied out of the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmKernel {
    /// `uname -r`.
    pub release: String,
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// Its initramfs.
    pub initrd: PathBuf,
}

/// A cached VM image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmImage {
    /// The root filesystem tree (never modified after the build).
    pub root: PathBuf,
    /// The kernel the node boots.
    pub base: VmKernel,
    /// A newer kernel installed beside it (the staged OS update).
    pub upgrade: VmKernel,
}

impl VmImage {
    /// Both kernels, the booted one first.
    pub fn kernels(&self) -> [&VmKernel; 2] {
        [&self.base, &self.upgrade]
    }
}

/// The recipe's cache key: any change to what goes into the image builds a new one.
fn recipe(mirror: &Mirror) -> String {
    let masked = MASKED.join(",");
    recipe_key(&[
        "vm-image v1",
        SUITE,
        PACKAGES,
        &mirror.main,
        &mirror.security,
        NM_PROFILE,
        NM_CONF,
        &masked,
        "upgrade kernel: linux-image-amd64 from bookworm-security",
    ])
}

/// Returns the cached image, building it first when the cache has none for this recipe.
pub fn ensure(dirs: &Dirs) -> Result<VmImage> {
    let mirror = Mirror::from_host();
    let dir = dirs.cache.join(format!("vm-{}", recipe(&mirror)));
    let record = dir.join("image.json");
    if let Ok(text) = std::fs::read_to_string(&record) {
        let img: VmImage = serde_json::from_str(&text)
            .with_context(|| format!("reading {} (delete it to rebuild)", record.display()))?;
        info!("VM image: cached at {}", dir.display());
        return Ok(img);
    }
    let started = Instant::now();
    let tmp = tmp_sibling(&dir);
    if tmp.exists() {
        // A build that was interrupted; proc may still be mounted in it.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(tmp.join("root/proc"))
            .status();
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let root = tmp.join("root");
    info!(
        "VM image: debootstrap {SUITE} from {} (about 2-4 minutes)",
        mirror.main
    );
    run(Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={PACKAGES}"))
        .arg(SUITE)
        .arg(&root)
        .arg(&mirror.main))
    .context("building the VM root filesystem with debootstrap")?;
    let base = single_kernel(&root).context("finding the kernel debootstrap installed")?;
    info!("VM image: base kernel {base}; installing the newer kernel from {SUITE}-security");
    install_upgrade_kernel(&root, &mirror)
        .context("installing the upgrade kernel into the VM image")?;
    let upgrade = kernel_releases(&root)?
        .into_iter()
        .find(|k| *k != base)
        .with_context(|| {
            format!("{SUITE}-security has no kernel newer than {base}: the kernel-upgrade scenario needs two")
        })?;
    apply_tweaks(&root).context("configuring the VM image")?;
    let mut kernels = vec![];
    for release in [&base, &upgrade] {
        kernels.push(extract_boot_files(&root, &tmp.join("boot"), release)?);
    }
    let final_root = dir.join("root");
    let mut img = VmImage {
        root: final_root,
        upgrade: kernels.pop().expect("two kernels"),
        base: kernels.pop().expect("two kernels"),
    };
    // The record names the final paths; the rename below makes them true at once.
    for k in [&mut img.base, &mut img.upgrade] {
        k.vmlinuz = dir
            .join("boot")
            .join(k.vmlinuz.file_name().expect("file name"));
        k.initrd = dir
            .join("boot")
            .join(k.initrd.file_name().expect("file name"));
    }
    write_file(&tmp.join("image.json"), serde_json::to_string_pretty(&img)?)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing stale {}", dir.display()))?;
    }
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("moving the new image to {}", dir.display()))?;
    prune_other_images(&dirs.cache, &dir);
    info!(
        "VM image: built in {} s at {} (kernels {} and {})",
        started.elapsed().as_secs(),
        dir.display(),
        img.base.release,
        img.upgrade.release
    );
    Ok(img)
}

/// Removes the images of older recipes (1.1 GB each).
fn prune_other_images(cache: &Path, keep: &Path) {
    let Ok(rd) = std::fs::read_dir(cache) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("vm-") && !name.ends_with(".tmp") && p != keep {
            info!("VM image: removing {} (older recipe)", p.display());
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

/// The releases under `root/lib/modules`, sorted.
pub fn kernel_releases(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("lib/modules");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("modules.dep").exists() || e.path().join("kernel").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

fn single_kernel(root: &Path) -> Result<String> {
    let v = kernel_releases(root)?;
    match v.as_slice() {
        [k] => Ok(k.clone()),
        _ => bail!(
            "expected one kernel under {}/lib/modules, found {v:?}",
            root.display()
        ),
    }
}

fn chroot(root: &Path, script: &str) -> Command {
    let mut c = Command::new("chroot");
    c.arg(root)
        .args(["/bin/sh", "-ec", script])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C");
    c
}

fn install_upgrade_kernel(root: &Path, mirror: &Mirror) -> Result<()> {
    let list = root.join("etc/apt/sources.list.d/kd1-security.list");
    write_file(
        &list,
        format!("deb {} {SUITE}-security main\n", mirror.security),
    )?;
    let proc_dir = root.join("proc");
    run(Command::new("mount")
        .args(["-t", "proc", "proc"])
        .arg(&proc_dir))?;
    let result = run(&mut chroot(
        root,
        "apt-get update -q && apt-get install -y -q --no-install-recommends linux-image-amd64 && apt-get clean",
    ));
    let umount = run(Command::new("umount").arg(&proc_dir));
    result?;
    umount?;
    std::fs::remove_file(&list).with_context(|| format!("removing {}", list.display()))?;
    run(&mut sh(&format!(
        "rm -rf {0}/var/lib/apt/lists/* {0}/var/cache/apt/*.bin",
        root.display()
    )))?;
    Ok(())
}

fn apply_tweaks(root: &Path) -> Result<()> {
    let profile = root.join("etc/NetworkManager/system-connections/testvm-nic.nmconnection");
    write_file(&profile, NM_PROFILE)?;
    set_mode(&profile, 0o600)?;
    write_file(
        &root.join("etc/NetworkManager/conf.d/90-testvm.conf"),
        NM_CONF,
    )?;
    for unit in MASKED {
        let link = root.join("etc/systemd/system").join(unit);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", &link)
            .with_context(|| format!("masking {unit}"))?;
    }
    // Empty, not "uninitialized": the latter is a first boot, which runs preset-all and
    // enables systemd-networkd beside NetworkManager.
    write_file(&root.join("etc/machine-id"), "")?;
    write_file(&root.join("etc/hostname"), "kd1-node\n")?;
    write_file(&root.join("etc/hosts"), "127.0.0.1 localhost kd1-node\n")?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn extract_boot_files(root: &Path, boot: &Path, release: &str) -> Result<VmKernel> {
    std::fs::create_dir_all(boot).with_context(|| format!("creating {}", boot.display()))?;
    let mut out = vec![];
    for name in [
        format!("vmlinuz-{release}"),
        format!("initrd.img-{release}"),
    ] {
        let from = root.join("boot").join(&name);
        let to = boot.join(&name);
        std::fs::copy(&from, &to)
            .with_context(|| format!("copying {} out of the VM image", from.display()))?;
        out.push(to);
    }
    let initrd = out.pop().expect("two files");
    let vmlinuz = out.pop().expect("two files");
    Ok(VmKernel {
        release: release.to_owned(),
        vmlinuz,
        initrd,
    })
}

/// Copies the cached root to `dest` for one run's changes: a hard-link copy (1 s instead of
/// a minute for 1.1 GB). Safe because nothing edits a file of the copy in place: the
/// harness unlinks before writing (`dirs::write_file`), Ignition writes new files and
/// renames them into place, and `systemctl preset` only adds symlinks. The cache lives
/// outside the checkout and may be on another filesystem: then a full copy.
pub fn copy_root(img: &VmImage, dest: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if dest.exists() {
        std::fs::remove_dir_all(dest).with_context(|| format!("removing {}", dest.display()))?;
    }
    let parent = dest.parent().unwrap_or(Path::new("/"));
    let dev = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.dev())
            .with_context(|| format!("reading {}", p.display()))
    };
    let same_fs = dev(&img.root)? == dev(parent)?;
    if !same_fs {
        info!(
            "{} is on another filesystem than {}: copying the VM root in full",
            img.root.display(),
            parent.display()
        );
    }
    run(Command::new("cp")
        .arg(if same_fs { "-al" } else { "-a" })
        .arg(&img.root)
        .arg(dest))
    .with_context(|| format!("copying the VM root to {}", dest.display()))?;
    Ok(())
}

/// Makes an ext4 disk image holding `root` (`mkfs.ext4 -d`: no loop mount, no privileges
/// beyond reading the tree).
pub fn make_disk(root: &Path, disk: &Path) -> Result<()> {
    let _ = std::fs::remove_file(disk);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-d"])
        .arg(root)
        .arg(disk)
        .arg("3G"))
    .with_context(|| format!("making the disk image {}", disk.display()))?;
    Ok(())
}

/// The work-directory layout of one VM: its root copy and its disk.
pub struct VmFiles {
    /// Root filesystem copy to change before the disk is made.
    pub root: PathBuf,
    /// The disk image.
    pub disk: PathBuf,
}

impl VmFiles {
    /// Paths under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            root: dir.join("root"),
            disk: dir.join("disk.img"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_depends_on_the_mirror() {
        let a = Mirror::parse("deb http://a/debian bookworm main\n");
        let b = Mirror::parse("deb http://b/debian bookworm main\n");
        assert_ne!(recipe(&a), recipe(&b));
    }

    #[test]
    fn finds_kernel_releases() {
        let d = tempfile::tempdir().unwrap();
        for k in ["6.1.0-2-amd64", "6.1.0-1-amd64"] {
            std::fs::create_dir_all(d.path().join("lib/modules").join(k).join("kernel")).unwrap();
        }
        std::fs::create_dir_all(d.path().join("lib/modules/empty")).unwrap();
        assert_eq!(
            kernel_releases(d.path()).unwrap(),
            ["6.1.0-1-amd64", "6.1.0-2-amd64"]
        );
        assert!(single_kernel(d.path()).is_err());
    }
}
