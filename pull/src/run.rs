// SPDX-License-Identifier: Apache-2.0
//! One run of kmod-day1-pull, as typed phases that pass values: the node facts, then
//! [`plan`] (configs and bootable kernels to jobs), [`pull_round`] (jobs to records and
//! the running kernel's outcomes), [`collect_garbage`], and [`settle_reboot`] (the reboot
//! decision carried out, `last-pull.json`, the exit status).

use std::path::Path;
use std::time::Instant;

use kmod_day1_contract::{
    boot_id, kernel_command_line, kernel_release, load_config_dir, OSRELEASE_FILE,
};
use tracing::{error, info, warn};

use crate::boot_entries::boot_entry_kernels;
use crate::cli::Cli;
use crate::exit::Exit;
use crate::gc::collect_garbage;
use crate::plan::plan;
use crate::policy::TrustPolicy;
use crate::puller::Puller;
use crate::reboot_request::{settle_reboot, RebootVia, Settle};
use crate::registries_conf::RegistriesConf;
use crate::registries_d::RegistriesD;
use crate::round::pull_round;
use crate::store::Store;
use crate::trust::Trust;

/// A configuration problem found before touching anything (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigProblem(pub String);

/// Runs kmod-day1-pull. `Err` is a problem found before anything was pulled; a
/// [`ConfigProblem`] or a contract config error there means exit code 2.
pub async fn run(cli: &Cli) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let hatches = match kernel_command_line(&cli.cmdline) {
        Ok(h) => h,
        Err(e) => {
            error!("{e}; doing nothing this boot (no pull, no reboot), as with kmod_day1.disable");
            return Ok(Exit::Config);
        }
    };
    if hatches.disabled {
        info!("kmod_day1.disable is on the kernel command line: nothing to do");
        return Ok(Exit::Ok);
    }
    let kernel = match &cli.kernel_release {
        Some(k) => k.clone(),
        None => kernel_release(Path::new(OSRELEASE_FILE))?,
    };
    let (configs, bad) =
        load_config_dir(&cli.config_dir).map_err(|e| ConfigProblem(e.to_string()))?;
    for e in &bad {
        error!("{e}; skipping that file");
    }
    if configs.is_empty() {
        if !bad.is_empty() {
            return Ok(Exit::Config);
        }
        info!(dir = %cli.config_dir.display(), "no config files: nothing to do");
        return Ok(Exit::Ok);
    }
    let registries = RegistriesConf::load(&cli.registries_conf)
        .map_err(|e| ConfigProblem(format!("{e}; fix the file")))?;
    let trust = Trust {
        policy: TrustPolicy::load(&cli.policy)
            .map_err(|e| ConfigProblem(format!("{e}; fix the file")))?,
        registries_d: RegistriesD::load(&cli.registries_d)
            .map_err(|e| ConfigProblem(format!("registries.d: {e}; fix the file")))?,
    };
    let plan = plan(
        &configs,
        &bad,
        &kernel,
        boot_entry_kernels(&cli.boot_entries),
        &cli.boot_entries,
    );

    let store = Store::open_locked(&cli.store)?;
    store.clean_tmp()?;
    let mut puller = Puller::new(&store, &registries, &trust, cli);
    let round = pull_round(&mut puller, &plan.jobs).await;
    collect_garbage(&store, &plan);

    let boot_id = boot_id(&cli.boot_id)
        .inspect_err(|e| warn!("{e}; no reboot this run"))
        .ok();
    let exit = round.exit(plan.config_errors);
    let settle = Settle {
        store: &store,
        kernel: &kernel,
        boot_id: boot_id.as_deref(),
        status_file: &cli.status,
        hatches: &hatches,
        no_reboot: cli.no_reboot,
        via: match &cli.reboot_marker {
            Some(m) => RebootVia::Marker(m.clone()),
            None => RebootVia::Logind,
        },
        started,
    };
    let exit = settle_reboot(settle, round, exit).await?;
    info!(
        ms = started.elapsed().as_millis() as u64,
        images = plan.jobs.len(),
        "done"
    );
    Ok(exit)
}
