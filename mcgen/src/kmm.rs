// SPDX-License-Identifier: Apache-2.0
//! KMM compatibility: the `day1-utility` flags, the `BootModuleConfig` resource and the
//! `ProduceMachineConfig` function, mapped onto kmod-day1.

use serde::Deserialize;

use crate::{Day1Config, Delivery, Error, Generator, ModuleSetBuilder};

/// API group of KMM's `BootModuleConfig`.
pub const BMC_GROUP: &str = "kmm.sigs.x-k8s.io";
/// Kind of KMM's `BootModuleConfig`.
pub const BMC_KIND: &str = "BootModuleConfig";

/// What KMM's `day1-utility` takes, by the same names.
#[derive(Debug, Clone, Default)]
pub struct KmmArgs {
    /// `--machine-config`
    pub machine_config: String,
    /// `--machine-config-pool`
    pub machine_config_pool: String,
    /// `--image`: without a tag, the node uses its kernel release as the tag.
    pub image: String,
    /// `--kernel-module`
    pub kernel_module: String,
    /// `--in-tree-modules-to-remove`
    pub in_tree_modules_to_remove: Vec<String>,
    /// `--firmware-files-path`
    pub firmware_files_path: Option<String>,
    /// `--worker-image`: accepted and ignored (no worker image runs on the node).
    pub worker_image: Option<String>,
}

impl KmmArgs {
    /// Maps the flags onto a config with one module set named after the module.
    /// The second element holds warnings for the user.
    pub fn into_config(self) -> Result<(Day1Config, Vec<String>), Error> {
        let mut warnings = vec![];
        if self.worker_image.as_deref().is_some_and(|w| !w.is_empty()) {
            warnings.push(
                "--worker-image is ignored: kmod-day1 runs no worker image on the node".to_owned(),
            );
        }
        for (flag, v) in [
            ("--machine-config", &self.machine_config),
            ("--machine-config-pool", &self.machine_config_pool),
            ("--image", &self.image),
            ("--kernel-module", &self.kernel_module),
        ] {
            if v.is_empty() {
                return Err(Error::Invalid(format!(
                    "{flag} is empty; give a value (see mcgen --help)"
                )));
            }
        }
        let mut set = ModuleSetBuilder::new(&set_name_for(&self.kernel_module)?)
            .image(&self.image)
            .module(&self.kernel_module, &[]);
        for m in self
            .in_tree_modules_to_remove
            .iter()
            .filter(|m| !m.is_empty())
        {
            set = set.remove_in_tree(m);
        }
        if let Some(f) = self
            .firmware_files_path
            .as_deref()
            .filter(|f| !f.is_empty())
        {
            set = set.firmware_path(f);
        }
        let config = Day1Config::new(
            &self.machine_config,
            &self.machine_config_pool,
            vec![set.build()?],
        )?;
        Ok((config, warnings))
    }
}

/// A module set name derived from a module name (`_` becomes `-`, lower case).
fn set_name_for(module: &str) -> Result<String, Error> {
    kmod_day1_contract::reject_control("kernel module name", module)?;
    let name = module.to_ascii_lowercase().replace('_', "-");
    kmod_day1_contract::check_dns1123_label(&name).map_err(|_| {
        Error::Invalid(format!(
            "kernel module name {module:?} may only hold letters, digits, '_' and '-'"
        ))
    })?;
    Ok(name)
}

/// KMM's `BootModuleConfig` resource (v1beta1), accepted as a spec as it is.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BootModuleConfig {
    spec: BootModuleConfigSpec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BootModuleConfigSpec {
    machine_config_name: String,
    machine_config_pool_name: String,
    kernel_module_image: String,
    kernel_module_name: String,
    #[serde(default)]
    in_tree_modules_to_remove: Vec<String>,
    #[serde(default)]
    firmware_files_path: Option<String>,
    #[serde(default)]
    worker_image: Option<String>,
}

impl BootModuleConfig {
    pub(crate) fn into_config(self) -> Result<(Day1Config, Vec<String>), Error> {
        let s = self.spec;
        KmmArgs {
            machine_config: s.machine_config_name,
            machine_config_pool: s.machine_config_pool_name,
            image: s.kernel_module_image,
            kernel_module: s.kernel_module_name,
            in_tree_modules_to_remove: s.in_tree_modules_to_remove,
            firmware_files_path: s.firmware_files_path,
            worker_image: s.worker_image,
        }
        .into_config()
    }
}

/// The equivalent of KMM's `mcproducer.ProduceMachineConfig(name, pool, image, module)`:
/// a MachineConfig (YAML) that loads `module` from `image` (tagged with the node's kernel
/// release when it has no tag) before the network comes up, replacing the in-tree module
/// of the same name.
///
/// The node binaries are expected in the OS image (`--delivery layered`); use
/// [`Generator`] for other deliveries and options.
///
/// ```
/// let yaml = mcgen::produce_machine_config("99-worker-ice", "worker", "quay.io/acme/ice-kmod", "ice").unwrap();
/// assert!(yaml.contains("kind: MachineConfig"));
/// ```
pub fn produce_machine_config(
    name: &str,
    pool: &str,
    image: &str,
    module: &str,
) -> Result<String, Error> {
    let (config, _) = KmmArgs {
        machine_config: name.to_owned(),
        machine_config_pool: pool.to_owned(),
        image: image.to_owned(),
        kernel_module: module.to_owned(),
        in_tree_modules_to_remove: vec![module.to_owned()],
        ..KmmArgs::default()
    }
    .into_config()?;
    Generator::new(config)
        .delivery(Delivery::Layered)
        .machine_config_yaml()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_flags() {
        let (c, w) = KmmArgs {
            machine_config: "99-kmm".into(),
            machine_config_pool: "worker".into(),
            image: "quay.io/a/b".into(),
            kernel_module: "kmm_ci_a".into(),
            in_tree_modules_to_remove: vec!["ice".into(), "".into()],
            firmware_files_path: Some("/firmware".into()),
            worker_image: Some("quay.io/kmm/worker".into()),
        }
        .into_config()
        .unwrap();
        assert_eq!(w.len(), 1);
        let s = &c.node.module_sets[0];
        assert_eq!(s.name.as_str(), "kmm-ci-a");
        assert_eq!(s.in_tree_modules_to_remove.len(), 1);
        assert_eq!(s.firmware_path.as_ref().unwrap().as_str(), "/firmware");
    }
}
