// SPDX-License-Identifier: Apache-2.0
//! The stand-in on temp dirs, with mcgen's golden outputs as the configs and policies.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{json, Value};

use super::*;

const E1000: &str = include_str!("../../../mcgen/tests/golden/e1000.image.machineconfig.yaml");
const NEXT_BOOT: &str =
    include_str!("../../../mcgen/tests/golden/e1000.disruption-policy.next-boot.yaml");
const REBOOT: &str =
    include_str!("../../../mcgen/tests/golden/e1000.disruption-policy.reboot.yaml");
const CONFIG_D: &str = "/etc/kmod-day1/config.d/99-worker-kmod-e1000.json";

/// Records every systemctl call; `is-enabled` answers from `enabled`.
#[derive(Default)]
struct Recorder {
    calls: Vec<String>,
    enabled: Vec<&'static str>,
}

impl Systemctl for Recorder {
    fn run(&mut self, args: &[&str]) -> Result<CommandOutput> {
        self.calls.push(args.join(" "));
        let on = args[0] == "is-enabled" && self.enabled.contains(&args[1]);
        Ok(CommandOutput {
            success: args[0] != "is-enabled" || on,
            stdout: if on { "enabled\n" } else { "" }.into(),
        })
    }
}

fn e1000() -> RenderedConfig {
    RenderedConfig::parse(E1000).unwrap()
}

/// mcgen's e1000 MachineConfig (image delivery) renamed and changed by `edit`.
fn e1000_with(name: &str, edit: impl FnOnce(&mut Value)) -> RenderedConfig {
    let mut v: Value = serde_norway::from_str(E1000).unwrap();
    v["metadata"]["name"] = json!(name);
    edit(&mut v);
    RenderedConfig::parse(&v.to_string()).unwrap()
}

fn files(v: &mut Value) -> &mut Vec<Value> {
    v["spec"]["config"]["storage"]["files"]
        .as_array_mut()
        .unwrap()
}

fn entry<'a>(list: &'a mut [Value], key: &str, value: &str) -> &'a mut Value {
    list.iter_mut().find(|e| e[key] == value).unwrap()
}

fn policy(text: &str) -> ClusterPolicies {
    ClusterPolicies::from_machine_configuration(text).unwrap()
}

fn read(root: &Path, p: &str) -> String {
    fs::read_to_string(root.join(p.trim_start_matches('/'))).unwrap()
}

fn mode(root: &Path, p: &str) -> u32 {
    fs::metadata(root.join(p.trim_start_matches('/')))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn state(root: &Path) -> NodeState {
    serde_json::from_str(&read(root, NODE_STATE)).unwrap()
}

#[test]
fn a_file_change_covered_by_none_is_written_with_its_mode_and_nothing_reboots() {
    let root = tempfile::tempdir().unwrap();
    let new = e1000_with("rendered-worker-2", |v| {
        let f = entry(files(v), "path", CONFIG_D);
        f["contents"] = json!({"source": "data:,%7B%22version%22%3A%201%7D%0A"});
        f["mode"] = json!(0o600);
    });
    let mut sys = Recorder::default();
    let out = Node::new(root.path(), &mut sys)
        .update(&e1000(), &new, &policy(NEXT_BOOT))
        .unwrap();
    assert_eq!(
        out,
        UpdateOutcome::Rebootless {
            actions: vec![Action::None],
            drained: false
        }
    );
    assert!(sys.calls.is_empty(), "{:?}", sys.calls);
    assert_eq!(read(root.path(), CONFIG_D), "{\"version\": 1}\n");
    assert_eq!(mode(root.path(), CONFIG_D), 0o600);
    assert_eq!(
        mode(root.path(), "/etc/kmod-day1/kmod-day1-install.sh"),
        0o755
    );
    let s = state(root.path());
    assert_eq!(
        (s.current_config.as_str(), s.state),
        ("rendered-worker-2", NodePhase::Done)
    );
    assert!(read(root.path(), CURRENT_CONFIG).contains("\"rendered-worker-2\""));
}

#[test]
fn a_unit_change_covered_by_daemon_reload_runs_daemon_reload_and_no_reboot() {
    let root = tempfile::tempdir().unwrap();
    let new = e1000_with("rendered-worker-2", |v| {
        let units = v["spec"]["config"]["systemd"]["units"]
            .as_array_mut()
            .unwrap();
        let u = entry(units, "name", "kmod-day1-load.service");
        u["contents"] = json!(format!("{}# v2\n", u["contents"].as_str().unwrap()));
    });
    let mut sys = Recorder {
        enabled: vec!["kmod-day1-load.service"],
        ..Default::default()
    };
    let out = Node::new(root.path(), &mut sys)
        .update(&e1000(), &new, &policy(NEXT_BOOT))
        .unwrap();
    assert_eq!(
        out,
        UpdateOutcome::Rebootless {
            actions: vec![Action::DaemonReload],
            drained: false
        }
    );
    assert_eq!(
        sys.calls,
        [
            "is-enabled kmod-day1-load.service",
            "disable kmod-day1-load.service",
            "enable kmod-day1-load.service",
            "daemon-reload"
        ]
    );
    assert!(read(root.path(), "/etc/systemd/system/kmod-day1-load.service").ends_with("# v2\n"));
}

#[test]
fn an_uncovered_first_apply_drains_reboots_and_the_next_boot_completes_it() {
    let root = tempfile::tempdir().unwrap();
    let mut sys = Recorder::default();
    let mut node = Node::new(root.path(), &mut sys);
    let out = node
        .update(
            &RenderedConfig::empty(),
            &e1000(),
            &ClusterPolicies::mco_defaults(),
        )
        .unwrap();
    assert_eq!(out, UpdateOutcome::Rebooting);
    let s = state(root.path());
    assert_eq!(
        (s.current_config.as_str(), s.state),
        ("", NodePhase::Working)
    );
    assert_eq!(
        node.boot_check().unwrap(),
        BootCheck::Completed("99-worker-kmod-e1000".into())
    );
    assert_eq!(node.boot_check().unwrap(), BootCheck::NothingPending);
    assert_eq!(state(root.path()).current_config, "99-worker-kmod-e1000");
    assert_eq!(sys.calls.last().unwrap(), "reboot");
    assert!(sys.calls.contains(&"enable kmod-day1-install.service kmod-day1-load.service kmod-day1-pull-shutdown.service kmod-day1-pull.service".to_owned()), "{:?}", sys.calls);
}

#[test]
fn a_file_the_policy_does_not_name_reboots_and_a_wrong_disk_degrades_the_next_boot() {
    let root = tempfile::tempdir().unwrap();
    let new = e1000_with("rendered-worker-2", |v| {
        files(v).push(json!({"path": "/etc/other.conf", "contents": {"source": "data:,x"}}));
    });
    let mut sys = Recorder::default();
    let mut node = Node::new(root.path(), &mut sys);
    let out = node.update(&e1000(), &new, &policy(NEXT_BOOT)).unwrap();
    assert_eq!(out, UpdateOutcome::Rebooting);
    fs::write(root.path().join("etc/other.conf"), "y").unwrap();
    let BootCheck::Degraded(reason) = node.boot_check().unwrap() else {
        panic!("not degraded")
    };
    assert!(
        reason.contains("content mismatch for file /etc/other.conf"),
        "{reason}"
    );
    assert_eq!(state(root.path()).state, NodePhase::Degraded);
    assert_eq!(sys.calls, ["reboot"]);
}

#[test]
fn a_reboot_action_in_the_policy_reboots() {
    let root = tempfile::tempdir().unwrap();
    let new = e1000_with("rendered-worker-2", |v| {
        entry(files(v), "path", CONFIG_D)["contents"] = json!({"source": "data:,{}"});
    });
    let mut sys = Recorder::default();
    let out = Node::new(root.path(), &mut sys)
        .update(&e1000(), &new, &policy(REBOOT))
        .unwrap();
    assert_eq!(out, UpdateOutcome::Rebooting);
    assert_eq!(sys.calls, ["reboot"]);
    assert_eq!(read(root.path(), CONFIG_D), "{}");
}

#[test]
fn a_removed_file_is_deleted_and_one_with_a_pristine_copy_restored() {
    let root = tempfile::tempdir().unwrap();
    for (p, text) in [("etc/foo.conf", "factory"), ("usr/etc/foo.conf", "factory")] {
        fs::create_dir_all(root.path().join(p).parent().unwrap()).unwrap();
        fs::write(root.path().join(p), text).unwrap();
    }
    let with_files = e1000_with("rendered-worker-1", |v| {
        files(v).push(json!({"path": "/etc/foo.conf", "contents": {"source": "data:,ours"}}));
        files(v).push(json!({"path": "/etc/extra.conf", "contents": {"source": "data:,extra"}}));
    });
    let mut sys = Recorder::default();
    let mut node = Node::new(root.path(), &mut sys);
    node.update(&RenderedConfig::empty(), &with_files, &policy(NEXT_BOOT))
        .unwrap();
    assert_eq!(read(root.path(), "/etc/foo.conf"), "ours");
    assert_eq!(read(root.path(), "/etc/extra.conf"), "extra");
    node.update(&with_files, &e1000(), &policy(NEXT_BOOT))
        .unwrap();
    assert!(!root.path().join("etc/extra.conf").exists());
    assert_eq!(read(root.path(), "/etc/foo.conf"), "factory");
    assert!(!root
        .path()
        .join("etc/machine-config-daemon/orig/etc/foo.conf.mcdorig")
        .exists());
    assert!(!root
        .path()
        .join("etc/machine-config-daemon/noorig/etc/extra.conf.mcdnoorig")
        .exists());
}

#[test]
fn a_kernel_argument_change_reboots_whatever_the_policy() {
    let root = tempfile::tempdir().unwrap();
    let new = e1000_with("rendered-worker-2", |v| {
        v["spec"]["kernelArguments"] = json!(["nosmt"])
    });
    let mut sys = Recorder::default();
    let out = Node::new(root.path(), &mut sys)
        .update(&e1000(), &new, &policy(NEXT_BOOT))
        .unwrap();
    assert_eq!(out, UpdateOutcome::Rebooting);
    assert_eq!(sys.calls, ["reboot"]);
}

#[test]
fn identical_configs_do_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut sys = Recorder::default();
    let out = Node::new(root.path(), &mut sys)
        .update(&e1000(), &e1000(), &policy(REBOOT))
        .unwrap();
    assert_eq!(out, UpdateOutcome::NothingToDo);
    assert!(sys.calls.is_empty());
    assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
}

#[test]
fn an_unreconcilable_change_is_refused_before_anything_is_written() {
    let root = tempfile::tempdir().unwrap();
    let new = e1000_with("rendered-worker-2", |v| {
        v["spec"]["config"]["storage"]["directories"] = json!([{"path": "/var/x"}]);
    });
    let mut sys = Recorder::default();
    let e = Node::new(root.path(), &mut sys)
        .update(&e1000(), &new, &policy(NEXT_BOOT))
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("ignition directories section contains changes"),
        "{e:#}"
    );
    assert_eq!(state(root.path()).state, NodePhase::Unreconcilable);
    assert!(!root.path().join("etc/kmod-day1").exists());
    assert!(sys.calls.is_empty());
}

#[test]
fn data_urls_decode_base64_gzip_and_percent_escapes() {
    let res = |source: &str, compression: Option<&str>| Resource {
        source: Some(source.into()),
        compression: compression.map(Into::into),
    };
    let config = e1000().file(CONFIG_D).unwrap();
    assert_eq!(config.contents.compression, None);
    let text = String::from_utf8(decode_contents(&config.contents).unwrap()).unwrap();
    assert!(
        text.contains("\"version\": 1") && text.contains("e1000"),
        "{text}"
    );
    let script = e1000().file("/etc/kmod-day1/kmod-day1-install.sh").unwrap();
    assert_eq!(script.contents.compression.as_deref(), Some("gzip"));
    assert!(decode_contents(&script.contents)
        .unwrap()
        .starts_with(b"#!/bin/sh"));
    assert_eq!(
        decode_contents(&res("data:;base64,aGk=", None)).unwrap(),
        b"hi"
    );
    assert_eq!(
        decode_contents(&res("data:text/plain,a%20b%0A", Some(""))).unwrap(),
        b"a b\n"
    );
    assert_eq!(decode_contents(&Resource::default()).unwrap(), b"");
    assert!(decode_contents(&res("https://example.com/x", None)).is_err());
    assert!(decode_contents(&res("data:,x", Some("xz"))).is_err());
    assert!(decode_contents(&res("data:;base64,aGk=", Some("gzip"))).is_err());
}

#[test]
fn policies_match_the_closest_directory_and_admins_override_defaults() {
    let p = policy(
        "spec:\n  nodeDisruptionPolicy:\n    files:\n    - path: /etc/kmod-day1\n      actions: [{type: Restart, restart: {serviceName: foo.service}}]\n    - path: /etc/containers/policy.json\n      actions: [{type: None}]\n",
    );
    let diff = |paths: &[&str]| ConfigDiff {
        files: paths.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    };
    let restart = Action::Restart {
        restart: policy::ServiceName {
            service_name: "foo.service".into(),
        },
    };
    let crio = Action::Reload {
        reload: policy::ServiceName {
            service_name: "crio.service".into(),
        },
    };
    assert_eq!(
        p.actions_for(&diff(&["/etc/kmod-day1/config.d/a.json"])),
        [restart]
    );
    assert_eq!(
        p.actions_for(&diff(&["/etc/containers/policy.json"])),
        [Action::None]
    );
    assert_eq!(
        p.actions_for(&diff(&[
            "/etc/containers/policy.json",
            "/etc/containers/registries.d/x.yaml"
        ])),
        [crio]
    );
    assert_eq!(p.actions_for(&diff(&["/etc/kmod-day1x"])), [Action::Reboot]);
    assert_eq!(p.actions_for(&ConfigDiff::default()), [Action::None]);
    assert!(drain_required(
        &p.actions_for(&diff(&["/etc/containers/registries.conf"]))
    ));
}
