// SPDX-License-Identifier: Apache-2.0
//! The writer's side of the store (`docs/node-contract.md`): lock, staging, commit of trees
//! and refs, garbage collection.
//!
//! Commit order: a tree is extracted into `tmp/`, every file and directory fsynced, renamed
//! into `trees/`, `trees/` fsynced; only then is the ref written (temp + fsync + rename +
//! fsync). A crash leaves the old complete state or the new one, plus leftovers in `tmp/`
//! that the next run removes.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kmod_day1_contract::{
    is_valid_tree_id, read_json, sync_dir, write_json_atomic, AbsPath, ConfigName, KernelRelease,
    RefRecord, SetName, StoreLayout,
};
use nix::fcntl::{Flock, FlockArg};
use tracing::{info, warn};

use crate::progress::human_bytes;
use crate::verify::sha256_hex;

/// The store, locked for writing for as long as this value lives.
pub struct Store {
    layout: StoreLayout,
    _lock: Flock<File>,
}

/// `tree-id`: sha256 hex of manifest digest, dirName, kernel release and firmware path (empty
/// when none), each followed by a newline.
pub fn tree_id(
    manifest_digest: &str,
    dir_name: &AbsPath,
    kernel: &KernelRelease,
    firmware: Option<&AbsPath>,
) -> String {
    sha256_hex(&format!(
        "{manifest_digest}\n{dir_name}\n{kernel}\n{}\n",
        firmware.map_or("", |f| f.as_str())
    ))
}

fn ctx(what: &str, path: &Path) -> impl FnOnce(io::Error) -> io::Error {
    let msg = format!("{what} {}", path.display());
    move |e| io::Error::new(e.kind(), format!("{msg}: {e}"))
}

impl Store {
    /// Creates the layout under `root` if needed and takes the writer's lock, waiting for
    /// another kmod-day1-pull to finish, but no longer than `wait`.
    pub fn open_locked(root: &Path, wait: Duration) -> io::Result<Self> {
        let layout = StoreLayout::new(root);
        for d in [
            layout.root().to_owned(),
            layout.tmp_dir(),
            layout.trees_dir(),
            layout.refs_dir(),
        ] {
            fs::create_dir_all(&d).map_err(ctx("creating", &d))?;
        }
        let lock_path = layout.lock_file();
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(ctx("opening", &lock_path))?;
        let lock = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                info!(lock = %lock_path.display(), "waiting for another kmod-day1-pull to release the store lock");
                wait_for_lock(f, &lock_path, wait)?
            }
            Err((_, e)) => return Err(ctx("locking", &lock_path)(io::Error::from(e))),
        };
        Ok(Self {
            layout,
            _lock: lock,
        })
    }

    /// Fails with a message naming the store and the space needed when the filesystem of
    /// `tmp/` has less than `needed` bytes available.
    pub fn check_free_space(&self, needed: u64, what: &str) -> io::Result<()> {
        let tmp = self.layout.tmp_dir();
        let st = nix::sys::statvfs::statvfs(&tmp)
            .map_err(|e| ctx("checking the free space of", &tmp)(e.into()))?;
        let available = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
        if available < needed {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "the store {} has {} free, and {what} needs at least {}; free space on that filesystem",
                    self.layout.root().display(),
                    human_bytes(available),
                    human_bytes(needed)
                ),
            ));
        }
        Ok(())
    }

    /// Moves a ref that cannot be read (`why`) to `corrupt/` in the store, where an operator
    /// can look at it; the pull then fetches the image again and writes a new one.
    pub fn set_aside_ref(
        &self,
        config: &ConfigName,
        set: &SetName,
        kernel: &KernelRelease,
        image: &str,
        why: &io::Error,
    ) {
        let from = self.layout.ref_file(config, set, kernel, image);
        let dir = self.layout.root().join("corrupt");
        let to = dir.join(format!("ref-{config}-{set}-{kernel}.json"));
        match fs::create_dir_all(&dir).and_then(|()| fs::rename(&from, &to)) {
            Ok(()) => warn!(
                "the ref {} cannot be read ({why}); set aside as {}, the image is fetched again",
                from.display(),
                to.display()
            ),
            Err(e) => warn!(
                "the ref {} cannot be read ({why}) nor set aside ({e}); the image is fetched again",
                from.display()
            ),
        }
    }

    /// The paths.
    pub fn layout(&self) -> &StoreLayout {
        &self.layout
    }

    /// Removes what an interrupted run left in `tmp/`.
    pub fn clean_tmp(&self) -> io::Result<()> {
        let tmp = self.layout.tmp_dir();
        for e in fs::read_dir(&tmp).map_err(ctx("reading", &tmp))? {
            let p = e?.path();
            let r = if fs::symlink_metadata(&p)?.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(ctx("removing the leftover", &p))?;
            info!(path = %p.display(), "removed a leftover of an interrupted pull");
        }
        Ok(())
    }

    /// Whether a complete tree with this id exists.
    pub fn has_tree(&self, id: &str) -> bool {
        self.layout.tree(id).is_dir()
    }

    /// A fresh path under `tmp/` (not created).
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        self.layout
            .tmp_dir()
            .join(format!("{what}.{}", std::process::id()))
    }

    /// Moves a complete, synced staging tree to `trees/<id>` and makes that durable.
    pub fn commit_tree(&self, staging: &Path, id: &str) -> io::Result<()> {
        assert!(is_valid_tree_id(id), "tree id {id:?}");
        let dest = self.layout.tree(id);
        if dest.is_dir() {
            // Same content extracted the same way: keep the existing tree.
            return fs::remove_dir_all(staging).map_err(ctx("removing", staging));
        }
        fs::rename(staging, &dest).map_err(ctx("renaming into", &dest))?;
        sync_dir(&self.layout.trees_dir()).map_err(ctx("syncing", &self.layout.trees_dir()))
    }

    /// Writes a ref atomically, at its image's place.
    pub fn write_ref(
        &self,
        config: &ConfigName,
        set: &SetName,
        kernel: &KernelRelease,
        rec: &RefRecord,
    ) -> io::Result<()> {
        let path = self.layout.ref_file(config, set, kernel, &rec.image);
        write_json_atomic(&path, rec).map_err(ctx("writing", &path))?;
        // New per-kernel, per-set or per-config directories must be durable too.
        let mut dir = path.parent();
        while let Some(d) = dir {
            sync_dir(d)?;
            if d == self.layout.refs_dir() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    /// Moves every version 1 ref (`refs/<config>/<set>/<kver>.json`) to its version 2 place
    /// (`refs/<config>/<set>/<kver>/<image-key>.json`): the new one is written first, then the
    /// old one removed, so a crash leaves at least one the loader reads. Returns how many.
    pub fn upgrade_refs(&self) -> io::Result<usize> {
        let mut moved = 0;
        for entry in self.ref_entries()? {
            let RefEntry {
                legacy: true,
                record: Some(rec),
                ..
            } = &entry
            else {
                continue;
            };
            let (Ok(c), Ok(set), Ok(k)) = (
                ConfigName::new(&entry.config),
                SetName::new(&entry.set),
                KernelRelease::new(&entry.kernel),
            ) else {
                continue;
            };
            let upgraded = RefRecord {
                version: kmod_day1_contract::STORE_VERSION,
                ..rec.clone()
            };
            self.write_ref(&c, &set, &k, &upgraded)?;
            fs::remove_file(&entry.path).map_err(ctx("removing", &entry.path))?;
            if let Some(d) = entry.path.parent() {
                sync_dir(d)?;
            }
            moved += 1;
        }
        Ok(moved)
    }

    /// Every ref file, version 1 and 2, with its record (`None`: unreadable, reported).
    pub fn ref_entries(&self) -> io::Result<Vec<RefEntry>> {
        let refs = self.layout.refs_dir();
        let mut out = vec![];
        let read = |path: PathBuf| match read_json::<RefRecord>(&path) {
            Ok(r) => r,
            Err(e) => {
                warn!(path = %path.display(), "unreadable ref: {e}");
                None
            }
        };
        for config in read_dir_names(&refs)? {
            for set in read_dir_names(&refs.join(&config))? {
                let set_dir = refs.join(&config).join(&set);
                for name in read_dir_names(&set_dir)? {
                    let p = set_dir.join(&name);
                    if let Some(kernel) = name.strip_suffix(".json") {
                        out.push(RefEntry {
                            config: config.clone(),
                            set: set.clone(),
                            kernel: kernel.to_owned(),
                            record: read(p.clone()),
                            path: p,
                            legacy: true,
                        });
                    } else if p.is_dir() {
                        for file in read_dir_names(&p)? {
                            let f = p.join(&file);
                            out.push(RefEntry {
                                config: config.clone(),
                                set: set.clone(),
                                kernel: name.clone(),
                                record: read(f.clone()),
                                path: f,
                                legacy: false,
                            });
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes every ref `doomed` gives a reason for (logged), then every tree no remaining
    /// ref points at. Returns the trees removed.
    pub fn gc(&self, doomed: impl Fn(&RefEntry) -> Option<String>) -> io::Result<Vec<String>> {
        let mut keep = BTreeSet::new();
        for entry in self.ref_entries()? {
            if let Some(why) = doomed(&entry) {
                info!(
                    config = entry.config,
                    set = entry.set,
                    kernel = entry.kernel,
                    "removing a ref: {why}"
                );
                fs::remove_file(&entry.path).map_err(ctx("removing", &entry.path))?;
                if let Some(d) = entry.path.parent() {
                    sync_dir(d)?;
                }
                continue;
            }
            if let Some(rec) = entry.record {
                keep.insert(rec.tree);
            }
        }
        let mut removed = vec![];
        let trees = self.layout.trees_dir();
        for id in read_dir_names(&trees)? {
            if keep.contains(&id) {
                continue;
            }
            // Out of trees/ first, in one rename, so no half-deleted tree is ever visible.
            let doomed = self.tmp_path(&format!("gc-{id}"));
            fs::rename(trees.join(&id), &doomed).map_err(ctx("moving out", &trees.join(&id)))?;
            sync_dir(&trees)?;
            fs::remove_dir_all(&doomed).map_err(ctx("removing", &doomed))?;
            removed.push(id);
        }
        Ok(removed)
    }
}

/// One ref file of the store.
#[derive(Debug, Clone)]
pub struct RefEntry {
    /// Its config's name.
    pub config: String,
    /// Its module set's name.
    pub set: String,
    /// The kernel it is for.
    pub kernel: String,
    /// The file.
    pub path: PathBuf,
    /// Its record, if it could be read.
    pub record: Option<RefRecord>,
    /// A version 1 ref (`<kver>.json`).
    pub legacy: bool,
}

/// Polls for the lock until `wait` has passed: a run never blocks for ever behind another
/// one (or behind a lock that an NFS-like filesystem never releases).
fn wait_for_lock(mut f: fs::File, path: &Path, wait: Duration) -> io::Result<Flock<fs::File>> {
    let deadline = Instant::now() + wait;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((back, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => f = back,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the store lock {} is still held by another kmod-day1-pull after {} s (the retry budget); the next run tries again",
                        path.display(),
                        wait.as_secs()
                    ),
                ))
            }
            Err((_, e)) => return Err(ctx("locking", path)(io::Error::from(e))),
        }
    }
}

fn read_dir_names(dir: &Path) -> io::Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(ctx("reading", dir)(e)),
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmod_day1_contract::STORE_VERSION;

    fn rec(tree: &str) -> RefRecord {
        RefRecord {
            version: STORE_VERSION,
            image: "r/x:1".into(),
            manifest_digest: "sha256:00".into(),
            tree: tree.into(),
            committed_at: 0,
        }
    }

    #[test]
    fn tree_ids_follow_the_contract() {
        let id = tree_id(
            "sha256:ab",
            &AbsPath::new("/opt").unwrap(),
            &KernelRelease::new("6.1").unwrap(),
            None,
        );
        assert_eq!(id, sha256_hex("sha256:ab\n/opt\n6.1\n\n"));
        assert!(is_valid_tree_id(&id));
    }

    #[test]
    fn commit_gc_and_leftovers() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open_locked(d.path(), Duration::ZERO).unwrap();
        fs::write(s.tmp_path("junk"), "x").unwrap();
        s.clean_tmp().unwrap();
        assert_eq!(fs::read_dir(s.layout().tmp_dir()).unwrap().count(), 0);

        let (c, set, k) = (
            ConfigName::new("c").unwrap(),
            SetName::new("s").unwrap(),
            KernelRelease::new("6.1").unwrap(),
        );
        for id in ["aa", "bb"] {
            let st = s.tmp_path(&format!("tree-{id}"));
            fs::create_dir_all(st.join("modules")).unwrap();
            s.commit_tree(&st, id).unwrap();
            assert!(s.has_tree(id));
        }
        s.write_ref(&c, &set, &k, &rec("bb")).unwrap();
        let gone = ConfigName::new("gone").unwrap();
        s.write_ref(&gone, &set, &k, &rec("aa")).unwrap();
        assert!(s.gc(|_| None).unwrap().is_empty());
        let removed = s
            .gc(|e| (e.config == "gone").then(|| "gone".to_string()))
            .unwrap();
        assert_eq!(removed, ["aa"]);
        assert!(s.has_tree("bb"));
        assert_eq!(fs::read_dir(s.layout().tmp_dir()).unwrap().count(), 0);
        assert!(s
            .layout()
            .read_ref(&c, &set, &k, "r/x:1")
            .unwrap()
            .is_some());
    }

    #[test]
    fn version_1_refs_are_upgraded_in_place() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open_locked(d.path(), Duration::ZERO).unwrap();
        let (c, set, k) = (
            ConfigName::new("c").unwrap(),
            SetName::new("s").unwrap(),
            KernelRelease::new("6.1").unwrap(),
        );
        let legacy = s.layout().legacy_ref_file(&c, &set, &k);
        write_json_atomic(
            &legacy,
            &RefRecord {
                version: 1,
                ..rec("aa")
            },
        )
        .unwrap();
        assert_eq!(s.upgrade_refs().unwrap(), 1);
        assert!(!legacy.exists());
        let (path, r) = s.layout().read_ref(&c, &set, &k, "r/x:1").unwrap().unwrap();
        assert_eq!(path, s.layout().ref_file(&c, &set, &k, "r/x:1"));
        assert_eq!((r.version, r.tree.as_str()), (STORE_VERSION, "aa"));
        assert_eq!(s.upgrade_refs().unwrap(), 0);
    }

    #[test]
    fn the_lock_wait_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let held = Store::open_locked(d.path(), Duration::ZERO).unwrap();
        let t = Instant::now();
        let e = Store::open_locked(d.path(), Duration::from_millis(500))
            .err()
            .expect("the lock is held");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("still held"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3));
        drop(held);
        Store::open_locked(d.path(), Duration::from_millis(500)).unwrap();
    }
}
