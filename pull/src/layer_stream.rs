// SPDX-License-Identifier: Apache-2.0
//! The bytes of a tree's layers, handed from the download (async) to the extractor (a
//! blocking thread) as they arrive, so that extraction runs while the blob downloads.
//!
//! A layer's stream ends with [`Piece::Verified`], sent only once the whole blob matched its
//! size and digest. A stream that stops without it (the download failed, or its sender was
//! dropped) is an error to the reader, never a clean end of file: an extractor that finishes
//! a layer has read a verified blob to its end. What the extractor writes before that is in
//! a private staging directory that is committed only after every layer verified.

use std::io::{self, Read};

use bytes::Bytes;
use tokio::sync::mpsc;

/// Bounded: a slow extractor slows the download down instead of filling memory. hyper hands
/// over at most ~400 KiB per chunk, so a few MiB at most are in flight.
const IN_FLIGHT: usize = 8;

/// What the download sends.
#[derive(Debug)]
pub enum Piece {
    /// The next bytes of the current layer's blob.
    Data(Bytes),
    /// The current layer's blob is complete and matched its digest and size.
    Verified,
}

/// The download's end.
pub type PieceSender = mpsc::Sender<Piece>;

/// The extractor's end.
pub type PieceReceiver = mpsc::Receiver<Piece>;

/// A bounded channel for one tree's layers.
pub fn channel() -> (PieceSender, PieceReceiver) {
    mpsc::channel(IN_FLIGHT)
}

/// One layer's bytes, read on a blocking thread (never on the async runtime).
pub struct LayerReader<'a> {
    rx: &'a mut PieceReceiver,
    current: Bytes,
    verified: bool,
}

impl<'a> LayerReader<'a> {
    /// Reads the next layer from `rx`.
    pub fn new(rx: &'a mut PieceReceiver) -> Self {
        Self {
            rx,
            current: Bytes::new(),
            verified: false,
        }
    }

    /// Reads what the extractor did not need (tar padding, trailing bytes) up to the layer's
    /// verified end.
    pub fn read_to_verified_end(mut self) -> io::Result<()> {
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
