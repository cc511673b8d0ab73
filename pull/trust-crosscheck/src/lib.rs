// SPDX-License-Identifier: Apache-2.0
//! Test only, nothing to link: the `sigstore` crate, an independent and maintained cosign
//! verifier, checks the signatures of kmod-day1-pull's trust policy matrix
//! (`pull/tests/trust_policy.rs`). Both push the same images, with signatures in cosign's
//! attachment format written by the test registry's `cosign` module (keys and signatures by
//! the `openssl` command), to Debian's real `docker-registry`; kmod-day1-pull verifies them
//! with its own code on ring, this crate's test with sigstore. The writer and the two checkers
//! would have to make the same mistake for a wrong verdict to pass.
//!
//! What it covers: the key, the payload's `docker-manifest-digest` against the image's digest,
//! and the format (the `sha256-<hex>.sig` tag, the simple-signing layer and its
//! `dev.cosignproject.cosign/signature` annotation). What it does not: `signedIdentity` (the
//! payload's `docker-reference` against the image's name) is a rule of containers/image's
//! policy.json, not of cosign, so identity cases are expected verified here and rejected by the
//! policy there; sigstore's parse of the identity is still printed and compared with what was
//! written.
//!
//! One crate so that sigstore's dependency tree (the cosign client and aws-lc) is built once,
//! for tests only: see `tests/sigstore_docker_registry.rs`.
