// SPDX-License-Identifier: Apache-2.0
//! `kmod-day1-pull`: fetches kmod images after the network is up, stores what the loader
//! needs atomically, and asks for one reboot when the running kernel's modules were missing.
//! See `docs/node-contract.md` and `pull/README.md`.

pub mod auth;
pub mod boot_entries;
pub mod cli;
pub mod extract;
pub mod fetch;
pub mod layer_stream;
pub mod progress;
pub mod pull;
pub mod reboot;
pub mod registries_conf;
pub mod retry;
pub mod store;
pub mod verify;

pub use cli::Cli;
pub use pull::{run, ConfigProblem, Exit};

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
            return Exit::PullFailed as i32;
        }
    };
    match rt.block_on(run(&cli)) {
        Ok(exit) => exit as i32,
        Err(e) if e.is::<ConfigProblem>() || e.is::<kmod_day1_contract::ConfigError>() => {
            tracing::error!("{e:#}");
            Exit::Config as i32
        }
        Err(e) => {
            tracing::error!("{e:#}");
            Exit::PullFailed as i32
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
