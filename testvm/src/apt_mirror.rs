// SPDX-License-Identifier: Apache-2.0
//! The Debian mirror this machine uses: the VM image comes from the same place as the host's
//! packages, and from nowhere else.

use std::path::Path;

/// The main and security archives of the host's apt sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// Archive holding `bookworm` (e.g. `http://deb.debian.org/debian`).
    pub main: String,
    /// Archive holding `bookworm-security`.
    pub security: String,
}

const DEFAULT_MAIN: &str = "http://deb.debian.org/debian";
const DEFAULT_SECURITY: &str = "http://deb.debian.org/debian-security";

impl Mirror {
    /// Reads `/etc/apt/sources.list.d/*.sources` and `/etc/apt/sources.list`.
    pub fn from_host() -> Self {
        let mut text = String::new();
        if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
            let mut paths: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for p in paths
                .iter()
                .filter(|p| p.extension().is_some_and(|x| x == "sources" || x == "list"))
            {
                text.push_str(&std::fs::read_to_string(p).unwrap_or_default());
                text.push('\n');
            }
        }
        text.push_str(
            &std::fs::read_to_string(Path::new("/etc/apt/sources.list")).unwrap_or_default(),
        );
        Self::parse(&text)
    }

    /// Picks the archives from deb822 (`URIs:` + `Suites:`) or one-line (`deb URI suite`)
    /// sources text.
    pub fn parse(text: &str) -> Self {
        let mut main = None;
        let mut security = None;
        let mut note = |uri: &str, suites: &str| {
            let uri = uri.trim_end_matches('/').to_owned();
            for s in suites.split_whitespace() {
                if s == "bookworm" && main.is_none() {
                    main = Some(uri.clone());
                }
                if s == "bookworm-security" && security.is_none() {
                    security = Some(uri.clone());
                }
            }
        };
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(str::trim))
            };
            if let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) {
                if let Some(uri) = uris.split_whitespace().next() {
                    note(uri, suites);
                }
            }
        }
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.first() == Some(&"deb") {
                let rest: Vec<&str> = w[1..]
                    .iter()
                    .copied()
                    .filter(|x| !x.starts_with('['))
                    .collect();
                if rest.len() >= 2 {
                    note(rest[0], rest[1]);
                }
            }
        }
        Self {
            main: main.unwrap_or_else(|| DEFAULT_MAIN.into()),
            security: security.unwrap_or_else(|| DEFAULT_SECURITY.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_deb822_and_one_line_sources() {
        let m = Mirror::parse(
            "Types: deb\n# comment\nURIs: http://m.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
             Types: deb\nURIs: http://m.example/debian-security\nSuites: bookworm-security\n",
        );
        assert_eq!(m.main, "http://m.example/debian");
        assert_eq!(m.security, "http://m.example/debian-security");
        let m = Mirror::parse("deb [arch=amd64] http://x/debian bookworm main\n");
        assert_eq!(m.main, "http://x/debian");
        assert_eq!(m.security, DEFAULT_SECURITY);
    }
}
