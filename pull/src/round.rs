// SPDX-License-Identifier: Apache-2.0
//! The pull round: every job of the plan, in order, each with its own record; what the
//! running kernel's sets came to feeds the reboot decision.

use std::time::Instant;

use kmod_day1_contract::PullRecord;
use tracing::{error, info};

use crate::exit::Exit;
use crate::plan::Job;
use crate::puller::{Outcome, Puller};
use crate::reboot::SetOutcome;

/// What a round did.
#[derive(Debug, Default)]
pub(crate) struct Round {
    /// One record per job, for `last-pull.json`.
    pub records: Vec<PullRecord>,
    /// The running kernel's sets that are stored now.
    pub running: Vec<SetOutcome>,
    /// A pull for the running kernel failed.
    pub running_failed: bool,
    /// A prefetch for another kernel failed.
    pub prefetch_failed: bool,
}

impl Round {
    /// The run's exit status so far: a failed pull outranks config errors.
    pub fn exit(&self, config_errors: usize) -> Exit {
        if self.running_failed || self.prefetch_failed {
            Exit::PullFailed
        } else if config_errors > 0 {
            Exit::Config
        } else {
            Exit::Ok
        }
    }
}

/// Pulls every job with `puller`.
pub(crate) async fn pull_round(puller: &mut Puller<'_>, jobs: &[Job]) -> Round {
    let mut round = Round::default();
    for job in jobs {
        let started = Instant::now();
        let mut rec = PullRecord {
            config: job.config.to_string(),
            set: job.set.name.to_string(),
            kernel_release: job.kernel.to_string(),
            image: job.image.to_string(),
            outcome: "failed".into(),
            manifest_digest: None,
            bytes: 0,
            millis: 0,
            error: None,
        };
        let result = puller.ensure(job, &mut rec.bytes).await;
        rec.millis = started.elapsed().as_millis() as u64;
        let label = job.label();
        match result {
            Ok(outcome) => {
                let (r, committed_now) = match outcome {
                    Outcome::Unchanged(r) => (r, false),
                    Outcome::Committed(r) => (r, true),
                };
                rec.outcome = if committed_now {
                    "committed"
                } else {
                    "unchanged"
                }
                .into();
                rec.manifest_digest = Some(r.manifest_digest.clone());
                if committed_now {
                    info!(image = %job.image, digest = r.manifest_digest, tree = r.tree, bytes = rec.bytes, ms = rec.millis, prefetch = job.prefetch, "committed {} ({label})", job.image);
                } else {
                    info!(image = %job.image, digest = r.manifest_digest, prefetch = job.prefetch, "unchanged {} ({label})", job.image);
                }
                if !job.prefetch {
                    round.running.push(SetOutcome {
                        config: job.config.to_string(),
                        set: job.set.name.to_string(),
                        policy: job.set.reboot,
                        manifest_digest: r.manifest_digest,
                        committed_now,
                    });
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                error!(image = %job.image, prefetch = job.prefetch, "failed {} ({label}): {msg}", job.image);
                rec.error = Some(msg);
                if job.prefetch {
                    round.prefetch_failed = true;
                } else {
                    round.running_failed = true;
                }
            }
        }
        round.records.push(rec);
    }
    round
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::policy::TrustPolicy;
    use crate::registries_conf::RegistriesConf;
    use crate::registries_d::RegistriesD;
    use crate::store::Store;
    use crate::trust::Trust;
    use clap::Parser as _;
    use kmod_day1_contract::{ConfigName, ImageRef, KernelRelease, ModuleSet};
    use kmod_day1_test_registry::{Image, Layer, Registry};

    const K: &str = "6.1.0-27-amd64";

    fn job(registry: &Registry, tag: &str, prefetch: bool) -> Job {
        let image = format!("{}/kmod/e1000:{tag}", registry.host());
        let set: ModuleSet = serde_json::from_str(&format!(
            r#"{{"name": "e1000", "image": "{image}", "modules": [{{"name": "e1000"}}], "pullSecret": "/nonexistent/auth.json"}}"#
        ))
        .unwrap();
        Job {
            config: ConfigName::new("99-kmod").unwrap(),
            set,
            kernel: KernelRelease::new(K).unwrap(),
            image: ImageRef::parse(&image).unwrap(),
            prefetch,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn records_every_job_and_the_running_kernels_sets() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let registry = Registry::start().unwrap();
        let image = Image::new().layer(
            Layer::new()
                .with_parent_dirs()
                .file(format!("opt/lib/modules/{K}/e1000.ko"), "module"),
        );
        registry.push_image("kmod/e1000", "v1", &image.build().unwrap());
        let d = tempfile::tempdir().unwrap();
        let store = Store::open_locked(d.path()).unwrap();
        let registries = RegistriesConf::parse(
            &format!(
                "[[registry]]\nprefix = \"{}\"\ninsecure = true\n",
                registry.host()
            ),
            "test",
        )
        .unwrap();
        let cli = Cli::parse_from(["kmod-day1-pull", "--budget", "5", "--request-timeout", "2"]);
        let trust = Trust {
            policy: TrustPolicy::parse(
                r#"{"default": [{"type": "insecureAcceptAnything"}]}"#,
                std::path::Path::new("/etc/containers/policy.json"),
            )
            .unwrap(),
            registries_d: RegistriesD::default(),
        };
        let mut puller = Puller::new(&store, &registries, &trust, &cli);

        let jobs = [job(&registry, "v1", false), job(&registry, "missing", true)];
        let round = pull_round(&mut puller, &jobs).await;
        let outcomes: Vec<&str> = round.records.iter().map(|r| r.outcome.as_str()).collect();
        assert_eq!(outcomes, ["committed", "failed"]);
        assert!(round.records[0].bytes > 0);
        assert!(round.records[1]
            .error
            .as_deref()
            .unwrap()
            .contains("missing"));
        assert_eq!(round.running.len(), 1);
        assert!(round.running[0].committed_now);
        assert!(!round.running_failed);
        assert!(round.prefetch_failed);
        assert_eq!(round.exit(0), Exit::PullFailed);

        // The same job again: unchanged, nothing downloaded.
        let again = pull_round(&mut puller, &jobs[..1]).await;
        assert_eq!(again.records[0].outcome, "unchanged");
        assert_eq!(again.records[0].bytes, 0);
        assert!(!again.running[0].committed_now);
        assert_eq!(again.exit(0), Exit::Ok);
        assert_eq!(again.exit(2), Exit::Config);
    }
}
