//! Plumbing shared by the NATS drivers: nothing here decides anything.
//!
//! The service drivers (heartbeat, discovery, election) all talk to the bus
//! the same way: a publish that fails or cannot be queued in time is logged at
//! debug level and dropped, a bad message is logged and dropped, a
//! subscription that ends is given up with a warning, and the loop goes on
//! until it is told to stop. These helpers are that shared way, and no more:
//! every rule stays in the services' pure cores.

pub mod follow;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::{Client, Message, Subscriber};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::{debug, warn};
use understudy_protocol::messages::{self, BusMessage};

pub use follow::{ElectionFollower, Followed};

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

/// Decodes a bus message; a bad one is logged at debug level and dropped.
pub fn decoded<M: BusMessage>(msg: &Message) -> Option<M> {
    messages::decode(&msg.payload)
        .inspect_err(|e| debug!(subject = %msg.subject, error = %e, "bad {} dropped", M::KIND))
        .ok()
}

/// The next message of `sub`. If the subscription ends (the client was
/// closed), it is dropped with a warning naming `what` and this waits
/// forever, so the other branches of a driver's loop go on until shutdown.
pub async fn recv(sub: &mut Option<Subscriber>, what: &str) -> Message {
    if let Some(s) = sub {
        if let Some(msg) = s.next().await {
            return msg;
        }
        warn!("subscription to {what} ended (the client was closed)");
        *sub = None;
    }
    std::future::pending().await
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
