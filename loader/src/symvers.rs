// SPDX-License-Identifier: Apache-2.0
//! The kernel's symbol versions: its `Module.symvers`, one line per exported symbol, fields
//! separated by tabs (shown as `|`):
//!
//! ```text
//! 0x9060323f|module_layout|vmlinux|EXPORT_SYMBOL|
//! 0x84b45156|insert_resource_expand_to_fit|vmlinux|EXPORT_SYMBOL_GPL|CXL
//! ```
//!
//! (CRC, symbol, exporting module or `vmlinux`, export type, namespace; Linux 5.4 to 5.9 put
//! the namespace third). Every export of the kernel build is there, its modules' included.
//! RHEL and so RHCOS ship it gzipped in kernel-core as `/usr/lib/modules/<kver>/symvers.gz`
//! (inside each ostree deployment), and as `/boot/symvers-<kver>.gz` on package-mode hosts;
//! kernel-devel (RHEL) and linux-headers (Debian) have it as `Module.symvers` in the build
//! tree that `/usr/lib/modules/<kver>/build` points at.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::gzip;

/// A table this big is no `Module.symvers` (RHEL 9's is 3 MB): refused, not inflated.
const MAX_TABLE_BYTES: u64 = 64 << 20;

/// Where a kernel's table is looked for when `--symvers` is not given, for the modules
/// directory `<modules-root>/<kver>` and `/boot`, in this order.
pub fn default_candidates(modules_dir: &Path, boot_dir: &Path, kver: &str) -> Vec<PathBuf> {
    vec![
        modules_dir.join("symvers.gz"),
        modules_dir.join("symvers"),
        boot_dir.join(format!("symvers-{kver}.gz")),
        modules_dir.join("build/Module.symvers"),
    ]
}

/// One exported symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// Its CRC.
    pub crc: u64,
    /// The module exporting it, or `vmlinux`.
    pub module: String,
}

/// A kernel's symbol versions, read from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symvers {
    path: PathBuf,
    exports: HashMap<String, Export>,
}

impl Symvers {
    /// Reads the table at `path`, gzipped (by its first bytes, whatever its name) or plain.
    pub fn read(path: &Path) -> Result<Self, String> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut raw = vec![];
        file.take(MAX_TABLE_BYTES + 1)
            .read_to_end(&mut raw)
            .map_err(|e| e.to_string())?;
        let bytes = if gzip::is_gzip(&raw) {
            gzip::gunzip(&raw, MAX_TABLE_BYTES as usize + 1)?
        } else {
            raw
        };
        if bytes.len() as u64 > MAX_TABLE_BYTES {
            return Err(format!(
                "larger than {} MiB: not a Module.symvers",
                MAX_TABLE_BYTES >> 20
            ));
        }
        let text = String::from_utf8(bytes).map_err(|_| "not text".to_owned())?;
        Self::parse(path, &text)
    }

    /// Parses `Module.symvers` text read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, String> {
        let mut exports = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            let bad = || format!("line {}: {line:?} is not CRC, symbol, module", n + 1);
            if f.len() < 3 || f[1].is_empty() {
                return Err(bad());
            }
            let crc = f[0]
                .strip_prefix("0x")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or_else(bad)?;
            // 5.4 to 5.9: CRC, symbol, namespace, module, export type.
            let module = match f.get(3) {
                Some(t) if !t.starts_with("EXPORT_") && f.len() >= 5 => f[3],
                _ => f[2],
            };
            exports.insert(
                f[1].to_owned(),
                Export {
                    crc,
                    module: module.to_owned(),
                },
            );
        }
        if exports.is_empty() {
            return Err("no symbol in it".into());
        }
        Ok(Self {
            path: path.to_owned(),
            exports,
        })
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The export of `symbol`, if the kernel's build has it.
    pub fn get(&self, symbol: &str) -> Option<&Export> {
        self.exports.get(symbol)
    }

    /// Whether the CRCs are real: a kernel built without `CONFIG_MODVERSIONS` writes
    /// `0x00000000` for every symbol.
    pub fn has_crcs(&self) -> bool {
        self.exports.values().any(|e| e.crc != 0)
    }
}

/// A kernel's symbol versions, found and read on first use (a boot with nothing to swap
/// never reads them), or why there are none.
#[derive(Debug)]
pub struct KernelSymvers {
    kernel_release: String,
    /// Tried in order; the first that exists is the table.
    candidates: Vec<PathBuf>,
    /// Given with `--symvers` (only that file), not looked for.
    given: bool,
    table: OnceCell<Result<Symvers, String>>,
}

impl KernelSymvers {
    /// The first of [`default_candidates`] that exists.
    pub fn search(modules_dir: &Path, boot_dir: &Path, kver: &str) -> Self {
        Self {
            kernel_release: kver.to_owned(),
            candidates: default_candidates(modules_dir, boot_dir, kver),
            given: false,
            table: OnceCell::new(),
        }
    }

    /// The table at `path` (`--symvers`).
    pub fn at(path: &Path, kver: &str) -> Self {
        Self {
            kernel_release: kver.to_owned(),
            candidates: vec![path.to_owned()],
            given: true,
            table: OnceCell::new(),
        }
    }

    /// The table, or why the symbol versions cannot be checked (one sentence that ends by
    /// saying the kernel checks them at load).
    pub fn table(&self) -> Result<&Symvers, &str> {
        self.table
            .get_or_init(|| self.find())
            .as_ref()
            .map_err(String::as_str)
    }

    fn find(&self) -> Result<Symvers, String> {
        let k = &self.kernel_release;
        let at_load = "the kernel checks them at load";
        let Some(path) = self.candidates.iter().find(|p| p.exists()) else {
            let tried: Vec<String> = self
                .candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            return Err(if self.given {
                format!(
                    "no symvers for {k}: --symvers {} does not exist; {at_load}",
                    tried[0]
                )
            } else {
                format!(
                    "no symvers for {k} (none of {}): {at_load}",
                    tried.join(", ")
                )
            });
        };
        let table = Symvers::read(path).map_err(|e| {
            format!(
                "the symvers of {k} cannot be used: {}: {e}; {at_load}",
                path.display()
            )
        })?;
        if !table.has_crcs() {
            return Err(format!(
                "{} has no symbol CRCs ({k} is built without CONFIG_MODVERSIONS): nothing to check",
                path.display()
            ));
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TABLE: &str = "0x9060323f\tmodule_layout\tvmlinux\tEXPORT_SYMBOL\t\n\
        0x84b45156\tinsert_resource_expand_to_fit\tvmlinux\tEXPORT_SYMBOL_GPL\tCXL\n\
        \n\
        0x0a1b2c3d\tdpll_device_get\tdrivers/dpll/dpll\tEXPORT_SYMBOL_GPL\t\n";

    fn gz(text: &str) -> Vec<u8> {
        let mut g = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
        g.write_all(text.as_bytes()).unwrap();
        g.finish().unwrap()
    }

    #[test]
    fn parses_module_symvers_of_every_layout() {
        let t = Symvers::parse(Path::new("t"), TABLE).unwrap();
        assert_eq!(
            t.get("module_layout"),
            Some(&Export {
                crc: 0x9060_323f,
                module: "vmlinux".into()
            })
        );
        assert_eq!(
            t.get("insert_resource_expand_to_fit").unwrap().crc,
            0x84b4_5156
        );
        assert_eq!(
            t.get("dpll_device_get").unwrap().module,
            "drivers/dpll/dpll"
        );
        assert_eq!(t.get("nope"), None);
        assert!(t.has_crcs());
        // Linux 4.18 (RHEL 8): four columns; 5.4-5.9: the namespace third.
        let old = "0x00000001\ta\tvmlinux\tEXPORT_SYMBOL\n0x00000002\tb\tNS\tdrivers/x\tEXPORT_SYMBOL_GPL\n";
        let t = Symvers::parse(Path::new("t"), old).unwrap();
        assert_eq!(t.get("a").unwrap().module, "vmlinux");
        assert_eq!(t.get("b").unwrap().module, "drivers/x");
        let e = Symvers::parse(Path::new("t"), "0x1\tok\tvmlinux\nbroken line\n").unwrap_err();
        assert!(e.starts_with("line 2: \"broken line\""), "{e}");
        let e = Symvers::parse(Path::new("t"), "zz\ta\tvmlinux\n").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        assert!(Symvers::parse(Path::new("t"), "\n").is_err());
        let zeros = Symvers::parse(Path::new("t"), "0x00000000\ta\tvmlinux\tEXPORT_SYMBOL\n");
        assert!(!zeros.unwrap().has_crcs());
    }

    #[test]
    fn reads_gzipped_and_plain_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("symvers.gz"), gz(TABLE)).unwrap();
        std::fs::write(d.path().join("Module.symvers"), TABLE).unwrap();
        for n in ["symvers.gz", "Module.symvers"] {
            let t = Symvers::read(&d.path().join(n)).unwrap();
            assert_eq!(t.get("module_layout").unwrap().crc, 0x9060_323f, "{n}");
            assert_eq!(t.path(), d.path().join(n));
        }
        let mut truncated = gz(TABLE);
        truncated.truncate(truncated.len() / 2);
        std::fs::write(d.path().join("bad.gz"), truncated).unwrap();
        let e = Symvers::read(&d.path().join("bad.gz")).unwrap_err();
        assert!(e.contains("truncated gzip file"), "{e}");
    }

    #[test]
    fn finds_the_table_next_to_the_modules_or_says_why_not() {
        let d = tempfile::tempdir().unwrap();
        let (mods, boot) = (d.path().join("usr/lib/modules/K"), d.path().join("boot"));
        std::fs::create_dir_all(mods.join("build")).unwrap();
        std::fs::create_dir_all(&boot).unwrap();
        let e = KernelSymvers::search(&mods, &boot, "K")
            .table()
            .unwrap_err()
            .to_owned();
        assert!(
            e.starts_with(&format!(
                "no symvers for K (none of {}/symvers.gz, ",
                mods.display()
            )),
            "{e}"
        );
        assert!(e.ends_with("): the kernel checks them at load"), "{e}");
        // Each candidate in turn, the earlier ones first.
        let one = |crc: u32| format!("0x{crc:08x}\ts\tvmlinux\tEXPORT_SYMBOL\n");
        std::fs::write(mods.join("build/Module.symvers"), one(4)).unwrap();
        let crc = || {
            KernelSymvers::search(&mods, &boot, "K")
                .table()
                .unwrap()
                .get("s")
                .unwrap()
                .crc
        };
        assert_eq!(crc(), 4);
        std::fs::write(boot.join("symvers-K.gz"), gz(&one(3))).unwrap();
        assert_eq!(crc(), 3);
        std::fs::write(mods.join("symvers"), one(2)).unwrap();
        assert_eq!(crc(), 2);
        std::fs::write(mods.join("symvers.gz"), gz(&one(1))).unwrap();
        assert_eq!(crc(), 1);
        // --symvers: that file only.
        let given = KernelSymvers::at(&d.path().join("nope"), "K");
        let e = given.table().unwrap_err();
        assert!(
            e.contains("--symvers") && e.contains("does not exist"),
            "{e}"
        );
        // Unusable, or without CRCs: said, nothing checked.
        std::fs::write(mods.join("symvers.gz"), b"\x1f\x8b garbage").unwrap();
        let s = KernelSymvers::search(&mods, &boot, "K");
        let e = s.table().unwrap_err();
        assert!(e.starts_with("the symvers of K cannot be used: "), "{e}");
        std::fs::write(
            mods.join("symvers.gz"),
            gz("0x00000000\ts\tvmlinux\tEXPORT_SYMBOL\n"),
        )
        .unwrap();
        let s = KernelSymvers::search(&mods, &boot, "K");
        assert!(s
            .table()
            .unwrap_err()
            .contains("without CONFIG_MODVERSIONS"));
    }
}
