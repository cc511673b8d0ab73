// SPDX-License-Identifier: Apache-2.0
fn main() {
    std::process::exit(kmod_day1_pull::main_exit_code());
}
