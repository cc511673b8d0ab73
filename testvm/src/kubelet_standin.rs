// SPDX-License-Identifier: Apache-2.0
//! A stand-in of the kubelet for the VM tests: runs the pod of a DaemonSet (as `mcgen --output
//! prestage` writes it) on the node with podman, and reports when it is Ready.
//!
//! The harness turns the objects into a script ([`pod_script`]) the guest runs from a unit
//! ([`UNIT`]), as the kubelet would on the node the DaemonSet schedules a pod to:
//! - the ConfigMap volumes written as files (`defaultMode`), the hostPath volumes bind-mounted,
//!   `mountPropagation: HostToContainer` as `rslave`, `readOnly` as `ro`;
//! - the image pulled unless present (`imagePullPolicy: IfNotPresent`), into a storage of its
//!   own (CRI-O's on a node);
//! - the init containers run in order, each to completion; a failure stops the pod there;
//! - then every container, detached: `command` as the entrypoint, `args` after the image, `env`
//!   (values, and the `status.podIP` / `spec.nodeName` field references), `privileged`,
//!   `readOnlyRootFilesystem`, `hostNetwork`;
//! - the readiness probes (`exec`) run as `podman exec` after `initialDelaySeconds`, every
//!   `periodSeconds`, each bounded by `timeoutSeconds`; when all pass the pod is Ready: a
//!   `KD1-MARK kubelet.ready=<seconds>` line on the kernel log and the script exits 0, which
//!   is when the unit is active (what `oc rollout status` waits for).
//!
//! Left out: the API server, scheduling (nodeSelector, tolerations: the pod runs on this
//! node), the service account and SCC admission, resource requests, liveness probes and
//! restarts, `hostPID`, SELinux labels, and the pod's own network namespace (the DaemonSet
//! uses the host's). Anything else in the pod spec is an error, never ignored.

use std::fmt::Write as _;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

/// The unit that runs the pod script; active once the pod is Ready.
pub const UNIT_NAME: &str = "kd1-kubelet.service";
/// Where the harness puts the pod script.
pub const SCRIPT: &str = "/usr/local/libexec/kd1-kubelet-pod";

/// The unit: after the network, as the kubelet; bounded, so a pod that never gets Ready
/// fails the unit (and whatever requires it) instead of hanging the boot.
pub const UNIT: &str = "[Unit]
Description=testvm: kubelet stand-in, runs the prestage DaemonSet's pod until it is Ready
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/libexec/kd1-kubelet-pod
TimeoutStartSec=600
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
";

const STORAGE: &str = "--root /var/lib/kd1-kubelet/storage --runroot /run/kd1-kubelet";
const VOLUMES: &str = "/var/lib/kd1-kubelet/volumes";

/// The pod script of the one DaemonSet in `objects` (a YAML stream), with its ConfigMaps.
pub fn pod_script(objects: &str) -> Result<String> {
    let mut daemonset = None;
    let mut config_maps = vec![];
    for doc in serde_norway::Deserializer::from_str(objects) {
        let v = Value::deserialize(doc).context("parsing the prestage objects (YAML)")?;
        match v["kind"].as_str() {
            Some("DaemonSet") if daemonset.is_some() => bail!("more than one DaemonSet"),
            Some("DaemonSet") => daemonset = Some(v),
            Some("ConfigMap") => config_maps.push(v),
            _ => {}
        }
    }
    let ds = daemonset.ok_or_else(|| anyhow!("the prestage objects hold no DaemonSet"))?;
    let name = ds["metadata"]["name"].as_str().unwrap_or("pod").to_owned();
    let spec = &ds["spec"]["template"]["spec"];
    check_known(
        spec,
        &[
            "containers",
            "initContainers",
            "volumes",
            "hostNetwork",
            "nodeSelector",
            "serviceAccountName",
            "tolerations",
        ],
        "the pod spec",
    )?;
    if spec["hostNetwork"] != Value::Bool(true) {
        bail!("the stand-in runs host-network pods only (hostNetwork: true)");
    }
    let mut s = format!(
        "#!/bin/bash
# testvm: kubelet stand-in, the pod of DaemonSet {name} (kubelet_standin.rs wrote this).
set -u
P=\"podman {STORAGE}\"
mark() {{ printf 'KD1-MARK kubelet.%s=%s\\n' \"$1\" \"$2\" > /dev/kmsg; }}
fail() {{ echo \"kubelet stand-in: $*\" >&2; mark error \"$*\"; exit 1; }}
t0=$(date +%s)
# The image, unless present; retried with the kubelet's back-off (10 s, doubling): a route
# may come after network-online.target.
pull() {{
    local delay=10
    until $P image exists \"$1\" || $P pull --quiet \"$1\" >/dev/null; do
        [ $delay -le 160 ] || fail \"pulling $1\"
        mark pull_backoff \"$1 $delay\"
        sleep $delay
        delay=$((delay * 2))
    done
}}
"
    );
    let mut mounts: Vec<(String, String)> = vec![];
    for vol in list(&spec["volumes"]) {
        let vname = str_field(vol, "name")?;
        if let Some(h) = vol.get("hostPath") {
            mounts.push((vname.to_owned(), str_field(h, "path")?.to_owned()));
        } else if let Some(cm) = vol.get("configMap") {
            let cm_name = str_field(cm, "name")?;
            let mode = cm["defaultMode"].as_u64().unwrap_or(0o644);
            let data = config_maps
                .iter()
                .find(|c| c["metadata"]["name"] == cm_name)
                .map(|c| c["data"].clone())
                .ok_or_else(|| anyhow!("volume {vname}: no ConfigMap {cm_name}"))?;
            let dir = format!("{VOLUMES}/{vname}");
            let _ = writeln!(s, "rm -rf {dir}; mkdir -p {dir}");
            for (key, text) in data.as_object().into_iter().flatten() {
                let text = text
                    .as_str()
                    .ok_or_else(|| anyhow!("{cm_name}/{key}: not text"))?;
                let b64 = base64::engine::general_purpose::STANDARD.encode(text);
                let _ = writeln!(
                    s,
                    "echo {b64} | base64 -d > {dir}/{key} && chmod {mode:o} {dir}/{key}"
                );
            }
            mounts.push((vname.to_owned(), dir));
        } else {
            bail!("volume {vname}: only hostPath and configMap volumes are stood in for");
        }
    }
    let inits = list(&spec["initContainers"]);
    let containers = list(&spec["containers"]);
    let mut images: Vec<&str> = vec![];
    for c in inits.iter().chain(&containers) {
        let image = str_field(c, "image")?;
        if !images.contains(&image) {
            images.push(image);
        }
    }
    for image in &images {
        let _ = writeln!(s, "pull {image}");
    }
    // status.podIP of a host-network pod: the node's address (known once it has a route).
    let _ = writeln!(
        s,
        "pod_ip=$(ip -4 -o route get 10.0.2.2 | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p')\n$P rm --all --force >/dev/null 2>&1"
    );
    for c in &inits {
        let cname = str_field(c, "name")?;
        let run = container_run(c, &mounts, "--rm")?;
        let _ = writeln!(
            s,
            "$P {run} || fail \"init container {cname} failed\"\nmark init.{cname} done"
        );
    }
    let mut probes = vec![];
    for c in &containers {
        let cname = str_field(c, "name")?;
        let run = container_run(c, &mounts, "--detach")?;
        let _ = writeln!(
            s,
            "$P {run} >/dev/null || fail \"container {cname} did not start\""
        );
        if let Some(p) = c.get("readinessProbe") {
            check_known(
                p,
                &[
                    "exec",
                    "failureThreshold",
                    "initialDelaySeconds",
                    "periodSeconds",
                    "timeoutSeconds",
                ],
                &format!("container {cname}'s readinessProbe"),
            )?;
            let cmd = strings(&p["exec"]["command"])
                .with_context(|| format!("container {cname}: readinessProbe.exec.command"))?;
            probes.push((
                cname.to_owned(),
                cmd,
                p["initialDelaySeconds"].as_u64().unwrap_or(0),
                p["periodSeconds"].as_u64().unwrap_or(10),
                p["timeoutSeconds"].as_u64().unwrap_or(1),
            ));
        }
    }
    let delay = probes.iter().map(|p| p.2).max().unwrap_or(0);
    let period = probes.iter().map(|p| p.3).min().unwrap_or(10);
    let _ = writeln!(s, "sleep {delay}\nwhile :; do\n    ready=1");
    for (cname, cmd, _, _, timeout) in &probes {
        let _ = writeln!(
            s,
            "    timeout {timeout} $P exec {cname} {} >/dev/null 2>&1 || ready=0",
            quote_all(cmd)
        );
    }
    let _ = writeln!(
        s,
        "    if [ $ready = 1 ]; then mark ready $(( $(date +%s) - t0 )); exit 0; fi\n    sleep {period}\ndone"
    );
    Ok(s)
}

/// `run --name … IMAGE ARGS` for container `c`.
fn container_run(c: &Value, mounts: &[(String, String)], mode: &str) -> Result<String> {
    let cname = str_field(c, "name")?;
    check_known(
        c,
        &[
            "name",
            "image",
            "imagePullPolicy",
            "command",
            "args",
            "env",
            "volumeMounts",
            "securityContext",
            "resources",
            "readinessProbe",
            "livenessProbe",
        ],
        &format!("container {cname}"),
    )?;
    let mut run = format!("run {mode} --name {cname} --network host");
    let sc = &c["securityContext"];
    check_known(
        sc,
        &["privileged", "readOnlyRootFilesystem", "runAsUser"],
        &format!("container {cname}'s securityContext"),
    )?;
    if sc["privileged"] == Value::Bool(true) {
        run.push_str(" --privileged");
    }
    if sc["readOnlyRootFilesystem"] == Value::Bool(true) {
        run.push_str(" --read-only");
    }
    if let Some(u) = sc["runAsUser"].as_u64() {
        let _ = write!(run, " --user {u}");
    }
    for m in list(&c["volumeMounts"]) {
        let vname = str_field(m, "name")?;
        let host = &mounts
            .iter()
            .find(|(n, _)| n == vname)
            .ok_or_else(|| anyhow!("container {cname}: no volume {vname}"))?
            .1;
        let mut opts = vec![];
        if m["readOnly"] == Value::Bool(true) {
            opts.push("ro");
        }
        match m["mountPropagation"].as_str() {
            None | Some("None") => {}
            Some("HostToContainer") => opts.push("rslave"),
            Some("Bidirectional") => opts.push("rshared"),
            Some(o) => bail!("container {cname}: mountPropagation {o}"),
        }
        let opts = if opts.is_empty() {
            String::new()
        } else {
            format!(":{}", opts.join(","))
        };
        let _ = write!(run, " -v {host}:{}{opts}", str_field(m, "mountPath")?);
    }
    for e in list(&c["env"]) {
        let ename = str_field(e, "name")?;
        let value = match (
            e.get("value"),
            e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Some(v), _) => quote(v.as_str().unwrap_or_default()),
            (None, Some("status.podIP")) => "\"$pod_ip\"".into(),
            (None, Some("spec.nodeName")) => "\"$(hostname)\"".into(),
            _ => bail!("container {cname}: env {ename} is neither a value nor a known fieldRef"),
        };
        let _ = write!(run, " -e {ename}={value}");
    }
    let command = strings(&c["command"])?;
    if !command.is_empty() {
        let json = serde_json::to_string(&command)?;
        let _ = write!(run, " --entrypoint {}", quote(&json));
    }
    let _ = write!(run, " {}", str_field(c, "image")?);
    let args = strings(&c["args"])?;
    if !args.is_empty() {
        let _ = write!(run, " {}", quote_all(&args));
    }
    Ok(run)
}

fn check_known(v: &Value, known: &[&str], what: &str) -> Result<()> {
    for k in v.as_object().into_iter().flatten().map(|(k, _)| k) {
        if !known.contains(&k.as_str()) {
            bail!("{what}: {k} is not stood in for");
        }
    }
    Ok(())
}

fn list(v: &Value) -> Vec<&Value> {
    v.as_array().map(|a| a.iter().collect()).unwrap_or_default()
}

fn str_field<'a>(v: &'a Value, k: &str) -> Result<&'a str> {
    v[k].as_str()
        .ok_or_else(|| anyhow!("{k} missing or not a string in {v}"))
}

fn strings(v: &Value) -> Result<Vec<String>> {
    list(v)
        .into_iter()
        .map(|s| {
            s.as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("{s} is not a string"))
        })
        .collect()
}

/// One shell word.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn quote_all(v: &[String]) -> String {
    v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN: &str = include_str!("../../mcgen/tests/golden/e1000.prestage.yaml");

    #[test]
    fn the_prestage_daemonset_becomes_podman_runs() {
        let s = pod_script(GOLDEN).unwrap();
        let image = "quay.io/kmod-day1/node@sha256:4e1f5cbd3cf2a8b2f3bd0f9a6c7e2d1b0a9f8e7d6c5b4a3928170615f4e3d2c1";
        assert!(s.contains(&format!("\npull {image}\n")));
        assert!(s.contains("until $P image exists \"$1\" || $P pull --quiet \"$1\""));
        // The init container first, to completion, with the ConfigMap and the host's / …
        let init = s.find("run --rm --name prestage --network host --privileged --read-only --user 0 -v /:/host:rslave -v /var/lib/kd1-kubelet/volumes/prestage:/etc/kmod-day1-prestage:ro -e KMOD_DAY1_FROM='/usr/bin' --entrypoint '[\"/usr/libexec/kmod-day1/busybox\",\"sh\",\"/etc/kmod-day1-prestage/kmod-day1-agent.sh\",\"prestage\",").unwrap();
        // … then the containers, detached; the metrics one gets the node's address.
        let agent = s.find("run --detach --name agent").unwrap();
        assert!(init < agent);
        assert!(s.contains("-v /:/host:ro,rslave"));
        assert!(s.contains("-e KMOD_DAY1_POD_IP=\"$pod_ip\""));
        // The ConfigMap's files, with its mode.
        assert!(s.contains("/var/lib/kd1-kubelet/volumes/prestage/kmod-day1-agent.sh && chmod 444"));
        // Readiness: the exec probe, after its delay, every period, bounded.
        assert!(s.contains("sleep 5\n"));
        assert!(s.contains("timeout 20 $P exec agent '/usr/libexec/kmod-day1/busybox' 'chroot' '/host' '/usr/local/bin/kmod-day1-pull' '--check-stored'"));
        assert!(s.contains("sleep 30\n"));
    }

    #[test]
    fn what_is_not_stood_in_for_is_an_error() {
        let e = pod_script(&GOLDEN.replace("hostNetwork: true", "hostNetwork: false"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("host-network"), "{e}");
        let e = pod_script(
            &GOLDEN.replace("      volumes:\n", "      hostPID: true\n      volumes:\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("hostPID is not stood in for"), "{e}");
        let e = pod_script(&GOLDEN.replace(
            "mountPropagation: HostToContainer",
            "mountPropagation: Sideways",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("mountPropagation Sideways"), "{e}");
        assert!(pod_script("kind: Namespace\n").is_err());
    }

    #[test]
    fn the_script_is_valid_bash() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pod");
        std::fs::write(&p, pod_script(GOLDEN).unwrap()).unwrap();
        let out = std::process::Command::new("bash")
            .arg("-n")
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
