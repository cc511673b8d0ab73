// SPDX-License-Identifier: Apache-2.0
//! `kmod-day1-node-image` (what `make node-image` runs): the OCI layout it writes is read by
//! skopeo as an image with our labels and the digest it printed, and a dynamically linked
//! binary is refused.

use std::path::Path;
use std::process::Command;

/// A minimal 64-bit ELF file with one program header of type `p_type` (3: PT_INTERP).
fn elf(p_type: u32, tail: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 64 + 56];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2;
    b[5] = 1;
    b[32..40].copy_from_slice(&64u64.to_le_bytes());
    b[54..56].copy_from_slice(&56u16.to_le_bytes());
    b[56..58].copy_from_slice(&1u16.to_le_bytes());
    b[64..68].copy_from_slice(&p_type.to_le_bytes());
    b.extend_from_slice(tail);
    b
}

fn node_image(dir: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kmod-day1-node-image"))
        .arg("--layout")
        .arg(dir.join("layout"))
        .arg("--node-binaries")
        .arg(dir.join("bins"))
        .arg("--busybox")
        .arg(dir.join("busybox"))
        .args(["--tag", "0.1.0", "--revision", "0123abc"])
        .args(extra)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .expect("running kmod-day1-node-image")
}

#[test]
fn skopeo_reads_the_layout() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("bins")).unwrap();
    std::fs::write(d.path().join("bins/kmod-day1-load"), elf(1, b"load")).unwrap();
    std::fs::write(d.path().join("bins/kmod-day1-pull"), elf(1, b"pull")).unwrap();
    std::fs::write(d.path().join("busybox"), elf(1, b"sh")).unwrap();
    let out = node_image(d.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    let layout = format!("oci:{}:0.1.0", d.path().join("layout").display());
    let out = Command::new("skopeo")
        .args(["inspect", &layout])
        .output()
        .expect("running skopeo (hack/install-deps)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["Digest"], digest.as_str());
    assert_eq!(info["Os"], "linux");
    assert_eq!(info["Architecture"], "amd64");
    let labels = &info["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], "0.1.0");
    assert_eq!(labels["org.opencontainers.image.revision"], "0123abc");
    assert_eq!(
        labels["org.opencontainers.image.source"],
        "https://github.com/kmod-day1/kmod-day1"
    );
    // The same inputs, the same digest.
    std::fs::remove_dir_all(d.path().join("layout")).unwrap();
    let again = node_image(d.path(), &[]);
    assert_eq!(String::from_utf8(again.stdout).unwrap().trim(), digest);
}

#[test]
fn a_dynamic_binary_is_refused() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("bins")).unwrap();
    std::fs::write(d.path().join("bins/kmod-day1-load"), elf(3, b"")).unwrap();
    std::fs::write(d.path().join("bins/kmod-day1-pull"), elf(1, b"")).unwrap();
    std::fs::write(d.path().join("busybox"), elf(1, b"")).unwrap();
    let out = node_image(d.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dynamically linked"), "{stderr}");
    assert!(!d.path().join("layout").exists());
}
