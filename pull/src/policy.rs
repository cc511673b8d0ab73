// SPDX-License-Identifier: Apache-2.0
//! The node's image trust policy, `/etc/containers/policy.json` (containers-policy.json(5)),
//! read as containers/image reads it for the `docker` transport: the requirements of the
//! most specific scope that names the image (the reference itself, its repository, each
//! parent namespace, the registry host, then `*.domain` wildcards), else the transport's
//! `""` scope, else `default`. Every requirement must hold.
//!
//! Enforced: `insecureAcceptAnything`, `reject`, and `sigstoreSigned` with public keys
//! (`keyPath`, `keyPaths`, `keyData`, `keyDatas`) and every `signedIdentity`. A requirement
//! with a field this pull cannot enforce (`signedBy` GPG signatures, `fulcio`, the Rekor
//! fields, `pki`) is refused, naming the scope and the field: never silently accepted.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use kmod_day1_contract::ImageRef;
use serde::Deserialize;

use crate::signed_identity::SignedIdentity;
use crate::sigstore::PublicKey;

/// Default location, as skopeo and podman use it.
pub(crate) const POLICY_JSON: &str = "/etc/containers/policy.json";

/// A policy.json that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("the image trust policy {path}: {why}")]
pub(crate) struct PolicyError {
    path: String,
    why: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    default: Vec<RawRequirement>,
    #[serde(default)]
    transports: BTreeMap<String, BTreeMap<String, Vec<RawRequirement>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
enum RawRequirement {
    // `{}`: serde ignores unknown fields of unit variants; containers/image refuses them.
    InsecureAcceptAnything {},
    Reject {},
    // Refused whatever its fields say; they are parsed so that a typo is still an error.
    SignedBy {
        #[serde(rename = "keyType")]
        _key_type: Option<String>,
        #[serde(rename = "keyPath")]
        _key_path: Option<String>,
        #[serde(rename = "keyPaths")]
        _key_paths: Option<Vec<String>>,
        #[serde(rename = "keyData")]
        _key_data: Option<String>,
        #[serde(rename = "signedIdentity")]
        _signed_identity: Option<SignedIdentity>,
    },
    #[serde(rename_all = "camelCase")]
    SigstoreSigned {
        key_path: Option<String>,
        key_paths: Option<Vec<String>>,
        key_data: Option<String>,
        key_datas: Option<Vec<String>>,
        fulcio: Option<serde_json::Value>,
        rekor_public_key_path: Option<String>,
        rekor_public_key_paths: Option<Vec<String>>,
        rekor_public_key_data: Option<String>,
        rekor_public_key_datas: Option<Vec<String>>,
        pki: Option<serde_json::Value>,
        signed_identity: Option<SignedIdentity>,
    },
}

/// One requirement, as this pull enforces it.
#[derive(Debug, Clone)]
pub(crate) enum Requirement {
    /// `insecureAcceptAnything`.
    Accept,
    /// `reject`.
    Reject,
    /// `sigstoreSigned` with public keys: a signature by any of them, claiming an identity
    /// `identity` accepts, for the image's manifest digest.
    Sigstore {
        /// The keys, or why they cannot be loaded.
        keys: Result<Vec<PublicKey>, String>,
        /// The identity rule.
        identity: SignedIdentity,
    },
    /// A requirement this pull cannot enforce, with the field that says why.
    Unsupported(String),
}

/// The policy, ready to answer for an image.
#[derive(Debug, Clone)]
pub(crate) struct TrustPolicy {
    default: Vec<Requirement>,
    docker: BTreeMap<String, Vec<Requirement>>,
}

/// The scope names containers/image tries for `image`, most specific first (without the
/// transport's `""` and the global default).
pub(crate) fn docker_scopes(image: &ImageRef) -> Vec<String> {
    let mut scopes = vec![image.to_string()];
    let mut name = image.name();
    loop {
        scopes.push(name.clone());
        match name.rfind('/') {
            Some(i) => name.truncate(i),
            None => break,
        }
    }
    // The host's parent domains as wildcards; a port never takes part.
    let mut host = name.split(':').next().unwrap_or_default().to_owned();
    while let Some(i) = host.find('.') {
        host = host[i + 1..].to_owned();
        scopes.push(format!("*.{host}"));
    }
    scopes
}

impl TrustPolicy {
    /// Reads `path`; a missing file is an error, as for podman and skopeo.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let err = |why: String| PolicyError {
            path: path.display().to_string(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(format!(
                "{e}; every node needs one (containers-policy.json(5)); RHCOS ships it"
            ))
        })?;
        Self::parse(&text, path).map_err(err)
    }

    /// Parses policy.json text; `path` resolves relative key paths (as containers/image
    /// does, against the policy file's directory).
    pub fn parse(text: &str, path: &Path) -> Result<Self, String> {
        let raw: RawPolicy = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if raw.default.is_empty() {
            return Err(
                "\"default\" has no requirement; use [{\"type\": \"reject\"}] to reject".into(),
            );
        }
        let base = path.parent().unwrap_or(Path::new("/"));
        let reqs = |scope: &str, list: &[RawRequirement]| -> Result<Vec<Requirement>, String> {
            if list.is_empty() {
                return Err(format!("scope {scope:?} has no requirement"));
            }
            Ok(list.iter().map(|r| requirement(r, base)).collect())
        };
        let default = reqs("default", &raw.default)?;
        let mut docker = BTreeMap::new();
        for (transport, scopes) in &raw.transports {
            for (scope, list) in scopes {
                let r = reqs(scope, list)?;
                if transport == "docker" {
                    docker.insert(scope.clone(), r);
                }
            }
        }
        Ok(Self { default, docker })
    }

    /// The requirements that apply to `image` and the name of the scope they come from
    /// (`transports.docker["quay.io/acme"]`, or `default`).
    pub fn requirements_for(&self, image: &ImageRef) -> (String, &[Requirement]) {
        for scope in docker_scopes(image).iter().chain([&String::new()]) {
            if let Some(r) = self.docker.get(scope) {
                return (format!("transports.docker[{scope:?}]"), r);
            }
        }
        ("default".into(), &self.default)
    }
}

fn requirement(raw: &RawRequirement, base: &Path) -> Requirement {
    match raw {
        RawRequirement::InsecureAcceptAnything {} => Requirement::Accept,
        RawRequirement::Reject {} => Requirement::Reject,
        RawRequirement::SignedBy { .. } => Requirement::Unsupported(
            "signedBy (GPG simple signing) is not supported by kmod-day1-pull; use sigstoreSigned with a public key".into(),
        ),
        RawRequirement::SigstoreSigned {
            key_path,
            key_paths,
            key_data,
            key_datas,
            fulcio,
            rekor_public_key_path,
            rekor_public_key_paths,
            rekor_public_key_data,
            rekor_public_key_datas,
            pki,
            signed_identity,
        } => {
            let unsupported = [
                ("fulcio", fulcio.is_some()),
                ("rekorPublicKeyPath", rekor_public_key_path.is_some()),
                ("rekorPublicKeyPaths", rekor_public_key_paths.is_some()),
                ("rekorPublicKeyData", rekor_public_key_data.is_some()),
                ("rekorPublicKeyDatas", rekor_public_key_datas.is_some()),
                ("pki", pki.is_some()),
            ];
            if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
                return Requirement::Unsupported(format!(
                    "sigstoreSigned with {field} is not supported by kmod-day1-pull (it would need a Fulcio/Rekor/PKI verification it does not do); use public keys (keyPath, keyPaths, keyData, keyDatas)"
                ));
            }
            Requirement::Sigstore {
                keys: load_keys(
                    key_path.as_deref(),
                    key_paths.as_deref(),
                    key_data.as_deref(),
                    key_datas.as_deref(),
                    base,
                ),
                identity: signed_identity.clone().unwrap_or_default(),
            }
        }
    }
}

/// Exactly one of the four key fields, as containers/image requires.
fn load_keys(
    path: Option<&str>,
    paths: Option<&[String]>,
    data: Option<&str>,
    datas: Option<&[String]>,
    base: &Path,
) -> Result<Vec<PublicKey>, String> {
    let set = [
        path.is_some(),
        paths.is_some(),
        data.is_some(),
        datas.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        return Err(
            "sigstoreSigned needs exactly one of keyPath, keyPaths, keyData, keyDatas".into(),
        );
    }
    let from_file = |p: &str| -> Result<PublicKey, String> {
        let full = base.join(p);
        let pem = std::fs::read(&full).map_err(|e| format!("reading {}: {e}", full.display()))?;
        PublicKey::from_pem(&pem).map_err(|e| format!("{}: {e}", full.display()))
    };
    let from_data = |d: &str| -> Result<PublicKey, String> {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(d.trim())
            .map_err(|e| format!("keyData is not base64: {e}"))?;
        PublicKey::from_pem(&pem).map_err(|e| format!("keyData: {e}"))
    };
    let keys: Vec<PublicKey> = match (path, paths, data, datas) {
        (Some(p), ..) => vec![from_file(p)?],
        (_, Some(ps), ..) => ps.iter().map(|p| from_file(p)).collect::<Result<_, _>>()?,
        (_, _, Some(d), _) => vec![from_data(d)?],
        (_, _, _, Some(ds)) => ds.iter().map(|d| from_data(d)).collect::<Result<_, _>>()?,
        _ => vec![],
    };
    if keys.is_empty() {
        return Err("sigstoreSigned names no key".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    #[test]
    fn scopes_most_specific_first() {
        assert_eq!(
            docker_scopes(&img("reg.example.com:5000/acme/kmod/ice:v1")),
            [
                "reg.example.com:5000/acme/kmod/ice:v1",
                "reg.example.com:5000/acme/kmod/ice",
                "reg.example.com:5000/acme/kmod",
                "reg.example.com:5000/acme",
                "reg.example.com:5000",
                "*.example.com",
                "*.com",
            ]
        );
    }

    #[test]
    fn the_most_specific_scope_wins_then_the_transport_default_then_default() {
        let p = TrustPolicy::parse(
            r#"{"default": [{"type": "reject"}],
                "transports": {"docker": {
                    "quay.io/acme": [{"type": "insecureAcceptAnything"}],
                    "quay.io/acme/ice": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k"}],
                    "*.example.com": [{"type": "insecureAcceptAnything"}]
                }, "docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}}}"#,
            Path::new("/etc/containers/policy.json"),
        )
        .unwrap();
        let (scope, r) = p.requirements_for(&img("quay.io/acme/ice:v1"));
        assert_eq!(scope, r#"transports.docker["quay.io/acme/ice"]"#);
        assert!(matches!(r[0], Requirement::Unsupported(_)));
        let (scope, r) = p.requirements_for(&img("quay.io/acme/e1000:v1"));
        assert_eq!(scope, r#"transports.docker["quay.io/acme"]"#);
        assert!(matches!(r[0], Requirement::Accept));
        let (scope, _) = p.requirements_for(&img("reg.example.com/x:1"));
        assert_eq!(scope, r#"transports.docker["*.example.com"]"#);
        let (scope, r) = p.requirements_for(&img("docker.io/library/busybox:1"));
        assert_eq!(scope, "default");
        assert!(matches!(r[0], Requirement::Reject));
    }

    #[test]
    fn bad_policies_and_unsupported_fields() {
        let parse = |t: &str| TrustPolicy::parse(t, Path::new("/etc/containers/policy.json"));
        assert!(parse("{").is_err());
        assert!(parse(r#"{"default": []}"#).is_err());
        assert!(parse(r#"{"default": [{"type": "accept"}]}"#).is_err());
        assert!(parse(r#"{"default": [{"type": "reject", "x": 1}]}"#).is_err());
        assert!(parse(r#"{"default": [{"type": "reject"}], "other": 1}"#).is_err());
        let p = parse(
            r#"{"default": [{"type": "sigstoreSigned", "keyData": "eA==", "rekorPublicKeyData": "eA=="}]}"#,
        )
        .unwrap();
        let (_, r) = p.requirements_for(&img("a.io/b:1"));
        let Requirement::Unsupported(why) = &r[0] else {
            panic!("{r:?}")
        };
        assert!(why.contains("rekorPublicKeyData"), "{why}");
        let p = parse(
            r#"{"default": [{"type": "sigstoreSigned", "keyPath": "k.pub", "keyData": "eA=="}]}"#,
        )
        .unwrap();
        let (_, r) = p.requirements_for(&img("a.io/b:1"));
        let Requirement::Sigstore { keys: Err(why), .. } = &r[0] else {
            panic!("{r:?}")
        };
        assert!(why.contains("exactly one"), "{why}");
    }
}
