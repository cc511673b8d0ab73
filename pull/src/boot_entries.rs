// SPDX-License-Identifier: Apache-2.0
//! Kernels of the Boot Loader Specification entries (`/boot/loader/entries/*.conf`), so the
//! images for the next kernel are fetched before the node boots it.
//!
//! The kernel release comes from the `linux` line (`/vmlinuz-<release>`, also under
//! `/ostree/<os>-<hash>/` on RHCOS); the `version` line is used only when the `linux` line
//! does not name one, because on ostree systems `version` is the deployment's serial, not
//! the kernel.

use std::path::Path;

use kmod_day1_contract::KernelRelease;

/// Default BLS entries directory.
pub const BOOT_ENTRIES_DIR: &str = "/boot/loader/entries";

/// The kernel release one entry boots, if it names one.
pub fn entry_kernel(text: &str) -> Option<KernelRelease> {
    let mut version = None;
    for line in text.lines() {
        let line = line.trim();
        let (key, value) = match line.split_once(|c: char| c.is_ascii_whitespace()) {
            Some((k, v)) => (k, v.trim()),
            None => continue,
        };
        match key {
            "linux" => {
                let file = value.rsplit('/').next().unwrap_or_default();
                if let Some(k) = file
                    .strip_prefix("vmlinuz-")
                    .and_then(|r| KernelRelease::new(r).ok())
                {
                    return Some(k);
                }
            }
            "version" => {
                version = KernelRelease::new(value)
                    .ok()
                    .filter(|k| k.as_str().contains('.'))
            }
            _ => {}
        }
    }
    version
}

/// The distinct kernels of every `*.conf` under `dir`, sorted. A missing directory (a node
/// without BLS) has none; unreadable entries are skipped.
pub fn boot_entry_kernels(dir: &Path) -> std::io::Result<Vec<KernelRelease>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut out = vec![];
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "conf") {
            if let Some(k) = std::fs::read_to_string(&p)
                .ok()
                .as_deref()
                .and_then(entry_kernel)
            {
                out.push(k);
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fedora_and_ostree_entries() {
        let fedora = "title Fedora Linux (6.8.5-301.fc40.x86_64) 40\nversion 6.8.5-301.fc40.x86_64\nlinux /vmlinuz-6.8.5-301.fc40.x86_64\ninitrd /initramfs-6.8.5-301.fc40.x86_64.img\noptions root=UUID=x ro\n";
        assert_eq!(
            entry_kernel(fedora).unwrap().as_str(),
            "6.8.5-301.fc40.x86_64"
        );
        let rhcos = "title Red Hat Enterprise Linux CoreOS 417.94 (ostree:0)\nversion 2\noptions ostree=/ostree/boot.1/rhcos/abc/0\nlinux /ostree/rhcos-abc/vmlinuz-5.14.0-427.13.1.el9_4.x86_64\ninitrd /ostree/rhcos-abc/initramfs-5.14.0-427.13.1.el9_4.x86_64.img\n";
        assert_eq!(
            entry_kernel(rhcos).unwrap().as_str(),
            "5.14.0-427.13.1.el9_4.x86_64"
        );
        assert_eq!(entry_kernel("version 2\nlinux /vmlinuz\n"), None);
        assert_eq!(
            entry_kernel("version 6.1.0-9-amd64\n").unwrap().as_str(),
            "6.1.0-9-amd64"
        );
        assert_eq!(entry_kernel("linux /vmlinuz-../../etc\n"), None);
    }

    #[test]
    fn reads_a_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.conf"), "linux /vmlinuz-6.1.0-2-amd64\n").unwrap();
        std::fs::write(d.path().join("b.conf"), "linux /vmlinuz-6.1.0-1-amd64\n").unwrap();
        std::fs::write(d.path().join("c.conf"), "linux /vmlinuz-6.1.0-1-amd64\n").unwrap();
        std::fs::write(d.path().join("d.txt"), "linux /vmlinuz-9.9.9\n").unwrap();
        let k: Vec<String> = boot_entry_kernels(d.path())
            .unwrap()
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(k, ["6.1.0-1-amd64", "6.1.0-2-amd64"]);
        assert!(boot_entry_kernels(&d.path().join("none"))
            .unwrap()
            .is_empty());
    }
}
