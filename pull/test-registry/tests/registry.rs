// SPDX-License-Identifier: Apache-2.0
//! The registry against the distribution spec, through a raw HTTP/1.1 client on a
//! `std::net::TcpStream` (no registry client library: the registry is the thing under test).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use kmod_day1_test_registry::{
    basic_authorization, sha256_digest, Auth, Compression, Fault, FaultRule, Image, Layer,
    Registry, OCI_INDEX, OCI_MANIFEST, TOKEN_SERVICE,
};

/// A parsed response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> usize {
        self.header("content-length").unwrap().parse().unwrap()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn error_code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], close: bool) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: registry\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if close {
        req.push_str("Connection: close\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Parses a response head from the start of `raw`; returns it and the head's length.
fn parse_head(raw: &[u8]) -> Option<(Reply, usize)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    Some((
        Reply {
            status,
            headers,
            body: Vec::new(),
        },
        end + 4,
    ))
}

/// One request on a fresh connection with `Connection: close`; the body is whatever came
/// before the server closed (so a cut body is short).
fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    try_send(addr, method, path, headers).expect("a response")
}

fn try_send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Option<Reply> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(&request_bytes(method, path, headers, true))
        .unwrap();
    let mut raw = Vec::new();
    // A reset after a cut is an end of stream like any other here.
    let _ = stream.read_to_end(&mut raw);
    let (mut reply, head_len) = parse_head(&raw)?;
    reply.body = raw[head_len..].to_vec();
    Some(reply)
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, &[])
}

fn kmod_image(kver: &str, compression: Compression) -> kmod_day1_test_registry::BuiltImage {
    Image::new()
        .layer(
            Layer::new()
                .compression(compression)
                .dir(format!("opt/lib/modules/{kver}/"))
                .file(
                    format!("opt/lib/modules/{kver}/ice.ko"),
                    vec![0x7f; 100_000],
                ),
        )
        .build()
        .unwrap()
}

fn registry_with_image() -> (Registry, kmod_day1_test_registry::BuiltImage) {
    let registry = Registry::start().unwrap();
    let image = kmod_image("6.1.0", Compression::Gzip);
    registry.push_image("kmods/intel/ice", "6.1.0", &image);
    (registry, image)
}

#[test]
fn base_endpoint_answers_api_version() {
    let registry = Registry::start().unwrap();
    for method in ["GET", "HEAD"] {
        let reply = send(registry.addr(), method, "/v2/", &[]);
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("Docker-Distribution-API-Version"),
            Some("registry/2.0")
        );
    }
    assert_eq!(get(registry.addr(), "/v3/").status, 404);
    assert_eq!(get(registry.addr(), "/v2").status, 404);
}

#[test]
fn manifests_by_tag_and_digest_with_slashed_names() {
    let (registry, image) = registry_with_image();
    let addr = registry.addr();
    let by_tag = get(addr, "/v2/kmods/intel/ice/manifests/6.1.0");
    assert_eq!(by_tag.status, 200);
    assert_eq!(by_tag.header("Content-Type"), Some(OCI_MANIFEST));
    assert_eq!(
        by_tag.header("Docker-Content-Digest"),
        Some(image.digest.as_str())
    );
    assert_eq!(by_tag.body, image.manifest);
    assert_eq!(sha256_digest(&by_tag.body), image.digest);

    let path = format!("/v2/kmods/intel/ice/manifests/{}", image.digest);
    assert_eq!(get(addr, &path).body, image.manifest);
    let head = send(addr, "HEAD", &path, &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.content_length(), image.manifest.len());
    assert_eq!(
        head.header("Docker-Content-Digest"),
        Some(image.digest.as_str())
    );

    // A client may escape the colon.
    let escaped = path.replace(':', "%3A");
    assert_eq!(get(addr, &escaped).body, image.manifest);
}

#[test]
fn manifest_errors_follow_the_spec() {
    let (registry, image) = registry_with_image();
    let addr = registry.addr();
    let cases = [
        (
            "/v2/kmods/intel/ice/manifests/6.2.0",
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            &format!("/v2/kmods/intel/ice/manifests/{}", sha256_digest(b"x")),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "/v2/kmods/intel/ice/manifests/sha256:1234",
            400,
            "DIGEST_INVALID",
        ),
        ("/v2/kmods/other/manifests/6.1.0", 404, "NAME_UNKNOWN"),
        ("/v2/Kmods/manifests/6.1.0", 400, "NAME_INVALID"),
        ("/v2/kmods/intel/ice/manifests/-bad", 400, "TAG_INVALID"),
    ];
    for (path, status, code) in cases {
        let reply = get(addr, path);
        assert_eq!(reply.status, status, "{path}");
        assert_eq!(reply.error_code(), code, "{path}");
        assert_eq!(reply.header("Content-Type"), Some("application/json"));
    }
    // HEAD errors have the status and no body.
    let reply = send(addr, "HEAD", "/v2/kmods/intel/ice/manifests/nope", &[]);
    assert_eq!(reply.status, 404);
    assert!(reply.body.is_empty());
    // Read-only over HTTP.
    let path = format!("/v2/kmods/intel/ice/manifests/{}", image.digest);
    for method in ["PUT", "DELETE", "POST"] {
        assert_eq!(send(addr, method, &path, &[]).status, 405);
    }
}

#[test]
fn blobs_are_served_with_digest_and_ranges() {
    let (registry, image) = registry_with_image();
    let addr = registry.addr();
    let layer = &image.layers[0];
    let path = format!("/v2/kmods/intel/ice/blobs/{}", layer.digest);

    let reply = get(addr, &path);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, layer.bytes);
    assert_eq!(
        reply.header("Docker-Content-Digest"),
        Some(layer.digest.as_str())
    );
    assert_eq!(
        reply.header("Content-Type"),
        Some("application/octet-stream")
    );

    let head = send(addr, "HEAD", &path, &[]);
    assert_eq!(head.status, 200);
    assert_eq!(head.content_length(), layer.bytes.len());
    assert!(head.body.is_empty());

    let config = get(
        addr,
        &format!("/v2/kmods/intel/ice/blobs/{}", image.config_digest),
    );
    assert_eq!(config.body, image.config);

    let len = layer.bytes.len();
    let partial = send(addr, "GET", &path, &[("Range", "bytes=10-")]);
    assert_eq!(partial.status, 206);
    assert_eq!(partial.body, layer.bytes[10..]);
    assert_eq!(
        partial.header("Content-Range"),
        Some(format!("bytes 10-{}/{len}", len - 1).as_str())
    );
    let partial = send(addr, "GET", &path, &[("Range", "bytes=0-9")]);
    assert_eq!(partial.body, layer.bytes[..10]);
    let unsatisfiable = send(addr, "GET", &path, &[("Range", &format!("bytes={len}-"))]);
    assert_eq!(unsatisfiable.status, 416);
    assert_eq!(
        unsatisfiable.header("Content-Range"),
        Some(format!("bytes */{len}").as_str())
    );

    let unknown = get(
        addr,
        &format!("/v2/kmods/intel/ice/blobs/{}", sha256_digest(b"nope")),
    );
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.error_code(), "BLOB_UNKNOWN");
    assert_eq!(
        get(addr, "/v2/kmods/intel/ice/blobs/latest").error_code(),
        "DIGEST_INVALID"
    );

    // Blobs are linked per repository.
    registry.push_blob("other", b"x".to_vec());
    let elsewhere = get(addr, &format!("/v2/other/blobs/{}", layer.digest));
    assert_eq!(elsewhere.status, 404);

    assert!(registry.delete_blob("kmods/intel/ice", &layer.digest));
    assert_eq!(get(addr, &path).status, 404);
}

#[test]
fn blob_pushed_under_a_wrong_digest_is_served_as_is() {
    let registry = Registry::start().unwrap();
    let digest = sha256_digest(b"the real bytes");
    registry.push_blob_as("r", &digest, b"other bytes".to_vec());
    let reply = get(registry.addr(), &format!("/v2/r/blobs/{digest}"));
    assert_eq!(reply.body, b"other bytes");
    assert_eq!(reply.header("Docker-Content-Digest"), Some(digest.as_str()));
}

#[test]
fn tags_are_listed_moved_and_removed() {
    let (registry, image) = registry_with_image();
    let other = kmod_image("6.2.0", Compression::None);
    let other_digest = registry.push_image("kmods/intel/ice", "6.2.0", &other);
    let list = get(registry.addr(), "/v2/kmods/intel/ice/tags/list").json();
    assert_eq!(list["name"], "kmods/intel/ice");
    assert_eq!(list["tags"], serde_json::json!(["6.1.0", "6.2.0"]));

    registry.tag("kmods/intel/ice", "6.1.0", &other_digest);
    let moved = get(registry.addr(), "/v2/kmods/intel/ice/manifests/6.1.0");
    assert_eq!(moved.body, other.manifest);
    assert!(registry.untag("kmods/intel/ice", "6.1.0"));
    let gone = get(registry.addr(), "/v2/kmods/intel/ice/manifests/6.1.0");
    assert_eq!(gone.status, 404);
    // Still reachable by digest.
    let by_digest = get(
        registry.addr(),
        &format!("/v2/kmods/intel/ice/manifests/{}", image.digest),
    );
    assert_eq!(by_digest.status, 200);
}

#[test]
fn image_index_points_at_per_platform_manifests() {
    let registry = Registry::start().unwrap();
    let amd64 = kmod_image("6.1.0", Compression::Gzip);
    let arm64 = Image::new()
        .platform("linux", "arm64")
        .variant("v8")
        .layer(Layer::new().file("opt/lib/modules/6.1.0/ice.ko", b"arm".to_vec()))
        .build()
        .unwrap();
    let digest = registry.push_index("kmods/ice", "6.1.0", &[&amd64, &arm64]);
    let index = get(registry.addr(), "/v2/kmods/ice/manifests/6.1.0");
    assert_eq!(index.header("Content-Type"), Some(OCI_INDEX));
    assert_eq!(index.header("Docker-Content-Digest"), Some(digest.as_str()));
    let index = index.json();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for (entry, image) in entries.iter().zip([&amd64, &arm64]) {
        assert_eq!(
            entry["platform"]["architecture"],
            image.architecture.as_str()
        );
        let child = get(
            registry.addr(),
            &format!(
                "/v2/kmods/ice/manifests/{}",
                entry["digest"].as_str().unwrap()
            ),
        );
        assert_eq!(child.body, image.manifest);
        let layer = &image.layers[0];
        let blob = get(
            registry.addr(),
            &format!("/v2/kmods/ice/blobs/{}", layer.digest),
        );
        assert_eq!(sha256_digest(&blob.body), layer.digest);
    }
    assert_eq!(entries[1]["platform"]["variant"], "v8");
}

#[test]
fn keep_alive_and_pipelined_requests_share_a_connection() {
    let (registry, image) = registry_with_image();
    let mut stream = TcpStream::connect(registry.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let blob = format!("/v2/kmods/intel/ice/blobs/{}", image.layers[0].digest);
    let mut pipelined = request_bytes("GET", "/v2/kmods/intel/ice/manifests/6.1.0", &[], false);
    pipelined.extend(request_bytes("HEAD", &blob, &[], false));
    pipelined.extend(request_bytes("GET", &blob, &[], true));
    stream.write_all(&pipelined).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();

    let mut replies = Vec::new();
    let mut rest = raw.as_slice();
    for head_only in [false, true, false] {
        let (mut reply, head_len) = parse_head(rest).unwrap();
        let body_len = if head_only { 0 } else { reply.content_length() };
        reply.body = rest[head_len..head_len + body_len].to_vec();
        rest = &rest[head_len + body_len..];
        replies.push(reply);
    }
    assert!(rest.is_empty());
    assert_eq!(replies[0].body, image.manifest);
    assert_eq!(replies[1].content_length(), image.layers[0].bytes.len());
    assert_eq!(replies[2].body, image.layers[0].bytes);
    assert_eq!(replies[2].header("Connection"), Some("close"));
    assert_eq!(registry.requests().len(), 3);
}

#[test]
fn malformed_requests_get_400() {
    let registry = Registry::start().unwrap();
    let mut stream = TcpStream::connect(registry.addr()).unwrap();
    stream.write_all(b"NONSENSE\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    assert!(raw.starts_with(b"HTTP/1.1 400 "));
}

#[test]
fn status_faults_fire_a_bounded_number_of_times() {
    let (registry, image) = registry_with_image();
    let path = format!("/v2/kmods/intel/ice/blobs/{}", image.layers[0].digest);
    let rule = registry.fault(Fault::status(500).on("/blobs/").times(2));
    assert_eq!(get(registry.addr(), &path).status, 500);
    assert_eq!(get(registry.addr(), "/v2/").status, 200, "path filter");
    let second = get(registry.addr(), &path);
    assert_eq!(second.status, 500);
    assert_eq!(second.error_code(), "UNKNOWN");
    assert_eq!(get(registry.addr(), &path).status, 200);
    assert_eq!(registry.fault_fired(rule), 2);

    let log = registry.requests();
    assert_eq!(log[0].faults, ["status"]);
    assert_eq!(log[0].status, 500);
    assert!(log[3].faults.is_empty());
}

#[test]
fn too_many_requests_carries_retry_after() {
    let (registry, _) = registry_with_image();
    registry.fault(Fault::status_retry_after(429, 2).on("/manifests/").times(1));
    let reply = get(registry.addr(), "/v2/kmods/intel/ice/manifests/6.1.0");
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("Retry-After"), Some("2"));
    assert_eq!(reply.error_code(), "TOOMANYREQUESTS");
    registry.fault(Fault::Status {
        status: 503,
        retry_after: Some("Wed, 21 Oct 2015 07:28:00 GMT".to_owned()),
    });
    let reply = get(registry.addr(), "/v2/");
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.header("Retry-After"),
        Some("Wed, 21 Oct 2015 07:28:00 GMT")
    );
}

#[test]
fn after_and_method_narrow_a_rule() {
    let (registry, _) = registry_with_image();
    let path = "/v2/kmods/intel/ice/manifests/6.1.0";
    let rule = registry.fault(Fault::status(502).on("/manifests/").method("GET").after(1));
    assert_eq!(get(registry.addr(), path).status, 200);
    assert_eq!(send(registry.addr(), "HEAD", path, &[]).status, 200);
    assert_eq!(get(registry.addr(), path).status, 502);
    registry.remove_fault(rule);
    assert_eq!(get(registry.addr(), path).status, 200);
    registry.fault(Fault::status(500));
    assert_eq!(get(registry.addr(), "/v2/").status, 500);
    registry.clear_faults();
    assert_eq!(get(registry.addr(), "/v2/").status, 200);
}

#[test]
fn cut_after_closes_mid_body() {
    let (registry, image) = registry_with_image();
    let layer = &image.layers[0];
    let path = format!("/v2/kmods/intel/ice/blobs/{}", layer.digest);
    registry.fault(Fault::CutAfter { bytes: 100 }.on(&layer.digest).times(1));
    let cut = get(registry.addr(), &path);
    assert_eq!(cut.status, 200);
    assert_eq!(
        cut.content_length(),
        layer.bytes.len(),
        "announces the full length"
    );
    assert_eq!(cut.body, layer.bytes[..100]);

    // On a keep-alive connection too: the server closes instead of answering more.
    registry.fault(Fault::CutAfter { bytes: 0 }.on(&layer.digest).times(1));
    let mut stream = TcpStream::connect(registry.addr()).unwrap();
    let mut two = request_bytes("GET", &path, &[], false);
    two.extend(request_bytes("GET", "/v2/", &[], false));
    stream.write_all(&two).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let (reply, head_len) = parse_head(&raw).unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(raw.len(), head_len, "no body byte and no second response");

    assert_eq!(get(registry.addr(), &path).body, layer.bytes);
}

#[test]
fn corrupt_body_keeps_length_and_digest_header() {
    let (registry, image) = registry_with_image();
    let layer = &image.layers[0];
    let path = format!("/v2/kmods/intel/ice/blobs/{}", layer.digest);
    registry.fault(Fault::CorruptBody.on("/blobs/").times(1));
    let reply = get(registry.addr(), &path);
    assert_eq!(reply.body.len(), layer.bytes.len());
    assert_ne!(reply.body, layer.bytes);
    assert_ne!(sha256_digest(&reply.body), layer.digest);
    assert_eq!(
        reply.header("Docker-Content-Digest"),
        Some(layer.digest.as_str())
    );
    assert_eq!(get(registry.addr(), &path).body, layer.bytes);
}

#[test]
fn lying_manifest_is_valid_json_with_another_digest() {
    let (registry, image) = registry_with_image();
    registry.fault(Fault::LyingManifest.on("/manifests/"));
    for path in [
        "/v2/kmods/intel/ice/manifests/6.1.0".to_owned(),
        format!("/v2/kmods/intel/ice/manifests/{}", image.digest),
    ] {
        let reply = get(registry.addr(), &path);
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("Docker-Content-Digest"),
            Some(image.digest.as_str())
        );
        assert_ne!(sha256_digest(&reply.body), image.digest);
        assert_eq!(reply.content_length(), reply.body.len());
        let lie = reply.json();
        assert_eq!(lie["layers"][0]["digest"], image.layers[0].digest.as_str());
        assert_eq!(lie["annotations"]["org.kmod-day1.test.lie"], "true");
    }
}

#[test]
fn wrong_digest_header_and_replaced_body() {
    let (registry, image) = registry_with_image();
    let path = "/v2/kmods/intel/ice/manifests/6.1.0";
    let rule = registry.fault(Fault::WrongDigestHeader.on("/manifests/").times(1));
    let reply = get(registry.addr(), path);
    assert_eq!(reply.body, image.manifest);
    let header = reply.header("Docker-Content-Digest").unwrap();
    assert_ne!(header, image.digest);
    assert!(header.starts_with("sha256:"));
    assert_eq!(registry.fault_fired(rule), 1);

    registry.fault(
        Fault::ReplaceBody(b"{}".to_vec())
            .on("/manifests/")
            .times(1),
    );
    let reply = get(registry.addr(), path);
    assert_eq!(reply.body, b"{}");
    assert_eq!(reply.content_length(), 2);
    assert_eq!(
        reply.header("Docker-Content-Digest"),
        Some(image.digest.as_str())
    );
}

#[test]
fn error_responses_are_not_altered() {
    let (registry, _) = registry_with_image();
    registry.fault(Fault::CorruptBody);
    let reply = get(registry.addr(), "/v2/kmods/intel/ice/manifests/nope");
    assert_eq!(reply.error_code(), "MANIFEST_UNKNOWN");
}

#[test]
fn slow_trickles_and_delay_waits() {
    let registry = Registry::start().unwrap();
    let digest = registry.push_blob("r", vec![1u8; 2000]);
    registry.fault(
        Fault::Slow {
            bytes_per_sec: 4000,
        }
        .on("/blobs/"),
    );
    let start = Instant::now();
    let reply = get(registry.addr(), &format!("/v2/r/blobs/{digest}"));
    let elapsed = start.elapsed();
    assert_eq!(reply.body, vec![1u8; 2000]);
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");

    registry.fault(Fault::Delay(Duration::from_millis(300)).on("/v2/"));
    let start = Instant::now();
    assert_eq!(get(registry.addr(), "/v2/").status, 200);
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[test]
fn slow_and_cut_combine() {
    let registry = Registry::start().unwrap();
    let digest = registry.push_blob("r", vec![1u8; 2000]);
    registry.fault(Fault::Slow {
        bytes_per_sec: 100_000,
    });
    registry.fault(Fault::CutAfter { bytes: 1500 });
    let reply = get(registry.addr(), &format!("/v2/r/blobs/{digest}"));
    assert_eq!(reply.body.len(), 1500);
    assert_eq!(registry.requests()[0].faults, ["slow", "cut-after"]);
}

#[test]
fn drop_closes_without_answering() {
    let registry = Registry::start().unwrap();
    registry.fault(FaultRule::from(Fault::Drop).times(1));
    assert!(try_send(registry.addr(), "GET", "/v2/", &[]).is_none());
    assert_eq!(registry.requests()[0].status, 0);
    assert_eq!(get(registry.addr(), "/v2/").status, 200);
}

#[test]
fn basic_auth_challenges_and_accepts() {
    let registry = Registry::start_with_auth(Auth::basic("user", "pw")).unwrap();
    let digest = registry.push_blob("kmods/ice", b"blob".to_vec());
    let path = format!("/v2/kmods/ice/blobs/{digest}");
    let anonymous = get(registry.addr(), &path);
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.error_code(), "UNAUTHORIZED");
    assert!(anonymous
        .header("WWW-Authenticate")
        .unwrap()
        .starts_with("Basic realm="));
    let wrong = basic_authorization("user", "nope");
    assert_eq!(
        send(registry.addr(), "GET", &path, &[("Authorization", &wrong)]).status,
        401
    );
    let right = basic_authorization("user", "pw");
    let reply = send(registry.addr(), "GET", &path, &[("Authorization", &right)]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, b"blob");
    assert_eq!(
        send(registry.addr(), "GET", "/v2/", &[("Authorization", &right)]).status,
        200
    );
    assert_eq!(
        get(registry.addr(), "/token").status,
        404,
        "no token endpoint"
    );
}

/// Parses `Bearer realm="...",service="...",scope="..."`.
fn challenge_params(header: &str) -> Vec<(String, String)> {
    let params = header.strip_prefix("Bearer ").expect("a Bearer challenge");
    params
        .split("\",")
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_owned(), v.trim_matches('"').to_owned())
        })
        .collect()
}

fn fetch_token(registry: &Registry, challenge: &str, user: &str, pass: &str) -> Reply {
    let params = challenge_params(challenge);
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let realm = param("realm").unwrap();
    let path = realm
        .strip_prefix(&registry.url())
        .expect("realm on the registry");
    let mut query = format!("service={}", param("service").unwrap());
    if let Some(scope) = param("scope") {
        query.push_str(&format!(
            "&scope={}",
            scope.replace(':', "%3A").replace('/', "%2F")
        ));
    }
    send(
        registry.addr(),
        "GET",
        &format!("{path}?{query}"),
        &[("Authorization", &basic_authorization(user, pass))],
    )
}

#[test]
fn bearer_token_flow() {
    let registry = Registry::start_with_auth(Auth::bearer("puller", "s3cret")).unwrap();
    let image = kmod_image("6.1.0", Compression::Zstd);
    registry.push_image("kmods/ice", "6.1.0", &image);
    registry.push_image("kmods/other", "6.1.0", &image);
    let path = "/v2/kmods/ice/manifests/6.1.0";

    let challenged = get(registry.addr(), path);
    assert_eq!(challenged.status, 401);
    let challenge = challenged.header("WWW-Authenticate").unwrap().to_owned();
    let params = challenge_params(&challenge);
    assert_eq!(
        params,
        [
            ("realm".to_owned(), format!("{}/token", registry.url())),
            ("service".to_owned(), TOKEN_SERVICE.to_owned()),
            ("scope".to_owned(), "repository:kmods/ice:pull".to_owned()),
        ]
    );

    assert_eq!(
        fetch_token(&registry, &challenge, "puller", "bad").status,
        401
    );
    let token_reply = fetch_token(&registry, &challenge, "puller", "s3cret");
    assert_eq!(token_reply.status, 200);
    let token = token_reply.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(token_reply.json()["access_token"], token.as_str());
    let bearer = format!("Bearer {token}");

    let reply = send(registry.addr(), "GET", path, &[("Authorization", &bearer)]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, image.manifest);
    let blob = send(
        registry.addr(),
        "GET",
        &format!("/v2/kmods/ice/blobs/{}", image.layers[0].digest),
        &[("Authorization", &bearer)],
    );
    assert_eq!(blob.body, image.layers[0].bytes);
    assert_eq!(
        send(
            registry.addr(),
            "GET",
            "/v2/",
            &[("Authorization", &bearer)]
        )
        .status,
        200
    );

    // The token is scoped to its repository.
    let other = send(
        registry.addr(),
        "GET",
        "/v2/kmods/other/manifests/6.1.0",
        &[("Authorization", &bearer)],
    );
    assert_eq!(other.status, 401);
    assert!(other
        .header("WWW-Authenticate")
        .unwrap()
        .contains("scope=\"repository:kmods/other:pull\""));

    // /v2/ challenges without a scope; basic credentials are no substitute for a token.
    let base = get(registry.addr(), "/v2/");
    assert_eq!(base.status, 401);
    assert_eq!(
        base.header("Docker-Distribution-API-Version"),
        Some("registry/2.0")
    );
    assert!(!base.header("WWW-Authenticate").unwrap().contains("scope"));
    let basic = basic_authorization("puller", "s3cret");
    assert_eq!(
        send(registry.addr(), "GET", path, &[("Authorization", &basic)]).status,
        401
    );

    // Revoked tokens are challenged again.
    registry.revoke_tokens();
    assert_eq!(
        send(registry.addr(), "GET", path, &[("Authorization", &bearer)]).status,
        401
    );

    // The token endpoint rejects anonymous requests and unknown services.
    assert_eq!(get(registry.addr(), "/token?service=x").status, 401);
    let wrong_service = send(
        registry.addr(),
        "GET",
        "/token?service=elsewhere",
        &[("Authorization", &basic)],
    );
    assert_eq!(wrong_service.status, 400);
}

#[test]
fn token_endpoint_accepts_space_separated_scopes() {
    let registry = Registry::start_with_auth(Auth::bearer("u", "p")).unwrap();
    registry.push_blob("a", b"1".to_vec());
    let b = registry.push_blob("b", b"2".to_vec());
    let reply = send(
        registry.addr(),
        "GET",
        "/token?scope=repository%3Aa%3Apull+repository%3Ab%3Apull",
        &[("Authorization", &basic_authorization("u", "p"))],
    );
    let token = reply.json()["token"].as_str().unwrap().to_owned();
    let blob = send(
        registry.addr(),
        "GET",
        &format!("/v2/b/blobs/{b}"),
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(blob.status, 200);
}

#[test]
fn faults_apply_before_authentication() {
    let registry = Registry::start_with_auth(Auth::bearer("u", "p")).unwrap();
    registry.fault(Fault::status(503).on("/token").times(1));
    let token = send(
        registry.addr(),
        "GET",
        "/token",
        &[("Authorization", &basic_authorization("u", "p"))],
    );
    assert_eq!(token.status, 503);
    registry.set_auth(Auth::None);
    assert_eq!(get(registry.addr(), "/v2/").status, 200);
}

#[test]
fn request_log_counts_blob_and_manifest_gets() {
    let (registry, image) = registry_with_image();
    get(registry.addr(), "/v2/kmods/intel/ice/manifests/6.1.0");
    send(
        registry.addr(),
        "HEAD",
        "/v2/kmods/intel/ice/manifests/6.1.0",
        &[("Accept", OCI_MANIFEST)],
    );
    assert_eq!(registry.blob_gets(), 0, "a cached run downloads no blob");
    for layer in &image.layers {
        get(
            registry.addr(),
            &format!("/v2/kmods/intel/ice/blobs/{}", layer.digest),
        );
    }
    assert_eq!(registry.blob_gets(), image.layers.len());
    assert_eq!(registry.manifest_gets(), 1);
    assert_eq!(registry.count("HEAD", "/manifests/6.1.0"), 1);
    let log = registry.requests();
    assert_eq!(log[1].header("accept"), Some(OCI_MANIFEST));
    assert_eq!(log[1].status, 200);
    registry.clear_requests();
    assert!(registry.requests().is_empty());
    assert_eq!(registry.blob_gets(), 0);
}

#[test]
fn docker_media_types_are_served_as_pushed() {
    let registry = Registry::start().unwrap();
    let image = Image::new()
        .docker_media_types()
        .layer(Layer::new().file("a", b"a".to_vec()))
        .build()
        .unwrap();
    registry.push_image("d", "t", &image);
    let reply = get(registry.addr(), "/v2/d/manifests/t");
    assert_eq!(
        reply.header("Content-Type"),
        Some(kmod_day1_test_registry::DOCKER_MANIFEST)
    );
}

#[test]
fn drop_stops_the_server_even_mid_transfer() {
    let registry = Registry::start().unwrap();
    let digest = registry.push_blob("r", vec![0u8; 10_000]);
    registry.fault(Fault::Slow { bytes_per_sec: 100 });
    let addr = registry.addr();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(&request_bytes(
            "GET",
            &format!("/v2/r/blobs/{digest}"),
            &[],
            true,
        ))
        .unwrap();
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).unwrap();

    let start = Instant::now();
    drop(registry);
    assert!(start.elapsed() < Duration::from_secs(5));
    let mut rest = Vec::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.len() < 10_000, "the transfer was cut off");
    assert!(
        TcpStream::connect(addr).is_err(),
        "nothing listens any more"
    );
}

#[test]
fn serves_while_the_test_thread_is_inside_a_tokio_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let registry = Registry::start().unwrap();
        let mut stream = tokio::net::TcpStream::connect(registry.addr())
            .await
            .unwrap();
        stream
            .write_all(&request_bytes("GET", "/v2/", &[], true))
            .await
            .unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        assert!(raw.starts_with(b"HTTP/1.1 200 "));
        // Dropping inside a runtime is fine: the server has a runtime of its own.
        drop(registry);
    });
}

#[test]
fn reference_formats_tags_and_digests() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    assert_eq!(
        registry.reference("kmods/ice", "6.1.0"),
        format!("{host}/kmods/ice:6.1.0")
    );
    let digest = sha256_digest(b"m");
    assert_eq!(
        registry.reference("kmods/ice", &digest),
        format!("{host}/kmods/ice@{digest}")
    );
    assert_eq!(registry.url(), format!("http://{host}"));
}

#[test]
fn altering_faults_count_only_successful_gets() {
    let registry = Registry::start_with_auth(Auth::basic("u", "p")).unwrap();
    let image = kmod_image("6.1.0", Compression::Gzip);
    registry.push_image("r", "t", &image);
    let layer = &image.layers[0];
    let path = format!("/v2/r/blobs/{}", layer.digest);
    let auth = basic_authorization("u", "p");
    let rule = registry.fault(Fault::CutAfter { bytes: 10 }.on("/blobs/").times(1));

    // A 401 challenge, a HEAD and a 404 are not what the rule is about.
    assert_eq!(get(registry.addr(), &path).status, 401);
    let head = send(registry.addr(), "HEAD", &path, &[("Authorization", &auth)]);
    assert_eq!(head.status, 200);
    let missing = format!("/v2/r/blobs/{}", sha256_digest(b"none"));
    let missing = send(
        registry.addr(),
        "GET",
        &missing,
        &[("Authorization", &auth)],
    );
    assert_eq!(missing.status, 404);
    assert_eq!(registry.fault_fired(rule), 0);

    // The first download that would succeed is cut; the next is whole.
    let cut = send(registry.addr(), "GET", &path, &[("Authorization", &auth)]);
    assert_eq!(cut.body.len(), 10);
    let whole = send(registry.addr(), "GET", &path, &[("Authorization", &auth)]);
    assert_eq!(whole.body, layer.bytes);
    assert_eq!(registry.fault_fired(rule), 1);

    // A wrong digest header is also served on HEAD.
    registry.fault(Fault::WrongDigestHeader.on("/manifests/").method("HEAD"));
    let head = send(
        registry.addr(),
        "HEAD",
        "/v2/r/manifests/t",
        &[("Authorization", &auth)],
    );
    assert_ne!(
        head.header("Docker-Content-Digest"),
        Some(image.digest.as_str())
    );
}

#[test]
fn incompressible_layer_round_trips() {
    let registry = Registry::start().unwrap();
    let image = Image::new()
        .layer(Layer::new().random("opt/big.bin", 3 << 20, 7))
        .build()
        .unwrap();
    registry.push_image("r", "t", &image);
    let blob = get(
        registry.addr(),
        &format!("/v2/r/blobs/{}", image.layers[0].digest),
    );
    assert!(blob.body.len() > 3 << 20);
    assert_eq!(sha256_digest(&blob.body), image.layers[0].digest);
}

#[test]
fn absolute_form_targets_are_served_as_a_proxy_would() {
    let (registry, image) = registry_with_image();
    let target = format!(
        "http://{}/v2/kmods/intel/ice/manifests/6.1.0",
        registry.host()
    );
    let reply = get(registry.addr(), &target);
    assert_eq!(reply.body, image.manifest);
    get(registry.addr(), "/v2/");
    let log = registry.requests();
    assert!(log[0].proxied);
    assert_eq!(log[0].path, "/v2/kmods/intel/ice/manifests/6.1.0");
    assert!(!log[1].proxied);
}

#[test]
fn stall_after_keeps_the_connection_silent() {
    let registry = Registry::start().unwrap();
    let digest = registry.push_blob("r", vec![5u8; 1000]);
    registry.fault(Fault::StallAfter { bytes: 100 }.on("/blobs/").times(1));
    let mut stream = TcpStream::connect(registry.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(&request_bytes(
            "GET",
            &format!("/v2/r/blobs/{digest}"),
            &[],
            true,
        ))
        .unwrap();
    // Read the head and the 100 bytes, however long a loaded machine takes...
    let mut raw = Vec::new();
    let head_len = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert_ne!(n, 0, "closed instead of stalling");
        raw.extend_from_slice(&chunk[..n]);
        if let Some((_, head_len)) = parse_head(&raw) {
            if raw.len() >= head_len + 100 {
                break head_len;
            }
        }
    };
    let (reply, _) = parse_head(&raw).unwrap();
    assert_eq!(reply.content_length(), 1000);
    assert_eq!(raw.len() - head_len, 100);
    // ...then nothing more, and no close.
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let err = stream.read(&mut [0u8; 16]).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err}"
    );
    assert_eq!(registry.requests()[0].faults, ["stall-after"]);
}

#[test]
fn blob_downloads_can_be_redirected_to_another_origin() {
    let registry = Registry::start_with_auth(Auth::basic("u", "p")).unwrap();
    let image = kmod_image("6.1.0", Compression::Gzip);
    registry.push_image("kmods/ice", "6.1.0", &image);
    registry.redirect_blobs(true);
    let auth = basic_authorization("u", "p");
    let layer = &image.layers[0];
    let path = format!("/v2/kmods/ice/blobs/{}", layer.digest);

    let redirect = send(registry.addr(), "GET", &path, &[("Authorization", &auth)]);
    assert_eq!(redirect.status, 307);
    let location = redirect.header("Location").unwrap();
    let store = registry.blob_store_url();
    assert_eq!(location, format!("{store}/blobstore/{}", layer.digest));
    // Authentication is still checked before redirecting.
    assert_eq!(get(registry.addr(), &path).status, 401);
    // HEAD is answered directly.
    let head = send(registry.addr(), "HEAD", &path, &[("Authorization", &auth)]);
    assert_eq!(head.status, 200);

    let store_addr: SocketAddr = store.strip_prefix("http://").unwrap().parse().unwrap();
    assert_ne!(store_addr, registry.addr());
    let store_path = location.strip_prefix(&store).unwrap();
    let blob = get(store_addr, store_path);
    assert_eq!(blob.status, 200);
    assert_eq!(blob.body, layer.bytes);
    assert_eq!(get(store_addr, "/blobstore/sha256:00").status, 404);
    assert_eq!(
        get(store_addr, "/v2/").status,
        404,
        "the store is not a registry"
    );

    // Faults apply on the store too, and the log tells the origins apart.
    registry.fault(Fault::CorruptBody.on("/blobstore/").times(1));
    assert_ne!(get(store_addr, store_path).body, layer.bytes);
    let downloads = registry
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/blobstore/") && r.status == 200)
        .count();
    assert_eq!(downloads, 2);
    assert_eq!(registry.blob_gets(), 2, "the redirects, not the downloads");

    registry.redirect_blobs(false);
    let direct = send(registry.addr(), "GET", &path, &[("Authorization", &auth)]);
    assert_eq!(direct.body, layer.bytes);
}
