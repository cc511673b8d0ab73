// SPDX-License-Identifier: Apache-2.0
//! An RHCOS-like node: the VM image's Debian root with Debian's `ostree`, `ostree-boot` and
//! `dracut` (the *tools root*, cached by recipe with a dracut initramfs per kernel), one
//! ostree commit per kernel, the base kernel's commit deployed with `ostree admin deploy` on a
//! tmpfs sysroot, the kmod-day1 configs applied with the real Ignition into the deployment's
//! `/etc` and the stateroot's `/var`, then `mkfs.ext4 -d`. The newer kernel's commit waits in
//! the repository on the disk, as an OS image MCO pulled before staging it.
//!
//! Mounts (tmpfs, binds, the chroot's `/proc`) are made in a private mount namespace of one
//! thread: they vanish with it, also when the harness fails half-way.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::cmd::{run, sh};
use crate::dirs::{recipe_key, tmp_sibling, write_file, Dirs};
use crate::guest_overlay::{self, Overlay};
use crate::ignition_apply;
use crate::lab::{Lab, NodeOptions};
use crate::node_config::ignition_for;
use crate::qemu::{Machine, BASE_CMDLINE};
use crate::vm_image::VmImage;

/// The ostree OS name (stateroot) of the node.
pub const OS: &str = "debian";
/// The ref of the base kernel's commit (the one deployed at install time).
pub const BASE_REF: &str = "debian/base";
/// The ref of the newer kernel's commit (staged by the update unit, as MCO does).
pub const UPGRADE_REF: &str = "debian/upgrade";

/// What the tools root adds to the VM image's root. podman: RHCOS ships it, and the install
/// unit of `mcgen --delivery image` runs the node's own.
const TOOLS_PACKAGES: &str = "dracut ostree ostree-boot podman";

/// The initramfs of each kernel: the small systemd initrd with ostree-prepare-root that
/// boots the virtio disk (no NIC driver: the real root's udev and kmod-day1 decide that).
pub(crate) const DRACUT_ARGS: &str = "-q --force --no-hostonly --reproducible \
-m 'systemd systemd-initrd dracut-systemd ostree base fs-lib rootfs-block udev-rules kernel-modules' \
--drivers 'virtio_blk virtio_pci ext4 crc32c_generic'";

/// Where the chroot of the tools root sees a node's work directory.
const CHROOT_WORK: &str = "/mnt/kd1-work";

/// `tmpfiles.d` of the commits: what RHCOS's `/var` layout needs on a fresh stateroot.
const TMPFILES: &str = "# testvm: the /var layout of an ostree node (RHCOS-like)
d /var/home 0755 root root -
d /var/roothome 0700 root root -
d /var/opt 0755 root root -
d /var/srv 0755 root root -
d /var/mnt 0755 root root -
d /var/usrlocal 0755 root root -
d /var/usrlocal/bin 0755 root root -
d /var/usrlocal/sbin 0755 root root -
d /var/usrlocal/lib 0755 root root -
d /var/usrlocal/libexec 0755 root root -
d /var/usrlocal/share 0755 root root -
d /var/usrlocal/etc 0755 root root -
d /var/tmp 1777 root root -
d /var/lib/NetworkManager 0700 root root -
d /var/log/journal 2755 root systemd-journal -
d /run/media 0755 root root -
";

/// The test-only OS update, as MCO's daemon does one: stage the deployment of the newer
/// commit (already in the repository: MCO pulls the image before staging), then reboot a
/// few seconds later. Only on a boot with `kd1.stage_os_update` on its command line; after
/// the boot's pull, before the final markers (which then see the reboot pending).
const STAGE_UNIT: &str = "[Unit]
Description=testvm: stage an OS update (ostree admin deploy --stage), then reboot
ConditionKernelCommandLine=kd1.stage_os_update
After=multi-user.target kmod-day1-pull.service kd1-mark-prepull.service
Before=kd1-mark-final.service

[Service]
Type=oneshot
ExecStart=/usr/local/libexec/kd1-ostree-stage

[Install]
WantedBy=multi-user.target
";

/// Facts of the ostree node for the harness (test-only): how `/usr` is mounted, where
/// `/usr/local` leads, and the previous boot's journal of the pull's stop step and of
/// ostree-finalize-staged (persistent journal: `/var/log/journal` from tmpfiles).
const FACTS_UNIT: &str = "[Unit]
Description=testvm: ostree facts as markers
After=multi-user.target kmod-day1-pull.service kd1-mark-prepull.service
Before=kd1-mark-final.service kd1-ostree-stage.service

[Service]
Type=oneshot
ExecStart=/usr/local/libexec/kd1-ostree-facts

[Install]
WantedBy=multi-user.target
";

const FACTS_SCRIPT: &str = r#"#!/bin/bash
# testvm: ostree facts as KD1-MARK lines (files as numbered base64 chunks, as kd1-mark).
exec 3>/dev/kmsg
mark() { printf 'KD1-MARK ostree.%s=%s\n' "$1" "$2" >&3; }
text() {
    local i=0 line
    while IFS= read -r line; do mark "$1.b64.$i" "$line"; i=$((i + 1)); done < <(base64 -w 600)
    [ "$i" -gt 0 ] || mark "$1.b64.0" ""
}
mark usr_options "$(awk '$2 == "/usr" {print $4}' /proc/mounts | tail -n 1)"
mark usr_local "$(readlink /usr/local)"
mark pull_binary "$(readlink -f /usr/local/bin/kmod-day1-pull)"
ostree admin status 2>&1 | text admin_status
journalctl -b -1 -o short-monotonic --no-pager -u kmod-day1-pull-shutdown.service \
    -u ostree-finalize-staged.service 2>&1 | tail -n 150 | text prev_shutdown
# This boot's loader runs (the initramfs's too: its journal is flushed into the real root's)
# and the moment of switch-root, on one clock.
journalctl -b -o short-monotonic --no-pager -u kmod-day1-load.service \
    -u kmod-day1-load-initrd.service 2>&1 | tail -n 80 | text load_journal
journalctl -b -o short-monotonic --no-pager _PID=1 2>&1 | grep -m 1 'Switching root' | text switch_root
"#;

/// The update unit's script; its markers say what the node had at each moment.
fn stage_script() -> String {
    format!(
        r#"#!/bin/bash
# testvm: stage the newer commit as MCO does, then reboot.
set -euo pipefail
# The boot's final markers first: the reboot below cancels kd1-mark-final.service.
/usr/local/libexec/kd1-mark final
mark() {{ printf 'KD1-MARK stage.%s=%s\n' "$1" "$2" > /dev/kmsg; }}
entries() {{ grep -h '^linux' /boot/loader/entries/*.conf 2>/dev/null | tr '\n' ' '; }}
mark entries_before "$(entries)"
t0=$(date +%s%N)
# kd1.stage_os_update=REF stages REF (a derived OS image); the word alone, the newer kernel's.
ref={UPGRADE_REF}
for w in $(cat /proc/cmdline); do
    case $w in kd1.stage_os_update=*) ref=${{w#kd1.stage_os_update=}} ;; esac
done
ostree admin deploy --stage --os={OS} "$ref"
mark deploy_ms "$(( ($(date +%s%N) - t0) / 1000000 ))"
mark staged_file "$(test -e /run/ostree/staged-deployment && echo present || echo absent)"
mark deployments "$(ls /ostree/deploy/{OS}/deploy | grep -v '\.origin$' | tr '\n' ' ')"
mark staged_modules "$(ls -d /ostree/deploy/{OS}/deploy/*/usr/lib/modules/* | tr '\n' ' ')"
mark entries_staged "$(entries)"
sleep 3
mark reboot 1
systemctl --no-block reboot
"#
    )
}

/// What a variant of the ostree node changes (`scenarios/ostree_initramfs.rs`); the default
/// is the plain node.
#[derive(Debug, Clone, Default)]
pub struct Variant {
    /// Directories under `usr/lib/modules/<kver>/` removed from every commit's tree (then
    /// `depmod`): a kernel without those in-tree drivers. Its initramfs, built without a NIC
    /// driver, has none either.
    pub remove_modules: Vec<String>,
    /// Ignition configs (name, JSON) applied after those of the node's configs.
    pub ignition: Vec<(String, String)>,
    /// Test units (name, text) enabled for `multi-user.target`, and their scripts (path
    /// under `/usr/local/libexec`, text).
    pub units: Vec<(String, String)>,
    /// Scripts of the test units.
    pub scripts: Vec<(String, String)>,
    /// Files copied into the stateroot's `/var` (path there, source on this machine).
    pub var_files: Vec<(String, PathBuf)>,
    /// A derived OS image committed beside the others (not deployed: staged by a boot).
    pub derived: Option<DerivedImage>,
}

/// A derived OS image of the base kernel (RHCOS image mode: a build FROM the node's image).
#[derive(Debug, Clone)]
pub struct DerivedImage {
    /// Its ref in the node's repository.
    pub ref_name: String,
    /// Files and directories copied into the build root first (path there, source).
    pub files: Vec<(String, PathBuf)>,
    /// The build step (`sh -e`), run in a chroot of the build root before the ostree layout;
    /// it must write the kernel's `usr/lib/modules/<kver>/initramfs.img` (removed before:
    /// the build root shares its files with the cache).
    pub script: String,
}

/// The cached tools root.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OstreeTools {
    /// The root: the VM image's plus ostree, ostree-boot and dracut, with
    /// `/usr/lib/modules/<kver>/initramfs.img` for each kernel.
    pub root: PathBuf,
    /// Kernel releases, the base one first.
    pub kernels: Vec<String>,
}

/// Returns the cached tools root, building it when the cache has none for this recipe
/// (about 2 minutes: the packages, Debian's dracut trigger, two initramfs images).
pub fn ensure_tools(dirs: &Dirs, img: &VmImage) -> Result<OstreeTools> {
    let key = recipe_key(&[
        "ostree-tools v1",
        &img.root.display().to_string(),
        TOOLS_PACKAGES,
        DRACUT_ARGS,
        &img.base.release,
        &img.upgrade.release,
    ]);
    let dir = dirs.cache.join(format!("ostree-tools-{key}"));
    let record = dir.join("tools.json");
    if let Ok(text) = std::fs::read_to_string(&record) {
        info!("ostree tools root: cached at {}", dir.display());
        return serde_json::from_str(&text)
            .with_context(|| format!("reading {} (delete it to rebuild)", record.display()));
    }
    let started = Instant::now();
    let tmp = tmp_sibling(&dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp)?;
    let root = tmp.join("root");
    info!("ostree tools root: copying the VM image, installing {TOOLS_PACKAGES}");
    // A full copy: apt and dracut write into it.
    run(Command::new("cp").arg("-a").arg(&img.root).arg(&root))?;
    let kernels = vec![img.base.release.clone(), img.upgrade.release.clone()];
    let dracut: Vec<String> = kernels
        .iter()
        .map(|k| format!("dracut {DRACUT_ARGS} /usr/lib/modules/{k}/initramfs.img {k} &"))
        .collect();
    let script = format!(
        "apt-get update -q && apt-get install -y -q --no-install-recommends {TOOLS_PACKAGES} && apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
{}
wait
for k in {}; do test -s /usr/lib/modules/$k/initramfs.img; done
rm -f /boot/initrd.img-*
mkdir -p {CHROOT_WORK}",
        dracut.join("\n"),
        kernels.join(" ")
    );
    let r = root.clone();
    in_private_mounts(move || {
        chroot_mounts(&r)?;
        run(&mut chroot(&r, &script)).context("installing ostree and dracut in the tools root")
    })?;
    let tools = OstreeTools {
        root: dir.join("root"),
        kernels,
    };
    write_file(
        &tmp.join("tools.json"),
        serde_json::to_string_pretty(&tools)?,
    )?;
    // Older recipes' tools roots (1.3 GB each) go.
    if let Ok(rd) = std::fs::read_dir(&dirs.cache) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("ostree-tools-") && e.path() != tmp {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    std::fs::rename(&tmp, &dir).with_context(|| format!("moving {}", dir.display()))?;
    info!(
        "ostree tools root: built in {} s at {}",
        started.elapsed().as_secs(),
        dir.display()
    );
    Ok(tools)
}

/// Runs `f` in a thread of its own with a private mount namespace: whatever `f` mounts (and
/// the commands it starts) is gone when the thread ends.
fn in_private_mounts<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                .context("unsharing the mount namespace (the harness runs as root)")?;
            run(Command::new("mount").args(["--make-rprivate", "/"]))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| bail!("the mount-namespace thread panicked"))
    })
}

/// `/proc`, `/sys` and `/dev` for commands run in the chroot `root`.
fn chroot_mounts(root: &Path) -> Result<()> {
    run(Command::new("mount")
        .args(["-t", "proc", "proc"])
        .arg(root.join("proc")))?;
    for d in ["sys", "dev"] {
        run(Command::new("mount")
            .arg("--rbind")
            .arg(format!("/{d}"))
            .arg(root.join(d)))?;
    }
    Ok(())
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

/// Turns a hard-link copy of the tools root into the tree of one ostree commit carrying
/// kernel `kver` (only unlinks and renames: the copy shares its files with the cache), with
/// the variant's modules removed and, for a derived image, its build step.
fn make_tree(
    tools: &OstreeTools,
    tree: &Path,
    kver: &str,
    v: &Variant,
    build: Option<&DerivedImage>,
) -> Result<()> {
    run(Command::new("cp").arg("-al").arg(&tools.root).arg(tree))?;
    let others: Vec<&str> = tools
        .kernels
        .iter()
        .filter(|k| *k != kver)
        .map(String::as_str)
        .collect();
    run(&mut sh(&format!(
        "cd '{}'\nfor k in {}; do rm -rf usr/lib/modules/$k; done",
        tree.display(),
        others.join(" ")
    )))?;
    if !v.remove_modules.is_empty() {
        let modules = tree.join("usr/lib/modules").join(kver);
        for m in &v.remove_modules {
            let d = modules.join(m.trim_start_matches('/'));
            std::fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
        }
        // depmod writes each index to a temporary file and renames it: the cache's copies stay.
        run(Command::new("depmod").arg("-b").arg(tree).arg(kver))?;
    }
    if let Some(b) = build {
        let initramfs = tree.join(format!("usr/lib/modules/{kver}/initramfs.img"));
        std::fs::remove_file(&initramfs)
            .with_context(|| format!("removing {}", initramfs.display()))?;
        for (to, from) in &b.files {
            let to = tree.join(to.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().expect("a parent"))?;
            run(Command::new("cp").arg("-a").arg(from).arg(&to))?;
        }
        let t = tree.to_owned();
        in_private_mounts(move || {
            chroot_mounts(&t)?;
            run(&mut chroot(&t, &b.script))
        })
        .with_context(|| format!("building the derived image {}", b.ref_name))?;
    }
    run(&mut sh(&format!(
        "cd '{}'
mv boot/vmlinuz-{kver} usr/lib/modules/{kver}/vmlinuz
test -s usr/lib/modules/{kver}/initramfs.img
rm -rf boot/* vmlinuz vmlinuz.old initrd.img initrd.img.old
mv etc usr/etc
rm -rf home root opt srv mnt media usr/local var/* tmp/* run/* dev/*
ln -s var/home home; ln -s var/roothome root; ln -s var/opt opt; ln -s var/srv srv
ln -s var/mnt mnt; ln -s run/media media; ln -s ../var/usrlocal usr/local
mkdir sysroot; ln -s sysroot/ostree ostree",
        tree.display(),
    )))
    .with_context(|| format!("laying out the ostree tree of {kver}"))?;
    // The kernel's symbol versions where RHEL's kernel-core puts them, so the upgrade
    // preflight compares the modules' CRCs as it would on RHCOS (Debian's kernel package
    // ships none; its headers package has the same table as Module.symvers).
    let symvers = PathBuf::from(format!("/usr/src/linux-headers-{kver}/Module.symvers"));
    let text = std::fs::read(&symvers).with_context(|| {
        format!(
            "reading {} (linux-headers-{kver}, installed with the test modules)",
            symvers.display()
        )
    })?;
    write_file(
        &tree.join(format!("usr/lib/modules/{kver}/symvers.gz")),
        gzip(&text).context("compressing the kernel's symvers")?,
    )?;
    write_file(&tree.join("usr/lib/tmpfiles.d/kd1-ostree.conf"), TMPFILES)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(vec![], flate2::Compression::best());
    e.write_all(data)?;
    Ok(e.finish()?)
}

/// A fresh ostree node: commits of both kernels, the base one deployed, every config
/// applied with the real Ignition, the test overlay, then the disk. The returned machine
/// has no kernel chosen yet: [`crate::bls_boot`] reads it from the disk before each boot.
pub fn node(lab: &Lab, name: &str, o: &NodeOptions) -> Result<Machine> {
    node_variant(lab, name, o, &Variant::default())
}

/// [`node`], changed as `v` says.
pub fn node_variant(lab: &Lab, name: &str, o: &NodeOptions, v: &Variant) -> Result<Machine> {
    node_inner(lab, name, o, v).with_context(|| format!("preparing the ostree node {name}"))
}

fn node_inner(lab: &Lab, name: &str, o: &NodeOptions, v: &Variant) -> Result<Machine> {
    let tools = ensure_tools(&lab.dirs, &lab.img)?;
    let started = Instant::now();
    let dir = lab.dirs.fresh_work_dir(name)?;
    let trees = dir.join("trees");
    std::fs::create_dir_all(&trees)?;
    for k in &tools.kernels {
        make_tree(&tools, &trees.join(k), k, v, None)?;
    }
    let mut derived_commit = String::new();
    if let Some(d) = &v.derived {
        make_tree(
            &tools,
            &trees.join("derived"),
            &tools.kernels[0],
            v,
            Some(d),
        )?;
        derived_commit = format!(
            "\nostree --repo={CHROOT_WORK}/sysroot/ostree/repo commit -b {} --tree=dir={CHROOT_WORK}/trees/derived -s 'Derived from {}'",
            d.ref_name, tools.kernels[0]
        );
    }
    let sysroot = dir.join("sysroot");
    std::fs::create_dir_all(&sysroot)?;
    let disk = dir.join("disk.img");
    let karg: Vec<String> = BASE_CMDLINE
        .split_whitespace()
        .map(|w| format!("--karg={w}"))
        .collect();
    let s = format!("{CHROOT_WORK}/sysroot");
    let script = format!(
        "ostree admin init-fs {s}
ostree --repo={s}/ostree/repo config set sysroot.bootloader none
ostree --repo={s}/ostree/repo commit -b {BASE_REF} --tree=dir={CHROOT_WORK}/trees/{} -s 'Debian {0}'
ostree --repo={s}/ostree/repo commit -b {UPGRADE_REF} --tree=dir={CHROOT_WORK}/trees/{} -s 'Debian {1}'{derived_commit}
ostree admin os-init --sysroot={s} {OS}
ostree admin deploy --sysroot={s} --os={OS} {} {BASE_REF}",
        tools.kernels[0],
        tools.kernels[1],
        karg.join(" ")
    );
    in_private_mounts(|| {
        // ostree admin deploy freezes the filesystem holding /boot: a tmpfs of our own.
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=3G,mode=0755", "tmpfs"])
            .arg(&sysroot))?;
        chroot_mounts(&tools.root)?;
        run(Command::new("mount")
            .arg("--rbind")
            .arg(&dir)
            .arg(tools.root.join(CHROOT_WORK.trim_start_matches('/'))))?;
        run(&mut chroot(&tools.root, &script))
            .context("committing the trees and deploying the base one with ostree")?;
        let stateroot = sysroot.join("ostree/deploy").join(OS);
        let deployment = single_deployment(&stateroot.join("deploy"))?;
        // First-boot Ignition writes the deployment's /etc and the stateroot's /var (where
        // /usr/local/bin resolves): the stateroot's var over the deployment's, as at boot.
        run(Command::new("mount")
            .arg("--bind")
            .arg(stateroot.join("var"))
            .arg(deployment.join("var")))?;
        install_into(lab, &dir, &deployment, o, v)?;
        run(Command::new("umount").arg(deployment.join("var")))?;
        crate::vm_image::make_disk(&sysroot, &disk)
    })?;
    std::fs::remove_dir_all(&trees).with_context(|| format!("removing {}", trees.display()))?;
    info!(
        "ostree node {name}: ready in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let mut m = Machine::new(name, &dir, &disk, lab.img.base.clone());
    m.base_cmdline = String::new();
    Ok(m)
}

/// The one deployment directory (`<checksum>.<serial>`) under `deploy_dir`.
fn single_deployment(deploy_dir: &Path) -> Result<PathBuf> {
    let v: Vec<PathBuf> = std::fs::read_dir(deploy_dir)
        .with_context(|| format!("reading {}", deploy_dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.path())
        .collect();
    match v.as_slice() {
        [d] => Ok(d.clone()),
        _ => bail!(
            "expected one deployment in {}, found {v:?}",
            deploy_dir.display()
        ),
    }
}

/// Ignition, the test overlay, the update unit and extra files, into the deployment.
fn install_into(lab: &Lab, dir: &Path, root: &Path, o: &NodeOptions, v: &Variant) -> Result<()> {
    // `/usr/local` -> `../var/usrlocal`: RHCOS has the directory from its first boot (tmpfiles);
    // Ignition's files usually create it here, a node without any config needs it made.
    std::fs::create_dir_all(root.join("var/usrlocal"))?;
    for cfg in &o.configs {
        let ign_work = dir.join(format!("ignition-{}", cfg.name));
        std::fs::create_dir_all(&ign_work)?;
        let ign = ignition_for(cfg, &lab.tools, &ign_work)?;
        ignition_apply::apply(&ign, root, &ign_work)
            .with_context(|| format!("applying the Ignition config of {}", cfg.name))?;
    }
    for (name, ign) in &v.ignition {
        let ign_work = dir.join(format!("ignition-{name}"));
        std::fs::create_dir_all(&ign_work)?;
        ignition_apply::apply(ign, root, &ign_work)
            .with_context(|| format!("applying the Ignition config {name}"))?;
    }
    guest_overlay::install(
        root,
        &Overlay {
            registry: lab.registry.guest_addr(),
            bench_script: o.bench_script.clone(),
            unit_log: o.unit_log,
        },
    )?;
    let script = root.join("usr/local/libexec/kd1-ostree-stage");
    write_file(&script, stage_script())?;
    run(Command::new("chmod").arg("755").arg(&script))?;
    let facts = root.join("usr/local/libexec/kd1-ostree-facts");
    write_file(&facts, FACTS_SCRIPT)?;
    run(Command::new("chmod").arg("755").arg(&facts))?;
    for (name, text) in &v.scripts {
        let p = root.join("usr/local/libexec").join(name);
        write_file(&p, text)?;
        run(Command::new("chmod").arg("755").arg(&p))?;
    }
    for (to, from) in &v.var_files {
        let to = root.join("var").join(to.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().expect("a parent"))?;
        std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
    }
    let sd = root.join("etc/systemd/system");
    let units = [
        ("kd1-ostree-stage.service", STAGE_UNIT),
        ("kd1-ostree-facts.service", FACTS_UNIT),
    ]
    .into_iter()
    .chain(v.units.iter().map(|(n, t)| (n.as_str(), t.as_str())));
    for (name, text) in units {
        write_file(&sd.join(name), text)?;
        let link = sd.join("multi-user.target.wants").join(name);
        std::fs::create_dir_all(link.parent().expect("parent"))?;
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("/etc/systemd/system/{name}"), &link)
            .with_context(|| format!("enabling {name}"))?;
    }
    if let Some(d) = &o.pull_dropin {
        write_file(
            &sd.join("kmod-day1-pull.service.d/80-testvm.conf"),
            format!("[Service]\n{d}\n"),
        )?;
    }
    for (path, text) in &o.files {
        write_file(&root.join(path.trim_start_matches('/')), text)?;
    }
    // What a reader of the disk finds where: the binaries under the stateroot's /var.
    let has_config = !o.configs.is_empty() || !v.ignition.is_empty();
    if has_config && !root.join("var/usrlocal/bin/kmod-day1-pull").exists() {
        bail!("Ignition did not put kmod-day1-pull into the stateroot's /var/usrlocal/bin");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_update_stages_the_newer_commit_then_reboots() {
        let s = stage_script();
        let stage = s.find("ostree admin deploy --stage --os=debian \"$ref\"");
        assert!(s.contains("ref=debian/upgrade\n"), "{s}");
        let reboot = s.find("systemctl --no-block reboot");
        assert!(
            matches!((stage, reboot), (Some(a), Some(b)) if a < b),
            "{s}"
        );
        assert!(STAGE_UNIT.contains("After=multi-user.target"));
        assert!(TMPFILES.contains("d /var/usrlocal/bin 0755"));
    }
}
