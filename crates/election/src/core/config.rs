//! Election timing. Every default is documented here and in the README.

use std::time::Duration;

/// The timing rules of the election (B5, B6) and of the lease (S1).
#[derive(Debug, Clone, PartialEq)]
pub struct ElectionConfig {
    /// Start-up grace (B6): after starting or going online, a device does not
    /// claim the server for this long unless it sees a server first. Default 2 s.
    pub grace_period: Duration,
    /// How long a better candidate must be live before it preempts the server
    /// (B5). Default 0.
    pub preempt_delay: Duration,
    /// How long a lease lasts without renewal; the store drops it after this.
    /// Default 1.5 s.
    pub lease_duration: Duration,
    /// How often the server renews its lease. Default 250 ms.
    pub renew_interval: Duration,
    /// The largest clock-rate error assumed, as a fraction: the server stops
    /// acting `lease_duration × max_clock_drift` before its lease could expire
    /// at the store. Default 0.05 (5 %).
    pub max_clock_drift: f64,
    /// A store call unanswered for this long is treated as failed with an
    /// unknown outcome. Default 500 ms.
    pub store_timeout: Duration,
    /// A hand-over that names a successor who has not claimed within this time
    /// is ignored and the group elects normally. Default 1 s.
    pub handover_timeout: Duration,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            grace_period: Duration::from_secs(2),
            preempt_delay: Duration::ZERO,
            lease_duration: Duration::from_millis(1500),
            renew_interval: Duration::from_millis(250),
            max_clock_drift: 0.05,
            store_timeout: Duration::from_millis(500),
            handover_timeout: Duration::from_secs(1),
        }
    }
}

impl ElectionConfig {
    /// How long after sending a successful renewal the server may act: the
    /// lease duration shortened by the clock-drift allowance.
    pub fn local_validity(&self) -> Duration {
        self.lease_duration
            .mul_f64((1.0 - self.max_clock_drift).clamp(0.0, 1.0))
    }
}
