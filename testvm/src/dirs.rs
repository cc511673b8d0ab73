// SPDX-License-Identifier: Apache-2.0
//! Where the harness keeps its cache (kept across runs) and its work files (one run).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Environment variable that moves the cache.
pub const CACHE_ENV: &str = "KMOD_DAY1_VM_CACHE";

/// The cache's default place: outside the checkout, so a fresh clone (CI's) finds what an
/// earlier run built. Entries are keyed by their recipe, so checkouts of different commits
/// share it safely; the cache only saves time.
pub const DEFAULT_CACHE: &str = "/var/cache/kmod-day1-testvm";

/// The harness's directories.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// The repository checkout.
    pub repo: PathBuf,
    /// Cache shared by runs: the VM root filesystem, kernel sources, built modules.
    pub cache: PathBuf,
    /// This run's files: disks, serial logs, registry storage.
    pub work: PathBuf,
}

impl Dirs {
    /// The default layout: [`DEFAULT_CACHE`] (or `$KMOD_DAY1_VM_CACHE`) and `testvm/work`.
    pub fn from_env() -> Result<Self> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("finding the repository root above testvm/")?
            .to_owned();
        let cache = match std::env::var_os(CACHE_ENV) {
            Some(c) if !c.is_empty() => PathBuf::from(c),
            _ => PathBuf::from(DEFAULT_CACHE),
        };
        let work = repo.join("testvm/work");
        for d in [&cache, &work] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(Self { repo, cache, work })
    }

    /// A fresh, empty directory under the work directory.
    pub fn fresh_work_dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.work.join(name);
        if d.exists() {
            std::fs::remove_dir_all(&d).with_context(|| format!("removing old {}", d.display()))?;
        }
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    }
}

/// Disk one node holds while it runs (its 3 GiB sparse disk fills to 1.2-1.6 GB), and what
/// a run holds besides (each lane's registry and pushed images, the ostree nodes' work).
const NODE_BYTES: u64 = 1_700_000_000;
const RUN_BYTES: u64 = 1_500_000_000;

/// Fails, naming the directory and both figures, when `dir`'s filesystem has less room than
/// `lanes` nodes at a time need: better one clear line up front than a disk filling midway
/// through (CI's run of 2026-12-03 ran out after 25 minutes).
pub fn check_free_space(dir: &Path, lanes: usize) -> Result<()> {
    let need = RUN_BYTES + NODE_BYTES * lanes as u64;
    let st = nix::sys::statvfs::statvfs(dir)
        .with_context(|| format!("reading the free space of {}", dir.display()))?;
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    anyhow::ensure!(
        free >= need,
        "{} has {:.1} GB free and {lanes} lane(s) of VMs need about {:.1} GB: free some space, or run fewer lanes (KMOD_DAY1_VM_LANES=1)",
        dir.display(),
        free as f64 / 1e9,
        need as f64 / 1e9
    );
    Ok(())
}

/// Writes `text` to `path`, creating parent directories. An existing file is unlinked
/// first, never rewritten in place: VM roots are hard-link copies of the cached image.
pub fn write_file(path: &Path, text: impl AsRef<[u8]>) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("replacing {}", path.display()))
        }
        _ => {}
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// `<dir>.tmp`: where a cache entry is built before it is renamed into place.
/// (`Path::with_extension` would cut names such as `modules-6.1.0-50-amd64` at the dot.)
pub fn tmp_sibling(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Hex sha256 of `parts`, each followed by a newline: the cache keys.
pub fn recipe_key(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    let d = h.finalize();
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_little_room_is_one_line_naming_the_directory() {
        let d = tempfile::tempdir().unwrap();
        check_free_space(d.path(), 0).unwrap();
        let e = check_free_space(d.path(), 1_000_000)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("{} has ", d.path().display())),
            "{e}"
        );
        assert!(e.contains("KMOD_DAY1_VM_LANES=1"), "{e}");
    }

    #[test]
    fn keys_change_with_the_recipe() {
        let a = recipe_key(&["bookworm", "systemd"]);
        assert_eq!(a.len(), 16);
        assert_eq!(a, recipe_key(&["bookworm", "systemd"]));
        assert_ne!(a, recipe_key(&["bookworm", "systemd,udev"]));
        assert_ne!(recipe_key(&["ab", "c"]), recipe_key(&["a", "bc"]));
        assert_eq!(
            tmp_sibling(Path::new("/c/modules-6.1.0-50-amd64")),
            Path::new("/c/modules-6.1.0-50-amd64.tmp")
        );
    }
}
