// SPDX-License-Identifier: Apache-2.0
//! Preflight of symbol versions (modversions): each image module a plan loads was built
//! against the CRCs of the symbols it imports (`modversions.rs`); the kernel refuses a module
//! whose CRC of any symbol differs from its own ("disagrees about version of symbol", EINVAL)
//! or that imports a symbol nobody exports ("Unknown symbol", ENOENT). Where the kernel's
//! table is available (`symvers.rs`), the same comparison is made here, before anything is
//! unloaded, so a module built for another build of the same release is refused in preflight
//! (and said before the reboot by the upgrade preflight) instead of failing at load and being
//! rolled back.
//!
//! Per import, in this order:
//! - a symbol a module of the same plan exports (`__ksymtab_strings`): not compared with the
//!   table, whose entry is the in-tree exporter's (an image replacing `mlx5_core` and
//!   `mlx5_ib` together imports the image's own `mlx5_core` CRCs); the kernel compares it
//!   with the loaded exporter at load, and both come from the image's build. Counted as
//!   `fromSet`.
//! - in the table: the CRCs must be equal (the kernel compares the whole `unsigned long`).
//! - not in the table, but the node's `modules.symbols` names a module exporting it (a
//!   module installed outside the kernel's build, e.g. another vendor's kmod package): left
//!   to the kernel, said in `unchecked`.
//! - else nobody exports it: a mismatch ("unknown symbol"); the table has every export of
//!   the kernel's build, its modules' included.
//!
//! A module without `__versions` (built without `CONFIG_MODVERSIONS`) for a kernel whose table
//! has CRCs is refused: its vermagic lacks `modversions`, which the kernel's has, and the
//! kernel refuses it. Without a table (or a table without CRCs: a kernel built without
//! modversions) nothing is compared and the report says why. As for signatures, a softdep
//! module (not required) that would be refused is a note: the set goes on without it.

use kmod_day1_contract::{SymbolMismatch, SymbolVersions};

use crate::modules_dep::ModuleIndex;
use crate::modversions::{Imports, SymbolVersion};
use crate::plan::{Origin, PlannedModule, PreflightError};
use crate::symvers::{KernelSymvers, Symvers};

/// The check's report and, when a required module would be refused, the one-line refusal.
#[derive(Debug)]
pub struct SymbolCheck {
    /// What was compared, what was not and why, what differs.
    pub report: SymbolVersions,
    /// Why the set cannot be loaded.
    pub refused: Option<PreflightError>,
}

/// What the check needs to know about the set.
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    /// The kernel release planned for.
    pub kernel_release: &'a str,
    /// The image the set's modules come from, for the refusal.
    pub image_ref: &'a str,
    /// The node's modules (`modules.symbols`).
    pub in_tree: &'a ModuleIndex,
}

fn hex(crc: u64) -> String {
    format!("0x{crc:08x}")
}

/// What to do about a module the kernel would refuse.
const REBUILD: &str = "rebuild the module for this kernel";

/// Compares the imports of every image module `load` loads (not those loaded already) with
/// the kernel's table.
pub fn check_symbol_versions(
    symvers: &KernelSymvers,
    input: CheckInput<'_>,
    load: &[PlannedModule],
    notes: &mut Vec<String>,
) -> SymbolCheck {
    let mut report = SymbolVersions::default();
    let table = match symvers.table() {
        Ok(t) => t,
        Err(why) => {
            report.unchecked.push(why.to_owned());
            return SymbolCheck {
                report,
                refused: None,
            };
        }
    };
    report.table = Some(table.path().display().to_string());
    let ours: Vec<&PlannedModule> = load.iter().filter(|m| m.origin == Origin::Image).collect();
    let set_exports: Vec<&str> = ours
        .iter()
        .filter_map(|m| m.symbols.as_ref())
        .flat_map(|s| s.exports.iter().map(String::as_str))
        .collect();
    let mut refusals: Vec<String> = vec![];
    for m in ours.iter().filter(|m| !m.already_loaded) {
        let Some(symbols) = &m.symbols else { continue };
        let file = m.path.file_name().unwrap_or(m.path.as_os_str());
        let from = format!("{} from {}", file.to_string_lossy(), input.image_ref);
        let k = input.kernel_release;
        let why = match &symbols.imports {
            Imports::Unversioned => Some(format!(
                "{from} has no symbol versions (no __versions section: built without \
                 CONFIG_MODVERSIONS), but kernel {k} has them ({}): the kernel refuses it \
                 ({REBUILD})",
                table.path().display()
            )),
            Imports::Malformed(e) => Some(format!(
                "{from}: its symbol versions cannot be read: {e} ({REBUILD})"
            )),
            Imports::Versioned(imports) => {
                let found = compare(m, imports, table, &set_exports, input.in_tree, &mut report);
                let first = found.first().map(|f| mismatch_text(f, table));
                report.mismatches.extend(found.iter().cloned());
                first.map(|first| {
                    let more = match found.len() {
                        1 => String::new(),
                        n => format!(
                            " and {} more symbols (the dry run's symbolVersions lists them)",
                            n - 1
                        ),
                    };
                    format!(
                        "{from} was built against other symbol versions than kernel {k}: \
                         {first}{more} ({REBUILD})"
                    )
                })
            }
        };
        match why {
            Some(w) if m.required => refusals.push(w),
            Some(w) => notes.push(format!(
                "{w}: the kernel will refuse it, a softdep: the set goes on without it"
            )),
            None => {}
        }
    }
    let refused = refusals.first().map(|first| {
        PreflightError(match refusals.len() {
            1 => first.clone(),
            n => format!("{first}; and {} more modules of the set", n - 1),
        })
    });
    SymbolCheck { report, refused }
}

/// One module's imports against the table: the mismatches, in import order; the counts and
/// what is left to the kernel go to `report`.
fn compare(
    m: &PlannedModule,
    imports: &[SymbolVersion],
    table: &Symvers,
    set_exports: &[&str],
    in_tree: &ModuleIndex,
    report: &mut SymbolVersions,
) -> Vec<SymbolMismatch> {
    let mut out = vec![];
    for imp in imports {
        if set_exports.contains(&imp.name.as_str()) {
            report.from_set += 1;
            continue;
        }
        let kernel_crc = match table.get(&imp.name) {
            Some(e) => {
                report.checked += 1;
                if e.crc == imp.crc {
                    continue;
                }
                Some(hex(e.crc))
            }
            None => {
                let owners = in_tree.symbol_owners(&format!("symbol:{}", imp.name));
                if let Some(owner) = owners.first() {
                    report.unchecked.push(format!(
                        "{} imports {} from node module {owner}, which {} does not list (not \
                         part of the kernel's build): the kernel checks it at load",
                        m.name,
                        imp.name,
                        table.path().display()
                    ));
                    continue;
                }
                None
            }
        };
        out.push(SymbolMismatch {
            module: m.name.clone(),
            symbol: imp.name.clone(),
            module_crc: hex(imp.crc),
            kernel_crc,
        });
    }
    out
}

/// A mismatch in words.
fn mismatch_text(m: &SymbolMismatch, table: &Symvers) -> String {
    match &m.kernel_crc {
        Some(kc) => format!(
            "{} imports {} with CRC {}, the kernel exports {kc}",
            m.module, m.symbol, m.module_crc
        ),
        None => format!(
            "{} imports {} (CRC {}), which neither the kernel ({}) nor a module of the set \
             exports (unknown symbol)",
            m.module,
            m.symbol,
            m.module_crc,
            table.path().display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::ModuleSections;
    use crate::modversions::{ModuleSymbols, SECTIONS};
    use crate::testutil::{elf_with_sections, fake_ko_with_symbols, KVER};
    use std::path::{Path, PathBuf};

    const IMAGE: &str = "quay.io/acme/e1000-kmod:6.1.0-27-amd64";

    /// A planned image module `name` whose file is `ko`.
    fn planned(name: &str, ko: &[u8], required: bool) -> PlannedModule {
        let s = ModuleSections::from_image(ko, SECTIONS).unwrap();
        PlannedModule {
            name: name.into(),
            path: PathBuf::from(format!("/store/trees/t/modules/{name}.ko")),
            origin: Origin::Image,
            params: vec![],
            info: None,
            symbols: Some(ModuleSymbols::from_sections(&s)),
            configured: true,
            reason: crate::plan::Reason::Configured,
            required,
            already_loaded: false,
            blacklisted: None,
            signature: None,
        }
    }

    struct Kernel {
        dir: tempfile::TempDir,
    }

    impl Kernel {
        /// A kernel whose table exports `exports`, with a node module `vendor_kmod`
        /// exporting `vendor_sym` outside it.
        fn new(exports: &[(&str, u32)]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let text: String = exports
                .iter()
                .map(|(s, c)| format!("0x{c:08x}\t{s}\tvmlinux\tEXPORT_SYMBOL\t\n"))
                .collect();
            std::fs::write(dir.path().join("symvers"), text).unwrap();
            std::fs::write(
                dir.path().join("modules.symbols"),
                "alias symbol:vendor_sym vendor_kmod\n",
            )
            .unwrap();
            Self { dir }
        }

        fn check(&self, load: &[PlannedModule], notes: &mut Vec<String>) -> SymbolCheck {
            let symvers = KernelSymvers::search(self.dir.path(), Path::new("/nonexistent"), KVER);
            let in_tree = ModuleIndex::in_tree(self.dir.path());
            let input = CheckInput {
                kernel_release: KVER,
                image_ref: IMAGE,
                in_tree: &in_tree,
            };
            check_symbol_versions(&symvers, input, load, notes)
        }
    }

    fn e1000(imports: &[(&str, u32)]) -> PlannedModule {
        planned(
            "e1000",
            &fake_ko_with_symbols(&[("name", "e1000")], imports, &[]),
            true,
        )
    }

    #[test]
    fn equal_crcs_pass_and_are_counted() {
        let k = Kernel::new(&[
            ("module_layout", 0x9060_323f),
            ("pci_enable_device", 0x5678_ef01),
        ]);
        let c = k.check(
            &[e1000(&[
                ("module_layout", 0x9060_323f),
                ("pci_enable_device", 0x5678_ef01),
            ])],
            &mut vec![],
        );
        assert!(c.refused.is_none(), "{:?}", c.refused);
        assert_eq!(c.report.checked, 2);
        assert_eq!(
            c.report.table,
            Some(k.dir.path().join("symvers").display().to_string())
        );
        assert!(c.report.mismatches.is_empty() && c.report.unchecked.is_empty());
    }

    #[test]
    fn another_crc_refuses_the_set_in_one_sentence() {
        let k = Kernel::new(&[
            ("module_layout", 0x9060_323f),
            ("pci_enable_device", 0x5678_ef01),
        ]);
        let c = k.check(
            &[e1000(&[
                ("module_layout", 0x9060_323f),
                ("pci_enable_device", 0x1234_abcd),
            ])],
            &mut vec![],
        );
        assert_eq!(
            c.refused.unwrap().to_string(),
            format!("preflight: e1000.ko from {IMAGE} was built against other symbol versions than kernel {KVER}: e1000 imports pci_enable_device with CRC 0x1234abcd, the kernel exports 0x5678ef01 (rebuild the module for this kernel)")
        );
        assert_eq!(c.report.checked, 2);
        assert_eq!(
            c.report.mismatches,
            [SymbolMismatch {
                module: "e1000".into(),
                symbol: "pci_enable_device".into(),
                module_crc: "0x1234abcd".into(),
                kernel_crc: Some("0x5678ef01".into()),
            }]
        );
        // The high half of the unsigned long counts too, as in the kernel.
        let mut ko = fake_ko_with_symbols(
            &[("name", "e1000")],
            &[("pci_enable_device", 0x5678_ef01)],
            &[],
        );
        let v = ko
            .windows(8)
            .position(|w| w == 0x5678_ef01u64.to_le_bytes())
            .unwrap();
        ko[v + 4] = 1;
        let c = k.check(&[planned("e1000", &ko, true)], &mut vec![]);
        assert_eq!(c.report.mismatches[0].module_crc, "0x15678ef01");
    }

    #[test]
    fn unknown_symbols_and_several_mismatches() {
        let k = Kernel::new(&[("a", 1), ("b", 2)]);
        let c = k.check(&[e1000(&[("a", 9), ("b", 8), ("gone", 7)])], &mut vec![]);
        let e = c.refused.unwrap().to_string();
        assert!(
            e.contains("e1000 imports a with CRC 0x00000009, the kernel exports 0x00000001 and 2 more symbols"),
            "{e}"
        );
        assert_eq!(c.report.mismatches.len(), 3);
        assert_eq!(c.report.mismatches[2].kernel_crc, None);
        let c = k.check(&[e1000(&[("gone", 7)])], &mut vec![]);
        let e = c.refused.unwrap().to_string();
        assert!(
            e.contains("e1000 imports gone (CRC 0x00000007), which neither the kernel (") && e.ends_with("nor a module of the set exports (unknown symbol) (rebuild the module for this kernel)"),
            "{e}"
        );
        assert_eq!(c.report.checked, 0);
    }

    #[test]
    fn the_sets_own_exports_and_other_node_modules_are_left_to_the_kernel() {
        // The table has the in-tree mlx5_core's CRC; the image's mlx5_ib imports the image's.
        let k = Kernel::new(&[("module_layout", 1), ("mlx5_core_create_cq", 0x1111)]);
        let core = planned(
            "mlx5_core",
            &fake_ko_with_symbols(
                &[("name", "mlx5_core")],
                &[("module_layout", 1)],
                &["mlx5_core_create_cq"],
            ),
            true,
        );
        let ib = planned(
            "mlx5_ib",
            &fake_ko_with_symbols(
                &[("name", "mlx5_ib")],
                &[
                    ("module_layout", 1),
                    ("mlx5_core_create_cq", 0x2222),
                    ("vendor_sym", 3),
                ],
                &[],
            ),
            true,
        );
        let c = k.check(&[core, ib], &mut vec![]);
        assert!(c.refused.is_none(), "{:?}", c.refused);
        assert_eq!((c.report.checked, c.report.from_set), (2, 1));
        assert_eq!(c.report.unchecked.len(), 1);
        assert!(
            c.report.unchecked[0]
                .starts_with("mlx5_ib imports vendor_sym from node module vendor_kmod, which "),
            "{:?}",
            c.report.unchecked
        );
    }

    #[test]
    fn modules_without_versions_softdeps_and_loaded_modules() {
        let k = Kernel::new(&[("a", 1)]);
        let plain = planned(
            "plain",
            &crate::testutil::fake_ko(&[("name", "plain")]),
            true,
        );
        let e = k.check(&[plain], &mut vec![]).refused.unwrap().to_string();
        assert!(e.contains("plain.ko from quay.io/acme/e1000-kmod:6.1.0-27-amd64 has no symbol versions (no __versions section: built without CONFIG_MODVERSIONS), but kernel 6.1.0-27-amd64 has them"), "{e}");
        let broken = planned(
            "broken",
            &elf_with_sections(&[("__versions", &[1u8; 64])]),
            true,
        );
        let e = k.check(&[broken], &mut vec![]).refused.unwrap().to_string();
        assert!(
            e.contains("broken.ko from ")
                && e.contains("its symbol versions cannot be read: entry 0"),
            "{e}"
        );
        // A softdep the kernel would refuse is a note.
        let mut soft = e1000(&[("a", 2)]);
        soft.required = false;
        let mut notes = vec![];
        let c = k.check(&[soft.clone()], &mut notes);
        assert!(c.refused.is_none());
        assert!(
            notes[0].ends_with("a softdep: the set goes on without it"),
            "{notes:?}"
        );
        assert_eq!(c.report.mismatches.len(), 1);
        // A module loaded already is not checked (the kernel took it).
        soft.required = true;
        soft.already_loaded = true;
        let c = k.check(&[soft], &mut vec![]);
        assert!(c.refused.is_none());
        assert_eq!(c.report.checked, 0);
    }

    #[test]
    fn without_a_table_nothing_is_checked_and_the_reason_is_said() {
        let dir = tempfile::tempdir().unwrap();
        let symvers = KernelSymvers::search(dir.path(), dir.path(), "5.14.0-427.el9.x86_64");
        let in_tree = ModuleIndex::in_tree(dir.path());
        let input = CheckInput {
            kernel_release: "5.14.0-427.el9.x86_64",
            image_ref: IMAGE,
            in_tree: &in_tree,
        };
        let c = check_symbol_versions(&symvers, input, &[e1000(&[("a", 1)])], &mut vec![]);
        assert!(c.refused.is_none());
        assert_eq!(c.report.table, None);
        assert_eq!(c.report.checked, 0);
        assert!(c.report.unchecked[0].starts_with("no symvers for 5.14.0-427.el9.x86_64 (none of "));
        assert!(c.report.unchecked[0].ends_with(": the kernel checks them at load"));
    }

    /// Debian's e1000.ko of linux-image-6.1.0-57-amd64 (6.1.192-3): its `__versions` section,
    /// and the lines of linux-headers-6.1.0-57-amd64's Module.symvers (same version) for the
    /// 155 symbols it imports.
    const DEBIAN_E1000_VERSIONS: &[u8] =
        include_bytes!("../tests/fixtures/debian-6.1.0-57-e1000.versions");
    const DEBIAN_SYMVERS: &str = include_str!("../tests/fixtures/debian-6.1.0-57-e1000.symvers");

    #[test]
    fn debians_e1000_against_its_kernels_symvers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("symvers"), DEBIAN_SYMVERS).unwrap();
        let symvers = KernelSymvers::search(dir.path(), dir.path(), "6.1.0-57-amd64");
        let in_tree = ModuleIndex::in_tree(dir.path());
        let input = CheckInput {
            kernel_release: "6.1.0-57-amd64",
            image_ref: "debian/linux-image-6.1.0-57-amd64",
            in_tree: &in_tree,
        };
        let ko = |versions: &[u8]| {
            planned(
                "e1000",
                &elf_with_sections(&[(".modinfo", b"name=e1000\0"), ("__versions", versions)]),
                true,
            )
        };
        let c = check_symbol_versions(&symvers, input, &[ko(DEBIAN_E1000_VERSIONS)], &mut vec![]);
        assert!(c.refused.is_none(), "{:?}", c.refused);
        assert_eq!(c.report.checked, 155);
        // One bit of pci_enable_device's CRC flipped.
        let mut flipped = DEBIAN_E1000_VERSIONS.to_vec();
        let at = flipped
            .chunks(64)
            .position(|e| e[8..].starts_with(b"pci_enable_device\0"))
            .unwrap();
        flipped[at * 64] ^= 1;
        let c = check_symbol_versions(&symvers, input, &[ko(&flipped)], &mut vec![]);
        let e = c.refused.unwrap().to_string();
        let kernel_crc = DEBIAN_SYMVERS
            .lines()
            .find(|l| l.split('\t').nth(1) == Some("pci_enable_device"))
            .unwrap()
            .split('\t')
            .next()
            .unwrap();
        // The fixture's table says 0xcc0fd921, as Debian's Module.symvers does.
        assert_eq!(kernel_crc, "0xcc0fd921");
        assert!(
            e.ends_with(": e1000 imports pci_enable_device with CRC 0xcc0fd920, the kernel exports 0xcc0fd921 (rebuild the module for this kernel)"),
            "{e}"
        );
        assert_eq!(c.report.mismatches.len(), 1);
        assert_eq!(c.report.checked, 155);
    }
}
