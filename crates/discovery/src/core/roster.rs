//! The roster: every device instance and every GUI/control session heard on
//! the bus, network-wide, and whether each is still live (B1, B2, B10).
//!
//! The rules, in one place:
//!
//! - **Devices come from heartbeats.** Every device beats on its group's
//!   subject, even while offline (`online: false`), so the roster knows offline
//!   devices too (B10). A device's entry shows what its newest instance last
//!   reported: group, MAC, score, role, term, colour and problems.
//! - **Sessions come from presence.** GUI and control sessions announce
//!   themselves on `understudy.presence.*`.
//! - **Devices of other groups come from presence.** Discovery hears the
//!   heartbeats of its own group only (every beat reaches every listener: a
//!   network of G groups of N would cost each device G × N beats a second);
//!   a device's presence, once a second, says its group, online state and
//!   role, which is what the network-wide counts need (B10). Such a device
//!   is a [`RemoteDevice`]: counted, live until [`MISSES`] × its presence
//!   interval passes, then missing; a clean goodbye of its instance removes
//!   it. Presence never overrides heartbeats: a device heard beating is
//!   taken from its beats only (its presence may come from another process,
//!   another [`InstanceId`], which would look like a duplicate id).
//! - **Staleness.** An instance is live until [`MISSES`] × *its own* advertised
//!   interval passes without a message; the interval is clamped
//!   ([`clamp_interval`]: 10 ms–60 s, the bounds every service shares), so a
//!   hostile value can neither hide a dead device nor make a live one look
//!   dead. A stale device **stays** in
//!   the roster, not live ("missing"), so a vanished device stands out; a stale
//!   session is removed by [`Roster::poll`]. Liveness is always computed from
//!   the `now` of the query, so queries do not depend on when `poll` ran.
//! - **Order.** A heartbeat whose `seq` is not above the last one of the same
//!   instance is a duplicate or arrived late: it is ignored entirely, so it can
//!   neither overwrite newer state nor keep a dead instance alive.
//! - **Clean leave.** A [`Leave`] from a known instance in the group it names
//!   closes that instance: the device is no longer expected and, once no open
//!   instance is left, disappears from the roster instead of showing as missing.
//!   For one stale window after the leave, heartbeats of that instance are taken
//!   to be in flight from before it and ignored; after that a heartbeat with a
//!   higher `seq` reopens it (the device came back). A leave or an offline
//!   presence from a session removes it, and its late presence is ignored for
//!   one stale window.
//! - **Duplicate ids.** Two instances of one device id are duplicates when both
//!   are live and each was heard after the other was first heard. A restart is
//!   not a duplicate: the old instance fell silent before the new one was first
//!   heard. This device's own instance counts as heard continuously since the
//!   roster was created.
//! - **Expected peers** (for B2's missing-peer problem): a device is expected in
//!   group G once it beats online in G; it stops being expected when it beats
//!   offline (went offline administratively), leaves G cleanly, or an operator
//!   [forgets](Roster::forget) it. It stays expected while it is stale.
//! - **Bounded.** At most [`INSTANCES_KEPT`] instances are remembered per device
//!   id; the least recently heard non-live one makes room for a new one.
//!
//! Everything is kept in `BTreeMap`s, so two rosters fed the same inputs answer
//! the same, in the same order (by device id, then instance id).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use understudy_protocol::messages::{Heartbeat, InstanceKind, Leave, Presence};
use understudy_protocol::timing::clamp_interval;
use understudy_protocol::{
    DeviceId, GroupName, InstanceId, Mac, Problem, Role, Score, StatusColour, Term,
};

/// An instance is stale after this many of its own intervals without a message.
pub const MISSES: u32 = 3;

/// How many instances of one device id are remembered (see the module docs).
pub const INSTANCES_KEPT: usize = 8;

/// How long an instance advertising `interval_ms` stays live after its last
/// message: [`MISSES`] × the interval, [clamped](clamp_interval).
pub fn stale_window(interval_ms: u32) -> Duration {
    let interval = clamp_interval(Duration::from_millis(u64::from(interval_ms)));
    interval.checked_mul(MISSES).unwrap_or(Duration::MAX)
}

/// One device as the roster shows it (B2, B10): what its newest instance last
/// reported, plus what this roster concluded (live, duplicate, expected).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// The device.
    pub device: DeviceId,
    /// The group its newest heartbeat named.
    pub group: GroupName,
    /// Its newest instance (the live one, if any is live).
    pub instance: InstanceId,
    /// Its MAC.
    pub mac: Mac,
    /// Its score.
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
    pub problems: Vec<Problem>,
    /// Whether a message from it came within its stale window; `false` means
    /// the device is missing.
    pub live: bool,
    /// When it was last heard, on the caller's clock.
    pub last_seen: Duration,
    /// How long ago it was last heard, as of the query.
    pub silent_for: Duration,
    /// Its own wall clock when it sent its newest heartbeat, Unix
    /// milliseconds; for display only.
    pub sent_at_ms: u64,
    /// The interval it advertises, in milliseconds, as sent.
    pub interval_ms: u32,
    /// Whether another live instance claims the same device id.
    pub duplicate: bool,
    /// Whether its group expects it (see the module docs).
    pub expected: bool,
}

/// A live GUI or control session (B10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEntry {
    /// The session's process instance.
    pub instance: InstanceId,
    /// GUI or control.
    pub kind: InstanceKind,
    /// The group it looks at, if it named one.
    pub group: Option<GroupName>,
    /// When it was last heard, on the caller's clock.
    pub last_seen: Duration,
    /// Its own wall clock when it last announced itself, Unix milliseconds.
    pub sent_at_ms: u64,
}

/// Expected peers of a group, and how many of them are live (B2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PeerTally {
    /// Devices the group expects (this device not included).
    pub expected: u32,
    /// How many of them are live.
    pub live: u32,
}

/// What the roster remembers of one instance of a device.
#[derive(Debug, Clone)]
struct Instance {
    /// When its first accepted heartbeat arrived.
    first_heard: Duration,
    /// When its newest accepted heartbeat arrived.
    last_heard: Duration,
    /// Its newest accepted heartbeat.
    beat: Heartbeat,
    /// When it left cleanly, if it did and has not come back.
    left_at: Option<Duration>,
}

impl Instance {
    fn new(beat: &Heartbeat, now: Duration) -> Self {
        Self {
            first_heard: now,
            last_heard: now,
            beat: beat.clone(),
            left_at: None,
        }
    }

    fn window(&self) -> Duration {
        stale_window(self.beat.interval_ms)
    }

    fn live_until(&self) -> Duration {
        self.last_heard.saturating_add(self.window())
    }

    fn is_open(&self) -> bool {
        self.left_at.is_none()
    }

    fn is_live(&self, now: Duration) -> bool {
        self.is_open() && now < self.live_until()
    }

    /// Until when beats are taken to be in flight from before the leave.
    fn closed_until(&self) -> Option<Duration> {
        self.left_at.map(|at| at.saturating_add(self.window()))
    }

    /// Takes in a newer heartbeat; `false` if it is old or the instance is
    /// still closed by its leave.
    fn accept(&mut self, beat: &Heartbeat, now: Duration) -> bool {
        if beat.seq <= self.beat.seq {
            return false;
        }
        if self.closed_until().is_some_and(|until| now < until) {
            return false;
        }
        self.left_at = None;
        self.last_heard = self.last_heard.max(now);
        self.beat = beat.clone();
        true
    }
}

/// What the roster remembers of one device id.
#[derive(Debug, Clone, Default)]
struct DeviceRecord {
    instances: BTreeMap<InstanceId, Instance>,
    /// The group that expects this device, if any.
    expected_in: Option<GroupName>,
}

impl DeviceRecord {
    /// The instance the entry shows: open, live before stale, newest heard.
    fn current(&self, now: Duration) -> Option<(InstanceId, &Instance)> {
        self.instances
            .iter()
            .filter(|(_, i)| i.is_open())
            .max_by_key(|(id, i)| (i.is_live(now), i.last_heard, **id))
            .map(|(id, i)| (*id, i))
    }

    fn is_live(&self, now: Duration) -> bool {
        self.instances.values().any(|i| i.is_live(now))
    }

    /// Makes room for one more instance, dropping the least useful one.
    fn make_room(&mut self, now: Duration) {
        while self.instances.len() >= INSTANCES_KEPT {
            let victim = self
                .instances
                .iter()
                .min_by_key(|(id, i)| (i.is_live(now), i.last_heard, **id))
                .map(|(id, _)| *id);
            match victim {
                Some(id) => {
                    self.instances.remove(&id);
                }
                None => break,
            }
        }
    }
}

/// A GUI or control session.
#[derive(Debug, Clone)]
struct Session {
    kind: InstanceKind,
    group: Option<GroupName>,
    last_heard: Duration,
    interval_ms: u32,
    sent_at_ms: u64,
}

impl Session {
    fn is_live(&self, now: Duration) -> bool {
        now < self
            .last_heard
            .saturating_add(stale_window(self.interval_ms))
    }
}

/// A device known from its presence only (another group's, see the module
/// docs): enough for the network-wide counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDevice {
    /// Its group.
    pub group: GroupName,
    /// The announcing process.
    pub instance: InstanceId,
    /// Whether it is online (B1).
    pub online: bool,
    /// Its role.
    pub role: Role,
    /// When its last presence was heard.
    pub last_heard: Duration,
    /// The presence interval it advertises, in milliseconds.
    pub interval_ms: u32,
}

impl RemoteDevice {
    /// Whether its presence came within its stale window.
    pub fn is_live(&self, now: Duration) -> bool {
        now < self.live_until()
    }

    fn live_until(&self) -> Duration {
        self.last_heard
            .saturating_add(stale_window(self.interval_ms))
    }
}

/// The network-wide table of device instances and sessions.
#[derive(Debug, Clone)]
pub struct Roster {
    me: DeviceId,
    my_instance: InstanceId,
    started_at: Duration,
    devices: BTreeMap<DeviceId, DeviceRecord>,
    /// Devices heard only through their presence (other groups').
    remote: BTreeMap<DeviceId, RemoteDevice>,
    sessions: BTreeMap<InstanceId, Session>,
    /// Sessions that said goodbye, and until when their late presence is ignored.
    closed_sessions: BTreeMap<InstanceId, Duration>,
}

impl Roster {
    /// An empty roster kept by device `me`, process `instance`, started at `now`.
    pub fn new(me: DeviceId, instance: InstanceId, now: Duration) -> Self {
        Self {
            me,
            my_instance: instance,
            started_at: now,
            devices: BTreeMap::new(),
            remote: BTreeMap::new(),
            sessions: BTreeMap::new(),
            closed_sessions: BTreeMap::new(),
        }
    }

    /// This device.
    pub fn me(&self) -> &DeviceId {
        &self.me
    }

    /// This device's process instance.
    pub fn my_instance(&self) -> InstanceId {
        self.my_instance
    }

    /// Takes in a heartbeat heard at `now`. Returns `false` if it was ignored
    /// (out of order, duplicate, or in flight from before a leave).
    pub fn observe_heartbeat(&mut self, beat: &Heartbeat, now: Duration) -> bool {
        self.remote.remove(&beat.device);
        let record = self.devices.entry(beat.device.clone()).or_default();
        let accepted = match record.instances.get_mut(&beat.instance) {
            Some(known) => known.accept(beat, now),
            None => {
                record.make_room(now);
                record
                    .instances
                    .insert(beat.instance, Instance::new(beat, now));
                true
            }
        };
        if accepted {
            record.expected_in = beat.online.then(|| beat.group.clone());
        }
        accepted
    }

    /// Takes in a presence announcement heard at `now`. Only GUI and control
    /// sessions are tracked (see the module docs). Returns `false` if ignored.
    pub fn observe_presence(&mut self, presence: &Presence, now: Duration) -> bool {
        if let Some(until) = self.closed_sessions.get(&presence.instance) {
            if now < *until {
                return false;
            }
            self.closed_sessions.remove(&presence.instance);
        }
        if presence.kind == InstanceKind::Device {
            return self.observe_device_presence(presence, now);
        }
        if !presence.online {
            return self.close_session(presence.instance, now);
        }
        let last_heard = self
            .sessions
            .get(&presence.instance)
            .map_or(now, |s| s.last_heard.max(now));
        self.sessions.insert(
            presence.instance,
            Session {
                kind: presence.kind,
                group: presence.group.clone(),
                last_heard,
                interval_ms: presence.interval_ms,
                sent_at_ms: presence.sent_at_ms,
            },
        );
        true
    }

    /// A device's presence: kept only for a device not heard beating (one of
    /// another group, see the module docs).
    fn observe_device_presence(&mut self, presence: &Presence, now: Duration) -> bool {
        let (Some(device), Some(group)) = (&presence.device, &presence.group) else {
            return false;
        };
        if self.devices.contains_key(device) || *device == self.me {
            return false;
        }
        let last_heard = self
            .remote
            .get(device)
            .filter(|r| r.instance == presence.instance)
            .map_or(now, |r| r.last_heard.max(now));
        self.remote.insert(
            device.clone(),
            RemoteDevice {
                group: group.clone(),
                instance: presence.instance,
                online: presence.online,
                role: presence.role.unwrap_or(Role::Client),
                last_heard,
                interval_ms: presence.interval_ms,
            },
        );
        true
    }

    /// Takes in a clean goodbye heard at `now`. Returns `false` if it changed
    /// nothing (unknown instance, or an instance that already moved on).
    pub fn observe_leave(&mut self, leave: &Leave, now: Duration) -> bool {
        let mut changed = self.close_session(leave.instance, now);
        if let Some(remote) = self.remote.get(&leave.device)
            && remote.instance == leave.instance
        {
            let until = now.saturating_add(stale_window(remote.interval_ms));
            self.remote.remove(&leave.device);
            self.closed_sessions.insert(leave.instance, until);
            changed = true;
        }
        let Some(record) = self.devices.get_mut(&leave.device) else {
            return changed;
        };
        let Some(instance) = record.instances.get_mut(&leave.instance) else {
            return changed;
        };
        if instance.is_open() && instance.beat.group == leave.group {
            instance.left_at = Some(now);
            changed = true;
        }
        let still_there = record.instances.iter().any(|(id, i)| {
            *id != leave.instance && i.is_live(now) && i.beat.online && i.beat.group == leave.group
        });
        if record.expected_in.as_ref() == Some(&leave.group) && !still_there {
            record.expected_in = None;
            changed = true;
        }
        changed
    }

    fn close_session(&mut self, instance: InstanceId, now: Duration) -> bool {
        match self.sessions.remove(&instance) {
            Some(session) => {
                let until = now.saturating_add(stale_window(session.interval_ms));
                self.closed_sessions.insert(instance, until);
                true
            }
            None => false,
        }
    }

    /// Drops what has expired by `now`: stale sessions, and devices whose every
    /// instance left cleanly. Stale devices stay, as missing.
    pub fn poll(&mut self, now: Duration) {
        self.sessions.retain(|_, s| s.is_live(now));
        self.closed_sessions.retain(|_, until| now < *until);
        self.devices.retain(|_, record| {
            record
                .instances
                .values()
                .any(|i| i.closed_until().is_none_or(|until| now < until))
        });
    }

    /// The earliest moment after `now` at which an instance or session goes
    /// stale if nothing more is heard; call [`Roster::poll`] (and recompute
    /// status) then.
    pub fn next_deadline(&self, now: Duration) -> Option<Duration> {
        let devices = self
            .devices
            .values()
            .flat_map(|r| r.instances.values())
            .filter(|i| i.is_open())
            .map(Instance::live_until);
        let sessions = self
            .sessions
            .values()
            .map(|s| s.last_heard.saturating_add(stale_window(s.interval_ms)));
        let remote = self.remote.values().map(RemoteDevice::live_until);
        devices
            .chain(sessions)
            .chain(remote)
            .filter(|t| *t > now)
            .min()
    }

    /// An operator removes `device` from the roster and from the expected set.
    /// If it is still beating it comes back with its next heartbeat. Returns
    /// whether it was known.
    pub fn forget(&mut self, device: &DeviceId) -> bool {
        let remote = self.remote.remove(device).is_some();
        self.devices.remove(device).is_some() || remote
    }

    /// The devices known from their presence only (other groups'), live or
    /// missing, sorted by device id.
    pub fn remote_devices(&self) -> impl Iterator<Item = (&DeviceId, &RemoteDevice)> {
        self.remote.iter()
    }

    /// The devices of `group`, live or missing, sorted by device id.
    pub fn roster(&self, group: &GroupName, now: Duration) -> Vec<DeviceEntry> {
        self.entries(now).filter(|e| &e.group == group).collect()
    }

    /// Every device on the network, live or missing, sorted by device id.
    pub fn all_devices(&self, now: Duration) -> Vec<DeviceEntry> {
        self.entries(now).collect()
    }

    fn entries(&self, now: Duration) -> impl Iterator<Item = DeviceEntry> + '_ {
        self.devices
            .iter()
            .filter_map(move |(device, record)| self.entry(device, record, now))
    }

    fn entry(
        &self,
        device: &DeviceId,
        record: &DeviceRecord,
        now: Duration,
    ) -> Option<DeviceEntry> {
        let (instance, current) = record.current(now)?;
        let beat = &current.beat;
        Some(DeviceEntry {
            device: device.clone(),
            group: beat.group.clone(),
            instance,
            mac: beat.mac,
            score: beat.score,
            online: beat.online,
            role: beat.role,
            term: beat.term,
            in_grace: beat.in_grace,
            colour: beat.colour,
            problems: beat.problems.clone(),
            live: current.is_live(now),
            last_seen: current.last_heard,
            silent_for: now.saturating_sub(current.last_heard),
            sent_at_ms: beat.sent_at_ms,
            interval_ms: beat.interval_ms,
            duplicate: self.is_duplicated(device, record, now),
            expected: record.expected_in.as_ref() == Some(&beat.group),
        })
    }

    /// Whether two live instances of `device` overlap in time (module docs).
    fn is_duplicated(&self, device: &DeviceId, record: &DeviceRecord, now: Duration) -> bool {
        let is_me = *device == self.me;
        let mut spans: Vec<(Duration, Duration)> = record
            .instances
            .iter()
            .filter(|(id, i)| i.is_live(now) && !(is_me && **id == self.my_instance))
            .map(|(_, i)| (i.first_heard, i.last_heard))
            .collect();
        if is_me {
            spans.push((self.started_at, now));
        }
        spans
            .iter()
            .enumerate()
            .any(|(k, a)| spans.iter().skip(k + 1).any(|b| a.1 > b.0 && b.1 > a.0))
    }

    /// Whether another live process claims this device's id (B2).
    pub fn my_id_is_duplicated(&self, now: Duration) -> bool {
        self.devices
            .get(&self.me)
            .is_some_and(|record| self.is_duplicated(&self.me, record, now))
    }

    /// The live, online device of `group` that reports itself server with the
    /// highest term (the lower device id on a tie).
    pub fn server(&self, group: &GroupName, now: Duration) -> Option<(DeviceId, Term)> {
        self.servers(group, now)
            .max_by(|a, b| a.term.cmp(&b.term).then_with(|| b.device.cmp(&a.device)))
            .map(|e| (e.device, e.term))
    }

    /// Whether a live, online device of `group` other than this one reports
    /// itself server.
    pub fn has_live_server_besides_me(&self, group: &GroupName, now: Duration) -> bool {
        self.servers(group, now).any(|e| e.device != self.me)
    }

    fn servers(&self, group: &GroupName, now: Duration) -> impl Iterator<Item = DeviceEntry> + '_ {
        let group = group.clone();
        self.entries(now)
            .filter(move |e| e.group == group && e.live && e.online && e.role == Role::Server)
    }

    /// The peers `group` expects (this device excluded) and how many are live.
    pub fn expected_peers(&self, group: &GroupName, now: Duration) -> PeerTally {
        let mut tally = PeerTally::default();
        for (device, record) in &self.devices {
            if *device == self.me || record.expected_in.as_ref() != Some(group) {
                continue;
            }
            tally.expected = tally.expected.saturating_add(1);
            if record.is_live(now) {
                tally.live = tally.live.saturating_add(1);
            }
        }
        tally
    }

    /// The live GUI and control sessions looking at `group` (`None`: all of
    /// them, network-wide), sorted by instance id.
    pub fn sessions(&self, group: Option<&GroupName>, now: Duration) -> Vec<SessionEntry> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.is_live(now))
            .filter(|(_, s)| group.is_none_or(|g| s.group.as_ref() == Some(g)))
            .map(|(instance, s)| SessionEntry {
                instance: *instance,
                kind: s.kind,
                group: s.group.clone(),
                last_seen: s.last_heard,
                sent_at_ms: s.sent_at_ms,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testing::{beat, device, group, leave, ms, session};

    fn roster_at(now: Duration) -> Roster {
        Roster::new(device("me"), InstanceId::new(1), now)
    }

    #[test]
    fn stale_window_is_three_clamped_intervals() {
        assert_eq!(stale_window(100), ms(300));
        assert_eq!(stale_window(0), ms(30));
        assert_eq!(stale_window(u32::MAX), Duration::from_secs(180));
    }

    #[test]
    fn device_goes_missing_after_three_of_its_own_intervals() {
        let mut r = roster_at(ms(0));
        let mut b = beat("g", "a", 10, 1);
        b.interval_ms = 200;
        r.observe_heartbeat(&b, ms(0));
        assert!(r.roster(&group("g"), ms(599))[0].live);
        r.poll(ms(600));
        let entries = r.roster(&group("g"), ms(600));
        assert_eq!(entries.len(), 1, "a stale device stays in the roster");
        assert!(!entries[0].live);
        assert_eq!(entries[0].silent_for, ms(600));
    }

    #[test]
    fn stale_heartbeat_does_not_overwrite_newer() {
        let mut r = roster_at(ms(0));
        let mut newer = beat("g", "a", 10, 5);
        newer.role = Role::Server;
        newer.term = Term::from_revision(7);
        assert!(r.observe_heartbeat(&newer, ms(100)));
        let mut older = beat("g", "a", 10, 4);
        older.role = Role::Client;
        assert!(!r.observe_heartbeat(&older, ms(350)));
        assert!(
            !r.observe_heartbeat(&newer, ms(350)),
            "a repeat is ignored too"
        );
        let e = &r.roster(&group("g"), ms(400))[0];
        assert_eq!(e.role, Role::Server);
        assert_eq!(e.term, Term::from_revision(7));
        assert!(!e.live, "old beats do not keep a dead instance alive");
    }

    #[test]
    fn clean_leave_removes_the_device_instead_of_marking_it_missing() {
        let mut r = roster_at(ms(0));
        r.observe_heartbeat(&beat("g", "a", 10, 1), ms(0));
        assert!(r.observe_leave(&leave("g", "a", 10), ms(50)));
        assert!(r.roster(&group("g"), ms(60)).is_empty());
        assert_eq!(r.expected_peers(&group("g"), ms(60)).expected, 0);
        r.poll(ms(10_000));
        assert!(r.all_devices(ms(10_000)).is_empty());
    }

    #[test]
    fn late_beat_from_before_a_leave_does_not_resurrect() {
        let mut r = roster_at(ms(0));
        r.observe_heartbeat(&beat("g", "a", 10, 1), ms(0));
        r.observe_leave(&leave("g", "a", 10), ms(50));
        assert!(!r.observe_heartbeat(&beat("g", "a", 10, 2), ms(80)));
        assert!(r.roster(&group("g"), ms(80)).is_empty());
        // Well after the leave, a fresh beat means the device came back.
        assert!(r.observe_heartbeat(&beat("g", "a", 10, 3), ms(1_000)));
        assert!(r.roster(&group("g"), ms(1_000))[0].live);
    }

    #[test]
    fn leave_of_a_group_already_left_does_not_hide_the_device() {
        let mut r = roster_at(ms(0));
        r.observe_heartbeat(&beat("h", "a", 10, 2), ms(0));
        assert!(!r.observe_leave(&leave("g", "a", 10), ms(10)));
        assert_eq!(r.roster(&group("h"), ms(20)).len(), 1);
        assert_eq!(r.expected_peers(&group("h"), ms(20)).expected, 1);
    }

    #[test]
    fn moving_group_moves_the_device_and_its_expectation() {
        let mut r = roster_at(ms(0));
        r.observe_heartbeat(&beat("g", "a", 10, 1), ms(0));
        r.observe_heartbeat(&beat("h", "a", 10, 2), ms(100));
        assert!(r.roster(&group("g"), ms(100)).is_empty());
        assert_eq!(r.roster(&group("h"), ms(100)).len(), 1);
        assert_eq!(r.expected_peers(&group("g"), ms(100)).expected, 0);
        assert_eq!(r.expected_peers(&group("h"), ms(100)).expected, 1);
    }

    #[test]
    fn restart_is_not_a_duplicate() {
        let mut r = roster_at(ms(0));
        for (seq, t) in [(1, 0), (2, 100), (3, 200)] {
            r.observe_heartbeat(&beat("g", "a", 10, seq), ms(t));
        }
        r.observe_heartbeat(&beat("g", "a", 11, 1), ms(250));
        r.observe_heartbeat(&beat("g", "a", 11, 2), ms(350));
        let e = &r.roster(&group("g"), ms(360))[0];
        assert!(!e.duplicate);
        assert_eq!(e.instance, InstanceId::new(11));
        assert!(e.live);
    }

    #[test]
    fn two_live_instances_of_one_id_are_duplicates() {
        let mut r = roster_at(ms(0));
        r.observe_heartbeat(&beat("g", "a", 10, 1), ms(0));
        r.observe_heartbeat(&beat("g", "a", 11, 1), ms(50));
        r.observe_heartbeat(&beat("g", "a", 10, 2), ms(100));
        assert!(r.roster(&group("g"), ms(110))[0].duplicate);
        // Once one of them falls silent, the flag clears.
        r.observe_heartbeat(&beat("g", "a", 11, 2), ms(390));
        assert!(!r.roster(&group("g"), ms(400))[0].duplicate);
        assert!(!r.my_id_is_duplicated(ms(400)));
    }

    #[test]
    fn another_process_with_my_id_is_a_duplicate_of_me() {
        let mut r = roster_at(ms(0));
        // My own echo is not a duplicate.
        r.observe_heartbeat(&beat("g", "me", 1, 1), ms(10));
        assert!(!r.my_id_is_duplicated(ms(20)));
        r.observe_heartbeat(&beat("g", "me", 99, 1), ms(30));
        assert!(r.my_id_is_duplicated(ms(40)));
        assert!(!r.my_id_is_duplicated(ms(1_000)), "not once it is silent");
    }

    #[test]
    fn server_is_the_live_online_server_with_the_highest_term() {
        let mut r = roster_at(ms(0));
        for (name, inst, term, online) in
            [("a", 10, 3, true), ("b", 11, 5, true), ("c", 12, 9, false)]
        {
            let mut b = beat("g", name, inst, 1);
            b.role = Role::Server;
            b.term = Term::from_revision(term);
            b.online = online;
            r.observe_heartbeat(&b, ms(0));
        }
        assert_eq!(
            r.server(&group("g"), ms(10)),
            Some((device("b"), Term::from_revision(5)))
        );
        assert_eq!(r.server(&group("g"), ms(1_000)), None);
        assert_eq!(r.server(&group("other"), ms(10)), None);
    }

    #[test]
    fn forget_removes_a_missing_device_from_the_expected_set() {
        let mut r = roster_at(ms(0));
        r.observe_heartbeat(&beat("g", "a", 10, 1), ms(0));
        assert_eq!(
            r.expected_peers(&group("g"), ms(1_000)),
            PeerTally {
                expected: 1,
                live: 0
            }
        );
        assert!(r.forget(&device("a")));
        assert_eq!(r.expected_peers(&group("g"), ms(1_000)).expected, 0);
        assert!(r.roster(&group("g"), ms(1_000)).is_empty());
        assert!(!r.forget(&device("a")));
    }

    #[test]
    fn going_offline_is_not_expected_but_stays_listed() {
        let mut r = roster_at(ms(0));
        r.observe_heartbeat(&beat("g", "a", 10, 1), ms(0));
        let mut off = beat("g", "a", 10, 2);
        off.online = false;
        r.observe_heartbeat(&off, ms(100));
        assert_eq!(r.expected_peers(&group("g"), ms(100)).expected, 0);
        let e = &r.roster(&group("g"), ms(100))[0];
        assert!(e.live && !e.online && !e.expected);
    }

    #[test]
    fn sessions_expire_and_leave() {
        let mut r = roster_at(ms(0));
        r.observe_presence(&session(20, InstanceKind::Gui, Some("g")), ms(0));
        r.observe_presence(&session(21, InstanceKind::Control, None), ms(0));
        assert_eq!(r.sessions(Some(&group("g")), ms(10)).len(), 1);
        assert_eq!(r.sessions(None, ms(10)).len(), 2);
        assert!(r.observe_leave(&leave("g", "x", 20), ms(20)));
        assert!(!r.observe_presence(&session(20, InstanceKind::Gui, Some("g")), ms(30)));
        assert_eq!(r.sessions(None, ms(30)).len(), 1);
        r.poll(ms(10_000));
        assert!(r.sessions(None, ms(10_000)).is_empty());
        assert_eq!(r.next_deadline(ms(10_000)), None);
    }

    fn device_presence(group_name: &str, name: &str, instance: u64) -> Presence {
        let mut p = session(instance, InstanceKind::Device, Some(group_name));
        p.device = Some(device(name));
        p.role = Some(Role::Client);
        p
    }

    #[test]
    fn device_presence_is_kept_apart_and_never_overrides_heartbeats() {
        let mut r = roster_at(ms(0));
        assert!(r.observe_presence(&device_presence("other", "a", 30), ms(0)));
        assert!(r.all_devices(ms(0)).is_empty(), "not a beating device");
        assert_eq!(r.remote_devices().count(), 1);
        // Heard beating: the beats count, the presence entry goes.
        r.observe_heartbeat(&beat("g", "a", 10, 1), ms(10));
        assert_eq!(r.remote_devices().count(), 0);
        assert!(!r.observe_presence(&device_presence("other", "a", 30), ms(20)));
        assert_eq!(r.remote_devices().count(), 0);
        // This device's own presence is never a remote device.
        assert!(!r.observe_presence(&device_presence("other", "me", 31), ms(20)));
    }

    #[test]
    fn a_device_known_by_presence_goes_missing_then_leaves() {
        let mut r = roster_at(ms(0));
        r.observe_presence(&device_presence("other", "a", 30), ms(0));
        let (_, a) = r.remote_devices().next().expect("kept");
        assert!(a.is_live(ms(2_999)) && !a.is_live(ms(3_000)));
        assert_eq!(r.next_deadline(ms(0)), Some(ms(3_000)));
        r.poll(ms(5_000));
        assert_eq!(r.remote_devices().count(), 1, "stale devices stay, missing");
        assert!(
            !r.observe_leave(&leave("other", "a", 99), ms(5_000)),
            "another instance"
        );
        assert!(r.observe_leave(&leave("other", "a", 30), ms(5_000)));
        assert_eq!(r.remote_devices().count(), 0);
        assert!(
            !r.observe_presence(&device_presence("other", "a", 30), ms(5_100)),
            "a late presence of the instance that left"
        );
    }

    #[test]
    fn next_deadline_is_the_earliest_staleness() {
        let mut r = roster_at(ms(0));
        r.observe_heartbeat(&beat("g", "a", 10, 1), ms(0));
        let mut slow = beat("g", "b", 11, 1);
        slow.interval_ms = 1_000;
        r.observe_heartbeat(&slow, ms(0));
        assert_eq!(r.next_deadline(ms(0)), Some(ms(300)));
        assert_eq!(r.next_deadline(ms(300)), Some(ms(3_000)));
    }

    #[test]
    fn instances_per_device_are_bounded() {
        let mut r = roster_at(ms(0));
        for i in 0..100u64 {
            r.observe_heartbeat(&beat("g", "a", 100 + i, 1), ms(i * 1_000));
        }
        let record = r.devices.get(&device("a")).expect("device a is known");
        assert_eq!(record.instances.len(), INSTANCES_KEPT);
        assert_eq!(
            r.roster(&group("g"), ms(99_000))[0].instance,
            InstanceId::new(199)
        );
    }

    #[test]
    fn entries_serialise_to_json() {
        let mut r = roster_at(ms(0));
        r.observe_heartbeat(&beat("g", "a", 10, 1), ms(0));
        let json = serde_json::to_value(r.roster(&group("g"), ms(1))).expect("serialises");
        assert_eq!(json[0]["device"], "a");
        assert_eq!(json[0]["instance"], "000000000000000a");
        let back: Vec<DeviceEntry> = serde_json::from_value(json).expect("deserialises");
        assert_eq!(back, r.roster(&group("g"), ms(1)));
    }
}
