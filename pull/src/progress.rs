// SPDX-License-Identifier: Apache-2.0
//! Download progress: a line rewritten in place on a terminal, a byte count every few
//! seconds in the journal otherwise.

use std::io::Write as _;
use std::time::{Duration, Instant};

use tracing::info;

/// How often the journal gets a line.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// How often the terminal line is redrawn.
const DRAW_EVERY: Duration = Duration::from_millis(100);

/// Progress of one download.
pub struct Progress {
    tty: bool,
    label: String,
    total: u64,
    done: u64,
    last: Instant,
}

impl Progress {
    /// Starts reporting a download of `total` bytes.
    pub fn new(label: String, total: u64, tty: bool) -> Self {
        Self {
            tty,
            label,
            total,
            done: 0,
            last: Instant::now(),
        }
    }

    /// Restarts from `done` bytes (after a retry).
    pub fn set(&mut self, done: u64) {
        self.done = done;
    }

    /// Counts `n` more bytes.
    pub fn add(&mut self, n: u64) {
        self.done += n;
        let every = if self.tty { DRAW_EVERY } else { LOG_EVERY };
        if self.last.elapsed() >= every {
            self.last = Instant::now();
            self.report();
        }
    }

    fn report(&self) {
        let pct = (self.done * 100).checked_div(self.total).unwrap_or(100);
        if self.tty {
            let mut e = std::io::stderr().lock();
            let _ = write!(
                e,
                "\r{} {:.1}/{:.1} MiB {pct:>3}% ",
                self.label,
                self.done as f64 / 1048576.0,
                self.total as f64 / 1048576.0
            );
            let _ = e.flush();
        } else {
            info!(
                blob = self.label,
                bytes = self.done,
                total = self.total,
                "downloading, {pct}%"
            );
        }
    }

    /// Ends the terminal line.
    pub fn finish(&self) {
        if self.tty {
            self.report();
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// Formats a byte count for people.
pub fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / 1048576.0)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_formats() {
        let mut p = Progress::new("x".into(), 10, false);
        p.add(4);
        p.add(6);
        assert_eq!(p.done, 10);
        p.set(3);
        assert_eq!(p.done, 3);
        p.finish();
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
