// SPDX-License-Identifier: Apache-2.0
//! Garbage collection after the pull round: what failed pulls left in `tmp/`, the refs of
//! configs that are gone and of kernels no boot can use, and every tree no ref points at.
//! A failure here leaves a valid store: it is logged, never fatal.

use tracing::{info, warn};

use crate::plan::Plan;
use crate::store::Store;

/// Collects the store's garbage, keeping what `plan` says the node still has.
pub(crate) fn collect_garbage(store: &Store, plan: &Plan) {
    // What failed pulls left in tmp/ (partial trees) goes now, not next run.
    if let Err(e) = store.clean_tmp() {
        warn!("cleaning the store's tmp/: {e}");
    }
    match store.gc(&plan.configs_present, plan.bootable.as_ref()) {
        Ok(removed) if !removed.is_empty() => {
            info!(trees = removed.len(), "removed unreferenced trees")
        }
        Ok(_) => {}
        Err(e) => warn!("garbage collection failed (the store is still valid): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmod_day1_contract::{ConfigName, KernelRelease, RefRecord, SetName, STORE_VERSION};

    #[test]
    fn keeps_the_refs_of_every_config_present_and_drops_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open_locked(d.path()).unwrap();
        let (set, k) = (
            SetName::new("s").unwrap(),
            KernelRelease::new("6.1").unwrap(),
        );
        for (config, tree) in [("kept", "aa"), ("typo", "bb"), ("gone", "cc")] {
            let staging = store.tmp_path(&format!("tree-{tree}"));
            std::fs::create_dir_all(staging.join("modules")).unwrap();
            store.commit_tree(&staging, tree).unwrap();
            let rec = RefRecord {
                version: STORE_VERSION,
                image: "r/x:1".into(),
                manifest_digest: "sha256:00".into(),
                tree: tree.into(),
                committed_at: 0,
            };
            store
                .write_ref(&ConfigName::new(config).unwrap(), &set, &k, &rec)
                .unwrap();
        }
        std::fs::write(store.tmp_path("tree-partial"), "x").unwrap();
        let plan = Plan {
            configs_present: ["kept".to_owned(), "typo".to_owned()].into(),
            ..Plan::default()
        };
        collect_garbage(&store, &plan);
        assert!(store.has_tree("aa") && store.has_tree("bb"));
        assert!(!store.has_tree("cc"));
        assert!(!store.tmp_path("tree-partial").exists());
    }
}
