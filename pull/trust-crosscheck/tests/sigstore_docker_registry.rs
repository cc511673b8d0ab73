// SPDX-License-Identifier: Apache-2.0
//! Every signed case of kmod-day1-pull's trust policy matrix, verified by the `sigstore`
//! crate against Debian's real `docker-registry`. Needs `docker-registry`, `skopeo` and
//! `openssl` (hack/install-deps).
//!
//! The images and signatures are pushed as `pull/tests/trust_policy.rs` pushes them (same
//! repositories, same `cosign` writer, skopeo). For each case sigstore triangulates the
//! signature image, fetches the signature layers it trusts (those whose payload names the
//! image's digest) and checks them with a `PublicKeyVerifier` per key of the case's policy;
//! the image is verified when one key verifies one layer, as `sigstoreSigned` with `keyPaths`
//! reads. The verdict must be the one the policy matrix expects for the key and the digest;
//! identity rules are policy.json's, not cosign's (see the crate doc).

use kmod_day1_test_registry::cosign::{
    payload, signature_image, signature_tag, KeyPair, Signature,
};
use kmod_day1_test_registry::docker::{require, skopeo_push, start_registry};
use kmod_day1_test_registry::{BuiltImage, Compression, Image, Layer};
use sigstore::cosign::signature_layers::SignatureLayer;
use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraintVec};
use sigstore::cosign::{verify_constraints, ClientBuilder, CosignCapabilities as _};
use sigstore::crypto::SigningScheme;
use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};

/// The kernel release the images are tagged with, as in trust_policy.rs.
const K: &str = "6.1.0-27-amd64";

fn kmod_image() -> BuiltImage {
    Image::new()
        .layer(Layer::new().compression(Compression::Gzip).file(
            format!("opt/lib/modules/{K}/extra/e1000.ko"),
            b"trusted".to_vec(),
        ))
        .build()
        .unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Verified,
    NotVerified,
}

/// One signed case: the repository under `kmod/` (its signatures as trust_policy.rs pushes
/// them), how the image is named, the keys the policy trusts, and what sigstore must say.
struct Case {
    name: &'static str,
    repo: &'static str,
    by_digest: bool,
    keys: Vec<&'static str>,
    /// Verdict of the matrix for the key and the digest (identity aside).
    expect: Verdict,
    /// Signature layers whose payload names the image's digest.
    trusted_layers: usize,
}

/// The keys of the run, by the names the cases use.
struct Keys {
    key: KeyPair,
    key2: KeyPair,
    wrong: KeyPair,
}

impl Keys {
    fn get(&self, name: &str) -> &KeyPair {
        match name {
            "key" => &self.key,
            "key2" => &self.key2,
            "wrong" => &self.wrong,
            _ => panic!("no key {name}"),
        }
    }
}

/// cosign's `generate-key-pair` keys are ECDSA P-256 with SHA-256: the scheme is given, not
/// guessed from the key, so a key of another kind fails instead of verifying otherwise.
fn verifier(key: &KeyPair) -> VerificationConstraintVec {
    let pem = key.public_pem().unwrap();
    vec![Box::new(
        PublicKeyVerifier::new(&pem, &SigningScheme::ECDSA_P256_SHA256_ASN1).unwrap(),
    )]
}

fn verified_by(layers: &[SignatureLayer], key: &KeyPair) -> bool {
    verify_constraints(layers, verifier(key).iter()).is_ok()
}

#[tokio::test]
async fn sigstore_verifies_every_signed_case_as_the_matrix_expects() {
    require("/usr/bin/openssl", "openssl");
    let reg = start_registry();
    let host = reg.host.clone();
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = Keys {
        key: KeyPair::generate(keys_dir.path(), "key").unwrap(),
        key2: KeyPair::generate(keys_dir.path(), "key2").unwrap(),
        wrong: KeyPair::generate(keys_dir.path(), "wrong").unwrap(),
    };
    let img = kmod_image();
    let other_digest = kmod_day1_test_registry::sha256_digest(b"another manifest");

    // The signed repositories of trust_policy.rs, signed the same way.
    let name = |repo: &str| format!("{host}/kmod/{repo}");
    let tagged = |repo: &str| format!("{}:{K}", name(repo));
    let signed_by = |k: &KeyPair, reference: String, digest: &str| {
        Signature::new(k, payload(&reference, digest)).unwrap()
    };
    let repos: Vec<(&str, Vec<Signature>)> = vec![
        (
            "good",
            vec![signed_by(&keys.key, tagged("good"), &img.digest)],
        ),
        (
            "by-key2",
            vec![signed_by(&keys.key2, tagged("by-key2"), &img.digest)],
        ),
        (
            "wrong-key",
            vec![signed_by(&keys.wrong, tagged("wrong-key"), &img.digest)],
        ),
        (
            "other-digest",
            vec![signed_by(&keys.key, tagged("other-digest"), &other_digest)],
        ),
        (
            "wrong-identity",
            vec![signed_by(&keys.key, tagged("elsewhere"), &img.digest)],
        ),
        (
            "no-tag",
            vec![signed_by(&keys.key, name("no-tag"), &img.digest)],
        ),
        (
            "signed-elsewhere",
            vec![signed_by(
                &keys.key,
                format!("quay.io/acme/ice:{K}"),
                &img.digest,
            )],
        ),
        (
            "bad-then-good",
            vec![
                signed_by(&keys.wrong, tagged("bad-then-good"), &img.digest),
                signed_by(&keys.key, tagged("bad-then-good"), &img.digest),
            ],
        ),
    ];
    for (repo, sigs) in &repos {
        skopeo_push(&img, &tagged(repo), None);
        skopeo_push(
            &signature_image(sigs),
            &format!("{}:{}", name(repo), signature_tag(&img.digest)),
            None,
        );
    }

    use Verdict::{NotVerified, Verified};
    let case = |name, repo, keys: &[&'static str], expect, trusted_layers| Case {
        name,
        repo,
        by_digest: false,
        keys: keys.to_vec(),
        expect,
        trusted_layers,
    };
    let cases = vec![
        case("good signature, P-256 key", "good", &["key"], Verified, 1),
        Case {
            by_digest: true,
            ..case(
                "good signature, image named by digest",
                "good",
                &["key"],
                Verified,
                1,
            )
        },
        case("wrong key", "wrong-key", &["key"], NotVerified, 1),
        case(
            "signature for another digest",
            "other-digest",
            &["key"],
            NotVerified,
            0,
        ),
        case(
            "two keys, the second signed",
            "by-key2",
            &["key", "key2"],
            Verified,
            1,
        ),
        case(
            "the second key signed, only the first trusted",
            "by-key2",
            &["key"],
            NotVerified,
            1,
        ),
        case(
            "one bad signature layer, one good",
            "bad-then-good",
            &["key"],
            Verified,
            2,
        ),
        case(
            "wrong identity (the policy's to reject)",
            "wrong-identity",
            &["key"],
            Verified,
            1,
        ),
        case(
            "identity without a tag (the policy's to judge)",
            "no-tag",
            &["key"],
            Verified,
            1,
        ),
        case(
            "signed as another repository (the policy's to judge)",
            "signed-elsewhere",
            &["key"],
            Verified,
            1,
        ),
    ];

    let written: std::collections::BTreeMap<&str, &Vec<Signature>> =
        repos.iter().map(|(r, s)| (*r, s)).collect();
    let expected_sig_tag = signature_tag(&img.digest);
    let mut failures = vec![];
    println!(
        "{:<54} {:>11} {:>11} {:>7}",
        "case", "expected", "sigstore", "layers"
    );
    for c in &cases {
        let image = if c.by_digest {
            format!("{}@{}", name(c.repo), img.digest)
        } else {
            tagged(c.repo)
        };
        let reference: OciReference = image.parse().unwrap();
        let mut client = ClientBuilder::default()
            .with_oci_client_config(ClientConfig {
                protocol: ClientProtocol::Http,
                ..ClientConfig::default()
            })
            .build()
            .unwrap();

        let (sig_image, digest) = client
            .triangulate(&reference, &Auth::Anonymous)
            .await
            .unwrap();
        if digest != img.digest || sig_image.tag() != Some(expected_sig_tag.as_str()) {
            failures.push(format!(
                "{}: triangulated {sig_image} for {digest}, expected tag {expected_sig_tag} for {}",
                c.name, img.digest
            ));
        }
        let layers = client
            .trusted_signature_layers(&Auth::Anonymous, &reference)
            .await
            .unwrap();
        let verdict = if c.keys.iter().any(|k| verified_by(&layers, keys.get(k))) {
            Verified
        } else {
            NotVerified
        };
        println!(
            "{:<54} {:>11} {:>11} {:>7}",
            c.name,
            format!("{:?}", c.expect),
            format!("{verdict:?}"),
            layers.len()
        );
        for (i, l) in layers.iter().enumerate() {
            let by: Vec<&str> = ["key", "key2", "wrong"]
                .into_iter()
                .filter(|k| verified_by(std::slice::from_ref(l), keys.get(k)))
                .collect();
            println!(
                "    layer {} ({}): docker-reference {}, signed by {}",
                i + 1,
                &l.oci_digest[..19],
                l.simple_signing.critical.identity.docker_reference,
                if by.is_empty() {
                    "none".into()
                } else {
                    by.join(", ")
                }
            );
            // sigstore reads the payload as it was written.
            let payload_ok = written[c.repo].iter().any(|s| {
                kmod_day1_test_registry::sha256_digest(&s.payload) == l.oci_digest
                    && String::from_utf8_lossy(&s.payload).contains(&format!(
                        r#""docker-reference":"{}""#,
                        l.simple_signing.critical.identity.docker_reference
                    ))
            });
            if !payload_ok
                || l.simple_signing.critical.image.docker_manifest_digest != img.digest
                || l.simple_signing.critical.type_name != "cosign container image signature"
            {
                failures.push(format!(
                    "{}: sigstore read a payload that was not written: {:?}",
                    c.name, l.simple_signing
                ));
            }
        }
        if verdict != c.expect {
            failures.push(format!(
                "{}: expected {:?}, sigstore said {verdict:?}",
                c.name, c.expect
            ));
        }
        if layers.len() != c.trusted_layers {
            failures.push(format!(
                "{}: sigstore trusted {} signature layers, expected {}",
                c.name,
                layers.len(),
                c.trusted_layers
            ));
        }
    }
    println!("{} cases", cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
