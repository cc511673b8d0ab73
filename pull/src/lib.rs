// SPDX-License-Identifier: Apache-2.0
//! `kmod-day1-pull`: fetches kmod images after the network is up, stores what the loader
//! needs atomically, and asks for one reboot when the running kernel's modules were missing.
//! See `docs/node-contract.md` and `pull/README.md`.

mod auth;
mod boot_entries;
mod bootable;
mod cli;
mod decode;
mod durable;
mod exit;
mod extract;
mod fetch;
mod gc;
mod metrics;
mod metrics_server;
#[cfg(test)]
mod network_props;
mod plan;
mod policy;
mod progress;
mod puller;
mod reboot;
mod reboot_request;
mod registries_conf;
mod registries_d;
mod retry;
mod round;
mod run;
mod shutdown;
mod signed_identity;
mod sigstore;
mod store;
mod tree_fetch;
mod trust;
mod upgrade_preflight;
mod verify;

pub use cli::Cli;
pub use exit::Exit;
pub use run::{run, ConfigProblem};
pub use store::tree_id;

/// Seconds since the epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Parses the command line, runs, and returns the process exit code.
pub fn main_exit_code() -> i32 {
    use clap::Parser as _;
    let cli = Cli::parse();
    init_logging();
    // rustls with ring: one provider for every client in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("starting the async runtime: {e}");
            return Exit::PullFailed.code();
        }
    };
    match rt.block_on(run(&cli)) {
        Ok(exit) => exit.code(),
        Err(e) if e.is::<ConfigProblem>() || e.is::<kmod_day1_contract::ConfigError>() => {
            tracing::error!("{e:#}");
            Exit::Config.code()
        }
        Err(e) => {
            tracing::error!("{e:#}");
            Exit::PullFailed.code()
        }
    }
}

/// Logs like the loader (`kmod_day1_contract::StderrLog`): one line per event on stderr,
/// with the syslog priority under journald. Level from `KMOD_DAY1_LOG` (`error`, `warn`,
/// `info`, `debug`, `trace`; default `info`).
fn init_logging() {
    let level =
        kmod_day1_contract::StderrLog::level_from_env("KMOD_DAY1_LOG", tracing::Level::INFO);
    kmod_day1_contract::StderrLog::new(level).install();
}
