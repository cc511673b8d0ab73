// SPDX-License-Identifier: Apache-2.0
//! Escape hatches on the kernel command line, for a node that cannot boot with its
//! out-of-tree driver:
//!
//! - `kmod_day1.disable` (or `kmod_day1.disable=1`): neither unit does anything this boot.
//!   The units also carry `ConditionKernelCommandLine=!kmod_day1.disable`.
//! - `kmod_day1.skip=SET[,CONFIG/SET...]`: skip those module sets; `SET` alone matches the
//!   set in every config.

/// The escape hatches found on a command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EscapeHatches {
    /// `kmod_day1.disable` is set.
    pub disabled: bool,
    /// Entries of `kmod_day1.skip=`.
    pub skip: Vec<String>,
}

impl EscapeHatches {
    /// Parses `/proc/cmdline` text.
    pub fn parse(cmdline: &str) -> Self {
        let mut h = Self::default();
        for word in cmdline.split_ascii_whitespace() {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            match (key.replace('-', "_").as_str(), value) {
                ("kmod_day1.disable", None) => h.disabled = true,
                ("kmod_day1.disable", Some(v)) => {
                    h.disabled = !matches!(v, "0" | "no" | "false" | "off")
                }
                ("kmod_day1.skip", Some(v)) => h
                    .skip
                    .extend(v.split(',').filter(|s| !s.is_empty()).map(str::to_owned)),
                _ => {}
            }
        }
        h
    }

    /// Whether the module set `set` of config `config` is to be skipped.
    pub fn skips(&self, config: &str, set: &str) -> bool {
        self.skip.iter().any(|s| match s.split_once('/') {
            Some((c, n)) => c == config && n == set,
            None => s == set,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hatches() {
        let h = EscapeHatches::parse("root=/dev/vda kmod_day1.skip=e1000,99-x/ice quiet");
        assert!(!h.disabled);
        assert!(h.skips("any", "e1000"));
        assert!(h.skips("99-x", "ice"));
        assert!(!h.skips("98-y", "ice"));
        assert!(EscapeHatches::parse("kmod_day1.disable").disabled);
        assert!(EscapeHatches::parse("kmod-day1.disable=1").disabled);
        assert!(!EscapeHatches::parse("kmod_day1.disable=0").disabled);
    }
}
