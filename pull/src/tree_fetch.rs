// SPDX-License-Identifier: Apache-2.0
//! One tree, top to bottom: each layer of a resolved image is downloaded (resumed with
//! `Range` after a cut), hashed, and handed as it arrives to an extractor on a blocking
//! thread, which decodes it (`decode`) and applies it to a private staging directory
//! (`extract`). The blob never touches the disk.
//!
//! A layer's stream ends with [`Piece::Verified`], sent only once the whole blob matched its
//! size and digest. A stream that stops without it (the download failed, or its sender was
//! dropped) is an error to the reader, never a clean end of file: an extractor that finishes
//! a layer has read a verified blob to its end. The staging directory is handed back for
//! commit only after every layer verified; on any failure it is removed.

use std::io::{self, Read};
use std::path::PathBuf;

use anyhow::Context as _;
use bytes::Bytes;
use kmod_day1_contract::ImageRef;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::extract::{ExtractLimits, Selection, TreeBuilder, TreeStats};
use crate::fetch::{FetchError, LayerDesc, Repo, ResolvedImage};
use crate::progress::{human_bytes, Progress};
use crate::retry::{with_retries, RetryPolicy};
use crate::verify::Hasher;

/// What to build: which image, which part of it, where.
pub(crate) struct TreeRequest<'a> {
    /// The image as the config names it (for the journal).
    pub image: &'a ImageRef,
    /// Its manifest, resolved for this platform.
    pub resolved: &'a ResolvedImage,
    /// The part of the image the loader needs.
    pub selection: Selection,
    /// The private staging directory (must not exist yet).
    pub staging: PathBuf,
    /// Size limits against hostile layers.
    pub limits: ExtractLimits,
    /// Whether stderr is a terminal (progress lines).
    pub tty: bool,
}

/// Downloads and extracts every layer of `req` into its staging directory, and returns the
/// tree's figures; `bytes` counts what was downloaded. On error the staging directory is
/// gone.
pub(crate) async fn fetch_tree(
    repo: &mut Repo<'_>,
    policy: &RetryPolicy,
    req: TreeRequest<'_>,
    bytes: &mut u64,
) -> anyhow::Result<TreeStats> {
    let TreeRequest {
        image,
        resolved,
        selection,
        staging,
        limits,
        tty,
    } = req;
    let builder = TreeBuilder::new(staging.clone(), selection, limits)?;
    let total: u64 = resolved.layers.iter().map(|l| l.size).sum();
    info!(image = %image, digest = %resolved.manifest_digest, layers = resolved.layers.len(), size = human_bytes(total), "downloading {image}");
    let (tx, mut rx) = channel();
    let digests: Vec<String> = resolved
        .layers
        .iter()
        .map(|l| l.digest.to_string())
        .collect();
    let extractor = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut builder = builder;
        for digest in &digests {
            let mut layer = LayerReader::new(&mut rx);
            builder.apply_layer(&mut layer, digest)?;
            layer
                .read_to_verified_end()
                .with_context(|| format!("reading layer {digest}"))?;
        }
        Ok(builder.finish()?)
    });
    let from = repo.image().clone();
    let mut download = async || -> anyhow::Result<()> {
        for (i, layer) in resolved.layers.iter().enumerate() {
            if layer.size > limits.max_layer {
                anyhow::bail!(
                    "layer {} of {image} is {} bytes, over the layer limit",
                    layer.digest,
                    layer.size
                );
            }
            let mut dl = BlobDownload::new(Some(tx.clone()));
            let mut progress = Progress::new(
                format!("{image} layer {}/{}", i + 1, resolved.layers.len()),
                layer.size,
                tty,
            );
            let what = format!("downloading layer {} of {from}", layer.digest);
            with_retries(policy, &what, async || {
                download_blob(repo, layer, &mut dl, &mut progress).await
            })
            .await?;
            progress.finish();
            *bytes += layer.size;
            if !dl.extractor_alive() {
                // The extractor stopped on a verified layer: its error is the one to report.
                break;
            }
        }
        Ok(())
    };
    let downloaded = download().await;
    // The extractor sees the end of the stream (an error unless every layer verified).
    drop(tx);
    let extracted = extractor.await.context("extraction thread");
    // A failed download (a digest mismatch above all) explains an extraction error of the
    // same bytes, so it is reported first.
    match downloaded.and_then(|()| extracted?) {
        Ok(stats) => Ok(stats),
        Err(e) => {
            if let Err(rm) = std::fs::remove_dir_all(&staging) {
                warn!(path = %staging.display(), "removing the staging directory: {rm}");
            }
            let full = e.chain().any(|c| {
                c.downcast_ref::<io::Error>()
                    .is_some_and(|io| io.kind() == io::ErrorKind::StorageFull)
            });
            if full {
                let store = staging
                    .parent()
                    .and_then(|tmp| tmp.parent())
                    .unwrap_or(&staging);
                return Err(e.context(format!(
                    "no space left in the store {} while extracting {image} ({} of compressed layers); free space on that filesystem",
                    store.display(),
                    human_bytes(total)
                )));
            }
            Err(e)
        }
    }
}

/// Downloads (or resumes) one layer's blob from `repo` into `dl`, then checks size and
/// digest.
pub(crate) async fn download_blob(
    repo: &mut Repo<'_>,
    layer: &LayerDesc,
    dl: &mut BlobDownload,
    progress: &mut Progress,
) -> Result<(), FetchError> {
    let url = repo.url("blobs", layer.digest.as_str());
    let resp = repo.get(&url, None, dl.written).await?;
    // A server that ignores Range sends the whole blob again. What was handed on cannot
    // be taken back, so the repeated start must be the same bytes: its digest is compared
    // with the digest of what was received before, then only the rest is handed on.
    let partial = resp.status() == reqwest::StatusCode::PARTIAL_CONTENT;
    if partial {
        // A 206 must carry the bytes asked for: a range from elsewhere would only show up as a
        // digest mismatch once the whole blob is in.
        check_content_range(resp.headers(), dl.written, layer.size, &url)?;
    }
    let mut again = (dl.written > 0 && !partial).then(|| (Hasher::new(), dl.written));
    progress.set(dl.written);
    let mut stream = resp.bytes_stream();
    while let Some(mut chunk) = repo.next_chunk(&mut stream, &url).await? {
        if let Some((seen, left)) = &mut again {
            let n = chunk
                .len()
                .min(usize::try_from(*left).unwrap_or(usize::MAX));
            seen.update(&chunk[..n]);
            *left -= n as u64;
            let _ = chunk.split_to(n);
            if *left == 0 {
                if seen.clone().finish() != dl.hasher.clone().finish() {
                    return Err(FetchError::Invalid(format!(
                        "{url}: after a cut the registry ignored Range and sent the blob again with different first {} bytes; the registry or something between is serving wrong content",
                        dl.written
                    )));
                }
                again = None;
            }
            if chunk.is_empty() {
                continue;
            }
        }
        if dl.written + chunk.len() as u64 > layer.size {
            return Err(FetchError::Invalid(format!(
                "{url}: the registry sent more than the {} bytes the manifest declares",
                layer.size
            )));
        }
        dl.hasher.update(&chunk);
        dl.written += chunk.len() as u64;
        progress.add(chunk.len() as u64);
        dl.hand_on(Piece::Data(chunk)).await;
    }
    if dl.written < layer.size {
        return Err(FetchError::Transport {
            what: format!("reading {url}"),
            message: format!(
                "the connection ended after {} of {} bytes",
                dl.written, layer.size
            ),
            retry: true,
        });
    }
    let got = dl.hasher.clone().finish();
    if got != layer.digest {
        return Err(FetchError::Digest {
            what: format!("blob {} of {}", layer.digest, repo.image().name()),
            expected: layer.digest.to_string(),
            actual: got.to_string(),
        });
    }
    dl.hand_on(Piece::Verified).await;
    Ok(())
}

/// `Content-Range: bytes FIRST-LAST/LENGTH` (RFC 9110 14.4), with `LENGTH` `*` when unknown.
/// `None` unless it is one satisfied byte range with `FIRST <= LAST < LENGTH`.
pub(crate) fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let (first, rest) = value.trim().strip_prefix("bytes ")?.split_once('-')?;
    let (last, length) = rest.split_once('/')?;
    let digits = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let (first, last) = (digits(first)?, digits(last)?);
    let length = match length {
        "*" => None,
        l => Some(digits(l)?),
    };
    (first <= last && length.is_none_or(|l| last < l)).then_some((first, last, length))
}

/// The range of a `206` answer to `Range: bytes=FROM-` for a blob of `size` bytes must start at
/// `from` and stay within the blob; anything else is an error naming the header.
fn check_content_range(
    headers: &reqwest::header::HeaderMap,
    from: u64,
    size: u64,
    url: &str,
) -> Result<(), FetchError> {
    let value = headers
        .get(reqwest::header::CONTENT_RANGE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let fits =
        value
            .as_deref()
            .and_then(parse_content_range)
            .is_some_and(|(first, last, length)| {
                first == from && last < size && length.is_none_or(|l| l == size)
            });
    if fits {
        return Ok(());
    }
    let shown: String = value
        .as_deref()
        .unwrap_or("(none)")
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    Err(FetchError::Invalid(format!(
        "{url}: the registry answered 206 Partial Content with Content-Range {shown:?}, not bytes {from}-… of the {size}-byte blob asked for; the registry or a proxy between mangles ranges"
    )))
}

/// A blob download that survives retries: every byte received is hashed and handed to the
/// extractor in order (nothing is written to disk here), and after a cut the rest is asked
/// for with `Range`. [`Piece::Verified`] follows the last byte only once size and digest
/// matched.
pub(crate) struct BlobDownload {
    hasher: Hasher,
    written: u64,
    sink: Option<PieceSender>,
}

impl BlobDownload {
    /// A download whose bytes go to `sink` (none: only verified).
    pub(crate) fn new(sink: Option<PieceSender>) -> Self {
        Self {
            hasher: Hasher::new(),
            written: 0,
            sink,
        }
    }

    /// Whether the extractor still reads (it stops on an error of its own).
    pub(crate) fn extractor_alive(&self) -> bool {
        self.sink.as_ref().is_some_and(|s| !s.is_closed())
    }

    async fn hand_on(&mut self, piece: Piece) {
        if let Some(s) = &self.sink {
            if s.send(piece).await.is_err() {
                // The extractor failed: keep downloading to verify the blob, so that a
                // corrupt blob is reported as such rather than as the extractor's error.
                self.sink = None;
            }
        }
    }
}

/// Bounded: a slow extractor slows the download down instead of filling memory. hyper hands
/// over at most ~400 KiB per chunk, so a few MiB at most are in flight.
const IN_FLIGHT: usize = 8;

/// What the download sends.
#[derive(Debug)]
pub(crate) enum Piece {
    /// The next bytes of the current layer's blob.
    Data(Bytes),
    /// The current layer's blob is complete and matched its digest and size.
    Verified,
}

/// The download's end.
pub(crate) type PieceSender = mpsc::Sender<Piece>;

/// The extractor's end.
pub(crate) type PieceReceiver = mpsc::Receiver<Piece>;

/// A bounded channel for one tree's layers.
pub(crate) fn channel() -> (PieceSender, PieceReceiver) {
    mpsc::channel(IN_FLIGHT)
}

/// One layer's bytes, read on a blocking thread (never on the async runtime).
pub(crate) struct LayerReader<'a> {
    rx: &'a mut PieceReceiver,
    current: Bytes,
    verified: bool,
}

impl<'a> LayerReader<'a> {
    /// Reads the next layer from `rx`.
    pub(crate) fn new(rx: &'a mut PieceReceiver) -> Self {
        Self {
            rx,
            current: Bytes::new(),
            verified: false,
        }
    }

    /// Reads what the extractor did not need (tar padding, trailing bytes) up to the layer's
    /// verified end.
    pub(crate) fn read_to_verified_end(mut self) -> io::Result<()> {
        while !self.verified {
            self.current = Bytes::new();
            self.next_piece()?;
        }
        Ok(())
    }

    fn next_piece(&mut self) -> io::Result<()> {
        match self.rx.blocking_recv() {
            Some(Piece::Data(b)) => self.current = b,
            Some(Piece::Verified) => self.verified = true,
            None => {
                return Err(io::Error::other(
                    "the layer's download stopped before the blob was complete and verified",
                ))
            }
        }
        Ok(())
    }
}

impl Read for LayerReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.verified || buf.is_empty() {
                return Ok(0);
            }
            self.next_piece()?;
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 0-9/10"), Some((0, 9, Some(10))));
        assert_eq!(parse_content_range(" bytes 5-9/*"), Some((5, 9, None)));
        for bad in [
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes */10",
            "bytes -1-9/10",
            "bytes +1-9/10",
            "items 0-9/10",
            "bytes 0-99999999999999999999/*",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        /// Whatever a registry or proxy sends as `Content-Range`: no panic, and a range that
        /// is one inside the blob when it parses.
        #[test]
        fn any_content_range_parses_without_panic(v in "(bytes )?[0-9*/ +-]{0,40}|.{0,40}") {
            if let Some((first, last, length)) = parse_content_range(&v) {
                proptest::prop_assert!(first <= last);
                proptest::prop_assert!(length.is_none_or(|l| last < l));
            }
        }
    }

    #[test]
    fn a_layer_ends_only_when_verified() {
        let (tx, mut rx) = channel();
        let sender = std::thread::spawn(move || {
            for p in [
                Piece::Data(Bytes::from_static(b"hello ")),
                Piece::Data(Bytes::from_static(b"world")),
                Piece::Verified,
                Piece::Data(Bytes::from_static(b"second, cut")),
            ] {
                tx.blocking_send(p).unwrap();
            }
        });
        let mut first = String::new();
        LayerReader::new(&mut rx)
            .read_to_string(&mut first)
            .unwrap();
        assert_eq!(first, "hello world");
        // The next layer's sender goes away before Verified: an error, not an end of file.
        let mut second = LayerReader::new(&mut rx);
        let mut buf = [0u8; 6];
        second.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"second");
        sender.join().unwrap();
        let e = second.read_to_end(&mut vec![]).unwrap_err();
        assert!(e.to_string().contains("verified"), "{e}");
        assert!(LayerReader::new(&mut rx).read_to_verified_end().is_err());
    }

    #[test]
    fn unread_bytes_are_drained_to_the_verified_end() {
        let (tx, mut rx) = channel();
        let sender = std::thread::spawn(move || {
            for p in [
                Piece::Data(Bytes::from_static(b"tar")),
                Piece::Data(Bytes::from_static(b"padding")),
                Piece::Verified,
                Piece::Data(Bytes::from_static(b"next")),
                Piece::Verified,
            ] {
                tx.blocking_send(p).unwrap();
            }
        });
        let mut r = LayerReader::new(&mut rx);
        let mut b = [0u8; 3];
        r.read_exact(&mut b).unwrap();
        r.read_to_verified_end().unwrap();
        let mut next = String::new();
        LayerReader::new(&mut rx).read_to_string(&mut next).unwrap();
        assert_eq!(next, "next");
        sender.join().unwrap();
    }
}
