// SPDX-License-Identifier: Apache-2.0
//! The symbol version check on a real module and its kernel's real table. An integration
//! test that needs apt, dpkg-deb, tar, xz and kmod's modprobe (`hack/install-deps unit`
//! installs what is missing) and the package archive: it takes Debian's bookworm kernel
//! package as `tests/modprobe_parity.rs` keeps it (`$KMOD_DAY1_TEST_CACHE`, default
//! `/var/cache/kmod-day1-tests`; downloaded there when absent) and the `Module.symvers` of the
//! same version's linux-headers package (the installed one when its version matches, else
//! downloaded into the same cache), and runs `kmod-day1-load --dry-run --json` with that
//! package's e1000.ko, xz-compressed, as an image's module and the table gzipped as
//! `<modules-root>/<kver>/symvers.gz`, as RHEL ships it:
//!
//! - every import is checked (as many as kmod's `modprobe --dump-modversions` lists) and the
//!   set would swap;
//! - with `--symvers` naming a copy of the table where pci_enable_device's CRC has one bit
//!   flipped, the set fails its preflight, naming the symbol and both CRCs;
//! - without any table, nothing is checked and the plan says why.

use std::path::{Path, PathBuf};
use std::process::Command;

mod support;
use support::{install_deps, kernel_package, output, sbin};

const BIN: &str = env!("CARGO_BIN_EXE_kmod-day1-load");
const IMAGE: &str = "registry.local/symvers/e1000:v1";
const TREE: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn sh(cmd: &mut Command) -> Vec<u8> {
    output(cmd)
}

/// The Module.symvers of linux-headers-`abi` at `version`.
fn module_symvers(cache: &Path, abi: &str, version: &str) -> Vec<u8> {
    let pkg = format!("linux-headers-{abi}");
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", &pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let local = PathBuf::from(format!("/usr/src/{pkg}/Module.symvers"));
    if installed == version && local.exists() {
        return std::fs::read(local).unwrap();
    }
    let deb = cache.join(format!("{pkg}_{version}_amd64.deb"));
    if !deb.exists() {
        sh(Command::new("apt-get")
            .args(["download", "-q", &format!("{pkg}={version}")])
            .current_dir(cache));
    }
    untar_one(&deb, &format!("./usr/src/{pkg}/Module.symvers"))
}

/// One file of a package, by its path in the package.
fn untar_one(deb: &Path, member: &str) -> Vec<u8> {
    sh(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile '{}' | tar -xO --wildcards '{member}'",
        deb.display()
    )))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut g = flate2::write::GzEncoder::new(vec![], flate2::Compression::default());
    g.write_all(data).unwrap();
    g.finish().unwrap()
}

/// The loader's dry run for `abi` over the test root; its JSON and exit code.
fn dry_run(root: &Path, abi: &str, extra: &[&str]) -> (serde_json::Value, i32) {
    let p = |s: &str| root.join(s).display().to_string();
    let out = Command::new(BIN)
        .args(["--dry-run", "--json", "--kernel-release", abi])
        .args(["--config-dir", &p("config.d"), "--store", &p("store")])
        .args([
            "--cmdline",
            &p("cmdline"),
            "--modules-root",
            &p("usr/lib/modules"),
        ])
        .args(["--modprobe-dir", &p("etc/modprobe.d"), "--sysfs", &p("sys")])
        .args(["--securityfs", &p("security"), "--proc-keys", &p("keys")])
        .args(extra)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (json, out.status.code().unwrap_or(-1))
}

#[test]
fn debians_e1000_checks_against_its_kernels_symvers_and_a_flipped_crc_fails() {
    install_deps(&["modprobe", "dpkg-deb", "tar", "xz", "apt-get"]);
    let cache = std::env::var_os("KMOD_DAY1_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/kmod-day1-tests".into());
    std::fs::create_dir_all(&cache).unwrap();
    let deb = kernel_package(&cache);
    // linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    let mut parts = name.trim_end_matches("_amd64.deb").splitn(2, '_');
    let abi = parts
        .next()
        .unwrap()
        .trim_start_matches("linux-image-")
        .to_owned();
    let version = parts.next().unwrap().to_owned();
    let table = module_symvers(&cache, &abi, &version);

    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let node = root.join("usr/lib/modules").join(&abi);
    std::fs::create_dir_all(&node).unwrap();
    std::fs::write(node.join("modules.dep"), "").unwrap();
    std::fs::write(node.join("symvers.gz"), gzip(&table)).unwrap();
    for d in ["etc/modprobe.d", "sys", "security", "config.d"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("cmdline"), "quiet\n").unwrap();
    std::fs::write(root.join("keys"), "").unwrap();
    // The image: the package's e1000.ko, xz-compressed as RHCOS ships modules.
    let modules = root.join("store/trees").join(TREE).join("modules");
    std::fs::create_dir_all(&modules).unwrap();
    let ko = modules.join("e1000.ko");
    std::fs::write(
        &ko,
        untar_one(
            &deb,
            &format!("./lib/modules/{abi}/kernel/drivers/net/ethernet/intel/e1000/e1000.ko"),
        ),
    )
    .unwrap();
    let imports = String::from_utf8(sh(Command::new(sbin("modprobe"))
        .arg("--dump-modversions")
        .arg(&ko)))
    .unwrap();
    let count = imports.lines().count();
    assert!(count > 100, "{imports}");
    let pci_enable_device: &str = imports
        .lines()
        .find(|l| l.ends_with("\tpci_enable_device"))
        .expect("e1000 imports pci_enable_device")
        .split('\t')
        .next()
        .unwrap();
    let module_crc = u32::from_str_radix(pci_enable_device.trim_start_matches("0x"), 16).unwrap();
    sh(Command::new("xz").args(["-1", "-T1"]).arg(&ko));
    let refs = root.join("store/refs/symvers/e1000");
    std::fs::create_dir_all(&refs).unwrap();
    std::fs::write(
        refs.join(format!("{abi}.json")),
        serde_json::json!({"version": 1, "image": IMAGE, "manifestDigest": "sha256:00", "tree": TREE, "committedAt": 1}).to_string(),
    )
    .unwrap();
    std::fs::write(
        root.join("config.d/symvers.json"),
        serde_json::json!({"version": 1, "moduleSets": [{"name": "e1000", "image": IMAGE, "modules": [{"name": "e1000"}], "inTreeModulesToRemove": ["e1000"]}]}).to_string(),
    )
    .unwrap();

    // Its own kernel's table: every import checked, and equal.
    let (j, code) = dry_run(root, &abi, &[]);
    let set = &j["sets"][0];
    assert_eq!(
        (set["state"].as_str(), code),
        (Some("wouldSwap"), 0),
        "{set}"
    );
    let sv = &set["symbolVersions"];
    assert_eq!(sv["checked"], count, "{sv}");
    assert_eq!(sv["table"], node.join("symvers.gz").display().to_string());
    assert!(sv.get("mismatches").is_none(), "{sv}");

    // One bit of pci_enable_device's CRC flipped in the kernel's table.
    let flipped = module_crc ^ 1;
    let text = String::from_utf8(table).unwrap();
    let needle = format!("0x{module_crc:08x}\tpci_enable_device\t");
    assert!(text.contains(&needle), "the table has {needle:?}");
    let other = root.join("Module.symvers");
    std::fs::write(
        &other,
        text.replace(&needle, &format!("0x{flipped:08x}\tpci_enable_device\t")),
    )
    .unwrap();
    let (j, code) = dry_run(root, &abi, &["--symvers", other.to_str().unwrap()]);
    let set = &j["sets"][0];
    assert_eq!((set["state"].as_str(), code), (Some("failed"), 1), "{set}");
    let e = set["error"].as_str().unwrap();
    assert_eq!(
        e,
        format!("preflight: e1000.ko.xz from {IMAGE} was built against other symbol versions than kernel {abi}: e1000 imports pci_enable_device with CRC 0x{module_crc:08x}, the kernel exports 0x{flipped:08x} (rebuild the module for this kernel)")
    );
    assert_eq!(
        set["symbolVersions"]["mismatches"],
        serde_json::json!([{"module": "e1000", "symbol": "pci_enable_device", "moduleCrc": format!("0x{module_crc:08x}"), "kernelCrc": format!("0x{flipped:08x}")}])
    );

    // No table anywhere: nothing checked, and said.
    std::fs::remove_file(node.join("symvers.gz")).unwrap();
    let (j, code) = dry_run(root, &abi, &[]);
    let set = &j["sets"][0];
    assert_eq!(
        (set["state"].as_str(), code),
        (Some("wouldSwap"), 0),
        "{set}"
    );
    let why = set["symbolVersions"]["unchecked"][0].as_str().unwrap();
    assert!(
        why.starts_with(&format!("no symvers for {abi} (none of "))
            && why.ends_with("): the kernel checks them at load"),
        "{why}"
    );
}
