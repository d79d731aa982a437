//! `understudy hold on|off|status`: the group's show hold.
//!
//! Putting the hold on or off is a request on `understudy.<group>.settings`
//! that one device of the group answers (it stores the hold in the group's
//! settings bucket); the status is read from that bucket directly, so it
//! works for a read-only user and with no device running.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream;
use clap::{Args, Subcommand};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use understudy_bus::{NatsSettings, unix_ms};
use understudy_protocol::hold::{
    HoldChange, HoldRecord, SettingsOp, SettingsReply, SettingsRequest,
};
use understudy_protocol::{GroupName, SCHEMA_VERSION, messages, subjects};

use crate::Bus;
use crate::settings::connect_once;

const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Which group, and who asks.
#[derive(Debug, Args)]
pub struct HoldTarget {
    /// The project group.
    #[arg(long, env = "UNDERSTUDY_GROUP")]
    pub group: String,
    /// Who sets it, as kept with the hold (default: `$USER`).
    #[arg(long = "by", env = "UNDERSTUDY_OPERATOR")]
    pub by: Option<String>,
    #[command(flatten)]
    pub bus: Bus,
}

/// `understudy hold …`
#[derive(Debug, Subcommand)]
pub enum HoldCmd {
    /// Put the group's show hold on: no preemption and no score-driven
    /// re-election until it is lifted (losing the server still fails over
    /// at once; `election trigger` needs `--force`).
    On {
        #[command(flatten)]
        target: HoldTarget,
        /// When the hold lapses by itself: an RFC 3339 time
        /// (`2026-12-01T23:30:00Z`, `2026-12-01T23:30:00+01:00`) or a
        /// duration from now (`45m`, `2h`, `1h30m`, `90s`, `1d`).
        #[arg(long)]
        until: Option<String>,
        /// Why (kept with the hold; at most 200 characters).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift the group's show hold: the best device takes over again.
    Off {
        #[command(flatten)]
        target: HoldTarget,
    },
    /// Show whether the group is held, until when, why, by whom and since when.
    Status {
        /// The project group.
        #[arg(long, env = "UNDERSTUDY_GROUP")]
        group: String,
        /// Print a JSON document instead of a sentence.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bus: Bus,
    },
}

/// `understudy hold on|off|status`.
pub async fn run(cmd: HoldCmd) -> Result<()> {
    match cmd {
        HoldCmd::On {
            target,
            until,
            reason,
        } => {
            let until_ms = until
                .map(|u| parse_until(&u, SystemTime::now()))
                .transpose()?;
            let rec = set(&target, true, until_ms, reason).await?;
            println!("{}", describe(&rec, unix_ms(SystemTime::now())));
        }
        HoldCmd::Off { target } => {
            let rec = set(&target, false, None, None).await?;
            println!("{}", describe(&rec, unix_ms(SystemTime::now())));
        }
        HoldCmd::Status { group, json, bus } => {
            let group: GroupName = group.parse()?;
            let hold = read(&bus.settings(), &group).await?;
            let status = HoldStatus::new(&group, hold.as_ref(), unix_ms(SystemTime::now()));
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                println!("{}", status.sentence());
            }
        }
    }
    Ok(())
}

async fn set(
    target: &HoldTarget,
    held: bool,
    until_ms: Option<u64>,
    reason: Option<String>,
) -> Result<HoldRecord> {
    let group: GroupName = target.group.parse()?;
    let set_by = target
        .by
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .filter(|s| !s.is_empty());
    let req = SettingsRequest {
        schema: SCHEMA_VERSION,
        op: SettingsOp::SetHold(HoldChange {
            held,
            until_ms,
            reason,
            set_by,
        }),
    };
    let client = connect_once(&target.bus.settings(), "understudy-ctl").await?;
    let msg = tokio::time::timeout(
        ANSWER_WITHIN,
        client.request(subjects::settings(&group), messages::encode(&req).into()),
    )
    .await
    .map_err(|_| anyhow!("no device of group {group} answered within 5 s"))?
    .map_err(|e| match e.kind() {
        async_nats::RequestErrorKind::NoResponders => {
            anyhow!("no device of group {group} is running (no answer on the bus)")
        }
        _ => anyhow!("asking group {group} to change its hold: {e}"),
    })?;
    let reply: SettingsReply =
        messages::decode(&msg.payload).context("cannot read the device's reply")?;
    match (reply.ok, reply.hold) {
        (true, Some(rec)) => Ok(rec),
        (true, None) => bail!("the device stored the hold but sent no record back"),
        (false, _) => bail!(
            "group {group} refused ({}): {}",
            reply.code.map_or("unknown".into(), |c| c.to_string()),
            reply.error.unwrap_or_else(|| "no reason given".into())
        ),
    }
}

/// Reads the group's hold from its settings bucket (`None`: never set, or
/// no bucket yet).
pub async fn read(nats: &NatsSettings, group: &GroupName) -> Result<Option<HoldRecord>> {
    let client = connect_once(nats, "understudy-ctl").await?;
    read_with(&client, group).await
}

/// [`read`] on an open connection.
pub async fn read_with(
    client: &async_nats::Client,
    group: &GroupName,
) -> Result<Option<HoldRecord>> {
    let js = jetstream::new(client.clone());
    let bucket = subjects::settings_bucket(group);
    // No bucket: no hold was ever set in this group.
    let stream = tokio::time::timeout(ANSWER_WITHIN, js.get_stream(format!("KV_{bucket}")))
        .await
        .map_err(|_| anyhow!("JetStream did not answer within 5 s"))?;
    if let Err(e) = &stream
        && let jetstream::context::GetStreamErrorKind::JetStream(js_err) = e.kind()
        && js_err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    {
        return Ok(None);
    }
    let store = tokio::time::timeout(ANSWER_WITHIN, js.get_key_value(&bucket))
        .await
        .map_err(|_| anyhow!("JetStream did not answer within 5 s"))?
        .with_context(|| format!("cannot open the settings bucket {bucket}"))?;
    let entry = tokio::time::timeout(ANSWER_WITHIN, store.entry(subjects::HOLD_KEY))
        .await
        .map_err(|_| anyhow!("JetStream did not answer within 5 s"))?
        .with_context(|| format!("cannot read the hold from {bucket}"))?;
    match entry {
        Some(e) if e.operation == jetstream::kv::Operation::Put => Ok(Some(
            messages::decode(&e.value).context("the stored hold is unreadable")?,
        )),
        _ => Ok(None),
    }
}

/// What `hold status --json` prints.
#[derive(Debug, Serialize)]
pub struct HoldStatus {
    /// The group.
    pub group: GroupName,
    /// Whether the group is held now (on, and not lapsed).
    pub held: bool,
    /// The hold as last stored (`null`: never set).
    pub record: Option<HoldRecord>,
}

impl HoldStatus {
    /// The status of `group` at `now_ms` from its stored hold.
    pub fn new(group: &GroupName, record: Option<&HoldRecord>, now_ms: u64) -> Self {
        Self {
            group: group.clone(),
            held: record.is_some_and(|r| r.in_effect(now_ms)),
            record: record.cloned(),
        }
    }

    /// One line for people.
    pub fn sentence(&self) -> String {
        match &self.record {
            None => format!("group {}: not held (no hold was ever set)", self.group),
            Some(r) => describe(r, unix_ms(SystemTime::now())),
        }
    }
}

/// One line for a stored hold at `now_ms`.
pub fn describe(r: &HoldRecord, now_ms: u64) -> String {
    let who = r.set_by.as_deref().unwrap_or("an unnamed operator");
    let since = rfc3339(r.since_ms);
    if r.in_effect(now_ms) {
        let until = r.until_ms.map_or("until lifted".into(), |u| {
            format!(
                "until {} (in {})",
                rfc3339(u),
                span(u.saturating_sub(now_ms))
            )
        });
        let reason = r
            .reason
            .as_deref()
            .map_or(String::new(), |x| format!(", reason: {x}"));
        format!(
            "group {}: HELD {until}{reason}; set by {who} since {since}",
            r.group
        )
    } else if r.held {
        format!(
            "group {}: not held (the hold set by {who} at {since} lapsed at {})",
            r.group,
            r.until_ms.map_or("?".into(), rfc3339)
        )
    } else {
        format!("group {}: not held (lifted by {who} at {since})", r.group)
    }
}

pub(crate) use understudy_bus::why::rfc3339;

/// A span of milliseconds as people say it: `1h 5m`, `45m`, `30s`.
fn span(ms: u64) -> String {
    let s = ms.div_ceil(1000);
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, _) => format!("{m}m"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

/// Reads `--until`: an RFC 3339 time, or a duration from `now` made of
/// whole numbers with units `d`, `h`, `m`, `s` (`45m`, `1h30m`). Returns
/// Unix milliseconds.
pub fn parse_until(text: &str, now: SystemTime) -> Result<u64> {
    let text = text.trim();
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        let ms = t.unix_timestamp_nanos() / 1_000_000;
        return u64::try_from(ms).map_err(|_| anyhow!("--until {text}: before 1970"));
    }
    let ahead = parse_span(text).ok_or_else(|| {
        anyhow!(
            "--until {text:?} is neither an RFC 3339 time (2026-12-01T23:30:00Z) \
             nor a duration (45m, 2h, 1h30m)"
        )
    })?;
    Ok(unix_ms(now).saturating_add(ahead.as_millis().try_into().unwrap_or(u64::MAX)))
}

/// `1h30m`, `45m`, `90s`, `1d`: `None` for anything else (or zero).
pub(crate) fn parse_span(text: &str) -> Option<Duration> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: u64 = digits.parse().ok()?;
        digits.clear();
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    (digits.is_empty() && total > 0).then(|| Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_reads_rfc3339_or_a_duration_from_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let at = unix_ms(now);
        assert_eq!(parse_until("45m", now).unwrap(), at + 45 * 60_000);
        assert_eq!(parse_until("1h30m", now).unwrap(), at + 90 * 60_000);
        assert_eq!(parse_until("1d", now).unwrap(), at + 86_400_000);
        assert_eq!(
            parse_until("2026-01-01T01:00:00+01:00", now).unwrap(),
            1_767_225_600_000
        );
        assert_eq!(
            parse_until("2026-01-01T00:30:00Z", now).unwrap(),
            at + 30 * 60_000
        );
        for bad in ["", "45", "m", "45x", "tomorrow", "0m", "2026-01-01"] {
            assert!(parse_until(bad, now).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_hold_reads_as_a_sentence() {
        let group: GroupName = "stage".parse().unwrap();
        let rec = HoldRecord {
            schema: SCHEMA_VERSION,
            group: group.clone(),
            held: true,
            until_ms: Some(1_767_229_200_000),
            reason: Some("show".into()),
            set_by: Some("ops".into()),
            since_ms: 1_767_225_600_000,
        };
        assert_eq!(
            describe(&rec, 1_767_225_600_000),
            "group stage: HELD until 2026-01-01T01:00:00Z (in 1h), reason: show; \
             set by ops since 2026-01-01T00:00:00Z"
        );
        assert!(describe(&rec, 1_767_229_200_000).contains("lapsed"));
        let status = HoldStatus::new(&group, Some(&rec), 1_767_229_200_001);
        assert!(!status.held);
    }
}
