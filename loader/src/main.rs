// SPDX-License-Identifier: Apache-2.0
//! `kmod-day1-load`: see `kmod-day1-load --help` and `loader/README.md`.

use std::process::ExitCode;

use kmod_day1_contract::StderrLog;
use kmod_day1_load::cli::{parse_args, Command, HELP};
use kmod_day1_load::kernel::LinuxKernel;
use kmod_day1_load::{run, Exit};
use tracing::error;

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args_os().skip(1)) {
        Ok(Command::Run(o)) => *o,
        Ok(Command::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("kmod-day1-load {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kmod-day1-load: {e}");
            return ExitCode::from(Exit::Config.code());
        }
    };
    StderrLog::new(if opts.verbose {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    })
    .install();
    let mut kernel = LinuxKernel::new(&opts.sysfs, &opts.kmsg);
    match run(&opts, &mut kernel) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(Exit::Config.code())
        }
    }
}
