// SPDX-License-Identifier: Apache-2.0
//! Crash consistency: kmod-day1-pull is killed (SIGKILL) at random instants during download,
//! extraction and commit. After each kill the store holds the old complete state or the new
//! complete state (every ref names a complete tree of the right content, every tree is
//! complete), and a rerun completes.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Node, K};
use kmod_day1_contract::{read_json, AbsPath, KernelRelease, PullStatus, RebootGuard, RefRecord};
use kmod_day1_pull::tree_id;
use kmod_day1_test_registry::{BuiltImage, Fault, Image, Layer, Registry};

const REPO: &str = "kmod/e1000";
const FILES: usize = 150;

fn image(generation: u8) -> (BuiltImage, BTreeMap<String, Vec<u8>>) {
    let mut expected = BTreeMap::new();
    let mut small = Layer::new();
    for i in 0..FILES {
        let data = format!("gen {generation} file {i}").into_bytes();
        small = small.file(format!("opt/lib/modules/{K}/extra/m{i}.ko"), data.clone());
        expected.insert(format!("modules/extra/m{i}.ko"), data);
    }
    let big = Layer::new().random(
        format!("opt/lib/modules/{K}/big.bin"),
        1 << 20,
        generation as u64,
    );
    let img = Image::new().layer(small).layer(big).build().unwrap();
    (img, expected)
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D) % n.max(1)
    }
}

/// Every ref names a complete tree of its image; every tree is complete.
fn assert_valid(node: &Node, images: &[(String, BTreeMap<String, Vec<u8>>)], when: &str) {
    let store = node.store();
    let ids: BTreeMap<String, &BTreeMap<String, Vec<u8>>> = images
        .iter()
        .map(|(d, files)| {
            (
                tree_id(
                    d,
                    &AbsPath::new("/opt").unwrap(),
                    &KernelRelease::new(K).unwrap(),
                    None,
                ),
                files,
            )
        })
        .collect();
    for tree in node.names("trees") {
        let files = ids
            .get(&tree)
            .unwrap_or_else(|| panic!("{when}: unknown tree {tree}"));
        for (rel, data) in files.iter() {
            let got = std::fs::read(store.join("trees").join(&tree).join(rel))
                .unwrap_or_else(|e| panic!("{when}: tree {tree} lacks {rel}: {e}"));
            assert_eq!(&got, data, "{when}: {tree}/{rel}");
        }
        let big =
            std::fs::metadata(store.join("trees").join(&tree).join("modules/big.bin")).unwrap();
        assert_eq!(big.len(), 1 << 20, "{when}: partial big.bin in {tree}");
    }
    let r: Option<RefRecord> = read_json(&store.join(format!("refs/99-kmod/e1000/{K}.json")))
        .unwrap_or_else(|e| panic!("{when}: ref unreadable: {e}"));
    if let Some(r) = r {
        assert!(
            node.names("trees").contains(&r.tree),
            "{when}: ref names missing tree {}",
            r.tree
        );
        assert!(
            images.iter().any(|(d, _)| *d == r.manifest_digest),
            "{when}: ref digest"
        );
    }
    let _: Option<PullStatus> =
        read_json(&store.join("last-pull.json")).unwrap_or_else(|e| panic!("{when}: {e}"));
    let _: Option<RebootGuard> =
        read_json(&store.join("reboots.json")).unwrap_or_else(|e| panic!("{when}: {e}"));
}

#[test]
fn killed_at_random_points_the_store_stays_valid() {
    let reg = Registry::start().unwrap();
    let (img1, files1) = image(1);
    let (img2, files2) = image(2);
    let images = vec![(img1.digest.clone(), files1), (img2.digest.clone(), files2)];
    // About 1 MiB/s on the big blob: the run spends ~1 s downloading, then extracts and commits.
    reg.fault(
        Fault::Slow {
            bytes_per_sec: 1 << 20,
        }
        .on(&img1.layers[1].digest),
    );
    reg.fault(
        Fault::Slow {
            bytes_per_sec: 1 << 20,
        }
        .on(&img2.layers[1].digest),
    );
    let node = Node::new();
    node.insecure(&[&reg.host()]);
    node.config(&format!("{}/{REPO}", reg.host()), "");

    // A full run, to know how long one takes.
    reg.push_image(REPO, K, &img1);
    let t = Instant::now();
    node.run(60).expect(0);
    let full = t.elapsed();
    assert_valid(&node, &images, "after a full run");

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    for i in 0..12 {
        // Alternate between a first pull into an empty store and an update of the tag.
        let (from, to) = if i % 2 == 0 {
            (None, &img1)
        } else {
            (Some(&img1), &img2)
        };
        std::fs::remove_dir_all(node.store()).unwrap();
        if let Some(old) = from {
            reg.push_image(REPO, K, old);
            node.run(60).expect(0);
        }
        reg.push_image(REPO, K, to);
        let at = Duration::from_millis(rng.below(full.as_millis() as u64 + 200));
        let mut child = node
            .command(60)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let when = format!("iteration {i} (seed {seed}), killed after {at:?}");
        assert_valid(&node, &images, &when);
        if from.is_some() {
            // The old state survives until the new one is complete.
            assert!(
                read_json::<RefRecord>(&node.store().join(format!("refs/99-kmod/e1000/{K}.json")))
                    .unwrap()
                    .is_some(),
                "{when}: ref lost"
            );
        }
        node.run(60).expect(0);
        assert_valid(&node, &images, &format!("{when}, then rerun"));
        assert_eq!(
            node.ref_record(K).unwrap().manifest_digest,
            to.digest,
            "{when}"
        );
        assert!(
            node.names("tmp").is_empty(),
            "{when}: tmp {:?}",
            node.names("tmp")
        );
        assert_eq!(
            node.names("trees").len(),
            1,
            "{when}: old tree not collected"
        );
    }
}
