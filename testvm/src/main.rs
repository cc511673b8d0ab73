// SPDX-License-Identifier: Apache-2.0
//! `kmod-day1-testvm`: the end-to-end harness (see `testvm/README.md`).
use std::io::IsTerminal;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tracing::error;

use kmod_day1_testvm::{dirs::Dirs, modules_build, ostree_image, scenarios, vm_image};

/// End-to-end tests of kmod-day1 in a QEMU VM (TCG), with a real registry and the real
/// Ignition. Runs as root. Cache: /var/cache/kmod-day1-testvm or $KMOD_DAY1_VM_CACHE.
/// Nodes run in 2 lanes side by side, each with its own registry ($KMOD_DAY1_VM_LANES=1:
/// one node at a time); `bench` boots alone.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Builds (or finds in the cache) the VM image.
    Image,
    /// Builds (or finds in the cache) the test modules for the VM's kernels.
    Modules,
    /// Builds (or finds in the cache) the ostree node's tools root and initramfs images.
    OstreeImage,
    /// Runs every scenario and prints the timings.
    All,
    /// Runs the named scenarios (first-apply, cached-boot, kernel-upgrade, several-modules,
    /// broken-module, journal-priorities, modprobe-config, no-in-tree-driver-initrd,
    /// no-in-tree-driver-bundle, registry-down, nic-not-bound, power-cut, policy-reject,
    /// sig-enforced, ostree-first-apply, ostree-cached-boot, ostree-staged-upgrade,
    /// ostree-rollback, ostree-upgrade-no-image, overlay-initrd, initramfs-stage,
    /// mco-rollout-prestaged, kmod-update, mco-rollout, node-image-missing); scenarios of one
    /// node share its boots.
    Scenario {
        /// Scenario names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Boots what the timings need and prints them.
    Bench,
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .without_time()
        .with_target(false)
        .init();
    if let Err(e) = run(Cli::parse()) {
        error!("{e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let started = Instant::now();
    let dirs = Dirs::from_env()?;
    let (names, with_bench): (Vec<&str>, bool) = match &cli.command {
        Cmd::Image => {
            let img = vm_image::ensure(&dirs)?;
            println!("{}", serde_json::to_string_pretty(&img)?);
            return Ok(());
        }
        Cmd::Modules => {
            let img = vm_image::ensure(&dirs)?;
            let m = modules_build::ensure(&dirs, &img)?;
            for k in m.values() {
                modules_build::check(k)?;
            }
            println!("{}", serde_json::to_string_pretty(&m)?);
            return Ok(());
        }
        Cmd::OstreeImage => {
            let img = vm_image::ensure(&dirs)?;
            let t = ostree_image::ensure_tools(&dirs, &img)?;
            println!("{}", serde_json::to_string_pretty(&t)?);
            return Ok(());
        }
        Cmd::All => (scenarios::NAMES.to_vec(), true),
        Cmd::Scenario { names } => (names.iter().map(String::as_str).collect(), false),
        Cmd::Bench => (vec![], true),
    };
    let report_path = dirs.work.join("report.txt");
    let outcome = scenarios::run(dirs, &names, with_bench)?;
    let setup: Vec<String> = outcome
        .setup_secs
        .iter()
        .map(|(k, s)| format!("{k} {s:.0} s"))
        .collect();
    let mut text = String::new();
    for r in &outcome.reports {
        text.push_str(&r.render());
    }
    if with_bench {
        text.push_str("=== timings\n");
        text.push_str(&outcome.bench);
    }
    text.push_str(&format!("setup: {}\n", setup.join(", ")));
    text.push_str(&format!(
        "total wall time: {:.0} s\n",
        started.elapsed().as_secs_f64()
    ));
    println!("\n{text}");
    std::fs::write(&report_path, &text)
        .with_context(|| format!("writing {}", report_path.display()))?;
    let failed: Vec<&str> = outcome
        .reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.scenario.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} scenarios failed: {}",
            failed.len(),
            outcome.reports.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn scenario_help_names_every_scenario() {
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("scenario")
            .expect("a scenario subcommand")
            .render_long_help()
            .to_string()
            .replace('\n', " ");
        for name in kmod_day1_testvm::scenarios::NAMES {
            let listed = help
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .any(|w| w == *name);
            assert!(listed, "`testvm scenario --help` does not name {name}");
        }
    }
}
