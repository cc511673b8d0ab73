// SPDX-License-Identifier: Apache-2.0
//! `mcgen`: see `mcgen --help` and `docs/mcgen.md`.
fn main() {
    std::process::exit(mcgen::run(std::env::args_os()));
}
