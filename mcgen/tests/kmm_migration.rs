// SPDX-License-Identifier: Apache-2.0
//! `--from-kmm-machineconfig`: KMM Day-1 MachineConfigs (tests/fixtures/kmm: today's
//! day1-utility, an older one, one made by the BootModuleConfig controller as `oc get` prints
//! it) become the equivalent kmod-day1 spec, which `mcgen -f` reads back, headed by what to
//! remove; bad input gets one line and exit status 2.

mod support;

use support::{mcgen, root};

const FIXTURES: &str = "mcgen/tests/fixtures/kmm";

fn migrate(fixture: &str) -> (String, String) {
    let path = format!("{FIXTURES}/{fixture}");
    let out = mcgen(&["--from-kmm-machineconfig", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{fixture}: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

/// The migrated spec as mcgen reads it back.
fn read_back(spec: &str) -> kmod_day1_contract::NodeConfig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spec.yaml");
    std::fs::write(&path, spec).unwrap();
    let out = mcgen(&[
        "-f",
        path.to_str().unwrap(),
        "-o",
        "ignition",
        "--delivery",
        "layered",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ign: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let file = ign["storage"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| {
            f["path"]
                .as_str()
                .unwrap()
                .starts_with("/etc/kmod-day1/config.d/")
        })
        .unwrap();
    use base64::Engine;
    let b64 = file["contents"]["source"]
        .as_str()
        .unwrap()
        .strip_prefix("data:;base64,")
        .unwrap();
    let text = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    kmod_day1_contract::NodeConfig::from_json(std::str::from_utf8(&text).unwrap()).unwrap()
}

#[test]
fn day1_utility() {
    let (spec, stderr) = migrate("day1-utility.yaml");
    assert!(stderr.contains("migrated KMM MachineConfig 99-worker-kmm-ice (pool worker)"));
    assert!(stderr.contains("warning: KMM's worker image quay.io/edge-infrastructure/kernel-module-management-worker:latest is not needed"));
    assert!(spec.contains("\nmetadata:\n  name: 99-worker-kmm-ice\n"));
    assert!(spec.contains("\n  machineConfigPool: worker\n"));
    let node = read_back(&spec);
    let set = &node.module_sets[0];
    assert_eq!(
        set.image.as_ref().unwrap().as_str(),
        "quay.io/acme/ice-kmod"
    );
    assert_eq!(set.modules[0].name.as_str(), "ice");
    let in_tree: Vec<&str> = set
        .in_tree_modules_to_remove
        .iter()
        .map(|m| m.as_str())
        .collect();
    assert_eq!(in_tree, ["ice", "irdma"]);
    assert!(set.firmware_path.is_none());
    assert_eq!(set.dir_name.as_str(), "/opt");
    assert_eq!(set.pull_secret.as_str(), "/var/lib/kubelet/config.json");
    for removed in [
        "#   - BootModuleConfig with spec.machineConfigName 99-worker-kmm-ice",
        "#   - unit 99-worker-kmm-ice-replace-kernel-module.service\n",
        "#   - unit 99-worker-kmm-ice-pull-kernel-module-image.service\n",
        "#   - the mask of crio-wipe.service (shared",
        "#   - file /usr/local/bin/replace-kernel-module.sh (shared",
        "#   - file /usr/local/bin/pull-kernel-module-image.sh (shared",
        "#   - file /usr/local/bin/wait-for-dispatcher.sh (shared",
        "#   - units entry 99-worker-kmm-ice-pull-kernel-module-image.service\n",
        "#   - units entry 99-worker-kmm-ice-replace-kernel-module.service\n",
        "#   - units entry crio-wipe.service (shared",
        "#   - files entry /usr/local/bin/wait-for-dispatcher.sh (shared",
        "#   - /var/lib/kmm_day1_config.yaml\n",
    ] {
        assert!(spec.contains(removed), "{removed}\n{spec}");
    }
}

#[test]
fn bootmoduleconfig_controller() {
    let (spec, stderr) = migrate("bmc.yaml");
    assert!(stderr.contains("(pool master)"), "{stderr}");
    let node = read_back(&spec);
    let set = &node.module_sets[0];
    assert_eq!(set.firmware_path.as_ref().unwrap().as_str(), "/firmware");
    assert_eq!(set.in_tree_modules_to_remove.len(), 2);
    assert!(spec.contains("units entry 99-master-kmm-ice-replace-kernel-module.service"));
}

#[test]
fn older_day1_utility() {
    let (spec, _) = migrate("day1-utility-2024.yaml");
    let node = read_back(&spec);
    let set = &node.module_sets[0];
    // The image only in the pull unit's environment, one in-tree module.
    assert_eq!(
        set.image.as_ref().unwrap().as_str(),
        "quay.io/acme/ice-kmod"
    );
    assert_eq!(set.in_tree_modules_to_remove.len(), 1);
    assert!(spec.contains("#   - unit replace-kernel-module.service\n"));
    // Before the BootModuleConfig controller: no BootModuleConfig, no disruption entries.
    assert!(!spec.contains("BootModuleConfig with"));
    assert!(!spec.contains("units entry"));
}

/// A fixture with edits, written to a temp file; returns mcgen's exit code, stdout and stderr.
fn migrate_edited(fixture: &str, edit: &dyn Fn(String) -> String) -> (i32, String, String) {
    let text = std::fs::read_to_string(root().join(FIXTURES).join(fixture)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mc.yaml");
    std::fs::write(&path, edit(text)).unwrap();
    let out = mcgen(&["--from-kmm-machineconfig", path.to_str().unwrap()]);
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn foreign_content_and_tagged_images_are_warned_about() {
    let (code, _, stderr) = migrate_edited("day1-utility.yaml", &|t| {
        t.replace(
            "    storage:\n      files:\n",
            "    storage:\n      files:\n        - path: /etc/chrony.conf\n          contents: {source: \"data:,x\"}\n",
        )
        .replace(
            "KERNEL_MODULE_IMAGE=quay.io/acme/ice-kmod\"",
            "KERNEL_MODULE_IMAGE=quay.io/acme/ice-kmod:v1\"",
        )
    });
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("also holds file /etc/chrony.conf, which is not KMM's"),
        "{stderr}"
    );
    assert!(stderr.contains("already has a tag or digest"), "{stderr}");
}

#[test]
fn bad_input() {
    type Edit = Box<dyn Fn(String) -> String>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "day1-utility.yaml",
            Box::new(|t: String| t.replace("kind: MachineConfig", "kind: ConfigMap")),
            "is not a machineconfiguration.openshift.io/v1 MachineConfig",
        ),
        (
            "day1-utility.yaml",
            Box::new(|t: String| t.replace("-replace-kernel-module.service", "-other.service")),
            "has no KMM Day-1 unit",
        ),
        (
            "day1-utility.yaml",
            Box::new(|t: String| t.replace("Environment=\"KERNEL_MODULE=ice\"", "")),
            "set no KERNEL_MODULE",
        ),
        (
            "day1-utility.yaml",
            Box::new(|t: String| {
                t.replacen(
                    "KERNEL_MODULE_IMAGE=quay.io/acme/ice-kmod\"",
                    "KERNEL_MODULE_IMAGE=quay.io/acme/other\"",
                    1,
                )
            }),
            "its units disagree on KERNEL_MODULE_IMAGE",
        ),
        (
            "day1-utility.yaml",
            Box::new(|t: String| {
                t.replace("    machineconfiguration.openshift.io/role: worker\n", "")
            }),
            "no machineconfiguration.openshift.io/role label",
        ),
        (
            "day1-utility.yaml",
            Box::new(|t: String| t.replace("KERNEL_MODULE=ice\"", "KERNEL_MODULE=ice;reboot\"")),
            "kernel module name \"ice;reboot\"",
        ),
        (
            "bmc.yaml",
            Box::new(|_| "spec: [unclosed\n".to_owned()),
            "not YAML",
        ),
    ];
    for (fixture, edit, expect) in cases {
        let (code, stdout, stderr) = migrate_edited(fixture, &*edit);
        assert_eq!(code, 2, "{expect}: {stderr}");
        assert!(stderr.contains(expect), "{expect}: {stderr}");
        assert!(
            stderr.starts_with("mcgen: error: KMM MachineConfig "),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stdout.is_empty());
    }
    let out = mcgen(&["--from-kmm-machineconfig", "no/such/file.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no/such/file.yaml does not exist"),
        "{stderr}"
    );
    // It is an input of its own: not with a spec or KMM's flags.
    let out = mcgen(&[
        "--from-kmm-machineconfig",
        "x.yaml",
        "-f",
        "examples/e1000.yaml",
    ]);
    assert_eq!(out.status.code(), Some(2));
}
