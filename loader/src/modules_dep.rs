// SPDX-License-Identifier: Apache-2.0
//! `modules.dep` as depmod writes it, and the index of a module directory built from it.
//!
//! ```text
//! kernel/drivers/net/ethernet/intel/ice/ice.ko.xz: kernel/drivers/dpll/dpll.ko.xz kernel/lib/gnss.ko.xz
//! ```
//!
//! Each line names a module file (relative to `/lib/modules/<kver>`, or absolute) and every
//! module it needs, transitively. A directory without `modules.dep` (an image built
//! without running depmod) is indexed by walking it for `*.ko*` files; dependencies then
//! come from each module's `depends=` modinfo field.

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

/// One module in an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepEntry {
    /// The module file.
    pub path: PathBuf,
    /// Names (kernel form, `_` for `-`) of the modules it needs, as listed.
    pub deps: Vec<String>,
}

/// The kernel's name for a module file: `kernel/x/ice-foo.ko.xz` -> `ice_foo`.
fn module_name_of(path: &str) -> Option<String> {
    let base = path.rsplit('/').next()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| base.strip_suffix(ext))?;
    (!stem.is_empty()).then(|| stem.replace('-', "_"))
}

/// Parses one `modules.dep` line (`None` for blank lines and comments). `n` is the line
/// number for messages.
fn parse_line(
    base: &Path,
    n: usize,
    line: &str,
    contained: bool,
) -> Result<Option<(String, DepEntry)>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let Some((module, deps)) = line.split_once(':') else {
        return Err(format!("modules.dep line {n}: no ':' in {line:?}"));
    };
    let resolve = |p: &str| -> Result<(String, PathBuf), String> {
        let name = module_name_of(p)
            .ok_or_else(|| format!("modules.dep line {n}: {p:?} is not a module file"))?;
        let rel = Path::new(p);
        if contained
            && rel
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!(
                "modules.dep line {n}: {p:?} points outside the module directory"
            ));
        }
        Ok((name, base.join(rel)))
    };
    let (name, path) = resolve(module.trim())?;
    let mut names = vec![];
    for d in deps.split_whitespace() {
        names.push(resolve(d)?.0);
    }
    Ok(Some((name, DepEntry { path, deps: names })))
}

/// Whether the module file named at the start of `line` (up to `:`) is module `name`
/// (kernel form), without allocating: the node's `modules.dep` has thousands of lines
/// and is scanned on the boot path.
fn names_module(line: &str, name: &str) -> bool {
    let path = line.split(':').next().unwrap_or_default().trim();
    let base = path.rsplit('/').next().unwrap_or_default();
    let Some(stem) = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| base.strip_suffix(ext))
    else {
        return false;
    };
    stem.len() == name.len()
        && stem
            .bytes()
            .zip(name.bytes())
            .all(|(a, b)| a == b || (a == b'-' && b == b'_'))
}

/// Parses all of a `modules.dep` text. Relative paths are joined to `base`. With
/// `contained`, a path that is absolute or climbs out with `..` is an error (an image is
/// untrusted input). When a module is listed twice, the first line wins, as in modprobe.
/// The loader itself looks up one module at a time ([`ModuleIndex::lookup`]); this reads
/// every line the same way, for the tests.
#[cfg(test)]
pub fn parse_modules_dep(
    base: &Path,
    text: &str,
    contained: bool,
) -> Result<HashMap<String, DepEntry>, String> {
    let mut map = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        if let Some((name, e)) = parse_line(base, n + 1, line, contained)? {
            map.entry(name).or_insert(e);
        }
    }
    Ok(map)
}

/// Module names listed in `modules.builtin` (built into the kernel: nothing to load).
fn parse_modules_builtin(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|l| module_name_of(l.trim()))
        .collect()
}

/// A module directory (`/lib/modules/<kver>` or a store tree's `modules/`). Files are read
/// on first use and scanned per lookup rather than parsed whole: most boots never need
/// the node's `modules.dep` (0.5 MiB), and those that do look up a handful of names.
#[derive(Debug)]
pub struct ModuleIndex {
    base: PathBuf,
    contained: bool,
    loaded: OnceCell<Result<Indexed, String>>,
    builtin: OnceCell<HashSet<String>>,
}

#[derive(Debug)]
enum Indexed {
    /// The text of `modules.dep`.
    Dep(String),
    /// No `modules.dep`: the `*.ko*` files found.
    Walked(HashMap<String, DepEntry>),
}

impl ModuleIndex {
    /// The node's modules, `/lib/modules/<kver>`: trusted paths.
    pub fn in_tree(base: impl Into<PathBuf>) -> Self {
        Self::new(base.into(), false)
    }

    /// An image's modules: paths must stay inside `base`.
    pub fn image(base: impl Into<PathBuf>) -> Self {
        Self::new(base.into(), true)
    }

    fn new(base: PathBuf, contained: bool) -> Self {
        Self {
            base,
            contained,
            loaded: OnceCell::new(),
            builtin: OnceCell::new(),
        }
    }

    /// The directory indexed.
    pub fn base(&self) -> &Path {
        &self.base
    }

    fn indexed(&self) -> Result<&Indexed, String> {
        self.loaded
            .get_or_init(|| self.read())
            .as_ref()
            .map_err(Clone::clone)
    }

    fn read(&self) -> Result<Indexed, String> {
        let dep = self.base.join("modules.dep");
        match std::fs::read_to_string(&dep) {
            Ok(text) => Ok(Indexed::Dep(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut m = HashMap::new();
                walk_modules(&self.base, &mut m, 0);
                Ok(Indexed::Walked(m))
            }
            Err(e) => Err(format!("reading {}: {e}", dep.display())),
        }
    }

    /// The module called `name` (kernel form), if this directory has it.
    pub fn lookup(&self, name: &str) -> Result<Option<DepEntry>, String> {
        match self.indexed()? {
            Indexed::Walked(m) => Ok(m.get(name).cloned()),
            Indexed::Dep(text) => {
                for (n, line) in text.lines().enumerate() {
                    if names_module(line, name) {
                        let dep = self.base.join("modules.dep");
                        return parse_line(&self.base, n + 1, line, self.contained)
                            .map(|e| e.map(|(_, e)| e))
                            .map_err(|e| format!("{}: {e}", dep.display()));
                    }
                }
                Ok(None)
            }
        }
    }

    /// Whether `name` is built into the kernel, per `modules.builtin`.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin
            .get_or_init(|| {
                std::fs::read_to_string(self.base.join("modules.builtin"))
                    .map(|t| parse_modules_builtin(&t))
                    .unwrap_or_default()
            })
            .contains(name)
    }
}

/// Indexes `*.ko*` files under `dir` (symlinks are not followed: an image cannot point
/// the loader elsewhere).
fn walk_modules(dir: &Path, out: &mut HashMap<String, DepEntry>, depth: u32) {
    if depth > 16 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(ft) = e.file_type() else { continue };
        let path = e.path();
        if ft.is_dir() {
            walk_modules(&path, out, depth + 1);
        } else if ft.is_file() {
            if let Some(name) = path.to_str().and_then(module_name_of) {
                out.entry(name).or_insert(DepEntry { path, deps: vec![] });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_files() {
        assert_eq!(module_name_of("kernel/a/ice.ko.xz").as_deref(), Some("ice"));
        assert_eq!(
            module_name_of("extra/kmm-ci-a.ko").as_deref(),
            Some("kmm_ci_a")
        );
        assert_eq!(module_name_of("x.ko.zst").as_deref(), Some("x"));
        assert_eq!(module_name_of("x.ko.gz").as_deref(), Some("x"));
        assert_eq!(module_name_of("x.o"), None);
        assert_eq!(module_name_of(".ko"), None);
    }

    #[test]
    fn parses_depmod_output() {
        let text = "kernel/net/ice.ko.xz: kernel/dpll.ko.xz kernel/lib/gnss-x.ko.xz\n\
                    kernel/dpll.ko.xz:\n\n# comment\nkernel/lib/gnss-x.ko.xz:\n";
        let m = parse_modules_dep(Path::new("/lib/modules/k"), text, false).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(
            m["ice"].path,
            Path::new("/lib/modules/k/kernel/net/ice.ko.xz")
        );
        assert_eq!(m["ice"].deps, vec!["dpll", "gnss_x"]);
        assert!(m["dpll"].deps.is_empty());
    }

    #[test]
    fn rejects_bad_lines() {
        let base = Path::new("/t");
        assert!(parse_modules_dep(base, "no colon here", false)
            .unwrap_err()
            .contains("line 1"));
        assert!(parse_modules_dep(base, "a.ko: b.txt", false)
            .unwrap_err()
            .contains("b.txt"));
        // An image may not point outside its tree; the node's own file may be absolute.
        for bad in ["../../etc/x.ko:", "/etc/x.ko:", "a.ko: ../b.ko"] {
            let e = parse_modules_dep(base, bad, true).unwrap_err();
            assert!(e.contains("outside"), "{bad}: {e}");
        }
        assert!(parse_modules_dep(base, "/abs/x.ko:", false).is_ok());
    }

    #[test]
    fn hostile_text_is_an_error_never_a_panic() {
        // A small deterministic generator: no dependency for a fuzz-style loop.
        let alphabet = b"ab-_./:\n #ko.xzst\xff\x00";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut t = vec![];
            for _ in 0..(x % 64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                t.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let text = String::from_utf8_lossy(&t);
            let _ = parse_modules_dep(Path::new("/b"), &text, true);
            let _ = parse_modules_builtin(&text);
            let _ = names_module(&text, "a");
            let _ = crate::kmsg::parse_module_messages(&text, "a");
        }
    }

    #[test]
    fn index_reads_lazily_and_falls_back_to_walking() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("extra/sub")).unwrap();
        std::fs::write(d.path().join("extra/sub/oot-a.ko"), b"x").unwrap();
        std::fs::write(d.path().join("notes.txt"), b"x").unwrap();
        let idx = ModuleIndex::image(d.path());
        let e = idx.lookup("oot_a").unwrap().unwrap();
        assert!(names_module("kernel/x/oot-a.ko.xz: y.ko", "oot_a"));
        assert!(!names_module("kernel/x/oot-ab.ko:", "oot_a"));
        assert!(!names_module("kernel/x/oot_a.o:", "oot_a"));
        assert_eq!(e.path, d.path().join("extra/sub/oot-a.ko"));
        assert!(idx.lookup("notes").unwrap().is_none());

        let d2 = tempfile::tempdir().unwrap();
        std::fs::write(
            d2.path().join("modules.dep"),
            "kernel/a.ko: kernel/b.ko\nkernel/b.ko:\n",
        )
        .unwrap();
        std::fs::write(d2.path().join("modules.builtin"), "kernel/c.ko\n").unwrap();
        let idx = ModuleIndex::in_tree(d2.path());
        assert_eq!(idx.lookup("a").unwrap().unwrap().deps, vec!["b"]);
        assert!(idx.is_builtin("c"));
        assert!(!idx.is_builtin("a"));

        let d3 = tempfile::tempdir().unwrap();
        std::fs::write(d3.path().join("modules.dep"), "../x.ko:\n").unwrap();
        let e = ModuleIndex::image(d3.path()).lookup("x").unwrap_err();
        assert!(e.contains("modules.dep") && e.contains("outside"), "{e}");
    }
}
