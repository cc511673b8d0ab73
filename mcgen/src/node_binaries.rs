// SPDX-License-Identifier: Apache-2.0
//! The node binaries carried by an embedded delivery, gzip-compressed into data URLs.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use flate2::{write::GzEncoder, Compression};

use crate::{units::NODE_BINARIES, Error};

/// A node binary ready for Ignition.
#[derive(Debug, Clone)]
pub struct EmbeddedBinary {
    /// File name, e.g. `kmod-day1-pull`.
    pub name: &'static str,
    /// `data:;base64,` URL of the gzip-compressed binary.
    pub data_url: String,
    /// Size of the binary before compression.
    pub raw_bytes: usize,
    /// Size after gzip.
    pub gzip_bytes: usize,
}

/// Reads and compresses every node binary from `dir`.
pub fn embed_node_binaries(dir: &Path) -> Result<Vec<EmbeddedBinary>, Error> {
    NODE_BINARIES
        .iter()
        .map(|&name| {
            let path = dir.join(name);
            let raw = std::fs::read(&path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::Invalid(format!(
                        "node binary {} not found; build them with `make static` and pass --node-binaries target/x86_64-unknown-linux-gnu/release, or use --delivery layered",
                        path.display()
                    ))
                } else {
                    Error::io(format!("reading node binary {}", path.display()), e)
                }
            })?;
            let (data_url, gzip_bytes) = gzip_data_url(&raw)
                .map_err(|e| Error::io(format!("compressing {name}"), e))?;
            Ok(EmbeddedBinary {
                name,
                data_url,
                raw_bytes: raw.len(),
                gzip_bytes,
            })
        })
        .collect()
}

/// A `data:;base64,` URL of `bytes` gzip-compressed, and the compressed size. Deterministic:
/// gzip without a timestamp or a file name.
pub(crate) fn gzip_data_url(bytes: &[u8]) -> std::io::Result<(String, usize)> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(bytes)?;
    let gz = gz.finish()?;
    Ok((
        format!(
            "data:;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&gz)
        ),
        gz.len(),
    ))
}
