// SPDX-License-Identifier: Apache-2.0
//! Signatures in cosign's attachment format, for tests of image trust policies: a key pair
//! and signatures made by the `openssl` command (not by the code under test, which verifies
//! with ring), packed as cosign packs them: an OCI manifest tagged `sha256-<hex>.sig` in the
//! image's repository, one `application/vnd.dev.cosign.simplesigning.v1+json` layer per
//! signature holding the payload, the base64 signature in the layer's
//! `dev.cosignproject.cosign/signature` annotation.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;

use crate::digest::sha256_digest;
use crate::image::{BuiltImage, BuiltLayer, OCI_CONFIG, OCI_MANIFEST};

/// The payload layer's media type.
pub const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding the signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// An ECDSA P-256 key pair in PEM files (as `cosign generate-key-pair` makes), by openssl.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// The private key (PKCS#8 PEM).
    pub private: PathBuf,
    /// The public key (SubjectPublicKeyInfo PEM).
    pub public: PathBuf,
}

fn openssl(args: &[&str], stdin: Option<&[u8]>) -> io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        child.stdin.take().expect("stdin").write_all(input)?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out.stdout)
}

impl KeyPair {
    /// A new P-256 key pair named `name` in `dir`.
    pub fn generate(dir: &Path, name: &str) -> io::Result<Self> {
        let private = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        let p = private.to_str().expect("UTF-8 path");
        openssl(
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                p,
            ],
            None,
        )?;
        openssl(
            &[
                "pkey",
                "-in",
                p,
                "-pubout",
                "-out",
                public.to_str().expect("UTF-8 path"),
            ],
            None,
        )?;
        Ok(Self { private, public })
    }

    /// The public key PEM.
    pub fn public_pem(&self) -> io::Result<Vec<u8>> {
        std::fs::read(&self.public)
    }

    /// A DER ECDSA signature of SHA-256(`data`), base64, as cosign writes it.
    pub fn sign(&self, data: &[u8]) -> io::Result<String> {
        let sig = openssl(
            &[
                "dgst",
                "-sha256",
                "-sign",
                self.private.to_str().expect("UTF-8 path"),
            ],
            Some(data),
        )?;
        Ok(base64::engine::general_purpose::STANDARD.encode(sig))
    }
}

/// cosign's simple-signing payload for `docker_reference` and `manifest_digest`.
pub fn payload(docker_reference: &str, manifest_digest: &str) -> Vec<u8> {
    serde_json::json!({
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": "cosign container image signature"
        },
        "optional": null
    })
    .to_string()
    .into_bytes()
}

/// One signature: the payload and its base64 signature.
#[derive(Debug, Clone)]
pub struct Signature {
    /// The payload blob.
    pub payload: Vec<u8>,
    /// The annotation value.
    pub signature: String,
}

impl Signature {
    /// `key` signs `payload`.
    pub fn new(key: &KeyPair, payload: Vec<u8>) -> io::Result<Self> {
        let signature = key.sign(&payload)?;
        Ok(Self { payload, signature })
    }
}

/// The tag cosign gives the signatures of `digest`.
pub fn signature_tag(digest: &str) -> String {
    format!("sha256-{}.sig", digest.trim_start_matches("sha256:"))
}

/// The signature image (manifest, config, one layer per signature), ready to push under
/// [`signature_tag`].
pub fn signature_image(signatures: &[Signature]) -> BuiltImage {
    let layers: Vec<BuiltLayer> = signatures
        .iter()
        .map(|s| BuiltLayer {
            media_type: SIMPLESIGNING.into(),
            digest: sha256_digest(&s.payload),
            diff_id: sha256_digest(&s.payload),
            bytes: s.payload.clone(),
        })
        .collect();
    let config = serde_json::json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()}
    })
    .to_string()
    .into_bytes();
    let config_digest = sha256_digest(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": signatures.iter().zip(&layers).map(|(s, l)| serde_json::json!({
            "mediaType": SIMPLESIGNING,
            "digest": l.digest,
            "size": l.bytes.len(),
            "annotations": {SIGNATURE_ANNOTATION: s.signature},
        })).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes();
    BuiltImage {
        digest: sha256_digest(&manifest),
        manifest,
        media_type: OCI_MANIFEST.into(),
        config,
        config_digest,
        layers,
        os: String::new(),
        architecture: String::new(),
        variant: None,
    }
}
