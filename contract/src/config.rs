// SPDX-License-Identifier: Apache-2.0
//! The node config: `/etc/kmod-day1/config.d/<name>.json`, one file per MachineConfig.
//!
//! JSON because a machine writes it (mcgen) and both node binaries read it on every boot:
//! serde_json is small in a static binary and the format is the one Ignition already uses.

use std::path::{Path, PathBuf};

use regex_lite::Regex;
use serde::{Deserialize, Serialize};

use crate::{
    AbsPath, ConfigError, ConfigName, ImageRef, ImageTemplate, KernelRelease, ModuleName,
    ModuleParam, SetName,
};

/// The config format version this code reads and writes.
pub const CONFIG_VERSION: u32 = 1;

/// Default directory of config files on the node.
pub const CONFIG_DIR: &str = "/etc/kmod-day1/config.d";

/// Default directory inside the kmod image that holds `lib/modules/<kver>` (as in KMM).
pub const DEFAULT_DIR_NAME: &str = "/opt";

/// Default pull secret on an OpenShift node.
pub const DEFAULT_PULL_SECRET: &str = "/var/lib/kubelet/config.json";

/// One config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeConfig {
    /// Format version; must be [`CONFIG_VERSION`].
    pub version: u32,
    /// The module sets, handled in order.
    pub module_sets: Vec<ModuleSet>,
}

/// A set of modules shipped in one kmod image, swapped in together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModuleSet {
    /// Name of the set, unique in its config.
    pub name: SetName,
    /// Image for every kernel; without tag, the kernel release is the tag. Used when no
    /// kernel mapping matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageTemplate>,
    /// Per-kernel images, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_mappings: Vec<KernelMapping>,
    /// Modules to load, in this order, each with its dependencies first.
    pub modules: Vec<ModuleSpec>,
    /// In-tree modules to unload first, in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_tree_modules_to_remove: Vec<ModuleName>,
    /// Directory inside the image holding `lib/modules/<kver>`.
    #[serde(default = "default_dir_name")]
    pub dir_name: AbsPath,
    /// Directory inside the image whose files are firmware, copied to `/var/lib/firmware`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_path: Option<AbsPath>,
    /// Pull secret (`auths` JSON) on the node.
    #[serde(default = "default_pull_secret")]
    pub pull_secret: AbsPath,
    /// What to do when the running kernel's image had to be fetched.
    #[serde(default)]
    pub reboot: RebootPolicy,
}

/// A module to load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModuleSpec {
    /// Module name (as in `modules.dep`, without `.ko`).
    pub name: ModuleName,
    /// Parameters passed to `finit_module`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<ModuleParam>,
}

/// Maps kernels to an image, like KMM's `kernelMappings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KernelMapping {
    /// Exact kernel release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<KernelRelease>,
    /// Regular expression matched against the kernel release (RE2 syntax without Unicode
    /// classes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regexp: Option<String>,
    /// Image for the matching kernels.
    pub container_image: ImageTemplate,
}

/// Reboot policy of a module set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RebootPolicy {
    /// Reboot once when the running kernel's image was fetched and not loaded this boot.
    #[default]
    IfNeeded,
    /// Never reboot; the modules are loaded on the next boot the admin makes.
    Never,
}

fn default_dir_name() -> AbsPath {
    AbsPath::new(DEFAULT_DIR_NAME).expect("valid default")
}

fn default_pull_secret() -> AbsPath {
    AbsPath::new(DEFAULT_PULL_SECRET).expect("valid default")
}

impl KernelMapping {
    /// Whether this mapping applies to `kernel`.
    pub fn matches(&self, kernel: &KernelRelease) -> Result<bool, ConfigError> {
        if let Some(l) = &self.literal {
            return Ok(l == kernel);
        }
        match &self.regexp {
            Some(r) => Ok(compile_regexp(r)?.is_match(kernel.as_str())),
            None => Ok(false),
        }
    }
}

/// Compiles a kernel-mapping regexp, with an error that names it.
pub fn compile_regexp(r: &str) -> Result<Regex, ConfigError> {
    Regex::new(r).map_err(|e| {
        ConfigError::Invalid(format!("kernel mapping regexp {r:?} does not compile: {e}"))
    })
}

impl ModuleSet {
    /// The image for `kernel`, or `None` when neither a mapping nor a default image applies.
    pub fn image_for(&self, kernel: &KernelRelease) -> Result<Option<ImageRef>, ConfigError> {
        for m in &self.kernel_mappings {
            if m.matches(kernel)? {
                return Ok(Some(m.container_image.resolve(kernel)?));
            }
        }
        match &self.image {
            Some(t) => Ok(Some(t.resolve(kernel)?)),
            None => Ok(None),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let set = &self.name;
        if self.modules.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "module set {set} lists no modules; add at least one under modules"
            )));
        }
        if self.image.is_none() && self.kernel_mappings.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "module set {set} has neither image nor kernelMappings; give one of them"
            )));
        }
        for m in &self.kernel_mappings {
            match (&m.literal, &m.regexp) {
                (Some(_), None) => {}
                (None, Some(r)) => {
                    compile_regexp(r)?;
                }
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "a kernel mapping of module set {set} must have exactly one of literal or regexp"
                    )))
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.modules {
            if !seen.insert(m.name.kernel_name()) {
                return Err(ConfigError::Invalid(format!(
                    "module set {set} lists module {} twice; list it once",
                    m.name
                )));
            }
        }
        Ok(())
    }
}

impl NodeConfig {
    /// Parses and validates a config file's text.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let c: NodeConfig =
            serde_json::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// Serializes for writing to the node (pretty, newline-terminated).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("config serializes");
        s.push('\n');
        s
    }

    /// Checks what the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.version != CONFIG_VERSION {
            return Err(ConfigError::Invalid(format!(
                "config version {} is not supported; this kmod-day1 reads version {CONFIG_VERSION}",
                self.version
            )));
        }
        if self.module_sets.is_empty() {
            return Err(ConfigError::Invalid("config has no module sets".into()));
        }
        let mut names = std::collections::BTreeSet::new();
        for s in &self.module_sets {
            if !names.insert(&s.name) {
                return Err(ConfigError::Invalid(format!(
                    "module set name {} is used twice; give each set its own name",
                    s.name
                )));
            }
            s.validate()?;
        }
        Ok(())
    }
}

/// A config file loaded from the config directory.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The file's stem, which names the config.
    pub name: ConfigName,
    /// Where it was read from.
    pub path: PathBuf,
    /// Its content.
    pub config: NodeConfig,
}

/// Reads every `*.json` in `dir`, sorted by name. A missing directory holds no configs.
/// Each file is parsed on its own: one bad file is reported in the result's second part
/// without hiding the good ones.
pub fn load_config_dir(dir: &Path) -> Result<(Vec<LoadedConfig>, Vec<ConfigError>), ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], vec![])),
        Err(e) => return Err(ConfigError::Io(format!("reading {}: {e}", dir.display()))),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut good = vec![];
    let mut bad = vec![];
    for path in paths {
        match load_config_file(&path) {
            Ok(c) => good.push(c),
            Err(e) => bad.push(e),
        }
    }
    Ok((good, bad))
}

/// Reads and validates one config file.
pub fn load_config_file(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let at = |e: String| ConfigError::File(path.display().to_string(), e);
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let name = ConfigName::new(stem).map_err(|e| at(e.to_string()))?;
    let text = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
    let config = NodeConfig::from_json(&text).map_err(|e| at(e.to_string()))?;
    Ok(LoadedConfig {
        name,
        path: path.to_owned(),
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "version": 1,
      "moduleSets": [{
        "name": "e1000",
        "image": "10.0.2.2:5000/kmod/e1000",
        "kernelMappings": [{"regexp": "^6\\.1\\..*$", "containerImage": "10.0.2.2:5000/kmod/e1000:${KERNEL_FULL_VERSION}"}],
        "modules": [{"name": "e1000", "parameters": ["debug=2"]}],
        "inTreeModulesToRemove": ["e1000"]
      }]
    }"#;

    #[test]
    fn parses_with_defaults() {
        let c = NodeConfig::from_json(SAMPLE).unwrap();
        let s = &c.module_sets[0];
        assert_eq!(s.dir_name.as_str(), "/opt");
        assert_eq!(s.pull_secret.as_str(), DEFAULT_PULL_SECRET);
        assert_eq!(s.reboot, RebootPolicy::IfNeeded);
        let k = KernelRelease::new("6.1.0-27-amd64").unwrap();
        assert_eq!(
            s.image_for(&k).unwrap().unwrap().to_string(),
            "10.0.2.2:5000/kmod/e1000:6.1.0-27-amd64"
        );
        let k = KernelRelease::new("5.14.0-1.el9.x86_64").unwrap();
        assert_eq!(
            s.image_for(&k).unwrap().unwrap().to_string(),
            "10.0.2.2:5000/kmod/e1000:5.14.0-1.el9.x86_64"
        );
        // Round trip.
        assert_eq!(NodeConfig::from_json(&c.to_json()).unwrap(), c);
    }

    #[test]
    fn rejects_unknown_keys_and_versions() {
        let e =
            NodeConfig::from_json(&SAMPLE.replace("\"version\": 1", "\"version\": 2")).unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
        let e = NodeConfig::from_json(&SAMPLE.replace("\"modules\"", "\"modulez\"")).unwrap_err();
        assert!(e.to_string().contains("modulez"), "{e}");
        let e = NodeConfig::from_json(&SAMPLE.replace("^6\\\\.1", "^6\\\\.(1")).unwrap_err();
        assert!(e.to_string().contains("does not compile"), "{e}");
    }

    #[test]
    fn loads_a_directory_and_reports_bad_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("b-good.json"), SAMPLE).unwrap();
        std::fs::write(d.path().join("a-bad.json"), "{").unwrap();
        std::fs::write(d.path().join("ignored.txt"), "x").unwrap();
        let (good, bad) = load_config_dir(d.path()).unwrap();
        assert_eq!(good.len(), 1);
        assert_eq!(good[0].name.as_str(), "b-good");
        assert_eq!(bad.len(), 1);
        assert!(bad[0].to_string().contains("a-bad.json"));
        let (good, bad) = load_config_dir(&d.path().join("missing")).unwrap();
        assert!(good.is_empty() && bad.is_empty());
    }
}
