// SPDX-License-Identifier: Apache-2.0
//! Pull secrets in the `auths` format of `/var/lib/kubelet/config.json` (and
//! `~/.docker/config.json`, `auth.json`): `{"auths": {"quay.io/org": {"auth": "<base64 user:pass>"}}}`.
//!
//! The most specific key wins: `quay.io/org/repo`, then `quay.io/org`, then `quay.io`, as in
//! containers-auth.json(5). A missing file means anonymous pulls.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use kmod_day1_contract::ImageRef;
use serde::Deserialize;

/// User name and password for a registry (basic auth, or the credentials a bearer token
/// service is asked with).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({}, <redacted>)", self.username)
    }
}

/// A pull secret that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("pull secret {path}: {message}; fix the file or remove it for anonymous pulls")]
pub struct PullSecretError {
    /// The file.
    pub path: String,
    /// What is wrong (never the secret itself).
    pub message: String,
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(default)]
    auths: BTreeMap<String, RawEntry>,
}

#[derive(Deserialize)]
struct RawEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// The credentials of one pull secret file.
#[derive(Debug, Clone, Default)]
pub struct PullSecret {
    entries: Vec<(String, Credential)>,
}

impl PullSecret {
    /// Reads `path`; a missing file holds no credentials.
    pub fn load(path: &Path) -> Result<Self, PullSecretError> {
        let err = |message: String| PullSecretError {
            path: path.display().to_string(),
            message,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(err),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(err(format!("cannot be read: {e}"))),
        }
    }

    /// Parses the JSON text. Errors never quote the secret.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: RawFile = serde_json::from_str(text).map_err(|e| {
            format!(
                "is not an auths JSON file (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        let mut entries = vec![];
        for (key, e) in raw.auths {
            let cred = match (e.auth, e.username, e.password) {
                (Some(a), _, _) if !a.is_empty() => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(a.trim())
                        .map_err(|_| format!("the auth of {key:?} is not base64"))?;
                    let text = String::from_utf8(bytes)
                        .map_err(|_| format!("the auth of {key:?} is not UTF-8"))?;
                    let (u, p) = text.split_once(':').ok_or_else(|| {
                        format!("the auth of {key:?} is not base64 of user:password")
                    })?;
                    Credential {
                        username: u.to_owned(),
                        password: p.to_owned(),
                    }
                }
                (_, Some(u), Some(p)) => Credential {
                    username: u,
                    password: p,
                },
                // Entries without credentials (identity tokens, helpers) are not usable.
                _ => continue,
            };
            entries.push((normalize_key(&key), cred));
        }
        Ok(Self { entries })
    }

    /// The credential for `image`: the longest key that is its registry or a path prefix
    /// of `registry/repository`.
    pub fn lookup(&self, image: &ImageRef) -> Option<&Credential> {
        let name = image.name();
        self.entries
            .iter()
            .filter(|(k, _)| name == *k || name.starts_with(&format!("{k}/")))
            .max_by_key(|(k, _)| k.len())
            .map(|(_, c)| c)
    }
}

fn normalize_key(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let k = k
        .strip_suffix("/v1")
        .or_else(|| k.strip_suffix("/v2"))
        .unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        _ => k.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn most_specific_key_wins() {
        let text = format!(
            r#"{{"auths": {{
                "quay.io": {{"auth": "{}", "email": "x@y"}},
                "quay.io/acme": {{"auth": "{}"}},
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "10.0.2.2:5000": {{"username": "u4", "password": "p:4"}},
                "helper.io": {{"identitytoken": "t"}}
            }}}}"#,
            b64("u1:p1"),
            b64("u2:p2:x"),
            b64("u3:p3")
        );
        let s = PullSecret::parse(&text).unwrap();
        let user = |r: &str| {
            s.lookup(&ImageRef::parse(r).unwrap())
                .map(|c| c.username.clone())
        };
        assert_eq!(user("quay.io/other/x:1").as_deref(), Some("u1"));
        assert_eq!(user("quay.io/acme/ice:1").as_deref(), Some("u2"));
        assert_eq!(
            s.lookup(&ImageRef::parse("quay.io/acme/ice").unwrap())
                .unwrap()
                .password,
            "p2:x"
        );
        assert_eq!(user("quay.io/acmex/ice:1").as_deref(), Some("u1"));
        assert_eq!(user("busybox").as_deref(), Some("u3"));
        assert_eq!(user("10.0.2.2:5000/kmod/e1000:6").as_deref(), Some("u4"));
        assert_eq!(user("helper.io/x:1"), None);
        assert_eq!(user("ghcr.io/x:1"), None);
    }

    #[test]
    fn bad_secrets_do_not_leak() {
        let e = PullSecret::parse(r#"{"auths": {"q.io": {"auth": "!!!secret"}}}"#).unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        assert!(PullSecret::parse("{").is_err());
        let c = Credential {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(PullSecret::load(Path::new("/nonexistent"))
            .unwrap()
            .entries
            .is_empty());
    }
}
