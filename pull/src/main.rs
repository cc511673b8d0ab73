// SPDX-License-Identifier: Apache-2.0
//! `kmod-day1-pull`: see `kmod-day1-pull --help` and `pull/README.md`.
fn main() {
    std::process::exit(kmod_day1_pull::main_exit_code());
}
