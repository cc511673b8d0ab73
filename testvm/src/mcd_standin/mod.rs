// SPDX-License-Identifier: Apache-2.0
//! A stand-in of the Machine Config Daemon (MCD) for the VM tests: what MCD does when a new
//! rendered MachineConfig reaches a *running* node (openshift/machine-config-operator,
//! `pkg/daemon/update.go` `update()`, read at commit 7ff337a; learned from, not copied).
//!
//! The harness hands the guest the new rendered config (a file on the disk before the
//! boot, [`guest::DESIRED_CONFIG`], with the cluster's `MachineConfiguration/cluster`
//! beside it) and a unit runs `kd1-mcd apply` after `network-online.target`, as MCD acts
//! once the kubelet is up. Every boot runs `kd1-mcd boot-check` first, as MCD's first run
//! after a reboot completes an update ([`guest`] holds both units).
//!
//! Modelled, in MCD's order:
//! 1. nothing when the new config is the current one (name and content);
//! 2. the node state (`machineconfiguration.openshift.io/{currentConfig,desiredConfig,state}`
//!    annotations, here `/etc/machine-config-daemon/kd1-standin-node.json`) goes `Working`;
//! 3. `reconcilable`: changes MCD refuses on a running node fail with MCD's sentence and
//!    the state `Unreconcilable`: Ignition `kernelArguments`, `disks`, `filesystems`,
//!    `raid`, `directories`, new `links`, a file with `append`, a FIPS change, passwd
//!    groups or users other than core's SSH keys and password hash;
//! 4. the diff: files and units added, removed or changed in any field (entries compared
//!    as written, so a new data URL of the same bytes is a change, as in MCD);
//!    `osImageURL`, `kernelArguments`, `kernelType`, `extensions` always reboot;
//! 5. the actions from the disruption policy merged over MCO's defaults ([`policy`]);
//!    a drain (one log line: there are no pods) when they include Reboot, Drain or Special;
//! 6. `updateFiles`: every file of the new config written atomically with its mode
//!    (default 0644; `overwrite` is ignored, as MCD does), parents created; an original
//!    kept as `orig/<path>.mcdorig` when an `/etc` file has a pristine copy under `/usr/etc`
//!    (ostree), else a `noorig/<path>.mcdnoorig` stamp; added or changed units written
//!    (a unit `systemctl is-enabled` calls enabled is disabled first), drop-ins, masks as
//!    symlinks to `/dev/null`, then one `systemctl enable` and one `systemctl disable` of
//!    the lists, `systemctl preset` where `enabled` is unset; files, drop-ins and units no
//!    longer in the config restored from their original or deleted (a removed unit is
//!    preset first);
//! 7. `/etc/machine-config-daemon/currentconfig` written (MCD writes it before the
//!    reboot; the update counts as done only when the node state says so);
//! 8. Reboot: `systemctl reboot`, the state stays `Working`, and the next boot's
//!    `boot-check` validates the files and units on disk against currentconfig (MCD's
//!    `validateOnDiskState`) and sets currentConfig = desiredConfig, `Done` (or
//!    `Degraded` naming the mismatch); otherwise each action runs (`systemctl reload` /
//!    `restart <service>`, `daemon-reload`, `reload crio.service` for Special; None and
//!    Drain run nothing) and the state is `Done` at once.
//!
//! Left out: the API server (cordon, eviction, events, MachineConfigNode conditions),
//! the OS update itself (`rpm-ostree rebase`, extensions, kernel type, kernel arguments:
//! they only decide the reboot here), SSH keys and password hashes (never written), file
//! owners (`user`/`group`: files stay root's), SELinux labels, `isFileOwnedByRPMPkg`
//! (the pristine `/usr/etc` copy alone decides an original), the force file
//! (`/run/machine-config-daemon-force`), the certificate writer, the registries.conf
//! safety check that can skip the drain for Special, the legacy actions of a first boot
//! without the API, image mode (OCL), and retries after a failure (MCD degrades and retries).

mod disk;
pub mod guest;
mod policy;
mod rendered;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tracing::info;

use disk::{mask, remove_if_present, write_atomic};

pub use policy::{drain_required, Action, ClusterPolicies};
pub use rendered::{decode_contents, reconcile, ConfigDiff, RenderedConfig, Resource};

/// MCD's record of the config on disk.
pub const CURRENT_CONFIG: &str = "/etc/machine-config-daemon/currentconfig";
/// The node annotations MCD keeps on the Node object, kept on disk by the stand-in.
pub const NODE_STATE: &str = "/etc/machine-config-daemon/kd1-standin-node.json";
const ORIG_DIR: &str = "/etc/machine-config-daemon/orig";
const NOORIG_DIR: &str = "/etc/machine-config-daemon/noorig";
const SYSTEMD_DIR: &str = "/etc/systemd/system";

/// What a `systemctl` call answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit status 0.
    pub success: bool,
    /// Its standard output.
    pub stdout: String,
}

/// Runs `systemctl` (the host's in the guest; a recorder in tests).
pub trait Systemctl {
    /// Runs `systemctl <args>`; an error only when it could not run at all.
    fn run(&mut self, args: &[&str]) -> Result<CommandOutput>;
}

/// The real `systemctl` (or another program given by path).
#[derive(Debug, Clone)]
pub struct HostSystemctl {
    /// The program, `systemctl` by default.
    pub program: PathBuf,
}

impl Systemctl for HostSystemctl {
    fn run(&mut self, args: &[&str]) -> Result<CommandOutput> {
        let out = Command::new(&self.program)
            .args(args)
            .output()
            .with_context(|| format!("running {} {}", self.program.display(), args.join(" ")))?;
        Ok(CommandOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        })
    }
}

/// MCD's state annotation values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodePhase {
    /// The current config is applied.
    Done,
    /// An update is under way (a reboot pending, for a reboot action).
    Working,
    /// The update failed; `reason` says why.
    Degraded,
    /// The new config changes what MCD refuses to change on a running node.
    Unreconcilable,
}

/// The node's MCD annotations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeState {
    /// `machineconfiguration.openshift.io/currentConfig`.
    pub current_config: String,
    /// `machineconfiguration.openshift.io/desiredConfig`.
    pub desired_config: String,
    /// `machineconfiguration.openshift.io/state`.
    pub state: NodePhase,
    /// `machineconfiguration.openshift.io/reason`.
    #[serde(default)]
    pub reason: String,
}

/// How an update ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// The new config is the current one.
    NothingToDo,
    /// Applied without a reboot; these actions ran.
    Rebootless {
        /// The policy's actions, in the order they ran.
        actions: Vec<Action>,
        /// Whether the node was drained first.
        drained: bool,
    },
    /// Drained, written, `systemctl reboot` asked; the next boot-check completes it.
    Rebooting,
}

/// What the boot-time check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootCheck {
    /// No update was pending.
    NothingPending,
    /// The pending update is complete: the node now runs this config.
    Completed(String),
    /// The disk does not hold the pending config; the node is Degraded.
    Degraded(String),
}

/// The node the stand-in acts on: a root directory and a way to run systemctl.
pub struct Node<'a> {
    root: PathBuf,
    systemctl: &'a mut dyn Systemctl,
}

impl<'a> Node<'a> {
    /// A node whose `/` is `root`.
    pub fn new(root: impl Into<PathBuf>, systemctl: &'a mut dyn Systemctl) -> Self {
        Self {
            root: root.into(),
            systemctl,
        }
    }

    fn path(&self, node_path: &str) -> PathBuf {
        self.root.join(node_path.trim_start_matches('/'))
    }

    fn systemctl(&mut self, args: &[&str]) -> Result<CommandOutput> {
        info!("systemctl {}", args.join(" "));
        self.systemctl.run(args)
    }

    fn systemctl_ok(&mut self, args: &[&str]) -> Result<()> {
        if !self.systemctl(args)?.success {
            bail!("systemctl {} failed", args.join(" "));
        }
        Ok(())
    }

    /// The config recorded in `currentconfig`, or the empty config when there is none.
    pub fn current_config(&self) -> Result<RenderedConfig> {
        let p = self.path(CURRENT_CONFIG);
        match fs::read_to_string(&p) {
            Ok(text) => {
                RenderedConfig::parse(&text).with_context(|| format!("reading {}", p.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RenderedConfig::empty()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// The node's MCD annotations, if it has any.
    pub fn node_state(&self) -> Result<Option<NodeState>> {
        let p = self.path(NODE_STATE);
        match fs::read(&p) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b).with_context(|| format!("reading {}", p.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    fn set_state(
        &self,
        current: &str,
        desired: &str,
        state: NodePhase,
        reason: &str,
    ) -> Result<()> {
        let s = NodeState {
            current_config: current.into(),
            desired_config: desired.into(),
            state,
            reason: reason.into(),
        };
        info!("node state: {state:?} (current {current:?}, desired {desired:?}) {reason}");
        write_atomic(
            &self.path(NODE_STATE),
            &serde_json::to_vec_pretty(&s)?,
            0o644,
        )
    }

    /// Applies `new` over `current` as MCD's `update()` does (see the module's doc).
    pub fn update(
        &mut self,
        current: &RenderedConfig,
        new: &RenderedConfig,
        policies: &ClusterPolicies,
    ) -> Result<UpdateOutcome> {
        if current.name == new.name && current.raw == new.raw {
            info!("config {} is already current: nothing to do", new.name);
            return Ok(UpdateOutcome::NothingToDo);
        }
        self.set_state(&current.name, &new.name, NodePhase::Working, "")?;
        let diff = match reconcile(current, new) {
            Ok(d) => d,
            Err(e) => {
                self.set_state(
                    &current.name,
                    &new.name,
                    NodePhase::Unreconcilable,
                    &format!("{e:#}"),
                )?;
                return Err(e);
            }
        };
        info!(
            "starting update from {:?} to {}: files {:?}, units {:?}, os {}, kargs {}, kernelType {}, extensions {}",
            current.name, new.name, diff.files, diff.units, diff.os_update, diff.kargs, diff.kernel_type, diff.extensions
        );
        let actions = policies.actions_for(&diff);
        let drained = drain_required(&actions);
        info!("node disruption actions: {actions:?}; drain required: {drained}");
        if drained {
            info!("drain: node cordoned, evicting pods: there are no pods on this node (stand-in)");
        }
        let applied = self
            .write_config(current, new, &diff)
            .and_then(|()| {
                write_atomic(
                    &self.path(CURRENT_CONFIG),
                    &serde_json::to_vec(&new.raw)?,
                    0o644,
                )
            })
            .and_then(|()| self.run_actions(&actions, &new.name));
        if let Err(e) = applied {
            self.set_state(
                &current.name,
                &new.name,
                NodePhase::Degraded,
                &format!("{e:#}"),
            )?;
            return Err(e);
        }
        if actions == [Action::Reboot] {
            return Ok(UpdateOutcome::Rebooting);
        }
        self.set_state(&new.name, &new.name, NodePhase::Done, "")?;
        Ok(UpdateOutcome::Rebootless { actions, drained })
    }

    fn run_actions(&mut self, actions: &[Action], config: &str) -> Result<()> {
        for a in actions {
            match a {
                Action::Reboot => {
                    info!("rebooting node: node will reboot into config {config}");
                    self.systemctl_ok(&["reboot"])?;
                }
                Action::None => info!("node has desired config {config}, skipping reboot"),
                Action::Drain => {}
                Action::Reload { reload } => {
                    self.systemctl_ok(&["reload", &reload.service_name])?
                }
                Action::Restart { restart } => {
                    self.systemctl_ok(&["restart", &restart.service_name])?
                }
                Action::DaemonReload => self.systemctl_ok(&["daemon-reload"])?,
                Action::Special => self.systemctl_ok(&["reload", "crio.service"])?,
            }
        }
        Ok(())
    }

    /// `updateFiles`: every file of `new`, the added or changed units, then stale data.
    fn write_config(
        &mut self,
        old: &RenderedConfig,
        new: &RenderedConfig,
        diff: &ConfigDiff,
    ) -> Result<()> {
        for f in new.files() {
            let bytes = decode_contents(&f.contents)
                .with_context(|| format!("could not decode file {:?}", f.path))?;
            self.keep_original(&f.path)?;
            let mode = f.mode.unwrap_or(0o644);
            info!(
                "writing file {} ({} bytes, mode {mode:o})",
                f.path,
                bytes.len()
            );
            write_atomic(&self.path(&f.path), &bytes, mode)
                .with_context(|| format!("writing {}", f.path))?;
        }
        let changed: Vec<_> = diff
            .units
            .iter()
            .filter(|n| new.has_unit(n))
            .filter_map(|n| new.unit_or(old, n))
            .collect();
        self.write_units(&changed)?;
        self.delete_stale(old, new)
    }

    fn write_units(&mut self, units: &[rendered::UnitEntry]) -> Result<()> {
        let (mut enable, mut disable) = (Vec::new(), Vec::new());
        for u in units {
            let unit_path = format!("{SYSTEMD_DIR}/{}", u.name);
            for d in &u.dropins {
                let p = format!("{SYSTEMD_DIR}/{}.d/{}", u.name, d.name);
                match d.contents.as_deref() {
                    None | Some("") => remove_if_present(&self.path(&p))?,
                    Some(c) => {
                        info!("writing drop-in {p}");
                        write_atomic(&self.path(&p), c.as_bytes(), 0o644)?;
                    }
                }
            }
            let has_content = u.contents.as_deref().is_some_and(|c| !c.is_empty());
            if u.mask == Some(true) {
                info!("masking {}", u.name);
                mask(&self.path(&unit_path))?;
            } else if let Some(c) = u.contents.as_deref().filter(|c| !c.is_empty()) {
                let is_enabled = self.systemctl(&["is-enabled", &u.name])?;
                if is_enabled.success && is_enabled.stdout.trim() == "enabled" {
                    self.systemctl_ok(&["disable", &u.name])?;
                }
                info!("writing unit {unit_path}");
                write_atomic(&self.path(&unit_path), c.as_bytes(), 0o644)?;
            } else if u.mask == Some(false) {
                remove_if_present(&self.path(&unit_path))?;
            }
            match u.enabled {
                Some(on) if has_content || self.unit_exists(&u.name) => {
                    if on {
                        enable.push(u.name.as_str())
                    } else {
                        disable.push(u.name.as_str())
                    }
                }
                Some(_) => info!("unit {} has no contents: not enabled or disabled", u.name),
                None => {
                    let _ = self.systemctl(&["preset", &u.name])?;
                }
            }
        }
        if !enable.is_empty() {
            self.systemctl_ok(&[&["enable"], enable.as_slice()].concat())?;
        }
        if !disable.is_empty() {
            self.systemctl_ok(&[&["disable"], disable.as_slice()].concat())?;
        }
        Ok(())
    }

    fn unit_exists(&self, name: &str) -> bool {
        [
            "/etc/systemd/system",
            "/usr/lib/systemd/system",
            "/lib/systemd/system",
        ]
        .iter()
        .any(|d| self.path(&format!("{d}/{name}")).exists())
    }

    /// `deleteStaleData`: what the old config wrote and the new one does not.
    fn delete_stale(&mut self, old: &RenderedConfig, new: &RenderedConfig) -> Result<()> {
        for f in old.files().filter(|f| new.file(&f.path).is_none()) {
            self.restore_or_delete(&f.path)?;
        }
        for u in old.units() {
            let kept = new.units().find(|n| n.name == u.name);
            for d in &u.dropins {
                let in_new = kept
                    .as_ref()
                    .is_some_and(|k| k.dropins.iter().any(|n| n.name == d.name));
                if !in_new {
                    self.restore_or_delete(&format!("{SYSTEMD_DIR}/{}.d/{}", u.name, d.name))?;
                }
            }
            if kept.is_none() {
                let _ = self.systemctl(&["preset", &u.name])?;
                self.restore_or_delete(&format!("{SYSTEMD_DIR}/{}", u.name))?;
            }
        }
        Ok(())
    }

    fn restore_or_delete(&self, node_path: &str) -> Result<()> {
        let stamp = self.path(&format!("{NOORIG_DIR}{node_path}.mcdnoorig"));
        let orig = self.path(&format!("{ORIG_DIR}{node_path}.mcdorig"));
        let target = self.path(node_path);
        if stamp.exists() {
            fs::remove_file(&stamp).with_context(|| format!("deleting {}", stamp.display()))?;
        } else if orig.exists() {
            info!("restoring {node_path} from its original");
            fs::copy(&orig, &target).with_context(|| format!("restoring {node_path}"))?;
            fs::remove_file(&orig).with_context(|| format!("deleting {}", orig.display()))?;
            return Ok(());
        }
        info!("removing stale {node_path}");
        remove_if_present(&target)
    }

    /// `createOrigFile`: an `/etc` file with a pristine copy in `/usr/etc` is kept once as
    /// its original; any other path gets a no-original stamp.
    fn keep_original(&self, node_path: &str) -> Result<()> {
        let target = self.path(node_path);
        let pristine =
            node_path.starts_with("/etc/") && self.path(&format!("/usr{node_path}")).exists();
        let stamp = self.path(&format!("{NOORIG_DIR}{node_path}.mcdnoorig"));
        let orig = self.path(&format!("{ORIG_DIR}{node_path}.mcdorig"));
        if target.exists() && pristine {
            if !orig.exists() {
                fs::create_dir_all(orig.parent().expect("under a dir"))?;
                fs::copy(&target, &orig)
                    .with_context(|| format!("keeping the original of {node_path}"))?;
            }
            return Ok(());
        }
        if stamp.exists() {
            return Ok(());
        }
        remove_if_present(&orig)?;
        write_atomic(&stamp, b"", 0o644)
    }

    /// MCD's first run after a boot: completes a pending update when the disk holds it.
    pub fn boot_check(&mut self) -> Result<BootCheck> {
        let Some(state) = self.node_state()? else {
            return Ok(BootCheck::NothingPending);
        };
        if state.state != NodePhase::Working || state.current_config == state.desired_config {
            return Ok(BootCheck::NothingPending);
        }
        let on_disk = self.current_config()?;
        let problem = if on_disk.name != state.desired_config {
            Some(format!(
                "the config on disk is {:?}, not the desired {}",
                on_disk.name, state.desired_config
            ))
        } else {
            self.validate_on_disk(&on_disk)?
        };
        match problem {
            None => {
                self.set_state(
                    &state.desired_config,
                    &state.desired_config,
                    NodePhase::Done,
                    "",
                )?;
                info!("completed update to {}", state.desired_config);
                Ok(BootCheck::Completed(state.desired_config))
            }
            Some(p) => {
                let reason = format!(
                    "unexpected on-disk state validating against {}: {p}",
                    state.desired_config
                );
                self.set_state(
                    &state.current_config,
                    &state.desired_config,
                    NodePhase::Degraded,
                    &reason,
                )?;
                Ok(BootCheck::Degraded(reason))
            }
        }
    }

    /// `validateOnDiskState`: each file's contents and mode, each unit's and drop-in's contents.
    fn validate_on_disk(&self, config: &RenderedConfig) -> Result<Option<String>> {
        for f in config.files() {
            let want = decode_contents(&f.contents)?;
            let p = self.path(&f.path);
            let Ok(meta) = fs::metadata(&p) else {
                return Ok(Some(format!("file {} is missing", f.path)));
            };
            if fs::read(&p)? != want {
                return Ok(Some(format!("content mismatch for file {}", f.path)));
            }
            let mode = meta.permissions().mode() & 0o7777;
            if mode != f.mode.unwrap_or(0o644) {
                return Ok(Some(format!("mode mismatch for file {}: {mode:o}", f.path)));
            }
        }
        for u in config.units() {
            let mut expected: Vec<(String, &str)> = u
                .dropins
                .iter()
                .filter_map(|d| {
                    Some((
                        format!("{SYSTEMD_DIR}/{}.d/{}", u.name, d.name),
                        d.contents.as_deref()?,
                    ))
                })
                .collect();
            if u.mask != Some(true) {
                if let Some(c) = u.contents.as_deref() {
                    expected.push((format!("{SYSTEMD_DIR}/{}", u.name), c));
                }
            }
            for (path, want) in expected.into_iter().filter(|(_, c)| !c.is_empty()) {
                if fs::read(self.path(&path)).ok().as_deref() != Some(want.as_bytes()) {
                    return Ok(Some(format!("content mismatch for unit file {path}")));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
