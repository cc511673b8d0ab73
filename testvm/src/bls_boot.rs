// SPDX-License-Identifier: Apache-2.0
//! The harness as the boot loader of an ostree node: before each boot it reads the disk's
//! `/boot/loader/entries` (`debugfs rdump`, no mount), picks an entry as a BLS boot loader
//! does (the highest `version` is the default; the other one is what a user picks in the
//! menu to roll back), copies its kernel and initrds out (several `initrd` lines are
//! concatenated in order, as the kernel unpacks them) and boots them with its `options`.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use tracing::info;

use crate::cmd::run;
use crate::qemu::Machine;
use crate::vm_image::VmKernel;

/// One BLS entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// File name under `/boot/loader/entries`.
    pub file: String,
    /// `version` (ostree: 1 for the oldest deployment, the highest is the default).
    pub version: u64,
    /// `linux`, relative to `/boot`.
    pub linux: String,
    /// `initrd` lines, in order.
    pub initrd: Vec<String>,
    /// `options`.
    pub options: String,
}

impl BootEntry {
    /// The kernel release, from the kernel's file name (`vmlinuz-<release>`).
    pub fn release(&self) -> &str {
        let name = self.linux.rsplit('/').next().unwrap_or_default();
        name.strip_prefix("vmlinuz-").unwrap_or(name)
    }
}

/// Parses one entry file.
pub fn parse_entry(file: &str, text: &str) -> Result<BootEntry> {
    let mut e = BootEntry {
        file: file.to_owned(),
        version: 0,
        linux: String::new(),
        initrd: vec![],
        options: String::new(),
    };
    for line in text.lines() {
        let (k, v) = line
            .trim()
            .split_once(char::is_whitespace)
            .unwrap_or((line, ""));
        let v = v.trim();
        match k {
            "version" => {
                e.version = v
                    .parse()
                    .with_context(|| format!("{file}: version {v:?} is not a number"))?
            }
            "linux" => e.linux = v.to_owned(),
            "initrd" => e.initrd.push(v.to_owned()),
            "options" => e.options = v.to_owned(),
            _ => {}
        }
    }
    if e.linux.is_empty() {
        bail!("{file}: no linux line");
    }
    Ok(e)
}

/// Which entry to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The default: the highest version.
    Default,
    /// The next lower version: the rollback deployment, chosen in the menu.
    Rollback,
}

/// The entries on `disk`, highest version first; `out` is a fresh scratch directory.
pub fn read_entries(disk: &Path, out: &Path) -> Result<Vec<BootEntry>> {
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    std::fs::create_dir_all(out)?;
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump /boot/loader/entries {}", out.display()))
        .arg(disk))
    .context("reading /boot/loader/entries off the disk with debugfs")?;
    let dir = out.join("entries");
    let mut v = vec![];
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".conf") {
            v.push(parse_entry(&name, &std::fs::read_to_string(e.path())?)?);
        }
    }
    v.sort_by_key(|e| std::cmp::Reverse(e.version));
    Ok(v)
}

/// Picks `choice` among `entries` (highest version first).
pub fn pick(entries: &[BootEntry], choice: Choice) -> Option<&BootEntry> {
    match choice {
        Choice::Default => entries.first(),
        Choice::Rollback => entries.get(1),
    }
}

/// Reads the disk's entries, picks one and makes it the machine's next boot. Returns the
/// entry booted and every entry's file name.
pub fn select(m: &mut Machine, choice: Choice) -> Result<(BootEntry, Vec<BootEntry>)> {
    let n = m.boots.len() + 1;
    let out = m.dir().join(format!("{}-boot{n}.loader", m.name));
    let entries = read_entries(m.disk(), &out)?;
    let e = pick(&entries, choice)
        .with_context(|| format!("no {choice:?} entry among {entries:?}"))?
        .clone();
    let vmlinuz = out.join("vmlinuz");
    dump(m.disk(), &e.linux, &vmlinuz)?;
    let initrd = out.join("initrd");
    let mut all = vec![];
    for (i, p) in e.initrd.iter().enumerate() {
        let f = out.join(format!("initrd.{i}"));
        dump(m.disk(), p, &f)?;
        all.extend(std::fs::read(&f)?);
    }
    std::fs::write(&initrd, all)?;
    info!(
        "{}: boot loader picks {} (version {}, {}) for boot {n}",
        m.name,
        e.file,
        e.version,
        e.release()
    );
    m.kernel = VmKernel {
        release: e.release().to_owned(),
        vmlinuz,
        initrd,
    };
    m.base_cmdline = e.options.clone();
    Ok((e, entries))
}

/// Copies `/boot<path>` off the disk (debugfs exits 0 even when the file is missing).
fn dump(disk: &Path, path: &str, to: &Path) -> Result<()> {
    let _ = std::fs::remove_file(to);
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /boot{path} {}", to.display()))
        .arg(disk))?;
    match std::fs::metadata(to) {
        Ok(md) if md.len() > 0 => Ok(()),
        _ => bail!("/boot{path} is missing on {}", disk.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_highest_version_or_the_rollback() {
        let a = parse_entry(
            "ostree-1-debian.conf",
            "title Debian (ostree:1)\nversion 1\noptions root=/dev/vda rw ostree=/ostree/boot.1/debian/a/1\nlinux /ostree/debian-a/vmlinuz-6.1.0-50-amd64\ninitrd /ostree/debian-a/initramfs-6.1.0-50-amd64.img\n",
        )
        .unwrap();
        let b = parse_entry(
            "ostree-2-debian.conf",
            "version 2\nlinux /ostree/debian-b/vmlinuz-6.1.0-57-amd64\ninitrd /x.img\ninitrd /y.img\noptions rw\n",
        )
        .unwrap();
        assert_eq!(a.release(), "6.1.0-50-amd64");
        assert_eq!(b.initrd, ["/x.img", "/y.img"]);
        let v = vec![b.clone(), a.clone()];
        assert_eq!(pick(&v, Choice::Default), Some(&b));
        assert_eq!(pick(&v, Choice::Rollback), Some(&a));
        assert!(parse_entry("x.conf", "version 1\n").is_err());
    }
}
