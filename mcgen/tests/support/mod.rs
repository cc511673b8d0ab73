// SPDX-License-Identifier: Apache-2.0
//! Helpers shared by mcgen's integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// KMM day1-utility flags for one module, the base of several cases.
#[allow(dead_code)]
pub const KMM_FLAGS: [&str; 8] = [
    "--machine-config",
    "99-worker-ice",
    "--machine-config-pool",
    "worker",
    "--image",
    "quay.io/acme/ice-kmod",
    "--kernel-module",
    "ice",
];

/// The node image of the test cases (a tag beside the digest: mcgen keeps the digest).
#[allow(dead_code)]
pub const NODE_IMAGE: &str = "quay.io/kmod-day1/node:0.1.0@sha256:4e1f5cbd3cf2a8b2f3bd0f9a6c7e2d1b0a9f8e7d6c5b4a3928170615f4e3d2c1";

/// The workspace root: example paths in the cases are relative to it.
#[allow(dead_code)]
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs the mcgen binary from the workspace root.
pub fn mcgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mcgen"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("running mcgen")
}

/// Runs mcgen, which must succeed: its stdout and stderr.
#[allow(dead_code)]
pub fn mcgen_ok(args: &[&str]) -> (String, String) {
    let out = mcgen(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "mcgen {args:?}: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

/// The documents of a multi-document YAML stream, as JSON values.
#[allow(dead_code)]
pub fn documents(yaml: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize as _;
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| serde_json::Value::deserialize(d).expect("a YAML document"))
        .collect()
}

/// Checks an Ignition config with the real `ignition-validate` (Debian's ignition 2.14,
/// which knows spec 3.0 to 3.3) and with the ignition-config crate (no warnings).
#[allow(dead_code)] // not every test binary uses every helper
pub fn validate_ignition(json: &str) {
    let (_, warnings) = ignition_config::Config::parse_str(json).expect("Ignition parses back");
    assert!(
        warnings.is_empty(),
        "ignition-config warnings: {warnings:?}"
    );
    let version: serde_json::Value = serde_json::from_str(json).unwrap();
    let version = version["ignition"]["version"].as_str().unwrap().to_owned();
    if version == "3.4.0" {
        // ignition-validate 2.14 predates 3.4.0 being stable: the crate check above is it.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.ign");
    std::fs::write(&file, json).unwrap();
    let out = Command::new("ignition-validate")
        .arg(&file)
        .output()
        .expect("running ignition-validate: install the ignition package (hack/install-deps)");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "ignition-validate rejected a generated {version} config: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
