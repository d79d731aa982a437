//! The answer to a roster request on `understudy.<group>.roster` (B9, B10):
//! the group's devices, its server and the counts, as one JSON document.
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
//! Decoding is tolerant of unknown fields, like the bus messages, so an older
//! reader can read a newer reply.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use understudy_protocol::{
    DeviceId, GroupName, InstanceId, Mac, Problem, Role, SCHEMA_VERSION, Score, StatusColour, Term,
};

use crate::core::Discovery;
use crate::core::counts::Counts;
use crate::core::roster::DeviceEntry;

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

/// One device as a roster reply shows it: [`DeviceEntry`] with its timing in
/// milliseconds ago instead of on the reporter's private clock.
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

impl From<DeviceEntry> for RosterDevice {
    fn from(e: DeviceEntry) -> Self {
        Self {
            device: e.device,
            group: e.group,
            instance: e.instance,
            mac: e.mac,
            score: e.score,
            online: e.online,
            role: e.role,
            term: e.term,
            in_grace: e.in_grace,
            colour: e.colour,
            problems: e.problems,
            live: e.live,
            last_seen_ms_ago: millis(e.silent_for),
            sent_at_ms: e.sent_at_ms,
            interval_ms: e.interval_ms,
            duplicate: e.duplicate,
            expected: e.expected,
        }
    }
}

impl RosterReply {
    /// What `discovery` knows of `group` at `now` (on the core's clock).
    pub fn build(discovery: &Discovery, group: &GroupName, now: Duration) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            group: group.clone(),
            reporter: discovery.me().clone(),
            server: discovery
                .server(group, now)
                .map(|(device, term)| ServerRef { device, term }),
            devices: discovery
                .roster(group, now)
                .into_iter()
                .map(RosterDevice::from)
                .collect(),
            counts: discovery.counts(Some(group), now),
            network_counts: discovery.counts(None, now),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testing::{beat, device, group, ms, session};
    use understudy_protocol::messages::InstanceKind;

    fn discovery() -> Discovery {
        let mut d = Discovery::new(device("me"), InstanceId::new(1), ms(0));
        d.set_bus_connected(true, ms(0));
        d.observe_heartbeat(&beat("g", "me", 1, 1), ms(0));
        let mut server = beat("g", "srv", 2, 1);
        server.role = Role::Server;
        server.term = Term::from_revision(7);
        d.observe_heartbeat(&server, ms(20));
        d.observe_heartbeat(&beat("h", "elsewhere", 3, 1), ms(20));
        d.observe_presence(&session(9, InstanceKind::Gui, Some("g")), ms(20));
        d
    }

    #[test]
    fn reply_describes_the_group_and_counts_the_network() {
        let reply = RosterReply::build(&discovery(), &group("g"), ms(60));
        assert_eq!(reply.reporter, device("me"));
        assert_eq!(
            reply.server,
            Some(ServerRef {
                device: device("srv"),
                term: Term::from_revision(7)
            })
        );
        let names: Vec<_> = reply.devices.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(names, ["me", "srv"]);
        assert_eq!(reply.devices[0].last_seen_ms_ago, 60);
        assert_eq!(reply.devices[1].last_seen_ms_ago, 40);
        assert_eq!((reply.counts.devices(), reply.counts.servers), (2, 1));
        assert_eq!(reply.counts.gui_sessions, 1);
        assert_eq!(reply.network_counts.devices(), 3);
    }

    #[test]
    fn reply_json_has_stable_snake_case_fields_and_milliseconds() {
        let reply = RosterReply::build(&discovery(), &group("g"), ms(60));
        let json = serde_json::to_value(&reply).expect("serialises");
        let mut keys: Vec<_> = json
            .as_object()
            .expect("an object")
            .keys()
            .cloned()
            .collect();
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
        assert_eq!(json["schema"], SCHEMA_VERSION);
        assert_eq!(json["server"]["device"], "srv");
        assert_eq!(json["server"]["term"], 7);
        let srv = &json["devices"][1];
        assert_eq!(srv["last_seen_ms_ago"], 40);
        assert_eq!(srv["role"], "server");
        assert!(srv.get("silent_for").is_none() && srv.get("last_seen").is_none());
        assert_eq!(json["counts"]["gui_sessions"], 1);
        let back: RosterReply = serde_json::from_value(json).expect("deserialises");
        assert_eq!(back, reply);
    }
}
