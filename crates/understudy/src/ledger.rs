//! `understudy ledger` and `understudy why`: the group's election ledger,
//! read from its stream (`UNDERSTUDY_LEDGER_<group>`) directly, so both work
//! for a read-only user and with no device running.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use async_nats::jetstream;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use understudy_bus::ledger::{LedgerError, LedgerQuery, MAX_LIMIT, read_ledger};
use understudy_bus::{NatsSettings, unix_ms};
use understudy_protocol::hold::HoldRecord;
use understudy_protocol::ledger::{LedgerEntry, LedgerKind, LedgerRule};
use understudy_protocol::messages::{ElectionReason, LeaseRecord, StepDownReason};
use understudy_protocol::{DeviceId, GroupName, Term, messages, subjects};

use crate::hold::{parse_span, rfc3339};
use crate::settings::connect_once;

const ANSWER_WITHIN: Duration = Duration::from_secs(5);

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
        cause_word(e.cause),
        e.rule.as_str(),
        previous,
        no_server
    )
}

fn cause_word(c: ElectionReason) -> &'static str {
    match c {
        ElectionReason::Startup => "startup",
        ElectionReason::ServerLost => "server_lost",
        ElectionReason::NoServer => "no_server",
        ElectionReason::ScoreChanged => "score_changed",
        ElectionReason::Preemption => "preemption",
        ElectionReason::HandOver => "hand_over",
        ElectionReason::Operator => "operator",
        ElectionReason::Other => "other",
    }
}

/// What `why --json` prints.
#[derive(Debug, Serialize)]
pub struct Why {
    /// The group.
    pub group: GroupName,
    /// The server now, from the lease (`null`: none).
    pub server: Option<DeviceId>,
    /// Its term.
    pub term: Option<Term>,
    /// The explanation, in one paragraph.
    pub paragraph: String,
    /// The ledger entry of the current term, when there is one.
    pub entry: Option<LedgerEntry>,
}

/// `understudy why --group G [--json]`.
pub async fn run_why(nats: &NatsSettings, group: &str, json: bool) -> Result<()> {
    let group: GroupName = group.parse()?;
    let client = connect_once(nats, "understudy-why").await?;
    let js = jetstream::new(client);
    let lease = read_lease(&js, &group).await?;
    let hold = read_hold(&js, &group).await;
    let entries = match read_ledger(
        &js,
        &group,
        LedgerQuery {
            since_ms: None,
            limit: 200,
        },
    )
    .await
    {
        Ok(p) => p.entries,
        Err(LedgerError::NoLedger(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let why = explain(
        &group,
        lease.as_ref(),
        &entries,
        hold.as_ref(),
        unix_ms(SystemTime::now()),
    );
    if json {
        println!("{}", serde_json::to_string_pretty(&why)?);
    } else {
        println!("{}", why.paragraph);
    }
    Ok(())
}

/// The lease as stored: the holder and its term (`None`: nobody holds it).
async fn read_lease(
    js: &jetstream::Context,
    group: &GroupName,
) -> Result<Option<(DeviceId, Term)>> {
    let bucket = subjects::lease_bucket(group);
    let store = match tokio::time::timeout(ANSWER_WITHIN, js.get_key_value(&bucket)).await {
        Err(_) => return Err(anyhow!("JetStream did not answer reading the lease")),
        Ok(Err(_)) => return Ok(None),
        Ok(Ok(s)) => s,
    };
    let entry = tokio::time::timeout(ANSWER_WITHIN, store.entry(subjects::LEASE_KEY))
        .await
        .map_err(|_| anyhow!("JetStream did not answer reading the lease"))?
        .context("cannot read the lease")?;
    Ok(entry.and_then(|e| {
        let rec = messages::decode::<LeaseRecord>(&e.value).ok()?;
        let holder = rec.holder.as_ref()?.device.clone();
        Some((holder, rec.term_at(e.revision)))
    }))
}

/// The show hold as stored, if it can be read (best effort: `why` still
/// explains the election without it).
async fn read_hold(js: &jetstream::Context, group: &GroupName) -> Option<HoldRecord> {
    let store = tokio::time::timeout(
        ANSWER_WITHIN,
        js.get_key_value(subjects::settings_bucket(group)),
    )
    .await
    .ok()?
    .ok()?;
    let entry = tokio::time::timeout(ANSWER_WITHIN, store.entry(subjects::HOLD_KEY))
        .await
        .ok()?
        .ok()??;
    messages::decode::<HoldRecord>(&entry.value).ok()
}

/// Why the current server serves, from the lease, the ledger's entries
/// (oldest first) and the hold, at `now_ms`.
pub fn explain(
    group: &GroupName,
    lease: Option<&(DeviceId, Term)>,
    entries: &[LedgerEntry],
    hold: Option<&HoldRecord>,
    now_ms: u64,
) -> Why {
    let Some((server, term)) = lease else {
        let last = entries.iter().rev().find(|e| e.kind == LedgerKind::Elected);
        let mut p = format!("Group {group} has no server now: nobody holds the lease.");
        if let Some(e) = last {
            p.push_str(&format!(
                " The last server was {} (term {}), elected at {}.",
                e.server,
                e.term,
                rfc3339(e.at_ms)
            ));
        }
        p.push_str(
            " Either no online device has a non-zero score, or an election is under way \
             (see `understudy status` and `understudy events`).",
        );
        return Why {
            group: group.clone(),
            server: None,
            term: None,
            paragraph: p,
            entry: None,
        };
    };
    let elected = entries
        .iter()
        .rev()
        .find(|e| e.kind == LedgerKind::Elected && e.term == *term && &e.server == server);
    let Some(e) = elected else {
        return Why {
            group: group.clone(),
            server: Some(server.clone()),
            term: Some(*term),
            paragraph: format!(
                "{server} serves group {group} (term {term}). The ledger holds no entry of \
                 this term: it was elected by a version without the ledger, its entry is \
                 older than the ledger's retention, or it could not store one."
            ),
            entry: None,
        };
    };
    let mut p = format!(
        "{server} serves group {group} (term {term}) since {}. It was elected because {}.",
        rfc3339(e.at_ms),
        cause_sentence(e)
    );
    p.push_str(&format!(" {}", rule_sentence(e)));
    if let Some(ms) = e.timings.without_server_ms {
        p.push_str(&format!(
            " The group was without a server for about {ms} ms."
        ));
    }
    let kept = entries
        .iter()
        .filter(|k| k.kind == LedgerKind::Kept && k.term == *term && &k.server == server)
        .count();
    if kept > 0 {
        p.push_str(&format!(
            " Since then, {kept} operator-triggered election{} kept it: it was still the best device.",
            if kept == 1 { "" } else { "s" }
        ));
    }
    if let Some(h) = hold
        && h.in_effect(now_ms)
    {
        p.push_str(&format!(
            " The group is on show hold{}: a better device does not take over until it is lifted.",
            h.reason
                .as_deref()
                .map_or(String::new(), |r| format!(" ({r})"))
        ));
    }
    Why {
        group: group.clone(),
        server: Some(server.clone()),
        term: Some(*term),
        paragraph: p,
        entry: Some(e.clone()),
    }
}

fn previous_name(e: &LedgerEntry) -> String {
    match &e.previous {
        Some(p) => format!(
            "{} (term {})",
            p.device
                .as_ref()
                .map_or("the previous server", |d| d.as_str()),
            p.term
        ),
        None => "the previous server".to_string(),
    }
}

/// Why the election was held, as the rest of a sentence.
fn cause_sentence(e: &LedgerEntry) -> String {
    let prev = previous_name(e);
    let how = e.previous.as_ref().and_then(|p| p.stepped_down);
    match e.cause {
        ElectionReason::ServerLost => match e.timings.detection_ms {
            Some(ms) => format!(
                "{prev} was lost: silent for {ms} ms when {} gave it up",
                e.server
            ),
            None => format!("{prev} was lost"),
        },
        ElectionReason::NoServer => match &e.previous {
            Some(_) => format!("the lease of {prev} ran out or was released with no successor"),
            None => "no device held the lease".to_string(),
        },
        ElectionReason::Startup => "the group started with no server".to_string(),
        ElectionReason::ScoreChanged => {
            format!("a score changed and {prev} handed over to the better device")
        }
        ElectionReason::Preemption => {
            format!("a better device joined or came online and {prev} handed over to it")
        }
        ElectionReason::HandOver => match how {
            Some(StepDownReason::Shutdown) => format!("{prev} shut down and handed over"),
            Some(StepDownReason::Offline) => format!("{prev} was taken offline and handed over"),
            _ => format!("{prev} handed over"),
        },
        ElectionReason::Operator => {
            format!("an operator triggered an election and {prev} handed over to the best device")
        }
        ElectionReason::Other => "of a cause this version does not know".to_string(),
    }
}

/// The rule that decided, as a sentence naming the candidates.
fn rule_sentence(e: &LedgerEntry) -> String {
    let field = e
        .candidates
        .iter()
        .map(|c| {
            format!(
                "{} score {}{}",
                c.device,
                c.score,
                if c.online { "" } else { " offline" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let n = e.candidates.len();
    let heard = format!(
        "Of the {n} device{} it heard ({field})",
        if n == 1 { "" } else { "s" }
    );
    let w = e.winner();
    let r = e.runner_up();
    match (e.rule, w, r) {
        (LedgerRule::OnlyCandidate, _, _) => {
            format!(
                "{heard}, it was the only online device with a non-zero score (rule: only_candidate)."
            )
        }
        (LedgerRule::HighestScore, Some(w), Some(r)) => format!(
            "{heard}, it won with the highest score, {} against {}'s {} (rule: highest_score).",
            w.score, r.device, r.score
        ),
        (LedgerRule::LowerMac, Some(w), Some(r)) => format!(
            "{heard}, it won the tie at score {} by the lower MAC, {} against {}'s {} (rule: lower_mac).",
            w.score, w.mac, r.device, r.mac
        ),
        (LedgerRule::DeviceId, Some(w), Some(r)) => format!(
            "{heard}, it tied with {} on score {} and MAC {} (a misconfiguration) and won by \
             the lower device id (rule: device_id).",
            r.device, w.score, w.mac
        ),
        (LedgerRule::NamedSuccessor, _, _) => format!(
            "{heard}, {} named it as its successor when it handed over (rule: named_successor).",
            previous_name(e)
        ),
        (rule, _, _) => format!("{heard}, it won by rule {}.", rule.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use understudy_protocol::SCHEMA_VERSION;
    use understudy_protocol::ledger::{LedgerCandidate, LedgerTimings, PreviousServer};
    use understudy_protocol::{Mac, Score};

    fn cand(d: &str, score: u8, mac: u64) -> LedgerCandidate {
        LedgerCandidate {
            device: d.parse().unwrap(),
            score: Score::new(score),
            mac: Mac::from_u64(mac).unwrap(),
            online: true,
        }
    }

    fn entry(term: u64, cause: ElectionReason, rule: LedgerRule) -> LedgerEntry {
        LedgerEntry {
            schema: SCHEMA_VERSION,
            group: "show".parse().unwrap(),
            kind: LedgerKind::Elected,
            server: "dev-2".parse().unwrap(),
            term: Term::from_revision(term),
            at_ms: 1_764_637_384_000,
            cause,
            rule,
            candidates: vec![
                cand("dev-2", 200, 1),
                cand("dev-3", 200, 2),
                cand("dev-4", 100, 3),
            ],
            previous: Some(PreviousServer {
                device: Some("dev-1".parse().unwrap()),
                term: Term::from_revision(37),
                stepped_down: None,
            }),
            held: false,
            timings: LedgerTimings {
                detection_ms: Some(612),
                vacant_ms: Some(40),
                claim_ms: Some(3),
                without_server_ms: Some(652),
            },
        }
    }

    #[test]
    fn why_names_the_cause_the_rule_and_the_outage() {
        let g: GroupName = "show".parse().unwrap();
        let e = entry(41, ElectionReason::ServerLost, LedgerRule::LowerMac);
        let lease = ("dev-2".parse().unwrap(), Term::from_revision(41));
        let why = explain(&g, Some(&lease), &[e], None, 0);
        let p = &why.paragraph;
        assert!(
            p.starts_with("dev-2 serves group show (term 41) since 2025-12-02T01:03:04Z."),
            "{p}"
        );
        assert!(
            p.contains("dev-1 (term 37) was lost: silent for 612 ms"),
            "{p}"
        );
        assert!(p.contains("rule: lower_mac"), "{p}");
        assert!(
            p.contains("00:00:00:00:00:01 against dev-3's 00:00:00:00:00:02"),
            "{p}"
        );
        assert!(p.contains("without a server for about 652 ms"), "{p}");
        assert!(why.entry.is_some());
    }

    #[test]
    fn why_says_when_the_ledger_has_no_entry_or_nobody_serves() {
        let g: GroupName = "show".parse().unwrap();
        let e = entry(41, ElectionReason::ServerLost, LedgerRule::LowerMac);
        let lease = ("dev-2".parse().unwrap(), Term::from_revision(45));
        let why = explain(&g, Some(&lease), std::slice::from_ref(&e), None, 0);
        assert!(
            why.paragraph.contains("holds no entry of this term"),
            "{}",
            why.paragraph
        );
        let why = explain(&g, None, &[e], None, 0);
        assert!(
            why.paragraph.contains("has no server now"),
            "{}",
            why.paragraph
        );
        assert!(
            why.paragraph
                .contains("The last server was dev-2 (term 41)")
        );
    }

    #[test]
    fn why_mentions_kept_elections_and_the_hold() {
        let g: GroupName = "show".parse().unwrap();
        let e = entry(41, ElectionReason::Operator, LedgerRule::HighestScore);
        let mut k = e.clone();
        k.kind = LedgerKind::Kept;
        let hold = HoldRecord {
            schema: SCHEMA_VERSION,
            group: g.clone(),
            held: true,
            until_ms: None,
            reason: Some("act 2".into()),
            set_by: None,
            since_ms: 0,
        };
        let lease = ("dev-2".parse().unwrap(), Term::from_revision(41));
        let why = explain(&g, Some(&lease), &[e, k], Some(&hold), 1);
        let p = &why.paragraph;
        assert!(p.contains("an operator triggered an election"), "{p}");
        assert!(p.contains("1 operator-triggered election kept it"), "{p}");
        assert!(p.contains("on show hold (act 2)"), "{p}");
    }

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
