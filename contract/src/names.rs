// SPDX-License-Identifier: Apache-2.0
//! Validated names: once one of these exists, its value is safe to put in a unit file, a
//! path, a config file or a kernel syscall.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::NameError;

/// Rejects control characters (newlines included): no value may inject lines into a unit
/// file, a config file or a log line.
pub fn reject_control(what: &'static str, value: &str) -> Result<(), NameError> {
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(NameError::new(
            what,
            value,
            format!("contains the control character {c:?}; remove it"),
        ));
    }
    Ok(())
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates `value`.
            pub fn new(value: &str) -> Result<Self, NameError> {
                reject_control($what, value)?;
                $check(value).map_err(|why| NameError::new($what, value, why))?;
                Ok(Self(value.to_owned()))
            }

            /// The validated string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_newtype!(
    /// A kernel module name as `finit_module` and `/sys/module` know it: letters, digits,
    /// `_` and `-` (the kernel treats `-` as `_`), at most 55 bytes (`MODULE_NAME_LEN` - 1).
    ModuleName,
    "kernel module name",
    check_module_name
);

impl ModuleName {
    /// The name as the kernel reports it in `/sys/module` (dashes become underscores).
    pub fn kernel_name(&self) -> String {
        self.0.replace('-', "_")
    }
}

fn check_module_name(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("is empty; give the module's name without .ko".into());
    }
    if v.len() > 55 {
        return Err("is longer than the kernel's 55-byte limit".into());
    }
    if v.ends_with(".ko") {
        return Err("ends with .ko; give the module's name, not its file".into());
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("may only hold letters, digits, '_' and '-'".into());
    }
    Ok(())
}

string_newtype!(
    /// A kernel release as `uname -r` prints it, e.g. `5.14.0-427.13.1.el9_4.x86_64`.
    KernelRelease,
    "kernel release",
    check_kernel_release
);

fn check_kernel_release(v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 64 {
        return Err("must be 1 to 64 characters long".into());
    }
    if !v.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("must start with a letter or digit".into());
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
    {
        return Err("may only hold letters, digits, '.', '_', '-' and '+'".into());
    }
    Ok(())
}

string_newtype!(
    /// A name that becomes a file name and a MachineConfig name: a DNS-1123 subdomain
    /// (lower-case letters, digits, '-' and '.', at most 253 characters).
    ConfigName,
    "config name",
    check_dns1123_subdomain
);

string_newtype!(
    /// The name of a module set inside a config: a DNS-1123 label (at most 63 characters),
    /// so it can name a directory and be given on the kernel command line.
    SetName,
    "module set name",
    check_dns1123_label
);

/// A Kubernetes DNS-1123 subdomain.
pub fn check_dns1123_subdomain(v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 253 {
        return Err("must be 1 to 253 characters long".into());
    }
    for label in v.split('.') {
        check_dns1123_label(label).map_err(|_| {
            "must be lower-case letters, digits, '-' and '.', starting and ending with a letter or digit (DNS-1123 subdomain)".to_string()
        })?;
    }
    Ok(())
}

/// A Kubernetes DNS-1123 label.
pub fn check_dns1123_label(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err("must be 1 to 63 lower-case letters, digits and '-', starting and ending with a letter or digit (DNS-1123 label)".into())
    }
}

string_newtype!(
    /// A module parameter `name=value` as `finit_module` takes it. The value may be quoted
    /// with double quotes to hold spaces.
    ModuleParam,
    "module parameter",
    check_module_param
);

impl ModuleParam {
    /// The parameter's name (before `=`).
    pub fn name(&self) -> &str {
        self.0.split_once('=').map_or(&self.0, |(n, _)| n)
    }
}

fn check_module_param(v: &str) -> Result<(), String> {
    let Some((name, value)) = v.split_once('=') else {
        return Err("must be name=value".into());
    };
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err("has a parameter name that is not letters, digits, '_', '-' or '.'".into());
    }
    let quotes = value.bytes().filter(|&b| b == b'"').count();
    let quoted = value.len() >= 2 && value.starts_with('"') && value.ends_with('"');
    if quotes != 0 && !(quotes == 2 && quoted) {
        return Err("may only use double quotes around the whole value".into());
    }
    if value.contains(' ') && !quoted {
        return Err("has a space in its value; quote the value with double quotes".into());
    }
    if v.len() > 1024 {
        return Err("is longer than 1024 bytes".into());
    }
    Ok(())
}

string_newtype!(
    /// An absolute path without `.` or `..` components, used for paths inside an image and
    /// on the node.
    AbsPath,
    "path",
    check_abs_path
);

fn check_abs_path(v: &str) -> Result<(), String> {
    if !v.starts_with('/') {
        return Err("must be an absolute path (start with '/')".into());
    }
    if v.split('/').any(|c| c == ".." || c == ".") {
        return Err("must not contain '.' or '..' components".into());
    }
    if v.len() > 1024 {
        return Err("is longer than 1024 bytes".into());
    }
    if v.contains(['\\', '%', '$', '`', '\'', '"', ' ']) {
        return Err("must not contain spaces, quotes, '\\', '%', '$' or '`'".into());
    }
    Ok(())
}

impl AbsPath {
    /// The path's components, without the empty ones.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        assert!(ModuleName::new("ice").is_ok());
        assert!(ModuleName::new("kmm-ci_a").is_ok());
        assert_eq!(
            ModuleName::new("kmm-ci_a").unwrap().kernel_name(),
            "kmm_ci_a"
        );
        for bad in [
            "",
            "ice\nExecStart=/bin/sh",
            "ice.ko",
            "a/b",
            "x y",
            &"a".repeat(56),
        ] {
            assert!(ModuleName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kernel_releases() {
        assert!(KernelRelease::new("5.14.0-427.13.1.el9_4.x86_64").is_ok());
        assert!(KernelRelease::new("6.1.0-27-amd64").is_ok());
        assert!(KernelRelease::new("../etc").is_err());
        assert!(KernelRelease::new("6.1/0").is_err());
    }

    #[test]
    fn dns_names() {
        assert!(ConfigName::new("99-worker-kmod-ice").is_ok());
        assert!(ConfigName::new("a.b-c").is_ok());
        assert!(ConfigName::new("Upper").is_err());
        assert!(ConfigName::new("-a").is_err());
        assert!(ConfigName::new("a..b").is_err());
        assert!(SetName::new("a.b").is_err());
    }

    #[test]
    fn params() {
        assert!(ModuleParam::new("debug=1").is_ok());
        assert!(ModuleParam::new("msg=\"a b\"").is_ok());
        assert_eq!(ModuleParam::new("debug=1").unwrap().name(), "debug");
        for bad in ["debug", "=1", "a b=1", "x=a b", "x=\"a", "x=1\ny=2"] {
            assert!(ModuleParam::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths() {
        assert!(AbsPath::new("/opt").is_ok());
        assert!(AbsPath::new("/firmware/intel").is_ok());
        for bad in ["opt", "/opt/../etc", "/a/./b", "/a b", "/a\n"] {
            assert!(AbsPath::new(bad).is_err(), "{bad:?}");
        }
    }
}
