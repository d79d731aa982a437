//! Timing bounds every service shares, in one place.
//!
//! A device's services (heartbeat, discovery, election, project-sync) run in
//! one process or apart and only hear each other over the bus. They agree on
//! when one of them is *gone* — the liveness window — and on which periods
//! an operator may configure. Each rule lives here once; the services import
//! it rather than restating the number.

use std::time::Duration;

/// A device's own election service reports its state four times a second;
/// silent for this long, it is taken as gone: project-sync stops serving,
/// the heartbeat service stops claiming a role, the other services follow
/// another election service with the same device id, and a peer-lost
/// notice this old on arrival waited for the bus and is ignored.
pub const LIVENESS_WINDOW: Duration = Duration::from_secs(1);

/// The shortest heartbeat or publish interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// The longest heartbeat or publish interval accepted.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// A configured interval outside [`MIN_INTERVAL`]`..=`[`MAX_INTERVAL`]: peers
/// would clamp it (and so misjudge the sender), or a timer cannot run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is out of range {MIN_INTERVAL:?}–{MAX_INTERVAL:?}")]
pub struct IntervalError {
    /// Which setting, in words ("heartbeat interval").
    pub what: &'static str,
    /// The value refused.
    pub value: Duration,
}

/// Accepts `value` for the setting `what` if it lies in
/// [`MIN_INTERVAL`]`..=`[`MAX_INTERVAL`].
pub fn check_interval(what: &'static str, value: Duration) -> Result<Duration, IntervalError> {
    if (MIN_INTERVAL..=MAX_INTERVAL).contains(&value) {
        Ok(value)
    } else {
        Err(IntervalError { what, value })
    }
}

/// `value` clamped to [`MIN_INTERVAL`]`..=`[`MAX_INTERVAL`]: how an interval
/// a peer advertises is read, so a hostile value can neither hide the peer
/// (huge) nor make it look lost at once (zero).
pub fn clamp_interval(value: Duration) -> Duration {
    value.clamp(MIN_INTERVAL, MAX_INTERVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_outside_the_bounds_are_refused_with_their_name() {
        assert!(check_interval("heartbeat interval", Duration::from_millis(100)).is_ok());
        let err = check_interval("heartbeat interval", Duration::ZERO).unwrap_err();
        assert_eq!(
            err.to_string(),
            "heartbeat interval 0ns is out of range 10ms–60s"
        );
        assert!(check_interval("x", MAX_INTERVAL + Duration::from_millis(1)).is_err());
    }

    #[test]
    fn advertised_intervals_are_clamped() {
        assert_eq!(clamp_interval(Duration::ZERO), MIN_INTERVAL);
        assert_eq!(clamp_interval(Duration::from_secs(3_600)), MAX_INTERVAL);
    }
}
