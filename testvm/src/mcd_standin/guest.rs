// SPDX-License-Identifier: Apache-2.0
//! How the guest runs the stand-in: where the harness puts its inputs and the two units
//! (for the harness's guest overlay to install and enable).

use std::path::Path;

/// Where the harness puts `kd1-mcd` in the guest (`/usr/local` is `/var/usrlocal` on the
/// ostree node, so the path holds on both kinds of node).
pub const BINARY: &str = "/usr/local/libexec/kd1-mcd";
/// The new rendered MachineConfig the harness hands over (written on the disk before the
/// boot; `/var` survives an ostree deployment change).
pub const DESIRED_CONFIG: &str = "/var/lib/kd1-mcd/desired.yaml";
/// `MachineConfiguration/cluster` with the cluster's `spec.nodeDisruptionPolicy`.
pub const POLICY: &str = "/var/lib/kd1-mcd/machineconfiguration.yaml";

/// MCD's first run after a boot: completes the pending update (or degrades) before the
/// apply unit looks at the desired config.
pub const BOOT_CHECK_UNIT: &str = "[Unit]
Description=testvm: MCD stand-in, completes a pending MachineConfig update after its reboot
ConditionPathExists=/etc/machine-config-daemon/kd1-standin-node.json
After=local-fs.target
Before=kd1-mcd-apply.service

[Service]
Type=oneshot
ExecStart=/usr/local/libexec/kd1-mcd boot-check
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
";

/// MCD acting on a new desired config once the node is up (MCD runs when the kubelet
/// is, after `network-online.target`); before the final markers, which must not power the
/// node off while it reboots.
pub const APPLY_UNIT: &str = "[Unit]
Description=testvm: MCD stand-in, applies the rendered MachineConfig the harness handed over
ConditionPathExists=/var/lib/kd1-mcd/desired.yaml
Wants=network-online.target
After=network-online.target kd1-mcd-boot-check.service kmod-day1-pull.service kd1-mark-prepull.service
Before=kd1-mark-final.service

[Service]
Type=oneshot
ExecStart=/usr/local/libexec/kd1-mcd apply --new /var/lib/kd1-mcd/desired.yaml --policy /var/lib/kd1-mcd/machineconfiguration.yaml
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
";

/// The stand-in's unit names, as the two unit texts refer to each other.
pub const BOOT_CHECK_UNIT_NAME: &str = "kd1-mcd-boot-check.service";
/// See [`BOOT_CHECK_UNIT_NAME`].
pub const APPLY_UNIT_NAME: &str = "kd1-mcd-apply.service";

/// The stand-in on an ostree node: its binary and its inputs under the stateroot's `/var`
/// (`/usr/local` is `/var/usrlocal` there), its two units enabled; the apply unit also
/// requires and follows `after` (the user waits for the prestage before applying).
pub fn ostree_variant(
    binary: &Path,
    desired: &Path,
    policy: &Path,
    after: Option<&str>,
) -> crate::ostree_image::Variant {
    let apply = match after {
        Some(u) => APPLY_UNIT.replace(
            "After=network-online.target",
            &format!("Requires={u}\nAfter={u} network-online.target"),
        ),
        None => APPLY_UNIT.to_owned(),
    };
    let under_var = |p: &str| {
        p.trim_start_matches("/var/")
            .replace("usr/local/", "usrlocal/")
            .trim_start_matches('/')
            .to_owned()
    };
    crate::ostree_image::Variant {
        units: vec![
            (BOOT_CHECK_UNIT_NAME.into(), BOOT_CHECK_UNIT.into()),
            (APPLY_UNIT_NAME.into(), apply),
        ],
        var_files: vec![
            (under_var(BINARY), binary.to_owned()),
            (under_var(DESIRED_CONFIG), desired.to_owned()),
            (under_var(POLICY), policy.to_owned()),
        ],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_ostree_the_files_go_under_var() {
        let v = ostree_variant(Path::new("/b"), Path::new("/d"), Path::new("/p"), None);
        let paths: Vec<&str> = v.var_files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "usrlocal/libexec/kd1-mcd",
                "lib/kd1-mcd/desired.yaml",
                "lib/kd1-mcd/machineconfiguration.yaml"
            ]
        );
        assert!(APPLY_UNIT.contains(&format!(
            "After=network-online.target {BOOT_CHECK_UNIT_NAME}"
        )));
        let v = ostree_variant(
            Path::new("/b"),
            Path::new("/d"),
            Path::new("/p"),
            Some("k.service"),
        );
        assert!(v.units[1]
            .1
            .contains("Requires=k.service\nAfter=k.service network-online.target"));
    }

    #[test]
    fn the_units_name_the_paths_the_harness_writes() {
        for path in [BINARY, DESIRED_CONFIG, POLICY] {
            assert!(APPLY_UNIT.contains(path), "{path}");
        }
        assert!(BOOT_CHECK_UNIT.contains(&format!("ExecStart={BINARY} boot-check")));
        assert!(BOOT_CHECK_UNIT.contains(super::super::NODE_STATE));
    }
}
