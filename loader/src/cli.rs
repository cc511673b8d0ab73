// SPDX-License-Identifier: Apache-2.0
//! Command-line parsing. A small hand parser rather than clap: the loader runs on every
//! boot and takes only `--flag VALUE` options; clap's derive and help machinery would add
//! a few hundred KiB to a binary whose budget is 1.2 MiB static.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::Options;

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Load the module sets.
    Run(Box<Options>),
    /// Print [`HELP`].
    Help,
    /// Print the version.
    Version,
}

/// A command line that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}; see kmod-day1-load --help")]
pub struct UsageError(pub String);

/// The flags that take a path or value, as `(flag, what)`; [`HELP`] documents each.
const VALUE_FLAGS: &[&str] = &[
    "--config-dir",
    "--store",
    "--status",
    "--kernel-release",
    "--cmdline",
    "--modules-root",
    "--sysfs",
    "--securityfs",
    "--proc-keys",
    "--firmware-dir",
    "--kmsg",
    "--boot-id-file",
    "--modprobe-dir",
    "--symvers",
    "--bind-timeout",
];

/// `--help`: the manual page.
pub const HELP: &str = "\
kmod-day1-load - swap in-tree kernel modules for out-of-tree ones at boot

USAGE
    kmod-day1-load [OPTIONS]
    kmod-day1-load --dry-run [--json] [OPTIONS]

DESCRIPTION
    Runs once per boot from kmod-day1-load.service, before network-pre.target, so that
    NetworkManager only ever sees the out-of-tree driver.

    For every config in the config directory and every module set in it, the loader
    resolves the image for the running kernel and looks in the store for the tree that
    kmod-day1-pull committed for it. Nothing stored yet: the set is recorded as notStored
    and the loader exits 0; the pull unit fetches the image after the network is up.

    With a tree, the loader first checks everything without touching the kernel: each
    module file exists, its vermagic names the running kernel, every dependency resolves
    (from the image's modules.dep and modinfo, then the node's /lib/modules/<kver>; plain,
    .ko.xz and .ko.zst). Then it unloads the in-tree modules listed in
    inTreeModulesToRemove (in order, refusing modules still used by others), copies the
    image's firmware to the firmware directory and points the kernel at it, and loads the
    modules with their dependencies and parameters. A module already loaded with the same
    srcversion is left alone, so a second run changes nothing. If any step fails, what
    this run loaded is unloaded and the in-tree modules it removed are loaded back.

    A module whose init succeeds may still drive nothing (its device table lacks the
    NIC's ID, its probe fails). Before unloading, the loader notes the devices the set
    must drive: those bound to the in-tree modules it removes, and those whose modalias
    an alias of a module it loads matches and no staying driver has. After loading, each
    must be bound to one of the set's modules (its driver link in sysfs) within
    --bind-timeout; a device whose ID none of the modules' aliases matches fails at once.
    Otherwise the set is rolled back, the loader checks the devices are bound to the
    in-tree modules again, and the status records notBound with the devices. A set that
    drives no device (an accelerator without its hardware) is loaded and says so
    (drivesNoDevice).

    Modules are loaded as modprobe would load them, with the node's modprobe
    configuration read as kmod reads it: the modprobe.d directories (see --modprobe-dir;
    *.conf and *.alias files, a file name in an earlier directory hides the later ones,
    all read in lexical order with the module directory's modules.softdep), then the
    kernel command line. `options` lines and `module.param=value` words give parameters
    (modprobe.d first, then the command line, then the config's parameters: the last
    value wins); `softdep` pre: and post: modules (and an image module's own softdep
    modinfo) are loaded around their module, and one that is missing or fails is only a
    warning, as with modprobe; `blacklist` and modprobe.blacklist= only filter alias
    lookups, as in kmod, so they do not stop a module named here. install and remove
    commands are never run: a module to load that has an install command fails
    preflight, naming the file and line (an install line on an in-tree module that is
    only removed is fine; a rollback that would need it says so). A module in the
    kernel's own module_blacklist= fails preflight. The same rules apply to
    dependencies, softdeps and the in-tree modules a rollback loads back.

    With --dry-run the loader plans and touches nothing: no module is loaded or
    unloaded, no firmware copied, no status written. It prints, per module set, what
    would be unloaded, what would be loaded in which order with which parameters and
    where each comes from, the firmware to copy, the devices expected to bind, the symbol
    versions checked (or why not, and each mismatch), and what a rollback would load back;
    --json prints the same plan, and the modprobe configuration read, as one JSON
    document. The real run executes the same plan from the same planner. For the running
    kernel the plan starts from the loaded modules (/sys/module); for another release
    (--kernel-release, with --modules-root and --modprobe-dir of another deployment) from
    that kernel's boot: nothing loaded but the in-tree modules to remove. The exit status
    is what the real run's would be (a set failing preflight: 1).

    Symbol versions (modversions): where the kernel's table of symbol CRCs is found
    (--symvers; RHEL and RHCOS ship it as /usr/lib/modules/<kver>/symvers.gz), the CRC
    of every symbol each image module to load imports (its __versions section, or
    __version_ext_crcs/__version_ext_names on Linux 6.15+) must be the kernel's, and every
    symbol must be exported by the kernel, by a node module or by a module of the set
    (whose CRCs the kernel compares at load); a module without symbol versions for a
    kernel with them is refused too. Otherwise the set fails preflight, naming the
    module, the symbol and both CRCs, before anything is unloaded. Without a table
    nothing is compared and the plan says why: the kernel checks them at load.

    Secure Boot: when the kernel enforces module signatures (module.sig_enforce, or
    lockdown in integrity or confidentiality mode), each image module to load (after
    decompression) must carry a module signature and, where the trusted keyrings can be
    read (.builtin_trusted_keys, .secondary_trusted_keys, .machine, .platform: /proc/keys
    and keyctl), its signer must be one of their keys; otherwise the set fails preflight,
    naming the file and the key, before anything is unloaded. Without enforcement an
    unsigned module is loaded and noted (unsigned in the status). An in-tree module to
    remove that is built into the kernel (modules.builtin, or /sys/module without
    initstate) fails preflight.

    Every run writes the status file (JSON): per set its state (loaded, notStored,
    noImage, skipped, failed, notBound), image, manifest digest, modules with version,
    srcversion and load time, the in-tree modules removed, whether it was rolled back, the
    devices it had to drive (bound or not, and why), the time spent in the kernel
    (kernelUs) and the loader's own time (overheadUs), and the error.

KERNEL COMMAND LINE
    kmod_day1.disable              do nothing this boot (exit 0, no status written)
    kmod_day1.skip=SET[,CONFIG/SET]  skip those module sets (recorded as skipped)
    MODULE.PARAM=VALUE             a parameter for MODULE, as modprobe reads it
    modprobe.blacklist=M[,M]       blacklist lines (alias lookups only, as in kmod)
    module_blacklist=M[,M]         the kernel refuses those modules: a plan loading one
                                   fails preflight

OPTIONS
    --config-dir DIR      config files, one per MachineConfig   [/etc/kmod-day1/config.d]
    --store DIR           the store written by kmod-day1-pull    [/var/lib/kmod-day1]
    --status FILE         status file written by this run       [/run/kmod-day1/status.json]
    --kernel-release KVER kernel release to load for            [/proc/sys/kernel/osrelease]
    --cmdline FILE        kernel command line                   [/proc/cmdline]
    --modules-root DIR    the node's modules, DIR/<kver>        [/lib/modules]
    --sysfs DIR           sysfs, for /sys/module                [/sys]
    --securityfs DIR      securityfs, for the lockdown mode     [/sys/kernel/security]
    --proc-keys FILE      the kernel's keys (trusted keyrings)  [/proc/keys]
    --firmware-dir DIR    where firmware is copied              [/var/lib/firmware]
    --kmsg FILE           kernel log, to name unknown symbols   [/dev/kmsg]
    --boot-id-file FILE   boot id for the status file           [/proc/sys/kernel/random/boot_id]
    --modprobe-dir DIR    a modprobe.d directory; repeat for several, in order (the
                          first use replaces the list)          [/etc/modprobe.d
                          /run/modprobe.d /usr/local/lib/modprobe.d /usr/lib/modprobe.d
                          /lib/modprobe.d]
    --symvers FILE        the kernel's symbol versions (Module.symvers format, gzip or
                          plain)                                [the first that exists of
                          MODULES/symvers.gz, MODULES/symvers, /boot/symvers-<kver>.gz,
                          MODULES/build/Module.symvers; MODULES is
                          <modules-root>/<kver>]
    --bind-timeout SECS   how long the devices may take to bind
                          after the load (ice, mlx5: 5-20 s)    [30]
    --dry-run             print the plan, touch nothing
    --json                with --dry-run: the plan as JSON
    -v, --verbose         log debug lines too
    -h, --help            print this help
    -V, --version         print the version

EXIT STATUS
    0   every set loaded, or nothing to do yet (not stored, no image, skipped, disabled)
    1   a set failed and was rolled back: the in-tree modules are loaded again (or it
        failed its preflight checks and nothing was touched)
    2   bad usage or config: nothing was touched for it (other configs are still used);
        or the kernel command line cannot be read: nothing was touched at all
    3   a rollback failed: an in-tree module could not be loaded back (see the journal)
    When several apply, the highest in the order 3, 1, 2, 0 is returned.

LOGGING
    One line per step on stderr, without timestamps (journald adds them), e.g.
      INFO 99-ice/ice: unloaded in-tree ice in 12.3 ms
      INFO 99-ice/ice: loaded ice 1.14.9 srcversion 0ABC... from image in 80.1 ms
      INFO 99-ice/ice: loaded: 2 modules (0 already loaded), kernel 92.4 ms, own 1.2 ms
";

/// `30`, `2.5` or `30s`: a duration in seconds, at most a day.
fn parse_seconds(flag: &str, value: &OsString) -> Result<Duration, UsageError> {
    let bad = || {
        UsageError(format!(
            "{flag} takes seconds (30, 2.5, 30s), not {value:?}"
        ))
    };
    let text = value.to_str().ok_or_else(bad)?;
    let secs: f64 = text
        .strip_suffix('s')
        .unwrap_or(text)
        .parse()
        .map_err(|_| bad())?;
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses the arguments after the program name.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut o = Options::default();
    let mut modprobe_dirs: Option<Vec<PathBuf>> = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|a| UsageError(format!("argument {a:?} is not UTF-8")))?;
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "-v" | "--verbose" => {
                o.verbose = true;
                continue;
            }
            "--dry-run" => {
                o.dry_run = true;
                continue;
            }
            "--json" => {
                o.json = true;
                continue;
            }
            _ => {}
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(OsString::from(v))),
            _ => (arg.clone(), None),
        };
        if !VALUE_FLAGS.contains(&flag.as_str()) {
            return Err(UsageError(format!("unknown argument {arg:?}")));
        }
        let value = match inline.or_else(|| args.next()) {
            Some(v) if !v.is_empty() => v,
            _ => return Err(UsageError(format!("{flag} needs a value"))),
        };
        let path = PathBuf::from(&value);
        match flag.as_str() {
            "--config-dir" => o.config_dir = path,
            "--store" => o.store = path,
            "--status" => o.status = path,
            "--kernel-release" => {
                o.kernel_release = Some(
                    value
                        .into_string()
                        .map_err(|_| UsageError("--kernel-release is not UTF-8".into()))?,
                )
            }
            "--cmdline" => o.cmdline = path,
            "--modules-root" => o.modules_root = path,
            "--sysfs" => o.sysfs = path,
            "--securityfs" => o.securityfs = path,
            "--proc-keys" => o.proc_keys = path,
            "--firmware-dir" => o.firmware_dir = path,
            "--kmsg" => o.kmsg = path,
            "--boot-id-file" => o.boot_id_file = path,
            "--bind-timeout" => o.bind_timeout = parse_seconds(&flag, &value)?,
            "--modprobe-dir" => modprobe_dirs.get_or_insert_with(Vec::new).push(path),
            "--symvers" => o.symvers = Some(path),
            _ => unreachable!("every value flag is handled"),
        }
    }
    if let Some(dirs) = modprobe_dirs {
        o.modprobe_dirs = dirs;
    }
    if o.json && !o.dry_run {
        return Err(UsageError("--json needs --dry-run".into()));
    }
    Ok(Command::Run(Box::new(o)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<Command, UsageError> {
        parse_args(a.iter().map(OsString::from))
    }

    #[test]
    fn defaults_are_the_production_paths() {
        let Command::Run(o) = parse(&[]).unwrap() else {
            panic!()
        };
        assert_eq!(*o, Options::default());
        assert_eq!(o.config_dir, PathBuf::from("/etc/kmod-day1/config.d"));
        assert_eq!(o.store, PathBuf::from("/var/lib/kmod-day1"));
        assert_eq!(o.status, PathBuf::from("/run/kmod-day1/status.json"));
        assert_eq!(o.firmware_dir, PathBuf::from("/var/lib/firmware"));
        assert_eq!(
            o.modprobe_dirs,
            [
                "/etc/modprobe.d",
                "/run/modprobe.d",
                "/usr/local/lib/modprobe.d",
                "/usr/lib/modprobe.d",
                "/lib/modprobe.d"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn every_flag_sets_its_field() {
        let mut args = vec![];
        for f in VALUE_FLAGS.iter().filter(|f| **f != "--bind-timeout") {
            args.push(f.to_string());
            args.push(format!("/x{f}"));
        }
        args.extend(["-v".into(), "--bind-timeout".into(), "2.5".into()]);
        let Command::Run(o) = parse_args(args.into_iter().map(OsString::from)).unwrap() else {
            panic!()
        };
        assert_eq!(o.config_dir, PathBuf::from("/x--config-dir"));
        assert_eq!(o.store, PathBuf::from("/x--store"));
        assert_eq!(o.status, PathBuf::from("/x--status"));
        assert_eq!(o.kernel_release.as_deref(), Some("/x--kernel-release"));
        assert_eq!(o.cmdline, PathBuf::from("/x--cmdline"));
        assert_eq!(o.modules_root, PathBuf::from("/x--modules-root"));
        assert_eq!(o.sysfs, PathBuf::from("/x--sysfs"));
        assert_eq!(o.securityfs, PathBuf::from("/x--securityfs"));
        assert_eq!(o.proc_keys, PathBuf::from("/x--proc-keys"));
        assert_eq!(o.firmware_dir, PathBuf::from("/x--firmware-dir"));
        assert_eq!(o.kmsg, PathBuf::from("/x--kmsg"));
        assert_eq!(o.boot_id_file, PathBuf::from("/x--boot-id-file"));
        assert_eq!(o.modprobe_dirs, [PathBuf::from("/x--modprobe-dir")]);
        assert_eq!(o.symvers, Some(PathBuf::from("/x--symvers")));
        assert_eq!(o.bind_timeout, Duration::from_millis(2500));
        assert!(o.verbose);
        assert!(!o.dry_run);
        let Command::Run(o) = parse(&["--store=/s"]).unwrap() else {
            panic!()
        };
        assert_eq!(o.store, PathBuf::from("/s"));
        let Command::Run(o) = parse(&[
            "--dry-run",
            "--json",
            "--modprobe-dir",
            "/a",
            "--modprobe-dir=/b",
        ])
        .unwrap() else {
            panic!()
        };
        assert!(o.dry_run && o.json);
        assert_eq!(o.modprobe_dirs, [PathBuf::from("/a"), PathBuf::from("/b")]);
    }

    #[test]
    fn bad_usage_is_explained() {
        assert!(parse(&["--bogus"])
            .unwrap_err()
            .to_string()
            .contains("unknown argument \"--bogus\""));
        assert!(parse(&["--store"])
            .unwrap_err()
            .to_string()
            .contains("--store needs a value"));
        assert!(parse(&["--store="])
            .unwrap_err()
            .to_string()
            .contains("needs a value"));
        assert!(parse(&["stray"]).is_err());
        for bad in ["soon", "-1", "1e9", "NaN"] {
            let e = parse(&["--bind-timeout", bad]).unwrap_err().to_string();
            assert!(e.contains("--bind-timeout takes seconds"), "{bad}: {e}");
        }
        let Command::Run(o) = parse(&["--bind-timeout=45s"]).unwrap() else {
            panic!()
        };
        assert_eq!(o.bind_timeout, Duration::from_secs(45));
        assert!(parse(&["--json"])
            .unwrap_err()
            .to_string()
            .contains("--json needs --dry-run"));
        assert_eq!(parse(&["--help"]).unwrap(), Command::Help);
        assert_eq!(parse(&["-V"]).unwrap(), Command::Version);
    }

    /// The help and the README document every flag: adding one without its docs fails.
    #[test]
    fn help_and_readme_document_every_flag() {
        let readme = include_str!("../README.md");
        for f in
            VALUE_FLAGS
                .iter()
                .chain(&["--verbose", "--help", "--version", "--dry-run", "--json"])
        {
            assert!(HELP.contains(f), "--help lacks {f}");
            assert!(readme.contains(f), "loader/README.md lacks {f}");
        }
        for code in ["0 ", "1 ", "2 ", "3 "] {
            assert!(
                HELP.contains(&format!("    {code}")),
                "--help lacks exit code {code}"
            );
        }
    }
}
