// SPDX-License-Identifier: Apache-2.0
//! `kmod-day1-load`: see `kmod-day1-load --help` and `loader/README.md`.

fn main() -> std::process::ExitCode {
    kmod_day1_load::main_exit_code()
}
