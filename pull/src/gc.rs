// SPDX-License-Identifier: Apache-2.0
//! Garbage collection after the pull round: what failed pulls left in `tmp/`, the refs no
//! config the node has or was prestaged with still wants (a config gone, a set gone, an image
//! replaced everywhere, a kernel no boot can use), every tree no ref points at, and prestaged
//! records whose config has landed in `config.d`. A failure here leaves a valid store: it is
//! logged, never fatal.

use kmod_day1_contract::KernelRelease;
use tracing::{info, warn};

use crate::plan::{Configs, Plan};
use crate::store::{RefEntry, Store};

/// Why `entry` is garbage, or `None` when some config still wants it.
pub(crate) fn doomed(plan: &Plan, entry: &RefEntry) -> Option<String> {
    if plan.unparsed.contains(&entry.config) {
        return None;
    }
    let Some(versions) = plan.wanted.get(&entry.config) else {
        return Some("its config no longer exists".into());
    };
    if plan
        .bootable
        .as_ref()
        .is_some_and(|b| !b.contains(&entry.kernel))
    {
        return Some("no boot can use its kernel any more".into());
    }
    let (Some(rec), Ok(kernel)) = (&entry.record, KernelRelease::new(&entry.kernel)) else {
        return None;
    };
    let wanted = versions.iter().any(|c| {
        c.module_sets.iter().any(|s| {
            s.name.as_str() == entry.set
                && match s.image_for(&kernel) {
                    Ok(Some(image)) => image.to_string() == rec.image,
                    Ok(None) => false,
                    // Cannot tell: keep.
                    Err(_) => true,
                }
        })
    });
    (!wanted).then(|| format!("no config wants {} any more", rec.image))
}

/// Collects the store's garbage, keeping what `plan` says the node still wants.
pub(crate) fn collect_garbage(store: &Store, plan: &Plan, configs: &Configs) {
    // What failed pulls left in tmp/ (partial trees) goes now, not next run.
    if let Err(e) = store.clean_tmp() {
        warn!("cleaning the store's tmp/: {e}");
    }
    match store.gc(|entry| doomed(plan, entry)) {
        Ok(removed) if !removed.is_empty() => {
            info!(trees = removed.len(), "removed unreferenced trees")
        }
        Ok(_) => {}
        Err(e) => warn!("garbage collection failed (the store is still valid): {e}"),
    }
    // A prestaged config that config.d now holds as it is has landed.
    for p in &configs.prestaged {
        if let Some(c) = configs.current.iter().find(|c| c.name == p.name) {
            if c.config == p.config {
                match std::fs::remove_file(&p.path) {
                    Ok(()) => {
                        info!(config = %p.name, "the prestaged config has landed in config.d")
                    }
                    Err(e) => {
                        warn!(path = %p.path.display(), "removing a landed prestaged config: {e}")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootable::BootableKernels;
    use crate::plan::plan;
    use kmod_day1_contract::{load_config_dir, ConfigName, RefRecord, SetName, STORE_VERSION};
    use std::time::Duration;

    #[test]
    fn keeps_what_current_and_prestaged_configs_want_and_drops_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open_locked(&d.path().join("store"), Duration::ZERO).unwrap();
        let k = KernelRelease::new("6.1").unwrap();
        let write = |dir: &str, file: &str, text: &str| {
            std::fs::create_dir_all(d.path().join(dir)).unwrap();
            std::fs::write(d.path().join(dir).join(file), text).unwrap();
        };
        let cfg = |image: &str| {
            format!(
                r#"{{"version": 1, "moduleSets": [{{"name": "s", "image": "{image}", "modules": [{{"name": "m"}}]}}]}}"#
            )
        };
        write("config.d", "kept.json", &cfg("reg.local/x:v1"));
        write("config.d", "typo.json", "{");
        write("prestaged", "kept.json", &cfg("reg.local/x:v2"));
        let refs = [
            ("kept", "reg.local/x:v1", "a1"),
            ("kept", "reg.local/x:v2", "a2"),
            ("kept", "reg.local/x:v0", "a0"),
            ("typo", "reg.local/y:1", "b1"),
            ("gone", "reg.local/z:1", "c1"),
        ];
        for (config, image, tree) in refs {
            let staging = store.tmp_path(&format!("tree-{tree}"));
            std::fs::create_dir_all(staging.join("modules")).unwrap();
            store.commit_tree(&staging, tree).unwrap();
            let rec = RefRecord {
                version: STORE_VERSION,
                image: image.into(),
                manifest_digest: "sha256:00".into(),
                tree: tree.into(),
                committed_at: 0,
            };
            store
                .write_ref(
                    &ConfigName::new(config).unwrap(),
                    &SetName::new("s").unwrap(),
                    &k,
                    &rec,
                )
                .unwrap();
        }
        std::fs::write(store.tmp_path("tree-partial"), "x").unwrap();
        let (current, bad) = load_config_dir(&d.path().join("config.d")).unwrap();
        let (prestaged, _) = load_config_dir(&d.path().join("prestaged")).unwrap();
        let configs = Configs {
            current,
            prestaged,
            bad,
        };
        let p = plan(&configs, &k, &BootableKernels::default(), false);
        collect_garbage(&store, &p, &configs);
        for tree in ["a1", "a2", "b1"] {
            assert!(store.has_tree(tree), "{tree}");
        }
        for tree in ["a0", "c1"] {
            assert!(!store.has_tree(tree), "{tree}");
        }
        assert!(!store.tmp_path("tree-partial").exists());
        // The prestaged config has not landed (config.d still wants v1).
        assert!(d.path().join("prestaged/kept.json").exists());

        // The MachineConfig lands: config.d holds v2; v1 goes, the prestaged record too.
        write("config.d", "kept.json", &cfg("reg.local/x:v2"));
        let (current, bad) = load_config_dir(&d.path().join("config.d")).unwrap();
        let (prestaged, _) = load_config_dir(&d.path().join("prestaged")).unwrap();
        let configs = Configs {
            current,
            prestaged,
            bad,
        };
        let p = plan(&configs, &k, &BootableKernels::default(), false);
        collect_garbage(&store, &p, &configs);
        assert!(!store.has_tree("a1"));
        assert!(store.has_tree("a2"));
        assert!(!d.path().join("prestaged/kept.json").exists());
    }
}
