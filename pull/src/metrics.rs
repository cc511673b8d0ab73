// SPDX-License-Identifier: Apache-2.0
//! The node's kmod-day1 state in the Prometheus text format (version 0.0.4), read from the
//! loader's status of this boot, `last-pull.json`, `reboots.json`, the store's refs and the
//! upgrade preflight records: what `--metrics` prints and `--serve-metrics` serves, so that
//! the cluster sees which nodes run the out-of-tree drivers and which fell back.

use std::fmt::Write as _;
use std::path::Path;

use kmod_day1_contract::{
    read_json, BootStatus, KernelRelease, PullStatus, RebootGuard, SetState, StoreLayout,
    UpgradePreflight,
};

use crate::plan::Configs;

/// What the metrics are read from.
pub(crate) struct MetricsSources<'a> {
    /// The loader's status of this boot.
    pub status: &'a Path,
    /// The store.
    pub store: &'a StoreLayout,
    /// The configs (`config.d`), for the fallback check.
    pub configs: &'a Configs,
    /// The running kernel.
    pub kernel: &'a KernelRelease,
}

/// One metric family being written.
struct Family<'o> {
    out: &'o mut String,
}

impl Family<'_> {
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn family<'o>(out: &'o mut String, name: &str, kind: &str, help: &str) -> Family<'o> {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    Family { out }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn state_name(s: SetState) -> &'static str {
    match s {
        SetState::Loaded => "loaded",
        SetState::NotStored => "notStored",
        SetState::NoImage => "noImage",
        SetState::Skipped => "skipped",
        SetState::Failed => "failed",
        SetState::NotBound => "notBound",
    }
}

/// The metrics text. A source that is missing gives no samples (and `_present 0`); one that
/// cannot be read is an `kmod_day1_read_errors` sample naming it, never a failed scrape.
pub(crate) fn render(src: &MetricsSources<'_>) -> String {
    let mut out = String::new();
    let mut errors: Vec<String> = vec![];
    let status: Option<BootStatus> = read_state("status", src.status, &mut errors);
    let last: Option<PullStatus> = read_state("last-pull", &src.store.last_pull(), &mut errors);
    let guard: Option<RebootGuard> = read_state("reboots", &src.store.reboot_guard(), &mut errors);

    let mut f = family(
        &mut out,
        "kmod_day1_status_present",
        "gauge",
        "1 when the loader wrote its status this boot (kmod-day1-load ran).",
    );
    f.sample("kmod_day1_status_present", &[], u8::from(status.is_some()));
    if let Some(st) = &status {
        let mut f = family(
            &mut out,
            "kmod_day1_set_state",
            "gauge",
            "The loader's outcome for a module set this boot, one series per set with value 1.",
        );
        for s in &st.sets {
            f.sample(
                "kmod_day1_set_state",
                &[
                    ("config", &s.config),
                    ("set", &s.set),
                    ("state", state_name(s.state)),
                    ("kernel", &st.kernel_release),
                ],
                1,
            );
        }
        let mut f = family(
            &mut out,
            "kmod_day1_set_image_info",
            "gauge",
            "The image and manifest digest of a set's stored tree this boot.",
        );
        for s in &st.sets {
            if let (Some(i), Some(d)) = (&s.image, &s.manifest_digest) {
                f.sample(
                    "kmod_day1_set_image_info",
                    &[
                        ("config", &s.config),
                        ("set", &s.set),
                        ("image", i),
                        ("digest", d),
                    ],
                    1,
                );
            }
        }
        let mut f = family(
            &mut out,
            "kmod_day1_module_info",
            "gauge",
            "A module a set loaded (or found loaded) this boot, with its version and srcversion.",
        );
        for s in &st.sets {
            for m in &s.modules {
                f.sample(
                    "kmod_day1_module_info",
                    &[
                        ("config", &s.config),
                        ("set", &s.set),
                        ("module", &m.name),
                        ("version", m.version.as_deref().unwrap_or("")),
                        ("srcversion", m.srcversion.as_deref().unwrap_or("")),
                    ],
                    1,
                );
            }
        }
        let mut f = family(
            &mut out,
            "kmod_day1_set_fallback",
            "gauge",
            "1 when a configured set is stored for the running kernel but not loaded: the node runs the in-tree driver.",
        );
        for s in &st.sets {
            let fell_back = !matches!(
                s.state,
                SetState::Loaded | SetState::Skipped | SetState::NoImage
            ) && stored(src, &s.config, &s.set);
            f.sample(
                "kmod_day1_set_fallback",
                &[("config", &s.config), ("set", &s.set)],
                u8::from(fell_back),
            );
        }
    }
    let mut f = family(
        &mut out,
        "kmod_day1_reboots_requested_total",
        "counter",
        "Reboots kmod-day1-pull asked for, as its reboot-loop guard recorded them.",
    );
    f.sample(
        "kmod_day1_reboots_requested_total",
        &[],
        guard.map_or(0, |g| g.reboots.len()),
    );
    if let Some(l) = &last {
        let mut f = family(
            &mut out,
            "kmod_day1_last_pull_timestamp_seconds",
            "gauge",
            "When the last run of kmod-day1-pull ended.",
        );
        f.sample("kmod_day1_last_pull_timestamp_seconds", &[], l.finished_at);
        let mut f = family(
            &mut out,
            "kmod_day1_last_pull_success",
            "gauge",
            "1 when the last run of kmod-day1-pull had no error; its reboot decision as a label.",
        );
        f.sample(
            "kmod_day1_last_pull_success",
            &[("reboot", &l.reboot)],
            u8::from(l.error.is_none()),
        );
    }
    let mut f = family(
        &mut out,
        "kmod_day1_upgrade_preflight",
        "gauge",
        "The upgrade preflight's verdict for a set on a kernel the node can boot next, value 1.",
    );
    for p in preflights(src.store) {
        for s in &p.sets {
            f.sample(
                "kmod_day1_upgrade_preflight",
                &[
                    ("kernel", &p.kernel_release),
                    ("config", &s.config),
                    ("set", &s.set),
                    ("state", &s.state),
                ],
                1,
            );
        }
    }
    let mut f = family(
        &mut out,
        "kmod_day1_read_errors",
        "gauge",
        "1 for a state file that exists but cannot be read or parsed.",
    );
    for e in &errors {
        f.sample("kmod_day1_read_errors", &[("file", e)], 1);
    }
    out
}

/// A JSON state file: `None` when missing; when unreadable or not what it should be, `None`
/// and `what` noted in `errors`.
fn read_state<T: serde::de::DeserializeOwned>(
    what: &str,
    path: &Path,
    errors: &mut Vec<String>,
) -> Option<T> {
    match read_json(path) {
        Ok(v) => v,
        Err(_) => {
            errors.push(what.to_owned());
            None
        }
    }
}

/// Whether the running kernel's image of `config/set` is stored.
fn stored(src: &MetricsSources<'_>, config: &str, set: &str) -> bool {
    src.configs
        .current
        .iter()
        .filter(|c| c.name.as_str() == config)
        .flat_map(|c| c.config.module_sets.iter().map(move |s| (c, s)))
        .filter(|(_, s)| s.name.as_str() == set)
        .any(|(c, s)| {
            let Ok(Some(image)) = s.image_for(src.kernel) else {
                return false;
            };
            src.store
                .read_ref(&c.name, &s.name, src.kernel, &image.to_string())
                .ok()
                .flatten()
                .is_some_and(|(_, r)| src.store.tree_modules(&r.tree).is_dir())
        })
}

/// Every readable `preflight/*.json`, sorted by kernel.
fn preflights(store: &StoreLayout) -> Vec<UpgradePreflight> {
    let Ok(rd) = std::fs::read_dir(store.root().join("preflight")) else {
        return vec![];
    };
    let mut out: Vec<UpgradePreflight> = rd
        .flatten()
        .filter_map(|e| read_json(&e.path()).ok().flatten())
        .collect();
    out.sort_by(|a, b| a.kernel_release.cmp(&b.kernel_release));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmod_day1_contract::{load_config_dir, write_json_atomic, ConfigName, RefRecord, SetName};

    const K: &str = "6.1.0-27-amd64";

    struct Node {
        dir: tempfile::TempDir,
    }

    impl Node {
        fn new() -> Self {
            let n = Self {
                dir: tempfile::tempdir().unwrap(),
            };
            std::fs::create_dir_all(n.dir.path().join("config.d")).unwrap();
            std::fs::write(
                n.dir.path().join("config.d/99-e1000.json"),
                r#"{"version":1,"moduleSets":[{"name":"e1000","image":"quay.io/acme/e1000","modules":[{"name":"e1000"}],"inTreeModulesToRemove":["e1000"]}]}"#,
            )
            .unwrap();
            n
        }
        fn store(&self) -> StoreLayout {
            StoreLayout::new(self.dir.path().join("store"))
        }
        fn status(&self, state: &str) {
            let s = format!(
                r#"{{"version":1,"kernelRelease":"{K}","bootId":"b","sets":[{{"config":"99-e1000","set":"e1000","state":"{state}","image":"quay.io/acme/e1000:{K}","manifestDigest":"sha256:ab","modules":[{{"name":"e1000","version":"7.3.21 \"k8\"","srcversion":"ED25","loadUs":5}}],"kernelUs":1,"overheadUs":1}}],"totalUs":2}}"#
            );
            std::fs::write(self.dir.path().join("status.json"), s).unwrap();
        }
        fn stored(&self) {
            let store = self.store();
            let kernel = KernelRelease::new(K).unwrap();
            let image = format!("quay.io/acme/e1000:{K}");
            let p = store.ref_file(
                &ConfigName::new("99-e1000").unwrap(),
                &SetName::new("e1000").unwrap(),
                &kernel,
                &image,
            );
            write_json_atomic(
                &p,
                &RefRecord {
                    version: 2,
                    image,
                    manifest_digest: "sha256:ab".into(),
                    tree: "t1".into(),
                    committed_at: 1,
                },
            )
            .unwrap();
            std::fs::create_dir_all(store.tree_modules("t1")).unwrap();
        }
        fn render(&self) -> String {
            let (current, bad) = load_config_dir(&self.dir.path().join("config.d")).unwrap();
            let configs = Configs {
                current,
                prestaged: vec![],
                bad,
            };
            let store = self.store();
            let kernel = KernelRelease::new(K).unwrap();
            render(&MetricsSources {
                status: &self.dir.path().join("status.json"),
                store: &store,
                configs: &configs,
                kernel: &kernel,
            })
        }
    }

    #[test]
    fn a_loaded_set_with_its_module_and_image() {
        let n = Node::new();
        n.stored();
        n.status("loaded");
        let m = n.render();
        assert!(m.contains("kmod_day1_status_present 1\n"), "{m}");
        assert!(m.contains(
            "kmod_day1_set_state{config=\"99-e1000\",set=\"e1000\",state=\"loaded\",kernel=\"6.1.0-27-amd64\"} 1\n"
        ));
        assert!(m.contains("kmod_day1_module_info{config=\"99-e1000\",set=\"e1000\",module=\"e1000\",version=\"7.3.21 \\\"k8\\\"\",srcversion=\"ED25\"} 1\n"), "{m}");
        assert!(m.contains("digest=\"sha256:ab\""));
        assert!(m.contains("kmod_day1_set_fallback{config=\"99-e1000\",set=\"e1000\"} 0\n"));
        assert!(m.contains("kmod_day1_reboots_requested_total 0\n"));
        // Every sample's family is declared first.
        for line in m.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(m.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }

    #[test]
    fn stored_but_not_loaded_is_a_fallback() {
        let n = Node::new();
        n.stored();
        for state in ["failed", "notBound", "notStored"] {
            n.status(state);
            assert!(
                n.render()
                    .contains("kmod_day1_set_fallback{config=\"99-e1000\",set=\"e1000\"} 1\n"),
                "{state}"
            );
        }
        // Not stored at all: the pull has work to do, the node has not fallen back yet.
        let m = Node::new();
        m.status("notStored");
        assert!(m
            .render()
            .contains("kmod_day1_set_fallback{config=\"99-e1000\",set=\"e1000\"} 0\n"));
    }

    #[test]
    fn missing_and_unreadable_files_never_fail_the_scrape() {
        let n = Node::new();
        let m = n.render();
        assert!(m.contains("kmod_day1_status_present 0\n"));
        assert!(!m.contains("kmod_day1_set_state{"));
        std::fs::write(n.dir.path().join("status.json"), "{ not json").unwrap();
        let m = n.render();
        assert!(
            m.contains("kmod_day1_read_errors{file=\"status\"} 1\n"),
            "{m}"
        );
    }
}
