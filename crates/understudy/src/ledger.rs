//! `understudy ledger` and `understudy why`: the group's election ledger,
//! read from its stream (`UNDERSTUDY_LEDGER_<group>`) directly, so both work
//! for a read-only user and with no device running. The paragraph of `why`
//! is [`understudy_bus::why`]'s, which the gateway's `GET …/why` answers too.

use std::time::SystemTime;

use anyhow::{Result, anyhow};
use async_nats::jetstream;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use understudy_bus::ledger::{LedgerError, LedgerQuery, MAX_LIMIT, read_ledger};
use understudy_bus::why::why;
use understudy_bus::{NatsSettings, unix_ms};
use understudy_protocol::GroupName;
use understudy_protocol::ledger::{LedgerEntry, LedgerKind};

use crate::hold::{parse_span, rfc3339};
use crate::settings::connect_once;

/// Reads `--since`: an RFC 3339 time, or how long ago (`2h`, `1d`, `30m`).
/// Returns Unix milliseconds.
pub fn parse_since(text: &str, now: SystemTime) -> Result<u64> {
    let text = text.trim();
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        let ms = t.unix_timestamp_nanos() / 1_000_000;
        return u64::try_from(ms).map_err(|_| anyhow!("--since {text}: before 1970"));
    }
    let ago = parse_span(text).ok_or_else(|| {
        anyhow!(
            "--since {text:?} is neither an RFC 3339 time (2026-12-01T20:00:00Z) \
             nor how long ago (30m, 2h, 1d)"
        )
    })?;
    Ok(unix_ms(now).saturating_sub(ago.as_millis().try_into().unwrap_or(u64::MAX)))
}

/// `understudy ledger --group G [--since T] [--limit N] [--json]`.
pub async fn run_ledger(
    nats: &NatsSettings,
    group: &str,
    since: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<()> {
    let group: GroupName = group.parse()?;
    let since_ms = since
        .map(|s| parse_since(s, SystemTime::now()))
        .transpose()?;
    if limit == 0 || limit > MAX_LIMIT {
        return Err(anyhow!("--limit must be 1 to {MAX_LIMIT}, not {limit}"));
    }
    let client = connect_once(nats, "understudy-ledger").await?;
    let js = jetstream::new(client);
    let page = match read_ledger(&js, &group, LedgerQuery { since_ms, limit }).await {
        Ok(p) => p,
        Err(LedgerError::NoLedger(_)) if json => {
            println!("[]");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if page.unreadable > 0 {
        eprintln!(
            "{} stored entries could not be read (written by a newer version?)",
            page.unreadable
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&page.entries)?);
    } else if page.entries.is_empty() {
        println!("group {group}: no ledger entries in that window");
    } else {
        println!(
            "{:<20} {:>6}  {:<16} {:<14} {:<15} {:<22} {:>10}",
            "AT", "TERM", "SERVER", "CAUSE", "RULE", "PREVIOUS", "NO SERVER"
        );
        for e in &page.entries {
            println!("{}", row(e));
        }
    }
    if page.more {
        eprintln!(
            "more entries follow: read on with --since {}",
            page.entries
                .last()
                .map_or_else(String::new, |e| rfc3339(e.at_ms))
        );
    }
    Ok(())
}

/// One line of the `ledger` table.
pub fn row(e: &LedgerEntry) -> String {
    let previous = match &e.previous {
        Some(p) => format!(
            "{} t{}{}",
            p.device.as_ref().map_or("?", |d| d.as_str()),
            p.term,
            p.stepped_down
                .map_or(String::new(), |r| format!(" ({})", r.as_str()))
        ),
        None => "-".to_string(),
    };
    let term = match e.kind {
        LedgerKind::Kept => format!("{}=", e.term),
        _ => e.term.to_string(),
    };
    let no_server = e
        .timings
        .without_server_ms
        .map_or("-".to_string(), |ms| format!("{ms} ms"));
    format!(
        "{:<20} {:>6}  {:<16} {:<14} {:<15} {:<22} {:>10}",
        rfc3339(e.at_ms),
        term,
        e.server.as_str(),
        e.cause.as_str(),
        e.rule.as_str(),
        previous,
        no_server
    )
}

/// `understudy why --group G [--json]`: the paragraph of
/// [`understudy_bus::why`], or its whole document with `--json`.
pub async fn run_why(nats: &NatsSettings, group: &str, json: bool) -> Result<()> {
    let group: GroupName = group.parse()?;
    let client = connect_once(nats, "understudy-why").await?;
    let js = jetstream::new(client);
    let why = why(&js, &group, unix_ms(SystemTime::now())).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&why)?);
    } else {
        println!("{}", why.paragraph);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn since_reads_a_time_or_how_long_ago() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        assert_eq!(
            parse_since("2h", now).unwrap(),
            1_767_225_600_000 - 7_200_000
        );
        assert_eq!(
            parse_since("2026-01-01T00:00:00Z", now).unwrap(),
            1_767_225_600_000
        );
        assert!(parse_since("yesterday", now).is_err());
    }
}
