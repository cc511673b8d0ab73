// SPDX-License-Identifier: Apache-2.0
//! The reboot decision and the reboot-loop guard (pure: `reboot_request` carries it out).
//!
//! A reboot is asked for only when all of these hold:
//! - nothing failed in this run (a failure never reboots a node);
//! - a module set of the running kernel with policy `ifNeeded`, not skipped on the kernel
//!   command line, had its image committed by this run;
//! - the loader's status for this boot (same boot id and kernel) says that set is not
//!   `loaded` (a missing status means the loader did not run: no reboot, unless
//!   kmod-day1-install put the binaries in place during this boot, after the loader's turn:
//!   then nothing is loaded and the reboot lets the loader run, as on a first apply through
//!   MCO without a prestage);
//! - `reboots.json` holds no earlier reboot for the same kernel and manifest digests.
//!
//! The guard record is written durably before the reboot is asked for, so a node that
//! reboots and still cannot load the modules is never rebooted again for the same content.

use std::collections::BTreeSet;

use kmod_day1_contract::{
    BootStatus, EscapeHatches, RebootGuard, RebootPolicy, RebootRecord, SetState, STORE_VERSION,
};

/// Most guard records kept (oldest dropped).
pub const GUARD_KEEP: usize = 64;

/// A module set of the running kernel, as this run left it.
#[derive(Debug, Clone)]
pub struct SetOutcome {
    /// Config name.
    pub config: String,
    /// Set name.
    pub set: String,
    /// Its reboot policy.
    pub policy: RebootPolicy,
    /// Manifest digest now stored.
    pub manifest_digest: String,
    /// Whether this run committed it (new content).
    pub committed_now: bool,
}

/// What to do about a reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebootDecision {
    /// Nothing calls for one; the reason says why.
    NotNeeded(String),
    /// Something failed in this run, or this boot's id is unknown; the reason says which.
    SkippedAfterFailure(String),
    /// One is needed, but `--no-reboot` was given.
    Disabled,
    /// One is needed, but was already asked for the same content.
    RefusedByGuard(RebootRecord),
    /// Ask for one, recording this.
    Request(RebootRecord),
}

impl RebootDecision {
    /// The `reboot` value of `last-pull.json`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotNeeded(_) => "notNeeded",
            Self::SkippedAfterFailure(_) => "skippedAfterFailure",
            Self::Disabled => "disabled",
            Self::RefusedByGuard(_) => "refusedByGuard",
            Self::Request(_) => "requested",
        }
    }
}

/// What the decision is made from.
pub struct RebootInputs<'a> {
    /// Running kernel.
    pub kernel: &'a str,
    /// This boot's id; `None` when it could not be read.
    pub boot_id: Option<&'a str>,
    /// The loader's status file, if any.
    pub status: Option<&'a BootStatus>,
    /// The loader's binary was installed during this boot, after its turn.
    pub loader_installed_this_boot: bool,
    /// The running kernel's module sets.
    pub sets: &'a [SetOutcome],
    /// Whether anything failed in this run.
    pub failed: bool,
    /// `--no-reboot`.
    pub no_reboot: bool,
    /// Kernel command line escape hatches.
    pub hatches: &'a EscapeHatches,
    /// `reboots.json`.
    pub guard: &'a RebootGuard,
    /// Seconds since the epoch.
    pub now: u64,
}

/// Decides whether to ask for a reboot (the rules are in this module's doc).
pub fn decide(i: &RebootInputs<'_>) -> RebootDecision {
    if i.failed {
        return RebootDecision::SkippedAfterFailure("a pull for the running kernel failed".into());
    }
    let committed: Vec<&SetOutcome> = i.sets.iter().filter(|s| s.committed_now).collect();
    if committed.is_empty() {
        return RebootDecision::NotNeeded(
            "no image of the running kernel was newly committed".into(),
        );
    }
    let Some(boot_id) = i.boot_id else {
        return RebootDecision::SkippedAfterFailure(
            "this boot's id cannot be read, so the loader's status cannot be matched to this boot"
                .into(),
        );
    };
    let status = match i.status {
        Some(s) if s.boot_id == boot_id && s.kernel_release == i.kernel => Some(s),
        // Installed after the loader's turn: it could not run, so nothing is loaded.
        _ if i.loader_installed_this_boot => None,
        Some(_) => {
            return RebootDecision::NotNeeded(
                "the loader's status is from another boot: the loader did not run this boot".into(),
            )
        }
        None => {
            return RebootDecision::NotNeeded(
                "no loader status for this boot: the loader did not run".into(),
            )
        }
    };
    let mut digests = BTreeSet::new();
    let mut why_not = vec![];
    for s in committed {
        let state = match status {
            Some(st) => st
                .sets
                .iter()
                .find(|x| x.config == s.config && x.set == s.set)
                .map(|x| x.state),
            None => Some(SetState::NotStored),
        };
        let name = format!("{}/{}", s.config, s.set);
        match state {
            _ if i.hatches.skips(&s.config, &s.set) => {
                why_not.push(format!("{name} is skipped on the kernel command line"))
            }
            Some(SetState::Loaded) => why_not.push(format!("{name} is already loaded")),
            Some(SetState::Skipped) => why_not.push(format!("{name} was skipped by the loader")),
            None => why_not.push(format!(
                "{name} is not in the loader's status (config added after boot?)"
            )),
            Some(_) if s.policy == RebootPolicy::Never => {
                why_not.push(format!("{name} has reboot policy never"))
            }
            Some(_) => {
                digests.insert(s.manifest_digest.clone());
            }
        }
    }
    if digests.is_empty() {
        return RebootDecision::NotNeeded(why_not.join("; "));
    }
    if i.no_reboot {
        return RebootDecision::Disabled;
    }
    let manifest_digests: Vec<String> = digests.into_iter().collect();
    if let Some(r) = i
        .guard
        .reboots
        .iter()
        .find(|r| r.kernel_release == i.kernel && r.manifest_digests == manifest_digests)
    {
        return RebootDecision::RefusedByGuard(r.clone());
    }
    RebootDecision::Request(RebootRecord {
        kernel_release: i.kernel.to_owned(),
        manifest_digests,
        boot_id: boot_id.to_owned(),
        at: i.now,
    })
}

/// The guard with `rec` added (and the oldest records dropped).
pub fn guard_with(mut guard: RebootGuard, rec: RebootRecord) -> RebootGuard {
    guard.version = STORE_VERSION;
    guard.reboots.push(rec);
    let excess = guard.reboots.len().saturating_sub(GUARD_KEEP);
    guard.reboots.drain(..excess);
    guard
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmod_day1_contract::{SetStatus, STATUS_VERSION};

    fn status(state: SetState) -> BootStatus {
        BootStatus {
            version: STATUS_VERSION,
            kernel_release: "6.1".into(),
            boot_id: "b1".into(),
            sets: vec![SetStatus::new("c", "s", state)],
            errors: vec![],
            total_us: 0,
            preflight: None,
        }
    }

    fn set(committed_now: bool, policy: RebootPolicy) -> SetOutcome {
        SetOutcome {
            config: "c".into(),
            set: "s".into(),
            policy,
            manifest_digest: "sha256:d1".into(),
            committed_now,
        }
    }

    fn run(
        status: Option<&BootStatus>,
        sets: &[SetOutcome],
        failed: bool,
        guard: &RebootGuard,
        hatches: &str,
    ) -> RebootDecision {
        decide(&RebootInputs {
            kernel: "6.1",
            boot_id: Some("b1"),
            status,
            loader_installed_this_boot: false,
            sets,
            failed,
            no_reboot: false,
            hatches: &EscapeHatches::parse(hatches),
            guard,
            now: 7,
        })
    }

    #[test]
    fn reboots_once_for_new_content_not_loaded() {
        let g = RebootGuard::default();
        let st = status(SetState::NotStored);
        let sets = [set(true, RebootPolicy::IfNeeded)];
        let RebootDecision::Request(rec) = run(Some(&st), &sets, false, &g, "") else {
            panic!("expected a reboot request")
        };
        assert_eq!(rec.manifest_digests, ["sha256:d1"]);
        let g = guard_with(g, rec.clone());
        // Same kernel and content again (say the next boot failed to load it): refused.
        assert_eq!(
            run(Some(&st), &sets, false, &g, ""),
            RebootDecision::RefusedByGuard(rec)
        );
        // New content for the same kernel: allowed once more.
        let mut sets2 = sets.clone();
        sets2[0].manifest_digest = "sha256:d2".into();
        assert!(matches!(
            run(Some(&st), &sets2, false, &g, ""),
            RebootDecision::Request(_)
        ));
    }

    #[test]
    fn no_reboot_cases() {
        let g = RebootGuard::default();
        let st = status(SetState::NotStored);
        let new = [set(true, RebootPolicy::IfNeeded)];
        assert!(matches!(
            run(Some(&st), &new, true, &g, ""),
            RebootDecision::SkippedAfterFailure(_)
        ));
        assert!(matches!(
            run(
                Some(&st),
                &[set(false, RebootPolicy::IfNeeded)],
                false,
                &g,
                ""
            ),
            RebootDecision::NotNeeded(_)
        ));
        assert!(
            matches!(run(Some(&st), &[set(true, RebootPolicy::Never)], false, &g, ""), RebootDecision::NotNeeded(r) if r.contains("never"))
        );
        assert!(
            matches!(run(Some(&status(SetState::Loaded)), &new, false, &g, ""), RebootDecision::NotNeeded(r) if r.contains("loaded"))
        );
        assert!(matches!(
            run(None, &new, false, &g, ""),
            RebootDecision::NotNeeded(_)
        ));
        let mut other_boot = st.clone();
        other_boot.boot_id = "b0".into();
        assert!(
            matches!(run(Some(&other_boot), &new, false, &g, ""), RebootDecision::NotNeeded(r) if r.contains("another boot"))
        );
        assert!(
            matches!(run(Some(&st), &new, false, &g, "kmod_day1.skip=s"), RebootDecision::NotNeeded(r) if r.contains("command line"))
        );
        let d = decide(&RebootInputs {
            kernel: "6.1",
            boot_id: Some("b1"),
            status: Some(&st),
            loader_installed_this_boot: false,
            sets: &new,
            failed: false,
            no_reboot: true,
            hatches: &EscapeHatches::default(),
            guard: &g,
            now: 0,
        });
        assert_eq!(d, RebootDecision::Disabled);
    }

    #[test]
    fn binaries_installed_this_boot_reboot_once_without_a_status() {
        let g = RebootGuard::default();
        let new = [set(true, RebootPolicy::IfNeeded)];
        let with =
            |status: Option<&BootStatus>, sets: &[SetOutcome], hatches: &str, g: &RebootGuard| {
                decide(&RebootInputs {
                    kernel: "6.1",
                    boot_id: Some("b1"),
                    status,
                    loader_installed_this_boot: true,
                    sets,
                    failed: false,
                    no_reboot: false,
                    hatches: &EscapeHatches::parse(hatches),
                    guard: g,
                    now: 7,
                })
            };
        // No status (the loader's unit skipped its missing binary), or last boot's: reboot.
        let RebootDecision::Request(rec) = with(None, &new, "", &g) else {
            panic!("expected a reboot request")
        };
        let mut old = status(SetState::Loaded);
        old.boot_id = "b0".into();
        assert!(matches!(
            with(Some(&old), &new, "", &g),
            RebootDecision::Request(_)
        ));
        // Still guarded, and still not for a set skipped, nothing new, or policy never.
        let g = guard_with(g, rec.clone());
        assert_eq!(
            with(None, &new, "", &g),
            RebootDecision::RefusedByGuard(rec)
        );
        let g = RebootGuard::default();
        assert!(matches!(
            with(None, &new, "kmod_day1.skip=s", &g),
            RebootDecision::NotNeeded(_)
        ));
        assert!(matches!(
            with(None, &[set(false, RebootPolicy::IfNeeded)], "", &g),
            RebootDecision::NotNeeded(_)
        ));
        assert!(matches!(
            with(None, &[set(true, RebootPolicy::Never)], "", &g),
            RebootDecision::NotNeeded(_)
        ));
        // This boot's own status still decides when there is one.
        assert!(matches!(
            with(Some(&status(SetState::Loaded)), &new, "", &g),
            RebootDecision::NotNeeded(_)
        ));
    }

    #[test]
    fn guard_is_bounded() {
        let mut g = RebootGuard::default();
        for i in 0..(GUARD_KEEP as u64 + 5) {
            g = guard_with(
                g,
                RebootRecord {
                    kernel_release: "k".into(),
                    manifest_digests: vec![],
                    boot_id: String::new(),
                    at: i,
                },
            );
        }
        assert_eq!(g.reboots.len(), GUARD_KEEP);
        assert_eq!(g.reboots[0].at, 5);
    }
}
