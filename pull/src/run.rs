// SPDX-License-Identifier: Apache-2.0
//! One run of kmod-day1-pull, as typed phases that pass values: the node facts, then
//! [`plan`] (configs and bootable kernels to jobs), [`pull_round`] (jobs to records and
//! the running kernel's outcomes), [`collect_garbage`], and [`settle_reboot`] (the reboot
//! decision carried out, `last-pull.json`, the exit status).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use kmod_day1_contract::{
    boot_id, kernel_command_line, kernel_release, load_config_dir, KernelRelease, StoreLayout,
};
use tracing::{error, info, warn};

use crate::bootable::{BootableKernels, BootableSources};
use crate::cli::Cli;
use crate::exit::Exit;
use crate::gc::collect_garbage;
use crate::metrics::{render as render_metrics, MetricsSources};
use crate::metrics_server::serve as serve_metrics;
use crate::plan::{plan, Configs};
use crate::policy::TrustPolicy;
use crate::puller::Puller;
use crate::reboot_request::{settle_reboot, RebootVia, Settle};
use crate::registries_conf::RegistriesConf;
use crate::registries_d::RegistriesD;
use crate::round::pull_round;
use crate::store::Store;
use crate::trust::Trust;
use crate::upgrade_preflight::{default_loader, preflight_next_boots, PreflightInputs};

/// A configuration problem found before touching anything (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigProblem(pub String);

/// Runs kmod-day1-pull. `Err` is a problem found before anything was pulled; a
/// [`ConfigProblem`] or a contract config error there means exit code 2.
pub async fn run(cli: &Cli) -> anyhow::Result<Exit> {
    if cli.metrics || cli.serve_metrics.is_some() {
        return metrics_mode(cli).await;
    }
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
    if cli.at_shutdown && !cli.assume_shutdown && !crate::shutdown::shutting_down().await {
        return Ok(Exit::Ok);
    }
    // --kernel-release: a store prepared for exactly the kernels named (for a bundle or an
    // initrd, on any machine), else the running kernel and every kernel the node can boot.
    let named = !cli.kernel_release.is_empty();
    let kernel = match cli.kernel_release.first() {
        Some(k) => k.clone(),
        None => kernel_release(&cli.osrelease)?,
    };
    let configs = load_configs(cli)?;
    if configs.is_empty() {
        if !configs.bad.is_empty() {
            return Ok(Exit::Config);
        }
        info!(dir = %cli.config_dir.display(), "no config files: nothing to do");
        return Ok(Exit::Ok);
    }
    if cli.check_stored {
        let kernels = if named {
            cli.kernel_release.clone()
        } else {
            vec![kernel]
        };
        return Ok(check_stored(cli, &configs, &kernels));
    }
    let registries = RegistriesConf::load(&cli.registries_conf)
        .map_err(|e| ConfigProblem(format!("{e}; fix the file")))?;
    let trust = Trust {
        policy: TrustPolicy::load(&cli.policy)
            .map_err(|e| ConfigProblem(format!("{e}; fix the file")))?,
        registries_d: RegistriesD::load(&cli.registries_d)
            .map_err(|e| ConfigProblem(format!("registries.d: {e}; fix the file")))?,
    };
    let bootable = if named {
        // Not the machine's own kernels; and incomplete, so that garbage collection prunes
        // no ref for its kernel: repeated runs for other kernels add to the store.
        BootableKernels {
            kernels: cli.kernel_release.iter().cloned().collect(),
            staged: BTreeSet::new(),
            deployments: Default::default(),
            complete: false,
        }
    } else {
        BootableSources {
            entries: &cli.boot_entries,
            ostree_deploy: &cli.ostree_deploy_dir,
            modules: &cli.modules_dir,
        }
        .read()
    };
    let plan = plan(&configs, &kernel, &bootable, cli.at_shutdown);
    if cli.at_shutdown && plan.jobs.is_empty() {
        info!("no other kernel to boot next: nothing to do");
        return Ok(Exit::Ok);
    }

    let store = Store::open_locked(&cli.store, cli.budget())?;
    store.clean_tmp()?;
    match store.upgrade_refs() {
        Ok(0) => {}
        Ok(n) => info!(refs = n, "upgraded the store's refs to format version 2"),
        Err(e) => warn!("upgrading the store's refs (the loader still reads the old ones): {e}"),
    }
    let mut puller = Puller::new(&store, &registries, &trust, cli);
    if cli.at_shutdown {
        puller = puller.missing_only();
    }
    let round = pull_round(&mut puller, &plan.jobs).await;
    collect_garbage(&store, &plan, &configs);
    if !named {
        let loader = cli.loader.clone().unwrap_or_else(default_loader);
        let inputs = PreflightInputs {
            loader: &loader,
            config_dir: &cli.config_dir,
            store: store.layout(),
            cmdline: &cli.cmdline,
            modules_dir: &cli.modules_dir,
        };
        preflight_next_boots(&inputs, &kernel, &bootable);
    }

    let boot_id = boot_id(&cli.boot_id)
        .inspect_err(|e| warn!("{e}; no reboot this run"))
        .ok();
    let exit = round.exit(plan.config_errors);
    let settle = Settle {
        store: &store,
        kernel: &kernel,
        boot_id: boot_id.as_deref(),
        status_file: &cli.status,
        loader_installed_this_boot: cli.installed_marker.exists(),
        hatches: &hatches,
        // Never at shutdown: the node is rebooting already; never for a store prepared for
        // named kernels: they need not be running.
        no_reboot: cli.no_reboot || cli.at_shutdown || named,
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

/// `--metrics` (print once) and `--serve-metrics` (serve until stopped); the configs and
/// every state file are read afresh for each scrape.
async fn metrics_mode(cli: &Cli) -> anyhow::Result<Exit> {
    let kernel = kernel_release(&cli.osrelease)?;
    let (status, store) = (cli.status.clone(), StoreLayout::new(&cli.store));
    let config_dir = cli.config_dir.clone();
    let render = move || {
        let (current, bad) = load_config_dir(&config_dir).unwrap_or_default();
        let configs = Configs {
            current,
            prestaged: vec![],
            bad,
        };
        render_metrics(&MetricsSources {
            status: &status,
            store: &store,
            configs: &configs,
            kernel: &kernel,
        })
    };
    match cli.serve_metrics {
        Some(addr) => {
            serve_metrics(addr, Arc::new(render)).await?;
            Ok(Exit::Ok)
        }
        None => {
            print!("{}", render());
            Ok(Exit::Ok)
        }
    }
}

/// The configs of `config.d` and the prestaged ones in the store; bad files are logged and
/// counted, a directory that cannot be read is a [`ConfigProblem`].
fn load_configs(cli: &Cli) -> anyhow::Result<Configs> {
    let (current, mut bad) =
        load_config_dir(&cli.config_dir).map_err(|e| ConfigProblem(e.to_string()))?;
    let prestaged_dir = StoreLayout::new(&cli.store).prestaged_dir();
    let (prestaged, bad_prestaged) =
        load_config_dir(&prestaged_dir).map_err(|e| ConfigProblem(e.to_string()))?;
    bad.extend(bad_prestaged);
    for e in &bad {
        error!("{e}; skipping that file");
    }
    Ok(Configs {
        current,
        prestaged,
        bad,
    })
}

/// `--check-stored`: whether every set of every config has its image for each of `kernels`
/// in the store (read only: no lock, no network). One line per set and kernel.
fn check_stored(cli: &Cli, configs: &Configs, kernels: &[KernelRelease]) -> Exit {
    let layout = StoreLayout::new(&cli.store);
    let mut missing = 0;
    for kernel in kernels {
        for c in configs.current.iter().chain(&configs.prestaged) {
            for set in &c.config.module_sets {
                let image = match set.image_for(kernel) {
                    Ok(Some(i)) => i.to_string(),
                    Ok(None) => continue,
                    Err(e) => {
                        error!(config = %c.name, set = %set.name, "{e}");
                        missing += 1;
                        continue;
                    }
                };
                let stored = layout
                    .read_ref(&c.name, &set.name, kernel, &image)
                    .ok()
                    .flatten()
                    .is_some_and(|(_, r)| layout.tree_modules(&r.tree).is_dir());
                if stored {
                    info!("stored: {}/{} {image} for {kernel}", c.name, set.name);
                } else {
                    info!("not stored: {}/{} {image} for {kernel}", c.name, set.name);
                    missing += 1;
                }
            }
        }
    }
    if missing == 0 && configs.bad.is_empty() {
        Exit::Ok
    } else {
        Exit::PullFailed
    }
}
