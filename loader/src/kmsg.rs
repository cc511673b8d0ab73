// SPDX-License-Identifier: Apache-2.0
//! The kernel log (`/dev/kmsg`), read for the one fact a failed `finit_module` does not
//! return: which symbol was unknown. The loader opens it at start and seeks to its end,
//! so only messages of this run are read.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A reader of kernel log records written after it was opened.
#[derive(Debug)]
pub struct Kmsg {
    file: File,
}

impl Kmsg {
    /// Opens `path` (non-blocking: `/dev/kmsg` blocks at its end otherwise) at its end.
    pub fn open_at_end(path: &Path) -> io::Result<Self> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(path)?;
        file.seek(SeekFrom::End(0))?;
        Ok(Self { file })
    }

    /// What the kernel said about `module` (the text after `<module>: `) in the records
    /// written since the last call.
    pub fn module_messages(&mut self, module: &str) -> Vec<String> {
        let mut text = String::new();
        // /dev/kmsg returns one record per read; a regular file returns what it has.
        let mut buf = vec![0u8; 8192];
        for _ in 0..10_000 {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    text.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if !text.ends_with('\n') {
                        text.push('\n');
                    }
                }
                // EPIPE: records were overwritten under us; the next read goes on.
                Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break, // EAGAIN at the end, or anything else: stop
            }
        }
        parse_module_messages(&text, module)
    }
}

/// The messages of `module` in kernel log text (`/dev/kmsg` records
/// `prio,seq,usec,flags;message`, or dmesg lines `[  1.2] message`).
pub fn parse_module_messages(text: &str, module: &str) -> Vec<String> {
    let mut out = vec![];
    for line in text.lines() {
        let msg = match line.split_once(';') {
            Some((head, m)) if head.split(',').count() >= 3 => m,
            _ => line,
        };
        let msg = match msg.strip_prefix('[') {
            Some(_) => msg.split_once("] ").map_or(msg, |(_, m)| m),
            None => msg,
        };
        if let Some(rest) = msg.strip_prefix(module).and_then(|r| r.strip_prefix(": ")) {
            out.push(rest.trim_end().to_owned());
        }
    }
    out
}

/// The symbols named in `Unknown symbol X` and `disagrees about version of symbol X`
/// messages, each once.
pub fn unknown_symbols(messages: &[String]) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for m in messages {
        let sym = ["Unknown symbol ", "disagrees about version of symbol "]
            .iter()
            .find_map(|p| m.strip_prefix(p))
            .and_then(|s| s.split_whitespace().next());
        if let Some(s) = sym {
            if !out.iter().any(|o| o == s) {
                out.push(s.to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn parses_records() {
        let text = "3,812,4412,-;ice: Unknown symbol dpll_device_get (err -2)\n\
                    3,813,4413,-;ice: Unknown symbol dpll_device_get (err -2)\n\
                    4,814,4414,-;ice: disagrees about version of symbol gnss_put\n\
                    3,815,4415,-;icex: Unknown symbol other (err -2)\n\
                    [    2.000] ice: Unknown symbol from_dmesg (err -2)\n";
        let msgs = parse_module_messages(text, "ice");
        assert_eq!(msgs.len(), 4);
        assert_eq!(msgs[0], "Unknown symbol dpll_device_get (err -2)");
        assert_eq!(
            unknown_symbols(&msgs),
            vec!["dpll_device_get", "gnss_put", "from_dmesg"]
        );
        assert!(parse_module_messages(text, "e1000").is_empty());
        let p = parse_module_messages(
            "4,9,9,-;e1000: `abc' invalid for parameter `TxDescriptors'\n",
            "e1000",
        );
        assert_eq!(p, ["`abc' invalid for parameter `TxDescriptors'"]);
        assert!(unknown_symbols(&p).is_empty());
    }

    #[test]
    fn reads_only_new_records() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kmsg");
        std::fs::write(&p, "3,1,1,-;ice: Unknown symbol old (err -2)\n").unwrap();
        let mut k = Kmsg::open_at_end(&p).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        writeln!(f, "3,2,2,-;ice: Unknown symbol new_one (err -2)").unwrap();
        assert_eq!(
            k.module_messages("ice"),
            vec!["Unknown symbol new_one (err -2)"]
        );
        assert!(k.module_messages("ice").is_empty());
    }
}
