//! The simulated world: devices, bus, store and the event queue.
//!
//! Each device runs the glue a real device ships, not a copy of it: its
//! heartbeat side feeds the group's beats and goodbyes to the
//! [`Detector`] and turns each verdict into a [`PeerNotice`] with the
//! heartbeat crate's own [`peer_notice`], stamped by the device's (drifting)
//! wall clock; the notice travels the simulated bus back to the device's
//! election side, where the election crate's [`InputStage`] decides — with
//! the beats — what reaches the [`Machine`].
//!
//! The bus is one server, on the lease store's side of a partition. A device
//! on the other side is cut off: it hears nothing, and what it publishes —
//! beats, goodbyes, and the notices its heartbeat side sends its election
//! side — waits in its client until it is back, then goes out in order. So a
//! device cut off long enough to lose every peer gets those stale verdicts
//! on reconnecting, as a real one does. Notices are never lost in transit:
//! they are a device talking to itself over a TCP connection.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use understudy_election::{
    Action, ElectionConfig, Event, Ignored, Input, InputStage, Machine, OpId, StoreOutcome,
};
use understudy_heartbeat::{Detector, DetectorConfig, PeerBeat, PeerChange, peer_notice};
use understudy_protocol::messages::{Heartbeat, LeaseRecord, PeerNotice, StepDownReason};
use understudy_protocol::{
    DeviceId, GroupName, InstanceId, Mac, Role, SCHEMA_VERSION, Score, StatusColour, Term,
};

use crate::check;
use crate::project::{Mutation, Projects};
use crate::schedule::{Fault, Plan};
use crate::store::{Store, Write};

/// The heartbeat interval of the server (the product default).
pub const HEARTBEAT: Duration = Duration::from_millis(100);
/// The heartbeat interval of every other device by default (the product's
/// default, `understudy_heartbeat::DEFAULT_CLIENT_INTERVAL`); a
/// change of role, term, score, online state or grace is beaten at once, as
/// the heartbeat service does. At 1 s (`--client-heartbeat-interval 1s`) a
/// 20,000-seed soak once failed "no needless takeover" (seed 7975: a device
/// back from a cut-off heard the new server's fresh beats, then its own loss
/// verdict made while away on that server's client beats, and deposed it);
/// the input stage now ignores a verdict made before a beat it heard since.
/// A 200,000-seed soak at 1 s then found seeds 30566, 50535 and 68531 (a
/// device back from a cut-off deposed a server it had declared lost before
/// the cut-off, though the server had renewed its lease since): a holder that
/// renews after its loss verdict is now waited for like one not heard yet.
pub const CLIENT_HEARTBEAT: Duration = understudy_heartbeat::DEFAULT_CLIENT_INTERVAL;

/// The client cadence this run simulates: [`CLIENT_HEARTBEAT`], or
/// `UNDERSTUDY_SIM_CLIENT_HEARTBEAT_MS` when set (so a soak can prove another
/// cadence without a rebuild: `UNDERSTUDY_SIM_CLIENT_HEARTBEAT_MS=1000`).
/// Read once; an unparsable value is reported and the default kept.
pub fn client_heartbeat() -> Duration {
    static CADENCE: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *CADENCE.get_or_init(|| match std::env::var("UNDERSTUDY_SIM_CLIENT_HEARTBEAT_MS") {
        Err(_) => CLIENT_HEARTBEAT,
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(ms) if (10..=60_000).contains(&ms) => Duration::from_millis(ms),
            _ => {
                eprintln!(
                    "UNDERSTUDY_SIM_CLIENT_HEARTBEAT_MS={v:?} is not 10..=60000 ms; simulating {CLIENT_HEARTBEAT:?}"
                );
                CLIENT_HEARTBEAT
            }
        },
    })
}
/// How long after the faults end the group must have converged (L2, P1):
/// grace period + preempt delay + this slack.
pub const CONVERGENCE_SLACK: Duration = Duration::from_secs(3);
/// How long the group is then watched for spurious elections.
pub const QUIET_WINDOW: Duration = Duration::from_secs(3);
const TRACE_LEN: usize = 40;
/// How often every device reads the lease, besides watching it (as the
/// election driver does): the store's expiry of an entry is not watched.
pub const LEASE_READ_INTERVAL: Duration = Duration::from_secs(1);

/// A run that broke an invariant.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The seed to replay.
    pub seed: u64,
    /// The step at which it broke.
    pub step: u64,
    /// The simulated instant.
    pub at: Duration,
    /// Which invariant, in words.
    pub what: String,
    /// The last notable events before it.
    pub trace: Vec<String>,
    /// The deliberately broken piece of the run, by its replay name.
    pub mutation: Option<&'static str>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed={} step={} t={:.3}s: {}",
            self.seed,
            self.step,
            self.at.as_secs_f64(),
            self.what
        )?;
        writeln!(f, "last events:")?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        match self.mutation {
            None => write!(
                f,
                "replay: UNDERSTUDY_SEED={} cargo test -p understudy-sim --test simulation replay_one_seed -- --nocapture",
                self.seed
            ),
            Some(m) => write!(
                f,
                "replay: UNDERSTUDY_SEED={} UNDERSTUDY_MUTATION={m} cargo test -p understudy-sim --test project replay_one_mutated_seed -- --nocapture",
                self.seed
            ),
        }
    }
}

/// What a passing run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Devices in the group.
    pub devices: usize,
    /// Events processed.
    pub steps: u64,
    /// Lease claims the store granted.
    pub terms_granted: usize,
    /// Election events published.
    pub events_published: u64,
    /// Peer-lost verdicts that waited for the bus and were ignored.
    pub stale_verdicts_ignored: u64,
    /// Project changes acknowledged to writers.
    pub changes_acknowledged: u64,
    /// Election ledger entries written.
    pub ledger_entries: u64,
}

#[derive(Debug, Clone)]
pub(crate) enum Msg {
    /// A peer's heartbeat, as published on the group's subject.
    Beat(Heartbeat),
    /// A peer's goodbye.
    Leave(DeviceId, InstanceId),
    /// A verdict of this device's heartbeat side, for its election side.
    Notice(PeerNotice),
    Lease(Option<(u64, LeaseRecord)>),
    Reply(OpId, StoreOutcome),
    Control(Event),
}

/// A message a cut-off device published, waiting in its client.
#[derive(Debug)]
enum Outgoing {
    /// For the group (a beat, a goodbye, a trigger).
    Group(Msg),
    /// For the device itself (a peer notice).
    Own(Msg),
}

/// What one step of a device produced.
#[derive(Default)]
struct Effects {
    /// For the world to carry out.
    acts: Vec<Action>,
    /// For the device's election side, over the bus.
    notices: Vec<PeerNotice>,
    /// For the trace.
    notes: Vec<String>,
    /// Stale verdicts the input stage ignored.
    stale: u64,
}

#[derive(Debug)]
pub(crate) enum Ev {
    Wake {
        dev: usize,
        inc: u64,
        generation: u64,
    },
    Deliver {
        dev: usize,
        inc: u64,
        msg: Msg,
    },
    StoreWrite {
        dev: usize,
        inc: u64,
        op: OpId,
        write: Write,
        record: LeaseRecord,
    },
    Fault(Fault),
    Start(usize),
    Resume {
        dev: usize,
        inc: u64,
    },
    FaultsEnd,
    /// Every device reads the lease (the driver does so every second).
    Resync,
    Converged,
    End,
    /// Project-sync and its writers (S2).
    Project(crate::project::Ev),
}

pub(crate) struct Proc {
    pub instance: InstanceId,
    pub machine: Machine,
    group: GroupName,
    id: DeviceId,
    mac: Mac,
    /// The heartbeat side's failure detector.
    detector: Detector,
    /// The election side's input stage.
    input: InputStage,
    seq: u64,
    next_beat: Duration,
    /// What the last beat said that ranks or fences the device: a change
    /// is beaten at once.
    announced: Option<(Role, Term, bool, Score, bool)>,
    generation: u64,
    inbox: VecDeque<Msg>,
    /// What it published while cut off from the bus.
    outbox: VecDeque<Outgoing>,
    /// When the last message to itself arrives: one connection delivers a
    /// publisher's messages in order, so the next may not overtake it.
    own_arrival: Duration,
    pub paused: bool,
    /// Its beat cadence while not serving.
    client_heartbeat: Duration,
}

impl Proc {
    /// A new process of device `d`, started at local time `local`.
    fn new(
        cfg: &ElectionConfig,
        group: &GroupName,
        d: &Dev,
        instance: InstanceId,
        local: Duration,
        client_heartbeat: Duration,
    ) -> Proc {
        let machine = Machine::new(
            cfg.clone(),
            group.clone(),
            d.id.clone(),
            instance,
            d.mac,
            d.score,
            d.online,
            local,
        );
        Proc {
            instance,
            machine,
            group: group.clone(),
            id: d.id.clone(),
            mac: d.mac,
            detector: Detector::new(DetectorConfig::default(), d.id.clone()),
            input: InputStage::new(group.clone(), d.id.clone()),
            seq: 0,
            next_beat: local,
            announced: None,
            generation: 0,
            inbox: VecDeque::new(),
            outbox: VecDeque::new(),
            own_arrival: Duration::ZERO,
            paused: false,
            client_heartbeat,
        }
    }

    /// One message, at local time `local` and wall clock `wall_ms`.
    fn receive(&mut self, msg: Msg, local: Duration, wall_ms: u64, fx: &mut Effects) {
        match msg {
            Msg::Beat(hb) => {
                // The heartbeat side and the election side both hear it.
                if let Some(change) = self.detector.observe(&PeerBeat::from(&hb), local) {
                    self.verdict(change, wall_ms, fx);
                }
                let input = self.input.heartbeat(&hb, wall_ms);
                self.feed(input, local, fx);
            }
            Msg::Leave(device, instance) => {
                if let Some(change) = self.detector.leave(&device, instance, local) {
                    self.verdict(change, wall_ms, fx);
                }
            }
            Msg::Notice(notice) => {
                let input = self.input.notice(&notice, wall_ms);
                if let Input::Ignored(Ignored::Stale { age }) = &input {
                    fx.stale += 1;
                    let peer = &notice.device;
                    fx.notes.push(format!(
                        "{} ignores a stale loss of {peer} ({age:?} old)",
                        self.id
                    ));
                }
                self.feed(input, local, fx);
            }
            Msg::Lease(obs) => self.handle(Event::LeaseObserved(obs), local, fx),
            Msg::Reply(op, outcome) => self.handle(Event::StoreReply { op, outcome }, local, fx),
            Msg::Control(ev) => self.handle(ev, local, fx),
        }
    }

    /// The heartbeat side's verdicts that are due.
    fn poll_detector(&mut self, local: Duration, wall_ms: u64, fx: &mut Effects) {
        for change in self.detector.poll(local) {
            self.verdict(change, wall_ms, fx);
        }
    }

    /// A verdict becomes the notice the heartbeat service publishes.
    fn verdict(&mut self, change: PeerChange, wall_ms: u64, fx: &mut Effects) {
        if let PeerChange::Lost { device, .. } = &change {
            fx.notes.push(format!("{} loses {device}", self.id));
        }
        fx.notices
            .push(peer_notice(&self.group, &self.id, &change, wall_ms));
    }

    fn feed(&mut self, input: Input, local: Duration, fx: &mut Effects) {
        if let Input::Feed(event) = input {
            self.handle(event, local, fx);
        }
    }

    fn handle(&mut self, event: Event, local: Duration, fx: &mut Effects) {
        fx.acts.extend(self.machine.handle(event, local));
    }

    /// The next heartbeat, if one is due.
    fn heartbeat(&mut self, local: Duration, wall_ms: u64) -> Option<Heartbeat> {
        let st = self.machine.status(local);
        let said = (st.role, st.term, st.online, st.score, st.in_grace);
        let urgent = self.announced != Some(said);
        if local < self.next_beat && !urgent {
            return None;
        }
        let cadence = if st.role == Role::Server && st.online {
            HEARTBEAT
        } else {
            self.client_heartbeat
        };
        self.seq += 1;
        self.announced = Some(said);
        self.next_beat = if urgent {
            local + cadence
        } else {
            (self.next_beat + cadence).max(local + cadence / 2)
        };
        Some(Heartbeat {
            schema: SCHEMA_VERSION,
            group: self.group.clone(),
            device: self.id.clone(),
            instance: self.instance,
            mac: self.mac,
            score: st.score,
            online: st.online,
            role: st.role,
            term: st.term,
            in_grace: st.in_grace,
            colour: StatusColour::Grey,
            problems: Vec::new(),
            seq: self.seq,
            interval_ms: cadence.as_millis() as u32,
            sent_at_ms: wall_ms,
        })
    }
}

pub(crate) struct Dev {
    pub id: DeviceId,
    pub mac: Mac,
    pub score: Score,
    pub online: bool,
    drift_ppm: i64,
    offset: Duration,
    pub inc: u64,
    pub proc: Option<Proc>,
    cut: bool,
    /// Since when the device has been cut off or paused, if it is now.
    disturbed_since: Option<Duration>,
    /// Its last cut-off or pause that ended: (start, end), where the start
    /// is that of the last stretch it ran cut off, if it did.
    pub last_disturbance: Option<(Duration, Duration)>,
    /// When the last stretch it ran cut off began, in this disturbance.
    deaf_from: Option<Duration>,
    /// Whether it runs cut off now.
    deaf_now: bool,
}

impl Dev {
    /// The device's own clock at true time `t`.
    pub fn local(&self, t: Duration) -> Duration {
        let us = t.as_micros() as i128;
        let local = us + us * self.drift_ppm as i128 / 1_000_000;
        self.offset + Duration::from_micros(local.max(0) as u64)
    }

    /// The device's wall clock at true time `t`, in Unix milliseconds.
    fn wall_ms(&self, t: Duration) -> u64 {
        self.local(t).as_millis() as u64
    }

    /// Whether the device is cut off from the bus or paused, and since when.
    pub fn disturbed_since(&self) -> Option<Duration> {
        self.disturbed_since
    }

    /// The true time at which the device's clock reads `local` (rounded up).
    pub(crate) fn true_at(&self, local: Duration) -> Duration {
        let l = local.saturating_sub(self.offset).as_micros() as i128;
        let t = (l * 1_000_000 + (1_000_000 + self.drift_ppm as i128) - 1)
            / (1_000_000 + self.drift_ppm as i128);
        Duration::from_micros(t.max(0) as u64)
    }
}

pub(crate) struct World {
    pub plan: Plan,
    pub cfg: ElectionConfig,
    group: GroupName,
    rng: StdRng,
    pub now: Duration,
    seq: u64,
    pub step: u64,
    queue: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    events: Vec<Option<Ev>>,
    free: Vec<usize>,
    pub devs: Vec<Dev>,
    pub store: Store,
    store_cut: bool,
    /// The group's show hold as the store keeps it.
    hold: bool,
    pub(crate) loss_permille: u32,
    pub faults_over: bool,
    trace: VecDeque<String>,
    pub report: Report,
    pub converged_at: Option<(Option<DeviceId>, Option<understudy_protocol::Term>)>,
    full_trace: bool,
    pub(crate) project: crate::project::Projects,
    /// What is deliberately broken in this run, if anything.
    mutation: Mutation,
}

/// Runs the plan made from `seed`.
pub fn run_seed(seed: u64) -> Result<Report, Failure> {
    run_plan(Plan::from_seed(seed), false)
}

/// Runs a plan; `blind_renewals` makes the store skip the revision check on
/// renewals (a deliberately broken store, to prove the checker catches it).
pub fn run_plan(plan: Plan, blind_renewals: bool) -> Result<Report, Failure> {
    let mutation = Mutation {
        blind_renewals,
        ..Mutation::default()
    };
    run_mutated(plan, mutation)
}

/// Runs a plan with a deliberately broken piece (see [`Mutation`]), to
/// prove the checker catches it.
pub fn run_mutated(plan: Plan, mutation: Mutation) -> Result<Report, Failure> {
    let mut w = World::new(plan, mutation);
    w.store.blind_updates = mutation.blind_renewals;
    w.run()
}

impl World {
    fn new(plan: Plan, mutation: Mutation) -> World {
        let n = plan.macs.len();
        let cfg = ElectionConfig {
            preempt_delay: plan.preempt_delay,
            ..ElectionConfig::default()
        };
        let devs = (0..n)
            .map(|i| Dev {
                id: format!("dev-{i:02}")
                    .parse()
                    .unwrap_or_else(|_| unreachable!()),
                mac: plan.macs[i],
                score: plan.scores[i],
                online: true,
                drift_ppm: plan.drift_ppm[i],
                offset: plan.clock_offset[i],
                inc: 0,
                proc: None,
                cut: false,
                disturbed_since: None,
                last_disturbance: None,
                deaf_from: None,
                deaf_now: false,
            })
            .collect();
        let group: GroupName = "sim".parse().unwrap_or_else(|_| unreachable!());
        World {
            rng: StdRng::seed_from_u64(plan.seed ^ 0x0005_EED0_FB05),
            project: Projects::new(plan.seed, n, group.clone(), mutation),
            mutation,
            group,
            cfg,
            now: Duration::ZERO,
            seq: 0,
            step: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            free: Vec::new(),
            devs,
            store: Store::default(),
            store_cut: false,
            hold: false,
            loss_permille: 0,
            faults_over: false,
            trace: VecDeque::new(),
            report: Report {
                devices: n,
                ..Report::default()
            },
            converged_at: None,
            full_trace: std::env::var_os("UNDERSTUDY_SIM_TRACE").is_some(),
            plan,
        }
    }

    pub(crate) fn push(&mut self, at: Duration, ev: Ev) {
        let slot = match self.free.pop() {
            Some(i) => {
                self.events[i] = Some(ev);
                i
            }
            None => {
                self.events.push(Some(ev));
                self.events.len() - 1
            }
        };
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, slot)));
    }

    pub fn note(&mut self, line: String) {
        if self.full_trace {
            eprintln!("t={:.3}s {line}", self.now.as_secs_f64());
        }
        if self.trace.len() == TRACE_LEN {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("t={:.3}s {line}", self.now.as_secs_f64()));
    }

    pub fn fail(&self, what: String) -> Failure {
        Failure {
            seed: self.plan.seed,
            step: self.step,
            at: self.now,
            what,
            trace: self.trace.iter().cloned().collect(),
            mutation: self.mutation.name(),
        }
    }

    fn run(mut self) -> Result<Report, Failure> {
        for i in 0..self.devs.len() {
            let at = self.plan.start_at[i];
            self.push(at, Ev::Start(i));
        }
        for (at, f) in self.plan.faults.clone() {
            self.push(at, Ev::Fault(f));
        }
        let end = self.plan.faults_end;
        self.push(end, Ev::FaultsEnd);
        self.push(LEASE_READ_INTERVAL, Ev::Resync);
        let converge_by = end + self.cfg.grace_period + self.cfg.preempt_delay + CONVERGENCE_SLACK;
        self.push(converge_by, Ev::Converged);
        self.push(converge_by + QUIET_WINDOW, Ev::End);
        while let Some(Reverse((at, _, slot))) = self.queue.pop() {
            let Some(ev) = self.events[slot].take() else {
                continue;
            };
            self.free.push(slot);
            self.now = at;
            self.step += 1;
            match ev {
                Ev::End => {
                    check::converged(&mut self)?;
                    check::quiet(&self)?;
                    self.report.steps = self.step;
                    self.report.terms_granted = self.store.grants.len();
                    self.report.changes_acknowledged = self.project.truth.acknowledged;
                    return Ok(self.report);
                }
                Ev::Converged => {
                    check::converged(&mut self)?;
                    self.converged_at = Some(check::server_view(&self));
                }
                ev => self.dispatch(ev)?,
            }
        }
        Err(self.fail("event queue ran dry".into()))
    }

    fn dispatch(&mut self, ev: Ev) -> Result<(), Failure> {
        match ev {
            Ev::Wake {
                dev,
                inc,
                generation,
            } => {
                let current = self.devs[dev].inc == inc
                    && self.devs[dev]
                        .proc
                        .as_ref()
                        .is_some_and(|p| p.generation == generation && !p.paused);
                if current {
                    self.step_device(dev, None)?;
                }
            }
            Ev::Deliver { dev, inc, msg } => {
                if self.devs[dev].inc == inc && self.devs[dev].proc.is_some() {
                    self.step_device(dev, Some(msg))?;
                }
            }
            Ev::StoreWrite {
                dev,
                inc,
                op,
                write,
                record,
            } => self.store_write(dev, inc, op, write, record)?,
            Ev::Start(i) => self.start(i),
            Ev::Resume { dev, inc } => self.resume(dev, inc)?,
            Ev::Fault(f) => self.fault(f)?,
            Ev::FaultsEnd => self.faults_end()?,
            Ev::Resync => {
                self.resync();
                let at = self.now + LEASE_READ_INTERVAL;
                self.push(at, Ev::Resync);
            }
            Ev::Project(ev) => crate::project::dispatch(self, ev)?,
            Ev::Converged | Ev::End => {}
        }
        Ok(())
    }

    // ----- devices -----

    fn start(&mut self, i: usize) {
        if self.devs[i].proc.is_some() {
            return;
        }
        let instance = InstanceId::new(self.rng.random());
        let d = &mut self.devs[i];
        d.inc += 1;
        let local = d.local(self.now);
        d.proc = Some(Proc::new(
            &self.cfg,
            &self.group,
            d,
            instance,
            local,
            self.plan.client_heartbeat,
        ));
        let inc = d.inc;
        let line = format!("{} starts (score {}, mac {})", d.id, d.score, d.mac);
        self.note(line);
        // A starting device reads the lease once (a KV get), then watches it;
        // the same for the group's hold.
        if self.on_bus(i) {
            let current = self.store.current(self.now);
            let at = self.now + self.delay();
            self.push(
                at,
                Ev::Deliver {
                    dev: i,
                    inc,
                    msg: Msg::Lease(current),
                },
            );
            let hold = self.hold;
            self.push(
                at,
                Ev::Deliver {
                    dev: i,
                    inc,
                    msg: Msg::Control(Event::SetHold(hold)),
                },
            );
        }
        let at = self.now;
        self.push(
            at,
            Ev::Wake {
                dev: i,
                inc,
                generation: 0,
            },
        );
    }

    fn crash(&mut self, i: usize) {
        if self.devs[i].proc.take().is_some() {
            let line = format!("{} crashes", self.devs[i].id);
            self.note(line);
            self.set_disturbed(i);
        }
    }

    fn resume(&mut self, i: usize, inc: u64) -> Result<(), Failure> {
        if self.devs[i].inc != inc {
            return Ok(());
        }
        let Some(p) = self.devs[i].proc.as_mut() else {
            return Ok(());
        };
        if !p.paused {
            return Ok(());
        }
        p.paused = false;
        let inbox = std::mem::take(&mut p.inbox);
        let line = format!(
            "{} resumes ({} queued messages)",
            self.devs[i].id,
            inbox.len()
        );
        self.note(line);
        self.set_disturbed(i);
        // As the drivers' loops do after SIGCONT: what was received counts
        // before the detector's overdue deadline is polled.
        self.step_device_on(i, inbox.into())
    }

    /// Runs one device on one input at the current instant, then checks S1.
    fn step_device(&mut self, i: usize, msg: Option<Msg>) -> Result<(), Failure> {
        self.step_device_on(i, msg.into_iter().collect())
    }

    /// Runs one device on the inputs `msgs` at the current instant, then
    /// polls its detector and timers, and checks S1.
    fn step_device_on(&mut self, i: usize, msgs: Vec<Msg>) -> Result<(), Failure> {
        let (local, wall_ms) = (self.devs[i].local(self.now), self.devs[i].wall_ms(self.now));
        let Some(p) = self.devs[i].proc.as_mut() else {
            return Ok(());
        };
        if p.paused {
            p.inbox.extend(msgs);
            return Ok(());
        }
        let held_before = p.machine.held();
        let forced = msgs
            .iter()
            .any(|m| matches!(m, Msg::Control(Event::TriggerElection { force: true })));
        let mut fx = Effects::default();
        for m in msgs {
            p.receive(m, local, wall_ms, &mut fx);
        }
        p.poll_detector(local, wall_ms, &mut fx);
        p.handle(Event::Tick, local, &mut fx);
        let preempted_while_held = held_before
            && p.machine.held()
            && !forced
            && fx.acts.iter().any(|a| {
                matches!(
                    a,
                    Action::StepDown {
                        reason: StepDownReason::HandOver,
                        ..
                    }
                )
            });
        let beat = p.heartbeat(local, wall_ms);
        let ledger = check::ledger(&self.devs[i].id, &fx.acts);
        for n in fx.notes {
            self.note(n);
        }
        self.report.stale_verdicts_ignored += fx.stale;
        self.apply(i, fx.acts);
        for notice in fx.notices {
            self.send_own(i, Msg::Notice(notice));
        }
        if let Some(hb) = beat {
            self.broadcast(i, Msg::Beat(hb));
        }
        self.reschedule(i);
        if let Err(e) = ledger {
            return Err(self.fail(format!("ledger: {e}")));
        }
        if preempted_while_held {
            let id = self.devs[i].id.clone();
            return Err(self.fail(format!(
                "H1: {id} handed the server over while the group was held (no forced trigger)"
            )));
        }
        crate::project::after_election(self, i)?;
        check::after_step(self, i)
    }

    fn reschedule(&mut self, i: usize) {
        let d = &self.devs[i];
        let Some(p) = d.proc.as_ref() else { return };
        let mut next = p.next_beat;
        if let Some(x) = p.machine.next_deadline() {
            next = next.min(x);
        }
        if let Some(x) = p.detector.next_deadline() {
            next = next.min(x);
        }
        let at = d.true_at(next).max(self.now);
        let inc = d.inc;
        let p = self.devs[i].proc.as_mut().unwrap_or_else(|| unreachable!());
        p.generation += 1;
        let generation = p.generation;
        self.push(
            at,
            Ev::Wake {
                dev: i,
                inc,
                generation,
            },
        );
    }

    fn apply(&mut self, i: usize, acts: Vec<Action>) {
        let id = self.devs[i].id.clone();
        let inc = self.devs[i].inc;
        for a in acts {
            match a {
                Action::Claim { op, expect, record } => {
                    self.note(format!("{id} claims, expecting {expect:?}"));
                    self.send_store(i, inc, op, Write::Claim(expect), record);
                }
                Action::Renew {
                    op,
                    revision,
                    record,
                } => self.send_store(i, inc, op, Write::Update(revision), record),
                Action::Release {
                    op,
                    revision,
                    record,
                } => {
                    self.note(format!(
                        "{id} releases revision {revision} to {:?}",
                        record.handover_to.as_ref().map(|d| d.to_string())
                    ));
                    self.send_store(i, inc, op, Write::Update(revision), record);
                }
                Action::BecomeServer { term } => self.note(format!("{id} serves, term {term}")),
                Action::StepDown { term, reason } => {
                    self.note(format!("{id} steps down from term {term}: {reason:?}"))
                }
                Action::Publish(kind) => {
                    self.report.events_published += 1;
                    self.note(format!("{id} publishes {kind:?}"));
                }
                Action::Ledger(entry) => {
                    self.report.ledger_entries += 1;
                    self.note(format!(
                        "{id} writes the ledger: {:?} term {} cause {:?} rule {}",
                        entry.kind,
                        entry.term,
                        entry.cause,
                        entry.rule.as_str()
                    ));
                }
            }
        }
    }

    // ----- bus -----

    fn delay(&mut self) -> Duration {
        let (lo, hi) = self.plan.delay;
        if hi <= lo {
            return lo;
        }
        Duration::from_micros(
            self.rng
                .random_range(lo.as_micros() as u64..=hi.as_micros() as u64),
        )
    }

    fn lost(&mut self) -> bool {
        self.loss_permille > 0 && self.rng.random_range(0..1000) < self.loss_permille
    }

    /// Whether device `a` is connected to the bus, which is on the store's
    /// side of any partition.
    pub(crate) fn on_bus(&self, a: usize) -> bool {
        self.devs[a].cut == self.store_cut
    }

    /// Publishes `msg` to the group; a cut-off device keeps it for later.
    fn broadcast(&mut self, from: usize, msg: Msg) {
        if !self.on_bus(from) {
            if let Some(p) = self.devs[from].proc.as_mut() {
                p.outbox.push_back(Outgoing::Group(msg));
            }
            return;
        }
        for j in 0..self.devs.len() {
            if j == from || self.devs[j].proc.is_none() || !self.on_bus(j) || self.lost() {
                continue;
            }
            self.deliver(j, msg.clone());
        }
    }

    /// Publishes `msg` from one of the device's services to another: through
    /// the bus, so a cut-off device keeps it for later. Never lost, never
    /// reordered.
    fn send_own(&mut self, i: usize, mut msg: Msg) {
        if let (true, Msg::Notice(notice)) = (self.mutation.undated_notices, &mut msg) {
            notice.sent_at_ms = None;
        }
        if !self.on_bus(i) {
            if let Some(p) = self.devs[i].proc.as_mut() {
                p.outbox.push_back(Outgoing::Own(msg));
            }
            return;
        }
        let at = self.now + self.delay();
        let inc = self.devs[i].inc;
        let Some(p) = self.devs[i].proc.as_mut() else {
            return;
        };
        // Equal instants keep the order they were queued in.
        p.own_arrival = p.own_arrival.max(at);
        let at = p.own_arrival;
        self.push(at, Ev::Deliver { dev: i, inc, msg });
    }

    /// Delivers `msg` to device `j`'s current process after a bus delay.
    fn deliver(&mut self, j: usize, msg: Msg) {
        let at = self.now + self.delay();
        let inc = self.devs[j].inc;
        self.push(at, Ev::Deliver { dev: j, inc, msg });
    }

    /// Records whether device `i` is now cut off or paused (for the checks).
    fn set_disturbed(&mut self, i: usize) {
        let now = self.now;
        let paused = self.devs[i].proc.as_ref().is_some_and(|p| p.paused);
        let running = self.devs[i].proc.is_some() && !paused;
        let cut = !self.on_bus(i);
        let d = &mut self.devs[i];
        match (cut || paused, d.disturbed_since) {
            (true, None) => {
                d.disturbed_since = Some(now);
                d.deaf_from = None;
            }
            (false, Some(since)) => {
                d.disturbed_since = None;
                d.last_disturbance = Some((d.deaf_from.unwrap_or(since), now));
            }
            _ => {}
        }
        // Running while cut off, its detector makes verdicts that wait: the
        // youngest is about as old as this stretch when it comes back.
        if cut && running && d.deaf_from.is_none_or(|_| !d.deaf_now) {
            d.deaf_from = Some(now);
        }
        d.deaf_now = cut && running;
    }

    fn all_disturbed(&mut self) {
        for i in 0..self.devs.len() {
            self.set_disturbed(i);
        }
    }

    /// Devices back on the bus send what waited in their client, in order.
    fn flush_outboxes(&mut self) {
        for i in 0..self.devs.len() {
            if !self.on_bus(i) {
                continue;
            }
            let Some(p) = self.devs[i].proc.as_mut() else {
                continue;
            };
            let waiting = std::mem::take(&mut p.outbox);
            if !waiting.is_empty() {
                let line = format!(
                    "{} is back on the bus: {} messages waited",
                    self.devs[i].id,
                    waiting.len()
                );
                self.note(line);
            }
            for out in waiting {
                match out {
                    Outgoing::Group(msg) => self.broadcast(i, msg),
                    Outgoing::Own(msg) => self.send_own(i, msg),
                }
            }
        }
    }

    fn send_store(&mut self, i: usize, inc: u64, op: OpId, write: Write, record: LeaseRecord) {
        if !self.on_bus(i) || self.lost() {
            return;
        }
        let at = self.now + self.delay();
        self.push(
            at,
            Ev::StoreWrite {
                dev: i,
                inc,
                op,
                write,
                record,
            },
        );
    }

    fn store_write(
        &mut self,
        i: usize,
        inc: u64,
        op: OpId,
        write: Write,
        record: LeaseRecord,
    ) -> Result<(), Failure> {
        let ttl = self.cfg.lease_duration;
        let before = self.store.current(self.now);
        let outcome = self.store.write(write, record, self.now, ttl);
        if let StoreOutcome::Written { revision } = &outcome {
            check::takeover(self, i, before, *revision)?;
            let rev = *revision;
            let current = self.store.current(self.now);
            if let Some((_, rec)) = &current
                && rec.term.is_none()
            {
                let who = rec.holder.as_ref().map(|h| h.device.to_string());
                self.note(format!("store grants term {rev} to {who:?}"));
            }
            // The watch: every device on the store's side sees the write.
            self.show_lease(current);
        }
        if self.on_bus(i) && !self.lost() {
            let at = self.now + self.delay();
            self.push(
                at,
                Ev::Deliver {
                    dev: i,
                    inc,
                    msg: Msg::Reply(op, outcome),
                },
            );
        }
        Ok(())
    }

    /// A watch that reconnects gets the current value.
    fn resync(&mut self) {
        let current = self.store.current(self.now);
        self.show_lease(current);
        self.show_hold();
    }

    /// Delivers the group's hold to every running device on the store's
    /// side (a KV watch).
    fn show_hold(&mut self) {
        for j in 0..self.devs.len() {
            if self.devs[j].proc.is_some() && self.on_bus(j) {
                let at = self.now + self.delay();
                let inc = self.devs[j].inc;
                let msg = Msg::Control(Event::SetHold(self.hold));
                self.push(at, Ev::Deliver { dev: j, inc, msg });
            }
        }
    }

    /// Delivers a lease value to every running device on the store's side.
    fn show_lease(&mut self, current: Option<(u64, LeaseRecord)>) {
        for j in 0..self.devs.len() {
            if self.devs[j].proc.is_some() && self.on_bus(j) {
                let at = self.now + self.delay();
                let inc = self.devs[j].inc;
                self.push(
                    at,
                    Ev::Deliver {
                        dev: j,
                        inc,
                        msg: Msg::Lease(current.clone()),
                    },
                );
            }
        }
    }

    // ----- faults -----

    fn control(&mut self, i: usize, ev: Event) -> Result<(), Failure> {
        if self.devs[i].proc.is_some() {
            self.step_device(i, Some(Msg::Control(ev)))?;
        }
        Ok(())
    }

    fn fault(&mut self, f: Fault) -> Result<(), Failure> {
        if self.faults_over {
            return Ok(());
        }
        self.note(format!("fault: {f:?}"));
        match f {
            Fault::Crash(i) => self.crash(i),
            Fault::Restart(i) => self.start(i),
            Fault::Pause(i, d) => {
                let inc = self.devs[i].inc;
                if let Some(p) = self.devs[i].proc.as_mut()
                    && !p.paused
                {
                    p.paused = true;
                    let at = self.now + d;
                    self.push(at, Ev::Resume { dev: i, inc });
                    self.set_disturbed(i);
                }
            }
            Fault::Partition { side, with_store } => {
                for (j, d) in self.devs.iter_mut().enumerate() {
                    d.cut = side.contains(&j);
                }
                self.store_cut = with_store;
                self.all_disturbed();
                self.flush_outboxes();
            }
            Fault::Heal => {
                self.heal();
            }
            Fault::Loss(p) => self.loss_permille = p,
            Fault::SetScore(i, s) => {
                self.devs[i].score = s;
                self.control(i, Event::SetScore(s))?;
            }
            Fault::SetOnline(i, on) => {
                self.devs[i].online = on;
                self.control(i, Event::SetOnline(on))?;
            }
            Fault::Trigger(i) | Fault::ForcedTrigger(i) => {
                let force = matches!(f, Fault::ForcedTrigger(_));
                if self.devs[i].proc.is_some() {
                    self.control(i, Event::TriggerElection { force })?;
                    self.broadcast(i, Msg::Control(Event::TriggerElection { force }));
                }
            }
            Fault::Hold(on) => {
                self.hold = on;
                self.show_hold();
            }
            Fault::Shutdown(i) => {
                if let Some(p) = self.devs[i].proc.as_ref()
                    && !p.paused
                {
                    let instance = p.instance;
                    self.control(i, Event::Shutdown)?;
                    let id = self.devs[i].id.clone();
                    self.broadcast(i, Msg::Leave(id, instance));
                    self.crash(i);
                }
            }
        }
        Ok(())
    }

    fn heal(&mut self) {
        let was_cut = self.devs.iter().any(|d| d.cut) || self.store_cut;
        for d in &mut self.devs {
            d.cut = false;
        }
        self.store_cut = false;
        self.all_disturbed();
        if was_cut {
            self.flush_outboxes();
            self.resync();
        }
    }

    fn faults_end(&mut self) -> Result<(), Failure> {
        self.note("faults end: heal, resume, restart".into());
        self.faults_over = true;
        self.loss_permille = 0;
        if self.hold {
            self.hold = false;
            self.show_hold();
        }
        self.heal();
        for i in 0..self.devs.len() {
            let inc = self.devs[i].inc;
            if self.devs[i].proc.is_none() {
                self.start(i);
            } else {
                self.resume(i, inc)?;
            }
        }
        Ok(())
    }
}
