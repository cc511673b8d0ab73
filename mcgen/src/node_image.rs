// SPDX-License-Identifier: Apache-2.0
//! The node image as an OCI image layout (a directory `skopeo copy oci:DIR:TAG` reads), written
//! without a container daemon: one gzip layer holding the static node binaries and the static
//! shell of the prestage agent, FROM scratch.
//!
//! Reproducible: entries sorted, owner root, one fixed mtime (`SOURCE_DATE_EPOCH`), gzip with no
//! timestamp, JSON with a fixed key order. The same inputs give the same manifest digest.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::{write::GzEncoder, Compression};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::Error;

/// Where the node binaries are in the node image. `/usr/bin` as in the layered delivery, so the
/// install unit and the prestage agent copy `/usr/bin/<name>` whatever delivered the image.
pub const IMAGE_BIN_DIR: &str = "/usr/bin";

/// The prestage agent's shell (a static busybox) in the node image: out of `PATH`, since it
/// is a helper of the DaemonSet and not a tool the image offers.
pub const IMAGE_SHELL: &str = "/usr/libexec/kmod-day1/busybox";

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One file of the image.
#[derive(Debug, Clone)]
pub struct ImageFile {
    /// Absolute path in the image, e.g. `/usr/bin/kmod-day1-pull`.
    pub path: String,
    /// The file's contents.
    pub contents: Vec<u8>,
}

/// What the image says about itself (OCI labels and annotations).
#[derive(Debug, Clone)]
pub struct ImageMeta {
    /// `org.opencontainers.image.version`.
    pub version: String,
    /// `org.opencontainers.image.source`.
    pub source: String,
    /// `org.opencontainers.image.revision` (the git commit).
    pub revision: String,
    /// Seconds since the epoch for every mtime and `created` (`SOURCE_DATE_EPOCH`).
    pub epoch: u64,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct WrittenImage {
    /// `sha256:<hex>` of the manifest: what a MachineConfig pins.
    pub manifest_digest: String,
    /// Size of the compressed layer in bytes.
    pub layer_bytes: usize,
    /// Size of the uncompressed layer (the tar) in bytes.
    pub tar_bytes: usize,
}

/// Reads a node binary and checks that it can run FROM scratch: an ELF file without an
/// interpreter (statically linked).
pub fn read_static_binary(path: &Path) -> Result<Vec<u8>, Error> {
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Invalid(format!(
                "{} not found: build the node binaries with `make static`",
                path.display()
            ))
        } else {
            Error::io(format!("reading {}", path.display()), e)
        }
    })?;
    match elf_interpreter(&bytes) {
        Some(false) => Ok(bytes),
        Some(true) => Err(Error::Invalid(format!(
            "{} is dynamically linked and cannot run in a FROM scratch image: build it with `make static` (busybox: the busybox-static package)",
            path.display()
        ))),
        None => Err(Error::Invalid(format!(
            "{} is not a 64-bit little-endian ELF executable",
            path.display()
        ))),
    }
}

/// `Some(true)` when a 64-bit little-endian ELF file has a `PT_INTERP` program header (it needs
/// a dynamic loader), `Some(false)` when it has none, `None` when it is not such an ELF file.
fn elf_interpreter(b: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
    };
    let phoff = usize::try_from(u64::from_le_bytes(b[32..40].try_into().ok()?)).ok()?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(at)? == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// One 512-byte ustar header. Paths here are short (< 100 bytes), so no prefix field is needed.
fn ustar_header(path: &str, directory: bool, size: usize, epoch: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let mut put = |at: usize, len: usize, bytes: &[u8]| {
        h[at..at + bytes.len().min(len)].copy_from_slice(&bytes[..bytes.len().min(len)])
    };
    put(0, 100, path.as_bytes());
    put(100, 8, b"0000755\0");
    put(108, 8, b"0000000\0");
    put(116, 8, b"0000000\0");
    put(124, 12, format!("{size:011o}\0").as_bytes());
    put(136, 12, format!("{epoch:011o}\0").as_bytes());
    put(148, 8, b"        ");
    put(156, 1, if directory { b"5" } else { b"0" });
    put(257, 8, b"ustar\x0000");
    put(265, 32, b"root");
    put(297, 32, b"root");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// The layer as an uncompressed tar: parent directories first, every entry sorted by path,
/// mode 0755, owner root, one mtime.
fn layer_tar(files: &[ImageFile], epoch: u64) -> Result<Vec<u8>, Error> {
    let mut entries: Vec<(String, Option<&[u8]>)> = vec![];
    for f in files {
        let rel = f.path.trim_start_matches('/');
        let parts: Vec<&str> = rel.split('/').collect();
        if rel.len() >= 99
            || parts
                .iter()
                .any(|c| c.is_empty() || *c == "." || *c == "..")
        {
            return Err(Error::Invalid(format!(
                "bad path in the image: {:?}",
                f.path
            )));
        }
        for n in 1..parts.len() {
            let parent = format!("{}/", parts[..n].join("/"));
            if !entries.iter().any(|(p, _)| *p == parent) {
                entries.push((parent, None));
            }
        }
        entries.push((rel.to_owned(), Some(&f.contents)));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut tar = vec![];
    for (path, contents) in entries {
        let data = contents.unwrap_or_default();
        tar.extend_from_slice(&ustar_header(&path, contents.is_none(), data.len(), epoch));
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    // The end of the archive: two zero blocks.
    tar.resize(tar.len() + 1024, 0);
    Ok(tar)
}

/// RFC 3339 UTC time of `epoch` seconds (civil-from-days, no time crate needed).
fn rfc3339(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Writes the OCI image layout into `dir` (created; blobs already there are kept) and tags the
/// image `tag` in its index.
pub fn write_layout(
    dir: &Path,
    tag: &str,
    files: &[ImageFile],
    meta: &ImageMeta,
) -> Result<WrittenImage, Error> {
    if tag.is_empty()
        || tag.len() > 128
        || !tag
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    {
        return Err(Error::Invalid(format!(
            "tag {tag:?} is not a valid image tag: use letters, digits, '_', '.' or '-' (up to 128)"
        )));
    }
    let tar = layer_tar(files, meta.epoch)?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(&tar)
        .map_err(|e| Error::io("compressing the layer", e))?;
    let layer = gz
        .finish()
        .map_err(|e| Error::io("compressing the layer", e))?;
    let created = rfc3339(meta.epoch);
    let labels = json!({
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.description": "kmod-day1 node binaries (kmod-day1-load, kmod-day1-pull) and the prestage agent's shell",
        "org.opencontainers.image.licenses": "Apache-2.0 AND GPL-2.0-only",
        "org.opencontainers.image.revision": meta.revision,
        "org.opencontainers.image.source": meta.source,
        "org.opencontainers.image.title": "kmod-day1-node",
        "org.opencontainers.image.version": meta.version,
    });
    let config = json!({
        "architecture": "amd64",
        "config": { "Labels": labels },
        "created": created,
        "history": [{ "created": created, "created_by": "mcgen kmod-day1-node-image" }],
        "os": "linux",
        "rootfs": { "diff_ids": [format!("sha256:{}", sha256_hex(&tar))], "type": "layers" },
    });
    let config = serde_json::to_vec(&config).expect("JSON serializes");
    let descriptor = |media: &str, bytes: &[u8]| json!({ "digest": format!("sha256:{}", sha256_hex(bytes)), "mediaType": media, "size": bytes.len() });
    let manifest = json!({
        "annotations": labels,
        "config": descriptor(CONFIG_TYPE, &config),
        "layers": [descriptor(LAYER_TYPE, &layer)],
        "mediaType": MANIFEST_TYPE,
        "schemaVersion": 2,
    });
    let manifest = serde_json::to_vec(&manifest).expect("JSON serializes");
    let mut in_index = descriptor(MANIFEST_TYPE, &manifest);
    in_index["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
    let index = json!({
        "manifests": [in_index],
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "schemaVersion": 2,
    });
    let blobs: PathBuf = dir.join("blobs/sha256");
    for blob in [&layer, &config, &manifest] {
        let path = blobs.join(sha256_hex(blob));
        kmod_day1_contract::write_atomic(&path, blob)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    for (name, bytes) in [
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        (
            "index.json",
            serde_json::to_vec(&index).expect("JSON serializes"),
        ),
    ] {
        let path = dir.join(name);
        kmod_day1_contract::write_atomic(&path, &bytes)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    Ok(WrittenImage {
        manifest_digest: format!("sha256:{}", sha256_hex(&manifest)),
        layer_bytes: layer.len(),
        tar_bytes: tar.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with one program header of type `p_type`.
    fn elf(p_type: u32) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // 64-bit
        b[5] = 1; // little-endian
        b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        b[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        b[64..68].copy_from_slice(&p_type.to_le_bytes());
        b
    }

    #[test]
    fn static_and_dynamic_elf() {
        assert_eq!(elf_interpreter(&elf(1)), Some(false));
        assert_eq!(elf_interpreter(&elf(3)), Some(true));
        assert_eq!(elf_interpreter(b"#!/bin/sh\n"), None);
        // A header pointing past the end is not a panic.
        let mut bad = elf(1);
        bad[56..58].copy_from_slice(&500u16.to_le_bytes());
        assert_eq!(elf_interpreter(&bad), None);
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
    }

    fn files() -> Vec<ImageFile> {
        vec![
            ImageFile {
                path: "/usr/bin/kmod-day1-pull".into(),
                contents: elf(1),
            },
            ImageFile {
                path: "/usr/bin/kmod-day1-load".into(),
                contents: elf(1),
            },
            ImageFile {
                path: IMAGE_SHELL.into(),
                contents: elf(1),
            },
        ]
    }

    fn meta() -> ImageMeta {
        ImageMeta {
            version: "0.1.0".into(),
            source: "https://github.com/kmod-day1/kmod-day1".into(),
            revision: "0123456789abcdef".into(),
            epoch: 1_700_000_000,
        }
    }

    #[test]
    fn layout_is_reproducible_and_complete() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let wa = write_layout(a.path(), "v1", &files(), &meta()).unwrap();
        let mut reordered = files();
        reordered.reverse();
        let wb = write_layout(b.path(), "v1", &reordered, &meta()).unwrap();
        assert_eq!(wa.manifest_digest, wb.manifest_digest);

        let read = |p: &str| std::fs::read(a.path().join(p)).unwrap();
        let blob = |d: &str| {
            read(&format!(
                "blobs/sha256/{}",
                d.strip_prefix("sha256:").unwrap()
            ))
        };
        let index: serde_json::Value = serde_json::from_slice(&read("index.json")).unwrap();
        assert_eq!(index["manifests"][0]["digest"], wa.manifest_digest);
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "v1"
        );
        let manifest_bytes = blob(&wa.manifest_digest);
        assert_eq!(
            format!("sha256:{}", sha256_hex(&manifest_bytes)),
            wa.manifest_digest
        );
        let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
        assert_eq!(
            manifest["annotations"]["org.opencontainers.image.revision"],
            "0123456789abcdef"
        );
        let config: serde_json::Value =
            serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.version"],
            "0.1.0"
        );
        assert_eq!(config["created"], "2023-11-14T22:13:20Z");
        let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
        assert_eq!(manifest["layers"][0]["size"], layer.len());
        let mut tar_bytes = vec![];
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&layer[..]),
            &mut tar_bytes,
        )
        .unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            format!("sha256:{}", sha256_hex(&tar_bytes))
        );
        // GNU tar reads it as we meant it.
        let tar_file = a.path().join("layer.tar");
        std::fs::write(&tar_file, &tar_bytes).unwrap();
        let out = std::process::Command::new("tar")
            .args(["--numeric-owner", "--full-time", "-tvf"])
            .arg(&tar_file)
            .env("TZ", "UTC")
            .output()
            .expect("running tar");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8(out.stdout).unwrap();
        let entries: Vec<Vec<&str>> = listing
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let paths: Vec<&str> = entries.iter().map(|e| e[5]).collect();
        assert_eq!(
            paths,
            [
                "usr/",
                "usr/bin/",
                "usr/bin/kmod-day1-load",
                "usr/bin/kmod-day1-pull",
                "usr/libexec/",
                "usr/libexec/kmod-day1/",
                "usr/libexec/kmod-day1/busybox"
            ]
        );
        for e in &entries {
            assert!(e[0].ends_with("rwxr-xr-x"), "{e:?}");
            assert_eq!(e[1], "0/0");
            assert_eq!(format!("{} {}", e[3], e[4]), "2023-11-14 22:13:20");
        }
        assert_eq!(entries[2][2], elf(1).len().to_string());
    }

    #[test]
    fn bad_tag_and_path() {
        let d = tempfile::tempdir().unwrap();
        assert!(write_layout(d.path(), "a:b", &files(), &meta()).is_err());
        let bad = vec![ImageFile {
            path: "/usr/../etc/x".into(),
            contents: vec![],
        }];
        assert!(write_layout(d.path(), "v1", &bad, &meta()).is_err());
    }
}
