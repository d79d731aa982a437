//! The election ledger: one entry per election, kept for the operator's
//! "why is that device the server?".
//!
//! The device that wins an election (or, on an operator trigger, keeps the
//! server) builds a [`LedgerEntry`] in its election core from what it saw
//! when it claimed — the cause, every candidate it heard with score, MAC and
//! online, the rule that decided, the previous server — adds the timings,
//! and appends it to the group's ledger stream
//! ([`crate::subjects::ledger_stream`], subject
//! [`crate::subjects::ledger`]). Entries are kept for the stream's age limit
//! (30 days unless configured) and read back by `understudy ledger`,
//! `understudy why` and `GET /api/v1/groups/{group}/ledger`.
//!
//! An entry is written once per term: it carries a `Nats-Msg-Id` made of the
//! term ([`LedgerEntry::msg_id`]), so a retry after a lost acknowledgement
//! is stored once.

use serde::{Deserialize, Serialize};

use crate::messages::{BusMessage, ElectionReason, StepDownReason};
use crate::{DeviceId, GroupName, Mac, Score, Term};

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    /// A device won the lease: a new term, a (possibly) new server.
    Elected,
    /// An operator asked for an election and the server was already the
    /// rightful one: it keeps its term.
    Kept,
    /// A kind this build does not know.
    #[serde(other)]
    Other,
}

/// The rule that decided between the candidates (B4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerRule {
    /// It was the only online device with a non-zero score.
    OnlyCandidate,
    /// It had the highest score.
    HighestScore,
    /// Equal best score: the lower MAC won the tie.
    LowerMac,
    /// Equal score and MAC (a misconfiguration): the lower device id won.
    DeviceId,
    /// The previous server named it as its successor in a hand-over,
    /// although it did not rank first in the winner's own view (its view
    /// was still catching up).
    NamedSuccessor,
    /// A rule this build does not know.
    #[serde(other)]
    Other,
}

impl LedgerRule {
    /// The rule as it is serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerRule::OnlyCandidate => "only_candidate",
            LedgerRule::HighestScore => "highest_score",
            LedgerRule::LowerMac => "lower_mac",
            LedgerRule::DeviceId => "device_id",
            LedgerRule::NamedSuccessor => "named_successor",
            LedgerRule::Other => "other",
        }
    }
}

/// A device as the winner saw it when it claimed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCandidate {
    /// The device.
    pub device: DeviceId,
    /// Its score then.
    pub score: Score,
    /// Its MAC.
    pub mac: Mac,
    /// Whether it was online (an offline device is never elected).
    pub online: bool,
}

/// The server before this entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousServer {
    /// The device, when the winner knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    /// Its term.
    pub term: Term,
    /// How it stopped serving, when it said so (a hand-over or a release:
    /// `hand_over`, `shutdown`, `offline`, `score_zero`); `None` when it
    /// was lost or its lease ran out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stepped_down: Option<StepDownReason>,
}

/// How long things took, as the winner measured them (milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerTimings {
    /// For a lost server: how long it had been silent when this device's
    /// failure detector gave it up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection_ms: Option<u64>,
    /// From when this device saw the group without a server (the loss
    /// verdict, the release, the lease gone, or its own start) to elected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vacant_ms: Option<u64>,
    /// The claim: from sending the compare-and-set to its success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_ms: Option<u64>,
    /// About how long the group had no server: detection plus vacancy (an
    /// upper bound on a lost server's last beat, by one beat interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub without_server_ms: Option<u64>,
}

/// One entry of a group's election ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Always [`crate::SCHEMA_VERSION`].
    pub schema: u32,
    /// The group.
    pub group: GroupName,
    /// Elected (a new term) or kept (an operator's election that changed
    /// nothing).
    pub kind: LedgerKind,
    /// The server from this entry on.
    pub server: DeviceId,
    /// Its term.
    pub term: Term,
    /// When it won (or kept) the server, Unix milliseconds, its own clock.
    pub at_ms: u64,
    /// Why the election was held: `server_lost`, `no_server` (the lease ran
    /// out or was released with no successor), `startup`, `score_changed`,
    /// `preemption` (a better device joined or came online), `hand_over`
    /// (the server shut down or was taken offline), `operator`.
    pub cause: ElectionReason,
    /// The rule that decided.
    pub rule: LedgerRule,
    /// Every device the winner heard when it claimed, itself included, best
    /// ranked first.
    pub candidates: Vec<LedgerCandidate>,
    /// The server before, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousServer>,
    /// Whether the group's show hold was on.
    #[serde(default)]
    pub held: bool,
    /// The timings.
    #[serde(default)]
    pub timings: LedgerTimings,
}

impl LedgerEntry {
    /// The `Nats-Msg-Id` the entry is published with: one entry per term
    /// (and per kept election, by time), so a retry is stored once.
    pub fn msg_id(&self) -> String {
        match self.kind {
            LedgerKind::Elected => format!("ledger-{}-{}", self.group, self.term),
            _ => format!("ledger-{}-{}-kept-{}", self.group, self.term, self.at_ms),
        }
    }

    /// The winner as a candidate, when it is among the candidates.
    pub fn winner(&self) -> Option<&LedgerCandidate> {
        self.candidates.iter().find(|c| c.device == self.server)
    }

    /// The best ranked other candidate with a non-zero score, online: the
    /// one the rule decided against.
    pub fn runner_up(&self) -> Option<&LedgerCandidate> {
        self.candidates
            .iter()
            .find(|c| c.device != self.server && c.online && c.score.is_candidate())
    }
}

impl LedgerEntry {
    /// An example entry with every field set, as docs/bus.md shows one:
    /// dev-2 elected at term 41 in group `show` after dev-1 (term 37) was
    /// lost, winning the tie at score 200 over dev-3 by the lower MAC (a
    /// third device, dev-4, had score 100). For documentation and tests.
    pub fn example() -> LedgerEntry {
        let id = |s: &str| s.parse::<DeviceId>().expect("a valid device id");
        let candidate = |device: &str, score: u8, mac: u64| LedgerCandidate {
            device: id(device),
            score: Score::new(score),
            mac: Mac::from_u64(mac).expect("a 48-bit MAC"),
            online: true,
        };
        LedgerEntry {
            schema: crate::SCHEMA_VERSION,
            group: "show".parse().expect("a valid group name"),
            kind: LedgerKind::Elected,
            server: id("dev-2"),
            term: Term::from_revision(41),
            at_ms: 1_764_637_384_000,
            cause: ElectionReason::ServerLost,
            rule: LedgerRule::LowerMac,
            candidates: vec![
                candidate("dev-2", 200, 1),
                candidate("dev-3", 200, 2),
                candidate("dev-4", 100, 3),
            ],
            previous: Some(PreviousServer {
                device: Some(id("dev-1")),
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
}

impl BusMessage for LedgerEntry {
    const KIND: &'static str = "ledger entry";
}

/// How long a ledger keeps its entries unless configured: 30 days.
pub const DEFAULT_RETENTION_SECS: u64 = 30 * 24 * 3600;

/// The most entries a group's ledger keeps, whatever their age (the oldest
/// go first): a flapping group cannot fill the disk.
pub const MAX_ENTRIES: i64 = 100_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{decode, encode};

    fn entry() -> LedgerEntry {
        LedgerEntry::example()
    }

    #[test]
    fn an_entry_round_trips_through_json() {
        let e = entry();
        let back: LedgerEntry = decode(&encode(&e)).unwrap();
        assert_eq!(back, e);
        assert_eq!(e.winner().unwrap().device.as_str(), "dev-2");
        assert_eq!(e.runner_up().unwrap().device.as_str(), "dev-3");
    }

    #[test]
    fn unknown_kinds_rules_and_causes_still_read() {
        let mut v = serde_json::to_value(entry()).unwrap();
        v["kind"] = "renamed".into();
        v["rule"] = "coin_toss".into();
        v["cause"] = "sunspots".into();
        let back: LedgerEntry = serde_json::from_value(v).unwrap();
        assert_eq!(back.kind, LedgerKind::Other);
        assert_eq!(back.rule, LedgerRule::Other);
        assert_eq!(back.cause, ElectionReason::Other);
    }

    #[test]
    fn one_message_id_per_term() {
        let a = entry();
        let mut b = entry();
        b.at_ms += 5;
        assert_eq!(
            a.msg_id(),
            b.msg_id(),
            "a retry of the same term is one entry"
        );
        b.kind = LedgerKind::Kept;
        assert_ne!(a.msg_id(), b.msg_id());
    }
}
