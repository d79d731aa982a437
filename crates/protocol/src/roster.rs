//! The answer to a roster request on `understudy.<group>.roster` (B9, B10):
//! the group's devices, its server and the counts, as one JSON document.
//!
//! Any device's discovery service answers (the first answer is taken); the
//! CLI (`understudy status`) and the control gateway decode it into
//! [`RosterReply`] and read its fields. Discovery builds it from its core
//! through [`RosterSource`].
//!
//! This is a user-facing contract — `understudy status --json` prints it and
//! integrators parse it — so its field names are snake_case and stable: a
//! field may be added, never renamed or removed without bumping `schema`.
//! Durations are integer milliseconds, never `{secs, nanos}`, and times on a
//! process's private clock are not shown at all (they mean nothing to the
//! reader); only "how long ago" is.
//!
//! ```json
//! {
//!   "schema": 1,
//!   "group": "main-stage",
//!   "reporter": "desk-1",
//!   "server": { "device": "desk-2", "term": 7 },
//!   "devices": [
//!     { "device": "desk-1", "group": "main-stage", "instance": "00000000000000a1",
//!       "mac": "02:00:00:00:00:01", "score": 100, "online": true, "role": "client",
//!       "term": 7, "in_grace": false, "colour": "blue", "problems": [],
//!       "live": true, "last_seen_ms_ago": 40, "sent_at_ms": 1767225600000,
//!       "interval_ms": 100, "duplicate": false, "expected": true }
//!   ],
//!   "counts": { "devices_online": 2, "devices_offline": 0, "devices_missing": 0,
//!               "clients": 1, "servers": 1, "gui_sessions": 0, "control_sessions": 0 },
//!   "network_counts": { "...": "the same fields, every group of the network" }
//! }
//! ```
//!
//! Decoding ([`crate::messages::decode`]) checks `schema` first and is
//! tolerant of unknown fields, like the bus messages, so an older reader can
//! read a newer reply.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::messages::BusMessage;
use crate::{
    DeviceId, GroupName, InstanceId, Mac, Problem, Role, SCHEMA_VERSION, Score, StatusColour, Term,
};

/// The reply to a roster request: one device's view of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterReply {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The group described.
    pub group: GroupName,
    /// The device whose discovery service answered (any device of the group
    /// may; the first answer is taken).
    pub reporter: DeviceId,
    /// The live, online device reporting itself server with the highest term,
    /// if any.
    #[serde(default)]
    pub server: Option<ServerRef>,
    /// The group's devices, live or missing, sorted by device id.
    pub devices: Vec<RosterDevice>,
    /// The group's counts (B10).
    pub counts: Counts,
    /// The counts of the whole network, every group together (B10).
    pub network_counts: Counts,
}

/// The server of a group and its term.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRef {
    /// The server device.
    pub device: DeviceId,
    /// The term it serves under.
    pub term: Term,
}

/// One device as a roster reply shows it, its timing in milliseconds ago.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterDevice {
    /// The device.
    pub device: DeviceId,
    /// The group its newest heartbeat named.
    pub group: GroupName,
    /// Its newest instance (the live one, if any is live).
    pub instance: InstanceId,
    /// Its MAC.
    pub mac: Mac,
    /// Its score (B3).
    pub score: Score,
    /// Whether it says it is online (B1).
    pub online: bool,
    /// Its role as it reported it (residual when it is offline).
    pub role: Role,
    /// The newest term it knows.
    pub term: Term,
    /// Whether it is in its start-up grace (B6).
    pub in_grace: bool,
    /// The colour it reported for itself (B2).
    pub colour: StatusColour,
    /// The problems it reported for itself (B2).
    #[serde(default)]
    pub problems: Vec<Problem>,
    /// Whether it was heard within its stale window; `false` means missing.
    pub live: bool,
    /// How long before the reply it was last heard, in milliseconds.
    pub last_seen_ms_ago: u64,
    /// Its own wall clock when it sent its newest heartbeat, Unix
    /// milliseconds; for display only.
    pub sent_at_ms: u64,
    /// The heartbeat interval it advertises, in milliseconds.
    pub interval_ms: u32,
    /// Whether another live instance claims the same device id.
    pub duplicate: bool,
    /// Whether its group expects it (it went online there and neither left
    /// cleanly, went offline nor was forgotten).
    pub expected: bool,
}

impl RosterDevice {
    /// The colour an operator should see for it: the one it reports while
    /// it is live, grey once it is missing (B2: what a vanished device last
    /// said is residual).
    pub fn shown_colour(&self) -> StatusColour {
        if self.live {
            self.colour
        } else {
            StatusColour::Grey
        }
    }
}

/// How many instances of each kind are on the bus (B10).
///
/// Every device listed falls in exactly one of `devices_online`,
/// `devices_offline` (live but administratively offline, B1) and
/// `devices_missing` (no longer heard); the online ones split further into
/// `clients` and `servers` by the role they report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Live devices that are online.
    #[serde(default)]
    pub devices_online: u32,
    /// Live devices that are administratively offline.
    #[serde(default)]
    pub devices_offline: u32,
    /// Devices no longer heard (stale).
    #[serde(default)]
    pub devices_missing: u32,
    /// Live, online devices acting as clients.
    #[serde(default)]
    pub clients: u32,
    /// Live, online devices acting as servers (more than one in a group is a
    /// transient the election resolves).
    #[serde(default)]
    pub servers: u32,
    /// Live GUI (dashboard) sessions.
    #[serde(default)]
    pub gui_sessions: u32,
    /// Live control sessions.
    #[serde(default)]
    pub control_sessions: u32,
}

impl Counts {
    /// How many devices were counted: online, offline and missing together.
    pub fn devices(&self) -> u32 {
        self.devices_online
            .saturating_add(self.devices_offline)
            .saturating_add(self.devices_missing)
    }
}

/// What a roster reply is built from: a discovery service's view of the bus
/// at `now` (on the source's own clock, which the reply never shows).
pub trait RosterSource {
    /// The device that answers.
    fn roster_reporter(&self) -> DeviceId;
    /// The group's server and its term, if it has one.
    fn roster_server(&self, group: &GroupName, now: Duration) -> Option<ServerRef>;
    /// The group's devices, sorted by device id.
    fn roster_devices(&self, group: &GroupName, now: Duration) -> Vec<RosterDevice>;
    /// The counts of `group`, or of the whole network for `None`.
    fn roster_counts(&self, group: Option<&GroupName>, now: Duration) -> Counts;
}

impl BusMessage for RosterReply {
    const KIND: &'static str = "roster reply";
}

impl RosterReply {
    /// What `source` knows of `group` at `now`.
    pub fn build(source: &impl RosterSource, group: &GroupName, now: Duration) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            group: group.clone(),
            reporter: source.roster_reporter(),
            server: source.roster_server(group, now),
            devices: source.roster_devices(group, now),
            counts: source.roster_counts(Some(group), now),
            network_counts: source.roster_counts(None, now),
        }
    }

    /// The entry of `device`, if the roster lists it.
    pub fn device(&self, device: &DeviceId) -> Option<&RosterDevice> {
        self.devices.iter().find(|d| &d.device == device)
    }
}

/// Example rosters, for the tests of every crate that reads one (feature
/// `examples`; always on in this crate's tests).
#[cfg(any(test, feature = "examples"))]
pub mod examples {
    use super::{RosterDevice, RosterReply, ServerRef};
    use crate::roster::Counts;
    use crate::{InstanceId, Problem, Role, SCHEMA_VERSION, Score, StatusColour, Term};

    /// A client of group `stage` with score 100, term 7, heard 40 ms ago.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid device id.
    pub fn device(name: &str, live: bool, colour: StatusColour) -> RosterDevice {
        RosterDevice {
            device: name.parse().expect("an example device id"),
            group: "stage".parse().expect("a valid group"),
            instance: InstanceId::new(1),
            mac: crate::Mac::from_octets([2, 0, 0, 0, 0, 1]),
            score: Score::new(100),
            online: true,
            role: Role::Client,
            term: Term::from_revision(7),
            in_grace: false,
            colour,
            problems: Vec::new(),
            live,
            last_seen_ms_ago: 40,
            sent_at_ms: 1_767_225_600_000,
            interval_ms: 100,
            duplicate: false,
            expected: true,
        }
    }

    /// The roster of group `stage` as `a` reports it: `a` serves term 7
    /// (blue), `b` is red with no server, `c` is missing, `d` is grey.
    pub fn roster() -> RosterReply {
        let mut b = device("b", true, StatusColour::Red);
        b.problems = vec![Problem::NoServer];
        RosterReply {
            schema: SCHEMA_VERSION,
            group: "stage".parse().expect("a valid group"),
            reporter: "a".parse().expect("a valid device id"),
            server: Some(ServerRef {
                device: "a".parse().expect("a valid device id"),
                term: Term::from_revision(7),
            }),
            devices: vec![
                device("a", true, StatusColour::Blue),
                b,
                device("c", false, StatusColour::Blue),
                device("d", true, StatusColour::Grey),
            ],
            counts: Counts::default(),
            network_counts: Counts::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::examples::device as entry;
    use super::*;

    fn reply() -> RosterReply {
        RosterReply {
            schema: SCHEMA_VERSION,
            group: "stage".parse().unwrap(),
            reporter: "a".parse().unwrap(),
            server: Some(ServerRef {
                device: "a".parse().unwrap(),
                term: Term::from_revision(7),
            }),
            devices: vec![
                entry("a", true, StatusColour::Blue),
                entry("b", false, StatusColour::Blue),
            ],
            counts: Counts {
                devices_online: 1,
                devices_missing: 1,
                clients: 1,
                ..Counts::default()
            },
            network_counts: Counts::default(),
        }
    }

    #[test]
    fn the_reply_json_has_the_documented_snake_case_fields() {
        let json = serde_json::to_value(reply()).unwrap();
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "counts",
                "devices",
                "group",
                "network_counts",
                "reporter",
                "schema",
                "server"
            ]
        );
        assert_eq!(
            json["server"],
            serde_json::json!({"device": "a", "term": 7})
        );
        let mut device_keys: Vec<_> = json["devices"][0]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        device_keys.sort();
        assert_eq!(
            device_keys,
            [
                "colour",
                "device",
                "duplicate",
                "expected",
                "group",
                "in_grace",
                "instance",
                "interval_ms",
                "last_seen_ms_ago",
                "live",
                "mac",
                "online",
                "problems",
                "role",
                "score",
                "sent_at_ms",
                "term"
            ]
        );
        assert_eq!(
            json["counts"],
            serde_json::json!({
                "devices_online": 1, "devices_offline": 0, "devices_missing": 1,
                "clients": 1, "servers": 0, "gui_sessions": 0, "control_sessions": 0
            })
        );
    }

    #[test]
    fn a_newer_reply_with_unknown_fields_still_decodes() {
        let mut json = serde_json::to_value(reply()).unwrap();
        json["added_later"] = serde_json::json!({"x": 1});
        json["devices"][0]["added_later"] = serde_json::json!(true);
        json["counts"]["added_later"] = serde_json::json!(3);
        let back: RosterReply = serde_json::from_value(json).unwrap();
        assert_eq!(back, reply());
    }

    #[test]
    fn a_missing_device_shows_grey_whatever_it_last_said() {
        let r = reply();
        let a = r.device(&"a".parse().unwrap()).unwrap();
        let b = r.device(&"b".parse().unwrap()).unwrap();
        assert_eq!(a.shown_colour(), StatusColour::Blue);
        assert_eq!(b.shown_colour(), StatusColour::Grey);
        assert!(r.device(&"c".parse().unwrap()).is_none());
    }

    #[test]
    fn counts_add_up_the_three_device_buckets() {
        let c = Counts {
            devices_online: 2,
            devices_offline: 1,
            devices_missing: 3,
            ..Counts::default()
        };
        assert_eq!(c.devices(), 6);
    }
}
