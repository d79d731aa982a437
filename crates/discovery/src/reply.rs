//! The answer to a roster request on `understudy.<group>.roster` (B9, B10),
//! built from the core.
//!
//! The reply's type and its JSON contract live in the protocol
//! ([`understudy_protocol::roster`]), where the CLI and the control gateway
//! decode it; this module only says how [`Discovery`] fills it in: the
//! timing of each device as milliseconds ago instead of on the core's
//! private clock, and the counts of the group and of the whole network.

use std::time::Duration;

use understudy_protocol::roster::{self, RosterDevice, RosterSource, ServerRef};
use understudy_protocol::{DeviceId, GroupName};

pub use understudy_protocol::roster::RosterReply;

use crate::core::Discovery;
use crate::core::counts::Counts;
use crate::core::roster::DeviceEntry;

impl RosterSource for Discovery {
    fn roster_reporter(&self) -> DeviceId {
        self.me().clone()
    }

    fn roster_server(&self, group: &GroupName, now: Duration) -> Option<ServerRef> {
        self.server(group, now)
            .map(|(device, term)| ServerRef { device, term })
    }

    fn roster_devices(&self, group: &GroupName, now: Duration) -> Vec<RosterDevice> {
        self.roster(group, now)
            .into_iter()
            .map(roster_device)
            .collect()
    }

    fn roster_counts(&self, group: Option<&GroupName>, now: Duration) -> roster::Counts {
        wire_counts(self.counts(group, now))
    }
}

/// One roster entry as the reply shows it.
fn roster_device(e: DeviceEntry) -> RosterDevice {
    RosterDevice {
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

fn wire_counts(c: Counts) -> roster::Counts {
    roster::Counts {
        devices_online: c.devices_online,
        devices_offline: c.devices_offline,
        devices_missing: c.devices_missing,
        clients: c.clients,
        servers: c.servers,
        gui_sessions: c.gui_sessions,
        control_sessions: c.control_sessions,
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
    use understudy_protocol::{InstanceId, Role, SCHEMA_VERSION, Term};

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
    fn the_built_reply_carries_milliseconds_not_durations() {
        // The field names are the protocol's (tested there); this checks what
        // discovery puts in them.
        let reply = RosterReply::build(&discovery(), &group("g"), ms(60));
        let json = serde_json::to_value(&reply).expect("serialises");
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
