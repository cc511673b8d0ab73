// SPDX-License-Identifier: Apache-2.0
//! Just enough HTTP/1.1 for a registry under test: request heads, keep-alive, fixed-length
//! responses. Hand-rolled rather than hyper so faults can act on the wire itself (cut a body
//! after N bytes, trickle it, lie in Content-Length) without fighting a framework.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Request heads larger than this are refused; no sane client sends them.
const MAX_HEAD: usize = 64 * 1024;
/// Request bodies (only the token endpoint could get one) larger than this are refused.
const MAX_BODY: usize = 1024 * 1024;

/// A parsed request head.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: String,
    /// Path without the query string, as sent (not percent-decoded).
    pub(crate) path: String,
    /// Query string without the `?`, empty when absent.
    pub(crate) query: String,
    /// Header names lower-cased, values trimmed, in order.
    pub(crate) headers: Vec<(String, String)>,
    /// The target came in absolute form, as sent to a proxy.
    pub(crate) proxied: bool,
    http10: bool,
}

impl Request {
    /// The first value of header `name` (lower-case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the client wants the connection kept open after this request.
    pub(crate) fn keep_alive(&self) -> bool {
        let connection = self.header("connection").map(str::to_ascii_lowercase);
        match connection.as_deref() {
            Some(v) if v.contains("close") => false,
            Some(v) if v.contains("keep-alive") => true,
            _ => !self.http10,
        }
    }

    /// Values of query parameter `key`, percent-decoded.
    pub(crate) fn query_values(&self, key: &str) -> Vec<String> {
        self.query
            .split('&')
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(k) == key).then(|| percent_decode(v))
            })
            .collect()
    }
}

/// Why a request could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed or the socket failed: nothing to answer.
    Io,
    /// The request is malformed: answer 400 and close.
    Malformed(&'static str),
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        Self::Io
    }
}

/// Reads the next request from `stream`, using and refilling `buf` (bytes past this request
/// stay in it for the next call: pipelining). `Ok(None)` on a clean close between requests.
/// A request body announced by Content-Length is read and discarded.
pub(crate) async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Option<Request>, ReadError> {
    let head_end = loop {
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Malformed("request head too large"));
        }
        // Refuse at once what cannot become a request line, e.g. a TLS ClientHello from a
        // client trying https first: waiting for a blank line would hang it until it times
        // out, and a plain-text answer lets it fall back to http immediately.
        if !could_be_request_line(buf) {
            return Err(ReadError::Malformed("not an HTTP request"));
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Io)
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| ReadError::Malformed("request head is not UTF-8"))?;
    let request = parse_head(head)?;
    buf.drain(..head_end + 4);

    if request.header("transfer-encoding").is_some() {
        return Err(ReadError::Malformed(
            "chunked request bodies are not supported",
        ));
    }
    let body_len = match request.header("content-length") {
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ReadError::Malformed("bad Content-Length"))?,
        None => 0,
    };
    if body_len > MAX_BODY {
        return Err(ReadError::Malformed("request body too large"));
    }
    while buf.len() < body_len {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ReadError::Io);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..body_len);
    Ok(Some(request))
}

/// Whether `start` (what has arrived so far) can begin `METHOD SP`: up to 16 upper-case
/// letters before the first space.
fn could_be_request_line(start: &[u8]) -> bool {
    let method = start.split(|&b| b == b' ').next().unwrap_or_default();
    method.len() <= 16 && method.iter().all(u8::is_ascii_uppercase)
}

fn parse_head(head: &str) -> Result<Request, ReadError> {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Malformed("bad request line"));
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(ReadError::Malformed("unsupported HTTP version")),
    };
    // Absolute form (`GET http://host/v2/ HTTP/1.1`) is what clients send to an HTTP proxy:
    // served like origin form, and flagged so a test can tell its client used a proxy.
    let (target, proxied) = match target.strip_prefix("http://") {
        Some(rest) => (rest.find('/').map_or("/", |i| &rest[i..]), true),
        None => (target, false),
    };
    if !target.starts_with('/') {
        return Err(ReadError::Malformed(
            "request target is not an absolute path",
        ));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or(ReadError::Malformed("bad header line"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        http10,
        proxied,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes `%XX` escapes and `+` (form encoding); invalid escapes are kept as they are.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// A response body: a window into shared bytes, so serving a large blob copies nothing.
#[derive(Debug, Clone)]
pub(crate) struct Body {
    data: Arc<[u8]>,
    range: Range<usize>,
}

impl Body {
    pub(crate) fn empty() -> Self {
        Self::from(Vec::new())
    }

    pub(crate) fn shared(data: Arc<[u8]>) -> Self {
        let range = 0..data.len();
        Self { data, range }
    }

    pub(crate) fn slice(&self, range: Range<usize>) -> Self {
        let start = self.range.start + range.start;
        Self {
            data: Arc::clone(&self.data),
            range: start..start + range.len(),
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.data[self.range.clone()]
    }

    pub(crate) fn len(&self) -> usize {
        self.range.len()
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Self::shared(v.into())
    }
}

/// A response before it goes on the wire. `Content-Length` is added when written.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Body,
}

impl Response {
    pub(crate) fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::empty(),
        }
    }

    pub(crate) fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.set_header(name, value);
        self
    }

    /// Sets header `name`, replacing any value it had.
    pub(crate) fn set_header(&mut self, name: &str, value: impl Into<String>) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.into()));
    }

    pub(crate) fn body(mut self, body: impl Into<Body>) -> Self {
        self.body = body.into();
        self
    }

    /// A JSON body with its Content-Type.
    pub(crate) fn json(self, value: &serde_json::Value) -> Self {
        self.header("Content-Type", "application/json")
            .body(value.to_string().into_bytes())
    }

    /// The status line and headers, with `content_length` as Content-Length unless a header
    /// of that name was set (a fault's lie).
    pub(crate) fn head_bytes(&self, content_length: usize, keep_alive: bool) -> Vec<u8> {
        use std::fmt::Write as _;
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        if !self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        {
            let _ = write!(head, "Content-Length: {content_length}\r\n");
        }
        if !keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        head.into_bytes()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(input: &[u8]) -> Vec<Result<Option<Request>, ReadError>> {
        let mut stream = input;
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            let r = read_request(&mut stream, &mut buf).await;
            let stop = !matches!(r, Ok(Some(_)));
            out.push(r);
            if stop {
                return out;
            }
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn parses_pipelined_requests_and_skips_bodies() {
        let input = b"GET /v2/a/b/manifests/latest?x=1 HTTP/1.1\r\nHost: h\r\nAccept: a, b\r\n\r\n\
POST /token HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
HEAD /v2/ HTTP/1.0\r\n\r\n";
        let out = block_on(read_all(input));
        assert_eq!(out.len(), 4);
        let Ok(Some(first)) = &out[0] else { panic!() };
        assert_eq!(first.method, "GET");
        assert_eq!(first.path, "/v2/a/b/manifests/latest");
        assert_eq!(first.query, "x=1");
        assert_eq!(first.header("accept"), Some("a, b"));
        assert!(first.keep_alive());
        let Ok(Some(second)) = &out[1] else { panic!() };
        assert_eq!(second.path, "/token");
        let Ok(Some(third)) = &out[2] else { panic!() };
        assert_eq!(third.method, "HEAD");
        assert!(!third.keep_alive(), "HTTP/1.0 closes by default");
        assert!(matches!(out[3], Ok(None)));
    }

    #[test]
    fn absolute_form_is_served_and_flagged() {
        let out = block_on(read_all(
            b"GET http://127.0.0.1:5000/v2/x/manifests/t?a=b HTTP/1.1\r\n\r\n",
        ));
        let Ok(Some(req)) = &out[0] else { panic!() };
        assert_eq!(req.path, "/v2/x/manifests/t");
        assert_eq!(req.query, "a=b");
        assert!(req.proxied);
    }

    #[test]
    fn refuses_malformed_requests() {
        for input in [
            &b"GET\r\n\r\n"[..],
            b"GET /v2/ HTTP/2\r\n\r\n",
            b"GET v2 HTTP/1.1\r\n\r\n",
            b"GET /v2/ HTTP/1.1\r\nno colon\r\n\r\n",
            b"POST /token HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let out = block_on(read_all(input));
            assert!(
                matches!(out[0], Err(ReadError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn tls_client_hello_is_refused_without_waiting() {
        // A stream that never ends: only the early check can answer.
        let (mut client, mut server) = tokio::io::duplex(1024);
        let out = block_on(async move {
            use tokio::io::AsyncWriteExt as _;
            client
                .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
                .await
                .unwrap();
            let mut buf = Vec::new();
            let r = read_request(&mut server, &mut buf).await;
            drop(client);
            r
        });
        assert!(matches!(out, Err(ReadError::Malformed(_))));
        assert!(could_be_request_line(b"GE"));
        assert!(could_be_request_line(b"GET /v2/"));
        assert!(!could_be_request_line(b"get /"));
    }

    #[test]
    fn eof_inside_a_head_is_an_error() {
        let out = block_on(read_all(b"GET /v2/ HTTP/1.1\r\n"));
        assert!(matches!(out[0], Err(ReadError::Io)));
    }

    #[test]
    fn decodes_query_values() {
        let input =
            b"GET /token?service=reg&scope=repository%3Aa%2Fb%3Apull&scope=x+y HTTP/1.1\r\n\r\n";
        let out = block_on(read_all(input));
        let Ok(Some(req)) = &out[0] else { panic!() };
        assert_eq!(req.query_values("service"), ["reg"]);
        assert_eq!(req.query_values("scope"), ["repository:a/b:pull", "x y"]);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn body_slices_share_bytes() {
        let body = Body::from(b"0123456789".to_vec());
        let s = body.slice(2..6);
        assert_eq!(s.as_slice(), b"2345");
        assert_eq!(s.slice(1..3).as_slice(), b"34");
        assert_eq!(s.len(), 4);
    }
}
