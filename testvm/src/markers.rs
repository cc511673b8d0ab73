// SPDX-License-Identifier: Apache-2.0
//! `KD1-MARK key=value` lines that the guest's test units write to `/dev/kmsg`, read back
//! from the serial log. Files travel as numbered base64 chunks (`key.b64.N=...`) because a
//! kernel log record holds about 1 KiB.

use std::collections::BTreeMap;

use base64::Engine;

/// The prefix of every marker line.
pub const PREFIX: &str = "KD1-MARK ";

/// Markers of one boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Markers {
    values: BTreeMap<String, String>,
}

impl Markers {
    /// Collects the markers in serial log text (the last value of a key wins).
    pub fn parse(serial: &str) -> Self {
        let mut values = BTreeMap::new();
        for line in serial.lines() {
            if let Some(i) = line.find(PREFIX) {
                let rest = line[i + PREFIX.len()..].trim_end_matches(['\r', '\n', ' ']);
                if let Some((k, v)) = rest.split_once('=') {
                    values.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        Self { values }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Whether any marker was seen.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// A file sent as `key.b64.0`, `key.b64.1`, ...; `None` when no chunk arrived (the
    /// guest sends `key.missing=1` for a file that does not exist).
    pub fn file(&self, key: &str) -> Option<String> {
        let mut b64 = String::new();
        let mut i = 0;
        while let Some(chunk) = self.values.get(&format!("{key}.b64.{i}")) {
            b64.push_str(chunk);
            i += 1;
        }
        if i == 0 {
            return None;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `systemctl show` properties sent as `key=P1=v1 P2=v2 ...` (values without spaces).
    pub fn props(&self, key: &str) -> BTreeMap<String, String> {
        self.get(key)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// A `systemctl show` property in microseconds, when set (0 means never).
    pub fn prop_us(&self, key: &str, prop: &str) -> Option<u64> {
        self.props(key)
            .get(prop)
            .and_then(|v| v.parse().ok())
            .filter(|v| *v > 0)
    }

    /// Every key, for error messages.
    pub fn keys(&self) -> Vec<&str> {
        self.values.keys().map(String::as_str).collect()
    }
}

/// The kernel timestamp (seconds) of a console line such as `[   12.345678] text`.
pub fn kernel_time(line: &str) -> Option<f64> {
    let open = line.find('[')?;
    let close = line[open..].find(']')? + open;
    line[open + 1..close].trim().parse().ok()
}

/// The first serial line containing `needle`, with its kernel timestamp.
pub fn first_line<'a>(serial: &'a str, needle: &str) -> Option<(Option<f64>, &'a str)> {
    serial
        .lines()
        .find(|l| l.contains(needle))
        .map(|l| (kernel_time(l), l.trim_end()))
}

/// Up to `n` lines around the first line holding `needle` (or the last `n` lines), as
/// evidence for a failed assertion.
pub fn excerpt(serial: &str, needle: &str, n: usize) -> String {
    let clean = strip_ansi(serial);
    let lines: Vec<&str> = clean
        .lines()
        .filter(|l| !l.contains(PREFIX) && !l.contains("/start running ("))
        .collect();
    let at = lines.iter().position(|l| l.contains(needle));
    let (start, end) = match at {
        Some(i) => (i.saturating_sub(n / 2), (i + n / 2).min(lines.len())),
        None => (lines.len().saturating_sub(n), lines.len()),
    };
    lines[start..end].join("\n")
}

/// The text without terminal escape sequences (systemd colours its console status).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_markers_and_files() {
        let serial = "[    1.000000] e1000: something\r\n\
[   40.100000] KD1-MARK final.e1000_version=7.3.21-k8-NAPI-kmodday1\r\n\
[   40.200000] KD1-MARK final.unit.NetworkManager.service=ActiveState=active ActiveEnterTimestampMonotonic=21000000 ExecMainStatus=0\r\n\
[   40.300000] KD1-MARK final.status.b64.0=eyJh\r\n\
[   40.300001] KD1-MARK final.status.b64.1=IjoxfQ==\r\n";
        let m = Markers::parse(serial);
        assert_eq!(
            m.get("final.e1000_version"),
            Some("7.3.21-k8-NAPI-kmodday1")
        );
        assert_eq!(
            m.prop_us(
                "final.unit.NetworkManager.service",
                "ActiveEnterTimestampMonotonic"
            ),
            Some(21_000_000)
        );
        assert_eq!(
            m.props("final.unit.NetworkManager.service")["ActiveState"],
            "active"
        );
        assert_eq!(m.file("final.status").as_deref(), Some("{\"a\":1}"));
        assert!(m.file("final.nothing").is_none());
        assert_eq!(kernel_time("[   40.300000] x"), Some(40.3));
        let (t, l) = first_line(serial, "e1000:").unwrap();
        assert_eq!(t, Some(1.0));
        assert!(l.ends_with("something"));
        assert!(!excerpt(serial, "e1000:", 4).contains("KD1-MARK"));
        assert_eq!(
            strip_ansi("[\u{1b}[0;32m  OK  \u{1b}[0m] Reached\r"),
            "[  OK  ] Reached"
        );
    }

    #[test]
    fn reassembles_base64_chunks() {
        let text = "{\"sets\":[1,2,3]}\n";
        let b = base64::engine::general_purpose::STANDARD.encode(text);
        let (a, c) = b.split_at(7);
        let serial = format!("KD1-MARK s.f.b64.0={a}\nKD1-MARK s.f.b64.1={c}\n");
        assert_eq!(Markers::parse(&serial).file("s.f").unwrap(), text);
    }
}
