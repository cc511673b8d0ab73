// SPDX-License-Identifier: Apache-2.0
//! Scenario **sig-enforced** (issue 11): a node booted with `module.sig_enforce=1`, as under
//! Secure Boot. The image's e1000 is an unsigned out-of-tree build. A node of its own, two
//! boots: the first apply (the in-tree, Debian-signed e1000 loads; the pull stores the image
//! and reboots once), then the boot where the loader refuses the unsigned module in preflight,
//! before unloading anything: the in-tree e1000 stays bound, the network comes up, the status
//! says why, and the node does not reboot again. The `--dry-run --json` run just before the
//! real run (a test-only `ExecStartPre=`) shows the enforcement and the kernel's trusted keys
//! as the loader read them (`/proc/keys` and `keyctl`).
//!
//! A second set of the same config loads a signed module: Debian's own `dummy.ko`, shipped
//! in an image of its own. The preflight matches its signer (issuer and serial) to the
//! kernel's build key in `.builtin_trusted_keys`, and the kernel, enforcing, loads it: the
//! match agrees with the kernel's.

use anyhow::Result;
use kmod_day1_contract::SetState;

use crate::kmod_image::{self, ImageSpec};
use crate::lab::{Lab, NodeOptions};
use crate::modules_build::OOT_E1000_MARKER;
use crate::node_config::{module_set, NodeConfigFile};
use crate::qemu::BootEnd;
use crate::scenarios::e1000_node::boot_logged;
use crate::scenarios::facts::{check_end, check_network, BootFacts};
use crate::scenarios::report::Report;

/// The node's config.
const CONFIG: &str = "99-kd1-e1000-unsigned";

/// The image holding Debian's signed `dummy.ko`.
const SIGNED_REPO: &str = "kd1/debian-signed";

/// That module in the VM root's module tree.
const SIGNED_MODULE: &str = "kernel/drivers/net/dummy.ko";

/// The kernel enforces module signatures.
const CMDLINE: &str = "module.sig_enforce=1";

/// The dry run, just before the real run, into /run (a test-only drop-in).
const DRY_RUN_DROPIN: &str = "[Service]\n\
ExecStartPre=-/bin/sh -c '/usr/local/bin/kmod-day1-load --dry-run --json > /run/kd1-dry-run.json'\n";

/// Run by the final marker unit: sig_enforce, the dry run and the trusted keyrings of
/// /proc/keys as markers.
const MARK_SCRIPT: &str = r#"#!/bin/bash
# testvm sig-enforced: sig_enforce, the dry run's plan and the kernel's keyrings.
mark() { printf 'KD1-MARK final.%s=%s\n' "$1" "$2" >&3; }
file() {
    local i=0 line
    while IFS= read -r line; do
        mark "$1.b64.$i" "$line"
        i=$((i + 1))
    done < <(base64 -w 600 "$2" 2>/dev/null)
}
mark sig_enforce "$(cat /sys/module/module/parameters/sig_enforce 2>/dev/null || echo none)"
file dry_run /run/kd1-dry-run.json
grep -E 'keyring +\.(builtin_trusted_keys|secondary_trusted_keys|machine|platform)|asymmetri' /proc/keys > /run/kd1-keys.txt
file proc_keys /run/kd1-keys.txt
"#;

/// Runs the scenario.
pub fn run(lab: &mut Lab) -> Result<Report> {
    let mut r = Report::new("sig-enforced");
    push_debian_signed(lab)?;
    let cfg = NodeConfigFile {
        name: CONFIG.into(),
        module_sets: vec![
            module_set(
                "e1000",
                &lab.image_ref("kd1/e1000"),
                &[("e1000", &[])],
                &["e1000"],
            ),
            module_set(
                "signed",
                &lab.image_ref(SIGNED_REPO),
                &[("dummy", &[])],
                &[],
            ),
        ],
    };
    let mut m = lab.node(
        "sigenforced",
        &NodeOptions {
            configs: vec![cfg],
            bench_script: Some(MARK_SCRIPT.into()),
            files: vec![(
                "/etc/systemd/system/kmod-day1-load.service.d/80-testvm-dry-run.conf".into(),
                DRY_RUN_DROPIN.into(),
            )],
            ..NodeOptions::default()
        },
    )?;
    m.extra_cmdline = CMDLINE.into();
    let mut reg = vec![];
    for _ in 0..2 {
        if boot_logged(lab, &mut m, &mut reg, &mut || false)? != BootEnd::Reboot {
            break;
        }
    }
    let ends: Vec<_> = m.boots.iter().map(|b| b.end.clone()).collect();
    r.check(
        "first apply: one reboot; the boot that refuses the module powers off (no reboot loop)",
        ends == [BootEnd::Reboot, BootEnd::PowerOff],
        format!("{ends:?}"),
        || {
            m.boots
                .iter()
                .map(|b| b.summary())
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
    let Some(b) = m.boots.get(1) else {
        return Ok(r);
    };
    check_end(&mut r, b, BootEnd::PowerOff);
    let f = BootFacts::new(b);
    let enforced = f.get("sig_enforce");
    r.check(
        "the kernel enforces module signatures (sig_enforce = Y)",
        enforced == Some("Y"),
        format!("sig_enforce {enforced:?}"),
        || f.excerpt("sig_enforce"),
    );

    // Refused in preflight, before anything was unloaded; the status says why.
    let set = f
        .status()
        .and_then(|s| s.sets.into_iter().find(|x| x.set == "e1000"));
    let error = set
        .as_ref()
        .and_then(|s| s.error.clone())
        .unwrap_or_default();
    r.check(
        "the set failed preflight: the status names the unsigned module file, the enforcement and what to do; nothing was removed or rolled back",
        set.as_ref().is_some_and(|s| {
            s.state == SetState::Failed
                && !s.rolled_back
                && s.removed_in_tree.is_empty()
                && s.modules.is_empty()
        }) && error.starts_with("preflight: module file /var/lib/kmod-day1/trees/")
            && error.contains("/e1000.ko is not signed, and the kernel enforces module signatures (module.sig_enforce)")
            && error.contains("mokutil --import")
            && error.contains("sign the module with a key the kernel trusts"),
        format!(
            "state {:?}, rolled back {:?}, error {error:?}",
            set.as_ref().map(|s| s.state),
            set.as_ref().map(|s| s.rolled_back)
        ),
        || f.file("status").unwrap_or_default(),
    );
    let logged = b
        .serial
        .lines()
        .find(|l| {
            l.contains(&format!(
                "{CONFIG}/e1000: failed, nothing changed: preflight: module file"
            ))
        })
        .unwrap_or("");
    r.check(
        "the journal line says the set failed with nothing changed, naming the module file",
        logged.contains("is not signed"),
        logged.trim().to_owned(),
        || f.excerpt(CONFIG),
    );
    let oot_loaded = b.serial.contains(OOT_E1000_MARKER);
    r.check(
        "the out-of-tree e1000 never reached the kernel; the in-tree (Debian-signed) e1000 drives the NIC",
        !oot_loaded && !f.oot_e1000(),
        format!(
            "out-of-tree marker in the kernel log: {oot_loaded}; e1000 version {}",
            f.e1000_version()
        ),
        || f.excerpt("e1000"),
    );
    check_network(&mut r, &f);

    // Debian's signed dummy.ko: the preflight's match and the kernel agree.
    let signed = f
        .status()
        .and_then(|s| s.sets.into_iter().find(|x| x.set == "signed"));
    r.check(
        "the set with Debian's signed dummy.ko: matched to the build key in preflight and loaded by the enforcing kernel, not marked unsigned",
        signed.as_ref().is_some_and(|s| {
            s.state == SetState::Loaded
                && s.modules.iter().any(|m| m.name == "dummy" && !m.already_loaded && !m.unsigned)
        }),
        format!(
            "state {:?}, error {:?}, modules {:?}",
            signed.as_ref().map(|s| s.state),
            signed.as_ref().and_then(|s| s.error.clone()),
            signed.as_ref().map(|s| &s.modules)
        ),
        || f.excerpt(&format!("{CONFIG}/signed")),
    );

    // The dry run of the same boot: enforcement, trusted keys, the same refusal.
    let dry: Option<serde_json::Value> = f
        .file("dry_run")
        .and_then(|t| serde_json::from_str(&t).ok());
    let sigs = dry.as_ref().map(|d| d["moduleSignatures"].clone());
    let keys: Vec<String> = sigs
        .as_ref()
        .and_then(|s| s["trustedKeys"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|k| {
            format!(
                "{} {}",
                k["keyring"].as_str().unwrap_or(""),
                k["description"].as_str().unwrap_or("")
            )
        })
        .collect();
    let dry_set = |name: &str| {
        dry.as_ref().and_then(|d| {
            d["sets"]
                .as_array()?
                .iter()
                .find(|s| s["set"] == name)
                .cloned()
        })
    };
    let dry_error = dry_set("e1000")
        .and_then(|s| s["error"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let dummy_verdict = dry_set("signed")
        .and_then(|s| {
            s["load"]
                .as_array()?
                .iter()
                .find(|m| m["name"] == "dummy")?["signature"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_default();
    // Debian's modules are signed by the kernel build's own key (issuer and serial; modinfo's
    // signer): the key whose subject the preflight matches them by.
    let debian_key = keys
        .iter()
        .any(|k| k.starts_with(".builtin_trusted_keys Build time autogenerated kernel key: "));
    r.check(
        "the dry run shows the enforcement, the kernel's trusted keys (read with keyctl: the build key that signs Debian's modules) and the same refusal",
        sigs.as_ref()
            .is_some_and(|s| s["enforcedBy"] == "module.sig_enforce")
            && debian_key
            && dry_error == error
            && dummy_verdict.starts_with("signed by \"Build time autogenerated kernel key\" (serial ")
            && dummy_verdict.contains(", trusted: .builtin_trusted_keys Build time autogenerated kernel key: "),
        format!("moduleSignatures {sigs:?}; dry run error {dry_error:?}; dummy.ko: {dummy_verdict:?}"),
        || {
            format!(
                "dry run:\n{}\n--- /proc/keys ---\n{}",
                f.file("dry_run")
                    .unwrap_or_else(|| "(no dry_run marker)".into()),
                f.file("proc_keys").unwrap_or_default()
            )
        },
    );
    r.fact("trusted keys (dry run)", keys.join("; "));
    r.fact("dummy.ko (dry run)", dummy_verdict);
    r.fact("loader", logged.trim());
    Ok(r)
}

/// Pushes the image with Debian's signed `dummy.ko`, for both kernels of the VM (the pull
/// prefetches the other kernel's).
fn push_debian_signed(lab: &mut Lab) -> Result<()> {
    let work = lab.dirs.fresh_work_dir("images-sig-enforced")?;
    for k in lab.img.kernels() {
        let module = lab
            .img
            .root
            .join("usr/lib/modules")
            .join(&k.release)
            .join(SIGNED_MODULE);
        let spec = ImageSpec {
            repo: SIGNED_REPO.into(),
            kernel: k.release.clone(),
            modules: vec![module],
            files: vec![],
        };
        let p = kmod_image::build_and_push(&spec, &work, &lab.registry.host_addr())?;
        lab.images.insert(p.name.clone(), p);
    }
    Ok(())
}
