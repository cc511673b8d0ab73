// SPDX-License-Identifier: Apache-2.0
//! Everything the scenarios share: the VM image, the modules, the node binaries, the
//! registry with every kmod image pushed, and the recipe for a fresh node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use tracing::info;

use crate::cmd::run;
use crate::dirs::{write_file, Dirs};
use crate::guest_overlay::{self, Overlay, UnitLog, KERNEL_UPDATE_DIR};
use crate::ignition_apply;
use crate::kmod_image::{self, ImageSpec, PushedImage};
use crate::modules_build::{self, BuiltModules, FIRMWARE};
use crate::node_bins::Tools;
use crate::node_config::{ignition_for, NodeConfigFile};
use crate::node_image;
use crate::qemu::Machine;
use crate::registry::Registry;
use crate::vm_image::{self, VmFiles, VmImage};

/// Size of the padding layer of `kd1/e1000-big` (the power-cut scenario cuts during its
/// download).
const PADDING_MIB: usize = 48;

/// The shared setup.
pub struct Lab {
    /// Directories.
    pub dirs: Dirs,
    /// The VM image.
    pub img: VmImage,
    /// Test modules per kernel.
    pub modules: BuiltModules,
    /// The project's binaries.
    pub tools: Tools,
    /// The registry.
    pub registry: Registry,
    /// Pushed images by `repo:tag`.
    pub images: BTreeMap<String, PushedImage>,
    /// Seconds spent in setup, by step.
    pub setup_secs: Vec<(String, f64)>,
    /// The lane's suffix of work directory names (`-1`, or empty alone).
    lane: String,
    /// The node image's digest once pushed ([`Lab::node_image`]).
    node_image_digest: Option<String>,
}

/// How to prepare a node.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// kmod-day1 configs, each applied as its own Ignition config (like MachineConfigs).
    pub configs: Vec<NodeConfigFile>,
    /// Extra `[Service]` lines for kmod-day1-pull.service (test-only drop-in).
    pub pull_dropin: Option<String>,
    /// Bench script run by the final marker unit.
    pub bench_script: Option<String>,
    /// Extra files (`path`, content) written into the root.
    pub files: Vec<(String, String)>,
    /// Where the kmod-day1 units log.
    pub unit_log: UnitLog,
    /// A kernel release held back as a downloaded update: its files are not installed and it
    /// has no boot entry until a boot with `kd1.install_kernel_update` on its command line
    /// installs it (`guest_overlay.rs`), as a package manager and `kernel-install` do.
    pub kernel_update: Option<String>,
}

/// What every lane's [`Lab`] shares: the cached VM image and modules, the project's
/// binaries. Built once, before lanes start, so no two threads build a cache entry.
#[derive(Clone)]
pub struct Shared {
    /// Directories.
    pub dirs: Dirs,
    /// The VM image.
    pub img: VmImage,
    /// Test modules per kernel.
    pub modules: BuiltModules,
    /// The project's binaries.
    pub tools: Tools,
    /// Seconds spent, by step.
    pub setup_secs: Vec<(String, f64)>,
}

impl Shared {
    /// Builds or reuses the VM image, the modules and the project's binaries.
    pub fn prepare(dirs: Dirs) -> Result<Self> {
        let mut setup_secs = vec![];
        let mut t = Instant::now();
        let mut lap = |name: &str, t: &mut Instant| {
            setup_secs.push((name.to_owned(), t.elapsed().as_secs_f64()));
            *t = Instant::now();
        };
        let img = vm_image::ensure(&dirs)?;
        lap("vm image", &mut t);
        let modules = modules_build::ensure(&dirs, &img)?;
        for m in modules.values() {
            modules_build::check(m)?;
        }
        lap("modules", &mut t);
        let tools = Tools::build(&dirs.repo)?;
        lap("project binaries", &mut t);
        Ok(Self {
            dirs,
            img,
            modules,
            tools,
            setup_secs,
        })
    }
}

impl Lab {
    /// A lab of its own for one lane: a registry (`registry<lane>` in the work directory)
    /// with every image pushed. Lanes run side by side; each node's registry log is then its
    /// lane's alone, so the blob counts the scenarios take from it stay exact.
    pub fn start(shared: &Shared, lane: &str) -> Result<Self> {
        let t = Instant::now();
        let reg_dir = shared.dirs.fresh_work_dir(&format!("registry{lane}"))?;
        let registry = Registry::start(&reg_dir)?;
        let mut lab = Self {
            dirs: shared.dirs.clone(),
            img: shared.img.clone(),
            modules: shared.modules.clone(),
            tools: shared.tools.clone(),
            registry,
            images: BTreeMap::new(),
            setup_secs: vec![],
            lane: lane.to_owned(),
            node_image_digest: None,
        };
        lab.push_images(&format!("images{lane}"))?;
        lab.setup_secs = vec![(format!("kmod images{lane}"), t.elapsed().as_secs_f64())];
        Ok(lab)
    }

    fn push_images(&mut self, work_dir: &str) -> Result<()> {
        let work = self.dirs.fresh_work_dir(work_dir)?;
        let padding = work.join("padding.bin");
        run(Command::new("head")
            .args(["-c", &format!("{}M", PADDING_MIB), "/dev/urandom"])
            .stdout(std::fs::File::create(&padding)?))?;
        let padding = std::fs::read(&padding)?;
        let fw = ("/firmware/kd1/kd1-fw.bin".to_owned(), FIRMWARE.to_vec());
        let mut specs = vec![];
        for (kver, m) in &self.modules {
            let spec = |repo: &str, modules: Vec<&Path>, files: Vec<(String, Vec<u8>)>| ImageSpec {
                repo: repo.to_owned(),
                kernel: kver.clone(),
                modules: modules.into_iter().map(Path::to_owned).collect(),
                files,
            };
            specs.push(spec("kd1/e1000", vec![&m.e1000], vec![]));
            // kmod-update's next versions: the same module, one file apart (other digests).
            for v in ["v2", "v3"] {
                specs.push(spec(
                    &format!("kd1/e1000-{v}"),
                    vec![&m.e1000],
                    vec![("/build/kd1-version".to_owned(), v.as_bytes().to_vec())],
                ));
            }
            specs.push(spec(
                "kd1/kd1",
                vec![&m.kd1_dep, &m.kd1_main],
                vec![fw.clone()],
            ));
            specs.push(spec("kd1/broken", vec![&m.e1000_broken], vec![]));
            specs.push(spec("kd1/failinit", vec![&m.e1000, &m.kd1_fail], vec![]));
            specs.push(spec(
                "kd1/e1000-no-nic-id",
                vec![&m.e1000_no_nic_id],
                vec![],
            ));
            specs.push(spec(
                "kd1/bench",
                m.bench.iter().map(PathBuf::as_path).collect(),
                vec![],
            ));
            specs.push(spec(
                "kd1/e1000-big",
                vec![&m.e1000],
                vec![("/padding/random.bin".to_owned(), padding.clone())],
            ));
        }
        for s in &specs {
            let p = kmod_image::build_and_push(s, &work, &self.registry.host_addr())?;
            self.images.insert(p.name.clone(), p);
        }
        Ok(())
    }

    /// `10.0.2.2:PORT/kd1/node@sha256:…`: the node image as the node pulls it, pinned by
    /// digest; made and pushed to this lane's registry the first time it is asked for.
    pub fn node_image(&mut self) -> Result<String> {
        let digest = match &self.node_image_digest {
            Some(d) => d.clone(),
            None => {
                let t = Instant::now();
                let work = self
                    .dirs
                    .fresh_work_dir(&format!("node-image{}", self.lane))?;
                let d = node_image::build_and_push(&self.tools, &work, &self.registry.host_addr())?;
                info!(
                    "node image {}@{d} pushed in {:.0} s",
                    node_image::REPO,
                    t.elapsed().as_secs_f64()
                );
                self.node_image_digest = Some(d.clone());
                d
            }
        };
        Ok(format!("{}@{digest}", self.image_ref(node_image::REPO)))
    }

    /// `10.0.2.2:PORT/<repo>`: an image reference as the node sees it (no tag: the node
    /// tags it with its kernel release, as in KMM).
    pub fn image_ref(&self, repo: &str) -> String {
        format!("{}/{repo}", self.registry.guest_addr())
    }

    /// A fresh node: a copy of the VM root, every config applied with the real Ignition,
    /// the test overlay, BLS entries for both kernels, then the disk.
    pub fn node(&self, name: &str, o: &NodeOptions) -> Result<Machine> {
        self.node_inner(name, o)
            .with_context(|| format!("preparing node {name}"))
    }

    fn node_inner(&self, name: &str, o: &NodeOptions) -> Result<Machine> {
        let started = Instant::now();
        let dir = self.dirs.fresh_work_dir(name)?;
        let files = VmFiles::new(&dir);
        vm_image::copy_root(&self.img, &files.root)?;
        for cfg in &o.configs {
            let ign_work = dir.join(format!("ignition-{}", cfg.name));
            std::fs::create_dir_all(&ign_work)?;
            let ign = ignition_for(cfg, &self.tools, &ign_work)?;
            ignition_apply::apply(&ign, &files.root, &ign_work)
                .with_context(|| format!("applying the Ignition config of {}", cfg.name))?;
        }
        guest_overlay::install(
            &files.root,
            &Overlay {
                registry: self.registry.guest_addr(),
                bench_script: o.bench_script.clone(),
                unit_log: o.unit_log,
            },
        )?;
        if let Some(d) = &o.pull_dropin {
            write_file(
                &files
                    .root
                    .join("etc/systemd/system/kmod-day1-pull.service.d/80-testvm.conf"),
                format!("[Service]\n{d}\n"),
            )?;
        }
        if let Some(k) = &o.kernel_update {
            hold_back_kernel(&files.root, k)?;
        }
        for k in self
            .img
            .kernels()
            .into_iter()
            .filter(|k| o.kernel_update.as_ref() != Some(&k.release))
        {
            write_file(
                &files.root.join(format!("boot/loader/entries/debian-{}.conf", k.release)),
                format!(
                    "title Debian GNU/Linux 12 ({0})\nversion {0}\nlinux /vmlinuz-{0}\ninitrd /initrd.img-{0}\noptions root=/dev/vda rw\n",
                    k.release
                ),
            )?;
        }
        for (path, text) in &o.files {
            write_file(&files.root.join(path.trim_start_matches('/')), text)?;
        }
        vm_image::make_disk(&files.root, &files.disk)?;
        std::fs::remove_dir_all(&files.root)
            .with_context(|| format!("removing {}", files.root.display()))?;
        info!(
            "node {name}: ready in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        Ok(Machine::new(name, &dir, &files.disk, self.img.base.clone()))
    }
}

/// Moves kernel `release`'s files (`/boot/*-<release>`, its modules) from their installed
/// places to [`KERNEL_UPDATE_DIR`], where the guest's update unit finds them.
fn hold_back_kernel(root: &Path, release: &str) -> Result<()> {
    let to = root.join(KERNEL_UPDATE_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(to.join("boot"))?;
    std::fs::create_dir_all(to.join("modules"))?;
    for f in ["vmlinuz", "initrd.img", "config", "System.map"] {
        let from = root.join(format!("boot/{f}-{release}"));
        if from.exists() {
            std::fs::rename(&from, to.join(format!("boot/{f}-{release}")))
                .with_context(|| format!("holding back {}", from.display()))?;
        }
    }
    let modules = root.join(format!("usr/lib/modules/{release}"));
    std::fs::rename(&modules, to.join("modules").join(release))
        .with_context(|| format!("holding back {}", modules.display()))?;
    write_file(&to.join("release"), release)
}
