// SPDX-License-Identifier: Apache-2.0
//! gzip files (RFC 1952), as RHEL ships the kernel's `symvers.gz`: the member's header, its
//! DEFLATE stream (miniz_oxide, pure Rust) and its trailer (CRC-32 and size), checked.
//! miniz_oxide alone adds 15 KB to the static loader, flate2's reader over it 46 KB.

/// Whether `data` starts as a gzip file does.
pub fn is_gzip(data: &[u8]) -> bool {
    data.starts_with(&[0x1f, 0x8b])
}

const FHCRC: u8 = 2;
const FEXTRA: u8 = 4;
const FNAME: u8 = 8;
const FCOMMENT: u8 = 16;

/// The content of the first member of the gzip file `data`, at most `limit` bytes.
pub fn gunzip(data: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let short = || "truncated gzip file".to_owned();
    if !is_gzip(data) || data.len() < 18 {
        return Err("not a gzip file".into());
    }
    if data[2] != 8 {
        return Err(format!(
            "gzip compression method {} is not deflate",
            data[2]
        ));
    }
    let flags = data[3];
    let mut at = 10;
    if flags & FEXTRA != 0 {
        let len = data.get(at..at + 2).ok_or_else(short)?;
        at += 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let end = data.get(at..).and_then(|d| d.iter().position(|&b| b == 0));
            at += end.ok_or_else(short)? + 1;
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    let body = data.get(at..).ok_or_else(short)?;
    let (out, used) = inflate(body, limit)?;
    let trailer = body.get(used..used + 8).ok_or_else(short)?;
    let crc = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
    let size = u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes"));
    if crc != crc32(&out) || size != out.len() as u32 {
        return Err("gzip file is corrupt (its CRC or size does not match)".into());
    }
    Ok(out)
}

/// Inflates the DEFLATE stream at the start of `input`: the output and the input bytes used.
fn inflate(input: &[u8], limit: usize) -> Result<(Vec<u8>, usize), String> {
    use miniz_oxide::inflate::core::{decompress, inflate_flags, DecompressorOxide};
    use miniz_oxide::inflate::TINFLStatus;
    let mut state = DecompressorOxide::new();
    let mut out = vec![0u8; input.len().saturating_mul(4).max(1 << 16).min(limit.max(1))];
    let (mut read, mut written) = (0, 0);
    loop {
        let flags = inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF
            | inflate_flags::TINFL_FLAG_HAS_MORE_INPUT;
        let (status, r, w) = decompress(&mut state, &input[read..], &mut out, written, flags);
        read += r;
        written += w;
        match status {
            TINFLStatus::Done => {
                out.truncate(written);
                return Ok((out, read));
            }
            TINFLStatus::HasMoreOutput if out.len() < limit => {
                let grown = out.len().saturating_mul(2).min(limit);
                out.resize(grown, 0);
            }
            TINFLStatus::HasMoreOutput => {
                return Err(format!("gzip file inflates to more than {limit} bytes"))
            }
            TINFLStatus::NeedsMoreInput | TINFLStatus::FailedCannotMakeProgress => {
                return Err("truncated gzip file".into())
            }
            s => return Err(format!("gzip file is corrupt ({s:?})")),
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected), as gzip's trailer has it.
fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8], builder: flate2::GzBuilder) -> Vec<u8> {
        let mut g = builder.write(vec![], flate2::Compression::best());
        g.write_all(data).unwrap();
        g.finish().unwrap()
    }

    #[test]
    fn inflates_what_gzip_writes() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let plain = gz(&data, flate2::GzBuilder::new());
        assert_eq!(gunzip(&plain, 1 << 20).unwrap(), data);
        // With a file name, a comment and an extra field, as `gzip -N` and others write.
        let named = gz(
            b"0x1\ts\tvmlinux\n",
            flate2::GzBuilder::new()
                .filename("Module.symvers")
                .comment("c")
                .extra(vec![1, 2, 3]),
        );
        assert_eq!(gunzip(&named, 1 << 20).unwrap(), b"0x1\ts\tvmlinux\n");
        assert_eq!(gunzip(&gz(b"", flate2::GzBuilder::new()), 10).unwrap(), b"");
    }

    #[test]
    fn refuses_broken_and_oversized_files() {
        let data = vec![b'x'; 100_000];
        let good = gz(&data, flate2::GzBuilder::new());
        let e = gunzip(&good, 1000).unwrap_err();
        assert!(e.contains("more than 1000 bytes"), "{e}");
        let e = gunzip(&good[..good.len() / 2], 1 << 20).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let mut bad_crc = good.clone();
        let n = bad_crc.len();
        bad_crc[n - 6] ^= 1;
        let e = gunzip(&bad_crc, 1 << 20).unwrap_err();
        assert!(e.contains("CRC or size"), "{e}");
        assert!(gunzip(b"plain text, not gzip", 100).is_err());
        // Every byte changed: errors are fine, panics are bugs.
        let small = gz(
            b"0x00000001\tsym\tvmlinux\tEXPORT_SYMBOL\n",
            flate2::GzBuilder::new(),
        );
        for i in 0..small.len() {
            for b in [0u8, 0xff, 0x1f] {
                let mut s = small.clone();
                s[i] = b;
                let _ = gunzip(&s, 1 << 16);
            }
        }
    }
}
