//! Presence, both ways (B10, docs/bus.md "Presence").
//!
//! - **Sessions announce themselves.** Every open SSE or WebSocket stream and
//!   every TCP connection is a session with its own fresh instance id; the
//!   gateway announces each on `understudy.presence.<instance>` every second
//!   (and at once when it opens), as `gui` when a dashboard opened it, else
//!   `control`. When a session ends it is announced once more with
//!   `online: false`, which makes discovery drop it at once. Devices' discovery
//!   services count them as `gui_sessions` / `control_sessions`.
//! - **Groups come from device presence.** Devices announce themselves with
//!   their group every second; the groups listed are those with a device heard
//!   in the last [`GROUP_WINDOW`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use async_nats::Client;
use tokio::sync::{Notify, watch};
use tracing::warn;
use understudy_protocol::messages::{InstanceKind, Presence};
use understudy_protocol::{DeviceId, GroupName, InstanceId, SCHEMA_VERSION, subjects};

/// How often a session's presence is announced.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);

/// A group is listed while one of its devices was heard this recently.
pub const GROUP_WINDOW: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps inconsistent
    // (every change is one insert or remove), so carry on with the data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, Clone)]
struct Session {
    kind: InstanceKind,
    group: Option<GroupName>,
}

#[derive(Debug, Default)]
struct Table {
    open: HashMap<InstanceId, Session>,
    closed: Vec<(InstanceId, Session)>,
}

/// The gateway's open sessions, for the announcer.
#[derive(Debug, Default)]
pub struct Sessions {
    table: Mutex<Table>,
    changed: Notify,
}

impl Sessions {
    /// An empty registry.
    pub fn new() -> Arc<Sessions> {
        Arc::new(Sessions::default())
    }

    /// Opens a session; it is announced until the guard is dropped.
    pub fn open(self: &Arc<Self>, kind: InstanceKind, group: Option<GroupName>) -> SessionGuard {
        let instance = InstanceId::new(rand::random());
        lock(&self.table)
            .open
            .insert(instance, Session { kind, group });
        self.count();
        self.changed.notify_one();
        SessionGuard {
            sessions: Arc::clone(self),
            instance,
        }
    }

    /// Sets `understudy_gateway_sessions{kind}` to the sessions open now.
    fn count(&self) {
        let (gui, control) = self.counts();
        let m = understudy_telemetry::metrics();
        m.gateway_sessions("gui", gui);
        m.gateway_sessions("control", control);
    }

    /// How many sessions of each kind are open: (gui, control).
    pub fn counts(&self) -> (usize, usize) {
        let t = lock(&self.table);
        let gui = t
            .open
            .values()
            .filter(|s| s.kind == InstanceKind::Gui)
            .count();
        (gui, t.open.len() - gui)
    }

    /// The presence messages to publish now: every open session, and a last
    /// `online: false` for each session closed since the previous call.
    fn drain_announcements(&self, sent_at_ms: u64) -> Vec<Presence> {
        let mut t = lock(&self.table);
        let closed = std::mem::take(&mut t.closed);
        let open = t.open.iter().map(|(i, s)| (*i, s.clone(), true));
        let gone = closed.into_iter().map(|(i, s)| (i, s, false));
        open.chain(gone)
            .map(|(instance, s, online)| Presence {
                schema: SCHEMA_VERSION,
                instance,
                kind: s.kind,
                device: None,
                group: s.group,
                online,
                role: None,
                interval_ms: u32::try_from(ANNOUNCE_EVERY.as_millis()).unwrap_or(u32::MAX),
                sent_at_ms,
            })
            .collect()
    }

    /// Closes every session (at shutdown), so the last announcement says so.
    fn close_all(&self) {
        let mut t = lock(&self.table);
        let open: Vec<_> = t.open.drain().collect();
        t.closed.extend(open);
    }
}

/// An open session; dropping it closes it.
#[derive(Debug)]
pub struct SessionGuard {
    sessions: Arc<Sessions>,
    instance: InstanceId,
}

impl SessionGuard {
    /// The session's instance id.
    pub fn instance(&self) -> InstanceId {
        self.instance
    }

    /// Says which group the session now follows.
    pub fn follow(&self, group: GroupName) {
        if let Some(s) = lock(&self.sessions.table).open.get_mut(&self.instance) {
            s.group = Some(group);
        }
        self.sessions.changed.notify_one();
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut t = lock(&self.sessions.table);
        if let Some(s) = t.open.remove(&self.instance) {
            t.closed.push((self.instance, s));
        }
        drop(t);
        self.sessions.count();
        self.sessions.changed.notify_one();
    }
}

/// Announces the sessions every [`ANNOUNCE_EVERY`] and whenever one opens or
/// closes, until `shutdown`; then announces every session closed.
pub async fn announce(
    client: Client,
    sessions: Arc<Sessions>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = understudy_bus::ticker(ANNOUNCE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sessions.changed.notified() => {}
            _ = understudy_bus::stopped(&mut shutdown) => break,
        }
        publish_all(&client, &sessions).await;
    }
    sessions.close_all();
    publish_all(&client, &sessions).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
}

async fn publish_all(client: &Client, sessions: &Sessions) {
    let now = understudy_bus::unix_ms(SystemTime::now());
    for p in sessions.drain_announcements(now) {
        understudy_bus::publish(client, subjects::presence(p.instance), &p).await;
    }
}

/// The groups seen in device presence: group → device → when last heard.
#[derive(Debug, Default)]
pub struct GroupsSeen {
    seen: Mutex<BTreeMap<GroupName, BTreeMap<DeviceId, Instant>>>,
}

impl GroupsSeen {
    /// An empty table.
    pub fn new() -> Arc<GroupsSeen> {
        Arc::new(GroupsSeen::default())
    }

    /// Takes in one presence heard at `now`; only devices count.
    pub fn observe(&self, p: &Presence, now: Instant) {
        if p.kind != InstanceKind::Device {
            return;
        }
        if let (Some(group), Some(device)) = (&p.group, &p.device) {
            lock(&self.seen)
                .entry(group.clone())
                .or_default()
                .insert(device.clone(), now);
        }
    }

    /// Every group with a device heard within [`GROUP_WINDOW`] of `now`, with
    /// how many such devices, sorted by name. Older entries are forgotten.
    pub fn groups(&self, now: Instant) -> Vec<(GroupName, usize)> {
        let mut seen = lock(&self.seen);
        seen.retain(|_, devices| {
            devices.retain(|_, at| now.saturating_duration_since(*at) <= GROUP_WINDOW);
            !devices.is_empty()
        });
        seen.iter().map(|(g, d)| (g.clone(), d.len())).collect()
    }
}

/// Follows `understudy.presence.*` into `groups` until `shutdown`.
pub async fn watch_groups(
    client: Client,
    groups: Arc<GroupsSeen>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut presence: understudy_bus::Inbox<Presence> =
        match understudy_bus::Inbox::subscribe(&client, subjects::PRESENCE_ALL).await {
            Ok(inbox) => inbox,
            Err(e) => {
                warn!(error = %e, "cannot follow presence: the group list will stay empty");
                return;
            }
        };
    loop {
        tokio::select! {
            p = presence.next() => groups.observe(&p, Instant::now()),
            _ = understudy_bus::stopped(&mut shutdown) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(g: &str, d: &str) -> Presence {
        Presence {
            schema: SCHEMA_VERSION,
            instance: InstanceId::new(1),
            kind: InstanceKind::Device,
            device: Some(d.parse().expect("device")),
            group: Some(g.parse().expect("group")),
            online: true,
            role: None,
            interval_ms: 1000,
            sent_at_ms: 0,
        }
    }

    #[test]
    fn groups_are_the_ones_heard_in_the_last_ten_seconds() {
        let g = GroupsSeen::default();
        let t0 = Instant::now();
        g.observe(&device("stage", "a"), t0);
        g.observe(&device("stage", "b"), t0);
        g.observe(&device("foyer", "c"), t0 + Duration::from_secs(5));
        let names = |v: Vec<(GroupName, usize)>| {
            v.into_iter()
                .map(|(g, n)| format!("{g}:{n}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(g.groups(t0 + Duration::from_secs(1))),
            ["foyer:1", "stage:2"]
        );
        assert_eq!(names(g.groups(t0 + Duration::from_secs(11))), ["foyer:1"]);
    }

    #[test]
    fn a_closed_session_is_announced_offline_once() {
        let s = Sessions::new();
        let guard = s.open(InstanceKind::Gui, None);
        guard.follow("stage".parse().expect("group"));
        assert_eq!(s.counts(), (1, 0));
        let first = s.drain_announcements(0);
        assert_eq!(first.len(), 1);
        assert!(first[0].online);
        assert_eq!(
            first[0].group.as_ref().map(GroupName::as_str),
            Some("stage")
        );
        drop(guard);
        let last = s.drain_announcements(0);
        assert_eq!(last.len(), 1);
        assert!(!last[0].online);
        assert!(s.drain_announcements(0).is_empty());
    }
}
