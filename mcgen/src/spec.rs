// SPDX-License-Identifier: Apache-2.0
//! The inputs mcgen understands: its own spec (`kind: KmodDay1Config`) and KMM's
//! `BootModuleConfig`, both turned into one validated [`Day1Config`].

use kmod_day1_contract::{
    reject_control, ConfigName, ModuleSet, NodeConfig, RebootPolicy, CONFIG_VERSION,
};
use serde::Deserialize;

use crate::{kmm, Error};

/// `apiVersion` of mcgen's own spec.
pub const API_VERSION: &str = "kmod-day1.io/v1alpha1";
/// `kind` of mcgen's own spec.
pub const KIND: &str = "KmodDay1Config";

/// A MachineConfigPool name: a Kubernetes label value (the MachineConfig's role label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolName(String);

impl PoolName {
    /// Validates a pool name.
    pub fn new(value: &str) -> Result<Self, Error> {
        reject_control("machine config pool", value)?;
        let b = value.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
        if !ok {
            return Err(Error::Invalid(format!(
                "machine config pool {value:?} is not a valid label value: use 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit (e.g. worker)"
            )));
        }
        Ok(Self(value.to_owned()))
    }

    /// The pool name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Everything one MachineConfig carries: its name, its pool and the node config.
#[derive(Debug, Clone, PartialEq)]
pub struct Day1Config {
    /// MachineConfig name; also the config file's name on the node.
    pub name: ConfigName,
    /// MachineConfigPool the MachineConfig is for.
    pub pool: PoolName,
    /// The node config written to `/etc/kmod-day1/config.d/<name>.json`.
    pub node: NodeConfig,
}

impl Day1Config {
    /// Builds and validates a config from its parts.
    pub fn new(name: &str, pool: &str, module_sets: Vec<ModuleSet>) -> Result<Self, Error> {
        let name = ConfigName::new(name)
            .map_err(|e| Error::Invalid(format!("machine config name {:?} {}", e.value, e.why)))?;
        let node = NodeConfig {
            version: CONFIG_VERSION,
            module_sets,
        };
        node.validate()?;
        Ok(Self {
            name,
            pool: PoolName::new(pool)?,
            node,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    api_version: Option<String>,
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OwnSpec {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Metadata,
    spec: OwnSpecBody,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Metadata {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OwnSpecBody {
    machine_config_pool: String,
    module_sets: Vec<ModuleSet>,
}

/// Parses a spec file's text: mcgen's own `KmodDay1Config` or KMM's `BootModuleConfig`.
/// Returns the config and warnings to show the user.
pub fn parse_spec(text: &str, origin: &str) -> Result<(Day1Config, Vec<String>), Error> {
    let yaml_err = |e: serde_norway::Error| {
        // serde's messages are one line; keep it that way whatever the input held.
        let msg = e.to_string().replace('\n', " ");
        Error::Invalid(format!("spec {origin}: {msg}"))
    };
    let meta: TypeMeta = serde_norway::from_str(text).map_err(yaml_err)?;
    match (meta.api_version.as_deref(), meta.kind.as_deref()) {
        (Some(API_VERSION), Some(KIND)) => {
            let s: OwnSpec = serde_norway::from_str(text).map_err(yaml_err)?;
            let c = Day1Config::new(&s.metadata.name, &s.spec.machine_config_pool, s.spec.module_sets)
                .map_err(|e| Error::Invalid(format!("spec {origin}: {e}")))?;
            Ok((c, vec![]))
        }
        (Some(v), Some(kmm::BMC_KIND)) if v.starts_with(kmm::BMC_GROUP) => {
            let bmc: kmm::BootModuleConfig = serde_norway::from_str(text).map_err(yaml_err)?;
            bmc.into_config()
                .map_err(|e| Error::Invalid(format!("spec {origin}: {e}")))
        }
        (v, k) => Err(Error::Invalid(format!(
            "spec {origin}: apiVersion {:?} kind {:?} is not understood; use apiVersion: {API_VERSION} with kind: {KIND}, or KMM's {}/v1beta1 BootModuleConfig",
            v.unwrap_or(""),
            k.unwrap_or(""),
            kmm::BMC_GROUP
        ))),
    }
}

/// Builds a module set from plain strings, validating each; for programmatic users.
#[derive(Debug, Clone, Default)]
pub struct ModuleSetBuilder {
    name: String,
    image: Option<String>,
    mappings: Vec<(Option<String>, Option<String>, String)>,
    modules: Vec<(String, Vec<String>)>,
    in_tree: Vec<String>,
    dir_name: Option<String>,
    firmware_path: Option<String>,
    pull_secret: Option<String>,
    reboot: RebootPolicy,
}

impl ModuleSetBuilder {
    /// A module set named `name` (a DNS-1123 label).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// Image for every kernel (no tag: the kernel release is the tag).
    pub fn image(mut self, image: &str) -> Self {
        self.image = Some(image.to_owned());
        self
    }

    /// Image for one exact kernel release.
    pub fn kernel_literal(mut self, kernel: &str, image: &str) -> Self {
        self.mappings
            .push((Some(kernel.to_owned()), None, image.to_owned()));
        self
    }

    /// Image for the kernels a regexp matches.
    pub fn kernel_regexp(mut self, regexp: &str, image: &str) -> Self {
        self.mappings
            .push((None, Some(regexp.to_owned()), image.to_owned()));
        self
    }

    /// A module to load, with its parameters (`name=value`).
    pub fn module(mut self, name: &str, parameters: &[&str]) -> Self {
        self.modules.push((
            name.to_owned(),
            parameters.iter().map(|p| (*p).to_owned()).collect(),
        ));
        self
    }

    /// An in-tree module to unload first.
    pub fn remove_in_tree(mut self, name: &str) -> Self {
        self.in_tree.push(name.to_owned());
        self
    }

    /// Directory in the image holding `lib/modules/<kver>` (default `/opt`).
    pub fn dir_name(mut self, dir: &str) -> Self {
        self.dir_name = Some(dir.to_owned());
        self
    }

    /// Directory in the image holding firmware files.
    pub fn firmware_path(mut self, dir: &str) -> Self {
        self.firmware_path = Some(dir.to_owned());
        self
    }

    /// Pull secret on the node.
    pub fn pull_secret(mut self, path: &str) -> Self {
        self.pull_secret = Some(path.to_owned());
        self
    }

    /// Reboot policy.
    pub fn reboot(mut self, policy: RebootPolicy) -> Self {
        self.reboot = policy;
        self
    }

    /// Validates everything and returns the module set.
    pub fn build(self) -> Result<ModuleSet, Error> {
        use kmod_day1_contract::*;
        let mut kernel_mappings = vec![];
        for (literal, regexp, image) in self.mappings {
            if let Some(r) = &regexp {
                compile_regexp(r)?;
            }
            kernel_mappings.push(KernelMapping {
                literal: literal.as_deref().map(KernelRelease::new).transpose()?,
                regexp,
                container_image: ImageTemplate::new(&image)?,
            });
        }
        let modules = self
            .modules
            .into_iter()
            .map(|(n, ps)| {
                Ok(ModuleSpec {
                    name: ModuleName::new(&n)?,
                    parameters: ps
                        .iter()
                        .map(|p| ModuleParam::new(p))
                        .collect::<Result<_, _>>()?,
                })
            })
            .collect::<Result<Vec<_>, NameError>>()?;
        Ok(ModuleSet {
            name: SetName::new(&self.name)?,
            image: self.image.as_deref().map(ImageTemplate::new).transpose()?,
            kernel_mappings,
            modules,
            in_tree_modules_to_remove: self
                .in_tree
                .iter()
                .map(|m| ModuleName::new(m))
                .collect::<Result<_, _>>()?,
            dir_name: AbsPath::new(self.dir_name.as_deref().unwrap_or(DEFAULT_DIR_NAME))?,
            firmware_path: self
                .firmware_path
                .as_deref()
                .map(AbsPath::new)
                .transpose()?,
            pull_secret: AbsPath::new(self.pull_secret.as_deref().unwrap_or(DEFAULT_PULL_SECRET))?,
            reboot: self.reboot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_spec() {
        let text = r#"
apiVersion: kmod-day1.io/v1alpha1
kind: KmodDay1Config
metadata:
  name: 99-worker-ice
spec:
  machineConfigPool: worker
  moduleSets:
    - name: ice
      image: quay.io/acme/ice-kmod
      modules: [{name: ice}]
      inTreeModulesToRemove: [ice]
"#;
        let (c, w) = parse_spec(text, "t.yaml").unwrap();
        assert!(w.is_empty());
        assert_eq!(c.name.as_str(), "99-worker-ice");
        assert_eq!(c.pool.as_str(), "worker");
        assert_eq!(
            c.node.module_sets[0].in_tree_modules_to_remove[0].as_str(),
            "ice"
        );
    }

    #[test]
    fn pool_names() {
        assert!(PoolName::new("worker").is_ok());
        assert!(PoolName::new("worker-cnf").is_ok());
        assert!(PoolName::new("").is_err());
        assert!(PoolName::new("a b").is_err());
        assert!(PoolName::new(&"a".repeat(64)).is_err());
    }

    #[test]
    fn builder_validates() {
        let s = ModuleSetBuilder::new("e1000")
            .image("reg.local/kmod/e1000")
            .module("e1000", &["debug=2"])
            .remove_in_tree("e1000")
            .build()
            .unwrap();
        assert_eq!(s.modules[0].parameters[0].as_str(), "debug=2");
        let e = ModuleSetBuilder::new("e1000")
            .image("reg.local/kmod/e1000")
            .module("e1000\nExecStart=/bin/sh", &[])
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("control character"), "{e}");
    }
}
