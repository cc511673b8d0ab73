// SPDX-License-Identifier: Apache-2.0
//! `--from-kmm-machineconfig FILE`: migration from KMM's Day 1. Reads a MachineConfig made by
//! KMM's `day1-utility` or by its `BootModuleConfig` controller (both render the same Ignition:
//! two units named `<machine-config>-replace-kernel-module.service` and
//! `<machine-config>-pull-kernel-module-image.service` whose `Environment=` lines carry the
//! settings, three scripts in `/usr/local/bin`, `crio-wipe.service` masked; KMM releases before
//! 2.2 named the units without the prefix and had `IN_TREE_MODULE_TO_REMOVE`, one module) and
//! writes the equivalent kmod-day1 spec, headed by the list of what to remove.
//!
//! The kmod-day1 MachineConfig takes the KMM one's name, so that applying it replaces KMM's
//! content in one MCO rollout: MCD deletes the units, scripts and mask that leave the rendered
//! config. What MCO does not own (the BootModuleConfig, its disruption-policy entries, what the
//! scripts left on the nodes) is listed for the operator.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::{Day1Config, Error, KmmArgs, API_VERSION, KIND};

/// The unit KMM runs before the network (suffix of its name).
const REPLACE_UNIT: &str = "replace-kernel-module.service";
/// The unit KMM runs after the network (suffix of its name).
const PULL_UNIT: &str = "pull-kernel-module-image.service";
/// KMM masks it so that the images pulled into CRI-O's storage survive a reboot.
const CRIO_WIPE: &str = "crio-wipe.service";
/// KMM's scripts, shared by every KMM Day-1 MachineConfig of a pool.
const SCRIPTS: [&str; 3] = [
    "/usr/local/bin/replace-kernel-module.sh",
    "/usr/local/bin/pull-kernel-module-image.sh",
    "/usr/local/bin/wait-for-dispatcher.sh",
];
/// What KMM's scripts leave on a node, outside MCO's files.
const NODE_LEFTOVERS: [&str; 2] = [
    "/var/lib/kmm_day1_config.yaml",
    "/var/lib/image_file_day1.tar",
];

/// One thing of KMM's Day 1 to remove after the migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// The BootModuleConfig naming this MachineConfig, when KMM's controller made it.
    BootModuleConfig {
        /// Its `spec.machineConfigName`.
        machine_config: String,
    },
    /// A systemd unit of the MachineConfig (MCD removes it with the MachineConfig's content).
    Unit(String),
    /// A unit the MachineConfig masks.
    Mask(String),
    /// A file of the MachineConfig.
    File(String),
    /// An entry KMM's controller adds to `MachineConfiguration/cluster`'s node disruption policy.
    DisruptionPolicyUnit(String),
    /// A file entry of that policy.
    DisruptionPolicyFile(String),
    /// A file KMM's scripts write on the node, which no MachineConfig owns.
    NodeFile(String),
}

impl Removal {
    /// Shared by every KMM Day-1 MachineConfig of a pool: only the last migration removes it.
    fn shared(&self) -> bool {
        match self {
            Removal::Mask(n) | Removal::DisruptionPolicyUnit(n) => n == CRIO_WIPE,
            Removal::File(_) | Removal::DisruptionPolicyFile(_) => true,
            _ => false,
        }
    }

    fn describe(&self) -> String {
        let shared = if self.shared() {
            " (shared by KMM's Day-1 configs: stays while another one has it)"
        } else {
            ""
        };
        match self {
            Removal::BootModuleConfig { machine_config } => format!(
                "BootModuleConfig with spec.machineConfigName {machine_config}, if KMM's controller made the MachineConfig (`oc get bootmoduleconfigs -A`): delete it first, or the controller puts KMM's content back; its finalizer removes its disruption-policy entries"
            ),
            Removal::Unit(n) => format!("unit {n}{shared}"),
            Removal::Mask(n) => format!("the mask of {n}{shared}"),
            Removal::File(p) => format!("file {p}{shared}"),
            Removal::DisruptionPolicyUnit(n) => format!("units entry {n}{shared}"),
            Removal::DisruptionPolicyFile(p) => format!("files entry {p}{shared}"),
            Removal::NodeFile(p) => p.clone(),
        }
    }
}

/// The result of reading a KMM MachineConfig.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The equivalent kmod-day1 config, under the KMM MachineConfig's name and pool.
    pub config: Day1Config,
    /// The KMM image as the MachineConfig names it (the node appends `:<kernel release>`).
    pub kmm_image: String,
    /// What to remove, in order.
    pub removals: Vec<Removal>,
    /// Things the operator should know (KMM settings without an equivalent, foreign content).
    pub warnings: Vec<String>,
}

/// `KEY=VALUE` assignments of a unit's `Environment=` lines (quoted or not).
fn unit_environment(contents: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for line in contents.lines() {
        let Some(v) = line.trim().strip_prefix("Environment=") else {
            continue;
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        if let Some((k, val)) = v.split_once('=') {
            env.insert(k.to_owned(), val.to_owned());
        }
    }
    env
}

/// Reads a KMM MachineConfig (YAML or JSON, as `oc get mc NAME -o yaml` prints it).
pub fn migrate(text: &str, origin: &str) -> Result<Migration, Error> {
    let bad = |why: String| Error::Invalid(format!("KMM MachineConfig {origin}: {why}"));
    let mc: Value = serde_norway::from_str(text)
        .map_err(|e| bad(format!("not YAML: {}", e.to_string().replace('\n', " "))))?;
    if mc["kind"] != "MachineConfig" || mc["apiVersion"] != "machineconfiguration.openshift.io/v1" {
        return Err(bad(format!(
            "apiVersion {} kind {} is not a machineconfiguration.openshift.io/v1 MachineConfig (give the file `oc get mc NAME -o yaml` prints)",
            mc["apiVersion"], mc["kind"]
        )));
    }
    let name = mc["metadata"]["name"]
        .as_str()
        .ok_or_else(|| bad("metadata.name is missing".into()))?
        .to_owned();
    let pool = mc["metadata"]["labels"]["machineconfiguration.openshift.io/role"]
        .as_str()
        .ok_or_else(|| {
            bad(format!(
                "MachineConfig {name} has no machineconfiguration.openshift.io/role label; KMM always sets it to the pool"
            ))
        })?
        .to_owned();
    let ignition = &mc["spec"]["config"];
    let empty = vec![];
    let units = ignition["systemd"]["units"].as_array().unwrap_or(&empty);
    let files = ignition["storage"]["files"].as_array().unwrap_or(&empty);

    let is_kmm_unit = |n: &str, suffix: &str| n == suffix || n == format!("{name}-{suffix}");
    let mut env = BTreeMap::new();
    let mut removals = vec![];
    let mut warnings = vec![];
    let mut found_replace = false;
    // KMM's units are named after the MachineConfig since the BootModuleConfig controller's
    // time; unprefixed ones come from an older day1-utility, before that controller existed.
    let mut prefixed = false;
    for u in units {
        let unit = u["name"].as_str().unwrap_or_default();
        if is_kmm_unit(unit, REPLACE_UNIT) || is_kmm_unit(unit, PULL_UNIT) {
            found_replace |= is_kmm_unit(unit, REPLACE_UNIT);
            prefixed |= unit.starts_with(&format!("{name}-"));
            for (k, v) in unit_environment(u["contents"].as_str().unwrap_or_default()) {
                if let Some(old) = env.get(&k).filter(|old: &&String| **old != v) {
                    return Err(bad(format!("its units disagree on {k}: {old:?} and {v:?}")));
                }
                env.insert(k, v);
            }
            removals.push(Removal::Unit(unit.to_owned()));
        } else if unit == CRIO_WIPE && u["mask"] == true {
            removals.push(Removal::Mask(unit.to_owned()));
        } else {
            warnings.push(format!(
                "MachineConfig {name} also holds unit {unit}, which is not KMM's: kmod-day1's MachineConfig of the same name replaces it, so move it to a MachineConfig of its own first"
            ));
        }
    }
    if !found_replace {
        return Err(bad(format!(
            "MachineConfig {name} has no KMM Day-1 unit ({name}-{REPLACE_UNIT}): it was not made by KMM's day1-utility or BootModuleConfig"
        )));
    }
    for f in files {
        let path = f["path"].as_str().unwrap_or_default();
        if SCRIPTS.contains(&path) {
            removals.push(Removal::File(path.to_owned()));
        } else {
            warnings.push(format!(
                "MachineConfig {name} also holds file {path}, which is not KMM's: kmod-day1's MachineConfig of the same name replaces it, so move it to a MachineConfig of its own first"
            ));
        }
    }
    if prefixed {
        // The BootModuleConfig, and what its controller adds to MachineConfiguration/cluster
        // (action None), in case the controller made this MachineConfig.
        removals.insert(
            0,
            Removal::BootModuleConfig {
                machine_config: name.clone(),
            },
        );
        for suffix in [PULL_UNIT, REPLACE_UNIT] {
            removals.push(Removal::DisruptionPolicyUnit(format!("{name}-{suffix}")));
        }
        removals.push(Removal::DisruptionPolicyUnit(CRIO_WIPE.to_owned()));
        removals.extend(
            SCRIPTS
                .iter()
                .map(|p| Removal::DisruptionPolicyFile((*p).to_owned())),
        );
    }
    removals.extend(
        NODE_LEFTOVERS
            .iter()
            .map(|p| Removal::NodeFile((*p).to_owned())),
    );

    let setting = |key: &str| env.get(key).filter(|v| !v.is_empty()).cloned();
    let need = |key: &str| {
        setting(key).ok_or_else(|| {
            bad(format!(
                "its units set no {key} (Environment=): the oldest KMM releases kept the settings in their scripts; write the kmod-day1 spec by hand (docs/mcgen.md)"
            ))
        })
    };
    let kernel_module = need("KERNEL_MODULE")?;
    let image = need("KERNEL_MODULE_IMAGE")?;
    let in_tree: Vec<String> = match setting("IN_TREE_MODULES_TO_REMOVE") {
        Some(list) => list.split_whitespace().map(str::to_owned).collect(),
        None => setting("IN_TREE_MODULE_TO_REMOVE").into_iter().collect(),
    };
    if let Some(worker) = setting("WORKER_IMAGE") {
        warnings.push(format!(
            "KMM's worker image {worker} is not needed any more: kmod-day1 runs no container on the node"
        ));
    }
    match kmod_day1_contract::ImageRef::parse(&image) {
        Ok(r) if r.tag.is_some() || r.digest.is_some() => warnings.push(format!(
            "KMM appends ':<kernel release>' to {image}, which already has a tag or digest, so KMM's nodes could not pull it; kmod-day1 pulls {image} as it is, for every kernel"
        )),
        _ => {}
    }
    let (config, _) = KmmArgs {
        machine_config: name.clone(),
        machine_config_pool: pool,
        image: image.clone(),
        kernel_module,
        in_tree_modules_to_remove: in_tree,
        firmware_files_path: setting("FIRMWARE_FILES_PATH"),
        worker_image: None,
    }
    .into_config()
    .map_err(|e| bad(e.to_string()))?;
    Ok(Migration {
        config,
        kmm_image: image,
        removals,
        warnings,
    })
}

/// The kmod-day1 spec of a config (`mcgen -f` reads it back).
pub(crate) fn spec_yaml(config: &Day1Config) -> String {
    let spec = json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": { "name": config.name.as_str() },
        "spec": {
            "machineConfigPool": config.pool.as_str(),
            "moduleSets": config.node.module_sets,
        },
    });
    serde_norway::to_string(&spec).expect("YAML serializes")
}

impl Migration {
    /// The spec, headed by comments: how to apply it and what to remove.
    pub fn to_yaml(&self) -> String {
        let name = self.config.name.as_str();
        let mut out = format!(
            "# kmod-day1 spec migrated by mcgen from KMM's Day-1 MachineConfig {name} (image {}).\n\
             # kmod-day1's MachineConfig takes the same name, so it replaces KMM's in one MCO rollout:\n\
             #   mcgen -f THIS_FILE -o prestage --node-image REF@sha256:DIGEST | oc apply -f -\n\
             #   oc -n kmod-day1 rollout status daemonset/kmod-day1-{name}\n\
             #   mcgen -f THIS_FILE --node-image REF@sha256:DIGEST | oc apply -f -\n\
             #\n\
             # To remove, in this order:\n",
            self.kmm_image
        );
        let section = |out: &mut String, title: &str, pick: &dyn Fn(&Removal) -> bool| {
            let items: Vec<String> = self
                .removals
                .iter()
                .filter(|r| pick(r))
                .map(Removal::describe)
                .collect();
            if !items.is_empty() {
                out.push_str(&format!("# - {title}\n"));
                for i in items {
                    out.push_str(&format!("#   - {i}\n"));
                }
            }
        };
        section(
            &mut out,
            "before applying kmod-day1's MachineConfig:",
            &|r| matches!(r, Removal::BootModuleConfig { .. }),
        );
        section(
            &mut out,
            &format!("removed from the nodes by MCO when kmod-day1's MachineConfig {name} replaces KMM's:"),
            &|r| matches!(r, Removal::Unit(_) | Removal::Mask(_) | Removal::File(_)),
        );
        section(
            &mut out,
            "MachineConfiguration/cluster spec.nodeDisruptionPolicy entries of KMM's controller (its finalizer removes them; else `oc edit machineconfiguration cluster`):",
            &|r| matches!(r, Removal::DisruptionPolicyUnit(_) | Removal::DisruptionPolicyFile(_)),
        );
        section(
            &mut out,
            &format!("left on each node by KMM's scripts, no MachineConfig owns them (`oc debug node/NODE -- chroot /host rm -f ...`; also `podman rmi {}:<kernel release>` and KMM's worker image):", self.kmm_image),
            &|r| matches!(r, Removal::NodeFile(_)),
        );
        out.push_str(&spec_yaml(&self.config));
        out
    }
}

/// `--from-kmm-machineconfig FILE`: the migration's YAML; `notes` receives lines for stderr.
pub(crate) fn migrate_file(path: &Path, notes: &mut Vec<String>) -> Result<String, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Invalid(format!(
                "KMM MachineConfig {} does not exist",
                path.display()
            ))
        } else {
            Error::io(format!("reading {}", path.display()), e)
        }
    })?;
    let m = migrate(&text, &path.display().to_string())?;
    notes.extend(m.warnings.iter().map(|w| format!("warning: {w}")));
    notes.push(format!(
        "migrated KMM MachineConfig {} (pool {}): {} module set(s); {} things of KMM's to remove, listed at the top of the spec",
        m.config.name,
        m.config.pool.as_str(),
        m.config.node.module_sets.len(),
        m.removals.len()
    ));
    Ok(m.to_yaml())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_lines() {
        let env = unit_environment(
            "[Service]\nEnvironment=\"KERNEL_MODULE=ice\"\nEnvironment=A=b c\nEnvironment=\"EMPTY=\"\nExecStart=/x\n",
        );
        assert_eq!(env["KERNEL_MODULE"], "ice");
        assert_eq!(env["A"], "b c");
        assert_eq!(env["EMPTY"], "");
        assert_eq!(env.len(), 3);
    }
}
