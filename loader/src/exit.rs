// SPDX-License-Identifier: Apache-2.0
//! The loader's exit status. The variants are declared least severe first, so the derived
//! order is the severity order and the worst of several outcomes is their `max`; the
//! documented numbers (`--help`, `docs/node-contract.md`) are a separate mapping, [`Exit::code`],
//! because severity (3 > 1 > 2 > 0) is not numeric order.

/// How a run ended, least severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    /// Every set loaded, or nothing to do yet: not stored, no image, skipped, disabled
    /// (code 0).
    Ok,
    /// Bad usage or config, or an unreadable kernel command line; nothing was touched for
    /// it (code 2).
    Config,
    /// A set failed and was rolled back, or failed preflight and nothing was touched: the
    /// in-tree modules are loaded (code 1).
    Failed,
    /// A rollback failed: an in-tree module could not be loaded back (code 3).
    RollbackFailed,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Failed => 1,
            Self::Config => 2,
            Self::RollbackFailed => 3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_is_the_max_and_codes_are_the_documented_ones() {
        assert_eq!(Exit::Ok.max(Exit::Config), Exit::Config);
        assert_eq!(Exit::Config.max(Exit::Failed), Exit::Failed);
        assert_eq!(Exit::RollbackFailed.max(Exit::Failed), Exit::RollbackFailed);
        assert_eq!(Exit::Failed.max(Exit::Ok), Exit::Failed);
        let all = [Exit::Ok, Exit::Config, Exit::Failed, Exit::RollbackFailed];
        assert_eq!(all.iter().max(), Some(&Exit::RollbackFailed));
        assert_eq!(all.map(Exit::code), [0, 2, 1, 3]);
    }
}
