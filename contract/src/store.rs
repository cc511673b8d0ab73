// SPDX-License-Identifier: Apache-2.0
//! The store under `/var/lib/kmod-day1`: extracted trees named by content, small ref
//! records that point at them, and the pull's durable bookkeeping.
//!
//! ```text
//! /var/lib/kmod-day1/
//!   lock                               flock(2) held by the writer (kmod-day1-pull)
//!   tmp/                               staging, same filesystem as trees/ for rename(2)
//!   trees/<tree-id>/modules/...        = <dirName>/lib/modules/<kver>/ of the image
//!   trees/<tree-id>/firmware/...       = <firmwarePath>/ of the image (when configured)
//!   refs/<config>/<set>/<kver>/<image-key>.json
//!                                      RefRecord: image + manifest digest -> tree, one per
//!                                      image, so the image a node runs and the one
//!                                      prestaged for it coexist
//!   prestaged/<config>.json            a config to come, recorded by the prestage agent
//!   reboots.json                       RebootGuard: reboots already asked for
//!   last-pull.json                     PullStatus of the last run of kmod-day1-pull
//! ```
//!
//! Version 1 stores had one ref per kernel, `refs/<config>/<set>/<kver>.json`; readers still
//! read it, and kmod-day1-pull moves it to the version 2 place.
//!
//! A tree is complete before it gets its final name; a ref is written after its tree.
//! Every write is temp + fsync + rename + fsync(dir), so a reader sees the old or the new
//! state, never a partial one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{ConfigName, KernelRelease, SetName};

/// Default store root on the node.
pub const STORE_DIR: &str = "/var/lib/kmod-day1";

/// Version of the records below (2: refs per image; 1 is still read).
pub const STORE_VERSION: u32 = 2;

/// The file name part of an image's ref: FNV-1a (64 bits, hex) of the image reference.
/// Not a security boundary: every reader checks the record's `image` too.
pub fn image_key(image: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in image.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Paths inside a store root.
#[derive(Debug, Clone)]
pub struct StoreLayout {
    root: PathBuf,
}

impl StoreLayout {
    /// A layout rooted at `root` (`/var/lib/kmod-day1` on a node).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The writer's lock file.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// Staging directory for trees being extracted.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Directory of all trees.
    pub fn trees_dir(&self) -> PathBuf {
        self.root.join("trees")
    }

    /// One tree.
    pub fn tree(&self, id: &str) -> PathBuf {
        self.trees_dir().join(id)
    }

    /// The `lib/modules/<kver>` content of a tree.
    pub fn tree_modules(&self, id: &str) -> PathBuf {
        self.tree(id).join("modules")
    }

    /// The firmware content of a tree.
    pub fn tree_firmware(&self, id: &str) -> PathBuf {
        self.tree(id).join("firmware")
    }

    /// Directory of all refs.
    pub fn refs_dir(&self) -> PathBuf {
        self.root.join("refs")
    }

    /// The ref of a module set for a kernel and an image.
    pub fn ref_file(
        &self,
        config: &ConfigName,
        set: &SetName,
        kernel: &KernelRelease,
        image: &str,
    ) -> PathBuf {
        self.refs_dir()
            .join(config.as_str())
            .join(set.as_str())
            .join(kernel.as_str())
            .join(format!("{}.json", image_key(image)))
    }

    /// Where a version 1 store kept the one ref of a module set for a kernel.
    pub fn legacy_ref_file(
        &self,
        config: &ConfigName,
        set: &SetName,
        kernel: &KernelRelease,
    ) -> PathBuf {
        self.refs_dir()
            .join(config.as_str())
            .join(set.as_str())
            .join(format!("{kernel}.json"))
    }

    /// Configs recorded by the prestage agent, to come.
    pub fn prestaged_dir(&self) -> PathBuf {
        self.root.join("prestaged")
    }

    /// The upgrade preflight's verdict for `kernel` (`preflight/<kver>.json`).
    pub fn preflight_file(&self, kernel: &KernelRelease) -> PathBuf {
        self.root.join("preflight").join(format!("{kernel}.json"))
    }

    /// The reboot guard.
    pub fn reboot_guard(&self) -> PathBuf {
        self.root.join("reboots.json")
    }

    /// The last pull's status.
    pub fn last_pull(&self) -> PathBuf {
        self.root.join("last-pull.json")
    }

    /// Reads the ref of a module set for a kernel and an image, and the file it came from: the
    /// version 2 one, else a version 1 one for the same image. `None` when there is none.
    pub fn read_ref(
        &self,
        config: &ConfigName,
        set: &SetName,
        kernel: &KernelRelease,
        image: &str,
    ) -> std::io::Result<Option<(PathBuf, RefRecord)>> {
        let current = self.ref_file(config, set, kernel, image);
        if let Some(r) = read_json::<RefRecord>(&current)? {
            return Ok(Some((current, r)));
        }
        let legacy = self.legacy_ref_file(config, set, kernel);
        Ok(read_json::<RefRecord>(&legacy)?
            .filter(|r| r.image == image)
            .map(|r| (legacy, r)))
    }
}

/// Whether `id` can name a tree: lower-case hex and '-', nothing that walks paths.
pub fn is_valid_tree_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-')
}

/// `refs/<config>/<set>/<kver>/<image-key>.json`: which tree holds a module set's image for a
/// kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefRecord {
    /// [`STORE_VERSION`] (1 in a ref a version 1 store left).
    pub version: u32,
    /// The image reference the tree was pulled from, after kernel substitution.
    pub image: String,
    /// Digest of the image manifest (of the platform manifest for an index).
    pub manifest_digest: String,
    /// Tree id under `trees/`: sha256 hex of manifest digest, dirName, kernel release and
    /// firmware path, each followed by a newline.
    pub tree: String,
    /// When it was committed, seconds since the epoch.
    pub committed_at: u64,
}

/// `reboots.json`: the reboots kmod-day1-pull asked for, so it never asks twice for the
/// same kernel and content (the reboot-loop guard).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RebootGuard {
    /// [`STORE_VERSION`].
    pub version: u32,
    /// Reboots asked for, oldest first.
    pub reboots: Vec<RebootRecord>,
}

/// One reboot asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RebootRecord {
    /// Kernel running when the reboot was asked for.
    pub kernel_release: String,
    /// Manifest digests newly committed for that kernel, sorted.
    pub manifest_digests: Vec<String>,
    /// Boot id of the boot that asked.
    pub boot_id: String,
    /// Seconds since the epoch.
    pub at: u64,
}

/// `last-pull.json`: what the last run of kmod-day1-pull did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PullStatus {
    /// [`STORE_VERSION`].
    pub version: u32,
    /// Seconds since the epoch when the run ended.
    pub finished_at: u64,
    /// Running kernel.
    pub kernel_release: String,
    /// One entry per (config, set, kernel) handled.
    pub pulls: Vec<PullRecord>,
    /// `requested`, `notNeeded`, `refusedByGuard`, `disabled`, `skippedAfterFailure` or
    /// `failed` (asking logind/systemd for the reboot failed; nothing was recorded in the guard).
    pub reboot: String,
    /// Overall error, if the run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One image handled by a pull run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PullRecord {
    /// Config name.
    pub config: String,
    /// Module set name.
    pub set: String,
    /// Kernel release the image is for.
    pub kernel_release: String,
    /// Image reference pulled.
    pub image: String,
    /// `unchanged`, `committed` or `failed`.
    pub outcome: String,
    /// Manifest digest, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Wall time in milliseconds.
    pub millis: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reads a JSON record; `None` when the file does not exist.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<Option<T>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("parsing {}: {e}", path.display()),
        )
    })
}

/// Writes a JSON record atomically.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let mut text = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    text.push(b'\n');
    write_atomic(path, &text)
}

/// Writes `bytes` to `path` so that a reader, or the disk after a power cut, sees either
/// the old file or the whole new one: temp file in the same directory, fsync, rename,
/// fsync of the directory. Creates the parent directories.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // A bare file name's parent is "": the current directory (fsync-able, unlike "").
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsyncs a directory, making renames and creations in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_paths() {
        let s = StoreLayout::new("/var/lib/kmod-day1");
        let (c, set, k) = (
            ConfigName::new("99-kmod").unwrap(),
            SetName::new("e1000").unwrap(),
            KernelRelease::new("6.1.0-27-amd64").unwrap(),
        );
        assert_eq!(
            s.ref_file(&c, &set, &k, "quay.io/acme/e1000:v1"),
            Path::new("/var/lib/kmod-day1/refs/99-kmod/e1000/6.1.0-27-amd64")
                .join(format!("{}.json", image_key("quay.io/acme/e1000:v1")))
        );
        assert_eq!(image_key("quay.io/acme/e1000:v1").len(), 16);
        assert_ne!(
            image_key("quay.io/acme/e1000:v1"),
            image_key("quay.io/acme/e1000:v2")
        );
        assert_eq!(
            s.legacy_ref_file(&c, &set, &k),
            Path::new("/var/lib/kmod-day1/refs/99-kmod/e1000/6.1.0-27-amd64.json")
        );
        assert!(is_valid_tree_id("0af3"));
        assert!(!is_valid_tree_id("../x"));
        assert!(!is_valid_tree_id(""));
    }

    #[test]
    fn refs_per_image_and_version_1_refs_still_read() {
        let d = tempfile::tempdir().unwrap();
        let s = StoreLayout::new(d.path());
        let (c, set, k) = (
            ConfigName::new("c").unwrap(),
            SetName::new("s").unwrap(),
            KernelRelease::new("6.1").unwrap(),
        );
        let rec = |image: &str, version| RefRecord {
            version,
            image: image.into(),
            manifest_digest: "sha256:00".into(),
            tree: "ab".into(),
            committed_at: 1,
        };
        write_json_atomic(&s.legacy_ref_file(&c, &set, &k), &rec("r/x:1", 1)).unwrap();
        let (path, r) = s.read_ref(&c, &set, &k, "r/x:1").unwrap().unwrap();
        assert_eq!((path, r.version), (s.legacy_ref_file(&c, &set, &k), 1));
        assert!(s.read_ref(&c, &set, &k, "r/x:2").unwrap().is_none());
        write_json_atomic(&s.ref_file(&c, &set, &k, "r/x:2"), &rec("r/x:2", 2)).unwrap();
        write_json_atomic(&s.ref_file(&c, &set, &k, "r/x:1"), &rec("r/x:1", 2)).unwrap();
        assert_eq!(
            s.read_ref(&c, &set, &k, "r/x:2").unwrap().unwrap().1.image,
            "r/x:2"
        );
        assert_eq!(
            s.read_ref(&c, &set, &k, "r/x:1")
                .unwrap()
                .unwrap()
                .1
                .version,
            2
        );
    }

    #[test]
    fn atomic_json_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/ref.json");
        let r = RefRecord {
            version: STORE_VERSION,
            image: "reg/x:1".into(),
            manifest_digest: "sha256:00".into(),
            tree: "ab".into(),
            committed_at: 1,
        };
        write_json_atomic(&p, &r).unwrap();
        assert_eq!(read_json::<RefRecord>(&p).unwrap(), Some(r));
        assert_eq!(
            read_json::<RefRecord>(&d.path().join("none")).unwrap(),
            None
        );
        // No temp file left behind.
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
