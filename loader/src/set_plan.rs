// SPDX-License-Identifier: Apache-2.0
//! The whole plan for one module set, made before the kernel is touched: which in-tree
//! modules to unload, what to load in which order with which parameters, the firmware to
//! copy, and what a rollback would load back. The real run executes this plan
//! (`swap.rs`); `--dry-run` prints it (`dry_run.rs`). One planner, no second path.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kmod_day1_contract::{ModuleSet, SymbolVersions};
use tracing::debug;

use crate::binding::{expected_devices, ExpectedDevice, ModuleAliases};
use crate::kernel::ModuleState;
use crate::modprobe_conf::ModprobeConfig;
use crate::modules_dep::ModuleIndex;
use crate::plan::{LoadPlan, Origin, PlannedModule, Planner, PreflightError};
use crate::secure_boot::{check_signatures, ModuleTrust};
use crate::symbol_check::{check_symbol_versions, CheckInput};
use crate::symvers::KernelSymvers;

/// The node around a swap.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    /// The release modules are loaded for (the running kernel's, or `--kernel-release`).
    pub kernel_release: &'a str,
    /// The node's modules, `/lib/modules/<kver>`: dependencies the image lacks, and what
    /// a rollback loads back.
    pub in_tree: &'a ModuleIndex,
    /// The node's modprobe configuration (modprobe.d, `modules.softdep`, command line).
    pub modprobe: &'a ModprobeConfig,
    /// sysfs (`/sys`), where the firmware search path is set.
    pub sysfs: &'a Path,
    /// Where the image's firmware is copied (`/var/lib/firmware`).
    pub firmware_dir: &'a Path,
    /// How long the expected devices may take to bind after the load.
    pub bind_timeout: Duration,
    /// Whether the kernel enforces module signatures, and the keys it trusts.
    pub module_trust: &'a ModuleTrust,
    /// The kernel's symbol versions (`symvers`), or why there are none.
    pub symvers: &'a KernelSymvers,
}

/// What to swap.
#[derive(Debug, Clone, Copy)]
pub struct SetInput<'a> {
    /// `config/set`, for log lines.
    pub label: &'a str,
    /// The module set.
    pub set: &'a ModuleSet,
    /// The image's modules (`trees/<id>/modules`).
    pub image: &'a ModuleIndex,
    /// The image's firmware (`trees/<id>/firmware`), when the set has some.
    pub firmware: Option<&'a Path>,
    /// The image reference the tree came from, for messages.
    pub image_ref: &'a str,
}

/// What a rollback would load back for one removed in-tree module.
#[derive(Debug)]
pub struct LoadBack {
    /// The in-tree module removed.
    pub module: String,
    /// Its load order, or why it could not be loaded back.
    pub plan: Result<Vec<PlannedModule>, String>,
}

/// The plan of one module set.
#[derive(Debug)]
pub struct SetPlan {
    /// In-tree modules to unload, in order.
    pub unload: Vec<String>,
    /// Modules to load, in order (those already loaded are marked, and left alone).
    pub load: Vec<PlannedModule>,
    /// The image's firmware directory to copy from.
    pub firmware: Option<PathBuf>,
    /// What a rollback would load back, last removed first.
    pub rollback: Vec<LoadBack>,
    /// Devices the set's modules must drive once loaded (`binding.rs`).
    pub devices: Vec<ExpectedDevice>,
    /// What the plan noticed (softdeps skipped, commands not run, ...), one line each.
    pub notes: Vec<String>,
    /// The image modules' symbol CRCs against the kernel's (`symbol_check.rs`).
    pub symbols: SymbolVersions,
}

/// Why a set's plan was refused (nothing was touched), with the symbol check's report when
/// the plan got that far.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct PlanRefused {
    /// The refusal.
    pub error: PreflightError,
    /// The symbol check's report.
    pub symbols: Option<SymbolVersions>,
}

/// What the kernel says about a module (`KernelModules::module_state`, or a fresh boot).
pub type StateOf<'s> = &'s dyn Fn(&str) -> io::Result<Option<ModuleState>>;

/// Plans a swap, reading only: the load order (preflight: files, vermagic, dependencies,
/// modprobe configuration, symbol versions, signatures), the in-tree modules to unload, and
/// the rollback.
pub fn plan_swap(
    state: StateOf<'_>,
    node: Node<'_>,
    input: SetInput<'_>,
) -> Result<SetPlan, PlanRefused> {
    let mut symbols = None;
    plan(state, node, input, &mut symbols).map_err(|error| PlanRefused { error, symbols })
}

/// [`plan_swap`]; `symbols` gets the symbol check's report once it is made.
fn plan(
    state: StateOf<'_>,
    node: Node<'_>,
    input: SetInput<'_>,
    symbols: &mut Option<SymbolVersions>,
) -> Result<SetPlan, PreflightError> {
    let present = |n: &str| matches!(state(n), Ok(Some(_)));
    let removal: Vec<String> = input
        .set
        .in_tree_modules_to_remove
        .iter()
        .map(|m| m.kernel_name())
        .collect();
    // What is listed for removal is planned as gone (the loaded module may be the image's
    // already; that is told below, and again at load time).
    let kept = |n: &str| present(n) && !removal.iter().any(|r| r == n);
    let planner = Planner::new(
        Some(input.image),
        node.in_tree,
        node.modprobe,
        node.kernel_release,
        &kept,
    );
    let LoadPlan {
        modules: mut load,
        mut notes,
    } = planner.plan_set(input.set)?;
    let ours: HashMap<&str, &PlannedModule> = load
        .iter()
        .filter(|m| m.origin == Origin::Image)
        .map(|m| (m.name.as_str(), m))
        .collect();
    let state = |n: &str| {
        state(n).map_err(|e| PreflightError(format!("reading the state of module {n}: {e}")))
    };
    let mut unload: Vec<String> = vec![];
    for name in removal {
        if node.in_tree.is_builtin(&name) {
            return Err(PreflightError(format!(
                "{name} is built into the kernel ({}/modules.builtin lists it) and cannot be unloaded: it cannot be replaced by a module unless the kernel builds it as one (=m)",
                node.in_tree.base().display()
            )));
        }
        let Some(st) = state(&name)? else {
            debug!(
                "{}: in-tree {name} is not loaded: nothing to unload",
                input.label
            );
            continue;
        };
        if st.builtin {
            return Err(PreflightError(format!(
                "{name} is built into the kernel and cannot be unloaded: it cannot be replaced by a module"
            )));
        }
        if ours
            .get(name.as_str())
            .is_some_and(|m| is_same_module(&st, m))
        {
            debug!("{}: {name} is already the image's module", input.label);
            continue;
        }
        for h in &st.holders {
            if !unload.contains(h) {
                return Err(PreflightError(format!(
                    "{name} is used by {h}: list {h} before {name} in inTreeModulesToRemove, or stop using it"
                )));
            }
        }
        if let Some(r) = node.modprobe.remove_for(&name) {
            notes.push(format!(
                "{}: `remove {} {}` is not run: kmod-day1-load unloads {name} with delete_module",
                r.source, r.pattern, r.value
            ));
        }
        unload.push(name);
    }
    for m in load.iter().filter(|m| m.origin == Origin::Image) {
        if unload.contains(&m.name) {
            continue;
        }
        if let Some(st) = state(&m.name)? {
            let want = m.info.as_ref().and_then(|i| i.srcversion());
            if !is_same_module(&st, m) {
                return Err(PreflightError(format!(
                    "module {} is already loaded with srcversion {}, the image has {}: add {} to inTreeModulesToRemove",
                    m.name,
                    st.srcversion.as_deref().unwrap_or("none"),
                    want.unwrap_or("none"),
                    m.name
                )));
            }
        }
    }
    for m in &mut load {
        m.already_loaded = present(&m.name) && !unload.contains(&m.name);
    }
    let checked = check_symbol_versions(
        node.symvers,
        CheckInput {
            kernel_release: node.kernel_release,
            image_ref: input.image_ref,
            in_tree: node.in_tree,
        },
        &load,
        &mut notes,
    );
    *symbols = Some(checked.report.clone());
    if let Some(e) = checked.refused {
        return Err(e);
    }
    check_signatures(node.module_trust, &mut load, &mut notes)?;
    // After a failure, what this run loaded is unloaded and what it removed is gone.
    let after = |n: &str| present(n) && !unload.iter().any(|u| u == n);
    let rollback = unload
        .iter()
        .rev()
        .map(|name| {
            let plan = plan_load_back(node, &after, name);
            if let Err(e) = &plan {
                notes.push(format!(
                    "a rollback could not load back in-tree {name}: {e}"
                ));
            }
            LoadBack {
                module: name.clone(),
                plan,
            }
        })
        .collect();
    let loading = to_bind(&load);
    let expected = expected_devices(node.sysfs, &unload, &loading).map_err(|e| {
        PreflightError(format!(
            "reading the devices to bind from {}: {e}",
            node.sysfs.display()
        ))
    })?;
    notes.extend(expected.notes);
    Ok(SetPlan {
        unload,
        load,
        firmware: input.firmware.map(Path::to_path_buf),
        rollback,
        devices: expected.devices,
        notes,
        symbols: checked.report,
    })
}

/// The image's modules this plan loads (not those loaded already), with their aliases:
/// what the expected devices must be bound to.
pub fn to_bind(load: &[PlannedModule]) -> Vec<ModuleAliases> {
    load.iter()
        .filter(|m| m.origin == Origin::Image && !m.already_loaded)
        .map(|m| ModuleAliases {
            module: m.name.clone(),
            aliases: m.info.as_ref().map(|i| i.aliases()).unwrap_or_default(),
        })
        .collect()
}

/// The load order that brings in-tree module `name` back, from the node only, with its
/// modprobe.d options; modules `present` now are left out.
pub fn plan_load_back(
    node: Node<'_>,
    present: &dyn Fn(&str) -> bool,
    name: &str,
) -> Result<Vec<PlannedModule>, String> {
    Planner::new(
        None,
        node.in_tree,
        node.modprobe,
        node.kernel_release,
        present,
    )
    .plan_load_back(name)
    .map(|p| p.modules)
    .map_err(|e| e.0)
}

/// Whether the loaded module `st` is the image's module `m`. By srcversion when both have
/// one (kernels with `CONFIG_MODULE_SRCVERSION_ALL`, or modules with `MODULE_VERSION`).
/// Without (Debian builds neither for most modules): a loaded out-of-tree module (taint
/// `O`) for an image module without the `intree` modinfo key, with the same `version` (or none) --
/// the best the kernel lets one tell.
pub fn is_same_module(st: &ModuleState, m: &PlannedModule) -> bool {
    let Some(info) = &m.info else { return false };
    match (st.srcversion.as_deref(), info.srcversion()) {
        (Some(a), Some(b)) => a == b,
        (None, None) => {
            st.taint.contains('O')
                && info.get("intree") != Some("Y")
                && st.version.as_deref() == info.version()
        }
        _ => false,
    }
}
