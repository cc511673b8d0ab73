// SPDX-License-Identifier: Apache-2.0
//! Authentication as registries do it: HTTP basic, or the token flow of the Docker registry
//! auth spec (401 + `WWW-Authenticate: Bearer realm=...,service=...,scope=...`, a token
//! endpoint taking basic credentials, then `Authorization: Bearer <token>`).

use std::collections::HashMap;

use base64::Engine as _;

use crate::http::{Request, Response};

/// The `service` the token flow names.
pub const TOKEN_SERVICE: &str = "kmod-day1-test-registry";
/// Path of the token endpoint on the registry's own address.
pub const TOKEN_PATH: &str = "/token";

/// How the registry authenticates `/v2/` requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// Anonymous access.
    #[default]
    None,
    /// HTTP basic with these credentials on every request.
    Basic {
        /// User name.
        user: String,
        /// Password.
        pass: String,
    },
    /// Token flow: the token endpoint at `/token` checks these basic credentials and hands
    /// out tokens scoped to the repositories asked for (`repository:<name>:pull`).
    Bearer {
        /// User name.
        user: String,
        /// Password.
        pass: String,
    },
}

impl Auth {
    /// `Auth::Basic` from string slices.
    pub fn basic(user: &str, pass: &str) -> Self {
        Self::Basic {
            user: user.to_owned(),
            pass: pass.to_owned(),
        }
    }

    /// `Auth::Bearer` from string slices.
    pub fn bearer(user: &str, pass: &str) -> Self {
        Self::Bearer {
            user: user.to_owned(),
            pass: pass.to_owned(),
        }
    }
}

/// `Basic <base64(user:pass)>`, the value of an Authorization header.
pub fn basic_authorization(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// Issued tokens and the scopes each grants.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    granted: HashMap<String, Vec<String>>,
    issued: u64,
}

impl Tokens {
    /// Forgets every token: clients must go back to the token endpoint.
    pub(crate) fn revoke_all(&mut self) {
        self.granted.clear();
    }

    fn issue(&mut self, scopes: Vec<String>) -> String {
        self.issued += 1;
        let token = format!("test-token-{}", self.issued);
        self.granted.insert(token.clone(), scopes);
        token
    }
}

/// The outcome of checking a `/v2/` request.
pub(crate) enum Verdict {
    Allowed,
    Challenge(Response),
}

/// Checks a `/v2/` request for repository `repository` (`None` for `/v2/` itself).
pub(crate) fn check(
    auth: &Auth,
    tokens: &Tokens,
    base_url: &str,
    request: &Request,
    repository: Option<&str>,
) -> Verdict {
    let authorization = request.header("authorization");
    match auth {
        Auth::None => Verdict::Allowed,
        Auth::Basic { user, pass } => {
            if authorization.is_some_and(|a| basic_matches(a, user, pass)) {
                Verdict::Allowed
            } else {
                Verdict::Challenge(unauthorized("authentication required").header(
                    "WWW-Authenticate",
                    format!("Basic realm=\"{TOKEN_SERVICE}\""),
                ))
            }
        }
        Auth::Bearer { .. } => {
            let granted = authorization
                .and_then(|a| strip_scheme(a, "Bearer"))
                .and_then(|t| tokens.granted.get(t));
            let allowed = match (granted, repository) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(scopes), Some(repo)) => scopes.iter().any(|s| grants_pull(s, repo)),
            };
            if allowed {
                return Verdict::Allowed;
            }
            let mut challenge =
                format!("Bearer realm=\"{base_url}{TOKEN_PATH}\",service=\"{TOKEN_SERVICE}\"");
            if let Some(repo) = repository {
                challenge.push_str(&format!(",scope=\"repository:{repo}:pull\""));
            }
            let message = if granted.is_some() {
                "token does not grant access to this repository"
            } else {
                "authentication required"
            };
            Verdict::Challenge(unauthorized(message).header("WWW-Authenticate", challenge))
        }
    }
}

/// Answers a request to the token endpoint.
pub(crate) fn token_endpoint(auth: &Auth, tokens: &mut Tokens, request: &Request) -> Response {
    let Auth::Bearer { user, pass } = auth else {
        return crate::server::error_response(404, "UNSUPPORTED", "no token endpoint");
    };
    if request.method != "GET" {
        return crate::server::error_response(405, "UNSUPPORTED", "the token endpoint takes GET");
    }
    if !request
        .header("authorization")
        .is_some_and(|a| basic_matches(a, user, pass))
    {
        return unauthorized("bad credentials for the token endpoint").header(
            "WWW-Authenticate",
            format!("Basic realm=\"{TOKEN_SERVICE}\""),
        );
    }
    let services = request.query_values("service");
    if services.iter().any(|s| s != TOKEN_SERVICE) {
        return crate::server::error_response(400, "DENIED", "unknown service");
    }
    // One scope per parameter, or several separated by spaces (both are in use).
    let scopes: Vec<String> = request
        .query_values("scope")
        .iter()
        .flat_map(|s| s.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let token = tokens.issue(scopes);
    Response::new(200).json(&serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": 300,
    }))
}

fn unauthorized(message: &str) -> Response {
    crate::server::error_response(401, "UNAUTHORIZED", message)
}

fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = header.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

fn basic_matches(header: &str, user: &str, pass: &str) -> bool {
    strip_scheme(header, "Basic")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .is_some_and(|decoded| decoded == format!("{user}:{pass}").as_bytes())
}

/// Whether scope `repository:<name>:<actions>` grants pull on `repo`.
fn grants_pull(scope: &str, repo: &str) -> bool {
    let Some(rest) = scope.strip_prefix("repository:") else {
        return false;
    };
    let Some((name, actions)) = rest.rsplit_once(':') else {
        return false;
    };
    name == repo && actions.split(',').any(|a| a == "pull" || a == "*")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_round_trip() {
        let h = basic_authorization("u", "p:w");
        assert!(basic_matches(&h, "u", "p:w"));
        assert!(basic_matches(&h.replace("Basic", "basic"), "u", "p:w"));
        assert!(!basic_matches(&h, "u", "p"));
        assert!(!basic_matches("Basic !!!", "u", "p"));
        assert!(!basic_matches("Bearer x", "u", "p"));
    }

    #[test]
    fn scopes_grant_pull_on_their_repository_only() {
        assert!(grants_pull("repository:a/b:pull", "a/b"));
        assert!(grants_pull("repository:a/b:push,pull", "a/b"));
        assert!(!grants_pull("repository:a/b:push", "a/b"));
        assert!(!grants_pull("repository:a/bc:pull", "a/b"));
        assert!(!grants_pull("registry:catalog:*", "a/b"));
    }
}
