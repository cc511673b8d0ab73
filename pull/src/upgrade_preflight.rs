// SPDX-License-Identifier: Apache-2.0
//! The upgrade preflight: for every kernel the node can boot next but is not running (a
//! staged OS update above all), once its images are stored, check them as the loader will at
//! that boot, and say so before the reboot. The check *is* the loader's: its `--dry-run
//! --json` for that kernel, with that deployment's modules and modprobe.d (one planner: the
//! vermagic against that kernel, dependencies against its `modules.dep` and
//! `modules.builtin`, its modprobe configuration). The verdict is recorded in the store
//! (`preflight/<kver>.json`), and the loader carries it into that boot's status.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kmod_day1_contract::{
    write_json_atomic, KernelRelease, SetVerdict, StoreLayout, UpgradePreflight, PREFLIGHT_VERSION,
};
use serde::Deserialize;
use tracing::{info, warn};

use crate::bootable::BootableKernels;

/// How long the loader's dry run may take (it reads module files; it touches nothing).
const DRY_RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The modprobe.d directories of a deployment, in kmod's order (`/run` is this boot's).
const DEPLOYMENT_MODPROBE_DIRS: &[&str] = &[
    "etc/modprobe.d",
    "usr/local/lib/modprobe.d",
    "usr/lib/modprobe.d",
    "lib/modprobe.d",
];

/// What the preflight needs from the command line.
pub(crate) struct PreflightInputs<'a> {
    /// The loader binary.
    pub loader: &'a Path,
    /// `config.d`.
    pub config_dir: &'a Path,
    /// The store.
    pub store: &'a StoreLayout,
    /// The kernel command line (the next boot's may differ: ostree keeps kargs per
    /// deployment; this one is the best guess).
    pub cmdline: &'a Path,
    /// The installed kernels' modules directory (kernels that boot the running root).
    pub modules_dir: &'a Path,
}

/// Checks every bootable kernel but `running`, records and logs each verdict.
pub(crate) fn preflight_next_boots(
    i: &PreflightInputs<'_>,
    running: &KernelRelease,
    bootable: &BootableKernels,
) {
    for kernel in bootable.kernels.iter().filter(|k| *k != running) {
        let staged = bootable.staged.contains(kernel);
        let deployment = bootable.deployments.get(kernel);
        let record = check(i, kernel, deployment.map(PathBuf::as_path));
        log_verdict(&record, staged);
        let file = i.store.preflight_file(kernel);
        if let Err(e) = write_json_atomic(&file, &record) {
            warn!("recording the upgrade preflight in {}: {e}", file.display());
        }
    }
    if bootable.complete {
        prune(i.store, bootable);
    }
}

/// Removes the records of kernels the node can no longer boot.
fn prune(store: &StoreLayout, bootable: &BootableKernels) {
    let dir = store.root().join("preflight");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let kernel = name
            .strip_suffix(".json")
            .and_then(|k| KernelRelease::new(k).ok());
        if kernel.is_some_and(|k| !bootable.kernels.contains(&k)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The loader's dry run for `kernel`, booting `deployment` (or the running root).
fn check(
    i: &PreflightInputs<'_>,
    kernel: &KernelRelease,
    deployment: Option<&Path>,
) -> UpgradePreflight {
    let root = deployment.map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let mut record = UpgradePreflight {
        version: PREFLIGHT_VERSION,
        kernel_release: kernel.to_string(),
        root: root.display().to_string(),
        checked_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        sets: vec![],
        error: None,
    };
    let mut cmd = Command::new(i.loader);
    cmd.args(["--dry-run", "--json", "--kernel-release", kernel.as_str()])
        .arg("--config-dir")
        .arg(i.config_dir)
        .arg("--store")
        .arg(i.store.root())
        .arg("--cmdline")
        .arg(i.cmdline);
    match deployment {
        Some(d) => {
            cmd.arg("--modules-root").arg(d.join("usr/lib/modules"));
            for m in DEPLOYMENT_MODPROBE_DIRS {
                cmd.arg("--modprobe-dir").arg(d.join(m));
            }
        }
        None => {
            cmd.arg("--modules-root").arg(i.modules_dir);
        }
    }
    match run_with_timeout(&mut cmd, DRY_RUN_TIMEOUT).and_then(|out| parse_dry_run(&out)) {
        Ok(sets) => record.sets = sets,
        Err(e) => {
            record.error = Some(format!(
                "the loader's dry run ({}) for kernel {kernel}: {e}",
                i.loader.display()
            ))
        }
    }
    record
}

/// One line per set that would not swap (a warning for a staged update: the reboot is
/// coming), one line when all would.
fn log_verdict(r: &UpgradePreflight, staged: bool) {
    let k = &r.kernel_release;
    let when = if staged {
        format!("the node will boot {k} (a staged OS update)")
    } else {
        format!("if the node boots {k}, it")
    };
    if let Some(e) = &r.error {
        warn!("upgrade preflight: {e}; {when} may run the in-tree drivers");
        return;
    }
    let mut ready = vec![];
    for s in &r.sets {
        let label = format!("{}/{}", s.config, s.set);
        if s.would_swap() {
            ready.push(label);
            continue;
        }
        let why = match (s.state.as_str(), &s.image, &s.error) {
            ("notStored", Some(img), _) => format!("no image for it is stored from {img}"),
            ("noImage", _, _) => "the config maps no image to this kernel".to_owned(),
            ("skipped", _, _) => "skipped on the kernel command line".to_owned(),
            (_, _, Some(e)) => e.clone(),
            (state, _, None) => state.to_owned(),
        };
        let line = format!("upgrade preflight: {when} on the in-tree driver for {label}: {why}");
        if staged {
            warn!("{line}");
        } else {
            info!("{line}");
        }
    }
    if !ready.is_empty() {
        info!(
            "upgrade preflight: {k}: {} stored and checked as the loader will load them",
            ready.join(", ")
        );
    }
}

#[derive(Deserialize)]
struct DryRun {
    sets: Vec<DrySet>,
}

#[derive(Deserialize)]
struct DrySet {
    config: String,
    set: String,
    state: String,
    image: Option<String>,
    error: Option<String>,
}

/// The sets of `kmod-day1-load --dry-run --json`.
fn parse_dry_run(stdout: &[u8]) -> Result<Vec<SetVerdict>, String> {
    let d: DryRun = serde_json::from_slice(stdout)
        .map_err(|e| format!("its output is not the dry run's JSON ({e})"))?;
    Ok(d.sets
        .into_iter()
        .map(|s| SetVerdict {
            config: s.config,
            set: s.set,
            state: s.state,
            image: s.image,
            error: s.error,
        })
        .collect())
}

/// Runs `cmd`, killing it after `timeout`; its stdout (any exit status: the dry run exits 1
/// when a set fails its preflight, with the JSON all the same).
fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Vec<u8>, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buf = vec![];
        stdout.read_to_end(&mut buf).map(|_| buf)
    });
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer in {} s", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    }
    reader
        .join()
        .map_err(|_| "reading its output failed".to_owned())?
        .map_err(|e| format!("reading its output: {e}"))
}

/// The loader beside this binary (they are installed together), for `--loader`'s default.
pub(crate) fn default_loader() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("kmod-day1-load")))
        .unwrap_or_else(|| PathBuf::from("/usr/bin/kmod-day1-load"))
}
