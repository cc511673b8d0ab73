// SPDX-License-Identifier: Apache-2.0
//! Preflight: before the kernel is touched, every module to load is found, its file
//! checked, its `vermagic` compared with the running kernel and its dependencies resolved
//! into a load order. Anything wrong here leaves the in-tree driver alone.
//!
//! A name is looked up in the image's tree first, then in the node's
//! `/lib/modules/<kver>`. An image module's dependencies are the union of its
//! `modules.dep` line and its `depends=` modinfo field (an image built with `depmod -b`
//! over its own modules does not list the node's); a node module's come from the node's
//! `modules.dep`. Modules built into the kernel, or already loaded and found nowhere,
//! need nothing.

use std::path::PathBuf;

use kmod_day1_contract::ModuleSet;

use crate::modinfo::ModInfo;
use crate::modules_dep::ModuleIndex;

/// Where a module file comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The image's tree in the store.
    Image,
    /// The node's `/lib/modules/<kver>`.
    InTree,
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
    /// Parameters for `finit_module` (configured modules only).
    pub params: String,
    /// Modinfo of image modules (read in preflight for vermagic and srcversion).
    pub info: Option<ModInfo>,
    /// Listed in the config (not only a dependency).
    pub configured: bool,
}

/// Why a module set cannot be loaded; nothing was touched.
#[derive(Debug, thiserror::Error)]
#[error("preflight: {0}")]
pub struct PreflightError(pub String);

/// Resolves module names into a load order.
pub struct Resolver<'a> {
    image: Option<&'a ModuleIndex>,
    in_tree: &'a ModuleIndex,
    kernel_release: &'a str,
    present: &'a dyn Fn(&str) -> bool,
    out: Vec<PlannedModule>,
    visiting: Vec<String>,
}

impl<'a> Resolver<'a> {
    /// `present(name)`: whether the kernel has the module already (loaded or built in).
    pub fn new(
        image: Option<&'a ModuleIndex>,
        in_tree: &'a ModuleIndex,
        kernel_release: &'a str,
        present: &'a dyn Fn(&str) -> bool,
    ) -> Self {
        Self {
            image,
            in_tree,
            kernel_release,
            present,
            out: vec![],
            visiting: vec![],
        }
    }

    /// The load order so far.
    pub fn finish(self) -> Vec<PlannedModule> {
        self.out
    }

    /// Adds a module the config lists (it must be in the image when there is one).
    fn add_configured(&mut self, name: &str, params: String) -> Result<(), PreflightError> {
        self.visit(name, Some(params), None)
    }

    /// Adds a node module and its dependencies (for loading back an in-tree module).
    pub fn add_in_tree(&mut self, name: &str) -> Result<(), PreflightError> {
        self.visit(name, None, None)
    }

    fn visit(
        &mut self,
        name: &str,
        configured: Option<String>,
        needed_by: Option<&str>,
    ) -> Result<(), PreflightError> {
        if let Some(m) = self.out.iter_mut().find(|m| m.name == name) {
            if let Some(params) = configured {
                m.params = params;
                m.configured = true;
            }
            return Ok(());
        }
        if self.visiting.iter().any(|v| v == name) {
            return Err(PreflightError(format!(
                "dependency cycle: {} -> {name}",
                self.visiting.join(" -> ")
            )));
        }
        let err = |e: String| PreflightError(e);
        let from_image = match self.image {
            Some(i) => i.lookup(name).map_err(err)?,
            None => None,
        };
        let (entry, origin) = match from_image {
            Some(e) => (e, Origin::Image),
            None if configured.is_some() && self.image.is_some() => {
                return Err(PreflightError(format!(
                    "module {name} is not in the image's tree {}: check the module name and the set's dirName (the image must hold <dirName>/lib/modules/{}/)",
                    self.image.expect("image").base().display(),
                    self.kernel_release
                )))
            }
            None => match self.in_tree.lookup(name).map_err(err)? {
                Some(e) => (e, Origin::InTree),
                None if self.in_tree.is_builtin(name) || (self.present)(name) => return Ok(()),
                None => {
                    return Err(PreflightError(format!(
                        "module {name}{} is neither in the image nor in {}",
                        needed_by.map(|n| format!(", needed by {n},")).unwrap_or_default(),
                        self.in_tree.base().display()
                    )))
                }
            },
        };
        let path = entry.path.clone();
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| PreflightError(format!("module file {}: {e}", path.display())))?;
        let mut deps = entry.deps.clone();
        let info = match origin {
            Origin::Image => {
                // Neither the file nor a directory above it may lead out of the tree.
                let inside = match (
                    path.canonicalize(),
                    self.image.map(|i| i.base().canonicalize()),
                ) {
                    (Ok(p), Some(Ok(b))) => p.starts_with(b),
                    _ => false,
                };
                if !meta.is_file() || !inside {
                    return Err(PreflightError(format!(
                        "module file {} in the image is not a regular file inside the image's tree",
                        path.display()
                    )));
                }
                let info = ModInfo::read(&path).map_err(|e| PreflightError(e.to_string()))?;
                if let Some(n) = info.name() {
                    if n.replace('-', "_") != name {
                        return Err(PreflightError(format!(
                            "module file {} holds module {n}, not {name}",
                            path.display()
                        )));
                    }
                }
                info.check_vermagic(self.kernel_release).map_err(|e| {
                    PreflightError(format!("module {name} ({}) {e}", path.display()))
                })?;
                for d in info.depends() {
                    if !deps.contains(&d) {
                        deps.push(d);
                    }
                }
                Some(info)
            }
            Origin::InTree => None,
        };
        self.visiting.push(name.to_owned());
        for d in &deps {
            self.visit(d, None, Some(name))?;
        }
        self.visiting.pop();
        self.out.push(PlannedModule {
            name: name.to_owned(),
            path,
            origin,
            params: configured.clone().unwrap_or_default(),
            info,
            configured: configured.is_some(),
        });
        Ok(())
    }
}

/// The load order of a module set: its modules in config order, each after its
/// dependencies.
pub fn plan_set(
    set: &ModuleSet,
    image: &ModuleIndex,
    in_tree: &ModuleIndex,
    kernel_release: &str,
    present: &dyn Fn(&str) -> bool,
) -> Result<Vec<PlannedModule>, PreflightError> {
    let mut r = Resolver::new(Some(image), in_tree, kernel_release, present);
    for m in &set.modules {
        let params: Vec<&str> = m.parameters.iter().map(|p| p.as_str()).collect();
        r.add_configured(&m.name.kernel_name(), params.join(" "))?;
    }
    Ok(r.finish())
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
        assert_eq!(p[3].info.as_ref().unwrap().srcversion(), Some("SRC-A"));
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
        assert_eq!(p[0].params, "debug=1");
        assert!(p[0].configured);
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
}
