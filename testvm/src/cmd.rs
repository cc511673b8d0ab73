// SPDX-License-Identifier: Apache-2.0
//! Running host commands with errors that say which command failed and how.

use std::process::{Command, Output, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tracing::debug;

/// How many trailing bytes of a failed command's output go into the error.
const TAIL: usize = 3000;

/// The command line as a person would type it.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The last `TAIL` bytes of `bytes`, as text.
pub fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(TAIL);
    String::from_utf8_lossy(&bytes[start..])
        .trim_end()
        .to_owned()
}

/// Runs `cmd` to completion, capturing its output; a non-zero exit is an error holding the
/// command line and the tail of its stderr (and stdout, which some tools use for errors).
pub fn run(cmd: &mut Command) -> Result<Output> {
    let line = describe(cmd);
    debug!("running {line}");
    let started = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().with_context(|| {
        format!("starting `{line}` (is it installed? try hack/install-deps vm)")
    })?;
    debug!("`{line}` took {} ms", started.elapsed().as_millis());
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}):\n--- stderr tail ---\n{}\n--- stdout tail ---\n{}",
            out.status,
            tail(&out.stderr),
            tail(&out.stdout)
        );
    }
    Ok(out)
}

/// Runs `cmd` and returns its trimmed stdout.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `sh -c script`, for the few steps that are pipelines.
pub fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-ec").arg(script);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_command_and_its_stderr() {
        let e = run(&mut sh("echo boom >&2; exit 3"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sh -ec echo boom"), "{e}");
        assert!(e.contains("boom"), "{e}");
        assert!(e.contains("exit status: 3"), "{e}");
        let e = run(&mut Command::new("/nonexistent/tool")).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/tool"));
        assert_eq!(stdout(&mut sh("echo ' hi '")).unwrap(), "hi");
    }
}
