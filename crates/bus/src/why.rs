//! "Why is that device the server?", answered from the group's lease, its
//! election ledger and its show hold, in one paragraph: for `understudy why`
//! and the gateway's `GET /api/v1/groups/{group}/why`.
//!
//! [`explain`] is pure (the lease, the ledger's entries, the hold and the
//! time in; the paragraph out), so both tell it the same way; [`why`] reads
//! what it needs from JetStream — the lease and settings buckets and the
//! ledger stream — so it works for a read-only user and with no device
//! running.

use std::time::Duration;

use async_nats::jetstream;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use understudy_protocol::hold::HoldRecord;
use understudy_protocol::ledger::{LedgerEntry, LedgerKind, LedgerRule};
use understudy_protocol::messages::{ElectionReason, LeaseRecord, StepDownReason};
use understudy_protocol::{DeviceId, GroupName, Term, messages, subjects};

use crate::ledger::{LedgerError, LedgerQuery, read_ledger};

/// How long a read waits for JetStream, per step.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// How many of the latest entries [`why`] reads: enough to find the current
/// term's entry and the operator-triggered elections that kept it.
const ENTRIES_READ: usize = 200;

/// Why the server serves: what `understudy why --json` prints and `GET
/// /api/v1/groups/{group}/why` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// Why the current server of `group` serves, as of `now_ms`: the lease,
/// the hold (best effort) and the latest ledger entries, read and
/// [`explain`]ed. A group without a lease or a ledger yet is explained as
/// such, not refused.
pub async fn why(
    js: &jetstream::Context,
    group: &GroupName,
    now_ms: u64,
) -> Result<Why, LedgerError> {
    let lease = read_lease(js, group).await?;
    let hold = read_hold(js, group).await;
    let query = LedgerQuery {
        since_ms: None,
        limit: ENTRIES_READ,
    };
    let entries = match read_ledger(js, group, query).await {
        Ok(p) => p.entries,
        Err(LedgerError::NoLedger(_)) => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(explain(
        group,
        lease.as_ref(),
        &entries,
        hold.as_ref(),
        now_ms,
    ))
}

/// The lease as stored: the holder and its term (`None`: nobody holds it).
async fn read_lease(
    js: &jetstream::Context,
    group: &GroupName,
) -> Result<Option<(DeviceId, Term)>, LedgerError> {
    let unavailable = |reason: String| LedgerError::Unavailable {
        group: group.clone(),
        reason: format!("reading the lease: {reason}"),
    };
    let bucket = subjects::lease_bucket(group);
    let store = match tokio::time::timeout(ANSWER_WITHIN, js.get_key_value(&bucket)).await {
        Err(_) => return Err(unavailable("JetStream did not answer".into())),
        // No bucket: no device of the group has run yet.
        Ok(Err(_)) => return Ok(None),
        Ok(Ok(s)) => s,
    };
    let entry = tokio::time::timeout(ANSWER_WITHIN, store.entry(subjects::LEASE_KEY))
        .await
        .map_err(|_| unavailable("JetStream did not answer".into()))?
        .map_err(|e| unavailable(e.to_string()))?;
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

/// Unix milliseconds as an RFC 3339 time, to the second (UTC); the
/// milliseconds themselves when out of range.
pub fn rfc3339(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use understudy_protocol::SCHEMA_VERSION;

    fn entry(term: u64, cause: ElectionReason, rule: LedgerRule) -> LedgerEntry {
        LedgerEntry {
            group: "show".parse().unwrap(),
            term: Term::from_revision(term),
            cause,
            rule,
            ..LedgerEntry::example()
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
}
