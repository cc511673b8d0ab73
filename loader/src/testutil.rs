// SPDX-License-Identifier: Apache-2.0
//! Test helpers: minimal ELF64 modules with a real `.modinfo` section, compressors, a
//! node laid out in a temp dir, and a fake kernel with fault injection.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};

use kmod_day1_contract::ModuleSet;
use nix::errno::Errno;

use crate::decompress::{decompress, Compression};
use crate::kcmdline::ModuleCmdline;
use crate::kernel::{KernelModules, ModuleState};
use crate::modinfo::ModInfo;
use crate::modprobe_conf::{ModprobeConfig, MODPROBE_DIRS};
use crate::modules_dep::ModuleIndex;
use crate::plan::{LoadPlan, PlannedModule, Planner, PreflightError};

/// The running kernel of the tests.
pub const KVER: &str = "6.1.0-27-amd64";

/// An ELF64 little-endian relocatable file with one named section (plus `.shstrtab`).
pub fn elf_with_section(name: &str, data: &[u8]) -> Vec<u8> {
    elf_with_sections(&[(name, data)])
}

/// An ELF64 little-endian relocatable file with the named sections (plus `.shstrtab`), in
/// that order after the null section.
pub fn elf_with_sections(sections: &[(&str, &[u8])]) -> Vec<u8> {
    let mut shstrtab = vec![0u8];
    let mut name_offs = vec![];
    for (name, _) in sections {
        name_offs.push(shstrtab.len() as u32);
        shstrtab.extend_from_slice(name.as_bytes());
        shstrtab.push(0);
    }
    let shstrtab_name = shstrtab.len() as u32;
    shstrtab.extend_from_slice(b".shstrtab\0");
    let mut body = vec![];
    let mut offs = vec![];
    for (_, data) in sections {
        offs.push(64 + body.len());
        body.extend_from_slice(data);
        body.resize(body.len().div_ceil(8) * 8, 0);
    }
    let str_off = 64 + body.len();
    let shoff = (str_off + shstrtab.len()).div_ceil(8) * 8;
    let shnum = sections.len() + 2;
    let mut f = vec![0u8; shoff + shnum * 64];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // ELFCLASS64
    f[5] = 1; // little endian
    f[6] = 1; // EV_CURRENT
    f[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
    f[0x34..0x36].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f[0x3c..0x3e].copy_from_slice(&(shnum as u16).to_le_bytes()); // e_shnum
    f[0x3e..0x40].copy_from_slice(&((shnum - 1) as u16).to_le_bytes()); // e_shstrndx
    f[64..str_off].copy_from_slice(&body);
    f[str_off..str_off + shstrtab.len()].copy_from_slice(&shstrtab);
    let mut shdr = |i: usize, name_off: u32, ty: u32, off: usize, size: usize| {
        let h = &mut f[shoff + i * 64..shoff + (i + 1) * 64];
        h[0..4].copy_from_slice(&name_off.to_le_bytes());
        h[4..8].copy_from_slice(&ty.to_le_bytes());
        h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
        h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
        h[48..56].copy_from_slice(&1u64.to_le_bytes()); // sh_addralign
    };
    for (i, (_, data)) in sections.iter().enumerate() {
        shdr(i + 1, name_offs[i], 1, offs[i], data.len()); // SHT_PROGBITS
    }
    shdr(shnum - 1, shstrtab_name, 3, str_off, shstrtab.len()); // SHT_STRTAB
    f
}

/// A `__versions` section: one 64-byte `struct modversion_info` per import (x86_64).
pub fn versions_section(imports: &[(&str, u32)]) -> Vec<u8> {
    let mut v = vec![];
    for (name, crc) in imports {
        let mut e = [0u8; 64];
        e[..8].copy_from_slice(&u64::from(*crc).to_le_bytes());
        e[8..8 + name.len()].copy_from_slice(name.as_bytes());
        v.extend_from_slice(&e);
    }
    v
}

/// The `.modinfo` section of `fields`.
fn modinfo_section(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut data = vec![];
    for (k, v) in fields {
        data.extend_from_slice(format!("{k}={v}").as_bytes());
        data.push(0);
    }
    data.extend_from_slice(&[0, 0, 0]); // padding, as the linker leaves it
    data
}

/// A fake kernel module with `.modinfo` `fields`, importing `imports` (`__versions`) and
/// exporting `exports` (`__ksymtab_strings`).
pub fn fake_ko_with_symbols(
    fields: &[(&str, &str)],
    imports: &[(&str, u32)],
    exports: &[&str],
) -> Vec<u8> {
    let strings: Vec<u8> = exports.iter().flat_map(|e| e.bytes().chain([0])).collect();
    elf_with_sections(&[
        (".modinfo", &modinfo_section(fields)),
        ("__versions", &versions_section(imports)),
        ("__ksymtab_strings", &strings),
    ])
}

/// A fake kernel module: an ELF file whose `.modinfo` holds `fields`.
pub fn fake_ko(fields: &[(&str, &str)]) -> Vec<u8> {
    elf_with_section(".modinfo", &modinfo_section(fields))
}

/// xz-compresses (as `xz --check=crc32` would; the decoder does not care).
pub fn xz(data: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    lzma_rs::xz_compress(&mut io::BufReader::new(data), &mut out).unwrap();
    out
}

/// zstd-compresses.
pub fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

/// A node and a store tree in a temp dir.
pub struct Fixture {
    /// Keeps the temp dir alive.
    pub dir: tempfile::TempDir,
    node_modules: RefCell<Vec<(String, String, Vec<String>)>>,
}

/// The store tree id the fixture uses.
pub const TREE: &str = "ab12";

impl Fixture {
    pub fn new() -> Self {
        let f = Self {
            dir: tempfile::tempdir().unwrap(),
            node_modules: RefCell::new(vec![]),
        };
        std::fs::create_dir_all(f.image_dir()).unwrap();
        std::fs::create_dir_all(f.node_dir()).unwrap();
        std::fs::create_dir_all(f.config_dir()).unwrap();
        let fw = f.sysfs().join("module/firmware_class/parameters");
        std::fs::create_dir_all(&fw).unwrap();
        std::fs::write(fw.join("path"), "\n").unwrap();
        std::fs::write(f.path("cmdline"), "root=/dev/vda quiet\n").unwrap();
        std::fs::write(f.path("kmsg"), "").unwrap();
        f
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn store(&self) -> PathBuf {
        self.path("var/lib/kmod-day1")
    }
    pub fn image_dir(&self) -> PathBuf {
        self.store().join("trees").join(TREE).join("modules")
    }
    pub fn image_firmware(&self) -> PathBuf {
        self.store().join("trees").join(TREE).join("firmware")
    }
    pub fn modules_root(&self) -> PathBuf {
        self.path("lib/modules")
    }
    pub fn node_dir(&self) -> PathBuf {
        self.modules_root().join(KVER)
    }
    pub fn sysfs(&self) -> PathBuf {
        self.path("sys")
    }
    pub fn firmware_dir(&self) -> PathBuf {
        self.path("var/lib/firmware")
    }
    pub fn config_dir(&self) -> PathBuf {
        self.path("etc/kmod-day1/config.d")
    }
    pub fn status(&self) -> PathBuf {
        self.path("run/kmod-day1/status.json")
    }

    /// `<name>.ko` in the image, built for [`KVER`].
    pub fn image_module(&self, name: &str, srcversion: &str, depends: &[&str]) {
        let vermagic = format!("{KVER} SMP preempt mod_unload modversions ");
        let deps = depends.join(",");
        let version = format!("1.0-{name}");
        self.image_module_with(
            name,
            &[
                ("version", &version),
                ("srcversion", srcversion),
                ("depends", &deps),
                ("name", name),
                ("vermagic", &vermagic),
            ],
        );
    }

    pub fn image_module_with(&self, file_stem: &str, fields: &[(&str, &str)]) {
        std::fs::write(
            self.image_dir().join(format!("{file_stem}.ko")),
            fake_ko(fields),
        )
        .unwrap();
    }

    /// `<name>.ko` in the image, built for [`KVER`] with symbol versions: it imports
    /// `imports` with those CRCs (`__versions`) and exports `exports`.
    pub fn image_module_symbols(
        &self,
        name: &str,
        depends: &[&str],
        imports: &[(&str, u32)],
        exports: &[&str],
    ) {
        let vermagic = format!("{KVER} SMP preempt mod_unload modversions ");
        let deps = depends.join(",");
        let fields = [
            ("srcversion", "SRC"),
            ("depends", deps.as_str()),
            ("name", name),
            ("vermagic", vermagic.as_str()),
        ];
        std::fs::write(
            self.image_dir().join(format!("{name}.ko")),
            fake_ko_with_symbols(&fields, imports, exports),
        )
        .unwrap();
    }

    /// The node kernel's `symvers.gz` (as RHEL ships it) exporting `exports`
    /// (symbol, CRC, module or `vmlinux`).
    pub fn node_symvers(&self, exports: &[(&str, u32, &str)]) {
        use std::io::Write;
        let text: String = exports
            .iter()
            .map(|(s, crc, m)| format!("0x{crc:08x}\t{s}\t{m}\tEXPORT_SYMBOL\t\n"))
            .collect();
        let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        std::fs::write(self.node_dir().join("symvers.gz"), gz.finish().unwrap()).unwrap();
    }

    pub fn image_dep(&self, text: &str) {
        std::fs::write(self.image_dir().join("modules.dep"), text).unwrap();
    }

    /// A node module at `rel` (compressed per its extension) and its `modules.dep` line.
    pub fn node_module(&self, name: &str, rel: &str, deps: &[&str]) {
        let vermagic = format!("{KVER} SMP preempt mod_unload modversions ");
        let src = format!("INTREE-{name}");
        let d = deps.join(",");
        let ko = fake_ko(&[
            ("intree", "Y"),
            ("srcversion", &src),
            ("depends", &d),
            ("name", name),
            ("vermagic", &vermagic),
        ]);
        let bytes = match Compression::of(Path::new(rel)) {
            Compression::Xz => xz(&ko),
            Compression::Zstd => zstd(&ko),
            _ => ko,
        };
        let p = self.node_dir().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
        let mut mods = self.node_modules.borrow_mut();
        mods.push((
            name.into(),
            rel.into(),
            deps.iter().map(|s| s.to_string()).collect(),
        ));
        let rel_of = |n: &str| {
            mods.iter()
                .find(|m| m.0 == n)
                .map_or(format!("kernel/{n}.ko"), |m| m.1.clone())
        };
        let text: String = mods
            .iter()
            .map(|(_, rel, deps)| {
                let d: Vec<String> = deps.iter().map(|d| rel_of(d)).collect();
                format!("{rel}: {}\n", d.join(" "))
            })
            .collect();
        std::fs::write(self.node_dir().join("modules.dep"), text).unwrap();
    }

    pub fn node_builtin(&self, name: &str) {
        let p = self.node_dir().join("modules.builtin");
        let mut t = std::fs::read_to_string(&p).unwrap_or_default();
        t.push_str(&format!("kernel/{name}.ko\n"));
        std::fs::write(p, t).unwrap();
    }

    /// A module set named `s1` loading `modules` and removing `remove`.
    pub fn set(&self, modules: &[&str], remove: &[&str]) -> ModuleSet {
        let j = serde_json::json!({
            "name": "s1",
            "image": "registry.local/kmod/s1:v1",
            "modules": modules.iter().map(|m| serde_json::json!({"name": m})).collect::<Vec<_>>(),
            "inTreeModulesToRemove": remove,
        });
        serde_json::from_value(j).unwrap()
    }

    /// A file under the fixture's root, e.g. `etc/modprobe.d/x.conf`.
    pub fn modprobe_d(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn set_cmdline(&self, text: &str) {
        std::fs::write(self.path("cmdline"), text).unwrap();
    }

    /// The modprobe.d directories under the fixture's root.
    pub fn modprobe_dirs(&self) -> Vec<PathBuf> {
        MODPROBE_DIRS
            .iter()
            .map(|d| self.path(d.trim_start_matches('/')))
            .collect()
    }

    /// The node's modprobe configuration (fixture dirs, `modules.softdep`, command line).
    pub fn modprobe_config(&self) -> ModprobeConfig {
        let cmdline = std::fs::read_to_string(self.path("cmdline")).unwrap();
        ModprobeConfig::read(
            &self.modprobe_dirs(),
            &self.node_dir(),
            &ModuleCmdline::parse(&cmdline),
        )
    }

    pub fn plan_full(&self, set: &ModuleSet) -> Result<LoadPlan, PreflightError> {
        let image = ModuleIndex::image(self.image_dir());
        let node = ModuleIndex::in_tree(self.node_dir());
        let conf = self.modprobe_config();
        Planner::new(Some(&image), &node, &conf, KVER, &|_| false).plan_set(set)
    }

    pub fn plan(&self, set: &ModuleSet) -> Result<Vec<PlannedModule>, PreflightError> {
        self.plan_full(set).map(|p| p.modules)
    }

    pub fn plan_load_back(&self, name: &str) -> Result<LoadPlan, PreflightError> {
        let node = ModuleIndex::in_tree(self.node_dir());
        let conf = self.modprobe_config();
        Planner::new(None, &node, &conf, KVER, &|_| false).plan_load_back(name)
    }
}

/// A module in the fake kernel.
#[derive(Debug, Clone, Default)]
pub struct FakeModule {
    pub srcversion: Option<String>,
    pub version: Option<String>,
    pub taint: String,
    pub refcnt: u32,
    pub holders: BTreeSet<String>,
    pub deps: Vec<String>,
    pub params: String,
}

/// A kernel in memory: checks vermagic and dependencies like the real one, keeps holders
/// and refcounts, and fails on demand.
#[derive(Debug, Default)]
pub struct FakeKernel {
    pub release: String,
    pub loaded: BTreeMap<String, FakeModule>,
    pub builtin: BTreeSet<String>,
    /// Errors to return for the next loads of a module, in order.
    pub fail_load: HashMap<String, VecDeque<Errno>>,
    /// Errors to return for the next unloads of a module, in order.
    pub fail_unload: HashMap<String, VecDeque<Errno>>,
    /// Whether `MODULE_INIT_COMPRESSED_FILE` works (CONFIG_MODULE_DECOMPRESS).
    pub in_kernel_decompress: bool,
    /// `load <name>`, `unload <name>`, `init <name>` (userspace-decompressed), in order.
    pub calls: Vec<String>,
    /// udev loads the in-tree module of this name right before the n-th load of it.
    pub udev_race: Option<(String, usize)>,
    /// Where and what the fake kernel binds on load (`with_sysfs`).
    pub binds: Option<(PathBuf, Vec<BindRule>)>,
    messages: Vec<(String, String)>,
}

impl FakeKernel {
    pub fn new() -> Self {
        Self {
            release: KVER.into(),
            in_kernel_decompress: true,
            ..Default::default()
        }
    }

    /// An in-tree module loaded at boot.
    pub fn preload(&mut self, name: &str, srcversion: &str) {
        self.loaded.insert(
            name.into(),
            FakeModule {
                srcversion: Some(srcversion.into()),
                ..Default::default()
            },
        );
    }

    /// Binds devices in the fake sysfs at `root` when their modules load (by `rules`), and
    /// unbinds them when their modules go.
    pub fn with_sysfs(&mut self, root: &Path, rules: Vec<BindRule>) {
        self.binds = Some((root.to_owned(), rules));
    }

    fn bind_rules(&self, module: &str, f: impl Fn(&FakeSysfs, &BindRule)) {
        if let Some((root, rules)) = &self.binds {
            let s = FakeSysfs::at(root);
            for r in rules.iter().filter(|r| r.module == module) {
                f(&s, r);
            }
        }
    }

    pub fn fail_load(&mut self, name: &str, errno: Errno) {
        self.fail_load
            .entry(name.into())
            .or_default()
            .push_back(errno);
    }

    pub fn fail_unload(&mut self, name: &str, errno: Errno) {
        self.fail_unload
            .entry(name.into())
            .or_default()
            .push_back(errno);
    }

    fn insert(&mut self, image: &[u8], params: &CStr, how: &str) -> Result<(), Errno> {
        let info = ModInfo::from_image(image).map_err(|_| Errno::ENOEXEC)?;
        let name = info.name().ok_or(Errno::ENOEXEC)?.replace('-', "_");
        self.calls.push(format!("{how} {name}"));
        let attempts = self
            .calls
            .iter()
            .filter(|c| *c == &format!("load {name}") || *c == &format!("init {name}"))
            .count();
        if self
            .udev_race
            .as_ref()
            .is_some_and(|(n, at)| *n == name && *at == attempts)
        {
            self.preload(&name, "INTREE-udev");
        }
        if let Some(e) = self.fail_load.get_mut(&name).and_then(VecDeque::pop_front) {
            return Err(e);
        }
        if info.check_vermagic(&self.release).is_err() {
            return Err(Errno::ENOEXEC);
        }
        if self.loaded.contains_key(&name) {
            return Err(Errno::EEXIST);
        }
        let deps = info.depends();
        for d in &deps {
            if !self.loaded.contains_key(d) && !self.builtin.contains(d) {
                self.messages
                    .push((name.clone(), format!("Unknown symbol {d}_symbol (err -2)")));
                return Err(Errno::ENOENT);
            }
        }
        for d in &deps {
            if let Some(m) = self.loaded.get_mut(d) {
                m.holders.insert(name.clone());
                m.refcnt += 1;
            }
        }
        let oot = info.get("intree").is_none();
        self.bind_rules(&name, |s, r| {
            if r.out_of_tree == oot {
                s.bind(&r.bus, &r.device, &r.module, &r.module)
            }
        });
        self.loaded.insert(
            name,
            FakeModule {
                srcversion: info.srcversion().map(str::to_owned),
                version: info.version().map(str::to_owned),
                taint: if info.get("intree").is_some() {
                    ""
                } else {
                    "O"
                }
                .into(),
                deps,
                params: params.to_str().unwrap().to_owned(),
                ..Default::default()
            },
        );
        Ok(())
    }
}

impl KernelModules for FakeKernel {
    fn finit_module(&mut self, file: &File, params: &CStr, compressed: bool) -> Result<(), Errno> {
        let mut f = file.try_clone().unwrap();
        f.rewind().unwrap();
        let mut bytes = vec![];
        f.read_to_end(&mut bytes).unwrap();
        if compressed {
            if !self.in_kernel_decompress {
                return Err(Errno::EOPNOTSUPP);
            }
            let kind = if bytes.starts_with(b"\xfd7zXZ\0") {
                Compression::Xz
            } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                Compression::Zstd
            } else {
                return Err(Errno::EINVAL);
            };
            bytes = decompress(kind, &bytes[..]).map_err(|_| Errno::EINVAL)?;
        }
        self.insert(&bytes, params, "load")
    }

    fn init_module(&mut self, image: &[u8], params: &CStr) -> Result<(), Errno> {
        self.insert(image, params, "init")
    }

    fn delete_module(&mut self, name: &str) -> Result<(), Errno> {
        self.calls.push(format!("unload {name}"));
        if let Some(e) = self.fail_unload.get_mut(name).and_then(VecDeque::pop_front) {
            return Err(e);
        }
        let Some(m) = self.loaded.get(name) else {
            return Err(Errno::ENOENT);
        };
        if !m.holders.is_empty() || m.refcnt > 0 {
            return Err(Errno::EAGAIN);
        }
        let m = self.loaded.remove(name).unwrap();
        if let Some((root, _)) = &self.binds {
            FakeSysfs::at(root).unbind_module(name);
        }
        for d in m.deps {
            if let Some(dm) = self.loaded.get_mut(&d) {
                dm.holders.remove(name);
                dm.refcnt -= 1;
            }
        }
        Ok(())
    }

    fn module_state(&self, name: &str) -> io::Result<Option<ModuleState>> {
        if self.builtin.contains(name) {
            return Ok(Some(ModuleState {
                builtin: true,
                ..Default::default()
            }));
        }
        Ok(self.loaded.get(name).map(|m| ModuleState {
            builtin: false,
            refcnt: m.refcnt,
            holders: m.holders.iter().cloned().collect(),
            srcversion: m.srcversion.clone(),
            version: m.version.clone(),
            taint: m.taint.clone(),
        }))
    }

    fn kernel_messages(&mut self, module: &str) -> Vec<String> {
        let (mine, rest) = std::mem::take(&mut self.messages)
            .into_iter()
            .partition(|(m, _)| m == module);
        self.messages = rest;
        mine.into_iter().map(|(_, s)| s).collect()
    }
}

/// Devices, drivers and their links laid out as `/sys` has them: `devices/<bus>0/<name>`
/// (with `modalias` and `net/<iface>`), `bus/<bus>/devices/<name>` and, when bound,
/// `<device>/driver`, `bus/<bus>/drivers/<driver>/{<name>,module}` and
/// `module/<m>/drivers/<bus>:<driver>`.
pub struct FakeSysfs {
    root: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl FakeSysfs {
    /// In a temp dir of its own.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            root: dir.path().to_owned(),
            _dir: Some(dir),
        }
    }

    /// At `root` (a fixture's `sys`).
    pub fn at(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            _dir: None,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn device_dir(&self, bus: &str, name: &str) -> PathBuf {
        self.root.join("devices").join(format!("{bus}0")).join(name)
    }

    pub fn device(&self, bus: &str, name: &str, modalias: &str, iface: Option<&str>) {
        let d = self.device_dir(bus, name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("modalias"), format!("{modalias}\n")).unwrap();
        if let Some(i) = iface {
            std::fs::create_dir_all(d.join("net").join(i)).unwrap();
        }
        let link = self.root.join("bus").join(bus).join("devices");
        std::fs::create_dir_all(&link).unwrap();
        std::os::unix::fs::symlink(&d, link.join(name)).unwrap();
    }

    pub fn bind(&self, bus: &str, name: &str, driver: &str, module: &str) {
        let drv = self.root.join("bus").join(bus).join("drivers").join(driver);
        let m = self.root.join("module").join(module);
        std::fs::create_dir_all(&drv).unwrap();
        std::fs::create_dir_all(m.join("drivers")).unwrap();
        let _ = std::fs::remove_file(drv.join("module"));
        std::os::unix::fs::symlink(&m, drv.join("module")).unwrap();
        let _ = std::fs::remove_file(m.join("drivers").join(format!("{bus}:{driver}")));
        std::os::unix::fs::symlink(&drv, m.join("drivers").join(format!("{bus}:{driver}")))
            .unwrap();
        let d = self.device_dir(bus, name);
        std::os::unix::fs::symlink(&d, drv.join(name)).unwrap();
        std::os::unix::fs::symlink(&drv, d.join("driver")).unwrap();
    }

    pub fn unbind(&self, bus: &str, name: &str) {
        let d = self.device_dir(bus, name);
        if let Ok(drv) = std::fs::read_link(d.join("driver")) {
            let _ = std::fs::remove_file(drv.join(name));
            std::fs::remove_file(d.join("driver")).unwrap();
        }
    }

    /// Unbinds every device a driver of `module` has, as the kernel does when the module
    /// goes.
    pub fn unbind_module(&self, module: &str) {
        let Ok(buses) = std::fs::read_dir(self.root.join("bus")) else {
            return;
        };
        for bus in buses.flatten() {
            let Ok(devs) = std::fs::read_dir(bus.path().join("devices")) else {
                continue;
            };
            for d in devs.flatten() {
                let name = d.file_name().into_string().unwrap();
                let bus = bus.file_name().into_string().unwrap();
                if self.driver_module(&bus, &name).as_deref() == Some(module) {
                    self.unbind(&bus, &name);
                }
            }
        }
    }

    /// The module bound to the device, by the same links the loader reads.
    pub fn driver_module(&self, bus: &str, name: &str) -> Option<String> {
        crate::binding::driving_module(&self.device_dir(bus, name))
    }
}

/// A device the fake kernel binds when a module of that name and build loads (its driver
/// named as the module). Every module unbinds its devices when it goes.
#[derive(Debug, Clone)]
pub struct BindRule {
    pub module: String,
    pub bus: String,
    pub device: String,
    /// Binds when the out-of-tree build loads (no `intree` modinfo), else the in-tree one.
    pub out_of_tree: bool,
}

impl BindRule {
    pub fn new(module: &str, bus: &str, device: &str, out_of_tree: bool) -> Self {
        Self {
            module: module.into(),
            bus: bus.into(),
            device: device.into(),
            out_of_tree,
        }
    }
}
