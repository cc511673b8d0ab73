// SPDX-License-Identifier: Apache-2.0
//! The kmod-day1 node image in a lane's registry, made and pushed as the README tells users
//! to: `make node-image`'s OCI layout (mcgen's `kmod-day1-node-image`: the static node
//! binaries and busybox, FROM scratch), then `skopeo copy oci:… docker://…`. MachineConfigs
//! pin it by the manifest digest the registry answers, as mcgen requires.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd::{run, stdout};
use crate::node_bins::Tools;

/// The node image's repository in the test registry.
pub const REPO: &str = "kd1/node";
/// Its tag there (the layout's too).
const TAG: &str = "testvm";
/// The static busybox `make node-image` takes (Debian's busybox-static).
const BUSYBOX: &str = "/bin/busybox";

/// Writes the layout under `work`, pushes it to `registry` (`HOST:PORT`) and returns the
/// manifest digest (`sha256:…`).
pub fn build_and_push(tools: &Tools, work: &Path, registry: &str) -> Result<String> {
    let layout = work.join("layout");
    run(Command::new(&tools.node_image)
        .arg("--layout")
        .arg(&layout)
        .args(["--tag", TAG, "--revision", "testvm"])
        .arg("--node-binaries")
        .arg(&tools.node_bins)
        .args(["--busybox", BUSYBOX]))
    .context("writing the node image layout with kmod-day1-node-image")?;
    let dest = format!("docker://{registry}/{REPO}:{TAG}");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{TAG}", layout.display()))
        .arg(&dest))
    .context("pushing the node image with skopeo")?;
    let digest = stdout(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
            .arg(&dest),
    )?;
    let digest = digest.trim().to_owned();
    anyhow::ensure!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "skopeo inspect {dest} answered {digest:?}, not a sha256 digest"
    );
    Ok(digest)
}
