// SPDX-License-Identifier: Apache-2.0
//! The seam between the loader and the kernel: module syscalls and `/sys/module`. The real
//! [`LinuxKernel`] uses `finit_module`/`init_module`/`delete_module` through `nix`; tests
//! use a fake, since an unprivileged host answers ENOSYS or EPERM.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::{DeleteModuleFlags, ModuleInitFlags};

use crate::kmsg::Kmsg;

/// `MODULE_INIT_COMPRESSED_FILE` (Linux 5.17): the kernel decompresses the file itself.
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;

/// What `/sys/module/<name>` says about a module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleState {
    /// Built into the kernel (a `/sys/module` entry without `initstate`): cannot be unloaded.
    pub builtin: bool,
    /// `refcnt`: references held (by modules in `holders` and by everything else).
    pub refcnt: u32,
    /// `holders/`: loaded modules that use this one.
    pub holders: Vec<String>,
    /// `srcversion`, when the module has one.
    pub srcversion: Option<String>,
    /// `version` (`MODULE_VERSION`), when the module has one.
    pub version: Option<String>,
    /// `taint` flags, e.g. `O` for an out-of-tree module, `E` for an unsigned one.
    pub taint: String,
}

/// The kernel's module interface.
pub trait KernelModules {
    /// `finit_module(2)`; `compressed` sets `MODULE_INIT_COMPRESSED_FILE`.
    fn finit_module(&mut self, file: &File, params: &CStr, compressed: bool) -> Result<(), Errno>;
    /// `init_module(2)` with a module image in memory.
    fn init_module(&mut self, image: &[u8], params: &CStr) -> Result<(), Errno>;
    /// `delete_module(2)` with `O_NONBLOCK`: fails rather than waits when in use.
    fn delete_module(&mut self, name: &str) -> Result<(), Errno>;
    /// The state of module `name` (kernel form), `None` when it is neither loaded nor built in.
    fn module_state(&self, name: &str) -> io::Result<Option<ModuleState>>;
    /// What the kernel logged about `module` since the last call (text after `<module>: `).
    fn kernel_messages(&mut self, module: &str) -> Vec<String>;
}

/// The running kernel.
#[derive(Debug)]
pub struct LinuxKernel {
    sysfs: PathBuf,
    kmsg: Option<Kmsg>,
}

impl LinuxKernel {
    /// Uses `sysfs` (`/sys`) and the kernel log at `kmsg` (`/dev/kmsg`), if it can be read.
    pub fn new(sysfs: &Path, kmsg: &Path) -> Self {
        let kmsg = match Kmsg::open_at_end(kmsg) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::debug!(
                    "kernel log {} not readable ({e}): unknown symbols will not be named",
                    kmsg.display()
                );
                None
            }
        };
        Self {
            sysfs: sysfs.to_owned(),
            kmsg,
        }
    }
}

impl KernelModules for LinuxKernel {
    fn finit_module(&mut self, file: &File, params: &CStr, compressed: bool) -> Result<(), Errno> {
        let flags = if compressed {
            ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
        } else {
            ModuleInitFlags::empty()
        };
        nix::kmod::finit_module(file, params, flags)
    }

    fn init_module(&mut self, image: &[u8], params: &CStr) -> Result<(), Errno> {
        nix::kmod::init_module(image, params)
    }

    fn delete_module(&mut self, name: &str) -> Result<(), Errno> {
        let name = std::ffi::CString::new(name).map_err(|_| Errno::EINVAL)?;
        nix::kmod::delete_module(&name, DeleteModuleFlags::O_NONBLOCK)
    }

    fn module_state(&self, name: &str) -> io::Result<Option<ModuleState>> {
        read_module_state(&self.sysfs, name)
    }

    fn kernel_messages(&mut self, module: &str) -> Vec<String> {
        self.kmsg
            .as_mut()
            .map(|k| k.module_messages(module))
            .unwrap_or_default()
    }
}

/// Reads `<sysfs>/module/<name>/{initstate,refcnt,holders,srcversion}`.
fn read_module_state(sysfs: &Path, name: &str) -> io::Result<Option<ModuleState>> {
    let dir = sysfs.join("module").join(name);
    if !dir.is_dir() {
        return Ok(None);
    }
    let read = |f: &str| match std::fs::read_to_string(dir.join(f)) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    };
    if read("initstate")?.is_none() {
        return Ok(Some(ModuleState {
            builtin: true,
            ..Default::default()
        }));
    }
    let refcnt = read("refcnt")?.and_then(|r| r.parse().ok()).unwrap_or(0);
    let mut holders: Vec<String> = match std::fs::read_dir(dir.join("holders")) {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(e),
    };
    holders.sort();
    Ok(Some(ModuleState {
        builtin: false,
        refcnt,
        holders,
        srcversion: read("srcversion")?.filter(|s| !s.is_empty()),
        version: read("version")?.filter(|s| !s.is_empty()),
        taint: read("taint")?.unwrap_or_default(),
    }))
}

/// Why loading a module failed, in words an operator can act on. `messages`: what the
/// kernel logged about the module meanwhile; unknown symbols are named from it, other
/// messages are quoted (the last three).
pub fn explain_load_error(errno: Errno, path: &Path, messages: &[String]) -> String {
    let path = path.display();
    let unknown_symbols = crate::kmsg::unknown_symbols(messages);
    let what = match errno {
        Errno::ENOEXEC => "invalid module format: built for another kernel?".to_string(),
        Errno::EKEYREJECTED | Errno::ENOKEY => {
            "signature rejected: Secure Boot needs modules signed with an enrolled key (mokutil)".to_string()
        }
        Errno::EEXIST => "a module of this name is already loaded: add it to inTreeModulesToRemove".to_string(),
        Errno::EBUSY => "the kernel is busy with a module of this name (loading or unloading it); try again".to_string(),
        Errno::ENOENT if !unknown_symbols.is_empty() => format!(
            "unknown symbol {}: a module it needs is missing or is the wrong version",
            unknown_symbols.join(", ")
        ),
        Errno::ENOENT => format!(
            "unknown symbol or missing file for {path}: a module it needs is missing (see dmesg for 'Unknown symbol')"
        ),
        Errno::EPERM => "operation not permitted: run as root; module loading may be disabled (kernel.modules_disabled) or locked down".to_string(),
        Errno::EINVAL if !unknown_symbols.is_empty() => format!(
            "symbol version mismatch for {}: the module was built against other kernel headers",
            unknown_symbols.join(", ")
        ),
        Errno::EINVAL => "invalid module or parameters: check the parameters and dmesg".to_string(),
        Errno::ENOSYS => "this kernel does not support loading modules (ENOSYS)".to_string(),
        Errno::ENOMEM => "out of memory loading the module".to_string(),
        e => format!("{} ({e})", e.desc()),
    };
    let mut out = format!("{what} [{}]", errno_name(errno));
    // "loading out-of-tree module taints kernel" and the like are true of every OOT
    // module and explain nothing.
    let said: Vec<&str> = messages
        .iter()
        .map(String::as_str)
        .filter(|m| !m.contains("taint"))
        .collect();
    if unknown_symbols.is_empty() && !said.is_empty() {
        let last = &said[said.len().saturating_sub(3)..];
        out.push_str(&format!("; the kernel said: {}", last.join(" / ")));
    }
    out
}

/// Why unloading a module failed, in plain words.
pub fn explain_unload_error(errno: Errno, name: &str) -> String {
    let what = match errno {
        Errno::EAGAIN => {
            format!("{name} is in use: stop what uses it, or list its users before it in inTreeModulesToRemove")
        }
        Errno::EBUSY => format!("{name} stayed busy (still initialising or being unloaded)"),
        Errno::ENOENT => format!("{name} is not loaded"),
        Errno::EPERM => {
            "operation not permitted: run as root; module unloading may be disabled".to_string()
        }
        Errno::ENOSYS => {
            "this kernel does not support unloading modules (CONFIG_MODULE_UNLOAD)".to_string()
        }
        e => format!("{} ({e})", e.desc()),
    };
    format!("{what} [{}]", errno_name(errno))
}

/// The symbolic name of an errno, for grepping.
fn errno_name(e: Errno) -> String {
    // nix's Debug is the symbolic name (EKEYREJECTED, ...).
    format!("{e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("module/ice");
        std::fs::create_dir_all(m.join("holders/irdma")).unwrap();
        std::fs::write(m.join("initstate"), "live\n").unwrap();
        std::fs::write(m.join("refcnt"), "1\n").unwrap();
        std::fs::write(m.join("srcversion"), "ABC\n").unwrap();
        std::fs::write(m.join("taint"), "OE\n").unwrap();
        std::fs::create_dir_all(d.path().join("module/firmware_class/parameters")).unwrap();
        let s = read_module_state(d.path(), "ice").unwrap().unwrap();
        assert_eq!(
            s,
            ModuleState {
                builtin: false,
                refcnt: 1,
                holders: vec!["irdma".into()],
                srcversion: Some("ABC".into()),
                version: None,
                taint: "OE".into(),
            }
        );
        assert!(
            read_module_state(d.path(), "firmware_class")
                .unwrap()
                .unwrap()
                .builtin
        );
        assert_eq!(read_module_state(d.path(), "e1000").unwrap(), None);
    }

    #[test]
    fn explains_every_errno_in_plain_words() {
        let p = Path::new("/x/ice.ko");
        let cases: &[(Errno, &[String], &str)] = &[
            (Errno::ENOEXEC, &[], "invalid module format: built for another kernel?"),
            (Errno::EKEYREJECTED, &[], "signature rejected: Secure Boot needs modules signed with an enrolled key (mokutil)"),
            (Errno::ENOKEY, &[], "signature rejected: Secure Boot needs modules signed with an enrolled key (mokutil)"),
            (Errno::EEXIST, &[], "already loaded"),
            (Errno::EBUSY, &[], "busy"),
            (Errno::ENOENT, &["Unknown symbol dpll_get (err -2)".to_string()], "unknown symbol dpll_get"),
            (Errno::ENOENT, &[], "/x/ice.ko"),
            (Errno::EPERM, &[], "run as root"),
            (Errno::EINVAL, &[], "parameters"),
            (Errno::EINVAL, &["disagrees about version of symbol gnss_put".to_string()], "symbol version mismatch for gnss_put"),
            (Errno::EINVAL, &["`abc' invalid for parameter `debug'".to_string()], "the kernel said: `abc' invalid for parameter `debug'"),
            (Errno::ENOSYS, &[], "does not support loading"),
            (Errno::ENOMEM, &[], "out of memory"),
            (Errno::EFAULT, &[], "EFAULT"),
        ];
        for (errno, syms, want) in cases {
            let got = explain_load_error(*errno, p, syms);
            assert!(got.contains(want), "{errno:?}: {got}");
            assert!(got.contains(&format!("[{errno:?}]")), "{got}");
        }
        assert!(explain_unload_error(Errno::EBUSY, "ice").contains("ice stayed busy"));
        let noisy = [
            "loading out-of-tree module taints kernel.".to_string(),
            "module verification failed: signature and/or required key missing - tainting kernel"
                .to_string(),
            "`abc' invalid for parameter `TxDescriptors'".to_string(),
        ];
        let got = explain_load_error(Errno::EINVAL, p, &noisy);
        assert!(
            got.ends_with("[EINVAL]; the kernel said: `abc' invalid for parameter `TxDescriptors'"),
            "{got}"
        );
        assert!(explain_unload_error(Errno::EAGAIN, "ice").contains("ice is in use"));
        assert!(explain_unload_error(Errno::ENOENT, "ice").contains("not loaded"));
        assert!(explain_unload_error(Errno::EPERM, "ice").contains("root"));
        assert!(explain_unload_error(Errno::ENOSYS, "ice").contains("CONFIG_MODULE_UNLOAD"));
        assert!(explain_unload_error(Errno::EIO, "ice").contains("EIO"));
    }

    #[test]
    fn the_host_kernel_refuses_without_panicking() {
        // EPERM unprivileged, ENOSYS in a sandbox, ENOENT as root: never Ok, never a panic.
        let mut k = LinuxKernel::new(Path::new("/sys"), Path::new("/nonexistent/kmsg"));
        assert!(k.delete_module("kmod_day1_no_such_module").is_err());
        assert!(k.kernel_messages("x").is_empty());
    }
}
