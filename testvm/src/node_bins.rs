// SPDX-License-Identifier: Apache-2.0
//! The project's binaries the VM tests use: the static node binaries (`kmod-day1-load`,
//! `kmod-day1-pull`, as `make static` builds them) and `mcgen`. Each must build and run: the
//! VM tests prove the project's own flow (mcgen's Ignition, the real binaries), so a part
//! that fails is an error naming it, never a stand-in.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use tracing::info;

use crate::cmd::run;

/// Target of the static node binaries (see the Makefile's `static`).
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Environment variable: use the binaries already built instead of running cargo (quick
/// iterations on the harness itself).
pub const NO_BUILD_ENV: &str = "KMOD_DAY1_VM_NO_BUILD";

/// The built binaries.
#[derive(Debug, Clone)]
pub struct Tools {
    /// Directory holding `kmod-day1-load` and `kmod-day1-pull` (static).
    pub node_bins: PathBuf,
    /// The `mcgen` executable.
    pub mcgen: PathBuf,
    /// `kmod-day1-node-image` (mcgen's package): writes the node image as an OCI layout.
    pub node_image: PathBuf,
    /// The MCD stand-in the guest runs (`mcd_standin`), built for this machine: the guest
    /// is the same Debian release, so its glibc is the same.
    pub kd1_mcd: PathBuf,
}

impl Tools {
    /// Builds the node binaries and mcgen from the checkout at `repo` (or, with
    /// `KMOD_DAY1_VM_NO_BUILD`, finds them built) and checks that each runs.
    pub fn build(repo: &Path) -> Result<Self> {
        let node_bins = build_node_bins(repo)
            .context("the static node binaries kmod-day1-load and kmod-day1-pull are needed for the VM tests")?;
        let mcgen = build_mcgen(repo)
            .context("mcgen is needed for the VM tests: it writes every node's Ignition config")?;
        let node_image = repo.join("target/release/kmod-day1-node-image");
        is_real_binary(&node_image)?;
        let kd1_mcd = build_kd1_mcd(repo).context(
            "kd1-mcd is needed for the VM tests: it applies MachineConfigs in the guest",
        )?;
        Ok(Self {
            node_bins,
            mcgen,
            node_image,
            kd1_mcd,
        })
    }
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn no_build() -> bool {
    std::env::var_os(NO_BUILD_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

fn build_node_bins(repo: &Path) -> Result<PathBuf> {
    if !no_build() {
        build_node_bins_with_cargo(repo)?;
    }
    let dir = repo.join("target").join(STATIC_TARGET).join("release");
    for b in ["kmod-day1-load", "kmod-day1-pull"] {
        is_real_binary(&dir.join(b))?;
    }
    Ok(dir)
}

fn build_node_bins_with_cargo(repo: &Path) -> Result<()> {
    info!("building the static node binaries (kmod-day1-load, kmod-day1-pull)");
    run(cargo()
        .current_dir(repo)
        .args(["build", "--release", "--target", STATIC_TARGET])
        .args(["-p", "kmod-day1-load", "-p", "kmod-day1-pull"])
        .env("RUSTFLAGS", "-C target-feature=+crt-static"))
    .context("building the static node binaries")?;
    Ok(())
}

fn build_mcgen(repo: &Path) -> Result<PathBuf> {
    if !no_build() {
        info!("building mcgen");
        run(cargo()
            .current_dir(repo)
            .args(["build", "--release", "-p", "mcgen"]))
        .context("building mcgen")?;
    }
    let p = repo.join("target/release/mcgen");
    is_real_binary(&p)?;
    Ok(p)
}

/// A placeholder `fn main() {}` prints nothing for `--help`.
fn build_kd1_mcd(repo: &Path) -> Result<PathBuf> {
    if !no_build() {
        run(cargo().current_dir(repo).args([
            "build",
            "--release",
            "-p",
            "kmod-day1-testvm",
            "--bin",
            "kd1-mcd",
        ]))
        .context("building kd1-mcd")?;
    }
    let p = repo.join("target/release/kd1-mcd");
    is_real_binary(&p)?;
    Ok(p)
}

fn is_real_binary(p: &Path) -> Result<()> {
    let out = Command::new(p)
        .arg("--help")
        .output()
        .with_context(|| format!("running {} --help", p.display()))?;
    if out.stdout.len() + out.stderr.len() < 40 {
        bail!("{} prints no help: still a placeholder", p.display());
    }
    Ok(())
}
