// SPDX-License-Identifier: Apache-2.0
//! `kd1-mcd`: the Machine Config Daemon stand-in the VM tests run inside the guest (see
//! `kmod_day1_testvm::mcd_standin`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing::error;

use kmod_day1_testvm::mcd_standin::{
    BootCheck, ClusterPolicies, HostSystemctl, Node, RenderedConfig, UpdateOutcome,
};

/// Applies a new rendered MachineConfig to this running node as the Machine Config Daemon
/// does (diff, disruption policy, drain, files and units, reboot or rebootless actions), and
/// completes a pending update at boot. A test stand-in, not MCD.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// The node's root directory.
    #[arg(long, default_value = "/", global = true)]
    root: PathBuf,
    /// The systemctl program to run.
    #[arg(long, default_value = "systemctl", global = true)]
    systemctl: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Applies --new over the current config (--current, else
    /// <root>/etc/machine-config-daemon/currentconfig, else the empty config).
    Apply {
        /// The new rendered MachineConfig (YAML or JSON).
        #[arg(long)]
        new: PathBuf,
        /// The node's current rendered MachineConfig.
        #[arg(long)]
        current: Option<PathBuf>,
        /// MachineConfiguration/cluster with spec.nodeDisruptionPolicy (as `mcgen --output
        /// disruption-policy` writes it); without it, MCO's defaults alone.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// At boot: completes a pending update when the disk holds it, or marks the node Degraded.
    BootCheck,
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .init();
    if let Err(e) = run(Cli::parse()) {
        error!("{e:#}");
        std::process::exit(1);
    }
}

fn read(p: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut systemctl = HostSystemctl {
        program: cli.systemctl,
    };
    let mut node = Node::new(cli.root, &mut systemctl);
    match cli.command {
        Cmd::Apply {
            new,
            current,
            policy,
        } => {
            let new = RenderedConfig::parse(&read(&new)?)
                .with_context(|| format!("reading the new config {}", new.display()))?;
            let current = match current {
                Some(p) => RenderedConfig::parse(&read(&p)?)
                    .with_context(|| format!("reading the current config {}", p.display()))?,
                None => node.current_config()?,
            };
            let policies = match policy {
                Some(p) => ClusterPolicies::from_machine_configuration(&read(&p)?)
                    .with_context(|| format!("reading the disruption policy {}", p.display()))?,
                None => ClusterPolicies::mco_defaults(),
            };
            let outcome = node.update(&current, &new, &policies)?;
            let line = match outcome {
                UpdateOutcome::NothingToDo => "nothing to do".to_owned(),
                UpdateOutcome::Rebooting => format!("rebooting into {}", new.name),
                UpdateOutcome::Rebootless { actions, drained } => {
                    format!(
                        "applied {} without a reboot (drained: {drained}; actions {actions:?})",
                        new.name
                    )
                }
            };
            println!("KD1-MCD {line}");
        }
        Cmd::BootCheck => match node.boot_check()? {
            BootCheck::NothingPending => println!("KD1-MCD no update pending"),
            BootCheck::Completed(c) => println!("KD1-MCD update to {c} complete"),
            BootCheck::Degraded(r) => anyhow::bail!("node degraded: {r}"),
        },
    }
    Ok(())
}
