// SPDX-License-Identifier: Apache-2.0
//! Which module files to load, in which order, with which parameters: modprobe's probe list
//! (`kmod_module_probe_insert_module`, libkmod-module.c, kmod 28-34), for a module set's
//! modules and for the in-tree modules a rollback loads back. Reading only: anything wrong
//! here leaves the kernel alone.
//!
//! As modprobe, for each module: its dependencies (in load order), each preceded by its
//! `softdep pre:` modules and followed by its `post:` ones, then the module itself the same
//! way; a module reached twice is loaded where it comes first. Softdep modules are not
//! required: one that cannot be found is skipped (modprobe skips it silently; here the plan
//! says so) and one that fails to load is a warning. Parameters: every modprobe.d `options`
//! line for the module (or the alias it was reached through), then the kernel command line's,
//! then, for a configured module, the config's `parameters`; the kernel applies them in order,
//! so the last value of a parameter wins.
//!
//! A name is looked up in the image's tree first, then in the node's `/lib/modules/<kver>`. An
//! image module's dependencies are its `modules.dep` line (read backwards, as kmod does) and
//! its `depends=` modinfo field (an image built with `depmod -b` over its own modules does not
//! list the node's), each after its own; its softdeps its `softdep=` modinfo field. A node
//! module's come from the node's `modules.dep` and `modules.softdep`. Softdep names are looked
//! up as modprobe looks up a name: modprobe.d `alias`, module names, `symbol:`, `install`/
//! `remove` lines, `modules.alias`, built-in modules. Modules built into the kernel, or already
//! loaded and found nowhere, need nothing.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use kmod_day1_contract::ModuleSet;

use crate::modinfo::ModInfo;
use crate::modprobe_conf::{softdep_from_modinfo, ModprobeConfig, Source};
use crate::modules_dep::ModuleIndex;
use crate::modversions::ModuleSymbols;

/// Where a module file comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The image's tree in the store.
    Image,
    /// The node's `/lib/modules/<kver>`.
    InTree,
}

/// Why a module is in a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Listed in the set's `modules`.
    Configured,
    /// Loaded back by a rollback: the set removed it.
    LoadBack,
    /// A dependency of the named module.
    Dependency(String),
    /// A `softdep pre:` of the named module.
    SoftdepPre(String),
    /// A `softdep post:` of the named module.
    SoftdepPost(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Configured => f.write_str("configured"),
            Self::LoadBack => f.write_str("in-tree, loaded back"),
            Self::Dependency(m) => write!(f, "dependency of {m}"),
            Self::SoftdepPre(m) => write!(f, "softdep pre of {m}"),
            Self::SoftdepPost(m) => write!(f, "softdep post of {m}"),
        }
    }
}

/// Where a parameter comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamSource {
    /// A modprobe.d `options` line or the kernel command line.
    Modprobe(Source),
    /// The kmod-day1 config's `parameters`.
    Config,
}

impl std::fmt::Display for ParamSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Modprobe(s) => s.fmt(f),
            Self::Config => f.write_str("kmod-day1 config"),
        }
    }
}

/// One `name=value` (or `name`) given to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// As the kernel gets it (quotes kept: the kernel strips them).
    pub text: String,
    pub source: ParamSource,
}

/// A module to load, in load order.
#[derive(Debug, Clone)]
pub struct PlannedModule {
    /// Kernel name (`_` for `-`).
    pub name: String,
    /// The file to load.
    pub path: PathBuf,
    /// Where the file comes from.
    pub origin: Origin,
    /// Parameters, in the order the kernel gets them.
    pub params: Vec<Param>,
    /// Modinfo of image modules (read in preflight for vermagic and srcversion).
    pub info: Option<ModInfo>,
    /// Symbol versions and exports of image modules (read with the modinfo, for
    /// `symbol_check.rs`).
    pub symbols: Option<ModuleSymbols>,
    /// Listed in the config (not only a dependency).
    pub configured: bool,
    /// Why it is loaded (where it first came up).
    pub reason: Reason,
    /// A failure to load it fails the set (a softdep's does not, as with modprobe).
    pub required: bool,
    /// Loaded (or built in) when the plan was made: nothing to do for it then.
    pub already_loaded: bool,
    /// A modprobe.d or command-line `blacklist` naming it (modprobe loads a module named
    /// directly, or as a dependency, anyway; the blacklist only filters alias lookups).
    pub blacklisted: Option<Source>,
    /// Secure Boot preflight's verdict on an image module's signature (`secure_boot.rs`).
    pub signature: Option<crate::secure_boot::Verdict>,
}

impl PlannedModule {
    /// The parameter string for `finit_module`.
    pub fn param_string(&self) -> String {
        let texts: Vec<&str> = self.params.iter().map(|p| p.text.as_str()).collect();
        texts.join(" ")
    }
}

/// Why a module set cannot be loaded; nothing was touched.
#[derive(Debug, thiserror::Error)]
#[error("preflight: {0}")]
pub struct PreflightError(pub String);

/// A module found by name or alias.
#[derive(Debug, Clone)]
struct Found {
    name: String,
    /// The alias it was found through (modprobe.d options for the alias apply too).
    alias: Option<String>,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    File {
        path: PathBuf,
        origin: Origin,
        /// Dependencies as its `modules.dep` line lists them (all, the last to load first).
        listed: Vec<String>,
        /// An image module's `depends=` the line lacks (the node's modules).
        extra: Vec<String>,
        info: Option<ModInfo>,
        symbols: Option<ModuleSymbols>,
    },
    /// Built into the kernel: nothing to load.
    Builtin,
    /// Known only from an `install`/`remove` line, or loaded and found nowhere.
    NoFile,
}

/// One step of a probe list, before deduplication.
#[derive(Debug)]
struct Step {
    found: Found,
    required: bool,
    reason: Reason,
    has_softdeps: bool,
}

/// Resolves module names into load orders, with modprobe's configuration.
pub struct Planner<'a> {
    /// The image's modules (none when loading back in-tree modules).
    image: Option<&'a ModuleIndex>,
    /// The node's modules.
    in_tree: &'a ModuleIndex,
    conf: &'a ModprobeConfig,
    kernel_release: &'a str,
    /// Whether the kernel has the module already (loaded or built in).
    present: &'a dyn Fn(&str) -> bool,
    /// Module files found by name: an image module's modinfo is read (and a compressed one
    /// decompressed) once per plan.
    found: RefCell<HashMap<String, Option<Found>>>,
}

/// A probe list being built: `visited` is per top-level module, as each `modprobe` call.
#[derive(Default)]
struct Probe {
    steps: Vec<Step>,
    visited: HashSet<(String, Option<String>)>,
    visiting: Vec<String>,
    notes: Vec<String>,
}

/// A load order and what the plan noticed on the way.
#[derive(Debug, Default)]
pub struct LoadPlan {
    pub modules: Vec<PlannedModule>,
    /// Softdeps skipped, blacklist lines that do not apply, ... (one line each).
    pub notes: Vec<String>,
}

impl<'a> Planner<'a> {
    /// A planner for the image's modules (`None`: loading back in-tree modules) and the
    /// node's; `present(name)`: whether the kernel has the module already (loaded or built
    /// in).
    pub fn new(
        image: Option<&'a ModuleIndex>,
        in_tree: &'a ModuleIndex,
        conf: &'a ModprobeConfig,
        kernel_release: &'a str,
        present: &'a dyn Fn(&str) -> bool,
    ) -> Self {
        Self {
            image,
            in_tree,
            conf,
            kernel_release,
            present,
            found: RefCell::default(),
        }
    }

    /// The load order of a module set: its modules in config order, each after its
    /// dependencies and softdeps, with modprobe.d options then the config's parameters.
    pub fn plan_set(&self, set: &ModuleSet) -> Result<LoadPlan, PreflightError> {
        let image = self.image.expect("a set's plan has an image");
        let mut p = Probe::default();
        let mut config_params = vec![];
        for m in &set.modules {
            let name = m.name.kernel_name();
            let found = match self.find_file(&name)? {
                Some(f) if matches!(f.kind, Kind::File { origin: Origin::Image, .. }) => f,
                _ => {
                    return Err(PreflightError(format!(
                        "module {name} is not in the image's tree {}: check the module name and the set's dirName (the image must hold <dirName>/lib/modules/{}/)",
                        image.base().display(),
                        self.kernel_release
                    )))
                }
            };
            p.visited.clear();
            self.visit(&mut p, found, true, Reason::Configured)?;
            config_params.push((name, m.parameters.clone()));
        }
        let mut plan = self.finish(p)?;
        for m in &mut plan.modules {
            if let Some((_, params)) = config_params.iter().find(|(n, _)| *n == m.name) {
                m.configured = true;
                m.reason = Reason::Configured;
                m.params.extend(params.iter().map(|p| Param {
                    text: p.as_str().to_owned(),
                    source: ParamSource::Config,
                }));
            }
        }
        Ok(plan)
    }

    /// The load order that loads in-tree module `name` back, with its modprobe.d options.
    pub fn plan_load_back(&self, name: &str) -> Result<LoadPlan, PreflightError> {
        let mut p = Probe::default();
        match self.find_file(name)? {
            Some(found) => self.visit(&mut p, found, true, Reason::LoadBack)?,
            None if self.in_tree.is_builtin(name) || (self.present)(name) => {}
            None => {
                return Err(PreflightError(format!(
                    "module {name} is not in {}",
                    self.in_tree.base().display()
                )))
            }
        }
        self.finish(p)
    }

    /// `__kmod_module_get_probe_list`.
    fn visit(
        &self,
        p: &mut Probe,
        found: Found,
        required: bool,
        reason: Reason,
    ) -> Result<(), PreflightError> {
        if !p.visited.insert((found.name.clone(), found.alias.clone())) {
            return Ok(());
        }
        let deps = self.dependencies(p, &found)?;
        for d in deps {
            self.fill_softdep(p, d, required, Reason::Dependency(found.name.clone()))?;
        }
        self.fill_softdep(p, found, required, reason)
    }

    /// `__kmod_module_fill_softdep`: pre softdeps, the module, post softdeps.
    fn fill_softdep(
        &self,
        p: &mut Probe,
        found: Found,
        required: bool,
        reason: Reason,
    ) -> Result<(), PreflightError> {
        let (pre, post) = self.softdeps(p, &found);
        for m in &pre {
            self.visit_softdep(p, m.clone(), Reason::SoftdepPre(found.name.clone()));
        }
        let has_softdeps = !pre.is_empty() || !post.is_empty();
        let name = found.name.clone();
        p.steps.push(Step {
            found,
            required,
            reason,
            has_softdeps,
        });
        for m in post {
            self.visit_softdep(p, m, Reason::SoftdepPost(name.clone()));
        }
        Ok(())
    }

    /// A softdep is not required: one whose dependencies cannot be resolved is skipped, with
    /// a note (modprobe would fail to load it and go on).
    fn visit_softdep(&self, p: &mut Probe, found: Found, reason: Reason) {
        let mark = p.steps.len();
        let name = found.name.clone();
        if let Err(e) = self.visit(p, found, false, reason.clone()) {
            p.steps.truncate(mark);
            p.notes.push(format!("{reason} {name} skipped: {}", e.0));
        }
    }

    /// The module's softdep modules, looked up as modprobe looks up a name.
    fn softdeps(&self, p: &mut Probe, found: &Found) -> (Vec<Found>, Vec<Found>) {
        let (own, is_image) = match &found.kind {
            Kind::File {
                origin: Origin::Image,
                info,
                path,
                ..
            } => (
                info.as_ref()
                    .and_then(|i| i.get("softdep"))
                    .map(|v| softdep_from_modinfo(&found.name, v, path)),
                true,
            ),
            _ => (None, false),
        };
        let Some(line) = self.conf.softdep_for(&found.name, own.as_ref(), is_image) else {
            return (vec![], vec![]);
        };
        let mut resolve = |names: &[String], kind: &str| {
            let mut out = vec![];
            for n in names {
                match self.lookup(n) {
                    Ok(v) if v.is_empty() => p.notes.push(format!(
                        "softdep {kind} {n} of {} ({}): not found, skipped as modprobe does",
                        found.name, line.source
                    )),
                    Ok(v) => out.extend(v),
                    Err(e) => p.notes.push(format!(
                        "softdep {kind} {n} of {} ({}): skipped: {}",
                        found.name, line.source, e.0
                    )),
                }
            }
            out
        };
        let pre = resolve(&line.pre, "pre");
        let post = resolve(&line.post, "post");
        (pre, post)
    }

    /// The module's dependencies in load order, each one module with a file.
    fn dependencies(&self, p: &mut Probe, found: &Found) -> Result<Vec<Found>, PreflightError> {
        let Kind::File {
            listed,
            extra,
            origin,
            ..
        } = &found.kind
        else {
            return Ok(vec![]);
        };
        if p.visiting.contains(&found.name) {
            return Err(PreflightError(format!(
                "dependency cycle: {} -> {}",
                p.visiting.join(" -> "),
                found.name
            )));
        }
        p.visiting.push(found.name.clone());
        let mut out: Vec<Found> = vec![];
        // modules.dep lists every dependency, the last to load first (kmod reads it
        // backwards). A node module's line is complete; an image module's lists the image's
        // modules only, so each brings its own dependencies (depth first, which keeps the
        // line's order), and so does a `depends=` on a node module, or a node module the
        // image replaces.
        let deep = *origin == Origin::Image;
        let r = listed
            .iter()
            .rev()
            .map(|d| (d, deep))
            .chain(extra.iter().map(|d| (d, true)))
            .try_for_each(|(d, deep)| self.add_dependency(p, &found.name, d, deep, &mut out));
        p.visiting.pop();
        r.map(|()| out)
    }

    /// Adds dependency `name` of `of` to `out`, after its own dependencies when `deep` (an
    /// image module's direct dependency) or when the image replaces it.
    fn add_dependency(
        &self,
        p: &mut Probe,
        of: &str,
        name: &str,
        deep: bool,
        out: &mut Vec<Found>,
    ) -> Result<(), PreflightError> {
        if out.iter().any(|f| f.name == name) {
            return Ok(());
        }
        let found = match self.find_file(name)? {
            Some(f) => f,
            None if self.in_tree.is_builtin(name) || (self.present)(name) => return Ok(()),
            None => {
                return Err(PreflightError(format!(
                    "module {name}, needed by {of}, is neither in the image nor in {}",
                    self.in_tree.base().display()
                )))
            }
        };
        let from_image = matches!(
            found.kind,
            Kind::File {
                origin: Origin::Image,
                ..
            }
        );
        if deep || from_image {
            for d in self.dependencies(p, &found)? {
                if !out.iter().any(|f| f.name == d.name) {
                    out.push(d);
                }
            }
        }
        out.push(found);
        Ok(())
    }

    /// A module file by name: the image's, then the node's.
    fn find_file(&self, name: &str) -> Result<Option<Found>, PreflightError> {
        if let Some(f) = self.found.borrow().get(name) {
            return Ok(f.clone());
        }
        let f = self.find_file_uncached(name)?;
        self.found.borrow_mut().insert(name.to_owned(), f.clone());
        Ok(f)
    }

    fn find_file_uncached(&self, name: &str) -> Result<Option<Found>, PreflightError> {
        let err = |e: String| PreflightError(e);
        if let Some(image) = self.image {
            if let Some(e) = image.lookup(name).map_err(err)? {
                let (info, symbols) = self.check_image_file(image, name, &e.path)?;
                let extra = info
                    .depends()
                    .into_iter()
                    .filter(|d| !e.deps.contains(d))
                    .collect();
                return Ok(Some(Found {
                    name: name.to_owned(),
                    alias: None,
                    kind: Kind::File {
                        path: e.path,
                        origin: Origin::Image,
                        listed: e.deps,
                        extra,
                        info: Some(info),
                        symbols: Some(symbols),
                    },
                }));
            }
        }
        Ok(self.in_tree.lookup(name).map_err(err)?.map(|e| Found {
            name: name.to_owned(),
            alias: None,
            kind: Kind::File {
                path: e.path,
                origin: Origin::InTree,
                listed: e.deps,
                extra: vec![],
                info: None,
                symbols: None,
            },
        }))
    }

    /// An image module file: a regular file inside the tree, the module it claims to be,
    /// built for this kernel; its modinfo and symbols, read (and decompressed) once.
    fn check_image_file(
        &self,
        image: &ModuleIndex,
        name: &str,
        path: &std::path::Path,
    ) -> Result<(ModInfo, ModuleSymbols), PreflightError> {
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| PreflightError(format!("module file {}: {e}", path.display())))?;
        // Neither the file nor a directory above it may lead out of the tree.
        let inside = match (path.canonicalize(), image.base().canonicalize()) {
            (Ok(p), Ok(b)) => p.starts_with(b),
            _ => false,
        };
        if !meta.is_file() || !inside {
            return Err(PreflightError(format!(
                "module file {} in the image is not a regular file inside the image's tree",
                path.display()
            )));
        }
        let (info, sections) = ModInfo::read_with(path, crate::modversions::SECTIONS)
            .map_err(|e| PreflightError(e.to_string()))?;
        if let Some(n) = info.name() {
            if n.replace('-', "_") != name {
                return Err(PreflightError(format!(
                    "module file {} holds module {n}, not {name}",
                    path.display()
                )));
            }
        }
        info.check_vermagic(self.kernel_release)
            .map_err(|e| PreflightError(format!("module {name} ({}) {e}", path.display())))?;
        Ok((info, ModuleSymbols::from_sections(&sections)))
    }

    /// `kmod_module_new_from_lookup`: the modules a name stands for, in kmod's lookup order.
    fn lookup(&self, given: &str) -> Result<Vec<Found>, PreflightError> {
        let Some(name) = alias_normalize(given) else {
            return Ok(vec![]);
        };
        let by_alias = |module: &str, alias: &str| -> Result<Found, PreflightError> {
            Ok(match self.find_file(module)? {
                Some(mut f) => {
                    f.alias = Some(alias.to_owned());
                    f
                }
                None => Found {
                    name: module.to_owned(),
                    alias: Some(alias.to_owned()),
                    kind: if self.in_tree.is_builtin(module) {
                        Kind::Builtin
                    } else {
                        Kind::NoFile
                    },
                },
            })
        };
        let from_conf: Vec<_> = self
            .conf
            .aliases
            .iter()
            .filter(|a| crate::fnmatch::fnmatch(&a.pattern, &name))
            .collect();
        if !from_conf.is_empty() {
            return from_conf
                .iter()
                .map(|a| by_alias(&a.value, &a.pattern))
                .collect();
        }
        if !name.contains(':') {
            if let Some(f) = self.find_file(&name)? {
                return Ok(vec![f]);
            }
        }
        if name.starts_with("symbol:") {
            let owners = self.in_tree.symbol_owners(&name);
            if !owners.is_empty() {
                return owners.iter().map(|m| by_alias(m, &name)).collect();
            }
        }
        let command = self.conf.install.iter().find(|l| l.pattern == name);
        let command = command.or_else(|| self.conf.remove.iter().find(|l| l.pattern == name));
        if command.is_some() {
            return Ok(vec![Found {
                name: name.clone(),
                alias: None,
                kind: Kind::NoFile,
            }]);
        }
        let aliased = self.in_tree.aliases(&name);
        if !aliased.is_empty() {
            return aliased.iter().map(|m| by_alias(m, &name)).collect();
        }
        if self.in_tree.is_builtin(&name) {
            return Ok(vec![Found {
                name,
                alias: None,
                kind: Kind::Builtin,
            }]);
        }
        Ok(self
            .in_tree
            .builtin_aliases(&name)
            .into_iter()
            .map(|m| Found {
                name: m,
                alias: Some(name.clone()),
                kind: Kind::Builtin,
            })
            .collect())
    }

    /// The probe list as modules to load: each module once, where it first comes, checked.
    fn finish(&self, p: Probe) -> Result<LoadPlan, PreflightError> {
        let mut plan = LoadPlan {
            modules: vec![],
            notes: p.notes,
        };
        let mut seen: Vec<&str> = vec![];
        for (i, step) in p.steps.iter().enumerate() {
            let name = step.found.name.as_str();
            if seen.contains(&name) {
                continue;
            }
            seen.push(name);
            // Required if it is required anywhere in the list (a dependency of the
            // configured module that is also a softdep of another).
            let required = p.steps[i..]
                .iter()
                .any(|s| s.found.name == name && s.required);
            let present = (self.present)(name);
            let (path, origin, info, symbols) = match &step.found.kind {
                Kind::Builtin => continue,
                Kind::File {
                    path,
                    origin,
                    info,
                    symbols,
                    ..
                } => (path.clone(), *origin, info.clone(), symbols.clone()),
                Kind::NoFile if present => continue,
                Kind::NoFile => {
                    if let Some(cmd) = self.conf.install_for(name) {
                        return Err(install_error(name, cmd));
                    }
                    let e = format!("module {name} ({}) has no module file", step.reason);
                    if required {
                        return Err(PreflightError(e));
                    }
                    plan.notes.push(format!("{e}: skipped as modprobe does"));
                    continue;
                }
            };
            if !present {
                // modprobe runs a matching install command instead of loading the module,
                // unless the module has softdeps.
                if let Some(cmd) = self.conf.install_for(name) {
                    if !step.has_softdeps {
                        return Err(install_error(name, cmd));
                    }
                    plan.notes.push(format!(
                        "{}: `install {} {}` does not apply to {name}, which has softdeps (as in modprobe)",
                        cmd.source, cmd.pattern, cmd.value
                    ));
                }
                if self.conf.kernel_refuses(name) {
                    return Err(PreflightError(format!(
                        "module {name} ({}) is in module_blacklist= on the kernel command line: the kernel refuses to load it; remove it there or from the config",
                        step.reason
                    )));
                }
                if let Err(e) = std::fs::symlink_metadata(&path) {
                    let e = format!("module file {}: {e}", path.display());
                    if required {
                        return Err(PreflightError(e));
                    }
                    plan.notes
                        .push(format!("{} {name} skipped: {e}", step.reason));
                    continue;
                }
            }
            let params = self
                .conf
                .options_for(name, step.found.alias.as_deref())
                .flat_map(|o| {
                    split_params(&o.options).into_iter().map(|text| Param {
                        text,
                        source: ParamSource::Modprobe(o.source.clone()),
                    })
                })
                .collect();
            plan.modules.push(PlannedModule {
                name: name.to_owned(),
                path,
                origin,
                params,
                info,
                symbols,
                configured: false,
                reason: step.reason.clone(),
                required,
                already_loaded: present,
                blacklisted: self.conf.blacklisted(name).map(|b| b.source.clone()),
                signature: None,
            });
        }
        Ok(plan)
    }
}

fn install_error(name: &str, cmd: &crate::modprobe_conf::NamedLine) -> PreflightError {
    PreflightError(format!(
        "{}: `install {} {}` applies to {name}: modprobe would run that command instead of loading the module, and kmod-day1-load runs no install commands nor loads the module another way; remove or narrow that line",
        cmd.source, cmd.pattern, cmd.value
    ))
}

/// kmod's `alias_normalize`: `-` becomes `_` outside `[...]`; `None` for a stray `]`.
fn alias_normalize(s: &str) -> Option<String> {
    crate::kcmdline::underscores(s)
}

/// Splits an options string as the kernel's `parse_args` does: at whitespace outside double
/// quotes. Words keep their quotes.
pub fn split_params(s: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        if c.is_ascii_whitespace() && !quoted {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if c == '"' {
            quoted = !quoted;
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Fixture, KVER};

    #[test]
    fn orders_dependencies_first_and_mixes_image_and_node() {
        let f = Fixture::new();
        // image: a (depends b via modules.dep, c via modinfo), b; node: c (xz), d (zst).
        f.image_module("a", "SRC-A", &["c"]);
        f.image_module("b", "SRC-B", &[]);
        f.image_dep("a.ko: b.ko\nb.ko:\n");
        f.node_module("c", "kernel/c.ko.xz", &["d"]);
        f.node_module("d", "kernel/d.ko.zst", &[]);
        let set = f.set(&["a"], &[]);
        let p = f.plan(&set).unwrap();
        let names: Vec<_> = p.iter().map(|m| (m.name.as_str(), m.origin)).collect();
        assert_eq!(
            names,
            vec![
                ("b", Origin::Image),
                ("d", Origin::InTree),
                ("c", Origin::InTree),
                ("a", Origin::Image)
            ]
        );
        assert!(p[3].configured && !p[0].configured);
        assert_eq!(p[2].reason, Reason::Dependency("a".into()));
        assert_eq!(p[3].info.as_ref().unwrap().srcversion(), Some("SRC-A"));
    }

    #[test]
    fn a_modules_dep_line_is_read_backwards_as_kmod_does() {
        let f = Fixture::new();
        f.image_module("x", "SX", &["y", "z"]);
        f.image_module("y", "SY", &[]);
        f.image_module("z", "SZ", &[]);
        f.image_dep("x.ko: y.ko z.ko\ny.ko:\nz.ko:\n");
        f.node_module("n1", "kernel/n1.ko", &[]);
        f.node_module("n2", "kernel/n2.ko", &["n1"]);
        f.node_module("m", "kernel/m.ko", &["n2", "n1"]);
        let p = f.plan(&f.set(&["x"], &[])).unwrap();
        let names: Vec<_> = p.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["z", "y", "x"]);
        let p = f.plan_load_back("m").unwrap();
        let names: Vec<_> = p.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "m"]);
    }

    #[test]
    fn configured_order_and_params_survive_shared_deps() {
        let f = Fixture::new();
        f.image_module("x", "SX", &["y"]);
        f.image_module("y", "SY", &[]);
        let mut set = f.set(&["x", "y"], &[]);
        set.modules[1].parameters = vec!["debug=1".parse().unwrap()];
        let p = f.plan(&set).unwrap();
        assert_eq!(
            p.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["y", "x"]
        );
        assert_eq!(p[0].param_string(), "debug=1");
        assert!(p[0].configured);
    }

    #[test]
    fn modprobe_options_command_line_then_config_parameters() {
        let f = Fixture::new();
        f.image_module("ice", "S", &["dpll"]);
        f.node_module("dpll", "kernel/dpll.ko", &[]);
        f.modprobe_d(
            "etc/modprobe.d/ice.conf",
            "options ice a=1 b=\"x y\"\noptions dpll d=1\n",
        );
        f.set_cmdline("quiet ice.c=3 dpll.e=4");
        let mut set = f.set(&["ice"], &[]);
        set.modules[0].parameters = vec!["a=9".parse().unwrap()];
        let p = f.plan(&set).unwrap();
        assert_eq!(p[0].param_string(), "d=1 e=4");
        assert_eq!(p[1].param_string(), "a=1 b=\"x y\" c=3 a=9");
        let conf = f.path("etc/modprobe.d/ice.conf").display().to_string();
        let sources: Vec<String> = p[1].params.iter().map(|p| p.source.to_string()).collect();
        assert_eq!(
            sources,
            [
                format!("{conf}:1"),
                format!("{conf}:1"),
                "kernel command line".into(),
                "kmod-day1 config".into()
            ]
        );
    }

    #[test]
    fn softdeps_as_modprobe_orders_them() {
        let f = Fixture::new();
        // image ice: modinfo softdep pre: pre_a; node: dpll (dep), pre_a, post_b, crc via alias.
        f.image_module_with(
            "ice",
            &[
                ("name", "ice"),
                ("depends", "dpll"),
                ("softdep", "pre: pre_a post: post_b"),
                ("vermagic", &format!("{KVER} SMP ")),
            ],
        );
        f.node_module("dpll", "kernel/dpll.ko", &[]);
        f.node_module("pre_a", "kernel/pre_a.ko", &[]);
        f.node_module("post_b", "kernel/post_b.ko", &[]);
        f.node_module("crc_x", "kernel/crc_x.ko", &[]);
        std::fs::write(f.node_dir().join("modules.alias"), "alias crc crc_x\n").unwrap();
        // The in-tree ice's softdep (depmod) is not the image module's.
        std::fs::write(
            f.node_dir().join("modules.softdep"),
            "softdep ice pre: intree_only\n",
        )
        .unwrap();
        f.modprobe_d(
            "etc/modprobe.d/dpll.conf",
            "softdep dpll pre: crc missing-one\n",
        );
        let p = f.plan_full(&f.set(&["ice"], &[])).unwrap();
        let names: Vec<_> = p.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["crc_x", "dpll", "pre_a", "ice", "post_b"]);
        assert!(!p.modules[0].required && p.modules[1].required);
        assert_eq!(p.modules[0].reason, Reason::SoftdepPre("dpll".into()));
        let notes = p.notes.join("\n");
        assert!(
            notes.contains("softdep pre missing-one of dpll") && notes.contains("not found"),
            "{notes}"
        );

        // A modprobe.d softdep for ice comes before modules.softdep (name order): it wins.
        f.modprobe_d("etc/modprobe.d/ice.conf", "softdep ice post: pre_a\n");
        let p = f.plan(&f.set(&["ice"], &[])).unwrap();
        let names: Vec<_> = p.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["crc_x", "dpll", "ice", "pre_a"]);
    }

    #[test]
    fn install_commands_and_the_kernels_blacklist_are_preflight_errors() {
        let f = Fixture::new();
        f.image_module("ice", "S", &["dpll"]);
        f.node_module("dpll", "kernel/dpll.ko", &[]);
        f.modprobe_d("etc/modprobe.d/harden.conf", "install dpll /bin/false\n");
        let e = f.plan(&f.set(&["ice"], &[])).unwrap_err().to_string();
        let conf = f.path("etc/modprobe.d/harden.conf").display().to_string();
        assert!(
            e.contains(&format!(
                "{conf}:1: `install dpll /bin/false` applies to dpll"
            )),
            "{e}"
        );
        std::fs::remove_file(f.path("etc/modprobe.d/harden.conf")).unwrap();
        f.set_cmdline("module_blacklist=dpll,x");
        let e = f.plan(&f.set(&["ice"], &[])).unwrap_err().to_string();
        assert!(
            e.contains("module dpll (dependency of ice) is in module_blacklist="),
            "{e}"
        );
        // modprobe's blacklist does not stop a module named directly or a dependency.
        f.set_cmdline("modprobe.blacklist=dpll");
        let p = f.plan(&f.set(&["ice"], &[])).unwrap();
        assert_eq!(p[0].blacklisted, Some(Source::KernelCmdline));
    }

    #[test]
    fn loading_back_in_tree_uses_the_node_only() {
        let f = Fixture::new();
        f.image_module("ice", "S", &[]);
        f.node_module("dpll", "kernel/dpll.ko", &[]);
        f.node_module("ice", "kernel/ice.ko", &["dpll"]);
        f.modprobe_d("etc/modprobe.d/ice.conf", "options ice x=1\n");
        let p = f.plan_load_back("ice").unwrap();
        let v: Vec<_> = p
            .modules
            .iter()
            .map(|m| (m.name.as_str(), m.origin, m.param_string()))
            .collect();
        assert_eq!(
            v,
            [
                ("dpll", Origin::InTree, String::new()),
                ("ice", Origin::InTree, "x=1".into())
            ]
        );
        assert_eq!(p.modules[1].reason, Reason::LoadBack);
    }

    #[test]
    fn vermagic_mismatch_is_a_preflight_error() {
        let f = Fixture::new();
        f.image_module_with(
            "a",
            &[
                ("name", "a"),
                ("srcversion", "S"),
                ("vermagic", "5.14.0-1.el9.x86_64 SMP mod_unload "),
            ],
        );
        let e = f.plan(&f.set(&["a"], &[])).unwrap_err().to_string();
        assert!(
            e.contains("built for kernel \"5.14.0-1.el9.x86_64\""),
            "{e}"
        );
        assert!(e.contains(&format!("running kernel is {KVER}")), "{e}");
    }

    #[test]
    fn missing_things_are_named() {
        let f = Fixture::new();
        f.image_module("a", "S", &["nowhere"]);
        let e = f.plan(&f.set(&["a"], &[])).unwrap_err().to_string();
        assert!(
            e.contains("module nowhere, needed by a, is neither in the image nor in"),
            "{e}"
        );
        let e = f.plan(&f.set(&["zz"], &[])).unwrap_err().to_string();
        assert!(e.contains("module zz is not in the image's tree"), "{e}");
        // A dependency built into the kernel needs nothing.
        f.node_builtin("nowhere");
        assert_eq!(f.plan(&f.set(&["a"], &[])).unwrap().len(), 1);
    }

    #[test]
    fn image_modules_cannot_lead_out_of_the_tree() {
        let f = Fixture::new();
        let outside = f.path("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("evil.ko"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, f.image_dir().join("extra")).unwrap();
        f.image_dep("extra/evil.ko:\n");
        let e = f.plan(&f.set(&["evil"], &[])).unwrap_err().to_string();
        assert!(
            e.contains("not a regular file inside the image's tree"),
            "{e}"
        );
        std::fs::remove_file(f.image_dir().join("extra")).unwrap();
        std::os::unix::fs::symlink(outside.join("evil.ko"), f.image_dir().join("evil.ko")).unwrap();
        f.image_dep("evil.ko:\n");
        let e = f.plan(&f.set(&["evil"], &[])).unwrap_err().to_string();
        assert!(
            e.contains("not a regular file inside the image's tree"),
            "{e}"
        );
    }

    #[test]
    fn cycles_and_impostors_are_refused() {
        let f = Fixture::new();
        f.image_module("p", "S", &["q"]);
        f.image_module("q", "S", &["p"]);
        let e = f.plan(&f.set(&["p"], &[])).unwrap_err().to_string();
        assert!(e.contains("dependency cycle: p -> q -> p"), "{e}");
        let f = Fixture::new();
        f.image_module_with(
            "r",
            &[("name", "other"), ("vermagic", &format!("{KVER} SMP "))],
        );
        let e = f.plan(&f.set(&["r"], &[])).unwrap_err().to_string();
        assert!(e.contains("holds module other"), "{e}");
    }

    #[test]
    fn params_split_as_the_kernel_does() {
        assert_eq!(
            split_params("  a=1\tb=\"x y\"  c \"d=e f\" "),
            ["a=1", "b=\"x y\"", "c", "\"d=e f\""]
        );
        assert!(split_params(" ").is_empty());
    }
}
