// SPDX-License-Identifier: Apache-2.0
//! `--bundle`: a store prepared by `kmod-day1-pull --kernel-release` (on any machine), carried
//! to the node inside the Ignition config or the initrd, so that the node's first boot loads
//! the out-of-tree driver with no pull: the only way for a NIC no in-tree driver can drive.
//!
//! Only what the loader reads for the config being generated is carried: for each kernel,
//! the version 2 ref of the image each module set wants for it, and the tree it names.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kmod_day1_contract::{is_valid_tree_id, KernelRelease, StoreLayout, STORE_DIR};

use crate::{Day1Config, Error};

/// One file system object to create on the node, at its absolute path there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEntry {
    /// A directory.
    Dir {
        /// Absolute path on the node.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Absolute path on the node.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Contents.
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Absolute path on the node.
        path: String,
        /// Link target, as stored.
        target: String,
    },
}

impl NodeEntry {
    /// The absolute path on the node.
    pub fn path(&self) -> &str {
        match self {
            NodeEntry::Dir { path, .. }
            | NodeEntry::File { path, .. }
            | NodeEntry::Symlink { path, .. } => path,
        }
    }
}

/// The part of a prepared store a config needs, read into memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    kernels: Vec<KernelRelease>,
    entries: Vec<NodeEntry>,
}

impl Bundle {
    /// Reads from the store at `store` the refs and trees `config` needs for `kernels` (every
    /// kernel the store holds refs of the config for, when empty). Every module set with an
    /// image for a kernel must be stored for it.
    pub fn read(
        store: &Path,
        config: &Day1Config,
        kernels: &[KernelRelease],
    ) -> Result<Self, Error> {
        let layout = StoreLayout::new(store);
        let config_refs = layout.refs_dir().join(config.name.as_str());
        let prepare = |k: &str| {
            format!(
                "prepare it with `mcgen ... -o node-config --output-file DIR/config.d/{name}.json` and `kmod-day1-pull --config-dir DIR/config.d --store {store} --kernel-release {k}`",
                name = config.name,
                store = store.display(),
            )
        };
        if !store.is_dir() {
            return Err(Error::Invalid(format!(
                "--bundle {}: no such directory; {}",
                store.display(),
                prepare("KVER")
            )));
        }
        let kernels: Vec<KernelRelease> = if kernels.is_empty() {
            stored_kernels(&config_refs)?
        } else {
            kernels.to_vec()
        };
        if kernels.is_empty() {
            return Err(Error::Invalid(format!(
                "--bundle {}: the store holds nothing for config {}; {}",
                store.display(),
                config.name,
                prepare("KVER")
            )));
        }
        let mut entries = vec![];
        let mut trees = BTreeSet::new();
        for kernel in &kernels {
            for set in &config.node.module_sets {
                let Some(image) = set.image_for(kernel)? else {
                    continue;
                };
                let image = image.to_string();
                let path = layout.ref_file(&config.name, &set.name, kernel, &image);
                let record = kmod_day1_contract::read_json::<kmod_day1_contract::RefRecord>(&path)
                    .map_err(|e| Error::io(format!("reading ref {}", path.display()), e))?;
                let usable = record.as_ref().filter(|r| {
                    r.image == image
                        && is_valid_tree_id(&r.tree)
                        && layout.tree_modules(&r.tree).is_dir()
                });
                let Some(record) = usable else {
                    return Err(Error::Invalid(format!(
                        "--bundle {}: {image} (set {}) is not stored for kernel {kernel}; {}",
                        store.display(),
                        set.name,
                        prepare(kernel.as_str())
                    )));
                };
                entries.push(NodeEntry::File {
                    path: node_path(store, &path),
                    mode: 0o644,
                    data: read(&path)?,
                });
                if trees.insert(record.tree.clone()) {
                    walk(store, &layout.tree(&record.tree), &mut entries)?;
                }
            }
        }
        entries.sort_by(|a, b| a.path().cmp(b.path()));
        Ok(Self { kernels, entries })
    }

    /// The kernels carried.
    pub fn kernels(&self) -> &[KernelRelease] {
        &self.kernels
    }

    /// What to create on the node, sorted by path (a directory before what it holds).
    pub fn entries(&self) -> &[NodeEntry] {
        &self.entries
    }

    /// Bytes of file contents.
    pub fn file_bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|e| match e {
                NodeEntry::File { data, .. } => data.len(),
                _ => 0,
            })
            .sum()
    }
}

/// The kernels with a ref directory under any set of the config (version 2 layout).
fn stored_kernels(config_refs: &Path) -> Result<Vec<KernelRelease>, Error> {
    let mut kernels = BTreeSet::new();
    for set in sorted_dir(config_refs)? {
        if !set.is_dir() {
            continue;
        }
        for k in sorted_dir(&set)? {
            let name = k.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if k.is_dir() {
                if let Ok(k) = KernelRelease::new(name) {
                    kernels.insert(k);
                }
            }
        }
    }
    Ok(kernels.into_iter().collect())
}

/// A directory's entries, sorted; none when it does not exist.
fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
    };
    let mut v = rd
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    v.sort();
    Ok(v)
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

/// `path` inside the store at `store`, as a path under the node's store.
fn node_path(store: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(store).expect("a path inside the store");
    format!("{STORE_DIR}/{}", rel.display())
}

/// Adds `dir` (a tree) and everything under it.
fn walk(store: &Path, dir: &Path, out: &mut Vec<NodeEntry>) -> Result<(), Error> {
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    out.push(NodeEntry::Dir {
        path: node_path(store, dir),
        mode: meta.permissions().mode() & 0o755,
    });
    for p in sorted_dir(dir)? {
        let meta = std::fs::symlink_metadata(&p)
            .map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            walk(store, &p, out)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&p)
                .map_err(|e| Error::io(format!("reading link {}", p.display()), e))?;
            out.push(NodeEntry::Symlink {
                path: node_path(store, &p),
                target: target.to_string_lossy().into_owned(),
            });
        } else if ft.is_file() {
            out.push(NodeEntry::File {
                path: node_path(store, &p),
                mode: meta.mode() & 0o755,
                data: read(&p)?,
            });
        } else {
            return Err(Error::Invalid(format!(
                "--bundle: {} is neither a file, a directory nor a link: kmod-day1-pull writes no such thing; prepare the store again",
                p.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModuleSetBuilder;
    use kmod_day1_contract::{write_json_atomic, RefRecord, STORE_VERSION};

    fn config() -> Day1Config {
        let set = ModuleSetBuilder::new("e1000")
            .image("reg.local/e1000")
            .module("e1000", &[])
            .build()
            .unwrap();
        Day1Config::new("99-kd1", "worker", vec![set]).unwrap()
    }

    fn store_for(store: &Path, kernel: &str, tree: &str) {
        let layout = StoreLayout::new(store);
        let c = config();
        let k = KernelRelease::new(kernel).unwrap();
        let image = format!("reg.local/e1000:{kernel}");
        let m = layout.tree_modules(tree).join("extra");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("e1000.ko"), format!("ko {kernel}")).unwrap();
        std::os::unix::fs::symlink("e1000.ko", m.join("alias.ko")).unwrap();
        let rec = RefRecord {
            version: STORE_VERSION,
            image: image.clone(),
            manifest_digest: "sha256:00".into(),
            tree: tree.into(),
            committed_at: 1,
        };
        let set = &c.node.module_sets[0].name;
        write_json_atomic(&layout.ref_file(&c.name, set, &k, &image), &rec).unwrap();
    }

    #[test]
    fn carries_the_refs_and_trees_of_the_kernels_asked_for() {
        let d = tempfile::tempdir().unwrap();
        store_for(d.path(), "6.1.0-27-amd64", "aa");
        store_for(d.path(), "6.1.0-28-amd64", "bb");
        // Another config's tree and a stray tree are never carried.
        std::fs::create_dir_all(d.path().join("trees/cc/modules")).unwrap();

        let all = Bundle::read(d.path(), &config(), &[]).unwrap();
        assert_eq!(all.kernels().len(), 2);
        let paths: Vec<&str> = all.entries().iter().map(NodeEntry::path).collect();
        assert!(paths.contains(&"/var/lib/kmod-day1/trees/aa/modules/extra/e1000.ko"));
        assert!(paths.contains(&"/var/lib/kmod-day1/trees/bb/modules/extra/alias.ko"));
        assert!(!paths.iter().any(|p| p.contains("/cc")));
        assert_eq!(paths.iter().filter(|p| p.contains("/refs/")).count(), 2);

        let one = Bundle::read(
            d.path(),
            &config(),
            &[KernelRelease::new("6.1.0-28-amd64").unwrap()],
        )
        .unwrap();
        assert!(!one.entries().iter().any(|e| e.path().contains("/aa")));
        assert_eq!(one.file_bytes(), "ko 6.1.0-28-amd64".len() + ref_len(&one));

        let e =
            Bundle::read(d.path(), &config(), &[KernelRelease::new("6.9.9").unwrap()]).unwrap_err();
        assert!(
            e.to_string().contains(
                "reg.local/e1000:6.9.9 (set e1000) is not stored for kernel 6.9.9; prepare it with"
            ),
            "{e}"
        );
        let empty = tempfile::tempdir().unwrap();
        let e = Bundle::read(empty.path(), &config(), &[]).unwrap_err();
        assert!(
            e.to_string().contains("holds nothing for config 99-kd1"),
            "{e}"
        );
    }

    fn ref_len(b: &Bundle) -> usize {
        b.entries()
            .iter()
            .filter_map(|e| match e {
                NodeEntry::File { path, data, .. } if path.contains("/refs/") => Some(data.len()),
                _ => None,
            })
            .sum()
    }
}
