// SPDX-License-Identifier: Apache-2.0
//! `preflight/<kver>.json` in the store: the upgrade preflight's verdict for a kernel the node
//! can boot next (a staged OS update, another boot entry), written by kmod-day1-pull from the
//! loader's own dry run for that kernel and deployment, and carried into the status of that
//! kernel's first boot by the loader.

use serde::{Deserialize, Serialize};

/// Version of the preflight record.
pub const PREFLIGHT_VERSION: u32 = 1;

/// The verdict for one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpgradePreflight {
    /// [`PREFLIGHT_VERSION`].
    pub version: u32,
    /// The kernel checked.
    pub kernel_release: String,
    /// The root it boots: `/`, or the ostree deployment's directory.
    pub root: String,
    /// Seconds since the epoch.
    pub checked_at: u64,
    /// One verdict per (config, module set).
    pub sets: Vec<SetVerdict>,
    /// Set when the check itself could not run (the loader missing, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The verdict for one module set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetVerdict {
    /// Config name.
    pub config: String,
    /// Module set name.
    pub set: String,
    /// The loader's dry-run state: `wouldSwap`, `notStored`, `noImage`, `skipped`, `failed`.
    pub state: String,
    /// The image for that kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Why it would not swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SetVerdict {
    /// Whether that kernel's first boot would run the out-of-tree modules.
    pub fn would_swap(&self) -> bool {
        self.state == "wouldSwap"
    }
}
