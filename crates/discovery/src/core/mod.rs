//! The sans-IO core of the discovery service: every decision, with time as
//! a parameter; the driver only carries them out.
//!
//! - [`roster`]: every device instance and session heard on the bus, with
//!   staleness, clean leaves, duplicate ids and the peers a group expects.
//! - [`status`]: this device's colour and problems (B1, B2).
//! - [`counts`]: the status-bar counts, per group and network-wide (B10).
//!
//! [`Discovery`] ties them together for the driver: it feeds bus messages and
//! the bus connection state in, and asks for the roster, the server, this
//! device's status and the counts. Time is a [`Duration`] from any origin the
//! caller likes, as long as it does not run backwards; nothing here reads a
//! clock, spawns a task or does I/O, and nothing panics on what the network
//! sends.

pub mod counts;
pub mod roster;
pub mod status;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use understudy_protocol::messages::{Heartbeat, Leave, Presence};
use understudy_protocol::{DeviceId, GroupName, InstanceId, Role, Term};

use self::counts::Counts;
use self::roster::{DeviceEntry, Roster, SessionEntry};
use self::status::{Findings, SelfState, Status};

/// The state of this device's connection to the message bus, as the driver
/// last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusLink {
    /// Whether the driver holds a connection.
    pub connected: bool,
    /// Since when (the caller's clock): the last change, or the start.
    pub since: Duration,
}

/// The discovery service's decision logic for one device.
#[derive(Debug, Clone)]
pub struct Discovery {
    roster: Roster,
    bus: BusLink,
    project_conflicts: u32,
}

impl Discovery {
    /// The core of device `me`, process `instance`, started at `now`.
    ///
    /// The bus counts as unreachable until the driver reports a connection with
    /// [`Discovery::set_bus_connected`].
    pub fn new(me: DeviceId, instance: InstanceId, now: Duration) -> Self {
        Self {
            roster: Roster::new(me, instance, now),
            bus: BusLink {
                connected: false,
                since: now,
            },
            project_conflicts: 0,
        }
    }

    /// The project-sync service reports how many of this device's project
    /// changes wait in `conflicts/` for an operator (B11: reported, not lost).
    pub fn set_project_conflicts(&mut self, changes: u32) {
        self.project_conflicts = changes;
    }

    /// This device.
    pub fn me(&self) -> &DeviceId {
        self.roster.me()
    }

    /// This device's identity: the instance it beats under.
    pub fn identity(&self) -> InstanceId {
        self.roster.my_instance()
    }

    /// This device's identity is its election service's instance: the one
    /// named in the lease, under which its heartbeat service beats. When the
    /// services run as separate processes, that is not this process, and it
    /// changes when the election service restarts. Adopting `instance` at
    /// `now` starts the roster afresh under it, so this device's own beats
    /// are not taken for a duplicate (B2); the bus link and the project
    /// conflicts are kept. Returns whether the identity changed.
    pub fn adopt_identity(&mut self, instance: InstanceId, now: Duration) -> bool {
        if instance == self.identity() {
            return false;
        }
        self.roster = Roster::new(self.roster.me().clone(), instance, now);
        true
    }

    /// Takes in a heartbeat (this device's own echo included, so it is listed).
    /// Returns `false` if it was ignored as old or out of order.
    pub fn observe_heartbeat(&mut self, beat: &Heartbeat, now: Duration) -> bool {
        self.roster.observe_heartbeat(beat, now)
    }

    /// Takes in a presence announcement (GUI and control sessions). Returns
    /// `false` if it was ignored.
    pub fn observe_presence(&mut self, presence: &Presence, now: Duration) -> bool {
        self.roster.observe_presence(presence, now)
    }

    /// Takes in a clean goodbye. Returns `false` if it changed nothing.
    pub fn observe_leave(&mut self, leave: &Leave, now: Duration) -> bool {
        self.roster.observe_leave(leave, now)
    }

    /// Drops what expired by `now` (stale sessions, devices that left).
    pub fn poll(&mut self, now: Duration) {
        self.roster.poll(now);
    }

    /// When something next goes stale if nothing more is heard: the moment to
    /// call [`Discovery::poll`] and recompute the status.
    pub fn next_deadline(&self, now: Duration) -> Option<Duration> {
        self.roster.next_deadline(now)
    }

    /// The driver reports whether it holds a connection to the bus.
    pub fn set_bus_connected(&mut self, connected: bool, now: Duration) {
        if connected != self.bus.connected {
            self.bus = BusLink {
                connected,
                since: now,
            };
        }
    }

    /// The bus connection as last reported.
    pub fn bus(&self) -> BusLink {
        self.bus
    }

    /// An operator removes `device` from the roster and the expected set.
    /// Returns whether it was known.
    pub fn forget(&mut self, device: &DeviceId) -> bool {
        self.roster.forget(device)
    }

    /// The devices of `group`, live or missing, sorted by device id.
    pub fn roster(&self, group: &GroupName, now: Duration) -> Vec<DeviceEntry> {
        self.roster.roster(group, now)
    }

    /// Every device on the network, sorted by device id.
    pub fn all_devices(&self, now: Duration) -> Vec<DeviceEntry> {
        self.roster.all_devices(now)
    }

    /// The live GUI and control sessions of `group` (`None`: network-wide).
    pub fn sessions(&self, group: Option<&GroupName>, now: Duration) -> Vec<SessionEntry> {
        self.roster.sessions(group, now)
    }

    /// The live, online device of `group` reporting itself server with the
    /// highest term.
    pub fn server(&self, group: &GroupName, now: Duration) -> Option<(DeviceId, Term)> {
        self.roster.server(group, now)
    }

    /// The table itself, for queries the facade does not forward.
    pub fn table(&self) -> &Roster {
        &self.roster
    }

    /// What this device finds about its situation in its group `me.group`.
    pub fn findings(&self, now: Duration, me: &SelfState) -> Findings {
        let peers = self.roster.expected_peers(&me.group, now);
        let self_serves = me.online && me.role == Role::Server;
        Findings {
            bus_connected: self.bus.connected,
            duplicate_id: self.roster.my_id_is_duplicated(now),
            server_live: self_serves || self.roster.has_live_server_besides_me(&me.group, now),
            expected_peers: peers.expected,
            live_peers: peers.live,
            project_conflicts: self.project_conflicts,
        }
    }

    /// This device's colour and problems (B1, B2).
    pub fn status(&self, now: Duration, me: &SelfState) -> Status {
        if !me.online {
            return Status::offline();
        }
        status::assess(me.online, &self.findings(now, me))
    }

    /// The counts of `group` (`None`: network-wide) (B10).
    pub fn counts(&self, group: Option<&GroupName>, now: Duration) -> Counts {
        let devices = match group {
            Some(group) => self.roster.roster(group, now),
            None => self.roster.all_devices(now),
        };
        let sessions = self.roster.sessions(group, now);
        let mut counts = Counts::tally(&devices, &sessions);
        for (_, remote) in self.roster.remote_devices() {
            if group.is_none_or(|g| *g == remote.group) {
                counts.add_device(remote.is_live(now), remote.online, remote.role);
            }
        }
        counts
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builders for the tests of this crate.

    use std::time::Duration;

    use understudy_protocol::messages::{Heartbeat, InstanceKind, Leave, Presence};
    use understudy_protocol::{
        DeviceId, GroupName, InstanceId, Mac, Role, SCHEMA_VERSION, Score, StatusColour, Term,
    };

    pub fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    pub fn group(name: &str) -> GroupName {
        name.parse().expect("test group names are valid")
    }

    pub fn device(name: &str) -> DeviceId {
        name.parse().expect("test device ids are valid")
    }

    /// An online client's heartbeat, beating every 100 ms.
    pub fn beat(group_name: &str, device_name: &str, instance: u64, seq: u64) -> Heartbeat {
        Heartbeat {
            schema: SCHEMA_VERSION,
            group: group(group_name),
            device: device(device_name),
            instance: InstanceId::new(instance),
            mac: Mac::from_octets([0, 0, 0, 0, 0, instance.to_le_bytes()[0]]),
            score: Score::new(10),
            online: true,
            role: Role::Client,
            term: Term::ZERO,
            in_grace: false,
            colour: StatusColour::Blue,
            problems: Vec::new(),
            seq,
            interval_ms: 100,
            sent_at_ms: 1_700_000_000_000 + seq,
        }
    }

    pub fn leave(group_name: &str, device_name: &str, instance: u64) -> Leave {
        Leave {
            schema: SCHEMA_VERSION,
            group: group(group_name),
            device: device(device_name),
            instance: InstanceId::new(instance),
            reason: "shutdown".into(),
        }
    }

    /// A session's presence, announced every second.
    pub fn session(instance: u64, kind: InstanceKind, group_name: Option<&str>) -> Presence {
        Presence {
            schema: SCHEMA_VERSION,
            instance: InstanceId::new(instance),
            kind,
            device: None,
            group: group_name.map(group),
            online: true,
            role: None,
            interval_ms: 1_000,
            sent_at_ms: 1_700_000_000_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{beat, device, group, leave, ms, session};
    use super::*;
    use understudy_protocol::messages::InstanceKind;
    use understudy_protocol::{Mac, Problem, Score, StatusColour};

    const ME: u64 = 1;

    fn me(online: bool, role: Role) -> SelfState {
        SelfState {
            group: group("g"),
            online,
            role,
            term: Term::ZERO,
            score: Score::new(10),
            mac: Mac::from_octets([0, 0, 0, 0, 0, 1]),
            in_grace: false,
        }
    }

    /// A discovery core on a connected bus, with this device ("me") beating
    /// online in group "g".
    fn connected() -> Discovery {
        let mut d = Discovery::new(device("me"), InstanceId::new(ME), ms(0));
        d.set_bus_connected(true, ms(0));
        d.observe_heartbeat(&beat("g", "me", ME, 1), ms(0));
        d
    }

    fn server_beat(group_name: &str, name: &str, instance: u64, seq: u64) -> Heartbeat {
        let mut b = beat(group_name, name, instance, seq);
        b.role = Role::Server;
        b.term = Term::from_revision(4);
        b
    }

    #[test]
    fn offline_device_is_grey() {
        let d = Discovery::new(device("me"), InstanceId::new(ME), ms(0));
        let s = d.status(ms(10), &me(false, Role::Client));
        assert_eq!(s.colour, StatusColour::Grey);
        assert!(
            s.problems.is_empty(),
            "no live problems for an offline device"
        );
    }

    #[test]
    fn online_device_with_a_live_server_is_blue() {
        let mut d = connected();
        d.observe_heartbeat(&server_beat("g", "srv", 20, 1), ms(0));
        let s = d.status(ms(10), &me(true, Role::Client));
        assert_eq!(s, Status::online(vec![]));
        assert_eq!(s.colour, StatusColour::Blue);
    }

    #[test]
    fn serving_myself_counts_as_a_live_server() {
        let d = connected();
        assert_eq!(
            d.status(ms(10), &me(true, Role::Server)).colour,
            StatusColour::Blue
        );
    }

    #[test]
    fn no_server_makes_online_device_red() {
        let mut d = connected();
        d.observe_heartbeat(&beat("g", "peer", 20, 1), ms(0));
        // A server in another group does not count.
        d.observe_heartbeat(&server_beat("other", "srv", 21, 1), ms(0));
        let s = d.status(ms(10), &me(true, Role::Client));
        assert_eq!(s.colour, StatusColour::Red);
        assert_eq!(s.problems, vec![Problem::NoServer]);
        assert_eq!(s.problems[0].to_string(), "Project group has no server");
    }

    #[test]
    fn server_that_went_silent_is_no_server() {
        let mut d = connected();
        d.observe_heartbeat(&server_beat("g", "srv", 20, 1), ms(0));
        d.observe_heartbeat(&beat("g", "me", ME, 2), ms(250));
        let s = d.status(ms(300), &me(true, Role::Client));
        assert!(s.problems.contains(&Problem::NoServer), "{s:?}");
    }

    #[test]
    fn offline_server_is_no_server() {
        let mut d = connected();
        let mut b = server_beat("g", "srv", 20, 1);
        b.online = false;
        d.observe_heartbeat(&b, ms(0));
        let s = d.status(ms(10), &me(true, Role::Client));
        assert_eq!(s.problems, vec![Problem::NoServer]);
    }

    #[test]
    fn missing_peer_is_named_with_expected_and_actual() {
        let mut d = connected();
        d.observe_heartbeat(&server_beat("g", "a", 20, 1), ms(0));
        d.observe_heartbeat(&beat("g", "b", 21, 1), ms(0));
        d.observe_heartbeat(&beat("g", "c", 22, 1), ms(0));
        // a and b keep beating; c falls silent.
        for (seq, t) in [(2, 100), (3, 200), (4, 300)] {
            d.observe_heartbeat(&server_beat("g", "a", 20, seq), ms(t));
            d.observe_heartbeat(&beat("g", "b", 21, seq), ms(t));
        }
        let s = d.status(ms(310), &me(true, Role::Client));
        assert_eq!(s.colour, StatusColour::Red);
        assert_eq!(
            s.problems,
            vec![Problem::MissingPeers {
                expected: 3,
                actual: 2
            }]
        );
        assert_eq!(
            s.problems[0].to_string(),
            "Not receiving peer data from 1 peer(s): expected 3, actual 2"
        );
        let c = d
            .roster(&group("g"), ms(310))
            .into_iter()
            .find(|e| e.device == device("c"))
            .expect("a missing device stays listed");
        assert!(!c.live);
    }

    #[test]
    fn missing_peer_that_comes_back_clears_the_problem() {
        let mut d = connected();
        d.observe_heartbeat(&server_beat("g", "a", 20, 1), ms(0));
        d.observe_heartbeat(&server_beat("g", "a", 20, 2), ms(400));
        assert_eq!(
            d.status(ms(400), &me(true, Role::Client)).colour,
            StatusColour::Blue
        );
    }

    #[test]
    fn clean_leave_is_not_missing() {
        let mut d = connected();
        d.observe_heartbeat(&server_beat("g", "a", 20, 1), ms(0));
        d.observe_heartbeat(&beat("g", "b", 21, 1), ms(0));
        assert!(d.observe_leave(&leave("g", "b", 21), ms(50)));
        d.observe_heartbeat(&server_beat("g", "a", 20, 2), ms(250));
        d.observe_heartbeat(&beat("g", "me", ME, 2), ms(250));
        let s = d.status(ms(400), &me(true, Role::Client));
        assert_eq!(s.colour, StatusColour::Blue, "{s:?}");
        let counts = d.counts(Some(&group("g")), ms(400));
        assert_eq!(counts.devices_missing, 0);
        assert_eq!(counts.devices(), 2, "me and a");
    }

    #[test]
    fn going_offline_administratively_is_not_missing() {
        let mut d = connected();
        d.observe_heartbeat(&server_beat("g", "a", 20, 1), ms(0));
        d.observe_heartbeat(&beat("g", "b", 21, 1), ms(0));
        let mut off = beat("g", "b", 21, 2);
        off.online = false;
        off.colour = StatusColour::Grey;
        d.observe_heartbeat(&off, ms(50));
        // b then vanishes altogether; it was not expected any more.
        d.observe_heartbeat(&server_beat("g", "a", 20, 2), ms(250));
        d.observe_heartbeat(&beat("g", "me", ME, 2), ms(250));
        let s = d.status(ms(400), &me(true, Role::Client));
        assert_eq!(s.colour, StatusColour::Blue, "{s:?}");
        assert_eq!(d.counts(Some(&group("g")), ms(400)).devices_missing, 1);
    }

    #[test]
    fn forgotten_device_is_not_missing() {
        let mut d = connected();
        d.observe_heartbeat(&beat("g", "b", 21, 1), ms(0));
        let s = d.status(ms(500), &me(true, Role::Server));
        assert!(matches!(s.problems[..], [Problem::MissingPeers { .. }]));
        assert!(d.forget(&device("b")));
        assert_eq!(
            d.status(ms(500), &me(true, Role::Server)).colour,
            StatusColour::Blue
        );
    }

    #[test]
    fn restart_is_not_a_duplicate() {
        let mut d = connected();
        d.observe_heartbeat(&server_beat("g", "a", 20, 1), ms(0));
        d.observe_heartbeat(&server_beat("g", "a", 20, 2), ms(100));
        // a restarts: a new instance, the old one silent from now on.
        d.observe_heartbeat(&server_beat("g", "a", 30, 1), ms(150));
        d.observe_heartbeat(&server_beat("g", "a", 30, 2), ms(250));
        let entry = &d.roster(&group("g"), ms(260))[0];
        assert_eq!(entry.device, device("a"));
        assert!(!entry.duplicate);
        assert_eq!(entry.instance, InstanceId::new(30));
        assert_eq!(
            d.status(ms(260), &me(true, Role::Client)).colour,
            StatusColour::Blue
        );
    }

    #[test]
    fn two_live_instances_of_one_id_are_duplicates() {
        let mut d = connected();
        d.observe_heartbeat(&server_beat("g", "a", 20, 1), ms(0));
        d.observe_heartbeat(&beat("g", "a", 30, 1), ms(50));
        d.observe_heartbeat(&server_beat("g", "a", 20, 2), ms(100));
        d.observe_heartbeat(&beat("g", "a", 30, 2), ms(150));
        let entry = &d.roster(&group("g"), ms(160))[0];
        assert!(entry.duplicate);
        // Someone else's duplicate is shown on its entry, not as my problem.
        assert!(
            !d.status(ms(160), &me(true, Role::Client))
                .problems
                .contains(&Problem::DuplicateDeviceId)
        );
    }

    #[test]
    fn my_duplicate_is_my_problem() {
        let mut d = connected();
        d.observe_heartbeat(&beat("g", "me", 77, 1), ms(10));
        let s = d.status(ms(20), &me(true, Role::Server));
        assert_eq!(s.problems, vec![Problem::DuplicateDeviceId]);
        assert_eq!(s.problems[0].to_string(), "Duplicate device id");
        let mine = &d.roster(&group("g"), ms(20))[0];
        assert!(mine.duplicate);
    }

    #[test]
    fn beats_under_the_adopted_election_instance_are_mine_not_a_duplicate() {
        // The services run apart: the device beats under its election
        // service's instance (77), not this process's (ME).
        let mut d = Discovery::new(device("me"), InstanceId::new(ME), ms(0));
        d.set_bus_connected(true, ms(0));
        d.set_project_conflicts(1);
        assert!(d.adopt_identity(InstanceId::new(77), ms(5)));
        assert!(!d.adopt_identity(InstanceId::new(77), ms(6)), "no change");
        assert_eq!(d.identity(), InstanceId::new(77));
        d.observe_heartbeat(&beat("g", "me", 77, 1), ms(10));
        let s = d.status(ms(20), &me(true, Role::Server));
        assert_eq!(
            s.problems,
            vec![Problem::ProjectConflict { changes: 1 }],
            "no duplicate; the bus link and the conflicts are kept"
        );
    }

    #[test]
    fn bus_loss_is_a_problem() {
        let mut d = connected();
        d.set_bus_connected(false, ms(5));
        let s = d.status(ms(10), &me(true, Role::Server));
        assert_eq!(s.colour, StatusColour::Red);
        assert_eq!(s.problems, vec![Problem::BusUnreachable]);
        assert_eq!(s.problems[0].to_string(), "Cannot reach the message bus");
        assert_eq!(
            d.bus(),
            BusLink {
                connected: false,
                since: ms(5)
            }
        );
        d.set_bus_connected(true, ms(20));
        assert_eq!(
            d.status(ms(30), &me(true, Role::Server)).colour,
            StatusColour::Blue
        );
    }

    #[test]
    fn bus_is_unreachable_until_the_driver_says_otherwise() {
        let d = Discovery::new(device("me"), InstanceId::new(ME), ms(0));
        let s = d.status(ms(0), &me(true, Role::Server));
        assert_eq!(s.problems, vec![Problem::BusUnreachable]);
    }

    #[test]
    fn problems_keep_their_order() {
        let mut d = connected();
        d.set_bus_connected(false, ms(0));
        d.observe_heartbeat(&beat("g", "b", 21, 1), ms(0));
        d.observe_heartbeat(&beat("g", "me", 77, 1), ms(100));
        d.observe_heartbeat(&beat("g", "me", 77, 2), ms(200));
        let s = d.status(ms(300), &me(true, Role::Client));
        assert_eq!(
            s.problems,
            vec![
                Problem::BusUnreachable,
                Problem::DuplicateDeviceId,
                Problem::NoServer,
                Problem::MissingPeers {
                    expected: 1,
                    actual: 0
                }
            ]
        );
    }

    #[test]
    fn counts_include_offline_devices_and_sessions() {
        let mut d = connected();
        d.observe_heartbeat(&server_beat("g", "a", 20, 1), ms(0));
        let mut off = beat("g", "b", 21, 1);
        off.online = false;
        d.observe_heartbeat(&off, ms(0));
        d.observe_heartbeat(&beat("g", "gone", 22, 1), ms(0));
        d.observe_heartbeat(&beat("h", "elsewhere", 23, 1), ms(200));
        d.observe_presence(&session(40, InstanceKind::Gui, Some("g")), ms(0));
        d.observe_presence(&session(41, InstanceKind::Gui, None), ms(0));
        d.observe_presence(&session(42, InstanceKind::Control, Some("h")), ms(0));
        // Everyone but "gone" keeps beating.
        for (name, inst) in [("me", ME), ("a", 20), ("b", 21)] {
            let mut b = if name == "a" {
                server_beat("g", name, inst, 2)
            } else {
                beat("g", name, inst, 2)
            };
            b.online = name != "b";
            d.observe_heartbeat(&b, ms(200));
        }
        d.poll(ms(350));

        let g = d.counts(Some(&group("g")), ms(350));
        assert_eq!(
            g,
            Counts {
                devices_online: 2,
                devices_offline: 1,
                devices_missing: 1,
                clients: 1,
                servers: 1,
                gui_sessions: 1,
                control_sessions: 0,
            }
        );
        let all = d.counts(None, ms(350));
        assert_eq!(
            all,
            Counts {
                devices_online: 3,
                devices_offline: 1,
                devices_missing: 1,
                clients: 2,
                servers: 1,
                gui_sessions: 2,
                control_sessions: 1,
            }
        );
    }

    #[test]
    fn devices_of_other_groups_are_counted_from_their_presence() {
        let mut d = connected();
        d.observe_heartbeat(&server_beat("g", "a", 20, 1), ms(0));
        let presence = |name: &str, instance: u64, online: bool, role: Role| {
            let mut p = session(instance, InstanceKind::Device, Some("h"));
            p.device = Some(device(name));
            p.online = online;
            p.role = Some(role);
            p
        };
        d.observe_presence(&presence("h-1", 50, true, Role::Server), ms(0));
        d.observe_presence(&presence("h-2", 51, true, Role::Client), ms(0));
        d.observe_presence(&presence("h-3", 52, false, Role::Client), ms(0));
        let h = d.counts(Some(&group("h")), ms(100));
        assert_eq!(
            (h.devices_online, h.devices_offline, h.servers, h.clients),
            (2, 1, 1, 1)
        );
        let all = d.counts(None, ms(100));
        assert_eq!(
            (all.devices(), all.servers, all.clients),
            (5, 2, 2),
            "me, a and h-1..3"
        );
        assert!(
            d.roster(&group("h"), ms(100)).is_empty(),
            "not in any roster reply"
        );
        // Silent for three presence intervals: missing, still counted.
        let later = d.counts(Some(&group("h")), ms(3_000));
        assert_eq!((later.devices_missing, later.devices()), (3, 3));
    }

    #[test]
    fn counts_are_kept_while_this_device_is_offline() {
        let mut d = connected();
        d.observe_heartbeat(&server_beat("g", "a", 20, 1), ms(0));
        d.observe_presence(&session(40, InstanceKind::Control, Some("g")), ms(0));
        assert_eq!(
            d.status(ms(10), &me(false, Role::Client)),
            Status::offline()
        );
        let counts = d.counts(Some(&group("g")), ms(10));
        assert_eq!(counts.servers, 1);
        assert_eq!(counts.control_sessions, 1);
    }

    #[test]
    fn server_query_names_the_group_server() {
        let mut d = connected();
        d.observe_heartbeat(&server_beat("g", "a", 20, 1), ms(0));
        assert_eq!(
            d.server(&group("g"), ms(10)),
            Some((device("a"), Term::from_revision(4)))
        );
    }
}

#[cfg(test)]
mod properties {
    //! Random sequences of bus messages, bus changes, polls and forgets.

    use super::testing::{beat, device, group, leave, session};
    use super::*;
    use proptest::prelude::*;
    use understudy_protocol::messages::InstanceKind;
    use understudy_protocol::{Mac, Problem, Score, StatusColour};

    const GROUPS: [&str; 2] = ["g", "h"];
    const DEVICES: [&str; 4] = ["me", "a", "b", "c"];

    #[derive(Debug, Clone)]
    enum Op {
        Beat {
            group: usize,
            device: usize,
            instance: u64,
            seq: u64,
            online: bool,
            server: bool,
            interval_ms: u32,
            term: u64,
        },
        Leave {
            group: usize,
            device: usize,
            instance: u64,
        },
        Session {
            instance: u64,
            gui: bool,
            group: Option<usize>,
            online: bool,
            interval_ms: u32,
        },
        Bus(bool),
        Poll,
        Forget(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..2usize, 0..4usize, 1..4u64, 0..8u64, any::<bool>(), any::<bool>(),
                  prop_oneof![Just(0u32), Just(100), 1..500u32, Just(u32::MAX)], 0..5u64)
                .prop_map(|(group, device, instance, seq, online, server, interval_ms, term)| Op::Beat {
                    group, device, instance, seq, online, server, interval_ms, term,
                }),
            1 => (0..2usize, 0..4usize, 1..4u64)
                .prop_map(|(group, device, instance)| Op::Leave { group, device, instance }),
            2 => (100..104u64, any::<bool>(), proptest::option::of(0..2usize), any::<bool>(), 0..2_000u32)
                .prop_map(|(instance, gui, group, online, interval_ms)| Op::Session {
                    instance, gui, group, online, interval_ms,
                }),
            1 => any::<bool>().prop_map(Op::Bus),
            1 => Just(Op::Poll),
            1 => (0..4usize).prop_map(Op::Forget),
        ]
    }

    fn apply(d: &mut Discovery, op: &Op, now: Duration) {
        match op {
            Op::Beat {
                group: g,
                device: dev,
                instance,
                seq,
                online,
                server,
                interval_ms,
                term,
            } => {
                let mut b = beat(GROUPS[*g], DEVICES[*dev], *instance, *seq);
                b.online = *online;
                b.role = if *server { Role::Server } else { Role::Client };
                b.interval_ms = *interval_ms;
                b.term = Term::from_revision(*term);
                d.observe_heartbeat(&b, now);
            }
            Op::Leave {
                group: g,
                device: dev,
                instance,
            } => {
                d.observe_leave(&leave(GROUPS[*g], DEVICES[*dev], *instance), now);
            }
            Op::Session {
                instance,
                gui,
                group: g,
                online,
                interval_ms,
            } => {
                let kind = if *gui {
                    InstanceKind::Gui
                } else {
                    InstanceKind::Control
                };
                let mut p = session(*instance, kind, g.map(|g| GROUPS[g]));
                p.online = *online;
                p.interval_ms = *interval_ms;
                d.observe_presence(&p, now);
            }
            Op::Bus(up) => d.set_bus_connected(*up, now),
            Op::Poll => d.poll(now),
            Op::Forget(dev) => {
                d.forget(&device(DEVICES[*dev]));
            }
        }
    }

    fn check(d: &Discovery, now: Duration, me_state: &SelfState) -> Result<(), TestCaseError> {
        let s = d.status(now, me_state);
        prop_assert_eq!(s.colour == StatusColour::Grey, !me_state.online);
        prop_assert_eq!(
            s.colour == StatusColour::Blue,
            me_state.online && s.problems.is_empty()
        );
        prop_assert_eq!(
            s.colour == StatusColour::Red,
            me_state.online && !s.problems.is_empty()
        );
        if !me_state.online {
            prop_assert!(s.problems.is_empty());
        }
        for p in &s.problems {
            if let Problem::MissingPeers { expected, actual } = p {
                prop_assert!(actual < expected);
            }
        }

        let mut total = 0u32;
        for g in GROUPS {
            let g = group(g);
            let counts = d.counts(Some(&g), now);
            let roster = d.roster(&g, now);
            prop_assert_eq!(counts.devices() as usize, roster.len());
            prop_assert!(counts.clients + counts.servers == counts.devices_online);
            prop_assert!(roster.windows(2).all(|w| w[0].device < w[1].device));
            total += counts.devices();
        }
        let all = d.counts(None, now);
        prop_assert_eq!(all.devices() as usize, d.all_devices(now).len());
        prop_assert_eq!(all.devices(), total);
        if let Some((server, _)) = d.server(&group("g"), now) {
            let entry = d
                .roster(&group("g"), now)
                .into_iter()
                .find(|e| e.device == server);
            prop_assert!(entry.is_some_and(|e| e.live && e.online && e.role == Role::Server));
        }
        if let Some(deadline) = d.next_deadline(now) {
            prop_assert!(deadline > now);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn colour_and_counts_hold_after_any_sequence(
            steps in proptest::collection::vec((op(), 0..400u64), 0..60),
            online: bool,
            serving: bool,
            my_group in 0..2usize,
        ) {
            let mut d = Discovery::new(device("me"), InstanceId::new(1), Duration::ZERO);
            let me_state = SelfState {
                group: group(GROUPS[my_group]),
                online,
                role: if serving { Role::Server } else { Role::Client },
                term: Term::ZERO,
                score: Score::new(5),
                mac: Mac::from_octets([0, 0, 0, 0, 0, 1]),
                in_grace: false,
            };
            let mut now = Duration::ZERO;
            for (op, advance) in &steps {
                now += Duration::from_millis(*advance);
                apply(&mut d, op, now);
                check(&d, now, &me_state)?;
            }
        }

        #[test]
        fn any_heartbeat_is_taken_without_panic(
            seq: u64, interval_ms: u32, sent_at_ms: u64, instance: u64, term: u64,
            now_ms in 0..u64::MAX / 2,
        ) {
            let mut d = Discovery::new(device("me"), InstanceId::new(1), Duration::ZERO);
            let mut b = beat("g", "a", 1, seq);
            b.instance = InstanceId::new(instance);
            b.interval_ms = interval_ms;
            b.sent_at_ms = sent_at_ms;
            b.term = Term::from_revision(term);
            let now = Duration::from_millis(now_ms);
            d.observe_heartbeat(&b, now);
            d.poll(Duration::MAX);
            let _ = d.counts(None, Duration::MAX);
            let _ = d.next_deadline(now);
            let _ = d.roster(&group("g"), Duration::ZERO);
        }
    }
}
