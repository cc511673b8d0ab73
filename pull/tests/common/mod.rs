// SPDX-License-Identifier: Apache-2.0
//! A fake node on temp dirs for running the built kmod-day1-pull.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kmod_day1_contract::{
    read_json, BootStatus, PullStatus, RefRecord, SetState, SetStatus, STATUS_VERSION,
};

pub const K: &str = "6.1.0-27-amd64";
pub const K2: &str = "6.1.0-28-amd64";

pub struct Node {
    pub dir: tempfile::TempDir,
}

impl Node {
    pub fn new() -> Self {
        let n = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        for d in [
            "config.d",
            "store",
            "entries",
            "certs.d",
            "ostree-deploy",
            "modules",
        ] {
            std::fs::create_dir_all(n.path(d)).unwrap();
        }
        std::fs::write(n.path("boot_id"), "b1\n").unwrap();
        // The running kernel (--kernel-release names the kernels of a prepared store).
        std::fs::write(n.path("osrelease"), format!("{K}\n")).unwrap();
        std::fs::write(n.path("cmdline"), "root=/dev/vda quiet\n").unwrap();
        // RHCOS's default policy.json; tests of the trust policy write their own.
        n.policy(r#"{"default": [{"type": "insecureAcceptAnything"}]}"#);
        std::fs::create_dir_all(n.path("registries.d")).unwrap();
        n
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn store(&self) -> PathBuf {
        self.path("store")
    }

    /// One config `99-kmod` with one set `e1000` for `image`, plus extra set keys.
    pub fn config(&self, image: &str, extra: &str) {
        let text = format!(
            r#"{{"version": 1, "moduleSets": [{{"name": "e1000", "image": "{image}", "modules": [{{"name": "e1000"}}], "pullSecret": "{}"{extra}}}]}}"#,
            self.path("auth.json").display()
        );
        std::fs::write(self.path("config.d/99-kmod.json"), text).unwrap();
    }

    /// Writes the node's policy.json.
    pub fn policy(&self, text: &str) {
        std::fs::write(self.path("policy.json"), text).unwrap();
    }

    pub fn registries_conf(&self, text: &str) {
        std::fs::write(self.path("registries.conf"), text).unwrap();
    }

    /// Marks `host` as plain HTTP.
    pub fn insecure(&self, hosts: &[&str]) {
        let mut s = String::new();
        for h in hosts {
            s.push_str(&format!(
                "[[registry]]\nprefix = \"{h}\"\ninsecure = true\n\n"
            ));
        }
        self.registries_conf(&s);
    }

    pub fn pull_secret(&self, host: &str, user: &str, pass: &str) {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        std::fs::write(
            self.path("auth.json"),
            format!(r#"{{"auths": {{"{host}": {{"auth": "{auth}"}}}}}}"#),
        )
        .unwrap();
    }

    /// The loader's status for boot `b1`: the set in `state`.
    pub fn loader_status(&self, state: SetState) {
        let s = BootStatus {
            version: STATUS_VERSION,
            kernel_release: K.into(),
            boot_id: "b1".into(),
            sets: vec![SetStatus::new("99-kmod", "e1000", state)],
            errors: vec![],
            total_us: 0,
            preflight: None,
        };
        std::fs::write(self.path("status.json"), serde_json::to_string(&s).unwrap()).unwrap();
    }

    pub fn command(&self, budget: u64) -> Command {
        let mut c = self.command_dbus(budget);
        c.arg("--reboot-marker").arg(self.path("rebooted"));
        c
    }

    /// Without the reboot marker: a reboot goes to D-Bus, here a system bus address where
    /// nothing listens (never the host's real bus).
    pub fn command_dbus(&self, budget: u64) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kmod-day1-pull"));
        c.env(
            "DBUS_SYSTEM_BUS_ADDRESS",
            format!("unix:path={}", self.path("no-bus").display()),
        );
        c.arg("--config-dir")
            .arg(self.path("config.d"))
            .arg("--store")
            .arg(self.store())
            .arg("--status")
            .arg(self.path("status.json"))
            .arg("--osrelease")
            .arg(self.path("osrelease"))
            .arg("--boot-entries")
            .arg(self.path("entries"))
            .arg("--ostree-deploy-dir")
            .arg(self.path("ostree-deploy"))
            .arg("--modules-dir")
            .arg(self.path("modules"))
            .arg("--registries-conf")
            .arg(self.path("registries.conf"))
            .arg("--certs-dir")
            .arg(self.path("certs.d"))
            .arg("--policy")
            .arg(self.path("policy.json"))
            .arg("--registries.d")
            .arg(self.path("registries.d"))
            .arg("--boot-id")
            .arg(self.path("boot_id"))
            .arg("--cmdline")
            .arg(self.path("cmdline"))
            .arg("--budget")
            .arg(budget.to_string())
            .arg("--request-timeout")
            .arg("3")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env("KMOD_DAY1_LOG", "info");
        c
    }

    pub fn run(&self, budget: u64) -> Run {
        let out = self.command(budget).output().unwrap();
        Run::from(out)
    }

    /// The ref of set `99-kmod/e1000` for `kernel` (the latest committed when the store
    /// holds several images).
    pub fn ref_record(&self, kernel: &str) -> Option<RefRecord> {
        self.ref_files(kernel)
            .iter()
            .map(|p| read_json::<RefRecord>(p).unwrap().unwrap())
            .max_by_key(|r| r.committed_at)
    }

    /// The ref files of set `99-kmod/e1000` for `kernel` (one per image).
    pub fn ref_files(&self, kernel: &str) -> Vec<PathBuf> {
        let dir = self.store().join(format!("refs/99-kmod/e1000/{kernel}"));
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn last_pull(&self) -> PullStatus {
        read_json(&self.store().join("last-pull.json"))
            .unwrap()
            .unwrap()
    }

    pub fn rebooted(&self) -> bool {
        self.path("rebooted").exists()
    }

    /// Names in a store directory.
    pub fn names(&self, rel: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.store().join(rel))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The store is exactly "nothing committed": no refs, no trees, no leftovers.
    pub fn assert_store_empty(&self) {
        assert!(
            self.names("trees").is_empty(),
            "trees: {:?}",
            self.names("trees")
        );
        assert!(
            self.names("refs").is_empty(),
            "refs: {:?}",
            self.names("refs")
        );
        assert!(self.names("tmp").is_empty(), "tmp: {:?}", self.names("tmp"));
    }
}

pub struct Run {
    pub code: i32,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn expect(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "exit code; stderr:\n{}", self.stderr);
        self
    }

    #[track_caller]
    pub fn says(&self, text: &str) -> &Self {
        assert!(
            self.stderr.contains(text),
            "expected {text:?} in stderr:\n{}",
            self.stderr
        );
        self
    }
}

/// Checks a tree against the files of the test image.
pub fn tree_file(store: &Path, tree: &str, rel: &str) -> Vec<u8> {
    std::fs::read(store.join("trees").join(tree).join(rel)).unwrap()
}
