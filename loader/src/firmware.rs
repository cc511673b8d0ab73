// SPDX-License-Identifier: Apache-2.0
//! Firmware from a store tree: copied into the firmware directory (`/var/lib/firmware`),
//! each file written atomically (temp + fsync + rename), so the kernel's firmware loader
//! never reads a half-written blob; then the kernel is told to search that directory
//! (`firmware_class.path`) unless it already does.
//!
//! Files already present with the same content are left alone (a rerun writes nothing).
//! Symlinks inside the tree are copied as the file they point to when that file is inside
//! the tree, and skipped otherwise: an image cannot make the loader read node files.

use std::path::{Path, PathBuf};

use kmod_day1_contract::write_atomic;

/// Directories the kernel's firmware loader searches without being told.
const KERNEL_DEFAULT_DIRS: &[&str] = &[
    "/lib/firmware",
    "/lib/firmware/updates",
    "/usr/lib/firmware",
];

/// A firmware copy that failed, with the file and the reason.
#[derive(Debug, thiserror::Error)]
#[error("installing firmware {path}: {why}")]
pub struct FirmwareError {
    /// The file or directory concerned.
    pub path: String,
    /// What went wrong.
    pub why: String,
}

/// What [`install_firmware`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FirmwareCopy {
    /// Files written.
    pub written: usize,
    /// Files already present with the same content.
    pub unchanged: usize,
    /// Symlinks pointing outside the tree, not copied.
    pub skipped: Vec<String>,
}

/// Copies every file under `src` to the same relative path under `dest`.
pub fn install_firmware(src: &Path, dest: &Path) -> Result<FirmwareCopy, FirmwareError> {
    let root = src.canonicalize().map_err(|e| FirmwareError {
        path: src.display().to_string(),
        why: e.to_string(),
    })?;
    let mut files = vec![];
    collect(&root, &root, &mut files, 0)?;
    let mut out = FirmwareCopy::default();
    for (rel, real) in files {
        let Some(real) = real else {
            out.skipped.push(rel.display().to_string());
            continue;
        };
        let err = |e: std::io::Error| FirmwareError {
            path: real.display().to_string(),
            why: e.to_string(),
        };
        let bytes = std::fs::read(&real).map_err(err)?;
        let target = dest.join(&rel);
        if std::fs::read(&target).is_ok_and(|old| old == bytes) {
            out.unchanged += 1;
            continue;
        }
        write_atomic(&target, &bytes).map_err(|e| FirmwareError {
            path: target.display().to_string(),
            why: e.to_string(),
        })?;
        out.written += 1;
    }
    Ok(out)
}

/// (path relative to the root, the file to read or `None` for a symlink leaving the tree)
type Found = (PathBuf, Option<PathBuf>);

fn collect(root: &Path, dir: &Path, out: &mut Vec<Found>, depth: u32) -> Result<(), FirmwareError> {
    let err = |e: std::io::Error| FirmwareError {
        path: dir.display().to_string(),
        why: e.to_string(),
    };
    if depth > 32 {
        return Err(err(std::io::Error::other("directories nested too deep")));
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(err)?
        .collect::<Result<_, _>>()
        .map_err(err)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = path.strip_prefix(root).expect("under root").to_owned();
        let ft = e.file_type().map_err(err)?;
        if ft.is_dir() {
            collect(root, &path, out, depth + 1)?;
        } else if ft.is_file() {
            out.push((rel, Some(path)));
        } else if ft.is_symlink() {
            let inside = path
                .canonicalize()
                .ok()
                .filter(|t| t.starts_with(root) && t.is_file());
            out.push((rel, inside));
        }
    }
    Ok(())
}

/// Makes the kernel search `dest` for firmware: writes `firmware_class.path` under
/// `sysfs` unless `dest` is a default directory or already the path. Returns the previous
/// value when it changed it.
pub fn ensure_search_path(sysfs: &Path, dest: &Path) -> Result<Option<String>, FirmwareError> {
    if KERNEL_DEFAULT_DIRS.iter().any(|d| Path::new(d) == dest) {
        return Ok(None);
    }
    let param = sysfs.join("module/firmware_class/parameters/path");
    let err = |e: std::io::Error| FirmwareError {
        path: param.display().to_string(),
        why: e.to_string(),
    };
    let current = std::fs::read_to_string(&param).map_err(err)?;
    let current = current.trim_end_matches('\n');
    let want = dest
        .to_str()
        .ok_or_else(|| err(std::io::Error::other("not UTF-8")))?;
    if current == want {
        return Ok(None);
    }
    // sysfs: one write of the whole value, no temp file possible.
    std::fs::write(&param, want).map_err(err)?;
    Ok(Some(current.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_trees_idempotently_and_refuses_escapes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("tree/firmware");
        std::fs::create_dir_all(src.join("intel/ice/ddp")).unwrap();
        std::fs::write(src.join("intel/ice/ddp/ice.pkg"), b"pkg").unwrap();
        std::fs::write(src.join("top.bin"), b"top").unwrap();
        std::os::unix::fs::symlink("top.bin", src.join("alias.bin")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("evil.bin")).unwrap();
        let dest = d.path().join("var/lib/firmware");

        let c = install_firmware(&src, &dest).unwrap();
        assert_eq!(c.written, 3);
        assert_eq!(c.skipped, vec!["evil.bin"]);
        assert_eq!(
            std::fs::read(dest.join("intel/ice/ddp/ice.pkg")).unwrap(),
            b"pkg"
        );
        assert_eq!(std::fs::read(dest.join("alias.bin")).unwrap(), b"top");
        assert!(!dest.join("evil.bin").exists());

        let again = install_firmware(&src, &dest).unwrap();
        assert_eq!((again.written, again.unchanged), (0, 3));

        std::fs::write(src.join("top.bin"), b"new").unwrap();
        assert_eq!(install_firmware(&src, &dest).unwrap().written, 2);
        assert_eq!(std::fs::read(dest.join("top.bin")).unwrap(), b"new");

        let e = install_firmware(&d.path().join("missing"), &dest).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn sets_the_search_path_only_when_needed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("module/firmware_class/parameters");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("path"), "\n").unwrap();
        let dest = Path::new("/var/lib/firmware");
        assert_eq!(
            ensure_search_path(d.path(), dest).unwrap(),
            Some(String::new())
        );
        assert_eq!(
            std::fs::read_to_string(p.join("path")).unwrap(),
            "/var/lib/firmware"
        );
        assert_eq!(ensure_search_path(d.path(), dest).unwrap(), None);
        assert_eq!(
            ensure_search_path(d.path(), Path::new("/lib/firmware")).unwrap(),
            None
        );
        let e = ensure_search_path(Path::new("/nonexistent"), dest).unwrap_err();
        assert!(e.to_string().contains("firmware_class"), "{e}");
    }
}
