// SPDX-License-Identifier: Apache-2.0
//! Durable writes on the node's root: files with their mode, masks, removals.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub(super) fn remove_if_present(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("deleting {}", p.display()))
        }
        _ => Ok(()),
    }
}

/// Durable write: a temporary file in the same directory with the mode, fsync, rename, fsync
/// of the directory (parents created 0755).
pub(super) fn write_atomic(p: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = p.parent().context("a file path without a parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = temp_beside(p);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, p)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", p.display()))
}

pub(super) fn mask(p: &Path) -> Result<()> {
    let dir = p.parent().context("a unit path without a parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if p.is_dir() {
        fs::remove_dir_all(p)?;
    }
    let tmp = temp_beside(p);
    symlink("/dev/null", &tmp)
        .and_then(|()| fs::rename(&tmp, p))
        .with_context(|| format!("masking {}", p.display()))
}

fn temp_beside(p: &Path) -> PathBuf {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    p.with_file_name(format!(".{name}.kd1-mcd.{}", std::process::id()))
}
