// SPDX-License-Identifier: Apache-2.0
//! The cluster objects of `--output prestage` and `--output disruption-policy`, parsed back
//! and checked against the fields and types of the upstream API schemas (tests/schema), and
//! against what they must do: the prestage DaemonSet runs the node image on the pool's nodes
//! (masters too), privileged, with the install and the readiness of "stored"; the disruption
//! policy covers exactly the files and units of the MachineConfig, within the API's rules.

mod schema;
mod support;

use serde::Deserialize;
use serde_json::Value;
use support::{mcgen, NODE_IMAGE};

const PINNED: &str = "quay.io/kmod-day1/node@sha256:4e1f5cbd3cf2a8b2f3bd0f9a6c7e2d1b0a9f8e7d6c5b4a3928170615f4e3d2c1";

fn run(args: &[&str]) -> (String, String) {
    let out = mcgen(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "mcgen {args:?}: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("a YAML document"))
        .collect()
}

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
            "DaemonSet"
        ]
    );
    assert_schema(&objects);
    for o in &objects[1..] {
        assert_eq!(o["metadata"]["namespace"], "kmod-day1");
    }

    let ns = &objects[0]["metadata"]["labels"];
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
