// SPDX-License-Identifier: Apache-2.0
//! `--output acm-policy`: one ACM Policy (policy.open-cluster-management.io/v1), its Placement
//! (cluster.open-cluster-management.io/v1beta1) and PlacementBinding, which roll a config out
//! to the spokes of a hub in the order a node needs: the prestage objects first, the
//! MachineConfig only once the prestage is complete on that spoke, the disruption policy (when
//! asked) only once the pool runs the MachineConfig.
//!
//! The policy templates are ConfigurationPolicies, chained by `extraDependencies`:
//!
//! 1. `<policy>-prestage`: the prestage objects (`--output prestage`, the agents' Service,
//!    ServiceMonitor and PrometheusRule included); the DaemonSet's pod template carries the
//!    MachineConfig's content hash, so a new config rolls the agents.
//! 2. `<policy>-stored`: the gate, always `inform` (it only reads). Compliant once the
//!    MachineConfig with this content hash exists on the spoke, or else once the DaemonSet of
//!    this content hash is fully rolled out and every pod is ready (ready = stored). The first
//!    branch is the latch: once the MachineConfig is written, MCO drains and reboots the nodes
//!    one by one and the ready count drops on each, but the gate no longer looks at it.
//!    Without the latch the framework would find the MachineConfig's dependency unmet, delete
//!    its ConfigurationPolicy and recreate it at each reboot. The gate depends on nothing, and
//!    ready needs no MachineConfig (`kmod-day1-pull --check-stored`): it cannot deadlock.
//! 3. `<policy>-machineconfig`: the MachineConfig (`mustonlyhave`, with the content hash as
//!    annotation), depending on the gate. `pruneObjectBehavior: None`: the framework deletes
//!    a template whose dependency is unmet (a new content hash re-gates it), and the
//!    MachineConfig must stay while the next version is prestaged.
//! 4. With `--on-change`: `<policy>-rolled-out` (inform: the pool's current rendered config
//!    has the MachineConfig among its sources, which stays true through later updates) and
//!    `<policy>-disruption-policy` (the `MachineConfiguration/cluster` entries), depending on
//!    it, so that the first rollout still gets MCO's drained reboot and the driver swap.
//!
//! The Policy itself has no `remediationAction`: each template has its own (the webhook of the
//! propagator wants one or the other), so the gates stay `inform` when the rest is enforced.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::{prestage::NodeSelector, Day1Config, Error, NAMESPACE};

/// The annotation holding the MachineConfig's content hash (`sha256:<hex>` of its
/// `spec.config`), on the MachineConfig and on the prestage DaemonSet's pod template.
pub const CONTENT_ANNOTATION: &str = "kmod-day1.io/machineconfig-sha256";
/// The longest replicated policy name (`<namespace>.<name>`): it is a label value on the spoke.
pub const MAX_REPLICATED_NAME: usize = 63;
const POLICY_API: &str = "policy.open-cluster-management.io/v1";
const MCO_API: &str = "machineconfiguration.openshift.io/v1";

/// What the templates that change the spoke do: report (`inform`) or act (`enforce`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Remediation {
    /// Report what differs; change nothing (a dry run across the fleet).
    Inform,
    /// Create and update the objects.
    Enforce,
}

impl Remediation {
    fn as_str(self) -> &'static str {
        match self {
            Remediation::Inform => "inform",
            Remediation::Enforce => "enforce",
        }
    }
}

/// Where the policy lives on the hub and which spokes it goes to.
#[derive(Debug, Clone)]
pub struct AcmPolicyOptions {
    /// Hub namespace of the Policy, Placement and PlacementBinding.
    pub namespace: String,
    /// `remediationAction` of the templates that write objects.
    pub remediation: Remediation,
    /// ManagedCluster labels the Placement requires (all of them).
    pub cluster_selector: NodeSelector,
}

/// The objects to place on the spokes, as mcgen's other outputs make them.
#[derive(Debug, Clone)]
pub struct PolicyContent {
    /// The prestage objects (`--output prestage`), in apply order.
    pub prestage: Vec<Value>,
    /// The MachineConfig object.
    pub machine_config: Value,
    /// The `MachineConfiguration/cluster` object (`--output disruption-policy`), when asked.
    pub disruption_policy: Option<Value>,
}

/// The names of the Policy and of its templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyNames {
    /// Policy, Placement and PlacementBinding name.
    pub policy: String,
    /// `<namespace>.<policy>`, the name of the copy in each spoke's namespace on the hub.
    pub replicated: String,
}

impl PolicyNames {
    /// The names for one config, checked against the 63-character limit.
    pub fn new(config: &Day1Config, namespace: &str) -> Result<Self, Error> {
        kmod_day1_contract::check_dns1123_label(namespace)
            .map_err(|why| Error::Invalid(format!("--policy-namespace {namespace:?} {why}")))?;
        let policy = format!("kmod-day1-{}", config.name);
        let replicated = format!("{namespace}.{policy}");
        if replicated.len() > MAX_REPLICATED_NAME {
            return Err(Error::Invalid(format!(
                "the replicated policy name {replicated:?} has {} characters, above {MAX_REPLICATED_NAME} (it is a label value on every spoke): shorten the MachineConfig name or --policy-namespace by {}",
                replicated.len(),
                replicated.len() - MAX_REPLICATED_NAME
            )));
        }
        Ok(Self { policy, replicated })
    }

    fn template(&self, what: &str) -> String {
        format!("{}-{what}", self.policy)
    }
}

/// `sha256:<hex>` of the MachineConfig's Ignition config.
pub fn content_hash(machine_config: &Value) -> String {
    let text = serde_json::to_string(&machine_config["spec"]["config"]).expect("JSON serializes");
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn annotate(object: &mut Value, pointer: &str, hash: &str) {
    let meta = object
        .pointer_mut(pointer)
        .and_then(Value::as_object_mut)
        .expect("generated objects have their metadata");
    let annotations = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    annotations[CONTENT_ANNOTATION] = Value::String(hash.to_owned());
}

fn configuration_policy(
    name: &str,
    remediation: &str,
    templates: Vec<(&str, Value)>,
    disable_templates: bool,
) -> Value {
    let mut policy = json!({
        "apiVersion": POLICY_API,
        "kind": "ConfigurationPolicy",
        "metadata": { "name": name },
        "spec": {
            "remediationAction": remediation,
            "severity": "high",
            "pruneObjectBehavior": "None",
            "object-templates": templates
                .into_iter()
                .map(|(compliance, o)| {
                    let mut t = json!({ "complianceType": compliance, "objectDefinition": o });
                    if compliance == "mustonlyhave" {
                        // Labels and annotations others add (the DaemonSet controller's, OpenShift's)
                        // stay: only the object's content is ours alone.
                        t["metadataComplianceType"] = "musthave".into();
                    }
                    t
                })
                .collect::<Vec<_>>(),
        },
    });
    if disable_templates {
        // Scripts and units are data, not Go templates: `{{` in them must stay as it is.
        policy["metadata"]["annotations"] =
            json!({ "policy.open-cluster-management.io/disable-templates": "true" });
    }
    policy
}

fn depends_on(name: &str) -> Value {
    json!([{
        "apiVersion": POLICY_API,
        "kind": "ConfigurationPolicy",
        "name": name,
        "compliance": "Compliant",
    }])
}

/// The gate's object templates: Go templates the spoke's config-policy-controller resolves.
fn stored_gate_templates(mc_name: &str, daemon_set: &str, hash: &str) -> String {
    format!(
        r#"{{{{- /* Compliant once MachineConfig {mc_name} has this content (the rollout began: MCO's reboots
     no longer matter), or else once DaemonSet {daemon_set} runs this content on every node of
     the pool and each pod is ready (ready = stored for the running kernel). */ -}}}}
{{{{- $rolled := false }}}}
{{{{- with (lookup "{MCO_API}" "MachineConfig" "" "{mc_name}").metadata }}}}
{{{{- with .annotations }}}}
{{{{- if eq (index . "{CONTENT_ANNOTATION}") "{hash}" }}}}{{{{ $rolled = true }}}}{{{{ end }}}}
{{{{- end }}}}
{{{{- end }}}}
{{{{- if $rolled }}}}
- complianceType: musthave
  objectDefinition:
    apiVersion: {MCO_API}
    kind: MachineConfig
    metadata:
      name: {mc_name}
      annotations:
        {CONTENT_ANNOTATION}: "{hash}"
{{{{- else }}}}
{{{{- $ds := lookup "apps/v1" "DaemonSet" "{NAMESPACE}" "{daemon_set}" }}}}
{{{{- $generation := 0 }}}}
{{{{- $desired := 0 }}}}
{{{{- with $ds.metadata }}}}{{{{ $generation = .generation }}}}{{{{ end }}}}
{{{{- with $ds.status }}}}{{{{ $desired = .desiredNumberScheduled }}}}{{{{ end }}}}
- complianceType: musthave
  objectDefinition:
    apiVersion: apps/v1
    kind: DaemonSet
    metadata:
      name: {daemon_set}
      namespace: {NAMESPACE}
    spec:
      template:
        metadata:
          annotations:
            {CONTENT_ANNOTATION}: "{hash}"
    status:
      observedGeneration: {{{{ $generation }}}}
      desiredNumberScheduled: {{{{ $desired }}}}
      numberReady: {{{{ $desired }}}}
{{{{- if gt $desired 0 }}}}
      updatedNumberScheduled: {{{{ $desired }}}}
{{{{- end }}}}
{{{{- end }}}}
"#
    )
}

/// The Policy, Placement and PlacementBinding, in apply order.
pub fn acm_policy_objects(
    config: &Day1Config,
    content: PolicyContent,
    options: &AcmPolicyOptions,
) -> Result<Vec<Value>, Error> {
    let names = PolicyNames::new(config, &options.namespace)?;
    let PolicyContent {
        mut prestage,
        mut machine_config,
        disruption_policy,
    } = content;
    let hash = content_hash(&machine_config);
    annotate(&mut machine_config, "/metadata", &hash);
    let mc_name = config.name.as_str();
    let daemon_set = prestage
        .iter_mut()
        .find(|o| o["kind"] == "DaemonSet")
        .ok_or_else(|| Error::Invalid("the prestage objects hold no DaemonSet".into()))?;
    annotate(daemon_set, "/spec/template/metadata", &hash);
    let daemon_set_name = daemon_set["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let act = options.remediation.as_str();

    let prestage_name = names.template("prestage");
    let stored_name = names.template("stored");
    let mc_template_name = names.template("machineconfig");
    let prestage_templates = prestage
        .into_iter()
        .map(|o| {
            // The ConfigMap, the DaemonSet, the ServiceMonitor and the PrometheusRule are ours
            // alone: a list merge (musthave) would keep the items of an older version beside
            // the new ones (the node image in the command, a dropped volume, an old alert).
            // The controller compares after a server-side dry run, so the server's defaults
            // are no difference. The Namespace, ServiceAccount, RoleBinding and Service get
            // fields from others (OpenShift's SCC annotations, pull secrets, cluster IPs).
            let ours_alone = ["ConfigMap", "DaemonSet", "ServiceMonitor", "PrometheusRule"];
            let compliance = if ours_alone.iter().any(|k| o["kind"] == *k) {
                "mustonlyhave"
            } else {
                "musthave"
            };
            (compliance, o)
        })
        .collect();
    let mut templates = vec![
        json!({ "objectDefinition": configuration_policy(&prestage_name, act, prestage_templates, true) }),
        json!({ "objectDefinition": {
            "apiVersion": POLICY_API,
            "kind": "ConfigurationPolicy",
            "metadata": { "name": stored_name },
            "spec": {
                "remediationAction": "inform",
                "severity": "high",
                "object-templates-raw": stored_gate_templates(mc_name, &daemon_set_name, &hash),
            },
        } }),
        json!({
            "objectDefinition": configuration_policy(&mc_template_name, act, vec![("mustonlyhave", machine_config)], true),
            "extraDependencies": depends_on(&stored_name),
        }),
    ];
    if let Some(disruption) = disruption_policy {
        let rolled_out = names.template("rolled-out");
        let pool = json!({
            "apiVersion": MCO_API,
            "kind": "MachineConfigPool",
            "metadata": { "name": config.pool.as_str() },
            "status": { "configuration": { "source": [
                { "apiVersion": MCO_API, "kind": "MachineConfig", "name": mc_name },
            ] } },
        });
        templates.push(json!({ "objectDefinition": configuration_policy(&rolled_out, "inform", vec![("musthave", pool)], false) }));
        templates.push(json!({
            "objectDefinition": configuration_policy(&names.template("disruption-policy"), act, vec![("musthave", disruption)], true),
            "extraDependencies": depends_on(&rolled_out),
        }));
    }

    let ns = options.namespace.as_str();
    let policy = json!({
        "apiVersion": POLICY_API,
        "kind": "Policy",
        "metadata": {
            "name": names.policy,
            "namespace": ns,
            "annotations": {
                "policy.open-cluster-management.io/standards": "NIST SP 800-53",
                "policy.open-cluster-management.io/categories": "CM Configuration Management",
                "policy.open-cluster-management.io/controls": "CM-2 Baseline Configuration",
                "policy.open-cluster-management.io/description": format!(
                    "kmod-day1 MachineConfig {mc_name} for pool {}: prestage, then the MachineConfig once stored on every node",
                    config.pool.as_str()
                ),
            },
        },
        "spec": {
            "disabled": false,
            "copyPolicyMetadata": false,
            "policy-templates": templates,
        },
    });
    let placement = json!({
        "apiVersion": "cluster.open-cluster-management.io/v1beta1",
        "kind": "Placement",
        "metadata": { "name": names.policy, "namespace": ns },
        "spec": {
            "predicates": [{ "requiredClusterSelector": { "labelSelector": {
                "matchLabels": options.cluster_selector.to_json(),
            } } }],
            // A spoke whose only node reboots (single-node) becomes unavailable for minutes:
            // it must stay placed, or the policy would leave and come back at each reboot.
            "tolerations": [
                { "key": "cluster.open-cluster-management.io/unreachable", "operator": "Exists" },
                { "key": "cluster.open-cluster-management.io/unavailable", "operator": "Exists" },
            ],
        },
    });
    let binding = json!({
        "apiVersion": POLICY_API,
        "kind": "PlacementBinding",
        "metadata": { "name": names.policy, "namespace": ns },
        "placementRef": {
            "apiGroup": "cluster.open-cluster-management.io",
            "kind": "Placement",
            "name": names.policy,
        },
        "subjects": [{
            "apiGroup": "policy.open-cluster-management.io",
            "kind": "Policy",
            "name": names.policy,
        }],
    });
    Ok(vec![policy, placement, binding])
}

/// The objects as one multi-document YAML for `oc apply -f` on the hub.
pub fn acm_policy_yaml(
    config: &Day1Config,
    content: PolicyContent,
    options: &AcmPolicyOptions,
) -> Result<String, Error> {
    let docs = acm_policy_objects(config, content, options)?;
    Ok(docs
        .iter()
        .map(|d| serde_norway::to_string(d).expect("YAML serializes"))
        .collect::<Vec<_>>()
        .join("---\n"))
}

/// `--single-node`: a single-node cluster has one pool, `master` (its node is also a worker,
/// but MCO renders the `master` pool for it; a MachineConfig for `worker` would never apply).
pub(crate) fn single_node(
    mut config: Day1Config,
    mut warnings: Vec<String>,
    single_node: bool,
) -> (Day1Config, Vec<String>) {
    if single_node && config.pool.as_str() != "master" {
        warnings.push(format!(
            "--single-node: MachineConfig {} goes to pool master instead of {}",
            config.name,
            config.pool.as_str()
        ));
        config.pool = crate::PoolName::new("master").expect("a valid pool name");
    }
    (config, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModuleSetBuilder;

    fn config(name: &str) -> Day1Config {
        let set = ModuleSetBuilder::new("e1000")
            .image("reg.local/kmod/e1000")
            .module("e1000", &[])
            .build()
            .unwrap();
        Day1Config::new(name, "worker", vec![set]).unwrap()
    }

    #[test]
    fn replicated_names_fit_a_label() {
        let n = PolicyNames::new(&config("99-worker-kmod-e1000"), "kmod-day1").unwrap();
        assert_eq!(n.replicated, "kmod-day1.kmod-day1-99-worker-kmod-e1000");
        let long = "a".repeat(63 - "ns.kmod-day1-".len());
        assert!(PolicyNames::new(&config(&long), "ns").is_ok());
        let e = PolicyNames::new(&config(&format!("{long}b")), "ns").unwrap_err();
        assert!(e.to_string().contains("64 characters, above 63"), "{e}");
        assert!(e.to_string().contains("by 1"), "{e}");
        assert!(PolicyNames::new(&config("x"), "Bad_NS").is_err());
    }

    #[test]
    fn the_hash_follows_the_config() {
        let a = json!({ "spec": { "config": { "a": 1 } } });
        let b = json!({ "spec": { "config": { "a": 2 } } });
        assert_ne!(content_hash(&a), content_hash(&b));
        assert!(content_hash(&a).starts_with("sha256:"));
        assert_eq!(content_hash(&a).len(), 7 + 64);
    }
}
