// SPDX-License-Identifier: Apache-2.0
//! Durable writes of an extracted tree: writeback started while files are written, and one
//! fsync pass over the whole tree before it is renamed into the store.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Copies like `io::copy`, and asks the kernel to start writing back every few MiB and at
/// the end, so the fsyncs of `finish` find little left to write (a kmod image can hold
/// hundreds of MiB of firmware). `POSIX_FADV_DONTNEED` starts asynchronous writeback of
/// dirty pages.
pub(crate) fn copy_with_writeback(from: &mut impl Read, to: &mut File) -> io::Result<u64> {
    use std::io::Write as _;
    const CHUNK: usize = 256 * 1024;
    const KICK: u64 = 8 << 20;
    let mut buf = vec![0u8; CHUNK];
    let (mut total, mut kicked) = (0u64, 0u64);
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => {
                start_writeback(to, kicked, total);
                return Ok(total);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
        if total - kicked >= KICK {
            start_writeback(to, kicked, total);
            kicked = total;
        }
    }
}

fn start_writeback(f: &File, from: u64, to: u64) {
    if to <= from {
        return;
    }
    let _ = nix::fcntl::posix_fadvise(
        f,
        from as i64,
        (to - from) as i64,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

/// fsyncs every file and directory under `dir`, deepest first, so that the tree is durable
/// before it is renamed into `trees/`. Symlinks are not opened: their inodes are made
/// durable by the fsync of their directory. One pass at the end instead of one fsync per
/// file while extracting: the same guarantee before the rename, and the extractor keeps up
/// with the download. (`syncfs(2)` would do it in one call but also waits for every other
/// writer of the filesystem, and /var on a node is shared with CRI-O and kubelet.)
pub(crate) fn sync_tree(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            sync_tree(&e.path())?;
        } else if ft.is_file() {
            // Read-only, or write-only for a file whose mode denies reading (not root).
            let open = |read: bool| {
                OpenOptions::new()
                    .read(read)
                    .write(!read)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(e.path())
            };
            let f = match open(true) {
                Err(err) if err.kind() == io::ErrorKind::PermissionDenied => open(false),
                r => r,
            }?;
            f.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()
}
