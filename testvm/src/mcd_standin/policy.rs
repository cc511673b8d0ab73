// SPDX-License-Identifier: Apache-2.0
//! The cluster's node disruption policy (`MachineConfiguration/cluster`
//! `spec.nodeDisruptionPolicy`, operator.openshift.io/v1) merged over MCO's defaults
//! (`apihelpers.MergeClusterPolicies`), and the actions it gives a diff
//! (`calculatePostConfigChangeNodeDisruptionActionFromMCDiffs`).

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;

use super::rendered::ConfigDiff;

/// One action of the API (`NodeDisruptionPolicyStatusAction`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type")]
pub enum Action {
    /// Drain and reboot.
    Reboot,
    /// Drain, no reboot.
    Drain,
    /// Nothing.
    None,
    /// `systemctl reload <service>`.
    Reload {
        /// The service.
        reload: ServiceName,
    },
    /// `systemctl restart <service>`.
    Restart {
        /// The service.
        restart: ServiceName,
    },
    /// `systemctl daemon-reload`.
    DaemonReload,
    /// MCO's own action for `/etc/containers/registries.conf`: reload crio.service.
    Special,
}

/// A service an action names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceName {
    /// E.g. `crio.service`.
    pub service_name: String,
}

#[derive(Debug, Clone, Deserialize)]
struct FilePolicy {
    path: String,
    actions: Vec<Action>,
}

#[derive(Debug, Clone, Deserialize)]
struct UnitPolicy {
    name: String,
    actions: Vec<Action>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct SshKeyPolicy {
    #[serde(default)]
    actions: Vec<Action>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicySpec {
    #[serde(default)]
    files: Vec<FilePolicy>,
    #[serde(default)]
    units: Vec<UnitPolicy>,
    #[serde(default)]
    sshkey: SshKeyPolicy,
}

/// The effective policy MCD reads from `status.nodeDisruptionPolicyStatus.clusterPolicies`.
#[derive(Debug, Clone)]
pub struct ClusterPolicies {
    files: Vec<FilePolicy>,
    units: Vec<UnitPolicy>,
    ssh_key: Vec<Action>,
}

fn reload(service: &str) -> Action {
    Action::Reload {
        reload: ServiceName {
            service_name: service.into(),
        },
    }
}

fn restart(service: &str) -> Action {
    Action::Restart {
        restart: ServiceName {
            service_name: service.into(),
        },
    }
}

impl ClusterPolicies {
    /// MCO's defaults (`defaultClusterPolicies` in pkg/apihelpers, read at MCO commit
    /// 7ff337a, August 2026). Left out: the entries of the internal release image registry
    /// (`/etc/iri-registry`, its unit), which only matter on clusters that run it.
    pub fn mco_defaults() -> Self {
        let f = |path: &str, actions: Vec<Action>| FilePolicy {
            path: path.into(),
            actions,
        };
        Self {
            files: vec![
                f("/var/lib/kubelet/config.json", vec![Action::None]),
                f(
                    "/etc/machine-config-daemon/no-reboot/containers-gpg.pub",
                    vec![reload("crio.service")],
                ),
                f("/etc/containers/policy.json", vec![reload("crio.service")]),
                f("/etc/containers/registries.conf", vec![Action::Special]),
                f("/etc/containers/registries.d", vec![reload("crio.service")]),
                f("/etc/crio/policies", vec![reload("crio.service")]),
                f("/etc/nmstate/openshift", vec![Action::None]),
                f(
                    "/etc/pki/ca-trust/source/anchors/openshift-config-user-ca-bundle.crt",
                    vec![
                        restart("coreos-update-ca-trust.service"),
                        restart("crio.service"),
                    ],
                ),
                f(
                    "/etc/kubernetes/credential-providers",
                    vec![restart("kubelet.service")],
                ),
                f(
                    "/etc/systemd/system/kubelet.service.d/40-kubelet-crio-image-credential-provider.conf",
                    vec![Action::DaemonReload, restart("kubelet.service")],
                ),
            ],
            units: Vec::new(),
            ssh_key: vec![Action::None],
        }
    }

    /// Reads `MachineConfiguration/cluster` (YAML or JSON, as `mcgen --output
    /// disruption-policy` writes it) and merges its `spec.nodeDisruptionPolicy` over MCO's
    /// defaults: an entry of the same path or name replaces the default, others are added.
    pub fn from_machine_configuration(text: &str) -> Result<Self> {
        let raw: Value = serde_norway::from_str(text)
            .context("parsing MachineConfiguration/cluster (YAML or JSON)")?;
        let spec = &raw["spec"]["nodeDisruptionPolicy"];
        let spec: PolicySpec = if spec.is_null() {
            PolicySpec::default()
        } else {
            serde_json::from_value(spec.clone())
                .context("reading spec.nodeDisruptionPolicy of MachineConfiguration/cluster")?
        };
        Ok(Self::mco_defaults().merged(spec))
    }

    fn merged(mut self, spec: PolicySpec) -> Self {
        for user in spec.files {
            match self.files.iter_mut().find(|d| d.path == user.path) {
                Some(d) => *d = user,
                None => self.files.push(user),
            }
        }
        for user in spec.units {
            match self.units.iter_mut().find(|d| d.name == user.name) {
                Some(d) => *d = user,
                None => self.units.push(user),
            }
        }
        if !spec.sshkey.actions.is_empty() {
            self.ssh_key = spec.sshkey.actions;
        }
        self
    }

    /// The policy of the file at `path`: the entry of that path, else of its closest
    /// enclosing directory (the longest entry path that holds it).
    fn file_actions(&self, path: &str) -> Option<&[Action]> {
        self.files
            .iter()
            .filter(|p| {
                let dir = format!("{}/", p.path.trim_end_matches('/'));
                path == p.path || path.starts_with(&dir)
            })
            .max_by_key(|p| p.path.len())
            .map(|p| p.actions.as_slice())
    }

    /// The actions for `diff` as MCD computes them on a running node: `Reboot` alone when
    /// the diff always reboots, when a changed file or unit has no entry, or when any
    /// entry says `Reboot`; `None` alone when nothing else is left; else the actions in
    /// the order of the changed files, units, then SSH keys, `None` dropped.
    pub fn actions_for(&self, diff: &ConfigDiff) -> Vec<Action> {
        if diff.always_reboots() {
            return vec![Action::Reboot];
        }
        let mut actions = Vec::new();
        for path in &diff.files {
            match self.file_actions(path) {
                Some(a) => actions.extend_from_slice(a),
                None => return vec![Action::Reboot],
            }
        }
        for name in &diff.units {
            match self.units.iter().find(|u| &u.name == name) {
                Some(u) => actions.extend_from_slice(&u.actions),
                None => return vec![Action::Reboot],
            }
        }
        if diff.passwd {
            actions.extend_from_slice(&self.ssh_key);
        }
        if actions.contains(&Action::Reboot) {
            return vec![Action::Reboot];
        }
        actions.retain(|a| *a != Action::None);
        if actions.is_empty() {
            return vec![Action::None];
        }
        actions
    }
}

/// Whether MCD drains before applying (`isDrainRequiredForNodeDisruptionActions`). MCD
/// skips the drain for `Special` when the registries.conf change only adds mirrors
/// (`isSafeContainerRegistryConfChanges`); the stand-in always drains for it.
pub fn drain_required(actions: &[Action]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Reboot | Action::Drain | Action::Special))
}
