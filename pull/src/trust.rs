// SPDX-License-Identifier: Apache-2.0
//! The trust stage of a pull, between resolving an image and fetching any of its blobs: the
//! node's policy.json requirements for the image as the config names it (also when a
//! mirror serves it), with its signatures read from the source that serves it. A rejected
//! image commits nothing and never reboots; the error names the scope and the requirement.

use kmod_day1_contract::ImageRef;
use serde::Deserialize;

use crate::fetch::{FetchError, Repo};
use crate::policy::{Requirement, TrustPolicy};
use crate::registries_d::RegistriesD;
use crate::retry::{with_retries, RetryPolicy};
use crate::sigstore::{SigstoreCheck, PAYLOAD_MEDIA_TYPE, SIGNATURE_ANNOTATION};
use crate::verify::Digest;

/// Most signatures read for one image.
const MAX_SIGNATURES: usize = 32;
/// Largest signature payload read (containers/image's limit for signature bodies).
const MAX_PAYLOAD: usize = 4 << 20;

/// The node's trust configuration: policy.json and registries.d.
#[derive(Debug, Clone)]
pub(crate) struct Trust {
    /// policy.json.
    pub policy: TrustPolicy,
    /// registries.d.
    pub registries_d: RegistriesD,
}

/// Why an image is not trusted, or why that could not be decided.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TrustError {
    /// The policy rejects the image.
    #[error("{0}")]
    Rejected(String),
    /// Reading its signatures failed.
    #[error("reading the signatures of {image}: {source}")]
    Fetch {
        /// The image.
        image: String,
        /// What failed.
        source: FetchError,
    },
}

#[derive(Deserialize)]
struct SignatureManifest {
    #[serde(default)]
    layers: Vec<SignatureLayer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignatureLayer {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

impl Trust {
    /// Checks `image` (as the config names it), resolved to `digest` and served by `repo`,
    /// against every requirement of its scope. `Ok` says how it was accepted.
    pub async fn check(
        &self,
        image: &ImageRef,
        digest: &Digest,
        repo: &mut Repo<'_>,
        retry: &RetryPolicy,
    ) -> Result<String, TrustError> {
        let (scope, requirements) = self.policy.requirements_for(image);
        let reject = |why: String| {
            TrustError::Rejected(format!(
                "the node's image trust policy rejects {image}: {scope}: {why}"
            ))
        };
        let mut signatures: Option<Vec<(Vec<u8>, String)>> = None;
        let mut accepted = vec![];
        for requirement in requirements {
            match requirement {
                Requirement::Accept => accepted.push("insecureAcceptAnything"),
                Requirement::Reject => return Err(reject("reject".into())),
                Requirement::Unsupported(why) => return Err(reject(why.clone())),
                Requirement::Sigstore { keys, identity } => {
                    let keys = keys
                        .as_ref()
                        .map_err(|e| reject(format!("sigstoreSigned: {e}")))?;
                    if !self.registries_d.use_sigstore_attachments(image) {
                        return Err(reject(
                            "sigstoreSigned, but registries.d does not set use-sigstore-attachments for this image, so its signatures are not read; set it in /etc/containers/registries.d".into(),
                        ));
                    }
                    if signatures.is_none() {
                        signatures = Some(read_signatures(repo, digest, retry).await.map_err(
                            |source| TrustError::Fetch {
                                image: image.to_string(),
                                source,
                            },
                        )?);
                    }
                    let sigs = signatures.as_deref().unwrap_or_default();
                    if sigs.is_empty() {
                        return Err(reject(format!(
                            "sigstoreSigned, but {} has no signature for {digest}",
                            repo.image().name()
                        )));
                    }
                    let check = SigstoreCheck {
                        keys,
                        identity,
                        image,
                        digest,
                    };
                    let mut why_not = vec![];
                    if !sigs
                        .iter()
                        .any(|(payload, sig)| match check.check(payload, sig) {
                            Ok(()) => true,
                            Err(e) => {
                                why_not.push(e);
                                false
                            }
                        })
                    {
                        return Err(reject(format!(
                            "sigstoreSigned: no signature satisfies it ({})",
                            why_not.join("; ")
                        )));
                    }
                    accepted.push("sigstoreSigned");
                }
            }
        }
        Ok(format!("{scope}: {}", accepted.join(", ")))
    }
}

/// The sigstore attachments of `digest` in `repo` (`sha256-<hex>.sig`): payload and
/// signature of each; none when the tag does not exist.
async fn read_signatures(
    repo: &mut Repo<'_>,
    digest: &Digest,
    retry: &RetryPolicy,
) -> Result<Vec<(Vec<u8>, String)>, FetchError> {
    let tag = format!("sha256-{}.sig", digest.hex());
    let what = format!("reading signatures {}:{tag}", repo.image().name());
    let manifest = with_retries(retry, &what, async || match repo.manifest(&tag).await {
        Ok((body, _)) => Ok(Some(body)),
        Err(FetchError::Status { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    })
    .await?;
    let Some(body) = manifest else {
        return Ok(vec![]);
    };
    let m: SignatureManifest = serde_json::from_slice(&body).map_err(|e| {
        FetchError::Invalid(format!("{what}: not an OCI manifest of signatures: {e}"))
    })?;
    let mut out = vec![];
    for layer in m
        .layers
        .iter()
        .filter(|l| l.media_type == PAYLOAD_MEDIA_TYPE)
        .take(MAX_SIGNATURES)
    {
        let Some(sig) = layer.annotations.get(SIGNATURE_ANNOTATION) else {
            continue;
        };
        let d = Digest::parse(&layer.digest)
            .map_err(|e| FetchError::Invalid(format!("{what}: a layer: {e}")))?;
        let payload = with_retries(retry, &what, async || {
            repo.small_blob(&d, MAX_PAYLOAD).await
        })
        .await?;
        out.push((payload, sig.clone()));
    }
    Ok(out)
}
