// SPDX-License-Identifier: Apache-2.0
//! Container image references, following the grammar of the distribution project
//! (`docker.io/library/x:tag@sha256:...`), and image templates that hold
//! `${KERNEL_FULL_VERSION}`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{names::reject_control, KernelRelease, NameError};

/// The placeholder replaced by the running kernel's release, as in KMM.
pub const KERNEL_FULL_VERSION: &str = "${KERNEL_FULL_VERSION}";

/// A parsed image reference: `[registry/]repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host with optional port; `docker.io` when the reference names none.
    pub registry: String,
    /// Repository path inside the registry (`library/` is added for docker.io one-word names).
    pub repository: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Digest (`sha256:<64 hex>`), if any.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses and validates a reference.
    pub fn parse(value: &str) -> Result<Self, NameError> {
        reject_control("image reference", value)?;
        parse_ref(value).map_err(|why| NameError::new("image reference", value, why))
    }

    /// Whether the reference pins content (has a digest).
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some()
    }

    /// The reference with `tag` set when it has neither a tag nor a digest (KMM's rule: an
    /// image without a tag is tagged with the kernel release).
    pub fn with_default_tag(mut self, kernel: &KernelRelease) -> Self {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(kernel.as_str().to_owned());
        }
        self
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn is_domain_component(c: &str) -> bool {
    !c.is_empty()
        && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !c.starts_with('-')
        && !c.ends_with('-')
}

fn check_domain(d: &str) -> Result<(), String> {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if !host.split('.').all(is_domain_component) {
        return Err(format!("has an invalid registry host {host:?}"));
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("has an invalid registry port {p:?}"));
        }
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum_lower(b[0]) || !is_alnum_lower(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum_lower(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum_lower(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn check_tag(t: &str) -> Result<(), String> {
    let b = t.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    if b.is_empty()
        || b.len() > 128
        || !word(b[0])
        || !b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
    {
        return Err(format!(
            "has an invalid tag {t:?} (1 to 128 of letters, digits, '_', '.', '-'; not starting with '.' or '-')"
        ));
    }
    Ok(())
}

fn check_digest(d: &str) -> Result<(), String> {
    match d.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(())
        }
        Some(("sha512", hex))
            if hex.len() == 128 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "has an invalid digest {d:?} (expected sha256: and 64 lower-case hex digits)"
        )),
    }
}

fn parse_ref(value: &str) -> Result<ImageRef, String> {
    if value.is_empty() {
        return Err("is empty".into());
    }
    if value.contains("://") {
        return Err(
            "must not have a scheme such as docker://; give registry/repository[:tag]".into(),
        );
    }
    let (rest, digest) = match value.split_once('@') {
        Some((r, d)) => {
            check_digest(d)?;
            (r, Some(d.to_owned()))
        }
        None => (value, None),
    };
    // A ':' after the last '/' starts the tag; one before it is a registry port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].find(':') {
        Some(i) => {
            let t = &rest[last_slash + i + 1..];
            check_tag(t)?;
            (&rest[..last_slash + i], Some(t.to_owned()))
        }
        None => (rest, None),
    };
    if name.len() > 255 {
        return Err("has a name longer than 255 characters".into());
    }
    let (registry, path) = match name.split_once('/') {
        Some((first, path))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            check_domain(first)?;
            (first.to_owned(), path.to_owned())
        }
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    if path.is_empty() || !path.split('/').all(is_path_component) {
        return Err(format!(
            "has an invalid repository {path:?} (lower-case letters, digits and '.', '_', '-' separators)"
        ));
    }
    let repository = if registry == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    Ok(ImageRef {
        registry,
        repository,
        tag,
        digest,
    })
}

/// An image reference as written in a config: may hold `${KERNEL_FULL_VERSION}`, and may
/// have no tag (the kernel release is then used as the tag).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageTemplate(String);

impl ImageTemplate {
    /// Validates the template by resolving it for a sample kernel release.
    pub fn new(value: &str) -> Result<Self, NameError> {
        reject_control("image reference", value)?;
        let probe = value.replace(KERNEL_FULL_VERSION, "0.0.0-1.x86_64");
        if probe.contains("${") {
            return Err(NameError::new(
                "image reference",
                value,
                format!("has an unknown variable; only {KERNEL_FULL_VERSION} is replaced"),
            ));
        }
        ImageRef::parse(&probe).map_err(|e| NameError::new("image reference", value, e.why))?;
        Ok(Self(value.to_owned()))
    }

    /// The reference for a kernel: variables replaced, and tagged with the kernel release
    /// when it has neither tag nor digest.
    pub fn resolve(&self, kernel: &KernelRelease) -> Result<ImageRef, NameError> {
        let s = self.0.replace(KERNEL_FULL_VERSION, kernel.as_str());
        Ok(ImageRef::parse(&s)?.with_default_tag(kernel))
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ImageTemplate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ImageTemplate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_references() {
        let r = ImageRef::parse("quay.io/org/ice-kmod:5.14.0-70.el9.x86_64").unwrap();
        assert_eq!(r.registry, "quay.io");
        assert_eq!(r.repository, "org/ice-kmod");
        assert_eq!(r.tag.as_deref(), Some("5.14.0-70.el9.x86_64"));
        let r = ImageRef::parse("127.0.0.1:5000/kmod").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.tag, None);
        let r = ImageRef::parse(&format!("localhost/a/b@{D}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(D));
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox");
        let r = ImageRef::parse(&format!("reg:5000/a:t@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert!(r.is_pinned());
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Quay.io/Org",
            "quay.io/org/x:",
            "quay.io/org/x@sha256:abc",
            "docker://quay.io/x",
            "quay.io/org/x:t\nExecStart=/bin/sh",
            "quay.io/org//x",
            "quay.io:0/x",
            "quay.io/-x",
            "quay.io/x:.t",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn templates() {
        let k = KernelRelease::new("6.1.0-27-amd64").unwrap();
        let t = ImageTemplate::new("quay.io/org/x").unwrap();
        assert_eq!(
            t.resolve(&k).unwrap().to_string(),
            "quay.io/org/x:6.1.0-27-amd64"
        );
        let t = ImageTemplate::new("quay.io/org/x:${KERNEL_FULL_VERSION}-v2").unwrap();
        assert_eq!(
            t.resolve(&k).unwrap().to_string(),
            "quay.io/org/x:6.1.0-27-amd64-v2"
        );
        let t = ImageTemplate::new(&format!("quay.io/org/x@{D}")).unwrap();
        assert_eq!(t.resolve(&k).unwrap().tag, None);
        assert!(ImageTemplate::new("quay.io/org/x:${KERNEL_VERSION}").is_err());
    }
}
