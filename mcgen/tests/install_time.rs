// SPDX-License-Identifier: Apache-2.0
//! The install-time outputs: `--bundle` in an Ignition config and a MachineConfig (its size
//! limit), `--output node-config`, and `--output initrd` checked with the real `cpio` and
//! `bsdcpio` (listing and unpacking) and against the dracut module's manifest.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::Command;

use support::{mcgen, root, NODE_IMAGE};

const BUNDLE: &str = "mcgen/tests/fixtures/bundle-store";
const K_RHCOS: &str = "5.14.0-427.13.1.el9_4.x86_64";
const K_DEBIAN: &str = "6.1.0-27-amd64";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The tree of the fixture store's ref for `kernel`.
fn tree_of(kernel: &str) -> String {
    let dir = root()
        .join(BUNDLE)
        .join("refs/99-worker-kmod-e1000/e1000")
        .join(kernel);
    let file = std::fs::read_dir(dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    v["tree"].as_str().unwrap().to_owned()
}

#[test]
fn a_bundle_in_the_ignition_config_is_the_stores_content() {
    use base64::Engine;
    let out = mcgen(&[
        "-f",
        "examples/e1000.yaml",
        "-o",
        "ignition",
        "--delivery",
        "layered",
        "--bundle",
        BUNDLE,
        "--kernel-release",
        K_DEBIAN,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("kernels {K_DEBIAN}, ")),
        "{}",
        stderr(&out)
    );
    let ign: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tree = tree_of(K_DEBIAN);
    let ko = format!("/var/lib/kmod-day1/trees/{tree}/modules/extra/e1000.ko");
    let files = ign["storage"]["files"].as_array().unwrap();
    let f = files
        .iter()
        .find(|f| f["path"] == ko.as_str())
        .expect("the module");
    let b64 = f["contents"]["source"]
        .as_str()
        .unwrap()
        .strip_prefix("data:;base64,")
        .unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let data = if f["contents"]["compression"] == "gzip" {
        let mut s = vec![];
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut s)
            .unwrap();
        s
    } else {
        raw
    };
    assert_eq!(
        data,
        std::fs::read(
            root()
                .join(BUNDLE)
                .join(format!("trees/{tree}/modules/extra/e1000.ko"))
        )
        .unwrap()
    );
    let link = &ign["storage"]["links"][0];
    assert_eq!(link["target"], "e1000.ko");
    // Only this config and this kernel: not the other kernel's tree, not another config.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(&tree_of(K_RHCOS)));
    assert!(!text.contains("99-other"));
    assert!(!text.contains("last-pull"));
}

#[test]
fn a_bundle_too_large_for_a_machine_config_is_refused_naming_the_alternatives() {
    let out = mcgen(&[
        "-f",
        "examples/e1000.yaml",
        "--node-image",
        NODE_IMAGE,
        "--bundle",
        BUNDLE,
        "--max-bytes",
        "4000",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(e.contains("with its bundle would be"), "{e}");
    assert!(e.contains("1.5 MiB"), "{e}");
    assert!(
        e.contains("-o ignition") && e.contains("-o initrd") && e.contains("-o prestage"),
        "{e}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_kernel_the_store_lacks_is_refused() {
    let out = mcgen(&[
        "-f",
        "examples/e1000.yaml",
        "-o",
        "ignition",
        "--delivery",
        "layered",
        "--bundle",
        BUNDLE,
        "--kernel-release",
        "6.9.9-1-amd64",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(e.contains("registry.example.com/kmods/e1000:6.9.9-1-amd64 (set e1000) is not stored for kernel 6.9.9-1-amd64"), "{e}");
    assert!(e.contains("kmod-day1-pull --config-dir"), "{e}");
    for bad in [
        vec![
            "-o",
            "prestage",
            "--node-image",
            NODE_IMAGE,
            "--bundle",
            BUNDLE,
        ],
        vec!["-o", "ignition", "--delivery", "layered", "--loader", "x"],
        vec!["-o", "initrd", "--bundle", BUNDLE],
    ] {
        let mut args = vec!["-f", "examples/e1000.yaml"];
        args.extend(bad);
        let out = mcgen(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

/// `--output-file` with a bare file name writes it in the current directory.
#[test]
fn a_bare_output_file_name_is_written_in_the_current_directory() {
    let d = tempfile::tempdir().unwrap();
    let spec = root().join("examples/e1000.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_mcgen"))
        .args([
            "-o",
            "node-config",
            "--output-file",
            "99-worker-kmod-e1000.json",
            "-f",
        ])
        .arg(&spec)
        .current_dir(d.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(d.path().join("99-worker-kmod-e1000.json").is_file());
}

#[test]
fn node_config_is_the_config_file_the_node_gets() {
    let out = mcgen(&["-f", "examples/e1000.yaml", "-o", "node-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let c =
        kmod_day1_contract::NodeConfig::from_json(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(c.module_sets[0].name.as_str(), "e1000");
}

/// Writes the initrd for `kernels` into `dir`; returns its path.
fn initrd(dir: &Path, kernels: &[&str]) -> std::path::PathBuf {
    initrd_as(dir, kernels, "initrd")
}

/// Writes the `output` (`initrd` or `overlay-initrd`) for `kernels` into `dir`.
fn initrd_as(dir: &Path, kernels: &[&str], output: &str) -> std::path::PathBuf {
    let loader = dir.join("kmod-day1-load");
    std::fs::write(&loader, b"\x7fELF fake static loader").unwrap();
    let modprobe = dir.join("modprobe.d");
    std::fs::create_dir_all(&modprobe).unwrap();
    std::fs::write(
        modprobe.join("e1000.conf"),
        "options e1000 TxDescriptors=128\n",
    )
    .unwrap();
    std::fs::write(modprobe.join("nic.alias"), "alias kd1-nic e1000\n").unwrap();
    std::fs::write(modprobe.join(".hidden.conf"), "options e1000 x=1\n").unwrap();
    std::fs::write(modprobe.join("README"), "not read by kmod\n").unwrap();
    let img = dir.join("kmod-day1.img");
    let mut args: Vec<String> = [
        "-f",
        "examples/e1000.yaml",
        "-o",
        output,
        "--bundle",
        BUNDLE,
    ]
    .map(String::from)
    .to_vec();
    for k in kernels {
        args.extend(["--kernel-release".into(), k.to_string()]);
    }
    args.extend([
        "--loader".into(),
        loader.display().to_string(),
        "--modprobe-d".into(),
        modprobe.display().to_string(),
        "--output-file".into(),
        img.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = mcgen(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(
        e.contains("bytes gzip (") && e.contains("modprobe.d files e1000.conf, nic.alias"),
        "{e}"
    );
    img
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = vec![];
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{cmd:?}: {e} (hack/install-deps installs cpio and libarchive-tools)")
        });
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
    out
}

#[test]
fn the_initrd_is_a_newc_archive_cpio_and_bsdcpio_read_and_unpack() {
    let d = tempfile::tempdir().unwrap();
    let img = initrd(d.path(), &[K_RHCOS]);
    let cpio = gunzip(&img);
    let tree = tree_of(K_RHCOS);
    let want = [
        "usr/local/bin/kmod-day1-load".to_owned(),
        "etc/kmod-day1/config.d/99-worker-kmod-e1000.json".into(),
        "etc/modprobe.d/e1000.conf".into(),
        "etc/modprobe.d/nic.alias".into(),
        "usr/lib/systemd/system/kmod-day1-load.service".into(),
        "usr/lib/systemd/system/sysinit.target.wants/kmod-day1-load.service".into(),
        format!("var/lib/kmod-day1/trees/{tree}/modules/extra/e1000.ko"),
        format!("var/lib/kmod-day1/trees/{tree}/modules/extra/e1000-alias.ko"),
        format!("var/lib/kmod-day1/trees/{tree}/modules/modules.dep"),
    ];
    for lister in [vec!["cpio", "-t", "--quiet"], vec!["bsdcpio", "-t"]] {
        let out = run_with_stdin(Command::new(lister[0]).args(&lister[1..]), &cpio);
        let list = String::from_utf8(out.stdout).unwrap();
        let names: Vec<&str> = list.lines().collect();
        for w in &want {
            assert!(
                names.contains(&w.as_str()),
                "{lister:?}: {w} missing from {names:?}"
            );
        }
        assert!(
            !list.contains(".hidden") && !list.contains("README"),
            "{list}"
        );
        assert!(
            !list.contains(&tree_of(K_DEBIAN)),
            "another kernel's tree: {list}"
        );
        // Every parent directory precedes what it holds (the kernel creates no parents).
        let pos = |n: &str| {
            names
                .iter()
                .position(|x| *x == n)
                .unwrap_or_else(|| panic!("{n}"))
        };
        assert!(pos("var") < pos("var/lib") && pos("var/lib") < pos("var/lib/kmod-day1"));
    }

    // Unpacked, as the kernel would (cpio -i, and bsdcpio into a second directory).
    for (tool, args) in [
        ("cpio", vec!["-idm", "--quiet", "--no-absolute-filenames"]),
        ("bsdcpio", vec!["-idm"]),
    ] {
        let dest = d.path().join(format!("unpacked-{tool}"));
        std::fs::create_dir_all(&dest).unwrap();
        run_with_stdin(Command::new(tool).args(&args).current_dir(&dest), &cpio);
        let ko = dest.join(format!(
            "var/lib/kmod-day1/trees/{tree}/modules/extra/e1000.ko"
        ));
        assert_eq!(
            std::fs::read(&ko).unwrap(),
            std::fs::read(
                root()
                    .join(BUNDLE)
                    .join(format!("trees/{tree}/modules/extra/e1000.ko"))
            )
            .unwrap()
        );
        let alias = ko.with_file_name("e1000-alias.ko");
        assert_eq!(std::fs::read_link(alias).unwrap(), Path::new("e1000.ko"));
        let wants = dest.join("usr/lib/systemd/system/sysinit.target.wants/kmod-day1-load.service");
        assert_eq!(std::fs::read_to_string(wants).unwrap(), mcgen::LOAD_UNIT);
        use std::os::unix::fs::PermissionsExt;
        let loader = dest.join("usr/local/bin/kmod-day1-load");
        assert_eq!(
            std::fs::metadata(&loader).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            std::fs::read_to_string(dest.join("etc/modprobe.d/e1000.conf")).unwrap(),
            "options e1000 TxDescriptors=128\n"
        );
        let config =
            std::fs::read_to_string(dest.join("etc/kmod-day1/config.d/99-worker-kmod-e1000.json"))
                .unwrap();
        kmod_day1_contract::NodeConfig::from_json(&config).unwrap();
        // The ref is the store's, byte for byte: the loader reads it as on the node.
        let refs = dest.join(format!(
            "var/lib/kmod-day1/refs/99-worker-kmod-e1000/e1000/{K_RHCOS}"
        ));
        assert_eq!(std::fs::read_dir(refs).unwrap().count(), 1);
    }

    // Reproducible: the same inputs give the same bytes.
    let again_dir = d.path().join("again");
    std::fs::create_dir_all(&again_dir).unwrap();
    let again = initrd(&again_dir, &[K_RHCOS]);
    assert_eq!(std::fs::read(&img).unwrap(), std::fs::read(again).unwrap());
}

/// The initrd holds what the dracut module's manifest names, at the same paths.
#[test]
fn the_initrd_follows_the_dracut_modules_manifest() {
    let d = tempfile::tempdir().unwrap();
    let img = initrd(d.path(), &[]);
    let out = run_with_stdin(Command::new("cpio").args(["-t", "--quiet"]), &gunzip(&img));
    let list = String::from_utf8(out.stdout).unwrap();
    let manifest =
        std::fs::read_to_string(root().join("dracut/50kmod-day1/initramfs-content")).unwrap();
    for line in manifest.lines().filter(|l| !l.starts_with('#')) {
        let mut words = line.split_whitespace();
        let (kind, path) = (words.next().unwrap(), words.next().unwrap());
        let path = path.trim_start_matches('/');
        let found = match kind {
            "loader" | "unit" => list.lines().any(|l| l == path),
            "config" | "store" => list.lines().any(|l| l.starts_with(&format!("{path}/"))),
            // Carried as the first modprobe.d directory, /etc/modprobe.d.
            "modprobe.d" => path != "etc/modprobe.d" || list.contains("etc/modprobe.d/e1000.conf"),
            other => panic!("the manifest has an item mcgen does not know: {other}"),
        };
        assert!(found, "{line}: not in the initrd");
    }
    // Both kernels of the store by default.
    assert!(list.contains(&tree_of(K_RHCOS)) && list.contains(&tree_of(K_DEBIAN)));
}

/// The overlay initrd: the same items, everything under /etc (ostree's overlay initrd carries
/// nothing else), the unit pointing the loader at the overlay's store.
#[test]
fn the_overlay_initrd_has_the_same_content_all_under_etc() {
    let d = tempfile::tempdir().unwrap();
    let img = initrd_as(d.path(), &[K_RHCOS], "overlay-initrd");
    let cpio = gunzip(&img);
    let out = run_with_stdin(Command::new("cpio").args(["-t", "--quiet"]), &cpio);
    let list = String::from_utf8(out.stdout).unwrap();
    assert!(
        list.lines().all(|l| l == "etc" || l.starts_with("etc/")),
        "{list}"
    );
    let tree = tree_of(K_RHCOS);
    for w in [
        "etc/kmod-day1/initrd/kmod-day1-load".to_owned(),
        "etc/kmod-day1/config.d/99-worker-kmod-e1000.json".into(),
        "etc/modprobe.d/e1000.conf".into(),
        "etc/systemd/system/kmod-day1-load-initrd.service".into(),
        "etc/systemd/system/sysinit.target.wants/kmod-day1-load-initrd.service".into(),
        format!("etc/kmod-day1/initrd/store/trees/{tree}/modules/extra/e1000.ko"),
        format!("etc/kmod-day1/initrd/store/refs/99-worker-kmod-e1000/e1000/{K_RHCOS}"),
    ] {
        assert!(list.lines().any(|l| l == w), "{w} missing from {list}");
    }
    // The same items as the appended initrd, moved: the same number of entries.
    let plain_dir = d.path().join("plain");
    std::fs::create_dir_all(&plain_dir).unwrap();
    let plain = initrd(&plain_dir, &[K_RHCOS]);
    let plain = run_with_stdin(
        Command::new("cpio").args(["-t", "--quiet"]),
        &gunzip(&plain),
    );
    let files = |l: &str| {
        l.lines()
            .filter(|x| x.contains("trees/") || x.contains("refs/"))
            .count()
    };
    assert_eq!(
        files(&list),
        files(&String::from_utf8(plain.stdout).unwrap())
    );
    let dest = d.path().join("unpacked");
    std::fs::create_dir_all(&dest).unwrap();
    run_with_stdin(
        Command::new("cpio")
            .args(["-idm", "--quiet", "--no-absolute-filenames"])
            .current_dir(&dest),
        &cpio,
    );
    let unit = std::fs::read_to_string(
        dest.join("etc/systemd/system/sysinit.target.wants/kmod-day1-load-initrd.service"),
    )
    .unwrap();
    assert!(
        unit.contains("\nExecStart=/etc/kmod-day1/initrd/kmod-day1-load --store /etc/kmod-day1/initrd/store\n")
            && unit.contains("\nConditionPathExists=/etc/initrd-release\n"),
        "{unit}"
    );
}
