// SPDX-License-Identifier: Apache-2.0
//! The upgrade preflight: for every kernel the node can boot next but is not running (a
//! staged OS update above all), once its images are stored, check them as the loader will at
//! that boot, and say so before the reboot. The check *is* the loader's: its `--dry-run
//! --json` for that kernel, with that deployment's modules and modprobe.d (one planner: the
//! vermagic against that kernel, dependencies against its `modules.dep` and
//! `modules.builtin`, its modprobe configuration, the modules' symbol CRCs against that
//! deployment's `usr/lib/modules/<kver>/symvers.gz` where it ships one). The verdict is
//! recorded in the store (`preflight/<kver>.json`), and the loader carries it into that
//! boot's status.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kmod_day1_contract::{
    write_json_atomic, KernelRelease, SetVerdict, StoreLayout, SymbolVersions, UpgradePreflight,
    PREFLIGHT_VERSION,
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
            if let Some(sv) = &s.symbol_versions {
                info!("upgrade preflight: {k}: {label}: {}", sv.summary());
            }
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
    #[serde(rename = "symbolVersions", default)]
    symbol_versions: Option<SymbolVersions>,
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
            symbol_versions: s.symbol_versions,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const K: &str = "5.14.0-427.el9.x86_64";

    /// The dry run's JSON of one set that would swap, with `symbol_versions`.
    fn dry_run_json(symbol_versions: serde_json::Value) -> String {
        serde_json::json!({
            "kernelRelease": K,
            "sets": [{"config": "99-kmod", "set": "e1000", "state": "wouldSwap",
                      "image": "quay.io/acme/e1000-kmod:5.14.0-427.el9.x86_64",
                      "error": null, "symbolVersions": symbol_versions}],
        })
        .to_string()
    }

    /// The preflight record of a loader printing `stdout`, for a staged deployment; and the
    /// arguments the loader got.
    fn record_of(stdout: &str) -> (UpgradePreflight, String) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("out.json"), stdout).unwrap();
        let loader = d.path().join("kmod-day1-load");
        std::fs::write(
            &loader,
            format!(
                "#!/bin/sh\necho \"$@\" > {0}/args\ncat {0}/out.json\n",
                d.path().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&loader, std::fs::Permissions::from_mode(0o755)).unwrap();
        let store = StoreLayout::new(d.path().join("store"));
        let i = PreflightInputs {
            loader: &loader,
            config_dir: &d.path().join("config.d"),
            store: &store,
            cmdline: &d.path().join("cmdline"),
            modules_dir: &d.path().join("modules"),
        };
        let deployment = d.path().join("ostree/deploy/rhcos/deploy/abc.0");
        let kernel = KernelRelease::new(K).unwrap();
        let record = check(&i, &kernel, Some(&deployment));
        // Recorded and read back as the loader reads it at that kernel's boot.
        let file = store.preflight_file(&kernel);
        write_json_atomic(&file, &record).unwrap();
        let back: UpgradePreflight = kmod_day1_contract::read_json(&file).unwrap().unwrap();
        assert_eq!(back, record);
        let args = std::fs::read_to_string(d.path().join("args")).unwrap();
        assert!(
            args.contains(&format!(
                "--modules-root {}/usr/lib/modules",
                deployment.display()
            )),
            "the loader looks for symvers.gz in the deployment's modules: {args}"
        );
        (record, args)
    }

    #[test]
    fn the_record_says_how_many_symbols_were_checked_or_why_none() {
        let table = format!("/ostree/deploy/rhcos/deploy/abc.0/usr/lib/modules/{K}/symvers.gz");
        let (r, _) = record_of(&dry_run_json(
            serde_json::json!({"table": table, "checked": 155, "fromSet": 0}),
        ));
        assert_eq!(r.error, None);
        let sv = r.sets[0].symbol_versions.as_ref().expect("symbol versions");
        assert_eq!(
            (sv.checked, sv.table.as_deref()),
            (155, Some(table.as_str()))
        );
        assert!(sv.unchecked.is_empty() && sv.mismatches.is_empty());

        let why = format!("no symvers for {K} (none of ...): the kernel checks them at load");
        let (r, _) = record_of(&dry_run_json(
            serde_json::json!({"checked": 0, "unchecked": [why]}),
        ));
        let sv = r.sets[0].symbol_versions.as_ref().expect("symbol versions");
        assert_eq!((sv.checked, sv.table.as_deref()), (0, None));
        assert_eq!(sv.unchecked, [why]);

        // A loader from before the check: nothing said about symbols.
        let (r, _) = record_of(&dry_run_json(serde_json::Value::Null));
        assert_eq!(r.sets[0].symbol_versions, None);
        assert!(r.sets[0].would_swap());
    }

    #[test]
    fn a_mismatch_is_recorded_with_both_crcs() {
        let json = serde_json::json!({
            "sets": [{"config": "99-kmod", "set": "e1000", "state": "failed",
                      "error": "preflight: e1000.ko from quay.io/acme/e1000-kmod was built against other symbol versions than kernel 5.14.0-427.el9.x86_64: ...",
                      "symbolVersions": {"table": "/t", "checked": 2, "fromSet": 0,
                          "mismatches": [{"module": "e1000", "symbol": "pci_enable_device",
                                          "moduleCrc": "0x1234abcd", "kernelCrc": "0x5678ef01"}]}}],
        });
        let (r, _) = record_of(&json.to_string());
        let m = &r.sets[0].symbol_versions.as_ref().unwrap().mismatches[0];
        assert_eq!(
            (
                m.symbol.as_str(),
                m.module_crc.as_str(),
                m.kernel_crc.as_deref()
            ),
            ("pci_enable_device", "0x1234abcd", Some("0x5678ef01"))
        );
        assert_eq!(r.sets[0].state, "failed");
    }
}
