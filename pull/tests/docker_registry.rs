// SPDX-License-Identifier: Apache-2.0
//! kmod-day1-pull against the real Debian `docker-registry` (distribution 2.8) on loopback,
//! with images pushed by `skopeo` from an OCI layout: pull by tag, by digest, through a
//! mirror. Needs the Debian packages `docker-registry` and `skopeo` (hack/install-deps).

mod common;

use std::path::Path;
use std::process::Command;

use common::{Node, K};
use kmod_day1_test_registry::docker::{require, skopeo_push, start_registry, start_registry_tls};
use kmod_day1_test_registry::{BuiltImage, Compression, Image, Layer};

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

    // Marked insecure, without the CA: HTTPS without verification first, as containers/image
    // does (a plain-HTTP request to this registry would fail), and committed.
    let node = Node::new();
    node.insecure(&[&reg.host]);
    node.config(&format!("{}/kmod/e1000", reg.host), "");
    node.run(30).expect(0).says("committed");
    assert_eq!(node.ref_record(K).unwrap().manifest_digest, img.digest);
}
