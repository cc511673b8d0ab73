// SPDX-License-Identifier: Apache-2.0
//! Scenario 6, **power cut during pull**: QEMU is killed while the node downloads a large
//! layer. The next boot finds a consistent store (no ref without its tree, nothing
//! half-committed), the pull completes and the node then swaps.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::lab::{Lab, NodeOptions};
use crate::node_config::{module_set, NodeConfigFile};
use crate::qemu::BootEnd;
use crate::registry::blob_started;
use crate::scenarios::e1000_node::boot_logged;
use crate::scenarios::facts::{check_boot_ends, check_end, check_oot_before_nm, BootFacts};
use crate::scenarios::report::Report;

/// Time between the registry starting to serve the big layer and the cut.
const CUT_AFTER: Duration = Duration::from_millis(1000);

/// Runs the scenario.
pub fn run(lab: &Lab) -> Result<Report> {
    let mut r = Report::new("power-cut");
    let cfg = NodeConfigFile {
        name: "99-kd1-e1000".into(),
        module_sets: vec![module_set(
            "e1000",
            &lab.image_ref("kd1/e1000-big"),
            &[("e1000", &[])],
            &["e1000"],
        )],
    };
    let mut m = lab.node(
        "powercut",
        &NodeOptions {
            configs: vec![cfg],
            ..NodeOptions::default()
        },
    )?;
    let big_layers: Vec<String> = lab
        .images
        .iter()
        .filter(|(k, _)| k.starts_with("kd1/e1000-big:"))
        .flat_map(|(_, p)| p.layers.clone())
        .collect();
    let mut reg = vec![];
    let log_start = lab.registry.log().len();
    let mut seen: Option<Instant> = None;
    let mut cut = || {
        if seen.is_none() {
            let log = lab.registry.log();
            let new = log.get(log_start..).unwrap_or_default();
            if big_layers.iter().any(|d| blob_started(new, d)) {
                seen = Some(Instant::now());
            }
        }
        seen.is_some_and(|t| t.elapsed() >= CUT_AFTER)
    };
    boot_logged(lab, &mut m, &mut reg, &mut cut)?;
    let b1 = &m.boots[0];
    let committed_before_cut = b1.serial.lines().any(|l| l.contains("committed "));
    let downloading = b1.serial.lines().any(|l| {
        l.contains("kmod-day1-pull") && l.contains("downloading") && l.contains("kd1/e1000-big")
    });
    r.check(
        "boot 1 is cut while the big layer downloads",
        b1.end == BootEnd::Killed && downloading && !committed_before_cut,
        format!(
            "{:?}; the pull logged the download: {downloading}; a commit logged before the cut: {committed_before_cut}",
            b1.end
        ),
        || BootFacts::new(b1).excerpt("kmod-day1-pull"),
    );
    for _ in 0..2 {
        let end = boot_logged(lab, &mut m, &mut reg, &mut || false)?;
        if end != BootEnd::Reboot {
            break;
        }
    }
    let Some(b2) = m.boots.get(1) else {
        r.error = Some("no boot after the cut".into());
        return Ok(r);
    };
    let f2 = BootFacts::prepull(b2);
    // No listing at all means the marker unit did not run; an empty one means nothing of
    // the store reached the disk before the cut (ext4 commits every 5 s): consistent too.
    let listed = f2.file("store");
    let store = listed.clone().unwrap_or_default();
    let trees: Vec<&str> = store
        .lines()
        .filter_map(|l| l.strip_prefix("/var/lib/kmod-day1/trees/"))
        .filter(|rest| !rest.contains('/'))
        .collect();
    let refs: Vec<&str> = store
        .lines()
        .filter(|l| l.starts_with("/var/lib/kmod-day1/refs/") && l.ends_with(".json"))
        .collect();
    let dangling: Vec<String> = refs
        .iter()
        .filter_map(|path| {
            let key = format!(
                "ref.{}",
                path.trim_start_matches("/var/lib/kmod-day1/refs/")
                    .replace('/', ":")
            );
            let text = f2.file(&key)?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            let tree = v["tree"].as_str()?.to_owned();
            (!trees.contains(&tree.as_str())).then_some(tree)
        })
        .collect();
    r.check(
        "next boot: the store is consistent (every ref has its tree)",
        listed.is_some() && dangling.is_empty(),
        format!(
            "{} trees, {} refs, dangling {dangling:?}",
            trees.len(),
            refs.len()
        ),
        || store.clone(),
    );
    let shown: Vec<&str> = store
        .lines()
        .filter(|l| l.matches('/').count() <= 5)
        .collect();
    r.fact(
        "store after the cut",
        if shown.is_empty() {
            "(empty: nothing of it reached the disk before the cut)".to_owned()
        } else {
            shown.join(" ")
        },
    );
    check_boot_ends(
        &mut r,
        "the pull completes after the cut: one reboot, then a power-off",
        &m.boots,
        0,
        &[BootEnd::Killed, BootEnd::Reboot, BootEnd::PowerOff],
    );
    if let Some(b3) = m.boots.get(2) {
        check_end(&mut r, b3, BootEnd::PowerOff);
        let f3 = BootFacts::new(b3);
        check_oot_before_nm(&mut r, &f3);
        let store3 = f3.file("store").unwrap_or_default();
        let leftovers: Vec<&str> = store3
            .lines()
            .filter_map(|l| l.strip_prefix("/var/lib/kmod-day1/tmp/"))
            .collect();
        r.check(
            "staging leftovers removed",
            leftovers.is_empty(),
            format!("tmp/ holds {leftovers:?}"),
            || store3.clone(),
        );
    }
    Ok(r)
}
