// SPDX-License-Identifier: Apache-2.0
//! One run of kmod-day1-pull: configs -> images -> verified, committed trees -> reboot
//! decision -> `last-pull.json`.

use std::collections::{BTreeSet, HashMap};
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kmod_day1_contract::{
    load_config_dir, read_json, write_json_atomic, BootStatus, ConfigName, EscapeHatches, ImageRef,
    KernelRelease, ModuleSet, PullRecord, PullStatus, RebootGuard, RefRecord, STORE_VERSION,
};
use tracing::{error, info, warn};

use crate::auth::PullSecret;
use crate::boot_entries::boot_entry_kernels;
use crate::cli::Cli;
use crate::extract::{ExtractLimits, Selection, TreeBuilder};
use crate::fetch::{BlobDownload, FetchError, HostClient, NetConfig, Repo, ResolvedImage};
use crate::layer_stream::{self, LayerReader};
use crate::progress::{human_bytes, Progress};
use crate::reboot::{decide, guard_with, request_reboot, RebootDecision, RebootInputs, SetOutcome};
use crate::registries_conf::{PullSource, RegistriesConf};
use crate::retry::RetryPolicy;
use crate::store::{tree_id, Store};

/// Exit status of a run (`docs/node-contract.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every image present; a reboot asked for if needed.
    Ok = 0,
    /// A pull failed.
    PullFailed = 1,
    /// Bad usage or config.
    Config = 2,
    /// The reboot-loop guard refused a needed reboot.
    GuardRefused = 3,
}

/// A configuration problem found before touching anything.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigProblem(pub String);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One image to have in the store.
struct Job<'a> {
    config: &'a ConfigName,
    set: &'a ModuleSet,
    kernel: KernelRelease,
    image: ImageRef,
    prefetch: bool,
}

enum Outcome {
    Unchanged(RefRecord),
    Committed(RefRecord),
}

/// The running kernel's release.
pub fn running_kernel() -> anyhow::Result<KernelRelease> {
    use anyhow::Context as _;
    let s = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?;
    Ok(KernelRelease::new(s.trim())?)
}

/// Runs kmod-day1-pull.
pub async fn run(cli: &Cli) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let kernel = match &cli.kernel_release {
        Some(k) => k.clone(),
        None => running_kernel()?,
    };
    let cmdline = std::fs::read_to_string(&cli.cmdline).unwrap_or_default();
    let hatches = EscapeHatches::parse(&cmdline);
    if hatches.disabled {
        info!("kmod_day1.disable is on the kernel command line: nothing to do");
        return Ok(Exit::Ok);
    }
    let (configs, bad) =
        load_config_dir(&cli.config_dir).map_err(|e| ConfigProblem(e.to_string()))?;
    let mut config_errors = bad.len();
    for e in &bad {
        error!("{e}; skipping that file");
    }
    if configs.is_empty() {
        if config_errors > 0 {
            return Ok(Exit::Config);
        }
        info!(dir = %cli.config_dir.display(), "no config files: nothing to do");
        return Ok(Exit::Ok);
    }
    let registries = RegistriesConf::load(&cli.registries_conf)
        .map_err(|e| ConfigProblem(format!("{e}; fix the file")))?;

    // What to pull: the running kernel first, then the other boot entries' kernels.
    let mut kernels = vec![(kernel.clone(), false)];
    // The kernels a boot can still use, for pruning refs; unknown without BLS entries.
    let mut bootable: Option<BTreeSet<String>> = None;
    match boot_entry_kernels(&cli.boot_entries) {
        Ok(ks) => {
            if !ks.is_empty() {
                let mut b: BTreeSet<String> = ks.iter().map(|k| k.to_string()).collect();
                b.insert(kernel.to_string());
                bootable = Some(b);
            }
            kernels.extend(ks.into_iter().filter(|k| *k != kernel).map(|k| (k, true)))
        }
        Err(e) => {
            warn!(dir = %cli.boot_entries.display(), "cannot read the boot entries, so no prefetch: {e}")
        }
    }
    let mut jobs = vec![];
    for (k, prefetch) in &kernels {
        for c in &configs {
            for set in &c.config.module_sets {
                match set.image_for(k) {
                    Ok(Some(image)) => jobs.push(Job {
                        config: &c.name,
                        set,
                        kernel: k.clone(),
                        image,
                        prefetch: *prefetch,
                    }),
                    Ok(None) => {
                        info!(config = %c.name, set = %set.name, kernel = %k, "no image configured for this kernel")
                    }
                    Err(e) => {
                        error!(config = %c.name, set = %set.name, kernel = %k, "{e}");
                        config_errors += 1;
                    }
                }
            }
        }
    }

    let store = Store::open_locked(&cli.store)?;
    store.clean_tmp()?;
    let net = NetConfig {
        certs_dir: cli.certs_dir.clone(),
        connect_timeout: Duration::from_secs(10)
            .min(Duration::from_secs(cli.request_timeout.max(1))),
        read_timeout: Duration::from_secs(cli.request_timeout.max(1)),
        https_proxy: None,
        http_proxy: None,
        no_proxy: None,
    }
    .with_proxy_env();
    let limits = ExtractLimits {
        max_entry: cli.max_file_mib << 20,
        max_tree: cli.max_tree_mib << 20,
        ..ExtractLimits::default()
    };
    let mut puller = Puller {
        store: &store,
        registries: &registries,
        net,
        policy: RetryPolicy::with_budget(cli.budget()),
        limits,
        tty: std::io::stderr().is_terminal(),
        clients: HashMap::new(),
        secrets: HashMap::new(),
    };

    let mut records = vec![];
    let mut running_sets = vec![];
    let mut running_failed = false;
    let mut prefetch_failed = false;
    for job in &jobs {
        let t0 = Instant::now();
        let label = format!("{}/{} for {}", job.config, job.set.name, job.kernel);
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
        let res = puller.ensure(job, &mut rec.bytes).await;
        rec.millis = t0.elapsed().as_millis() as u64;
        match res {
            Ok(o) => {
                let (r, committed_now) = match o {
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
                    running_sets.push(SetOutcome {
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
                    prefetch_failed = true;
                } else {
                    running_failed = true;
                }
            }
        }
        records.push(rec);
    }

    // What failed pulls left in tmp/ (partial blobs and trees) goes now, not next run.
    if let Err(e) = store.clean_tmp() {
        warn!("cleaning the store's tmp/: {e}");
    }
    // Garbage: trees no ref points at, refs of configs that are gone.
    let names: BTreeSet<String> = std::fs::read_dir(&cli.config_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let p = e.path();
                    (p.extension()? == "json")
                        .then(|| p.file_stem()?.to_str().map(str::to_owned))?
                })
                .collect()
        })
        .unwrap_or_default();
    match store.gc(&names, bootable.as_ref()) {
        Ok(removed) if !removed.is_empty() => {
            info!(trees = removed.len(), "removed unreferenced trees")
        }
        Ok(_) => {}
        Err(e) => warn!("garbage collection failed (the store is still valid): {e}"),
    }

    // Reboot.
    let status: Option<BootStatus> = match read_json(&cli.status) {
        Ok(s) => s,
        Err(e) => {
            warn!("ignoring the loader status {}: {e}", cli.status.display());
            None
        }
    };
    let boot_id = std::fs::read_to_string(&cli.boot_id)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let guard_path = store.layout().reboot_guard();
    let guard: RebootGuard = read_json(&guard_path)?.unwrap_or(RebootGuard {
        version: STORE_VERSION,
        reboots: vec![],
    });
    let decision = decide(&RebootInputs {
        kernel: kernel.as_str(),
        boot_id: &boot_id,
        status: status.as_ref(),
        sets: &running_sets,
        failed: running_failed,
        no_reboot: cli.no_reboot,
        hatches: &hatches,
        guard: &guard,
        now: now_secs(),
    });
    let mut last = PullStatus {
        version: STORE_VERSION,
        finished_at: now_secs(),
        kernel_release: kernel.to_string(),
        pulls: records,
        reboot: decision.label().into(),
        error: None,
    };
    let mut exit = if running_failed || prefetch_failed {
        Exit::PullFailed
    } else if config_errors > 0 {
        Exit::Config
    } else {
        Exit::Ok
    };
    match &decision {
        RebootDecision::NotNeeded(why) => info!("reboot: notNeeded ({why})"),
        RebootDecision::SkippedAfterFailure => {
            info!("reboot: skippedAfterFailure (a pull for the running kernel failed)")
        }
        RebootDecision::Disabled => {
            info!("reboot: disabled (--no-reboot); the new modules load on the next boot")
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
            exit = Exit::GuardRefused;
        }
        RebootDecision::Request(rec) => {
            // Durable before asking: a reboot that happens is never repeated for this content.
            write_json_atomic(&guard_path, &guard_with(guard.clone(), rec.clone()))?;
            write_json_atomic(&store.layout().last_pull(), &last)?;
            info!(
                kernel = rec.kernel_release,
                digests = rec.manifest_digests.join(","),
                ms = started.elapsed().as_millis() as u64,
                "reboot: requested"
            );
            let asked = match &cli.reboot_marker {
                Some(m) => std::fs::write(m, format!("{}\n", rec.manifest_digests.join(",")))
                    .map_err(anyhow::Error::from),
                None => request_reboot().await,
            };
            if let Err(e) = asked {
                // Nothing rebooted: take the guard record back so a later run may ask again.
                write_json_atomic(&guard_path, &guard)?;
                last.reboot = "failed".into();
                last.error = Some(format!("asking for a reboot: {e:#}"));
                write_json_atomic(&store.layout().last_pull(), &last)?;
                error!(
                    "asking for a reboot failed: {e:#}; reboot the node to load the new modules"
                );
                return Ok(Exit::PullFailed);
            }
            return Ok(exit);
        }
    }
    if exit == Exit::PullFailed {
        last.error = Some("a pull failed; see pulls".into());
    }
    write_json_atomic(&store.layout().last_pull(), &last)?;
    info!(
        ms = started.elapsed().as_millis() as u64,
        images = jobs.len(),
        "done"
    );
    Ok(exit)
}

struct Puller<'a> {
    store: &'a Store,
    registries: &'a RegistriesConf,
    net: NetConfig,
    policy: RetryPolicy,
    limits: ExtractLimits,
    tty: bool,
    clients: HashMap<(String, bool), HostClient>,
    secrets: HashMap<PathBuf, PullSecret>,
}

/// Retries `op` while its error is retryable and the budget allows.
async fn with_retries<T>(
    policy: &RetryPolicy,
    what: &str,
    mut op: impl AsyncFnMut() -> Result<T, FetchError>,
) -> Result<T, FetchError> {
    let mut attempt = 0u32;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.retryable() => match policy.next_wait(attempt, e.retry_after()) {
                Some(wait) => {
                    warn!(
                        attempt = attempt + 1,
                        wait_ms = wait.as_millis() as u64,
                        "{what}: {e}; retrying"
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                None => {
                    let why = match e.retry_after() {
                        Some(ra) => format!(
                            "the registry asked to retry after {} s, beyond the {} s left of the retry budget",
                            ra.as_secs(),
                            policy.remaining().as_secs()
                        ),
                        None => "the retry budget is spent".into(),
                    };
                    return Err(FetchError::Budget(format!(
                        "{e} (gave up after {} attempts: {why}; raise --budget or fix the registry or network)",
                        attempt + 1
                    )));
                }
            },
            Err(e) => return Err(e),
        }
    }
}

impl Puller<'_> {
    fn secret(&mut self, path: &Path) -> anyhow::Result<PullSecret> {
        if let Some(s) = self.secrets.get(path) {
            return Ok(s.clone());
        }
        let s = PullSecret::load(path)?;
        self.secrets.insert(path.to_owned(), s.clone());
        Ok(s)
    }

    /// Makes sure the job's image is in the store.
    async fn ensure(&mut self, job: &Job<'_>, bytes: &mut u64) -> anyhow::Result<Outcome> {
        let layout = self.store.layout().clone();
        let existing = layout
            .read_ref(job.config, &job.set.name, &job.kernel)
            .unwrap_or_else(|e| {
                warn!("ignoring an unreadable ref: {e}");
                None
            })
            // Same image, and extracted with today's dirName and firmwarePath.
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
            });
        // A digest reference cannot change: no need to ask the registry.
        if let Some(r) = &existing {
            if job.image.is_pinned() {
                return Ok(Outcome::Unchanged(r.clone()));
            }
        }
        let sources = self.registries.sources(&job.image)?;
        let secret = self.secret(Path::new(job.set.pull_secret.as_str()))?;
        let mut errors = vec![];
        let mut resolved = None;
        for src in &sources {
            info!(image = %job.image, from = %src.image, "pulling {}", job.image);
            match self.resolve(src, &secret).await {
                Ok(r) => {
                    resolved = Some((src.clone(), r));
                    break;
                }
                Err(e) => {
                    if src.mirror {
                        warn!(mirror = %src.image, "mirror failed, trying the next source: {e}");
                    }
                    errors.push(format!("from {}: {e}", src.image.registry));
                }
            }
        }
        let Some((src, resolved)) = resolved else {
            if let Some(r) = existing {
                warn!(image = %job.image, "could not check for a newer image, keeping the stored one: {}", errors.join("; "));
                return Ok(Outcome::Unchanged(r));
            }
            anyhow::bail!("pulling {} failed: {}", job.image, errors.join("; "));
        };
        let digest = resolved.manifest_digest.to_string();
        if let Some(r) = existing {
            if r.manifest_digest == digest {
                return Ok(Outcome::Unchanged(r));
            }
        }
        let id = tree_id(
            &digest,
            &job.set.dir_name,
            &job.kernel,
            job.set.firmware_path.as_ref(),
        );
        if !self.store.has_tree(&id) {
            self.fetch_tree(&src, &secret, &resolved, job, &id, bytes)
                .await?;
        }
        let rec = RefRecord {
            version: STORE_VERSION,
            image: job.image.to_string(),
            manifest_digest: digest,
            tree: id,
            committed_at: now_secs(),
        };
        self.store
            .write_ref(job.config, &job.set.name, &job.kernel, &rec)?;
        Ok(Outcome::Committed(rec))
    }

    fn client(&mut self, src: &PullSource) -> Result<&HostClient, FetchError> {
        let key = (src.image.registry.clone(), src.insecure);
        if !self.clients.contains_key(&key) {
            let c = HostClient::new(&src.image.registry, src.insecure, &self.net)?;
            self.clients.insert(key.clone(), c);
        }
        Ok(&self.clients[&key])
    }

    async fn resolve(
        &mut self,
        src: &PullSource,
        secret: &PullSecret,
    ) -> Result<ResolvedImage, FetchError> {
        let deadline = self.policy.deadline;
        let policy = self.policy.clone();
        let cred = secret.lookup(&src.image).cloned();
        let client = self.client(src)?;
        let mut repo = Repo::new(client, src.image.clone(), cred, deadline);
        with_retries(&policy, &format!("resolving {}", src.image), async || {
            repo.resolve().await
        })
        .await
    }

    async fn fetch_tree(
        &mut self,
        src: &PullSource,
        secret: &PullSecret,
        img: &ResolvedImage,
        job: &Job<'_>,
        id: &str,
        bytes: &mut u64,
    ) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let deadline = self.policy.deadline;
        let policy = self.policy.clone();
        let limits = self.limits;
        let tty = self.tty;
        let store = self.store;
        let cred = secret.lookup(&src.image).cloned();
        let client = self.client(src)?;
        let mut repo = Repo::new(client, src.image.clone(), cred, deadline);
        let staging = store.tmp_path(&format!("tree-{id}"));
        let selection = Selection::new(
            &job.set.dir_name,
            &job.kernel,
            job.set.firmware_path.as_ref(),
        );
        let builder = TreeBuilder::new(staging.clone(), selection, limits)?;
        let total: u64 = img.layers.iter().map(|l| l.size).sum();
        info!(image = %job.image, digest = %img.manifest_digest, layers = img.layers.len(), size = human_bytes(total), "downloading {}", job.image);
        // Speculative extraction: each layer is extracted on a blocking thread while it
        // downloads, into the private staging directory. A layer's stream ends cleanly only
        // after its blob matched digest and size (see layer_stream), and the tree is
        // committed only when every layer did; on any failure the staging directory goes.
        // Nothing unverified is ever committed, and the blob never touches the disk.
        let (tx, mut rx) = layer_stream::channel();
        let digests: Vec<String> = img.layers.iter().map(|l| l.digest.to_string()).collect();
        let extractor = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut builder = builder;
            for digest in &digests {
                let mut layer = LayerReader::new(&mut rx);
                builder.apply_layer(&mut layer, digest)?;
                layer
                    .read_to_verified_end()
                    .with_context(|| format!("reading layer {digest}"))?;
            }
            Ok(builder.finish()?)
        });
        let mut download = async || -> anyhow::Result<()> {
            for (i, layer) in img.layers.iter().enumerate() {
                if layer.size > limits.max_layer {
                    anyhow::bail!(
                        "layer {} of {} is {} bytes, over the layer limit",
                        layer.digest,
                        job.image,
                        layer.size
                    );
                }
                let mut dl = BlobDownload::new(Some(tx.clone()));
                let mut progress = Progress::new(
                    format!("{} layer {}/{}", job.image, i + 1, img.layers.len()),
                    layer.size,
                    tty,
                );
                let what = format!("downloading layer {} of {}", layer.digest, src.image);
                with_retries(&policy, &what, async || {
                    repo.blob(layer, &mut dl, &mut progress).await
                })
                .await?;
                progress.finish();
                *bytes += layer.size;
                if !dl.extractor_alive() {
                    // The extractor stopped on a verified layer: its error is the one to
                    // report.
                    break;
                }
            }
            Ok(())
        };
        let downloaded = download().await;
        // The extractor sees the end of the stream (an error unless every layer verified).
        drop(tx);
        let extracted = extractor.await.context("extraction thread");
        // A failed download (a digest mismatch above all) explains an extraction error of
        // the same bytes, so it is reported first.
        let stats = match downloaded.and_then(|()| extracted?) {
            Ok(stats) => stats,
            Err(e) => {
                if let Err(rm) = std::fs::remove_dir_all(&staging) {
                    warn!(path = %staging.display(), "removing the staging directory: {rm}");
                }
                return Err(e);
            }
        };
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
