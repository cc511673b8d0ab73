// SPDX-License-Identifier: Apache-2.0
//! `--serve-metrics ADDR`: a minimal HTTP/1.1 server for Prometheus (`GET /metrics`,
//! `GET /healthz`), run by the prestage agent's pod behind a Service. Every request is read
//! with a size and time limit, answered and closed; at most a few are served at once. The
//! metrics are read afresh for each scrape (`metrics.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{info, warn};

/// The largest request head read; anything longer is refused.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 8;

/// Serves `render()` at `/metrics` on `addr` until the process is stopped.
pub(crate) async fn serve(
    addr: SocketAddr,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("listening on {addr}: {e}")))?;
    info!(
        "serving metrics on http://{}/metrics",
        listener.local_addr()?
    );
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("accepting a metrics connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(conn, render.as_ref()).await {
                tracing::debug!("metrics request from {peer}: {e}");
            }
            drop(permit);
        });
    }
}

/// Reads one request head and answers it.
async fn answer(
    mut conn: TcpStream,
    render: &(dyn Fn() -> String + Send + Sync),
) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut conn)).await {
        Ok(r) => r?,
        Err(_) => {
            return respond(&mut conn, "408 Request Timeout", "text/plain", "timeout\n").await
        }
    };
    let Some(head) = head else {
        return respond(
            &mut conn,
            "431 Request Header Fields Too Large",
            "text/plain",
            "too large\n",
        )
        .await;
    };
    let (status, ctype, body) = route(&head, render);
    respond(&mut conn, status, ctype, &body).await
}

/// What to answer to a request head.
fn route(head: &str, render: &dyn Fn() -> String) -> (&'static str, &'static str, String) {
    let mut words = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(),
        ),
        ("GET" | "HEAD", "/healthz") => ("200 OK", "text/plain", "ok\n".into()),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "see /metrics\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    }
}

/// The request head up to the blank line; `None` when it exceeds [`MAX_REQUEST`].
async fn read_head(conn: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if buf.len() > MAX_REQUEST {
            return Ok(None);
        }
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

async fn respond(
    conn: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn request(addr: SocketAddr, raw: &[u8]) -> String {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(raw).await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out
    }

    async fn server() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        tokio::spawn(serve(
            addr,
            Arc::new(|| "kmod_day1_status_present 1\n".to_owned()),
        ));
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        addr
    }

    #[tokio::test]
    async fn serves_metrics_health_and_refuses_the_rest() {
        let addr = server().await;
        let r = request(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(r.ends_with("\r\n\r\nkmod_day1_status_present 1\n"), "{r}");
        let r = request(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK") && r.ends_with("ok\n"));
        assert!(request(addr, b"GET /etc/passwd HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404"));
        assert!(request(addr, b"POST /metrics HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405"));
        let big = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert!(request(addr, big.as_bytes())
            .await
            .starts_with("HTTP/1.1 431"));
        // Garbage, and a client that closes at once: no answer needed, the server lives on.
        let _ = request(addr, b"\x00\xff\r\n\r\n").await;
        drop(TcpStream::connect(addr).await.unwrap());
        assert!(request(addr, b"GET /metrics HTTP/1.0\r\n\r\n")
            .await
            .contains("200 OK"));
    }
}
