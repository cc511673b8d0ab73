// SPDX-License-Identifier: Apache-2.0
//! The swap of one module set: execute its plan (`set_plan.rs`): unload the in-tree modules,
//! install firmware, load the out-of-tree modules; on any failure, roll back (unload what this
//! run loaded, load back what it removed, with its modprobe.d options) so the node keeps its
//! in-tree driver and its network.

use std::ffi::CString;
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use kmod_day1_contract::{DeviceStatus, ModuleStatus, SetState};
use nix::errno::Errno;
use tracing::{debug, info, warn};

use crate::binding::{driving_module, wait_bound, ExpectedDevice, ModuleAliases, Unbound};
use crate::decompress::{self, Compression};
use crate::duration::{micros, ms};
use crate::firmware;
use crate::kernel::{explain_load_error, explain_unload_error, KernelModules};
use crate::plan::{Origin, PlannedModule};
use crate::set_plan::{
    is_same_module, plan_load_back, plan_swap, to_bind, Node, SetInput, SetPlan,
};

/// How often a load that finds the in-tree module back (udev's coldplug modprobe racing
/// the swap) unloads it again and retries.
const EEXIST_RETRIES: usize = 3;

/// Retries and wait of an unload that finds the module busy (state coming or going).
const EBUSY_RETRIES: usize = 20;
const EBUSY_WAIT: Duration = Duration::from_millis(25);

/// What the rollback after a failed swap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollback {
    /// Nothing to undo: the swap succeeded, or failed its preflight before touching the
    /// kernel.
    NotNeeded,
    /// What the swap loaded is unloaded and the in-tree modules it removed are back.
    Done,
    /// Undoing failed, with why: an in-tree module may not be back.
    Failed(String),
}

/// The outcome of a swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapResult {
    /// `Loaded`, `Failed` or `NotBound`.
    pub state: SetState,
    /// Modules loaded or found loaded, in load order.
    pub modules: Vec<ModuleStatus>,
    /// In-tree modules unloaded.
    pub removed_in_tree: Vec<String>,
    /// What undoing a failure did.
    pub rollback: Rollback,
    /// The devices the set had to drive, and whether they ended bound to it.
    pub devices: Vec<DeviceStatus>,
    /// Modules were loaded, and no device was expected to bind to them.
    pub drives_no_device: bool,
    /// Time inside module syscalls.
    pub kernel_time: Duration,
    /// The failure; the rollback's own failure is in [`Rollback::Failed`].
    pub error: Option<String>,
}

struct Swap<'k, 'a> {
    k: &'k mut dyn KernelModules,
    node: Node<'a>,
    label: &'a str,
    /// Time inside module syscalls so far.
    kernel_time: Duration,
    loaded_by_us: Vec<String>,
    removed: Vec<String>,
    /// `inTreeModulesToRemove`, kernel names.
    removable: Vec<String>,
    modules: Vec<ModuleStatus>,
    /// The plan's expected devices (checked after the load, and after a rollback).
    expected: Vec<ExpectedDevice>,
    /// Expected devices that did not bind to the set's modules.
    not_bound: Vec<Unbound>,
}

/// Swaps one module set. Never returns early without rolling back what it did.
pub fn swap_set(k: &mut dyn KernelModules, node: Node<'_>, input: SetInput<'_>) -> SwapResult {
    let mut s = Swap {
        k,
        node,
        label: input.label,
        kernel_time: Duration::ZERO,
        loaded_by_us: vec![],
        removed: vec![],
        removable: input
            .set
            .in_tree_modules_to_remove
            .iter()
            .map(|m| m.kernel_name())
            .collect(),
        modules: vec![],
        expected: vec![],
        not_bound: vec![],
    };
    let plan = {
        let k = &*s.k;
        let state = |n: &str| k.module_state(n);
        match plan_swap(&state, node, input) {
            Ok(p) => p,
            Err(e) => return s.finish(Some(e.to_string()), Rollback::NotNeeded),
        }
    };
    info!("{}: {}", s.label, plan.symbols.summary());
    for n in &plan.notes {
        info!("{}: {n}", s.label);
    }
    s.expected.clone_from(&plan.devices);
    match s.apply(&plan) {
        Ok(()) => s.finish(None, Rollback::NotNeeded),
        Err(e) => {
            warn!("{}: {e}; rolling back", s.label);
            let rollback = match s.rollback() {
                Ok(()) => {
                    info!("{}: rolled back: in-tree modules restored", s.label);
                    Rollback::Done
                }
                Err(why) => Rollback::Failed(why),
            };
            s.finish(Some(e), rollback)
        }
    }
}

impl Swap<'_, '_> {
    fn finish(self, error: Option<String>, rollback: Rollback) -> SwapResult {
        let devices = self.device_statuses();
        SwapResult {
            state: match (&error, self.not_bound.is_empty()) {
                (None, _) => SetState::Loaded,
                (Some(_), true) => SetState::Failed,
                (Some(_), false) => SetState::NotBound,
            },
            drives_no_device: error.is_none()
                && self.expected.is_empty()
                && !self.loaded_by_us.is_empty(),
            modules: if error.is_none() {
                self.modules
            } else {
                vec![]
            },
            removed_in_tree: self.removed,
            rollback,
            devices,
            kernel_time: self.kernel_time,
            error,
        }
    }

    /// Each expected device: bound to the set, or why not and what drives it now.
    fn device_statuses(&self) -> Vec<DeviceStatus> {
        self.expected
            .iter()
            .map(|d| {
                let failed = self.not_bound.iter().find(|u| u.device.path == d.path);
                DeviceStatus {
                    device: format!("{} {}", d.bus, d.name),
                    interfaces: d.interfaces.clone(),
                    bound: failed.is_none(),
                    driver_module: driving_module(&d.path),
                    error: failed.map(|u| u.why.clone()),
                }
            })
            .collect()
    }

    /// After the load: every expected device bound to one of the set's modules within
    /// the bind timeout, else the failure naming the devices.
    fn check_bound(&mut self, plan: &SetPlan) -> Result<(), String> {
        let ours = to_bind(&plan.load);
        if ours.is_empty() {
            return Ok(());
        }
        if plan.devices.is_empty() {
            info!(
                "{}: drives no device: none was bound to the in-tree modules removed and none matches the aliases of {}",
                self.label,
                names(&ours)
            );
            return Ok(());
        }
        let t = Instant::now();
        self.not_bound = wait_bound(&plan.devices, &ours, self.node.bind_timeout);
        if self.not_bound.is_empty() {
            let labels: Vec<String> = plan.devices.iter().map(|d| d.label()).collect();
            info!(
                "{}: {} bound to {} in {} ms",
                self.label,
                labels.join(", "),
                names(&ours),
                ms(t.elapsed())
            );
            return Ok(());
        }
        let why: Vec<String> = self
            .not_bound
            .iter()
            .map(|u| format!("{}: {}", u.device.label(), u.why))
            .collect();
        Err(format!("not bound: {}", why.join("; ")))
    }

    /// After a rollback's load-back: the expected devices bound again (to any driver; the
    /// in-tree modules back), within the bind timeout.
    fn check_bound_again(&self) -> Result<(), String> {
        let back: Vec<ModuleAliases> = self
            .removed
            .iter()
            .map(|m| ModuleAliases {
                module: m.clone(),
                aliases: vec![],
            })
            .collect();
        let devices: Vec<ExpectedDevice> = self
            .expected
            .iter()
            .filter(|d| d.why.starts_with("bound to in-tree"))
            .cloned()
            .collect();
        if back.is_empty() || devices.is_empty() {
            return Ok(());
        }
        let unbound = wait_bound(&devices, &back, self.node.bind_timeout);
        if unbound.is_empty() {
            let labels: Vec<String> = devices.iter().map(|d| d.label()).collect();
            info!(
                "{}: rollback: {} bound to in-tree {} again",
                self.label,
                labels.join(", "),
                names(&back)
            );
            return Ok(());
        }
        let why: Vec<String> = unbound
            .iter()
            .map(|u| format!("{}: {}", u.device.label(), u.why))
            .collect();
        Err(format!("after loading back: {}", why.join("; ")))
    }

    fn is_present(&self, name: &str) -> bool {
        matches!(self.k.module_state(name), Ok(Some(_)))
    }

    fn apply(&mut self, plan: &SetPlan) -> Result<(), String> {
        for name in &plan.unload {
            self.unload_in_tree(name)?;
        }
        if let Some(src) = &plan.firmware {
            let t = Instant::now();
            let c = firmware::install_firmware(src, self.node.firmware_dir)
                .map_err(|e| e.to_string())?;
            for s in &c.skipped {
                warn!(
                    "{}: firmware {s} is a symlink leaving the image's tree: not copied",
                    self.label
                );
            }
            match firmware::ensure_search_path(self.node.sysfs, self.node.firmware_dir) {
                Ok(Some(old)) => info!(
                    "{}: firmware search path set to {} (was {old:?})",
                    self.label,
                    self.node.firmware_dir.display()
                ),
                Ok(None) => {}
                Err(e) => warn!("{}: {e}: the kernel may not find the firmware", self.label),
            }
            info!(
                "{}: firmware installed in {}: {} written, {} unchanged in {} ms",
                self.label,
                self.node.firmware_dir.display(),
                c.written,
                c.unchanged,
                ms(t.elapsed())
            );
        }
        for m in &plan.load {
            match self.load_planned(m) {
                Err(e) if !m.required => warn!(
                    "{}: {e}; going on without it: a softdep ({}), as modprobe does",
                    self.label, m.reason
                ),
                r => r?,
            }
        }
        self.check_bound(plan)
    }

    fn unload_in_tree(&mut self, name: &str) -> Result<(), String> {
        let st = self
            .k
            .module_state(name)
            .map_err(|e| format!("reading the state of module {name}: {e}"))?;
        let Some(st) = st else { return Ok(()) };
        if !st.holders.is_empty() {
            return Err(format!(
                "unloading in-tree {name}: used by {}; list those before it in inTreeModulesToRemove",
                st.holders.join(", ")
            ));
        }
        if st.refcnt > 0 {
            return Err(format!(
                "unloading in-tree {name}: in use (refcount {}) by something other than a module",
                st.refcnt
            ));
        }
        let d = self
            .delete(name)
            .map_err(|e| format!("unloading in-tree {name}: {e}"))?;
        self.removed.push(name.to_owned());
        info!("{}: unloaded in-tree {name} in {} ms", self.label, ms(d));
        Ok(())
    }

    fn load_planned(&mut self, m: &PlannedModule) -> Result<(), String> {
        let version = m.info.as_ref().and_then(|i| i.version()).map(str::to_owned);
        let srcversion = m
            .info
            .as_ref()
            .and_then(|i| i.srcversion())
            .map(str::to_owned);
        let st = self
            .k
            .module_state(&m.name)
            .map_err(|e| format!("reading the state of module {}: {e}", m.name))?;
        let (already_loaded, load_time) = match st {
            Some(st) if m.origin == Origin::InTree || st.builtin => {
                debug!("{}: {} is already loaded", self.label, m.name);
                (true, Duration::ZERO)
            }
            Some(st) if is_same_module(&st, m) => {
                info!(
                    "{}: {} already loaded (srcversion {}): nothing to do",
                    self.label,
                    m.name,
                    st.srcversion.as_deref().unwrap_or("-")
                );
                (true, Duration::ZERO)
            }
            Some(st) => {
                return Err(format!(
                    "loading {}: a module of that name appeared with srcversion {}",
                    m.name,
                    st.srcversion.as_deref().unwrap_or("none")
                ))
            }
            None => {
                let d = self.load_with_retry(m)?;
                self.loaded_by_us.push(m.name.clone());
                info!(
                    "{}: loaded {} {} srcversion {} from {} in {} ms",
                    self.label,
                    m.name,
                    version.as_deref().unwrap_or("(no version)"),
                    srcversion.as_deref().unwrap_or("-"),
                    match m.origin {
                        Origin::Image => "image",
                        Origin::InTree => "node",
                    },
                    ms(d)
                );
                (false, d)
            }
        };
        self.modules.push(ModuleStatus {
            name: m.name.clone(),
            version,
            srcversion,
            already_loaded,
            unsigned: m.signature == Some(crate::secure_boot::Verdict::Unsigned),
            load_us: micros(load_time),
        });
        Ok(())
    }

    /// Loads, and when udev loaded the in-tree module meanwhile (EEXIST for a module listed
    /// in inTreeModulesToRemove: removed by this run and loaded again, or not loaded yet at
    /// preflight and loaded since), unloads that and tries again. Rollback loads it back.
    fn load_with_retry(&mut self, m: &PlannedModule) -> Result<Duration, String> {
        let mut attempt = 0;
        loop {
            match self.load_file(&m.name, &m.path, &m.param_string()) {
                Err((Errno::EEXIST, _))
                    if self.removable.contains(&m.name) && attempt < EEXIST_RETRIES =>
                {
                    attempt += 1;
                    warn!(
                        "{}: in-tree {} was loaded meanwhile (udev?): unloading it",
                        self.label, m.name
                    );
                    self.delete(&m.name)
                        .map_err(|e| format!("unloading in-tree {} again: {e}", m.name))?;
                    if !self.removed.contains(&m.name) {
                        self.removed.push(m.name.clone());
                    }
                }
                Err((_, e)) => {
                    return Err(format!("loading {} ({}): {e}", m.name, m.path.display()))
                }
                Ok(d) => return Ok(d),
            }
        }
    }

    /// `finit_module`, or for a compressed file the kernel cannot decompress, userspace
    /// decompression and `init_module`.
    fn load_file(
        &mut self,
        name: &str,
        path: &Path,
        params: &str,
    ) -> Result<Duration, (Errno, String)> {
        let file = File::open(path).map_err(|e| {
            let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
            (errno, format!("opening {}: {e}", path.display()))
        })?;
        let cparams = CString::new(params)
            .map_err(|_| (Errno::EINVAL, "parameters hold a NUL byte".to_string()))?;
        let compression = Compression::of(path);
        let compressed = compression != Compression::None;
        let t = Instant::now();
        let mut r = self.k.finit_module(&file, &cparams, compressed);
        let mut d = t.elapsed();
        if compressed && matches!(r, Err(Errno::EINVAL | Errno::EOPNOTSUPP)) {
            debug!(
                "{}: the kernel cannot decompress {}: decompressing it here",
                self.label,
                path.display()
            );
            let image = decompress::read_module(path).map_err(|e| {
                (
                    Errno::EINVAL,
                    format!("decompressing {}: {e}", path.display()),
                )
            })?;
            let t = Instant::now();
            r = self.k.init_module(&image, &cparams);
            d += t.elapsed();
        }
        self.kernel_time += d;
        match r {
            Ok(()) => Ok(d),
            Err(errno) => {
                let messages = self.k.kernel_messages(name);
                Err((errno, explain_load_error(errno, path, &messages)))
            }
        }
    }

    /// `delete_module`, timed; not loaded counts as done.
    ///
    /// EBUSY means the module is still initialising or going away (udev's coldplug
    /// `modprobe` may be loading it right now, as the unit does not wait for udev to
    /// settle): that passes in milliseconds, so it is retried for up to half a second.
    fn delete(&mut self, name: &str) -> Result<Duration, String> {
        let mut total = Duration::ZERO;
        for attempt in 0..=EBUSY_RETRIES {
            let t = Instant::now();
            let r = self.k.delete_module(name);
            let d = t.elapsed();
            self.kernel_time += d;
            total += d;
            match r {
                Ok(()) | Err(Errno::ENOENT) => return Ok(total),
                Err(Errno::EBUSY) if attempt < EBUSY_RETRIES => {
                    debug!("{}: {name} is busy (initialising?): retrying", self.label);
                    std::thread::sleep(EBUSY_WAIT);
                }
                Err(e) => return Err(explain_unload_error(e, name)),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Unloads what this run loaded (last first), then loads back the in-tree modules it
    /// removed (last removed first), with their dependencies from the node.
    fn rollback(&mut self) -> Result<(), String> {
        let mut errors = vec![];
        let mut stuck = vec![];
        for name in std::mem::take(&mut self.loaded_by_us).into_iter().rev() {
            match self.delete(&name) {
                Ok(_) => info!("{}: rollback: unloaded {name}", self.label),
                Err(e) => {
                    errors.push(format!("unloading {name}: {e}"));
                    stuck.push(name);
                }
            }
        }
        for name in self.removed.clone().into_iter().rev() {
            if stuck.contains(&name) {
                errors.push(format!(
                    "in-tree {name} cannot be loaded back: the out-of-tree {name} is still loaded"
                ));
                continue;
            }
            let plan = {
                let k = &*self.k;
                let present = |n: &str| matches!(k.module_state(n), Ok(Some(_)));
                match plan_load_back(self.node, &present, &name) {
                    Ok(p) => p,
                    Err(e) => {
                        errors.push(format!("loading back in-tree {name}: {e}"));
                        continue;
                    }
                }
            };
            for m in plan {
                if self.is_present(&m.name) {
                    continue;
                }
                match self.load_file(&m.name, &m.path, &m.param_string()) {
                    Ok(d) => info!(
                        "{}: rollback: loaded back in-tree {} in {} ms",
                        self.label,
                        m.name,
                        ms(d)
                    ),
                    // udev loaded it between the check above and this load: every module
                    // this run loaded is unloaded by now, so the one present is the node's.
                    Err((Errno::EEXIST, _)) if self.is_present(&m.name) => info!(
                        "{}: rollback: in-tree {} was loaded meanwhile (udev)",
                        self.label, m.name
                    ),
                    Err((_, e)) if !m.required => warn!(
                        "{}: rollback: {} ({}) not loaded: {e}; as modprobe, going on",
                        self.label, m.name, m.reason
                    ),
                    Err((_, e)) => errors.push(format!("loading back in-tree {}: {e}", m.name)),
                }
            }
        }
        if errors.is_empty() {
            if let Err(e) = self.check_bound_again() {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// `e1000, e1000e`.
fn names(modules: &[ModuleAliases]) -> String {
    let n: Vec<&str> = modules.iter().map(|m| m.module.as_str()).collect();
    n.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules_dep::ModuleIndex;
    use crate::testutil::{BindRule, FakeKernel, FakeSysfs, Fixture, KVER};
    use kmod_day1_contract::ModuleSet;

    /// Node: in-tree ice (xz) needing dpll (zst); ice loaded. Image: ice needing dpll.
    fn ice_node() -> (Fixture, FakeKernel) {
        let f = Fixture::new();
        f.node_module("dpll", "kernel/drivers/dpll/dpll.ko.zst", &[]);
        f.node_module("ice", "kernel/drivers/net/ice.ko.xz", &["dpll"]);
        f.image_module("ice", "SRC-OOT", &["dpll"]);
        f.image_dep("ice.ko:\n");
        let mut k = FakeKernel::new();
        k.preload("ice", "INTREE-ice");
        (f, k)
    }

    fn swap(f: &Fixture, k: &mut FakeKernel, set: &ModuleSet, fw: Option<&Path>) -> SwapResult {
        let in_tree = ModuleIndex::in_tree(f.node_dir());
        let image = ModuleIndex::image(f.image_dir());
        let fw_dir = f.firmware_dir();
        let sysfs = f.sysfs();
        let modprobe = f.modprobe_config();
        let node = Node {
            kernel_release: KVER,
            in_tree: &in_tree,
            modprobe: &modprobe,
            sysfs: &sysfs,
            firmware_dir: &fw_dir,
            bind_timeout: Duration::from_millis(300),
            module_trust: &crate::secure_boot::ModuleTrust::not_enforced(),
            symvers: &crate::symvers::KernelSymvers::search(&f.node_dir(), &f.path("boot"), KVER),
        };
        swap_set(
            k,
            node,
            SetInput {
                label: "cfg/s1",
                set,
                image: &image,
                firmware: fw,
                image_ref: "registry.local/kmod/s1:v1",
            },
        )
    }

    fn snapshot(k: &FakeKernel) -> Vec<(String, Option<String>)> {
        k.loaded
            .iter()
            .map(|(n, m)| (n.clone(), m.srcversion.clone()))
            .collect()
    }

    #[test]
    fn swaps_the_in_tree_module_with_dependencies_first() {
        let (f, mut k) = ice_node();
        let mut set = f.set(&["ice"], &["ice"]);
        set.modules[0].parameters = vec!["debug=1".parse().unwrap()];
        let r = swap(&f, &mut k, &set, None);
        assert_eq!(r.error, None);
        assert_eq!(r.state, SetState::Loaded);
        assert_eq!(k.calls, ["unload ice", "load dpll", "load ice"]);
        assert_eq!(k.loaded["ice"].srcversion.as_deref(), Some("SRC-OOT"));
        assert_eq!(k.loaded["ice"].params, "debug=1");
        assert_eq!(k.loaded["dpll"].params, "");
        assert_eq!(r.removed_in_tree, ["ice"]);
        let names: Vec<_> = r
            .modules
            .iter()
            .map(|m| (m.name.as_str(), m.already_loaded))
            .collect();
        assert_eq!(names, [("dpll", false), ("ice", false)]);
        assert_eq!(r.modules[1].version.as_deref(), Some("1.0-ice"));
        assert_eq!(r.modules[1].srcversion.as_deref(), Some("SRC-OOT"));
        assert_eq!(r.rollback, Rollback::NotNeeded);
    }

    #[test]
    fn a_second_run_changes_nothing() {
        let (f, mut k) = ice_node();
        let set = f.set(&["ice"], &["ice"]);
        assert_eq!(swap(&f, &mut k, &set, None).state, SetState::Loaded);
        let before = snapshot(&k);
        k.calls.clear();
        let r = swap(&f, &mut k, &set, None);
        assert_eq!(r.state, SetState::Loaded, "{:?}", r.error);
        assert!(k.calls.is_empty(), "{:?}", k.calls);
        assert!(r.modules.iter().all(|m| m.already_loaded));
        assert!(r.removed_in_tree.is_empty());
        assert_eq!(snapshot(&k), before);
    }

    #[test]
    fn modules_without_srcversion_are_told_apart_by_taint_and_version() {
        // Debian: no CONFIG_MODULE_SRCVERSION_ALL, so neither module has a srcversion.
        let (f, mut k) = ice_node();
        let vermagic = format!("{KVER} SMP preempt mod_unload modversions ");
        let fields = [
            ("name", "ice"),
            ("version", "2.0"),
            ("depends", "dpll"),
            ("vermagic", vermagic.as_str()),
        ];
        f.image_module_with("ice", &fields);
        k.loaded.get_mut("ice").unwrap().srcversion = None; // in-tree: taint ""
        let set = f.set(&["ice"], &["ice"]);
        let r = swap(&f, &mut k, &set, None);
        assert_eq!(r.state, SetState::Loaded, "{:?}", r.error);
        assert_eq!(k.calls, ["unload ice", "load dpll", "load ice"]);
        assert_eq!(k.loaded["ice"].taint, "O");
        // Rerun: the loaded OOT ice (taint O, version 2.0) is the image's: nothing to do.
        k.calls.clear();
        let r = swap(&f, &mut k, &set, None);
        assert_eq!(r.state, SetState::Loaded, "{:?}", r.error);
        assert!(k.calls.is_empty(), "{:?}", k.calls);
        // Another OOT version loaded is not the image's.
        k.loaded.get_mut("ice").unwrap().version = Some("1.9".into());
        let r = swap(&f, &mut k, &set, None);
        assert_eq!(r.state, SetState::Loaded, "{:?}", r.error);
        assert_eq!(k.calls, ["unload ice", "load ice"]);
    }

    #[test]
    fn compressed_node_modules_load_without_in_kernel_decompression() {
        let (f, mut k) = ice_node();
        k.in_kernel_decompress = false;
        let r = swap(&f, &mut k, &f.set(&["ice"], &["ice"]), None);
        assert_eq!(r.state, SetState::Loaded, "{:?}", r.error);
        // dpll.ko.zst: finit refused (EOPNOTSUPP), then decompressed here and init_module.
        assert_eq!(k.calls, ["unload ice", "init dpll", "load ice"]);
        assert_eq!(k.loaded["ice"].srcversion.as_deref(), Some("SRC-OOT"));
    }

    #[test]
    fn rolls_back_after_a_failure_at_each_step() {
        type Setup = fn(&Fixture, &mut FakeKernel);
        let steps: &[(&str, Setup, &str)] = &[
            ("loading a dependency", |_, k| k.fail_load("dpll", Errno::ENOMEM), "loading dpll"),
            (
                "loading the module",
                |_, k| k.fail_load("ice", Errno::EKEYREJECTED),
                "signature rejected: Secure Boot needs modules signed with an enrolled key (mokutil)",
            ),
            ("a wrong kernel", |_, k| k.fail_load("ice", Errno::ENOEXEC), "invalid module format: built for another kernel?"),
            (
                "unloading the second in-tree module",
                |_, k| k.fail_unload("ice", Errno::EAGAIN),
                "ice is in use",
            ),
            (
                "installing firmware",
                |f, _| std::fs::write(f.firmware_dir(), b"not a directory").unwrap(),
                "installing firmware",
            ),
        ];
        for (step, setup, want) in steps {
            let (f, mut k) = ice_node();
            // A second in-tree module removed first, to see both come back.
            f.node_module("ice_aux", "kernel/ice_aux.ko", &[]);
            k.preload("ice_aux", "INTREE-ice_aux");
            let fw = f.image_firmware();
            std::fs::create_dir_all(&fw).unwrap();
            std::fs::write(fw.join("ice.pkg"), b"pkg").unwrap();
            setup(&f, &mut k);
            let before = snapshot(&k);
            let r = swap(&f, &mut k, &f.set(&["ice"], &["ice_aux", "ice"]), Some(&fw));
            assert_eq!(r.state, SetState::Failed, "{step}");
            assert_eq!(r.rollback, Rollback::Done, "{step}: {:?}", r.error);
            let e = r.error.unwrap();
            assert!(e.contains(want), "{step}: {e}");
            // Back to where it was: the in-tree modules, nothing of the image.
            assert_eq!(
                snapshot(&k)
                    .into_iter()
                    .filter(|(n, _)| n != "dpll")
                    .collect::<Vec<_>>(),
                before,
                "{step}: {:?}",
                k.calls
            );
        }
    }

    #[test]
    fn a_failed_rollback_is_reported() {
        let (f, mut k) = ice_node();
        k.fail_load("ice", Errno::ENOEXEC); // the image's ice
        k.fail_load("ice", Errno::ENOMEM); // the in-tree ice, loaded back
        let r = swap(&f, &mut k, &f.set(&["ice"], &["ice"]), None);
        assert_eq!(r.state, SetState::Failed);
        let Rollback::Failed(why) = &r.rollback else {
            panic!("{:?}", r.rollback)
        };
        assert!(why.contains("loading back in-tree ice"), "{why}");
        let e = r.error.unwrap();
        assert!(e.contains("invalid module format"), "{e}");
    }

    #[test]
    fn holders_are_checked_before_anything_is_touched() {
        let (f, mut k) = ice_node();
        f.node_module("irdma", "kernel/irdma.ko.xz", &["ice"]);
        k.loaded
            .get_mut("ice")
            .unwrap()
            .holders
            .insert("irdma".into());
        k.loaded.get_mut("ice").unwrap().refcnt = 1;
        k.preload("irdma", "INTREE-irdma");
        k.loaded.get_mut("irdma").unwrap().deps = vec!["ice".into()];
        let before = snapshot(&k);
        let r = swap(&f, &mut k, &f.set(&["ice"], &["ice"]), None);
        let e = r.error.unwrap();
        assert!(
            e.contains("ice is used by irdma: list irdma before ice"),
            "{e}"
        );
        assert!(k.calls.is_empty());
        assert_eq!(r.rollback, Rollback::NotNeeded);
        assert_eq!(snapshot(&k), before);

        // Listed in order: irdma goes first; a failure brings both back, ice first.
        k.fail_load("ice", Errno::ENOEXEC);
        let r = swap(&f, &mut k, &f.set(&["ice"], &["irdma", "ice"]), None);
        assert_eq!(r.rollback, Rollback::Done, "{:?}", r.error);
        assert_eq!(
            k.calls,
            [
                "unload irdma",
                "unload ice",
                "load dpll",
                "load ice",
                "unload dpll",
                // in-tree ice needs dpll too, per the node's modules.dep
                "load dpll",
                "load ice",
                "load irdma"
            ]
        );
        assert_eq!(
            snapshot(&k)
                .into_iter()
                .filter(|(n, _)| n != "dpll")
                .collect::<Vec<_>>(),
            before
        );
    }

    #[test]
    fn preflight_refuses_what_cannot_work() {
        // Built for another kernel: the in-tree ice stays.
        let (f, mut k) = ice_node();
        f.image_module_with(
            "ice",
            &[
                ("name", "ice"),
                ("srcversion", "X"),
                ("vermagic", "6.2.0 SMP "),
            ],
        );
        let r = swap(&f, &mut k, &f.set(&["ice"], &["ice"]), None);
        assert!(r.error.unwrap().contains("preflight: module ice"));
        assert!(k.calls.is_empty());
        assert_eq!(k.loaded["ice"].srcversion.as_deref(), Some("INTREE-ice"));

        // Loaded with another srcversion and not listed for removal.
        let (f, mut k) = ice_node();
        let r = swap(&f, &mut k, &f.set(&["ice"], &[]), None);
        let e = r.error.unwrap();
        assert!(e.contains("already loaded with srcversion INTREE-ice, the image has SRC-OOT: add ice to inTreeModulesToRemove"), "{e}");
        assert!(k.calls.is_empty());

        // Built into the kernel.
        let (f, mut k) = ice_node();
        k.loaded.remove("ice");
        k.builtin.insert("ice".into());
        let e = swap(&f, &mut k, &f.set(&["ice"], &["ice"]), None)
            .error
            .unwrap();
        assert!(e.contains("built into the kernel"), "{e}");
        // Built in as modules.builtin says, without a /sys/module entry: refused too.
        let (f, mut k) = ice_node();
        k.loaded.remove("ice");
        f.node_builtin("ice");
        let e = swap(&f, &mut k, &f.set(&["ice"], &["ice"]), None)
            .error
            .unwrap();
        assert!(e.contains("ice is built into the kernel ("), "{e}");
        assert!(
            e.contains("modules.builtin lists it) and cannot be unloaded"),
            "{e}"
        );
        assert!(k.calls.is_empty());

        // Not loaded at all is fine.
        let (f, mut k) = ice_node();
        k.loaded.clear();
        let r = swap(&f, &mut k, &f.set(&["ice"], &["ice"]), None);
        assert_eq!(r.state, SetState::Loaded, "{:?}", r.error);
        assert!(r.removed_in_tree.is_empty());
    }

    #[test]
    fn udev_reloading_the_in_tree_module_is_retried() {
        let (f, mut k) = ice_node();
        k.fail_load("ice", Errno::EEXIST);
        let r = swap(&f, &mut k, &f.set(&["ice"], &["ice"]), None);
        assert_eq!(r.state, SetState::Loaded, "{:?}", r.error);
        assert_eq!(
            k.calls,
            [
                "unload ice",
                "load dpll",
                "load ice",
                "unload ice",
                "load ice"
            ]
        );
    }

    #[test]
    fn a_module_still_initialising_is_waited_for() {
        let (f, mut k) = ice_node();
        k.fail_unload("ice", Errno::EBUSY);
        k.fail_unload("ice", Errno::EBUSY);
        let r = swap(&f, &mut k, &f.set(&["ice"], &["ice"]), None);
        assert_eq!(r.state, SetState::Loaded, "{:?}", r.error);
        assert_eq!(k.calls[..3], ["unload ice", "unload ice", "unload ice"]);

        let (f, mut k) = ice_node();
        for _ in 0..=EBUSY_RETRIES {
            k.fail_unload("ice", Errno::EBUSY);
        }
        let r = swap(&f, &mut k, &f.set(&["ice"], &["ice"]), None);
        assert!(r.error.unwrap().contains("[EBUSY]"));
        assert_eq!(k.loaded["ice"].srcversion.as_deref(), Some("INTREE-ice"));
    }

    #[test]
    fn udev_loading_the_in_tree_module_after_preflight_is_handled() {
        // Not loaded at preflight; udev loads it before our finit_module: EEXIST.
        let (f, mut k) = ice_node();
        k.loaded.clear();
        k.fail_load("ice", Errno::EEXIST);
        let r = swap(&f, &mut k, &f.set(&["ice"], &["ice"]), None);
        assert_eq!(r.state, SetState::Loaded, "{:?}", r.error);
        assert_eq!(r.removed_in_tree, ["ice"]);
        // Not listed for removal: that is an error, not a fight.
        let (f, mut k) = ice_node();
        k.loaded.clear();
        k.fail_load("ice", Errno::EEXIST);
        let e = swap(&f, &mut k, &f.set(&["ice"], &[]), None).error.unwrap();
        assert!(
            e.contains("already loaded: add it to inTreeModulesToRemove"),
            "{e}"
        );
    }

    #[test]
    fn udev_loading_the_in_tree_module_during_the_rollback_counts_as_loaded_back() {
        let (f, mut k) = ice_node();
        // The out-of-tree ice fails its init; udev loads the in-tree ice just before the
        // rollback's own load of it (the second load of ice): EEXIST, and ice is present.
        k.fail_load("ice", Errno::ENODEV);
        k.udev_race = Some(("ice".into(), 2));
        let r = swap(&f, &mut k, &f.set(&["ice"], &["ice"]), None);
        assert_eq!(r.state, SetState::Failed);
        assert_eq!(r.rollback, Rollback::Done, "{:?}", r.error);
        assert!(k.loaded.contains_key("ice"));
    }

    #[test]
    fn unknown_symbols_are_named() {
        let (f, mut k) = ice_node();
        // depmod's modules.builtin says so, the kernel disagrees: the symbol is missing.
        f.image_module("ice", "SRC-OOT", &["dpll", "ghost"]);
        f.node_builtin("ghost");
        let r = swap(&f, &mut k, &f.set(&["ice"], &["ice"]), None);
        let e = r.error.unwrap();
        assert!(e.contains("unknown symbol ghost_symbol"), "{e}");
        assert_ne!(r.rollback, Rollback::NotNeeded);
        assert_eq!(k.loaded["ice"].srcversion.as_deref(), Some("INTREE-ice"));
    }

    #[test]
    fn missing_files_name_their_path() {
        let (f, mut k) = ice_node();
        let p = f.node_dir().join("kernel/drivers/dpll/dpll.ko.zst");
        std::fs::remove_file(&p).unwrap();
        let e = swap(&f, &mut k, &f.set(&["ice"], &["ice"]), None)
            .error
            .unwrap();
        assert!(e.contains(&p.display().to_string()), "{e}");
        assert!(k.calls.is_empty(), "preflight catches it: {:?}", k.calls);
    }

    #[test]
    fn modprobe_options_and_softdeps_apply_to_the_swap_and_the_rollback() {
        let (f, mut k) = ice_node();
        f.node_module("pre_x", "kernel/pre_x.ko", &[]);
        f.modprobe_d(
            "etc/modprobe.d/ice.conf",
            "options ice from_conf=1\noptions dpll d=2\nsoftdep ice pre: pre_x\n",
        );
        f.set_cmdline("ice.from_cmdline=3");
        let mut set = f.set(&["ice"], &["ice"]);
        set.modules[0].parameters = vec!["from_config=4".parse().unwrap()];
        let r = swap(&f, &mut k, &set, None);
        assert_eq!(r.state, SetState::Loaded, "{:?}", r.error);
        assert_eq!(
            k.calls,
            ["unload ice", "load dpll", "load pre_x", "load ice"]
        );
        assert_eq!(
            k.loaded["ice"].params,
            "from_conf=1 from_cmdline=3 from_config=4"
        );
        assert_eq!(k.loaded["dpll"].params, "d=2");

        // A failure: the in-tree ice comes back with its modprobe.d and command-line options
        // (not the config's parameters, which are the image module's).
        let (f, mut k) = ice_node();
        f.node_module("pre_x", "kernel/pre_x.ko", &[]);
        f.modprobe_d(
            "etc/modprobe.d/ice.conf",
            "options ice from_conf=1\nsoftdep ice pre: pre_x\n",
        );
        f.set_cmdline("ice.from_cmdline=3");
        k.fail_load("ice", Errno::ENOEXEC);
        let mut set = f.set(&["ice"], &["ice"]);
        set.modules[0].parameters = vec!["from_config=4".parse().unwrap()];
        let r = swap(&f, &mut k, &set, None);
        assert_eq!(r.rollback, Rollback::Done, "{:?}", r.error);
        assert_eq!(k.loaded["ice"].srcversion.as_deref(), Some("INTREE-ice"));
        assert_eq!(k.loaded["ice"].params, "from_conf=1 from_cmdline=3");
        assert!(k.loaded.contains_key("pre_x"), "{:?}", k.calls);
    }

    #[test]
    fn a_failing_softdep_is_a_warning_as_with_modprobe() {
        let (f, mut k) = ice_node();
        f.node_module("pre_x", "kernel/pre_x.ko", &[]);
        f.modprobe_d("etc/modprobe.d/ice.conf", "softdep ice pre: pre_x\n");
        k.fail_load("pre_x", Errno::ENOMEM);
        let r = swap(&f, &mut k, &f.set(&["ice"], &["ice"]), None);
        assert_eq!(r.state, SetState::Loaded, "{:?}", r.error);
        assert_eq!(k.loaded["ice"].srcversion.as_deref(), Some("SRC-OOT"));
        assert!(!k.loaded.contains_key("pre_x"));
        let names: Vec<_> = r.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["dpll", "ice"]);
    }

    #[test]
    fn install_commands_block_loads_but_not_removals() {
        // `install ice /bin/false` hardens the in-tree ice: removing it is fine, loading the
        // image's ice is not (modprobe would run /bin/false).
        let (f, mut k) = ice_node();
        f.modprobe_d("etc/modprobe.d/harden.conf", "install ice /bin/false\n");
        let r = swap(&f, &mut k, &f.set(&["ice"], &["ice"]), None);
        let e = r.error.unwrap();
        assert!(
            e.contains("harden.conf:1: `install ice /bin/false` applies to ice"),
            "{e}"
        );
        assert!(k.calls.is_empty());

        // Hardening an in-tree module the set only removes: fine, but a rollback cannot load
        // it back, and says so.
        let (f, mut k) = ice_node();
        f.node_module("ice_aux", "kernel/ice_aux.ko", &[]);
        k.preload("ice_aux", "INTREE-ice_aux");
        f.modprobe_d("etc/modprobe.d/harden.conf", "install ice_aux /bin/false\n");
        let set = f.set(&["ice"], &["ice_aux", "ice"]);
        let r = swap(&f, &mut k, &set, None);
        assert_eq!(r.state, SetState::Loaded, "{:?}", r.error);
        assert_eq!(r.removed_in_tree, ["ice_aux", "ice"]);

        let (f, mut k) = ice_node();
        f.node_module("ice_aux", "kernel/ice_aux.ko", &[]);
        k.preload("ice_aux", "INTREE-ice_aux");
        f.modprobe_d("etc/modprobe.d/harden.conf", "install ice_aux /bin/false\n");
        k.fail_load("ice", Errno::ENOEXEC);
        let r = swap(&f, &mut k, &set, None);
        let Rollback::Failed(why) = &r.rollback else {
            panic!("{:?}", r.rollback)
        };
        assert!(
            why.contains("loading back in-tree ice_aux: preflight")
                || why.contains("loading back in-tree ice_aux: ")
                    && why.contains("`install ice_aux /bin/false`"),
            "{why}"
        );
        // ice itself is back.
        assert_eq!(k.loaded["ice"].srcversion.as_deref(), Some("INTREE-ice"));
    }

    /// Node: in-tree e1000 driving the VM's NIC `pci 0000:00:03.0 (ens3)`; the image's
    /// e1000 has the aliases `alias` (the fake kernel binds the NIC to it only when
    /// `oot_binds`).
    fn nic_node(alias: &str, oot_binds: bool) -> (Fixture, FakeKernel, FakeSysfs) {
        let f = Fixture::new();
        f.node_module("e1000", "kernel/drivers/net/e1000.ko", &[]);
        let vermagic = format!("{KVER} SMP preempt mod_unload modversions ");
        f.image_module_with(
            "e1000",
            &[
                ("version", "7.3.21-k8-NAPI-kmodday1"),
                ("srcversion", "SRC-OOT"),
                ("alias", alias),
                ("alias", "pci:v00008086d00001000sv*sd*bc*sc*i*"),
                ("name", "e1000"),
                ("vermagic", &vermagic),
            ],
        );
        f.image_dep("e1000.ko:\n");
        let sys = FakeSysfs::at(&f.sysfs());
        sys.device("pci", "0000:00:03.0", NIC, Some("ens3"));
        sys.bind("pci", "0000:00:03.0", "e1000", "e1000");
        let mut k = FakeKernel::new();
        k.preload("e1000", "INTREE-e1000");
        let mut rules = vec![BindRule::new("e1000", "pci", "0000:00:03.0", false)];
        if oot_binds {
            rules.push(BindRule::new("e1000", "pci", "0000:00:03.0", true));
        }
        k.with_sysfs(&f.sysfs(), rules);
        (f, k, sys)
    }

    const NIC: &str = "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00";

    #[test]
    fn the_nic_bound_to_the_new_driver_is_a_swap() {
        let (f, mut k, sys) = nic_node("pci:v00008086d0000100Esv*sd*bc*sc*i*", true);
        let r = swap(&f, &mut k, &f.set(&["e1000"], &["e1000"]), None);
        assert_eq!(r.state, SetState::Loaded, "{:?}", r.error);
        assert_eq!(k.loaded["e1000"].srcversion.as_deref(), Some("SRC-OOT"));
        assert_eq!(
            sys.driver_module("pci", "0000:00:03.0").as_deref(),
            Some("e1000")
        );
        assert_eq!(r.devices.len(), 1);
        assert_eq!(r.devices[0].device, "pci 0000:00:03.0");
        assert_eq!(r.devices[0].interfaces, ["ens3"]);
        assert!(r.devices[0].bound && r.devices[0].error.is_none());
        assert!(!r.drives_no_device);
    }

    #[test]
    fn a_driver_without_the_nic_id_is_rolled_back_as_not_bound() {
        let (f, mut k, sys) = nic_node("pci:v00008086d0000100Fsv*sd*bc*sc*i*", false);
        let t = Instant::now();
        let r = swap(&f, &mut k, &f.set(&["e1000"], &["e1000"]), None);
        // No alias matches the NIC: failed at once, not after the bind timeout.
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(r.state, SetState::NotBound);
        assert_eq!(r.rollback, Rollback::Done);
        assert_eq!(
            k.calls,
            ["unload e1000", "load e1000", "unload e1000", "load e1000"]
        );
        assert_eq!(
            k.loaded["e1000"].srcversion.as_deref(),
            Some("INTREE-e1000")
        );
        assert_eq!(
            sys.driver_module("pci", "0000:00:03.0").as_deref(),
            Some("e1000")
        );
        let e = r.error.unwrap();
        assert!(
            e.contains(
                "not bound: pci 0000:00:03.0 (ens3): no alias of e1000 matches its modalias"
            ),
            "{e}"
        );
        assert!(!r.devices[0].bound);
        assert_eq!(r.devices[0].driver_module.as_deref(), Some("e1000"));
    }

    #[test]
    fn a_driver_whose_probe_binds_nothing_is_waited_for_then_rolled_back() {
        let (f, mut k, _sys) = nic_node("pci:v00008086d0000100Esv*sd*bc*sc*i*", false);
        let t = Instant::now();
        let r = swap(&f, &mut k, &f.set(&["e1000"], &["e1000"]), None);
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(r.state, SetState::NotBound);
        assert_eq!(r.rollback, Rollback::Done);
        assert!(r.error.unwrap().contains("bound to no driver after"));
    }

    #[test]
    fn a_rollback_whose_device_does_not_come_back_says_so() {
        let (f, mut k, _sys) = nic_node("pci:v00008086d0000100Fsv*sd*bc*sc*i*", false);
        k.binds.as_mut().unwrap().1.clear();
        let r = swap(&f, &mut k, &f.set(&["e1000"], &["e1000"]), None);
        assert_eq!(r.state, SetState::NotBound);
        let Rollback::Failed(why) = r.rollback else {
            panic!("{:?}", r.rollback)
        };
        assert!(
            why.contains("after loading back: pci 0000:00:03.0 (ens3)"),
            "{why}"
        );
    }

    #[test]
    fn a_set_without_hardware_loads_and_says_it_drives_nothing() {
        let f = Fixture::new();
        f.image_module("kd1_accel", "SRC-KD1", &[]);
        f.image_dep("kd1_accel.ko:\n");
        FakeSysfs::at(&f.sysfs()).device("pci", "0000:00:03.0", NIC, Some("ens3"));
        let mut k = FakeKernel::new();
        let r = swap(&f, &mut k, &f.set(&["kd1_accel"], &[]), None);
        assert_eq!(r.state, SetState::Loaded, "{:?}", r.error);
        assert!(r.drives_no_device && r.devices.is_empty());
        // A second run loads nothing, so it does not say it again.
        let r = swap(&f, &mut k, &f.set(&["kd1_accel"], &[]), None);
        assert!(!r.drives_no_device);
    }
}
