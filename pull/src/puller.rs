// SPDX-License-Identifier: Apache-2.0
//! Makes sure one [`Job`]'s image is in the store: a stored ref that still matches is kept
//! (a digest pin without asking the registry, a tag after checking its digest); otherwise
//! the image is resolved from its sources in order (mirrors first, as registries.conf
//! says), its tree fetched unless the store has it, and its ref committed.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use kmod_day1_contract::{RefRecord, STORE_VERSION};
use tracing::{info, warn};

use crate::auth::PullSecret;
use crate::cli::Cli;
use crate::extract::{ExtractLimits, Selection};
use crate::fetch::{FetchError, HostClient, NetConfig, Repo, ResolvedImage};
use crate::plan::Job;
use crate::progress::human_bytes;
use crate::registries_conf::{PullSource, RegistriesConf};
use crate::retry::{with_retries, RetryPolicy};
use crate::store::{tree_id, Store};
use crate::tree_fetch::{fetch_tree, TreeRequest};
use crate::trust::Trust;
use crate::unix_now;

/// What [`Puller::ensure`] found or did.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The store already held this image for the job.
    Unchanged(RefRecord),
    /// This run committed it.
    Committed(RefRecord),
}

/// Pulls the jobs of one run, sharing one HTTP client per registry and one parsed pull
/// secret per file between them.
pub(crate) struct Puller<'a> {
    store: &'a Store,
    registries: &'a RegistriesConf,
    trust: &'a Trust,
    net: NetConfig,
    policy: RetryPolicy,
    limits: ExtractLimits,
    tty: bool,
    clients: HashMap<(String, bool), HostClient>,
    secrets: HashMap<PathBuf, PullSecret>,
}

impl<'a> Puller<'a> {
    /// A puller into `store` that checks every image against `trust` before fetching a
    /// blob, with the network settings, limits and retry budget of `cli`.
    pub fn new(
        store: &'a Store,
        registries: &'a RegistriesConf,
        trust: &'a Trust,
        cli: &Cli,
    ) -> Self {
        let request_timeout = Duration::from_secs(cli.request_timeout.max(1));
        let net = NetConfig {
            certs_dir: cli.certs_dir.clone(),
            connect_timeout: Duration::from_secs(10).min(request_timeout),
            read_timeout: request_timeout,
            https_proxy: None,
            http_proxy: None,
            no_proxy: None,
        }
        .with_proxy_env();
        Self {
            store,
            registries,
            trust,
            net,
            policy: RetryPolicy::with_budget(cli.budget()),
            limits: ExtractLimits {
                max_entry: cli.max_file_mib << 20,
                max_tree: cli.max_tree_mib << 20,
                ..ExtractLimits::default()
            },
            tty: std::io::stderr().is_terminal(),
            clients: HashMap::new(),
            secrets: HashMap::new(),
        }
    }

    /// Makes sure the job's image is in the store; `bytes` counts what was downloaded.
    pub async fn ensure(&mut self, job: &Job, bytes: &mut u64) -> anyhow::Result<Outcome> {
        let existing = self.stored_ref(job);
        // A digest reference cannot change: no need to ask the registry.
        if let Some(r) = &existing {
            if job.image.is_pinned() {
                return Ok(Outcome::Unchanged(r.clone()));
            }
        }
        let sources = self.registries.sources(&job.image)?;
        let secret = self.secret(Path::new(job.set.pull_secret.as_str()))?;
        let (src, resolved) = match self.resolve_from_sources(job, sources, &secret).await {
            Ok(found) => found,
            Err(e) => match existing {
                Some(r) => {
                    warn!(image = %job.image, "could not check for a newer image, keeping the stored one: {e}");
                    return Ok(Outcome::Unchanged(r));
                }
                None => return Err(e),
            },
        };
        let digest = resolved.manifest_digest.to_string();
        if let Some(r) = existing.filter(|r| r.manifest_digest == digest) {
            return Ok(Outcome::Unchanged(r));
        }
        // The node's trust policy, before any blob is fetched.
        let verdict = self.check_trust(&src, &secret, job, &resolved).await?;
        info!(image = %job.image, digest, "trusted {}: {verdict}", job.image);
        let id = tree_id(
            &digest,
            &job.set.dir_name,
            &job.kernel,
            job.set.firmware_path.as_ref(),
        );
        if !self.store.has_tree(&id) {
            self.fetch_and_commit_tree(&src, &secret, &resolved, job, &id, bytes)
                .await?;
        }
        let rec = RefRecord {
            version: STORE_VERSION,
            image: job.image.to_string(),
            manifest_digest: digest,
            tree: id,
            committed_at: unix_now(),
        };
        self.store
            .write_ref(&job.config, &job.set.name, &job.kernel, &rec)?;
        Ok(Outcome::Committed(rec))
    }

    /// The stored ref, if it is for the same image and its tree was extracted with today's
    /// dirName and firmwarePath.
    fn stored_ref(&self, job: &Job) -> Option<RefRecord> {
        self.store
            .layout()
            .read_ref(&job.config, &job.set.name, &job.kernel)
            .unwrap_or_else(|e| {
                warn!("ignoring an unreadable ref: {e}");
                None
            })
            .filter(|r| {
                r.image == job.image.to_string()
                    && r.tree
                        == tree_id(
                            &r.manifest_digest,
                            &job.set.dir_name,
                            &job.kernel,
                            job.set.firmware_path.as_ref(),
                        )
                    && self.store.has_tree(&r.tree)
            })
    }

    fn secret(&mut self, path: &Path) -> anyhow::Result<PullSecret> {
        if let Some(s) = self.secrets.get(path) {
            return Ok(s.clone());
        }
        let s = PullSecret::load(path)?;
        self.secrets.insert(path.to_owned(), s.clone());
        Ok(s)
    }

    async fn client(&mut self, src: &PullSource) -> Result<&HostClient, FetchError> {
        let key = (src.image.registry.clone(), src.insecure);
        if !self.clients.contains_key(&key) {
            let mut c = HostClient::new(&src.image.registry, src.insecure, &self.net)?;
            c.pick_scheme(self.policy.deadline).await;
            self.clients.insert(key.clone(), c);
        }
        Ok(&self.clients[&key])
    }

    /// The first source (mirror or the registry itself) that resolves the image.
    async fn resolve_from_sources(
        &mut self,
        job: &Job,
        sources: Vec<PullSource>,
        secret: &PullSecret,
    ) -> anyhow::Result<(PullSource, ResolvedImage)> {
        let mut errors = vec![];
        for src in sources {
            info!(image = %job.image, from = %src.image, "pulling {}", job.image);
            match self.resolve(&src, secret).await {
                Ok(r) => return Ok((src, r)),
                Err(e) => {
                    if src.mirror {
                        warn!(mirror = %src.image, "mirror failed, trying the next source: {e}");
                    }
                    errors.push(format!("from {}: {e}", src.image.registry));
                }
            }
        }
        anyhow::bail!("pulling {} failed: {}", job.image, errors.join("; "))
    }

    async fn resolve(
        &mut self,
        src: &PullSource,
        secret: &PullSecret,
    ) -> Result<ResolvedImage, FetchError> {
        let deadline = self.policy.deadline;
        let policy = self.policy.clone();
        let cred = secret.lookup(&src.image).cloned();
        let client = self.client(src).await?;
        let mut repo = Repo::new(client, src.image.clone(), cred, deadline);
        with_retries(&policy, &format!("resolving {}", src.image), async || {
            repo.resolve().await
        })
        .await
    }

    async fn check_trust(
        &mut self,
        src: &PullSource,
        secret: &PullSecret,
        job: &Job,
        resolved: &ResolvedImage,
    ) -> anyhow::Result<String> {
        let policy = self.policy.clone();
        let trust = self.trust;
        let cred = secret.lookup(&src.image).cloned();
        let client = self.client(src).await?;
        let mut repo = Repo::new(client, src.image.clone(), cred, policy.deadline);
        Ok(trust
            .check(&job.image, &resolved.reference_digest, &mut repo, &policy)
            .await?)
    }

    async fn fetch_and_commit_tree(
        &mut self,
        src: &PullSource,
        secret: &PullSecret,
        resolved: &ResolvedImage,
        job: &Job,
        id: &str,
        bytes: &mut u64,
    ) -> anyhow::Result<()> {
        let policy = self.policy.clone();
        let store = self.store;
        let request = TreeRequest {
            image: &job.image,
            resolved,
            selection: Selection::new(
                &job.set.dir_name,
                &job.kernel,
                job.set.firmware_path.as_ref(),
            ),
            staging: store.tmp_path(&format!("tree-{id}")),
            limits: self.limits,
            tty: self.tty,
        };
        let staging = request.staging.clone();
        let cred = secret.lookup(&src.image).cloned();
        let client = self.client(src).await?;
        let mut repo = Repo::new(client, src.image.clone(), cred, policy.deadline);
        let stats = fetch_tree(&mut repo, &policy, request, bytes).await?;
        store
            .commit_tree(&staging, id)
            .with_context(|| format!("committing tree {id}"))?;
        info!(
            tree = id,
            files = stats.files,
            size = human_bytes(stats.bytes),
            "tree committed"
        );
        Ok(())
    }
}
