// SPDX-License-Identifier: Apache-2.0
//! `--output prestage`: what `oc apply -f` needs to prepare every node of a pool before its
//! MachineConfig, so that MCO's drained reboot is the only one: a Namespace that admits
//! privileged pods, a ServiceAccount granted the `privileged` SCC, a ConfigMap with the config
//! to come and the agent's scripts, and a DaemonSet that runs the node image on the pool.
//!
//! The DaemonSet's init container installs the node binaries on the host (the install unit's
//! script and record) and records the config to come in `STORE/prestaged/`; its agent runs
//! the host's `kmod-day1-pull --no-reboot` (for the running kernel and every kernel the node
//! can boot), then again every hour. Ready means "stored": `kmod-day1-pull --check-stored`,
//! which needs no network, exits 0 once every set of every config (`config.d` and the
//! prestaged ones) is stored for the running kernel.
//!
//! The pod stays on as the node's agent: its `metrics` container serves the node's kmod-day1
//! state (`kmod-day1-pull --serve-metrics`) on the node's address, port [`METRICS_PORT`] unless
//! `--metrics-port` says otherwise, behind a headless Service that a ServiceMonitor of
//! OpenShift's user-workload monitoring scrapes, and a PrometheusRule alerts when a node fell
//! back to the in-tree driver (`monitoring.rs`).

use serde_json::{json, Value};
use sha2::Digest;

use crate::{image_delivery, Day1Config, Error, NodeImage, IMAGE_BIN_DIR, IMAGE_SHELL};

/// The namespace of the prestage objects.
pub const NAMESPACE: &str = "kmod-day1";
/// The agent's ServiceAccount.
pub const SERVICE_ACCOUNT: &str = "kmod-day1-agent";
/// The agent's script, as in `mcgen/src/install/kmod-day1-agent.sh`.
pub const AGENT_SCRIPT: &str = include_str!("install/kmod-day1-agent.sh");
/// Where the ConfigMap is mounted in the agent's containers.
const CONFIG_MOUNT: &str = "/etc/kmod-day1-prestage";
/// Where the host's `/` is mounted in the agent's containers.
const HOST_MOUNT: &str = "/host";
/// The pod template's annotation holding the sha256 of the config to come. The init container
/// records that config once per pod, so a new config (a kmod update) must change the pod
/// template: the DaemonSet then rolls its pods, 10% at a time, and each records the new config.
/// Without it a re-applied ConfigMap would reach the mounted files but never `prestaged/`.
pub const PRESTAGED_CONFIG_ANNOTATION: &str = "kmod-day1.io/prestaged-config-sha256";

/// The default port of the node's metrics, on the node's address (the pod uses the host
/// network). In OpenShift's range for host-level services (9000-9999), which the installer's
/// firewall rules open between nodes, so the monitoring Prometheus reaches it; no OpenShift
/// component's.
pub const METRICS_PORT: u16 = 9750;
/// The name of the metrics port in the Service (the ServiceMonitor's endpoint refers to it).
pub const METRICS_PORT_NAME: &str = "metrics";

/// Label selectors of the nodes the DaemonSet runs on: `key=value` pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSelector(Vec<(String, String)>);

impl NodeSelector {
    /// The nodes of a pool: `node-role.kubernetes.io/<pool>` (MCO's pools select nodes by it).
    pub fn for_pool(pool: &str) -> Self {
        Self(vec![(
            format!("node-role.kubernetes.io/{pool}"),
            String::new(),
        )])
    }

    /// Parses `key=value` pairs (label keys and values as Kubernetes validates them).
    pub fn parse(pairs: &[String]) -> Result<Self, Error> {
        let mut out = vec![];
        for p in pairs {
            let Some((k, v)) = p.split_once('=') else {
                return Err(Error::Invalid(format!(
                    "--node-selector {p:?} is not key=value (e.g. node-role.kubernetes.io/worker-cnf=)"
                )));
            };
            check_label_key(k)
                .and_then(|()| check_label_value(v))
                .map_err(|why| Error::Invalid(format!("--node-selector {p:?}: {why}")))?;
            out.push((k.to_owned(), v.to_owned()));
        }
        Ok(Self(out))
    }

    pub(crate) fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    }
}

fn check_label_value(v: &str) -> Result<(), String> {
    let b = v.as_bytes();
    let ok = b.is_empty()
        || (b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')));
    if ok {
        Ok(())
    } else {
        Err(format!("{v:?} is not a label value: up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"))
    }
}

fn check_label_key(k: &str) -> Result<(), String> {
    let name = match k.rsplit_once('/') {
        Some((prefix, name)) => {
            kmod_day1_contract::check_dns1123_subdomain(prefix)
                .map_err(|why| format!("label key prefix {prefix:?} {why}"))?;
            name
        }
        None => k,
    };
    if name.is_empty() {
        return Err(format!("label key {k:?} has no name"));
    }
    check_label_value(name).map_err(|_| format!("label key {k:?}: the name part must be up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"))
}

/// The names of one prestage's objects.
fn object_name(config: &Day1Config) -> Result<String, Error> {
    let name = format!("kmod-day1-{}", config.name);
    // The DaemonSet's name is also a label value of its pods.
    if name.len() > 63 || name.contains('.') {
        return Err(Error::Invalid(format!(
            "the prestage objects would be named {name:?}: a DaemonSet name here must be a DNS-1123 label of at most 63 characters; shorten the MachineConfig name (at most 53 characters, no '.')"
        )));
    }
    Ok(name)
}

/// The prestage objects as values, in the order `oc apply -f` needs them.
pub fn prestage_objects(
    config: &Day1Config,
    node_image: &NodeImage,
    selector: &NodeSelector,
    metrics_port: u16,
) -> Result<Vec<Value>, Error> {
    let name = object_name(config)?;
    let image = node_image.reference();
    let labels = json!({
        "app.kubernetes.io/name": "kmod-day1-agent",
        "app.kubernetes.io/instance": config.name.as_str(),
        "app.kubernetes.io/part-of": "kmod-day1",
    });
    let config_file = format!("{}.json", config.name);
    let config_json = config.node.to_json();
    let config_hash: String = sha2::Sha256::digest(config_json.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let shell = |args: &[&str]| {
        let mut c = vec![IMAGE_SHELL.to_owned(), "sh".to_owned()];
        c.extend(args.iter().map(|a| (*a).to_owned()));
        c
    };
    let mounts = json!([
        { "name": "host", "mountPath": HOST_MOUNT, "mountPropagation": "HostToContainer" },
        { "name": "prestage", "mountPath": CONFIG_MOUNT, "readOnly": true },
    ]);
    let security = json!({ "privileged": true, "runAsUser": 0, "readOnlyRootFilesystem": true });
    let resources = json!({ "requests": { "cpu": "10m", "memory": "64Mi" } });
    let agent = format!("{CONFIG_MOUNT}/kmod-day1-agent.sh");
    let mut objects = vec![
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": NAMESPACE,
                "labels": {
                    // Pod Security Admission: the agent is privileged and uses host paths.
                    "pod-security.kubernetes.io/enforce": "privileged",
                    "pod-security.kubernetes.io/audit": "privileged",
                    "pod-security.kubernetes.io/warn": "privileged",
                    // OpenShift's label syncer must not lower them.
                    "security.openshift.io/scc.podSecurityLabelSync": "false",
                    // User-workload monitoring reads the ServiceMonitor and PrometheusRule of
                    // every namespace not labelled `false` here (nor cluster-monitoring): say so.
                    "openshift.io/user-monitoring": "true",
                },
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": { "name": SERVICE_ACCOUNT, "namespace": NAMESPACE },
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": { "name": "kmod-day1-agent-scc-privileged", "namespace": NAMESPACE },
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:openshift:scc:privileged",
            },
            "subjects": [{ "kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE }],
        }),
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": { "name": name, "namespace": NAMESPACE, "labels": labels },
            "data": {
                config_file: config_json,
                "kmod-day1-install.sh": image_delivery::INSTALL_SCRIPT,
                "kmod-day1-agent.sh": AGENT_SCRIPT,
            },
        }),
        json!({
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": { "name": name, "namespace": NAMESPACE, "labels": labels },
            "spec": {
                "selector": { "matchLabels": labels },
                // A pod is ready once its node stored the images: a wave of 10% at a time.
                "updateStrategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": "10%" } },
                "template": {
                    "metadata": {
                        "labels": labels,
                        "annotations": { PRESTAGED_CONFIG_ANNOTATION: format!("sha256:{config_hash}") },
                    },
                    "spec": {
                        "serviceAccountName": SERVICE_ACCOUNT,
                        "nodeSelector": selector.to_json(),
                        // The master pool (the only pool of a single-node cluster) is tainted.
                        "tolerations": [
                            { "key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule" },
                            { "key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule" },
                        ],
                        // The pull runs as the node's: its network, DNS, proxy and source address.
                        "hostNetwork": true,
                        "initContainers": [{
                            "name": "prestage",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": shell(&[&agent, "prestage", &image]),
                            "env": [{ "name": "KMOD_DAY1_FROM", "value": IMAGE_BIN_DIR }],
                            "securityContext": security,
                            "resources": resources,
                            "volumeMounts": mounts,
                        }],
                        "containers": [{
                            "name": "agent",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": shell(&[&agent, "run"]),
                            "readinessProbe": {
                                "exec": { "command": [
                                    IMAGE_SHELL, "chroot", HOST_MOUNT,
                                    "/usr/local/bin/kmod-day1-pull", "--check-stored",
                                ] },
                                "initialDelaySeconds": 5,
                                "periodSeconds": 30,
                                "timeoutSeconds": 20,
                                "failureThreshold": 3,
                            },
                            "securityContext": security,
                            "resources": resources,
                            "volumeMounts": mounts,
                        }, metrics_container(&image, metrics_port, shell(&[&agent, "metrics", &metrics_port.to_string()]))],
                        "volumes": [
                            { "name": "host", "hostPath": { "path": "/", "type": "Directory" } },
                            { "name": "prestage", "configMap": { "name": name, "defaultMode": 0o444 } },
                        ],
                    },
                },
            },
        }),
    ];
    objects.extend(crate::monitoring::monitoring_objects(
        config.name.as_str(),
        &name,
        &labels,
        metrics_port,
    ));
    Ok(objects)
}

/// The agent's `metrics` container: the host's `kmod-day1-pull --serve-metrics` on the pod's
/// address, which is the node's.
///
/// No `ports` entry: in a pod on the host network a container port is also a host port
/// (defaulted so), which the scheduler keeps unique per node, so the DaemonSet of a second
/// config on the same pool would stay Pending, and its rollout (ready = stored) with it. The
/// Service and the probe name the port by number instead. Both agents' servers would serve
/// the same node-wide metrics: the second one waits, and serves once the port is free
/// (`kmod-day1-agent.sh metrics`).
///
/// No readiness probe: the pod's readiness is "stored" (the `agent` container's). The
/// liveness probe restarts a server that stopped answering; a waiting one is alive as long as
/// the node's metrics answer on the port.
fn metrics_container(image: &str, port: u16, command: Vec<String>) -> Value {
    json!({
        "name": "metrics",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": [{
            "name": "KMOD_DAY1_POD_IP",
            "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } },
        }],
        "livenessProbe": {
            "httpGet": { "path": "/healthz", "port": port, "scheme": "HTTP" },
            "initialDelaySeconds": 10,
            "periodSeconds": 30,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "securityContext": { "privileged": true, "runAsUser": 0, "readOnlyRootFilesystem": true },
        "resources": { "requests": { "cpu": "5m", "memory": "32Mi" } },
        // The metrics only read the host: its / read-only.
        "volumeMounts": [
            { "name": "host", "mountPath": HOST_MOUNT, "mountPropagation": "HostToContainer", "readOnly": true },
            { "name": "prestage", "mountPath": CONFIG_MOUNT, "readOnly": true },
        ],
    })
}

/// The prestage objects as one multi-document YAML for `oc apply -f`.
pub fn prestage_yaml(
    config: &Day1Config,
    node_image: &NodeImage,
    selector: &NodeSelector,
    metrics_port: u16,
) -> Result<String, Error> {
    let docs = prestage_objects(config, node_image, selector, metrics_port)?;
    Ok(docs
        .iter()
        .map(|d| serde_norway::to_string(d).expect("YAML serializes"))
        .collect::<Vec<_>>()
        .join("---\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_selectors() {
        assert_eq!(
            NodeSelector::for_pool("worker").0,
            [("node-role.kubernetes.io/worker".to_owned(), String::new())]
        );
        let s = NodeSelector::parse(&[
            "node-role.kubernetes.io/worker-cnf=".into(),
            "zone=a1".into(),
        ])
        .unwrap();
        assert_eq!(s.0.len(), 2);
        for bad in [
            "nokey",
            "a/b/c=x",
            "-a=b",
            "k=-v",
            "UPPER.example.com/x=y",
            "k=a b",
        ] {
            assert!(NodeSelector::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
