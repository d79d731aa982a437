//! The election state machine of one device (B3–B8, S1).
//!
//! Feed it [`Event`]s with the current instant; it returns [`Action`]s and
//! tells, through [`Machine::next_deadline`], when it next needs to be woken.
//!
//! The rules, where a reader finds them:
//! - B4 ranking: [`super::ranking`]; the client side claims only when it is the
//!   rightful candidate among the live, online devices it hears.
//! - B5 elections: a lost server, a released lease, a score change, going
//!   online/offline, an operator trigger and a better candidate all lead to
//!   [`Machine::decide`]; preemption is led by the server, which hands over once
//!   a better candidate past its grace has been live for `preempt_delay`.
//! - Show hold ([`Event::SetHold`]): while the group is held the server does
//!   not hand over to a better candidate (no preemption, no score-driven
//!   re-election) and an operator trigger needs `force`; losing the server
//!   still fails over at once, and a server taken offline, set to score 0 or
//!   shut down still hands over. Once the hold is lifted, a better candidate
//!   that has waited `preempt_delay` takes over at once.
//! - B6 grace: [`Machine::in_grace`].
//! - L1 takeover: a client takes over at once from a holder its failure
//!   detector declared lost, or whose device beat as another instance, after
//!   the lease naming it was seen; from a holder it has not heard of yet (or
//!   knows only as an older instance) after [`UNHEARD_HOLDER_WAIT`]: the
//!   lease and the peers' liveness travel apart. A renewal of the lease by
//!   a holder not heard starts that wait again, and one by a holder
//!   declared lost makes it a holder not heard: a lease written since is
//!   news that its holder is alive.
//! - B7/B8: nobody claims when no online device has a non-zero score.
//! - S1: the lease changes only by compare-and-set; a claim that wins makes
//!   its revision the term; a server renews by compare-and-set on its own last
//!   revision and stops serving when a renewal is refused, when it sees a
//!   newer term, or when its lease could have expired at the store
//!   (`valid_until`, counted from the *sending* of the last good renewal and
//!   shortened by the clock-drift allowance).

use std::collections::BTreeMap;
use std::time::Duration;

use understudy_protocol::ledger::{
    LedgerCandidate, LedgerEntry, LedgerKind, LedgerRule, LedgerTimings, PreviousServer,
};
use understudy_protocol::messages::{
    ElectionEventKind, ElectionReason, LeaseHolder, LeaseRecord, Released, StepDownReason,
};
use understudy_protocol::{
    DeviceId, GroupName, InstanceId, Mac, Role, SCHEMA_VERSION, Score, Term,
};

use super::config::ElectionConfig;
use super::ranking::{Candidate, deciding_rule, winner};
use super::types::{Action, Event, Expect, OpId, PeerStatus, StoreOutcome};

/// A store call awaiting its reply.
#[derive(Debug, Clone)]
struct Pending {
    id: OpId,
    kind: OpKind,
    sent_at: Duration,
    record: LeaseRecord,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum OpKind {
    Claim(ElectionReason),
    Renew,
    Release,
}

#[derive(Debug, Clone, PartialEq)]
enum RoleState {
    Client,
    Server {
        term: Term,
        /// The revision of this server's last successful write.
        revision: u64,
        /// The server acts only before this instant (its own clock).
        valid_until: Duration,
        /// When the next renewal is due.
        renew_at: Duration,
    },
}

/// How a client sees the lease.
#[derive(Debug, Clone, PartialEq)]
enum LeaseState {
    /// A live peer holds it and acts as server (or is about to).
    Held { holder: DeviceId, term: Term },
    /// Nobody serves: the lease is absent, released, ours from an earlier
    /// attempt, or held by a device that is lost, offline or stepped down.
    Vacant {
        /// A successor named by a recent hand-over.
        handover_to: Option<DeviceId>,
        /// A holder that is no longer heard, with its term.
        lost_holder: Option<(DeviceId, Term)>,
    },
}

/// What a machine tells the outside about itself: for heartbeats and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineStatus {
    /// Client or server.
    pub role: Role,
    /// The newest term known (this device's own when it is server).
    pub term: Term,
    /// Whether the start-up grace is still running.
    pub in_grace: bool,
    /// Whether the device is online.
    pub online: bool,
    /// The device's score.
    pub score: Score,
    /// The server as this device sees it.
    pub server: Option<(DeviceId, Term)>,
}

/// The election state machine of one device.
#[derive(Debug, Clone)]
pub struct Machine {
    cfg: ElectionConfig,
    group: GroupName,
    device: DeviceId,
    instance: InstanceId,
    mac: Mac,
    score: Score,
    online: bool,
    stopped: bool,
    grace_until: Option<Duration>,
    peers: BTreeMap<DeviceId, PeerStatus>,
    lease: Option<(u64, LeaseRecord)>,
    lease_seen_at: Duration,
    /// The lease's holder as last observed, since when it has held it in
    /// this machine's view, and whether it was declared lost since then.
    holder_news: Option<HolderNews>,
    role: RoleState,
    op: Option<Pending>,
    next_op: u64,
    known_term: Term,
    better_since: Option<Duration>,
    claim_not_before: Duration,
    reason: Option<ElectionReason>,
    operator_trigger: bool,
    /// The group's show hold (no preemption) as last told.
    held: bool,
    lost_reported: Term,
    no_viable_reported: bool,
    /// The project-sync address written into the lease while serving.
    project_addr: Option<String>,
    /// The instant of the last event handled.
    now: Duration,
    out: Vec<Action>,
    /// The last holder seen in a lease record, with its term: the previous
    /// server of the next ledger entry when the lease has since run out.
    last_holder: Option<(DeviceId, Term)>,
    /// While serving: what last made another device look better (a new or
    /// newly online device, or a score change), the cause a hand-over to
    /// it gives its successor's ledger entry.
    preempt_cause: Option<ElectionReason>,
    /// Since when this client has seen the group without a server.
    vacant_since: Option<Duration>,
    /// What the claim under way will write into the ledger if it wins.
    claim_note: Option<ClaimNote>,
    /// A server that released the lease because it shuts down: its last
    /// beats, still on their way, must not make it a candidate again (the
    /// successor would hand straight back to a device that is leaving).
    departed: Option<(DeviceId, InstanceId)>,
}

/// What a claim saw, kept until it wins: the ledger entry's body.
#[derive(Debug, Clone)]
struct ClaimNote {
    cause: ElectionReason,
    rule: LedgerRule,
    candidates: Vec<LedgerCandidate>,
    previous: Option<PreviousServer>,
    claimed_at: Duration,
    vacant_since: Option<Duration>,
}

/// What this machine has heard of the current lease holder.
#[derive(Debug, Clone, PartialEq)]
struct HolderNews {
    device: DeviceId,
    instance: InstanceId,
    /// The term it holds: a new term is news that it is alive.
    term: Term,
    /// When a lease naming this holder was first observed.
    since: Duration,
    /// Whether a beat of it acting as server with this term was heard: a
    /// loss verdict says it is gone only then. Before, the verdict rests on
    /// beats it sent before it served (a client beats slowly): the silence
    /// may be this device's own, cut off while the holder was elected, and
    /// the holder is waited for like one not yet heard.
    heard_serving: bool,
    /// Whether the failure detector declared it lost since then.
    lost: bool,
    /// The lease revision this machine knew when it was declared lost: a
    /// later write of the same lease by the holder (a renewal) shows it
    /// alive after all.
    lost_at: u64,
    /// Whether another instance of its device beat since then.
    replaced: bool,
}

/// How long a client waits to hear of a lease holder its failure detector
/// has not yet declared live before it counts the holder as gone. The
/// verdict that a peer is live travels the bus apart from the lease, so a
/// device that was away (paused, cut off) may see the lease first: it must
/// not depose a server it simply has not heard yet. A holder heard acting as
/// server that the detector then declares lost is gone at once (L1); a loss
/// verdict about a holder never heard serving (it rests on the slow beats
/// the holder sent as a client, and this device may just be back from a
/// cut-off) starts this wait again from the verdict.
pub const UNHEARD_HOLDER_WAIT: Duration = Duration::from_secs(1);

/// Wait after a store call failed before claiming again.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

impl Machine {
    /// A device that starts at `now`, online or not, with its start-up grace
    /// running (B6).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: ElectionConfig,
        group: GroupName,
        device: DeviceId,
        instance: InstanceId,
        mac: Mac,
        score: Score,
        online: bool,
        now: Duration,
    ) -> Machine {
        Machine {
            grace_until: Some(now + cfg.grace_period),
            cfg,
            group,
            device,
            instance,
            mac,
            score,
            online,
            stopped: false,
            peers: BTreeMap::new(),
            lease: None,
            lease_seen_at: now,
            holder_news: None,
            role: RoleState::Client,
            op: None,
            next_op: 0,
            known_term: Term::ZERO,
            better_since: None,
            claim_not_before: Duration::ZERO,
            reason: None,
            operator_trigger: false,
            held: false,
            lost_reported: Term::ZERO,
            no_viable_reported: false,
            project_addr: None,
            now,
            out: Vec::new(),
            last_holder: None,
            preempt_cause: None,
            vacant_since: None,
            claim_note: None,
            departed: None,
        }
    }

    /// Names the address of this device's project-sync service, written into
    /// the lease record whenever this device claims or renews it, so clients
    /// find the server's gRPC endpoint with the lease (B11).
    pub fn set_project_addr(&mut self, addr: Option<String>) {
        self.project_addr = addr;
    }

    /// A one-line account of what the machine believes, for logs: the lease
    /// it has seen and the peers it hears.
    pub fn describe_view(&self) -> String {
        let lease = match &self.lease {
            None => "absent".to_string(),
            Some((rev, rec)) => format!(
                "rev {rev} holder {} term {} handover {}",
                rec.holder.as_ref().map_or("none".to_string(), |h| format!(
                    "{}/{}",
                    h.device, h.instance
                )),
                rec.term_at(*rev),
                rec.handover_to
                    .as_ref()
                    .map_or("-".to_string(), |d| d.to_string())
            ),
        };
        let peers: Vec<String> = self
            .peers
            .values()
            .map(|p| {
                format!(
                    "{}/{} {} t{} s{}{}{}",
                    p.device,
                    p.instance,
                    p.role,
                    p.term,
                    p.score,
                    if p.online { "" } else { " offline" },
                    if p.in_grace { " grace" } else { "" }
                )
            })
            .collect();
        format!("lease [{lease}] peers [{}]", peers.join(", "))
    }

    /// This device's id.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// Feeds one event that happened at `now` and returns what to do.
    pub fn handle(&mut self, event: Event, now: Duration) -> Vec<Action> {
        if self.stopped {
            return Vec::new();
        }
        self.now = self.now.max(now);
        self.advance(now);
        match event {
            Event::Tick => {}
            Event::PeerSeen(p) => self.peer_seen(p),
            Event::PeerLost { device, instance } => self.peer_lost(&device, instance, now),
            Event::LeaseObserved(obs) => self.observe_lease(obs, now),
            Event::StoreReply { op, outcome } => self.store_reply(op, outcome, now),
            Event::SetScore(s) => self.set_score(s, now),
            Event::SetOnline(on) => self.set_online(on, now),
            Event::SetHold(on) => self.held = on,
            // While held, only a forced trigger counts.
            Event::TriggerElection { force } if self.held && !force => {}
            Event::TriggerElection { .. } => {
                self.operator_trigger = true;
                self.reason = Some(ElectionReason::Operator);
                if self.is_server() {
                    self.publish(ElectionEventKind::ElectionStarted {
                        reason: ElectionReason::Operator,
                    });
                }
            }
            Event::Shutdown => {
                self.hand_over(StepDownReason::Shutdown, ElectionReason::HandOver, now);
                self.stopped = true;
                return std::mem::take(&mut self.out);
            }
        }
        self.decide(now);
        std::mem::take(&mut self.out)
    }

    /// The next instant at which the machine must be fed an [`Event::Tick`].
    pub fn next_deadline(&self) -> Option<Duration> {
        if self.stopped {
            return None;
        }
        let mut d: Option<Duration> = None;
        let after = self.now;
        // Only deadlines still ahead: one that has passed was acted on.
        let mut at = |t: Duration| {
            if t > after {
                d = Some(d.map_or(t, |x| x.min(t)));
            }
        };
        if let Some(g) = self.grace_until {
            at(g);
        }
        if let Some(p) = &self.op {
            at(p.sent_at + self.cfg.store_timeout);
        }
        if let RoleState::Server {
            valid_until,
            renew_at,
            ..
        } = self.role
        {
            at(valid_until);
            at(renew_at);
            if let Some(b) = self.better_since {
                at(b + self.cfg.preempt_delay);
            }
        } else if self.claim_not_before > Duration::ZERO {
            at(self.claim_not_before);
        }
        if let Some((_, rec)) = &self.lease
            && rec.holder.is_none()
            && rec.handover_to.is_some()
        {
            at(self.lease_seen_at + self.cfg.handover_timeout);
        }
        if !self.is_server()
            && let Some(until) = self.unheard_holder_until()
        {
            at(until);
        }
        d
    }

    /// What this machine shows the outside.
    ///
    /// A server whose lease has run out by `now` shows as a client even before
    /// the machine was fed that instant: a process that wakes from a pause
    /// must not announce a role it has lost.
    pub fn status(&self, now: Duration) -> MachineStatus {
        let serving = self.serving_at(now);
        let server = match &self.role {
            RoleState::Server { term, .. } if serving => Some((self.device.clone(), *term)),
            RoleState::Server { .. } => None,
            RoleState::Client => match self.lease_state(now) {
                LeaseState::Held { holder, term } => Some((holder, term)),
                LeaseState::Vacant { .. } => None,
            },
        };
        MachineStatus {
            role: if serving { Role::Server } else { Role::Client },
            term: match self.role {
                RoleState::Server { term, .. } => term,
                RoleState::Client => self.known_term,
            },
            in_grace: self.in_grace(now),
            online: self.online,
            score: self.score,
            server,
        }
    }

    /// Whether this device serves at `now`: it holds the role and its lease
    /// has not run out.
    pub fn serving_at(&self, now: Duration) -> bool {
        matches!(self.role, RoleState::Server { valid_until, .. } if now < valid_until)
    }

    /// Whether the group's show hold is on, as this machine was last told.
    pub fn held(&self) -> bool {
        self.held
    }

    /// Whether this device holds the server role (as of the last event).
    pub fn is_server(&self) -> bool {
        matches!(self.role, RoleState::Server { .. })
    }

    /// This device's term while it serves.
    pub fn server_term(&self) -> Option<Term> {
        match self.role {
            RoleState::Server { term, .. } => Some(term),
            RoleState::Client => None,
        }
    }

    /// B6: a device in its start-up grace does not claim the server. The grace
    /// ends when `grace_period` has passed, or as soon as a live server is seen
    /// (the device then joins it as a client at once).
    pub fn in_grace(&self, now: Duration) -> bool {
        self.grace_until.is_some_and(|g| now < g)
    }

    // ----- time -----

    fn advance(&mut self, now: Duration) {
        if let Some(g) = self.grace_until
            && now >= g
        {
            self.grace_until = None;
            if self.lease.is_none() {
                self.reason = Some(ElectionReason::Startup);
            }
        }
        if let Some(p) = &self.op
            && now >= p.sent_at + self.cfg.store_timeout
        {
            let id = p.id;
            self.store_reply(id, StoreOutcome::Failed, now);
        }
        if let RoleState::Server {
            term, valid_until, ..
        } = self.role
            && now >= valid_until
        {
            // S1: the lease may have expired at the store; stop acting.
            self.step_down(term, StepDownReason::LeaseLost);
            self.reason = Some(ElectionReason::NoServer);
        }
    }

    // ----- inputs -----

    fn peer_seen(&mut self, p: PeerStatus) {
        if p.device == self.device
            || self
                .departed
                .as_ref()
                .is_some_and(|(d, i)| *d == p.device && *i == p.instance)
        {
            return;
        }
        if let Some(news) = self.holder_news.as_mut()
            && news.device == p.device
        {
            if news.instance != p.instance {
                news.replaced = true;
            } else if p.role == Role::Server && p.term >= news.term {
                news.heard_serving = true;
            }
        }
        if p.term > self.known_term {
            self.known_term = p.term;
        }
        match self.peers.get(&p.device) {
            None if self.lease.is_some() => {
                self.reason.get_or_insert(ElectionReason::Preemption);
                self.preempt_cause = Some(ElectionReason::Preemption);
            }
            None => self.preempt_cause = Some(ElectionReason::Preemption),
            Some(old) if old.score != p.score || old.online != p.online => {
                self.reason = Some(ElectionReason::ScoreChanged);
                self.preempt_cause = Some(if old.score != p.score {
                    ElectionReason::ScoreChanged
                } else {
                    ElectionReason::Preemption
                });
            }
            Some(_) => {}
        }
        self.peers.insert(p.device.clone(), p);
    }

    /// One instance of `device` is gone. The holder is lost only if the lease
    /// names that very instance: the goodbye or silence of a process that
    /// has since restarted and won the lease again says nothing of the new
    /// one (it is waited for like any holder not yet heard).
    fn peer_lost(&mut self, device: &DeviceId, instance: InstanceId, now: Duration) {
        if let Some(news) = self.holder_news.as_mut()
            && &news.device == device
            && news.instance == instance
        {
            if news.heard_serving {
                news.lost = true;
                news.lost_at = self.lease.as_ref().map_or(0, |(rev, _)| *rev);
            } else {
                // The verdict rests on its client beats: this device may
                // just be back from a cut-off. Wait for its server beats
                // from now, as for a holder not heard yet.
                news.since = news.since.max(now);
            }
        }
        if self.peers.remove(device).is_some() {
            let was_holder = self
                .lease
                .as_ref()
                .and_then(|(_, r)| r.holder.as_ref())
                .is_some_and(|h| &h.device == device && h.instance == instance);
            if was_holder {
                self.reason = Some(ElectionReason::ServerLost);
            }
        }
    }

    fn observe_lease(&mut self, obs: Option<(u64, LeaseRecord)>, now: Duration) {
        match obs {
            Some((rev, rec)) => {
                if self.lease.as_ref().is_some_and(|(cur, _)| rev <= *cur) {
                    return; // stale: watches and replies may arrive late
                }
                let term = rec.term_at(rev);
                if term > self.known_term {
                    self.known_term = term;
                }
                if let RoleState::Server {
                    term: mine,
                    revision,
                    ..
                } = self.role
                    && rev > revision
                    && !(self.is_mine(&rec) && term == mine)
                {
                    // Someone wrote over our lease: we are deposed (S1).
                    self.step_down(mine, StepDownReason::Deposed);
                }
                if rec.holder.is_none()
                    && let Some(r) = &rec.released
                {
                    self.released_by(r);
                }
                if rec.holder.is_none() {
                    self.reason = Some(if rec.handover_to.is_some() {
                        ElectionReason::HandOver
                    } else {
                        ElectionReason::NoServer
                    });
                }
                let heard = |news: &HolderNews, peers: &BTreeMap<DeviceId, PeerStatus>| {
                    peers
                        .get(&news.device)
                        .is_some_and(|p| p.instance == news.instance)
                };
                let previous_rev = self.lease.as_ref().map_or(0, |(r, _)| *r);
                if let Some(news) = self.holder_news.as_mut()
                    && term == news.term
                    && rec
                        .holder
                        .as_ref()
                        .is_some_and(|h| h.device == news.device && h.instance == news.instance)
                {
                    if news.lost && rev > news.lost_at {
                        // The holder renewed its lease after this device
                        // declared it lost: it is alive, and the silence was
                        // this device's (back from a cut-off, simulator seed
                        // 50535 with 1 s client beats). Wait for its beats as
                        // for a holder not heard yet; if none come, it is
                        // replaced after the wait.
                        news.lost = false;
                        news.since = now;
                    } else if !news.lost
                        && !news.replaced
                        && rev > previous_rev
                        && !heard(news, &self.peers)
                    {
                        // A renewal of a holder not heard (yet): news that it
                        // is alive, so the wait for its beats starts again
                        // (seed 198737 at 1 s client beats: a device cut off
                        // past the wait, back on the bus, saw the renewed
                        // lease and deposed the server on the old wait).
                        news.since = now;
                    }
                }
                if let Some(h) = &rec.holder {
                    self.last_holder = Some((h.device.clone(), term));
                }
                self.lease = Some((rev, rec));
                self.lease_seen_at = now;
            }
            None => {
                if self.lease.is_some() {
                    self.reason.get_or_insert(ElectionReason::NoServer);
                }
                self.lease = None;
                self.lease_seen_at = now;
            }
        }
        self.note_holder(now);
    }

    /// Starts the news of a lease holder when the observed holder or its
    /// term changes.
    fn note_holder(&mut self, now: Duration) {
        let holder = self.lease.as_ref().and_then(|(rev, rec)| {
            rec.holder
                .as_ref()
                .map(|h| (h.device.clone(), h.instance, rec.term_at(*rev)))
        });
        let same = match (&self.holder_news, &holder) {
            (Some(n), Some((d, i, t))) => &n.device == d && n.instance == *i && n.term == *t,
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.holder_news = holder.map(|(device, instance, term)| HolderNews {
                heard_serving: self.peers.get(&device).is_some_and(|p| {
                    p.instance == instance && p.role == Role::Server && p.term >= term
                }),
                device,
                instance,
                term,
                since: now,
                lost: false,
                lost_at: 0,
                replaced: false,
            });
        }
    }

    /// A server released the lease saying why: a device that shuts down,
    /// goes offline or drops to score 0 is no candidate any more, whatever
    /// its beats still on their way say (they were sent before). A later
    /// beat of it (a new instance, or news after the release) counts again.
    fn released_by(&mut self, r: &Released) {
        let Some(p) = self
            .peers
            .get_mut(&r.by)
            .filter(|p| p.instance == r.instance)
        else {
            if r.reason == StepDownReason::Shutdown {
                self.departed = Some((r.by.clone(), r.instance));
            }
            return;
        };
        match r.reason {
            StepDownReason::Shutdown => {
                self.peers.remove(&r.by);
                self.departed = Some((r.by.clone(), r.instance));
            }
            StepDownReason::Offline => p.online = false,
            StepDownReason::ScoreZero => p.score = Score::new(0),
            _ => {}
        }
    }

    fn set_score(&mut self, score: Score, now: Duration) {
        if score == self.score {
            return;
        }
        self.score = score;
        self.reason = Some(ElectionReason::ScoreChanged);
        self.preempt_cause = Some(ElectionReason::ScoreChanged);
        if !score.is_candidate() && self.is_server() {
            self.hand_over(StepDownReason::ScoreZero, ElectionReason::ScoreChanged, now);
        }
    }

    fn set_online(&mut self, online: bool, now: Duration) {
        if online == self.online {
            return;
        }
        self.online = online;
        if online {
            // Joining again: give peers a chance to be compared (B6).
            self.grace_until = Some(now + self.cfg.grace_period);
        } else if self.is_server() {
            self.hand_over(StepDownReason::Offline, ElectionReason::HandOver, now);
        }
    }

    fn store_reply(&mut self, op: OpId, outcome: StoreOutcome, now: Duration) {
        let pending = match &self.op {
            Some(p) if p.id == op => self.op.take(),
            _ => None,
        };
        let Some(pending) = pending else {
            // A late reply to a call we gave up on: keep what it teaches.
            if let StoreOutcome::Conflict { current } = outcome {
                self.observe_lease(current, now);
            }
            return;
        };
        match (pending.kind, outcome) {
            (OpKind::Claim(reason), StoreOutcome::Written { revision }) => {
                self.won(revision, reason, pending, now);
            }
            (OpKind::Renew, StoreOutcome::Written { revision }) => {
                if let RoleState::Server { term, .. } = self.role {
                    self.role = RoleState::Server {
                        term,
                        revision,
                        valid_until: pending.sent_at + self.cfg.local_validity(),
                        renew_at: pending.sent_at + self.cfg.renew_interval,
                    };
                    self.observe_lease(Some((revision, pending.record)), now);
                }
            }
            (OpKind::Release, StoreOutcome::Written { revision }) => {
                self.observe_lease(Some((revision, pending.record)), now);
            }
            (kind, StoreOutcome::Conflict { current }) => {
                let mine = current
                    .as_ref()
                    .filter(|(_, r)| self.is_mine(r))
                    .map(|(rev, r)| (*rev, r.term_at(*rev)));
                match (kind, &mut self.role, mine) {
                    // An earlier write of ours landed after all: adopt its
                    // revision and renew (or release) again at once.
                    (
                        OpKind::Renew,
                        RoleState::Server {
                            term,
                            revision,
                            renew_at,
                            ..
                        },
                        Some((rev, t)),
                    ) if t == *term => {
                        *revision = rev;
                        *renew_at = now;
                    }
                    (OpKind::Release, _, Some((rev, t))) => {
                        self.observe_lease(current, now);
                        let to = pending.record.handover_to.clone();
                        let released = pending.record.released.clone();
                        self.send_release(rev, t, to, released, now);
                    }
                    (OpKind::Renew, RoleState::Server { term, .. }, _) => {
                        let term = *term;
                        self.observe_lease(current, now);
                        if self.is_server() {
                            self.step_down(term, StepDownReason::Deposed);
                        }
                    }
                    _ => self.observe_lease(current, now),
                }
            }
            (OpKind::Renew, StoreOutcome::Failed) => {
                if let RoleState::Server { renew_at, .. } = &mut self.role {
                    *renew_at = now + RETRY_BACKOFF;
                }
            }
            (OpKind::Claim(_), StoreOutcome::Failed) => {
                self.claim_not_before = now + RETRY_BACKOFF;
            }
            (OpKind::Release, StoreOutcome::Failed) => {}
        }
    }

    // ----- decisions -----

    /// Looks at the current view and does what the rules say (B4–B8).
    fn decide(&mut self, now: Duration) {
        if !self.online {
            return;
        }
        if let RoleState::Server { .. } = self.role {
            self.decide_as_server(now);
        } else {
            self.decide_as_client(now);
        }
    }

    fn decide_as_server(&mut self, now: Duration) {
        let RoleState::Server {
            term,
            revision,
            renew_at,
            ..
        } = self.role
        else {
            return;
        };
        // P1: a better candidate, live and past its grace, takes over once it
        // has been there for `preempt_delay` (at once on an operator trigger).
        let me = self.me_candidate();
        let better = self
            .peers
            .values()
            .filter(|p| p.online && !p.in_grace)
            .map(candidate)
            .filter(|c| c.score.is_candidate() && c.outranks(&me))
            .max_by(|a, b| a.rank_cmp(b));
        let operator = std::mem::take(&mut self.operator_trigger);
        match better {
            Some(_) => {
                // Counted while held too, so that lifting the hold lets a
                // candidate that has waited long enough take over at once.
                let since = *self.better_since.get_or_insert(now);
                let due = now >= since + self.cfg.preempt_delay;
                if operator || (due && !self.held) {
                    let cause = if operator {
                        ElectionReason::Operator
                    } else {
                        self.preempt_cause.unwrap_or(ElectionReason::Preemption)
                    };
                    self.hand_over(StepDownReason::HandOver, cause, now);
                    return;
                }
            }
            None => {
                self.better_since = None;
                if operator {
                    // The operator asked; the status quo is the rightful answer.
                    self.publish(ElectionEventKind::ServerElected {
                        device: self.device.clone(),
                        mac: self.mac,
                        score: self.score,
                        term,
                        reason: ElectionReason::Operator,
                    });
                    self.ledger_kept(term);
                }
            }
        }
        if now >= renew_at && self.op.is_none() {
            let record = self.record(Some(term), None, true);
            let op = self.start_op(OpKind::Renew, &record, now);
            self.out.push(Action::Renew {
                op,
                revision,
                record,
            });
        }
    }

    fn decide_as_client(&mut self, now: Duration) {
        self.better_since = None;
        self.operator_trigger = false;
        let state = self.lease_state(now);
        if let LeaseState::Held { .. } = state {
            // B6: a server is live; join it as a client at once.
            self.vacant_since = None;
            self.grace_until = None;
            self.no_viable_reported = false;
            self.reason = None;
            return;
        }
        let LeaseState::Vacant {
            handover_to,
            lost_holder,
        } = state
        else {
            return;
        };
        self.vacant_since.get_or_insert(now);
        if self.op.is_some() || now < self.claim_not_before {
            return;
        }
        let named = handover_to.as_ref() == Some(&self.device);
        if !named && self.in_grace(now) {
            return;
        }
        let rightful = match &handover_to {
            Some(to) if self.is_live_viable(to) => Some(to.clone()),
            _ => self.rightful(),
        };
        let Some(rightful) = rightful else {
            // B7: nobody is viable; no election runs. One device says so.
            if !self.no_viable_reported && self.is_reporter() {
                self.no_viable_reported = true;
                self.publish(ElectionEventKind::NoViableCandidate);
            }
            return;
        };
        self.no_viable_reported = false;
        if rightful != self.device || !self.score.is_candidate() {
            return;
        }
        let reason = if named {
            ElectionReason::HandOver
        } else if lost_holder.is_some() {
            ElectionReason::ServerLost
        } else {
            self.reason.unwrap_or(ElectionReason::NoServer)
        };
        let holder_lost = lost_holder.is_some();
        if let Some((device, term)) = lost_holder
            && term > self.lost_reported
        {
            self.lost_reported = term;
            // The driver, which hears the heartbeats, adds `silent_ms`.
            self.publish(ElectionEventKind::ServerLost {
                device,
                term,
                silent_ms: None,
            });
        }
        self.publish(ElectionEventKind::ElectionStarted { reason });
        self.claim_note = Some(self.claim_note(reason, holder_lost, named, now));
        let expect = match &self.lease {
            Some((rev, _)) => Expect::Revision(*rev),
            None => Expect::Absent,
        };
        let record = self.record(None, None, true);
        let op = self.start_op(OpKind::Claim(reason), &record, now);
        self.out.push(Action::Claim { op, expect, record });
    }

    fn won(&mut self, revision: u64, reason: ElectionReason, pending: Pending, now: Duration) {
        let term = Term::from_revision(revision);
        self.observe_lease(Some((revision, pending.record)), now);
        self.role = RoleState::Server {
            term,
            revision,
            valid_until: pending.sent_at + self.cfg.local_validity(),
            renew_at: pending.sent_at + self.cfg.renew_interval,
        };
        if term > self.known_term {
            self.known_term = term;
        }
        self.grace_until = None;
        self.reason = None;
        self.better_since = None;
        self.preempt_cause = None;
        self.out.push(Action::BecomeServer { term });
        self.publish(ElectionEventKind::ServerElected {
            device: self.device.clone(),
            mac: self.mac,
            score: self.score,
            term,
            reason,
        });
        if let Some(note) = self.claim_note.take() {
            let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            let vacant_ms = note.vacant_since.map(|v| ms(now.saturating_sub(v)));
            let entry = LedgerEntry {
                schema: SCHEMA_VERSION,
                group: self.group.clone(),
                kind: LedgerKind::Elected,
                server: self.device.clone(),
                term,
                at_ms: 0,
                cause: note.cause,
                rule: note.rule,
                candidates: note.candidates,
                previous: note.previous,
                held: self.held,
                timings: LedgerTimings {
                    detection_ms: None,
                    vacant_ms,
                    claim_ms: Some(ms(now.saturating_sub(note.claimed_at))),
                    without_server_ms: vacant_ms,
                },
            };
            self.out.push(Action::Ledger(entry));
        }
        self.vacant_since = None;
    }

    /// Planned hand-over (B5, and SIGTERM): stop serving first, then release
    /// the lease by compare-and-set, naming the best remaining candidate.
    fn hand_over(&mut self, reason: StepDownReason, cause: ElectionReason, now: Duration) {
        let RoleState::Server { term, revision, .. } = self.role else {
            return;
        };
        let released = Released {
            by: self.device.clone(),
            instance: self.instance,
            reason,
            cause,
        };
        let to = self.successor();
        self.step_down(term, reason);
        if let Some(to) = &to {
            self.publish(ElectionEventKind::HandedOver {
                from: self.device.clone(),
                to: to.clone(),
                term,
            });
        }
        self.send_release(revision, term, to, Some(released), now);
    }

    fn send_release(
        &mut self,
        revision: u64,
        term: Term,
        to: Option<DeviceId>,
        released: Option<Released>,
        now: Duration,
    ) {
        let mut record = self.record(Some(term), to, false);
        record.released = released;
        let op = self.start_op(OpKind::Release, &record, now);
        self.out.push(Action::Release {
            op,
            revision,
            record,
        });
    }

    fn step_down(&mut self, term: Term, reason: StepDownReason) {
        if !self.is_server() {
            return;
        }
        self.role = RoleState::Client;
        self.better_since = None;
        if matches!(self.op.as_ref().map(|p| p.kind), Some(OpKind::Renew)) {
            self.op = None;
        }
        self.out.push(Action::StepDown { term, reason });
        self.publish(ElectionEventKind::SteppedDown {
            device: self.device.clone(),
            term,
            reason,
        });
    }

    // ----- views -----

    fn lease_state(&self, now: Duration) -> LeaseState {
        let vacant = |handover_to, lost_holder| LeaseState::Vacant {
            handover_to,
            lost_holder,
        };
        let Some((rev, rec)) = &self.lease else {
            return vacant(None, None);
        };
        let term = rec.term_at(*rev);
        let Some(holder) = &rec.holder else {
            let fresh = now < self.lease_seen_at + self.cfg.handover_timeout;
            return vacant(rec.handover_to.clone().filter(|_| fresh), None);
        };
        if holder.device == self.device {
            // Ours from an earlier attempt or instance, while we are a client.
            return vacant(None, None);
        }
        // A live holder holds the lease, whatever its last heartbeat said of
        // its role: heartbeats and lease updates travel apart, so a beat may
        // be older than the lease we see. A holder that stepped down releases
        // the lease, or — if it cannot reach the store — lets it expire.
        let held = LeaseState::Held {
            holder: holder.device.clone(),
            term,
        };
        match self.peers.get(&holder.device) {
            Some(p) if p.instance == holder.instance => held,
            // Not heard (or only an older instance was): gone once declared
            // lost or replaced by a newer instance, or not heard for long.
            _ => match self.unheard_holder_until() {
                Some(until) if now < until => held,
                _ => vacant(None, Some((holder.device.clone(), term))),
            },
        }
    }

    /// Until when a holder not heard is waited for; `None` once it was
    /// declared lost, or another instance of its device beat, since its
    /// lease was seen.
    fn unheard_holder_until(&self) -> Option<Duration> {
        self.holder_news
            .as_ref()
            .filter(|n| !n.lost && !n.replaced)
            .map(|n| n.since + UNHEARD_HOLDER_WAIT)
    }

    fn me_candidate(&self) -> Candidate {
        Candidate {
            device: self.device.clone(),
            mac: self.mac,
            score: self.score,
        }
    }

    /// The rightful server among the online devices this device hears,
    /// itself included; peers still in grace count (they claim when it ends).
    fn rightful(&self) -> Option<DeviceId> {
        let mut all: Vec<Candidate> = self
            .peers
            .values()
            .filter(|p| p.online)
            .map(candidate)
            .collect();
        if self.online {
            all.push(self.me_candidate());
        }
        winner(&all).map(|c| c.device.clone())
    }

    /// The best other device to hand the lease to.
    fn successor(&self) -> Option<DeviceId> {
        let others: Vec<Candidate> = self
            .peers
            .values()
            .filter(|p| p.online)
            .map(candidate)
            .collect();
        winner(&others).map(|c| c.device.clone())
    }

    fn is_live_viable(&self, device: &DeviceId) -> bool {
        if device == &self.device {
            return self.online && self.score.is_candidate();
        }
        self.peers
            .get(device)
            .is_some_and(|p| p.online && p.score.is_candidate())
    }

    /// The one device that reports "no viable candidate": the lowest MAC
    /// among the online devices heard, so the event is not published N times.
    fn is_reporter(&self) -> bool {
        let me = (self.mac, &self.device);
        self.peers
            .values()
            .filter(|p| p.online)
            .all(|p| (p.mac, &p.device) > me)
    }

    fn is_mine(&self, rec: &LeaseRecord) -> bool {
        rec.holder
            .as_ref()
            .is_some_and(|h| h.device == self.device && h.instance == self.instance)
    }

    fn record(&self, term: Option<Term>, handover_to: Option<DeviceId>, held: bool) -> LeaseRecord {
        LeaseRecord {
            schema: SCHEMA_VERSION,
            group: self.group.clone(),
            holder: held.then(|| LeaseHolder {
                device: self.device.clone(),
                instance: self.instance,
                mac: self.mac,
                score: self.score,
                project_addr: self.project_addr.clone(),
            }),
            term,
            handover_to,
            released: None,
        }
    }

    // ----- the ledger -----

    /// Every device this one hears, itself included, best ranked first
    /// (online devices with a non-zero score before the others).
    fn ledger_candidates(&self) -> Vec<LedgerCandidate> {
        let mut all: Vec<(bool, Candidate)> = self
            .peers
            .values()
            .map(|p| (p.online, candidate(p)))
            .collect();
        all.push((self.online, self.me_candidate()));
        all.sort_by(|(a_on, a), (b_on, b)| {
            let a_viable = *a_on && a.score.is_candidate();
            let b_viable = *b_on && b.score.is_candidate();
            b_viable.cmp(&a_viable).then_with(|| b.rank_cmp(a))
        });
        all.into_iter()
            .map(|(online, c)| LedgerCandidate {
                device: c.device,
                score: c.score,
                mac: c.mac,
                online,
            })
            .collect()
    }

    /// The rule that makes this device the rightful one against the other
    /// live, online candidates `others`.
    fn rule_against<'a>(&self, others: impl IntoIterator<Item = &'a PeerStatus>) -> LedgerRule {
        let others: Vec<Candidate> = others
            .into_iter()
            .filter(|p| p.online && p.score.is_candidate())
            .map(candidate)
            .collect();
        deciding_rule(&self.me_candidate(), &others)
    }

    /// What a claim about to be sent will say in the ledger if it wins.
    fn claim_note(
        &self,
        reason: ElectionReason,
        holder_lost: bool,
        named: bool,
        now: Duration,
    ) -> ClaimNote {
        let lease = self.lease.as_ref();
        let released = lease.and_then(|(_, r)| r.released.as_ref());
        let previous = match lease {
            Some((rev, rec)) => {
                let term = rec.term_at(*rev);
                let device = match (&rec.holder, released) {
                    (Some(h), _) => Some(h.device.clone()),
                    (None, Some(r)) => Some(r.by.clone()),
                    (None, None) => self
                        .last_holder
                        .as_ref()
                        .filter(|(_, t)| *t == term)
                        .map(|(d, _)| d.clone()),
                };
                Some(PreviousServer {
                    device,
                    term,
                    stepped_down: released.map(|r| r.reason),
                })
            }
            None => self.last_holder.as_ref().map(|(d, t)| PreviousServer {
                device: Some(d.clone()),
                term: *t,
                stepped_down: None,
            }),
        };
        let previous_gone = previous
            .as_ref()
            .and_then(|p| p.device.as_ref())
            .is_some_and(|d| d != &self.device && !self.peers.contains_key(d));
        let cause = match released {
            Some(r) if lease.is_some_and(|(_, rec)| rec.holder.is_none()) => r.cause,
            _ if holder_lost => ElectionReason::ServerLost,
            // The lease ran out and its holder is not heard any more.
            _ if previous_gone && matches!(reason, ElectionReason::NoServer) => {
                ElectionReason::ServerLost
            }
            _ => reason,
        };
        let rule = if named && self.rightful().as_ref() != Some(&self.device) {
            LedgerRule::NamedSuccessor
        } else {
            self.rule_against(self.peers.values())
        };
        ClaimNote {
            cause,
            rule,
            candidates: self.ledger_candidates(),
            previous,
            claimed_at: now,
            vacant_since: self.vacant_since,
        }
    }

    /// An operator's election kept this server: say so in the ledger.
    fn ledger_kept(&mut self, term: Term) {
        let entry = LedgerEntry {
            schema: SCHEMA_VERSION,
            group: self.group.clone(),
            kind: LedgerKind::Kept,
            server: self.device.clone(),
            term,
            at_ms: 0,
            cause: ElectionReason::Operator,
            // Devices still in their grace do not compete yet.
            rule: self.rule_against(self.peers.values().filter(|p| !p.in_grace)),
            candidates: self.ledger_candidates(),
            previous: Some(PreviousServer {
                device: Some(self.device.clone()),
                term,
                stepped_down: None,
            }),
            held: self.held,
            timings: LedgerTimings::default(),
        };
        self.out.push(Action::Ledger(entry));
    }

    /// Records a store call about to be sent (one at a time) and names it.
    fn start_op(&mut self, kind: OpKind, record: &LeaseRecord, now: Duration) -> OpId {
        self.next_op += 1;
        let id = OpId(self.next_op);
        self.op = Some(Pending {
            id,
            kind,
            sent_at: now,
            record: record.clone(),
        });
        id
    }

    fn publish(&mut self, kind: ElectionEventKind) {
        self.out.push(Action::Publish(kind));
    }
}

fn candidate(p: &PeerStatus) -> Candidate {
    Candidate {
        device: p.device.clone(),
        mac: p.mac,
        score: p.score,
    }
}
