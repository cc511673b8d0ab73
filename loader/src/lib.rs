// SPDX-License-Identifier: Apache-2.0
//! `kmod-day1-load`: at boot, before the network is configured, swaps in-tree kernel
//! modules for the out-of-tree ones stored by `kmod-day1-pull`, and rolls back on failure.
//!
//! One run: read the escape hatches on the kernel command line, every config in
//! `config.d`, and for each module set the store's ref for the running kernel; then
//! preflight (files, vermagic, dependencies), unload the in-tree modules, install firmware,
//! load the modules in dependency order; on failure unload what was loaded and load the
//! in-tree modules back. Each set's outcome and timings go to the status file.
//!
//! The kernel is reached only through `kernel::KernelModules`, so all of this runs in
//! unit tests against a fake kernel, unprivileged. The binary is [`main_exit_code`]; no
//! other crate uses this library, so its modules are private and the compiler finds what
//! is unused.

mod binding;
mod cli;
mod decompress;
mod dry_run;
mod duration;
mod elf;
mod exit;
mod firmware;
mod fnmatch;
mod gzip;
mod kcmdline;
mod kernel;
mod kmsg;
mod modinfo;
mod modprobe_conf;
mod module_signature;
mod modules_dep;
mod modversions;
mod plan;
mod secure_boot;
mod set_plan;
mod swap;
mod symbol_check;
mod symvers;
#[cfg(test)]
mod testutil;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use kmod_day1_contract::{
    boot_id, is_valid_tree_id, kernel_command_line_text, kernel_release, load_config_dir,
    read_json, write_json_atomic, BootStatus, DeviceStatus, EscapeHatches, KernelRelease,
    LoadedConfig, ModuleSet, ModuleStatus, RefRecord, SetState, SetStatus, StderrLog, StoreLayout,
    UpgradePreflight, BOOT_ID_FILE, CMDLINE_FILE, CONFIG_DIR, OSRELEASE_FILE, STATUS_FILE,
    STATUS_VERSION, STORE_DIR, STORE_VERSION,
};
use tracing::{error, info, warn, Level};

use crate::binding::DEFAULT_BIND_TIMEOUT;
use crate::cli::{parse_args, Command, HELP};
use crate::dry_run::{DryRun, DrySet, KernelView};
use crate::duration::{micros, ms};
use crate::exit::Exit;
use crate::kcmdline::ModuleCmdline;
use crate::kernel::LinuxKernel;
use crate::kernel::{KernelModules, ModuleState};
use crate::modprobe_conf::{ModprobeConfig, MODPROBE_DIRS};
use crate::modules_dep::ModuleIndex;
use crate::secure_boot::{keyring_members, ModuleTrust};
use crate::set_plan::{plan_swap, Node, SetInput};
use crate::swap::{swap_set, Rollback};
use crate::symvers::KernelSymvers;

/// Parses the command line, runs against the running kernel and returns the process exit
/// status. Usage errors go to stderr as they are; after parsing, every line goes through
/// the shared [`StderrLog`].
pub fn main_exit_code() -> ExitCode {
    let opts = match parse_args(std::env::args_os().skip(1)) {
        Ok(Command::Run(o)) => *o,
        Ok(Command::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("kmod-day1-load {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kmod-day1-load: {e}");
            return ExitCode::from(Exit::Config.code());
        }
    };
    StderrLog::new(if opts.verbose {
        Level::DEBUG
    } else {
        Level::INFO
    })
    .install();
    let mut kernel = LinuxKernel::new(&opts.sysfs, &opts.kmsg);
    match run(&opts, &mut kernel) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(Exit::Config.code())
        }
    }
}

/// Where everything is; each field is a command-line flag with the production default.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    /// `--config-dir`: the config files, one per MachineConfig.
    config_dir: PathBuf,
    /// `--store`: the store kmod-day1-pull writes (refs and trees).
    store: PathBuf,
    /// `--status`: the status file this run writes.
    status: PathBuf,
    /// `--kernel-release`: the release to load for; `None`: the running kernel's, read
    /// from [`OSRELEASE_FILE`].
    kernel_release: Option<String>,
    /// `--cmdline`: the kernel command line, for the escape hatches.
    cmdline: PathBuf,
    /// `--modules-root`: the node's modules, `<modules_root>/<kver>`.
    modules_root: PathBuf,
    /// `--sysfs`: for `/sys/module`, the firmware search path and `sig_enforce`.
    sysfs: PathBuf,
    /// `--securityfs`: for the kernel's lockdown mode.
    securityfs: PathBuf,
    /// `--proc-keys`: the kernel's keys, to find the trusted keyrings.
    proc_keys: PathBuf,
    /// `--firmware-dir`: where the image's firmware is copied.
    firmware_dir: PathBuf,
    /// `--kmsg`: the kernel log, read to name unknown symbols.
    kmsg: PathBuf,
    /// `--boot-id-file`: this boot's id, for the status file.
    boot_id_file: PathBuf,
    /// `--modprobe-dir` (repeated): the modprobe.d directories, in kmod's order.
    modprobe_dirs: Vec<PathBuf>,
    /// `--symvers`: the kernel's symbol versions; `None`: the first of
    /// `<modules_root>/<kver>/symvers.gz`, `.../symvers`, `/boot/symvers-<kver>.gz`,
    /// `.../build/Module.symvers` that exists.
    symvers: Option<PathBuf>,
    /// `--bind-timeout`: how long the devices a set must drive may take to bind.
    bind_timeout: Duration,
    /// `--dry-run`: print the plan, touch nothing, write no status.
    dry_run: bool,
    /// `--json`: the dry run's plan as JSON.
    json: bool,
    /// `--verbose`: log debug lines too.
    verbose: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            config_dir: CONFIG_DIR.into(),
            store: STORE_DIR.into(),
            status: STATUS_FILE.into(),
            kernel_release: None,
            cmdline: CMDLINE_FILE.into(),
            modules_root: "/lib/modules".into(),
            sysfs: "/sys".into(),
            securityfs: "/sys/kernel/security".into(),
            proc_keys: "/proc/keys".into(),
            firmware_dir: "/var/lib/firmware".into(),
            kmsg: "/dev/kmsg".into(),
            boot_id_file: BOOT_ID_FILE.into(),
            modprobe_dirs: MODPROBE_DIRS.iter().map(PathBuf::from).collect(),
            symvers: None,
            bind_timeout: DEFAULT_BIND_TIMEOUT,
            dry_run: false,
            json: false,
            verbose: false,
        }
    }
}

/// One run of the loader; returns how it ended. `Err` is a usage or config problem, or an
/// unreadable kernel command line, found before anything was touched ([`Exit::Config`]).
fn run(opts: &Options, k: &mut dyn KernelModules) -> anyhow::Result<Exit> {
    let started = Instant::now();
    // Without the command line, kmod_day1.disable cannot be ruled out: touch nothing.
    let cmdline = kernel_command_line_text(&opts.cmdline)
        .map_err(|e| anyhow!("{e}; doing nothing this boot, as with kmod_day1.disable"))?;
    let hatches = EscapeHatches::parse(&cmdline);
    if hatches.disabled && !opts.dry_run {
        info!("kmod_day1.disable is on the kernel command line: doing nothing this boot");
        return Ok(Exit::Ok);
    }
    let running = || kernel_release(Path::new(OSRELEASE_FILE));
    let kver = match &opts.kernel_release {
        Some(r) => KernelRelease::new(r).context("checking the kernel release")?,
        None => running()?,
    };
    // Only the pull's reboot decision needs the boot id: without it the pull cannot match
    // this status to this boot and does not reboot, but the swap itself can go on.
    let boot_id = if opts.dry_run {
        String::new()
    } else {
        boot_id(&opts.boot_id_file).unwrap_or_else(|e| {
            warn!("{e}; the status gets an empty boot id, so kmod-day1-pull will not reboot; swapping goes on");
            String::new()
        })
    };
    let (configs, bad) = load_config_dir(&opts.config_dir)
        .with_context(|| format!("reading the config directory {}", opts.config_dir.display()))?;
    let mut exit = Exit::Ok;
    let mut errors = vec![];
    for e in bad {
        error!("{e}; skipping this file, the others are used");
        errors.push(e.to_string());
        exit = exit.max(Exit::Config);
    }
    if configs.is_empty() {
        info!("no config in {}: nothing to do", opts.config_dir.display());
    }
    let node_dir = opts.modules_root.join(kver.as_str());
    let in_tree = ModuleIndex::in_tree(&node_dir);
    let modprobe = ModprobeConfig::read(
        &opts.modprobe_dirs,
        &node_dir,
        &ModuleCmdline::parse(&cmdline),
    );
    for w in &modprobe.warnings {
        warn!("modprobe configuration: {w} (as modprobe, going on)");
    }
    let module_trust = ModuleTrust::read(
        &opts.sysfs,
        &opts.securityfs,
        &opts.proc_keys,
        &keyring_members,
    );
    if !configs.is_empty() {
        info!("{}", module_trust.summary());
    }
    // Read only when a set is planned.
    let symvers = match &opts.symvers {
        Some(p) => KernelSymvers::at(p, kver.as_str()),
        None => KernelSymvers::search(&node_dir, Path::new("/boot"), kver.as_str()),
    };
    let node = Node {
        kernel_release: kver.as_str(),
        in_tree: &in_tree,
        modprobe: &modprobe,
        sysfs: &opts.sysfs,
        firmware_dir: &opts.firmware_dir,
        bind_timeout: opts.bind_timeout,
        module_trust: &module_trust,
        symvers: &symvers,
    };
    let store = StoreLayout::new(&opts.store);
    if opts.dry_run {
        // The live kernel's state only when planning for the running kernel.
        let view = match running() {
            Ok(r) if r == kver => KernelView::Running,
            _ => KernelView::FreshBoot,
        };
        let mut dry = DryRun::new(&kver, &node_dir, view, &modprobe, hatches.disabled);
        dry.errors = errors;
        dry.module_trust = Some(&module_trust);
        for c in &configs {
            for set in &c.config.module_sets {
                let (d, set_exit) = dry_run_set(k, view, node, &store, &hatches, c, set, &kver);
                exit = exit.max(set_exit);
                dry.sets.push(d);
            }
        }
        dry.print(opts.json, &opts.firmware_dir);
        return Ok(exit);
    }
    let mut sets = vec![];
    for c in &configs {
        for set in &c.config.module_sets {
            let (status, set_exit) = handle_set(k, node, &store, &hatches, c, set, &kver);
            exit = exit.max(set_exit);
            sets.push(status);
        }
    }
    let status = BootStatus {
        version: STATUS_VERSION,
        kernel_release: kver.to_string(),
        boot_id,
        sets,
        errors,
        total_us: micros(started.elapsed()),
        preflight: upgrade_preflight(&store, &kver),
    };
    if let Err(e) = write_json_atomic(&opts.status, &status) {
        error!("writing the status file {}: {e}", opts.status.display());
    }
    let count = |s: SetState| status.sets.iter().filter(|x| x.state == s).count();
    info!(
        "done in {} ms: {} loaded, {} not stored, {} skipped, {} without image, {} failed, {} not bound; exit code {}",
        ms(started.elapsed()),
        count(SetState::Loaded),
        count(SetState::NotStored),
        count(SetState::Skipped),
        count(SetState::NoImage),
        count(SetState::Failed),
        count(SetState::NotBound),
        exit.code(),
    );
    Ok(exit)
}

/// One module set in a dry run: the plan the real run would execute, from the same planner.
#[allow(clippy::too_many_arguments)]
fn dry_run_set(
    k: &dyn KernelModules,
    view: KernelView,
    node: Node<'_>,
    store: &StoreLayout,
    hatches: &EscapeHatches,
    cfg: &LoadedConfig,
    set: &ModuleSet,
    kver: &KernelRelease,
) -> (DrySet, Exit) {
    let label = format!("{}/{}", cfg.name, set.name);
    let mut d = DrySet::new(&label);
    // The image is told even when it is not stored: the upgrade preflight names it.
    d.image = set.image_for(kver).ok().flatten().map(|i| i.to_string());
    let settled = |mut d: DrySet, o: Box<SetOutcome>| {
        d.state = o.state;
        d.error = o.error;
        (d, o.exit)
    };
    let stored = match stored_ref(store, hatches, cfg, set, kver, &label) {
        Ok(s) => s,
        Err(o) => return settled(d, o),
    };
    d.image = Some(stored.record.image.clone());
    d.manifest_digest = Some(stored.record.manifest_digest.clone());
    let tree = match stored_tree(store, set, &label, &stored) {
        Ok(t) => t,
        Err(o) => return settled(d, o),
    };
    let image = ModuleIndex::image(&tree.modules);
    // Another kernel's boot: nothing loaded but the in-tree modules to remove, which udev
    // usually loads before the loader runs (so the plan shows their unload and rollback).
    let removal: Vec<String> = set
        .in_tree_modules_to_remove
        .iter()
        .map(|m| m.kernel_name())
        .collect();
    let state = |n: &str| match view {
        KernelView::Running => k.module_state(n),
        KernelView::FreshBoot if removal.iter().any(|r| r == n) => Ok(Some(ModuleState::default())),
        KernelView::FreshBoot => Ok(None),
    };
    let input = SetInput {
        label: &label,
        set,
        image: &image,
        firmware: tree.firmware.as_deref(),
        image_ref: &stored.record.image,
    };
    match plan_swap(&state, node, input) {
        Ok(plan) => {
            d.state = SetState::Loaded;
            d.symbols = Some(plan.symbols.clone());
            d.plan = Some(plan);
            (d, Exit::Ok)
        }
        Err(e) => {
            d.state = SetState::Failed;
            d.error = Some(e.to_string());
            d.symbols = e.symbols;
            (d, Exit::Failed)
        }
    }
}

/// What became of one module set in this run.
#[derive(Debug)]
struct SetOutcome {
    /// `Loaded` or `Failed` after a swap; `NotStored`, `NoImage`, `Skipped` or `Failed`
    /// without one.
    state: SetState,
    /// Why the set is not loaded, or what was odd on the way (a ref of a future format).
    error: Option<String>,
    /// The exit status this set asks for.
    exit: Exit,
    /// What undoing a failed swap did.
    rollback: Rollback,
    /// Modules loaded or found loaded, in load order (a loaded set only).
    modules: Vec<ModuleStatus>,
    /// In-tree modules unloaded.
    removed_in_tree: Vec<String>,
    /// The devices the set had to drive.
    devices: Vec<DeviceStatus>,
    /// Loaded, with no device to drive.
    drives_no_device: bool,
    /// Time inside module syscalls.
    kernel_time: Duration,
}

impl SetOutcome {
    /// A set settled without a swap: the kernel was not touched for it.
    fn without_swap(state: SetState, error: Option<String>, exit: Exit) -> Box<Self> {
        Box::new(Self {
            state,
            error,
            exit,
            rollback: Rollback::NotNeeded,
            modules: vec![],
            removed_in_tree: vec![],
            devices: vec![],
            drives_no_device: false,
            kernel_time: Duration::ZERO,
        })
    }

    /// The error for the status file: the failure, then the rollback's own failure.
    fn status_error(&self) -> Option<String> {
        match (&self.error, &self.rollback) {
            (Some(e), Rollback::Failed(why)) => Some(format!("{e}; rollback failed: {why}")),
            (e, _) => e.clone(),
        }
    }
}

/// One module set: finds its stored tree, swaps it in, logs the outcome and returns the
/// set's status record and the exit status it asks for.
fn handle_set(
    k: &mut dyn KernelModules,
    node: Node<'_>,
    store: &StoreLayout,
    hatches: &EscapeHatches,
    cfg: &LoadedConfig,
    set: &ModuleSet,
    kver: &KernelRelease,
) -> (SetStatus, Exit) {
    let started = Instant::now();
    let label = format!("{}/{}", cfg.name, set.name);
    let mut st = SetStatus::new(cfg.name.as_str(), set.name.as_str(), SetState::NotStored);
    let outcome = match stored_ref(store, hatches, cfg, set, kver, &label) {
        Ok(stored) => {
            st.image = Some(stored.record.image.clone());
            st.manifest_digest = Some(stored.record.manifest_digest.clone());
            swap_stored(k, node, store, set, &label, &stored)
        }
        Err(settled) => *settled,
    };
    let overhead_time = started.elapsed().saturating_sub(outcome.kernel_time);
    let error = outcome.status_error();
    match (outcome.state, &error) {
        (SetState::Loaded, _) => info!(
            "{label}: loaded: {} modules ({} already loaded), kernel {} ms, own {} ms",
            outcome.modules.len(),
            outcome.modules.iter().filter(|m| m.already_loaded).count(),
            ms(outcome.kernel_time),
            ms(overhead_time)
        ),
        (SetState::Failed, Some(e)) if outcome.rollback == Rollback::NotNeeded => {
            error!("{label}: failed, nothing changed: {e}")
        }
        (SetState::Failed | SetState::NotBound, Some(e)) => {
            error!("{label}: failed and rolled back: {e}")
        }
        _ => {}
    }
    st.state = outcome.state;
    st.error = error;
    st.modules = outcome.modules;
    st.removed_in_tree = outcome.removed_in_tree;
    st.devices = outcome.devices;
    st.drives_no_device = outcome.drives_no_device;
    // The status keeps its one boolean: a rollback was tried (the error says if it failed).
    st.rolled_back = outcome.rollback != Rollback::NotNeeded;
    st.kernel_us = micros(outcome.kernel_time);
    st.overhead_us = micros(overhead_time);
    (st, outcome.exit)
}

/// What kmod-day1-pull's upgrade preflight said about this kernel before it was booted, for
/// the status; a record that cannot be read is a warning.
fn upgrade_preflight(store: &StoreLayout, kver: &KernelRelease) -> Option<UpgradePreflight> {
    let file = store.preflight_file(kver);
    read_json(&file)
        .inspect_err(|e| warn!("the upgrade preflight record {}: {e}", file.display()))
        .ok()
        .flatten()
}

/// A set's ref in the store, and the file it was read from.
#[derive(Debug)]
struct StoredRef {
    file: PathBuf,
    record: RefRecord,
}

/// The store's ref for one set and the running kernel, for the configured image; `Err` is
/// the set's outcome when there is nothing to swap in: skipped on the command line, no
/// image for this kernel, or not stored (yet, for another image, in a future format, or
/// unreadable).
fn stored_ref(
    store: &StoreLayout,
    hatches: &EscapeHatches,
    cfg: &LoadedConfig,
    set: &ModuleSet,
    kver: &KernelRelease,
    label: &str,
) -> Result<StoredRef, Box<SetOutcome>> {
    let settled = SetOutcome::without_swap;
    if hatches.skips(cfg.name.as_str(), set.name.as_str()) {
        info!("{label}: skipped by kmod_day1.skip on the kernel command line");
        return Err(settled(SetState::Skipped, None, Exit::Ok));
    }
    let image = match set.image_for(kver) {
        Ok(Some(i)) => i.to_string(),
        Ok(None) => {
            info!("{label}: no image configured for kernel {kver}: nothing to do");
            return Err(settled(SetState::NoImage, None, Exit::Ok));
        }
        Err(e) => {
            let e = format!("resolving the image for kernel {kver}: {e}");
            error!("{label}: {e}");
            return Err(settled(SetState::Failed, Some(e), Exit::Config));
        }
    };
    // Version 2 refs (one per image), else a version 1 ref of the same image: a node whose
    // binaries were just updated boots on the store the old pull wrote.
    let wanted = store.ref_file(&cfg.name, &set.name, kver, &image);
    match store.read_ref(&cfg.name, &set.name, kver, &image) {
        Ok(Some((path, r))) if r.version == 0 || r.version > STORE_VERSION => {
            let e = format!(
                "{} has format version {}, this loader reads versions 1 to {STORE_VERSION}; treated as not stored",
                path.display(),
                r.version
            );
            warn!("{label}: {e}");
            Err(settled(SetState::NotStored, Some(e), Exit::Ok))
        }
        Ok(Some((file, record))) => Ok(StoredRef { file, record }),
        Ok(None) => {
            info!("{label}: not stored for kernel {kver} (image {image}): kmod-day1-pull will fetch it after the network is up");
            Err(settled(SetState::NotStored, None, Exit::Ok))
        }
        Err(e) => {
            let e = format!(
                "reading {}: {e}; treated as not stored, kmod-day1-pull will write it again",
                wanted.display()
            );
            warn!("{label}: {e}");
            Err(settled(SetState::NotStored, Some(e), Exit::Ok))
        }
    }
}

/// A stored tree's modules and firmware directories.
struct StoredTree {
    modules: PathBuf,
    firmware: Option<PathBuf>,
}

/// The tree a ref points at, if the store has it; `Err` is the set's outcome when not.
fn stored_tree(
    store: &StoreLayout,
    set: &ModuleSet,
    label: &str,
    stored: &StoredRef,
) -> Result<StoredTree, Box<SetOutcome>> {
    let r = &stored.record;
    let modules = store.tree_modules(&r.tree);
    if !is_valid_tree_id(&r.tree) || !modules.is_dir() {
        let e = format!(
            "the ref {} points at tree {:?}, which is not in the store; kmod-day1-pull will fetch it again",
            stored.file.display(),
            r.tree
        );
        error!("{label}: {e}");
        return Err(SetOutcome::without_swap(
            SetState::Failed,
            Some(e),
            Exit::Failed,
        ));
    }
    let fw_dir = store.tree_firmware(&r.tree);
    let firmware = match &set.firmware_path {
        Some(_) if fw_dir.is_dir() => Some(fw_dir),
        Some(p) => {
            warn!("{label}: firmwarePath {p} is set but the stored tree has no firmware");
            None
        }
        None => None,
    };
    Ok(StoredTree { modules, firmware })
}

/// Swaps in the tree a ref points at, if the store has it.
fn swap_stored(
    k: &mut dyn KernelModules,
    node: Node<'_>,
    store: &StoreLayout,
    set: &ModuleSet,
    label: &str,
    stored: &StoredRef,
) -> SetOutcome {
    let tree = match stored_tree(store, set, label, stored) {
        Ok(t) => t,
        Err(settled) => return *settled,
    };
    let r = &stored.record;
    info!(
        "{label}: swapping in {} ({}) for kernel {}",
        r.image, r.manifest_digest, node.kernel_release
    );
    let image = ModuleIndex::image(&tree.modules);
    let swap = swap_set(
        k,
        node,
        SetInput {
            label,
            set,
            image: &image,
            firmware: tree.firmware.as_deref(),
            image_ref: &r.image,
        },
    );
    let exit = match (&swap.rollback, swap.state) {
        (Rollback::Failed(_), _) => Exit::RollbackFailed,
        (_, SetState::Failed | SetState::NotBound) => Exit::Failed,
        _ => Exit::Ok,
    };
    SetOutcome {
        state: swap.state,
        error: swap.error,
        exit,
        rollback: swap.rollback,
        modules: swap.modules,
        removed_in_tree: swap.removed_in_tree,
        devices: swap.devices,
        drives_no_device: swap.drives_no_device,
        kernel_time: swap.kernel_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{BindRule, FakeKernel, FakeSysfs, Fixture, KVER, TREE};
    use kmod_day1_contract::{read_json, ConfigName, RefRecord, SetName};
    use nix::errno::Errno;

    const IMAGE: &str = "registry.local/kmod/ice:v1";

    fn opts(f: &Fixture) -> Options {
        Options {
            config_dir: f.config_dir(),
            store: f.store(),
            status: f.status(),
            kernel_release: Some(KVER.into()),
            cmdline: f.path("cmdline"),
            modules_root: f.modules_root(),
            sysfs: f.sysfs(),
            securityfs: f.path("security"),
            proc_keys: f.path("proc-keys"),
            firmware_dir: f.firmware_dir(),
            kmsg: f.path("kmsg"),
            boot_id_file: f.path("boot_id"),
            modprobe_dirs: f.modprobe_dirs(),
            symvers: None,
            bind_timeout: Duration::from_millis(200),
            dry_run: false,
            json: false,
            verbose: false,
        }
    }

    fn config(f: &Fixture, name: &str, sets: serde_json::Value) {
        let j = serde_json::json!({"version": 1, "moduleSets": sets});
        std::fs::write(f.config_dir().join(format!("{name}.json")), j.to_string()).unwrap();
    }

    fn ice_set() -> serde_json::Value {
        serde_json::json!({
            "name": "ice",
            "image": IMAGE,
            "modules": [{"name": "ice", "parameters": ["debug=1"]}],
            "inTreeModulesToRemove": ["ice"],
            "firmwarePath": "/firmware",
        })
    }

    fn store_ref(f: &Fixture, config: &str, set: &str, image: &str) {
        let store = StoreLayout::new(f.store());
        let p = store.ref_file(
            &ConfigName::new(config).unwrap(),
            &SetName::new(set).unwrap(),
            &KernelRelease::new(KVER).unwrap(),
            image,
        );
        let r = RefRecord {
            version: STORE_VERSION,
            image: image.into(),
            manifest_digest: "sha256:1111".into(),
            tree: TREE.into(),
            committed_at: 1,
        };
        write_json_atomic(&p, &r).unwrap();
    }

    /// A node with in-tree ice loaded and a stored image for config 99-ice.
    fn node() -> (Fixture, FakeKernel) {
        let f = Fixture::new();
        f.node_module("ice", "kernel/ice.ko.xz", &[]);
        f.image_module("ice", "SRC-OOT", &[]);
        std::fs::create_dir_all(f.image_firmware().join("intel")).unwrap();
        std::fs::write(f.image_firmware().join("intel/ice.pkg"), b"pkg").unwrap();
        std::fs::write(f.path("boot_id"), "b00t\n").unwrap();
        config(&f, "99-ice", serde_json::json!([ice_set()]));
        store_ref(&f, "99-ice", "ice", IMAGE);
        let mut k = FakeKernel::new();
        k.preload("ice", "INTREE-ice");
        (f, k)
    }

    fn status(f: &Fixture) -> BootStatus {
        read_json(&f.status()).unwrap().expect("status written")
    }

    #[test]
    fn loads_a_stored_set_and_reports_it() {
        let (f, mut k) = node();
        assert_eq!(run(&opts(&f), &mut k).unwrap(), Exit::Ok);
        assert_eq!(k.loaded["ice"].srcversion.as_deref(), Some("SRC-OOT"));
        assert_eq!(k.loaded["ice"].params, "debug=1");
        assert_eq!(
            std::fs::read(f.firmware_dir().join("intel/ice.pkg")).unwrap(),
            b"pkg"
        );
        let fw_path = f.sysfs().join("module/firmware_class/parameters/path");
        assert_eq!(
            std::fs::read_to_string(fw_path).unwrap(),
            f.firmware_dir().to_str().unwrap()
        );
        let s = status(&f);
        assert_eq!(
            (s.version, s.kernel_release.as_str(), s.boot_id.as_str()),
            (1, KVER, "b00t")
        );
        assert_eq!(s.sets.len(), 1);
        let set = &s.sets[0];
        assert_eq!((set.config.as_str(), set.set.as_str()), ("99-ice", "ice"));
        assert_eq!(set.state, SetState::Loaded);
        assert_eq!(set.image.as_deref(), Some(IMAGE));
        assert_eq!(set.manifest_digest.as_deref(), Some("sha256:1111"));
        assert_eq!(set.removed_in_tree, ["ice"]);
        assert_eq!(set.modules[0].srcversion.as_deref(), Some("SRC-OOT"));
        assert!(set.error.is_none() && !set.rolled_back);
        // The status JSON has the field names the contract promises.
        let raw: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f.status()).unwrap()).unwrap();
        for key in [
            "kernelUs",
            "overheadUs",
            "removedInTree",
            "manifestDigest",
            "state",
        ] {
            assert!(raw["sets"][0].get(key).is_some(), "{key} in {raw}");
        }
        assert!(raw["sets"][0]["modules"][0].get("loadUs").is_some());

        // Idempotent: the second run loads nothing and says so.
        k.calls.clear();
        assert_eq!(run(&opts(&f), &mut k).unwrap(), Exit::Ok);
        assert!(k.calls.is_empty(), "{:?}", k.calls);
        assert!(status(&f).sets[0].modules[0].already_loaded);
    }

    #[test]
    fn nothing_stored_is_not_an_error() {
        let (f, mut k) = node();
        std::fs::remove_dir_all(f.store().join("refs")).unwrap();
        assert_eq!(run(&opts(&f), &mut k).unwrap(), Exit::Ok);
        assert_eq!(status(&f).sets[0].state, SetState::NotStored);
        assert!(k.calls.is_empty());

        // A ref of a future format is not used.
        store_ref(&f, "99-ice", "ice", IMAGE);
        let p = f.store().join(format!(
            "refs/99-ice/ice/{KVER}/{}.json",
            kmod_day1_contract::image_key(IMAGE)
        ));
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"version\": 2", "\"version\": 3");
        std::fs::write(&p, text).unwrap();
        assert_eq!(run(&opts(&f), &mut k).unwrap(), Exit::Ok);
        let s = status(&f);
        assert_eq!(s.sets[0].state, SetState::NotStored);
        assert!(s.sets[0]
            .error
            .as_deref()
            .unwrap()
            .contains("format version 3"));
        std::fs::remove_dir_all(f.store().join("refs")).unwrap();

        // A version 1 ref (a store the previous pull wrote) is used.
        let legacy = f.store().join(format!("refs/99-ice/ice/{KVER}.json"));
        write_json_atomic(
            &legacy,
            &RefRecord {
                version: 1,
                image: IMAGE.into(),
                manifest_digest: "sha256:1111".into(),
                tree: TREE.into(),
                committed_at: 1,
            },
        )
        .unwrap();
        assert_eq!(run(&opts(&f), &mut k).unwrap(), Exit::Ok);
        assert_eq!(status(&f).sets[0].state, SetState::Loaded);
        std::fs::remove_dir_all(f.store().join("refs")).unwrap();
        k.calls.clear();
        assert!(k.calls.is_empty());

        // A ref for another image (the config changed since the pull) is not used.
        store_ref(&f, "99-ice", "ice", "registry.local/kmod/ice:v0");
        assert_eq!(run(&opts(&f), &mut k).unwrap(), Exit::Ok);
        assert_eq!(status(&f).sets[0].state, SetState::NotStored);
        assert!(k.calls.is_empty());
    }

    #[test]
    fn escape_hatches() {
        let (f, mut k) = node();
        std::fs::write(f.path("cmdline"), "quiet kmod_day1.disable\n").unwrap();
        assert_eq!(run(&opts(&f), &mut k).unwrap(), Exit::Ok);
        assert!(!f.status().exists());
        assert!(k.calls.is_empty());

        std::fs::write(f.path("cmdline"), "quiet kmod_day1.skip=99-ice/ice\n").unwrap();
        assert_eq!(run(&opts(&f), &mut k).unwrap(), Exit::Ok);
        assert_eq!(status(&f).sets[0].state, SetState::Skipped);
        assert!(k.calls.is_empty());
    }

    #[test]
    fn failures_roll_back_and_set_the_exit_code() {
        let (f, mut k) = node();
        k.fail_load("ice", Errno::ENOEXEC);
        assert_eq!(run(&opts(&f), &mut k).unwrap(), Exit::Failed);
        let s = status(&f);
        assert_eq!(s.sets[0].state, SetState::Failed);
        assert!(s.sets[0].rolled_back);
        assert!(s.sets[0]
            .error
            .as_deref()
            .unwrap()
            .contains("invalid module format"));
        assert_eq!(k.loaded["ice"].srcversion.as_deref(), Some("INTREE-ice"));

        k.fail_load("ice", Errno::ENOEXEC);
        k.fail_load("ice", Errno::ENOEXEC);
        assert_eq!(run(&opts(&f), &mut k).unwrap(), Exit::RollbackFailed);
        assert!(status(&f).sets[0]
            .error
            .as_deref()
            .unwrap()
            .contains("rollback failed"));
    }

    #[test]
    fn bad_configs_are_reported_and_the_good_ones_used() {
        let (f, mut k) = node();
        std::fs::write(f.config_dir().join("10-bad.json"), "{").unwrap();
        config(
            &f,
            "20-other",
            serde_json::json!([{
                "name": "mapped",
                "kernelMappings": [{"literal": "5.14.0", "containerImage": "r.local/x:1"}],
                "modules": [{"name": "x"}],
            }]),
        );
        assert_eq!(run(&opts(&f), &mut k).unwrap(), Exit::Config);
        let s = status(&f);
        assert_eq!(s.errors.len(), 1);
        assert!(s.errors[0].contains("10-bad.json"), "{:?}", s.errors);
        let states: Vec<_> = s
            .sets
            .iter()
            .map(|x| (x.config.as_str(), x.state))
            .collect();
        assert_eq!(
            states,
            [
                ("20-other", SetState::NoImage),
                ("99-ice", SetState::Loaded)
            ]
        );

        // A failed set outranks a bad file.
        let (f2, mut k2) = node();
        std::fs::write(f2.config_dir().join("10-bad.json"), "{").unwrap();
        k2.fail_load("ice", Errno::ENOEXEC);
        assert_eq!(run(&opts(&f2), &mut k2).unwrap(), Exit::Failed);
    }

    #[test]
    fn one_failing_set_does_not_stop_the_others() {
        let (f, mut k) = node();
        f.image_module("bnx", "SRC-BNX", &[]);
        let bnx = serde_json::json!({"name": "bnx", "image": IMAGE, "modules": [{"name": "bnx"}]});
        config(&f, "50-bnx", serde_json::json!([bnx]));
        store_ref(&f, "50-bnx", "bnx", IMAGE);
        k.fail_load("bnx", Errno::ENOMEM);
        assert_eq!(run(&opts(&f), &mut k).unwrap(), Exit::Failed);
        let s = status(&f);
        let states: Vec<_> = s.sets.iter().map(|x| (x.set.as_str(), x.state)).collect();
        assert_eq!(
            states,
            [("bnx", SetState::Failed), ("ice", SetState::Loaded)]
        );
        assert!(!k.loaded.contains_key("bnx"));
        assert_eq!(k.loaded["ice"].srcversion.as_deref(), Some("SRC-OOT"));
        // `kmod_day1.skip=SET` skips the set in every config; CONFIG/SET only there.
        std::fs::write(f.path("cmdline"), "kmod_day1.skip=50-bnx/bnx,ice\n").unwrap();
        assert_eq!(run(&opts(&f), &mut k).unwrap(), Exit::Ok);
        assert!(status(&f).sets.iter().all(|x| x.state == SetState::Skipped));
    }

    #[test]
    fn usage_problems_are_errors() {
        let (f, mut k) = node();
        let mut o = opts(&f);
        o.kernel_release = Some("../evil".into());
        assert!(run(&o, &mut k)
            .unwrap_err()
            .to_string()
            .contains("kernel release"));
        assert!(k.calls.is_empty());
    }

    #[test]
    fn an_unreadable_command_line_touches_nothing() {
        let (f, mut k) = node();
        let mut o = opts(&f);
        o.cmdline = f.path("nope");
        let e = format!("{:#}", run(&o, &mut k).unwrap_err());
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(
            e.starts_with(&format!(
                "cannot read the kernel command line from {}: ",
                f.path("nope").display()
            )),
            "{e}"
        );
        assert!(
            e.ends_with("; doing nothing this boot, as with kmod_day1.disable"),
            "{e}"
        );
        assert!(k.calls.is_empty());
        assert!(!f.status().exists());
    }

    #[test]
    fn a_symbol_crc_mismatch_is_refused_before_anything_is_unloaded() {
        let (f, mut k) = node();
        let imports = [
            ("module_layout", 0x9060_323f),
            ("pci_enable_device", 0x1234_abcd),
        ];
        f.image_module_symbols("ice", &[], &imports, &[]);
        f.node_symvers(&[
            ("module_layout", 0x9060_323f, "vmlinux"),
            ("pci_enable_device", 0x5678_ef01, "vmlinux"),
        ]);
        assert_eq!(run(&opts(&f), &mut k).unwrap(), Exit::Failed);
        assert!(k.calls.is_empty(), "nothing unloaded: {:?}", k.calls);
        assert_eq!(k.loaded["ice"].srcversion.as_deref(), Some("INTREE-ice"));
        let s = status(&f);
        assert_eq!(s.sets[0].state, SetState::Failed);
        assert!(!s.sets[0].rolled_back);
        assert_eq!(
            s.sets[0].error.as_deref(),
            Some(format!("preflight: ice.ko from {IMAGE} was built against other symbol versions than kernel {KVER}: ice imports pci_enable_device with CRC 0x1234abcd, the kernel exports 0x5678ef01 (rebuild the module for this kernel)").as_str())
        );
        // --symvers names another table: that one is used, and agrees.
        let table = f.path("Module.symvers");
        std::fs::write(
            &table,
            "0x9060323f\tmodule_layout\tvmlinux\tEXPORT_SYMBOL\t\n0x1234abcd\tpci_enable_device\tvmlinux\tEXPORT_SYMBOL\t\n",
        )
        .unwrap();
        let mut o = opts(&f);
        o.symvers = Some(table);
        assert_eq!(run(&o, &mut k).unwrap(), Exit::Ok);
        assert_eq!(status(&f).sets[0].state, SetState::Loaded);
        assert_eq!(k.loaded["ice"].srcversion.as_deref(), Some("SRC"));
    }

    #[test]
    fn an_unreadable_boot_id_still_swaps_with_an_empty_one() {
        let (f, mut k) = node();
        let mut o = opts(&f);
        o.boot_id_file = f.path("nope");
        assert_eq!(run(&o, &mut k).unwrap(), Exit::Ok);
        let s = status(&f);
        assert_eq!(s.boot_id, "");
        assert_eq!(s.sets[0].state, SetState::Loaded);
        assert_eq!(k.loaded["ice"].srcversion.as_deref(), Some("SRC-OOT"));
        // An empty file is no boot id either.
        std::fs::write(f.path("empty"), "").unwrap();
        o.boot_id_file = f.path("empty");
        assert_eq!(run(&o, &mut k).unwrap(), Exit::Ok);
        assert_eq!(status(&f).boot_id, "");
    }

    #[test]
    fn a_nic_left_unbound_is_rolled_back_and_recorded_as_not_bound() {
        let (f, mut k) = node();
        let sys = FakeSysfs::at(&f.sysfs());
        sys.device(
            "pci",
            "0000:3b:00.0",
            "pci:v00008086d00001592sv*",
            Some("ens1f0"),
        );
        sys.bind("pci", "0000:3b:00.0", "ice", "ice");
        k.with_sysfs(
            &f.sysfs(),
            vec![BindRule::new("ice", "pci", "0000:3b:00.0", false)],
        );
        assert_eq!(run(&opts(&f), &mut k).unwrap(), Exit::Failed);
        assert_eq!(k.loaded["ice"].srcversion.as_deref(), Some("INTREE-ice"));
        let s = status(&f);
        let set = &s.sets[0];
        assert_eq!(set.state, SetState::NotBound);
        assert!(set.rolled_back);
        assert_eq!(set.devices.len(), 1);
        let d = &set.devices[0];
        assert_eq!((d.device.as_str(), d.bound), ("pci 0000:3b:00.0", false));
        assert_eq!(d.interfaces, ["ens1f0"]);
        assert_eq!(d.driver_module.as_deref(), Some("ice"));
        assert!(d
            .error
            .as_deref()
            .unwrap()
            .contains("bound to no driver after"));
        let raw = std::fs::read_to_string(f.status()).unwrap();
        assert!(
            raw.contains("\"notBound\"") && raw.contains("\"driverModule\""),
            "{raw}"
        );
    }
}
