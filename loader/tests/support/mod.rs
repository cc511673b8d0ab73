// SPDX-License-Identifier: Apache-2.0
//! What the integration tests on Debian's real kernel package share: running tools, finding
//! them, installing what is missing, and the kernel package itself.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `cmd`, panics with its stderr unless it succeeds, returns its stdout.
pub fn output(cmd: &mut Command) -> Vec<u8> {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// Whether `tool` is on PATH or in an sbin directory.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!("command -v {tool} || test -x /usr/sbin/{tool} || test -x /sbin/{tool}"),
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// modprobe and depmod live in /usr/sbin, which a test environment may lack on PATH.
pub fn sbin(tool: &str) -> String {
    ["/usr/sbin", "/sbin", "/usr/bin"]
        .iter()
        .map(|d| format!("{d}/{tool}"))
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| tool.to_owned())
}

/// Installs the test dependencies (`hack/install-deps unit`) unless every one of `tools` is
/// there already.
pub fn install_deps(tools: &[&str]) {
    if tools.iter().all(|t| have(t)) {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/install-deps");
    output(Command::new(script).arg("unit"));
}

/// Debian's current bookworm kernel package, from the cache or downloaded into it.
pub fn kernel_package(cache: &Path) -> PathBuf {
    std::fs::create_dir_all(cache).unwrap();
    let cached = || -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(cache)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.starts_with("linux-image-") && n.ends_with("-amd64.deb")
                    || n.ends_with("_amd64.deb") && n.starts_with("linux-image-")
            })
            .collect();
        v.sort();
        v
    };
    let depends = || {
        let out = Command::new("apt-cache")
            .args(["depends", "linux-image-amd64"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
            .map(str::to_owned)
    };
    let pkg = depends().or_else(|| {
        // No package lists yet (a fresh machine): fetch them once.
        if cached().is_empty() {
            output(Command::new("apt-get").args(["update", "-q"]));
        }
        depends()
    });
    if let Some(pkg) = &pkg {
        let prefix = format!("{pkg}_");
        let hit = cached().into_iter().rev().find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&prefix)
        });
        if let Some(p) = hit {
            return p;
        }
        output(
            Command::new("apt-get")
                .args(["download", "-q", pkg])
                .current_dir(cache),
        );
    }
    cached()
        .pop()
        .expect("no linux-image package: apt-get download failed")
}
