//! An observer on the bus: records a group's heartbeats and election events
//! with monotonic timestamps, waits for conditions on what it heard, and checks
//! the one-server invariant over the whole recording.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt;
use tokio::task::JoinHandle;
use understudy_protocol::messages::{ElectionEvent, ElectionEventKind, Heartbeat, Leave, decode};
use understudy_protocol::{GroupName, Role, Term, subjects};

use super::{POLL, connect};

/// A device counts as live when its last heartbeat is at most this old, or
/// [`live_window`] of that heartbeat if longer.
pub const LIVE_WINDOW: Duration = Duration::from_millis(500);

/// How long `beat` keeps its sender live: three of the intervals it
/// advertises plus 200 ms of slack, at least [`LIVE_WINDOW`] — 500 ms for a
/// server beating every 100 ms, 3.2 s for a client beating every second.
pub fn live_window(beat: &Heartbeat) -> Duration {
    (Duration::from_millis(u64::from(beat.interval_ms)) * 3 + Duration::from_millis(200))
        .max(LIVE_WINDOW)
}

/// The server lease: two devices may both report server for at most this long
/// (a deposed server notices within its lease).
pub const LEASE_DURATION: Duration = Duration::from_millis(1500);

/// A message and when the observer received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timed<T> {
    /// When it arrived (monotonic).
    pub at: Instant,
    /// What arrived.
    pub msg: T,
}

/// Everything the observer heard, in arrival order.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// Every decoded heartbeat of the group.
    pub heartbeats: Vec<Timed<Heartbeat>>,
    /// Every decoded election event of the group.
    pub events: Vec<Timed<ElectionEvent>>,
    /// Every decoded goodbye of the group (a device stopping cleanly).
    pub leaves: Vec<Timed<Leave>>,
    /// Messages that did not decode: subject and error.
    pub undecodable: Vec<Timed<String>>,
}

/// What a [`View`] condition returns: `true`/`Some(value)` when satisfied.
pub trait Outcome {
    /// What the wait returns once satisfied.
    type Value;
    /// `Some` when the condition holds.
    fn satisfied(self) -> Option<Self::Value>;
}

impl Outcome for bool {
    type Value = ();
    fn satisfied(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn satisfied(self) -> Option<T> {
        self
    }
}

/// The group as the observer sees it at one instant.
#[derive(Debug, Clone)]
pub struct View {
    /// The instant of the view.
    pub now: Instant,
    /// Time since the observer started.
    pub elapsed: Duration,
    latest: BTreeMap<String, Timed<Heartbeat>>,
    /// Devices whose latest heartbeat's instance has said goodbye since.
    left: BTreeSet<String>,
    events: Vec<Timed<ElectionEvent>>,
}

impl View {
    /// The latest heartbeat of every live device (heard within its
    /// [`live_window`] and not followed by that instance's goodbye), by
    /// device id.
    pub fn live(&self) -> Vec<&Heartbeat> {
        self.latest
            .iter()
            .filter(|(id, t)| self.is_live_beat(id, t))
            .map(|(_, t)| &t.msg)
            .collect()
    }

    fn is_live_beat(&self, id: &str, t: &Timed<Heartbeat>) -> bool {
        !self.left.contains(id) && self.now.saturating_duration_since(t.at) <= live_window(&t.msg)
    }

    /// The ids of the live devices, sorted.
    pub fn live_ids(&self) -> Vec<String> {
        self.live().iter().map(|h| h.device.to_string()).collect()
    }

    /// Whether `device` is live.
    pub fn is_live(&self, device: &str) -> bool {
        self.device(device).is_some()
    }

    /// The latest heartbeat of `device`, if it is live.
    pub fn device(&self, device: &str) -> Option<&Heartbeat> {
        self.latest
            .get(device)
            .filter(|t| self.is_live_beat(device, t))
            .map(|t| &t.msg)
    }

    /// The latest heartbeat of `device` ever heard, live or not, with its time.
    pub fn last_heard(&self, device: &str) -> Option<&Timed<Heartbeat>> {
        self.latest.get(device)
    }

    /// The live devices reporting role = server, with their terms, by id.
    pub fn servers(&self) -> Vec<(String, Term)> {
        self.live()
            .into_iter()
            .filter(|h| h.role == Role::Server)
            .map(|h| (h.device.to_string(), h.term))
            .collect()
    }

    /// The one live server and its term; `None` when there are none or several.
    pub fn server(&self) -> Option<(String, Term)> {
        match self.servers().as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        }
    }

    /// The one live server, when every live device is out of its grace and
    /// reports the server's term (the group has converged).
    pub fn converged(&self) -> Option<(String, Term)> {
        let (server, term) = self.server()?;
        self.live()
            .iter()
            .all(|h| !h.in_grace && h.term == term)
            .then_some((server, term))
    }

    /// Every election event heard so far.
    pub fn events(&self) -> &[Timed<ElectionEvent>] {
        &self.events
    }

    /// Every `server_elected` event so far: (device, term), oldest first.
    pub fn elected(&self) -> Vec<(String, Term)> {
        self.events
            .iter()
            .filter_map(|e| match &e.msg.kind {
                ElectionEventKind::ServerElected { device, term, .. } => {
                    Some((device.to_string(), *term))
                }
                _ => None,
            })
            .collect()
    }

    /// A one-line summary: each known device with role, term, score and age.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (id, t) in &self.latest {
            let age = self.now.saturating_duration_since(t.at);
            let _ = write!(
                out,
                "{id}: {} term {} score {}{}{} ({}ms ago{}); ",
                t.msg.role,
                t.msg.term,
                t.msg.score,
                if t.msg.online { "" } else { " offline" },
                if t.msg.in_grace { " in grace" } else { "" },
                age.as_millis(),
                if self.left.contains(id) {
                    ", left"
                } else if age <= live_window(&t.msg) {
                    ""
                } else {
                    ", not live"
                }
            );
        }
        if out.is_empty() {
            out.push_str("no heartbeat heard");
        }
        out
    }
}

/// A NATS client recording `understudy.<group>.heartbeat.*` and
/// `understudy.<group>.events.election`. Stops on drop.
#[derive(Debug)]
pub struct Observer {
    group: String,
    started: Instant,
    rec: Arc<Mutex<Recording>>,
    client: async_nats::Client,
    task: JoinHandle<()>,
}

impl Observer {
    /// Connects to `url` (one URL, or several separated by commas) and
    /// subscribes; when this returns the subscriptions are in place. Panics if
    /// it cannot connect or `group` is not a valid group name.
    pub async fn start(url: &str, group: &str) -> Observer {
        let client = connect(url)
            .await
            .unwrap_or_else(|e| panic!("observer: {e:#}"));
        Observer::start_with(client, group).await
    }

    /// [`start`](Self::start) on a client of the test's (another user,
    /// another CA: the compose lab's).
    pub async fn start_with(client: async_nats::Client, group: &str) -> Observer {
        let group_name: GroupName = group
            .parse()
            .unwrap_or_else(|e| panic!("invalid group name {group:?}: {e}"));
        let beats = client
            .subscribe(subjects::heartbeats(&group_name))
            .await
            .unwrap_or_else(|e| panic!("observer: subscribe to heartbeats: {e}"));
        let events_subject = subjects::election_events(&group_name);
        let events = client
            .subscribe(events_subject.clone())
            .await
            .unwrap_or_else(|e| panic!("observer: subscribe to election events: {e}"));
        let leaves = client
            .subscribe(subjects::leaves(&group_name))
            .await
            .unwrap_or_else(|e| panic!("observer: subscribe to goodbyes: {e}"));
        let leave_prefix = subjects::leaves(&group_name)
            .trim_end_matches('*')
            .to_owned();
        client
            .flush()
            .await
            .unwrap_or_else(|e| panic!("observer: flush: {e}"));
        let rec = Arc::new(Mutex::new(Recording::default()));
        let sink = Arc::clone(&rec);
        let task = tokio::spawn(async move {
            let mut all = futures::stream::select(futures::stream::select(beats, events), leaves);
            while let Some(message) = all.next().await {
                let at = Instant::now();
                let subject = message.subject.to_string();
                let mut rec = lock(&sink);
                if subject == events_subject {
                    match decode::<ElectionEvent>(&message.payload) {
                        Ok(msg) => rec.events.push(Timed { at, msg }),
                        Err(e) => rec.undecodable.push(Timed {
                            at,
                            msg: format!("{subject}: {e}"),
                        }),
                    }
                } else if subject.starts_with(&leave_prefix) {
                    match decode::<Leave>(&message.payload) {
                        Ok(msg) => rec.leaves.push(Timed { at, msg }),
                        Err(e) => rec.undecodable.push(Timed {
                            at,
                            msg: format!("{subject}: {e}"),
                        }),
                    }
                } else {
                    match decode::<Heartbeat>(&message.payload) {
                        Ok(msg) => rec.heartbeats.push(Timed { at, msg }),
                        Err(e) => rec.undecodable.push(Timed {
                            at,
                            msg: format!("{subject}: {e}"),
                        }),
                    }
                }
            }
        });
        Observer {
            group: group.to_string(),
            started: Instant::now(),
            rec,
            client,
            task,
        }
    }

    /// The group observed.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The observer's NATS client (e.g. to publish control requests).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// When the observer started; timestamps in messages are relative to it.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The group as heard right now.
    pub fn view(&self) -> View {
        let now = Instant::now();
        let rec = lock(&self.rec);
        let mut latest: BTreeMap<String, Timed<Heartbeat>> = BTreeMap::new();
        for beat in &rec.heartbeats {
            latest.insert(beat.msg.device.to_string(), beat.clone());
        }
        let left = rec
            .leaves
            .iter()
            .filter(|l| {
                latest
                    .get(l.msg.device.as_str())
                    .is_some_and(|t| t.msg.instance == l.msg.instance && t.at <= l.at)
            })
            .map(|l| l.msg.device.to_string())
            .collect();
        View {
            now,
            elapsed: now.saturating_duration_since(self.started),
            latest,
            left,
            events: rec.events.clone(),
        }
    }

    /// Polls the view every 20 ms until `condition` returns `true` or
    /// `Some(value)`, and returns the value; fails after `within`, with what
    /// the group looked like.
    pub async fn wait_for<O, F>(&self, mut condition: F, within: Duration) -> Result<O::Value>
    where
        O: Outcome,
        F: FnMut(&View) -> O,
    {
        let deadline = Instant::now() + within;
        loop {
            let view = self.view();
            if let Some(value) = condition(&view).satisfied() {
                return Ok(value);
            }
            if view.now >= deadline {
                bail!(
                    "condition not met within {within:?} (at +{:.3}s); group {}: {}",
                    view.elapsed.as_secs_f64(),
                    self.group,
                    view.summary()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until exactly one live device reports server; returns it and its
    /// term.
    pub async fn wait_for_server(&self, within: Duration) -> Result<(String, Term)> {
        self.wait_for(View::server, within).await
    }

    /// Waits until every live device agrees that `device` serves (see
    /// [`View::converged`]); returns it and its term.
    pub async fn wait_converged_on(
        &self,
        device: &str,
        within: Duration,
    ) -> Result<(String, Term)> {
        self.wait_for(
            |v: &View| v.converged().filter(|(d, _)| d == device),
            within,
        )
        .await
    }

    /// The live devices reporting role = server right now, with their terms.
    pub fn server(&self) -> Vec<(String, Term)> {
        self.view().servers()
    }

    /// Every election event so far.
    pub fn events(&self) -> Vec<Timed<ElectionEvent>> {
        lock(&self.rec).events.clone()
    }

    /// Every heartbeat so far.
    pub fn heartbeats(&self) -> Vec<Timed<Heartbeat>> {
        lock(&self.rec).heartbeats.clone()
    }

    /// A copy of the whole recording.
    pub fn recording(&self) -> Recording {
        lock(&self.rec).clone()
    }

    /// Checks the one-server invariant over the whole recording so far:
    ///
    /// 1. no two different devices ever reported role = server with the same
    ///    term;
    /// 2. the terms a device reports while server never go backwards;
    /// 3. at no time do two live devices report server with an overlap longer
    ///    than [`LEASE_DURATION`] (1.5 s). A device's server spell runs from
    ///    its first to its last consecutive server heartbeat; a client
    ///    heartbeat or a silence longer than [`LIVE_WINDOW`] ends it.
    ///
    /// Returns an error describing the first violation found.
    pub fn check_one_server(&self) -> Result<()> {
        let rec = lock(&self.rec);
        check_one_server(&rec.heartbeats, self.started)
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(rec: &Mutex<Recording>) -> MutexGuard<'_, Recording> {
    rec.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A stretch of consecutive server heartbeats of one device.
#[derive(Debug, Clone)]
struct Spell {
    device: String,
    start: Instant,
    end: Instant,
    term: Term,
}

/// The invariant behind [`Observer::check_one_server`], over heartbeats in
/// arrival order; times in messages are relative to `origin`.
pub fn check_one_server(beats: &[Timed<Heartbeat>], origin: Instant) -> Result<()> {
    let rel = |t: Instant| format!("+{:.3}s", t.saturating_duration_since(origin).as_secs_f64());

    // 1 and 2.
    let mut holder_of: HashMap<Term, (String, Instant)> = HashMap::new();
    let mut last_term: HashMap<String, (Term, Instant)> = HashMap::new();
    for beat in beats.iter().filter(|b| b.msg.role == Role::Server) {
        let device = beat.msg.device.to_string();
        let term = beat.msg.term;
        match holder_of.get(&term) {
            Some((other, at)) if *other != device => bail!(
                "two servers with term {term}: {other} at {} and {device} at {}",
                rel(*at),
                rel(beat.at)
            ),
            Some(_) => {}
            None => {
                holder_of.insert(term, (device.clone(), beat.at));
            }
        }
        if let Some((before, at)) = last_term.get(&device)
            && term < *before
        {
            bail!(
                "{device}'s server term went backwards: {before} at {} then {term} at {}",
                rel(*at),
                rel(beat.at)
            );
        }
        last_term.insert(device, (term, beat.at));
    }

    // 3: server spells per device, then pairwise overlaps.
    let mut spells: Vec<Spell> = Vec::new();
    let mut open: HashMap<String, Spell> = HashMap::new();
    let mut previous_beat: HashMap<String, Instant> = HashMap::new();
    for beat in beats {
        let device = beat.msg.device.to_string();
        let silent_gap = previous_beat
            .insert(device.clone(), beat.at)
            .is_some_and(|prev| beat.at.saturating_duration_since(prev) > LIVE_WINDOW);
        if (silent_gap || beat.msg.role != Role::Server)
            && let Some(spell) = open.remove(&device)
        {
            spells.push(spell);
        }
        if beat.msg.role == Role::Server {
            open.entry(device.clone())
                .and_modify(|s| {
                    s.end = beat.at;
                    s.term = beat.msg.term;
                })
                .or_insert(Spell {
                    device,
                    start: beat.at,
                    end: beat.at,
                    term: beat.msg.term,
                });
        }
    }
    spells.extend(open.into_values());
    spells.sort_by_key(|s| s.start);
    for (i, a) in spells.iter().enumerate() {
        for b in &spells[i + 1..] {
            if b.start > a.end {
                break; // sorted by start: no later spell overlaps `a`
            }
            if a.device == b.device {
                continue;
            }
            let overlap = a.end.min(b.end).saturating_duration_since(b.start);
            if overlap > LEASE_DURATION {
                bail!(
                    "{} (term {}, server {}..{}) and {} (term {}, server {}..{}) both reported \
                     server for {:.3}s, longer than the {:?} lease",
                    a.device,
                    a.term,
                    rel(a.start),
                    rel(a.end),
                    b.device,
                    b.term,
                    rel(b.start),
                    rel(b.end),
                    overlap.as_secs_f64(),
                    LEASE_DURATION
                );
            }
        }
    }
    Ok(())
}
