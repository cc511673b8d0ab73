// SPDX-License-Identifier: Apache-2.0
//! An in-process OCI distribution registry for tests: plain HTTP on `127.0.0.1:<ephemeral>`,
//! read side of the distribution API over HTTP, push side through this Rust API, with
//! authentication, fault injection and a request log; plus an in-memory builder of kmod
//! images (tar layers in gzip, zstd or plain, config, OCI or Docker manifests, indexes).
//!
//! ```
//! use kmod_day1_test_registry::{Auth, Compression, Fault, Image, Layer, Registry};
//!
//! let registry = Registry::start_with_auth(Auth::bearer("puller", "s3cret")).unwrap();
//! let image = Image::new()
//!     .layer(
//!         Layer::new()
//!             .compression(Compression::Zstd)
//!             .dir("opt/lib/modules/6.1.0-18-amd64/")
//!             .file("opt/lib/modules/6.1.0-18-amd64/ice.ko", b"\x7fELF".to_vec())
//!             .symlink("opt/lib/modules/6.1.0-18-amd64/weak.ko", "ice.ko"),
//!     )
//!     .build()
//!     .unwrap();
//! let digest = registry.push_image("kmods/ice", "6.1.0-18-amd64", &image);
//! assert_eq!(digest, image.digest);
//! // What the client under test is given:
//! let reference = registry.reference("kmods/ice", "6.1.0-18-amd64");
//! assert!(reference.starts_with("127.0.0.1:"));
//!
//! // The first two blob downloads fail with 503 and Retry-After: 1.
//! let rule = registry.fault(Fault::status_retry_after(503, 1).on("/blobs/").times(2));
//! // ... run the client ...
//! assert_eq!(registry.fault_fired(rule), 0);
//! assert_eq!(registry.blob_gets(), 0);
//! ```
//!
//! Beside it: [`docker`] runs Debian's real `docker-registry` and pushes to it with skopeo,
//! the reference where this server must not be trusted; [`cosign`] writes signatures in
//! cosign's attachment format.
//!
//! # Faults at a glance
//!
//! | scenario | rule |
//! |---|---|
//! | 500s, then recovery | `Fault::status(500).on("/blobs/").times(2)` |
//! | 429 + Retry-After | `Fault::status_retry_after(429, 1).on("/manifests/").times(1)` |
//! | connection cut mid-blob | `Fault::CutAfter { bytes: 4096 }.on(&layer.digest).times(1)` |
//! | no `Range` support after a cut | `Fault::IgnoreRange.on(&layer.digest).after(1).times(1)` |
//! | server stalls mid-blob | `Fault::StallAfter { bytes: 4096 }.on("/blobs/")` |
//! | bytes do not match the digest | `Fault::CorruptBody.on("/blobs/")`, or [`Registry::push_blob_as`] |
//! | manifest content lies | `Fault::LyingManifest.on("/manifests/")`, `Fault::ReplaceBody(..)` |
//! | digest header lies | `Fault::WrongDigestHeader.on("/manifests/")` |
//! | slow server | `Fault::Slow { bytes_per_sec: 64 * 1024 }.everywhere()` |
//! | hangs before answering | `Fault::Delay(Duration::from_secs(30)).on("/v2/")` |
//! | closes without answering | `Fault::Drop.on("/manifests/").times(1)` |
//! | hostile headers (any status) | `Fault::header("WWW-Authenticate", "Bearer realm=ftp://x").on("/v2/")` |
//!
//! # Design
//!
//! - The server runs on a thread of its own with a current-thread tokio runtime, so it keeps
//!   serving while the test blocks (`std::process::Command::output()` on the binary under
//!   test), and works the same from `#[test]` and from `#[tokio::test]` of any flavour. Every
//!   method of [`Registry`] is synchronous. Dropping the [`Registry`] stops the server, closes
//!   its connections and joins the thread.
//! - HTTP/1.1 is hand-rolled (keep-alive, pipelining, fixed-length bodies) so that faults act
//!   on the wire: see [`Fault`] for what can go wrong and [`FaultRule`] for when. Requests in
//!   absolute form (a client using the registry as its `HTTP_PROXY`) are served too, and
//!   flagged in the log ([`RequestRecord::proxied`]).
//! - [`Registry::requests`] logs every request (method, path, headers, status, faults
//!   fired); [`Registry::blob_gets`] and [`Registry::count`] answer "did the cached run
//!   download anything?".
//! - Served over HTTP: `GET`/`HEAD` `/v2/`, `/v2/<name>/manifests/<tag|digest>`,
//!   `/v2/<name>/blobs/<digest>` (with single `Range` requests), `/v2/<name>/tags/list`, and
//!   `GET /token` for [`Auth::Bearer`]. Names may contain slashes. Errors carry the spec's
//!   JSON error bodies and codes (`MANIFEST_UNKNOWN`, `BLOB_UNKNOWN`, `NAME_UNKNOWN`, ...).
//! - Blobs are linked per repository, like real registries: a blob pushed to one repository
//!   is not served from another.
//! - [`Registry::redirect_blobs`] makes blob downloads go through a `307` to a second origin,
//!   as with registries backed by object storage or a CDN.

mod auth;
pub mod cosign;
mod digest;
pub mod docker;
mod faults;
mod http;
mod image;
mod server;
mod throttle;

use std::collections::btree_map::Entry;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

pub use auth::{basic_authorization, Auth, TOKEN_PATH, TOKEN_SERVICE};
pub use digest::sha256_digest;
pub use faults::{Fault, FaultId, FaultRule};
pub use image::{
    index_manifest, BuiltImage, BuiltLayer, Compression, Image, Layer, RawEntry, DOCKER_CONFIG,
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST,
};
pub use server::RequestRecord;

use faults::ActiveRule;
use server::{Shared, State, StoredManifest};

/// A running registry. Stops when dropped.
#[derive(Debug)]
pub struct Registry {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Registry {
    /// Starts an anonymous registry on `127.0.0.1:0`.
    pub fn start() -> io::Result<Self> {
        Self::start_with_auth(Auth::None)
    }

    /// Starts a registry on `127.0.0.1:0` that requires `auth`.
    pub fn start_with_auth(auth: Auth) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        // A second origin for redirected blob downloads (see `redirect_blobs`).
        let blob_store = std::net::TcpListener::bind("127.0.0.1:0")?;
        blob_store.set_nonblocking(true)?;
        let blob_store_url = format!("http://{}", blob_store.local_addr()?);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                auth,
                ..State::default()
            }),
            base_url: format!("http://{addr}"),
            blob_store_url,
            throttle: Arc::new(Mutex::new(None)),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let (shutdown, stop) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("test-registry-{}", addr.port()))
            .spawn({
                let shared = Arc::clone(&shared);
                move || runtime.block_on(accept_loop([listener, blob_store], shared, stop))
            })?;
        Ok(Self {
            shared,
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Serves at most `max` requests at once from now on (connections with a request in
    /// flight): a request beyond them gets 429 with a `Retry-After` that reserves its client
    /// a later slot (`slot` per `max` clients, at most a minute ahead).
    pub fn throttle(&self, max: usize, slot: std::time::Duration) {
        *self
            .shared
            .throttle
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(throttle::Throttle::new(max, slot));
    }

    /// Connections the throttle refused so far.
    pub fn throttled(&self) -> u64 {
        self.shared
            .throttle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, throttle::Throttle::refused)
    }

    /// The socket address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>`, the registry part of an image reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// `http://127.0.0.1:<other port>`, the blob store that [`Registry::redirect_blobs`]
    /// sends blob downloads to.
    pub fn blob_store_url(&self) -> String {
        self.shared.blob_store_url.clone()
    }

    /// With `true`, blob `GET`s are answered `307 Temporary Redirect` to
    /// `<blob_store_url>/blobstore/<digest>`, another origin (another port) that serves
    /// without authentication, as registries backed by object storage or a CDN do. The log
    /// then shows the redirect under `/v2/.../blobs/` and the download under `/blobstore/`:
    /// a test can check that the client followed it and did not send its registry
    /// credentials there. `HEAD`s are answered directly.
    pub fn redirect_blobs(&self, on: bool) {
        self.shared.lock().redirect_blobs = on;
    }

    /// An image reference: `127.0.0.1:<port>/<repository>:<tag>`, or `...@<digest>` when
    /// `tag_or_digest` is a digest.
    pub fn reference(&self, repository: &str, tag_or_digest: &str) -> String {
        let separator = if tag_or_digest.contains(':') {
            '@'
        } else {
            ':'
        };
        format!("{}/{repository}{separator}{tag_or_digest}", self.addr)
    }

    /// Stores a blob and links it into `repository`; returns its digest.
    ///
    /// # Panics
    /// When `repository` is not a valid repository name: a bug in the test.
    pub fn push_blob(&self, repository: &str, bytes: impl Into<Vec<u8>>) -> String {
        let bytes: Vec<u8> = bytes.into();
        let digest = sha256_digest(&bytes);
        self.push_blob_as(repository, &digest, bytes);
        digest
    }

    /// Stores `bytes` under `digest` whatever their real digest: a blob that lies at rest
    /// (every download of it fails verification, unlike [`Fault::CorruptBody`] which can be
    /// limited to some requests).
    pub fn push_blob_as(&self, repository: &str, digest: &str, bytes: impl Into<Vec<u8>>) {
        assert!(digest::is_valid_digest(digest), "invalid digest {digest:?}");
        let mut state = self.shared.lock();
        state.blobs.insert(digest.to_owned(), bytes.into().into());
        repository_mut(&mut state, repository)
            .blobs
            .insert(digest.to_owned());
    }

    /// Unlinks a blob from `repository` (its downloads then get 404 `BLOB_UNKNOWN`); returns
    /// whether it was linked.
    pub fn delete_blob(&self, repository: &str, digest: &str) -> bool {
        let mut state = self.shared.lock();
        state
            .repositories
            .get_mut(repository)
            .is_some_and(|r| r.blobs.remove(digest))
    }

    /// Stores a manifest (any bytes: a test may push a malformed one) with this media type,
    /// tagged `tag` when given; returns its digest. Referenced blobs are not checked.
    pub fn push_manifest(
        &self,
        repository: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: impl Into<Vec<u8>>,
    ) -> String {
        let bytes: Vec<u8> = bytes.into();
        let digest = sha256_digest(&bytes);
        let mut state = self.shared.lock();
        let repo = repository_mut(&mut state, repository);
        repo.manifests.insert(
            digest.clone(),
            StoredManifest {
                media_type: media_type.to_owned(),
                bytes: bytes.into(),
            },
        );
        if let Some(tag) = tag {
            assert!(server::is_valid_tag(tag), "invalid tag {tag:?}");
            repo.tags.insert(tag.to_owned(), digest.clone());
        }
        digest
    }

    /// Pushes an image's blobs and manifest, tagged `tag`; returns the manifest digest.
    pub fn push_image(&self, repository: &str, tag: &str, image: &BuiltImage) -> String {
        self.push_image_blobs(repository, image);
        self.push_manifest(
            repository,
            Some(tag),
            &image.media_type,
            image.manifest.clone(),
        )
    }

    /// Pushes an image's blobs and manifest without a tag (reachable by digest only).
    pub fn push_image_untagged(&self, repository: &str, image: &BuiltImage) -> String {
        self.push_image_blobs(repository, image);
        self.push_manifest(repository, None, &image.media_type, image.manifest.clone())
    }

    fn push_image_blobs(&self, repository: &str, image: &BuiltImage) {
        self.push_blob(repository, image.config.clone());
        for layer in &image.layers {
            self.push_blob(repository, layer.bytes.clone());
        }
    }

    /// Pushes `images` by digest and an OCI image index over them (their platforms from
    /// [`Image::platform`]), tagged `tag`; returns the index digest.
    pub fn push_index(&self, repository: &str, tag: &str, images: &[&BuiltImage]) -> String {
        for image in images {
            self.push_image_untagged(repository, image);
        }
        let (index, media_type) = index_manifest(images, false);
        self.push_manifest(repository, Some(tag), media_type, index)
    }

    /// Points `tag` at `digest` (which should be a manifest of `repository`).
    pub fn tag(&self, repository: &str, tag: &str, digest: &str) {
        assert!(server::is_valid_tag(tag), "invalid tag {tag:?}");
        let mut state = self.shared.lock();
        repository_mut(&mut state, repository)
            .tags
            .insert(tag.to_owned(), digest.to_owned());
    }

    /// Removes `tag`; returns whether it existed.
    pub fn untag(&self, repository: &str, tag: &str) -> bool {
        let mut state = self.shared.lock();
        state
            .repositories
            .get_mut(repository)
            .is_some_and(|r| r.tags.remove(tag).is_some())
    }

    /// Adds a fault rule; a bare [`Fault`] applies to every request.
    pub fn fault(&self, rule: impl Into<FaultRule>) -> FaultId {
        let mut state = self.shared.lock();
        state.rules.push(ActiveRule::new(rule.into()));
        FaultId(state.rules.len() - 1)
    }

    /// How many times the rule has fired.
    pub fn fault_fired(&self, id: FaultId) -> u32 {
        self.shared.lock().rules.get(id.0).map_or(0, |r| r.fired)
    }

    /// Disables one rule.
    pub fn remove_fault(&self, id: FaultId) {
        if let Some(rule) = self.shared.lock().rules.get_mut(id.0) {
            rule.removed = true;
        }
    }

    /// Disables every rule.
    pub fn clear_faults(&self) {
        for rule in &mut self.shared.lock().rules {
            rule.removed = true;
        }
    }

    /// Changes the authentication required from now on (issued tokens stay valid).
    pub fn set_auth(&self, auth: Auth) {
        self.shared.lock().auth = auth;
    }

    /// Invalidates every issued bearer token: the next request gets a 401 challenge, as when
    /// a token expires mid-pull.
    pub fn revoke_tokens(&self) {
        self.shared.lock().tokens.revoke_all();
    }

    /// Every request served so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().log.clone()
    }

    /// Requests with this method whose path contains `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .count()
    }

    /// `GET` requests for blobs (answered or not): zero on a run that downloads nothing.
    pub fn blob_gets(&self) -> usize {
        self.count("GET", "/blobs/")
    }

    /// `GET` requests for manifests.
    pub fn manifest_gets(&self) -> usize {
        self.count("GET", "/manifests/")
    }

    /// Empties the request log (fault counters are kept).
    pub fn clear_requests(&self) {
        self.shared.lock().log.clear();
    }
}

fn repository_mut<'a>(state: &'a mut State, name: &str) -> &'a mut server::Repository {
    assert!(
        server::is_valid_name(name),
        "invalid repository name {name:?}"
    );
    match state.repositories.entry(name.to_owned()) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert(server::Repository::default()),
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            // The accept loop returns at once; its connection tasks are aborted with it.
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listeners: [std::net::TcpListener; 2],
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let [registry, blob_store] = listeners;
    let (Ok(registry), Ok(blob_store)) = (
        tokio::net::TcpListener::from_std(registry),
        tokio::net::TcpListener::from_std(blob_store),
    ) else {
        return;
    };
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = registry.accept() => accepted.map(|(s, _)| (s, server::Origin::Registry)),
            accepted = blob_store.accept() => accepted.map(|(s, _)| (s, server::Origin::BlobStore)),
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        match accepted {
            Ok((stream, origin)) => {
                connections.spawn(server::serve_connection(
                    Arc::clone(&shared),
                    stream,
                    origin,
                ));
            }
            // Out of file descriptors or similar: do not spin.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    connections.shutdown().await;
}
