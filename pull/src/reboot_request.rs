// SPDX-License-Identifier: Apache-2.0
//! The last phase of a run: the reboot decision carried out. A reboot is recorded in the
//! guard durably before it is asked for, so a reboot that happens is never repeated for the
//! same content; when asking fails (nothing rebooted), the record is taken back so a later
//! run may ask again. `last-pull.json` is written in every case.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kmod_day1_contract::{
    read_json, write_json_atomic, BootStatus, EscapeHatches, KernelRelease, PullStatus,
    RebootGuard, STORE_VERSION,
};
use tracing::{error, info, warn};

use crate::exit::Exit;
use crate::reboot::{decide, guard_with, RebootDecision, RebootInputs};
use crate::round::Round;
use crate::store::Store;
use crate::unix_now;

/// How a reboot is asked for.
#[derive(Debug, Clone)]
pub(crate) enum RebootVia {
    /// systemd-logind over the system bus (else systemd's `reboot.target`).
    Logind,
    /// Test hook: the request is written to this file.
    Marker(PathBuf),
}

/// What the reboot decision is made from, besides the round.
pub(crate) struct Settle<'a> {
    /// The store (guard and `last-pull.json`).
    pub store: &'a Store,
    /// The running kernel.
    pub kernel: &'a KernelRelease,
    /// This boot's id, if it could be read.
    pub boot_id: Option<&'a str>,
    /// The loader's status file.
    pub status_file: &'a Path,
    /// The binaries were installed during this boot, after the loader's turn.
    pub loader_installed_this_boot: bool,
    /// The kernel command line's escape hatches.
    pub hatches: &'a EscapeHatches,
    /// `--no-reboot`.
    pub no_reboot: bool,
    /// How to ask.
    pub via: RebootVia,
    /// When the run started.
    pub started: Instant,
}

/// Decides about a reboot after `round`, carries it out, writes `last-pull.json`, and
/// returns the run's exit status (`exit` so far, or worse).
pub(crate) async fn settle_reboot(s: Settle<'_>, round: Round, exit: Exit) -> anyhow::Result<Exit> {
    let status: Option<BootStatus> = read_json(s.status_file).unwrap_or_else(|e| {
        warn!(
            "ignoring the loader status {}: {e}",
            s.status_file.display()
        );
        None
    });
    let guard_path = s.store.layout().reboot_guard();
    let (guard, guard_readable) = read_guard(&guard_path);
    let decision = decide(&RebootInputs {
        kernel: s.kernel.as_str(),
        boot_id: s.boot_id,
        status: status.as_ref(),
        loader_installed_this_boot: s.loader_installed_this_boot,
        sets: &round.running,
        failed: round.running_failed,
        no_reboot: s.no_reboot,
        hatches: s.hatches,
        guard: &guard,
        now: unix_now(),
    });
    // Without the guard's records a reboot could repeat one already asked for: none this run.
    let decision = match decision {
        RebootDecision::Request(_) if !guard_readable => {
            RebootDecision::SkippedAfterFailure(format!(
                "{} could not be read (set aside, a new one is kept from now on)",
                guard_path.display()
            ))
        }
        d => d,
    };
    let mut last = PullStatus {
        version: STORE_VERSION,
        finished_at: unix_now(),
        kernel_release: s.kernel.to_string(),
        pulls: round.records,
        reboot: decision.label().into(),
        error: (exit == Exit::PullFailed).then(|| "a pull failed; see pulls".into()),
    };
    let last_path = s.store.layout().last_pull();
    let exit = match &decision {
        RebootDecision::NotNeeded(why) => {
            info!("reboot: notNeeded ({why})");
            exit
        }
        RebootDecision::SkippedAfterFailure(why) => {
            info!("reboot: skippedAfterFailure ({why})");
            exit
        }
        RebootDecision::Disabled => {
            info!("reboot: disabled (--no-reboot); the new modules load on the next boot");
            exit
        }
        RebootDecision::RefusedByGuard(r) => {
            let msg = format!(
                "reboot: refusedByGuard: a reboot for kernel {} and {} was already asked for at {} (boot {}), and the loader still has not loaded it; see {} and the loader's status, then fix the image or config",
                r.kernel_release,
                r.manifest_digests.join(","),
                r.at,
                r.boot_id,
                guard_path.display()
            );
            error!("{msg}");
            last.error = Some(msg);
            exit.max(Exit::GuardRefused)
        }
        RebootDecision::Request(rec) => {
            // Durable before asking: a reboot that happens is never repeated for this content.
            write_json_atomic(&guard_path, &guard_with(guard.clone(), rec.clone()))?;
            write_json_atomic(&last_path, &last)?;
            info!(
                kernel = rec.kernel_release,
                digests = rec.manifest_digests.join(","),
                ms = s.started.elapsed().as_millis() as u64,
                "reboot: requested"
            );
            let asked = match &s.via {
                RebootVia::Marker(m) => {
                    std::fs::write(m, format!("{}\n", rec.manifest_digests.join(",")))
                        .map_err(anyhow::Error::from)
                }
                RebootVia::Logind => ask_logind().await,
            };
            let Err(e) = asked else {
                return Ok(exit);
            };
            // Nothing rebooted: take the guard record back so a later run may ask again.
            write_json_atomic(&guard_path, &guard)?;
            last.reboot = "failed".into();
            last.error = Some(format!("asking for a reboot: {e:#}"));
            error!("asking for a reboot failed: {e:#}; reboot the node to load the new modules");
            exit.max(Exit::PullFailed)
        }
    };
    write_json_atomic(&last_path, &last)?;
    Ok(exit)
}

/// The reboot guard, and whether it could be read. An unreadable or corrupt one is reported,
/// set aside as `reboots.json.corrupt` (replacing an older one there) so that the next run
/// starts a new one, and read as empty.
fn read_guard(path: &Path) -> (RebootGuard, bool) {
    let empty = RebootGuard {
        version: STORE_VERSION,
        reboots: vec![],
    };
    match read_json::<RebootGuard>(path) {
        Ok(g) => (g.unwrap_or(empty), true),
        Err(e) => {
            let aside = path.with_extension("json.corrupt");
            match std::fs::rename(path, &aside) {
                Ok(()) => error!(
                    "the reboot guard {} cannot be read ({e}); set aside as {}, no reboot this run",
                    path.display(),
                    aside.display()
                ),
                Err(re) => error!(
                    "the reboot guard {} cannot be read ({e}) nor set aside ({re}); no reboot until it is fixed or removed",
                    path.display()
                ),
            }
            (empty, false)
        }
    }
}

/// Asks logind to reboot (the polite way: inhibitors and shutdown ordering apply), falling
/// back to starting systemd's `reboot.target`.
async fn ask_logind() -> anyhow::Result<()> {
    use anyhow::Context as _;
    let conn = zbus::Connection::system()
        .await
        .context("connecting to the system D-Bus")?;
    let logind = conn
        .call_method(
            Some("org.freedesktop.login1"),
            "/org/freedesktop/login1",
            Some("org.freedesktop.login1.Manager"),
            "Reboot",
            &(false,),
        )
        .await;
    match logind {
        Ok(_) => {
            info!("asked systemd-logind to reboot");
            Ok(())
        }
        Err(e) => {
            info!(
                "systemd-logind refused the reboot ({e}); starting reboot.target through systemd"
            );
            conn.call_method(
                Some("org.freedesktop.systemd1"),
                "/org/freedesktop/systemd1",
                Some("org.freedesktop.systemd1.Manager"),
                "StartUnit",
                &("reboot.target", "replace-irreversibly"),
            )
            .await
            .with_context(|| {
                format!("asking systemd to start reboot.target (after logind said: {e})")
            })?;
            info!("asked systemd to start reboot.target");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reboot::SetOutcome;
    use kmod_day1_contract::{RebootPolicy, SetState, SetStatus, STATUS_VERSION};

    const K: &str = "6.1.0-27-amd64";

    struct Node {
        dir: tempfile::TempDir,
        store: Store,
        status_file: PathBuf,
        kernel: KernelRelease,
        hatches: EscapeHatches,
    }

    impl Node {
        fn new(loader_state: SetState) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store =
                Store::open_locked(&dir.path().join("store"), std::time::Duration::ZERO).unwrap();
            let status = BootStatus {
                version: STATUS_VERSION,
                kernel_release: K.into(),
                boot_id: "b1".into(),
                sets: vec![SetStatus::new("99-kmod", "e1000", loader_state)],
                errors: vec![],
                total_us: 0,
                preflight: None,
            };
            let status_file = dir.path().join("status.json");
            write_json_atomic(&status_file, &status).unwrap();
            Self {
                dir,
                store,
                status_file,
                kernel: KernelRelease::new(K).unwrap(),
                hatches: EscapeHatches::default(),
            }
        }

        fn settle<'a>(&'a self, boot_id: Option<&'a str>, via: RebootVia) -> Settle<'a> {
            Settle {
                store: &self.store,
                kernel: &self.kernel,
                boot_id,
                status_file: &self.status_file,
                loader_installed_this_boot: false,
                hatches: &self.hatches,
                no_reboot: false,
                via,
                started: Instant::now(),
            }
        }

        fn marker(&self) -> PathBuf {
            self.dir.path().join("rebooted")
        }

        fn last(&self) -> PullStatus {
            read_json(&self.store.layout().last_pull())
                .unwrap()
                .unwrap()
        }

        fn guard(&self) -> RebootGuard {
            read_json(&self.store.layout().reboot_guard())
                .unwrap()
                .unwrap_or_default()
        }
    }

    fn committed() -> Round {
        Round {
            running: vec![SetOutcome {
                config: "99-kmod".into(),
                set: "e1000".into(),
                policy: RebootPolicy::IfNeeded,
                manifest_digest: "sha256:d1".into(),
                committed_now: true,
            }],
            ..Round::default()
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn asks_once_records_it_and_refuses_the_same_content_again() {
        let n = Node::new(SetState::NotStored);
        let via = RebootVia::Marker(n.marker());
        let exit = settle_reboot(n.settle(Some("b1"), via.clone()), committed(), Exit::Ok)
            .await
            .unwrap();
        assert_eq!(exit, Exit::Ok);
        assert_eq!(std::fs::read_to_string(n.marker()).unwrap(), "sha256:d1\n");
        assert_eq!(n.last().reboot, "requested");
        assert_eq!(n.guard().reboots.len(), 1);

        let exit = settle_reboot(n.settle(Some("b1"), via), committed(), Exit::Ok)
            .await
            .unwrap();
        assert_eq!(exit, Exit::GuardRefused);
        assert_eq!(n.last().reboot, "refusedByGuard");
        assert!(n.last().error.unwrap().contains("already asked for"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_reboot_that_cannot_be_asked_for_takes_its_guard_record_back() {
        let n = Node::new(SetState::NotStored);
        let via = RebootVia::Marker(n.dir.path().join("no-such-dir/rebooted"));
        let exit = settle_reboot(n.settle(Some("b1"), via), committed(), Exit::Ok)
            .await
            .unwrap();
        assert_eq!(exit, Exit::PullFailed);
        assert_eq!(n.last().reboot, "failed");
        assert!(n.guard().reboots.is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_corrupt_guard_is_set_aside_and_blocks_the_reboot_of_that_run_only() {
        let n = Node::new(SetState::NotStored);
        let guard = n.store.layout().reboot_guard();
        std::fs::write(&guard, "{ torn").unwrap();
        let via = RebootVia::Marker(n.marker());
        let exit = settle_reboot(n.settle(Some("b1"), via.clone()), committed(), Exit::Ok)
            .await
            .unwrap();
        assert_eq!(exit, Exit::Ok);
        assert_eq!(n.last().reboot, "skippedAfterFailure");
        assert!(!n.marker().exists());
        assert_eq!(
            std::fs::read_to_string(guard.with_extension("json.corrupt")).unwrap(),
            "{ torn"
        );
        // The next run has a fresh guard and may ask.
        settle_reboot(n.settle(Some("b1"), via), committed(), Exit::Ok)
            .await
            .unwrap();
        assert_eq!(n.last().reboot, "requested");
        assert_eq!(n.guard().reboots.len(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn no_reboot_without_the_boot_id_or_when_loaded() {
        let n = Node::new(SetState::NotStored);
        let via = RebootVia::Marker(n.marker());
        let exit = settle_reboot(n.settle(None, via.clone()), committed(), Exit::Ok)
            .await
            .unwrap();
        assert_eq!(exit, Exit::Ok);
        assert_eq!(n.last().reboot, "skippedAfterFailure");
        assert!(!n.marker().exists());

        let n = Node::new(SetState::Loaded);
        settle_reboot(n.settle(Some("b1"), via), committed(), Exit::Config)
            .await
            .unwrap();
        assert_eq!(n.last().reboot, "notNeeded");
    }
}
