// SPDX-License-Identifier: Apache-2.0
//! Builds kmod images in memory: tar layers (gzip, zstd or plain) from files, directories,
//! links and deliberately malformed raw entries, an image config and an OCI (or Docker)
//! manifest; and image indexes over several platforms.

use std::io::{self, Read, Write};
use std::sync::mpsc;

use serde_json::json;

use crate::digest::{sha256_digest, HashingWriter};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image manifest (schema 2) media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// `tar+gzip`, what most images use.
    #[default]
    Gzip,
    /// `tar+zstd`.
    Zstd,
    /// Plain `tar`.
    None,
}

impl Compression {
    fn media_type(self, docker: bool) -> &'static str {
        match (self, docker) {
            (Self::Gzip, false) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (Self::Zstd, false) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (Self::None, false) => "application/vnd.oci.image.layer.v1.tar",
            (Self::Gzip, true) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            // Docker has no zstd type of its own; registries carry the OCI one.
            (Self::Zstd, true) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (Self::None, true) => "application/vnd.docker.image.rootfs.diff.tar",
        }
    }
}

/// A tar entry written byte for byte as described, bypassing the checks of the tar crate:
/// for malicious layers (`../` names, absolute paths, device nodes, hard links out, sizes that
/// lie). The name and link name are limited to 100 bytes (the classic header fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    name: Vec<u8>,
    typeflag: u8,
    link_name: Vec<u8>,
    mode: u32,
    device: (u32, u32),
    declared_size: Option<u64>,
    data: Vec<u8>,
}

impl RawEntry {
    /// An entry with this name and tar type flag (`b'0'` file, `b'1'` hard link, `b'2'`
    /// symlink, `b'3'` char device, `b'4'` block device, `b'5'` directory, `b'6'` FIFO).
    pub fn new(name: impl Into<Vec<u8>>, typeflag: u8) -> Self {
        Self {
            name: name.into(),
            typeflag,
            link_name: Vec::new(),
            mode: 0o644,
            device: (0, 0),
            declared_size: None,
            data: Vec::new(),
        }
    }

    /// A regular file.
    pub fn file(name: impl Into<Vec<u8>>, data: impl Into<Vec<u8>>) -> Self {
        Self::new(name, b'0').data(data)
    }

    /// A symbolic link to `target`.
    pub fn symlink(name: impl Into<Vec<u8>>, target: impl Into<Vec<u8>>) -> Self {
        Self::new(name, b'2').link_name(target).mode(0o777)
    }

    /// A hard link to `target`.
    pub fn hardlink(name: impl Into<Vec<u8>>, target: impl Into<Vec<u8>>) -> Self {
        Self::new(name, b'1').link_name(target)
    }

    /// A character device node.
    pub fn char_device(name: impl Into<Vec<u8>>, major: u32, minor: u32) -> Self {
        Self::new(name, b'3').device(major, minor)
    }

    /// A block device node.
    pub fn block_device(name: impl Into<Vec<u8>>, major: u32, minor: u32) -> Self {
        Self::new(name, b'4').device(major, minor)
    }

    /// A FIFO.
    pub fn fifo(name: impl Into<Vec<u8>>) -> Self {
        Self::new(name, b'6')
    }

    /// The link name field.
    pub fn link_name(mut self, target: impl Into<Vec<u8>>) -> Self {
        self.link_name = target.into();
        self
    }

    /// The mode field (permission bits, setuid etc.).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// The device numbers.
    pub fn device(mut self, major: u32, minor: u32) -> Self {
        self.device = (major, minor);
        self
    }

    /// The content written after the header (padded to 512 bytes).
    pub fn data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.data = data.into();
        self
    }

    /// Write this size in the header instead of the data's length: an entry claiming more
    /// (or fewer) bytes than follow.
    pub fn declared_size(mut self, size: u64) -> Self {
        self.declared_size = Some(size);
        self
    }

    fn header(&self) -> io::Result<tar::Header> {
        let mut header = tar::Header::new_gnu();
        copy_field(&mut header.as_old_mut().name, &self.name, "name")?;
        copy_field(
            &mut header.as_old_mut().linkname,
            &self.link_name,
            "link name",
        )?;
        header.set_entry_type(tar::EntryType::new(self.typeflag));
        header.set_mode(self.mode);
        header.set_size(self.declared_size.unwrap_or(self.data.len() as u64));
        header.set_mtime(0);
        if matches!(self.typeflag, b'3' | b'4') {
            header.set_device_major(self.device.0)?;
            header.set_device_minor(self.device.1)?;
        }
        header.set_cksum();
        Ok(header)
    }
}

fn copy_field(field: &mut [u8; 100], value: &[u8], what: &str) -> io::Result<()> {
    if value.len() > field.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("raw tar entry {what} is longer than 100 bytes"),
        ));
    }
    field.fill(0);
    field[..value.len()].copy_from_slice(value);
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
    },
    Dir {
        path: String,
    },
    Symlink {
        path: String,
        target: String,
    },
    Hardlink {
        path: String,
        target: String,
    },
    Zeros {
        path: String,
        len: u64,
    },
    Random {
        path: String,
        len: u64,
        seed: u64,
    },
    Raw(RawEntry),
}

/// A layer under construction: tar entries in order, and a compression.
///
/// Paths are written as given (the tar crate refuses `..` and absolute ones: use
/// [`Layer::raw`] for those). Parent directories are only written when added with
/// [`Layer::dir`], or for every entry with [`Layer::with_parent_dirs`] (as image builders
/// do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer {
    entries: Vec<Entry>,
    compression: Compression,
    parent_dirs: bool,
}

impl Layer {
    /// An empty gzip layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the compression.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Writes a directory entry for each missing parent of an entry, just before the first
    /// entry that needs it (raw entries excepted).
    pub fn with_parent_dirs(mut self) -> Self {
        self.parent_dirs = true;
        self
    }

    /// A regular file, mode 0644.
    pub fn file(self, path: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        self.file_with_mode(path, data, 0o644)
    }

    /// A regular file with this mode.
    pub fn file_with_mode(
        mut self,
        path: impl Into<String>,
        data: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Self {
        self.entries.push(Entry::File {
            path: path.into(),
            data: data.into(),
            mode,
        });
        self
    }

    /// A directory, mode 0755.
    pub fn dir(mut self, path: impl Into<String>) -> Self {
        self.entries.push(Entry::Dir { path: path.into() });
        self
    }

    /// A symbolic link at `path` pointing to `target` (which may be anything, including
    /// `../../..` or absolute).
    pub fn symlink(mut self, path: impl Into<String>, target: impl Into<String>) -> Self {
        self.entries.push(Entry::Symlink {
            path: path.into(),
            target: target.into(),
        });
        self
    }

    /// A hard link at `path` to `target`.
    pub fn hardlink(mut self, path: impl Into<String>, target: impl Into<String>) -> Self {
        self.entries.push(Entry::Hardlink {
            path: path.into(),
            target: target.into(),
        });
        self
    }

    /// A file of `len` zero bytes, streamed into the compressor without being held in
    /// memory: with gzip or zstd, a decompression bomb (1 GiB of zeros is about 1 MiB gzip).
    pub fn zeros(mut self, path: impl Into<String>, len: u64) -> Self {
        self.entries.push(Entry::Zeros {
            path: path.into(),
            len,
        });
        self
    }

    /// A file of `len` pseudo-random bytes from `seed` (the same seed gives the same bytes),
    /// streamed like [`Layer::zeros`]: a large layer that does not compress, for tests of
    /// memory use and progress. The compressed layer is held in memory like any other.
    pub fn random(mut self, path: impl Into<String>, len: u64, seed: u64) -> Self {
        self.entries.push(Entry::Random {
            path: path.into(),
            len,
            seed,
        });
        self
    }

    /// A raw entry, written as described.
    pub fn raw(mut self, entry: RawEntry) -> Self {
        self.entries.push(Entry::Raw(entry));
        self
    }

    /// Writes the tar stream and compresses it.
    pub fn build(&self) -> io::Result<BuiltLayer> {
        self.build_for(false)
    }

    fn build_for(&self, docker: bool) -> io::Result<BuiltLayer> {
        let with_parents;
        let entries = if self.parent_dirs {
            with_parents = add_parent_dirs(&self.entries);
            &with_parents
        } else {
            &self.entries
        };
        let (bytes, diff_id) = match self.compression {
            Compression::None => {
                let (bytes, diff_id) = write_tar(entries, Vec::new())?;
                (bytes, diff_id)
            }
            Compression::Gzip => {
                let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                let (gz, diff_id) = write_tar(entries, gz)?;
                (gz.finish()?, diff_id)
            }
            Compression::Zstd => zstd_tar(entries)?,
        };
        Ok(BuiltLayer {
            media_type: self.compression.media_type(docker).to_owned(),
            digest: sha256_digest(&bytes),
            diff_id,
            bytes,
        })
    }
}

/// `entries` with a directory entry inserted before each entry whose parents were not
/// written yet.
fn add_parent_dirs(entries: &[Entry]) -> Vec<Entry> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let path = match entry {
            Entry::File { path, .. }
            | Entry::Dir { path }
            | Entry::Symlink { path, .. }
            | Entry::Hardlink { path, .. }
            | Entry::Zeros { path, .. }
            | Entry::Random { path, .. } => path.trim_end_matches('/'),
            Entry::Raw(_) => {
                out.push(entry.clone());
                continue;
            }
        };
        let components: Vec<&str> = path.split('/').collect();
        for i in 1..components.len() {
            let parent = components[..i].join("/");
            if !parent.is_empty() && seen.insert(parent.clone()) {
                out.push(Entry::Dir {
                    path: format!("{parent}/"),
                });
            }
        }
        if matches!(entry, Entry::Dir { .. }) && !seen.insert(path.to_owned()) {
            continue;
        }
        out.push(entry.clone());
    }
    out
}

/// Writes the tar stream of `entries` into `out`; returns `out` and the stream's digest.
fn write_tar<W: Write>(entries: &[Entry], out: W) -> io::Result<(W, String)> {
    let mut builder = tar::Builder::new(HashingWriter::new(out));
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        match entry {
            Entry::File { path, data, mode } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_slice())?;
            }
            Entry::Dir { path } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, path, io::empty())?;
            }
            Entry::Symlink { path, target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target)?;
            }
            Entry::Hardlink { path, target } => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_mode(0o644);
                header.set_size(0);
                builder.append_link(&mut header, path, target)?;
            }
            Entry::Zeros { path, len } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(*len);
                builder.append_data(&mut header, path, io::repeat(0).take(*len))?;
            }
            Entry::Random { path, len, seed } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(*len);
                builder.append_data(&mut header, path, PseudoRandom::new(*seed).take(*len))?;
            }
            Entry::Raw(raw) => {
                builder.append(&raw.header()?, raw.data.as_slice())?;
            }
        }
    }
    Ok(builder.into_inner()?.finish())
}

/// Tar and zstd-compress `entries`. The compressor reads while the tar writer writes (on a
/// scoped thread), so even a huge `zeros` entry is never held in memory.
fn zstd_tar(entries: &[Entry]) -> io::Result<(Vec<u8>, String)> {
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4);
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || {
            let (mut out, diff_id) = write_tar(
                entries,
                ChannelWriter {
                    tx,
                    buf: Vec::new(),
                },
            )?;
            out.flush()?;
            Ok::<_, io::Error>(diff_id)
        });
        let reader = ChannelReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        };
        let compressed =
            ruzstd::encoding::compress_to_vec(reader, ruzstd::encoding::CompressionLevel::Fastest);
        let diff_id = writer
            .join()
            .map_err(|_| io::Error::other("tar writer thread panicked"))??;
        Ok((compressed, diff_id))
    })
}

/// xorshift64*: fast, deterministic, incompressible enough for compressors.
struct PseudoRandom(u64);

impl PseudoRandom {
    fn new(seed: u64) -> Self {
        // xorshift must not start at zero.
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
}

impl Read for PseudoRandom {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        for chunk in out.chunks_mut(8) {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(out.len())
    }
}

struct ChannelWriter {
    tx: mpsc::SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.tx
                .send(std::mem::take(&mut self.buf))
                .map_err(|_| io::Error::other("zstd compressor stopped reading"))?;
        }
        Ok(())
    }
}

struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                // Writer done (or failed: its error is returned by the join).
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A compressed layer blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltLayer {
    /// Layer media type.
    pub media_type: String,
    /// The blob (compressed tar).
    pub bytes: Vec<u8>,
    /// `sha256:` digest of `bytes`.
    pub digest: String,
    /// `sha256:` digest of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
}

/// An image under construction: layers, platform, labels. Defaults: linux/amd64, OCI media
/// types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    layers: Vec<Layer>,
    os: String,
    architecture: String,
    variant: Option<String>,
    labels: Vec<(String, String)>,
    docker: bool,
}

impl Default for Image {
    fn default() -> Self {
        Self {
            layers: Vec::new(),
            os: "linux".to_owned(),
            architecture: "amd64".to_owned(),
            variant: None,
            labels: Vec::new(),
            docker: false,
        }
    }
}

impl Image {
    /// A linux/amd64 OCI image without layers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a layer.
    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    /// Sets the platform written in the config (and in an index pointing at the image).
    pub fn platform(mut self, os: &str, architecture: &str) -> Self {
        self.os = os.to_owned();
        self.architecture = architecture.to_owned();
        self
    }

    /// Sets the platform variant (`v8` for arm64, ...).
    pub fn variant(mut self, variant: &str) -> Self {
        self.variant = Some(variant.to_owned());
        self
    }

    /// Adds a config label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Uses Docker schema 2 media types (manifest, config, gzip layers), as `docker push`
    /// produces.
    pub fn docker_media_types(mut self) -> Self {
        self.docker = true;
        self
    }

    /// Builds layers, config and manifest.
    pub fn build(&self) -> io::Result<BuiltImage> {
        let layers = self
            .layers
            .iter()
            .map(|l| l.build_for(self.docker))
            .collect::<io::Result<Vec<_>>>()?;
        let labels: serde_json::Map<String, serde_json::Value> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let mut config = json!({
            "architecture": self.architecture,
            "os": self.os,
            "config": { "Labels": labels },
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.as_str()).collect::<Vec<_>>(),
            },
        });
        if let Some(variant) = &self.variant {
            config["variant"] = json!(variant);
        }
        let config = serde_json::to_vec(&config).map_err(io::Error::other)?;
        let config_digest = sha256_digest(&config);
        let (manifest_type, config_type) = if self.docker {
            (DOCKER_MANIFEST, DOCKER_CONFIG)
        } else {
            (OCI_MANIFEST, OCI_CONFIG)
        };
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {
                "mediaType": config_type,
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type,
                "digest": l.digest,
                "size": l.bytes.len(),
            })).collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
        Ok(BuiltImage {
            digest: sha256_digest(&manifest),
            manifest,
            media_type: manifest_type.to_owned(),
            config_digest,
            config,
            layers,
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        })
    }
}

/// A built image: every blob and the manifest, ready for [`crate::Registry::push_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// Manifest bytes.
    pub manifest: Vec<u8>,
    /// Manifest media type.
    pub media_type: String,
    /// `sha256:` digest of `manifest`.
    pub digest: String,
    /// Config blob.
    pub config: Vec<u8>,
    /// `sha256:` digest of `config`.
    pub config_digest: String,
    /// Layer blobs, in order.
    pub layers: Vec<BuiltLayer>,
    /// Platform OS.
    pub os: String,
    /// Platform architecture.
    pub architecture: String,
    /// Platform variant.
    pub variant: Option<String>,
}

/// An image index (manifest list with Docker media types) pointing at `images` with their
/// platforms. Returns the index bytes and media type.
pub fn index_manifest(images: &[&BuiltImage], docker: bool) -> (Vec<u8>, &'static str) {
    let media_type = if docker {
        DOCKER_MANIFEST_LIST
    } else {
        OCI_INDEX
    };
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|image| {
            let mut platform = json!({ "os": image.os, "architecture": image.architecture });
            if let Some(variant) = &image.variant {
                platform["variant"] = json!(variant);
            }
            json!({
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": image.manifest.len(),
                "platform": platform,
            })
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": manifests,
    });
    (
        serde_json::to_vec_pretty(&index).expect("a JSON value serializes"),
        media_type,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn untar(layer: &BuiltLayer) -> Vec<u8> {
        let mut out = Vec::new();
        match layer.media_type.rsplit(['+', '.']).next().unwrap() {
            "gzip" => {
                flate2::read::GzDecoder::new(layer.bytes.as_slice())
                    .read_to_end(&mut out)
                    .unwrap();
            }
            "zstd" => {
                ruzstd::decoding::StreamingDecoder::new(layer.bytes.as_slice())
                    .unwrap()
                    .read_to_end(&mut out)
                    .unwrap();
            }
            _ => out = layer.bytes.clone(),
        }
        out
    }

    fn entries(tar_bytes: &[u8]) -> Vec<(String, tar::EntryType, Option<String>, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let kind = e.header().entry_type();
                let link = e
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned());
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (path, kind, link, data)
            })
            .collect()
    }

    fn sample(compression: Compression) -> Layer {
        Layer::new()
            .compression(compression)
            .dir("opt/lib/modules/6.1.0/")
            .file(
                "opt/lib/modules/6.1.0/extra/ice.ko",
                b"\x7fELF ice".to_vec(),
            )
            .symlink("opt/lib/modules/6.1.0/weak", "extra/ice.ko")
            .hardlink(
                "opt/lib/modules/6.1.0/hard",
                "opt/lib/modules/6.1.0/extra/ice.ko",
            )
            .file(format!("opt/{}", "long/".repeat(40)), b"deep".to_vec())
    }

    #[test]
    fn layers_round_trip_in_every_compression() {
        for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
            let layer = sample(compression).build().unwrap();
            assert_eq!(layer.digest, sha256_digest(&layer.bytes));
            let tar_bytes = untar(&layer);
            assert_eq!(layer.diff_id, sha256_digest(&tar_bytes), "{compression:?}");
            let e = entries(&tar_bytes);
            assert_eq!(e.len(), 5);
            assert_eq!(e[1].0, "opt/lib/modules/6.1.0/extra/ice.ko");
            assert_eq!(e[1].3, b"\x7fELF ice");
            assert_eq!(e[2].1, tar::EntryType::Symlink);
            assert_eq!(e[2].2.as_deref(), Some("extra/ice.ko"));
            assert_eq!(e[3].1, tar::EntryType::Link);
            assert!(e[4].0.len() > 100, "GNU long names work");
        }
    }

    #[test]
    fn parent_dirs_are_added_once_before_use() {
        let layer = Layer::new()
            .with_parent_dirs()
            .compression(Compression::None)
            .file("opt/lib/modules/6.1.0/a.ko", b"a".to_vec())
            .dir("opt/lib/modules/6.1.0/")
            .file("opt/lib/modules/6.1.0/b.ko", b"b".to_vec())
            .symlink("opt/lib/firmware", "../firmware")
            .build()
            .unwrap();
        let names: Vec<String> = entries(&layer.bytes).into_iter().map(|e| e.0).collect();
        assert_eq!(
            names,
            [
                "opt/",
                "opt/lib/",
                "opt/lib/modules/",
                "opt/lib/modules/6.1.0/",
                "opt/lib/modules/6.1.0/a.ko",
                "opt/lib/modules/6.1.0/b.ko",
                "opt/lib/firmware",
            ]
        );
    }

    #[test]
    fn raw_entries_are_written_as_described() {
        let layer = Layer::new()
            .compression(Compression::None)
            .raw(RawEntry::file("../escape", b"x".to_vec()))
            .raw(RawEntry::file("/etc/evil", b"y".to_vec()))
            .raw(RawEntry::symlink("opt/out", "/etc"))
            .raw(RawEntry::hardlink("opt/h", "../../etc/shadow"))
            .raw(RawEntry::char_device("opt/mem", 1, 1))
            .symlink("opt/up", "../../../..")
            .build()
            .unwrap();
        let e = entries(&layer.bytes);
        let names: Vec<&str> = e.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "../escape",
                "/etc/evil",
                "opt/out",
                "opt/h",
                "opt/mem",
                "opt/up"
            ]
        );
        assert_eq!(e[4].1, tar::EntryType::Char);
        assert_eq!(e[5].2.as_deref(), Some("../../../.."));
        assert!(RawEntry::file(vec![b'a'; 101], Vec::new())
            .header()
            .is_err());
    }

    #[test]
    fn declared_size_can_lie() {
        let layer = Layer::new()
            .compression(Compression::None)
            .raw(RawEntry::file("big", b"short".to_vec()).declared_size(1 << 40))
            .build()
            .unwrap();
        let mut archive = tar::Archive::new(layer.bytes.as_slice());
        let first = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(first.header().size().unwrap(), 1 << 40);
    }

    #[test]
    fn zeros_compress_to_a_bomb() {
        for compression in [Compression::Gzip, Compression::Zstd] {
            let layer = Layer::new()
                .compression(compression)
                .zeros("bomb", 8 << 20)
                .build()
                .unwrap();
            assert!(layer.bytes.len() < (8 << 20) / 100, "{compression:?}");
        }
    }

    #[test]
    fn random_files_are_deterministic_and_incompressible() {
        let build = |seed| Layer::new().random("r", 300_001, seed).build().unwrap();
        let (a, b, c) = (build(1), build(1), build(2));
        assert_eq!(a.bytes, b.bytes);
        assert_ne!(a.diff_id, c.diff_id);
        assert!(a.bytes.len() > 300_000);
        let e = entries(&untar(&a));
        assert_eq!(e[0].3.len(), 300_001);
    }

    #[test]
    fn image_manifest_and_config_reference_each_other() {
        let image = Image::new()
            .platform("linux", "arm64")
            .variant("v8")
            .label("k", "v")
            .layer(sample(Compression::Gzip))
            .layer(sample(Compression::Zstd))
            .build()
            .unwrap();
        assert_eq!(image.digest, sha256_digest(&image.manifest));
        let manifest: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap();
        assert_eq!(manifest["mediaType"], OCI_MANIFEST);
        assert_eq!(manifest["config"]["digest"], image.config_digest.as_str());
        assert_eq!(manifest["config"]["size"], image.config.len());
        assert_eq!(
            manifest["layers"][1]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        assert_eq!(
            manifest["layers"][0]["digest"],
            image.layers[0].digest.as_str()
        );
        let config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
        assert_eq!(config["architecture"], "arm64");
        assert_eq!(config["variant"], "v8");
        assert_eq!(config["config"]["Labels"]["k"], "v");
        assert_eq!(
            config["rootfs"]["diff_ids"][1],
            image.layers[1].diff_id.as_str()
        );

        let docker = Image::new()
            .docker_media_types()
            .layer(Layer::new())
            .build()
            .unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&docker.manifest).unwrap();
        assert_eq!(manifest["mediaType"], DOCKER_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], DOCKER_CONFIG);
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }

    #[test]
    fn index_lists_platforms() {
        let amd = Image::new().build().unwrap();
        let arm = Image::new().platform("linux", "arm64").build().unwrap();
        let (bytes, media_type) = index_manifest(&[&amd, &arm], false);
        assert_eq!(media_type, OCI_INDEX);
        let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(index["manifests"][0]["digest"], amd.digest.as_str());
        assert_eq!(index["manifests"][1]["platform"]["architecture"], "arm64");
        assert_eq!(index["manifests"][1]["size"], arm.manifest.len());
    }
}
