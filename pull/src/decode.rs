// SPDX-License-Identifier: Apache-2.0
//! The decoders between a layer's verified bytes and its tar: gzip, zstd (one or more
//! frames) or plain, chosen from the first bytes, behind a limit on the decompressed size.

use std::io::{self, BufRead, BufReader, Read};

/// Read size from a layer's stream.
const LAYER_BUFFER: usize = 256 * 1024;

/// The tar stream inside `layer` (gzip, zstd or plain tar, detected from its first bytes),
/// failing once it decompresses to more than `max_layer` bytes.
pub(crate) fn layer_tar<'a>(
    mut layer: impl Read + 'a,
    max_layer: u64,
) -> io::Result<impl Read + 'a> {
    // The first bytes may arrive in several reads (a stream from the network, cut after
    // one byte): read the 4 the magic needs, then put them back in front.
    let mut magic = Vec::with_capacity(4);
    (&mut layer).take(4).read_to_end(&mut magic)?;
    let buffered =
        BufReader::with_capacity(LAYER_BUFFER, io::Cursor::new(magic.clone()).chain(layer));
    let decoded: Box<dyn Read + 'a> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(ZstdFrames::new(buffered).map_err(|e| io::Error::other(format!("zstd: {e}")))?)
    } else {
        Box::new(buffered)
    };
    Ok(LimitedReader {
        inner: decoded,
        left: max_layer,
        limit: max_layer,
    })
}

/// Fails a read past `limit` bytes: a decompression bomb stops here.
struct LimitedReader<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::other(format!(
                "the layer decompresses to more than {} bytes (the layer limit); refusing it as a decompression bomb",
                self.limit
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A zstd stream of one or more frames.
struct ZstdFrames<R: BufRead> {
    dec: ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(r: R) -> io::Result<Self> {
        let dec = ruzstd::decoding::StreamingDecoder::new(r).map_err(io::Error::other)?;
        Ok(Self { dec })
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.dec.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // End of a frame: another may follow.
            if self.dec.get_mut().fill_buf()?.is_empty() {
                return Ok(0);
            }
            let mut frame = ruzstd::decoding::FrameDecoder::new();
            frame.init(self.dec.get_mut()).map_err(io::Error::other)?;
            self.dec.decoder = frame;
        }
    }
}
