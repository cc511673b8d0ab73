// SPDX-License-Identifier: Apache-2.0
//! `/etc/containers/registries.d/*.yaml` (containers-registries.d(5)), for the one setting a
//! `sigstoreSigned` requirement needs: `use-sigstore-attachments`, looked up like
//! containers/image does (the image's scopes, most specific first, an entry without the
//! setting does not stop the search; then `default-docker`; else off). Other settings
//! (lookaside storage for GPG signatures) are read and ignored.

use std::collections::BTreeMap;
use std::path::Path;

use kmod_day1_contract::ImageRef;
use serde::Deserialize;

use crate::policy::docker_scopes;

/// Default location, as skopeo and podman use it.
pub(crate) const REGISTRIES_D: &str = "/etc/containers/registries.d";

#[derive(Debug, Default, Deserialize)]
struct RawFile {
    #[serde(rename = "default-docker")]
    default_docker: Option<Namespace>,
    docker: Option<BTreeMap<String, Namespace>>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct Namespace {
    #[serde(rename = "use-sigstore-attachments")]
    use_sigstore_attachments: Option<bool>,
}

/// The merged registries.d configuration.
#[derive(Debug, Default, Clone)]
pub(crate) struct RegistriesD {
    default_docker: Option<Namespace>,
    docker: BTreeMap<String, Namespace>,
}

impl RegistriesD {
    /// Reads every `*.yaml` file of `dir` (none, or no directory: everything off). A scope or
    /// `default-docker` defined in two files is an error, as in containers/image.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let mut merged = Self::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(merged),
            Err(e) => return Err(format!("reading {}: {e}", dir.display())),
        };
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            merged
                .add(&text)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(merged)
    }

    fn add(&mut self, text: &str) -> Result<(), String> {
        if text.trim().is_empty() {
            return Ok(());
        }
        let raw: RawFile = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        if let Some(d) = raw.default_docker {
            if self.default_docker.replace(d).is_some() {
                return Err("default-docker is defined in another file too".into());
            }
        }
        for (scope, ns) in raw.docker.unwrap_or_default() {
            if self.docker.insert(scope.clone(), ns).is_some() {
                return Err(format!("scope {scope:?} is defined in another file too"));
            }
        }
        Ok(())
    }

    /// Whether signatures of `image` are looked up as sigstore attachments.
    pub fn use_sigstore_attachments(&self, image: &ImageRef) -> bool {
        docker_scopes(image)
            .iter()
            .find_map(|s| self.docker.get(s)?.use_sigstore_attachments)
            .or_else(|| self.default_docker?.use_sigstore_attachments)
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_scope_with_the_setting_then_default() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("10-default.yaml"),
            "default-docker:\n  use-sigstore-attachments: true\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("20-acme.yaml"),
            "docker:\n  quay.io/acme:\n    use-sigstore-attachments: false\n  quay.io/acme/ice:\n    lookaside: https://x\n",
        )
        .unwrap();
        std::fs::write(d.path().join("ignored.conf"), "{").unwrap();
        let r = RegistriesD::load(d.path()).unwrap();
        let img = |s: &str| ImageRef::parse(s).unwrap();
        // The repository's entry has no setting: the namespace's answers.
        assert!(!r.use_sigstore_attachments(&img("quay.io/acme/ice:v1")));
        assert!(r.use_sigstore_attachments(&img("quay.io/other/ice:v1")));
        assert!(!RegistriesD::load(&d.path().join("none"))
            .unwrap()
            .use_sigstore_attachments(&img("quay.io/acme/ice:v1")));

        std::fs::write(
            d.path().join("30-dup.yaml"),
            "docker:\n  quay.io/acme:\n    use-sigstore-attachments: true\n",
        )
        .unwrap();
        assert!(RegistriesD::load(d.path())
            .unwrap_err()
            .contains("another file"));
    }
}
