// SPDX-License-Identifier: Apache-2.0
//! Command line. Every host path is a flag with the production default, so tests run
//! unprivileged on temporary directories.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use kmod_day1_contract::KernelRelease;

const LONG_ABOUT: &str = "\
Fetches the kmod images of every config in the config directory for the running kernel, \
verifies them, stores what the loader needs atomically, and asks for one reboot when the \
running kernel's modules could not be loaded this boot because their image was missing.

Runs as kmod-day1-pull.service after network-online.target. For each module set of each \
config (/etc/kmod-day1/config.d/*.json) it resolves the image for the running kernel \
(kernel mappings, or the kernel release as the tag), pulls it with the node's registry \
settings (pull secret, registries.conf mirrors, certs.d CAs, HTTPS_PROXY/NO_PROXY), checks \
every blob against its digest, extracts only <dirName>/lib/modules/<kver>/ and the firmware \
path, and commits tree and ref with fsync and rename. It also prefetches the images of the \
kernels of the other boot entries (/boot/loader/entries), so the first boot of a new kernel \
needs no extra reboot.

A reboot is asked for (systemd-logind over D-Bus, else systemd's reboot.target) only when \
nothing failed, an image for the running kernel was newly committed, the set's reboot policy \
is ifNeeded, the loader's status for this boot says the set is not loaded, and reboots.json \
in the store shows no earlier reboot for the same kernel and manifest digests.

Journal lines: 'pulling IMAGE', 'committed IMAGE', 'unchanged IMAGE', 'failed IMAGE', \
'reboot: requested|notNeeded|disabled|refusedByGuard|skippedAfterFailure'. The last run's \
result is in STORE/last-pull.json.

EXIT STATUS
  0  every image present; a reboot was asked for if one was needed
  1  a pull failed: the store is unchanged for it, no reboot
  2  bad usage or config, or an unreadable kernel command line: nothing touched
  3  a reboot was needed but the reboot-loop guard refused it (see reboots.json)

KERNEL COMMAND LINE
  kmod_day1.disable              do nothing this boot
  kmod_day1.skip=SET[,CFG/SET]   never reboot for these sets";

/// `kmod-day1-pull` flags.
#[derive(Debug, Clone, Parser)]
#[command(name = "kmod-day1-pull", version, about = "Fetch kmod images, store them atomically, reboot once when needed", long_about = LONG_ABOUT)]
pub struct Cli {
    /// Directory of config files (*.json).
    #[arg(long, value_name = "DIR", default_value = kmod_day1_contract::CONFIG_DIR)]
    pub config_dir: PathBuf,

    /// Store root.
    #[arg(long, value_name = "DIR", default_value = kmod_day1_contract::STORE_DIR)]
    pub store: PathBuf,

    /// The loader's status file for this boot.
    #[arg(long, value_name = "FILE", default_value = kmod_day1_contract::STATUS_FILE)]
    pub status: PathBuf,

    /// Present when kmod-day1-install put the binaries in place during this boot, after the
    /// loader's turn: a missing loader status then calls for the reboot that lets it run.
    #[arg(long, value_name = "FILE", default_value = kmod_day1_contract::INSTALLED_THIS_BOOT_FILE)]
    pub installed_marker: PathBuf,

    /// Prepare a store for exactly these kernels (repeat for several), on any machine: no
    /// boot entry, deployment or installed kernel is read, no ref of another kernel is
    /// pruned (earlier runs' kernels stay), never a reboot [default: the running kernel
    /// and every kernel the node can boot]
    #[arg(long, value_name = "RELEASE", conflicts_with = "at_shutdown")]
    pub kernel_release: Vec<KernelRelease>,

    /// The running kernel's release.
    #[arg(long, value_name = "FILE", default_value = kmod_day1_contract::OSRELEASE_FILE)]
    pub osrelease: PathBuf,

    /// Boot Loader Specification entries; their kernels' images are prefetched.
    #[arg(long, value_name = "DIR", default_value = crate::boot_entries::BOOT_ENTRIES_DIR)]
    pub boot_entries: PathBuf,

    /// ostree deployments; every deployment's kernel (a staged one too) is prefetched.
    #[arg(long, value_name = "DIR", default_value = crate::bootable::OSTREE_DEPLOY_DIR)]
    pub ostree_deploy_dir: PathBuf,

    /// Installed kernels (<kver>/vmlinuz); their images are prefetched.
    #[arg(long, value_name = "DIR", default_value = crate::bootable::MODULES_DIR)]
    pub modules_dir: PathBuf,

    /// The loader, whose dry run for each other bootable kernel is the upgrade preflight
    /// [default: kmod-day1-load beside this binary]
    #[arg(long, value_name = "FILE")]
    pub loader: Option<PathBuf>,

    /// The stop step at shutdown: fetch only what the kernels the node boots next lack, never
    /// reboot; does nothing unless systemd is shutting the system down.
    #[arg(long)]
    pub at_shutdown: bool,

    /// Only check, with no network and no lock, that every set of every config (config.d
    /// and the prestaged ones) is stored for the running kernel: exit 0 if so, 1 if not (the
    /// prestage agent's readiness probe).
    #[arg(long, conflicts_with = "at_shutdown")]
    pub check_stored: bool,

    /// Print the node's kmod-day1 state in the Prometheus text format (the loader's status,
    /// last-pull.json, reboots.json, the store, the upgrade preflight) and exit.
    #[arg(long, conflicts_with_all = ["at_shutdown", "check_stored", "serve_metrics"])]
    pub metrics: bool,

    /// Serve those metrics over HTTP at ADDR (e.g. 0.0.0.0:9750): GET /metrics and
    /// /healthz, read afresh for each scrape; runs until stopped (the prestage agent's pod).
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["at_shutdown", "check_stored"])]
    pub serve_metrics: Option<std::net::SocketAddr>,

    /// Test hook: with --at-shutdown, do not ask systemd whether it is shutting down.
    #[arg(long, hide = true)]
    pub assume_shutdown: bool,

    /// containers-registries.conf(5) v2 file (mirrors, insecure registries).
    #[arg(long, value_name = "FILE", default_value = crate::registries_conf::REGISTRIES_CONF)]
    pub registries_conf: PathBuf,

    /// Image trust policy (containers-policy.json(5)); checked before any blob is fetched.
    #[arg(long, value_name = "FILE", default_value = crate::policy::POLICY_JSON)]
    pub policy: PathBuf,

    /// containers-registries.d(5) directory (use-sigstore-attachments).
    #[arg(long = "registries.d", value_name = "DIR", default_value = crate::registries_d::REGISTRIES_D)]
    pub registries_d: PathBuf,

    /// Per-registry CA directories (<host[:port]>/*.crt), used with the system bundle.
    #[arg(long, value_name = "DIR", default_value = "/etc/containers/certs.d")]
    pub certs_dir: PathBuf,

    /// Never ask for a reboot (pre-staging).
    #[arg(long)]
    pub no_reboot: bool,

    /// Total time for all retries of the run, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub budget: u64,

    /// Longest silence of a registry connection before the request is retried, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub request_timeout: u64,

    /// File holding this boot's id.
    #[arg(long, value_name = "FILE", default_value = kmod_day1_contract::BOOT_ID_FILE)]
    pub boot_id: PathBuf,

    /// Kernel command line (escape hatches).
    #[arg(long, value_name = "FILE", default_value = kmod_day1_contract::CMDLINE_FILE)]
    pub cmdline: PathBuf,

    /// Largest file accepted from an image, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub max_file_mib: u64,

    /// Largest extracted tree accepted, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 4096)]
    pub max_tree_mib: u64,

    /// Test hook: write the reboot request to this file instead of calling D-Bus.
    #[arg(long, value_name = "FILE", hide = true)]
    pub reboot_marker: Option<PathBuf>,
}

impl Cli {
    /// `--budget` as a duration.
    pub fn budget(&self) -> Duration {
        Duration::from_secs(self.budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn defaults_are_production_paths() {
        Cli::command().debug_assert();
        let c = Cli::parse_from(["kmod-day1-pull"]);
        assert_eq!(c.store, PathBuf::from("/var/lib/kmod-day1"));
        assert_eq!(c.status, PathBuf::from("/run/kmod-day1/status.json"));
        assert_eq!(c.boot_entries, PathBuf::from("/boot/loader/entries"));
        assert_eq!(
            c.registries_conf,
            PathBuf::from("/etc/containers/registries.conf")
        );
        assert!(!c.no_reboot);
        assert!(c.kernel_release.is_empty());
        assert_eq!(c.osrelease, PathBuf::from("/proc/sys/kernel/osrelease"));
        let c = Cli::parse_from([
            "kmod-day1-pull",
            "--kernel-release",
            "6.1.0-27-amd64",
            "--kernel-release",
            "5.14.0-427.el9.x86_64",
        ]);
        assert_eq!(c.kernel_release.len(), 2);
        assert!(Cli::try_parse_from(["kmod-day1-pull", "--kernel-release", "../x"]).is_err());
    }

    /// A flag added without documenting it in pull/README.md fails here.
    #[test]
    fn every_flag_is_documented() {
        let readme = include_str!("../README.md");
        for arg in Cli::command().get_arguments() {
            if arg.is_hide_set() {
                continue;
            }
            if let Some(long) = arg.get_long() {
                assert!(
                    readme.contains(&format!("`--{long}`")),
                    "--{long} is not in pull/README.md"
                );
            }
        }
    }
}
