// SPDX-License-Identifier: Apache-2.0
//! The first phase of a run: which images the store must hold. For every kernel the node
//! can boot (the running one first, then the others `bootable` finds) and every module set
//! of every config the node has (`config.d`) or was prestaged with (`STORE/prestaged`), the
//! image configured for that kernel, as a [`Job`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use kmod_day1_contract::{
    ConfigError, ConfigName, ImageRef, KernelRelease, LoadedConfig, ModuleSet, NodeConfig,
};
use tracing::{error, info};

use crate::bootable::BootableKernels;

/// One image to have in the store.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    /// The config the set belongs to.
    pub config: ConfigName,
    /// The module set.
    pub set: ModuleSet,
    /// The kernel the image is for.
    pub kernel: KernelRelease,
    /// The image configured for that kernel.
    pub image: ImageRef,
    /// Whether it is for another kernel than the running one.
    pub prefetch: bool,
    /// Whether only a prestaged config (one still to come) wants it.
    pub prestaged: bool,
}

impl Job {
    /// `config/set for kernel`, for the journal.
    pub fn label(&self) -> String {
        format!("{}/{} for {}", self.config, self.set.name, self.kernel)
    }
}

/// The configs of a run.
#[derive(Debug, Default)]
pub(crate) struct Configs {
    /// `config.d`: what the node runs.
    pub current: Vec<LoadedConfig>,
    /// `STORE/prestaged`: what the prestage agent recorded, to come.
    pub prestaged: Vec<LoadedConfig>,
    /// Files of either directory that could not be used (each already logged).
    pub bad: Vec<ConfigError>,
}

impl Configs {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty() && self.prestaged.is_empty()
    }
}

/// What a run is to do, and what it must keep.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// The images, the running kernel's first.
    pub jobs: Vec<Job>,
    /// Config files or sets that could not be used (each already logged).
    pub config_errors: usize,
    /// Every version of every config the node has or was prestaged with, by name: garbage
    /// collection keeps the refs of the images they name.
    pub wanted: BTreeMap<String, Vec<NodeConfig>>,
    /// Configs whose file is there but could not be used: all their refs are kept (a typo
    /// must not wipe the store).
    pub unparsed: BTreeSet<String>,
    /// The kernels a boot can still use, when every source could be read; `None`: unknown,
    /// so no ref is pruned for its kernel.
    pub bootable: Option<BTreeSet<String>>,
}

/// Plans the run for `running` and the other `bootable` kernels. `next_only`: only the
/// other kernels (the stop step at shutdown).
pub(crate) fn plan(
    configs: &Configs,
    running: &KernelRelease,
    bootable: &BootableKernels,
    next_only: bool,
) -> Plan {
    let mut plan = Plan {
        config_errors: configs.bad.len(),
        ..Plan::default()
    };
    for c in configs.current.iter().chain(&configs.prestaged) {
        plan.wanted
            .entry(c.name.to_string())
            .or_default()
            .push(c.config.clone());
    }
    plan.unparsed = configs
        .bad
        .iter()
        .filter_map(|e| match e {
            ConfigError::File(path, _) => Path::new(path)
                .file_stem()
                .and_then(|s| s.to_str())
                .map(str::to_owned),
            _ => None,
        })
        .collect();
    if bootable.complete && !bootable.kernels.is_empty() {
        let mut b: BTreeSet<String> = bootable.kernels.iter().map(|k| k.to_string()).collect();
        b.insert(running.to_string());
        plan.bootable = Some(b);
    }
    for k in &bootable.staged {
        info!(kernel = %k, "a staged deployment boots kernel {k} next");
    }
    let mut kernels = vec![];
    if !next_only {
        kernels.push((running.clone(), false));
    }
    kernels.extend(
        bootable
            .kernels
            .iter()
            .filter(|k| *k != running)
            .map(|k| (k.clone(), true)),
    );
    let mut seen = BTreeSet::new();
    for (kernel, prefetch) in kernels {
        let sources = [(&configs.current, false), (&configs.prestaged, true)];
        for (list, prestaged) in sources {
            for c in list {
                for set in &c.config.module_sets {
                    match set.image_for(&kernel) {
                        Ok(Some(image)) => {
                            let key = (
                                c.name.to_string(),
                                set.name.to_string(),
                                kernel.to_string(),
                                image.to_string(),
                            );
                            if seen.insert(key) {
                                plan.jobs.push(Job {
                                    config: c.name.clone(),
                                    set: set.clone(),
                                    kernel: kernel.clone(),
                                    image,
                                    prefetch,
                                    prestaged,
                                });
                            }
                        }
                        Ok(None) => {
                            info!(config = %c.name, set = %set.name, kernel = %kernel, "no image configured for this kernel")
                        }
                        Err(e) => {
                            error!(config = %c.name, set = %set.name, kernel = %kernel, "{e}");
                            plan.config_errors += 1;
                        }
                    }
                }
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmod_day1_contract::load_config_dir;

    fn kernel(k: &str) -> KernelRelease {
        KernelRelease::new(k).unwrap()
    }

    fn config(dir: &Path, file: &str, sets: &[(&str, &str)]) {
        let sets: Vec<String> = sets
            .iter()
            .map(|(name, image)| {
                format!(
                    r#"{{"name": "{name}", "image": "{image}", "modules": [{{"name": "{name}"}}]}}"#
                )
            })
            .collect();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join(file),
            format!(r#"{{"version": 1, "moduleSets": [{}]}}"#, sets.join(", ")),
        )
        .unwrap();
    }

    #[test]
    fn running_kernel_first_then_the_others_current_and_prestaged() {
        let d = tempfile::tempdir().unwrap();
        let current_dir = d.path().join("config.d");
        let prestaged_dir = d.path().join("prestaged");
        config(
            &current_dir,
            "50-a.json",
            &[
                ("e1000", "reg.local/e1000:${KERNEL_FULL_VERSION}"),
                ("ice", "reg.local/ice:v1"),
            ],
        );
        std::fs::write(current_dir.join("60-typo.json"), "{ not json").unwrap();
        // The same config to come, with ice v2.
        config(
            &prestaged_dir,
            "50-a.json",
            &[
                ("e1000", "reg.local/e1000:${KERNEL_FULL_VERSION}"),
                ("ice", "reg.local/ice:v2"),
            ],
        );
        let (current, bad) = load_config_dir(&current_dir).unwrap();
        let (prestaged, _) = load_config_dir(&prestaged_dir).unwrap();
        let configs = Configs {
            current,
            prestaged,
            bad,
        };

        let running = kernel("6.1.0-27-amd64");
        let bootable = BootableKernels {
            kernels: [kernel("6.1.0-28-amd64"), running.clone()].into(),
            staged: BTreeSet::new(),
            deployments: Default::default(),
            complete: true,
        };
        let p = plan(&configs, &running, &bootable, false);

        let jobs: Vec<(String, bool, bool)> = p
            .jobs
            .iter()
            .map(|j| (j.image.to_string(), j.prefetch, j.prestaged))
            .collect();
        let job = |i: &str, prefetch, prestaged| (i.to_string(), prefetch, prestaged);
        assert_eq!(
            jobs,
            [
                job("reg.local/e1000:6.1.0-27-amd64", false, false),
                job("reg.local/ice:v1", false, false),
                job("reg.local/ice:v2", false, true),
                job("reg.local/e1000:6.1.0-28-amd64", true, false),
                job("reg.local/ice:v1", true, false),
                job("reg.local/ice:v2", true, true),
            ]
        );
        assert_eq!(p.jobs[0].label(), "50-a/e1000 for 6.1.0-27-amd64");
        assert_eq!(p.config_errors, 1);
        assert_eq!(p.wanted["50-a"].len(), 2);
        assert_eq!(p.unparsed, BTreeSet::from(["60-typo".to_string()]));
        assert_eq!(
            p.bootable,
            Some(BTreeSet::from([
                "6.1.0-27-amd64".to_string(),
                "6.1.0-28-amd64".to_string()
            ]))
        );

        // At shutdown: the next kernels only.
        let p = plan(&configs, &running, &bootable, true);
        assert_eq!(p.jobs.len(), 3);
        assert!(p
            .jobs
            .iter()
            .all(|j| j.prefetch && j.kernel.as_str() == "6.1.0-28-amd64"));

        // A source that could not be read: what was found is fetched, nothing is pruned.
        let partial = BootableKernels {
            complete: false,
            ..bootable
        };
        let p = plan(&configs, &running, &partial, false);
        assert_eq!(p.jobs.len(), 6);
        assert_eq!(p.bootable, None);
    }
}
