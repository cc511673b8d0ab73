// SPDX-License-Identifier: Apache-2.0
//! A minimal MachineConfig object (machineconfiguration.openshift.io/v1): just what MCO
//! reads, without the whole Kubernetes API crate.

use std::collections::BTreeMap;

use serde::Serialize;

/// The MachineConfig's role label, which selects the pool.
pub const ROLE_LABEL: &str = "machineconfiguration.openshift.io/role";

/// A MachineConfig.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineConfig {
    api_version: &'static str,
    kind: &'static str,
    metadata: ObjectMeta,
    spec: MachineConfigSpec,
}

#[derive(Debug, Serialize)]
struct ObjectMeta {
    name: String,
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct MachineConfigSpec {
    config: serde_json::Value,
}

impl MachineConfig {
    /// A MachineConfig for `pool` holding an Ignition config.
    pub fn new(name: &str, pool: &str, ignition: serde_json::Value) -> Self {
        Self {
            api_version: "machineconfiguration.openshift.io/v1",
            kind: "MachineConfig",
            metadata: ObjectMeta {
                name: name.to_owned(),
                labels: BTreeMap::from([(ROLE_LABEL.to_owned(), pool.to_owned())]),
            },
            spec: MachineConfigSpec { config: ignition },
        }
    }

    /// The YAML form, as `oc apply -f` takes it.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("MachineConfig serializes")
    }
}
