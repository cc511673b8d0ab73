// SPDX-License-Identifier: Apache-2.0
//! Sigstore signatures in cosign's attachment format, checked as containers/image checks
//! them for a `sigstoreSigned` requirement with public keys:
//!
//! 1. the signature (the layer's `dev.cosignproject.cosign/signature` annotation, base64)
//!    verifies over the payload blob with one of the keys (ECDSA P-256 or P-384, Ed25519, or
//!    RSA PKCS#1 v1.5; SHA-256 as cosign signs);
//! 2. only then is the payload read, strictly: `critical` (exactly `type`, `image`,
//!    `identity`) and `optional`; the type is `cosign container image signature`;
//! 3. its `docker-manifest-digest` is the digest the image reference resolved to;
//! 4. its `docker-reference` satisfies the requirement's `signedIdentity`.

use base64::Engine as _;
use kmod_day1_contract::ImageRef;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use serde::Deserialize;
use spki::der::asn1::ObjectIdentifier;
use spki::der::DecodePem as _;

use crate::signed_identity::SignedIdentity;
use crate::verify::Digest;

/// The media type of a cosign simple-signing payload layer.
pub(crate) const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation that holds the signature.
pub(crate) const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const SIGNATURE_TYPE: &str = "cosign container image signature";

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const ID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// A public key of a `sigstoreSigned` requirement.
#[derive(Clone)]
pub(crate) struct PublicKey {
    algorithm: &'static dyn VerificationAlgorithm,
    /// The key in the form `ring` takes (EC point, Ed25519 key, RSAPublicKey DER).
    bytes: Vec<u8>,
    kind: &'static str,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.kind)
    }
}

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as `cosign generate-key-pair` writes.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(pem).map_err(|_| "the key is not PEM text".to_string())?;
        let spki = spki::SubjectPublicKeyInfoOwned::from_pem(text.trim())
            .map_err(|e| format!("not a PEM public key (SubjectPublicKeyInfo): {e}"))?;
        let bytes = spki
            .subject_public_key
            .as_bytes()
            .ok_or("the public key has unused bits")?
            .to_vec();
        let oid = spki.algorithm.oid;
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        let (algorithm, kind): (&'static dyn VerificationAlgorithm, _) = if oid == ID_EC_PUBLIC_KEY
        {
            match curve {
                Some(c) if c == SECP256R1 => (&signature::ECDSA_P256_SHA256_ASN1, "ECDSA P-256"),
                Some(c) if c == SECP384R1 => (&signature::ECDSA_P384_SHA256_ASN1, "ECDSA P-384"),
                other => return Err(format!("unsupported elliptic curve {other:?}")),
            }
        } else if oid == ID_ED25519 {
            (&signature::ED25519, "Ed25519")
        } else if oid == RSA_ENCRYPTION {
            (&signature::RSA_PKCS1_2048_8192_SHA256, "RSA")
        } else {
            return Err(format!("unsupported public key algorithm {oid}"));
        };
        Ok(Self {
            algorithm,
            bytes,
            kind,
        })
    }

    fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(self.algorithm, &self.bytes)
            .verify(message, sig)
            .is_ok()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    critical: Critical,
    // Required, and may be null (cosign writes null without annotations); not used.
    #[serde(rename = "optional")]
    _optional: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Critical {
    #[serde(rename = "type")]
    kind: String,
    image: CriticalImage,
    identity: CriticalIdentity,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CriticalImage {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CriticalIdentity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

/// What a `sigstoreSigned` requirement asks of one signature.
pub(crate) struct SigstoreCheck<'a> {
    /// The requirement's keys (any of them).
    pub keys: &'a [PublicKey],
    /// The requirement's identity rule.
    pub identity: &'a SignedIdentity,
    /// The image as the config names it.
    pub image: &'a ImageRef,
    /// The digest the reference resolved to (the index's, for an index).
    pub digest: &'a Digest,
}

impl SigstoreCheck<'_> {
    /// Checks one signature: `payload` (the blob) and `signature_b64` (the annotation).
    /// `Err` says why it does not satisfy the requirement.
    pub fn check(&self, payload: &[u8], signature_b64: &str) -> Result<(), String> {
        let sig = base64::engine::general_purpose::STANDARD
            .decode(signature_b64.trim())
            .map_err(|e| format!("the signature annotation is not base64: {e}"))?;
        let Some(key) = self.keys.iter().find(|k| k.verifies(payload, &sig)) else {
            return Err(format!(
                "the signature does not verify with the policy's key{}",
                if self.keys.len() > 1 { "s" } else { "" }
            ));
        };
        // Only a verified payload is parsed.
        let p: Payload = serde_json::from_slice(payload).map_err(|e| {
            format!("the signed payload is not a cosign simple-signing payload: {e}")
        })?;
        if p.critical.kind != SIGNATURE_TYPE {
            return Err(format!(
                "the signed payload has type {:?}, not {SIGNATURE_TYPE:?}",
                p.critical.kind
            ));
        }
        if p.critical.image.docker_manifest_digest != self.digest.as_str() {
            return Err(format!(
                "the signature is for {}, not for {} (what {} resolves to)",
                p.critical.image.docker_manifest_digest, self.digest, self.image
            ));
        }
        let claimed = &p.critical.identity.docker_reference;
        if !self.identity.matches(self.image, claimed) {
            return Err(format!(
                "the signature claims identity {claimed:?}, which signedIdentity {:?} does not accept for {}",
                self.identity, self.image
            ));
        }
        tracing::debug!(key = key.kind, identity = claimed, "signature verified");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};

    /// A P-256 key pair made by ring, its public half wrapped as PEM by hand (SPKI prefix).
    fn key_pair() -> (EcdsaKeyPair, PublicKey) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        // SEQUENCE { SEQUENCE { ecPublicKey, prime256v1 }, BIT STRING point }
        let mut der = hex_bytes("3059301306072a8648ce3d020106082a8648ce3d030107034200");
        der.extend_from_slice(pair.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        );
        (pair, PublicKey::from_pem(pem.as_bytes()).unwrap())
    }

    fn hex_bytes(h: &str) -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    }

    fn payload(reference: &str, digest: &str) -> Vec<u8> {
        serde_json::json!({
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": digest},
                "type": SIGNATURE_TYPE
            },
            "optional": null
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_signature_is_checked_key_then_payload_digest_and_identity() {
        let (pair, key) = key_pair();
        let (_, other) = key_pair();
        let rng = SystemRandom::new();
        let digest = Digest::of(b"manifest");
        let image = ImageRef::parse("reg.local/acme/ice:v1").unwrap();
        let identity = SignedIdentity::default();
        let keys = [key.clone()];
        let check = SigstoreCheck {
            keys: &keys,
            identity: &identity,
            image: &image,
            digest: &digest,
        };
        let sign = |p: &[u8]| {
            base64::engine::general_purpose::STANDARD.encode(pair.sign(&rng, p).unwrap().as_ref())
        };
        let good = payload("reg.local/acme/ice:v1", digest.as_str());
        check.check(&good, &sign(&good)).unwrap();

        let wrong_key = [other];
        let e = SigstoreCheck {
            keys: &wrong_key,
            ..check
        }
        .check(&good, &sign(&good))
        .unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        let other_digest = payload("reg.local/acme/ice:v1", Digest::of(b"x").as_str());
        let e = check
            .check(&other_digest, &sign(&other_digest))
            .unwrap_err();
        assert!(e.contains("not for"), "{e}");
        let no_tag = payload("reg.local/acme/ice", digest.as_str());
        let e = check.check(&no_tag, &sign(&no_tag)).unwrap_err();
        assert!(e.contains("claims identity"), "{e}");
        let mut tampered = good.clone();
        tampered[10] ^= 1;
        assert!(check.check(&tampered, &sign(&good)).is_err());
        let extra = serde_json::to_vec(&serde_json::json!({
            "critical": {"identity": {"docker-reference": "reg.local/acme/ice:v1"},
                         "image": {"docker-manifest-digest": digest.as_str()},
                         "type": SIGNATURE_TYPE, "extra": 1},
            "optional": null
        }))
        .unwrap();
        assert!(check.check(&extra, &sign(&extra)).is_err());
        assert!(check.check(&good, "not base64!").is_err());
    }

    #[test]
    fn keys_that_cannot_be_used_are_refused_at_load() {
        assert!(PublicKey::from_pem(b"garbage").is_err());
        assert!(PublicKey::from_pem(
            b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VuAyEA3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=\n-----END PUBLIC KEY-----\n"
        )
        .is_err());
    }
}
