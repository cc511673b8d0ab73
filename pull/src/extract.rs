// SPDX-License-Identifier: Apache-2.0
//! Safe extraction of the part of a kmod image the loader needs:
//! `<dirName>/lib/modules/<kver>/**` into `modules/` and `<firmwarePath>/**` into
//! `firmware/` of a staging directory.
//!
//! Every layer tar is hostile until proven otherwise:
//! - entries with `..` or an absolute path are refused (whole layer, named);
//! - inside the selection only regular files, directories, symlinks and hardlinks are
//!   taken; device nodes and FIFOs are refused;
//! - a symlink must stay inside its tree (an absolute target inside the tree is rewritten to
//!   a relative one); `..` may only lead a target, never follow a name, so that a chain of
//!   links cannot climb out through another link;
//! - nothing is ever written through a symlink: every parent on the way is checked;
//! - hardlinks must point at a file already extracted into the same tree;
//! - an entry larger than the entry limit, a tree larger than the tree limit, or a layer that
//!   decompresses to more than the layer limit (a bomb) is refused.
//!
//! Layers are applied in order with overlay semantics: `.wh.<name>` deletes `<name>` from
//! lower layers, `.wh..wh..opq` empties its directory of lower layers' content.
//!
//! Exception: the kernel's `build` and `source` links at the top of `lib/modules/<kver>`
//! point to headers outside the image by design and are never needed by the loader: they
//! are skipped with a warning instead of failing the image.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kmod_day1_contract::{AbsPath, KernelRelease};
use tracing::warn;

use crate::{decode, durable};

/// Size limits against hostile or broken layers.
#[derive(Debug, Clone, Copy)]
pub struct ExtractLimits {
    /// Largest single file.
    pub max_entry: u64,
    /// Largest total of extracted file bytes.
    pub max_tree: u64,
    /// Largest decompressed size of one layer (including content not extracted).
    pub max_layer: u64,
    /// Most entries per layer.
    pub max_entries: u64,
}

impl Default for ExtractLimits {
    fn default() -> Self {
        Self {
            max_entry: 1 << 30,
            max_tree: 4 << 30,
            max_layer: 16 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// Why a layer could not be extracted. Every variant names the layer and entry.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The layer holds something refused.
    #[error("layer {layer}: entry {entry:?} refused: {why}")]
    Refused {
        /// Layer digest.
        layer: String,
        /// Entry path as in the tar.
        entry: String,
        /// What is wrong.
        why: String,
    },
    /// The layer is not a readable (compressed) tar.
    #[error("layer {layer}: {message}")]
    Format {
        /// Layer digest.
        layer: String,
        /// What the reader said.
        message: String,
    },
    /// Writing to the staging directory failed.
    #[error("writing {path}: {source}")]
    Io {
        /// What was written.
        path: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The image lacks content the config expects.
    #[error("{0}")]
    Missing(String),
}

/// What to take from the image.
#[derive(Debug, Clone)]
pub struct Selection {
    roots: Vec<(Vec<String>, &'static str)>,
}

impl Selection {
    /// `<dir_name>/lib/modules/<kernel>` -> `modules/`, `<firmware>` -> `firmware/`.
    pub fn new(dir_name: &AbsPath, kernel: &KernelRelease, firmware: Option<&AbsPath>) -> Self {
        let mut modules: Vec<String> = dir_name.components().map(str::to_owned).collect();
        modules.extend(["lib".into(), "modules".into(), kernel.as_str().to_owned()]);
        let mut roots = vec![(modules, "modules")];
        if let Some(f) = firmware {
            roots.push((f.components().map(str::to_owned).collect(), "firmware"));
        }
        Self { roots }
    }

    fn image_path(&self, i: usize) -> String {
        format!("/{}", self.roots[i].0.join("/"))
    }
}

/// What an extraction produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Regular files.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Builds one tree in a staging directory, layer by layer.
pub struct TreeBuilder {
    root: PathBuf,
    selection: Selection,
    limits: ExtractLimits,
    stats: TreeStats,
}

/// Where an entry goes: root index and path components below the root.
struct Target {
    root: usize,
    rest: Vec<String>,
}

impl TreeBuilder {
    /// A builder writing under `staging` (created, must not exist).
    pub fn new(
        staging: PathBuf,
        selection: Selection,
        limits: ExtractLimits,
    ) -> Result<Self, ExtractError> {
        fs::create_dir(&staging).map_err(|source| ExtractError::Io {
            path: staging.display().to_string(),
            source,
        })?;
        Ok(Self {
            root: staging,
            selection,
            limits,
            stats: TreeStats::default(),
        })
    }

    /// Applies one layer (gzip, zstd or plain tar, detected from its first bytes).
    pub fn apply_layer(&mut self, layer: impl Read, layer_name: &str) -> Result<(), ExtractError> {
        let fmt_err = |message: String| ExtractError::Format {
            layer: layer_name.to_owned(),
            message,
        };
        let limited = decode::layer_tar(layer, self.limits.max_layer)
            .map_err(|e| fmt_err(format!("reading: {e}")))?;
        let mut archive = tar::Archive::new(limited);
        let entries = archive
            .entries()
            .map_err(|e| fmt_err(format!("not a tar archive: {e}")))?;
        let mut created: HashSet<PathBuf> = HashSet::new();
        let mut count = 0u64;
        for entry in entries {
            let mut entry = entry.map_err(|e| fmt_err(format!("reading the tar: {e}")))?;
            count += 1;
            if count > self.limits.max_entries {
                return Err(fmt_err(format!(
                    "has more than {} entries; refusing it",
                    self.limits.max_entries
                )));
            }
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            self.apply_entry(&mut entry, &raw, layer_name, &mut created)?;
        }
        Ok(())
    }

    fn refuse(layer: &str, entry: &str, why: impl Into<String>) -> ExtractError {
        ExtractError::Refused {
            layer: layer.to_owned(),
            entry: entry.to_owned(),
            why: why.into(),
        }
    }

    fn io(&self, rel: &Path, source: io::Error) -> ExtractError {
        ExtractError::Io {
            path: self.root.join(rel).display().to_string(),
            source,
        }
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        raw: &str,
        layer: &str,
        created: &mut HashSet<PathBuf>,
    ) -> Result<(), ExtractError> {
        let comps = archive_path(raw).map_err(|why| Self::refuse(layer, raw, why))?;
        let Some(last) = comps.last() else {
            return Ok(()); // "./" itself
        };
        // Whiteouts.
        if let Some(hidden) = last.strip_prefix(".wh.") {
            let parent = &comps[..comps.len() - 1];
            if hidden == ".wh..opq" {
                return self.opaque(parent, created, layer, raw);
            }
            let mut gone = parent.to_vec();
            gone.push(hidden.to_owned());
            return self.whiteout(&gone, layer, raw);
        }
        let Some(target) = self.map(&comps) else {
            return Ok(());
        };
        if raw.contains('\u{fffd}') {
            return Err(Self::refuse(layer, raw, "name is not valid UTF-8"));
        }
        let rel = self.rel(&target);
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644);
        match kind {
            tar::EntryType::Directory => {
                self.ensure_dir(&rel, layer, raw)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.write_file(entry, &rel, mode, layer, raw)?;
            }
            tar::EntryType::Symlink => {
                if !self.make_symlink(entry, &target, &rel, layer, raw)? {
                    return Ok(());
                }
            }
            tar::EntryType::Link => {
                self.make_hardlink(entry, &target, &rel, layer, raw)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(Self::refuse(
                    layer,
                    raw,
                    "device nodes and FIFOs are not allowed in a kmod image",
                ));
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => {
                return Err(Self::refuse(
                    layer,
                    raw,
                    format!("unsupported tar entry type {other:?}"),
                ));
            }
        }
        created.insert(rel);
        Ok(())
    }

    /// A regular file, within the entry and tree limits, written without following links.
    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        rel: &Path,
        mode: u32,
        layer: &str,
        raw: &str,
    ) -> Result<(), ExtractError> {
        let size = entry.header().size().unwrap_or(u64::MAX);
        if size > self.limits.max_entry {
            return Err(Self::refuse(
                layer,
                raw,
                format!(
                    "{size} bytes is over the {}-byte entry limit",
                    self.limits.max_entry
                ),
            ));
        }
        if self.stats.bytes + size > self.limits.max_tree {
            return Err(Self::refuse(
                layer,
                raw,
                format!(
                    "the tree would exceed the {}-byte limit",
                    self.limits.max_tree
                ),
            ));
        }
        self.prepare_leaf(rel, layer, raw)?;
        let path = self.root.join(rel);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| self.io(rel, e))?;
        let n = durable::copy_with_writeback(&mut (&mut *entry).take(size), &mut f)
            .map_err(|e| Self::refuse(layer, raw, format!("reading its data: {e}")))?;
        if n != size {
            return Err(Self::refuse(
                layer,
                raw,
                "data ends before its declared size",
            ));
        }
        // Keep the rwx bits only: no setuid, setgid or sticky from an image.
        f.set_permissions(fs::Permissions::from_mode(mode & 0o755))
            .map_err(|e| self.io(rel, e))?;
        // No fsync here: `finish` fsyncs every file once all layers are written
        // (writeback has been started already), so extraction never waits for the
        // disk while the download streams in.
        self.stats.files += 1;
        self.stats.bytes += size;
        Ok(())
    }

    /// A symlink that stays inside its tree; `false` when it is skipped (the kernel's
    /// `build` and `source` links).
    fn make_symlink<R: Read>(
        &self,
        entry: &mut tar::Entry<R>,
        target: &Target,
        rel: &Path,
        layer: &str,
        raw: &str,
    ) -> Result<bool, ExtractError> {
        let link = entry
            .link_name_bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let fixed = match self.symlink_target(target, &link) {
            Ok(t) => t,
            Err(why) => {
                let kernel_link = target.root == 0
                    && target.rest.len() == 1
                    && matches!(target.rest[0].as_str(), "build" | "source");
                if kernel_link {
                    warn!(
                        entry = raw,
                        target = link,
                        "skipping the kernel's {} link: it points outside the image",
                        target.rest[0]
                    );
                    return Ok(false);
                }
                return Err(Self::refuse(layer, raw, why));
            }
        };
        self.prepare_leaf(rel, layer, raw)?;
        std::os::unix::fs::symlink(&fixed, self.root.join(rel)).map_err(|e| self.io(rel, e))?;
        Ok(true)
    }

    /// A hardlink to a file extracted before it into the same tree.
    fn make_hardlink<R: Read>(
        &self,
        entry: &mut tar::Entry<R>,
        target: &Target,
        rel: &Path,
        layer: &str,
        raw: &str,
    ) -> Result<(), ExtractError> {
        let link = entry
            .link_name_bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let lcomps = archive_path(&link)
            .map_err(|why| Self::refuse(layer, raw, format!("hardlink target {link:?} {why}")))?;
        let src = match self.map(&lcomps) {
            Some(t) if t.root == target.root => self.rel(&t),
            _ => {
                return Err(Self::refuse(
                    layer,
                    raw,
                    format!("hardlink to {link:?}, outside the extracted tree"),
                ))
            }
        };
        self.check_parents(&src, layer, raw)?;
        match fs::symlink_metadata(self.root.join(&src)) {
            Ok(m) if m.file_type().is_file() => {}
            _ => {
                return Err(Self::refuse(
                    layer,
                    raw,
                    format!("hardlink to {link:?}, which is not a file extracted before it"),
                ))
            }
        }
        self.prepare_leaf(rel, layer, raw)?;
        fs::hard_link(self.root.join(&src), self.root.join(rel)).map_err(|e| self.io(rel, e))?;
        Ok(())
    }

    fn map(&self, comps: &[String]) -> Option<Target> {
        self.selection
            .roots
            .iter()
            .enumerate()
            .find(|(_, (prefix, _))| comps.starts_with(prefix))
            .map(|(i, (prefix, _))| Target {
                root: i,
                rest: comps[prefix.len()..].to_vec(),
            })
    }

    fn rel(&self, t: &Target) -> PathBuf {
        let mut p = PathBuf::from(self.selection.roots[t.root].1);
        p.extend(&t.rest);
        p
    }

    /// Every existing ancestor of `rel` under the staging root must be a real directory.
    fn check_parents(&self, rel: &Path, layer: &str, raw: &str) -> Result<(), ExtractError> {
        let mut p = self.root.clone();
        let comps: Vec<_> = rel.components().collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            p.push(c);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(Self::refuse(
                        layer,
                        raw,
                        format!(
                            "would be written through {}, which is not a directory",
                            p.display()
                        ),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(self.io(rel, e)),
            }
        }
        Ok(())
    }

    fn ensure_dir(&self, rel: &Path, layer: &str, raw: &str) -> Result<(), ExtractError> {
        self.check_parents(rel, layer, raw)?;
        let mut p = self.root.clone();
        for c in rel.components() {
            p.push(c);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_dir() => continue,
                Ok(_) => {
                    // Only the leaf can be a non-directory here (parents were checked): a
                    // directory replaces a lower layer's file or link.
                    fs::remove_file(&p).map_err(|e| self.io(rel, e))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io(rel, e)),
            }
            fs::create_dir(&p).map_err(|e| self.io(rel, e))?;
        }
        Ok(())
    }

    /// Makes room for a file or link at `rel`: parents created, an old entry removed.
    fn prepare_leaf(&self, rel: &Path, layer: &str, raw: &str) -> Result<(), ExtractError> {
        // An implicit parent that is a symlink is refused, not replaced: the image would
        // mean to write through it.
        self.check_parents(rel, layer, raw)?;
        if let Some(parent) = rel.parent() {
            self.ensure_dir(parent, layer, raw)?;
        }
        self.remove(rel)
    }

    fn remove(&self, rel: &Path) -> Result<(), ExtractError> {
        let p = self.root.join(rel);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_dir() => fs::remove_dir_all(&p).map_err(|e| self.io(rel, e)),
            Ok(_) => fs::remove_file(&p).map_err(|e| self.io(rel, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(rel, e)),
        }
    }

    fn whiteout(&self, gone: &[String], layer: &str, raw: &str) -> Result<(), ExtractError> {
        for (i, (prefix, dest)) in self.selection.roots.iter().enumerate() {
            if prefix.starts_with(gone) {
                // The whole tree (or an ancestor of it) is deleted.
                self.remove(Path::new(dest))?;
            } else if gone.starts_with(prefix) {
                let rel = self.rel(&Target {
                    root: i,
                    rest: gone[prefix.len()..].to_vec(),
                });
                self.check_parents(&rel, layer, raw)?;
                self.remove(&rel)?;
            }
        }
        Ok(())
    }

    fn opaque(
        &self,
        dir: &[String],
        created: &HashSet<PathBuf>,
        layer: &str,
        raw: &str,
    ) -> Result<(), ExtractError> {
        for (i, (prefix, dest)) in self.selection.roots.iter().enumerate() {
            let rel = if prefix.starts_with(dir) && prefix.len() > dir.len() {
                // An ancestor of the tree became opaque: lower layers' tree is gone.
                let rel = PathBuf::from(dest);
                if !created.iter().any(|c| c.starts_with(&rel)) {
                    self.remove(&rel)?;
                }
                continue;
            } else if dir.starts_with(prefix) {
                self.rel(&Target {
                    root: i,
                    rest: dir[prefix.len()..].to_vec(),
                })
            } else {
                continue;
            };
            self.check_parents(&rel, layer, raw)?;
            let rd = match fs::read_dir(self.root.join(&rel)) {
                Ok(rd) => rd,
                Err(_) => continue,
            };
            for child in rd.flatten() {
                let crel = rel.join(child.file_name());
                if !created.contains(&crel) {
                    self.remove(&crel)?;
                }
            }
        }
        Ok(())
    }

    /// The target to store for a symlink at `at`, or why it is refused.
    fn symlink_target(&self, at: &Target, link: &str) -> Result<String, String> {
        if link.is_empty() {
            return Err("symlink with an empty target".into());
        }
        // Directories between the tree root and the link.
        let depth = at.rest.len().saturating_sub(1);
        let root_path = self.selection.image_path(at.root);
        if let Some(abs) = link.strip_prefix('/') {
            let comps =
                archive_path(abs).map_err(|why| format!("symlink target {link:?} {why}"))?;
            let prefix = &self.selection.roots[at.root].0;
            if !comps.starts_with(prefix) {
                return Err(format!("symlink to {link:?}, outside {root_path}"));
            }
            let rest = &comps[prefix.len()..];
            let mut t: Vec<&str> = vec![".."; depth];
            t.extend(rest.iter().map(String::as_str));
            return Ok(if t.is_empty() {
                ".".into()
            } else {
                t.join("/")
            });
        }
        let mut ups = 0;
        let mut seen_name = false;
        for c in link.split('/') {
            match c {
                "" | "." => {}
                ".." if seen_name => {
                    return Err(format!("symlink target {link:?} has '..' after a name"));
                }
                ".." => ups += 1,
                _ => seen_name = true,
            }
        }
        if ups > depth {
            return Err(format!(
                "symlink to {link:?}, which climbs out of {root_path}"
            ));
        }
        Ok(link.to_owned())
    }

    /// Checks the config's paths were in the image, then fsyncs every file and directory.
    pub fn finish(self) -> Result<TreeStats, ExtractError> {
        for (i, (_, dest)) in self.selection.roots.iter().enumerate() {
            let p = self.root.join(dest);
            if !fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                let what = self.selection.image_path(i);
                return Err(ExtractError::Missing(if i == 0 {
                    format!("the image has no directory {what}: check dirName in the config and that the image was built for this kernel")
                } else {
                    format!("the image has no directory {what}: check firmwarePath in the config")
                }));
            }
        }
        durable::sync_tree(&self.root).map_err(|source| ExtractError::Io {
            path: self.root.display().to_string(),
            source,
        })?;
        Ok(self.stats)
    }
}

/// The normal components of a path inside a layer; refuses absolute paths and `..`.
fn archive_path(raw: &str) -> Result<Vec<String>, String> {
    if raw.starts_with('/') {
        return Err("is an absolute path".into());
    }
    let mut out = vec![];
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("has a '..' component (path traversal)".into()),
            c => out.push(c.to_owned()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
