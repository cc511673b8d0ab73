// SPDX-License-Identifier: Apache-2.0
//! `containers-registries.conf(5)` version 2 (and its `.d` drop-ins): `[[registry]]` entries with `prefix`,
//! `location`, `insecure`, `blocked`, `mirror-by-digest-only` and `[[registry.mirror]]`
//! (`location`, `insecure`, `pull-from-mirror`).
//!
//! The file is shared with podman and CRI-O (MCO writes it from ImageDigestMirrorSet /
//! ImageTagMirrorSet), so keys this code does not use are ignored, not refused. The
//! v1 format (`[registries.search]`) is refused: it has no mirrors.
//!
//! `insecure = true` means plain HTTP here (containers/image also allows HTTPS without
//! verification; for a self-signed HTTPS registry, put its CA under certs.d instead).

use std::path::Path;

use kmod_day1_contract::ImageRef;
use serde::Deserialize;

/// Default location on the node.
pub const REGISTRIES_CONF: &str = "/etc/containers/registries.conf";

/// A registries.conf that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistriesConfError {
    /// Unreadable file.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML, or the wrong shape.
    #[error("parsing {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// A value that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// The image's registry is blocked.
    #[error("registry {prefix} is blocked in registries.conf (blocked = true), so {image} cannot be pulled; remove the block or use another image")]
    Blocked {
        /// The matching prefix.
        prefix: String,
        /// The image.
        image: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawConf {
    #[serde(default)]
    registry: Vec<RawRegistry>,
    // v1 only; present means the file is v1.
    #[serde(default)]
    registries: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawRegistry {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<RawMirror>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawMirror {
    location: String,
    #[serde(default)]
    insecure: bool,
    pull_from_mirror: Option<String>,
}

/// When a mirror may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFromMirror {
    /// Always (unless the registry says `mirror-by-digest-only`).
    All,
    /// Only for references by digest.
    DigestOnly,
    /// Only for references by tag.
    TagOnly,
}

/// A mirror of a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// Replaces the prefix.
    pub location: String,
    /// Plain HTTP.
    pub insecure: bool,
    /// When it may be used.
    pub pull_from_mirror: PullFromMirror,
}

/// A `[[registry]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// What image names it matches: `host[/path]` or `*.domain`.
    pub prefix: String,
    /// Replaces the prefix (empty for wildcard prefixes: the name is kept).
    pub location: String,
    /// Plain HTTP.
    pub insecure: bool,
    /// Pulls refused.
    pub blocked: bool,
    /// Mirrors only for references by digest.
    pub mirror_by_digest_only: bool,
    /// Mirrors, tried in order before the location.
    pub mirrors: Vec<Mirror>,
}

/// The parsed file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistriesConf {
    /// The `[[registry]]` entries.
    pub registries: Vec<Registry>,
}

/// One place an image can be pulled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSource {
    /// The reference rewritten for this place.
    pub image: ImageRef,
    /// Plain HTTP.
    pub insecure: bool,
    /// A mirror, not the image's own registry.
    pub mirror: bool,
}

impl RegistriesConf {
    /// Reads `path`, then the drop-ins `<path>.d/*.conf` in name order
    /// (containers-registries.conf.d(5)): a drop-in's `[[registry]]` replaces the one with the
    /// same prefix, others are added. Missing files are empty configs.
    pub fn load(path: &Path) -> Result<Self, RegistriesConfError> {
        let mut conf = Self::load_one(path)?;
        let mut dropin_dir = path.as_os_str().to_owned();
        dropin_dir.push(".d");
        let mut dropins: Vec<_> = match std::fs::read_dir(&dropin_dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect(),
            Err(_) => vec![],
        };
        dropins.sort();
        for d in dropins {
            for r in Self::load_one(&d)?.registries {
                match conf.registries.iter_mut().find(|x| x.prefix == r.prefix) {
                    Some(x) => *x = r,
                    None => conf.registries.push(r),
                }
            }
        }
        Ok(conf)
    }

    fn load_one(path: &Path) -> Result<Self, RegistriesConfError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(RegistriesConfError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Parses the text of a file named `path` (for messages).
    pub fn parse(text: &str, path: &str) -> Result<Self, RegistriesConfError> {
        let raw: RawConf = toml::from_str(text).map_err(|e| RegistriesConfError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
        if raw.registries.is_some() {
            return Err(RegistriesConfError::Invalid(format!(
                "{path} is in the version 1 format ([registries.search]); kmod-day1-pull reads version 2 ([[registry]] tables)"
            )));
        }
        let mut registries = vec![];
        for r in raw.registry {
            let location = r.location.unwrap_or_default();
            let prefix = match r.prefix {
                Some(p) if !p.is_empty() => p,
                _ => location.clone(),
            };
            if prefix.is_empty() {
                return Err(RegistriesConfError::Invalid(format!(
                    "{path}: a [[registry]] has neither prefix nor location"
                )));
            }
            if prefix.starts_with("*.") && !location.is_empty() {
                return Err(RegistriesConfError::Invalid(format!(
                    "{path}: [[registry]] prefix {prefix:?} is a wildcard and must not have a location"
                )));
            }
            let location = if location.is_empty() && !prefix.starts_with("*.") {
                prefix.clone()
            } else {
                location
            };
            let mut mirrors = vec![];
            for m in r.mirror {
                let pull_from_mirror = match m.pull_from_mirror.as_deref() {
                    None | Some("") | Some("all") => PullFromMirror::All,
                    Some("digest-only") => PullFromMirror::DigestOnly,
                    Some("tag-only") => PullFromMirror::TagOnly,
                    Some(o) => {
                        return Err(RegistriesConfError::Invalid(format!(
                            "{path}: mirror {} has pull-from-mirror = {o:?}; use all, digest-only or tag-only",
                            m.location
                        )))
                    }
                };
                mirrors.push(Mirror {
                    location: m.location,
                    insecure: m.insecure,
                    pull_from_mirror,
                });
            }
            registries.push(Registry {
                prefix,
                location,
                insecure: r.insecure,
                blocked: r.blocked,
                mirror_by_digest_only: r.mirror_by_digest_only,
                mirrors,
            });
        }
        Ok(Self { registries })
    }

    /// The entry for `image`: the longest matching prefix.
    pub fn find(&self, image: &ImageRef) -> Option<&Registry> {
        let name = image.name();
        self.registries
            .iter()
            .filter(|r| prefix_matches(&r.prefix, &name, &image.registry))
            .max_by_key(|r| r.prefix.len())
    }

    /// Where to pull `image` from, in order: the allowed mirrors, then the image's own
    /// (possibly relocated) registry.
    pub fn sources(&self, image: &ImageRef) -> Result<Vec<PullSource>, RegistriesConfError> {
        let Some(reg) = self.find(image) else {
            return Ok(vec![PullSource {
                image: image.clone(),
                insecure: false,
                mirror: false,
            }]);
        };
        if reg.blocked {
            return Err(RegistriesConfError::Blocked {
                prefix: reg.prefix.clone(),
                image: image.to_string(),
            });
        }
        let by_digest = image.digest.is_some();
        let mut out = vec![];
        for m in &reg.mirrors {
            let allowed = match m.pull_from_mirror {
                _ if reg.mirror_by_digest_only && !by_digest => false,
                PullFromMirror::All => true,
                PullFromMirror::DigestOnly => by_digest,
                PullFromMirror::TagOnly => !by_digest,
            };
            if allowed {
                out.push(PullSource {
                    image: relocate(image, reg, &m.location)?,
                    insecure: m.insecure,
                    mirror: true,
                });
            }
        }
        out.push(PullSource {
            image: relocate(image, reg, &reg.location)?,
            insecure: reg.insecure,
            mirror: false,
        });
        Ok(out)
    }
}

fn prefix_matches(prefix: &str, name: &str, host: &str) -> bool {
    if let Some(domain) = prefix.strip_prefix("*.") {
        return host.ends_with(&format!(".{domain}"));
    }
    name == prefix || name.starts_with(&format!("{prefix}/"))
}

fn relocate(
    image: &ImageRef,
    reg: &Registry,
    location: &str,
) -> Result<ImageRef, RegistriesConfError> {
    let name = image.name();
    let new_name = if reg.prefix.starts_with("*.") {
        // A wildcard matches the host: the location replaces the host.
        if location.is_empty() {
            name
        } else {
            format!("{location}/{}", image.repository)
        }
    } else {
        format!("{location}{}", &name[reg.prefix.len()..])
    };
    let mut s = new_name;
    if let Some(t) = &image.tag {
        s.push(':');
        s.push_str(t);
    }
    if let Some(d) = &image.digest {
        s.push('@');
        s.push_str(d);
    }
    ImageRef::parse(&s).map_err(|e| {
        RegistriesConfError::Invalid(format!(
            "registries.conf location {location:?} turns {image} into an invalid reference: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    const CONF: &str = r#"
unqualified-search-registries = ["registry.access.redhat.com", "docker.io"]
short-name-mode = "enforcing"

[[registry]]
prefix = "quay.io/acme"
location = "quay.io/acme"
mirror-by-digest-only = true
[[registry.mirror]]
location = "mirror.local:5000/acme"
insecure = true

[[registry]]
location = "quay.io"
[[registry.mirror]]
location = "m1.local/q"
pull-from-mirror = "tag-only"
[[registry.mirror]]
location = "m2.local/q"
pull-from-mirror = "digest-only"

[[registry]]
prefix = "10.0.2.2:5000"
insecure = true

[[registry]]
prefix = "evil.io"
blocked = true

[[registry]]
prefix = "*.corp.example"
[[registry.mirror]]
location = "cache.local"
"#;

    fn conf() -> RegistriesConf {
        RegistriesConf::parse(CONF, "registries.conf").unwrap()
    }

    fn names(v: &[PullSource]) -> Vec<String> {
        v.iter()
            .map(|s| format!("{}{}", s.image, if s.insecure { " (http)" } else { "" }))
            .collect()
    }

    #[test]
    fn mirror_by_digest_only() {
        let c = conf();
        let tag = ImageRef::parse("quay.io/acme/ice:1").unwrap();
        assert_eq!(names(&c.sources(&tag).unwrap()), ["quay.io/acme/ice:1"]);
        let dig = ImageRef::parse(&format!("quay.io/acme/ice@{D}")).unwrap();
        assert_eq!(
            names(&c.sources(&dig).unwrap()),
            [
                format!("mirror.local:5000/acme/ice@{D} (http)"),
                format!("quay.io/acme/ice@{D}")
            ]
        );
    }

    #[test]
    fn pull_from_mirror_and_longest_prefix() {
        let c = conf();
        let tag = ImageRef::parse("quay.io/other/x:1").unwrap();
        assert_eq!(
            names(&c.sources(&tag).unwrap()),
            ["m1.local/q/other/x:1", "quay.io/other/x:1"]
        );
        let dig = ImageRef::parse(&format!("quay.io/other/x@{D}")).unwrap();
        assert_eq!(
            names(&c.sources(&dig).unwrap()),
            [
                format!("m2.local/q/other/x@{D}"),
                format!("quay.io/other/x@{D}")
            ]
        );
        // Prefix boundaries: quay.io/acmex is not under quay.io/acme.
        let r = ImageRef::parse("quay.io/acmex/y:1").unwrap();
        assert_eq!(c.find(&r).unwrap().prefix, "quay.io");
    }

    #[test]
    fn insecure_blocked_wildcard_and_unmatched() {
        let c = conf();
        let r = ImageRef::parse("10.0.2.2:5000/kmod/e1000:6.1").unwrap();
        assert_eq!(
            names(&c.sources(&r).unwrap()),
            ["10.0.2.2:5000/kmod/e1000:6.1 (http)"]
        );
        let r = ImageRef::parse("evil.io/x:1").unwrap();
        assert!(c.sources(&r).unwrap_err().to_string().contains("blocked"));
        let r = ImageRef::parse("reg.corp.example/a/b:1").unwrap();
        assert_eq!(
            names(&c.sources(&r).unwrap()),
            ["cache.local/a/b:1", "reg.corp.example/a/b:1"]
        );
        let r = ImageRef::parse("ghcr.io/a/b:1").unwrap();
        assert_eq!(names(&c.sources(&r).unwrap()), ["ghcr.io/a/b:1"]);
    }

    #[test]
    fn bad_files() {
        assert!(
            RegistriesConf::parse("[registries.search]\nregistries = []\n", "f")
                .unwrap_err()
                .to_string()
                .contains("version 1")
        );
        assert!(RegistriesConf::parse("[[registry]\n", "f").is_err());
        assert!(RegistriesConf::parse("[[registry]]\ninsecure = true\n", "f").is_err());
        let e = RegistriesConf::parse(
            "[[registry]]\nprefix = \"a.io\"\n[[registry.mirror]]\nlocation = \"b.io\"\npull-from-mirror = \"sometimes\"\n",
            "f",
        )
        .unwrap_err();
        assert!(e.to_string().contains("sometimes"), "{e}");
        assert_eq!(
            RegistriesConf::load(Path::new("/nonexistent/registries.conf")).unwrap(),
            RegistriesConf::default()
        );
    }

    #[test]
    fn drop_ins_replace_and_add() {
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("registries.conf");
        std::fs::write(&main, "[[registry]]\nprefix = \"a.io\"\nblocked = true\n").unwrap();
        std::fs::create_dir(d.path().join("registries.conf.d")).unwrap();
        std::fs::write(
            d.path().join("registries.conf.d/10-a.conf"),
            "[[registry]]\nprefix = \"a.io\"\ninsecure = true\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("registries.conf.d/20-b.conf"),
            "[[registry]]\nprefix = \"b.io\"\nblocked = true\n",
        )
        .unwrap();
        std::fs::write(d.path().join("registries.conf.d/ignored.txt"), "garbage").unwrap();
        let c = RegistriesConf::load(&main).unwrap();
        assert_eq!(c.registries.len(), 2);
        let a = ImageRef::parse("a.io/x:1").unwrap();
        assert_eq!(names(&c.sources(&a).unwrap()), ["a.io/x:1 (http)"]);
        assert!(c.sources(&ImageRef::parse("b.io/x:1").unwrap()).is_err());
    }
}
