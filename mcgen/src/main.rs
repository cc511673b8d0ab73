// SPDX-License-Identifier: Apache-2.0
fn main() {
    std::process::exit(mcgen::run(std::env::args_os()));
}
