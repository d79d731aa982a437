//! Reading a group's election ledger (`UNDERSTUDY_LEDGER_<group>`), for
//! `understudy ledger`/`why` and the gateway's `GET …/ledger`.
//!
//! Entries are read with an ordered consumer: the latest `limit` entries, or
//! the first `limit` entries at or after a time (oldest first in both cases),
//! with whether more follow. A read needs only the stream's read
//! permissions (every role has them).

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use thiserror::Error;
use understudy_protocol::ledger::LedgerEntry;
use understudy_protocol::{GroupName, messages, subjects};

/// The most entries one read returns.
pub const MAX_LIMIT: usize = 1000;

/// How long a read waits for JetStream, per step.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Which entries to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerQuery {
    /// Only entries stored at or after this time (Unix milliseconds); the
    /// first `limit` of them. `None`: the latest `limit` entries.
    pub since_ms: Option<u64>,
    /// How many entries at most (1–[`MAX_LIMIT`]).
    pub limit: usize,
}

/// What a read found, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerPage {
    /// The entries.
    pub entries: Vec<LedgerEntry>,
    /// Whether more entries follow the last one returned (a read `since` a
    /// time hit its limit); read again from the last entry's time.
    pub more: bool,
    /// Stored messages that were not ledger entries this build can read.
    pub unreadable: usize,
}

/// Why the ledger could not be read.
#[derive(Debug, Error)]
pub enum LedgerError {
    /// The group has no ledger stream: no device of it has run with the
    /// ledger yet, or the group name is wrong.
    #[error("group {0} has no election ledger yet (no device of it has run with one)")]
    NoLedger(GroupName),
    /// The limit is out of range.
    #[error("limit must be 1 to {MAX_LIMIT}, not {0}")]
    BadLimit(usize),
    /// JetStream did not answer or refused.
    #[error("cannot read the ledger of group {group}: {reason}")]
    Unavailable {
        /// The group.
        group: GroupName,
        /// What went wrong.
        reason: String,
    },
}

/// Reads entries of `group`'s ledger as `query` asks.
pub async fn read_ledger(
    js: &jetstream::Context,
    group: &GroupName,
    query: LedgerQuery,
) -> Result<LedgerPage, LedgerError> {
    if query.limit == 0 || query.limit > MAX_LIMIT {
        return Err(LedgerError::BadLimit(query.limit));
    }
    let unavailable = |reason: String| LedgerError::Unavailable {
        group: group.clone(),
        reason,
    };
    let name = subjects::ledger_stream(group);
    let mut stream = match tokio::time::timeout(ANSWER_WITHIN, js.get_stream(&name)).await {
        Err(_) => return Err(unavailable("JetStream did not answer".into())),
        Ok(Err(e))
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(err)
                    if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            return Err(LedgerError::NoLedger(group.clone()));
        }
        Ok(Err(e)) => return Err(unavailable(e.to_string())),
        Ok(Ok(s)) => s,
    };
    let info = tokio::time::timeout(ANSWER_WITHIN, stream.info())
        .await
        .map_err(|_| unavailable("JetStream did not answer".into()))?
        .map_err(|e| unavailable(e.to_string()))?;
    let state = info.state.clone();
    let empty = LedgerPage {
        entries: Vec::new(),
        more: false,
        unreadable: 0,
    };
    if state.messages == 0 {
        return Ok(empty);
    }
    let deliver_policy = match query.since_ms {
        Some(ms) => consumer::DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .map_err(|e| unavailable(format!("bad time: {e}")))?,
        },
        None => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: state
                .last_sequence
                .saturating_sub(query.limit as u64 - 1)
                .max(state.first_sequence),
        },
    };
    let mut consumer = tokio::time::timeout(
        ANSWER_WITHIN,
        stream.create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subjects::ledger(group),
            deliver_policy,
            ..Default::default()
        }),
    )
    .await
    .map_err(|_| unavailable("JetStream did not answer".into()))?
    .map_err(|e| unavailable(e.to_string()))?;
    let pending = tokio::time::timeout(ANSWER_WITHIN, consumer.info())
        .await
        .map_err(|_| unavailable("JetStream did not answer".into()))?
        .map_err(|e| unavailable(e.to_string()))?
        .num_pending;
    if pending == 0 {
        return Ok(empty);
    }
    let want = usize::try_from(pending)
        .unwrap_or(usize::MAX)
        .min(query.limit);
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let mut page = LedgerPage {
        entries: Vec::with_capacity(want),
        more: pending > want as u64,
        unreadable: 0,
    };
    let mut read = 0;
    while read < want {
        let msg = match tokio::time::timeout(ANSWER_WITHIN, messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(unavailable(e.to_string())),
            Ok(None) | Err(_) => return Err(unavailable("the read stopped early".into())),
        };
        read += 1;
        match messages::decode::<LedgerEntry>(&msg.payload) {
            Ok(e) => page.entries.push(e),
            Err(_) => page.unreadable += 1,
        }
    }
    Ok(page)
}
