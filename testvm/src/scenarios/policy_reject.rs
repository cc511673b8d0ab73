// SPDX-License-Identifier: Apache-2.0
//! Scenario **policy-reject** (issue 11): the node's image trust policy demands a sigstore
//! signature by its key for the kmod image's repository, as MCO renders a ClusterImagePolicy
//! (`/etc/containers/policy.json`: `sigstoreSigned` with `keyData` and `matchRepoDigestOrExact`
//! for the scope; `/etc/containers/registries.d/sigstore-registries.yaml`:
//! `use-sigstore-attachments: true`).
//!
//! 1. Boot 1, the image unsigned: the pull rejects it before any blob is fetched, commits
//!    nothing (no ref, no tree), does not reboot, and its journal has one line naming the
//!    scope and the requirement that failed; the node stays on the in-tree e1000.
//! 2. Between boots the harness signs the image with the node's trusted key (cosign's
//!    attachment format, `sha256-<hex>.sig` pushed with skopeo): the config is unchanged, as
//!    when a release pipeline signs an image the cluster already names.
//! 3. Boot 2 accepts, pulls and reboots once; boot 3 swaps to the out-of-tree e1000.
//!
//! The image lives in a repository of its own (`kd1/e1000-policy`, copied from `kd1/e1000`
//! with the same digest), so the signatures never reach the other scenarios' images.

use std::process::Command;

use anyhow::{Context, Result};
use base64::Engine as _;
use kmod_day1_contract::SetState;
use kmod_day1_test_registry::cosign::{self, KeyPair, Signature};
use kmod_day1_test_registry::docker::write_oci_layout;

use crate::cmd::run as run_cmd;
use crate::lab::{Lab, NodeOptions};
use crate::node_config::{module_set, NodeConfigFile};
use crate::qemu::BootEnd;
use crate::registry::blob_downloads;
use crate::scenarios::e1000_node::boot_logged;
use crate::scenarios::facts::{
    check_boot_ends, check_end, check_network, check_oot_before_nm, BootFacts,
};
use crate::scenarios::report::Report;

/// The repository the policy guards.
const REPO: &str = "kd1/e1000-policy";
/// Where MCO writes the registries.d entry of its ClusterImagePolicies.
const REGISTRIES_D_FILE: &str = "/etc/containers/registries.d/sigstore-registries.yaml";

/// policy.json as MCO renders a ClusterImagePolicy with a public key for `scope` on top of
/// RHCOS's default (`insecureAcceptAnything`, and the `docker-daemon` transport).
fn policy_json(scope: &str, public_pem: &[u8]) -> String {
    let key = base64::engine::general_purpose::STANDARD.encode(public_pem);
    serde_json::json!({
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {
            "docker": {
                scope: [{
                    "type": "sigstoreSigned",
                    "keyData": key,
                    "signedIdentity": {"type": "matchRepoDigestOrExact"}
                }]
            },
            "docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}
        }
    })
    .to_string()
}

/// Copies `kd1/e1000` (every kernel's tag) to [`REPO`] with the same digests; returns
/// `(tag, digest)` of each.
fn copy_images(lab: &Lab) -> Result<Vec<(String, String)>> {
    let host = lab.registry.host_addr();
    let mut out = vec![];
    for k in lab.img.kernels() {
        let tag = &k.release;
        let src = lab
            .images
            .get(&format!("kd1/e1000:{tag}"))
            .with_context(|| format!("kd1/e1000:{tag} was not pushed"))?;
        run_cmd(
            Command::new("skopeo")
                .args([
                    "copy",
                    "--quiet",
                    "--preserve-digests",
                    "--src-tls-verify=false",
                    "--dest-tls-verify=false",
                ])
                .arg(format!("docker://{host}/kd1/e1000:{tag}"))
                .arg(format!("docker://{host}/{REPO}:{tag}")),
        )?;
        out.push((tag.clone(), src.digest.clone()));
    }
    Ok(out)
}

/// Signs `digest` as `identity` with `key` and pushes the signature where cosign puts it.
fn push_signature(lab: &Lab, key: &KeyPair, identity: &str, digest: &str) -> Result<()> {
    let work = lab.dirs.fresh_work_dir("policy-signature")?;
    let sig = Signature::new(key, cosign::payload(identity, digest))?;
    let img = cosign::signature_image(&[sig]);
    write_oci_layout(&img, &work).context("writing the signature's OCI layout")?;
    run_cmd(
        Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--preserve-digests",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}:t", work.display()))
            .arg(format!(
                "docker://{}/{REPO}:{}",
                lab.registry.host_addr(),
                cosign::signature_tag(digest)
            )),
    )?;
    Ok(())
}

/// Runs the scenario.
pub fn run(lab: &mut Lab) -> Result<Report> {
    let mut r = Report::new("policy-reject");
    let images = copy_images(lab)?;
    let keys_dir = lab.dirs.fresh_work_dir("policy-keys")?;
    let key = KeyPair::generate(&keys_dir, "node-trusted")?;
    let scope = lab.image_ref(REPO);
    let registries_d = format!("docker:\n  {scope}:\n    use-sigstore-attachments: true\n");
    let mut m = lab.node(
        "policy",
        &NodeOptions {
            configs: vec![NodeConfigFile {
                name: "99-kd1-e1000".into(),
                module_sets: vec![module_set("e1000", &scope, &[("e1000", &[])], &["e1000"])],
            }],
            files: vec![
                (
                    "/etc/containers/policy.json".into(),
                    policy_json(&scope, &key.public_pem()?),
                ),
                (REGISTRIES_D_FILE.into(), registries_d),
            ],
            ..NodeOptions::default()
        },
    )?;
    let mut reg = vec![];

    // Boot 1: unsigned.
    boot_logged(lab, &mut m, &mut reg, &mut || false)?;
    let b1 = &m.boots[0];
    check_end(&mut r, b1, BootEnd::PowerOff);
    let f1 = BootFacts::new(b1);
    r.check(
        "unsigned: in-tree e1000",
        !f1.oot_e1000(),
        format!("e1000 version {}", f1.e1000_version()),
        || f1.excerpt("e1000"),
    );
    check_network(&mut r, &f1);
    let running = format!("{scope}:{}", lab.img.base.release);
    let errors = f1.journal_errors("kmod-day1-pull").unwrap_or_default();
    // Each line is in the journal twice on this node: from the unit's stderr and from the
    // kernel log the test-only console drop-in copies it to. One distinct line is the product's.
    let mut rejections: Vec<&str> = errors
        .lines()
        .filter(|l| l.contains("trust policy rejects") && l.contains(&format!("{running}:")))
        .collect();
    rejections.dedup();
    let clear = rejections.len() == 1
        && rejections[0].contains(&scope)
        && rejections[0].contains("sigstoreSigned")
        && rejections[0].contains("no signature");
    r.check(
        "unsigned: one journal line names the scope and the failed requirement",
        clear,
        rejections
            .first()
            .unwrap_or(&"(no rejection line)")
            .to_string(),
        || {
            format!(
                "journalctl -p err -t kmod-day1-pull:\n{errors}\n{}",
                f1.journal()
            )
        },
    );
    r.fact(
        "rejection",
        rejections.first().unwrap_or(&"(none)").trim().to_owned(),
    );
    let store = f1.file("store").unwrap_or_default();
    let committed: Vec<&str> = store
        .lines()
        .filter(|l| {
            l.starts_with("/var/lib/kmod-day1/trees/")
                || l.ends_with(".json") && l.contains("/refs/")
        })
        .collect();
    r.check(
        "unsigned: nothing committed (no ref, no tree)",
        committed.is_empty() && !store.is_empty(),
        format!("{} ref or tree paths in the store", committed.len()),
        || store.clone(),
    );
    let downloads = blob_downloads(&reg[0]);
    r.check(
        "unsigned: rejected before any blob was fetched",
        downloads.is_empty(),
        format!("{} blob downloads", downloads.len()),
        || downloads.join("\n"),
    );
    let result = f1.unit_prop("kmod-day1-pull.service", "Result");
    let status = f1.unit_prop("kmod-day1-pull.service", "ExecMainStatus");
    r.check(
        "unsigned: the pull unit fails (exit 1), no reboot asked",
        result.as_deref() != Some("success") && status.as_deref() == Some("1"),
        format!("Result={result:?} ExecMainStatus={status:?}"),
        || f1.journal(),
    );
    r.check(
        "unsigned: the loader found nothing stored",
        f1.set_state("e1000") == Some(SetState::NotStored),
        format!("{:?}", f1.set_state("e1000")),
        || f1.file("status").unwrap_or_default(),
    );

    // The release pipeline signs the images with the key the node trusts.
    for (tag, digest) in &images {
        push_signature(lab, &key, &format!("{scope}:{tag}"), digest)?;
    }

    // Boots 2-3: accepted, one reboot, the swap.
    for _ in 0..2 {
        if boot_logged(lab, &mut m, &mut reg, &mut || false)? != BootEnd::Reboot {
            break;
        }
    }
    check_boot_ends(
        &mut r,
        "signed: one reboot, then a power-off",
        &m.boots,
        1,
        &[BootEnd::Reboot, BootEnd::PowerOff],
    );
    if let Some(b2) = m.boots.get(1) {
        let trusted = b2
            .serial
            .lines()
            .find(|l| l.contains("trusted") && l.contains(&running) && l.contains("sigstoreSigned"))
            .map(str::to_owned);
        r.check(
            "signed: the pull says why it trusts the image",
            trusted.is_some(),
            trusted
                .clone()
                .unwrap_or_else(|| "(no trusted line)".into()),
            || BootFacts::new(b2).excerpt("kmod-day1-pull"),
        );
    }
    if let Some(b3) = m.boots.get(2) {
        check_oot_before_nm(&mut r, &BootFacts::new(b3));
    }
    r.fact(
        "boots",
        m.boots
            .iter()
            .map(|b| format!("{} {:?} {:.0} s", b.number, b.end, b.secs))
            .collect::<Vec<_>>()
            .join(", "),
    );
    Ok(r)
}
