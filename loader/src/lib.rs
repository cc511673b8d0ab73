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
//! The kernel is reached only through [`kernel::KernelModules`], so all of this runs in
//! unit tests against a fake kernel, unprivileged.

pub mod cli;
pub mod decompress;
pub mod firmware;
pub mod kernel;
pub mod kmsg;
pub mod modinfo;
pub mod modules_dep;
pub mod plan;
pub mod swap;
#[cfg(test)]
mod testutil;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Context};
use kmod_day1_contract::{
    boot_id, is_valid_tree_id, kernel_command_line, kernel_release, load_config_dir,
    write_json_atomic, BootStatus, EscapeHatches, KernelRelease, LoadedConfig, ModuleSet, SetState,
    SetStatus, StoreLayout, BOOT_ID_FILE, CMDLINE_FILE, CONFIG_DIR, OSRELEASE_FILE, STATUS_FILE,
    STATUS_VERSION, STORE_DIR, STORE_VERSION,
};
use tracing::{error, info, warn};

use crate::kernel::KernelModules;
use crate::modules_dep::ModuleIndex;
use crate::swap::{ms, swap_set, Node, SetInput};

/// Every set loaded, or nothing to do yet (not stored, skipped, disabled).
pub const EXIT_OK: u8 = 0;
/// A set failed and was rolled back: the in-tree modules are loaded again.
pub const EXIT_FAILED: u8 = 1;
/// Bad usage or config: nothing was touched for it.
pub const EXIT_USAGE: u8 = 2;
/// A rollback failed: an in-tree module could not be loaded back.
pub const EXIT_ROLLBACK_FAILED: u8 = 3;

/// Where everything is; each field is a command-line flag with the production default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `--config-dir`
    pub config_dir: PathBuf,
    /// `--store`
    pub store: PathBuf,
    /// `--status`
    pub status: PathBuf,
    /// `--kernel-release`; `None`: the running kernel's, from [`OSRELEASE_FILE`].
    pub kernel_release: Option<String>,
    /// `--cmdline`
    pub cmdline: PathBuf,
    /// `--modules-root`
    pub modules_root: PathBuf,
    /// `--sysfs`
    pub sysfs: PathBuf,
    /// `--firmware-dir`
    pub firmware_dir: PathBuf,
    /// `--kmsg`
    pub kmsg: PathBuf,
    /// `--boot-id-file`
    pub boot_id_file: PathBuf,
    /// `--verbose`
    pub verbose: bool,
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
            firmware_dir: "/var/lib/firmware".into(),
            kmsg: "/dev/kmsg".into(),
            boot_id_file: BOOT_ID_FILE.into(),
            verbose: false,
        }
    }
}

/// The worse of two exit codes: 3 > 1 > 2 > 0 (a failed set outranks a bad config file,
/// which outranks success).
pub fn worse(a: u8, b: u8) -> u8 {
    let rank = |c| match c {
        EXIT_ROLLBACK_FAILED => 3,
        EXIT_FAILED => 2,
        EXIT_USAGE => 1,
        _ => 0,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// One run of the loader; returns the exit code. `Err` is a usage or config problem found
/// before anything was touched (exit code [`EXIT_USAGE`]).
pub fn run(opts: &Options, k: &mut dyn KernelModules) -> anyhow::Result<u8> {
    let started = Instant::now();
    // Without the command line, kmod_day1.disable cannot be ruled out: touch nothing.
    let hatches = kernel_command_line(&opts.cmdline)
        .map_err(|e| anyhow!("{e}; doing nothing this boot, as with kmod_day1.disable"))?;
    if hatches.disabled {
        info!("kmod_day1.disable is on the kernel command line: doing nothing this boot");
        return Ok(EXIT_OK);
    }
    let kver = match &opts.kernel_release {
        Some(r) => KernelRelease::new(r).context("checking the kernel release")?,
        None => kernel_release(Path::new(OSRELEASE_FILE))?,
    };
    // Only the pull's reboot decision needs the boot id: without it the pull cannot match
    // this status to this boot and does not reboot, but the swap itself can go on.
    let boot_id = boot_id(&opts.boot_id_file).unwrap_or_else(|e| {
        warn!("{e}; the status gets an empty boot id, so kmod-day1-pull will not reboot; swapping goes on");
        String::new()
    });
    let (configs, bad) = load_config_dir(&opts.config_dir)
        .with_context(|| format!("reading the config directory {}", opts.config_dir.display()))?;
    let mut code = EXIT_OK;
    let mut errors = vec![];
    for e in bad {
        error!("{e}; skipping this file, the others are used");
        errors.push(e.to_string());
        code = worse(code, EXIT_USAGE);
    }
    if configs.is_empty() {
        info!("no config in {}: nothing to do", opts.config_dir.display());
    }
    let in_tree = ModuleIndex::in_tree(opts.modules_root.join(kver.as_str()));
    let node = Node {
        kernel_release: kver.as_str(),
        in_tree: &in_tree,
        sysfs: &opts.sysfs,
        firmware_dir: &opts.firmware_dir,
    };
    let store = StoreLayout::new(&opts.store);
    let mut sets = vec![];
    for c in &configs {
        for set in &c.config.module_sets {
            let (s, c) = handle_set(k, node, &store, &hatches, c, set, &kver);
            code = worse(code, c);
            sets.push(s);
        }
    }
    let status = BootStatus {
        version: STATUS_VERSION,
        kernel_release: kver.to_string(),
        boot_id,
        sets,
        errors,
        total_us: started.elapsed().as_micros() as u64,
    };
    if let Err(e) = write_json_atomic(&opts.status, &status) {
        error!("writing the status file {}: {e}", opts.status.display());
    }
    let count = |s: SetState| status.sets.iter().filter(|x| x.state == s).count();
    info!(
        "done in {} ms: {} loaded, {} not stored, {} skipped, {} without image, {} failed; exit code {code}",
        ms(started.elapsed()),
        count(SetState::Loaded),
        count(SetState::NotStored),
        count(SetState::Skipped),
        count(SetState::NoImage),
        count(SetState::Failed),
    );
    Ok(code)
}

fn handle_set(
    k: &mut dyn KernelModules,
    node: Node<'_>,
    store: &StoreLayout,
    hatches: &EscapeHatches,
    cfg: &LoadedConfig,
    set: &ModuleSet,
    kver: &KernelRelease,
) -> (SetStatus, u8) {
    let started = Instant::now();
    let label = format!("{}/{}", cfg.name, set.name);
    let mut st = SetStatus::new(cfg.name.as_str(), set.name.as_str(), SetState::NotStored);
    let (state, error, code, kernel) = (|| {
        if hatches.skips(cfg.name.as_str(), set.name.as_str()) {
            info!("{label}: skipped by kmod_day1.skip on the kernel command line");
            return (SetState::Skipped, None, EXIT_OK, None);
        }
        let image = match set.image_for(kver) {
            Ok(Some(i)) => i.to_string(),
            Ok(None) => {
                info!("{label}: no image configured for kernel {kver}: nothing to do");
                return (SetState::NoImage, None, EXIT_OK, None);
            }
            Err(e) => {
                let e = format!("resolving the image for kernel {kver}: {e}");
                error!("{label}: {e}");
                return (SetState::Failed, Some(e), EXIT_USAGE, None);
            }
        };
        let ref_path = store.ref_file(&cfg.name, &set.name, kver);
        let r = match store.read_ref(&cfg.name, &set.name, kver) {
            Ok(Some(r)) if r.version != STORE_VERSION => {
                let e = format!(
                    "{} has format version {}, this loader reads version {STORE_VERSION}; treated as not stored",
                    ref_path.display(),
                    r.version
                );
                warn!("{label}: {e}");
                return (SetState::NotStored, Some(e), EXIT_OK, None);
            }
            Ok(Some(r)) if r.image == image => r,
            Ok(Some(r)) => {
                info!(
                    "{label}: not stored for kernel {kver}: the store holds {}, the config now wants {image}; kmod-day1-pull will fetch it",
                    r.image
                );
                return (SetState::NotStored, None, EXIT_OK, None);
            }
            Ok(None) => {
                info!("{label}: not stored for kernel {kver} (image {image}): kmod-day1-pull will fetch it after the network is up");
                return (SetState::NotStored, None, EXIT_OK, None);
            }
            Err(e) => {
                let e = format!(
                    "reading {}: {e}; treated as not stored, kmod-day1-pull will write it again",
                    ref_path.display()
                );
                warn!("{label}: {e}");
                return (SetState::NotStored, Some(e), EXIT_OK, None);
            }
        };
        st.image = Some(r.image.clone());
        st.manifest_digest = Some(r.manifest_digest.clone());
        let tree_modules = store.tree_modules(&r.tree);
        if !is_valid_tree_id(&r.tree) || !tree_modules.is_dir() {
            let e = format!(
                "the ref {} points at tree {:?}, which is not in the store; kmod-day1-pull will fetch it again",
                ref_path.display(),
                r.tree
            );
            error!("{label}: {e}");
            return (SetState::Failed, Some(e), EXIT_FAILED, None);
        }
        let fw_dir = store.tree_firmware(&r.tree);
        let firmware = match &set.firmware_path {
            Some(p) if fw_dir.is_dir() => Some(fw_dir.as_path()),
            Some(p) => {
                warn!("{label}: firmwarePath {p} is set but the stored tree has no firmware");
                None
            }
            None => None,
        };
        info!(
            "{label}: swapping in {} ({}) for kernel {kver}",
            r.image, r.manifest_digest
        );
        let image_index = ModuleIndex::image(tree_modules);
        let res = swap_set(
            k,
            node,
            SetInput {
                label: &label,
                set,
                image: &image_index,
                firmware,
            },
        );
        st.modules = res.modules;
        st.removed_in_tree = res.removed_in_tree;
        st.rolled_back = res.rolled_back;
        let code = if res.rollback_failed {
            EXIT_ROLLBACK_FAILED
        } else if res.state == SetState::Failed {
            EXIT_FAILED
        } else {
            EXIT_OK
        };
        (res.state, res.error, code, Some(res.kernel))
    })();
    let kernel = kernel.unwrap_or_default();
    st.state = state;
    st.error = error;
    st.kernel_us = kernel.as_micros() as u64;
    st.overhead_us = started.elapsed().saturating_sub(kernel).as_micros() as u64;
    match (&st.state, &st.error) {
        (SetState::Loaded, _) => info!(
            "{label}: loaded: {} modules ({} already loaded), kernel {} ms, own {} ms",
            st.modules.len(),
            st.modules.iter().filter(|m| m.already_loaded).count(),
            ms(std::time::Duration::from_micros(st.kernel_us)),
            ms(std::time::Duration::from_micros(st.overhead_us))
        ),
        (SetState::Failed, Some(e)) if st.rolled_back => {
            error!("{label}: failed and rolled back: {e}")
        }
        (SetState::Failed, Some(e)) => error!("{label}: failed, nothing changed: {e}"),
        _ => {}
    }
    (st, code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{FakeKernel, Fixture, KVER, TREE};
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
            firmware_dir: f.firmware_dir(),
            kmsg: f.path("kmsg"),
            boot_id_file: f.path("boot_id"),
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
        assert_eq!(run(&opts(&f), &mut k).unwrap(), EXIT_OK);
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
        assert_eq!(run(&opts(&f), &mut k).unwrap(), EXIT_OK);
        assert!(k.calls.is_empty(), "{:?}", k.calls);
        assert!(status(&f).sets[0].modules[0].already_loaded);
    }

    #[test]
    fn nothing_stored_is_not_an_error() {
        let (f, mut k) = node();
        std::fs::remove_dir_all(f.store().join("refs")).unwrap();
        assert_eq!(run(&opts(&f), &mut k).unwrap(), EXIT_OK);
        assert_eq!(status(&f).sets[0].state, SetState::NotStored);
        assert!(k.calls.is_empty());

        // A ref of a future format is not used.
        store_ref(&f, "99-ice", "ice", IMAGE);
        let p = f.store().join(format!("refs/99-ice/ice/{KVER}.json"));
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"version\": 1", "\"version\": 2");
        std::fs::write(&p, text).unwrap();
        assert_eq!(run(&opts(&f), &mut k).unwrap(), EXIT_OK);
        let s = status(&f);
        assert_eq!(s.sets[0].state, SetState::NotStored);
        assert!(s.sets[0]
            .error
            .as_deref()
            .unwrap()
            .contains("format version 2"));
        assert!(k.calls.is_empty());

        // A ref for another image (the config changed since the pull) is not used.
        store_ref(&f, "99-ice", "ice", "registry.local/kmod/ice:v0");
        assert_eq!(run(&opts(&f), &mut k).unwrap(), EXIT_OK);
        assert_eq!(status(&f).sets[0].state, SetState::NotStored);
        assert!(k.calls.is_empty());
    }

    #[test]
    fn escape_hatches() {
        let (f, mut k) = node();
        std::fs::write(f.path("cmdline"), "quiet kmod_day1.disable\n").unwrap();
        assert_eq!(run(&opts(&f), &mut k).unwrap(), EXIT_OK);
        assert!(!f.status().exists());
        assert!(k.calls.is_empty());

        std::fs::write(f.path("cmdline"), "quiet kmod_day1.skip=99-ice/ice\n").unwrap();
        assert_eq!(run(&opts(&f), &mut k).unwrap(), EXIT_OK);
        assert_eq!(status(&f).sets[0].state, SetState::Skipped);
        assert!(k.calls.is_empty());
    }

    #[test]
    fn failures_roll_back_and_set_the_exit_code() {
        let (f, mut k) = node();
        k.fail_load("ice", Errno::ENOEXEC);
        assert_eq!(run(&opts(&f), &mut k).unwrap(), EXIT_FAILED);
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
        assert_eq!(run(&opts(&f), &mut k).unwrap(), EXIT_ROLLBACK_FAILED);
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
        assert_eq!(run(&opts(&f), &mut k).unwrap(), EXIT_USAGE);
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
        assert_eq!(run(&opts(&f2), &mut k2).unwrap(), EXIT_FAILED);
    }

    #[test]
    fn one_failing_set_does_not_stop_the_others() {
        let (f, mut k) = node();
        f.image_module("bnx", "SRC-BNX", &[]);
        let bnx = serde_json::json!({"name": "bnx", "image": IMAGE, "modules": [{"name": "bnx"}]});
        config(&f, "50-bnx", serde_json::json!([bnx]));
        store_ref(&f, "50-bnx", "bnx", IMAGE);
        k.fail_load("bnx", Errno::ENOMEM);
        assert_eq!(run(&opts(&f), &mut k).unwrap(), EXIT_FAILED);
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
        assert_eq!(run(&opts(&f), &mut k).unwrap(), EXIT_OK);
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
    fn an_unreadable_boot_id_still_swaps_with_an_empty_one() {
        let (f, mut k) = node();
        let mut o = opts(&f);
        o.boot_id_file = f.path("nope");
        assert_eq!(run(&o, &mut k).unwrap(), EXIT_OK);
        let s = status(&f);
        assert_eq!(s.boot_id, "");
        assert_eq!(s.sets[0].state, SetState::Loaded);
        assert_eq!(k.loaded["ice"].srcversion.as_deref(), Some("SRC-OOT"));
        // An empty file is no boot id either.
        std::fs::write(f.path("empty"), "").unwrap();
        o.boot_id_file = f.path("empty");
        assert_eq!(run(&o, &mut k).unwrap(), EXIT_OK);
        assert_eq!(status(&f).boot_id, "");
    }

    #[test]
    fn exit_codes_rank() {
        assert_eq!(worse(EXIT_OK, EXIT_USAGE), EXIT_USAGE);
        assert_eq!(worse(EXIT_USAGE, EXIT_FAILED), EXIT_FAILED);
        assert_eq!(
            worse(EXIT_ROLLBACK_FAILED, EXIT_FAILED),
            EXIT_ROLLBACK_FAILED
        );
        assert_eq!(worse(EXIT_FAILED, EXIT_OK), EXIT_FAILED);
    }
}
