// SPDX-License-Identifier: Apache-2.0
//! `--output initrd`: a gzip-compressed cpio (newc) archive to append to an initramfs. The
//! kernel unpacks concatenated archives in order, so appended to a systemd (dracut)
//! initramfs, or a live/PXE one, it adds the loader, the config, the node's modprobe.d, the
//! store for the kernels carried and the loader unit enabled for `sysinit.target`: the
//! out-of-tree driver is in place before any initramfs network configuration, and after
//! switch-root the real root's loader finds it loaded (same srcversion: nothing to do).
//! The content is [`crate::initramfs_content`]'s, as in the dracut module.
//!
//! `--output overlay-initrd` is the same content with everything under `/etc`
//! ([`Layout::EtcOverlay`]), for ostree's `--overlay-initrd` (the mechanism under
//! `rpm-ostree initramfs-etc`), which carries `/etc` files only.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use flate2::{write::GzEncoder, Compression};

use crate::bundle::NodeEntry;
use crate::cpio::CpioWriter;
use crate::initramfs_content::{is_modprobe_file, Layout, MODPROBE_DIRS, UNIT_TARGET};
use crate::{config_path, Bundle, Day1Config, Error};
use kmod_day1_contract::STORE_DIR;

/// What goes into the initrd, besides the bundle.
#[derive(Debug)]
pub struct InitrdInputs<'a> {
    /// The config.
    pub config: &'a Day1Config,
    /// The prepared store's content.
    pub bundle: &'a Bundle,
    /// The static `kmod-day1-load`.
    pub loader: &'a Path,
    /// The node's modprobe.d, carried as `/etc/modprobe.d`; none when it does not exist.
    pub modprobe_d: &'a Path,
    /// The mtime of every entry (`SOURCE_DATE_EPOCH`, else 0).
    pub mtime: u32,
    /// Where the archive puts its items.
    pub layout: Layout,
}

/// The initrd and what it holds.
#[derive(Debug)]
pub struct Initrd {
    /// The gzip-compressed archive.
    pub bytes: Vec<u8>,
    /// The uncompressed archive's size.
    pub cpio_bytes: usize,
    /// The modprobe.d files carried.
    pub modprobe_files: Vec<String>,
}

/// Builds the initrd.
pub fn initrd(inputs: &InitrdInputs) -> Result<Initrd, Error> {
    let loader = std::fs::read(inputs.loader).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Invalid(format!(
                "--loader {}: not found; build the static loader with `make static` (target/x86_64-unknown-linux-gnu/release/kmod-day1-load)",
                inputs.loader.display()
            ))
        } else {
            Error::io(format!("reading {}", inputs.loader.display()), e)
        }
    })?;
    if !loader.starts_with(b"\x7fELF") {
        return Err(Error::Invalid(format!(
            "--loader {}: not an ELF executable; give the static kmod-day1-load of `make static`",
            inputs.loader.display()
        )));
    }
    let layout = inputs.layout;
    let mut entries = vec![
        NodeEntry::File {
            path: layout.loader_path(),
            mode: 0o755,
            data: loader,
        },
        NodeEntry::File {
            path: config_path(inputs.config),
            mode: 0o644,
            data: inputs.config.node.to_json().into_bytes(),
        },
        NodeEntry::File {
            path: layout.unit_path().into(),
            mode: 0o644,
            data: layout.unit_text().into_bytes(),
        },
    ];
    let (unit_dir, unit_name) = layout
        .unit_path()
        .rsplit_once('/')
        .expect("an absolute path");
    entries.push(NodeEntry::Symlink {
        path: format!("{unit_dir}/{UNIT_TARGET}.wants/{unit_name}"),
        target: format!("../{unit_name}"),
    });
    let modprobe_files = modprobe_files(inputs.modprobe_d)?;
    for (name, data) in &modprobe_files {
        entries.push(NodeEntry::File {
            path: format!("{}/{name}", MODPROBE_DIRS[0]),
            mode: 0o644,
            data: data.clone(),
        });
    }
    let store = layout.store_dir();
    entries.extend(
        inputs
            .bundle
            .entries()
            .iter()
            .map(|e| in_store_dir(e, &store)),
    );
    let cpio = archive(&entries, inputs.mtime)
        .map_err(|e| Error::io("writing the initrd's cpio archive", e))?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    let bytes = gz
        .write_all(&cpio)
        .and_then(|()| gz.finish())
        .map_err(|e| Error::io("compressing the initrd", e))?;
    Ok(Initrd {
        bytes,
        cpio_bytes: cpio.len(),
        modprobe_files: modprobe_files.into_iter().map(|(n, _)| n).collect(),
    })
}

/// `e`, a store entry at [`STORE_DIR`], moved to `store` (links in the store are relative).
fn in_store_dir(e: &NodeEntry, store: &str) -> NodeEntry {
    let moved = |p: &str| match p.strip_prefix(STORE_DIR) {
        Some(rest) => format!("{store}{rest}"),
        None => p.to_owned(),
    };
    match e {
        NodeEntry::Dir { path, mode } => NodeEntry::Dir {
            path: moved(path),
            mode: *mode,
        },
        NodeEntry::File { path, mode, data } => NodeEntry::File {
            path: moved(path),
            mode: *mode,
            data: data.clone(),
        },
        NodeEntry::Symlink { path, target } => NodeEntry::Symlink {
            path: moved(path),
            target: target.clone(),
        },
    }
}

/// The `*.conf` and `*.alias` files of `dir` (not dot files), sorted; none when `dir` does
/// not exist.
fn modprobe_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
    };
    let mut out = vec![];
    for e in rd {
        let e = e.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !is_modprobe_file(&name) || !e.path().is_file() {
            continue;
        }
        let data = std::fs::read(e.path())
            .map_err(|err| Error::io(format!("reading {}", e.path().display()), err))?;
        out.push((name, data));
    }
    out.sort();
    Ok(out)
}

/// The cpio archive of `entries`, every parent directory first (mode 0755: the kernel also
/// applies it to a directory the initramfs before it already has).
fn archive(entries: &[NodeEntry], mtime: u32) -> std::io::Result<Vec<u8>> {
    let mut w = CpioWriter::new(Vec::new(), mtime);
    let mut dirs = BTreeSet::new();
    let mut sorted: Vec<&NodeEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path().cmp(b.path()));
    for e in sorted {
        let rel = e.path().trim_start_matches('/');
        let mut parent = String::new();
        for part in rel
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            if dirs.insert(parent.clone()) {
                w.dir(&parent, 0o755)?;
            }
        }
        match e {
            NodeEntry::Dir { mode, .. } => {
                if dirs.insert(rel.to_owned()) {
                    w.dir(rel, *mode)?;
                }
            }
            NodeEntry::File { mode, data, .. } => w.file(rel, *mode, data)?,
            NodeEntry::Symlink { target, .. } => w.symlink(rel, target)?,
        }
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_and_once() {
        let entries = [
            NodeEntry::File {
                path: "/a/b/c".into(),
                mode: 0o644,
                data: b"x".to_vec(),
            },
            NodeEntry::Dir {
                path: "/a/b".into(),
                mode: 0o700,
            },
            NodeEntry::Symlink {
                path: "/a/l".into(),
                target: "b/c".into(),
            },
        ];
        let out = archive(&entries, 0).unwrap();
        let text = String::from_utf8_lossy(&out);
        let names: Vec<&str> = ["a\0", "a/b\0", "a/b/c\0", "a/l\0", "TRAILER!!!\0"]
            .into_iter()
            .collect();
        let mut at = 0;
        for n in names {
            let i = text[at..]
                .find(n)
                .unwrap_or_else(|| panic!("{n:?} after {at}"));
            at += i + n.len();
        }
        assert_eq!(text.matches("a/b\0").count(), 1);
    }

    #[test]
    fn the_unit_runs_the_loader_where_the_initrd_puts_it() {
        let l = Layout::RealRoot;
        assert!(l
            .unit_text()
            .contains(&format!("\nExecStart={}\n", l.loader_path())));
        for l in [Layout::RealRoot, Layout::EtcOverlay] {
            assert!(l
                .unit_text()
                .contains(&format!("\nWantedBy={UNIT_TARGET}\n")));
        }
    }

    #[test]
    fn the_overlay_moves_store_entries_only() {
        let f = NodeEntry::File {
            path: format!("{STORE_DIR}/refs/a/b/k/x.json"),
            mode: 0o644,
            data: vec![],
        };
        assert_eq!(
            in_store_dir(&f, "/etc/kmod-day1/initrd/store").path(),
            "/etc/kmod-day1/initrd/store/refs/a/b/k/x.json"
        );
        let l = NodeEntry::Symlink {
            path: "/etc/x".into(),
            target: "y".into(),
        };
        assert_eq!(in_store_dir(&l, "/s"), l);
    }
}
