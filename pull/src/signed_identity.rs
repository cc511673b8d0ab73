// SPDX-License-Identifier: Apache-2.0
//! `signedIdentity` of a policy requirement (containers-policy.json(5)): which identity a
//! signature must claim (`critical.identity.docker-reference`) for the image as the config
//! names it. The rules follow containers/image's reference matching.

use kmod_day1_contract::ImageRef;
use serde::Deserialize;

/// How a signature's claimed identity must relate to the image.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub(crate) enum SignedIdentity {
    /// The same reference, tag or digest included. (`{}`: so that unknown fields are refused.)
    MatchExact {},
    /// A digest reference: the same repository; a tag: the same reference. The default.
    MatchRepoDigestOrExact {},
    /// The same repository, whatever the tag or digest.
    MatchRepository {},
    /// Exactly this reference, whatever the image is.
    #[serde(rename_all = "camelCase")]
    ExactReference {
        /// The reference the signature must claim.
        docker_reference: String,
    },
    /// This repository, whatever the image is.
    #[serde(rename_all = "camelCase")]
    ExactRepository {
        /// The repository the signature must claim.
        docker_repository: String,
    },
    /// The image's `prefix` replaced by `signedPrefix`, then as `matchRepoDigestOrExact`.
    #[serde(rename_all = "camelCase")]
    RemapIdentity {
        /// A prefix of the image's name.
        prefix: String,
        /// What the signature claims in its place.
        signed_prefix: String,
    },
}

impl Default for SignedIdentity {
    fn default() -> Self {
        Self::MatchRepoDigestOrExact {}
    }
}

fn same_reference(a: &ImageRef, b: &ImageRef) -> bool {
    a.name() == b.name() && a.tag == b.tag && a.digest == b.digest
}

fn name_only(r: &ImageRef) -> bool {
    r.tag.is_none() && r.digest.is_none()
}

impl SignedIdentity {
    /// Whether a signature claiming `claimed` (the payload's `docker-reference`) is good for
    /// `image`. A claim that does not parse matches nothing.
    pub fn matches(&self, image: &ImageRef, claimed: &str) -> bool {
        let Ok(signature) = ImageRef::parse(claimed) else {
            return false;
        };
        match self {
            Self::MatchExact {} => {
                !name_only(image) && !name_only(&signature) && same_reference(image, &signature)
            }
            Self::MatchRepoDigestOrExact {} => repo_digest_or_exact(image, &signature),
            Self::MatchRepository {} => image.name() == signature.name(),
            Self::ExactReference { docker_reference } => ImageRef::parse(docker_reference)
                .is_ok_and(|want| {
                    !name_only(&want) && !name_only(&signature) && same_reference(&want, &signature)
                }),
            Self::ExactRepository { docker_repository } => {
                ImageRef::parse(docker_repository).is_ok_and(|want| want.name() == signature.name())
            }
            Self::RemapIdentity {
                prefix,
                signed_prefix,
            } => {
                let remapped = match remap(image, prefix, signed_prefix) {
                    Some(Ok(r)) => r,
                    Some(Err(())) => return false,
                    None => image.clone(),
                };
                repo_digest_or_exact(&remapped, &signature)
            }
        }
    }
}

fn repo_digest_or_exact(image: &ImageRef, signature: &ImageRef) -> bool {
    if name_only(signature) {
        return false;
    }
    if image.tag.is_some() {
        same_reference(image, signature)
    } else if image.digest.is_some() {
        image.name() == signature.name()
    } else {
        false
    }
}

/// `image` with `prefix` replaced by `signed_prefix`, when the prefix matches at a name
/// boundary (`None`: it does not match; `Err`: the result is not a reference).
fn remap(image: &ImageRef, prefix: &str, signed_prefix: &str) -> Option<Result<ImageRef, ()>> {
    let name = image.name();
    let rest = name.strip_prefix(prefix)?;
    if !(rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/')) {
        return None;
    }
    let mut text = format!("{signed_prefix}{rest}");
    if let Some(t) = &image.tag {
        text.push(':');
        text.push_str(t);
    }
    if let Some(d) = &image.digest {
        text.push('@');
        text.push_str(d);
    }
    Some(ImageRef::parse(&text).map_err(|_| ()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn img(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    #[test]
    fn each_identity_rule() {
        let tagged = img("quay.io/acme/ice:v1");
        let pinned = img(&format!("quay.io/acme/ice@{D}"));
        let def = SignedIdentity::default();
        assert!(def.matches(&tagged, "quay.io/acme/ice:v1"));
        assert!(!def.matches(&tagged, "quay.io/acme/ice:v2"));
        // A cosign-style identity without a tag never matches the default rule.
        assert!(!def.matches(&tagged, "quay.io/acme/ice"));
        assert!(!def.matches(&pinned, "quay.io/acme/ice"));
        assert!(def.matches(&pinned, "quay.io/acme/ice:whatever"));
        assert!(!def.matches(&pinned, "quay.io/other/ice:v1"));

        let exact = SignedIdentity::MatchExact {};
        assert!(exact.matches(&tagged, "quay.io/acme/ice:v1"));
        assert!(!exact.matches(&pinned, "quay.io/acme/ice:v1"));

        let repo = SignedIdentity::MatchRepository {};
        assert!(repo.matches(&tagged, "quay.io/acme/ice"));
        assert!(repo.matches(&pinned, "quay.io/acme/ice:v9"));
        assert!(!repo.matches(&tagged, "quay.io/acme/ice2"));

        let exact_repo = SignedIdentity::ExactRepository {
            docker_repository: "quay.io/signed/ice".into(),
        };
        assert!(exact_repo.matches(&tagged, "quay.io/signed/ice:x"));
        assert!(!exact_repo.matches(&tagged, "quay.io/acme/ice:v1"));

        let exact_ref = SignedIdentity::ExactReference {
            docker_reference: "quay.io/signed/ice:v1".into(),
        };
        assert!(exact_ref.matches(&tagged, "quay.io/signed/ice:v1"));
        assert!(!exact_ref.matches(&tagged, "quay.io/signed/ice"));

        let remap = SignedIdentity::RemapIdentity {
            prefix: "mirror.local/acme".into(),
            signed_prefix: "quay.io/acme".into(),
        };
        assert!(remap.matches(&img("mirror.local/acme/ice:v1"), "quay.io/acme/ice:v1"));
        assert!(!remap.matches(&img("mirror.local/acme/ice:v1"), "mirror.local/acme/ice:v2"));
        // Not at a name boundary: no remapping.
        assert!(remap.matches(
            &img("mirror.local/acmex/ice:v1"),
            "mirror.local/acmex/ice:v1"
        ));
        assert!(!def.matches(&tagged, "not a reference"));
    }

    #[test]
    fn parses_as_containers_policy_json_writes_it() {
        let p: SignedIdentity = serde_json::from_str(
            r#"{"type": "remapIdentity", "prefix": "a.io/x", "signedPrefix": "b.io/y"}"#,
        )
        .unwrap();
        assert!(matches!(p, SignedIdentity::RemapIdentity { .. }));
        assert!(
            serde_json::from_str::<SignedIdentity>(r#"{"type": "matchExact", "x": 1}"#).is_err()
        );
        assert!(serde_json::from_str::<SignedIdentity>(r#"{"type": "nope"}"#).is_err());
    }
}
