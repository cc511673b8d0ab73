// SPDX-License-Identifier: Apache-2.0
//! The exit status of a run (`docs/node-contract.md`), ordered by severity so that the
//! worst of several outcomes is their `max`.

/// Exit status of a run, least severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    /// Every image present; a reboot asked for if one was needed (code 0).
    Ok,
    /// Bad usage or config, or a node fact that cannot be read: nothing was touched for it
    /// (code 2).
    Config,
    /// A pull failed, or asking for a reboot failed (code 1).
    PullFailed,
    /// The reboot-loop guard refused a needed reboot (code 3).
    GuardRefused,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> i32 {
        match self {
            Self::Ok => 0,
            Self::PullFailed => 1,
            Self::Config => 2,
            Self::GuardRefused => 3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_is_the_max_and_codes_are_the_documented_ones() {
        assert_eq!(Exit::Config.max(Exit::PullFailed), Exit::PullFailed);
        assert_eq!(Exit::GuardRefused.max(Exit::PullFailed), Exit::GuardRefused);
        assert_eq!(Exit::Ok.max(Exit::Config), Exit::Config);
        let codes: Vec<i32> = [Exit::Ok, Exit::PullFailed, Exit::Config, Exit::GuardRefused]
            .map(Exit::code)
            .into();
        assert_eq!(codes, [0, 1, 2, 3]);
    }
}
