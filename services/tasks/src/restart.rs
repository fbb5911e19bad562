//! Restart policies: whether and when a container whose task exited is run again.
//!
//! Policies are Docker's: `no`, `on-failure[:max]` (non-zero exits only, at most `max`
//! consecutive restarts), `always`, `unless-stopped`. A container the user stopped is not
//! restarted by any policy until the user starts it again. Restarts back off exponentially:
//! 100 ms doubling up to 1 min; a task that ran for 10 s resets the count.

use std::time::Duration;

use berth_api::berth::containers::v1::{RestartPolicy, RestartPolicyName};

/// First delay.
const BASE: Duration = Duration::from_millis(100);
/// Longest delay.
const CAP: Duration = Duration::from_secs(60);
/// A task that ran this long resets the backoff and the retry count.
pub const RESET_AFTER: Duration = Duration::from_secs(10);

/// What a policy says about one exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Leave the container stopped.
    Stay,
    /// Restart after this delay; `count` is the new consecutive restart count.
    Restart {
        /// Delay before the restart.
        delay: Duration,
        /// Consecutive restarts including this one.
        count: u32,
    },
}

/// Applies `policy` to an exit with `exit_code` after a run of `ran`, given `count` restarts so
/// far and whether the user stopped the container.
pub fn decide(
    policy: Option<&RestartPolicy>,
    exit_code: u32,
    ran: Duration,
    count: u32,
    stopped_by_user: bool,
) -> Decision {
    let Some(policy) = policy else {
        return Decision::Stay;
    };
    if stopped_by_user {
        return Decision::Stay;
    }
    let count = if ran >= RESET_AFTER { 0 } else { count };
    let restart = match policy.name() {
        RestartPolicyName::Unspecified | RestartPolicyName::No => false,
        RestartPolicyName::Always | RestartPolicyName::UnlessStopped => true,
        RestartPolicyName::OnFailure => {
            exit_code != 0 && (policy.max_retries == 0 || count < policy.max_retries)
        }
    };
    if !restart {
        return Decision::Stay;
    }
    let delay = BASE
        .checked_mul(1u32 << count.min(20))
        .unwrap_or(CAP)
        .min(CAP);
    Decision::Restart {
        delay,
        count: count + 1,
    }
}

/// True if the policy brings the container back when the service starts (its task is gone
/// and the user did not stop it).
pub fn restarts_on_boot(policy: Option<&RestartPolicy>) -> bool {
    policy.is_some_and(|p| {
        matches!(
            p.name(),
            RestartPolicyName::Always | RestartPolicyName::UnlessStopped
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: RestartPolicyName, max: u32) -> RestartPolicy {
        RestartPolicy {
            name: name as i32,
            max_retries: max,
        }
    }

    #[test]
    fn policies() {
        let short = Duration::from_millis(50);
        let always = policy(RestartPolicyName::Always, 0);
        assert_eq!(decide(None, 1, short, 0, false), Decision::Stay);
        assert_eq!(
            decide(Some(&policy(RestartPolicyName::No, 0)), 1, short, 0, false),
            Decision::Stay
        );
        assert_eq!(
            decide(Some(&always), 0, short, 0, false),
            Decision::Restart {
                delay: BASE,
                count: 1
            }
        );
        assert_eq!(decide(Some(&always), 0, short, 0, true), Decision::Stay);
        let on_failure = policy(RestartPolicyName::OnFailure, 2);
        assert_eq!(
            decide(Some(&on_failure), 0, short, 0, false),
            Decision::Stay
        );
        assert!(matches!(
            decide(Some(&on_failure), 3, short, 1, false),
            Decision::Restart { count: 2, .. }
        ));
        assert_eq!(
            decide(Some(&on_failure), 3, short, 2, false),
            Decision::Stay
        );
        // A long run resets the count.
        assert!(matches!(
            decide(Some(&on_failure), 3, RESET_AFTER, 2, false),
            Decision::Restart { count: 1, .. }
        ));
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let always = policy(RestartPolicyName::UnlessStopped, 0);
        let delay = |count| match decide(Some(&always), 1, Duration::ZERO, count, false) {
            Decision::Restart { delay, .. } => delay,
            Decision::Stay => panic!("must restart"),
        };
        assert_eq!(delay(0), Duration::from_millis(100));
        assert_eq!(delay(1), Duration::from_millis(200));
        assert_eq!(delay(3), Duration::from_millis(800));
        assert_eq!(delay(10), CAP);
        assert_eq!(delay(40), CAP);
    }
}
