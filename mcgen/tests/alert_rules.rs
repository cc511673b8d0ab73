// SPDX-License-Identifier: Apache-2.0
//! The PrometheusRule of `--output prestage`, run by Prometheus' own rule evaluator
//! (`promtool test rules`) on made-up scrapes: the fallback alert fires after its `for:` for a
//! node that stays fallen back, once even when two configs' jobs scrape that node, not for a
//! node whose reboot (no scrapes) ends the fallback, not for another config's sets; the pull
//! alert likewise. Needs `promtool` (Debian: the `prometheus` package, which hack/install-deps
//! installs); fails without it.

mod support;

use std::process::Command;

use serde::Deserialize;
use serde_json::{json, Value};
use support::{mcgen, NODE_IMAGE};

const CONFIG: &str = "99-worker-kmod-e1000";

fn have_promtool() -> bool {
    Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The PrometheusRule's alerting rules (the `spec`, as a rule file).
fn rule_spec() -> Value {
    let out = mcgen(&[
        "-f",
        "examples/e1000.yaml",
        "-o",
        "prestage",
        "--node-image",
        NODE_IMAGE,
    ]);
    assert!(out.status.success());
    let yaml = String::from_utf8(out.stdout).unwrap();
    let rule = serde_norway::Deserializer::from_str(&yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .find(|o| o["kind"] == "PrometheusRule")
        .unwrap();
    rule["spec"].clone()
}

/// The alert's annotations with `{{ $labels.X }}` replaced as Prometheus would.
fn expanded(rule: &Value, labels: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in rule["annotations"].as_object().unwrap() {
        let mut text = v.as_str().unwrap().to_owned();
        for (l, value) in labels.as_object().unwrap() {
            text = text.replace(&format!("{{{{ $labels.{l} }}}}"), value.as_str().unwrap());
        }
        assert!(!text.contains("{{"), "a template beyond $labels: {text}");
        out.insert(k.clone(), text.into());
    }
    Value::Object(out)
}

fn series(metric: &str, job: &str, node: &str, extra: &str, values: &str) -> Value {
    json!({
        "series": format!("{metric}{{namespace=\"kmod-day1\",job=\"{job}\",node=\"{node}\"{extra}}}"),
        "values": values,
    })
}

#[test]
fn the_alerts_fire_as_promtool_evaluates_them() {
    assert!(
        have_promtool(),
        "promtool is missing: hack/install-deps installs it (Debian's prometheus package)"
    );
    let spec = rule_spec();
    let rules: Vec<&Value> = spec["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    let rule = |name: &str| *rules.iter().find(|r| r["alert"] == name).unwrap();
    let fallback = rule("KmodDay1InTreeFallback");
    let pull = rule("KmodDay1PullFailing");

    let job = format!("kmod-day1-{CONFIG}");
    let set = format!(",config=\"{CONFIG}\",set=\"e1000\"");
    let fallback_a = json!({
        "severity": "warning", "namespace": "kmod-day1", "node": "a", "config": CONFIG, "set": "e1000",
    });
    let pull_a = json!({ "severity": "warning", "namespace": "kmod-day1", "node": "a" });
    let tests = json!({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                // Node a stays fallen back; two configs' jobs scrape it.
                series("kmod_day1_set_fallback", &job, "a", &set, "1x100"),
                series("kmod_day1_set_fallback", "kmod-day1-other", "a", &set, "1x100"),
                // Node b: stored, not loaded for 20 minutes, then its reboot (no scrapes,
                // the series goes stale), then loaded.
                series("kmod_day1_set_fallback", &job, "b", &set, "1x20 _x15 0x60"),
                // Another config's set on node c: that config's rule's business.
                series("kmod_day1_set_fallback", &job, "c", ",config=\"other\",set=\"x\"", "1x100"),
                // Pulls: node a keeps failing; node b fails for 40 minutes, then succeeds.
                series("kmod_day1_last_pull_success", &job, "a", ",reboot=\"notNeeded\"", "0x100"),
                series("kmod_day1_last_pull_success", &job, "b", ",reboot=\"notNeeded\"", "0x40 1x60"),
            ],
            "alert_rule_test": [
                { "eval_time": "29m", "alertname": "KmodDay1InTreeFallback", "exp_alerts": [] },
                { "eval_time": "50m", "alertname": "KmodDay1InTreeFallback", "exp_alerts": [
                    { "exp_labels": fallback_a, "exp_annotations": expanded(fallback, &fallback_a) },
                ] },
                { "eval_time": "59m", "alertname": "KmodDay1PullFailing", "exp_alerts": [] },
                { "eval_time": "90m", "alertname": "KmodDay1PullFailing", "exp_alerts": [
                    { "exp_labels": pull_a, "exp_annotations": expanded(pull, &pull_a) },
                ] },
            ],
        }],
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_norway::to_string(&spec).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("test.yaml"),
        serde_norway::to_string(&tests).unwrap(),
    )
    .unwrap();
    let check = Command::new("promtool")
        .args(["check", "rules", "rules.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let run = Command::new("promtool")
        .args(["test", "rules", "test.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}
