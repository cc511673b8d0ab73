// SPDX-License-Identifier: Apache-2.0
//! `--output disruption-policy`: entries of `MachineConfiguration/cluster`'s
//! `spec.nodeDisruptionPolicy` (operator.openshift.io/v1, GA in OpenShift 4.17) for every file
//! and unit the MachineConfig writes, so that MCO applies a later change of them with the
//! action chosen instead of its default drain and reboot.
//!
//! The output is applied with server-side apply and a field manager of its own
//! (`oc apply --server-side --field-manager=kmod-day1-<config>`): `files` and `units` are
//! `listType=map` lists keyed by `path` and `name`, so the API server merges our entries into
//! the lists other owners (KMM, admins) have, re-applying replaces our entries in place, and
//! applying one without an entry removes only that entry. A JSON patch appending to `/-`
//! would duplicate the entries on every re-apply, which the map list then refuses.

use serde_json::{json, Value};

use crate::{Day1Config, Error};

/// What a later change of the MachineConfig's files and units costs a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnChange {
    /// MCO drains and reboots the node (its default, made explicit): a new kmod version is
    /// loaded at once.
    Reboot,
    /// No drain, no reboot: files are written (`None`), units reloaded (`DaemonReload`); the
    /// new version loads at the node's next reboot. Prestage it first, or that reboot
    /// falls back to the in-tree driver and the pull reboots once more.
    NextBoot,
}

/// The most entries `files` and `units` each hold, for the whole cluster.
pub const MAX_ENTRIES: usize = 50;

/// The field manager that owns one config's entries.
pub fn field_manager(config: &Day1Config) -> String {
    format!("kmod-day1-{}", config.name)
}

/// How many entries the policy adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyEntries {
    /// Entries in `files`.
    pub files: usize,
    /// Entries in `units`.
    pub units: usize,
}

/// The `MachineConfiguration/cluster` object to apply, for the files and units of the Ignition
/// config `ignition` (the MachineConfig's `spec.config`).
pub fn disruption_policy(
    ignition: &Value,
    on_change: OnChange,
) -> Result<(Value, PolicyEntries), Error> {
    let (file_action, unit_action) = match on_change {
        OnChange::Reboot => ("Reboot", "Reboot"),
        OnChange::NextBoot => ("None", "DaemonReload"),
    };
    let names = |list: &Value, key: &str| -> Vec<String> {
        list.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[key].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let files: Vec<Value> = names(&ignition["storage"]["files"], "path")
        .into_iter()
        .map(|path| json!({ "path": path, "actions": [{ "type": file_action }] }))
        .collect();
    let units: Vec<Value> = names(&ignition["systemd"]["units"], "name")
        .into_iter()
        .map(|name| json!({ "name": name, "actions": [{ "type": unit_action }] }))
        .collect();
    let entries = PolicyEntries {
        files: files.len(),
        units: units.len(),
    };
    let object = json!({
        "apiVersion": "operator.openshift.io/v1",
        "kind": "MachineConfiguration",
        "metadata": { "name": "cluster" },
        "spec": { "nodeDisruptionPolicy": { "files": files, "units": units } },
    });
    check_policy(&object["spec"]["nodeDisruptionPolicy"]).map_err(|why| {
        Error::Invalid(format!(
            "the disruption policy breaks the API's rules: {why}"
        ))
    })?;
    Ok((object, entries))
}

/// The rules of `NodeDisruptionPolicyConfig` (openshift/api operator/v1
/// types_machineconfiguration.go) that the API server enforces.
pub fn check_policy(policy: &Value) -> Result<(), String> {
    for (list, key) in [("files", "path"), ("units", "name")] {
        let entries = policy[list]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if entries.len() > MAX_ENTRIES {
            return Err(format!(
                "{list} has {} entries, at most {MAX_ENTRIES}",
                entries.len()
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for e in entries {
            let k = e[key]
                .as_str()
                .ok_or(format!("a {list} entry has no {key}"))?;
            if !seen.insert(k) {
                return Err(format!(
                    "{list} lists {k} twice (a map list keyed by {key})"
                ));
            }
            if list == "units" {
                check_service_name(k)?;
            }
            check_actions(&e["actions"]).map_err(|why| format!("{k}: {why}"))?;
        }
    }
    Ok(())
}

fn check_actions(actions: &Value) -> Result<(), String> {
    let actions = actions.as_array().ok_or("actions is required")?;
    if actions.is_empty() || actions.len() > 10 {
        return Err(format!("{} actions: 1 to 10 allowed", actions.len()));
    }
    for a in actions {
        let t = a["type"].as_str().ok_or("an action has no type")?;
        match t {
            "Reboot" | "None" if actions.len() > 1 => {
                return Err(format!("the {t} action can only be specified standalone"))
            }
            "Reboot" | "Drain" | "DaemonReload" | "None" | "Reload" | "Restart" => {}
            _ => return Err(format!("unknown action type {t}")),
        }
        for (field, needed_by) in [("reload", "Reload"), ("restart", "Restart")] {
            match (a.get(field), t == needed_by) {
                (Some(s), true) => check_service_name(
                    s["serviceName"]
                        .as_str()
                        .ok_or(format!("{field} has no serviceName"))?,
                )?,
                (None, false) => {}
                (None, true) => return Err(format!("{field} is required when type is {t}")),
                (Some(_), false) => return Err(format!("{field} is forbidden when type is {t}")),
            }
        }
    }
    Ok(())
}

/// `${NAME}${SERVICETYPE}`, at most 255 characters.
fn check_service_name(name: &str) -> Result<(), String> {
    const TYPES: [&str; 12] = [
        "service",
        "socket",
        "device",
        "mount",
        "automount",
        "swap",
        "target",
        "path",
        "timer",
        "snapshot",
        "slice",
        "scope",
    ];
    let ok = name.len() <= 255
        && name.rsplit_once('.').is_some_and(|(n, t)| {
            !n.is_empty()
                && TYPES.contains(&t)
                && n.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b":._\\-".contains(&c))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a service name of the form NAME.service (or .socket, .timer, ...)"
        ))
    }
}

/// The policy as YAML for `oc apply --server-side`, with the command in a comment.
pub fn disruption_policy_yaml(
    config: &Day1Config,
    ignition: &Value,
    on_change: OnChange,
) -> Result<(String, PolicyEntries), Error> {
    let (object, entries) = disruption_policy(ignition, on_change)?;
    let manager = field_manager(config);
    let yaml = format!(
        "# Generated by mcgen for MachineConfig {name}: the node disruption policy of its files and units.\n\
         # Server-side apply merges these entries into MachineConfiguration/cluster (lists keyed by path\n\
         # and name) next to those of other owners:\n\
         #   oc apply --server-side --field-manager={manager} -f THIS_FILE\n\
         # Apply it again after a change (same field manager); its entries are replaced, not duplicated.\n\
         {}",
        serde_norway::to_string(&object).expect("YAML serializes"),
        name = config.name,
    );
    Ok((yaml, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignition() -> Value {
        json!({
            "storage": { "files": [{ "path": "/etc/kmod-day1/config.d/a.json" }, { "path": "/etc/kmod-day1/kmod-day1-install.sh" }] },
            "systemd": { "units": [{ "name": "kmod-day1-load.service" }, { "name": "kmod-day1-install.service" }] },
        })
    }

    #[test]
    fn actions_per_choice() {
        let (o, n) = disruption_policy(&ignition(), OnChange::NextBoot).unwrap();
        assert_eq!(n, PolicyEntries { files: 2, units: 2 });
        let p = &o["spec"]["nodeDisruptionPolicy"];
        assert_eq!(p["files"][0]["actions"], json!([{ "type": "None" }]));
        assert_eq!(
            p["units"][1]["actions"],
            json!([{ "type": "DaemonReload" }])
        );
        let (o, _) = disruption_policy(&ignition(), OnChange::Reboot).unwrap();
        let p = &o["spec"]["nodeDisruptionPolicy"];
        assert_eq!(p["files"][1]["actions"], json!([{ "type": "Reboot" }]));
        assert_eq!(p["units"][0]["actions"], json!([{ "type": "Reboot" }]));
    }

    #[test]
    fn the_api_rules() {
        let ok = |p: Value| check_policy(&p);
        assert!(ok(json!({ "units": [{ "name": "a.service", "actions": [{ "type": "Reboot" }, { "type": "Drain" }] }] })).unwrap_err().contains("standalone"));
        assert!(ok(json!({ "files": [{ "path": "/a", "actions": [{ "type": "None" }, { "type": "DaemonReload" }] }] })).unwrap_err().contains("standalone"));
        assert!(
            ok(json!({ "files": [{ "path": "/a", "actions": [{ "type": "Restart" }] }] }))
                .unwrap_err()
                .contains("restart is required")
        );
        assert!(ok(json!({ "files": [{ "path": "/a", "actions": [{ "type": "Drain", "reload": { "serviceName": "a.service" } }] }] })).unwrap_err().contains("forbidden"));
        assert!(ok(json!({ "files": [{ "path": "/a", "actions": [{ "type": "Reload", "reload": { "serviceName": "crio" } }] }] })).unwrap_err().contains("service name"));
        assert!(ok(json!({ "files": [{ "path": "/a", "actions": [{ "type": "Drain" }, { "type": "Reload", "reload": { "serviceName": "crio.service" } }] }] })).is_ok());
        assert!(ok(json!({ "files": [{ "path": "/a", "actions": [{ "type": "None" }] }, { "path": "/a", "actions": [{ "type": "None" }] }] })).unwrap_err().contains("twice"));
        let many: Vec<Value> = (0..51)
            .map(|i| json!({ "path": format!("/f{i}"), "actions": [{ "type": "None" }] }))
            .collect();
        assert!(ok(json!({ "files": many }))
            .unwrap_err()
            .contains("at most 50"));
        assert!(check_service_name("kmod-day1-load.service").is_ok());
        assert!(check_service_name(".service").is_err());
        assert!(check_service_name("a b.service").is_err());
    }
}
