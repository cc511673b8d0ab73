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
    /// The modules' symbol CRCs against that kernel's `symvers`, when the dry run got that
    /// far (absent in records of loaders before the check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol_versions: Option<SymbolVersions>,
}

impl SetVerdict {
    /// Whether that kernel's first boot would run the out-of-tree modules.
    pub fn would_swap(&self) -> bool {
        self.state == "wouldSwap"
    }
}

/// The symbol versions (`CONFIG_MODVERSIONS` CRCs) the image modules a set loads were built
/// against, compared with the kernel's own table (`symvers`) before anything is loaded: the
/// loader's `--dry-run --json` (`symbolVersions` of a set) and the upgrade preflight record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SymbolVersions {
    /// The kernel's table compared with; absent when there is none (see `unchecked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Imports compared with the table (the mismatches among them).
    pub checked: u64,
    /// Imports of symbols a module of the same set exports: the kernel compares those with
    /// the exporting module when it loads them (both are the image's build).
    #[serde(default)]
    pub from_set: u64,
    /// What was not compared, and why, one line each: no table for the kernel
    /// ("no symvers for 5.14.0-...: the kernel checks them at load"), a symbol of a node
    /// module outside the kernel's build.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchecked: Vec<String>,
    /// Imports whose CRC is not the kernel's, or that the kernel does not export: the set is
    /// refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mismatches: Vec<SymbolMismatch>,
}

/// A symbol a module was built against with another CRC than the kernel has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SymbolMismatch {
    /// The module importing it.
    pub module: String,
    /// The symbol.
    pub symbol: String,
    /// The CRC the module was built against, `0x%08x`.
    pub module_crc: String,
    /// The CRC the kernel exports it with; absent: the kernel does not export it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_crc: Option<String>,
}

impl SymbolVersions {
    /// One line for logs: what was compared with what, or why nothing was.
    pub fn summary(&self) -> String {
        let mut s = match &self.table {
            Some(t) => format!("symbol versions: {} checked against {t}", self.checked),
            None => "symbol versions unchecked".to_owned(),
        };
        if self.from_set > 0 {
            s += &format!(
                ", {} from the set's own modules (checked by the kernel at load)",
                self.from_set
            );
        }
        if !self.mismatches.is_empty() {
            s += &format!(", {} mismatched", self.mismatches.len());
        }
        for u in &self.unchecked {
            s += &format!("; {u}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_without_symbol_versions_still_reads() {
        let old = r#"{"config":"99-x","set":"x","state":"wouldSwap","image":"r/x:1"}"#;
        let v: SetVerdict = serde_json::from_str(old).unwrap();
        assert_eq!(v.symbol_versions, None);
        let json = r#"{"config":"99-x","set":"x","state":"failed","symbolVersions":{"table":"/t","checked":2,"fromSet":1,"mismatches":[{"module":"x","symbol":"s","moduleCrc":"0x00000001","kernelCrc":"0x00000002"}]}}"#;
        let v: SetVerdict = serde_json::from_str(json).unwrap();
        let sv = v.symbol_versions.as_ref().unwrap();
        assert_eq!(sv.mismatches[0].kernel_crc.as_deref(), Some("0x00000002"));
        assert_eq!(
            sv.summary(),
            "symbol versions: 2 checked against /t, 1 from the set's own modules (checked by the kernel at load), 1 mismatched"
        );
        assert_eq!(serde_json::to_string(&v).unwrap(), json);
        let none = SymbolVersions {
            unchecked: vec!["no symvers for K: the kernel checks them at load".into()],
            ..Default::default()
        };
        assert_eq!(
            none.summary(),
            "symbol versions unchecked; no symvers for K: the kernel checks them at load"
        );
    }
}
