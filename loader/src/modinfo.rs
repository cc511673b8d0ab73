// SPDX-License-Identifier: Apache-2.0
//! The `.modinfo` section of a kernel module: `key=value` strings separated by NUL bytes
//! (`name`, `version`, `srcversion`, `vermagic`, `depends`, ...), read through `elf.rs`.

use std::path::Path;

use crate::elf::ModuleSections;

/// A module file that cannot be read or is not a kernel module.
#[derive(Debug, thiserror::Error)]
#[error("reading module info of {path}: {why}")]
pub struct ModinfoError {
    /// The module file.
    pub path: String,
    /// What is wrong.
    pub why: String,
}

/// The section's name.
const SECTION: &str = ".modinfo";

/// The `.modinfo` strings of a module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    entries: Vec<(String, String)>,
}

impl ModInfo {
    /// Reads the module at `path` (plain or compressed).
    #[cfg(test)]
    pub fn read(path: &Path) -> Result<Self, ModinfoError> {
        Self::read_with(path, &[]).map(|(info, _)| info)
    }

    /// Reads the module at `path` (plain or compressed) and, with the same read (one
    /// decompression), its sections called `extra`.
    pub fn read_with(path: &Path, extra: &[&str]) -> Result<(Self, ModuleSections), ModinfoError> {
        let err = |why: String| ModinfoError {
            path: path.display().to_string(),
            why,
        };
        let wanted: Vec<&str> = [SECTION].iter().chain(extra).copied().collect();
        let sections = ModuleSections::read(path, &wanted).map_err(err)?;
        let info = Self::from_sections(&sections).map_err(err)?;
        Ok((info, sections))
    }

    /// Reads a module image already in memory. Only the fake kernel of the tests needs it
    /// (the real `init_module` takes the image as it is).
    #[cfg(test)]
    pub fn from_image(image: &[u8]) -> Result<Self, String> {
        Self::from_sections(&ModuleSections::from_image(image, &[SECTION])?)
    }

    /// The module info of sections read with [`SECTION`] among them; `Err` when the file has
    /// none.
    fn from_sections(sections: &ModuleSections) -> Result<Self, String> {
        sections
            .get(SECTION)
            .map(Self::parse)
            .ok_or_else(|| "no .modinfo section: not a kernel module".to_owned())
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
    /// (SMP, preempt, modversions) are checked by the kernel itself, whose ENOEXEC is
    /// explained in plain words; the symbol CRCs are compared with the kernel's `symvers`
    /// where it has one (`symbol_check.rs`), else by the kernel too.
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
