// SPDX-License-Identifier: Apache-2.0
//! The cluster as a node sees it, changing between boots: what the user has applied so far
//! (the pool's rendered MachineConfig, `MachineConfiguration/cluster`, the prestage
//! DaemonSet's pod).
//!
//! The node starts with state 1 in place (`mcd_standin::guest::ostree_variant` and the pod
//! script). The later states are written on the disk before the first boot, under
//! [`DIR`]`/<n>/`; a boot with `kd1.cluster=<n>` on its kernel command line is a boot during
//! which the user applies state `n`: [`UNIT`] puts it where the MCD and kubelet stand-ins
//! read it, before either runs (both act only after `network-online.target`, on the running
//! node). A state stays until another is applied, as objects stay in the API server.
//!
//! `kd1.unrelated_reboot` on a boot's command line reboots the node once the prestage pod is
//! Ready and the pull has run ([`REBOOT_UNIT`]): an admin, a BMC, another operator.

use std::path::PathBuf;

/// Where the harness writes the later states (under the stateroot's `/var`).
pub const DIR: &str = "/var/lib/kd1-cluster";

/// The unit that applies `kd1.cluster=<n>`.
pub const UNIT_NAME: &str = "kd1-cluster-state.service";
/// See [`UNIT_NAME`].
pub const UNIT: &str = "[Unit]
Description=testvm: the user applies the cluster state kd1.cluster= names (MachineConfig, policy, prestage pod)
ConditionKernelCommandLine=kd1.cluster
After=local-fs.target
Before=kd1-mcd-boot-check.service kd1-mcd-apply.service kd1-kubelet.service

[Service]
Type=oneshot
ExecStart=/usr/local/libexec/kd1-cluster-state
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
";

/// The script [`UNIT`] runs.
pub const SCRIPT_NAME: &str = "kd1-cluster-state";
/// See [`SCRIPT_NAME`].
pub const SCRIPT: &str = r#"#!/bin/bash
# testvm: put the cluster state kd1.cluster=N names where the stand-ins read it.
set -euo pipefail
n=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^kd1\.cluster=//p')
src=/var/lib/kd1-cluster/$n
[ -n "$n" ] && [ -d "$src" ] || { echo "kd1-cluster-state: no state '$n' under /var/lib/kd1-cluster" >&2; exit 1; }
install -D -m 644 "$src/desired.yaml" /var/lib/kd1-mcd/desired.yaml
install -D -m 644 "$src/machineconfiguration.yaml" /var/lib/kd1-mcd/machineconfiguration.yaml
if [ -e "$src/pod" ]; then
    install -D -m 755 "$src/pod" /usr/local/libexec/kd1-kubelet-pod
fi
echo "KD1-MARK cluster.state=$n" > /dev/kmsg
"#;

/// The unrelated reboot.
pub const REBOOT_UNIT_NAME: &str = "kd1-unrelated-reboot.service";
/// See [`REBOOT_UNIT_NAME`]; before the final markers, which then see the reboot pending.
pub const REBOOT_UNIT: &str = "[Unit]
Description=testvm: an unrelated reboot once the prestage pod is Ready (kd1.unrelated_reboot)
ConditionKernelCommandLine=kd1.unrelated_reboot
After=kd1-kubelet.service kmod-day1-pull.service kd1-mark-prepull.service kd1-mcd-apply.service
Before=kd1-mark-final.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo \"KD1-MARK unrelated_reboot=1\" > /dev/kmsg; systemctl reboot'

[Install]
WantedBy=multi-user.target
";

/// One state after the first: the files the harness wrote for it (sources on this machine).
#[derive(Debug, Clone)]
pub struct ClusterState {
    /// The rendered MachineConfig.
    pub machine_config: PathBuf,
    /// `MachineConfiguration/cluster`.
    pub policy: PathBuf,
    /// The prestage pod's script (`kubelet_standin::pod_script`), when there is one.
    pub pod: Option<PathBuf>,
}

/// What state `n` (2, 3, …) puts under the stateroot's `/var`: (path there, source).
pub fn var_files(n: usize, s: &ClusterState) -> Vec<(String, PathBuf)> {
    let dir = format!("{}/{n}", DIR.trim_start_matches("/var/"));
    let mut files = vec![
        (format!("{dir}/desired.yaml"), s.machine_config.clone()),
        (format!("{dir}/machineconfiguration.yaml"), s.policy.clone()),
    ];
    if let Some(p) = &s.pod {
        files.push((format!("{dir}/pod"), p.clone()));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcd_standin::guest;

    #[test]
    fn the_script_writes_what_the_stand_ins_read() {
        assert!(SCRIPT.contains(&format!(" {}\n", guest::DESIRED_CONFIG)));
        assert!(SCRIPT.contains(&format!(" {}\n", guest::POLICY)));
        assert!(SCRIPT.contains(&format!(" {}\n", crate::kubelet_standin::SCRIPT)));
        assert!(SCRIPT.contains(DIR));
        assert!(UNIT.contains(&format!("ExecStart=/usr/local/libexec/{SCRIPT_NAME}")));
        for u in [
            guest::BOOT_CHECK_UNIT_NAME,
            guest::APPLY_UNIT_NAME,
            crate::kubelet_standin::UNIT_NAME,
        ] {
            assert!(UNIT.contains(u), "{u}");
            assert!(
                REBOOT_UNIT.contains(u) || u == guest::BOOT_CHECK_UNIT_NAME,
                "{u}"
            );
        }
    }

    #[test]
    fn states_go_under_var() {
        let s = ClusterState {
            machine_config: "/m".into(),
            policy: "/p".into(),
            pod: Some("/k".into()),
        };
        let paths: Vec<String> = var_files(3, &s).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "lib/kd1-cluster/3/desired.yaml",
                "lib/kd1-cluster/3/machineconfiguration.yaml",
                "lib/kd1-cluster/3/pod"
            ]
        );
    }

    #[test]
    fn the_script_is_valid_bash() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        std::fs::write(&p, SCRIPT).unwrap();
        let out = std::process::Command::new("bash")
            .arg("-n")
            .arg(&p)
            .output()
            .unwrap();
        assert!(out.status.success());
    }
}
