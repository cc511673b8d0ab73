// SPDX-License-Identifier: Apache-2.0
//! Fault injection: what goes wrong ([`Fault`]) and when ([`FaultRule`]).
//!
//! A rule matches requests by path substring (and optionally method); among the requests it
//! counts, it lets the first [`FaultRule::after`] through, then fires on the next
//! [`FaultRule::times`] (all of them by default). Every rule that fires on a request applies,
//! in the order the rules were added, so `Slow` and `CutAfter` combine.
//!
//! Which requests a rule counts depends on its fault:
//!
//! - [`Fault::Status`], [`Fault::Drop`], [`Fault::Delay`] and [`Fault::IgnoreRange`] act
//!   before anything else, as a failing proxy in front of a registry would: they count every
//!   matching request, including a client's first, unauthenticated one, and `/token`.
//! - The faults that alter a response ([`Fault::CutAfter`], [`Fault::StallAfter`],
//!   [`Fault::CorruptBody`],
//!   [`Fault::LyingManifest`], [`Fault::ReplaceBody`], [`Fault::Slow`],
//!   [`Fault::WrongDigestHeader`]) count only the matching requests the registry answers with
//!   a 2xx, and only `GET`s (`WrongDigestHeader`: `HEAD`s too). So
//!   `Fault::CutAfter { bytes: 1000 }.on("/blobs/").times(1)` cuts the first blob download
//!   that would have succeeded, not a 401 challenge or a 404 before it.
//! - [`Fault::Header`] counts every matching request the registry answers, whatever the
//!   status (a 401 challenge included).

use std::time::Duration;

/// What goes wrong with a response.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Answer `status` with a distribution-spec error body instead of the real response, with
    /// `Retry-After: <retry_after>` when set (seconds, or an HTTP date: sent as given).
    Status {
        /// The HTTP status, e.g. 500, 503 or 429.
        status: u16,
        /// The Retry-After header value.
        retry_after: Option<String>,
    },
    /// Answer `307 Temporary Redirect` to this `Location` instead of the real response: a
    /// redirect loop (to the request's own URL) or a downgrade (HTTPS to plain HTTP).
    Redirect(String),
    /// Send the headers of the real response (with its full Content-Length) and the first
    /// `bytes` bytes of its body, then close the connection: a connection cut mid-blob.
    CutAfter {
        /// Body bytes sent before the cut.
        bytes: u64,
    },
    /// Send the headers of the real response and the first `bytes` bytes of its body, then
    /// nothing more, keeping the connection open: a server that stalls mid-transfer, for
    /// read timeouts.
    StallAfter {
        /// Body bytes sent before the stall.
        bytes: u64,
    },
    /// Flip bits in one byte of the body (the middle one); length and headers, including
    /// Docker-Content-Digest, unchanged: a blob whose bytes do not match its digest.
    CorruptBody,
    /// Serve a different, still valid JSON document (the real one with an extra annotation)
    /// in place of a manifest, with Content-Length adjusted and Docker-Content-Digest still
    /// claiming the digest of the real one: a manifest that lies about its content. (A body
    /// that is not a JSON object gets a newline appended.)
    LyingManifest,
    /// Serve the real body but a Docker-Content-Digest header naming another digest.
    WrongDigestHeader,
    /// Serve these bytes as the body (Content-Length adjusted, every other header kept).
    ReplaceBody(Vec<u8>),
    /// Trickle the body at about this many bytes per second.
    Slow {
        /// Throughput; at least 1.
        bytes_per_sec: u64,
    },
    /// Wait this long before sending anything: a server that hangs before answering.
    Delay(Duration),
    /// Close the connection without answering.
    Drop,
    /// Answer as if the request had no `Range` header: the whole blob with 200, as a server
    /// without range support does after a cut.
    IgnoreRange,
    /// Send response header `name` with `value` in place of the registry's own (Content-Length
    /// included: the body is still sent whole, then the connection is closed), on an answer of
    /// any status: a 401's `WWW-Authenticate`, a blob's `Content-Length` or `Content-Range` as
    /// a hostile registry or proxy would send them. The value goes on the wire as given.
    Header {
        /// Header name.
        name: String,
        /// Header value.
        value: String,
    },
}

impl Fault {
    /// `Status` without Retry-After.
    pub fn status(status: u16) -> Self {
        Self::Status {
            status,
            retry_after: None,
        }
    }

    /// `Status` with `Retry-After: <seconds>`.
    pub fn status_retry_after(status: u16, seconds: u64) -> Self {
        Self::Status {
            status,
            retry_after: Some(seconds.to_string()),
        }
    }

    /// A rule firing this fault on requests whose path contains `path_contains`
    /// (e.g. `"/blobs/"`, `"/manifests/"`, a digest, `"/token"`).
    pub fn on(self, path_contains: impl Into<String>) -> FaultRule {
        FaultRule {
            path_contains: Some(path_contains.into()),
            ..FaultRule::from(self)
        }
    }

    /// Whether the fault replaces or delays the answer (else it alters a successful one).
    pub(crate) fn acts_before_routing(&self) -> bool {
        matches!(
            self,
            Self::Status { .. }
                | Self::Redirect(_)
                | Self::Drop
                | Self::Delay(_)
                | Self::IgnoreRange
        )
    }

    /// `Header` from string slices.
    pub fn header(name: &str, value: &str) -> Self {
        Self::Header {
            name: name.to_owned(),
            value: value.to_owned(),
        }
    }

    /// Whether the fault sets a header on an answer of any status.
    pub(crate) fn sets_header(&self) -> bool {
        matches!(self, Self::Header { .. })
    }

    /// Whether an altering fault has something to alter in the answer to a HEAD request.
    pub(crate) fn acts_on_head(&self) -> bool {
        matches!(self, Self::WrongDigestHeader)
    }

    /// A rule firing this fault on every request (narrow it with [`FaultRule::times`] etc.).
    pub fn everywhere(self) -> FaultRule {
        FaultRule::from(self)
    }

    /// Short name, as written in the request log.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Status { .. } => "status",
            Self::Redirect(_) => "redirect",
            Self::CutAfter { .. } => "cut-after",
            Self::StallAfter { .. } => "stall-after",
            Self::CorruptBody => "corrupt-body",
            Self::LyingManifest => "lying-manifest",
            Self::WrongDigestHeader => "wrong-digest-header",
            Self::ReplaceBody(_) => "replace-body",
            Self::Slow { .. } => "slow",
            Self::Delay(_) => "delay",
            Self::Drop => "drop",
            Self::IgnoreRange => "ignore-range",
            Self::Header { .. } => "header",
        }
    }
}

/// When a [`Fault`] fires. Build one with [`Fault::on`] or `FaultRule::from(fault)` (every
/// request), then narrow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    pub(crate) fault: Fault,
    pub(crate) path_contains: Option<String>,
    pub(crate) method: Option<String>,
    pub(crate) after: u32,
    pub(crate) times: Option<u32>,
}

impl From<Fault> for FaultRule {
    /// A rule firing `fault` on every request.
    fn from(fault: Fault) -> Self {
        Self {
            fault,
            path_contains: None,
            method: None,
            after: 0,
            times: None,
        }
    }
}

impl FaultRule {
    /// Fire on `n` matching requests, then never again (default: every one).
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    /// Let the first `n` matching requests through untouched (default 0).
    pub fn after(mut self, n: u32) -> Self {
        self.after = n;
        self
    }

    /// Match only requests with this method (`"GET"`, `"HEAD"`).
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.path_contains
            .as_deref()
            .is_none_or(|p| path.contains(p))
            && self.method.as_deref().is_none_or(|m| m == method)
    }
}

/// Identifies a rule added with [`crate::Registry::fault`], to ask how often it fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FaultId(pub(crate) usize);

/// A rule with its counters.
#[derive(Debug)]
pub(crate) struct ActiveRule {
    pub(crate) rule: FaultRule,
    /// Matching requests seen.
    pub(crate) matched: u32,
    /// Times fired.
    pub(crate) fired: u32,
    pub(crate) removed: bool,
}

impl ActiveRule {
    pub(crate) fn new(rule: FaultRule) -> Self {
        Self {
            rule,
            matched: 0,
            fired: 0,
            removed: false,
        }
    }

    /// Counts the request and says whether the fault fires on it.
    pub(crate) fn consider(&mut self, method: &str, path: &str) -> bool {
        if self.removed || !self.rule.matches(method, path) {
            return false;
        }
        self.matched += 1;
        if self.matched <= self.rule.after {
            return false;
        }
        if self.rule.times.is_some_and(|t| self.fired >= t) {
            return false;
        }
        self.fired += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_skips_then_fires_a_bounded_number_of_times() {
        let mut rule = ActiveRule::new(Fault::status(500).on("/blobs/").after(1).times(2));
        let fired: Vec<bool> = (0..5)
            .map(|_| rule.consider("GET", "/v2/a/blobs/sha256:x"))
            .collect();
        assert_eq!(fired, [false, true, true, false, false]);
        assert!(!rule.consider("GET", "/v2/a/manifests/x"));
        assert_eq!(rule.matched, 5);
        assert_eq!(rule.fired, 2);
    }

    #[test]
    fn rule_filters_on_method_and_defaults_to_everything() {
        let mut rule = ActiveRule::new(FaultRule::from(Fault::Drop).method("HEAD"));
        assert!(!rule.consider("GET", "/v2/"));
        assert!(rule.consider("HEAD", "/v2/"));
        assert!(rule.consider("HEAD", "/anything"));
    }
}
