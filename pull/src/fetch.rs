// SPDX-License-Identifier: Apache-2.0
//! The registry side: one HTTP client per registry host (its CAs from certs.d, proxy from
//! the environment, plain HTTP when registries.conf says `insecure`), manifests resolved to
//! this machine's platform and verified, blobs fetched with `Range` resumption (see `tree_fetch`).
//!
//! oci-client does the token dance (the `WWW-Authenticate` bearer realm flow, with the pull
//! secret's credentials); the GETs themselves go through the same reqwest client stack here
//! because retries need the status and `Retry-After` of each answer, and resuming a cut
//! download needs `Range`, neither of which oci-client exposes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt as _;
use kmod_day1_contract::ImageRef;
use serde::Deserialize;

use crate::auth::Credential;
use crate::retry::parse_retry_after;
use crate::verify::Digest;

/// Largest manifest or index accepted.
pub const MAX_MANIFEST: usize = 4 << 20;
/// Most layers accepted in an image.
pub const MAX_LAYERS: usize = 256;
/// Most bytes of an error answer's body read (for its message).
const MAX_ERROR_BODY: usize = 4096;
/// Longest bearer token accepted from a token service (real ones are a few KiB of JWT).
pub const MAX_TOKEN: usize = 64 << 10;

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Network settings shared by every registry.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// `/etc/containers/certs.d`: `<host[:port]>/*.crt` are extra CAs for that registry.
    pub certs_dir: PathBuf,
    /// Timeout to establish a connection.
    pub connect_timeout: Duration,
    /// Longest silence while reading an answer.
    pub read_timeout: Duration,
    /// `HTTPS_PROXY`.
    pub https_proxy: Option<String>,
    /// `HTTP_PROXY` (for insecure registries).
    pub http_proxy: Option<String>,
    /// `NO_PROXY`.
    pub no_proxy: Option<String>,
}

impl NetConfig {
    /// Reads the proxy variables (upper or lower case, as curl does).
    pub fn with_proxy_env(mut self) -> Self {
        let var = |n: &str| {
            std::env::var(n.to_ascii_uppercase())
                .or_else(|_| std::env::var(n))
                .ok()
                .filter(|v| !v.is_empty())
        };
        self.https_proxy = var("https_proxy");
        self.http_proxy = var("http_proxy");
        self.no_proxy = var("no_proxy");
        self
    }
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Connection, TLS, timeout or a cut body.
    #[error("{what}: {message}")]
    Transport {
        /// What was being done.
        what: String,
        /// The cause chain.
        message: String,
        /// Whether trying again may help (not for a certificate or protocol mismatch).
        retry: bool,
    },
    /// A non-success HTTP status.
    #[error("{url} answered HTTP {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Status {
        /// The request.
        url: String,
        /// The status code.
        status: u16,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
        /// The start of the body (registry error JSON).
        message: String,
    },
    /// Credentials refused or missing.
    #[error("authenticating to {registry}: {message}")]
    Auth {
        /// Registry host.
        registry: String,
        /// What happened and what to do.
        message: String,
    },
    /// Content that does not match its digest.
    #[error("{what}: digest mismatch, expected {expected}, got {actual}; the registry or something between is serving wrong content")]
    Digest {
        /// Which content.
        what: String,
        /// From the manifest or reference.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// An answer that breaks the distribution spec or this tool's limits.
    #[error("{0}")]
    Invalid(String),
    /// The retry budget ran out.
    #[error("{0}")]
    Budget(String),
}

impl FetchError {
    /// Whether trying again may help.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Transport { retry, .. } => *retry,
            Self::Status { status, .. } => matches!(status, 408 | 429) || *status >= 500,
            _ => false,
        }
    }

    /// The server's `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn transport(what: impl Into<String>, e: &(dyn std::error::Error + 'static)) -> Self {
        // reqwest's own top line repeats the URL ("error sending request for url (...)"):
        // the causes say more.
        let mut message = match e.source() {
            Some(cause) => error_chain(cause),
            None => e.to_string(),
        };
        let lower = message.to_ascii_lowercase();
        // A certificate or protocol mismatch, or a redirect refused, does not heal: fail now,
        // with what to do.
        let mut retry = true;
        // A URL that cannot be requested (a token realm that is not an http(s) URL) stays so.
        if e.downcast_ref::<reqwest::Error>()
            .is_some_and(|r| r.is_redirect() || r.is_builder())
        {
            retry = false;
        } else if lower.contains("certificate") || lower.contains("unknownissuer") {
            message.push_str(" (a registry with a private CA needs it in /etc/containers/certs.d/<host[:port]>/ca.crt)");
            retry = false;
        } else if lower.contains("invalidcontenttype") || lower.contains("corrupt message") {
            message.push_str(
                " (the registry may speak plain HTTP: mark it insecure = true in registries.conf)",
            );
            retry = false;
        }
        Self::Transport {
            what: what.into(),
            message,
            retry,
        }
    }
}

/// `e: cause: cause` in one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// HTTP clients for one registry host.
pub struct HostClient {
    host: String,
    api_host: String,
    scheme: &'static str,
    http: reqwest::Client,
    // Built on the first 401 only: oci-client's constructor panics on a node without a CA
    // bundle (it always builds a default reqwest client), and a plain-HTTP anonymous
    // registry must work there.
    oci: std::sync::OnceLock<Result<oci_client::Client, String>>,
    mode: TlsMode,
    insecure: bool,
    net: NetConfig,
    oci_certs: Vec<oci_client::client::Certificate>,
}

fn ca_files(certs_dir: &Path, host: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(certs_dir.join(host))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "crt"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl HostClient {
    /// A client for `host` (`name[:port]`).
    pub fn new(host: &str, insecure: bool, net: &NetConfig) -> Result<Self, FetchError> {
        let bad = |m: String| FetchError::Invalid(format!("setting up the client for {host}: {m}"));
        let mut certs = vec![];
        let mut oci_certs = vec![];
        for f in ca_files(&net.certs_dir, host) {
            let pem =
                std::fs::read(&f).map_err(|e| bad(format!("reading {}: {e}", f.display())))?;
            certs.extend(reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                bad(format!(
                    "{} is not a PEM certificate bundle: {e}",
                    f.display()
                ))
            })?);
            oci_certs.push(oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: pem,
            });
        }
        // Insecure hosts need no trust store at all (a node without a CA bundle must still
        // reach its plain-HTTP registry); others use the system bundle plus certs.d, or
        // certs.d alone when the system has no bundle.
        let modes: &[TlsMode] = if insecure {
            &[TlsMode::NoVerify]
        } else if certs.is_empty() {
            &[TlsMode::System]
        } else {
            &[TlsMode::System, TlsMode::CertsDirOnly]
        };
        let mut last_err = String::new();
        for mode in modes {
            match build_http(*mode, net, &certs) {
                Ok(http) => {
                    // Docker Hub's API lives on another name than its references.
                    let api_host = if host == "docker.io" {
                        "registry-1.docker.io"
                    } else {
                        host
                    };
                    return Ok(Self {
                        host: host.to_owned(),
                        api_host: api_host.to_owned(),
                        scheme: "https",
                        http,
                        oci: std::sync::OnceLock::new(),
                        mode: *mode,
                        insecure,
                        net: net.clone(),
                        oci_certs,
                    });
                }
                Err(e) => last_err = e,
            }
        }
        if last_err.contains("No CA certificates") {
            last_err = format!(
                "{last_err}: install the system CA bundle (ca-certificates) or put the registry's CA in {}",
                net.certs_dir.join(host).join("ca.crt").display()
            );
        }
        Err(bad(last_err))
    }
}

impl HostClient {
    /// For a registry marked `insecure`, what containers/image does: HTTPS without
    /// certificate verification when the registry answers on HTTPS (any HTTP status counts),
    /// plain HTTP only when it does not. Other registries: HTTPS.
    pub async fn pick_scheme(&mut self, deadline: Instant) {
        if !self.insecure {
            return;
        }
        let url = format!("https://{}/v2/", self.api_host);
        let answered = tokio::time::timeout_at(deadline.into(), self.http.get(&url).send())
            .await
            .is_ok_and(|r| r.is_ok());
        if !answered {
            self.scheme = "http";
        }
        tracing::debug!(host = self.host, scheme = self.scheme, "insecure registry");
    }

    /// Whether requests go over plain HTTP.
    fn plain_http(&self) -> bool {
        self.scheme == "http"
    }
}

/// How a client trusts servers.
#[derive(Debug, Clone, Copy)]
enum TlsMode {
    /// The system bundle plus certs.d.
    System,
    /// certs.d only.
    CertsDirOnly,
    /// No verification: for registries marked insecure (plain HTTP; containers/image also
    /// skips verification for them).
    NoVerify,
}

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 10;

/// Redirects (blob storage behind a CDN is common) are followed, except back to a URL
/// already seen (a loop), past [`MAX_REDIRECTS`], or from HTTPS down to plain HTTP. Each of
/// those is a permanent error, never retried.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let previous = attempt.previous();
        if previous.iter().any(|u| u == attempt.url()) {
            let url = attempt.url().to_string();
            return attempt.error(format!("redirect loop back to {url}"));
        }
        if previous.len() >= MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        if previous.first().is_some_and(|u| u.scheme() == "https")
            && attempt.url().scheme() != "https"
        {
            let url = attempt.url().to_string();
            return attempt.error(format!(
                "redirect from HTTPS to {url} refused (a downgrade to another scheme)"
            ));
        }
        attempt.follow()
    })
}

fn build_http(
    mode: TlsMode,
    net: &NetConfig,
    certs: &[reqwest::Certificate],
) -> Result<reqwest::Client, String> {
    let no_proxy = net
        .no_proxy
        .as_deref()
        .and_then(reqwest::NoProxy::from_string);
    let mut b = reqwest::Client::builder()
        .connect_timeout(net.connect_timeout)
        .read_timeout(net.read_timeout)
        .user_agent(concat!("kmod-day1-pull/", env!("CARGO_PKG_VERSION")))
        .redirect(redirect_policy())
        .no_proxy();
    if let Some(p) = &net.https_proxy {
        b = b.proxy(
            reqwest::Proxy::https(p)
                .map_err(|e| format!("HTTPS_PROXY {p:?}: {e}"))?
                .no_proxy(no_proxy.clone()),
        );
    }
    if let Some(p) = &net.http_proxy {
        b = b.proxy(
            reqwest::Proxy::http(p)
                .map_err(|e| format!("HTTP_PROXY {p:?}: {e}"))?
                .no_proxy(no_proxy),
        );
    }
    b = match mode {
        TlsMode::System if certs.is_empty() => b,
        TlsMode::System => b.tls_certs_merge(certs.to_vec()),
        TlsMode::CertsDirOnly => b.tls_certs_only(certs.to_vec()),
        TlsMode::NoVerify => b.danger_accept_invalid_certs(true),
    };
    b.build().map_err(|e| error_chain(&e))
}

impl HostClient {
    /// oci-client, for the token flow.
    fn oci(&self) -> Result<&oci_client::Client, String> {
        self.oci
            .get_or_init(|| {
                if let Err(e) = reqwest::Client::builder().build() {
                    return Err(format!(
                        "the bearer token flow needs the system CA bundle ({}); install ca-certificates",
                        error_chain(&e)
                    ));
                }
                let mut cfg = oci_client::client::ClientConfig {
                    protocol: if self.plain_http() {
                        oci_client::client::ClientProtocol::Http
                    } else {
                        oci_client::client::ClientProtocol::Https
                    },
                    connect_timeout: Some(self.net.connect_timeout),
                    read_timeout: Some(self.net.read_timeout),
                    https_proxy: self.net.https_proxy.clone(),
                    http_proxy: self.net.http_proxy.clone(),
                    no_proxy: self.net.no_proxy.clone(),
                    platform_resolver: None,
                    ..Default::default()
                };
                match self.mode {
                    TlsMode::System => cfg.extra_root_certificates = self.oci_certs.clone(),
                    TlsMode::CertsDirOnly => cfg.tls_certs_only = self.oci_certs.clone(),
                    TlsMode::NoVerify => cfg.accept_invalid_certificates = true,
                }
                oci_client::Client::try_from(cfg).map_err(|e| error_chain(&e))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

#[derive(Debug, Clone)]
enum AuthState {
    Anonymous,
    Basic,
    Bearer(String),
}

/// A layer of a resolved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDesc {
    /// Blob digest.
    pub digest: Digest,
    /// Blob size.
    pub size: u64,
    /// Media type.
    pub media_type: String,
}

/// An image resolved to one platform manifest.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// Digest of the platform manifest (what refs record).
    pub manifest_digest: Digest,
    /// Digest of what the reference names (the index's, for an index): what signatures sign.
    pub reference_digest: Digest,
    /// Layers, bottom first.
    pub layers: Vec<LayerDesc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<Vec<RawDesc>>,
    layers: Option<Vec<RawDesc>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDesc {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: i64,
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    architecture: String,
    os: String,
}

/// An answer's `WWW-Authenticate`, quoted, printable and short, for messages (`none`).
fn challenge_of(resp: &reqwest::Response) -> String {
    match resp.headers().get(reqwest::header::WWW_AUTHENTICATE) {
        None => "none".into(),
        Some(v) => {
            let text: String = String::from_utf8_lossy(v.as_bytes())
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect();
            format!("{text:?}")
        }
    }
}

/// This machine's architecture in OCI terms.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// One image repository on one registry, with its credentials.
pub struct Repo<'a> {
    client: &'a HostClient,
    image: ImageRef,
    cred: Option<Credential>,
    auth: AuthState,
    deadline: Instant,
}

impl<'a> Repo<'a> {
    /// `image` (its registry must be `client`'s host), with optional credentials; no
    /// request goes past `deadline`.
    pub fn new(
        client: &'a HostClient,
        image: ImageRef,
        cred: Option<Credential>,
        deadline: Instant,
    ) -> Self {
        // Start anonymous even with credentials: the first 401 says which scheme to use.
        Self {
            client,
            image,
            cred,
            auth: AuthState::Anonymous,
            deadline,
        }
    }

    /// The image, as pulled from this registry.
    pub(crate) fn image(&self) -> &ImageRef {
        &self.image
    }

    /// The URL of `kind` (`manifests`, `blobs`) `reference` in this repository.
    pub(crate) fn url(&self, kind: &str, reference: &str) -> String {
        format!(
            "{}://{}/v2/{}/{kind}/{reference}",
            self.client.scheme, self.client.api_host, self.image.repository
        )
    }

    /// Gets credentials for the registry's `challenge` (its `WWW-Authenticate`, as
    /// [`challenge_of`] prints it; oci-client reads the header itself, the messages name it).
    async fn authenticate(&mut self, challenge: &str) -> Result<(), FetchError> {
        // The constructors, not parsing: parsing drags a regex engine into the binary.
        let (registry, repository) = (self.image.registry.clone(), self.image.repository.clone());
        let reference = match (&self.image.digest, &self.image.tag) {
            (Some(d), _) => oci_client::Reference::with_digest(registry, repository, d.clone()),
            (None, t) => oci_client::Reference::with_tag(
                registry,
                repository,
                t.clone().unwrap_or_else(|| "latest".into()),
            ),
        };
        let auth = match &self.cred {
            Some(c) => {
                oci_client::secrets::RegistryAuth::Basic(c.username.clone(), c.password.clone())
            }
            None => oci_client::secrets::RegistryAuth::Anonymous,
        };
        let oci = self.client.oci().map_err(|message| FetchError::Auth {
            registry: self.client.host.clone(),
            message,
        })?;
        let res = tokio::time::timeout_at(
            self.deadline.into(),
            oci.auth(&reference, &auth, oci_client::RegistryOperation::Pull),
        )
        .await
        .map_err(|_| {
            FetchError::Budget(format!(
                "the retry budget ran out while authenticating to {} (WWW-Authenticate {challenge})",
                self.client.host
            ))
        })?;
        let registry = self.client.host.clone();
        match res {
            // The token goes into every request's Authorization header: one that cannot is
            // refused here, once, rather than failing each request as a transport error.
            Ok(Some(token))
                if token.is_empty()
                    || token.len() > MAX_TOKEN
                    || reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                        .is_err() =>
            {
                return Err(FetchError::Auth {
                    registry,
                    message: format!(
                        "the token service (realm of WWW-Authenticate {challenge}) answered a token of {} bytes that cannot be sent in an Authorization header (empty, over {MAX_TOKEN} bytes, or with control characters); the token service or a proxy in front of it is broken",
                        token.len()
                    ),
                })
            }
            Ok(Some(token)) => self.auth = AuthState::Bearer(token),
            // oci-client asks `/v2/` again for the challenge; an answer without one while the
            // registry just asked for a bearer token is a throttled or failing registry
            // (a 429 or 5xx there), not one that takes basic credentials: try again later.
            Ok(None) if challenge.contains("Bearer") => {
                return Err(FetchError::Status {
                    url: format!("{}://{}/v2/", self.client.scheme, self.client.api_host),
                    status: 503,
                    retry_after: None,
                    message: format!(
                        "the registry asked for a bearer token (WWW-Authenticate {challenge}) but its /v2/ answered without a challenge when asked again (throttled or failing)"
                    ),
                })
            }
            Ok(None) if self.cred.is_some() => self.auth = AuthState::Basic,
            Ok(None) => {
                return Err(FetchError::Auth {
                    registry,
                    message: format!("the registry wants credentials (WWW-Authenticate {challenge}) and the pull secret has none for it; add an entry to the pull secret"),
                })
            }
            Err(oci_client::errors::OciDistributionError::RequestError(e)) => {
                return Err(FetchError::transport(
                    format!("authenticating to {registry} at the token service of WWW-Authenticate {challenge}"),
                    &e,
                ))
            }
            Err(oci_client::errors::OciDistributionError::RegistryTokenDecodeError(m)) => {
                return Err(FetchError::Auth {
                    registry,
                    message: format!(
                        "the token service (realm of WWW-Authenticate {challenge}) answered no token (a JSON object with a string token or access_token): {}",
                        m.chars().take(200).collect::<String>().trim()
                    ),
                })
            }
            // The token service's answer is not seen here, only its body: a distribution
            // spec error code of a throttled or unavailable service is worth another try.
            Err(oci_client::errors::OciDistributionError::AuthenticationFailure(m))
                if ["TOOMANYREQUESTS", "UNAVAILABLE"]
                    .iter()
                    .any(|code| m.contains(code)) =>
            {
                return Err(FetchError::Status {
                    url: format!("the token service of WWW-Authenticate {challenge}"),
                    status: 503,
                    retry_after: None,
                    message: m.chars().take(200).collect::<String>().trim().to_owned(),
                })
            }
            Err(oci_client::errors::OciDistributionError::AuthenticationFailure(m)) => {
                return Err(FetchError::Auth {
                    registry,
                    message: format!(
                        "the token service (realm of WWW-Authenticate {challenge}) refused the credentials ({}); check the pull secret",
                        m.chars().take(200).collect::<String>().trim()
                    ),
                })
            }
            Err(e) => {
                return Err(FetchError::Auth {
                    registry,
                    message: format!("{} (WWW-Authenticate {challenge})", error_chain(&e)),
                })
            }
        }
        Ok(())
    }

    /// GET with authentication (once more after a 401), a non-success status as an error.
    pub(crate) async fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
        from: u64,
    ) -> Result<reqwest::Response, FetchError> {
        let mut reauthed = false;
        loop {
            let mut req = self.client.http.get(url);
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            if from > 0 {
                req = req.header(reqwest::header::RANGE, format!("bytes={from}-"));
            }
            req = match (&self.auth, &self.cred) {
                (AuthState::Bearer(t), _) => req.bearer_auth(t),
                (AuthState::Basic, Some(c)) => req.basic_auth(&c.username, Some(&c.password)),
                _ => req,
            };
            let resp = tokio::time::timeout_at(self.deadline.into(), req.send())
                .await
                .map_err(|_| {
                    FetchError::Budget(format!("the retry budget ran out while requesting {url}"))
                })?
                .map_err(|e| FetchError::transport(format!("requesting {url}"), &e))?;
            let status = resp.status().as_u16();
            if status == 401 && !reauthed {
                reauthed = true;
                self.authenticate(&challenge_of(&resp)).await?;
                continue;
            }
            if resp.status().is_success() {
                return Ok(resp);
            }
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let challenge = challenge_of(&resp);
            // The start of the error body, within the deadline: a registry or proxy that
            // sends an endless or trickling one gets neither memory nor time for it.
            let mut body = vec![];
            let mut stream = resp.bytes_stream();
            while body.len() < MAX_ERROR_BODY {
                match self.next_chunk(&mut stream, url).await {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    _ => break,
                }
            }
            body.truncate(MAX_ERROR_BODY);
            let mut message: String = String::from_utf8_lossy(&body)
                .chars()
                .filter(|c| !c.is_control())
                .take(300)
                .collect();
            if status == 401 {
                message = format!(
                    "{message} (access denied: check the pull secret's entry for {}; WWW-Authenticate {challenge})",
                    self.client.host
                );
            } else if status == 403 {
                message = format!(
                    "{message} (access denied: check the pull secret's entry for {})",
                    self.client.host
                );
            }
            return Err(FetchError::Status {
                url: url.to_owned(),
                status,
                retry_after,
                message: message.trim().to_owned(),
            });
        }
    }

    /// The next chunk of an answer's body, within the deadline.
    pub(crate) async fn next_chunk(
        &self,
        stream: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
        url: &str,
    ) -> Result<Option<bytes::Bytes>, FetchError> {
        match tokio::time::timeout_at(self.deadline.into(), stream.next()).await {
            Err(_) => Err(FetchError::Budget(format!(
                "the retry budget ran out while reading {url}"
            ))),
            Ok(None) => Ok(None),
            Ok(Some(Ok(b))) => Ok(Some(b)),
            Ok(Some(Err(e))) => Err(FetchError::transport(format!("reading {url}"), &e)),
        }
    }

    /// Fetches a manifest by tag or digest; checks it against a digest reference and
    /// against the registry's `Docker-Content-Digest`.
    pub async fn manifest(&mut self, reference: &str) -> Result<(Vec<u8>, Digest), FetchError> {
        // A tag has no ':'; a digest reference is checked, and one this code cannot check
        // (sha512) is refused rather than trusted.
        let expected = if reference.contains(':') {
            Some(Digest::parse(reference).map_err(|e| {
                FetchError::Invalid(format!(
                    "manifest {}@{reference}: {e}; pin a sha256 digest",
                    self.image.name()
                ))
            })?)
        } else {
            None
        };
        let url = self.url("manifests", reference);
        let resp = self.get(&url, Some(ACCEPT_MANIFESTS), 0).await?;
        let header = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut stream = resp.bytes_stream();
        let mut body = vec![];
        while let Some(chunk) = self.next_chunk(&mut stream, &url).await? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_MANIFEST {
                return Err(FetchError::Invalid(format!(
                    "{url}: manifest larger than {MAX_MANIFEST} bytes"
                )));
            }
        }
        let digest = Digest::of(&body);
        let what = format!("manifest {}", self.image.name());
        if let Some(expected) = expected {
            if expected != digest {
                return Err(FetchError::Digest {
                    what: format!("{what}@{reference}"),
                    expected: expected.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        if let Some(h) = header.filter(|h| h.starts_with("sha256:")) {
            if h != digest.as_str() {
                return Err(FetchError::Digest {
                    what: format!("{what}:{reference} (Docker-Content-Digest header)"),
                    expected: h,
                    actual: digest.to_string(),
                });
            }
        }
        Ok((body, digest))
    }

    /// A small blob (a signature payload), read into memory: at most `max` bytes, checked
    /// against `digest`.
    pub async fn small_blob(&mut self, digest: &Digest, max: usize) -> Result<Vec<u8>, FetchError> {
        let url = self.url("blobs", digest.as_str());
        let resp = self.get(&url, None, 0).await?;
        let mut stream = resp.bytes_stream();
        let mut body = vec![];
        while let Some(chunk) = self.next_chunk(&mut stream, &url).await? {
            if body.len() + chunk.len() > max {
                return Err(FetchError::Invalid(format!(
                    "{url}: larger than {max} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let got = Digest::of(&body);
        if &got != digest {
            return Err(FetchError::Digest {
                what: format!("blob {digest} of {}", self.image.name()),
                expected: digest.to_string(),
                actual: got.to_string(),
            });
        }
        Ok(body)
    }

    /// Resolves the reference (tag or digest) to this platform's image manifest.
    pub async fn resolve(&mut self) -> Result<ResolvedImage, FetchError> {
        let reference = self
            .image
            .digest
            .clone()
            .or_else(|| self.image.tag.clone())
            .unwrap_or_else(|| "latest".into());
        let (body, digest) = self.manifest(&reference).await?;
        let m = parse_manifest(&body, &self.image)?;
        if let Some(list) = m.manifests {
            let arch = oci_arch();
            let entry = list
                .iter()
                .find(|d| {
                    d.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == arch)
                })
                .ok_or_else(|| {
                    FetchError::Invalid(format!(
                        "image index {} has no linux/{arch} manifest",
                        self.image
                    ))
                })?;
            let want = Digest::parse(&entry.digest)
                .map_err(|e| FetchError::Invalid(format!("image index {}: {e}", self.image)))?;
            let (body, got) = self.manifest(want.as_str()).await?;
            if entry.size >= 0 && body.len() as u64 != entry.size as u64 {
                return Err(FetchError::Invalid(format!(
                    "manifest {want} of {} is {} bytes, the index says {}",
                    self.image,
                    body.len(),
                    entry.size
                )));
            }
            let inner = parse_manifest(&body, &self.image)?;
            if inner.manifests.is_some() {
                return Err(FetchError::Invalid(format!(
                    "image index {} nests another index",
                    self.image
                )));
            }
            return Ok(ResolvedImage {
                manifest_digest: got,
                reference_digest: digest,
                layers: layers_of(inner, &self.image)?,
            });
        }
        Ok(ResolvedImage {
            manifest_digest: digest.clone(),
            reference_digest: digest,
            layers: layers_of(m, &self.image)?,
        })
    }
}

fn parse_manifest(body: &[u8], image: &ImageRef) -> Result<RawManifest, FetchError> {
    let m: RawManifest = serde_json::from_slice(body).map_err(|e| {
        FetchError::Invalid(format!(
            "manifest of {image} is not a valid OCI/Docker v2 manifest: {e}"
        ))
    })?;
    if m.schema_version != Some(2) {
        return Err(FetchError::Invalid(format!(
            "manifest of {image} has schemaVersion {:?}; only schema 2 (OCI or Docker v2) is supported",
            m.schema_version
        )));
    }
    if m.manifests.is_none() && m.layers.is_none() {
        return Err(FetchError::Invalid(format!(
            "manifest of {image} (media type {:?}) has neither layers nor manifests",
            m.media_type
        )));
    }
    Ok(m)
}

fn layers_of(m: RawManifest, image: &ImageRef) -> Result<Vec<LayerDesc>, FetchError> {
    let layers = m.layers.unwrap_or_default();
    if layers.is_empty() || layers.len() > MAX_LAYERS {
        return Err(FetchError::Invalid(format!(
            "image {image} has {} layers; expected 1 to {MAX_LAYERS}",
            layers.len()
        )));
    }
    layers
        .into_iter()
        .map(|l| {
            let digest = Digest::parse(&l.digest).map_err(|e| FetchError::Invalid(format!("a layer of {image}: {e}")))?;
            if !l.media_type.contains("tar") {
                return Err(FetchError::Invalid(format!(
                    "layer {digest} of {image} has media type {:?}, not a tar layer; is this a container image?",
                    l.media_type
                )));
            }
            if l.size < 0 {
                return Err(FetchError::Invalid(format!("layer {digest} of {image} has a negative size")));
            }
            Ok(LayerDesc {
                digest,
                size: l.size as u64,
                media_type: l.media_type,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_parse_and_are_checked() {
        let img = ImageRef::parse("r.io/a:1").unwrap();
        let d = Digest::of(b"x");
        let good = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"x","digest":"{d}","size":1}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":1}}]}}"#
        );
        let m = parse_manifest(good.as_bytes(), &img).unwrap();
        assert_eq!(layers_of(m, &img).unwrap()[0].digest, d);
        let helm = good.replace("layer.v1.tar+gzip", "helm.chart.content.v1");
        let e = layers_of(parse_manifest(helm.as_bytes(), &img).unwrap(), &img).unwrap_err();
        assert!(e.to_string().contains("not a tar layer"), "{e}");
        let bad_digest = good.replace(d.as_str(), "sha256:../../x");
        assert!(layers_of(parse_manifest(bad_digest.as_bytes(), &img).unwrap(), &img).is_err());
        assert!(parse_manifest(br#"{"schemaVersion":1,"fsLayers":[]}"#, &img).is_err());
        assert!(parse_manifest(b"<html>", &img).is_err());
    }

    proptest::proptest! {
        /// Any bytes as a manifest, and manifests with mutated fields: errors, never panics.
        #[test]
        fn any_manifest_parses_without_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let img = ImageRef::parse("r.io/a:1").unwrap();
            if let Ok(m) = parse_manifest(&body, &img) {
                let _ = layers_of(m, &img);
            }
        }

        #[test]
        fn mutated_manifest_fields_parse_without_panic(
            size in proptest::num::i64::ANY, digest in ".{0,80}", media in ".{0,40}", count in 0usize..300,
        ) {
            let img = ImageRef::parse("r.io/a:1").unwrap();
            let layer = serde_json::json!({"mediaType": media, "digest": digest, "size": size});
            let body = serde_json::json!({"schemaVersion": 2, "layers": vec![layer; count]}).to_string();
            if let Ok(m) = parse_manifest(body.as_bytes(), &img) {
                let _ = layers_of(m, &img);
            }
        }
    }

    #[test]
    fn errors_classify() {
        let s = |status| FetchError::Status {
            url: "u".into(),
            status,
            retry_after: Some(Duration::from_secs(2)),
            message: String::new(),
        };
        assert!(s(503).retryable());
        assert!(s(429).retryable());
        assert!(!s(404).retryable());
        assert!(!s(401).retryable());
        assert_eq!(s(429).retry_after(), Some(Duration::from_secs(2)));
        assert!(!FetchError::Invalid("x".into()).retryable());
    }
}
