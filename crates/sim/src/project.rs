//! Project-sync on every simulated device, and writers submitting changes.
//!
//! Each device process runs the real serving core
//! ([`understudy_project_sync::core::Serving`]) exactly as the project-sync
//! driver does: it is fed the device's own election state (on every change
//! and every [`REPORT_EVERY`], over the local bus, as the election service
//! publishes it), the results of its fences and commits, and its deadlines.
//! Around it this module plays the driver's plumbing against the simulated
//! project store ([`crate::head`]): a fence reads the head, asks
//! [`core::fence`], writes by compare-and-set and loads the content (as
//! `fence_and_load`); a commit confirms the lease ([`Serving::may_commit`]),
//! asks [`core::commit`], stores the content, compares-and-sets the head and,
//! when that goes unanswered, reads it back ([`core::landed`]) — one commit
//! at a time per device, as the gRPC server's commit lock.
//!
//! Writers (external clients) find the server in the lease, submit changes
//! to it over a lossy, delayed network, retry the same change on a transient
//! answer or no answer, and rebase on a conflict. [`crate::s2`] checks every
//! head write and acknowledgement.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use understudy_project_sync::core::{
    self, Action, ChangeMeta, CommitDecision, CommitOutcome, FenceDecision, FenceOutcome, Input,
    Serving,
};
use understudy_protocol::messages::{ProjectHead, RevisionSummary};
use understudy_protocol::{GroupName, Role, Term};

use crate::head::{HeadStore, Refused};
use crate::s2::{HeadWrite, Truth};
use crate::world::{Failure, World};

/// A store call unanswered this long has failed (`understudy node`'s default).
pub const STORE_TIMEOUT: Duration = Duration::from_secs(2);
/// The election service publishes its state this often, besides on changes.
pub const REPORT_EVERY: Duration = Duration::from_millis(250);
/// The local bus between a device's services.
const LOCAL_DELAY: Duration = Duration::from_micros(200);
/// A writer gives up waiting for an answer after this long and tries again.
const RPC_DEADLINE: Duration = Duration::from_secs(1);
/// A writer's pause after a transient answer.
const RETRY: Duration = Duration::from_millis(50);
/// How many writers submit changes.
const WRITERS: usize = 2;
/// When the writers start.
const WRITERS_START: Duration = Duration::from_millis(500);
/// A fence gives up after this many refused compare-and-sets.
const FENCE_TRIES: u32 = 10;

/// A deliberately broken piece of a device or of the stores, to prove the
/// checker catches it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mutation {
    /// Peer notices lose their send time on the way, so the election input
    /// stage takes every `Lost` verdict as fresh: its stale-verdict filter
    /// never fires.
    pub undated_notices: bool,
    /// The lease store's renewals skip the revision check.
    pub blind_renewals: bool,
    /// A new server does not rewrite the head with its term before serving.
    pub skip_fence: bool,
    /// The head is written by plain put, not compare-and-set.
    pub blind_head_writes: bool,
}

impl Mutation {
    /// The name `UNDERSTUDY_MUTATION` gives this mutation in
    /// `replay_one_mutated_seed`, or `None` for the product as shipped.
    pub fn name(&self) -> Option<&'static str> {
        [
            (self.undated_notices, "undated_notices"),
            (self.blind_renewals, "blind_renewals"),
            (self.skip_fence, "skip_fence"),
            (self.blind_head_writes, "blind_head_writes"),
        ]
        .into_iter()
        .find_map(|(on, name)| on.then_some(name))
    }

    /// The mutation `UNDERSTUDY_MUTATION` names, if it names one.
    pub fn named(name: &str) -> Option<Mutation> {
        let mut m = Mutation::default();
        match name {
            "undated_notices" => m.undated_notices = true,
            "blind_renewals" => m.blind_renewals = true,
            "skip_fence" => m.skip_fence = true,
            "blind_head_writes" => m.blind_head_writes = true,
            _ => return None,
        }
        Some(m)
    }
}

/// Everything project-sync in the world.
pub(crate) struct Projects {
    rng: StdRng,
    group: GroupName,
    skip_fence: bool,
    pub store: HeadStore,
    pub truth: Truth,
    procs: Vec<Option<Proc>>,
    writers: Vec<Writer>,
    started: bool,
    next_op: u64,
}

impl Projects {
    pub fn new(seed: u64, devices: usize, group: GroupName, m: Mutation) -> Projects {
        Projects {
            rng: StdRng::seed_from_u64(seed ^ 0x0000_5052_4f4a),
            group,
            skip_fence: m.skip_fence,
            store: HeadStore::new(m.blind_head_writes),
            truth: Truth::default(),
            procs: (0..devices).map(|_| None).collect(),
            writers: (0..WRITERS).map(|_| Writer::default()).collect(),
            started: false,
            next_op: 0,
        }
    }
}

/// Project-sync in one device process.
struct Proc {
    inc: u64,
    core: Serving,
    snap: Option<Snap>,
    published: Option<(Role, Term)>,
    generation: u64,
    inbox: VecDeque<Ev>,
    ops: BTreeMap<u64, Op>,
    committing: bool,
    waiting: VecDeque<Submit>,
}

/// What a serving device serves: the head as fenced or last committed.
#[derive(Debug, Clone)]
struct Snap {
    term: Term,
    kv: u64,
    head: ProjectHead,
}

#[derive(Debug)]
enum Op {
    Fence {
        term: Term,
        tries: u32,
        step: FenceStep,
    },
    Commit(Box<Commit>),
}

/// A commit in flight: the change, the snapshot it was decided on, the head
/// to write and the revision it makes.
#[derive(Debug)]
struct Commit {
    submit: Submit,
    snap: Snap,
    head: ProjectHead,
    revision: RevisionSummary,
    step: CommitStep,
}

#[derive(Debug)]
enum FenceStep {
    Read,
    Write(ProjectHead),
    Load(u64, ProjectHead),
}

#[derive(Debug, Clone, Copy)]
enum CommitStep {
    Content,
    Cas,
    ReadBack,
}

/// A call to the project store.
#[derive(Debug)]
pub(crate) enum Req {
    Read,
    Write {
        head: ProjectHead,
        expect: Option<u64>,
        term: Term,
        commit: bool,
    },
    PutContent(String),
    GetContent(String),
}

/// The store's answer.
#[derive(Debug)]
pub(crate) enum Rep {
    Read(Option<(u64, ProjectHead)>),
    Written(Result<u64, Refused>),
    Done(bool),
}

#[derive(Debug, Clone)]
pub(crate) struct Submit {
    writer: usize,
    attempt: u64,
    meta: ChangeMeta,
    seen_term: Term,
}

#[derive(Debug)]
pub(crate) enum Answer {
    Committed(RevisionSummary),
    AlreadyCommitted(RevisionSummary),
    Conflict(u64),
    NotServer,
    Unavailable,
}

#[derive(Debug, Default)]
struct Writer {
    change: u64,
    attempt: u64,
    base: u64,
}

/// Project-sync events in the world's queue.
#[derive(Debug)]
pub(crate) enum Ev {
    /// The device's election state reaches its project-sync.
    Report {
        dev: usize,
        inc: u64,
        role: Role,
        term: Term,
    },
    /// The election service's periodic publication.
    StateTick { dev: usize, inc: u64 },
    /// The serving core's deadline.
    Wake {
        dev: usize,
        inc: u64,
        generation: u64,
    },
    /// A store call reaches the store.
    AtStore {
        dev: usize,
        inc: u64,
        op: u64,
        req: Req,
    },
    /// The store's answer reaches the device.
    Reply {
        dev: usize,
        inc: u64,
        op: u64,
        rep: Rep,
    },
    /// The device's timeout of a store call.
    Timeout { dev: usize, inc: u64, op: u64 },
    /// A writer's change reaches a device.
    Submit { dev: usize, submit: Submit },
    /// A device's answer reaches a writer.
    Answer {
        writer: usize,
        attempt: u64,
        from: usize,
        answer: Answer,
    },
    /// A writer sends (again), or gives up waiting.
    WriterWake { writer: usize, attempt: u64 },
}

// ----- hooks for the world -----

/// After device `i`'s election step: a new process gets its project-sync,
/// what arrived while it was paused is handled, and a changed election state
/// is published to it.
pub(crate) fn after_election(w: &mut World, i: usize) -> Result<(), Failure> {
    if !w.project.started {
        w.project.started = true;
        for writer in 0..WRITERS {
            push(w, WRITERS_START, Ev::WriterWake { writer, attempt: 0 });
        }
    }
    let inc = w.devs[i].inc;
    if w.project.procs[i].as_ref().is_none_or(|p| p.inc != inc) {
        let addr = format!("{}:7000", w.devs[i].id);
        w.project.procs[i] = Some(Proc {
            inc,
            core: Serving::new(w.devs[i].id.clone(), Some(addr)),
            snap: None,
            published: None,
            generation: 0,
            inbox: VecDeque::new(),
            ops: BTreeMap::new(),
            committing: false,
            waiting: VecDeque::new(),
        });
        let at = w.now + REPORT_EVERY;
        push(w, at, Ev::StateTick { dev: i, inc });
    }
    let inbox = match w.project.procs[i].as_mut() {
        Some(p) => std::mem::take(&mut p.inbox),
        None => VecDeque::new(),
    };
    for ev in inbox {
        dispatch(w, ev)?;
    }
    publish_state(w, i, false);
    Ok(())
}

/// Handles one project-sync event.
pub(crate) fn dispatch(w: &mut World, ev: Ev) -> Result<(), Failure> {
    match ev {
        Ev::AtStore { dev, inc, op, req } => at_store(w, dev, inc, op, req),
        Ev::Answer {
            writer,
            attempt,
            from,
            answer,
        } => answered(w, writer, attempt, from, answer),
        Ev::WriterWake { writer, attempt } => {
            if w.project.writers[writer].attempt == attempt {
                send_change(w, writer);
            }
            Ok(())
        }
        ev => on_device(w, ev),
    }
}

// ----- a device -----

fn device_of(ev: &Ev) -> Option<(usize, Option<u64>)> {
    match ev {
        Ev::Report { dev, inc, .. }
        | Ev::StateTick { dev, inc }
        | Ev::Wake { dev, inc, .. }
        | Ev::Reply { dev, inc, .. }
        | Ev::Timeout { dev, inc, .. } => Some((*dev, Some(*inc))),
        Ev::Submit { dev, .. } => Some((*dev, None)),
        _ => None,
    }
}

/// An event for a device process: dropped if the process is gone, queued
/// while it is paused, handled otherwise.
fn on_device(w: &mut World, ev: Ev) -> Result<(), Failure> {
    let Some((dev, inc)) = device_of(&ev) else {
        return Ok(());
    };
    let Some(paused) = w.devs[dev].proc.as_ref().map(|p| p.paused) else {
        if let Ev::Submit { submit, .. } = ev {
            answer(w, dev, &submit, Answer::Unavailable); // connection refused
        }
        return Ok(());
    };
    let current = w.devs[dev].inc;
    if inc.is_some_and(|i| i != current) || proc_mut(w, dev).is_none() {
        return Ok(());
    }
    if paused {
        if let Ev::StateTick { .. } = ev {
            let at = w.now + REPORT_EVERY;
            push(w, at, Ev::StateTick { dev, inc: current });
        } else if let Some(p) = proc_mut(w, dev) {
            p.inbox.push_back(ev);
        }
        return Ok(());
    }
    match ev {
        Ev::Report { role, term, .. } => feed(w, dev, Input::Election { role, term }, None),
        Ev::StateTick { .. } => {
            publish_state(w, dev, true);
            let at = w.now + REPORT_EVERY;
            push(w, at, Ev::StateTick { dev, inc: current });
        }
        Ev::Wake { generation, .. }
            if proc_mut(w, dev).is_some_and(|p| p.generation == generation) =>
        {
            feed(w, dev, Input::Tick, None)
        }
        Ev::Reply { op, rep, .. } => {
            if let Some(o) = proc_mut(w, dev).and_then(|p| p.ops.remove(&op)) {
                resume_op(w, dev, o, Some(rep));
            }
        }
        Ev::Timeout { op, .. } => {
            if let Some(o) = proc_mut(w, dev).and_then(|p| p.ops.remove(&op)) {
                resume_op(w, dev, o, None);
            }
        }
        Ev::Submit { submit, .. } => submitted(w, dev, submit),
        _ => {}
    }
    one_server_per_term(w)
}

/// The project-sync of device `dev`'s running process.
fn proc_mut(w: &mut World, dev: usize) -> Option<&mut Proc> {
    let inc = w.devs[dev].inc;
    w.project.procs[dev].as_mut().filter(|p| p.inc == inc)
}

/// The election service tells project-sync its role and term: when it
/// changed, or always (the periodic publication).
fn publish_state(w: &mut World, i: usize, always: bool) {
    let local = w.devs[i].local(w.now);
    let Some(st) = w.devs[i].proc.as_ref().map(|p| p.machine.status(local)) else {
        return;
    };
    let inc = w.devs[i].inc;
    let Some(p) = w.project.procs[i].as_mut() else {
        return;
    };
    let state = (st.role, st.term);
    if !always && p.published == Some(state) {
        return;
    }
    p.published = Some(state);
    let at = w.now + LOCAL_DELAY;
    push(
        w,
        at,
        Ev::Report {
            dev: i,
            inc,
            role: st.role,
            term: st.term,
        },
    );
}

/// Feeds the serving core and carries out its actions, as the driver's
/// `ProjectService::feed`: stop drops the snapshot, fence starts one, and
/// `install` is served if the core serves its term afterwards.
fn feed(w: &mut World, dev: usize, input: Input, install: Option<Snap>) {
    let local = w.devs[dev].local(w.now);
    let Some(p) = w.project.procs[dev].as_mut() else {
        return;
    };
    let actions = p.core.handle(input, local);
    let mut fences = Vec::new();
    for a in actions {
        match a {
            Action::Fence { term } => fences.push(term),
            Action::Serve { term } => w.project.truth.serving_started(term),
            Action::Stop { .. } => p.snap = None,
            Action::Publish(_) => {}
        }
    }
    if let Some(s) = install.filter(|s| p.core.serving() == Some(s.term)) {
        p.snap = Some(s);
    }
    let deadline = p.core.next_deadline();
    p.generation += 1;
    let generation = p.generation;
    let inc = p.inc;
    let id = w.devs[dev].id.clone();
    for term in fences {
        w.note(format!("{id} fences the project head with term {term}"));
        start_op(
            w,
            dev,
            Op::Fence {
                term,
                tries: 0,
                step: FenceStep::Read,
            },
            Req::Read,
        );
    }
    if let Some(d) = deadline {
        let at = w.devs[dev].true_at(d).max(w.now);
        push(
            w,
            at,
            Ev::Wake {
                dev,
                inc,
                generation,
            },
        );
    }
}

/// Sends a store call and arms its timeout.
fn start_op(w: &mut World, dev: usize, op: Op, req: Req) {
    w.project.next_op += 1;
    let id = w.project.next_op;
    let inc = w.devs[dev].inc;
    if let Some(p) = w.project.procs[dev].as_mut() {
        p.ops.insert(id, op);
    }
    let at = w.now + STORE_TIMEOUT;
    push(w, at, Ev::Timeout { dev, inc, op: id });
    if w.on_bus(dev) && !lost(w) {
        let at = w.now + delay(w);
        push(
            w,
            at,
            Ev::AtStore {
                dev,
                inc,
                op: id,
                req,
            },
        );
    }
}

/// A store call lands (if the store is still reachable) and is answered.
fn at_store(w: &mut World, dev: usize, inc: u64, op: u64, req: Req) -> Result<(), Failure> {
    if !w.on_bus(dev) {
        return Ok(());
    }
    let rep = match req {
        Req::Read => Rep::Read(w.project.store.read()),
        Req::PutContent(sha) => {
            w.project.store.put_content(&sha);
            Rep::Done(true)
        }
        Req::GetContent(sha) => Rep::Done(w.project.store.has_content(&sha)),
        Req::Write {
            head,
            expect,
            term,
            commit,
        } => {
            let before = w.project.store.read().map(|(_, h)| h);
            let r = w.project.store.write(head.clone(), expect);
            if r.is_ok() {
                let by = w.devs[dev].id.clone();
                let write = HeadWrite {
                    by: &by,
                    term,
                    commit,
                    before: before.as_ref(),
                    after: &head,
                };
                if let Err(e) =
                    w.project
                        .truth
                        .head_written(write, &w.project.store, &w.store.grants)
                {
                    return Err(w.fail(e));
                }
                if commit {
                    w.note(format!(
                        "{by} commits revision {} with term {term}",
                        head.revision()
                    ));
                }
            }
            Rep::Written(r)
        }
    };
    if w.on_bus(dev) && !lost(w) {
        let at = w.now + delay(w);
        push(w, at, Ev::Reply { dev, inc, op, rep });
    }
    Ok(())
}

/// A store call answered (`Some`) or timed out (`None`): the next step of
/// the fence or commit that made it.
fn resume_op(w: &mut World, dev: usize, op: Op, rep: Option<Rep>) {
    match op {
        Op::Fence { term, tries, step } => fence_step(w, dev, term, tries, step, rep),
        Op::Commit(c) => commit_step(w, dev, *c, rep),
    }
}

// ----- fencing, as `fence_and_load` -----

fn fence_step(
    w: &mut World,
    dev: usize,
    term: Term,
    tries: u32,
    step: FenceStep,
    rep: Option<Rep>,
) {
    let fence = |step| Op::Fence { term, tries, step };
    match (step, rep) {
        (FenceStep::Read, Some(Rep::Read(current))) => {
            let decision = core::fence(current.as_ref().map(|(_, h)| h), &w.project.group, term);
            match (decision, current) {
                (FenceDecision::Deposed { head_term }, _) => {
                    fenced(w, dev, term, FenceOutcome::Deposed { by: head_term }, None)
                }
                (FenceDecision::AlreadyFenced, Some((kv, head))) => load(w, dev, term, kv, head),
                (FenceDecision::AlreadyFenced, None) => {
                    fenced(w, dev, term, FenceOutcome::Failed, None)
                }
                // The mutation: serve the head as it is, unfenced.
                (FenceDecision::Write(_), Some((kv, head))) if w.project.skip_fence => {
                    load(w, dev, term, kv, head)
                }
                (FenceDecision::Write(head), current) => {
                    let req = Req::Write {
                        head: head.clone(),
                        expect: current.map(|(kv, _)| kv),
                        term,
                        commit: false,
                    };
                    start_op(w, dev, fence(FenceStep::Write(head)), req);
                }
            }
        }
        (FenceStep::Write(head), Some(Rep::Written(Ok(kv)))) => load(w, dev, term, kv, head),
        (FenceStep::Write(_), Some(Rep::Written(Err(Refused)))) if tries + 1 < FENCE_TRIES => {
            let again = Op::Fence {
                term,
                tries: tries + 1,
                step: FenceStep::Read,
            };
            start_op(w, dev, again, Req::Read);
        }
        (FenceStep::Load(kv, head), Some(Rep::Done(true))) => {
            let revision = head.revision();
            let snap = Snap { term, kv, head };
            fenced(w, dev, term, FenceOutcome::Fenced { revision }, Some(snap));
        }
        _ => fenced(w, dev, term, FenceOutcome::Failed, None),
    }
}

/// Loads the fenced head's content (nothing to load for the empty project).
fn load(w: &mut World, dev: usize, term: Term, kv: u64, head: ProjectHead) {
    match head.current.as_ref().map(|c| c.sha256.clone()) {
        None => {
            let snap = Snap { term, kv, head };
            fenced(
                w,
                dev,
                term,
                FenceOutcome::Fenced { revision: 0 },
                Some(snap),
            );
        }
        Some(sha) => {
            let op = Op::Fence {
                term,
                tries: 0,
                step: FenceStep::Load(kv, head),
            };
            start_op(w, dev, op, Req::GetContent(sha));
        }
    }
}

fn fenced(w: &mut World, dev: usize, term: Term, outcome: FenceOutcome, snap: Option<Snap>) {
    let id = w.devs[dev].id.clone();
    w.note(format!("{id} fence of term {term}: {outcome:?}"));
    feed(w, dev, Input::Fenced { term, outcome }, snap);
}

// ----- committing, as the gRPC server's `commit` -----

/// A change arrives: refused at once unless this device serves (and has not
/// been overtaken by a term the writer saw), else queued for the commit lock.
fn submitted(w: &mut World, dev: usize, submit: Submit) {
    let Some(p) = w.project.procs[dev].as_mut() else {
        return;
    };
    match &p.snap {
        Some(s) if submit.seen_term <= s.term => {
            p.waiting.push_back(submit);
            if !p.committing {
                next_commit(w, dev);
            }
        }
        _ => answer(w, dev, &submit, Answer::NotServer),
    }
}

/// Takes the next queued change under the commit lock.
fn next_commit(w: &mut World, dev: usize) {
    loop {
        let local = w.devs[dev].local(w.now);
        let Some(p) = w.project.procs[dev].as_mut() else {
            return;
        };
        let Some(submit) = p.waiting.pop_front() else {
            p.committing = false;
            return;
        };
        p.committing = true;
        let Some(snap) = p.snap.clone() else {
            answer(w, dev, &submit, Answer::NotServer);
            continue;
        };
        if !p.core.may_commit(snap.term, local) {
            answer(w, dev, &submit, Answer::Unavailable);
            continue;
        }
        let now_ms = w.now.as_millis() as u64;
        match core::commit(&snap.head, snap.term, &submit.meta, now_ms) {
            CommitDecision::Deposed { .. } => {
                feed(w, dev, committed(snap.term, CommitOutcome::Deposed), None);
                answer(w, dev, &submit, Answer::NotServer);
            }
            CommitDecision::Conflict { current } => {
                let rev = current.map_or(0, |c| c.revision);
                answer(w, dev, &submit, Answer::Conflict(rev));
            }
            CommitDecision::AlreadyCommitted(r) => {
                answer(w, dev, &submit, Answer::AlreadyCommitted(r));
            }
            CommitDecision::Apply { head, revision } => {
                let req = Req::PutContent(revision.sha256.clone());
                let op = Op::Commit(Box::new(Commit {
                    submit,
                    snap,
                    head,
                    revision,
                    step: CommitStep::Content,
                }));
                return start_op(w, dev, op, req);
            }
        }
    }
}

fn committed(term: Term, outcome: CommitOutcome) -> Input {
    Input::Committed { term, outcome }
}

/// The next step of a commit once its store call answered (`Some`) or timed
/// out (`None`), as the gRPC server's `commit_locked` and `write_head`.
fn commit_step(w: &mut World, dev: usize, c: Commit, rep: Option<Rep>) {
    let Commit {
        submit,
        snap,
        head,
        revision,
        step,
    } = c;
    let term = snap.term;
    let written = |kv, head| {
        let next = Snap { term, kv, head };
        let outcome = CommitOutcome::Written {
            revision: revision.clone(),
        };
        (outcome, Some(next))
    };
    let (outcome, next) = match (step, rep) {
        (CommitStep::Content, Some(Rep::Done(true))) => {
            let req = Req::Write {
                head: head.clone(),
                expect: Some(snap.kv),
                term,
                commit: true,
            };
            let op = Op::Commit(Box::new(Commit {
                submit,
                snap,
                head,
                revision,
                step: CommitStep::Cas,
            }));
            return start_op(w, dev, op, req);
        }
        (CommitStep::Content, _) => {
            answer(w, dev, &submit, Answer::Unavailable);
            return next_commit(w, dev);
        }
        (CommitStep::Cas, Some(Rep::Written(Ok(kv)))) => written(kv, head),
        (CommitStep::Cas, Some(Rep::Written(Err(Refused)))) => (CommitOutcome::Deposed, None),
        (CommitStep::Cas, _) => {
            let op = Op::Commit(Box::new(Commit {
                submit,
                snap,
                head,
                revision,
                step: CommitStep::ReadBack,
            }));
            return start_op(w, dev, op, Req::Read);
        }
        (CommitStep::ReadBack, Some(Rep::Read(Some((kv, h)))))
            if core::landed(Some(&h), term, &revision) =>
        {
            written(kv, h)
        }
        (CommitStep::ReadBack, _) => (CommitOutcome::Unknown, None),
    };
    let reply = match &outcome {
        CommitOutcome::Written { revision } => Answer::Committed(revision.clone()),
        CommitOutcome::Deposed => Answer::NotServer,
        CommitOutcome::Unknown => Answer::Unavailable,
    };
    feed(w, dev, committed(term, outcome), next);
    answer(w, dev, &submit, reply);
    next_commit(w, dev);
}

/// A device answers a writer (the answer may be lost).
fn answer(w: &mut World, dev: usize, submit: &Submit, answer: Answer) {
    if lost(w) {
        return;
    }
    let at = w.now + delay(w);
    push(
        w,
        at,
        Ev::Answer {
            writer: submit.writer,
            attempt: submit.attempt,
            from: dev,
            answer,
        },
    );
}

/// At most one device serves a given term.
fn one_server_per_term(w: &World) -> Result<(), Failure> {
    let mut seen: BTreeMap<Term, usize> = BTreeMap::new();
    for (i, p) in w.project.procs.iter().enumerate() {
        let Some(term) = p
            .as_ref()
            .filter(|p| w.devs[i].proc.is_some() && p.inc == w.devs[i].inc)
            .and_then(|p| p.core.serving())
        else {
            continue;
        };
        if let Some(j) = seen.insert(term, i) {
            return Err(w.fail(format!(
                "S1: {} and {} both serve the project with term {term}",
                w.devs[j].id, w.devs[i].id
            )));
        }
    }
    Ok(())
}

// ----- writers -----

/// A writer submits its current change to the device the lease names.
fn send_change(w: &mut World, writer: usize) {
    let wr = &mut w.project.writers[writer];
    wr.attempt += 1;
    let attempt = wr.attempt;
    let meta = ChangeMeta {
        base_revision: wr.base,
        sha256: format!("{:032x}{:032x}", writer + 1, wr.change + 1),
        size: 1,
        changed_by: Some(format!("writer-{writer}")),
        change_id: Some(format!("w{writer}-{}", wr.change)),
    };
    let server = w.store.current(w.now).and_then(|(rev, rec)| {
        let holder = rec.holder.as_ref()?;
        let dev = w.devs.iter().position(|d| d.id == holder.device)?;
        Some((dev, rec.term_at(rev)))
    });
    let Some((dev, seen_term)) = server else {
        let at = w.now + RETRY;
        return push(w, at, Ev::WriterWake { writer, attempt });
    };
    let submit = Submit {
        writer,
        attempt,
        meta,
        seen_term,
    };
    if !lost(w) {
        let at = w.now + delay(w);
        push(w, at, Ev::Submit { dev, submit });
    }
    let at = w.now + RPC_DEADLINE;
    push(w, at, Ev::WriterWake { writer, attempt });
}

/// A writer gets an answer: the next change after an acknowledgement, the
/// same change on the current base after a conflict, the same change again
/// after a transient answer.
fn answered(
    w: &mut World,
    writer: usize,
    attempt: u64,
    from: usize,
    answer: Answer,
) -> Result<(), Failure> {
    if w.project.writers[writer].attempt != attempt {
        return Ok(());
    }
    let pause = match answer {
        Answer::Committed(r) | Answer::AlreadyCommitted(r) => {
            let by = w.devs[from].id.clone();
            if let Err(e) = w.project.truth.acknowledge(&by, &r) {
                return Err(w.fail(e));
            }
            let wr = &mut w.project.writers[writer];
            wr.base = wr.base.max(r.revision);
            wr.change += 1;
            Duration::from_millis(w.project.rng.random_range(5..60))
        }
        Answer::Conflict(current) => {
            w.project.writers[writer].base = current;
            Duration::ZERO
        }
        Answer::NotServer | Answer::Unavailable => RETRY,
    };
    let wr = &mut w.project.writers[writer];
    wr.attempt += 1;
    let attempt = wr.attempt;
    let at = w.now + pause;
    push(w, at, Ev::WriterWake { writer, attempt });
    Ok(())
}

// ----- the network -----

fn push(w: &mut World, at: Duration, ev: Ev) {
    w.push(at, crate::world::Ev::Project(ev));
}

fn delay(w: &mut World) -> Duration {
    let (lo, hi) = w.plan.delay;
    if hi <= lo {
        return lo;
    }
    Duration::from_micros(
        w.project
            .rng
            .random_range(lo.as_micros() as u64..=hi.as_micros() as u64),
    )
}

fn lost(w: &mut World) -> bool {
    let p = w.loss_permille;
    p > 0 && w.project.rng.random_range(0..1000) < p
}
