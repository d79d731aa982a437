//! The driver skeleton shared by the NATS drivers: plumbing only, nothing
//! here decides anything.
//!
//! Every service driver (heartbeat, discovery, election, project-sync) has
//! the same shape: check its configured intervals, subscribe, then loop on a
//! biased `select!` — the shutdown first, then timers and messages, each fed
//! to the service's pure core — and publish what the core asks for. The
//! pieces of that shape live here, so that a driver is only its own wiring:
//!
//! | piece | what it does |
//! |-------|--------------|
//! | `understudy_protocol::timing::check_interval` | refuses an interval outside 10 ms–60 s at start, with a typed `IntervalError` |
//! | [`Inbox`] | a subscription decoding one message type; a bad message is logged at debug level and dropped; it never ends the loop |
//! | [`Subscription`] | the same for raw messages (requests whose payload is not a bus message) |
//! | [`ElectionFeed`] | this device's election state, only from the one election service followed ([`follow`]), and whether that service is still live (`protocol::timing::LIVENESS_WINDOW`) |
//! | [`stopped`] | the shutdown wait |
//! | [`flush`] | the last words at shutdown (a goodbye, a final state), waited for at most [`FLUSH_TIMEOUT`] |
//! | [`ticker`] | a timer that does not burst after a late tick |
//! | [`publish`] | a publish that never blocks the loop nor fails it: a failure is logged and dropped (the bus may be down) |
//! | [`connected`] | whether the client holds a connection now |
//!
//! Only starting can fail — a subscription refused ([`SubscribeError`],
//! naming the subject) or an interval out of range — with a [`StartError`];
//! every later bus failure is ridden out.
//!
//! # Example
//!
//! A driver that follows its device's election service and counts the
//! group's heartbeats, until told to stop:
//!
//! ```no_run
//! use std::time::Duration;
//! use tokio::sync::watch;
//! use understudy_bus::{ElectionFeed, Inbox, StartError, stopped, ticker};
//! use understudy_protocol::messages::Heartbeat;
//! use understudy_protocol::timing::check_interval;
//! use understudy_protocol::{DeviceId, GroupName, subjects};
//!
//! async fn run(
//!     client: async_nats::Client,
//!     group: GroupName,
//!     device: DeviceId,
//!     period: Duration,
//!     mut shutdown: watch::Receiver<bool>,
//! ) -> Result<u64, StartError> {
//!     let period = check_interval("report interval", period)?;
//!     let mut election = ElectionFeed::subscribe(&client, &group, &device, None).await?;
//!     let mut beats: Inbox<Heartbeat> = Inbox::subscribe(&client, subjects::heartbeats(&group)).await?;
//!     let mut tick = ticker(period);
//!     let mut seen = 0;
//!     loop {
//!         tokio::select! {
//!             biased;
//!             () = stopped(&mut shutdown) => break,
//!             _ = tick.tick() => { /* poll the core */ }
//!             state = election.next() => { /* feed the core this device's state */ let _ = state; }
//!             beat = beats.next() => { seen += 1; let _ = beat; }
//!         }
//!     }
//!     Ok(seen)
//! }
//! ```

pub mod accounts;
pub mod beats;
pub mod connect;
pub mod feed;
pub mod follow;
pub mod inbox;
pub mod ledger;
pub mod why;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::connection::State;
use async_nats::{Client, Message};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::debug;
use understudy_protocol::messages::{self, BusMessage};

pub use beats::{Beats, SharedBeats};
pub use connect::{ConnectFailed, NatsAuthArgs, NatsSettings, Refused, SettingsError, refusal};
pub use feed::ElectionFeed;
pub use follow::{ElectionFollower, Followed, LocalElection};
pub use inbox::{Inbox, Request, SubscribeError, Subscription};

/// Why a bus service could not start: the only failures a driver returns
/// (every later bus failure is ridden out).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A subscription could not be made (the client is closed or the
    /// subject was refused).
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// A configured interval is out of range.
    #[error(transparent)]
    Interval(#[from] understudy_protocol::timing::IntervalError),
}

/// The longest a publish may wait to be queued. The client's queue fills up
/// only when the bus has been down for a long time; the loop must not stall
/// behind it.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_millis(50);

/// Publishes `message`, encoded as a bus message, on `subject`; a failure is
/// logged, never returned (the bus may be down: the next tick tries again).
pub async fn publish<M: BusMessage>(client: &Client, subject: String, message: &M) {
    publish_bytes(client, subject, messages::encode(message)).await;
}

/// Publishes `payload` as is on `subject`, waiting at most
/// [`PUBLISH_TIMEOUT`] for it to be queued. A failure or a full queue is
/// logged at debug level, never returned.
pub async fn publish_bytes(client: &Client, subject: String, payload: Vec<u8>) {
    match tokio::time::timeout(
        PUBLISH_TIMEOUT,
        client.publish(subject.clone(), payload.into()),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%subject, error = %e, "publish failed"),
        Err(_) => debug!(%subject, "publish dropped: the client's queue is full"),
    }
}

/// The longest a stopping service waits for its last messages to reach the
/// server.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Waits at most [`FLUSH_TIMEOUT`] for everything published so far to reach
/// the server: a stopping service's last words. A failure or a timeout (the
/// bus is down) is logged at debug level, never returned.
pub async fn flush(client: &Client) {
    match tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "flush at shutdown failed"),
        Err(_) => debug!("flush at shutdown timed out"),
    }
}

/// Decodes a bus message; a bad one is logged at debug level and dropped.
pub fn decoded<M: BusMessage>(msg: &Message) -> Option<M> {
    messages::decode(&msg.payload)
        .inspect_err(|e| {
            understudy_telemetry::metrics().bad_message(M::KIND);
            debug!(subject = %msg.subject, error = %e, "bad {} dropped", M::KIND);
        })
        .ok()
}

/// Whether `client` holds a connection to the bus now.
pub fn connected(client: &Client) -> bool {
    client.connection_state() == State::Connected
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT): what every long-running command
/// stops on.
pub async fn terminate_or_interrupt() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Resolves when `shutdown` turns true or its sender is gone.
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped: nobody can tell us to stop any
    // more, which is taken as the order to stop.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A timer ticking every `period`, at once first; a late tick does not cause a
/// burst of catch-up ticks.
///
/// # Panics
///
/// If `period` is zero (as [`tokio::time::interval`] does).
pub fn ticker(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// Unix milliseconds of `at`; 0 for a clock set before 1970.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stopped_resolves_on_true_or_when_the_sender_is_gone() {
        let (tx, mut rx) = watch::channel(false);
        tx.send(true).expect("receiver alive");
        stopped(&mut rx).await;
        let (tx, mut rx) = watch::channel(false);
        drop(tx);
        stopped(&mut rx).await;
    }

    #[tokio::test]
    async fn ticker_ticks_at_once_first_and_does_not_burst() {
        let tick = ticker(Duration::from_secs(3_600));
        assert_eq!(tick.missed_tick_behavior(), MissedTickBehavior::Delay);
        let mut tick = tick;
        tokio::time::timeout(Duration::from_secs(1), tick.tick())
            .await
            .expect("the first tick is immediate");
    }
}
