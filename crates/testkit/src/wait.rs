//! Waiting for a condition, bounded by a deadline.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use crate::Error;

/// How often [`wait_until`] looks again.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `probe` every [`POLL`] until it returns `Ok`, and returns that
/// value; fails with [`Error::TimedOut`] after `within`, naming `what` and
/// the last probe's complaint. A probe still running at the deadline is
/// abandoned (the complaint before it is kept).
pub async fn wait_until<T, E, F, Fut>(
    what: &str,
    within: Duration,
    mut probe: F,
) -> Result<T, Error>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    let mut said: Option<String> = None;
    loop {
        let last = match tokio::time::timeout_at(deadline.into(), probe()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => {
                let complaint = format!("{e:#}");
                said = Some(complaint.clone());
                complaint
            }
            Err(_) => match &said {
                Some(before) => {
                    format!("the last attempt was still running; the one before said: {before}")
                }
                None => "the last attempt was still running".to_string(),
            },
        };
        if Instant::now() >= deadline {
            return Err(Error::TimedOut {
                what: what.to_string(),
                within,
                last,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}
