// SPDX-License-Identifier: Apache-2.0
//! The symbol versions a module was built against (`CONFIG_MODVERSIONS`), and the symbols it
//! exports: what `symbol_check.rs` compares with the kernel's `symvers`.
//!
//! modpost writes, for each symbol a module imports from the kernel or another module, the
//! CRC of that symbol's C prototype into the module's `.mod.c`:
//!
//! - `__versions`: an array of `struct modversion_info { unsigned long crc; char
//!   name[MODULE_NAME_LEN - sizeof(unsigned long)]; }`, 64 bytes an entry (56-byte names on
//!   64-bit kernels), the CRC in the low 32 bits in the file's byte order.
//! - Linux 6.15+ with `CONFIG_EXTENDED_MODVERSIONS` (for Rust's long names): `__version_ext_crcs`
//!   (a `u32` array) and `__version_ext_names` (as many NUL-terminated names, same order). The
//!   kernel then uses these and ignores `__versions` (`check_version()`), and refuses a module
//!   with one of the two sections only, or with fewer names than CRCs
//!   (`elf_validity_cache_index_versions()`); so does this reader.
//!
//! A module exports what `__ksymtab_strings` names (each exported symbol, and its namespace if
//! it has one); that is enough to tell that another module of the set provides a symbol,
//! without resolving `__ksymtab`'s relocations.

use crate::elf::ModuleSections;

/// The sections read for [`ModuleSymbols::from_sections`].
pub const SECTIONS: &[&str] = &[VERSIONS, EXT_CRCS, EXT_NAMES, KSYMTAB_STRINGS];

const VERSIONS: &str = "__versions";
const EXT_CRCS: &str = "__version_ext_crcs";
const EXT_NAMES: &str = "__version_ext_names";
const KSYMTAB_STRINGS: &str = "__ksymtab_strings";

/// `sizeof(struct modversion_info)` on 64-bit kernels (the loader reads ELF64 only).
const ENTRY: usize = 64;
/// `sizeof(unsigned long)`: the CRC field before the name.
const CRC_FIELD: usize = 8;

/// One symbol a module imports, with the CRC it was built against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolVersion {
    /// The symbol.
    pub name: String,
    /// The CRC as the kernel compares it (an `unsigned long` in `__versions`, a `u32` in the
    /// extended table).
    pub crc: u64,
}

/// What a module's symbol versions say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imports {
    /// The CRC of every symbol it imports (from `__version_ext_*` when present, as the kernel
    /// reads them, else `__versions`).
    Versioned(Vec<SymbolVersion>),
    /// Neither section: built without `CONFIG_MODVERSIONS`.
    Unversioned,
    /// The sections are there but broken, with why.
    Malformed(String),
}

/// The symbols a module imports (with their versions) and exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSymbols {
    /// What it imports, with the CRCs it was built against.
    pub imports: Imports,
    /// The names `__ksymtab_strings` holds: the symbols it exports (and their namespaces).
    pub exports: Vec<String>,
}

impl ModuleSymbols {
    /// The symbols of a module whose [`SECTIONS`] were read.
    pub fn from_sections(s: &ModuleSections) -> Self {
        let exports = s
            .get(KSYMTAB_STRINGS)
            .unwrap_or_default()
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        let imports = match (s.get(EXT_CRCS), s.get(EXT_NAMES)) {
            (Some(crcs), Some(names)) => extended(crcs, names, s.little_endian()),
            (None, None) => match s.get(VERSIONS) {
                Some(v) => basic(v, s.little_endian()),
                None => Ok(Imports::Unversioned),
            },
            (Some(_), None) | (None, Some(_)) => Err(format!(
                "it has one of {EXT_CRCS} and {EXT_NAMES} without the other"
            )),
        };
        Self {
            imports: imports.unwrap_or_else(Imports::Malformed),
            exports,
        }
    }
}

/// `__versions`: 64-byte entries, a NUL-terminated name after the CRC.
fn basic(section: &[u8], little_endian: bool) -> Result<Imports, String> {
    if section.len() % ENTRY != 0 {
        return Err(format!(
            "its {VERSIONS} section is {} bytes, not a multiple of {ENTRY}",
            section.len()
        ));
    }
    let mut out = vec![];
    for (i, e) in section.chunks_exact(ENTRY).enumerate() {
        let crc: [u8; CRC_FIELD] = e[..CRC_FIELD].try_into().expect("8 bytes");
        let crc = if little_endian {
            u64::from_le_bytes(crc)
        } else {
            u64::from_be_bytes(crc)
        };
        let field = &e[CRC_FIELD..];
        let name = field
            .iter()
            .position(|&b| b == 0)
            .map(|end| &field[..end])
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("entry {i} of its {VERSIONS} section has no name"))?;
        out.push(SymbolVersion {
            name: String::from_utf8_lossy(name).into_owned(),
            crc,
        });
    }
    Ok(Imports::Versioned(out))
}

/// `__version_ext_crcs` and `__version_ext_names`.
fn extended(crcs: &[u8], names: &[u8], little_endian: bool) -> Result<Imports, String> {
    if crcs.len() % 4 != 0 {
        return Err(format!(
            "its {EXT_CRCS} section is {} bytes, not a multiple of 4",
            crcs.len()
        ));
    }
    let mut rest = names;
    let mut out = vec![];
    for c in crcs.chunks_exact(4) {
        let c: [u8; 4] = c.try_into().expect("4 bytes");
        let crc = if little_endian {
            u32::from_le_bytes(c)
        } else {
            u32::from_be_bytes(c)
        };
        let end = rest.iter().position(|&b| b == 0).ok_or_else(|| {
            format!("its {EXT_NAMES} section has fewer names than {EXT_CRCS} has CRCs")
        })?;
        out.push(SymbolVersion {
            name: String::from_utf8_lossy(&rest[..end]).into_owned(),
            crc: u64::from(crc),
        });
        rest = &rest[end + 1..];
    }
    Ok(Imports::Versioned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{elf_with_sections, fake_ko_with_symbols, versions_section};

    fn symbols(ko: &[u8]) -> ModuleSymbols {
        ModuleSymbols::from_sections(&ModuleSections::from_image(ko, SECTIONS).unwrap())
    }

    fn imports(ko: &[u8]) -> Vec<(String, u64)> {
        match symbols(ko).imports {
            Imports::Versioned(v) => v.into_iter().map(|s| (s.name, s.crc)).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_versions_and_exports() {
        let ko = fake_ko_with_symbols(
            &[("name", "a")],
            &[
                ("module_layout", 0x9060_323f),
                ("pci_enable_device", 0xffff_ffff),
            ],
            &["a_export", "A_NS", "a_other"],
        );
        assert_eq!(
            imports(&ko),
            [
                ("module_layout".to_owned(), 0x9060_323f),
                ("pci_enable_device".to_owned(), 0xffff_ffff)
            ]
        );
        assert_eq!(symbols(&ko).exports, ["a_export", "A_NS", "a_other"]);
        // The longest name an entry holds: 55 bytes and its NUL.
        let long = "x".repeat(55);
        let ko = elf_with_sections(&[("__versions", &versions_section(&[(&long, 7)]))]);
        assert_eq!(imports(&ko), [(long, 7)]);
    }

    #[test]
    fn a_module_without_versions_is_unversioned() {
        let ko = crate::testutil::fake_ko(&[("name", "a")]);
        let s = symbols(&ko);
        assert_eq!(s.imports, Imports::Unversioned);
        assert!(s.exports.is_empty());
    }

    #[test]
    fn extended_versions_win_over_basic_ones_as_in_the_kernel() {
        let crcs: Vec<u8> = [1u32, 0xdead_beef]
            .iter()
            .flat_map(|c| c.to_le_bytes())
            .collect();
        let long = "_RNvNtCs1234_4core3fmt9Formatter9write_str_with_a_name_longer_than_55";
        let names = format!("short\0{long}\0\0");
        let ko = elf_with_sections(&[
            ("__versions", &versions_section(&[("short", 99)])),
            ("__version_ext_crcs", &crcs),
            ("__version_ext_names", names.as_bytes()),
        ]);
        assert_eq!(
            imports(&ko),
            [("short".to_owned(), 1), (long.to_owned(), 0xdead_beef)]
        );
    }

    #[test]
    fn broken_sections_are_malformed_not_a_panic() {
        let malformed = |ko: &[u8]| match symbols(ko).imports {
            Imports::Malformed(e) => e,
            other => panic!("{other:?}"),
        };
        let e = malformed(&elf_with_sections(&[("__versions", &[0u8; 65])]));
        assert!(e.contains("not a multiple of 64"), "{e}");
        // A name filling its field without a NUL, and an empty one.
        let mut v = versions_section(&[("a", 1)]);
        v[8..].fill(b'x');
        let e = malformed(&elf_with_sections(&[("__versions", &v)]));
        assert!(
            e.contains("entry 0 of its __versions section has no name"),
            "{e}"
        );
        let e = malformed(&elf_with_sections(&[("__versions", &[0u8; 64])]));
        assert!(e.contains("has no name"), "{e}");
        let e = malformed(&elf_with_sections(&[("__version_ext_crcs", &[0u8; 4])]));
        assert!(e.contains("without the other"), "{e}");
        let e = malformed(&elf_with_sections(&[
            ("__version_ext_crcs", &[0u8; 8]),
            ("__version_ext_names", b"one\0"),
        ]));
        assert!(e.contains("fewer names"), "{e}");
        let e = malformed(&elf_with_sections(&[
            ("__version_ext_crcs", &[0u8; 3]),
            ("__version_ext_names", b""),
        ]));
        assert!(e.contains("not a multiple of 4"), "{e}");
        // Every byte of a module with versions, changed: errors are fine, panics are bugs.
        let ko = fake_ko_with_symbols(&[("name", "a")], &[("s", 1), ("t", 2)], &["u"]);
        for i in 0..ko.len() {
            for b in [0u8, 0xff] {
                let mut k = ko.clone();
                k[i] = b;
                if let Ok(s) = ModuleSections::from_image(&k, SECTIONS) {
                    let _ = ModuleSymbols::from_sections(&s);
                }
            }
        }
    }
}
