// SPDX-License-Identifier: Apache-2.0
//! The built binary, run on temp dirs: flags, exit codes, log lines and the status file.
//! Only paths that never reach a module syscall are exercised (nothing is stored), so it
//! runs unprivileged on any host; the kernel paths are covered by the fake-kernel unit
//! tests and the VM tests.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_kmod-day1-load");

fn run(dir: &Path, extra: &[&str]) -> Output {
    let p = |s: &str| dir.join(s).to_str().unwrap().to_owned();
    let mut args = vec![
        "--config-dir".to_owned(),
        p("config.d"),
        "--store".into(),
        p("store"),
        "--status".into(),
        p("run/status.json"),
        "--cmdline".into(),
        p("cmdline"),
        "--kernel-release".into(),
        "6.1.0-27-amd64".into(),
        "--modules-root".into(),
        p("modules"),
        "--sysfs".into(),
        p("sys"),
        "--firmware-dir".into(),
        p("firmware"),
        "--kmsg".into(),
        p("kmsg"),
        "--boot-id-file".into(),
        p("boot_id"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new(BIN)
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap()
}

fn node() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("config.d")).unwrap();
    std::fs::write(d.path().join("cmdline"), "root=/dev/vda\n").unwrap();
    std::fs::write(d.path().join("boot_id"), "abc\n").unwrap();
    std::fs::write(
        d.path().join("config.d/99-ice.json"),
        r#"{"version":1,"moduleSets":[{"name":"ice","image":"quay.io/acme/ice-kmod","modules":[{"name":"ice"}],"inTreeModulesToRemove":["ice"]}]}"#,
    )
    .unwrap();
    d
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn nothing_stored_exits_0_and_writes_the_status() {
    let d = node();
    let o = run(d.path(), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(" INFO 99-ice/ice: not stored for kernel 6.1.0-27-amd64 (image quay.io/acme/ice-kmod:6.1.0-27-amd64)"),
        "{err}"
    );
    assert!(err.contains("1 not stored"), "{err}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("run/status.json")).unwrap())
            .unwrap();
    assert_eq!(s["kernelRelease"], "6.1.0-27-amd64");
    assert_eq!(s["bootId"], "abc");
    assert_eq!(s["sets"][0]["state"], "notStored");
    assert_eq!(s["sets"][0]["config"], "99-ice");
}

#[test]
fn escape_hatches_and_bad_input() {
    let d = node();
    std::fs::write(d.path().join("cmdline"), "kmod_day1.disable\n").unwrap();
    let o = run(d.path(), &[]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("kmod_day1.disable is on the kernel command line"));
    assert!(!d.path().join("run/status.json").exists());

    std::fs::write(d.path().join("cmdline"), "kmod_day1.skip=ice\n").unwrap();
    std::fs::write(d.path().join("config.d/10-bad.json"), "{\"version\": 9}").unwrap();
    let o = run(d.path(), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("ERROR config file") && err.contains("10-bad.json"),
        "{err}"
    );
    assert!(
        err.contains("99-ice/ice: skipped by kmod_day1.skip"),
        "{err}"
    );

    let o = run(d.path(), &["--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown argument \"--no-such-flag\""));

    let o = run(d.path(), &["--kernel-release", "../../etc"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("kernel release"), "{}", stderr(&o));
}

#[test]
fn unreadable_node_facts_are_one_line_each() {
    // No command line: one error line naming the file, nothing done, no status.
    let d = node();
    std::fs::remove_file(d.path().join("cmdline")).unwrap();
    let o = run(d.path(), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    let cmdline = d.path().join("cmdline");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "ERROR cannot read the kernel command line from {}: ",
            cmdline.display()
        )) && err.ends_with("; doing nothing this boot, as with kmod_day1.disable\n"),
        "{err}"
    );
    assert!(!d.path().join("run/status.json").exists());

    // No boot id: one warning line, an empty boot id, the run goes on.
    let d = node();
    std::fs::remove_file(d.path().join("boot_id")).unwrap();
    let o = run(d.path(), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    let warnings: Vec<_> = err.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("cannot read the boot id from")
            && warnings[0].contains("kmod-day1-pull will not reboot"),
        "{err}"
    );
    assert!(err.contains("1 not stored"), "{err}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("run/status.json")).unwrap())
            .unwrap();
    assert_eq!(s["bootId"], "");
}

#[test]
fn help_reads_like_a_manual() {
    let o = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8(o.stdout).unwrap();
    for section in [
        "USAGE",
        "DESCRIPTION",
        "OPTIONS",
        "EXIT STATUS",
        "KERNEL COMMAND LINE",
    ] {
        assert!(out.contains(section), "{section}");
    }
    let o = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8(o.stdout)
        .unwrap()
        .starts_with("kmod-day1-load "));
}
