// SPDX-License-Identifier: Apache-2.0
//! The image trust policy, case by case, against the real Debian `docker-registry`.
//!
//! For every case without signatures, Debian's skopeo (`skopeo copy` with the same
//! policy.json and registries.d) is the reference and kmod-day1-pull must agree with it.
//! Debian's skopeo has sigstore switched off, so signed cases carry signatures in cosign's
//! attachment format made with the `openssl` command (see the test registry's `cosign`
//! module); the independent check of those is in `pull/trust-crosscheck`.
//!
//! The test prints each case with the reference verdict and kmod-day1-pull's, and fails on
//! any disagreement or unexpected verdict.

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use common::{Node, K};
use kmod_day1_test_registry::cosign::{
    payload, signature_image, signature_tag, KeyPair, Signature,
};
use kmod_day1_test_registry::docker::{require, skopeo_push, start_registry};
use kmod_day1_test_registry::{BuiltImage, Compression, Image, Layer};

fn kmod_image() -> BuiltImage {
    Image::new()
        .layer(Layer::new().compression(Compression::Gzip).file(
            format!("opt/lib/modules/{K}/extra/e1000.ko"),
            b"trusted".to_vec(),
        ))
        .build()
        .unwrap()
}

/// A registry that does not exist: only its mirror serves the image.
const MIRRORED: &str = "mirrored.invalid/kmod/e1000";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accept,
    Reject,
}

/// One case: a policy, registries.d on or off, the image as the config names it, the
/// signatures in its repository, and the expected verdict.
struct Case {
    name: &'static str,
    /// policy.json; `KEY`, `KEY2` are replaced by key paths, `KEYDATA`, `KEYDATAS` by data.
    policy: String,
    attachments: bool,
    /// Repository under `kmod/` holding the image and this case's signatures.
    repo: &'static str,
    by_digest: bool,
    /// The config names `mirrored.invalid/kmod/e1000`; registries.conf mirrors it to `repo`.
    mirrored: bool,
    signed: bool,
    expect: Verdict,
}

/// skopeo 1.9 reads only `/etc/containers/registries.conf` (no flag, no environment
/// variable): for a case with mirrors it runs in a private mount namespace with the node's
/// file bound over that path.
fn skopeo_verdict(
    image: &str,
    policy: &Path,
    regd: &Path,
    registries_conf: Option<&Path>,
) -> Verdict {
    require("/usr/bin/skopeo", "skopeo");
    let d = tempfile::tempdir().unwrap();
    let mut cmd = match registries_conf {
        Some(conf) => {
            let mut c = Command::new("unshare");
            c.args([
                "--mount",
                "sh",
                "-c",
                r#"mount --bind "$0" /etc/containers/registries.conf && exec "$@""#,
            ])
            .arg(conf)
            .arg("/usr/bin/skopeo");
            c
        }
        None => Command::new("/usr/bin/skopeo"),
    };
    let out = cmd
        .args(std::env::var_os("TRUST_MATRIX_VERBOSE").map(|_| "--debug"))
        .arg("--policy")
        .arg(policy)
        .arg("--registries.d")
        .arg(regd)
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{image}"))
        .arg(format!("dir:{}", d.path().join("out").display()))
        .env("HOME", d.path())
        .output()
        .unwrap();
    if out.status.success() {
        Verdict::Accept
    } else {
        if std::env::var_os("TRUST_MATRIX_VERBOSE").is_some() {
            println!(
                "    skopeo: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Verdict::Reject
    }
}

#[test]
fn policy_matrix_agrees_with_skopeo_and_the_rules() {
    require("/usr/bin/openssl", "openssl");
    let reg = start_registry();
    let host = reg.host.clone();
    let keys_dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(keys_dir.path(), "key").unwrap();
    let key2 = KeyPair::generate(keys_dir.path(), "key2").unwrap();
    let wrong = KeyPair::generate(keys_dir.path(), "wrong").unwrap();
    let img = kmod_image();
    let other_digest = kmod_day1_test_registry::sha256_digest(b"another manifest");

    // Each repository: the image, and its own set of signatures.
    let name = |repo: &str| format!("{host}/kmod/{repo}");
    let tagged = |repo: &str| format!("{}:{K}", name(repo));
    let signed_by = |k: &KeyPair, reference: String, digest: &str| {
        Signature::new(k, payload(&reference, digest)).unwrap()
    };
    let repos: Vec<(&str, Vec<Signature>)> = vec![
        ("unsigned", vec![]),
        ("good", vec![signed_by(&key, tagged("good"), &img.digest)]),
        (
            "by-key2",
            vec![signed_by(&key2, tagged("by-key2"), &img.digest)],
        ),
        (
            "wrong-key",
            vec![signed_by(&wrong, tagged("wrong-key"), &img.digest)],
        ),
        (
            "other-digest",
            vec![signed_by(&key, tagged("other-digest"), &other_digest)],
        ),
        (
            "wrong-identity",
            vec![signed_by(&key, tagged("elsewhere"), &img.digest)],
        ),
        ("no-tag", vec![signed_by(&key, name("no-tag"), &img.digest)]),
        (
            "signed-elsewhere",
            vec![signed_by(
                &key,
                format!("quay.io/acme/ice:{K}"),
                &img.digest,
            )],
        ),
        (
            "bad-then-good",
            vec![
                signed_by(&wrong, tagged("bad-then-good"), &img.digest),
                signed_by(&key, tagged("bad-then-good"), &img.digest),
            ],
        ),
    ];
    for (repo, sigs) in &repos {
        skopeo_push(&img, &tagged(repo), None);
        if !sigs.is_empty() {
            let sig_img = signature_image(sigs);
            skopeo_push(
                &sig_img,
                &format!("{}:{}", name(repo), signature_tag(&img.digest)),
                None,
            );
        }
    }

    let accept = r#"[{"type": "insecureAcceptAnything"}]"#;
    let reject = r#"[{"type": "reject"}]"#;
    let sigstore =
        |identity: &str| format!(r#"[{{"type": "sigstoreSigned", "keyPath": "KEY"{identity}}}]"#);
    let scoped = |scope: String, reqs: &str, default: &str| {
        format!(r#"{{"default": {default}, "transports": {{"docker": {{"{scope}": {reqs}}}}}}}"#)
    };
    let plain = |reqs: &str| format!(r#"{{"default": {reqs}}}"#);
    let case = |name, policy: String, repo, signed, expect| Case {
        name,
        policy,
        attachments: true,
        repo,
        by_digest: false,
        mirrored: false,
        signed,
        expect,
    };
    use Verdict::{Accept, Reject};
    let mut cases = vec![
        case(
            "default insecureAcceptAnything",
            plain(accept),
            "unsigned",
            false,
            Accept,
        ),
        case("default reject", plain(reject), "unsigned", false, Reject),
        case(
            "host scope accepts, default rejects",
            scoped(host.clone(), accept, reject),
            "unsigned",
            false,
            Accept,
        ),
        case(
            "namespace scope rejects, default accepts",
            scoped(format!("{host}/kmod"), reject, accept),
            "unsigned",
            false,
            Reject,
        ),
        case(
            "repository scope beats host scope",
            format!(
                r#"{{"default": {reject}, "transports": {{"docker": {{"{host}": {reject}, "{host}/kmod/unsigned": {accept}}}}}}}"#
            ),
            "unsigned",
            false,
            Accept,
        ),
        case(
            "the transport's \"\" scope beats default",
            format!(r#"{{"default": {accept}, "transports": {{"docker": {{"": {reject}}}}}}}"#),
            "unsigned",
            false,
            Reject,
        ),
        case(
            "every requirement must hold",
            plain(r#"[{"type": "insecureAcceptAnything"}, {"type": "reject"}]"#),
            "unsigned",
            false,
            Reject,
        ),
        case(
            "sigstoreSigned, unsigned image",
            plain(&sigstore("")),
            "unsigned",
            false,
            Reject,
        ),
        case(
            "signedBy (GPG), unsigned image",
            plain(r#"[{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/nonexistent.gpg"}]"#),
            "unsigned",
            false,
            Reject,
        ),
        case(
            "sigstoreSigned with fulcio (unsupported field)",
            plain(
                r#"[{"type": "sigstoreSigned", "fulcio": {"caData": "eA==", "oidcIssuer": "https://x", "subjectEmail": "a@b"}}]"#,
            ),
            "unsigned",
            false,
            Reject,
        ),
        case(
            "sigstoreSigned, signed, matchRepoDigestOrExact",
            plain(&sigstore("")),
            "good",
            true,
            Accept,
        ),
        case(
            "sigstoreSigned, wrong key",
            plain(&sigstore("")),
            "wrong-key",
            true,
            Reject,
        ),
        case(
            "sigstoreSigned, signature for another digest",
            plain(&sigstore("")),
            "other-digest",
            true,
            Reject,
        ),
        case(
            "sigstoreSigned, wrong identity",
            plain(&sigstore("")),
            "wrong-identity",
            true,
            Reject,
        ),
        case(
            "cosign-style identity without a tag, default signedIdentity",
            plain(&sigstore("")),
            "no-tag",
            true,
            Reject,
        ),
        case(
            "cosign-style identity without a tag, matchRepository",
            plain(&sigstore(
                r#", "signedIdentity": {"type": "matchRepository"}"#,
            )),
            "no-tag",
            true,
            Accept,
        ),
        case(
            "exactRepository names the signed repository",
            plain(&sigstore(
                r#", "signedIdentity": {"type": "exactRepository", "dockerRepository": "quay.io/acme/ice"}"#,
            )),
            "signed-elsewhere",
            true,
            Accept,
        ),
        case(
            "remapIdentity maps the local name to the signed one",
            plain(&sigstore(&format!(
                r#", "signedIdentity": {{"type": "remapIdentity", "prefix": "{host}/kmod/signed-elsewhere", "signedPrefix": "quay.io/acme/ice"}}"#
            ))),
            "signed-elsewhere",
            true,
            Accept,
        ),
        case(
            "keyPaths: the second key signed",
            plain(r#"[{"type": "sigstoreSigned", "keyPaths": ["KEY", "KEY2"]}]"#),
            "by-key2",
            true,
            Accept,
        ),
        case(
            "keyDatas: the second key signed",
            plain(r#"[{"type": "sigstoreSigned", "keyDatas": KEYDATAS}]"#),
            "by-key2",
            true,
            Accept,
        ),
        case(
            "one bad signature, one good",
            plain(&sigstore("")),
            "bad-then-good",
            true,
            Accept,
        ),
        case(
            "sigstoreSigned only for this repository, others accepted",
            scoped(format!("{host}/kmod/wrong-key"), &sigstore(""), accept),
            "wrong-key",
            true,
            Reject,
        ),
        case(
            "Rekor required (unsupported field), signed image",
            plain(
                r#"[{"type": "sigstoreSigned", "keyPath": "KEY", "rekorPublicKeyData": "eA=="}]"#,
            ),
            "good",
            true,
            Reject,
        ),
    ];
    cases.push(Case {
        attachments: false,
        ..case(
            "registries.d off: signatures not read",
            plain(&sigstore("")),
            "good",
            true,
            Reject,
        )
    });
    cases.push(Case {
        by_digest: true,
        ..case(
            "by digest: a signature with the repository's tag is accepted",
            plain(&sigstore("")),
            "good",
            true,
            Accept,
        )
    });

    cases.push(Case {
        mirrored: true,
        ..case(
            "mirror: the scope of the name in the config applies, not the mirror's",
            format!(
                r#"{{"default": {accept}, "transports": {{"docker": {{"{MIRRORED}": {reject}}}}}}}"#
            ),
            "unsigned",
            false,
            Reject,
        )
    });
    cases.push(Case {
        mirrored: true,
        ..case(
            "mirror: the config's name accepted, served by a mirror the policy rejects",
            format!(
                r#"{{"default": {reject}, "transports": {{"docker": {{"{MIRRORED}": {accept}}}}}}}"#
            ),
            "unsigned",
            false,
            Accept,
        )
    });
    cases.push(Case {
        mirrored: true,
        ..case(
            "mirror: signatures read from the mirror, identity of the config's name",
            plain(&sigstore(&format!(
                r#", "signedIdentity": {{"type": "remapIdentity", "prefix": "{MIRRORED}", "signedPrefix": "{}"}}"#,
                name("good")
            ))),
            "good",
            true,
            Accept,
        )
    });

    let b64 =
        |p: &Path| base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap());
    let mut failures = vec![];
    println!(
        "{:<62} {:>9} {:>9} {:>9}",
        "case", "expected", "skopeo", "pull"
    );
    for c in &cases {
        let node = Node::new();
        node.insecure(&[&host]);
        let policy = c
            .policy
            .replace(
                "KEYDATAS",
                &format!(r#"["{}", "{}"]"#, b64(&key.public), b64(&key2.public)),
            )
            .replace("KEY2", key2.public.to_str().unwrap())
            .replace("KEY", key.public.to_str().unwrap());
        node.policy(&policy);
        if c.attachments {
            std::fs::write(
                node.path("registries.d/default.yaml"),
                "default-docker:\n  use-sigstore-attachments: true\n",
            )
            .unwrap();
        }
        let image = if c.mirrored {
            node.registries_conf(&format!(
                "[[registry]]\nprefix = \"{MIRRORED}\"\nlocation = \"{MIRRORED}\"\n[[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n",
                name(c.repo)
            ));
            format!("{MIRRORED}:{K}")
        } else if c.by_digest {
            format!("{}@{}", name(c.repo), img.digest)
        } else {
            tagged(c.repo)
        };
        node.config(&image, "");
        node.loader_status(kmod_day1_contract::SetState::NotStored);
        let out = node.command(30).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let pulled = match out.status.code() {
            Some(0) if node.ref_record(K).is_some() => Verdict::Accept,
            Some(1) if stderr.contains("the node's image trust policy rejects") => {
                // A rejection commits nothing and never reboots.
                if !node.names("trees").is_empty()
                    || node.ref_record(K).is_some()
                    || node.rebooted()
                {
                    failures.push(format!(
                        "{}: rejected but the store changed or a reboot was asked",
                        c.name
                    ));
                }
                Verdict::Reject
            }
            code => {
                failures.push(format!("{}: exit {code:?}, unexpected: {stderr}", c.name));
                continue;
            }
        };
        let reference = (!c.signed).then(|| {
            skopeo_verdict(
                &image,
                &node.path("policy.json"),
                &node.path("registries.d"),
                c.mirrored.then(|| node.path("registries.conf")).as_deref(),
            )
        });
        println!(
            "{:<62} {:>9} {:>9} {:>9}",
            c.name,
            format!("{:?}", c.expect),
            reference.map_or("n/a".to_string(), |r| format!("{r:?}")),
            format!("{pulled:?}")
        );
        if pulled == Verdict::Reject {
            if let Some(line) = stderr.lines().find(|l| l.contains("rejects")) {
                println!("    {}", line.trim());
            }
        }
        if pulled != c.expect {
            failures.push(format!(
                "{}: expected {:?}, pull said {pulled:?}: {stderr}",
                c.name, c.expect
            ));
        }
        if let Some(r) = reference {
            if r != pulled {
                failures.push(format!(
                    "{}: skopeo said {r:?}, pull said {pulled:?}",
                    c.name
                ));
            }
        }
        if pulled == Verdict::Reject
            && !stderr
                .lines()
                .any(|l| l.contains("transports.docker[") || l.contains(": default: "))
        {
            failures.push(format!(
                "{}: the rejection does not name the scope: {stderr}",
                c.name
            ));
        }
    }
    println!("{} cases", cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
