// SPDX-License-Identifier: Apache-2.0
//! Every kernel the node can boot next, so that its images are stored before it boots:
//!
//! - the kernels of the Boot Loader Specification entries (`boot_entries`);
//! - on ostree systems (RHCOS), the kernel of every deployment under
//!   `/ostree/deploy/<os>/deploy/<checksum>.<serial>/usr/lib/modules/<kver>/vmlinuz`: the booted
//!   one, the rollback, and a *staged* one, whose boot entry ostree writes only at shutdown
//!   (`ostree-finalize-staged.service`) but whose tree exists as soon as it is staged;
//! - the installed kernels, `/usr/lib/modules/<kver>/vmlinuz` (where `kernel-install` puts
//!   them on RHEL and Fedora; on ostree systems this is the booted deployment's).
//!
//! `/run/ostree/staged-deployment` is not parsed: it is a GVariant that rpm-ostree treats as
//! private, and every kernel it could name is in a deployment directory anyway. Reading the
//! deployment directories also covers a rollback deployment without a boot entry.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kmod_day1_contract::KernelRelease;

use crate::boot_entries::boot_entry_kernels;

/// Default ostree deployments directory (`/ostree` links to `/sysroot/ostree` on RHCOS).
pub(crate) const OSTREE_DEPLOY_DIR: &str = "/ostree/deploy";
/// Default installed kernels directory.
pub(crate) const MODULES_DIR: &str = "/usr/lib/modules";

/// Where to look.
pub(crate) struct BootableSources<'a> {
    /// BLS entries.
    pub entries: &'a Path,
    /// ostree's `deploy/` directory (one sub-directory per OS).
    pub ostree_deploy: &'a Path,
    /// The installed kernels' modules directory.
    pub modules: &'a Path,
}

/// The kernels found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct BootableKernels {
    /// Every kernel any source names, sorted.
    pub kernels: BTreeSet<KernelRelease>,
    /// Kernels of ostree deployments that no boot entry names yet: staged.
    pub staged: BTreeSet<KernelRelease>,
    /// The ostree deployment directory each deployment kernel boots (the upgrade
    /// preflight reads its modules and modprobe.d); other kernels boot the running root.
    pub deployments: BTreeMap<KernelRelease, PathBuf>,
    /// Whether every source could be read: only then may refs of other kernels be pruned.
    pub complete: bool,
}

impl BootableSources<'_> {
    /// Reads every source; one that cannot be read is logged and makes the answer
    /// incomplete.
    pub fn read(&self) -> BootableKernels {
        let mut out = BootableKernels {
            complete: true,
            ..BootableKernels::default()
        };
        let mut note = |what: &str, dir: &Path, r: std::io::Result<Vec<KernelRelease>>| match r {
            Ok(ks) => ks,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot read the {what}, so their kernels are not prefetched: {e}");
                out.complete = false;
                vec![]
            }
        };
        let entries = note(
            "boot entries",
            self.entries,
            boot_entry_kernels(self.entries),
        );
        let mut dirs = vec![];
        let deployments = note(
            "ostree deployments",
            self.ostree_deploy,
            ostree_deployment_kernels(self.ostree_deploy).map(|v| {
                let kernels = v.iter().map(|(k, _)| k.clone()).collect();
                dirs = v;
                kernels
            }),
        );
        let installed = note(
            "installed kernels",
            self.modules,
            installed_kernels(self.modules),
        );
        out.staged = deployments
            .iter()
            .filter(|k| !entries.contains(k))
            .cloned()
            .collect();
        out.deployments = dirs.into_iter().collect();
        out.kernels.extend(entries);
        out.kernels.extend(deployments);
        out.kernels.extend(installed);
        out
    }
}

/// The kernels with a `vmlinuz` under `dir/<kver>/`; none when `dir` does not exist.
fn installed_kernels(dir: &Path) -> std::io::Result<Vec<KernelRelease>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut out = vec![];
    for e in rd.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if e.path().join("vmlinuz").is_file() {
            if let Ok(k) = KernelRelease::new(&name) {
                out.push(k);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The kernels of every deployment of every OS under `deploy_dir`, with the deployment's
/// directory; none when it does not exist (not an ostree system).
fn ostree_deployment_kernels(deploy_dir: &Path) -> std::io::Result<Vec<(KernelRelease, PathBuf)>> {
    let oses = match std::fs::read_dir(deploy_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut out = vec![];
    for os in oses.flatten() {
        let deployments = match std::fs::read_dir(os.path().join("deploy")) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for d in deployments.flatten() {
            // `<checksum>.<serial>` directories; `<checksum>.<serial>.origin` files beside them.
            if d.file_type().is_ok_and(|t| t.is_dir()) {
                let ks = installed_kernels(&d.path().join("usr/lib/modules"))?;
                out.extend(ks.into_iter().map(|k| (k, d.path())));
            }
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "").unwrap();
    }

    #[test]
    fn entries_deployments_and_installed_kernels() {
        let d = tempfile::tempdir().unwrap();
        let p = |s: &str| d.path().join(s);
        // An ostree node booted on A, B staged (no entry yet), C the rollback with an entry.
        touch(&p("entries/ostree-1.conf"));
        std::fs::write(
            p("entries/ostree-1.conf"),
            "version 2\nlinux /ostree/rhcos-abc/vmlinuz-5.14.0-1.el9.x86_64\n",
        )
        .unwrap();
        std::fs::write(
            p("entries/ostree-0.conf"),
            "version 1\nlinux /ostree/rhcos-def/vmlinuz-5.14.0-0.el9.x86_64\n",
        )
        .unwrap();
        for (dep, k) in [
            ("aaa.0", "5.14.0-1.el9.x86_64"),
            ("bbb.0", "5.14.0-2.el9.x86_64"),
            ("ccc.1", "5.14.0-0.el9.x86_64"),
        ] {
            touch(&p(&format!(
                "deploy/rhcos/deploy/{dep}/usr/lib/modules/{k}/vmlinuz"
            )));
        }
        touch(&p("deploy/rhcos/deploy/aaa.0.origin"));
        // Installed kernels: one with vmlinuz, one without (headers only).
        touch(&p("modules/6.1.0-28-amd64/vmlinuz"));
        std::fs::create_dir_all(p("modules/6.1.0-27-amd64")).unwrap();

        let found = BootableSources {
            entries: &p("entries"),
            ostree_deploy: &p("deploy"),
            modules: &p("modules"),
        }
        .read();
        let names = |s: &BTreeSet<KernelRelease>| -> Vec<String> {
            s.iter().map(|k| k.to_string()).collect()
        };
        assert_eq!(
            names(&found.kernels),
            [
                "5.14.0-0.el9.x86_64",
                "5.14.0-1.el9.x86_64",
                "5.14.0-2.el9.x86_64",
                "6.1.0-28-amd64"
            ]
        );
        assert_eq!(names(&found.staged), ["5.14.0-2.el9.x86_64"]);
        assert!(found.complete);

        // No such directories: nothing, and complete (not an ostree node, no BLS).
        let none = BootableSources {
            entries: &p("x"),
            ostree_deploy: &p("y"),
            modules: &p("z"),
        }
        .read();
        assert!(none.kernels.is_empty() && none.complete);
        // A source that cannot be read: incomplete.
        let file = p("file");
        touch(&file);
        let bad = BootableSources {
            entries: &file,
            ostree_deploy: &p("y"),
            modules: &p("z"),
        }
        .read();
        assert!(!bad.complete);
    }
}
