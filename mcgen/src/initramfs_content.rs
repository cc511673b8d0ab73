// SPDX-License-Identifier: Apache-2.0
//! What kmod-day1 puts into an initramfs, defined once: `mcgen --output initrd` builds from
//! these items, and the dracut module reads the same items from
//! `dracut/50kmod-day1/initramfs-content`, the text of [`manifest`] (a test keeps the file
//! equal to it; `make golden` rewrites it).

use kmod_day1_contract::{CONFIG_DIR, STORE_DIR};

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
}
