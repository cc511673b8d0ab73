// SPDX-License-Identifier: Apache-2.0
//! What makes the prestage agents' metrics seen on OpenShift: a headless Service over one
//! config's agent pods, a ServiceMonitor (monitoring.coreos.com/v1) that user-workload
//! monitoring scrapes, and a PrometheusRule with the alerts: a node fell back to the in-tree
//! driver, a node's pulls keep failing.
//!
//! Every agent serves the metrics of its whole node (all configs), so a node of two configs'
//! pools is scraped once per config: the rules aggregate `by` node (and config and set), and
//! each config's rule watches its own sets, so an alert fires once whatever the number of
//! configs (Alertmanager merges alerts of equal labels).

use serde_json::{json, Value};

use crate::prestage::{METRICS_PORT_NAME, NAMESPACE};

/// How long a set must stay stored but not loaded before the alert fires. A node shows
/// `kmod_day1_set_fallback 1` for a while in normal operation only between a pull committing
/// the running kernel's image and the reboot it asks for (the node image's pull, or a kernel
/// upgrade's); a reboot stops the scrapes, which resets the wait. 30 minutes rides over a slow
/// drain, and an operator loses nothing by waiting: the in-tree driver keeps the node up.
pub(crate) const FALLBACK_FOR: &str = "30m";
/// How long the pulls must keep failing: the agent retries every 5 minutes after a failure.
pub(crate) const PULL_FAILING_FOR: &str = "1h";

/// A PromQL label value: `"` and `\` escaped.
fn promql_string(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The Service, ServiceMonitor and PrometheusRule of one config's agents (`name`, `labels`
/// as the DaemonSet's, the agents serving on `port`), in apply order.
pub(crate) fn monitoring_objects(
    config: &str,
    name: &str,
    labels: &Value,
    port: u16,
) -> Vec<Value> {
    let config_matcher = promql_string(config);
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": name, "namespace": NAMESPACE, "labels": labels },
            "spec": {
                // Headless: Prometheus scrapes each node, never a virtual address.
                "clusterIP": "None",
                "selector": labels,
                // A node whose pod is not ready has not stored its images yet: the one to see.
                "publishNotReadyAddresses": true,
                "ports": [{
                    "name": METRICS_PORT_NAME,
                    "port": port,
                    "targetPort": port,
                    "protocol": "TCP",
                }],
            },
        }),
        json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": { "name": name, "namespace": NAMESPACE, "labels": labels },
            "spec": {
                "selector": { "matchLabels": labels },
                "endpoints": [{
                    "port": METRICS_PORT_NAME,
                    "path": "/metrics",
                    "scheme": "http",
                    "interval": "60s",
                    "scrapeTimeout": "10s",
                    // The node's name, for the alerts (the target is the node's address).
                    "relabelings": [{
                        "action": "replace",
                        "sourceLabels": ["__meta_kubernetes_pod_node_name"],
                        "targetLabel": "node",
                    }],
                }],
            },
        }),
        json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "labels": merged(labels, json!({
                    // Evaluated by user-workload monitoring's Prometheus itself (the rules read
                    // only this namespace's metrics), not through Thanos Ruler and the querier.
                    "openshift.io/prometheus-rule-evaluation-scope": "leaf-prometheus",
                })),
            },
            "spec": {
                "groups": [{
                    "name": name,
                    "rules": [
                        {
                            "alert": "KmodDay1InTreeFallback",
                            "expr": format!(
                                "max by (namespace, node, config, set) (kmod_day1_set_fallback{{config={config_matcher}}}) == 1"
                            ),
                            "for": FALLBACK_FOR,
                            "labels": { "severity": "warning" },
                            "annotations": {
                                "summary": "Node {{ $labels.node }} runs the in-tree driver instead of kmod-day1 set {{ $labels.set }} of config {{ $labels.config }}.",
                                "description": format!(
                                    "The kmod image of set {{{{ $labels.set }}}} (config {{{{ $labels.config }}}}) is stored on node {{{{ $labels.node }}}} for its running kernel, but kmod-day1-load did not load it this boot: it rolled back to the in-tree driver, or the set's device is not bound. See `oc debug node/{{{{ $labels.node }}}} -- chroot /host sh -c 'cat /run/kmod-day1/status.json; journalctl -b -u kmod-day1-load'`, and `kmod-day1-load --dry-run` there. So for {FALLBACK_FOR} at least."
                                ),
                            },
                        },
                        {
                            "alert": "KmodDay1PullFailing",
                            "expr": "max by (namespace, node) (kmod_day1_last_pull_success) == 0",
                            "for": PULL_FAILING_FOR,
                            "labels": { "severity": "warning" },
                            "annotations": {
                                "summary": "kmod-day1-pull keeps failing on node {{ $labels.node }}.",
                                "description": format!(
                                    "Every run of kmod-day1-pull on node {{{{ $labels.node }}}} failed for {PULL_FAILING_FOR}: the kmod images of the kernels it can boot next are not stored, so a kernel upgrade would cost a reboot more, or leave the node on the in-tree driver. See `oc -n {NAMESPACE} logs -c agent` of the node's kmod-day1 pod, and /var/lib/kmod-day1/last-pull.json on the node."
                                ),
                            },
                        },
                    ],
                }],
            },
        }),
    ]
}

fn merged(a: &Value, b: Value) -> Value {
    let mut out = a.clone();
    if let (Some(o), Value::Object(extra)) = (out.as_object_mut(), b) {
        o.extend(extra);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promql_strings_are_escaped() {
        assert_eq!(promql_string("99-worker"), "\"99-worker\"");
        assert_eq!(promql_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
