// SPDX-License-Identifier: Apache-2.0
//! `make bench` part: a boot storm. N nodes (default 500) pull the same kmod image (default
//! 50 MB of real kernel modules, from Debian's kernel package) at once from one registry on
//! loopback that throttles as a registry in front of a fleet does: at most 64 connections
//! served at once (with a request in flight), `429 Too Many Requests` with a `Retry-After` beyond. Each node is a
//! separate process of the real (static) kmod-day1-pull with its own store, connections,
//! retry state, token (the registry's token flow, with the node's pull secret) and budget
//! (the default 600 s). Pass: every pull completes in its budget and
//! the registry sees at most twice the requests one pull alone makes. Beside it, skopeo at
//! the same N (`SKOPEO_NODES` for fewer: 500 fit in 24 GiB with room to spare).
//!
//! cargo run --release -p kmod-day1-pull --example boot_storm -- [NODES] [MB]
//!
//! Needs `make static` (the pull binary), skopeo, and a Debian kernel package: the one the
//! loader's parity test keeps in `$KMOD_DAY1_TEST_CACHE` (default `/var/cache/kmod-day1-tests`),
//! else one `apt-get download` fetches there.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kmod_day1_test_registry::{Auth, Compression, Image, Layer, Registry};

const K: &str = "6.1.0-27-amd64";
const REPO: &str = "storm/kmod";
const MAX_CONNECTIONS: usize = 64;
const USER: &str = "fleet";
const PASS: &str = "storm";

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("NODES and MB are numbers"))
        .collect();
    let nodes = args.first().copied().unwrap_or(500);
    let mb = args.get(1).copied().unwrap_or(50);
    let skopeo_nodes: usize = std::env::var("SKOPEO_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(nodes)
        .min(nodes);
    let bin = PathBuf::from("target/x86_64-unknown-linux-gnu/release/kmod-day1-pull");
    assert!(
        bin.exists(),
        "{} is missing: run make static first",
        bin.display()
    );

    let work =
        tempfile::tempdir_in(std::env::var_os("STORM_DIR").unwrap_or_else(|| "/var/tmp".into()))
            .unwrap();
    let registry = Registry::start_with_auth(Auth::Bearer {
        user: USER.into(),
        pass: PASS.into(),
    })
    .unwrap();
    let (image, raw) = module_image(work.path(), mb);
    registry.push_image(REPO, K, &image);
    let compressed: usize = image.layers.iter().map(|l| l.bytes.len()).sum();
    println!(
        "boot storm: {nodes} nodes, image {} MB of modules ({} MB gzip), registry on loopback serving {MAX_CONNECTIONS} connections at once (requests in flight), 429 + Retry-After beyond",
        raw / 1_000_000,
        compressed / 1_000_000
    );

    // One pull alone: the minimum number of requests, and how long a pull takes.
    let t = Instant::now();
    let solo = Node::new(work.path(), "solo", &registry);
    let status = solo.spawn(&bin).wait().unwrap();
    assert!(status.success(), "the solo pull failed");
    let solo_secs = t.elapsed().as_secs_f64();
    let min_requests = registry.requests().len();
    solo.remove();
    registry.clear_requests();
    println!("one pull alone: {solo_secs:.2} s, {min_requests} requests");

    // Each refused client is given a later slot; a slot turns over about as fast as a pull
    // completes when the machine's cores share MAX_CONNECTIONS of them.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let slot =
        Duration::from_secs_f64((solo_secs * MAX_CONNECTIONS as f64 / cores as f64).max(1.0));
    registry.throttle(MAX_CONNECTIONS, slot);
    let (times, failed) = storm(
        nodes,
        |i| Node::new(work.path(), &format!("n{i}"), &registry),
        &bin,
    );
    let requests = registry.requests();
    let too_many = requests.iter().filter(|r| r.status == 429).count();
    let per_pull = requests.len() as f64 / nodes as f64;
    let (median, p99) = (percentile(&times, 50), percentile(&times, 99));
    println!(
        "kmod-day1-pull: {} of {nodes} completed, {failed} failed; completion median {median:.1} s, p99 {p99:.1} s, max {:.1} s (budget 600 s); {per_pull:.2} requests per pull (one alone: {min_requests}; pass: <= {}), {too_many} answered 429",
        times.len(),
        times.iter().copied().fold(0.0, f64::max),
        2 * min_requests
    );
    let pass =
        failed == 0 && times.iter().all(|t| *t < 600.0) && per_pull <= 2.0 * min_requests as f64;
    println!("boot storm: {}", if pass { "PASS" } else { "FAIL" });

    // skopeo, the same registry and throttle, at the largest N that fits.
    registry.clear_requests();
    registry.throttle(MAX_CONNECTIONS, slot);
    let dest = work.path().join("skopeo");
    std::fs::create_dir_all(&dest).unwrap();
    let (sk_times, sk_failed) = storm(
        skopeo_nodes,
        |i| SkopeoNode {
            dir: dest.join(format!("s{i}")),
            host: registry.host(),
        },
        &bin,
    );
    let sk_requests = registry.requests();
    println!(
        "skopeo copy at {skopeo_nodes} nodes: {} completed, {sk_failed} failed (skopeo gives up on a 429 after a few tries); median {:.1} s, p99 {:.1} s; {:.2} requests per copy, {} answered 429",
        sk_times.len(),
        percentile(&sk_times, 50),
        percentile(&sk_times, 99),
        sk_requests.len() as f64 / skopeo_nodes.max(1) as f64,
        sk_requests.iter().filter(|r| r.status == 429).count()
    );
    if !pass {
        std::process::exit(1);
    }
}

/// Something that pulls once, as one node.
trait Puller {
    fn spawn(&self, bin: &Path) -> Child;
    /// The last lines it logged, for a failure.
    fn log(&self) -> String {
        String::new()
    }
    fn remove(&self);
}

/// Starts `n` pullers at once; their completion times (seconds from the start) and the
/// number that failed. A node's files are removed once it is done (disk).
fn storm<P: Puller>(n: usize, make: impl Fn(usize) -> P, bin: &Path) -> (Vec<f64>, usize) {
    let pullers: Vec<P> = (0..n).map(&make).collect();
    let start = Instant::now();
    let mut running: Vec<(usize, Child)> = pullers
        .iter()
        .enumerate()
        .map(|(i, p)| (i, p.spawn(bin)))
        .collect();
    let (mut times, mut failed) = (vec![], 0);
    while !running.is_empty() {
        running.retain_mut(|(i, child)| match child.try_wait() {
            Ok(Some(status)) => {
                if status.success() {
                    times.push(start.elapsed().as_secs_f64());
                } else {
                    if failed == 0 {
                        eprintln!("first failure ({status}):\n{}", pullers[*i].log());
                    }
                    failed += 1;
                }
                pullers[*i].remove();
                false
            }
            Ok(None) => true,
            Err(_) => {
                failed += 1;
                false
            }
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    times.sort_by(f64::total_cmp);
    (times, failed)
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() * p).div_ceil(100)).clamp(1, sorted.len()) - 1]
}

/// A node: its config, trust policy, registries.conf and store, in a directory of its own.
struct Node(PathBuf);

impl Node {
    fn new(work: &Path, name: &str, registry: &Registry) -> Self {
        let d = work.join(name);
        std::fs::create_dir_all(d.join("config.d")).unwrap();
        std::fs::write(
            d.join("config.d/storm.json"),
            format!(
                r#"{{"version":1,"moduleSets":[{{"name":"kmod","image":"{}/{REPO}","modules":[{{"name":"m0"}}],"pullSecret":"{}"}}]}}"#,
                registry.host(),
                d.join("auth.json").display()
            ),
        )
        .unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
        std::fs::write(
            d.join("auth.json"),
            format!(
                r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
                registry.host()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("registries.conf"),
            format!(
                "[[registry]]\nprefix = \"{}\"\ninsecure = true\n",
                registry.host()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        Self(d)
    }
}

impl Puller for Node {
    fn spawn(&self, bin: &Path) -> Child {
        let d = &self.0;
        Command::new(bin)
            .arg("--config-dir")
            .arg(d.join("config.d"))
            .arg("--store")
            .arg(d.join("store"))
            .arg("--registries-conf")
            .arg(d.join("registries.conf"))
            .arg("--policy")
            .arg(d.join("policy.json"))
            .arg("--registries.d")
            .arg(d.join("registries.d"))
            .arg("--kernel-release")
            .arg(K)
            .env("KMOD_DAY1_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("stderr.log")).unwrap())
            .spawn()
            .unwrap()
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.0.join("stderr.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// skopeo copying the image into an OCI layout of its own.
struct SkopeoNode {
    dir: PathBuf,
    host: String,
}

impl Puller for SkopeoNode {
    fn spawn(&self, _bin: &Path) -> Child {
        Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("--src-creds={USER}:{PASS}"))
            .arg(format!("docker://{}/{REPO}:{K}", self.host))
            .arg(format!("oci:{}:t", self.dir.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A kmod image of `mb` MB of real modules (the first .ko files of Debian's kernel package,
/// in its order), as KMM lays them out; and the modules' size.
fn module_image(work: &Path, mb: usize) -> (kmod_day1_test_registry::BuiltImage, usize) {
    let deb = kernel_package();
    let tree = work.join("deb");
    std::fs::create_dir_all(&tree).unwrap();
    let mut tar = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' --wildcards '*.ko'",
            deb.display(),
            tree.display()
        ))
        .spawn()
        .unwrap();
    assert!(tar.wait().unwrap().success(), "unpacking {}", deb.display());
    let mut files = vec![];
    collect_ko(&tree, &mut files);
    files.sort();
    let mut layer = Layer::new().compression(Compression::Gzip);
    let (mut total, mut dep) = (0, String::new());
    for (i, f) in files.iter().enumerate() {
        if total >= mb * 1_000_000 {
            break;
        }
        let bytes = std::fs::read(f).unwrap();
        total += bytes.len();
        layer = layer.file(format!("opt/lib/modules/{K}/extra/m{i}.ko"), bytes);
        dep.push_str(&format!("extra/m{i}.ko:\n"));
    }
    layer = layer.file(format!("opt/lib/modules/{K}/modules.dep"), dep.into_bytes());
    std::fs::remove_dir_all(&tree).unwrap();
    (Image::new().layer(layer).build().unwrap(), total)
}

fn collect_ko(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_ko(&p, out);
        } else if p.extension().is_some_and(|x| x == "ko") {
            out.push(p);
        }
    }
}

/// A Debian kernel package from the tests' cache, else downloaded into it.
fn kernel_package() -> PathBuf {
    let cache = PathBuf::from(
        std::env::var_os("KMOD_DAY1_TEST_CACHE")
            .unwrap_or_else(|| "/var/cache/kmod-day1-tests".into()),
    );
    std::fs::create_dir_all(&cache).unwrap();
    let find = || {
        std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.to_string_lossy().contains("linux-image-")
                    && p.extension().is_some_and(|x| x == "deb")
            })
    };
    if let Some(p) = find() {
        return p;
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg("apt-get download \"$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')\"")
        .current_dir(&cache)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "apt-get download of a kernel package failed"
    );
    find().expect("the downloaded kernel package")
}
