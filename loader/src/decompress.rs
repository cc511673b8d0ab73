// SPDX-License-Identifier: Apache-2.0
//! Compressed module files (`.ko.xz`, `.ko.zst`, `.ko.gz`): which compression a file uses,
//! and decompression in userspace for the cases the kernel cannot do itself.
//!
//! Loading prefers `finit_module(MODULE_INIT_COMPRESSED_FILE)` (Linux >= 5.17 with
//! `CONFIG_MODULE_DECOMPRESS`): the kernel decompresses, nothing is copied through the
//! loader. Userspace decompression (pure Rust, no C library to link statically) serves
//! reading `.modinfo` and kernels without in-kernel decompression (`init_module`).

use std::io::{self, Read};
use std::path::Path;

/// Refuses to inflate a module beyond this: no kernel module is near it, a zip bomb is.
const MAX_MODULE_BYTES: u64 = 512 << 20;

/// How a module file is compressed, from its name as depmod and the kernel build name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `.ko`
    None,
    /// `.ko.xz` (RHCOS, Fedora)
    Xz,
    /// `.ko.zst` (newer Fedora, Arch)
    Zstd,
    /// `.ko.gz`: left to the kernel, not decompressed here.
    Gzip,
}

impl Compression {
    /// The compression of `path`, from its extension.
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("xz") => Self::Xz,
            Some("zst") => Self::Zstd,
            Some("gz") => Self::Gzip,
            _ => Self::None,
        }
    }
}

/// Reads a module file, decompressing it when its name says so.
pub fn read_module(path: &Path) -> io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let bounded = file.take(MAX_MODULE_BYTES + 1);
    decompress(Compression::of(path), bounded)
}

/// Decompresses `input` in the given format.
pub fn decompress(kind: Compression, input: impl Read) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    match kind {
        Compression::None => {
            let mut r = input;
            r.read_to_end(&mut out)?;
        }
        Compression::Xz => {
            let mut r = io::BufReader::new(input);
            let mut w = LimitedWriter(&mut out);
            lzma_rs::xz_decompress(&mut r, &mut w).map_err(|e| bad(format!("xz: {e}")))?;
        }
        Compression::Zstd => {
            let mut d = ruzstd::decoding::StreamingDecoder::new(input)
                .map_err(|e| bad(format!("zstd: {e}")))?;
            (&mut d).take(MAX_MODULE_BYTES + 1).read_to_end(&mut out)?;
        }
        Compression::Gzip => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "gzip-compressed modules are only supported by kernels that decompress modules themselves (CONFIG_MODULE_DECOMPRESS)",
            ))
        }
    }
    if out.len() as u64 > MAX_MODULE_BYTES {
        return Err(bad(format!(
            "decompresses to more than {} MiB; not a kernel module",
            MAX_MODULE_BYTES >> 20
        )));
    }
    Ok(out)
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// A `Vec` writer that stops at [`MAX_MODULE_BYTES`].
struct LimitedWriter<'a>(&'a mut Vec<u8>);

impl io::Write for LimitedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.len() as u64 + buf.len() as u64 > MAX_MODULE_BYTES + 1 {
            return Err(bad("decompressed module is too large".into()));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{xz, zstd};

    #[test]
    fn kinds_from_names() {
        assert_eq!(Compression::of(Path::new("a/ice.ko")), Compression::None);
        assert_eq!(Compression::of(Path::new("a/ice.ko.xz")), Compression::Xz);
        assert_eq!(
            Compression::of(Path::new("a/ice.ko.zst")),
            Compression::Zstd
        );
        assert_eq!(Compression::of(Path::new("a/ice.ko.gz")), Compression::Gzip);
    }

    #[test]
    fn round_trips() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(decompress(Compression::Xz, &xz(&data)[..]).unwrap(), data);
        assert_eq!(
            decompress(Compression::Zstd, &zstd(&data)[..]).unwrap(),
            data
        );
        assert_eq!(decompress(Compression::None, &data[..]).unwrap(), data);
        let e = decompress(Compression::Xz, &b"not xz"[..]).unwrap_err();
        assert!(e.to_string().contains("xz"), "{e}");
        let e = decompress(Compression::Zstd, &b"not zstd"[..]).unwrap_err();
        assert!(e.to_string().contains("zstd"), "{e}");
        assert!(decompress(Compression::Gzip, &b""[..]).is_err());
    }
}
