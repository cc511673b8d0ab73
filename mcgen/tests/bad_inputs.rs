// SPDX-License-Identifier: Apache-2.0
//! Bad input: every case exits with status 2, prints one line that names the problem, and
//! writes nothing (no stdout, no --output-file).

mod support;

use support::{mcgen, KMM_FLAGS};

/// A valid spec; each spec case replaces one piece of it.
const BASE: &str = r#"apiVersion: kmod-day1.io/v1alpha1
kind: KmodDay1Config
metadata:
  name: 99-worker-kmods
spec:
  machineConfigPool: worker
  moduleSets:
    - name: ice
      image: quay.io/acme/ice-kmod
      kernelMappings:
        - regexp: '^5\.14\..*$'
          containerImage: quay.io/acme/ice-kmod:${KERNEL_FULL_VERSION}
      modules:
        - name: ice
          parameters: [debug=1]
      inTreeModulesToRemove: [ice]
      firmwarePath: /firmware
"#;

enum Input {
    /// The base spec with one replacement (from, to).
    Spec(&'static str, &'static str),
    /// A whole spec file.
    RawSpec(&'static str),
    /// Command-line arguments.
    Args(&'static [&'static str]),
}

fn kmm_with(flag: &'static str, value: &'static str) -> Vec<&'static str> {
    let mut args = KMM_FLAGS.to_vec();
    match args.iter().position(|a| *a == flag) {
        Some(i) => args[i + 1] = value,
        None => args.extend([flag, value]),
    }
    args
}

fn cases() -> Vec<(&'static str, Input, &'static str)> {
    use Input::*;
    vec![
        ("module name with a newline (unit injection)", Spec("- name: ice\n          parameters", "- name: \"ice\\nExecStart=/bin/sh\"\n          parameters"), "control character"),
        ("module name with a slash", Spec("- name: ice\n          parameters", "- name: ../ice\n          parameters"), "kernel module name"),
        ("module name too long", Spec("- name: ice\n          parameters", "- name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n          parameters"), "55-byte limit"),
        ("module given as a file", Spec("- name: ice\n          parameters", "- name: ice.ko\n          parameters"), "not its file"),
        ("parameter without =", Spec("[debug=1]", "[debug]"), "name=value"),
        ("parameter with a newline", Spec("[debug=1]", "[\"debug=1\\nExecStartPre=/bin/sh\"]"), "control character"),
        ("parameter with an unquoted space", Spec("[debug=1]", "['msg=a b']"), "quote the value"),
        ("image with a scheme", Spec("image: quay.io/acme/ice-kmod\n", "image: docker://quay.io/acme/ice-kmod\n"), "scheme"),
        ("image with upper case", Spec("image: quay.io/acme/ice-kmod\n", "image: quay.io/Acme/ice-kmod\n"), "invalid repository"),
        ("image with a short digest", Spec("image: quay.io/acme/ice-kmod\n", "image: quay.io/acme/ice-kmod@sha256:abc\n"), "invalid digest"),
        ("image with an unknown variable", Spec("ice-kmod:${KERNEL_FULL_VERSION}", "ice-kmod:${KERNEL_VERSION}"), "only ${KERNEL_FULL_VERSION}"),
        ("image with a newline", Spec("image: quay.io/acme/ice-kmod\n", "image: \"quay.io/acme/ice-kmod\\n[Service]\"\n"), "control character"),
        ("regexp that does not compile", Spec(r"'^5\.14\..*$'", "'^5\\.(14'"), "does not compile"),
        ("mapping with literal and regexp", Spec("- regexp:", "- literal: 5.14.0\n          regexp:"), "exactly one of literal or regexp"),
        ("relative firmware path", Spec("firmwarePath: /firmware", "firmwarePath: firmware"), "absolute path"),
        ("firmware path with ..", Spec("firmwarePath: /firmware", "firmwarePath: /opt/../etc"), "'..'"),
        ("unknown key in a module set", Spec("firmwarePath: /firmware", "firmwarePaths: /firmware"), "unknown field `firmwarePaths`"),
        ("no modules", Spec("      modules:\n        - name: ice\n          parameters: [debug=1]\n", "      modules: []\n"), "lists no modules"),
        ("duplicate module set", RawSpec("apiVersion: kmod-day1.io/v1alpha1\nkind: KmodDay1Config\nmetadata: {name: a}\nspec:\n  machineConfigPool: worker\n  moduleSets:\n    - {name: x, image: q.io/a/b, modules: [{name: m}]}\n    - {name: x, image: q.io/a/c, modules: [{name: n}]}\n"), "used twice"),
        ("machine config name with upper case", Spec("name: 99-worker-kmods", "name: 99-Worker"), "machine config name"),
        ("machine config name with a newline", Spec("name: 99-worker-kmods", "name: \"99-w\\nx\""), "control character"),
        ("pool name with a space", Spec("machineConfigPool: worker", "machineConfigPool: 'work er'"), "machine config pool"),
        ("wrong kind", Spec("kind: KmodDay1Config", "kind: Module"), "is not understood"),
        ("not YAML", RawSpec("{{{"), "spec"),
        ("reboot policy unknown", Spec("firmwarePath: /firmware", "reboot: always"), "unknown variant `always`"),
        ("missing spec file", Args(&["-f", "/nonexistent/spec.yaml"]), "does not exist"),
        ("KMM flags missing the image", Args(&["--machine-config", "a", "--machine-config-pool", "worker", "--kernel-module", "ice"]), "missing --image"),
        ("spec and KMM flags together", Args(&["-f", "examples/e1000.yaml", "--kernel-module", "ice"]), "cannot be used with"),
        ("embedded config over the size limit", Args(&["-f", "examples/e1000.yaml", "--delivery", "embedded", "--node-binaries", "mcgen/tests/fixtures/node-binaries", "--max-bytes", "2000"]), "--delivery layered"),
        ("embedded without node binaries", Args(&["-f", "examples/e1000.yaml", "--delivery", "embedded", "--node-binaries", "/nonexistent"]), "make static"),
        ("containerfile with embedded delivery", Args(&["-f", "examples/e1000.yaml", "-o", "containerfile", "--delivery", "embedded"]), "goes with --delivery layered"),
        ("MachineConfig with no delivery", Args(&["-f", "examples/e1000.yaml"]), "--node-image REF@sha256:<digest> (the node image"),
        ("node image by tag", Args(&["-f", "examples/e1000.yaml", "--node-image", "quay.io/acme/kmod-day1-node:0.1.0"]), "has no digest"),
        ("node image with a short digest", Args(&["-f", "examples/e1000.yaml", "--node-image", "quay.io/acme/node@sha256:abc"]), "invalid digest"),
        ("image delivery without a node image", Args(&["-f", "examples/e1000.yaml", "--delivery", "image"]), "needs --node-image"),
        ("node image with layered delivery", Args(&["-f", "examples/e1000.yaml", "--delivery", "layered", "--node-image", "quay.io/a/n@sha256:4e1f5cbd3cf2a8b2f3bd0f9a6c7e2d1b0a9f8e7d6c5b4a3928170615f4e3d2c1"]), "goes with --delivery image"),
        ("unknown ignition version", Args(&["-f", "examples/e1000.yaml", "--ignition-version", "3.5.0"]), "invalid value '3.5.0'"),
    ]
}

fn kmm_cases() -> Vec<(&'static str, Vec<&'static str>, &'static str)> {
    vec![
        (
            "KMM module with a newline",
            kmm_with("--kernel-module", "ice\nExecStart=/bin/sh"),
            "control character",
        ),
        (
            "KMM image with a tab",
            kmm_with("--image", "quay.io/a/b\tc"),
            "control character",
        ),
        (
            "KMM bad machine config name",
            kmm_with("--machine-config", "bad_name"),
            "DNS-1123",
        ),
        (
            "KMM bad pool",
            kmm_with("--machine-config-pool", "worker_"),
            "machine config pool",
        ),
        (
            "KMM relative firmware path",
            kmm_with("--firmware-files-path", "fw"),
            "absolute path",
        ),
        (
            "KMM in-tree module with a space",
            kmm_with("--in-tree-modules-to-remove", "ice,ir dma"),
            "kernel module name",
        ),
    ]
}

fn check(name: &str, args: &[&str], expect: &str, out_file: &std::path::Path) {
    let mut args = args.to_vec();
    let out_arg = out_file.to_str().unwrap();
    args.extend(["--output-file", out_arg]);
    let out = mcgen(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{name}: exit code; stderr: {stderr}"
    );
    assert!(
        stderr.contains(expect),
        "{name}: stderr lacks {expect:?}: {stderr}"
    );
    assert!(out.stdout.is_empty(), "{name}: wrote to stdout");
    assert!(!out_file.exists(), "{name}: wrote the output file");
    if !stderr.starts_with("error:") {
        // mcgen's own errors (clap's have their own usage block): exactly one line.
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{name}: not one line: {stderr}"
        );
        assert!(stderr.starts_with("mcgen: error: "), "{name}: {stderr}");
    }
}

#[test]
fn bad_inputs_exit_2_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.yaml");
    let spec = dir.path().join("spec.yaml");
    let mut n = 0;
    for (name, input, expect) in cases() {
        let args: Vec<&str> = match input {
            Input::Spec(from, to) => {
                assert!(
                    BASE.contains(from),
                    "{name}: the case does not apply to the base spec"
                );
                std::fs::write(&spec, BASE.replacen(from, to, 1)).unwrap();
                vec!["-f", spec.to_str().unwrap()]
            }
            Input::RawSpec(text) => {
                std::fs::write(&spec, text).unwrap();
                vec!["-f", spec.to_str().unwrap()]
            }
            Input::Args(a) => a.to_vec(),
        };
        check(name, &args, expect, &out_file);
        n += 1;
    }
    for (name, args, expect) in kmm_cases() {
        check(name, &args, expect, &out_file);
        n += 1;
    }
    assert!(n >= 25);
    // The base spec itself is fine: the cases fail for their one change.
    std::fs::write(&spec, BASE).unwrap();
    let out = mcgen(&["-f", spec.to_str().unwrap(), "--delivery", "layered"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
