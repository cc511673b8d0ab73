// SPDX-License-Identifier: Apache-2.0
//! The node contract of kmod-day1, shared by `mcgen` (which writes configs),
//! `kmod-day1-pull` (which fills the store) and `kmod-day1-load` (which reads it).
//! The prose version is `docs/node-contract.md`.

mod cmdline;
mod config;
mod image_ref;
mod log;
mod names;
mod node_facts;
mod preflight;
mod status;
mod store;

pub use cmdline::EscapeHatches;
pub use config::{
    compile_regexp, load_config_dir, load_config_file, KernelMapping, LoadedConfig, ModuleSet,
    ModuleSpec, NodeConfig, RebootPolicy, CONFIG_DIR, CONFIG_VERSION, DEFAULT_DIR_NAME,
    DEFAULT_PULL_SECRET,
};
pub use image_ref::{ImageRef, ImageTemplate, KERNEL_FULL_VERSION};
pub use log::StderrLog;
pub use names::{
    check_dns1123_label, check_dns1123_subdomain, reject_control, AbsPath, ConfigName,
    KernelRelease, ModuleName, ModuleParam, SetName,
};
pub use node_facts::{
    boot_id, kernel_command_line, kernel_command_line_text, kernel_release, NodeFactError,
    BOOT_ID_FILE, CMDLINE_FILE, OSRELEASE_FILE,
};
pub use preflight::{
    SetVerdict, SymbolMismatch, SymbolVersions, UpgradePreflight, PREFLIGHT_VERSION,
};
pub use status::{
    BootStatus, DeviceStatus, ModuleStatus, SetState, SetStatus, INSTALLED_THIS_BOOT_FILE,
    STATUS_FILE, STATUS_VERSION,
};
pub use store::{
    image_key, is_valid_tree_id, read_json, sync_dir, write_atomic, write_json_atomic, PullRecord,
    PullStatus, RebootGuard, RebootRecord, RefRecord, StoreLayout, STORE_DIR, STORE_VERSION,
};

/// A value that breaks the rules for its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} {why}")]
pub struct NameError {
    /// What kind of value (e.g. "kernel module name").
    pub what: &'static str,
    /// The value, as given.
    pub value: String,
    /// What is wrong and how to fix it.
    pub why: String,
}

impl NameError {
    pub(crate) fn new(what: &'static str, value: &str, why: impl Into<String>) -> Self {
        Self {
            what,
            value: value.to_owned(),
            why: why.into(),
        }
    }
}

/// A config that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not valid JSON or not the schema.
    #[error("parsing config: {0}")]
    Parse(String),
    /// Valid JSON, invalid content.
    #[error("{0}")]
    Invalid(String),
    /// A bad value.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A file that cannot be used, with the reason.
    #[error("config file {0}: {1}")]
    File(String, String),
    /// The config directory cannot be read.
    #[error("{0}")]
    Io(String),
}
