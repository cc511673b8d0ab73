// SPDX-License-Identifier: Apache-2.0
//! Golden outputs: representative specs and KMM flag sets -> the exact MachineConfig,
//! Ignition and Containerfile text committed under tests/golden/. Every Ignition config
//! (also the one inside each MachineConfig) passes the real ignition-validate.
//!
//! Refresh after an intended change: `make golden` (MCGEN_BLESS=1).

mod support;

use support::{mcgen, root, validate_ignition, KMM_FLAGS, NODE_IMAGE};

const BIN: &str = "mcgen/tests/fixtures/node-binaries";
/// A store as `kmod-day1-pull --kernel-release` leaves it, for two kernels (and another config).
const BUNDLE: &str = "mcgen/tests/fixtures/bundle-store";
/// The largest image-delivery MachineConfig for examples/e1000.yaml: MCO merges every
/// MachineConfig of a pool into one rendered config.
const IMAGE_MC_TARGET: usize = 16 * 1024;

/// (golden file, mcgen arguments separated by spaces; `KMM` stands for the KMM base flags)
fn cases() -> Vec<(&'static str, String)> {
    let bin = format!("--node-binaries {BIN}");
    let kmm = KMM_FLAGS.join(" ");
    vec![
        ("e1000.machineconfig.yaml", "-f examples/e1000.yaml --delivery layered".into()),
        ("e1000.image.machineconfig.yaml", format!("-f examples/e1000.yaml --node-image {NODE_IMAGE}")),
        ("e1000.image.ignition.json", format!("-f examples/e1000.yaml -o ignition --node-image {NODE_IMAGE}")),
        ("multi.machineconfig.yaml", "-f examples/multi.yaml --delivery layered".into()),
        ("multi.image.machineconfig.yaml", format!("-f examples/multi.yaml --delivery image --node-image {NODE_IMAGE}")),
        ("multi.ignition-3.3.json", "-f examples/multi.yaml -o ignition --delivery layered --ignition-version 3.3.0".into()),
        ("multi.ignition-3.4.json", "-f examples/multi.yaml -o ignition --delivery layered --ignition-version 3.4.0".into()),
        ("e1000.embedded.ignition.json", format!("-f examples/e1000.yaml -o ignition {bin}")),
        ("e1000.embedded.machineconfig.yaml", format!("-f examples/e1000.yaml --delivery embedded {bin}")),
        ("kmm-flags.machineconfig.yaml", format!("{kmm} --delivery layered --in-tree-modules-to-remove ice,irdma --firmware-files-path /firmware")),
        ("kmm-bmc.machineconfig.yaml", "-f mcgen/tests/cases/bmc.yaml --delivery layered".into()),
        ("e1000.prestage.yaml", format!("-f examples/e1000.yaml -o prestage --node-image {NODE_IMAGE}")),
        ("multi.prestage.yaml", format!("-f examples/multi.yaml -o prestage --node-image {NODE_IMAGE} --node-selector node-role.kubernetes.io/worker-cnf= --node-selector kubernetes.io/arch=amd64")),
        ("e1000.disruption-policy.next-boot.yaml", format!("-f examples/e1000.yaml -o disruption-policy --on-change next-boot --node-image {NODE_IMAGE}")),
        ("e1000.disruption-policy.reboot.yaml", format!("-f examples/e1000.yaml -o disruption-policy --on-change reboot --node-image {NODE_IMAGE}")),
        ("e1000.bundle.ignition.json", format!("-f examples/e1000.yaml -o ignition --delivery layered --bundle {BUNDLE}")),
        ("e1000.bundle.machineconfig.yaml", format!("-f examples/e1000.yaml --node-image {NODE_IMAGE} --bundle {BUNDLE} --kernel-release 5.14.0-427.13.1.el9_4.x86_64")),
        ("e1000.acm-policy.yaml", format!("-f examples/e1000.yaml -o acm-policy --node-image {NODE_IMAGE} --cluster-selector kmod-day1=e1000")),
        ("e1000.acm-policy.sno.yaml", format!("-f examples/e1000.yaml -o acm-policy --node-image {NODE_IMAGE} --single-node --remediation-action enforce --on-change next-boot --cluster-selector kmod-day1=e1000 --cluster-selector sno=true --policy-namespace ztp-kmods")),
        ("kmm-migration.day1-utility.yaml", "--from-kmm-machineconfig mcgen/tests/fixtures/kmm/day1-utility.yaml".into()),
        ("kmm-migration.day1-utility-2024.yaml", "--from-kmm-machineconfig mcgen/tests/fixtures/kmm/day1-utility-2024.yaml".into()),
        ("kmm-migration.bmc.yaml", "--from-kmm-machineconfig mcgen/tests/fixtures/kmm/bmc.yaml".into()),
        ("layered.Containerfile", "-f examples/e1000.yaml -o containerfile --base-image quay.io/openshift-release-dev/rhcos:4.16".into()),
        ("layered-no-base.Containerfile", "-f examples/e1000.yaml -o containerfile".into()),
    ]
}

/// The Ignition config inside a MachineConfig, as JSON text.
fn machine_config_ignition(yaml: &str) -> String {
    let mc: serde_json::Value = serde_norway::from_str(yaml).expect("MachineConfig YAML parses");
    assert_eq!(mc["kind"], "MachineConfig");
    assert_eq!(mc["apiVersion"], "machineconfiguration.openshift.io/v1");
    serde_json::to_string(&mc["spec"]["config"]).unwrap()
}

#[test]
fn golden_outputs() {
    let bless = std::env::var_os("MCGEN_BLESS").is_some();
    let mut drift = vec![];
    for (name, args) in cases() {
        let args: Vec<&str> = args.split_whitespace().collect();
        let out = mcgen(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{name}: mcgen {args:?} failed: {stderr}"
        );
        let text = String::from_utf8(out.stdout).unwrap();
        if name.ends_with(".json") {
            validate_ignition(&text);
        } else if name.ends_with(".machineconfig.yaml") {
            validate_ignition(&machine_config_ignition(&text));
            assert!(
                stderr.contains("bytes (limit 1048576)"),
                "{name}: size not reported: {stderr}"
            );
            if name.starts_with("e1000.image.") {
                assert!(
                    text.len() <= IMAGE_MC_TARGET,
                    "{name}: {} bytes, above the {IMAGE_MC_TARGET}-byte target",
                    text.len()
                );
            }
        }
        let path = root().join("mcgen/tests/golden").join(name);
        if bless {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{} is missing: run `make golden`", path.display()));
        if expected != text {
            drift.push(name);
        }
    }
    assert!(
        drift.is_empty(),
        "output drifted from the golden files {drift:?}: check the change, then run `make golden`"
    );
}

#[test]
fn kmm_flags_warn_about_worker_image() {
    let mut args = KMM_FLAGS.to_vec();
    args.extend([
        "--delivery",
        "layered",
        "--worker-image",
        "quay.io/kmm/worker:latest",
    ]);
    let out = mcgen(&args);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: --worker-image is ignored"),
        "{stderr}"
    );
}

#[test]
fn embedded_binaries_round_trip() {
    use base64::Engine;
    use std::io::Read;
    let out = mcgen(&[
        "-f",
        "examples/e1000.yaml",
        "-o",
        "ignition",
        "--node-binaries",
        BIN,
    ]);
    assert!(out.status.success());
    let ign: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = ign["storage"]["files"].as_array().unwrap();
    let load = files
        .iter()
        .find(|f| f["path"] == "/usr/local/bin/kmod-day1-load")
        .unwrap();
    assert_eq!(load["mode"], 0o755);
    assert_eq!(load["contents"]["compression"], "gzip");
    let b64 = load["contents"]["source"]
        .as_str()
        .unwrap()
        .strip_prefix("data:;base64,")
        .unwrap();
    let gz = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let mut raw = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut raw)
        .unwrap();
    assert_eq!(
        raw,
        std::fs::read_to_string(root().join(BIN).join("kmod-day1-load")).unwrap()
    );
    // The config file decodes to a config the node binaries accept.
    let conf = files
        .iter()
        .find(|f| f["path"] == "/etc/kmod-day1/config.d/99-worker-kmod-e1000.json")
        .unwrap();
    let b64 = conf["contents"]["source"]
        .as_str()
        .unwrap()
        .strip_prefix("data:;base64,")
        .unwrap();
    let text = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap();
    let node = kmod_day1_contract::NodeConfig::from_json(&text).unwrap();
    assert_eq!(node.module_sets[0].modules[0].name.as_str(), "e1000");
}

#[test]
fn output_file_is_written_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mc.yaml");
    let out = mcgen(&[
        "-f",
        "examples/e1000.yaml",
        "--delivery",
        "layered",
        "--output-file",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let text = std::fs::read_to_string(&path).unwrap();
    validate_ignition(&machine_config_ignition(&text));
}

/// Runs `systemd-analyze verify` on units (name, text), with `/usr/local/bin/` pointed at
/// stand-in binaries (systemd-analyze checks that they exist and are executable).
fn verify_units(units: &[(String, String)]) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for exe in ["kmod-day1-load", "kmod-day1-pull"] {
        let exe = bin.join(exe);
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut paths = vec![];
    for (name, text) in units {
        let unit = dir.path().join(name);
        std::fs::write(
            &unit,
            text.replace("/usr/local/bin/", &format!("{}/", bin.display())),
        )
        .unwrap();
        paths.push(unit);
    }
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .expect("running systemd-analyze (package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn units_verify_with_systemd_analyze() {
    // The units as the repository has them.
    verify_units(
        &[
            ("kmod-day1-load.service", mcgen::LOAD_UNIT),
            ("kmod-day1-pull.service", mcgen::PULL_UNIT),
            ("kmod-day1-pull-shutdown.service", mcgen::PULL_SHUTDOWN_UNIT),
        ]
        .map(|(n, t)| (n.to_owned(), t.to_owned())),
    );
    // The units of the image delivery, as the MachineConfig carries them: the install unit
    // and the others with their conditions on the binaries.
    let out = mcgen(&[
        "-f",
        "examples/e1000.yaml",
        "-o",
        "ignition",
        "--node-image",
        NODE_IMAGE,
    ]);
    assert!(out.status.success());
    let ign: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let units: Vec<(String, String)> = ign["systemd"]["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["name"].as_str().unwrap().to_owned(),
                u["contents"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let names: Vec<&str> = units.iter().map(|u| u.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "kmod-day1-load.service",
            "kmod-day1-pull.service",
            "kmod-day1-pull-shutdown.service",
            "kmod-day1-install.service"
        ]
    );
    let pull = &units[1].1;
    assert!(
        pull.contains("\nAfter=kmod-day1-install.service\n"),
        "{pull}"
    );
    assert!(
        pull.contains("\nConditionFileIsExecutable=/usr/local/bin/kmod-day1-pull\n[Service]")
            || pull
                .contains("\nConditionFileIsExecutable=/usr/local/bin/kmod-day1-pull\n\n[Service]"),
        "{pull}"
    );
    verify_units(&units);
}

#[test]
fn help_is_documented() {
    let out = mcgen(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let doc_path = root().join("docs/mcgen.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let (start, end) = ("<!-- mcgen --help -->\n```text\n", "```\n<!-- end -->");
    let a = doc.find(start).expect("help marker in docs/mcgen.md") + start.len();
    let b = a + doc[a..].find(end).expect("end marker in docs/mcgen.md");
    if std::env::var_os("MCGEN_BLESS").is_some() {
        std::fs::write(&doc_path, format!("{}{help}{}", &doc[..a], &doc[b..])).unwrap();
        return;
    }
    assert_eq!(
        &doc[a..b],
        help,
        "mcgen --help changed: update docs/mcgen.md (make golden)"
    );
}
