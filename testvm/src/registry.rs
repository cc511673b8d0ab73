// SPDX-License-Identifier: Apache-2.0
//! Debian's `docker-registry` (distribution 2.8) on loopback, with filesystem storage in the
//! run's work directory. The guest reaches it at `10.0.2.2:PORT` through QEMU's user
//! network, over plain HTTP. It can be stopped and started again on the same port with the
//! same content (the "registry down" scenario).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tracing::info;

use crate::dirs::write_file;

/// Address of the host as the guest sees it (QEMU user networking).
pub const GUEST_HOST_ADDR: &str = "10.0.2.2";

/// A registry process and its files.
pub struct Registry {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Registry {
    /// Starts a registry on a free loopback port, storing under `dir`.
    pub fn start(dir: &Path) -> Result<Self> {
        let port = free_port()?;
        let mut r = Self {
            port,
            dir: dir.to_owned(),
            child: None,
        };
        r.write_config()?;
        r.resume()?;
        info!("registry: listening on 127.0.0.1:{port} (guest: {GUEST_HOST_ADDR}:{port})");
        Ok(r)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, for pushing from the host.
    pub fn host_addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `10.0.2.2:PORT`, for image references the guest uses.
    pub fn guest_addr(&self) -> String {
        format!("{GUEST_HOST_ADDR}:{}", self.port)
    }

    /// The registry's log (access log and debug lines).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("registry.log")
    }

    /// The log's current text.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn write_config(&self) -> Result<()> {
        let storage = self.dir.join("storage");
        std::fs::create_dir_all(&storage)
            .with_context(|| format!("creating {}", storage.display()))?;
        // Debug level logs each request when it starts (GetBlob), which the power-cut
        // scenario watches; the access log line only comes when a response is complete.
        let config = format!(
            "version: 0.1\nlog:\n  level: debug\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n",
            storage.display(),
            self.port
        );
        write_file(&self.dir.join("config.yml"), config)
    }

    /// Stops the registry (the guest then gets "connection refused").
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().context("stopping docker-registry")?;
            c.wait().context("waiting for docker-registry to exit")?;
            info!("registry: stopped");
        }
        Ok(())
    }

    /// Starts it again on the same port with the same storage.
    pub fn resume(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening {}", self.log_path().display()))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry (install it with hack/install-deps vm)")?;
        self.child = Some(child);
        self.wait_ready().with_context(|| {
            format!(
                "waiting for docker-registry; its log:\n{}",
                crate::cmd::tail(self.log().as_bytes())
            )
        })?;
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("docker-registry exited at start ({status})");
                }
            }
            if http_status(self.port, "/v2/").ok() == Some(200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "docker-registry did not answer on 127.0.0.1:{} within 20 s",
            self.port
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A port nobody listens on now.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// The status code of `GET path` on the loopback port.
pub fn http_status(port: u16, path: &str) -> Result<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("unexpected HTTP answer {line:?}"))
}

/// Blob downloads (`GET .../blobs/sha256:...` answered 200) in registry log text.
pub fn blob_downloads(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            l.contains("\"GET /v2/") && l.contains("/blobs/sha256:") && l.contains("\" 200 ")
        })
        .map(|l| l.to_owned())
        .collect()
}

/// Manifest requests (`GET` or `HEAD .../manifests/...`) in registry log text.
pub fn manifest_requests(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            (l.contains("\"GET /v2/") || l.contains("\"HEAD /v2/")) && l.contains("/manifests/")
        })
        .map(|l| l.to_owned())
        .collect()
}

/// Whether the registry has begun serving blob `digest` (its debug line at request start).
pub fn blob_started(log: &str, digest: &str) -> bool {
    log.lines()
        .any(|l| l.contains("GetBlob") && l.contains(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_blob_downloads_in_the_access_log() {
        let log = r#"10.0.2.15 - - [21/Nov/2026:06:30:00 +0000] "GET /v2/kd1/e1000/blobs/sha256:aa HTTP/1.1" 200 1234 "" "x"
10.0.2.15 - - [21/Nov/2026:06:30:00 +0000] "GET /v2/kd1/e1000/manifests/6.1 HTTP/1.1" 200 500 "" "x"
10.0.2.15 - - [21/Nov/2026:06:30:00 +0000] "HEAD /v2/kd1/e1000/blobs/sha256:bb HTTP/1.1" 200 0 "" "x"
time="x" level=debug msg=GetBlob http.request.uri="/v2/kd1/e1000/blobs/sha256:cc"
"#;
        assert_eq!(blob_downloads(log).len(), 1);
        assert_eq!(manifest_requests(log).len(), 1);
        assert!(blob_started(log, "sha256:cc"));
        assert!(!blob_started(log, "sha256:aa"));
    }
}
