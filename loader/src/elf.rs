// SPDX-License-Identifier: Apache-2.0
//! Named sections of a kernel module's ELF64 file (`.modinfo`, `__versions`, ...), found
//! through the section headers. Of a plain `.ko` only what is needed is read: the ELF header,
//! the section header table, the section name table and the sections asked for, not the whole
//! (often multi-MiB) module; a compressed one is decompressed first (`decompress.rs`).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::decompress::{self, Compression};

/// The sections of a module file that were asked for, as the file holds them.
#[derive(Debug, Clone, Default)]
pub struct ModuleSections {
    little_endian: bool,
    found: Vec<(String, Vec<u8>)>,
}

impl ModuleSections {
    /// Reads the sections called `wanted` of the module at `path` (plain or compressed);
    /// `Err` says what is wrong with the file.
    pub fn read(path: &Path, wanted: &[&str]) -> Result<Self, String> {
        match Compression::of(path) {
            Compression::None => {
                let f = File::open(path).map_err(|e| e.to_string())?;
                let len = f.metadata().map_err(|e| e.to_string())?.len();
                sections(&FileSource { file: &f, len }, wanted)
            }
            _ => {
                let bytes = decompress::read_module(path).map_err(|e| e.to_string())?;
                sections(&&bytes[..], wanted)
            }
        }
    }

    /// The sections called `wanted` of a module image in memory.
    #[cfg(test)]
    pub fn from_image(image: &[u8], wanted: &[&str]) -> Result<Self, String> {
        sections(&image, wanted)
    }

    /// The section called `name`, if the file has it (a `SHT_NOBITS` one is empty).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.found
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.as_slice())
    }

    /// Whether the file is little endian (x86_64, aarch64): the byte order of the numbers
    /// in its sections.
    pub fn little_endian(&self) -> bool {
        self.little_endian
    }
}

/// Random access to the bytes of an ELF file.
trait Source {
    fn len(&self) -> u64;
    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, String>;
}

impl Source for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        let end = offset.checked_add(len).ok_or("offset overflows")?;
        if end > Source::len(self) {
            return Err(format!(
                "truncated ELF file: needs {end} bytes, has {}",
                Source::len(self)
            ));
        }
        Ok(self[offset as usize..end as usize].to_vec())
    }
}

struct FileSource<'a> {
    file: &'a File,
    len: u64,
}

impl Source for FileSource<'_> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        let end = offset.checked_add(len).ok_or("offset overflows")?;
        if end > self.len {
            return Err(format!(
                "truncated ELF file: needs {end} bytes, has {}",
                self.len
            ));
        }
        let mut buf = vec![0; len as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e: io::Error| e.to_string())?;
        Ok(buf)
    }
}

/// ELF64 field reader for either byte order.
struct Endian(bool);

impl Endian {
    fn u16(&self, b: &[u8], at: usize) -> u16 {
        let a = [b[at], b[at + 1]];
        if self.0 {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        }
    }

    fn u32(&self, b: &[u8], at: usize) -> u32 {
        let a = b[at..at + 4].try_into().expect("4 bytes");
        if self.0 {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    }

    fn u64(&self, b: &[u8], at: usize) -> u64 {
        let a = b[at..at + 8].try_into().expect("8 bytes");
        if self.0 {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        }
    }
}

const SHDR_SIZE: usize = 64;
const SHT_NOBITS: u32 = 8;
/// No module has more; a bigger number is a broken or hostile file.
const MAX_SECTIONS: usize = 1 << 16;

/// Finds and reads the sections called `wanted` of an ELF64 file.
fn sections(src: &dyn Source, wanted: &[&str]) -> Result<ModuleSections, String> {
    let eh = src
        .read(0, 64)
        .map_err(|_| "too short for an ELF header".to_string())?;
    if &eh[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if eh[4] != 2 {
        return Err("not a 64-bit ELF file".into());
    }
    let e = match eh[5] {
        1 => Endian(true),
        2 => Endian(false),
        _ => return Err("ELF file of unknown byte order".into()),
    };
    let shoff = e.u64(&eh, 0x28);
    let shentsize = e.u16(&eh, 0x3a) as usize;
    let shnum = e.u16(&eh, 0x3c) as usize;
    let shstrndx = e.u16(&eh, 0x3e) as usize;
    if shentsize != SHDR_SIZE || shnum == 0 || shnum > MAX_SECTIONS || shstrndx >= shnum {
        return Err("ELF section header table is malformed".into());
    }
    let table = src.read(shoff, (shnum * SHDR_SIZE) as u64)?;
    let shdr = |i: usize| &table[i * SHDR_SIZE..(i + 1) * SHDR_SIZE];
    let section = |h: &[u8]| -> Result<Vec<u8>, String> {
        if e.u32(h, 4) == SHT_NOBITS {
            return Ok(vec![]);
        }
        let (off, size) = (e.u64(h, 24), e.u64(h, 32));
        if size > src.len() {
            return Err("ELF section is larger than the file".into());
        }
        src.read(off, size)
    };
    let names = section(shdr(shstrndx))?;
    let mut out = ModuleSections {
        little_endian: e.0,
        found: vec![],
    };
    for i in 0..shnum {
        let h = shdr(i);
        let name_off = e.u32(h, 0) as usize;
        let name = names
            .get(name_off..)
            .and_then(|n| n.split(|&b| b == 0).next())
            .unwrap_or_default();
        let Some(want) = wanted.iter().find(|w| w.as_bytes() == name) else {
            continue;
        };
        // The first of a name counts, as the kernel's find_sec() takes it.
        if out.get(want).is_none() {
            out.found.push(((*want).to_owned(), section(h)?));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{elf_with_sections, xz};

    #[test]
    fn reads_the_sections_asked_for_from_files_and_images() {
        let ko = elf_with_sections(&[(".modinfo", b"name=a\0"), ("__versions", b"v")]);
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.ko"), &ko).unwrap();
        std::fs::write(d.path().join("b.ko.xz"), xz(&ko)).unwrap();
        for p in ["a.ko", "b.ko.xz"] {
            let s = ModuleSections::read(&d.path().join(p), &["__versions", "nope"]).unwrap();
            assert_eq!(s.get("__versions"), Some(&b"v"[..]), "{p}");
            assert_eq!(s.get(".modinfo"), None, "not asked for");
            assert_eq!(s.get("nope"), None);
            assert!(s.little_endian());
        }
        let e = ModuleSections::read(&d.path().join("missing.ko"), &[]).unwrap_err();
        assert!(e.contains("No such file"), "{e}");
    }
}
