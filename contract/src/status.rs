// SPDX-License-Identifier: Apache-2.0
//! `/run/kmod-day1/status.json`: what kmod-day1-load did this boot. Written by the loader,
//! read by kmod-day1-pull (to decide on a reboot) and by people.

use serde::{Deserialize, Serialize};

/// Default location of the boot status.
pub const STATUS_FILE: &str = "/run/kmod-day1/status.json";

/// Created by `kmod-day1-install` (mcgen `--delivery image`) when it puts the node binaries
/// in place: on `/run`, so it says "installed during this boot", after the loader's turn.
/// The pull then knows why the loader left no status, and that a reboot lets it run.
pub const INSTALLED_THIS_BOOT_FILE: &str = "/run/kmod-day1/node-binaries-installed";

/// Version of the status format.
pub const STATUS_VERSION: u32 = 1;

/// The loader's report for one boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootStatus {
    /// [`STATUS_VERSION`].
    pub version: u32,
    /// `uname -r` of this boot.
    pub kernel_release: String,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// One entry per (config, module set).
    pub sets: Vec<SetStatus>,
    /// Errors that concern no single set (an unreadable config file, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Wall time of the whole run, microseconds.
    pub total_us: u64,
    /// The upgrade preflight kmod-day1-pull made for this kernel before it was booted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<crate::UpgradePreflight>,
}

/// What happened to one module set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetStatus {
    /// Config name (file stem).
    pub config: String,
    /// Module set name.
    pub set: String,
    /// Outcome.
    pub state: SetState,
    /// Image of the stored tree, when one was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Manifest digest of the stored tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// Modules loaded (or found already loaded), in load order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<ModuleStatus>,
    /// In-tree modules unloaded (and, after a rollback, loaded back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_in_tree: Vec<String>,
    /// Whether a failure was rolled back.
    #[serde(default)]
    pub rolled_back: bool,
    /// The devices the set's modules had to drive, and whether they do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceStatus>,
    /// The set loaded but drives no device: none was bound to the in-tree modules it
    /// removed and none matches its modules' aliases (an accelerator without hardware).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drives_no_device: bool,
    /// Time spent in `finit_module`/`delete_module`, microseconds.
    pub kernel_us: u64,
    /// The loader's own time for this set (all but the kernel's), microseconds.
    pub overhead_us: u64,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SetStatus {
    /// A set of `config` in `state` with nothing loaded, removed or timed yet.
    pub fn new(config: &str, set: &str, state: SetState) -> Self {
        Self {
            config: config.to_owned(),
            set: set.to_owned(),
            state,
            image: None,
            manifest_digest: None,
            modules: vec![],
            removed_in_tree: vec![],
            rolled_back: false,
            devices: vec![],
            drives_no_device: false,
            kernel_us: 0,
            overhead_us: 0,
            error: None,
        }
    }
}

/// Outcome of a module set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SetState {
    /// The out-of-tree modules are loaded.
    Loaded,
    /// No tree is stored for the running kernel yet; kmod-day1-pull will fetch it.
    NotStored,
    /// No image is configured for the running kernel.
    NoImage,
    /// Skipped by `kmod_day1.skip=` on the kernel command line.
    Skipped,
    /// Loading failed; the in-tree modules were restored.
    Failed,
    /// The modules loaded but a device they must drive did not bind to them (`devices`
    /// says which); the in-tree modules were restored.
    NotBound,
}

/// A device a module set had to drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceStatus {
    /// Bus and name, `pci 0000:00:03.0`.
    pub device: String,
    /// Its network interfaces, when it has some.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// Bound to the set's modules.
    pub bound: bool,
    /// The module driving it at the end (the in-tree one after a rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_module: Option<String>,
    /// Why it did not bind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One loaded module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModuleStatus {
    /// Module name.
    pub name: String,
    /// `version` from the module's modinfo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `srcversion` from the module's modinfo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srcversion: Option<String>,
    /// Whether it was loaded already (same srcversion): nothing was done.
    #[serde(default)]
    pub already_loaded: bool,
    /// An image module without a module signature, loaded because the kernel does not
    /// enforce signatures (it taints itself).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unsigned: bool,
    /// Time in `finit_module`, microseconds.
    pub load_us: u64,
}
