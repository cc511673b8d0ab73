// SPDX-License-Identifier: Apache-2.0
//! `--output acm-policy` parsed back: the Policy, Placement and PlacementBinding and every
//! object they carry against the upstream schemas (tests/schema); the dependency chain
//! (prestage, then the gate "stored on every node", then the MachineConfig, then with
//! --on-change the pool's rollout and the disruption policy); the carried objects equal
//! mcgen's other outputs; names, size and bad input.

mod schema;
mod support;

use serde_json::Value;
use support::{documents, mcgen, mcgen_ok as run, NODE_IMAGE};

const SELECTOR: [&str; 2] = ["--cluster-selector", "kmod-day1=e1000"];

fn policy_for(extra: &[&str]) -> (Vec<Value>, String) {
    let mut args = vec![
        "-f",
        "examples/e1000.yaml",
        "-o",
        "acm-policy",
        "--node-image",
        NODE_IMAGE,
    ];
    args.extend(SELECTOR);
    args.extend(extra);
    let (yaml, stderr) = run(&args);
    (documents(&yaml), stderr)
}

/// The policy's templates by name: (ConfigurationPolicy, names it depends on).
fn templates(policy: &Value) -> Vec<(String, Value, Vec<String>)> {
    policy["spec"]["policy-templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let o = t["objectDefinition"].clone();
            let deps = t["extraDependencies"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|d| {
                            assert_eq!(d["apiVersion"], "policy.open-cluster-management.io/v1");
                            assert_eq!(d["kind"], "ConfigurationPolicy");
                            assert_eq!(d["compliance"], "Compliant");
                            d["name"].as_str().unwrap().to_owned()
                        })
                        .collect()
                })
                .unwrap_or_default();
            (o["metadata"]["name"].as_str().unwrap().to_owned(), o, deps)
        })
        .collect()
}

fn carried<'a>(template: &'a Value, kind: &str) -> Vec<&'a Value> {
    template["spec"]["object-templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["objectDefinition"])
        .filter(|o| o["kind"] == kind)
        .collect()
}

#[test]
fn objects_match_the_upstream_schemas() {
    for extra in [
        &[][..],
        &[
            "--on-change",
            "next-boot",
            "--remediation-action",
            "enforce",
        ][..],
    ] {
        let (objects, stderr) = policy_for(extra);
        let kinds: Vec<&str> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["Policy", "Placement", "PlacementBinding"]);
        for o in &objects {
            let problems = schema::check_object(o);
            assert!(problems.is_empty(), "{problems:#?}");
            assert_eq!(o["metadata"]["namespace"], "kmod-day1");
            assert_eq!(o["metadata"]["name"], "kmod-day1-99-worker-kmod-e1000");
        }
        assert!(
            stderr.contains(
                "replicated as kmod-day1.kmod-day1-99-worker-kmod-e1000, 40 of 63 characters"
            ),
            "{stderr}"
        );
        assert!(stderr.contains(" bytes (limit 1048576)"), "{stderr}");
        let binding = &objects[2];
        assert_eq!(
            binding["placementRef"]["name"],
            objects[1]["metadata"]["name"]
        );
        assert_eq!(
            binding["subjects"][0]["name"],
            objects[0]["metadata"]["name"]
        );
        let placement = &objects[1]["spec"];
        assert_eq!(
            placement["predicates"][0]["requiredClusterSelector"]["labelSelector"]["matchLabels"],
            serde_json::json!({ "kmod-day1": "e1000" })
        );
        // A single-node spoke is unavailable while it reboots: it must stay placed.
        let tolerated: Vec<&str> = placement["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["key"].as_str().unwrap())
            .collect();
        assert_eq!(
            tolerated,
            [
                "cluster.open-cluster-management.io/unreachable",
                "cluster.open-cluster-management.io/unavailable"
            ]
        );
    }
}

#[test]
fn the_dependency_chain() {
    let (objects, _) = policy_for(&["--on-change", "reboot", "--remediation-action", "enforce"]);
    let policy = &objects[0];
    // No policy-wide remediationAction: each template has its own (the propagator's webhook
    // wants one or the other), so the read-only gates stay inform.
    assert!(policy["spec"].get("remediationAction").is_none());
    assert!(policy["spec"].get("dependencies").is_none());
    let t = templates(policy);
    let names: Vec<&str> = t.iter().map(|(n, _, _)| n.as_str()).collect();
    let p = "kmod-day1-99-worker-kmod-e1000";
    assert_eq!(
        names,
        [
            format!("{p}-prestage"),
            format!("{p}-stored"),
            format!("{p}-machineconfig"),
            format!("{p}-rolled-out"),
            format!("{p}-disruption-policy"),
        ]
    );
    let deps: Vec<(&str, Vec<String>)> =
        t.iter().map(|(n, _, d)| (n.as_str(), d.clone())).collect();
    assert_eq!(
        deps,
        [
            (names[0], vec![]),
            (names[1], vec![]),
            (names[2], vec![names[1].to_owned()]),
            (names[3], vec![]),
            (names[4], vec![names[3].to_owned()]),
        ]
    );
    // Every dependency names a template of this policy that comes before it: no cycle, no
    // dependency on something that never exists on the spoke.
    for (i, (_, _, d)) in t.iter().enumerate() {
        for dep in d {
            assert!(names[..i].contains(&dep.as_str()), "{dep}");
        }
    }
    let action = |i: usize| {
        t[i].1["spec"]["remediationAction"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        (0..5).map(action).collect::<Vec<_>>(),
        ["enforce", "inform", "enforce", "inform", "enforce"]
    );
    // The gates depend on nothing, so nothing waits on something that waits on it.
    assert!(t[1].2.is_empty() && t[3].2.is_empty());
    for (_, o, _) in &t {
        assert_eq!(
            o["spec"]["pruneObjectBehavior"].as_str().unwrap_or("None"),
            "None",
            "a template whose dependency turns unmet is deleted: its objects must stay"
        );
    }

    // The gate reads the DaemonSet the prestage template writes and the MachineConfig the
    // next template writes, with the content hash both carry.
    let daemon_set = carried(&t[0].1, "DaemonSet")[0];
    let mc = carried(&t[2].1, "MachineConfig")[0];
    let hash = mc["metadata"]["annotations"][mcgen::CONTENT_ANNOTATION]
        .as_str()
        .unwrap();
    assert_eq!(hash, mcgen::content_hash(mc));
    assert_eq!(
        daemon_set["spec"]["template"]["metadata"]["annotations"][mcgen::CONTENT_ANNOTATION],
        hash
    );
    let gate = t[1].1["spec"]["object-templates-raw"].as_str().unwrap();
    let ds_name = daemon_set["metadata"]["name"].as_str().unwrap();
    for needle in [
        format!(r#"lookup "apps/v1" "DaemonSet" "kmod-day1" "{ds_name}""#),
        format!(
            r#"lookup "machineconfiguration.openshift.io/v1" "MachineConfig" "" "{}""#,
            mc["metadata"]["name"].as_str().unwrap()
        ),
        format!(r#""{hash}""#),
    ] {
        assert!(gate.contains(&needle), "{needle}\n{gate}");
    }
    let (rolled_branch, stored_branch) = gate_branches(gate);
    assert_eq!(rolled_branch["kind"], "MachineConfig");
    assert_eq!(rolled_branch["metadata"]["name"], mc["metadata"]["name"]);
    assert_eq!(
        rolled_branch["metadata"]["annotations"][mcgen::CONTENT_ANNOTATION],
        hash
    );
    assert_eq!(stored_branch["kind"], "DaemonSet");
    assert_eq!(stored_branch["metadata"]["name"], ds_name);
    assert_eq!(
        stored_branch["spec"]["template"]["metadata"]["annotations"][mcgen::CONTENT_ANNOTATION],
        hash
    );
    // Ready must equal desired, on the current generation, every pod updated.
    let status = stored_branch["status"].as_object().unwrap();
    let keys: Vec<&str> = status.keys().map(String::as_str).collect();
    for k in [
        "observedGeneration",
        "desiredNumberScheduled",
        "numberReady",
        "updatedNumberScheduled",
    ] {
        assert!(keys.contains(&k), "{k}: {keys:?}");
    }
    assert_eq!(status["numberReady"], status["desiredNumberScheduled"]);

    // The disruption policy waits for the pool's rendered config to hold the MachineConfig.
    let pool = carried(&t[3].1, "MachineConfigPool")[0];
    assert_eq!(pool["metadata"]["name"], "worker");
    assert_eq!(
        pool["status"]["configuration"]["source"][0]["name"],
        mc["metadata"]["name"]
    );
    // Only the gate's Go templates are the policy's; the others' data (scripts, units, the
    // alerts' `{{ $labels.node }}`, which Prometheus expands) are never parsed.
    for (i, (_, o, _)) in t.iter().enumerate() {
        let text = serde_json::to_string(o).unwrap();
        if i == 1 || !text.contains("{{") {
            continue;
        }
        assert_eq!(
            o["metadata"]["annotations"]["policy.open-cluster-management.io/disable-templates"],
            "true",
            "template {i} holds text in braces that the spoke would take for a Go template"
        );
    }
    assert!(serde_json::to_string(&t[0].1)
        .unwrap()
        .contains("{{ $labels.node }}"));
    for i in [0, 2, 4] {
        assert_eq!(
            t[i].1["metadata"]["annotations"]
                ["policy.open-cluster-management.io/disable-templates"],
            "true"
        );
    }
}

/// The two branches of the gate's raw template, rendered as the spoke would (actions dropped,
/// numbers filled in) and parsed as object-templates.
fn gate_branches(raw: &str) -> (Value, Value) {
    let mut branches = [String::new(), String::new()];
    let mut current: Option<usize> = None;
    for line in raw.lines() {
        let t = line.trim();
        if t.starts_with("{{- if $rolled") {
            current = Some(0);
            continue;
        }
        if t == "{{- else }}" && current == Some(0) {
            current = Some(1);
            continue;
        }
        if t.starts_with("{{") && t.ends_with("}}") {
            continue;
        }
        if let Some(c) = current {
            let mut l = line.to_owned();
            for var in ["{{ $generation }}", "{{ $desired }}"] {
                l = l.replace(var, "3");
            }
            assert!(!l.contains("{{"), "{l}");
            branches[c].push_str(&l);
            branches[c].push('\n');
        }
    }
    let parse = |text: &str| -> Value {
        let v: Value = serde_norway::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let list = v.as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["complianceType"], "musthave");
        list[0]["objectDefinition"].clone()
    };
    (parse(&branches[0]), parse(&branches[1]))
}

#[test]
fn carried_objects_are_the_other_outputs() {
    let (objects, _) = policy_for(&["--on-change", "next-boot"]);
    let t = templates(&objects[0]);
    let (mc_yaml, _) = run(&["-f", "examples/e1000.yaml", "--node-image", NODE_IMAGE]);
    let mut mc: Value = serde_norway::from_str(&mc_yaml).unwrap();
    let hash = mcgen::content_hash(&mc);
    mc["metadata"]["annotations"] = serde_json::json!({ mcgen::CONTENT_ANNOTATION: hash });
    assert_eq!(carried(&t[2].1, "MachineConfig")[0], &mc);
    // Objects that are ours alone are exact (no stale list items of an older version), their
    // labels and annotations merged (others add theirs); the shared ones are merged.
    let compliance = |template: &Value| -> Vec<(String, String, String)> {
        template["spec"]["object-templates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["objectDefinition"]["kind"].as_str().unwrap().to_owned(),
                    o["complianceType"].as_str().unwrap().to_owned(),
                    o["metadataComplianceType"]
                        .as_str()
                        .unwrap_or("-")
                        .to_owned(),
                )
            })
            .collect()
    };
    let c = |k: &str, t: &str, m: &str| (k.to_owned(), t.to_owned(), m.to_owned());
    assert_eq!(
        compliance(&t[0].1),
        [
            c("Namespace", "musthave", "-"),
            c("ServiceAccount", "musthave", "-"),
            c("RoleBinding", "musthave", "-"),
            c("ConfigMap", "mustonlyhave", "musthave"),
            c("DaemonSet", "mustonlyhave", "musthave"),
            c("Service", "musthave", "-"),
            c("ServiceMonitor", "mustonlyhave", "musthave"),
            c("PrometheusRule", "mustonlyhave", "musthave"),
        ]
    );
    assert_eq!(
        compliance(&t[2].1),
        [c("MachineConfig", "mustonlyhave", "musthave")]
    );
    assert_eq!(
        compliance(&t[4].1),
        [c("MachineConfiguration", "musthave", "-")]
    );

    let (prestage, _) = run(&[
        "-f",
        "examples/e1000.yaml",
        "-o",
        "prestage",
        "--node-image",
        NODE_IMAGE,
    ]);
    let mut prestage = documents(&prestage);
    prestage[4]["spec"]["template"]["metadata"]["annotations"][mcgen::CONTENT_ANNOTATION] =
        hash.into();
    let in_policy: Vec<Value> = t[0].1["spec"]["object-templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["objectDefinition"].clone())
        .collect();
    assert_eq!(in_policy, prestage);

    let (ndp, _) = run(&[
        "-f",
        "examples/e1000.yaml",
        "-o",
        "disruption-policy",
        "--on-change",
        "next-boot",
        "--node-image",
        NODE_IMAGE,
    ]);
    assert_eq!(
        carried(&t[4].1, "MachineConfiguration")[0],
        &documents(&ndp)[0]
    );
}

#[test]
fn single_node_spokes_use_the_master_pool() {
    let (objects, stderr) = policy_for(&[
        "--single-node",
        "--on-change",
        "reboot",
        "--policy-namespace",
        "ztp-kmods",
    ]);
    assert!(
        stderr.contains("goes to pool master instead of worker"),
        "{stderr}"
    );
    assert_eq!(objects[0]["metadata"]["namespace"], "ztp-kmods");
    let t = templates(&objects[0]);
    let mc = carried(&t[2].1, "MachineConfig")[0];
    assert_eq!(
        mc["metadata"]["labels"]["machineconfiguration.openshift.io/role"],
        "master"
    );
    let ds = carried(&t[0].1, "DaemonSet")[0];
    assert_eq!(
        ds["spec"]["template"]["spec"]["nodeSelector"],
        serde_json::json!({ "node-role.kubernetes.io/master": "" })
    );
    assert_eq!(
        carried(&t[3].1, "MachineConfigPool")[0]["metadata"]["name"],
        "master"
    );
    // The same flag makes the plain MachineConfig for a single-node cluster (ZTP extraManifests).
    let (mc, _) = run(&[
        "-f",
        "examples/e1000.yaml",
        "--node-image",
        NODE_IMAGE,
        "--single-node",
    ]);
    assert!(
        mc.contains("machineconfiguration.openshift.io/role: master"),
        "{mc}"
    );
}

#[test]
fn a_machineconfig_is_a_ztp_extra_manifest() {
    // ZTP's extraManifests are files of single Kubernetes objects, each with its apiVersion,
    // kind and name, applied at install time: one MachineConfig document, nothing around it.
    let (mc, _) = run(&[
        "-f",
        "examples/e1000.yaml",
        "--node-image",
        NODE_IMAGE,
        "--single-node",
    ]);
    let docs = documents(&mc);
    assert_eq!(docs.len(), 1);
    assert!(!mc.starts_with("---"));
    let problems = schema::check_object(&docs[0]);
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(docs[0]["metadata"].get("namespace").is_none());
}

#[test]
fn bad_input() {
    let base = ["-f", "examples/e1000.yaml", "-o", "acm-policy"];
    let long_ns = "n".repeat(33);
    for (extra, expect) in [
        (vec!["--node-image", NODE_IMAGE], "needs --cluster-selector"),
        (vec!["--cluster-selector", "a=b"], "give --node-image"),
        (
            vec!["--node-image", NODE_IMAGE, "--cluster-selector", "a b"],
            "--cluster-selector \"a b\"",
        ),
        (
            vec![
                "--node-image",
                NODE_IMAGE,
                "--cluster-selector",
                "a=b",
                "--policy-namespace",
                &long_ns,
            ],
            "has 64 characters, above 63",
        ),
        (
            vec![
                "--node-image",
                NODE_IMAGE,
                "--cluster-selector",
                "a=b",
                "--policy-namespace",
                "Bad",
            ],
            "--policy-namespace \"Bad\"",
        ),
    ] {
        let mut args = base.to_vec();
        args.extend(extra.iter().copied());
        let out = mcgen(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(out.stdout.is_empty());
    }
    for args in [
        vec![
            "-f",
            "examples/e1000.yaml",
            "--node-image",
            NODE_IMAGE,
            "--cluster-selector",
            "a=b",
        ],
        vec![
            "-f",
            "examples/e1000.yaml",
            "--node-image",
            NODE_IMAGE,
            "--remediation-action",
            "enforce",
        ],
    ] {
        let out = mcgen(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("go with --output acm-policy"), "{stderr}");
    }
}

#[test]
fn the_gate_is_a_well_formed_go_template() {
    let (objects, _) = policy_for(&[]);
    let t = templates(&objects[0]);
    let gate = t[1].1["spec"]["object-templates-raw"].as_str().unwrap();
    // Every action is closed on its line, and every block (if, with, range) has its end.
    let mut depth = 0i32;
    let mut rest = gate;
    while let Some(open) = rest.find("{{") {
        let close = rest[open..].find("}}").expect("an action without }}") + open;
        let action = rest[open + 2..close].trim_start_matches('-').trim();
        assert!(
            !action.contains('\n') || action.starts_with("/*"),
            "{action}"
        );
        let word = action.split_whitespace().next().unwrap_or_default();
        match word {
            "if" | "with" | "range" => depth += 1,
            "end" => depth -= 1,
            _ => {}
        }
        assert!(depth >= 0, "an end without a block: {gate}");
        rest = &rest[close + 2..];
    }
    assert_eq!(depth, 0, "a block without an end: {gate}");
    assert!(!rest.contains("}}"));
    // Only functions the spoke's template resolver has (Go's own, go-template-utils' lookup).
    for f in ["lookup", "eq", "index", "gt"] {
        assert!(gate.contains(&format!("{f} ")), "{f}");
    }
    assert!(!gate.contains("{{hub"), "nothing for the hub to resolve");
}

#[test]
fn the_schema_check_catches_policy_mistakes() {
    let (objects, _) = policy_for(&["--on-change", "reboot"]);
    let problems = |i: usize, edit: &dyn Fn(&mut Value)| {
        let mut o = objects[i].clone();
        edit(&mut o);
        schema::check_object(&o).join("; ")
    };
    assert!(
        problems(0, &|o| o["spec"]["remediationAction"] = "Audit".into()).contains("is not one of")
    );
    assert!(problems(0, &|o| {
        o["spec"].as_object_mut().unwrap().remove("disabled");
    })
    .contains("disabled is required"));
    assert!(problems(0, &|o| o["spec"]["policy-templates"][2]
        ["extraDependencies"][0]["compliance"] =
        "Ready".into())
    .contains("is not one of"));
    // Inside a template: a ConfigurationPolicy field, an object template, a carried object.
    assert!(problems(0, &|o| o["spec"]["policy-templates"][0]
        ["objectDefinition"]["spec"]["pruneObjectBehavior"] =
        "Never".into())
    .contains("is not one of"));
    assert!(problems(0, &|o| o["spec"]["policy-templates"][2]
        ["objectDefinition"]["spec"]["object-templates"][0]["complianceType"] =
        "mustHaveOnly".into())
    .contains("is not one of"));
    assert!(problems(0, &|o| o["spec"]["policy-templates"][0]
        ["objectDefinition"]["spec"]["object-templates"][4]["objectDefinition"]
        ["spec"]["template"]["spec"]["hostNetwork"] =
        "yes".into())
    .contains("wrong type"));
    assert!(problems(0, &|o| o["spec"]["policy-templates"][1]
        ["objectDefinition"]["spec"]["object-templates"] =
        serde_json::json!([]))
    .contains("exactly one of object-templates and object-templates-raw"));
    assert!(problems(1, &|o| o["spec"]["tolerations"][0]["effect"] =
        "NoSchedule".into())
    .contains("is not one of"));
    assert!(problems(2, &|o| o["subjects"][0]["kind"] =
        "ConfigurationPolicy".into())
    .contains("is not one of"));
    assert!(problems(2, &|o| o["placementRef"]["apiGroup"] =
        "policy.open-cluster-management.io".into())
    .contains("is not one of"));
}
