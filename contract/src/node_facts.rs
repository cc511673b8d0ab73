// SPDX-License-Identifier: Apache-2.0
//! The facts about the running node that both node binaries read: the kernel release, the
//! kernel command line (its escape hatches) and the boot id.
//!
//! One failure rule for all three: a fact that cannot be read is a [`NodeFactError`] that
//! names the file, and nothing that depends on it is done. Without the command line the
//! binaries cannot know whether `kmod_day1.disable` is set, so the loader swaps nothing and
//! the pull neither fetches nor reboots; without the boot id the pull cannot tell this
//! boot's loader status from an older one, so it does not reboot. Every path is a flag of the
//! binaries, with these constants as the production defaults.

use std::path::Path;

use crate::{EscapeHatches, KernelRelease};

/// Where the running kernel's release is (what `uname -r` prints).
pub const OSRELEASE_FILE: &str = "/proc/sys/kernel/osrelease";
/// Where the kernel command line is.
pub const CMDLINE_FILE: &str = "/proc/cmdline";
/// Where this boot's id is.
pub const BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

/// A node fact that cannot be read or makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the {what} from {path}: {why}")]
pub struct NodeFactError {
    /// Which fact ("kernel command line").
    pub what: &'static str,
    /// The file it was read from.
    pub path: String,
    /// What went wrong.
    pub why: String,
}

fn read_fact(what: &'static str, path: &Path) -> Result<String, NodeFactError> {
    let err = |why: String| NodeFactError {
        what,
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    // A command line may legitimately be empty; the other two may not.
    if what != "kernel command line" && text.trim().is_empty() {
        return Err(err("the file is empty".into()));
    }
    Ok(text)
}

/// The running kernel's release, read from `file` ([`OSRELEASE_FILE`]).
pub fn kernel_release(file: &Path) -> Result<KernelRelease, NodeFactError> {
    let text = read_fact("kernel release", file)?;
    KernelRelease::new(text.trim()).map_err(|e| NodeFactError {
        what: "kernel release",
        path: file.display().to_string(),
        why: e.to_string(),
    })
}

/// The escape hatches on the kernel command line in `file` ([`CMDLINE_FILE`]).
pub fn kernel_command_line(file: &Path) -> Result<EscapeHatches, NodeFactError> {
    kernel_command_line_text(file).map(|text| EscapeHatches::parse(&text))
}

/// The kernel command line in `file` ([`CMDLINE_FILE`]) as text, for readers that need more
/// than the escape hatches (the loader reads module parameters from it, as modprobe does).
pub fn kernel_command_line_text(file: &Path) -> Result<String, NodeFactError> {
    read_fact("kernel command line", file)
}

/// This boot's id, read from `file` ([`BOOT_ID_FILE`]).
pub fn boot_id(file: &Path) -> Result<String, NodeFactError> {
    read_fact("boot id", file).map(|text| text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_fact_and_names_the_file_when_it_cannot() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        std::fs::write(p("osrelease"), "6.1.0-18-amd64\n").unwrap();
        std::fs::write(p("cmdline"), "root=/dev/vda kmod_day1.disable\n").unwrap();
        std::fs::write(p("empty"), "").unwrap();
        std::fs::write(p("boot_id"), "f00d\n").unwrap();
        std::fs::write(p("bad-release"), "6.1/../x\n").unwrap();

        assert_eq!(
            kernel_release(&p("osrelease")).unwrap().as_str(),
            "6.1.0-18-amd64"
        );
        assert!(kernel_command_line(&p("cmdline")).unwrap().disabled);
        assert!(!kernel_command_line(&p("empty")).unwrap().disabled);
        assert_eq!(
            kernel_command_line_text(&p("cmdline")).unwrap(),
            "root=/dev/vda kmod_day1.disable\n"
        );
        assert_eq!(boot_id(&p("boot_id")).unwrap(), "f00d");

        let e = kernel_command_line(&p("missing")).unwrap_err();
        assert_eq!(e.what, "kernel command line");
        assert!(e.to_string().starts_with(&format!(
            "cannot read the kernel command line from {}: ",
            p("missing").display()
        )));
        assert_eq!(boot_id(&p("empty")).unwrap_err().why, "the file is empty");
        assert!(kernel_release(&p("empty")).is_err());
        assert!(kernel_release(&p("bad-release")).is_err());
    }
}
