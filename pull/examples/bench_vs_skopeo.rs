// SPDX-License-Identifier: Apache-2.0
//! `make bench` part for kmod-day1-pull: median wall time and peak RSS of `kmod-day1-pull`
//! versus `skopeo copy docker://... oci:...` for the same kmod images (50 MB and 500 MB of
//! incompressible data by default, a base layer and a modules layer) from Debian's `docker-registry` on loopback, run
//! alternately, reported as ratios. Targets: wall <= 1.0x skopeo, peak RSS <= 0.5x skopeo.
//!
//! cargo run --release -p kmod-day1-pull --example bench_vs_skopeo -- [PULL_BINARY] [SIZES_MB...]
//!
//! PULL_BINARY defaults to the static release build (`make static`). Needs the Debian
//! packages docker-registry, skopeo and time.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kmod_day1_test_registry::{BuiltImage, Compression, Image, Layer};

const K: &str = "6.1.0-27-amd64";
const RUNS: usize = 3;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (bin, sizes) = match args.split_first() {
        Some((b, rest)) if !b.chars().all(|c| c.is_ascii_digit()) => {
            (PathBuf::from(b), rest.to_vec())
        }
        _ => (
            PathBuf::from("target/x86_64-unknown-linux-gnu/release/kmod-day1-pull"),
            args.clone(),
        ),
    };
    let sizes: Vec<u64> = if sizes.is_empty() {
        vec![50, 500]
    } else {
        sizes
            .iter()
            .map(|s| s.parse().expect("sizes in MB"))
            .collect()
    };
    for tool in [
        "/usr/bin/docker-registry",
        "/usr/bin/skopeo",
        "/usr/bin/time",
    ] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing (hack/install-deps vm installs it)"
        );
    }
    assert!(
        bin.exists(),
        "{} is missing: run make static first",
        bin.display()
    );
    let size = std::fs::metadata(&bin).unwrap().len();
    println!("kmod-day1-pull binary: {} ({size} bytes)", bin.display());

    let work = tempfile::tempdir().unwrap();
    let (mut registry, host) = start_registry(work.path());
    for mb in sizes {
        let img = image(mb);
        push(&img, &format!("{host}/bench/kmod:{K}"), work.path());
        let (mut pull, mut skopeo) = (vec![], vec![]);
        for run in 0..RUNS {
            pull.push(measure_pull(&bin, &host, work.path(), run));
            skopeo.push(measure_skopeo(&host, work.path(), run));
        }
        let (pw, pr) = medians(&pull);
        let (sw, sr) = medians(&skopeo);
        println!(
            "{mb} MB: kmod-day1-pull {pw:.2} s, {pr} KiB peak RSS; skopeo copy {sw:.2} s, {sr} KiB; wall ratio {:.2} (target <= 1.0), RSS ratio {:.2} (target <= 0.5)",
            pw / sw,
            pr as f64 / sr as f64
        );
    }
    let _ = registry.kill();
    let _ = registry.wait();
}

fn image(mb: u64) -> BuiltImage {
    // Like a real kmod image: a base layer (a fifth of the size, not extracted) under the
    // layer with the modules, in several files; random content does not compress.
    let base =
        Layer::new()
            .compression(Compression::Gzip)
            .random("usr/lib/base.bin", mb * 200_000, 99);
    let mut modules = Layer::new().compression(Compression::Gzip);
    let parts = 4u64;
    for i in 0..parts {
        modules = modules.random(
            format!("opt/lib/modules/{K}/extra/part{i}.ko"),
            mb * 800_000 / parts,
            i,
        );
    }
    Image::new().layer(base).layer(modules).build().unwrap()
}

fn start_registry(work: &Path) -> (std::process::Child, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{port}");
    let cfg = work.join("registry.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n",
            work.join("registry").display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if let Ok(mut s) = TcpStream::connect(&host) {
            let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
            let mut b = [0u8; 8];
            if s.read_exact(&mut b).is_ok() {
                break;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "docker-registry did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, host)
}

fn push(img: &BuiltImage, dest: &str, work: &Path) {
    let d = work.join("layout");
    let _ = std::fs::remove_dir_all(&d);
    let blobs = d.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |digest: &str, bytes: &[u8]| {
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes).unwrap()
    };
    put(&img.digest, &img.manifest);
    put(&img.config_digest, &img.config);
    for l in &img.layers {
        put(&l.digest, &l.bytes);
    }
    std::fs::write(d.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        d.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"t"}}}}]}}"#,
            img.media_type,
            img.digest,
            img.manifest.len()
        ),
    )
    .unwrap();
    let out = Command::new("/usr/bin/skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--preserve-digests",
        ])
        .arg(format!("oci:{}:t", d.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// Runs `cmd` under /usr/bin/time: (wall seconds, peak RSS KiB).
fn timed(cmd: &mut Command) -> (f64, u64) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    let mut it = last.split_whitespace();
    let wall = it.next().and_then(|s| s.parse().ok()).expect("time output");
    let rss = it.next().and_then(|s| s.parse().ok()).expect("time output");
    let cpu: Vec<&str> = it.collect();
    eprintln!(
        "  {:?}: {wall:.2} s wall, {rss} KiB, user+sys {}",
        cmd.get_program(),
        cpu.join("+")
    );
    (wall, rss)
}

fn measure_pull(bin: &Path, host: &str, work: &Path, run: usize) -> (f64, u64) {
    // BENCH_NODE_DIR puts the node (and its store) elsewhere, e.g. on tmpfs to see the
    // cost of the fsyncs.
    let base = std::env::var_os("BENCH_NODE_DIR").map_or_else(|| work.to_owned(), PathBuf::from);
    let node = base.join(format!("node{run}"));
    let _ = std::fs::remove_dir_all(&node);
    std::fs::create_dir_all(node.join("config.d")).unwrap();
    std::fs::write(
        node.join("config.d/bench.json"),
        format!(r#"{{"version":1,"moduleSets":[{{"name":"kmod","image":"{host}/bench/kmod","modules":[{{"name":"part0"}}],"pullSecret":"/nonexistent"}}]}}"#),
    )
    .unwrap();
    std::fs::write(
        node.join("registries.conf"),
        format!("[[registry]]\nprefix = \"{host}\"\ninsecure = true\n"),
    )
    .unwrap();
    let r = timed(
        Command::new("/usr/bin/time")
            .args(["-f", "%e %M %U %S"])
            .arg(bin)
            .arg("--config-dir")
            .arg(node.join("config.d"))
            .arg("--store")
            .arg(node.join("store"))
            .arg("--registries-conf")
            .arg(node.join("registries.conf"))
            .arg("--boot-entries")
            .arg(node.join("none"))
            .arg("--kernel-release")
            .arg(K)
            .arg("--no-reboot"),
    );
    std::fs::remove_dir_all(&node).unwrap();
    r
}

fn measure_skopeo(host: &str, work: &Path, run: usize) -> (f64, u64) {
    let dir = work.join(format!("oci{run}"));
    let _ = std::fs::remove_dir_all(&dir);
    let r = timed(
        Command::new("/usr/bin/time")
            .args([
                "-f",
                "%e %M %U %S",
                "/usr/bin/skopeo",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
            ])
            .arg(format!("docker://{host}/bench/kmod:{K}"))
            .arg(format!("oci:{}:t", dir.display())),
    );
    std::fs::remove_dir_all(&dir).unwrap();
    r
}

fn medians(v: &[(f64, u64)]) -> (f64, u64) {
    let mut w: Vec<f64> = v.iter().map(|x| x.0).collect();
    let mut r: Vec<u64> = v.iter().map(|x| x.1).collect();
    w.sort_by(f64::total_cmp);
    r.sort();
    (w[w.len() / 2], r[r.len() / 2])
}
