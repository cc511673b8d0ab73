// SPDX-License-Identifier: Apache-2.0
//! Durations as the loader writes them: milliseconds with one decimal in log lines, whole
//! microseconds in the status file. Everything inside the loader is a `Duration`; these are
//! the only conversions.

use std::time::Duration;

/// Milliseconds with one decimal, for log lines (integer arithmetic: no float formatting
/// code in the binary).
pub fn ms(d: Duration) -> Millis {
    Millis(d.as_micros())
}

/// A duration printed as milliseconds, e.g. `12.3`.
#[derive(Debug, Clone, Copy)]
pub struct Millis(u128);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0 / 1000, self.0 % 1000 / 100)
    }
}

/// Whole microseconds, for the status file's `...Us` fields (saturating: a boot does not
/// last 584,000 years).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_print_with_one_decimal() {
        assert_eq!(ms(Duration::from_micros(12_345)).to_string(), "12.3");
        assert_eq!(ms(Duration::from_micros(99)).to_string(), "0.0");
        assert_eq!(ms(Duration::from_secs(2)).to_string(), "2000.0");
    }

    #[test]
    fn microseconds_are_whole_and_saturate() {
        assert_eq!(micros(Duration::from_nanos(12_345_999)), 12_345);
        assert_eq!(micros(Duration::MAX), u64::MAX);
    }
}
