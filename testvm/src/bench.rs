// SPDX-License-Identifier: Apache-2.0
//! Timings: boot milestones with and without kmod-day1, reboots per first apply and kernel
//! upgrade, the loader's status timings, and the loader against plain `modprobe` of the
//! same modules from the same tree, in the same boot (issue 4's bench).

use std::fmt::Write as _;

use crate::lab::Lab;
use crate::modules_build::BENCH_MODULES;
use crate::node_config::{module_set, NodeConfigFile};
use crate::qemu::Boot;
use crate::scenarios::facts::BootFacts;

/// Rounds of the loader/modprobe comparison.
const ROUNDS: usize = 7;

/// The guest script (run by the final marker unit, fd 3 = /dev/kmsg): unloads the bench
/// modules, times `kmod-day1-load` on a config with 1 and with 10 of them, then `modprobe`
/// of the same modules from the same store tree, `ROUNDS` times each.
pub fn script(config: &str, set: &str) -> String {
    let all: Vec<String> = (0..BENCH_MODULES)
        .map(|i| format!("kd1_bench{i}"))
        .collect();
    format!(
        r#"#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# testvm bench: kmod-day1-load against modprobe, same modules, same tree, same boot.
mark() {{ printf 'KD1-MARK bench.%s=%s\n' "$1" "$2" >&3; }}
# Once per node: the numbers of one boot are enough, and each run costs ~40 s under TCG.
[ -e /var/lib/kd1-bench.done ] && exit 0
touch /var/lib/kd1-bench.done
kver=$(uname -r)
ref=$(ls /var/lib/kmod-day1/refs/{config}/{set}/$kver/*.json 2>/dev/null | head -1)
tree=$(sed -n 's/.*"tree": *"\([0-9a-f]*\)".*/\1/p' "$ref")
[ -n "$tree" ] || {{ mark error "no ref $ref"; exit 0; }}
root=/run/kd1-bench/root
mkdir -p $root/lib/modules
ln -sfn /var/lib/kmod-day1/trees/$tree/modules $root/lib/modules/$kver
all="{all}"
unload() {{ for m in $all; do [ -e /sys/module/$m ] && rmmod $m; done; true; }}
num() {{ grep -o "\"$1\": *[0-9]*" "$2" | head -1 | grep -o '[0-9]*$'; }}
for round in $(seq 1 {ROUNDS}); do
    for n in one ten; do
        if [ $n = one ]; then mods=kd1_bench0; else mods=$all; fi
        unload
        t0=$(date +%s%N)
        /usr/local/bin/kmod-day1-load --config-dir /etc/kd1-bench/$n --status /run/kd1-bench/$n.json >/dev/null 2>&1
        rc=$?
        t1=$(date +%s%N)
        mark "loader.$n.$round" "wall_us=$(( (t1 - t0) / 1000 )) own_us=$(num overheadUs /run/kd1-bench/$n.json) kernel_us=$(num kernelUs /run/kd1-bench/$n.json) rc=$rc"
        unload
        t0=$(date +%s%N)
        modprobe -d $root -a $mods
        rc=$?
        t1=$(date +%s%N)
        mark "modprobe.$n.$round" "wall_us=$(( (t1 - t0) / 1000 )) rc=$rc"
    done
done
t0=$(date +%s%N); t1=$(date +%s%N)
mark "clock_us" "$(( (t1 - t0) / 1000 ))"
"#,
        all = all.join(" ")
    )
}

/// The bench configs (`/etc/kd1-bench/{{one,ten}}/<config>.json`): same config and set
/// names as on the node, so the loader finds the same stored tree.
pub fn config_files(lab: &Lab, config: &str, set: &str) -> Vec<(String, String)> {
    let names: Vec<String> = (0..BENCH_MODULES)
        .map(|i| format!("kd1_bench{i}"))
        .collect();
    let mut out = vec![];
    for (dir, count) in [("one", 1), ("ten", BENCH_MODULES)] {
        let mods: Vec<(&str, &[&str])> = names[..count]
            .iter()
            .map(|n| (n.as_str(), &[][..]))
            .collect();
        let cfg = NodeConfigFile {
            name: config.to_owned(),
            module_sets: vec![module_set(set, &lab.image_ref("kd1/bench"), &mods, &[])],
        };
        let text = cfg.to_json().expect("the bench config is valid");
        out.push((format!("/etc/kd1-bench/{dir}/{config}.json"), text));
    }
    out
}

/// Median of some numbers.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

fn field(v: &str, name: &str) -> Option<f64> {
    v.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name).and_then(|x| x.strip_prefix('=')))
        .and_then(|x| x.parse().ok())
}

/// Seconds kmod-day1-pull-shutdown.service took to stop (systemd's "Stopping" to its
/// "Stopped" line) in a journal printed with `-o short-monotonic`: what the stop step added
/// to that shutdown at most (other units stop beside it).
pub fn stop_step_secs(journal: &str) -> Option<f64> {
    const UNIT: &str = "kmod-day1-pull-shutdown.service";
    let stamp = |l: &str| -> Option<f64> {
        let inner = l.trim_start().strip_prefix('[')?.split(']').next()?;
        inner.trim().parse().ok()
    };
    let mut lines = journal.lines();
    let start = lines
        .by_ref()
        .find(|l| l.contains(&format!("Stopping {UNIT}")))
        .and_then(stamp)?;
    let end = lines
        .find(|l| l.contains(&format!("Stopped {UNIT}")))
        .and_then(stamp)?;
    Some(end - start)
}

/// The boot that ran the bench script, if any.
pub fn bench_boot(boots: &[Boot]) -> Option<&Boot> {
    boots
        .iter()
        .find(|b| b.markers.keys().iter().any(|k| k.starts_with("bench.")))
}

/// The loader-vs-modprobe numbers of a boot that ran the bench script.
pub fn loader_vs_modprobe(boot: &Boot) -> String {
    let m = &boot.markers;
    let mut s = String::new();
    if let Some(e) = m.get("bench.error") {
        let _ = writeln!(s, "  bench error: {e}");
        return s;
    }
    for n in ["one", "ten"] {
        let collect = |tool: &str, f: &str| -> Vec<f64> {
            (1..=ROUNDS)
                .filter_map(|r| {
                    m.get(&format!("bench.{tool}.{n}.{r}"))
                        .and_then(|v| field(v, f))
                })
                .collect()
        };
        let lw = median(collect("loader", "wall_us"));
        let own = median(collect("loader", "own_us"));
        let kern = median(collect("loader", "kernel_us"));
        let mw = median(collect("modprobe", "wall_us"));
        let ratio = match (lw, mw) {
            (Some(l), Some(p)) if p > 0.0 => format!("{:.2}x", l / p),
            _ => "?".into(),
        };
        let ms = |v: Option<f64>| v.map_or("?".into(), |v| format!("{:.1} ms", v / 1000.0));
        let count = if n == "one" { 1 } else { BENCH_MODULES };
        let _ = writeln!(
            s,
            "  {count} module(s), median of {ROUNDS}: kmod-day1-load {} (own {}, kernel {}), modprobe {}, loader/modprobe {ratio}",
            ms(lw),
            ms(own),
            ms(kern),
            ms(mw)
        );
    }
    if let Some(f) = m.get("bench.fork_us") {
        let _ = writeln!(
            s,
            "  (a fork+exec of /bin/true costs {f} us in this VM; both numbers include one)"
        );
    }
    s
}

/// Boot milestones of one boot, in seconds since kernel start (from the final markers, or
/// those written before the pull when the boot ended in a reboot).
pub fn milestones(label: &str, boot: &Boot) -> String {
    let mut f = BootFacts::new(boot);
    if f.get("uname").is_none() {
        f = BootFacts::prepull(boot);
    }
    let s = |u: Option<u64>| u.map_or("?".to_owned(), |u| format!("{:.2} s", u as f64 / 1e6));
    let load = match (
        f.unit_us("kmod-day1-load.service", "ExecMainStartTimestampMonotonic"),
        f.unit_us("kmod-day1-load.service", "ExecMainExitTimestampMonotonic"),
    ) {
        (Some(a), Some(b)) if b >= a => format!("{:.0} ms", (b - a) as f64 / 1000.0),
        _ => "-".into(),
    };
    let status = f
        .status()
        .map(|st| {
            let sets: Vec<String> = st
                .sets
                .iter()
                .map(|x| {
                    format!(
                        "{}:{:?} kernel {} us own {} us",
                        x.set, x.state, x.kernel_us, x.overhead_us
                    )
                })
                .collect();
            format!("total {} us [{}]", st.total_us, sets.join("; "))
        })
        .unwrap_or_else(|| "no status".into());
    format!(
        "  {label} (boot {}, {}): NetworkManager active {}, network-online {}, kmod-day1-load run {load}; loader status: {status}\n",
        boot.number,
        boot.kernel,
        s(f.unit_us("NetworkManager.service", "ActiveEnterTimestampMonotonic")),
        s(f.unit_us("network-online.target", "ActiveEnterTimestampMonotonic")),
    )
}

/// NetworkManager-active and network-online times of two boots, and their ratio; and the
/// loader's run time, which bounds what kmod-day1 can add before NetworkManager (it is
/// ordered before it and nothing else waits for it).
pub fn ratio(with: &Boot, without: &Boot) -> String {
    let t = |b: &Boot, u: &str| BootFacts::new(b).unit_us(u, "ActiveEnterTimestampMonotonic");
    let mut s = String::new();
    let f = BootFacts::new(with);
    if let (Some(a), Some(b)) = (
        f.unit_us("kmod-day1-load.service", "ExecMainStartTimestampMonotonic"),
        f.unit_us("kmod-day1-load.service", "ExecMainExitTimestampMonotonic"),
    ) {
        let _ = writeln!(
            s,
            "  kmod-day1-load ran {:.0} ms before NetworkManager (the most kmod-day1 adds to it; whole-boot times under TCG on a shared 2-core host vary by tens of percent from boot to boot)",
            b.saturating_sub(a) as f64 / 1000.0
        );
    }
    for u in ["NetworkManager.service", "network-online.target"] {
        if let (Some(a), Some(b)) = (t(with, u), t(without, u)) {
            let _ = writeln!(
                s,
                "  {u}: {:.2} s with kmod-day1 / {:.2} s without = {:.2}x",
                a as f64 / 1e6,
                b as f64 / 1e6,
                a as f64 / b as f64
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_fields() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![]), None);
        assert_eq!(field("wall_us=1200 own_us=300 rc=0", "own_us"), Some(300.0));
        assert_eq!(field("wall_us=1200", "own_us"), None);
    }

    #[test]
    fn the_script_is_valid_bash() {
        let s = script("50-kd1-multi", "bench");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("b.sh");
        std::fs::write(&p, s).unwrap();
        let ok = std::process::Command::new("bash")
            .arg("-n")
            .arg(&p)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    #[test]
    fn the_stop_step_is_timed_from_stopping_to_stopped() {
        let journal = "\
[   37.603606] kd1-node systemd[1]: Starting kmod-day1-pull-shutdown.service - Fetch...
[   64.269662] kd1-node systemd[1]: Stopping kmod-day1-pull-shutdown.service - Fetch...
[   65.103664] kd1-node kmod-day1-pull[536]:  INFO the system is shutting down
[   66.028469] kd1-node systemd[1]: Stopped kmod-day1-pull-shutdown.service - Fetch...
[   66.359922] kd1-node systemd[1]: Stopping ostree-finalize-staged.service - OSTree...
";
        let secs = stop_step_secs(journal).unwrap();
        assert!((secs - 1.758807).abs() < 1e-6, "{secs}");
        assert_eq!(stop_step_secs(&journal[..200]), None);
        assert_eq!(stop_step_secs(""), None);
    }
}
