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
