// SPDX-License-Identifier: Apache-2.0
//! Property tests of what the pull reads from the network besides `Retry-After` (`retry.rs`)
//! and manifests (`fetch.rs`): `WWW-Authenticate` challenges, token answers, `Content-Length`
//! and `Content-Range`. The first three are parsed by oci-client (the challenge and the token
//! JSON) or hyper (`Content-Length`), not by this crate, so each property feeds arbitrary
//! values through the in-process test registry (`Fault::header`, `Fault::ReplaceBody`) to the
//! functions of this crate that make the requests (`Repo::manifest` and its `Repo::get`, and
//! `download_blob`), and checks this crate's boundary: no panic, an answer within the deadline
//! (no hang), and, for nonsense, an error that names the header or the token service.
//! `Content-Range` is parsed here (`tree_fetch::parse_content_range`). Error answers whose
//! body floods or trickles without end come from a raw socket server: bounded memory and time.

use std::time::{Duration, Instant};

use kmod_day1_contract::ImageRef;
use kmod_day1_test_registry::{Auth, BuiltImage, Fault, Image, Layer, Registry};
use proptest::prelude::*;

use crate::auth::Credential;
use crate::fetch::{FetchError, HostClient, LayerDesc, NetConfig, Repo};
use crate::progress::Progress;
use crate::tree_fetch::{download_blob, parse_content_range, BlobDownload};
use crate::verify::Digest;

const REPO: &str = "kmod/e1000";
const TAG: &str = "6.1.0-27-amd64";
/// Every operation gets this long; a property fails if one takes longer than [`BOUND`].
const DEADLINE: Duration = Duration::from_secs(3);
const BOUND: Duration = Duration::from_millis(4500);
/// Where a blob download is cut before it is resumed.
const CUT: u64 = 4096;

fn image() -> BuiltImage {
    Image::new()
        .layer(Layer::new().random("opt/lib/modules/x.bin", 50_000, 3))
        .build()
        .unwrap()
}

/// The size of [`image`]'s layer blob.
fn blob_size() -> u64 {
    image().layers[0].bytes.len() as u64
}

/// Whether a token can go into an `Authorization` header (what `http::HeaderValue` accepts).
fn sendable(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= crate::fetch::MAX_TOKEN
        && token.bytes().all(|b| b == b'\t' || (b >= 32 && b != 127))
}

fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn net() -> NetConfig {
    NetConfig {
        certs_dir: "/nonexistent".into(),
        connect_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(1),
        https_proxy: None,
        http_proxy: None,
        no_proxy: None,
    }
}

fn puller() -> Credential {
    Credential {
        username: "puller".into(),
        password: "s3cret".into(),
    }
}

/// The manifest of `kmod/e1000:TAG` through `Repo::manifest` (authentication included), and
/// how long it took.
fn fetch_manifest(reg: &Registry, cred: Option<Credential>) -> (Result<(), FetchError>, Duration) {
    fetch_manifest_from(&reg.host(), cred)
}

/// [`fetch_manifest`] from any `host:port`.
fn fetch_manifest_from(host: &str, cred: Option<Credential>) -> (Result<(), FetchError>, Duration) {
    let started = Instant::now();
    let res = runtime().block_on(async {
        let deadline = Instant::now() + DEADLINE;
        let mut client = HostClient::new(host, true, &net())?;
        client.pick_scheme(deadline).await;
        let image = ImageRef::parse(&format!("{host}/{REPO}:{TAG}")).unwrap();
        let mut repo = Repo::new(&client, image, cred, deadline);
        repo.manifest(TAG).await.map(|_| ())
    });
    (res, started.elapsed())
}

/// The image's one layer through `download_blob`: a first attempt (cut when a fault says so),
/// then a resumed one when the first failed. The result of the last attempt.
fn fetch_blob(reg: &Registry, img: &BuiltImage) -> (Result<(), FetchError>, Duration) {
    let started = Instant::now();
    let l = &img.layers[0];
    let layer = LayerDesc {
        digest: Digest::parse(&l.digest).unwrap(),
        size: l.bytes.len() as u64,
        media_type: l.media_type.clone(),
    };
    let res = runtime().block_on(async {
        let deadline = Instant::now() + DEADLINE;
        let mut client = HostClient::new(&reg.host(), true, &net())?;
        client.pick_scheme(deadline).await;
        let image = ImageRef::parse(&format!("{}/{REPO}:{TAG}", reg.host())).unwrap();
        let mut repo = Repo::new(&client, image, None, deadline);
        let mut dl = BlobDownload::new(None);
        let mut progress = Progress::new("layer".into(), layer.size, false);
        match download_blob(&mut repo, &layer, &mut dl, &mut progress).await {
            Err(e) if e.retryable() => {
                download_blob(&mut repo, &layer, &mut dl, &mut progress).await
            }
            other => other,
        }
    });
    (res, started.elapsed())
}

/// Header values a hostile registry or proxy may send: any text a header line can carry
/// (visible ASCII, space, tab, and obs-text that is not UTF-8-clean ASCII).
fn header_text() -> impl Strategy<Value = String> {
    "[\t -~\u{a0}-\u{ff}]{0,80}"
}

/// `WWW-Authenticate` values: free text, and Bearer challenges with broken parts.
fn challenge() -> impl Strategy<Value = String> {
    let realm = prop_oneof![
        Just(String::new()),
        Just("ftp://127.0.0.1/token".to_owned()),
        Just("http://127.0.0.1:1/token".to_owned()),
        Just("//no-scheme/token".to_owned()),
        Just("http://[::1/token".to_owned()),
        "[ -!#-\\[\\]-~]{0,40}",
    ];
    prop_oneof![
        header_text(),
        (realm, "[ -!#-~]{0,20}")
            .prop_map(|(r, s)| format!("Bearer realm=\"{r}\",service=\"{s}\"")),
        "(Bearer|Basic|Negotiate|bearer)( [a-z]{0,8}(=\"?[ -!#-~]{0,12}\"?)?,?){0,4}",
    ]
}

/// A JSON value of any kind, for the fields of a token answer.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(|b| json!(b)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,30}".prop_map(|s| json!(s)),
        Just(json!({"nested": [1, 2]})),
    ]
}

/// Token answers: bytes, and JSON objects whose `token` / `access_token` / `expires_in` /
/// `issued_at` are anything (the token sometimes the one the registry granted).
fn token_answer() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(serde_json::json!("test-token-1")),
        "[\t -~]{0,20}".prop_map(|s| serde_json::json!(s)),
        any_json(),
    ];
    let object = (
        proptest::option::of(token.clone()),
        proptest::option::of(token),
        proptest::option::of(any_json()),
        proptest::option::of(prop_oneof![
            any_json(),
            "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{0,12}Z?".prop_map(|s| serde_json::json!(s)),
        ]),
    )
        .prop_map(|(token, access_token, expires_in, issued_at)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [
                ("token", token),
                ("access_token", access_token),
                ("expires_in", expires_in),
                ("issued_at", issued_at),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            serde_json::Value::Object(m).to_string().into_bytes()
        });
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..200),
        2 => object,
    ]
}

/// The token oci-client takes from an answer: `token` if a string, else `access_token`.
fn token_in(answer: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(answer).ok()?;
    let text = |k: &str| v.get(k).and_then(|t| t.as_str()).map(str::to_owned);
    text("token").or_else(|| text("access_token"))
}

fn plain_number(v: &str) -> Option<u64> {
    let t = v.trim_matches([' ', '\t']);
    (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .then(|| t.parse().ok())
        .flatten()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any `WWW-Authenticate` on the registry's 401s, with and without credentials: an answer
    /// within the deadline, and every error names the challenge.
    #[test]
    fn any_www_authenticate_challenge(value in challenge(), with_cred in any::<bool>()) {
        let reg = Registry::start_with_auth(Auth::bearer("puller", "s3cret")).unwrap();
        reg.push_image(REPO, TAG, &image());
        reg.fault(Fault::header("WWW-Authenticate", &value).on("/v2/"));
        let (res, took) = fetch_manifest(&reg, with_cred.then(puller));
        prop_assert!(took < BOUND, "{took:?}");
        if let Err(e) = res {
            prop_assert!(e.to_string().contains("WWW-Authenticate"), "{e}");
        }
    }

    /// Any token answer (`token`, `access_token`, `expires_in`, `issued_at` of any type and
    /// value, or no JSON at all): the granted token works whatever the other fields say; an
    /// answer without a usable token is an authentication error naming the token service; a
    /// usable token that is not the granted one is refused by the registry; never a hang.
    #[test]
    fn any_token_answer(answer in token_answer()) {
        let reg = Registry::start_with_auth(Auth::bearer("puller", "s3cret")).unwrap();
        reg.push_image(REPO, TAG, &image());
        reg.fault(Fault::ReplaceBody(answer.clone()).on("/token"));
        let (res, took) = fetch_manifest(&reg, Some(puller()));
        prop_assert!(took < BOUND, "{took:?}");
        let token = token_in(&answer);
        match (token.as_deref(), res) {
            (Some("test-token-1"), res) => prop_assert!(res.is_ok(), "{res:?}"),
            (_, Ok(())) => prop_assert!(false, "a pull with a token never granted"),
            (Some(t), Err(e)) if sendable(t) => {
                prop_assert!(matches!(e, FetchError::Status { status: 401, .. }), "{e}");
            }
            (_, Err(e)) => {
                prop_assert!(matches!(e, FetchError::Auth { .. }), "{e}");
                prop_assert!(e.to_string().contains("token service"), "{e}");
            }
        }
    }

    /// Any `Content-Length` on a manifest: the manifest when it is the true length, an error
    /// otherwise (naming Content-Length when the value is not a number), within the deadline.
    #[test]
    fn any_content_length_on_a_manifest(value in prop_oneof![header_text(), "[0-9]{1,4}", "0*[0-9]{1,30}"]) {
        let reg = Registry::start().unwrap();
        let img = image();
        reg.push_image(REPO, TAG, &img);
        reg.fault(Fault::header("Content-Length", &value).on("/manifests/"));
        let (res, took) = fetch_manifest(&reg, None);
        prop_assert!(took < BOUND, "{took:?}");
        match plain_number(&value) {
            Some(n) if n == img.manifest.len() as u64 => prop_assert!(res.is_ok(), "{res:?}"),
            Some(_) => prop_assert!(res.is_err()),
            None => {
                let e = res.expect_err("a manifest with a nonsense Content-Length");
                prop_assert!(e.to_string().to_ascii_lowercase().contains("content-length"), "{e}");
            }
        }
    }

    /// Any `Content-Length` on a blob: the verified blob when it is the true length, an error
    /// otherwise (naming Content-Length when the value is not a number), within the deadline.
    #[test]
    fn any_content_length_on_a_blob(value in prop_oneof![header_text(), "[0-9]{1,6}", "0*[0-9]{1,30}"]) {
        let reg = Registry::start().unwrap();
        let img = image();
        reg.push_image(REPO, TAG, &img);
        reg.fault(Fault::header("Content-Length", &value).on("/blobs/"));
        let (res, took) = fetch_blob(&reg, &img);
        prop_assert!(took < BOUND, "{took:?}");
        match plain_number(&value) {
            Some(n) if n == img.layers[0].bytes.len() as u64 => prop_assert!(res.is_ok(), "{res:?}"),
            Some(_) => prop_assert!(res.is_err()),
            None => {
                let e = res.expect_err("a blob with a nonsense Content-Length");
                prop_assert!(e.to_string().to_ascii_lowercase().contains("content-length"), "{e}");
            }
        }
    }

    /// Any `Content-Range` on the 206 that resumes a cut blob: the verified blob when the
    /// range starts where the cut was and stays in the blob, else an error naming
    /// Content-Range (never a digest mismatch after the fact), within the deadline.
    #[test]
    fn any_content_range_on_a_resumed_blob(
        value in prop_oneof![
            header_text(),
            (prop_oneof![Just(CUT), Just(0u64), Just(CUT - 1), Just(CUT + 1), any::<u64>()],
             prop_oneof![Just(blob_size() - 1), Just(blob_size()), Just(CUT), any::<u64>()],
             prop_oneof![Just(blob_size().to_string()), Just("*".to_owned()), Just((blob_size() - 1).to_string()), "[0-9]{1,25}"])
                .prop_map(|(a, b, c)| format!("bytes {a}-{b}/{c}")),
        ],
    ) {
        let reg = Registry::start().unwrap();
        let img = image();
        let size = img.layers[0].bytes.len() as u64;
        reg.push_image(REPO, TAG, &img);
        let digest = img.layers[0].digest.clone();
        reg.fault(Fault::CutAfter { bytes: CUT }.on(&digest).times(1));
        reg.fault(Fault::header("Content-Range", &value).on(&digest).after(1));
        let (res, took) = fetch_blob(&reg, &img);
        prop_assert!(took < BOUND, "{took:?}");
        let fits = parse_content_range(&value)
            .is_some_and(|(first, last, len)| first == CUT && last < size && len.is_none_or(|l| l == size));
        if fits {
            prop_assert!(res.is_ok(), "{res:?}");
        } else {
            let e = res.expect_err("a resumed blob with a wrong Content-Range");
            prop_assert!(e.to_string().contains("Content-Range"), "{e}");
        }
    }
}

/// A server that answers each of its first connections `500` with a chunked body that never
/// ends: `chunk` every `pause`. Returns its `host:port`.
fn endless_error_server(chunk: &'static [u8], pause: Duration) -> String {
    use std::io::Write as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        // The scheme probe and the GET; the threads end when the client hangs up.
        for stream in listener.incoming().take(4) {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let head =
                    "HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n";
                let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                framed.extend_from_slice(chunk);
                framed.extend_from_slice(b"\r\n");
                // Answer once the request head is in, as a server does.
                let mut seen = vec![];
                let mut byte = [0u8; 1];
                while !seen.ends_with(b"\r\n\r\n") {
                    match std::io::Read::read(&mut stream, &mut byte) {
                        Ok(1) => seen.push(byte[0]),
                        _ => return,
                    }
                }
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                while stream.write_all(&framed).is_ok() {
                    std::thread::sleep(pause);
                }
            });
        }
    });
    host
}

/// An error answer whose body floods without end: the error comes back at once, its message
/// short (the body read is bounded, not the whole of it).
#[test]
fn an_endless_error_body_is_cut_short() {
    let host = endless_error_server(&[b'x'; 16 << 10], Duration::ZERO);
    let (res, took) = fetch_manifest_from(&host, None);
    let e = res.expect_err("a 500");
    assert!(matches!(e, FetchError::Status { status: 500, .. }), "{e}");
    assert!(e.to_string().len() < 1000, "{e}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// An error answer whose body trickles without end: the error comes back by the deadline.
#[test]
fn a_trickling_error_body_ends_at_the_deadline() {
    let host = endless_error_server(b"x", Duration::from_millis(20));
    let (res, took) = fetch_manifest_from(&host, None);
    let e = res.expect_err("a 500");
    assert!(matches!(e, FetchError::Status { status: 500, .. }), "{e}");
    assert!(took < BOUND, "{took:?}");
}

/// A token of 1 MiB (oci-client reads the whole answer; the deadline bounds that) is refused
/// once, naming the token service, instead of going into every request's header.
#[test]
fn a_huge_token_is_refused() {
    let reg = Registry::start_with_auth(Auth::bearer("puller", "s3cret")).unwrap();
    reg.push_image(REPO, TAG, &image());
    let answer = serde_json::json!({ "token": "t".repeat(1 << 20), "expires_in": 300 });
    reg.fault(Fault::ReplaceBody(answer.to_string().into_bytes()).on("/token"));
    let (res, took) = fetch_manifest(&reg, Some(puller()));
    let e = res.expect_err("a 1 MiB token");
    assert!(matches!(e, FetchError::Auth { .. }), "{e}");
    assert!(
        e.to_string().contains("token service") && e.to_string().contains("1048576 bytes"),
        "{e}"
    );
    assert!(took < BOUND, "{took:?}");
}
