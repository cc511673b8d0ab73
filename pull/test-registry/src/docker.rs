// SPDX-License-Identifier: Apache-2.0
//! The real Debian `docker-registry` (distribution 2.8) on loopback, and images pushed to it
//! by `skopeo` from an OCI layout: the reference registry for tests that must not trust this
//! crate's own server (kmod-day1-pull's docker_registry and trust_policy tests, and
//! pull/trust-crosscheck).

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::image::BuiltImage;

/// Debian's `docker-registry` on a free loopback port, stopped when dropped.
#[derive(Debug)]
pub struct DockerRegistry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub host: String,
    _dir: tempfile::TempDir,
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails with the package to install when `bin` is missing.
///
/// # Panics
/// When `bin` does not exist.
pub fn require(bin: &str, package: &str) {
    assert!(
        Path::new(bin).exists(),
        "{bin} is missing: install the Debian package {package} (hack/install-deps vm does)"
    );
}

/// Starts Debian's `docker-registry` serving plain HTTP.
///
/// # Panics
/// When it is missing or does not come up within 20 s.
pub fn start_registry() -> DockerRegistry {
    start_registry_tls(None)
}

/// Starts Debian's `docker-registry`; `tls`: (certificate chain, key) files for HTTPS.
///
/// # Panics
/// When it is missing or does not come up within 20 s.
pub fn start_registry_tls(tls: Option<(&Path, &Path)>) -> DockerRegistry {
    require("/usr/bin/docker-registry", "docker-registry");
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{port}");
    let cfg = dir.path().join("config.yml");
    let tls_cfg = tls.map_or(String::new(), |(c, k)| {
        format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            c.display(),
            k.display()
        )
    });
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n{tls_cfg}",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting docker-registry");
    let t = Instant::now();
    loop {
        if let Ok(mut s) = TcpStream::connect(&host) {
            if tls.is_some() {
                break;
            }
            let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
            let mut buf = [0u8; 12];
            if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                break;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "docker-registry did not come up on {host}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    DockerRegistry {
        child,
        host,
        _dir: dir,
    }
}

/// Writes `img` as an OCI image layout in `dir` (tagged `t`), for `skopeo copy oci:DIR:t`.
pub fn write_oci_layout(img: &BuiltImage, dir: &Path) -> std::io::Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |digest: &str, bytes: &[u8]| {
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes)
    };
    put(&img.digest, &img.manifest)?;
    put(&img.config_digest, &img.config)?;
    for l in &img.layers {
        put(&l.digest, &l.bytes)?;
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"t"}}}}]}}"#,
            img.media_type,
            img.digest,
            img.manifest.len()
        ),
    )
}

/// Writes `img` as an OCI image layout and pushes it with skopeo to `dest`
/// (`host/repository:tag`); `cert_dir` for HTTPS, else TLS verification is off.
///
/// # Panics
/// When skopeo is missing or the push fails.
pub fn skopeo_push(img: &BuiltImage, dest: &str, cert_dir: Option<&Path>) {
    require("/usr/bin/skopeo", "skopeo");
    let d = tempfile::tempdir().unwrap();
    write_oci_layout(img, d.path()).unwrap();
    let out = Command::new("/usr/bin/skopeo")
        .args(["copy", "--quiet", "--preserve-digests"])
        .arg(match cert_dir {
            Some(c) => format!("--dest-cert-dir={}", c.display()),
            None => "--dest-tls-verify=false".into(),
        })
        .arg(format!("oci:{}:t", d.path().display()))
        .arg(format!("docker://{dest}"))
        .env("HOME", d.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
