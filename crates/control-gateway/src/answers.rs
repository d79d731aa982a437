//! The documents the gateway answers with, as types: what `docs/openapi.json`
//! describes and HTTP and TCP both send (serialised here and nowhere else).
//!
//! The roster itself is the protocol's [`RosterReply`], passed through as the
//! devices reported it; the status document adds what a status bar shows at
//! a glance ([`StatusDocument`]).

use serde::Serialize;
use understudy_protocol::hold::HoldRecord;
use understudy_protocol::ledger::LedgerEntry;
use understudy_protocol::roster::{RosterDevice, RosterReply};
use understudy_protocol::{DeviceId, GroupName, Problem, Score, StatusColour, Term};

/// `{"groups":[{"group":"stage","devices":3}]}`: the groups seen in device
/// presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupList {
    /// One entry per group.
    pub groups: Vec<GroupSeen>,
}

/// A group and how many devices announce themselves in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupSeen {
    /// The group.
    pub group: GroupName,
    /// How many devices were heard in it recently.
    pub devices: usize,
}

/// A group's status: the roster document plus `term` (the server's, or
/// null), `colours` (live devices by the colour they show; a missing device
/// counts as grey) and `problems` (every device's problems, each with its
/// `device` and the human `text`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusDocument {
    /// The roster, as the first device that answered sees it.
    #[serde(flatten)]
    pub roster: RosterReply,
    /// The server's term, or `None` without a server.
    pub term: Option<Term>,
    /// Devices by the colour they show.
    pub colours: Colours,
    /// Every device's problems.
    pub problems: Vec<DeviceProblem>,
    /// The group's show hold (`null` when the gateway could not read it).
    pub hold: Option<HoldState>,
}

/// Whether a group is under a show hold now, and the hold as last stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HoldState {
    /// Whether the group is held now: on, and not lapsed.
    pub held: bool,
    /// The hold as last stored (`null`: never set); a lifted or lapsed hold
    /// says who set it and when.
    pub record: Option<HoldRecord>,
}

impl HoldState {
    /// The state at `now_ms` (Unix ms) of a stored hold.
    pub fn new(record: Option<HoldRecord>, now_ms: u64) -> Self {
        HoldState {
            held: record.as_ref().is_some_and(|r| r.in_effect(now_ms)),
            record,
        }
    }
}

/// `{"group","held","record"}`: a group's show hold (the same document as
/// `understudy hold status --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HoldAnswer {
    /// The group.
    pub group: GroupName,
    /// Whether it is held now, and the stored record.
    #[serde(flatten)]
    pub state: HoldState,
}

/// `{"group","entries","more"}`: entries of a group's election ledger,
/// oldest first (the entries `understudy ledger --json` prints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerAnswer {
    /// The group.
    pub group: GroupName,
    /// The entries: the latest `limit`, or the first `limit` at or after
    /// `since`; empty when the group has no ledger yet.
    pub entries: Vec<LedgerEntry>,
    /// Whether more entries follow the last one (a read `since` a time that
    /// hit its limit): read on from the last entry's `at_ms`.
    pub more: bool,
}

/// How many devices show each colour (B2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Colours {
    /// Offline, or missing.
    pub grey: u32,
    /// Online, and the group has a live server.
    pub blue: u32,
    /// Online with a problem.
    pub red: u32,
}

/// One device's problem, with the device and the text people read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceProblem {
    /// The problem: its `code` and details.
    #[serde(flatten)]
    pub problem: Problem,
    /// The device that reports it.
    pub device: DeviceId,
    /// What an operator reads (B2).
    pub text: String,
}

impl From<RosterReply> for StatusDocument {
    fn from(roster: RosterReply) -> Self {
        let mut colours = Colours::default();
        let mut problems = Vec::new();
        for d in &roster.devices {
            let n = match d.shown_colour() {
                StatusColour::Grey => &mut colours.grey,
                StatusColour::Blue => &mut colours.blue,
                StatusColour::Red => &mut colours.red,
            };
            *n = n.saturating_add(1);
            problems.extend(d.problems.iter().map(|p| DeviceProblem {
                problem: p.clone(),
                device: d.device.clone(),
                text: p.to_string(),
            }));
        }
        StatusDocument {
            term: roster.server.as_ref().map(|s| s.term),
            roster,
            colours,
            problems,
            hold: None,
        }
    }
}

/// `{"devices":[…]}`: the roster's device entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceList {
    /// The entries, sorted by device id.
    pub devices: Vec<RosterDevice>,
}

/// `{"group","device","score"}`: a device's score as it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScoreAnswer {
    /// The group.
    pub group: GroupName,
    /// The device.
    pub device: DeviceId,
    /// Its score.
    pub score: Score,
}

/// `{"group","device","score","server"}`: a score set, and the server the
/// device knew right after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetScoreAnswer {
    /// The group.
    pub group: GroupName,
    /// The device.
    pub device: DeviceId,
    /// Its new score.
    pub score: Score,
    /// The server it knew right after, if any.
    pub server: Option<DeviceId>,
}

/// `{"group","device","online"}`: a device taken online or offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OnlineAnswer {
    /// The group.
    pub group: GroupName,
    /// The device.
    pub device: DeviceId,
    /// Whether it is online now.
    pub online: bool,
}

/// `{"group","triggered":true,"held","device"}`: an election asked for and
/// taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TriggerAnswer {
    /// The group.
    pub group: GroupName,
    /// Always true (a trigger the group does not take is an error, `held`).
    pub triggered: bool,
    /// Whether the group was under a show hold (so the trigger was forced
    /// past it).
    pub held: bool,
    /// The device whose answer this is (every device acts on a trigger).
    pub device: DeviceId,
}

/// `{"authorised":true,"role":"admin"|"read"}`: a TCP connection's token
/// was accepted, with the role it gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthAnswer {
    /// Always true.
    pub authorised: bool,
    /// What the connection may now do: `admin` everything, `read` reads and
    /// subscriptions only.
    pub role: crate::auth::Role,
}

/// `{"group","subscribed":true}`: a TCP subscription started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscribeAnswer {
    /// The group followed.
    pub group: GroupName,
    /// Always true.
    pub subscribed: bool,
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use understudy_protocol::roster::examples::roster;

    use super::*;

    #[test]
    fn the_status_counts_colours_and_lists_problems_with_their_text() {
        let s = serde_json::to_value(StatusDocument::from(roster())).expect("serialises");
        assert_eq!(s["term"], 7);
        assert_eq!(s["colours"], json!({"grey": 2, "blue": 1, "red": 1}));
        assert_eq!(
            s["problems"],
            json!([{"code": "no_server", "device": "b", "text": "Project group has no server"}])
        );
        assert_eq!(s["reporter"], "a");
        assert_eq!(s["devices"][2]["device"], "c");
    }

    #[test]
    fn without_a_server_the_term_is_null() {
        let mut r = roster();
        r.server = None;
        let s = serde_json::to_value(StatusDocument::from(r)).expect("serialises");
        assert_eq!(s["term"], serde_json::Value::Null);
        assert_eq!(s["server"], serde_json::Value::Null);
    }
}
