// SPDX-License-Identifier: Apache-2.0
//! kmod-day1-pull against the in-process test registry: auth, faults, mirrors, reboots.
//! Each case ends in a verified commit or in a clean error with the store unchanged.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Node, K, K2};
use kmod_day1_contract::{SetState, UpgradePreflight};
use kmod_day1_test_registry::{Auth, Compression, Fault, Image, Layer, RawEntry, Registry};

const REPO: &str = "kmod/e1000";

fn kmod_image(kernel: &str, marker: &str) -> kmod_day1_test_registry::BuiltImage {
    Image::new()
        .layer(Layer::new().file("usr/bin/base", b"base layer".to_vec()))
        .layer(
            Layer::new()
                .compression(Compression::Zstd)
                .file(
                    format!("opt/lib/modules/{kernel}/extra/e1000.ko"),
                    marker.as_bytes().to_vec(),
                )
                .file(
                    format!("opt/lib/modules/{kernel}/modules.dep"),
                    b"extra/e1000.ko:\n".to_vec(),
                )
                .random(
                    format!("opt/lib/modules/{kernel}/extra/big.bin"),
                    300_000,
                    7,
                )
                .file("lib/firmware/e1000/fw.bin", b"fw".to_vec()),
        )
        .build()
        .unwrap()
}

/// A node configured for `reg`'s `kmod/e1000` (kernel-release tag), with the image pushed.
fn setup(reg: &Registry) -> (Node, String) {
    let node = Node::new();
    node.insecure(&[&reg.host()]);
    node.config(&format!("{}/{REPO}", reg.host()), "");
    let digest = reg.push_image(REPO, K, &kmod_image(K, "oot-1"));
    (node, digest)
}

fn assert_committed(node: &Node, digest: &str, marker: &str) {
    let r = node.ref_record(K).expect("a ref");
    assert_eq!(r.manifest_digest, digest);
    assert_eq!(
        common::tree_file(&node.store(), &r.tree, "modules/extra/e1000.ko"),
        marker.as_bytes()
    );
    assert!(node.names("tmp").is_empty(), "tmp: {:?}", node.names("tmp"));
}

#[test]
fn pulls_by_tag_then_finds_it_unchanged() {
    let reg = Registry::start().unwrap();
    let (node, digest) = setup(&reg);
    node.run(30)
        .expect(0)
        .says("committed")
        .says("reboot: notNeeded");
    assert_committed(&node, &digest, "oot-1");
    let last = node.last_pull();
    assert_eq!(last.pulls[0].outcome, "committed");
    assert_eq!(last.reboot, "notNeeded");
    // Nothing in the base layer outside the selection was extracted.
    let tree = node.ref_record(K).unwrap().tree;
    assert!(!node.store().join("trees").join(&tree).join("usr").exists());

    reg.clear_requests();
    node.run(30).expect(0).says("unchanged");
    assert_eq!(reg.blob_gets(), 0);
    assert_eq!(node.last_pull().pulls[0].outcome, "unchanged");

    // The config now wants the firmware too: same image, new tree.
    node.config(
        &format!("{}/{REPO}", reg.host()),
        r#", "firmwarePath": "/lib/firmware""#,
    );
    node.run(30).expect(0).says("committed");
    let r = node.ref_record(K).unwrap();
    assert_ne!(r.tree, tree);
    assert_eq!(
        common::tree_file(&node.store(), &r.tree, "firmware/e1000/fw.bin"),
        b"fw"
    );
    assert_eq!(node.names("trees"), std::slice::from_ref(&r.tree));

    // The tag moves: the new image is committed, the old tree collected.
    let d2 = reg.push_image(REPO, K, &kmod_image(K, "oot-2"));
    node.run(30).expect(0).says("committed");
    assert_committed(&node, &d2, "oot-2");
    assert_eq!(node.names("trees").len(), 1);
}

#[test]
fn bearer_and_basic_auth_from_the_pull_secret() {
    for auth in [
        Auth::bearer("puller", "s3cret"),
        Auth::basic("puller", "s3cret"),
    ] {
        let reg = Registry::start_with_auth(auth.clone()).unwrap();
        let (node, digest) = setup(&reg);
        // No credentials: a clean error that says what to do.
        node.run(10).expect(1).says("pull secret");
        node.assert_store_empty();
        node.pull_secret(&reg.host(), "puller", "wrong");
        node.run(10).expect(1).says("failed");
        node.assert_store_empty();
        node.pull_secret(&reg.host(), "puller", "s3cret");
        node.run(30).expect(0).says("committed");
        assert_committed(&node, &digest, "oot-1");
    }
}

#[test]
fn retries_server_errors_and_honours_retry_after() {
    let reg = Registry::start().unwrap();
    let (node, digest) = setup(&reg);
    let r500 = reg.fault(Fault::status(500).on("/blobs/").times(2));
    let r503 = reg.fault(Fault::status(503).on("/manifests/").times(1));
    node.run(60).expect(0).says("retrying");
    assert_eq!(reg.fault_fired(r500), 2);
    assert_eq!(reg.fault_fired(r503), 1);
    assert_committed(&node, &digest, "oot-1");

    let reg = Registry::start().unwrap();
    let (node, digest) = setup(&reg);
    let r429 = reg.fault(Fault::status_retry_after(429, 2).on("/manifests/").times(1));
    let t = Instant::now();
    node.run(60).expect(0).says("wait_ms=2000");
    assert!(t.elapsed() >= Duration::from_secs(2));
    assert_eq!(reg.fault_fired(r429), 1);
    assert_committed(&node, &digest, "oot-1");

    // A Retry-After beyond the budget ends the run at once, saying so.
    let reg = Registry::start().unwrap();
    let (node, _) = setup(&reg);
    reg.fault(Fault::status_retry_after(503, 3600).on("/manifests/"));
    let t = Instant::now();
    node.run(20).expect(1).says("retry after 3600 s");
    assert!(t.elapsed() < Duration::from_secs(10));
    node.assert_store_empty();
}

#[test]
fn redirect_loops_are_permanent_errors_not_retried() {
    let reg = Registry::start().unwrap();
    let (node, _) = setup(&reg);
    // Every manifest GET answers 307 to itself.
    let url = format!("{}/v2/{REPO}/manifests/{K}", reg.url());
    let loop_rule = reg.fault(Fault::Redirect(url).on("/manifests/"));
    let t = Instant::now();
    let run = node.run(30);
    run.expect(1).says("redirect loop");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "retried a permanent error"
    );
    assert!(!run.stderr.contains("retrying"), "{}", run.stderr);
    // One manifest GET and one redirect back to itself.
    assert!(
        reg.fault_fired(loop_rule) <= 2,
        "{}",
        reg.fault_fired(loop_rule)
    );
    node.assert_store_empty();
}

/// A tmpfs of `size` mounted on the node's store for the life of the value (needs root, as
/// `make test` has).
struct SmallStore(std::path::PathBuf);

impl SmallStore {
    fn mount(node: &Node, size: &str) -> Self {
        let store = node.store();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&store)
            .status()
            .expect("running mount");
        assert!(
            ok.success(),
            "mounting a tmpfs on {} (this test needs root)",
            store.display()
        );
        Self(store)
    }
}

impl Drop for SmallStore {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_store_is_reported_as_such_and_commits_nothing() {
    // Less free space than the compressed layers: refused before the download.
    let reg = Registry::start().unwrap();
    let (node, _) = setup(&reg);
    let _small = SmallStore::mount(&node, "64k");
    node.run(10)
        .expect(1)
        .says("needs at least")
        .says(&node.store().display().to_string());
    assert_eq!(
        reg.blob_gets(),
        0,
        "downloaded despite the free-space check"
    );
    assert!(node.ref_record(K).is_none());

    // Enough for the compressed layers, not for the extracted tree: ENOSPC, named as such.
    let reg = Registry::start().unwrap();
    let node = Node::new();
    node.insecure(&[&reg.host()]);
    node.config(&format!("{}/{REPO}", reg.host()), "");
    let zeros = Image::new()
        .layer(
            Layer::new()
                .compression(Compression::Gzip)
                .zeros(format!("opt/lib/modules/{K}/extra/zeros.ko"), 8 << 20),
        )
        .build()
        .unwrap();
    reg.push_image(REPO, K, &zeros);
    let _small = SmallStore::mount(&node, "1m");
    node.run(10)
        .expect(1)
        .says("no space left in the store")
        .says(&node.store().display().to_string());
    assert!(node.ref_record(K).is_none());
    assert!(node.names("trees").is_empty());
    assert!(node.names("tmp").is_empty(), "tmp: {:?}", node.names("tmp"));
}

#[test]
fn a_corrupt_ref_is_set_aside_and_rebuilt() {
    let reg = Registry::start().unwrap();
    let (node, digest) = setup(&reg);
    node.run(30).expect(0).says("committed");
    let ref_file = node.ref_files(K).pop().unwrap();
    std::fs::write(&ref_file, "{ torn by a power cut").unwrap();
    node.run(30).expect(0).says("set aside").says("committed");
    assert_committed(&node, &digest, "oot-1");
    assert_eq!(
        std::fs::read_to_string(
            node.store()
                .join(format!("corrupt/ref-99-kmod-e1000-{K}.json"))
        )
        .unwrap(),
        "{ torn by a power cut"
    );
}

#[test]
fn resumes_a_blob_cut_mid_way() {
    let reg = Registry::start().unwrap();
    let (node, digest) = setup(&reg);
    let cut = reg.fault(Fault::CutAfter { bytes: 100_000 }.on("/blobs/").times(2));
    node.run(60).expect(0).says("retrying");
    assert_eq!(reg.fault_fired(cut), 2);
    assert_committed(&node, &digest, "oot-1");
    // Resumed with Range rather than downloaded again from the start.
    assert!(
        reg.requests().iter().any(|r| r.header("range").is_some()),
        "{:?}",
        reg.requests()
    );
}

/// Every file of the committed tree, by path relative to the tree.
fn tree_contents(node: &Node) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(
        dir: &std::path::Path,
        rel: &str,
        out: &mut std::collections::BTreeMap<String, Vec<u8>>,
    ) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = format!("{rel}/{}", e.file_name().to_string_lossy());
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &name, out);
            } else {
                out.insert(name, std::fs::read(e.path()).unwrap());
            }
        }
    }
    let tree = node.ref_record(K).expect("a ref").tree;
    let mut out = std::collections::BTreeMap::new();
    walk(&node.store().join("trees").join(tree), "", &mut out);
    out
}

/// The modules layer uncompressed, so that a corrupt byte lands in file data and the
/// speculative extraction of the blob succeeds: only the digest can refuse it.
fn plain_image() -> kmod_day1_test_registry::BuiltImage {
    Image::new()
        .layer(Layer::new().file("usr/bin/base", b"base layer".to_vec()))
        .layer(
            Layer::new()
                .compression(Compression::None)
                .file(
                    format!("opt/lib/modules/{K}/extra/e1000.ko"),
                    b"oot-1".to_vec(),
                )
                .random(format!("opt/lib/modules/{K}/extra/big.bin"), 300_000, 7),
        )
        .build()
        .unwrap()
}

#[test]
fn a_blob_cut_anywhere_resumes_into_the_same_tree() {
    let img = kmod_image(K, "oot-1");
    let layer = img.layers[1].clone();
    let reg = Registry::start().unwrap();
    let digest = reg.push_image(REPO, K, &img);
    let reference = Node::new();
    reference.insecure(&[&reg.host()]);
    reference.config(&format!("{}/{REPO}", reg.host()), "");
    reference.run(30).expect(0);
    let want = tree_contents(&reference);
    assert!(
        want.values().any(|v| v.len() == 300_000),
        "{:?}",
        want.keys()
    );
    // The extractor is fed while the blob downloads: a cut at the first byte, in the middle
    // and before the last byte must continue its stream exactly where it stopped.
    let len = layer.bytes.len() as u64;
    for cut_at in [1, len / 2, len - 1] {
        let node = Node::new();
        node.insecure(&[&reg.host()]);
        node.config(&format!("{}/{REPO}", reg.host()), "");
        reg.clear_requests();
        let cut = reg.fault(Fault::CutAfter { bytes: cut_at }.on(&layer.digest).times(1));
        node.run(30).expect(0).says("retrying");
        assert_eq!(reg.fault_fired(cut), 1);
        let range = format!("bytes={cut_at}-");
        assert!(
            reg.requests()
                .iter()
                .any(|r| r.header("range") == Some(range.as_str())),
            "{:?}",
            reg.requests()
        );
        assert_eq!(node.ref_record(K).unwrap().manifest_digest, digest);
        assert!(tree_contents(&node) == want, "cut at {cut_at}");
        assert!(node.names("tmp").is_empty(), "tmp: {:?}", node.names("tmp"));
    }
}

#[test]
fn a_server_ignoring_range_after_a_cut_must_resend_the_same_bytes() {
    let img = plain_image();
    let layer = img.layers[1].clone();
    let cut_at = layer.bytes.len() as u64 / 2;

    // The whole blob again (200 to the Range request): the start is checked and skipped.
    let reg = Registry::start().unwrap();
    let digest = reg.push_image(REPO, K, &img);
    let node = Node::new();
    node.insecure(&[&reg.host()]);
    node.config(&format!("{}/{REPO}", reg.host()), "");
    reg.fault(Fault::CutAfter { bytes: cut_at }.on(&layer.digest).times(1));
    let ignore = reg.fault(Fault::IgnoreRange.on(&layer.digest).after(1).times(1));
    node.run(30).expect(0).says("retrying");
    assert_eq!(reg.fault_fired(ignore), 1);
    assert_committed(&node, &digest, "oot-1");

    // The whole blob again, but with other bytes before the cut: what was extracted cannot
    // be taken back, so the pull fails and nothing is committed.
    let reg = Registry::start().unwrap();
    reg.push_image(REPO, K, &img);
    let node = Node::new();
    node.insecure(&[&reg.host()]);
    node.config(&format!("{}/{REPO}", reg.host()), "");
    let mut other = layer.bytes.clone();
    other[600] ^= 0x20;
    reg.fault(Fault::CutAfter { bytes: cut_at }.on(&layer.digest).times(1));
    reg.fault(Fault::IgnoreRange.on(&layer.digest).after(1).times(1));
    reg.fault(
        Fault::ReplaceBody(other)
            .on(&layer.digest)
            .after(1)
            .times(1),
    );
    node.run(30).expect(1).says("ignored Range");
    node.assert_store_empty();

    // The same start, a corrupt end: the digest refuses it.
    let reg = Registry::start().unwrap();
    reg.push_image(REPO, K, &img);
    let node = Node::new();
    node.insecure(&[&reg.host()]);
    node.config(&format!("{}/{REPO}", reg.host()), "");
    let mut other = layer.bytes.clone();
    *other.last_mut().unwrap() ^= 0x20;
    reg.fault(Fault::CutAfter { bytes: cut_at }.on(&layer.digest).times(1));
    reg.fault(Fault::IgnoreRange.on(&layer.digest).after(1).times(1));
    reg.fault(
        Fault::ReplaceBody(other)
            .on(&layer.digest)
            .after(1)
            .times(1),
    );
    node.run(30).expect(1).says("digest mismatch");
    node.assert_store_empty();
}

#[test]
fn a_corrupt_blob_extracted_while_downloading_leaves_no_tree_and_no_ref() {
    // The flipped byte is file data in a plain tar: extraction of the blob succeeds, only its
    // digest fails, after the whole tree was written to staging.
    let img = plain_image();
    let reg = Registry::start().unwrap();
    reg.push_image(REPO, K, &img);
    let node = Node::new();
    node.insecure(&[&reg.host()]);
    node.config(&format!("{}/{REPO}", reg.host()), "");
    reg.fault(Fault::CorruptBody.on(&img.layers[1].digest));
    node.run(20).expect(1).says("digest mismatch");
    node.assert_store_empty();
    assert!(node.ref_record(K).is_none());
    // And a stored tree is kept when the new image's blob is corrupt.
    let reg = Registry::start().unwrap();
    let (node, digest) = setup(&reg);
    node.run(20).expect(0);
    let before = tree_contents(&node);
    let d2 = reg.push_image(REPO, K, &img);
    assert_ne!(d2, digest);
    reg.fault(Fault::CorruptBody.on(&img.layers[1].digest));
    node.run(20).expect(1).says("digest mismatch");
    assert_committed(&node, &digest, "oot-1");
    assert_eq!(node.names("trees").len(), 1);
    assert!(tree_contents(&node) == before);
}

#[test]
fn corrupt_blobs_and_lying_manifests_leave_the_store_unchanged() {
    let reg = Registry::start().unwrap();
    let (node, _) = setup(&reg);
    reg.fault(Fault::CorruptBody.on("/blobs/"));
    node.run(20).expect(1).says("digest mismatch");
    node.assert_store_empty();
    assert_eq!(node.last_pull().pulls[0].outcome, "failed");
    assert!(!node.rebooted());

    let reg = Registry::start().unwrap();
    let (node, _) = setup(&reg);
    reg.fault(Fault::LyingManifest.on("/manifests/"));
    node.run(20).expect(1).says("digest mismatch");
    node.assert_store_empty();

    // A digest pin that the registry's content does not match.
    let reg = Registry::start().unwrap();
    let (node, digest) = setup(&reg);
    let other = kmod_day1_test_registry::sha256_digest(b"other");
    node.config(&format!("{}/{REPO}@{other}", reg.host()), "");
    node.run(20).expect(1);
    node.assert_store_empty();
    // A digest this tool cannot check is refused, not trusted.
    node.config(
        &format!("{}/{REPO}@sha512:{}", reg.host(), "ab".repeat(64)),
        "",
    );
    node.run(20).expect(1).says("pin a sha256 digest");
    node.assert_store_empty();
    // The right pin works, and the next run does not even ask the registry.
    node.config(&format!("{}/{REPO}@{digest}", reg.host()), "");
    node.run(20).expect(0).says("committed");
    assert_committed(&node, &digest, "oot-1");
    reg.clear_requests();
    node.run(20).expect(0).says("unchanged");
    assert!(reg.requests().is_empty());
}

#[test]
fn a_slow_server_ends_within_the_budget() {
    let reg = Registry::start().unwrap();
    let (node, _) = setup(&reg);
    reg.fault(
        Fault::Slow {
            bytes_per_sec: 2000,
        }
        .on("/blobs/"),
    );
    let t = Instant::now();
    node.run(4).expect(1).says("budget");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    node.assert_store_empty();
    // A server that hangs: the request timeout fires, the retries run out of budget.
    let reg = Registry::start().unwrap();
    let (node, _) = setup(&reg);
    reg.fault(Fault::Delay(Duration::from_secs(30)).on("/manifests/"));
    node.run(5).expect(1).says(&reg.host());
    node.assert_store_empty();
}

#[test]
fn mirrors_first_then_the_source() {
    let source = Registry::start().unwrap();
    let mirror = Registry::start().unwrap();
    let node = Node::new();
    let img = kmod_image(K, "oot-1");
    let digest = source.push_image(REPO, K, &img);
    mirror.push_image("mirrored/e1000", K, &img);
    node.registries_conf(&format!(
        "[[registry]]\nprefix = \"{s}/kmod\"\nlocation = \"{s}/kmod\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{m}/mirrored\"\ninsecure = true\n",
        s = source.host(),
        m = mirror.host()
    ));
    node.config(&format!("{}/{REPO}", source.host()), "");
    node.run(30).expect(0).says("committed");
    assert_committed(&node, &digest, "oot-1");
    assert!(mirror.blob_gets() > 0);
    assert_eq!(source.blob_gets(), 0);

    // The mirror breaks: the source serves.
    std::fs::remove_dir_all(node.store()).unwrap();
    mirror.fault(Fault::status(404).on("/manifests/"));
    node.run(30).expect(0).says("mirror failed");
    assert_committed(&node, &digest, "oot-1");
    assert!(source.blob_gets() > 0);
}

#[test]
fn image_index_resolves_to_linux_amd64() {
    let reg = Registry::start().unwrap();
    let node = Node::new();
    node.insecure(&[&reg.host()]);
    node.config(&format!("{}/{REPO}", reg.host()), "");
    let amd = kmod_image(K, "amd64");
    let arm = Image::new()
        .platform("linux", "arm64")
        .layer(Layer::new().file(
            format!("opt/lib/modules/{K}/extra/e1000.ko"),
            b"arm64".to_vec(),
        ))
        .build()
        .unwrap();
    reg.push_index(REPO, K, &[&arm, &amd]);
    node.run(30).expect(0).says("committed");
    assert_committed(&node, &amd.digest, "amd64");
}

#[test]
fn malicious_layers_are_refused() {
    let reg = Registry::start().unwrap();
    let node = Node::new();
    node.insecure(&[&reg.host()]);
    node.config(&format!("{}/{REPO}", reg.host()), "");
    let cases: Vec<(RawEntry, &str)> = vec![
        (
            RawEntry::file(
                format!("opt/lib/modules/{K}/../../../../../../tmp/pwned"),
                b"x".to_vec(),
            ),
            "traversal",
        ),
        (RawEntry::file("/etc/pwned", b"x".to_vec()), "absolute"),
        (
            RawEntry::symlink(format!("opt/lib/modules/{K}/evil.ko"), "/etc/shadow"),
            "outside",
        ),
        (
            RawEntry::hardlink(format!("opt/lib/modules/{K}/evil.ko"), "etc/shadow"),
            "outside",
        ),
        (
            RawEntry::char_device(format!("opt/lib/modules/{K}/mem"), 1, 1),
            "device",
        ),
    ];
    for (entry, why) in cases {
        let img = Image::new()
            .layer(
                Layer::new()
                    .file(format!("opt/lib/modules/{K}/ok.ko"), b"ok".to_vec())
                    .raw(entry),
            )
            .build()
            .unwrap();
        reg.push_image(REPO, K, &img);
        node.run(20).expect(1).says(why).says("refused");
        node.assert_store_empty();
    }
    // A decompression bomb: 64 MiB of zeros in a file, over --max-file-mib 16.
    let img = Image::new()
        .layer(Layer::new().zeros(format!("opt/lib/modules/{K}/bomb.ko"), 64 << 20))
        .build()
        .unwrap();
    assert!(img.layers[0].bytes.len() < 1 << 20);
    reg.push_image(REPO, K, &img);
    let out = node
        .command(20)
        .args(["--max-file-mib", "16"])
        .output()
        .unwrap();
    common::Run::from(out)
        .expect(1)
        .says("bomb.ko")
        .says("entry limit");
    node.assert_store_empty();
    assert!(!std::path::Path::new("/tmp/pwned").exists());
}

#[test]
fn reboots_once_and_the_guard_refuses_a_second_time() {
    let reg = Registry::start().unwrap();
    let (node, digest) = setup(&reg);
    node.loader_status(SetState::NotStored);
    node.run(30).expect(0).says("reboot: requested");
    assert!(node.rebooted());
    assert_eq!(
        std::fs::read_to_string(node.path("rebooted"))
            .unwrap()
            .trim(),
        digest
    );
    assert_eq!(node.last_pull().reboot, "requested");

    // Next boot the loader failed with this content, and somehow the ref is gone again:
    // the same kernel + digest never reboots twice.
    std::fs::remove_file(node.path("rebooted")).unwrap();
    std::fs::write(node.path("boot_id"), "b2\n").unwrap();
    node.loader_status(SetState::Failed);
    let status = std::fs::read_to_string(node.path("status.json"))
        .unwrap()
        .replace("\"b1\"", "\"b2\"");
    std::fs::write(node.path("status.json"), status).unwrap();
    std::fs::remove_dir_all(node.store().join("refs")).unwrap();
    node.run(30).expect(3).says("refusedByGuard");
    assert!(!node.rebooted());

    // --no-reboot and policy never: no reboot.
    let reg = Registry::start().unwrap();
    let (node, _) = setup(&reg);
    node.loader_status(SetState::NotStored);
    let out = node.command(30).arg("--no-reboot").output().unwrap();
    common::Run::from(out).expect(0).says("reboot: disabled");
    assert!(!node.rebooted());
    let reg = Registry::start().unwrap();
    let (node, _) = setup(&reg);
    node.config(&format!("{}/{REPO}", reg.host()), r#", "reboot": "never""#);
    node.loader_status(SetState::NotStored);
    node.run(30).expect(0).says("reboot: notNeeded");
    assert!(!node.rebooted());
}

#[test]
fn prefetches_boot_entry_kernels_without_reboot() {
    let reg = Registry::start().unwrap();
    let (node, _) = setup(&reg);
    let d2 = reg.push_image(REPO, K2, &kmod_image(K2, "next"));
    std::fs::write(
        node.path("entries/next.conf"),
        format!("title next\nlinux /vmlinuz-{K2}\n"),
    )
    .unwrap();
    node.loader_status(SetState::Loaded);
    node.run(30).expect(0).says("reboot: notNeeded");
    assert!(!node.rebooted());
    assert_eq!(node.ref_record(K2).unwrap().manifest_digest, d2);
    // Its image missing: a failure is reported (exit 1), the running kernel's state stands.
    std::fs::write(
        node.path("entries/gone.conf"),
        "linux /vmlinuz-6.9.9-1-amd64\n",
    )
    .unwrap();
    node.run(10).expect(1).says("failed");
    assert!(node.ref_record(K).is_some());
    // Both other kernels are uninstalled: their refs and trees go, the running one's stay.
    std::fs::remove_file(node.path("entries/next.conf")).unwrap();
    std::fs::remove_file(node.path("entries/gone.conf")).unwrap();
    std::fs::write(
        node.path("entries/cur.conf"),
        format!("linux /vmlinuz-{K}\n"),
    )
    .unwrap();
    node.run(10).expect(0).says("no boot can use its kernel");
    assert!(node.ref_record(K2).is_none());
    assert_eq!(node.names("trees"), [node.ref_record(K).unwrap().tree]);
}

/// A store prepared on a workstation for a bundle or an initrd: `--kernel-release` names the
/// kernels, the machine's own boot entries and kernels are not read, and a second run for
/// another kernel adds to the store instead of pruning the first one's. Never a reboot.
#[test]
fn named_kernels_prepare_a_store_and_runs_add_up() {
    let reg = Registry::start().unwrap();
    let (node, d1) = setup(&reg);
    let d2 = reg.push_image(REPO, K2, &kmod_image(K2, "next"));
    // The workstation's own kernel, with a boot entry and an installed kernel: never fetched.
    let own = "6.9.9-1-amd64";
    std::fs::write(
        node.path("entries/own.conf"),
        format!("linux /vmlinuz-{own}\n"),
    )
    .unwrap();
    std::fs::create_dir_all(node.path(&format!("modules/{own}"))).unwrap();
    std::fs::write(node.path(&format!("modules/{own}/vmlinuz")), "").unwrap();
    node.loader_status(SetState::NotStored);
    let prepare = |kernel: &str| {
        let out = node
            .command(30)
            .args(["--kernel-release", kernel])
            .output()
            .unwrap();
        common::Run::from(out).expect(0).says("committed");
    };
    prepare(K);
    prepare(K2);
    assert_eq!(node.ref_record(K).unwrap().manifest_digest, d1);
    assert_eq!(node.ref_record(K2).unwrap().manifest_digest, d2);
    assert!(node.ref_files(own).is_empty());
    assert_eq!(node.names("trees").len(), 2);
    assert!(!node.rebooted());
    // Both at once, and --check-stored for both.
    let out = node
        .command(30)
        .args([
            "--kernel-release",
            K,
            "--kernel-release",
            K2,
            "--check-stored",
        ])
        .output()
        .unwrap();
    common::Run::from(out).expect(0);
    let out = node
        .command(30)
        .args(["--kernel-release", own, "--check-stored"])
        .output()
        .unwrap();
    common::Run::from(out).expect(1).says("not stored");
}

#[test]
fn unreadable_node_facts_fail_safe() {
    // No command line: kmod_day1.disable cannot be ruled out, so nothing at all.
    let reg = Registry::start().unwrap();
    let (node, _) = setup(&reg);
    node.loader_status(SetState::NotStored);
    std::fs::remove_file(node.path("cmdline")).unwrap();
    node.run(10)
        .expect(2)
        .says("cannot read the kernel command line from")
        .says("doing nothing this boot (no pull, no reboot)");
    node.assert_store_empty();
    assert!(!node.rebooted());

    // No boot id: the pull goes on, but the loader's status cannot be matched: no reboot.
    std::fs::write(node.path("cmdline"), "root=/dev/vda\n").unwrap();
    std::fs::remove_file(node.path("boot_id")).unwrap();
    node.run(10)
        .expect(0)
        .says("cannot read the boot id from")
        .says("reboot: skippedAfterFailure");
    assert!(node.ref_record(K).is_some());
    assert!(!node.rebooted());
}

#[test]
fn the_stop_step_fetches_a_staged_deployments_kernel_and_never_reboots() {
    let reg = Registry::start().unwrap();
    let (node, _) = setup(&reg);
    node.run(30).expect(0).says("committed");
    let d2 = reg.push_image(REPO, K2, &kmod_image(K2, "next"));
    // An OS update staged like MCO's: the deployment's tree exists, its boot entry does not.
    let vmlinuz = node.path(&format!(
        "ostree-deploy/rhcos/deploy/0123abcd.1/usr/lib/modules/{K2}/vmlinuz"
    ));
    std::fs::create_dir_all(vmlinuz.parent().unwrap()).unwrap();
    std::fs::write(&vmlinuz, "").unwrap();
    node.loader_status(SetState::NotStored);

    // Stopped by hand (systemd cannot be asked here): nothing.
    let out = node.command(30).arg("--at-shutdown").output().unwrap();
    common::Run::from(out).expect(0).says("nothing to do");
    assert!(node.ref_record(K2).is_none());

    // At shutdown: the staged kernel's image, the running kernel's not asked again, no reboot.
    reg.clear_requests();
    let out = node
        .command(30)
        .args(["--at-shutdown", "--assume-shutdown"])
        .output()
        .unwrap();
    common::Run::from(out)
        .expect(0)
        .says(&format!("a staged deployment boots kernel {K2} next"))
        .says("committed");
    assert_eq!(node.ref_record(K2).unwrap().manifest_digest, d2);
    assert_eq!(reg.count("GET", &format!("/manifests/{K}")), 0);
    assert!(!node.rebooted());
    assert!(node.ref_record(K).is_some());

    // Again: nothing missing, nothing asked of the registry.
    reg.clear_requests();
    let out = node
        .command(30)
        .args(["--at-shutdown", "--assume-shutdown"])
        .output()
        .unwrap();
    common::Run::from(out).expect(0).says("unchanged");
    assert_eq!(reg.requests().len(), 0);
    // The boot-time pull keeps the staged kernel's ref (garbage collection knows it).
    node.run(30).expect(0);
    assert!(node.ref_record(K2).is_some());
}

#[test]
fn a_prestaged_image_coexists_with_the_running_one_until_its_config_lands() {
    let reg = Registry::start().unwrap();
    let (node, d1) = setup(&reg);
    node.run(30).expect(0).says("committed");
    // The prestage agent records the config to come: the same config, image v2.
    let d2 = reg.push_image(REPO, "v2", &kmod_image(K, "oot-2"));
    let v2 = format!(
        r#"{{"version": 1, "moduleSets": [{{"name": "e1000", "image": "{}/{REPO}:v2", "modules": [{{"name": "e1000"}}], "pullSecret": "{}"}}]}}"#,
        reg.host(),
        node.path("auth.json").display()
    );
    std::fs::create_dir_all(node.store().join("prestaged")).unwrap();
    std::fs::write(node.store().join("prestaged/99-kmod.json"), &v2).unwrap();
    let check = || node.command(30).arg("--check-stored").output().unwrap();
    common::Run::from(check())
        .expect(1)
        .says("not stored: 99-kmod/e1000");
    node.loader_status(SetState::Loaded);
    node.command(30).arg("--no-reboot").output().unwrap();
    common::Run::from(check()).expect(0);
    // Both images are stored side by side; the running one is untouched.
    let digests: Vec<String> = node
        .ref_files(K)
        .iter()
        .map(|p| {
            kmod_day1_contract::read_json::<kmod_day1_contract::RefRecord>(p)
                .unwrap()
                .unwrap()
                .manifest_digest
        })
        .collect();
    assert_eq!(digests.len(), 2, "{digests:?}");
    assert!(digests.contains(&d1) && digests.contains(&d2));
    // An unrelated reboot before the MachineConfig: the node's pull keeps both.
    node.run(30).expect(0);
    assert_eq!(node.ref_files(K).len(), 2);
    assert!(!node.rebooted());
    // The MachineConfig lands: v1 goes, the prestaged record too.
    std::fs::write(node.path("config.d/99-kmod.json"), &v2).unwrap();
    node.run(30).expect(0).says("landed");
    assert_eq!(node.ref_files(K).len(), 1);
    assert_eq!(node.ref_record(K).unwrap().manifest_digest, d2);
    assert!(!node.store().join("prestaged/99-kmod.json").exists());
}

#[test]
fn a_version_1_store_is_upgraded_without_a_download() {
    let reg = Registry::start().unwrap();
    let (node, digest) = setup(&reg);
    node.run(30).expect(0).says("committed");
    // Put the ref back where a version 1 store kept it.
    let v2 = node.ref_files(K).pop().unwrap();
    let mut rec: kmod_day1_contract::RefRecord =
        kmod_day1_contract::read_json(&v2).unwrap().unwrap();
    rec.version = 1;
    let legacy = node.store().join(format!("refs/99-kmod/e1000/{K}.json"));
    kmod_day1_contract::write_json_atomic(&legacy, &rec).unwrap();
    std::fs::remove_dir_all(v2.parent().unwrap()).unwrap();
    reg.clear_requests();
    node.run(30)
        .expect(0)
        .says("upgraded the store's refs")
        .says("unchanged");
    assert_eq!(reg.blob_gets(), 0);
    assert!(!legacy.exists());
    assert_eq!(
        node.ref_record(K).unwrap().version,
        kmod_day1_contract::STORE_VERSION
    );
    assert_committed(&node, &digest, "oot-1");
}

#[test]
fn config_errors_exit_2() {
    let node = Node::new();
    std::fs::write(node.path("config.d/bad.json"), "{").unwrap();
    node.run(5).expect(2);
    std::fs::remove_file(node.path("config.d/bad.json")).unwrap();
    node.config("127.0.0.1:9/x", "");
    node.registries_conf("[registries.search]\nregistries = []\n");
    node.run(5).expect(2).says("version 1");
    node.assert_store_empty();
}

#[test]
fn http_proxy_and_no_proxy_from_the_environment() {
    // The test registry answers absolute-form requests, so it can play the proxy for a
    // registry name that does not resolve.
    let proxy = Registry::start().unwrap();
    let digest = proxy.push_image(REPO, K, &kmod_image(K, "via-proxy"));
    let node = Node::new();
    node.insecure(&["kmod-registry.invalid:5000"]);
    node.config(&format!("kmod-registry.invalid:5000/{REPO}"), "");
    let out = node
        .command(20)
        .env("HTTP_PROXY", format!("http://{}", proxy.host()))
        .env("NO_PROXY", "localhost,127.0.0.1")
        .output()
        .unwrap();
    common::Run::from(out).expect(0).says("committed");
    assert_committed(&node, &digest, "via-proxy");
    assert!(proxy.requests().iter().all(|r| r.proxied));

    // NO_PROXY covers the registry: it is reached directly, the proxy sees nothing.
    let reg = Registry::start().unwrap();
    let (node, digest) = setup(&reg);
    proxy.clear_requests();
    let out = node
        .command(20)
        .env("HTTP_PROXY", format!("http://{}", proxy.host()))
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .unwrap();
    common::Run::from(out).expect(0).says("committed");
    assert_committed(&node, &digest, "oot-1");
    assert!(proxy.requests().is_empty());
}

#[test]
fn a_plain_http_registry_not_marked_insecure_says_so() {
    let reg = Registry::start().unwrap();
    let (node, _) = setup(&reg);
    node.registries_conf("");
    let t = Instant::now();
    // Not retried: the budget is not spent on a mistake that cannot heal.
    node.run(30).expect(1).says("insecure = true");
    assert!(t.elapsed() < Duration::from_secs(10));
    node.assert_store_empty();
}

#[test]
fn a_node_without_a_ca_bundle_still_pulls_from_a_plain_http_registry() {
    let no_bundle = |node: &Node| {
        let out = node
            .command(10)
            .env("SSL_CERT_FILE", "/nonexistent")
            .env("SSL_CERT_DIR", "/nonexistent")
            .output()
            .unwrap();
        common::Run::from(out)
    };
    let reg = Registry::start().unwrap();
    let (node, digest) = setup(&reg);
    no_bundle(&node).expect(0).says("committed");
    assert_committed(&node, &digest, "oot-1");
    // The token flow needs TLS roots: a clean error, no panic.
    let reg = Registry::start_with_auth(Auth::bearer("puller", "s3cret")).unwrap();
    let (node, _) = setup(&reg);
    node.pull_secret(&reg.host(), "puller", "s3cret");
    no_bundle(&node).expect(1).says("ca-certificates");
    node.assert_store_empty();
}

#[test]
fn a_reboot_that_cannot_be_asked_for_is_not_recorded() {
    let reg = Registry::start().unwrap();
    let (node, _) = setup(&reg);
    node.loader_status(SetState::NotStored);
    let out = node.command_dbus(20).output().unwrap();
    common::Run::from(out)
        .expect(1)
        .says("reboot: requested")
        .says("asking for a reboot failed");
    let guard: kmod_day1_contract::RebootGuard =
        kmod_day1_contract::read_json(&node.store().join("reboots.json"))
            .unwrap()
            .unwrap();
    assert!(guard.reboots.is_empty(), "{guard:?}");
    assert_eq!(node.last_pull().reboot, "failed");
}

/// The loader binary of this workspace (built here if need be): the upgrade preflight is its
/// dry run.
fn loader_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "-q", "-p", "kmod-day1-load"])
        .status()
        .unwrap();
    assert!(status.success(), "building kmod-day1-load");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/kmod-day1-load")
}

#[test]
fn the_upgrade_preflight_is_the_loaders_dry_run_for_the_staged_kernel() {
    let reg = Registry::start().unwrap();
    let (node, _) = setup(&reg);
    node.run(30).expect(0).says("committed");
    // A staged OS update to K2, whose image holds no loadable module (a text file named
    // e1000.ko): the loader's dry run refuses it, and the pull says so before the reboot.
    reg.push_image(REPO, K2, &kmod_image(K2, "not a module"));
    let deployment = node.path("ostree-deploy/rhcos/deploy/0123abcd.1");
    let modules = deployment.join(format!("usr/lib/modules/{K2}"));
    std::fs::create_dir_all(&modules).unwrap();
    std::fs::write(modules.join("vmlinuz"), "").unwrap();
    std::fs::write(modules.join("modules.dep"), "").unwrap();
    let loader = loader_binary();
    let out = node
        .command(30)
        .args(["--at-shutdown", "--assume-shutdown", "--loader"])
        .arg(&loader)
        .output()
        .unwrap();
    common::Run::from(out).expect(0).says(&format!(
        "upgrade preflight: the node will boot {K2} (a staged OS update) on the in-tree driver for 99-kmod/e1000: preflight:"
    ));
    let record: UpgradePreflight = serde_json::from_str(
        &std::fs::read_to_string(node.store().join(format!("preflight/{K2}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(record.kernel_release, K2);
    assert_eq!(record.root, deployment.display().to_string());
    assert_eq!(record.error, None);
    assert_eq!(record.sets.len(), 1);
    assert_eq!(record.sets[0].state, "failed");

    // Staged to a kernel the registry has no image for: the line names the image.
    let k3 = "6.1.0-29-amd64";
    let modules = node.path(&format!(
        "ostree-deploy/rhcos/deploy/4567ef.2/usr/lib/modules/{k3}"
    ));
    std::fs::create_dir_all(&modules).unwrap();
    std::fs::write(modules.join("vmlinuz"), "").unwrap();
    let out = node
        .command(30)
        .args(["--at-shutdown", "--assume-shutdown", "--loader"])
        .arg(&loader)
        .output()
        .unwrap();
    common::Run::from(out).says(&format!(
        "the node will boot {k3} (a staged OS update) on the in-tree driver for 99-kmod/e1000: no image for it is stored from {}/{REPO}:{k3}",
        reg.host()
    ));

    // A loader that cannot run: recorded as such, the pull goes on.
    let out = node
        .command(30)
        .args([
            "--at-shutdown",
            "--assume-shutdown",
            "--loader",
            "/nonexistent/kmod-day1-load",
        ])
        .output()
        .unwrap();
    common::Run::from(out).says("cannot run it");
    let record: UpgradePreflight = serde_json::from_str(
        &std::fs::read_to_string(node.store().join(format!("preflight/{k3}.json"))).unwrap(),
    )
    .unwrap();
    assert!(record.error.unwrap().contains("cannot run it"));
}

#[test]
fn a_throttled_registry_is_waited_for_also_while_authenticating() {
    // The token flow opens connections of its own (the challenge asked again at /v2/, the
    // token service): a 429 there, as a registry in front of a boot storm answers, is
    // waited for, never taken for refused credentials or for a registry wanting basic auth.
    let reg = Registry::start_with_auth(Auth::bearer("puller", "s3cret")).unwrap();
    let (node, digest) = setup(&reg);
    node.pull_secret(&reg.host(), "puller", "s3cret");
    // The second request under /v2/ is the token flow's own /v2/.
    let ping = reg.fault(Fault::status(429).on("/v2/").after(1).times(1));
    node.run(30).expect(0).says("committed");
    assert_eq!(reg.fault_fired(ping), 1);
    assert_committed(&node, &digest, "oot-1");
    let (node, digest) = setup(&reg);
    node.pull_secret(&reg.host(), "puller", "s3cret");
    let token = reg.fault(Fault::status(429).on("/token").times(2));
    node.run(30).expect(0).says("committed");
    assert_eq!(reg.fault_fired(token), 2);
    assert_committed(&node, &digest, "oot-1");
}
