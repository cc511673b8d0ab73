// SPDX-License-Identifier: Apache-2.0
//! Test modules built against the VM's exact kernels (headers of the same ABI, the kernel
//! source of the same package version), cached per kernel and recipe:
//!
//! - `e1000`: the VM NIC's driver rebuilt out of tree from the kernel source, with a
//!   distinct `MODULE_VERSION` and a log marker: the network-driver replacement case;
//! - `kd1_dep`, `kd1_main` (depends on `kd1_dep`, takes parameters, requests a firmware
//!   file), `kd1_fail` (init fails: forces a rollback), `kd1_bench0..9` (for the bench);
//! - `e1000` again with a wrong vermagic: the broken module;
//! - `e1000` without the VM NIC's device ID (`0x100E`, QEMU's e1000) in its table: it loads
//!   and binds nothing (`nic-not-bound`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::cmd::{run, stdout};
use crate::dirs::{recipe_key, tmp_sibling, write_file, Dirs};
use crate::vm_image::VmImage;

/// `MODULE_VERSION` of the out-of-tree e1000 (the in-tree one has none in 6.1).
pub const OOT_E1000_VERSION: &str = "7.3.21-k8-NAPI-kmodday1";

/// Printed by the out-of-tree e1000 when it loads.
pub const OOT_E1000_MARKER: &str = "kmodday1: out-of-tree e1000";

/// The device ID of QEMU's e1000 (82540EM), taken out of the no-NIC-ID build's table.
pub const VM_NIC_ID: &str = "0x100E";

/// Number of bench modules.
pub const BENCH_MODULES: usize = 10;

const FIXTURES: &[(&str, &str)] = &[
    ("kd1_dep.c", include_str!("../fixtures/modules/kd1_dep.c")),
    ("kd1_main.c", include_str!("../fixtures/modules/kd1_main.c")),
    ("kd1_fail.c", include_str!("../fixtures/modules/kd1_fail.c")),
    (
        "kd1_bench.c",
        include_str!("../fixtures/modules/kd1_bench.c"),
    ),
];

/// The firmware file kd1_main requests (`kd1/kd1-fw.bin`).
pub const FIRMWARE: &[u8] = include_bytes!("../fixtures/modules/kd1-fw.bin");

/// The modules built for one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelModules {
    /// Kernel release they were built for.
    pub release: String,
    /// Out-of-tree e1000.
    pub e1000: PathBuf,
    /// e1000 with a vermagic for another kernel.
    pub e1000_broken: PathBuf,
    /// e1000 without [`VM_NIC_ID`] in its device table.
    pub e1000_no_nic_id: PathBuf,
    /// Exports `kd1_dep_answer`.
    pub kd1_dep: PathBuf,
    /// Uses it; parameters `level`, `greeting`; firmware `kd1/kd1-fw.bin`.
    pub kd1_main: PathBuf,
    /// Init returns -ENODEV.
    pub kd1_fail: PathBuf,
    /// `kd1_bench0..9`.
    pub bench: Vec<PathBuf>,
}

/// Modules for every kernel of the VM image, by release.
pub type BuiltModules = BTreeMap<String, KernelModules>;

/// Builds (or finds in the cache) the test modules for both VM kernels.
pub fn ensure(dirs: &Dirs, img: &VmImage) -> Result<BuiltModules> {
    let base_pkg = image_package_version(&img.root, &img.base.release)?;
    let mut headers: Vec<String> = img
        .kernels()
        .iter()
        .map(|k| format!("linux-headers-{}", k.release))
        .collect();
    headers.push(format!("linux-source-6.1={base_pkg}"));
    ensure_host_packages(&headers).context("installing kernel headers and source on the host")?;
    let src = e1000_source(dirs, &base_pkg)?;
    let mut out = BTreeMap::new();
    for k in img.kernels() {
        let m = build_for_kernel(dirs, &src, &base_pkg, &k.release)
            .with_context(|| format!("building the test modules for kernel {}", k.release))?;
        out.insert(k.release.clone(), m);
    }
    Ok(out)
}

/// The Debian package version of `linux-image-<release>` in the VM root.
fn image_package_version(root: &Path, release: &str) -> Result<String> {
    stdout(
        Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f=${Version}"])
            .arg(format!("linux-image-{release}")),
    )
    .with_context(|| format!("reading the package version of kernel {release} in the VM image"))
}

/// Installs the packages (`name` or `name=version`) that are not installed yet.
fn ensure_host_packages(pkgs: &[String]) -> Result<()> {
    let missing: Vec<&String> = pkgs
        .iter()
        .filter(|p| {
            let (name, version) = p.split_once('=').unwrap_or((p, ""));
            let have = Command::new("dpkg-query")
                .args(["-W", "-f=${Status} ${Version}"])
                .arg(name)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            !(have.starts_with("install ok installed") && have.ends_with(version))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    info!("host: apt-get install {missing:?}");
    let install = || {
        run(Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "--allow-downgrades",
            ])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    if install().is_err() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        install()?;
    }
    Ok(())
}

/// The e1000 driver directory of the kernel source, extracted once per source version and
/// patched with the version and the marker.
fn e1000_source(dirs: &Dirs, pkg: &str) -> Result<PathBuf> {
    let dir = dirs.cache.join(format!(
        "src-e1000-{pkg}-{}",
        recipe_key(&[OOT_E1000_VERSION, OOT_E1000_MARKER])
    ));
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(dir);
    }
    let tmp = tmp_sibling(&dir);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let started = Instant::now();
    let member = "linux-source-6.1/drivers/net/ethernet/intel/e1000";
    run(Command::new("tar")
        .arg("-xJf")
        .arg("/usr/src/linux-source-6.1.tar.xz")
        .arg("-C")
        .arg(&tmp)
        .arg("--strip-components=6")
        .arg(member))
    .context("extracting e1000 from /usr/src/linux-source-6.1.tar.xz")?;
    patch_e1000(&tmp)?;
    write_file(&tmp.join(".complete"), "")?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)?;
    info!(
        "e1000 source: extracted and patched in {} s",
        started.elapsed().as_secs()
    );
    Ok(dir)
}

/// Adds `MODULE_VERSION` and a load marker to e1000_main.c.
fn patch_e1000(dir: &Path) -> Result<()> {
    let path = dir.join("e1000_main.c");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let anchor = "pr_info(\"%s\\n\", e1000_driver_string);";
    if !text.contains(anchor) {
        bail!("e1000_main.c has no line {anchor}: the marker patch needs updating for this kernel source");
    }
    let text = text.replacen(
        anchor,
        &format!("{anchor}\n\tpr_info(\"{OOT_E1000_MARKER} {OOT_E1000_VERSION} loaded\\n\");"),
        1,
    ) + &format!("MODULE_VERSION(\"{OOT_E1000_VERSION}\");\n");
    write_file(&path, text)
}

fn build_for_kernel(
    dirs: &Dirs,
    e1000_src: &Path,
    pkg: &str,
    release: &str,
) -> Result<KernelModules> {
    let fixtures: Vec<&str> = FIXTURES.iter().map(|(_, t)| *t).collect();
    let mut parts = vec!["modules v2", release, pkg, OOT_E1000_VERSION, VM_NIC_ID];
    parts.extend(fixtures.iter().copied());
    let dir = dirs
        .cache
        .join(format!("modules-{release}-{}", recipe_key(&parts)));
    let record = dir.join("modules.json");
    if let Ok(t) = std::fs::read_to_string(&record) {
        return serde_json::from_str(&t).with_context(|| format!("reading {}", record.display()));
    }
    let started = Instant::now();
    let tmp = tmp_sibling(&dir);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let kdir = format!("/usr/src/linux-headers-{release}");
    // e1000: a copy of the patched source.
    let e1000 = tmp.join("e1000");
    run(Command::new("cp").arg("-a").arg(e1000_src).arg(&e1000))?;
    kbuild(&kdir, &e1000)?;
    // kd1 modules in one directory, so modpost resolves kd1_main -> kd1_dep.
    let kd1 = tmp.join("kd1");
    for (name, text) in FIXTURES {
        if *name == "kd1_bench.c" {
            for i in 0..BENCH_MODULES {
                write_file(&kd1.join(format!("kd1_bench{i}.c")), text)?;
            }
        } else {
            write_file(&kd1.join(name), text)?;
        }
    }
    let bench_objs: Vec<String> = (0..BENCH_MODULES)
        .map(|i| format!("kd1_bench{i}.o"))
        .collect();
    write_file(
        &kd1.join("Kbuild"),
        format!(
            "obj-m := kd1_dep.o kd1_main.o kd1_fail.o {}\n",
            bench_objs.join(" ")
        ),
    )?;
    kbuild(&kdir, &kd1)?;
    let broken = tmp.join("broken");
    std::fs::create_dir_all(&broken)?;
    let broken_ko = broken.join("e1000.ko");
    write_wrong_vermagic(&e1000.join("e1000.ko"), &broken_ko, release)?;
    let no_id = tmp.join("e1000-no-nic-id");
    run(Command::new("cp").arg("-a").arg(e1000_src).arg(&no_id))?;
    drop_device_id(&no_id.join("e1000_main.c"), VM_NIC_ID)?;
    kbuild(&kdir, &no_id)?;
    let final_path = |p: PathBuf| dir.join(p.strip_prefix(&tmp).expect("under tmp"));
    let m = KernelModules {
        release: release.to_owned(),
        e1000: final_path(e1000.join("e1000.ko")),
        e1000_broken: final_path(broken_ko),
        e1000_no_nic_id: final_path(no_id.join("e1000.ko")),
        kd1_dep: final_path(kd1.join("kd1_dep.ko")),
        kd1_main: final_path(kd1.join("kd1_main.ko")),
        kd1_fail: final_path(kd1.join("kd1_fail.ko")),
        bench: (0..BENCH_MODULES)
            .map(|i| final_path(kd1.join(format!("kd1_bench{i}.ko"))))
            .collect(),
    };
    write_file(&tmp.join("modules.json"), serde_json::to_string_pretty(&m)?)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)?;
    info!(
        "modules for {release}: built in {} s",
        started.elapsed().as_secs()
    );
    Ok(m)
}

/// Removes the `INTEL_E1000_ETHERNET_DEVICE(<id>),` line from e1000's PCI ID table.
fn drop_device_id(main_c: &Path, id: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(main_c).with_context(|| format!("reading {}", main_c.display()))?;
    let line = format!("\tINTEL_E1000_ETHERNET_DEVICE({id}),\n");
    if !text.contains(&line) {
        bail!(
            "{} has no line {line:?}: the device-ID patch needs updating for this kernel source",
            main_c.display()
        );
    }
    write_file(main_c, text.replacen(&line, "", 1))
}

fn kbuild(kdir: &str, dir: &Path) -> Result<()> {
    run(Command::new("make")
        .arg("-C")
        .arg(kdir)
        .arg(format!("M={}", dir.display()))
        .arg("-j2")
        .arg("modules"))
    .with_context(|| format!("building the modules in {} against {kdir}", dir.display()))?;
    Ok(())
}

/// Copies a module with its vermagic's kernel release replaced by another of the same
/// length, as if it had been built for another kernel.
fn write_wrong_vermagic(from: &Path, to: &Path, release: &str) -> Result<()> {
    let mut bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    let needle = format!("vermagic={release} ");
    let bogus: String = release
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    if bogus == release {
        bail!("cannot make a wrong vermagic from {release}");
    }
    let pos = find(&bytes, needle.as_bytes())
        .with_context(|| format!("{} has no {needle:?} in its .modinfo", from.display()))?;
    let start = pos + "vermagic=".len();
    bytes[start..start + release.len()].copy_from_slice(bogus.as_bytes());
    write_file(to, bytes)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `modinfo -F field` of a module file.
pub fn modinfo(ko: &Path, field: &str) -> Result<String> {
    stdout(Command::new("modinfo").args(["-F", field]).arg(ko))
}

/// Sanity check run after a build: the versions are where the assertions expect them.
pub fn check(m: &KernelModules) -> Result<()> {
    let v = modinfo(&m.e1000, "version")?;
    if v != OOT_E1000_VERSION {
        bail!(
            "{} has version {v:?}, expected {OOT_E1000_VERSION}",
            m.e1000.display()
        );
    }
    let vm = modinfo(&m.e1000_broken, "vermagic")?;
    if vm.starts_with(&m.release) {
        bail!("{} still has vermagic {vm:?}", m.e1000_broken.display());
    }
    // modinfo prints aliases upper-case hex: pci:v00008086d0000100Esv*...
    let nic = format!("d0000{}sv", VM_NIC_ID.trim_start_matches("0x"));
    let aliases = modinfo(&m.e1000, "alias")?;
    let without = modinfo(&m.e1000_no_nic_id, "alias")?;
    if !aliases.contains(&nic)
        || without.contains(&nic)
        || without.lines().count() + 1 != aliases.lines().count()
    {
        bail!(
            "{} should have exactly the aliases of {} but {nic}",
            m.e1000_no_nic_id.display(),
            m.e1000.display()
        );
    }
    let deps = modinfo(&m.kd1_main, "depends")?;
    if deps != "kd1_dep" {
        bail!(
            "{} depends on {deps:?}, expected kd1_dep",
            m.kd1_main.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_vermagic_keeps_the_length() {
        let d = tempfile::tempdir().unwrap();
        let from = d.path().join("a.ko");
        let to = d.path().join("b.ko");
        std::fs::write(
            &from,
            b"\0license=GPL\0vermagic=6.1.0-50-amd64 SMP preempt mod_unload \0",
        )
        .unwrap();
        write_wrong_vermagic(&from, &to, "6.1.0-50-amd64").unwrap();
        let b = std::fs::read(&to).unwrap();
        assert_eq!(b.len(), std::fs::read(&from).unwrap().len());
        assert!(find(&b, b"vermagic=9.9.9-99-amd99 SMP").is_some());
        assert!(write_wrong_vermagic(&from, &to, "6.1.0-51-amd64").is_err());
    }
}
