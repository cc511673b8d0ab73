// SPDX-License-Identifier: Apache-2.0
//! `kmod-day1-node-image`: writes the node image (the static node binaries and the prestage
//! agent's static shell, FROM scratch) as an OCI image layout, with no container daemon, and
//! prints its manifest digest. `make node-image` runs it; push with
//! `skopeo copy oci:DIR:TAG docker://REGISTRY/REPO:TAG`.

use std::path::PathBuf;

use clap::Parser;
use mcgen::{read_static_binary, write_layout, ImageFile, ImageMeta, IMAGE_BIN_DIR, IMAGE_SHELL};

/// Writes the kmod-day1 node image as an OCI image layout and prints its manifest digest.
#[derive(Debug, Parser)]
#[command(name = "kmod-day1-node-image", version)]
struct Args {
    /// Directory of the OCI image layout to write (created)
    #[arg(long, value_name = "DIR")]
    layout: PathBuf,
    /// Tag of the image in the layout (`oci:DIR:TAG`)
    #[arg(long, value_name = "TAG", default_value = env!("CARGO_PKG_VERSION"))]
    tag: String,
    /// Directory holding the static kmod-day1-load and kmod-day1-pull (`make static`)
    #[arg(
        long,
        value_name = "DIR",
        default_value = "target/x86_64-unknown-linux-gnu/release"
    )]
    node_binaries: PathBuf,
    /// A static busybox: the prestage agent's shell (Debian's busybox-static)
    #[arg(long, value_name = "FILE", default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// org.opencontainers.image.version
    #[arg(long, value_name = "VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    image_version: String,
    /// org.opencontainers.image.source
    #[arg(
        long,
        value_name = "URL",
        default_value = "https://github.com/kmod-day1/kmod-day1"
    )]
    source: String,
    /// org.opencontainers.image.revision (the git commit)
    #[arg(long, value_name = "COMMIT", default_value = "unknown")]
    revision: String,
}

fn main() {
    let args = Args::parse();
    // One fixed time for every mtime and `created`: the same tree gives the same digest.
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let result = (|| {
        let mut files = vec![];
        for name in mcgen::NODE_BINARIES {
            files.push(ImageFile {
                path: format!("{IMAGE_BIN_DIR}/{name}"),
                contents: read_static_binary(&args.node_binaries.join(name))?,
            });
        }
        files.push(ImageFile {
            path: IMAGE_SHELL.to_owned(),
            contents: read_static_binary(&args.busybox)?,
        });
        let meta = ImageMeta {
            version: args.image_version.clone(),
            source: args.source.clone(),
            revision: args.revision.clone(),
            epoch,
        };
        write_layout(&args.layout, &args.tag, &files, &meta)
    })();
    match result {
        Ok(w) => {
            eprintln!(
                "kmod-day1-node-image: oci:{}:{} layer {} bytes gzip ({} tar)",
                args.layout.display(),
                args.tag,
                w.layer_bytes,
                w.tar_bytes
            );
            println!("{}", w.manifest_digest);
        }
        Err(e) => {
            eprintln!("kmod-day1-node-image: error: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
