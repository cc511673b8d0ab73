// SPDX-License-Identifier: Apache-2.0
//! A minimal `tracing` subscriber: one line per event on stderr, `LEVEL message`, no
//! timestamps (journald adds them). Under systemd (`JOURNAL_STREAM` set) each line also
//! starts with the syslog priority (`<6>`), so the journal records errors as errors.
//!
//! Both node binaries log through it, so their lines look alike and `journalctl -p err`
//! finds the errors of both. Written here rather than taken from `tracing-subscriber`: the
//! binaries have no spans and one output, and the fmt layer's machinery (and the regex
//! engine its env filter brings) is dead weight on the boot path.

use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Logs events at `max` and above to stderr.
#[derive(Debug)]
pub struct StderrLog {
    max: Level,
    syslog_prefix: bool,
}

impl StderrLog {
    /// A logger for `max` and above.
    pub fn new(max: Level) -> Self {
        Self {
            max,
            syslog_prefix: std::env::var_os("JOURNAL_STREAM").is_some(),
        }
    }

    /// The level named by the environment variable `var` (`error`, `warn`, `info`, `debug`,
    /// `trace`, any case), or `default` when it is unset or names no level. A level, not a
    /// filter expression.
    pub fn level_from_env(var: &str, default: Level) -> Level {
        std::env::var(var)
            .ok()
            .and_then(|v| v.trim().parse::<Level>().ok())
            .unwrap_or(default)
    }

    /// Installs it as the global subscriber.
    pub fn install(self) {
        // Only fails when one is installed already: keep that one.
        let _ = tracing::subscriber::set_global_default(self);
    }

    /// The line for `event`, newline-terminated.
    pub fn format(&self, event: &Event<'_>) -> String {
        let level = *event.metadata().level();
        let mut line = String::with_capacity(128);
        if self.syslog_prefix {
            let prio = match level {
                Level::ERROR => 3,
                Level::WARN => 4,
                Level::INFO => 6,
                _ => 7,
            };
            let _ = write!(line, "<{prio}>");
        }
        let _ = write!(line, "{level:>5} ");
        event.record(&mut LineVisitor(&mut line));
        line.push('\n');
        line
    }
}

struct LineVisitor<'a>(&'a mut String);

impl Visit for LineVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for StderrLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        // One write per line: lines from concurrent writers never interleave.
        let _ = std::io::stderr()
            .lock()
            .write_all(self.format(event).as_bytes());
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Captures formatted lines.
    struct Capture(StderrLog, Arc<Mutex<Vec<String>>>);

    impl Subscriber for Capture {
        fn enabled(&self, m: &Metadata<'_>) -> bool {
            self.0.enabled(m)
        }
        fn new_span(&self, a: &Attributes<'_>) -> Id {
            self.0.new_span(a)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, e: &Event<'_>) {
            self.1.lock().unwrap().push(self.0.format(e));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn formats_lines_with_levels_and_fields() {
        let lines = Arc::new(Mutex::new(vec![]));
        let log = StderrLog {
            max: Level::INFO,
            syslog_prefix: false,
        };
        tracing::subscriber::with_default(Capture(log, lines.clone()), || {
            tracing::info!("loaded {} in {} ms", "ice", 3);
            tracing::warn!(module = "ice", "odd");
            tracing::debug!("hidden");
        });
        assert_eq!(
            *lines.lock().unwrap(),
            [" INFO loaded ice in 3 ms\n", " WARN odd module=ice\n"]
        );

        let lines = Arc::new(Mutex::new(vec![]));
        let log = StderrLog {
            max: Level::DEBUG,
            syslog_prefix: true,
        };
        tracing::subscriber::with_default(Capture(log, lines.clone()), || {
            tracing::error!("bad");
            tracing::debug!("shown");
        });
        assert_eq!(
            *lines.lock().unwrap(),
            ["<3>ERROR bad\n", "<7>DEBUG shown\n"]
        );
    }

    #[test]
    fn level_from_env_reads_a_level_or_keeps_the_default() {
        let var = "KMOD_DAY1_TEST_LEVEL_FROM_ENV";
        assert_eq!(StderrLog::level_from_env(var, Level::INFO), Level::INFO);
        std::env::set_var(var, " debug\n");
        assert_eq!(StderrLog::level_from_env(var, Level::INFO), Level::DEBUG);
        std::env::set_var(var, "pull=debug");
        assert_eq!(StderrLog::level_from_env(var, Level::WARN), Level::WARN);
        std::env::remove_var(var);
    }
}
