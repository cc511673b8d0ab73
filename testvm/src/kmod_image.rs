// SPDX-License-Identifier: Apache-2.0
//! Kmod images, laid out like KMM's (`/opt/lib/modules/<kver>/*.ko` plus depmod's output,
//! firmware under `/firmware`), packed without a daemon (umoci) and pushed with skopeo.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde::Deserialize;
use tracing::info;

use crate::cmd::{run, stdout};
use crate::dirs::write_file;

/// One image to build: `repo:tag` with these files.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Repository, e.g. `kd1/e1000`.
    pub repo: String,
    /// Kernel release the modules are for; also the tag (KMM's default).
    pub kernel: String,
    /// Modules, placed in `/opt/lib/modules/<kernel>/`.
    pub modules: Vec<PathBuf>,
    /// Files (`path in image`, content), e.g. firmware.
    pub files: Vec<(String, Vec<u8>)>,
}

/// An image pushed to the registry.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// `repo:tag` in the registry.
    pub name: String,
    /// Manifest digest.
    pub digest: String,
    /// Digests of the layers, in order.
    pub layers: Vec<String>,
}

/// Builds `spec` into the OCI layout under `work` and pushes it to `registry` (host:port).
pub fn build_and_push(spec: &ImageSpec, work: &Path, registry: &str) -> Result<PushedImage> {
    let name = format!("{}:{}", spec.repo, spec.kernel);
    build_and_push_inner(spec, work, registry)
        .with_context(|| format!("building and pushing kmod image {name}"))
}

fn build_and_push_inner(spec: &ImageSpec, work: &Path, registry: &str) -> Result<PushedImage> {
    let slug = spec.repo.replace('/', "_");
    let layout = work.join(format!("oci-{slug}"));
    let tag = &spec.kernel;
    if !layout.join("index.json").exists() {
        run(Command::new("umoci")
            .arg("init")
            .arg("--layout")
            .arg(&layout))?;
    }
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    let bundle = work.join(format!("bundle-{slug}-{tag}"));
    let _ = std::fs::remove_dir_all(&bundle);
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    let rootfs = bundle.join("rootfs");
    let moddir = rootfs.join("opt/lib/modules").join(&spec.kernel);
    std::fs::create_dir_all(&moddir).with_context(|| format!("creating {}", moddir.display()))?;
    for m in &spec.modules {
        let to = moddir.join(m.file_name().context("module file name")?);
        std::fs::copy(m, &to).with_context(|| format!("copying {} into the image", m.display()))?;
    }
    for (path, content) in &spec.files {
        write_file(&rootfs.join(path.trim_start_matches('/')), content)?;
    }
    run(Command::new("depmod")
        .arg("-b")
        .arg(rootfs.join("opt"))
        .arg(&spec.kernel))
    .context("running depmod on the image tree")?;
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle))?;
    let _ = std::fs::remove_dir_all(&bundle);
    let dest = format!("docker://{registry}/{}:{tag}", spec.repo);
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(&dest))?;
    let manifest_digest = stdout(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
            .arg(&dest),
    )?;
    let raw = stdout(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(&dest),
    )?;
    let m: Manifest = serde_json::from_str(&raw).context("reading the pushed manifest")?;
    let pushed = PushedImage {
        name: format!("{}:{tag}", spec.repo),
        digest: manifest_digest,
        layers: m.layers.into_iter().map(|l| l.digest).collect(),
    };
    info!("image {} pushed ({})", pushed.name, pushed.digest);
    Ok(pushed)
}

#[derive(Deserialize)]
struct Manifest {
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}
