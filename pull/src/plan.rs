// SPDX-License-Identifier: Apache-2.0
//! The first phase of a run: which images the store must hold. For every kernel the node
//! can boot (the running one first, then those of the other boot entries) and every module
//! set of every config, the image configured for that kernel, as a [`Job`].

use std::collections::BTreeSet;
use std::path::Path;

use kmod_day1_contract::{
    ConfigError, ConfigName, ImageRef, KernelRelease, LoadedConfig, ModuleSet,
};
use tracing::{error, info};

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
}

impl Job {
    /// `config/set for kernel`, for the journal.
    pub fn label(&self) -> String {
        format!("{}/{} for {}", self.config, self.set.name, self.kernel)
    }
}

/// What a run is to do, and what it must keep.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// The images, the running kernel's first.
    pub jobs: Vec<Job>,
    /// Config files or sets that could not be used (each already logged).
    pub config_errors: usize,
    /// Every config whose refs garbage collection keeps: the ones loaded and the ones whose
    /// file is there but could not be used (a typo must not wipe the store).
    pub configs_present: BTreeSet<String>,
    /// The kernels a boot can still use, when the boot entries could be read; `None`: unknown,
    /// so no ref is pruned for its kernel.
    pub bootable: Option<BTreeSet<String>>,
}

/// Plans the run for `running` and the kernels of the boot entries (`entries`: what reading
/// them gave), from the configs that loaded and the config files that did not (`bad`).
pub(crate) fn plan(
    configs: &[LoadedConfig],
    bad: &[ConfigError],
    running: &KernelRelease,
    entries: std::io::Result<Vec<KernelRelease>>,
    entries_dir: &Path,
) -> Plan {
    let mut plan = Plan {
        config_errors: bad.len(),
        ..Plan::default()
    };
    plan.configs_present = configs.iter().map(|c| c.name.to_string()).collect();
    plan.configs_present.extend(bad.iter().filter_map(|e| {
        match e {
            ConfigError::File(path, _) => Path::new(path)
                .file_stem()
                .and_then(|s| s.to_str())
                .map(str::to_owned),
            _ => None,
        }
    }));
    let mut kernels = vec![(running.clone(), false)];
    match entries {
        Ok(ks) => {
            if !ks.is_empty() {
                let mut b: BTreeSet<String> = ks.iter().map(|k| k.to_string()).collect();
                b.insert(running.to_string());
                plan.bootable = Some(b);
            }
            kernels.extend(ks.into_iter().filter(|k| k != running).map(|k| (k, true)));
        }
        Err(e) => {
            tracing::warn!(dir = %entries_dir.display(), "cannot read the boot entries, so no prefetch: {e}")
        }
    }
    for (kernel, prefetch) in kernels {
        for c in configs {
            for set in &c.config.module_sets {
                match set.image_for(&kernel) {
                    Ok(Some(image)) => plan.jobs.push(Job {
                        config: c.name.clone(),
                        set: set.clone(),
                        kernel: kernel.clone(),
                        image,
                        prefetch,
                    }),
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
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmod_day1_contract::load_config_dir;

    fn kernel(k: &str) -> KernelRelease {
        KernelRelease::new(k).unwrap()
    }

    #[test]
    fn running_kernel_first_then_boot_entries_and_every_config_kept() {
        let d = tempfile::tempdir().unwrap();
        let set = |name: &str, image: &str| {
            format!(
                r#"{{"name": "{name}", "image": "{image}", "modules": [{{"name": "{name}"}}]}}"#
            )
        };
        std::fs::write(
            d.path().join("50-a.json"),
            format!(
                r#"{{"version": 1, "moduleSets": [{}, {}]}}"#,
                set("e1000", "reg.local/e1000:${KERNEL_FULL_VERSION}"),
                set("ice", "reg.local/ice:v1")
            ),
        )
        .unwrap();
        std::fs::write(d.path().join("60-typo.json"), "{ not json").unwrap();
        let (configs, bad) = load_config_dir(d.path()).unwrap();
        assert_eq!(bad.len(), 1);

        let running = kernel("6.1.0-27-amd64");
        let entries = Ok(vec![kernel("6.1.0-28-amd64"), running.clone()]);
        let p = plan(&configs, &bad, &running, entries, d.path());

        let jobs: Vec<(String, bool)> = p
            .jobs
            .iter()
            .map(|j| (j.image.to_string(), j.prefetch))
            .collect();
        assert_eq!(
            jobs,
            [
                ("reg.local/e1000:6.1.0-27-amd64".to_string(), false),
                ("reg.local/ice:v1".to_string(), false),
                ("reg.local/e1000:6.1.0-28-amd64".to_string(), true),
                ("reg.local/ice:v1".to_string(), true),
            ]
        );
        assert_eq!(p.jobs[0].label(), "50-a/e1000 for 6.1.0-27-amd64");
        assert_eq!(p.config_errors, 1);
        assert_eq!(
            p.configs_present,
            BTreeSet::from(["50-a".to_string(), "60-typo".to_string()])
        );
        assert_eq!(
            p.bootable,
            Some(BTreeSet::from([
                "6.1.0-27-amd64".to_string(),
                "6.1.0-28-amd64".to_string()
            ]))
        );

        // Unreadable boot entries: the running kernel only, and nothing known to prune.
        let p = plan(
            &configs,
            &[],
            &running,
            Err(std::io::Error::other("denied")),
            d.path(),
        );
        assert_eq!(p.jobs.len(), 2);
        assert!(p.jobs.iter().all(|j| !j.prefetch));
        assert_eq!(p.bootable, None);
        assert_eq!(p.config_errors, 0);
    }
}
