// SPDX-License-Identifier: Apache-2.0
//! Scenario **journal priorities** (issue 8): on the multi node, whose kmod-day1 units log to
//! the journal only (as shipped, no console drop-in), `journalctl -p err` lists the errors of
//! both binaries: the loader's (the `broken` set's wrong vermagic, the `failinit` rollback)
//! and the pull's (the `unpublished` prefetch), each line an `ERROR` one, so the syslog
//! priority prefix reached journald and nothing less than an error was raised to err.

use crate::qemu::Boot;
use crate::scenarios::facts::BootFacts;
use crate::scenarios::multi_modules::{MultiNode, BROKEN_CONFIG, UNPUBLISHED_REPO};
use crate::scenarios::report::Report;

/// What `journalctl -p err` must show for one binary.
struct Expected {
    /// Syslog identifier (the binary's name).
    ident: &'static str,
    /// A line must contain this.
    needle: String,
}

/// Checks the boots after the first apply (the loader has errors only once the broken
/// images are stored).
pub fn journal_priorities(n: &MultiNode) -> Report {
    let mut r = Report::new("journal-priorities");
    let boots = &n.machine.boots;
    if boots.len() < 2 {
        r.error = Some("the node did not reach its second boot".into());
        return r;
    }
    let expected = [
        Expected {
            ident: "kmod-day1-load",
            needle: format!("{BROKEN_CONFIG}/broken"),
        },
        Expected {
            ident: "kmod-day1-pull",
            needle: UNPUBLISHED_REPO.to_owned(),
        },
    ];
    for b in boots.iter().skip(1) {
        let f = BootFacts::new(b);
        for e in &expected {
            check_errors(&mut r, &f, e);
        }
        check_not_on_console(&mut r, b);
    }
    r
}

fn check_errors(r: &mut Report, f: &BootFacts, e: &Expected) {
    let n = f.boot.number;
    let text = f.journal_errors(e.ident);
    let lines: Vec<&str> = text
        .as_deref()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let not_errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.trim_start().starts_with("ERROR"))
        .collect();
    let expected_line = lines.iter().find(|l| l.contains(&e.needle));
    r.check(
        &format!(
            "boot {n}: journalctl -p err lists {}'s errors, and only error lines",
            e.ident
        ),
        expected_line.is_some() && not_errors.is_empty(),
        match (&text, expected_line) {
            (None, _) => "no journal_err marker from the guest".to_owned(),
            (Some(_), Some(l)) if not_errors.is_empty() => {
                format!("{} line(s), e.g. {l}", lines.len())
            }
            (Some(_), Some(_)) => format!(
                "{} line(s), {} not an ERROR line, e.g. {}",
                lines.len(),
                not_errors.len(),
                not_errors[0]
            ),
            (Some(_), None) => format!(
                "{} line(s), none naming {} (the priority prefix may not have reached journald)",
                lines.len(),
                e.needle
            ),
        },
        || {
            format!(
                "journalctl -b -p err -t {}:\n{}\n--- the units' journal ---\n{}",
                e.ident,
                text.as_deref().unwrap_or("(none)"),
                f.journal()
            )
        },
    );
}

/// The node logs as shipped: the binaries' lines are in the journal, not on the console.
fn check_not_on_console(r: &mut Report, b: &Boot) {
    let on_console: Vec<&str> = b
        .serial
        .lines()
        .filter(|l| l.contains("kmod-day1-load[") || l.contains("kmod-day1-pull["))
        .collect();
    r.check(
        &format!(
            "boot {}: the units' output goes to the journal, not the console",
            b.number
        ),
        on_console.is_empty(),
        format!(
            "{} line(s) of the binaries on the console",
            on_console.len()
        ),
        || on_console.join("\n"),
    );
}
