// SPDX-License-Identifier: Apache-2.0
//! Applies an Ignition config to the VM's root filesystem offline with the real Ignition
//! (Debian's `ignition` 2.14): `fetch-offline` then `files`, with `--root`. Debian's build
//! always relabels for SELinux: a temporary `SELINUXTYPE=none` config and a no-op `setfiles`
//! keep it quiet, and both are removed afterwards. `"enabled": true` only writes a preset
//! file, so the units are then preset offline with `systemctl --root`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;
use tracing::info;

use crate::cmd::run;
use crate::dirs::write_file;

/// Where Debian installs the Ignition binary (not on PATH).
pub const IGNITION: &str = "/usr/lib/dracut/modules.d/30ignition/ignition";

/// Applies the Ignition config `config` (JSON text) to `root`, using `work` for state.
pub fn apply(config: &str, root: &Path, work: &Path) -> Result<()> {
    let ign = work.join("config.ign");
    write_file(&ign, config)?;
    run(Command::new("ignition-validate").arg(&ign)).context("validating the Ignition config")?;
    let fake_bin = work.join("ignition-bin");
    write_file(&fake_bin.join("setfiles"), "#!/bin/sh\nexit 0\n")?;
    chmod_x(&fake_bin.join("setfiles"))?;
    let selinux = root.join("etc/selinux/config");
    let had_selinux = selinux.exists();
    if !had_selinux {
        write_file(&selinux, "SELINUX=disabled\nSELINUXTYPE=none\n")?;
    }
    let result = run_stages(&ign, root, work, &fake_bin);
    if !had_selinux {
        let _ = std::fs::remove_file(&selinux);
        let _ = std::fs::remove_dir(root.join("etc/selinux"));
    }
    result?;
    let units = enabled_units(config)?;
    if !units.is_empty() {
        run(Command::new("systemctl")
            .arg(format!("--root={}", root.display()))
            .arg("preset")
            .args(&units))
        .with_context(|| format!("presetting {units:?} in the VM root"))?;
    }
    info!(
        "ignition: applied ({} enabled units: {})",
        units.len(),
        units.join(" ")
    );
    Ok(())
}

fn run_stages(ign: &Path, root: &Path, work: &Path, fake_bin: &Path) -> Result<()> {
    let path = format!(
        "{}:{}",
        fake_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for stage in ["fetch-offline", "files"] {
        let log = run(Command::new(IGNITION)
            .arg(format!("--stage={stage}"))
            .args(["--platform=file", "--log-to-stdout"])
            .arg(format!("--root={}", root.display()))
            .arg(format!(
                "--config-cache={}",
                work.join("ignition.json").display()
            ))
            .arg(format!(
                "--state-file={}",
                work.join("ignition.state").display()
            ))
            .arg(format!(
                "--neednet={}",
                work.join("ignition.neednet").display()
            ))
            .env("IGNITION_CONFIG_FILE", ign)
            .env("PATH", &path))
        .with_context(|| {
            format!("running Ignition's {stage} stage (is the ignition package installed?)")
        })?;
        write_file(&work.join(format!("ignition-{stage}.log")), &log.stdout)?;
    }
    Ok(())
}

fn chmod_x(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", p.display()))
}

/// The units an Ignition config marks `"enabled": true`.
pub fn enabled_units(config: &str) -> Result<Vec<String>> {
    let v: Value = serde_json::from_str(config).context("parsing the Ignition config")?;
    Ok(v["systemd"]["units"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|u| u["enabled"].as_bool() == Some(true))
                .filter_map(|u| u["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_enabled_units() {
        let c = r#"{"ignition":{"version":"3.2.0"},"systemd":{"units":[
            {"name":"a.service","enabled":true,"contents":"x"},
            {"name":"b.service","contents":"y"},
            {"name":"c.service","enabled":false}]}}"#;
        assert_eq!(enabled_units(c).unwrap(), ["a.service"]);
        assert!(enabled_units(r#"{"ignition":{"version":"3.2.0"}}"#)
            .unwrap()
            .is_empty());
    }
}
