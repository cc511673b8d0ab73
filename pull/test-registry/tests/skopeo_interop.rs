// SPDX-License-Identifier: Apache-2.0
//! Interop: a real registry client (skopeo, containers/image) pulls from the test registry,
//! through basic and bearer auth and an image index, and notices an injected corrupt blob.
//! Skipped, with a note, when skopeo is not installed (`hack/install-deps vm` installs it).

use std::path::Path;
use std::process::{Command, Output};

use kmod_day1_test_registry::{Auth, BuiltImage, Compression, Fault, Image, Layer, Registry};

fn skopeo_available() -> bool {
    let found = Command::new("skopeo")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skopeo not installed: skipping the interop test");
    }
    found
}

fn skopeo(dir: &Path, args: &[&str]) -> Output {
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let mut command = Command::new("skopeo");
    command
        .arg("--policy")
        .arg(&policy)
        .args(args)
        // No host credentials or registries.conf leak into the test.
        .env("REGISTRY_AUTH_FILE", dir.join("auth.json"))
        .env("CONTAINERS_REGISTRIES_CONF", dir.join("registries.conf"))
        .env("HOME", dir);
    std::fs::write(dir.join("registries.conf"), "").unwrap();
    command.output().unwrap()
}

fn copy(dir: &Path, registry: &Registry, reference: &str, creds: Option<&str>) -> Output {
    copy_with(dir, registry, reference, creds, &[])
}

fn copy_with(
    dir: &Path,
    registry: &Registry,
    reference: &str,
    creds: Option<&str>,
    global: &[&str],
) -> Output {
    let source = format!("docker://{}", registry.reference("kmods/ice", reference));
    let target = format!("oci:{}:out", dir.join("layout").display());
    let mut args: Vec<&str> = global.to_vec();
    args.extend(["copy", "--src-tls-verify=false"]);
    match creds {
        Some(creds) => args.extend(["--src-creds", creds]),
        None => args.push("--src-no-creds"),
    }
    args.extend([source.as_str(), target.as_str()]);
    skopeo(dir, &args)
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "skopeo failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The digest of the manifest skopeo wrote to the OCI layout.
fn copied_manifest(dir: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("layout/index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_owned()
}

fn blob_path(dir: &Path, digest: &str) -> std::path::PathBuf {
    dir.join("layout/blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

fn kmod_image(arch: &str, compression: Compression) -> BuiltImage {
    Image::new()
        .platform("linux", arch)
        .layer(
            Layer::new()
                .compression(compression)
                .dir("opt/lib/modules/6.1.0/")
                .file("opt/lib/modules/6.1.0/ice.ko", arch.as_bytes().to_vec())
                .symlink("opt/lib/modules/6.1.0/weak.ko", "ice.ko"),
        )
        .layer(Layer::new().random("opt/firmware/blob.bin", 200_000, 1))
        .build()
        .unwrap()
}

#[test]
fn skopeo_pulls_through_every_auth_mode_and_an_index() {
    if !skopeo_available() {
        return;
    }
    for (auth, creds) in [
        (Auth::None, None),
        (Auth::basic("u", "p"), Some("u:p")),
        (Auth::bearer("u", "p"), Some("u:p")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::start_with_auth(auth.clone()).unwrap();
        let image = kmod_image("amd64", Compression::Gzip);
        registry.push_image("kmods/ice", "6.1.0", &image);
        // Through a blob redirect, as with registries backed by object storage.
        registry.redirect_blobs(creds.is_some());
        let output = copy(dir.path(), &registry, "6.1.0", creds);
        assert_success(&output);
        assert_eq!(copied_manifest(dir.path()), image.digest, "{auth:?}");
        for layer in &image.layers {
            assert_eq!(
                std::fs::read(blob_path(dir.path(), &layer.digest)).unwrap(),
                layer.bytes
            );
        }
        let downloads = registry
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/blobstore/"))
            .count();
        let expected = if creds.is_some() {
            image.layers.len() + 1
        } else {
            0
        };
        assert_eq!(downloads, expected, "{auth:?}");
        if auth != Auth::None {
            let refused = copy(dir.path(), &registry, "6.1.0", Some("u:wrong"));
            assert!(!refused.status.success(), "{auth:?}");
        }
    }
}

#[test]
fn skopeo_resolves_an_index_to_the_requested_architecture() {
    if !skopeo_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start().unwrap();
    let amd64 = kmod_image("amd64", Compression::Zstd);
    let arm64 = kmod_image("arm64", Compression::Zstd);
    registry.push_index("kmods/ice", "6.1.0", &[&amd64, &arm64]);
    let output = copy_with(
        dir.path(),
        &registry,
        "6.1.0",
        None,
        &["--override-os", "linux", "--override-arch", "arm64"],
    );
    assert_success(&output);
    assert_eq!(copied_manifest(dir.path()), arm64.digest);
}

#[test]
fn skopeo_refuses_a_corrupt_blob() {
    if !skopeo_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start().unwrap();
    let image = kmod_image("amd64", Compression::Gzip);
    registry.push_image("kmods/ice", "6.1.0", &image);
    registry.fault(Fault::CorruptBody.on(&image.layers[1].digest));
    let output = copy(dir.path(), &registry, "6.1.0", None);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.to_lowercase().contains("digest"), "{stderr}");
    assert!(registry.blob_gets() >= 1);
}
