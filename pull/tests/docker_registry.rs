// SPDX-License-Identifier: Apache-2.0
//! kmod-day1-pull against the real Debian `docker-registry` (distribution 2.8) on loopback,
//! with images pushed by `skopeo` from an OCI layout: pull by tag, by digest, through a
//! mirror. Needs the Debian packages `docker-registry` and `skopeo` (hack/install-deps).

mod common;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Node, K};
use kmod_day1_test_registry::{BuiltImage, Compression, Image, Layer};

struct DockerRegistry {
    child: Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn require(bin: &str, package: &str) {
    assert!(
        Path::new(bin).exists(),
        "{bin} is missing: install the Debian package {package} (hack/install-deps vm does)"
    );
}

fn start_registry() -> DockerRegistry {
    start_registry_tls(None)
}

/// `tls`: (certificate chain, key) files for HTTPS.
fn start_registry_tls(tls: Option<(&Path, &Path)>) -> DockerRegistry {
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

/// Writes `img` as an OCI image layout and pushes it with skopeo.
fn skopeo_push(img: &BuiltImage, dest: &str, cert_dir: Option<&Path>) {
    require("/usr/bin/skopeo", "skopeo");
    let d = tempfile::tempdir().unwrap();
    let blobs = d.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |digest: &str, bytes: &[u8]| {
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes).unwrap();
    };
    put(&img.digest, &img.manifest);
    put(&img.config_digest, &img.config);
    for l in &img.layers {
        put(&l.digest, &l.bytes);
    }
    std::fs::write(
        d.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        d.path().join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"t"}}}}]}}"#,
            img.media_type,
            img.digest,
            img.manifest.len()
        ),
    )
    .unwrap();
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

fn image(marker: &str) -> BuiltImage {
    Image::new()
        .layer(
            Layer::new()
                .compression(Compression::Gzip)
                .file(
                    format!("opt/lib/modules/{K}/extra/e1000.ko"),
                    marker.as_bytes().to_vec(),
                )
                .symlink(format!("opt/lib/modules/{K}/extra/alias.ko"), "e1000.ko"),
        )
        .layer(
            Layer::new()
                .compression(Compression::Zstd)
                .file("firmware/e1000/fw.bin", b"fw".to_vec()),
        )
        .build()
        .unwrap()
}

#[test]
fn pulls_by_tag_by_digest_and_through_a_mirror() {
    let reg = start_registry();
    let img = image("real-registry");
    skopeo_push(&img, &format!("{}/kmod/e1000:{K}", reg.host), None);

    // By tag (the kernel release, as KMM does).
    let node = Node::new();
    node.insecure(&[&reg.host]);
    node.config(
        &format!("{}/kmod/e1000", reg.host),
        r#", "firmwarePath": "/firmware""#,
    );
    node.run(60).expect(0).says("committed");
    let r = node.ref_record(K).unwrap();
    assert_eq!(r.manifest_digest, img.digest);
    assert_eq!(
        common::tree_file(&node.store(), &r.tree, "modules/extra/alias.ko"),
        b"real-registry"
    );
    assert_eq!(
        common::tree_file(&node.store(), &r.tree, "firmware/e1000/fw.bin"),
        b"fw"
    );

    // By digest.
    let node = Node::new();
    node.insecure(&[&reg.host]);
    node.config(&format!("{}/kmod/e1000@{}", reg.host, img.digest), "");
    node.run(60).expect(0).says("committed");
    assert_eq!(node.ref_record(K).unwrap().manifest_digest, img.digest);

    // Through a mirror, by digest only: the image exists only in the mirror's repository.
    let mirrored = image("from-mirror");
    skopeo_push(&mirrored, &format!("{}/mirror/e1000:{K}", reg.host), None);
    let node = Node::new();
    node.registries_conf(&format!(
        "[[registry]]\nprefix = \"{h}/source\"\ninsecure = true\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"{h}/mirror\"\ninsecure = true\n",
        h = reg.host
    ));
    node.config(
        &format!("{}/source/e1000@{}", reg.host, mirrored.digest),
        "",
    );
    node.run(60).expect(0).says("committed");
    let r = node.ref_record(K).unwrap();
    assert_eq!(
        r.image,
        format!("{}/source/e1000@{}", reg.host, mirrored.digest)
    );
    assert_eq!(
        common::tree_file(&node.store(), &r.tree, "modules/extra/e1000.ko"),
        b"from-mirror"
    );
    // By tag, the mirror is not used (mirror-by-digest-only) and the source has no such image.
    let node2 = Node::new();
    node2.registries_conf(&std::fs::read_to_string(node.path("registries.conf")).unwrap());
    node2.config(&format!("{}/source/e1000", reg.host), "");
    node2.run(10).expect(1).says("source/e1000");
    node2.assert_store_empty();
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn https_with_a_ca_from_certs_d() {
    require("/usr/bin/openssl", "openssl");
    let pki = tempfile::tempdir().unwrap();
    let p = pki.path();
    openssl(
        p,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=kmod-day1 test CA",
        ],
    );
    openssl(
        p,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        p.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        p,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    let reg = start_registry_tls(Some((&p.join("leaf.crt"), &p.join("leaf.key"))));
    let img = image("over-tls");
    // skopeo needs the CA too.
    let certs = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(certs.path().join(&reg.host)).unwrap();
    std::fs::copy(
        p.join("ca.crt"),
        certs.path().join(&reg.host).join("ca.crt"),
    )
    .unwrap();
    skopeo_push(
        &img,
        &format!("{}/kmod/e1000:{K}", reg.host),
        Some(&certs.path().join(&reg.host)),
    );
    let node = Node::new();
    node.config(&format!("{}/kmod/e1000", reg.host), "");
    // Without the CA: a TLS error, nothing stored.
    node.run(5).expect(1).says(&reg.host).says("certs.d");
    node.assert_store_empty();
    // With the CA in certs.d/<host>/: verified and committed.
    std::fs::create_dir_all(node.path("certs.d").join(&reg.host)).unwrap();
    std::fs::copy(
        p.join("ca.crt"),
        node.path("certs.d").join(&reg.host).join("ca.crt"),
    )
    .unwrap();
    node.run(30).expect(0).says("committed");
    assert_eq!(node.ref_record(K).unwrap().manifest_digest, img.digest);
}
