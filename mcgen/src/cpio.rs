// SPDX-License-Identifier: Apache-2.0
//! A writer of cpio archives in the "newc" format (SVR4 without CRC), the one the kernel
//! unpacks as an initramfs: per entry a 110-byte ASCII header (`070701` and thirteen 8-digit
//! hex fields), the NUL-terminated name padded to 4 bytes, the data padded to 4 bytes; a
//! `TRAILER!!!` entry ends the archive. Entries are reproducible: owner root, one mtime,
//! inode numbers in order of writing.

use std::io::{self, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

/// Writes a newc archive to `out`.
#[derive(Debug)]
pub(crate) struct CpioWriter<W: Write> {
    out: W,
    mtime: u32,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// A writer giving every entry `mtime` (seconds since the epoch).
    pub fn new(out: W, mtime: u32) -> Self {
        Self {
            out,
            mtime,
            next_ino: 1,
            written: 0,
        }
    }

    /// A directory; `path` is relative (no leading `/`), as the kernel expects.
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | (perm & 0o7777), 2, &[])
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | (perm & 0o7777), 1, data)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, 1, target.as_bytes())
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(TRAILER, 0, 0, 0, 0)?;
        self.name(TRAILER)?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, data: &[u8]) -> io::Result<()> {
        if path.is_empty() || path.starts_with('/') || path.contains('\0') || path == TRAILER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio entry name {path:?}: relative, not empty, no NUL"),
            ));
        }
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path}: larger than a newc entry holds (4 GiB)"),
            )
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(path, ino, mode, nlink, size)?;
        self.name(path)?;
        self.put(data)?;
        self.pad()
    }

    fn header(&mut self, name: &str, ino: u32, mode: u32, nlink: u32, size: u32) -> io::Result<()> {
        let name_size = name.len() as u32 + 1;
        let mtime = if name == TRAILER { 0 } else { self.mtime };
        // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize, check
        let fields = [
            ino, mode, 0, 0, nlink, mtime, size, 0, 0, 0, 0, name_size, 0,
        ];
        let mut h = String::with_capacity(110);
        h.push_str(MAGIC);
        for f in fields {
            h.push_str(&format!("{f:08x}"));
        }
        self.put(h.as_bytes())
    }

    /// The name and its NUL, padded so that header + name end on a 4-byte boundary.
    fn name(&mut self, name: &str) -> io::Result<()> {
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0; 3][..n])
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_entries_and_trailer() {
        let mut w = CpioWriter::new(Vec::new(), 0x10);
        w.dir("etc", 0o755).unwrap();
        w.file("etc/a", 0o644, b"hello").unwrap();
        w.symlink("etc/b", "a").unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 4, 0);
        // The first header: magic, ino 1, mode 040755, uid/gid 0, nlink 2, mtime 0x10.
        let first = std::str::from_utf8(&out[..110]).unwrap();
        let fields = [1, 0o040_755, 0, 0, 2, 0x10, 0, 0, 0, 0, 0, 4, 0];
        let want: String = fields.iter().map(|f: &u32| format!("{f:08x}")).collect();
        assert_eq!(first, format!("070701{want}"));
        // "etc\0" fills 110 + 4 = 114, padded to 116.
        assert_eq!(&out[110..116], b"etc\0\0\0");
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("etc/a\0"));
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!\0"));
        assert!(CpioWriter::new(Vec::new(), 0)
            .file("/abs", 0o644, b"")
            .is_err());
    }
}
