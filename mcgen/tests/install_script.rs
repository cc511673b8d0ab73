// SPDX-License-Identifier: Apache-2.0
//! The install script of the image delivery (`mcgen/src/install/kmod-day1-install.sh`), run
//! with a stand-in podman on temporary directories: what it installs, its record, when it
//! skips, and what a failure leaves (nothing, and one journal line). Run by the system's `sh`
//! (dash on Debian, bash on RHCOS) and, when installed, by busybox's (the prestage agent's).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DIGEST: &str = "sha256:4e1f5cbd3cf2a8b2f3bd0f9a6c7e2d1b0a9f8e7d6c5b4a3928170615f4e3d2c1";

/// A node with an image mount, a podman stand-in that logs its arguments, and empty
/// /usr/local/bin and store.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new(load: &str, pull: &str) -> Self {
        let node = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        let image = node.path("image/usr/bin");
        std::fs::create_dir_all(&image).unwrap();
        std::fs::write(image.join("kmod-day1-load"), load).unwrap();
        std::fs::write(image.join("kmod-day1-pull"), pull).unwrap();
        std::fs::create_dir_all(node.path("path")).unwrap();
        let podman = node.path("path/podman");
        std::fs::write(
            &podman,
            format!(
                "#!/bin/sh\necho \"$*\" >>{log}\ncase \" $* \" in\n*\" pull \"*) [ ! -e {fail} ] || {{ echo 'Error: manifest unknown' >&2; exit 125; }} ;;\n*\" image mount \"*) echo {image} ;;\nesac\n",
                log = node.path("podman.log").display(),
                fail = node.path("podman-fails").display(),
                image = node.path("image").display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&podman, std::fs::Permissions::from_mode(0o755)).unwrap();
        node
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn install(&self, shell: &[&str], image: &str, env: &[(&str, &Path)]) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/install/kmod-day1-install.sh");
        let mut cmd = Command::new(shell[0]);
        cmd.args(&shell[1..])
            .arg(script)
            .arg(image)
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", self.path("path").display()),
            )
            .env("KMOD_DAY1_BIN_DIR", self.path("usr-local-bin"))
            .env("KMOD_DAY1_STORE", self.path("store"))
            .env("KMOD_DAY1_AUTHFILE", self.path("kubelet-config.json"))
            .env(
                "KMOD_DAY1_INSTALLED_MARKER",
                self.path("run/node-binaries-installed"),
            )
            .env("KMOD_DAY1_RETRY_DELAY", "0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("running the install script")
    }

    fn podman_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("podman.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn shells() -> Vec<Vec<&'static str>> {
    let mut shells = vec![vec!["sh"]];
    if Path::new("/bin/busybox").exists() {
        shells.push(vec!["/bin/busybox", "sh"]);
    }
    shells
}

fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

#[test]
fn installs_once_then_skips_then_repairs() {
    for shell in shells() {
        let node = Node::new("load v1\n", "pull v1\n");
        std::fs::write(node.path("kubelet-config.json"), "{}").unwrap();
        let image = format!("quay.io/kmod-day1/node@{DIGEST}");
        let out = node.install(&shell, &image, &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{shell:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&format!(
            "installed kmod-day1-load kmod-day1-pull of {DIGEST}"
        )));
        let bin = node.path("usr-local-bin");
        for (name, text) in [
            ("kmod-day1-load", "load v1\n"),
            ("kmod-day1-pull", "pull v1\n"),
        ] {
            let p = bin.join(name);
            assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o755
            );
        }
        // Nothing else in the directory: no temporary file left.
        assert_eq!(std::fs::read_dir(&bin).unwrap().count(), 2);
        let record = std::fs::read_to_string(node.path("store/node-binaries.json")).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&record).unwrap();
        assert_eq!(parsed["version"], 1);
        assert_eq!(parsed["imageDigest"], DIGEST);
        assert_eq!(
            parsed["files"]["kmod-day1-pull"],
            format!("sha256:{}", sha256(&bin.join("kmod-day1-pull")))
        );
        let store = node.path("store");
        let calls = node.podman_calls();
        let common = format!(
            "--root {}/podman-storage --runroot /run/kmod-day1/podman-run",
            store.display()
        );
        assert_eq!(
            calls[0],
            format!(
                "{common} pull --quiet --authfile {} {image}",
                node.path("kubelet-config.json").display()
            )
        );
        assert_eq!(calls[1], format!("{common} image mount {image}"));
        assert!(calls.contains(&format!("{common} image unmount {image}")));
        assert!(calls.contains(&format!("{common} rmi --all --force")));

        // Installed during this boot: the marker on /run says so (the pull's reboot).
        let marker = node.path("run/node-binaries-installed");
        assert!(marker.exists(), "{shell:?}: no {}", marker.display());
        std::fs::remove_file(&marker).unwrap();

        // Installed from that digest: nothing to do, podman not called, no marker.
        std::fs::remove_file(node.path("podman.log")).unwrap();
        let out = node.install(&shell, &image, &[]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("are installed"));
        assert!(node.podman_calls().is_empty());
        assert!(!marker.exists());

        // A binary that is not what the record says (changed, or a racing install of another
        // digest) is installed again.
        std::fs::write(bin.join("kmod-day1-load"), "something else\n").unwrap();
        let out = node.install(&shell, &image, &[]);
        assert!(out.status.success());
        assert_eq!(
            std::fs::read_to_string(bin.join("kmod-day1-load")).unwrap(),
            "load v1\n"
        );
        assert!(!node.podman_calls().is_empty());
    }
}

#[test]
fn a_new_digest_replaces_both_binaries() {
    let node = Node::new("load v1\n", "pull v1\n");
    let out = node.install(&["sh"], &format!("reg.local/n@{DIGEST}"), &[]);
    assert!(out.status.success());
    // No pull secret on this node: no --authfile.
    assert!(!node.podman_calls()[0].contains("--authfile"));
    std::fs::write(node.path("image/usr/bin/kmod-day1-load"), "load v2\n").unwrap();
    std::fs::write(node.path("image/usr/bin/kmod-day1-pull"), "pull v2\n").unwrap();
    let v2 = DIGEST.replace("4e1f", "9999");
    let out = node.install(&["sh"], &format!("reg.local/n@{v2}"), &[]);
    assert!(out.status.success());
    let bin = node.path("usr-local-bin");
    assert_eq!(
        std::fs::read_to_string(bin.join("kmod-day1-load")).unwrap(),
        "load v2\n"
    );
    assert_eq!(
        std::fs::read_to_string(bin.join("kmod-day1-pull")).unwrap(),
        "pull v2\n"
    );
    let record = std::fs::read_to_string(node.path("store/node-binaries.json")).unwrap();
    assert!(record.contains(&v2), "{record}");
}

#[test]
fn from_a_directory_without_podman() {
    // The prestage agent: the binaries are its image's own /usr/bin.
    for shell in shells() {
        let node = Node::new("load\n", "pull\n");
        let from = node.path("image/usr/bin");
        let out = node.install(
            &shell,
            &format!("reg.local/n@{DIGEST}"),
            &[("KMOD_DAY1_FROM", &from)],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(node.podman_calls().is_empty());
        assert_eq!(
            std::fs::read_to_string(node.path("usr-local-bin/kmod-day1-pull")).unwrap(),
            "pull\n"
        );
    }
}

#[test]
fn failures_are_one_journal_line_and_change_nothing() {
    let node = Node::new("load\n", "pull\n");
    let image = format!("reg.local/n@{DIGEST}");
    std::fs::write(node.path("podman-fails"), "").unwrap();
    let out = node.install(&["sh"], &image, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("kmod-day1-install"))
        .collect();
    // Tried 5 times (a route may come after network-online.target), one warning per retry,
    // then one error line.
    let mut want: Vec<String> = (1..5)
        .map(|t| {
            format!(
                "<4>kmod-day1-install: pulling {image} failed (try {t} of 5); trying again in 0 s"
            )
        })
        .collect();
    want.push(format!(
        "<3>kmod-day1-install: podman could not pull the node image {image} (5 tries); the node binaries are unchanged"
    ));
    assert_eq!(ours, want);
    assert_eq!(
        node.podman_calls()
            .iter()
            .filter(|c| c.contains(" pull "))
            .count(),
        5
    );
    assert!(!node.path("usr-local-bin").exists());
    assert!(!node.path("store/node-binaries.json").exists());
    assert!(!node.path("run/node-binaries-installed").exists());

    // An image without the binaries.
    std::fs::remove_file(node.path("podman-fails")).unwrap();
    std::fs::remove_file(node.path("image/usr/bin/kmod-day1-pull")).unwrap();
    let out = node.install(&["sh"], &image, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no /usr/bin/kmod-day1-pull"));
    assert!(!node.path("usr-local-bin/kmod-day1-load").exists());

    // A tag is not a digest.
    let out = node.install(&["sh"], "reg.local/n:latest", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not pinned by a sha256 digest"));
}

#[test]
fn the_prestage_agent_installs_and_records_the_configs_to_come() {
    let node = Node::new("load\n", "pull\n");
    // The ConfigMap's mount: the config to come and both scripts.
    let cm = node.path("prestage");
    std::fs::create_dir_all(&cm).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/install");
    for s in ["kmod-day1-install.sh", "kmod-day1-agent.sh"] {
        std::fs::copy(src.join(s), cm.join(s)).unwrap();
    }
    std::fs::write(cm.join("99-worker-kmod-e1000.json"), "{\"version\":1}\n").unwrap();
    let host = node.path("host");
    let agent = |shell: &[&str]| {
        Command::new(shell[0])
            .args(&shell[1..])
            .arg(cm.join("kmod-day1-agent.sh"))
            .args(["prestage", &format!("reg.local/n@{DIGEST}")])
            .env("KMOD_DAY1_HOST", &host)
            .env("KMOD_DAY1_FROM", node.path("image/usr/bin"))
            .output()
            .unwrap()
    };
    for shell in shells() {
        let out = agent(&shell);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{shell:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(host.join("usr/local/bin/kmod-day1-load")).unwrap(),
            "load\n"
        );
        assert!(host.join("var/lib/kmod-day1/node-binaries.json").exists());
        assert_eq!(
            std::fs::read_to_string(
                host.join("var/lib/kmod-day1/prestaged/99-worker-kmod-e1000.json")
            )
            .unwrap(),
            "{\"version\":1}\n"
        );
        // Once recorded, the same config is not written again.
        let again = agent(&shell);
        assert!(again.status.success());
        assert!(
            !String::from_utf8_lossy(&again.stdout).contains("prestaged 99-worker"),
            "{stdout}"
        );
        std::fs::remove_dir_all(&host).unwrap();
    }
}

#[test]
fn the_metrics_agent_waits_for_the_port_and_stops_on_term() {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/install/kmod-day1-agent.sh");
    for shell in shells() {
        // An empty host: the server cannot start (as the port held by another agent makes it
        // stop), so the agent says so and waits, until the pod stops it.
        let child = Command::new(shell[0])
            .args(&shell[1..])
            .arg(&script)
            .args(["metrics", "9750"])
            .env("KMOD_DAY1_HOST", dir.path())
            .env("KMOD_DAY1_POD_IP", "fd00::1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let kill = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{shell:?}: {stderr}");
        assert!(
            stderr.contains(
                "<4>kmod-day1-agent: the metrics server on [fd00::1]:9750 stopped (exit "
            ),
            "{shell:?}: {stderr}"
        );
        assert!(stderr.contains("trying again in a minute"), "{stderr}");
    }
}
