// SPDX-License-Identifier: Apache-2.0
//! The `.modinfo` section of a kernel module: `key=value` strings separated by NUL bytes
//! (`name`, `version`, `srcversion`, `vermagic`, `depends`, ...), found through the ELF64
//! section headers. Only what is needed is read: the ELF header, the section header table,
//! the section name table and `.modinfo` itself, not the whole (often multi-MiB) module.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::decompress::{self, Compression};

/// A module file that cannot be read or is not a kernel module.
#[derive(Debug, thiserror::Error)]
#[error("reading module info of {path}: {why}")]
pub struct ModinfoError {
    /// The module file.
    pub path: String,
    /// What is wrong.
    pub why: String,
}

/// The `.modinfo` strings of a module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    entries: Vec<(String, String)>,
}

impl ModInfo {
    /// Reads the module at `path` (plain or compressed).
    pub fn read(path: &Path) -> Result<Self, ModinfoError> {
        let err = |why: String| ModinfoError {
            path: path.display().to_string(),
            why,
        };
        let section = match Compression::of(path) {
            Compression::None => {
                let f = File::open(path).map_err(|e| err(e.to_string()))?;
                let len = f.metadata().map_err(|e| err(e.to_string()))?.len();
                modinfo_section(&FileSource { file: &f, len })
            }
            _ => {
                let bytes = decompress::read_module(path).map_err(|e| err(e.to_string()))?;
                modinfo_section(&&bytes[..])
            }
        }
        .map_err(err)?;
        Ok(Self::parse(&section))
    }

    /// Reads a module image already in memory. Only the fake kernel of the tests needs it
    /// (the real `init_module` takes the image as it is).
    #[cfg(test)]
    pub fn from_image(image: &[u8]) -> Result<Self, String> {
        Ok(Self::parse(&modinfo_section(&image)?))
    }

    /// Parses the raw section: NUL-separated `key=value` strings (padding NULs are skipped).
    pub fn parse(section: &[u8]) -> Self {
        let entries = section
            .split(|&b| b == 0)
            .filter_map(|s| {
                let s = std::str::from_utf8(s).ok()?;
                let (k, v) = s.split_once('=')?;
                Some((k.to_owned(), v.to_owned()))
            })
            .collect();
        Self { entries }
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every `alias=` pattern: the devices (and names) the module is for.
    pub fn aliases(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(k, _)| k == "alias")
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// `name=`: the module's name as the kernel knows it.
    pub fn name(&self) -> Option<&str> {
        self.get("name")
    }

    /// `version=`, set by the module's author (`MODULE_VERSION`).
    pub fn version(&self) -> Option<&str> {
        self.get("version")
    }

    /// `srcversion=`: a hash of the module's sources, also in `/sys/module/<m>/srcversion`.
    pub fn srcversion(&self) -> Option<&str> {
        self.get("srcversion")
    }

    /// `vermagic=`: the kernel release and build options the module was built for.
    pub fn vermagic(&self) -> Option<&str> {
        self.get("vermagic")
    }

    /// `depends=`: names of the modules whose symbols this one uses.
    pub fn depends(&self) -> Vec<String> {
        self.get("depends")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.replace('-', "_"))
            .collect()
    }

    /// Checks that the module was built for `kernel_release`: the first word of `vermagic`
    /// is the `UTS_RELEASE` of the kernel it was built against. The build options after it
    /// (SMP, preempt, modversions) and the symbol CRCs are checked by the kernel itself,
    /// whose ENOEXEC is explained in plain words.
    pub fn check_vermagic(&self, kernel_release: &str) -> Result<(), String> {
        match self.vermagic() {
            None => Err("has no vermagic: not a module built by kbuild".into()),
            Some(v) if v.split_whitespace().next() == Some(kernel_release) => Ok(()),
            Some(v) => Err(format!(
                "was built for kernel {:?} (vermagic {v:?}), but the running kernel is {kernel_release}: rebuild the kmod image for this kernel or map this kernel to the right image",
                v.split_whitespace().next().unwrap_or_default()
            )),
        }
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

/// Finds and returns the `.modinfo` section of an ELF64 file.
fn modinfo_section(src: &dyn Source) -> Result<Vec<u8>, String> {
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
    for i in 0..shnum {
        let h = shdr(i);
        let name_off = e.u32(h, 0) as usize;
        let name = names
            .get(name_off..)
            .and_then(|n| n.split(|&b| b == 0).next())
            .unwrap_or_default();
        if name == b".modinfo" {
            return section(h);
        }
    }
    Err("no .modinfo section: not a kernel module".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{fake_ko, xz, zstd};

    const FIELDS: &[(&str, &str)] = &[
        ("version", "1.2.3"),
        ("license", "GPL"),
        ("srcversion", "ABCDEF0123"),
        ("depends", "dep-a,dep_b"),
        ("name", "ice"),
        (
            "vermagic",
            "6.1.0-27-amd64 SMP preempt mod_unload modversions ",
        ),
    ];

    #[test]
    fn reads_a_real_elf_section() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ice.ko");
        std::fs::write(&p, fake_ko(FIELDS)).unwrap();
        let mi = ModInfo::read(&p).unwrap();
        assert_eq!(mi.name(), Some("ice"));
        assert_eq!(mi.version(), Some("1.2.3"));
        assert_eq!(mi.srcversion(), Some("ABCDEF0123"));
        assert_eq!(mi.depends(), vec!["dep_a", "dep_b"]);
        assert!(mi.check_vermagic("6.1.0-27-amd64").is_ok());
        let e = mi.check_vermagic("6.1.0-28-amd64").unwrap_err();
        assert!(e.contains("built for kernel \"6.1.0-27-amd64\""), "{e}");
        assert!(e.contains("running kernel is 6.1.0-28-amd64"), "{e}");
    }

    #[test]
    fn reads_compressed_modules() {
        let d = tempfile::tempdir().unwrap();
        let ko = fake_ko(FIELDS);
        std::fs::write(d.path().join("a.ko.xz"), xz(&ko)).unwrap();
        std::fs::write(d.path().join("a.ko.zst"), zstd(&ko)).unwrap();
        for n in ["a.ko.xz", "a.ko.zst"] {
            let mi = ModInfo::read(&d.path().join(n)).unwrap();
            assert_eq!(mi.srcversion(), Some("ABCDEF0123"), "{n}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_module() {
        assert!(ModInfo::from_image(b"hello")
            .unwrap_err()
            .contains("ELF header"));
        let mut not_elf = fake_ko(FIELDS);
        not_elf[0] = b'X';
        assert!(ModInfo::from_image(&not_elf)
            .unwrap_err()
            .contains("not an ELF"));
        let mut elf32 = fake_ko(FIELDS);
        elf32[4] = 1;
        assert!(ModInfo::from_image(&elf32).unwrap_err().contains("64-bit"));
        // Truncated: section table cut off.
        let ko = fake_ko(FIELDS);
        let e = ModInfo::from_image(&ko[..ko.len() - 10]).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        // An ELF without .modinfo.
        let e = ModInfo::from_image(&crate::testutil::elf_with_section(".text", b"x")).unwrap_err();
        assert!(e.contains("no .modinfo"), "{e}");
        let e = ModInfo::read(Path::new("/nonexistent/x.ko")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.ko"), "{e}");
    }

    #[test]
    fn parses_hostile_bytes_without_panicking() {
        let ko = fake_ko(FIELDS);
        for i in 0..ko.len() {
            for v in [0u8, 0xff, 0x7f] {
                let mut b = ko.clone();
                b[i] = v;
                let _ = ModInfo::from_image(&b);
            }
        }
    }

    #[test]
    fn missing_vermagic_is_reported() {
        let mi = ModInfo::parse(b"name=x\0\0\0");
        assert_eq!(mi.name(), Some("x"));
        assert!(mi
            .check_vermagic("6.1")
            .unwrap_err()
            .contains("no vermagic"));
    }
}
