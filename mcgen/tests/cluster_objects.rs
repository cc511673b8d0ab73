// SPDX-License-Identifier: Apache-2.0
//! The cluster objects of `--output prestage` and `--output disruption-policy`, parsed back
//! and checked against the fields and types of the upstream API schemas (tests/schema), and
//! against what they must do: the prestage DaemonSet runs the node image on the pool's nodes
//! (masters too), privileged, with the install and the readiness of "stored"; the disruption
//! policy covers exactly the files and units of the MachineConfig, within the API's rules.

mod schema;
mod support;

use serde_json::Value;
use support::{documents, mcgen, mcgen_ok as run, NODE_IMAGE};

const PINNED: &str = "quay.io/kmod-day1/node@sha256:4e1f5cbd3cf2a8b2f3bd0f9a6c7e2d1b0a9f8e7d6c5b4a3928170615f4e3d2c1";

fn assert_schema(objects: &[Value]) {
    for o in objects {
        let problems = schema::check_object(o);
        assert!(problems.is_empty(), "{problems:#?}");
    }
}

fn by_kind<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects.iter().find(|o| o["kind"] == kind).unwrap()
}

#[test]
fn prestage_objects() {
    let (yaml, stderr) = run(&[
        "-f",
        "examples/e1000.yaml",
        "-o",
        "prestage",
        "--node-image",
        NODE_IMAGE,
    ]);
    assert!(
        stderr.contains("rollout status daemonset/kmod-day1-99-worker-kmod-e1000"),
        "{stderr}"
    );
    let objects = documents(&yaml);
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    // The order `oc apply -f` needs: the namespace first, the DaemonSet after what it uses.
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "RoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Service",
            "ServiceMonitor",
            "PrometheusRule"
        ]
    );
    assert_schema(&objects);
    for o in &objects[1..] {
        assert_eq!(o["metadata"]["namespace"], "kmod-day1");
    }

    let ns = &objects[0]["metadata"]["labels"];
    // User-workload monitoring skips a namespace labelled `false` (or cluster-monitoring).
    assert_eq!(ns["openshift.io/user-monitoring"], "true");
    assert!(ns.get("openshift.io/cluster-monitoring").is_none());
    for mode in ["enforce", "audit", "warn"] {
        assert_eq!(
            ns[format!("pod-security.kubernetes.io/{mode}")],
            "privileged"
        );
    }

    let rb = by_kind(&objects, "RoleBinding");
    assert_eq!(rb["roleRef"]["name"], "system:openshift:scc:privileged");
    assert_eq!(rb["roleRef"]["kind"], "ClusterRole");
    assert_eq!(rb["roleRef"]["apiGroup"], "rbac.authorization.k8s.io");
    let sa = by_kind(&objects, "ServiceAccount");
    assert_eq!(rb["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(rb["subjects"][0]["namespace"], "kmod-day1");

    // The config to come is the MachineConfig's config file, byte for byte.
    let cm = by_kind(&objects, "ConfigMap");
    let data = cm["data"].as_object().unwrap();
    for key in data.keys() {
        assert!(
            key.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-._".contains(&c)),
            "{key}"
        );
    }
    let config = data["99-worker-kmod-e1000.json"].as_str().unwrap();
    kmod_day1_contract::NodeConfig::from_json(config).unwrap();
    let (mc, _) = run(&[
        "-f",
        "examples/e1000.yaml",
        "-o",
        "ignition",
        "--node-image",
        NODE_IMAGE,
    ]);
    let mc: Value = serde_json::from_str(&mc).unwrap();
    let file = mc["storage"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/etc/kmod-day1/config.d/99-worker-kmod-e1000.json")
        .unwrap();
    use base64::Engine;
    let b64 = file["contents"]["source"]
        .as_str()
        .unwrap()
        .strip_prefix("data:;base64,")
        .unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        config.as_bytes()
    );
    assert_eq!(
        data["kmod-day1-install.sh"].as_str().unwrap(),
        mcgen::INSTALL_SCRIPT
    );
    assert_eq!(
        data["kmod-day1-agent.sh"].as_str().unwrap(),
        mcgen::AGENT_SCRIPT
    );

    let ds = by_kind(&objects, "DaemonSet");
    let spec = &ds["spec"];
    let template_labels = spec["template"]["metadata"]["labels"].as_object().unwrap();
    for (k, v) in spec["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            template_labels.get(k),
            Some(v),
            "the selector must match the template"
        );
    }
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(
        pod["nodeSelector"],
        serde_json::json!({ "node-role.kubernetes.io/worker": "" })
    );
    let tolerated: Vec<&str> = pod["tolerations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["operator"] == "Exists" && t["effect"] == "NoSchedule")
        .map(|t| t["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        tolerated,
        [
            "node-role.kubernetes.io/master",
            "node-role.kubernetes.io/control-plane"
        ]
    );
    assert_eq!(pod["hostNetwork"], true);
    let volumes = pod["volumes"].as_array().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap();
    assert_eq!(volume("host")["hostPath"]["path"], "/");
    assert_eq!(
        volume("prestage")["configMap"]["name"],
        cm["metadata"]["name"]
    );
    for v in volumes {
        // Exactly one source per volume.
        assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    }
    let init = &pod["initContainers"][0];
    let agent = &pod["containers"][0];
    for c in [init, agent] {
        assert_eq!(c["image"], PINNED);
        assert_eq!(c["securityContext"]["privileged"], true);
        for m in c["volumeMounts"].as_array().unwrap() {
            assert!(volumes.iter().any(|v| v["name"] == m["name"]), "{m}");
            assert!(m["mountPath"].as_str().unwrap().starts_with('/'));
        }
        assert_eq!(c["command"][0], mcgen::IMAGE_SHELL);
    }
    let command = |c: &Value| -> Vec<String> {
        c.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        command(&init["command"]),
        [
            mcgen::IMAGE_SHELL,
            "sh",
            "/etc/kmod-day1-prestage/kmod-day1-agent.sh",
            "prestage",
            PINNED
        ]
    );
    assert_eq!(
        command(&agent["command"]),
        [
            mcgen::IMAGE_SHELL,
            "sh",
            "/etc/kmod-day1-prestage/kmod-day1-agent.sh",
            "run"
        ]
    );
    assert_eq!(
        command(&agent["readinessProbe"]["exec"]["command"]),
        [
            mcgen::IMAGE_SHELL,
            "chroot",
            "/host",
            "/usr/local/bin/kmod-day1-pull",
            "--check-stored"
        ]
    );
}

#[test]
fn prestage_node_selector_override() {
    let (yaml, _) = run(&[
        "-f",
        "examples/multi.yaml",
        "-o",
        "prestage",
        "--node-image",
        NODE_IMAGE,
        "--node-selector",
        "node-role.kubernetes.io/worker-cnf=",
        "--node-selector",
        "kubernetes.io/arch=amd64",
    ]);
    let objects = documents(&yaml);
    assert_schema(&objects);
    let pod = &by_kind(&objects, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(
        pod["nodeSelector"],
        serde_json::json!({ "node-role.kubernetes.io/worker-cnf": "", "kubernetes.io/arch": "amd64" })
    );
}

#[test]
fn disruption_policies() {
    let (mc, _) = run(&[
        "-f",
        "examples/e1000.yaml",
        "-o",
        "ignition",
        "--node-image",
        NODE_IMAGE,
    ]);
    let mc: Value = serde_json::from_str(&mc).unwrap();
    let names = |v: &Value, key: &str| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e[key].as_str().unwrap().to_owned())
            .collect()
    };
    for (on_change, file_action, unit_action) in [
        ("reboot", "Reboot", "Reboot"),
        ("next-boot", "None", "DaemonReload"),
    ] {
        let (yaml, stderr) = run(&[
            "-f",
            "examples/e1000.yaml",
            "-o",
            "disruption-policy",
            "--on-change",
            on_change,
            "--node-image",
            NODE_IMAGE,
        ]);
        assert!(
            stderr.contains("adds 2 file and 4 unit entries"),
            "{stderr}"
        );
        assert!(yaml.contains(
            "#   oc apply --server-side --field-manager=kmod-day1-99-worker-kmod-e1000 -f"
        ));
        let objects = documents(&yaml);
        assert_eq!(objects.len(), 1);
        assert_schema(&objects);
        let o = &objects[0];
        assert_eq!(o["metadata"]["name"], "cluster");
        let policy = &o["spec"]["nodeDisruptionPolicy"];
        mcgen::check_policy(policy).unwrap();
        // Every file and unit of the MachineConfig, no other.
        assert_eq!(
            names(&policy["files"], "path"),
            names(&mc["storage"]["files"], "path")
        );
        assert_eq!(
            names(&policy["units"], "name"),
            names(&mc["systemd"]["units"], "name")
        );
        for f in policy["files"].as_array().unwrap() {
            assert_eq!(f["actions"], serde_json::json!([{ "type": file_action }]));
        }
        for u in policy["units"].as_array().unwrap() {
            assert_eq!(u["actions"], serde_json::json!([{ "type": unit_action }]));
        }
    }
}

#[test]
fn bad_combinations() {
    for (args, expect) in [
        (
            vec![
                "-f",
                "examples/e1000.yaml",
                "--node-image",
                NODE_IMAGE,
                "--metrics-port",
                "9751",
            ],
            "--metrics-port goes with --output prestage or acm-policy",
        ),
        (
            vec![
                "-f",
                "examples/e1000.yaml",
                "-o",
                "prestage",
                "--node-image",
                NODE_IMAGE,
                "--metrics-port",
                "0",
            ],
            "--metrics-port",
        ),
        (
            vec!["-f", "examples/e1000.yaml", "-o", "prestage"],
            "give --node-image",
        ),
        (
            vec![
                "-f",
                "examples/e1000.yaml",
                "-o",
                "prestage",
                "--node-image",
                "q.io/a/n:1",
            ],
            "has no digest",
        ),
        (
            vec![
                "-f",
                "examples/e1000.yaml",
                "-o",
                "prestage",
                "--node-image",
                NODE_IMAGE,
                "--node-selector",
                "a b",
            ],
            "--node-selector",
        ),
        (
            vec![
                "-f",
                "examples/e1000.yaml",
                "--node-image",
                NODE_IMAGE,
                "--node-selector",
                "a=b",
            ],
            "goes with --output prestage",
        ),
        (
            vec![
                "-f",
                "examples/e1000.yaml",
                "-o",
                "disruption-policy",
                "--node-image",
                NODE_IMAGE,
            ],
            "go together",
        ),
        (
            vec![
                "-f",
                "examples/e1000.yaml",
                "--on-change",
                "reboot",
                "--node-image",
                NODE_IMAGE,
            ],
            "go together",
        ),
        (
            vec![
                "-f",
                "examples/e1000.yaml",
                "-o",
                "disruption-policy",
                "--on-change",
                "reboot",
            ],
            "say how the node binaries reach",
        ),
    ] {
        let out = mcgen(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn the_schema_check_catches_mistakes() {
    let (yaml, _) = run(&[
        "-f",
        "examples/e1000.yaml",
        "-o",
        "prestage",
        "--node-image",
        NODE_IMAGE,
    ]);
    let objects = documents(&yaml);
    let ds = by_kind(&objects, "DaemonSet").clone();
    let problems = |edit: &dyn Fn(&mut Value)| {
        let mut o = ds.clone();
        edit(&mut o);
        schema::check_object(&o).join("; ")
    };
    let pod = "/spec/template/spec";
    assert!(
        problems(&|o| o.pointer_mut(pod).unwrap()["hostNetwork"] = "yes".into())
            .contains("wrong type")
    );
    assert!(
        problems(&|o| o.pointer_mut(pod).unwrap()["hostNetworking"] = true.into())
            .contains("unknown field \"hostNetworking\"")
    );
    assert!(problems(
        &|o| o.pointer_mut(&format!("{pod}/tolerations/0")).unwrap()["effect"] =
            "NoSchedules".into()
    )
    .contains("is not one of"));
    assert!(problems(&|o| {
        o.pointer_mut(&format!("{pod}/volumes/0/hostPath"))
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove("path");
    })
    .contains("path is required"));
    assert!(problems(&|o| o
        .pointer_mut(&format!("{pod}/containers/0/resources/requests"))
        .unwrap()["memory"] = "64 MB".into())
    .contains("not a quantity"));
    assert!(problems(&|o| o
        .pointer_mut(&format!("{pod}/containers/1/livenessProbe/httpGet"))
        .unwrap()["scheme"] = "http".into())
    .contains("is not one of"));

    // The monitoring objects: prometheus-operator's patterns and enums.
    let edited = |kind: &str, pointer: &str, field: &str, value: Value| {
        let mut o = by_kind(&objects, kind).clone();
        o.pointer_mut(pointer).unwrap()[field] = value;
        schema::check_object(&o).join("; ")
    };
    let ep = "/spec/endpoints/0";
    assert!(edited("ServiceMonitor", ep, "interval", "1 minute".into())
        .contains("not a Prometheus duration"));
    assert!(edited("ServiceMonitor", ep, "scheme", "HTTP".into()).contains("is not one of"));
    assert!(edited(
        "ServiceMonitor",
        &format!("{ep}/relabelings/0"),
        "sourceLabels",
        serde_json::json!(["__meta-pod"])
    )
    .contains("not a label name"));
    assert!(edited("ServiceMonitor", ep, "targetPorts", 9750.into()).contains("unknown field"));
    let rule = "/spec/groups/0/rules/0";
    assert!(edited("PrometheusRule", rule, "for", "30 minutes".into())
        .contains("not a Prometheus duration"));
    assert!(
        edited("PrometheusRule", rule, "expr", serde_json::json!(["x"])).contains("wrong type")
    );
    assert!(edited(
        "Service",
        "/spec",
        "publishNotReadyAddresses",
        "true".into()
    )
    .contains("wrong type"));
    for (d, ok) in [
        ("30m", true),
        ("1h30m", true),
        ("0", true),
        ("90s", true),
        ("100ms", true),
        ("1m1h", false),
        ("m", false),
        ("1x", false),
        ("1.5h", false),
    ] {
        assert_eq!(schema::is_prometheus_duration(d), ok, "{d}");
    }
}

#[test]
fn prestage_pods_roll_on_a_new_config() {
    use sha2::Digest;
    let annotation = |spec: &str| -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.yaml");
        std::fs::write(&path, spec).unwrap();
        let (yaml, _) = run(&[
            "-f",
            path.to_str().unwrap(),
            "-o",
            "prestage",
            "--node-image",
            NODE_IMAGE,
        ]);
        let objects = documents(&yaml);
        let config = by_kind(&objects, "ConfigMap")["data"]["99-worker-kmod-e1000.json"]
            .as_str()
            .unwrap()
            .to_owned();
        let a = by_kind(&objects, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
            ["kmod-day1.io/prestaged-config-sha256"]
            .as_str()
            .unwrap()
            .to_owned();
        (a, config)
    };
    let v1 = std::fs::read_to_string(support::root().join("examples/e1000.yaml")).unwrap();
    let v2 = v1.replace(
        "image: registry.example.com/kmods/e1000",
        "image: registry.example.com/kmods/e1000-v2",
    );
    assert_ne!(v1, v2);
    let (a1, config) = annotation(&v1);
    let hex: String = sha2::Sha256::digest(config.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(a1, format!("sha256:{hex}"));
    assert_eq!(annotation(&v1).0, a1);
    // A kmod update changes the pod template, so the DaemonSet rolls and records it.
    assert_ne!(annotation(&v2).0, a1);
}

fn prestage_e1000() -> Vec<Value> {
    let (yaml, _) = run(&[
        "-f",
        "examples/e1000.yaml",
        "-o",
        "prestage",
        "--node-image",
        NODE_IMAGE,
    ]);
    documents(&yaml)
}

#[test]
fn the_agent_serves_the_nodes_metrics_behind_a_service() {
    let objects = prestage_e1000();
    let ds = by_kind(&objects, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    let names: Vec<&str> = containers
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["agent", "metrics"]);
    let metrics = &containers[1];
    assert_eq!(metrics["image"], PINNED);
    assert_eq!(
        metrics["command"],
        serde_json::json!([
            mcgen::IMAGE_SHELL,
            "sh",
            "/etc/kmod-day1-prestage/kmod-day1-agent.sh",
            "metrics",
            "9750"
        ])
    );
    assert_eq!(
        metrics["env"][0],
        serde_json::json!({ "name": "KMOD_DAY1_POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } })
    );
    // Liveness on the server's /healthz; the pod's readiness stays "stored" (the agent's).
    assert_eq!(metrics["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(metrics["livenessProbe"]["httpGet"]["port"], 9750);
    assert!(metrics.get("readinessProbe").is_none());
    assert!(containers[0]["readinessProbe"]["exec"].is_object());
    // It only reads the host.
    let host = metrics["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "host")
        .unwrap();
    assert_eq!(host["readOnly"], true);
    // On the host network a container port would be a host port, unique per node: another
    // config's DaemonSet on the same nodes could not be scheduled.
    assert_eq!(pod["hostNetwork"], true);
    for c in containers {
        assert!(c.get("ports").is_none(), "{}", c["name"]);
    }

    // The Service selects exactly this DaemonSet's pods, on the metrics port, ready or not.
    let svc = by_kind(&objects, "Service");
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    assert_eq!(svc["spec"]["selector"], *pod_labels);
    assert_eq!(
        svc["spec"]["selector"],
        ds["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["publishNotReadyAddresses"], true);
    let port = &svc["spec"]["ports"][0];
    assert_eq!(port["port"], 9750);
    assert_eq!(port["targetPort"], 9750);

    // The ServiceMonitor selects the Service by its labels and names its port.
    let sm = by_kind(&objects, "ServiceMonitor");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&svc["metadata"]["labels"][k], v, "{k}");
    }
    let ep = &sm["spec"]["endpoints"][0];
    assert_eq!(ep["port"], port["name"]);
    assert_eq!(ep["path"], "/metrics");
    // No namespaceSelector: user-workload monitoring ignores it (its own namespace only).
    assert!(sm["spec"].get("namespaceSelector").is_none());
    assert_eq!(
        ep["relabelings"][0]["sourceLabels"][0],
        "__meta_kubernetes_pod_node_name"
    );
    assert_eq!(ep["relabelings"][0]["targetLabel"], "node");
    for o in [svc, sm, by_kind(&objects, "PrometheusRule")] {
        assert_eq!(o["metadata"]["namespace"], "kmod-day1");
        assert_eq!(o["metadata"]["name"], ds["metadata"]["name"]);
    }
}

/// The alerting rules of the PrometheusRule.
fn alerts(objects: &[Value]) -> Vec<&Value> {
    let rule = by_kind(objects, "PrometheusRule");
    rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter(|r| r.get("alert").is_some())
        .collect()
}

/// A Prometheus duration in seconds (`30m`, `1h`, `1h30m`).
fn seconds(d: &str) -> u64 {
    let mut total = 0;
    let mut n = 0;
    for c in d.chars() {
        match c {
            '0'..='9' => n = n * 10 + u64::from(c.to_digit(10).unwrap()),
            's' => (total, n) = (total + n, 0),
            'm' => (total, n) = (total + 60 * n, 0),
            'h' => (total, n) = (total + 3600 * n, 0),
            'd' => (total, n) = (total + 86400 * n, 0),
            _ => panic!("unit in {d}"),
        }
    }
    total
}

#[test]
fn the_fallback_alert() {
    let objects = prestage_e1000();
    let rule = by_kind(&objects, "PrometheusRule");
    // Evaluated by user-workload monitoring's Prometheus, not through Thanos Ruler.
    assert_eq!(
        rule["metadata"]["labels"]["openshift.io/prometheus-rule-evaluation-scope"],
        "leaf-prometheus"
    );
    let alerts = alerts(&objects);
    let fallback = alerts
        .iter()
        .find(|a| a["alert"] == "KmodDay1InTreeFallback")
        .unwrap();
    let expr = fallback["expr"].as_str().unwrap();
    assert!(expr.contains("kmod_day1_set_fallback"), "{expr}");
    assert!(
        expr.contains("{config=\"99-worker-kmod-e1000\"}"),
        "each config's rule watches its own sets: {expr}"
    );
    assert!(expr.ends_with("== 1"), "{expr}");
    assert_eq!(fallback["labels"]["severity"], "warning");
    // Long enough for a pull's reboot and a slow drain; short enough to matter.
    let wait = seconds(fallback["for"].as_str().unwrap());
    assert!((20 * 60..=2 * 3600).contains(&wait), "{wait}");
    let summary = fallback["annotations"]["summary"].as_str().unwrap();
    let description = fallback["annotations"]["description"].as_str().unwrap();
    for l in ["node", "config", "set"] {
        let var = format!("{{{{ $labels.{l} }}}}");
        assert!(summary.contains(&var), "{summary}");
        assert!(description.contains(&var), "{description}");
    }
    for a in &alerts {
        let expr = a["expr"].as_str().unwrap();
        // The labels the annotations use survive the aggregation; so does `namespace`,
        // which user-workload monitoring enforces.
        let by = expr
            .split_once("by (")
            .and_then(|(_, r)| r.split_once(')'))
            .map(|(l, _)| l.split(", ").collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("{expr} aggregates by node"));
        assert!(by.contains(&"namespace"), "{expr}");
        let text = serde_json::to_string(&a["annotations"]).unwrap();
        for part in text.split("$labels.").skip(1) {
            let label: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(by.contains(&label.as_str()), "{label} in {text}");
        }
    }
}

/// The metric families `kmod-day1-pull --metrics` writes, read from its source (each
/// `family(&mut out, "<name>", "<type>", ...)`) and from pull/README.md's table.
fn metrics_the_node_exposes() -> (Vec<String>, String) {
    let src = std::fs::read_to_string(support::root().join("pull/src/metrics.rs")).unwrap();
    let families: Vec<String> = src
        .split("family(")
        .skip(1)
        .filter_map(|call| {
            let after = call.split_once('"')?.1;
            Some(after.split_once('"')?.0.to_owned())
        })
        .filter(|n| n.starts_with("kmod_day1_"))
        .collect();
    assert!(families.len() >= 5, "{families:?}");
    let readme = std::fs::read_to_string(support::root().join("pull/README.md")).unwrap();
    let table = readme
        .split_once("## Metrics")
        .unwrap()
        .1
        .split("\n## ")
        .next()
        .unwrap()
        .to_owned();
    (families, table)
}

#[test]
fn the_alerts_name_metrics_the_node_exposes() {
    let objects = prestage_e1000();
    let (families, table) = metrics_the_node_exposes();
    for a in alerts(&objects) {
        let expr = a["expr"].as_str().unwrap();
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("kmod_day1_"))
            .collect();
        assert!(!names.is_empty(), "{expr}");
        for n in names {
            assert!(
                families.iter().any(|f| f == n),
                "{} uses {n}, which kmod-day1-pull does not write ({families:?})",
                a["alert"]
            );
            let row = table
                .lines()
                .find(|l| l.starts_with(&format!("| `{n}`")))
                .unwrap_or_else(|| panic!("{n} is not in pull/README.md's metrics table"));
            // The labels the expression selects or keeps are the metric's (besides the
            // target's: namespace, node).
            let labels = row.split('|').nth(2).unwrap();
            if expr.contains("config=") {
                assert!(labels.contains("config"), "{row}");
            }
            if expr.contains(", set)") {
                assert!(labels.contains("set"), "{row}");
            }
        }
    }
}

#[test]
fn the_metrics_port_can_be_moved() {
    let (yaml, _) = run(&[
        "-f",
        "examples/e1000.yaml",
        "-o",
        "prestage",
        "--node-image",
        NODE_IMAGE,
        "--metrics-port",
        "9751",
    ]);
    let objects = documents(&yaml);
    assert_schema(&objects);
    let metrics = &by_kind(&objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][1];
    assert_eq!(metrics["command"][4], "9751");
    assert_eq!(metrics["livenessProbe"]["httpGet"]["port"], 9751);
    let port = &by_kind(&objects, "Service")["spec"]["ports"][0];
    assert_eq!(port["port"], 9751);
    assert_eq!(port["targetPort"], 9751);
    assert!(!yaml.contains("9750"));
}
