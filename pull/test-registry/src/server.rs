// SPDX-License-Identifier: Apache-2.0
//! The registry's state and the read side of the distribution API, with faults applied.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::auth::{self, Auth, Tokens, Verdict};
use crate::digest::{is_valid_digest, sha256_digest};
use crate::faults::{ActiveRule, Fault};
use crate::http::{read_request, Body, ReadError, Request, Response};

/// One request as the registry saw and answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestRecord {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// Path without the query string, as sent.
    pub path: String,
    /// Query string, empty when absent.
    pub query: String,
    /// Request headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Status answered; 0 when a fault closed the connection without answering.
    pub status: u16,
    /// Names of the faults that fired on this request (`"status"`, `"cut-after"`, ...).
    pub faults: Vec<&'static str>,
    /// The request target was in absolute form (`GET http://host/v2/...`): the client took
    /// this registry for its HTTP proxy (`HTTP_PROXY` pointing at it).
    pub proxied: bool,
}

impl RequestRecord {
    /// The first value of request header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
pub(crate) struct StoredManifest {
    pub(crate) media_type: String,
    pub(crate) bytes: Arc<[u8]>,
}

#[derive(Debug, Default)]
pub(crate) struct Repository {
    /// By digest.
    pub(crate) manifests: HashMap<String, StoredManifest>,
    /// Tag -> digest.
    pub(crate) tags: BTreeMap<String, String>,
    /// Digests of the blobs linked into this repository.
    pub(crate) blobs: HashSet<String>,
}

/// Everything the registry holds, behind one lock never held across an await.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) auth: Auth,
    pub(crate) tokens: Tokens,
    /// Content-addressed blob store shared by all repositories.
    pub(crate) blobs: HashMap<String, Arc<[u8]>>,
    pub(crate) repositories: BTreeMap<String, Repository>,
    pub(crate) rules: Vec<ActiveRule>,
    pub(crate) log: Vec<RequestRecord>,
    /// Answer blob GETs with a 307 to the blob store, as registries backed by object
    /// storage do.
    pub(crate) redirect_blobs: bool,
}

/// What the connection task shares with the [`crate::Registry`] handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    /// `http://127.0.0.1:<port>`, for the Bearer realm.
    pub(crate) base_url: String,
    /// `http://127.0.0.1:<other port>`: the blob store blob GETs are redirected to.
    pub(crate) blob_store_url: String,
    /// At most so many connections served at once (`Registry::throttle`).
    pub(crate) throttle: Arc<Mutex<Option<crate::throttle::Throttle>>>,
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The registry API.
    Registry,
    /// The blob store (a CDN or object store in real life): `/blobstore/<digest>`, no auth.
    BlobStore,
}

/// Path prefix of blobs on the blob store.
pub(crate) const BLOB_STORE_PATH: &str = "/blobstore/";

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock (a test's assertion in a push) must not turn every
        // later request into a second panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How to put one answer on the wire.
struct Plan {
    /// Close the connection after the answer.
    close: bool,
    /// `None`: close without answering.
    response: Option<Response>,
    delay: Option<Duration>,
    cut_after: Option<u64>,
    stall_after: Option<u64>,
    bytes_per_sec: Option<u64>,
}

/// Serves one connection until the peer closes, a fault cuts it, or the task is aborted.
pub(crate) async fn serve_connection(shared: Arc<Shared>, mut stream: TcpStream, origin: Origin) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let request = match read_request(&mut stream, &mut buf).await {
            Ok(Some(request)) => request,
            Ok(None) | Err(ReadError::Io) => return,
            Err(ReadError::Malformed(why)) => {
                let response = error_response(400, "UNSUPPORTED", why);
                let _ = stream
                    .write_all(&response.head_bytes(response.body.len(), false))
                    .await;
                let _ = stream.write_all(response.body.as_slice()).await;
                return;
            }
        };
        // A throttled registry serves so many requests at once; one beyond them is
        // answered 429 (the connection closed), an idle kept-alive connection holds nothing.
        let _slot = match crate::throttle::admit(&shared.throttle) {
            crate::throttle::Admission::Served(slot) => slot,
            crate::throttle::Admission::Refused(secs) => {
                refuse(&shared, &mut stream, &request, secs).await;
                return;
            }
        };
        let plan = plan(&shared, &request, origin);
        let keep_alive = request.keep_alive() && !plan.close;
        match send(&mut stream, plan, request.method == "HEAD", keep_alive).await {
            Ok(true) if keep_alive => continue,
            _ => return,
        }
    }
}

/// Answers `request` 429 with `Retry-After: secs` (the throttle), and logs it.
async fn refuse(shared: &Shared, stream: &mut TcpStream, request: &Request, secs: u64) {
    let mut response = error_response(429, "TOOMANYREQUESTS", "too many requests: try later");
    response.set_header("Retry-After", secs.to_string());
    shared.lock().log.push(RequestRecord {
        method: request.method.clone(),
        path: request.path.clone(),
        query: request.query.clone(),
        headers: request.headers.clone(),
        status: 429,
        faults: vec!["throttle"],
        proxied: request.proxied,
    });
    let _ = stream
        .write_all(&response.head_bytes(response.body.len(), false))
        .await;
    let _ = stream.write_all(response.body.as_slice()).await;
}

/// Decides the answer to `request`: faults, authentication, routing; logs it.
fn plan(shared: &Shared, request: &Request, origin: Origin) -> Plan {
    let mut state = shared.lock();
    let mut fired = fire(&mut state, request, Stage::BeforeRouting);

    let replaced = fired.iter().find_map(|f| match f {
        Fault::Status {
            status,
            retry_after,
        } => {
            let code = match status {
                429 => "TOOMANYREQUESTS",
                503 => "UNAVAILABLE",
                _ => "UNKNOWN",
            };
            let mut response = error_response(*status, code, "injected fault");
            if let Some(retry_after) = retry_after {
                response.set_header("Retry-After", retry_after.clone());
            }
            Some(Some(response))
        }
        Fault::Redirect(location) => {
            let mut response = error_response(307, "UNKNOWN", "injected redirect");
            response.set_header("Location", location.clone());
            Some(Some(response))
        }
        Fault::Drop => Some(None),
        _ => None,
    });
    let response = match replaced {
        Some(response) => response,
        None => {
            let without_range;
            let routed = if fired.contains(&Fault::IgnoreRange) {
                let mut r = request.clone();
                r.headers.retain(|(n, _)| n != "range");
                without_range = r;
                &without_range
            } else {
                request
            };
            let mut response = match origin {
                Origin::Registry => route(&mut state, shared, routed),
                Origin::BlobStore => blob_store(&state, routed),
            };
            if (200..300).contains(&response.status) {
                let on_success = fire(&mut state, request, Stage::OnSuccess);
                for fault in &on_success {
                    alter(&mut response, fault);
                }
                fired.extend(on_success);
            }
            Some(response)
        }
    };

    let mut response = response;
    let mut close = false;
    if let Some(answer) = response.as_mut() {
        let headers = fire(&mut state, request, Stage::AnyAnswer);
        for fault in &headers {
            if let Fault::Header { name, value } = fault {
                answer.set_header(name, value.clone());
                // The body no longer matches what the connection says: close it after.
                close |= name.eq_ignore_ascii_case("content-length");
            }
        }
        fired.extend(headers);
    }

    let mut plan = Plan {
        close,
        response: None,
        delay: None,
        cut_after: None,
        stall_after: None,
        bytes_per_sec: None,
    };
    for fault in &fired {
        match fault {
            Fault::Delay(d) => *plan.delay.get_or_insert(Duration::ZERO) += *d,
            Fault::CutAfter { bytes } => {
                plan.cut_after = Some(plan.cut_after.map_or(*bytes, |c| c.min(*bytes)));
            }
            Fault::StallAfter { bytes } => {
                plan.stall_after = Some(plan.stall_after.map_or(*bytes, |c| c.min(*bytes)));
            }
            Fault::Slow { bytes_per_sec } => {
                let bps = (*bytes_per_sec).max(1);
                plan.bytes_per_sec = Some(plan.bytes_per_sec.map_or(bps, |b| b.min(bps)));
            }
            _ => {}
        }
    }

    state.log.push(RequestRecord {
        method: request.method.clone(),
        path: request.path.clone(),
        query: request.query.clone(),
        headers: request.headers.clone(),
        status: response.as_ref().map_or(0, |r| r.status),
        faults: fired.iter().map(Fault::name).collect(),
        proxied: request.proxied,
    });
    plan.response = response;
    plan
}

/// When faults are considered.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Before routing: status, drop and delay, on any matching request.
    BeforeRouting,
    /// With a 2xx answer in hand: the faults altering it, on the requests where they have
    /// something to alter (a body for most: not on HEAD).
    OnSuccess,
    /// With any answer in hand: the headers set.
    AnyAnswer,
}

/// Fires the matching rules of `stage`.
fn fire(state: &mut State, request: &Request, stage: Stage) -> Vec<Fault> {
    state
        .rules
        .iter_mut()
        .filter(|r| match stage {
            Stage::BeforeRouting => r.rule.fault.acts_before_routing(),
            Stage::OnSuccess => {
                !r.rule.fault.acts_before_routing()
                    && !r.rule.fault.sets_header()
                    && (request.method == "GET" || r.rule.fault.acts_on_head())
            }
            Stage::AnyAnswer => r.rule.fault.sets_header(),
        })
        .filter_map(|r| {
            r.consider(&request.method, &request.path)
                .then(|| r.rule.fault.clone())
        })
        .collect()
}

/// Applies a body-altering fault to a successful response.
fn alter(response: &mut Response, fault: &Fault) {
    match fault {
        Fault::CorruptBody if response.body.len() > 0 => {
            let mut bytes = response.body.as_slice().to_vec();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            response.body = bytes.into();
        }
        Fault::LyingManifest => {
            let lie = match serde_json::from_slice::<serde_json::Value>(response.body.as_slice()) {
                Ok(serde_json::Value::Object(mut doc)) => {
                    let annotations = doc.entry("annotations").or_insert_with(|| json!({}));
                    if let Some(a) = annotations.as_object_mut() {
                        a.insert("org.kmod-day1.test.lie".to_owned(), json!("true"));
                    }
                    serde_json::to_vec_pretty(&doc).expect("a JSON value serializes")
                }
                _ => [response.body.as_slice(), b"\n"].concat(),
            };
            response.body = lie.into();
        }
        Fault::WrongDigestHeader => {
            let wrong = sha256_digest(&[b"not ", response.body.as_slice()].concat());
            response.set_header("Docker-Content-Digest", wrong);
        }
        Fault::ReplaceBody(bytes) => response.body = bytes.clone().into(),
        _ => {}
    }
}

/// Writes the planned answer. `Ok(false)` when the connection must close.
async fn send(
    stream: &mut TcpStream,
    plan: Plan,
    head_only: bool,
    keep_alive: bool,
) -> std::io::Result<bool> {
    if let Some(delay) = plan.delay {
        tokio::time::sleep(delay).await;
    }
    let Some(response) = plan.response else {
        return Ok(false);
    };
    let body: &[u8] = if head_only {
        &[]
    } else {
        response.body.as_slice()
    };
    stream
        .write_all(&response.head_bytes(response.body.len(), keep_alive))
        .await?;
    let at = |bytes: Option<u64>| {
        bytes.map_or(body.len(), |b| {
            body.len().min(usize::try_from(b).unwrap_or(usize::MAX))
        })
    };
    let (cut, stall) = (at(plan.cut_after), at(plan.stall_after));
    let limit = cut.min(stall);
    match plan.bytes_per_sec {
        None => stream.write_all(&body[..limit]).await?,
        Some(bps) => {
            // About 20 writes a second.
            let chunk = usize::try_from(bps / 20).unwrap_or(usize::MAX).max(1);
            let pause = Duration::from_secs_f64(chunk as f64 / bps as f64);
            for piece in body[..limit].chunks(chunk) {
                stream.write_all(piece).await?;
                stream.flush().await?;
                tokio::time::sleep(pause).await;
            }
        }
    }
    stream.flush().await?;
    if limit < body.len() && stall <= cut {
        // Hold the connection open, silent, until the client gives up or the registry stops.
        std::future::pending::<()>().await;
    }
    Ok(limit == body.len())
}

/// A distribution-spec error response.
pub(crate) fn error_response(status: u16, code: &str, message: &str) -> Response {
    Response::new(status).json(&json!({
        "errors": [{ "code": code, "message": message, "detail": null }]
    }))
}

/// The read side of the distribution API. Every `/v2/` answer, 401 challenges included,
/// says `Docker-Distribution-API-Version` (Docker's clients look for it on the 401).
fn route(state: &mut State, shared: &Shared, request: &Request) -> Response {
    let response = route_unversioned(state, shared, request);
    if request.path.starts_with("/v2/") {
        response.header("Docker-Distribution-API-Version", "registry/2.0")
    } else {
        response
    }
}

fn route_unversioned(state: &mut State, shared: &Shared, request: &Request) -> Response {
    let base_url = shared.base_url.as_str();
    if request.path == auth::TOKEN_PATH {
        let State { auth, tokens, .. } = state;
        return auth::token_endpoint(auth, tokens, request);
    }
    let Some(rest) = request.path.strip_prefix("/v2/") else {
        return error_response(404, "NOT_FOUND", "not a registry API path");
    };
    if request.method != "GET" && request.method != "HEAD" {
        return error_response(
            405,
            "UNSUPPORTED",
            "this registry is read-only over HTTP; push through the Rust API",
        );
    }
    if rest.is_empty() {
        return match auth::check(&state.auth, &state.tokens, base_url, request, None) {
            Verdict::Challenge(response) => response,
            Verdict::Allowed => Response::new(200).json(&json!({})),
        };
    }

    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    let (kind, name, reference) = if n >= 3 && segments[n - 2] == "manifests" {
        ("manifest", segments[..n - 2].join("/"), segments[n - 1])
    } else if n >= 3 && segments[n - 2] == "blobs" {
        ("blob", segments[..n - 2].join("/"), segments[n - 1])
    } else if n >= 3 && segments[n - 2..] == ["tags", "list"] {
        ("tags", segments[..n - 2].join("/"), "")
    } else {
        return error_response(404, "NOT_FOUND", "unknown registry API path");
    };
    if !is_valid_name(&name) {
        return error_response(400, "NAME_INVALID", "invalid repository name");
    }
    if let Verdict::Challenge(response) =
        auth::check(&state.auth, &state.tokens, base_url, request, Some(&name))
    {
        return response;
    }
    let Some(repository) = state.repositories.get(&name) else {
        return error_response(404, "NAME_UNKNOWN", "repository name not known to registry");
    };
    let reference = crate::http::percent_decode(reference);
    match kind {
        "manifest" => manifest(repository, &reference),
        "blob" => blob(state, shared, repository, &reference, request),
        _ => Response::new(200).json(&json!({
            "name": name,
            "tags": repository.tags.keys().collect::<Vec<_>>(),
        })),
    }
}

fn manifest(repository: &Repository, reference: &str) -> Response {
    let digest = if is_valid_digest(reference) {
        reference.to_owned()
    } else if reference.contains(':') {
        return error_response(400, "DIGEST_INVALID", "invalid digest");
    } else if is_valid_tag(reference) {
        match repository.tags.get(reference) {
            Some(digest) => digest.clone(),
            None => return error_response(404, "MANIFEST_UNKNOWN", "manifest unknown"),
        }
    } else {
        return error_response(400, "TAG_INVALID", "invalid tag");
    };
    let Some(stored) = repository.manifests.get(&digest) else {
        return error_response(404, "MANIFEST_UNKNOWN", "manifest unknown");
    };
    Response::new(200)
        .header("Content-Type", stored.media_type.clone())
        .header("Docker-Content-Digest", digest)
        .body(Body::shared(Arc::clone(&stored.bytes)))
}

fn blob(
    state: &State,
    shared: &Shared,
    repository: &Repository,
    digest: &str,
    request: &Request,
) -> Response {
    if !is_valid_digest(digest) {
        return error_response(400, "DIGEST_INVALID", "invalid digest");
    }
    let bytes = match state.blobs.get(digest) {
        Some(bytes) if repository.blobs.contains(digest) => Arc::clone(bytes),
        _ => return error_response(404, "BLOB_UNKNOWN", "blob unknown to registry"),
    };
    if state.redirect_blobs && request.method == "GET" {
        return Response::new(307)
            .header(
                "Location",
                format!("{}{BLOB_STORE_PATH}{digest}", shared.blob_store_url),
            )
            .header("Docker-Content-Digest", digest);
    }
    serve_blob(bytes, digest, request)
}

/// The blob store: `GET`/`HEAD` `/blobstore/<digest>`, any blob, no authentication (real
/// ones check a signature in the query string).
fn blob_store(state: &State, request: &Request) -> Response {
    if request.method != "GET" && request.method != "HEAD" {
        return Response::new(405);
    }
    let digest = request
        .path
        .strip_prefix(BLOB_STORE_PATH)
        .map(crate::http::percent_decode)
        .unwrap_or_default();
    match state.blobs.get(&digest) {
        Some(bytes) => serve_blob(Arc::clone(bytes), &digest, request),
        None => Response::new(404),
    }
}

fn serve_blob(bytes: Arc<[u8]>, digest: &str, request: &Request) -> Response {
    let body = Body::shared(bytes);
    let response = Response::new(200)
        .header("Content-Type", "application/octet-stream")
        .header("Docker-Content-Digest", digest)
        .header("Accept-Ranges", "bytes");
    let Some(range) = request.header("range").filter(|_| request.method == "GET") else {
        return response.body(body);
    };
    let len = body.len();
    match parse_range(range, len) {
        Some(Ok((start, end))) => response
            .header("Content-Range", format!("bytes {start}-{end}/{len}"))
            .body(body.slice(start..end + 1))
            .with_status(206),
        Some(Err(())) => error_response(416, "RANGE_INVALID", "range not satisfiable")
            .header("Content-Range", format!("bytes */{len}")),
        // Syntax we do not handle (several ranges): the whole blob, as RFC 9110 allows.
        None => response.body(body),
    }
}

/// Parses a single `bytes=` range against a body of `len` bytes: `None` when the header is
/// not a single byte range, `Some(Err)` when unsatisfiable, else the inclusive bounds.
fn parse_range(header: &str, len: usize) -> Option<Result<(usize, usize), ()>> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let bounds = if first.is_empty() {
        let suffix: usize = last.parse().ok()?;
        if suffix == 0 || len == 0 {
            return Some(Err(()));
        }
        (len.saturating_sub(suffix), len - 1)
    } else {
        let start: usize = first.parse().ok()?;
        let end = if last.is_empty() {
            len.saturating_sub(1)
        } else {
            let end: usize = last.parse().ok()?;
            if end < start {
                return None;
            }
            end.min(len.saturating_sub(1))
        };
        if start >= len {
            return Some(Err(()));
        }
        (start, end)
    };
    Some(Ok(bounds))
}

impl Response {
    fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
}

/// Repository names per the distribution spec: `/`-separated components of lower-case
/// alphanumerics joined by `.`, `_`, `__` or runs of `-`.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|component| {
            let bytes = component.as_bytes();
            let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
            let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
                return false;
            };
            alnum(first)
                && alnum(last)
                && bytes
                    .iter()
                    .all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
                && !component.contains("..")
                && !component.contains("___")
                && !component.contains("._")
                && !component.contains("_.")
                && !component.contains("-.")
                && !component.contains(".-")
                && !component.contains("-_")
                && !component.contains("_-")
        })
}

/// Tags: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub(crate) fn is_valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names_and_tags() {
        for good in ["a", "kmods/ice", "a-b/c.d/e__f", "x--y", "quay.io/org"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in [
            "", "A", "a//b", "/a", "a/", "a..b", "-a", "a_", "a___b", "a:b",
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        for good in ["latest", "6.1.0-18-amd64", "_x", "5.14.0-427.el9.x86_64"] {
            assert!(is_valid_tag(good), "{good}");
        }
        for bad in ["", "-x", ".x", "a/b", "a:b", &"x".repeat(129)] {
            assert!(!is_valid_tag(bad), "{bad}");
        }
    }

    #[test]
    fn parses_ranges() {
        assert_eq!(parse_range("bytes=0-3", 10), Some(Ok((0, 3))));
        assert_eq!(parse_range("bytes=5-", 10), Some(Ok((5, 9))));
        assert_eq!(parse_range("bytes=-3", 10), Some(Ok((7, 9))));
        assert_eq!(parse_range("bytes=-30", 10), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=8-100", 10), Some(Ok((8, 9))));
        assert_eq!(parse_range("bytes=10-", 10), Some(Err(())));
        assert_eq!(parse_range("bytes=-0", 10), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,3-4", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
        assert_eq!(parse_range("bytes=4-2", 10), None);
    }
}
