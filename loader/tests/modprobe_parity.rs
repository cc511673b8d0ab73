// SPDX-License-Identifier: Apache-2.0
//! Parity with kmod's own `modprobe` on a real module tree. An integration test that needs
//! apt, dpkg-deb, depmod, modprobe and xz (`hack/install-deps unit` installs what is missing)
//! and the package archive: it downloads Debian's bookworm kernel package
//! (`apt-get download linux-image-<abi>-amd64`, kept in `$KMOD_DAY1_TEST_CACHE`, default
//! `/var/cache/kmod-day1-tests`, as an accelerator only), unpacks it, xz-compresses a seeded
//! part of its modules, runs `depmod -b`, writes synthetic modprobe.d files (options with
//! quotes, tabs and continuations, softdeps by name, pattern and alias, a blacklist, an
//! install line, the same file name in two directories, a directory reached twice through a
//! symlink), and compares, for a seeded random sample of modules plus every module the files
//! name:
//!
//! - the plan of `kmod-day1-load --dry-run --json` (one module set per module, the set's
//!   image tree being the unpacked module tree, the module also listed for removal so the
//!   plan holds what a rollback would load back from the node) with `modprobe
//!   --show-depends` (`-d`, `-S`, one `-C` per modprobe.d directory): the load order (each
//!   module where it first comes, built-in ones left out) and every module's final
//!   parameters, for the module as configured and as loaded back;
//! - the configuration the dry run read with `modprobe -c`.
//!
//! Both read the real `/proc/cmdline` (kmod always does; the loader is given it with
//! `--cmdline`). It prints the count compared and every difference, and fails on any.
//! Set `KMOD_DAY1_PARITY_SAMPLE` for a larger sample.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod support;
use support::{install_deps, kernel_package, output, sbin};

const BIN: &str = env!("CARGO_BIN_EXE_kmod-day1-load");
const SEED: u64 = 0x6b6d_6f64_6461_7931;
const IMAGE: &str = "registry.local/parity/tree:v1";
const TREE: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The modprobe.d directories, in kmod's order, under the test root.
const DIRS: &[&str] = &[
    "etc/modprobe.d",
    "run/modprobe.d",
    "usr/local/lib/modprobe.d",
    "usr/lib/modprobe.d",
    "lib/modprobe.d",
];

fn sh(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&output(cmd)).into_owned()
}

/// xorshift64*, seeded: the same sample every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The kernel's name of a module file.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap();
    let stem = base.split(".ko").next().unwrap();
    stem.replace('-', "_")
}

/// Splits an options string as the kernel does: at whitespace outside double quotes.
fn split_params(s: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        if c.is_ascii_whitespace() && !quoted {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if c == '"' {
            quoted = !quoted;
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// One module of a plan: its name and parameters.
type Step = (String, Vec<String>);

/// What modprobe would do for `name`: the load order (each module where it first comes),
/// or the module whose install command it would run.
#[derive(Debug, PartialEq)]
enum Outcome {
    Load(Vec<Step>),
    Install(String),
}

fn modprobe_args(root: &Path, kver: &str) -> Vec<String> {
    let mut a = vec![
        "-d".to_owned(),
        root.display().to_string(),
        "-S".into(),
        kver.into(),
    ];
    for d in DIRS {
        a.push("-C".into());
        a.push(root.join(d).display().to_string());
    }
    a
}

fn modprobe_show_depends(root: &Path, kver: &str, name: &str) -> Outcome {
    let out = sh(Command::new(sbin("modprobe"))
        .args(modprobe_args(root, kver))
        .args(["--show-depends", name]));
    let mut steps: Vec<Step> = vec![];
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("insmod ") {
            let (path, opts) = rest.split_once(' ').unwrap_or((rest, ""));
            let m = module_name(path);
            if !steps.iter().any(|(n, _)| *n == m) {
                steps.push((m, split_params(opts)));
            }
        } else if line.starts_with("install ") {
            // `install CMD OPTS`: which module it is for is not printed; the caller knows
            // the candidates from the synthetic files.
            return Outcome::Install(line.to_owned());
        }
    }
    Outcome::Load(steps)
}

/// The synthetic modprobe.d files; returns the module names they name.
fn write_modprobe_d(root: &Path) -> Vec<&'static str> {
    let w = |rel: &str, text: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    // /etc wins over /usr/lib for the same file name.
    w(
        "etc/modprobe.d/50-parity.conf",
        "# options of the node's owner\n\
         options e1000e InterruptThrottleRate=3000,3000 \t IntMode=1\n\
         options ice\tdebug=0x1 \\\n    fwlog_level=2\n\
         options vxlan udp_port=4790\n\
         options dummy numdummies=2\n\
         options igb max_vfs=\"7\"\n\
         softdep vxlan pre: crc32c dummy post: 8021q\n\
         softdep i40e pre: ixgbe\n\
         blacklist dummy\n\
         install bonding /bin/true\n\
         remove ixgbe /bin/true\n",
    );
    w(
        "usr/lib/modprobe.d/50-parity.conf",
        "options e1000e hidden_by_etc=1\nsoftdep xfs pre: dummy\n",
    );
    w(
        "run/modprobe.d/10-early.conf",
        "options e1000e early=1\noptions crc32c from_alias=1\nsoftdep btrfs pre: dm_crypt\n",
    );
    w(
        "usr/local/lib/modprobe.d/90-late.conf",
        "options e1000e late=2\nsoftdep snd_hda_codec_* post: snd_hda_intel\nsoftdep mlx5* pre: igb\n",
    );
    w(
        "usr/lib/modprobe.d/70-vendor.alias",
        "options ext4 from_alias_file=1\nsoftdep ext4 post: libcrc32c\n",
    );
    w("usr/lib/modprobe.d/README", "options ext4 not_a_conf=1\n");
    w("usr/lib/modprobe.d/.hidden.conf", "options ext4 hidden=1\n");
    w(
        "usr/lib/modprobe.d/80-bad.conf",
        "options\nbogus words\noptions xfs \"spaced value=1\"\n",
    );
    // /lib/modprobe.d is /usr/lib/modprobe.d, reached twice.
    std::os::unix::fs::symlink("../usr/lib/modprobe.d", root.join("lib/modprobe.d")).unwrap();
    vec![
        "e1000e",
        "ice",
        "vxlan",
        "dummy",
        "igb",
        "i40e",
        "ixgbe",
        "bonding",
        "xfs",
        "btrfs",
        "dm_crypt",
        "ext4",
        "libcrc32c",
        "snd_hda_intel",
        "8021q",
        "mlx5_core",
        "snd_hda_codec_realtek",
        "crc32c_generic",
        "crc32c_intel",
    ]
}

/// kmod-day1-load's store: one ref per set, the tree being the node's module directory.
fn write_store_and_config(dir: &Path, modules: &[String], kver: &str, tree_target: &Path) {
    let store = dir.join("store");
    std::fs::create_dir_all(store.join("trees").join(TREE)).unwrap();
    std::os::unix::fs::symlink(tree_target, store.join("trees").join(TREE).join("modules"))
        .unwrap();
    let mut sets = vec![];
    for (i, m) in modules.iter().enumerate() {
        let set = format!("m{i}");
        let ref_dir = store.join("refs/parity").join(&set);
        std::fs::create_dir_all(&ref_dir).unwrap();
        // A version 1 ref: every loader since the first reads it.
        std::fs::write(
            ref_dir.join(format!("{kver}.json")),
            serde_json::json!({"version": 1, "image": IMAGE, "manifestDigest": "sha256:00", "tree": TREE, "committedAt": 1}).to_string(),
        )
        .unwrap();
        // Also removed (as the in-tree module of that name): the plan then holds what a
        // rollback would load back, from the node.
        sets.push(serde_json::json!({"name": set, "image": IMAGE, "modules": [{"name": m}], "inTreeModulesToRemove": [m]}));
    }
    std::fs::create_dir_all(dir.join("config.d")).unwrap();
    std::fs::write(
        dir.join("config.d/parity.json"),
        serde_json::json!({"version": 1, "moduleSets": sets}).to_string(),
    )
    .unwrap();
}

#[test]
fn plans_match_kmods_modprobe_on_debians_module_tree() {
    let started = Instant::now();
    install_deps(&["modprobe", "depmod", "dpkg-deb", "xz", "apt-get"]);
    let cache = std::env::var_os("KMOD_DAY1_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/kmod-day1-tests".into());
    let deb = kernel_package(&cache);
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let mods_root = root.join("lib/modules");
    let kver = std::fs::read_dir(&mods_root)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with("-amd64"))
        .expect("a kernel in the package");
    let mdir = mods_root.join(&kver);
    let unpacked = started.elapsed();

    // Every module file, sorted; a seeded eighth of them xz-compressed.
    let mut files: Vec<PathBuf> = vec![];
    let mut stack = vec![mdir.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "ko") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut rng = Rng(SEED);
    let to_xz: Vec<&PathBuf> = files.iter().filter(|_| rng.next() % 8 == 0).collect();
    for chunk in to_xz.chunks(200) {
        sh(Command::new("xz")
            .args(["-1", "--check=crc32", "-T1"])
            .args(chunk.iter().map(|p| p.as_os_str())));
    }
    sh(Command::new(sbin("depmod")).arg("-b").arg(&root).arg(&kver));
    let named = write_modprobe_d(&root);
    let prepared = started.elapsed();

    // The sample: every module the files name, then a seeded random pick.
    let mut all: Vec<String> = files
        .iter()
        .map(|p| module_name(&p.display().to_string()))
        .collect();
    all.sort();
    all.dedup();
    let want: usize = std::env::var("KMOD_DAY1_PARITY_SAMPLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut sample: Vec<String> = vec![];
    for n in &named {
        assert!(all.iter().any(|a| a == n), "{n} is not in {kver}");
        sample.push((*n).to_owned());
    }
    // Modules the real command line gives options to (kmod reads it whatever -d says).
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    for w in cmdline.split_ascii_whitespace() {
        if let Some((m, _)) = w.split_once('.').filter(|(_, p)| p.contains('=')) {
            let m = m.replace('-', "_");
            if all.contains(&m) && !sample.contains(&m) {
                sample.push(m);
            }
        }
    }
    let mut picked = BTreeSet::new();
    while picked.len() < want.min(all.len()) {
        picked.insert((rng.next() % all.len() as u64) as usize);
    }
    for i in picked {
        if !sample.contains(&all[i]) {
            sample.push(all[i].clone());
        }
    }

    // kmod-day1-load's plan, all sets in one dry run.
    write_store_and_config(work.path(), &sample, &kver, &mdir);
    let p = |s: &str| work.path().join(s).display().to_string();
    std::fs::create_dir_all(work.path().join("sys")).unwrap();
    let mut args = vec![
        "--dry-run".to_owned(),
        "--json".into(),
        "--config-dir".into(),
        p("config.d"),
        "--store".into(),
        p("store"),
        "--kernel-release".into(),
        kver.clone(),
        "--modules-root".into(),
        mods_root.display().to_string(),
        "--cmdline".into(),
        "/proc/cmdline".into(),
        "--sysfs".into(),
        p("sys"),
        "--status".into(),
        p("status.json"),
        "--kmsg".into(),
        "/dev/null".into(),
        "--firmware-dir".into(),
        p("firmware"),
    ];
    for d in DIRS {
        args.push("--modprobe-dir".into());
        args.push(root.join(d).display().to_string());
    }
    let t = Instant::now();
    let o = Command::new(BIN).args(&args).output().unwrap();
    let dry_run_time = t.elapsed();
    let stderr = String::from_utf8_lossy(&o.stderr);
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("dry run output: {e}\n{stderr}"));
    assert!(!work.path().join("status.json").exists());

    let mut diffs: Vec<String> = vec![];
    let mut compared = 0;
    let mut rollbacks_compared = 0;
    // What modprobe does with the synthetic files, so that equality below means something.
    let step = |m: &str, p: &[&str]| (m.to_owned(), p.iter().map(|s| s.to_string()).collect());
    let Outcome::Load(vxlan) = modprobe_show_depends(&root, &kver, "vxlan") else {
        panic!("vxlan")
    };
    for want in [
        step("crc32c_generic", &["from_alias=1"]),
        step("dummy", &["numdummies=2"]),
        step("8021q", &[]),
    ] {
        assert!(vxlan.contains(&want), "{want:?} in {vxlan:?}");
    }
    assert_eq!(
        modprobe_show_depends(&root, &kver, "e1000e"),
        Outcome::Load(vec![step(
            "e1000e",
            &[
                "early=1",
                "InterruptThrottleRate=3000,3000",
                "IntMode=1",
                "late=2"
            ]
        )])
    );
    assert!(matches!(
        modprobe_show_depends(&root, &kver, "bonding"),
        Outcome::Install(_)
    ));
    let sets = plan["sets"].as_array().unwrap();
    assert_eq!(sets.len(), sample.len());
    let t = Instant::now();
    let steps = |load: &serde_json::Value| -> Vec<Step> {
        load.as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let params = m["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["value"].as_str().unwrap().to_owned())
                    .collect();
                (m["name"].as_str().unwrap().to_owned(), params)
            })
            .collect()
    };
    for (name, set) in sample.iter().zip(sets) {
        let kmod = modprobe_show_depends(&root, &kver, name);
        compared += 1;
        // What a rollback loads back (in-tree, from the node) is what modprobe loads.
        if let Some(back) = set["rollback"].as_array().and_then(|r| r.first()) {
            rollbacks_compared += 1;
            let ours = match &back["load"] {
                serde_json::Value::Null => Outcome::Install(back["error"].to_string()),
                load => Outcome::Load(steps(load)),
            };
            let same = match (&kmod, &ours) {
                (Outcome::Install(_), Outcome::Install(e)) => e.contains("`install "),
                (a, b) => a == b,
            };
            if !same {
                diffs.push(format!(
                    "{name} (rollback):\n    modprobe:       {kmod:?}\n    kmod-day1-load: {ours:?}"
                ));
            }
        }
        let ours = match set["state"].as_str().unwrap() {
            "wouldSwap" => Outcome::Load(steps(&set["load"])),
            _ => {
                let e = set["error"].as_str().unwrap_or_default().to_owned();
                match e.split_once("`install ") {
                    Some(_) => Outcome::Install(e),
                    None => {
                        diffs.push(format!("{name}: kmod-day1-load fails: {e}"));
                        continue;
                    }
                }
            }
        };
        match (&kmod, &ours) {
            (Outcome::Install(k), Outcome::Install(e)) => {
                // Same command, and ours names the module and the file.
                let cmd = k.trim_start_matches("install ").trim();
                if !e.contains(&format!(" {cmd}`")) {
                    diffs.push(format!("{name}: modprobe runs {k:?}; kmod-day1-load: {e}"));
                }
            }
            (a, b) if a == b => {}
            (a, b) => diffs.push(format!(
                "{name}:\n    modprobe:       {a:?}\n    kmod-day1-load: {b:?}"
            )),
        }
    }
    let modprobe_time = t.elapsed();

    // modprobe -c: the configuration as kmod read it, against the dry run's.
    let out = sh(Command::new(sbin("modprobe"))
        .args(modprobe_args(&root, &kver))
        .arg("-c"));
    let kmod_conf: Vec<&str> = out
        .lines()
        .take_while(|l| !l.starts_with("# End of configuration files"))
        .filter(|l| !l.is_empty())
        .collect();
    let c = &plan["modprobe"];
    let s = |v: &serde_json::Value| v.as_str().unwrap().to_owned();
    let mut ours_conf: Vec<String> = vec![];
    for b in c["blacklist"].as_array().unwrap() {
        ours_conf.push(format!("blacklist {}", s(&b["module"])));
    }
    for kind in ["install", "remove"] {
        for l in c[kind].as_array().unwrap() {
            ours_conf.push(format!("{kind} {} {}", s(&l["module"]), s(&l["command"])));
        }
    }
    for a in c["alias"].as_array().unwrap() {
        ours_conf.push(format!("alias {} {}", s(&a["alias"]), s(&a["module"])));
    }
    for o in c["options"].as_array().unwrap() {
        ours_conf.push(format!("options {} {}", s(&o["module"]), s(&o["options"])));
    }
    for d in c["softdep"].as_array().unwrap() {
        // kmod prints `pre: a bpost: c` (no space before `post:`).
        let list = |k: &str| -> Vec<String> { d[k].as_array().unwrap().iter().map(s).collect() };
        let (pre, post) = (list("pre"), list("post"));
        let mut v = String::new();
        if !pre.is_empty() {
            v += &format!("pre: {}", pre.join(" "));
        }
        if !post.is_empty() {
            v += &format!("post: {}", post.join(" "));
        }
        ours_conf.push(format!("softdep {} {v}", s(&d["module"])));
    }
    let conf_compared = kmod_conf.len();
    if kmod_conf != ours_conf {
        let n = kmod_conf.len().max(ours_conf.len());
        for i in 0..n {
            let (a, b) = (
                kmod_conf.get(i).copied(),
                ours_conf.get(i).map(String::as_str),
            );
            if a != b {
                diffs.push(format!(
                    "modprobe -c line {}:\n    modprobe:       {a:?}\n    kmod-day1-load: {b:?}",
                    i + 1
                ));
            }
        }
    }
    // The synthetic files were all read: the hidden, README and dot files were not.
    let files: Vec<String> = c["files"].as_array().unwrap().iter().map(s).collect();
    for f in ["README", ".hidden.conf"] {
        if files.iter().any(|x| x.ends_with(f)) {
            diffs.push(format!("{f} was read"));
        }
    }

    println!(
        "modprobe parity on {} ({}): {compared} modules compared ({} named by the synthetic files, the rest a seeded sample of {} modules, {} of them xz-compressed), as configured modules and, {rollbacks_compared} of them, as in-tree modules a rollback loads back; {conf_compared} modprobe -c lines; {} differences",
        kver,
        deb.file_name().unwrap().to_string_lossy(),
        named.len(),
        all.len(),
        to_xz.len(),
        diffs.len()
    );
    println!(
        "time: unpack {:.1} s, xz + depmod {:.1} s, dry run {:.2} s, {compared} modprobe runs {:.1} s, total {:.1} s",
        unpacked.as_secs_f64(),
        (prepared - unpacked).as_secs_f64(),
        dry_run_time.as_secs_f64(),
        modprobe_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    for d in &diffs {
        println!("DIFFERENCE {d}");
    }
    assert!(
        diffs.is_empty(),
        "{} differences with modprobe",
        diffs.len()
    );
}
