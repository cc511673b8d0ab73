// SPDX-License-Identifier: Apache-2.0
//! The node's modprobe configuration, read as kmod reads it (`kmod_config_new`,
//! libkmod-config.c), so that what an admin configured for modprobe applies to what
//! kmod-day1-load loads.
//!
//! Which kmod: the directory list is kmod 32-34's (`/etc/modprobe.d`, `/run/modprobe.d`,
//! `/usr/local/lib/modprobe.d`, `/usr/lib/modprobe.d`, `/lib/modprobe.d`). Debian 12's kmod 30
//! and kmod 31 lack `/usr/lib/modprobe.d`, RHEL 9's kmod 28 also `/usr/local/lib/modprobe.d`;
//! on a merged-/usr node (both) `/lib` is `/usr/lib`, so only `/usr/local/lib/modprobe.d` can
//! differ, and `--modprobe-dir` sets the list. The rules are the same in kmod 28-34:
//!
//! - in each directory, the files whose names end in `.conf` or `.alias` and do not start
//!   with `.`; a file name seen in an earlier directory hides the later ones (a directory
//!   reached twice, `/lib` -> `/usr/lib`, adds nothing); all files are then read in the
//!   lexical (byte) order of their names, whatever their directory. The module directory's
//!   `modules.softdep` (depmod's copy of the modules' `softdep` modinfo) takes part in that
//!   order under its own name.
//! - a line ending in `\` continues on the next; `#` first on a line is a comment; words are
//!   separated by spaces and tabs.
//! - `options M OPTS` (every matching line, in order), `softdep M pre: A post: B` (the first
//!   line whose pattern matches), `blacklist M`, `alias PATTERN M`, `install M CMD` and
//!   `remove M CMD` (the first matching line); module names with `-` read as `_`.
//! - then the kernel command line's `M.param=value` words, as `options` lines after all files,
//!   and `modprobe.blacklist=` (see `kcmdline.rs`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::fnmatch::fnmatch;
use crate::kcmdline::{underscores, ModuleCmdline};

/// The modprobe.d directories kmod reads, in order (kmod 32-34; see the module docs).
pub const MODPROBE_DIRS: &[&str] = &[
    "/etc/modprobe.d",
    "/run/modprobe.d",
    "/usr/local/lib/modprobe.d",
    "/usr/lib/modprobe.d",
    "/lib/modprobe.d",
];

/// Where a configuration line comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// A file and the (first) line number of the line.
    File(PathBuf, usize),
    /// The kernel command line.
    KernelCmdline,
    /// The `softdep` modinfo of an image module.
    Modinfo(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p, n) => write!(f, "{}:{n}", p.display()),
            Self::KernelCmdline => f.write_str("kernel command line"),
            Self::Modinfo(p) => write!(f, "softdep modinfo of {}", p.display()),
        }
    }
}

/// `options MODULE OPTIONS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionsLine {
    /// Module name (or alias) it applies to.
    pub module: String,
    /// The options as written (tabs turned to spaces).
    pub options: String,
    pub source: Source,
}

/// `softdep PATTERN pre: ... post: ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftdepLine {
    /// fnmatch pattern for module names.
    pub pattern: String,
    /// Modules (or aliases) loaded before.
    pub pre: Vec<String>,
    /// Modules (or aliases) loaded after.
    pub post: Vec<String>,
    pub source: Source,
    /// From the module directory's `modules.softdep`: about the in-tree module of that name.
    pub from_depmod: bool,
}

/// `install`/`remove PATTERN COMMAND`, or `alias PATTERN MODULE`, or `blacklist MODULE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedLine {
    /// The module name or fnmatch pattern.
    pub pattern: String,
    /// The command, the alias's module, or empty for `blacklist`.
    pub value: String,
    pub source: Source,
}

/// Everything modprobe would read, in kmod's order.
#[derive(Debug, Clone, Default)]
pub struct ModprobeConfig {
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    pub options: Vec<OptionsLine>,
    pub softdeps: Vec<SoftdepLine>,
    /// Index in `softdeps` where `modules.softdep`'s lines are (or would be).
    pub depmod_softdep_slot: usize,
    pub blacklist: Vec<NamedLine>,
    pub aliases: Vec<NamedLine>,
    pub install: Vec<NamedLine>,
    pub remove: Vec<NamedLine>,
    /// Lines kmod ignores, and files it cannot read, as kmod would log them.
    pub warnings: Vec<String>,
    /// The kernel's `module_blacklist=`.
    pub kernel_blacklist: Vec<String>,
}

impl ModprobeConfig {
    /// Reads `dirs` (directories or single files, in order), the module directory's
    /// `modules.softdep`, and the kernel command line's module words.
    pub fn read(dirs: &[PathBuf], module_dir: &Path, cmdline: &ModuleCmdline) -> Self {
        let mut c = Self::default();
        // (name, path); sorted by name, first seen wins.
        let mut files: Vec<(String, PathBuf)> =
            vec![("modules.softdep".into(), module_dir.join("modules.softdep"))];
        let mut seen_dirs = HashSet::new();
        for dir in dirs {
            if let Ok(canonical) = dir.canonicalize() {
                if !seen_dirs.insert(canonical) {
                    continue;
                }
            }
            let meta = match std::fs::metadata(dir) {
                Ok(m) => m,
                Err(_) => continue, // absent: nothing configured there
            };
            if !meta.is_dir() {
                let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
                if let Some(name) = name {
                    insert_sorted(&mut files, name, dir.clone());
                }
                continue;
            }
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) => {
                    c.warnings.push(format!("reading {}: {e}", dir.display()));
                    continue;
                }
            };
            for e in entries.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                let wanted = !name.starts_with('.')
                    && name.len() >= 6
                    && (name.ends_with(".conf") || name.ends_with(".alias"));
                if !wanted || e.path().is_dir() {
                    continue;
                }
                insert_sorted(&mut files, name, e.path());
            }
        }
        for (name, path) in files {
            let depmod = name == "modules.softdep" && path.parent() == Some(module_dir);
            if depmod {
                c.depmod_softdep_slot = c.softdeps.len();
            }
            match std::fs::read(&path) {
                Ok(bytes) => {
                    c.files.push(path.clone());
                    c.parse(&String::from_utf8_lossy(&bytes), &path, depmod);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => c.warnings.push(format!("reading {}: {e}", path.display())),
            }
        }
        for (module, option) in &cmdline.options {
            c.options.push(OptionsLine {
                module: module.clone(),
                options: option.clone(),
                source: Source::KernelCmdline,
            });
        }
        for m in &cmdline.modprobe_blacklist {
            c.blacklist.push(NamedLine {
                pattern: m.clone(),
                value: String::new(),
                source: Source::KernelCmdline,
            });
        }
        c.kernel_blacklist = cmdline.kernel_blacklist.clone();
        c
    }

    /// Parses one file's text (`kmod_config_parse`).
    fn parse(&mut self, text: &str, path: &Path, from_depmod: bool) {
        for (n, line) in logical_lines(text) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let source = Source::File(path.to_owned(), n);
            let mut rest = line.as_str();
            let Some(cmd) = word(&mut rest) else { continue };
            let name = word(&mut rest).and_then(underscores);
            let ok = match (cmd, name) {
                ("alias", Some(pattern)) => match word(&mut rest).and_then(underscores) {
                    Some(module) => {
                        self.aliases.push(NamedLine {
                            pattern,
                            value: module,
                            source,
                        });
                        true
                    }
                    None => false,
                },
                ("blacklist", Some(module)) => {
                    self.blacklist.push(NamedLine {
                        pattern: module,
                        value: String::new(),
                        source,
                    });
                    true
                }
                ("options", Some(module)) if !rest.is_empty() => {
                    self.options.push(OptionsLine {
                        module,
                        options: rest.replace('\t', " "),
                        source,
                    });
                    true
                }
                ("install" | "remove", Some(pattern)) if !rest.is_empty() => {
                    let l = NamedLine {
                        pattern,
                        value: rest.to_owned(),
                        source,
                    };
                    if cmd == "install" {
                        self.install.push(l);
                    } else {
                        self.remove.push(l);
                    }
                    true
                }
                ("softdep", Some(pattern)) if !rest.is_empty() => {
                    let (pre, post) = parse_softdep(rest);
                    self.softdeps.push(SoftdepLine {
                        pattern,
                        pre,
                        post,
                        source,
                        from_depmod,
                    });
                    true
                }
                ("include" | "config", _) => {
                    self.warnings.push(format!(
                        "{}: command {cmd} is deprecated and not parsed anymore",
                        path.display()
                    ));
                    true
                }
                _ => false,
            };
            if !ok {
                self.warnings.push(format!(
                    "{}: ignoring bad line starting with '{cmd}'",
                    Source::File(path.to_owned(), n)
                ));
            }
        }
    }

    /// `options` for module `name` (and the alias it was reached through), in order.
    pub fn options_for<'a>(
        &'a self,
        name: &'a str,
        alias: Option<&'a str>,
    ) -> impl Iterator<Item = &'a OptionsLine> + 'a {
        self.options
            .iter()
            .filter(move |o| o.module == name || Some(o.module.as_str()) == alias)
            .filter(|o| !o.options.is_empty())
    }

    /// The first `softdep` line for `name`. For an image module, `modules.softdep` (about the
    /// in-tree module of that name) is replaced by the image module's own `softdep` modinfo, at
    /// the same place in the order.
    pub fn softdep_for<'a>(
        &'a self,
        name: &str,
        image_softdep: Option<&'a SoftdepLine>,
        is_image: bool,
    ) -> Option<&'a SoftdepLine> {
        for (i, s) in self.softdeps.iter().enumerate() {
            if i == self.depmod_softdep_slot {
                if let Some(own) = image_softdep {
                    return Some(own);
                }
            }
            if is_image && s.from_depmod {
                continue;
            }
            if fnmatch(&s.pattern, name) {
                return Some(s);
            }
        }
        image_softdep
    }

    /// The first `install` line matching `name`.
    pub fn install_for(&self, name: &str) -> Option<&NamedLine> {
        self.install.iter().find(|l| fnmatch(&l.pattern, name))
    }

    /// The first `remove` line matching `name`.
    pub fn remove_for(&self, name: &str) -> Option<&NamedLine> {
        self.remove.iter().find(|l| fnmatch(&l.pattern, name))
    }

    /// The `blacklist` line naming `name`.
    pub fn blacklisted(&self, name: &str) -> Option<&NamedLine> {
        self.blacklist.iter().find(|l| l.pattern == name)
    }

    /// Whether the kernel's `module_blacklist=` names `name`.
    pub fn kernel_refuses(&self, name: &str) -> bool {
        self.kernel_blacklist.iter().any(|b| b == name)
    }
}

/// A module's own `softdep` modinfo value, as depmod would write it to `modules.softdep`.
pub fn softdep_from_modinfo(name: &str, value: &str, path: &Path) -> SoftdepLine {
    let (pre, post) = parse_softdep(value);
    SoftdepLine {
        pattern: name.to_owned(),
        pre,
        post,
        source: Source::Modinfo(path.to_owned()),
        from_depmod: false,
    }
}

/// Inserts `(name, path)` in name order unless the name is already there.
fn insert_sorted(files: &mut Vec<(String, PathBuf)>, name: String, path: PathBuf) {
    match files.binary_search_by(|(n, _)| n.as_bytes().cmp(name.as_bytes())) {
        Ok(_) => {}
        Err(i) => files.insert(i, (name, path)),
    }
}

/// Lines as kmod's `freadline_wrapped` returns them, with the number of their first physical
/// line: `\` + newline joins lines, `\` before any other byte is dropped.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = vec![];
    let mut line = String::new();
    let mut n = 1;
    let mut first = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                out.push((first, std::mem::take(&mut line)));
                n += 1;
                first = n;
            }
            '\\' => match chars.next() {
                Some('\n') => n += 1,
                Some(c) => line.push(c),
                None => {}
            },
            c => line.push(c),
        }
    }
    if !line.is_empty() {
        out.push((first, line));
    }
    out
}

/// The next word separated by spaces and tabs (`strtok_r(.., "\t ")`); `rest` is left after
/// the one separator that ended it.
fn word<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let s = rest.trim_start_matches([' ', '\t']);
    if s.is_empty() {
        *rest = s;
        return None;
    }
    match s.find([' ', '\t']) {
        Some(i) => {
            *rest = &s[i + 1..];
            Some(&s[..i])
        }
        None => {
            *rest = &s[s.len()..];
            Some(s)
        }
    }
}

/// `pre: a b post: c` -> `([a, b], [c])`; words before the first `pre:`/`post:` are ignored.
fn parse_softdep(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut pre, mut post) = (vec![], vec![]);
    let mut mode = 0;
    // C's isspace: space, \t, \n, \v, \f, \r.
    for w in text
        .split([' ', '\t', '\n', '\x0b', '\x0c', '\r'])
        .filter(|w| !w.is_empty())
    {
        match (w, mode) {
            ("pre:", _) => mode = 1,
            ("post:", _) => mode = 2,
            (w, 1) => pre.push(w.to_owned()),
            (w, 2) => post.push(w.to_owned()),
            _ => {}
        }
    }
    (pre, post)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn dirs(root: &Path) -> Vec<PathBuf> {
        MODPROBE_DIRS
            .iter()
            .map(|d| root.join(d.trim_start_matches('/')))
            .collect()
    }

    #[test]
    fn directories_in_kmods_order_and_precedence() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(r, "etc/modprobe.d/50-e1000.conf", "options e1000 a=etc\n");
        write(
            r,
            "usr/lib/modprobe.d/50-e1000.conf",
            "options e1000 a=usr\n",
        );
        write(r, "usr/lib/modprobe.d/10-first.conf", "options e1000 b=1\n");
        write(r, "run/modprobe.d/90-last.alias", "options e1000 c=1\n");
        write(r, "usr/local/lib/modprobe.d/README", "options e1000 d=1\n");
        write(
            r,
            "usr/local/lib/modprobe.d/.hidden.conf",
            "options e1000 d=1\n",
        );
        write(
            r,
            "lib/modules/k/modules.softdep",
            "softdep e1000 pre: ptp\n",
        );
        std::fs::create_dir_all(r.join("etc/modprobe.d/dir.conf")).unwrap();
        // /lib -> usr/lib: the same directory twice counts once.
        std::fs::create_dir_all(r.join("lib")).unwrap();
        std::os::unix::fs::symlink("../usr/lib/modprobe.d", r.join("lib/modprobe.d")).unwrap();
        let c = ModprobeConfig::read(&dirs(r), &r.join("lib/modules/k"), &Default::default());
        let files: Vec<_> = c
            .files
            .iter()
            .map(|p| p.strip_prefix(r).unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            files,
            [
                "usr/lib/modprobe.d/10-first.conf",
                "etc/modprobe.d/50-e1000.conf",
                "run/modprobe.d/90-last.alias",
                "lib/modules/k/modules.softdep",
            ]
        );
        let opts: Vec<_> = c
            .options_for("e1000", None)
            .map(|o| o.options.as_str())
            .collect();
        assert_eq!(opts, ["b=1", "a=etc", "c=1"]);
        assert!(c.softdeps[0].from_depmod);
        assert_eq!(c.depmod_softdep_slot, 0);
    }

    #[test]
    fn lines_as_kmod_reads_them() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(
            r,
            "etc/modprobe.d/a.conf",
            "# comment\n\
             options  e1000-x   a=1\tb=\"x y\"  \n\
             options e1000_x \\\n  c=3\n\
             softdep snd-* pre: soundcore  x  post: snd_timer\n\
             softdep e1000 ignored pre:\n\
             blacklist nouveau\n\
             alias my-nic e1000\n\
             install ice /bin/false\n\
             remove ice /sbin/rmmod ice\n\
             options lonely\n\
             bogus line\n\
             \x20 # indented comment\n\
             include /etc/x\n",
        );
        let c = ModprobeConfig::read(&dirs(r), &r.join("none"), &Default::default());
        let opts: Vec<_> = c
            .options_for("e1000_x", None)
            .map(|o| (o.options.as_str(), o.source.to_string()))
            .collect();
        let a = r.join("etc/modprobe.d/a.conf").display().to_string();
        assert_eq!(
            opts,
            [
                ("  a=1 b=\"x y\"  ", format!("{a}:2")),
                ("  c=3", format!("{a}:3"))
            ]
        );
        let s = c.softdep_for("snd_pcm", None, false).unwrap();
        assert_eq!(
            (s.pre.as_slice(), s.post.as_slice()),
            (
                &["soundcore".to_string(), "x".into()][..],
                &["snd_timer".to_string()][..]
            )
        );
        assert_eq!(s.pattern, "snd_*");
        assert!(c.softdep_for("e1000", None, false).unwrap().pre.is_empty());
        assert_eq!(
            c.blacklisted("nouveau").unwrap().source.to_string(),
            format!("{a}:7")
        );
        assert_eq!(c.aliases[0].pattern, "my_nic");
        assert_eq!(c.install_for("ice").unwrap().value, "/bin/false");
        assert_eq!(c.remove_for("ice").unwrap().value, "/sbin/rmmod ice");
        assert!(c.install_for("e1000").is_none());
        let w = c.warnings.join("\n");
        assert!(
            w.contains(&format!(
                "{a}:11: ignoring bad line starting with 'options'"
            )),
            "{w}"
        );
        assert!(
            w.contains(&format!("{a}:12: ignoring bad line starting with 'bogus'")),
            "{w}"
        );
        assert!(w.contains("starting with '#'"), "{w}");
        assert!(w.contains("command include is deprecated"), "{w}");
    }

    #[test]
    fn command_line_comes_last_and_image_softdeps_take_depmods_place() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(
            r,
            "etc/modprobe.d/z.conf",
            "options ice a=1\nsoftdep ice* post: zz\n",
        );
        write(r, "etc/modprobe.d/a.conf", "softdep dpll pre: x\n");
        write(
            r,
            "lib/modules/k/modules.softdep",
            "softdep ice pre: intree\n",
        );
        let cmd = ModuleCmdline::parse("ice.b=2 modprobe.blacklist=ice module_blacklist=bad");
        let c = ModprobeConfig::read(&dirs(r), &r.join("lib/modules/k"), &cmd);
        let opts: Vec<_> = c
            .options_for("ice", None)
            .map(|o| (o.options.as_str(), o.source.clone()))
            .collect();
        assert_eq!(opts[1], ("b=2", Source::KernelCmdline));
        assert!(c.blacklisted("ice").is_some());
        assert!(c.kernel_refuses("bad"));
        // a.conf < modules.softdep < z.conf
        assert_eq!(c.depmod_softdep_slot, 1);
        assert_eq!(c.softdep_for("ice", None, false).unwrap().pre, ["intree"]);
        let own = softdep_from_modinfo("ice", "pre: oot", Path::new("/t/ice.ko"));
        assert_eq!(c.softdep_for("ice", Some(&own), true).unwrap().pre, ["oot"]);
        // An image module without its own softdep skips depmod's line about the in-tree one.
        assert_eq!(c.softdep_for("ice", None, true).unwrap().post, ["zz"]);
    }

    #[test]
    fn hostile_files_never_panic() {
        let alphabet = b"ao ptions\\\n\t#:-[]softdep re";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut c = ModprobeConfig::default();
        for _ in 0..2000 {
            let mut t = vec![];
            for _ in 0..(x % 60) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                t.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            c.parse(&String::from_utf8_lossy(&t), Path::new("/f"), false);
        }
    }
}
