// SPDX-License-Identifier: Apache-2.0
//! What kmod-day1 puts into an initramfs, defined once: `mcgen --output initrd` and
//! `--output overlay-initrd` build from these items, and the dracut module reads the same
//! items from `dracut/50kmod-day1/initramfs-content`, the text of [`manifest`] (a test keeps
//! the file equal to it; `make golden` rewrites it). [`Layout`] says where an archive puts
//! them: at the real root's paths, or all under `/etc` for ostree's overlay initrd.

use kmod_day1_contract::{CONFIG_DIR, STORE_DIR};

use crate::units::LOAD_UNIT;

/// The loader's path, in the initramfs as in the real root.
pub const LOADER_PATH: &str = "/usr/local/bin/kmod-day1-load";
/// The config files carried: `CONFIG_DIR/*` with this suffix.
pub const CONFIG_SUFFIX: &str = ".json";
/// The node's modprobe.d directories carried (the loader's list without `/run`, a new tmpfs
/// in the initramfs), in kmod's order; a directory reached twice through a link, once.
pub const MODPROBE_DIRS: [&str; 4] = [
    "/etc/modprobe.d",
    "/usr/local/lib/modprobe.d",
    "/usr/lib/modprobe.d",
    "/lib/modprobe.d",
];
/// The modprobe.d files carried: these suffixes, no dot file (what kmod reads).
pub const MODPROBE_SUFFIXES: [&str; 2] = [".conf", ".alias"];
/// The loader unit, installed here and enabled for [`UNIT_TARGET`].
pub const UNIT_PATH: &str = "/usr/lib/systemd/system/kmod-day1-load.service";
/// The target that wants the unit (its `[Install] WantedBy=`).
pub const UNIT_TARGET: &str = "sysinit.target";

/// The overlay initrd's directory for the loader and the store: ostree's `--overlay-initrd`
/// (under `rpm-ostree initramfs-etc`) carries `/etc` files only.
pub const OVERLAY_DIR: &str = "/etc/kmod-day1/initrd";
/// The overlay initrd's unit: a name of its own, because `rpm-ostree initramfs-etc` tracks
/// files that also exist in the real root's `/etc`, where the MachineConfig's
/// `kmod-day1-load.service` lives.
pub const OVERLAY_UNIT_PATH: &str = "/etc/systemd/system/kmod-day1-load-initrd.service";

/// Where an archive puts the items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The real root's paths (`--output initrd`, appended to an initramfs; the dracut module).
    RealRoot,
    /// Everything under `/etc` (`--output overlay-initrd`): the loader and the store in
    /// [`OVERLAY_DIR`], the unit at [`OVERLAY_UNIT_PATH`] pointing the loader at them.
    EtcOverlay,
}

impl Layout {
    /// The loader's path in the initramfs.
    pub fn loader_path(self) -> String {
        match self {
            Layout::RealRoot => LOADER_PATH.to_owned(),
            Layout::EtcOverlay => format!("{OVERLAY_DIR}/kmod-day1-load"),
        }
    }

    /// The store's directory in the initramfs.
    pub fn store_dir(self) -> String {
        match self {
            Layout::RealRoot => STORE_DIR.to_owned(),
            Layout::EtcOverlay => format!("{OVERLAY_DIR}/store"),
        }
    }

    /// The unit's path in the initramfs.
    pub fn unit_path(self) -> &'static str {
        match self {
            Layout::RealRoot => UNIT_PATH,
            Layout::EtcOverlay => OVERLAY_UNIT_PATH,
        }
    }

    /// The unit's text: `units/kmod-day1-load.service`, for the overlay with the loader
    /// pointed at the overlay's paths and limited to the initramfs.
    pub fn unit_text(self) -> String {
        match self {
            Layout::RealRoot => LOAD_UNIT.to_owned(),
            Layout::EtcOverlay => overlay_unit(),
        }
    }
}

/// `kmod-day1-load.service` for the overlay initrd. `ConditionPathExists=/etc/initrd-release`:
/// when `rpm-ostree initramfs-etc` tracks these files they also sit in the real root's `/etc`,
/// where the real root's own unit does the job. No `RequiresMountsFor=`: the store is in the
/// initramfs.
fn overlay_unit() -> String {
    let l = Layout::EtcOverlay;
    let mut out = String::new();
    for line in LOAD_UNIT.lines() {
        if line.starts_with("RequiresMountsFor=") {
            continue;
        }
        if line.starts_with("Description=") {
            out.push_str(&format!("{line}, in the initramfs (overlay initrd)\n"));
        } else if line.starts_with("ExecStart=") {
            out.push_str(&format!(
                "ExecStart={} --store {}\n",
                l.loader_path(),
                l.store_dir()
            ));
        } else if line.starts_with("ConditionDirectoryNotEmpty=") {
            out.push_str(line);
            out.push_str(
                "\n# Only in the initramfs: in the real root, kmod-day1-load.service does the job.\n\
                 ConditionPathExists=/etc/initrd-release\n",
            );
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The manifest the dracut module reads: one item per line, `KIND PATH [ARGS...]`.
pub fn manifest() -> String {
    let mut m = String::from(
        "# What kmod-day1 puts into an initramfs, one item per line: KIND PATH [ARGS...].\n\
         # Generated from mcgen/src/initramfs_content.rs (`make golden`); read by module-setup.sh;\n\
         # `mcgen --output initrd` builds from the same definition.\n\
         #   loader PATH              the static kmod-day1-load\n\
         #   config DIR SUFFIX        the node configs\n\
         #   modprobe.d DIR SUFFIX..  the node's modprobe configuration (no dot files; a directory\n\
         #                            reached twice through a link, once)\n\
         #   unit PATH TARGET         kmod-day1-load.service of units/, enabled for TARGET\n\
         #   store DIR                the refs of the initramfs's kernel and the trees they name\n",
    );
    m.push_str(&format!("loader {LOADER_PATH}\n"));
    m.push_str(&format!("config {CONFIG_DIR} {CONFIG_SUFFIX}\n"));
    for d in MODPROBE_DIRS {
        m.push_str(&format!("modprobe.d {d} {}\n", MODPROBE_SUFFIXES.join(" ")));
    }
    m.push_str(&format!("unit {UNIT_PATH} {UNIT_TARGET}\n"));
    m.push_str(&format!("store {STORE_DIR}\n"));
    m
}

/// Whether kmod would read a modprobe.d file of this name.
pub fn is_modprobe_file(name: &str) -> bool {
    !name.starts_with('.') && MODPROBE_SUFFIXES.iter().any(|s| name.ends_with(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dracut module reads the committed copy: it must say what this crate builds.
    #[test]
    fn the_dracut_modules_manifest_is_this_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../dracut/50kmod-day1/initramfs-content");
        if std::env::var_os("MCGEN_BLESS").is_some() {
            std::fs::write(&path, manifest()).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            committed,
            manifest(),
            "{} differs from mcgen's definition: run `make golden`",
            path.display()
        );
        assert!(is_modprobe_file("50-nic.conf"));
        assert!(!is_modprobe_file(".hidden.conf"));
        assert!(!is_modprobe_file("README"));
    }

    #[test]
    fn the_overlay_unit_runs_the_overlays_loader_on_its_store_in_the_initramfs_only() {
        let u = Layout::EtcOverlay.unit_text();
        assert!(
            u.contains("\nExecStart=/etc/kmod-day1/initrd/kmod-day1-load --store /etc/kmod-day1/initrd/store\n"),
            "{u}"
        );
        assert!(
            u.contains("\nConditionPathExists=/etc/initrd-release\n"),
            "{u}"
        );
        assert!(
            !u.contains("RequiresMountsFor") && !u.contains("/usr/local/bin"),
            "{u}"
        );
        assert_eq!(u.matches("ExecStart=").count(), 1);
        // The rest is the real root's unit: its ordering and its escape hatch.
        for keep in [
            "Before=network-pre.target",
            "ConditionKernelCommandLine=!kmod_day1.disable",
            "WantedBy=sysinit.target",
        ] {
            assert!(u.contains(keep), "{keep}: {u}");
        }
        let l = Layout::EtcOverlay;
        assert!(l.loader_path().starts_with("/etc/") && l.store_dir().starts_with("/etc/"));
        assert!(l.unit_path().starts_with("/etc/systemd/system/"));
        assert_eq!(Layout::RealRoot.unit_text(), LOAD_UNIT);
    }
}
