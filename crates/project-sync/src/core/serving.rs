//! Whether this device serves the project, and under which term (S1, S2).
//!
//! The rules, in one place:
//!
//! - **Serve only a fenced term the election confirms.** When the device's
//!   own election service says "server with term T", the device fences the
//!   project head with T ([`Action::Fence`]); it serves once the fence
//!   succeeded *and* the election still says "server with T" and said so
//!   within [`LIVENESS_WINDOW`].
//! - **A new term replaces the old one.** A server told of a newer term of
//!   its own stops serving the old one and fences again.
//! - **Stop when the election says otherwise**, and **stop on silence**: an
//!   election service silent for [`LIVENESS_WINDOW`] is gone (or this process
//!   was paused); a server must not act on an old belief.
//! - **A deposed term is never fenced again.** A fence or commit that finds
//!   the head carrying a newer term means another server took over: this
//!   device stops and waits for the election to move on.
//! - **A failed fence is retried** [`FENCE_RETRY`] later while the election
//!   still says "server".
//! - **An unknown commit outcome stops serving and fences again**, rather than
//!   guessing: the head is read afresh by the fence, and a resubmission of
//!   the same change then gets the truth.
//! - **Commits need a fresh confirmation** ([`Serving::may_commit`]): the
//!   election said "server with T" within [`CONFIRM_FRESH`].
//!
//! The core is sans-IO: it is fed [`Input`]s with the current time (any
//! monotonic clock, as a [`Duration`] since an origin the caller picks) and
//! returns [`Action`]s; [`Serving::next_deadline`] says when to feed
//! [`Input::Tick`] next. The gRPC driver and the simulator drive it alike.

use std::time::Duration;

use understudy_protocol::messages::{ProjectEventKind, RevisionSummary};
use understudy_protocol::timing::LIVENESS_WINDOW;
use understudy_protocol::{DeviceId, Role, Term};

/// A fence that failed (store unreachable, content unreadable) is tried
/// again this long after, while the election still says "server".
pub const FENCE_RETRY: Duration = Duration::from_millis(200);

/// How long a confirmation from the election service that this device
/// holds the lease stays good for commits (it confirms four times a second).
pub const CONFIRM_FRESH: Duration = Duration::from_millis(800);

/// What a fence of the head ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceOutcome {
    /// The head carries this term; its current revision is `revision`.
    Fenced {
        /// The head's current revision (0 for the empty project).
        revision: u64,
    },
    /// A newer term holds the head.
    Deposed {
        /// The head's term.
        by: Term,
    },
    /// The store did not answer, refused, or kept changing: try again.
    Failed,
}

/// What a commit's head compare-and-set ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The head names the new revision: acknowledged.
    Written {
        /// The committed revision.
        revision: RevisionSummary,
    },
    /// The compare-and-set was refused, or the head carries a newer term:
    /// another server fenced the head.
    Deposed,
    /// No answer, and reading the head did not show the write: it may or
    /// may not have landed.
    Unknown,
}

/// Why the device stopped serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The election service names a newer term of this device.
    NewTerm,
    /// The election service says this device is not the server.
    NotServer,
    /// The election service has been silent for [`LIVENESS_WINDOW`].
    ElectionSilent,
    /// A commit found the head held by a newer term.
    Deposed,
    /// A commit's outcome is unknown: fence again from the head as it is.
    UnknownCommitOutcome,
    /// The service is shutting down.
    Shutdown,
}

impl StopReason {
    /// The reason in words, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::NewTerm => "the election service names a new term",
            StopReason::NotServer => "the election service says this device no longer serves",
            StopReason::ElectionSilent => "no word from the election service",
            StopReason::Deposed => "deposed: a newer server fenced the project head",
            StopReason::UnknownCommitOutcome => "the outcome of a commit is unknown",
            StopReason::Shutdown => "shutting down",
        }
    }
}

/// What the core is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The device's own election service reports its role and term.
    Election {
        /// Client or server.
        role: Role,
        /// The newest term known; its own when it serves.
        term: Term,
    },
    /// A fence of `term` ended.
    Fenced {
        /// The term fenced.
        term: Term,
        /// How it ended.
        outcome: FenceOutcome,
    },
    /// A commit under `term` ended.
    Committed {
        /// The term the commit was made under.
        term: Term,
        /// How it ended.
        outcome: CommitOutcome,
    },
    /// A deadline ([`Serving::next_deadline`]) has passed.
    Tick,
    /// The service stops.
    Shutdown,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Fence the head with `term` and load its content, then feed
    /// [`Input::Fenced`].
    Fence {
        /// The term to fence with.
        term: Term,
    },
    /// Serve the fenced head of `term` from now on.
    Serve {
        /// The term served.
        term: Term,
    },
    /// Stop serving `term` at once.
    Stop {
        /// The term no longer served.
        term: Term,
        /// Why.
        reason: StopReason,
    },
    /// Publish a project event.
    Publish(ProjectEventKind),
}

/// Where the device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not serving, no fence in flight.
    Idle,
    /// A fence of this term is in flight.
    Fencing(Term),
    /// Serving this term.
    Serving(Term),
    /// This term was found deposed; it is never fenced again.
    Deposed(Term),
}

#[derive(Debug, Clone, Copy)]
struct Report {
    role: Role,
    term: Term,
    at: Duration,
}

/// The serving state of one device (module docs).
#[derive(Debug, Clone)]
pub struct Serving {
    device: DeviceId,
    address: Option<String>,
    phase: Phase,
    report: Option<Report>,
    /// The newest term found deposed.
    deposed: Option<Term>,
    /// After a failed fence: the next one not before this instant.
    retry_at: Option<Duration>,
}

impl Serving {
    /// A device that does not serve; `address` is what clients dial, named
    /// in the `serving_project` event.
    pub fn new(device: DeviceId, address: Option<String>) -> Serving {
        Serving {
            device,
            address,
            phase: Phase::Idle,
            report: None,
            deposed: None,
            retry_at: None,
        }
    }

    /// Where the device stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The term served, if any.
    pub fn serving(&self) -> Option<Term> {
        match self.phase {
            Phase::Serving(t) => Some(t),
            _ => None,
        }
    }

    /// Whether a commit under `term` may go ahead at `now`: this device
    /// serves `term`, and the election said "server with `term`" within
    /// [`CONFIRM_FRESH`].
    pub fn may_commit(&self, term: Term, now: Duration) -> bool {
        self.serving() == Some(term)
            && self.report.is_some_and(|r| {
                r.role == Role::Server && r.term == term && now.saturating_sub(r.at) < CONFIRM_FRESH
            })
    }

    /// When to feed [`Input::Tick`] next, if anything is waiting for time.
    pub fn next_deadline(&self) -> Option<Duration> {
        let report = self.report?;
        match self.phase {
            Phase::Serving(_) => Some(report.at + LIVENESS_WINDOW),
            Phase::Idle if self.wants_fence(report) => {
                self.retry_at.filter(|r| *r < report.at + LIVENESS_WINDOW)
            }
            _ => None,
        }
    }

    /// Feeds one input at `now`; returns what to do, in order.
    pub fn handle(&mut self, input: Input, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Election { role, term } => self.election(role, term, now, &mut out),
            Input::Fenced { term, outcome } => self.fenced(term, outcome, now, &mut out),
            Input::Committed { term, outcome } => self.committed(term, outcome, now, &mut out),
            Input::Tick => self.tick(now, &mut out),
            Input::Shutdown => self.stop(StopReason::Shutdown, &mut out),
        }
        out
    }

    fn election(&mut self, role: Role, term: Term, now: Duration, out: &mut Vec<Action>) {
        self.report = Some(Report {
            role,
            term,
            at: now,
        });
        if role != Role::Server {
            return self.stop(StopReason::NotServer, out);
        }
        match self.phase {
            Phase::Serving(t) | Phase::Fencing(t) if t == term => {}
            Phase::Serving(_) => {
                self.stop(StopReason::NewTerm, out);
                self.fence_if_due(now, out);
            }
            _ => self.fence_if_due(now, out),
        }
    }

    fn fenced(&mut self, term: Term, outcome: FenceOutcome, now: Duration, out: &mut Vec<Action>) {
        if self.phase != Phase::Fencing(term) {
            return; // a fence overtaken by a newer term
        }
        self.phase = Phase::Idle;
        match outcome {
            FenceOutcome::Fenced { revision } if self.confirms(term, now) => {
                self.phase = Phase::Serving(term);
                out.push(Action::Serve { term });
                out.push(Action::Publish(ProjectEventKind::ServingProject {
                    device: self.device.clone(),
                    term,
                    revision,
                    address: self.address.clone(),
                }));
            }
            FenceOutcome::Fenced { .. } => {} // no longer the server
            FenceOutcome::Deposed { .. } => self.depose(term),
            FenceOutcome::Failed => self.retry_at = Some(now + FENCE_RETRY),
        }
    }

    fn committed(
        &mut self,
        term: Term,
        outcome: CommitOutcome,
        now: Duration,
        out: &mut Vec<Action>,
    ) {
        match outcome {
            // Acknowledged: announced even if serving stopped meanwhile.
            CommitOutcome::Written { revision } => {
                out.push(Action::Publish(ProjectEventKind::RevisionCommitted {
                    revision,
                }));
            }
            CommitOutcome::Deposed if self.serving() == Some(term) => {
                self.stop(StopReason::Deposed, out);
                self.depose(term);
            }
            CommitOutcome::Unknown if self.serving() == Some(term) => {
                self.stop(StopReason::UnknownCommitOutcome, out);
                self.fence_if_due(now, out);
            }
            CommitOutcome::Deposed | CommitOutcome::Unknown => {}
        }
    }

    fn tick(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.serving().is_some() && !self.report.is_some_and(|r| self.fresh(r, now)) {
            self.stop(StopReason::ElectionSilent, out);
        }
        if self.phase == Phase::Idle && self.retry_at.is_some_and(|r| now >= r) {
            // Due: fence now if the election still says "server"; if it has
            // gone quiet meanwhile, its next report fences at once.
            self.retry_at = None;
            self.fence_if_due(now, out);
        }
    }

    /// Starts a fence of the reported term if the election says "server",
    /// recently, and the term was not found deposed.
    fn fence_if_due(&mut self, now: Duration, out: &mut Vec<Action>) {
        let Some(r) = self.report else { return };
        if self.fresh(r, now) && self.wants_fence(r) {
            self.phase = Phase::Fencing(r.term);
            self.retry_at = None;
            out.push(Action::Fence { term: r.term });
        }
    }

    fn wants_fence(&self, r: Report) -> bool {
        r.role == Role::Server && self.deposed.is_none_or(|d| r.term > d)
    }

    fn fresh(&self, r: Report, now: Duration) -> bool {
        now.saturating_sub(r.at) < LIVENESS_WINDOW
    }

    fn confirms(&self, term: Term, now: Duration) -> bool {
        self.report
            .is_some_and(|r| r.role == Role::Server && r.term == term && self.fresh(r, now))
    }

    fn depose(&mut self, term: Term) {
        self.deposed = Some(self.deposed.map_or(term, |d| d.max(term)));
        self.phase = Phase::Deposed(term);
    }

    fn stop(&mut self, reason: StopReason, out: &mut Vec<Action>) {
        if let Phase::Serving(term) = self.phase {
            self.phase = Phase::Idle;
            out.push(Action::Stop { term, reason });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn t(n: u64) -> Term {
        Term::from_revision(n)
    }

    fn core() -> Serving {
        Serving::new("desk-1".parse().unwrap(), Some("127.0.0.1:7000".into()))
    }

    fn server(term: u64) -> Input {
        Input::Election {
            role: Role::Server,
            term: t(term),
        }
    }

    fn client(term: u64) -> Input {
        Input::Election {
            role: Role::Client,
            term: t(term),
        }
    }

    fn fenced(term: u64, outcome: FenceOutcome) -> Input {
        Input::Fenced {
            term: t(term),
            outcome,
        }
    }

    fn ok() -> FenceOutcome {
        FenceOutcome::Fenced { revision: 3 }
    }

    /// A core serving `term` since `at`.
    fn serving(term: u64, at: Duration) -> Serving {
        let mut c = core();
        c.handle(server(term), at);
        c.handle(fenced(term, ok()), at);
        assert_eq!(c.serving(), Some(t(term)));
        c
    }

    fn revision(n: u64) -> RevisionSummary {
        RevisionSummary {
            revision: n,
            term: t(5),
            sha256: format!("{n:064x}"),
            size: 1,
            changed_by: None,
            change_id: Some(format!("c{n}")),
            committed_at_ms: 0,
        }
    }

    #[test]
    fn a_server_fences_before_it_serves_and_announces_it() {
        let mut c = core();
        assert_eq!(
            c.handle(server(5), Duration::ZERO),
            vec![Action::Fence { term: t(5) }]
        );
        assert_eq!(c.serving(), None);
        assert_eq!(c.handle(server(5), 250 * MS), vec![], "one fence at a time");
        let acts = c.handle(fenced(5, FenceOutcome::Fenced { revision: 7 }), 300 * MS);
        assert_eq!(acts[0], Action::Serve { term: t(5) });
        assert!(matches!(
            &acts[1],
            Action::Publish(ProjectEventKind::ServingProject { term, revision: 7, address: Some(_), .. }) if *term == t(5)
        ));
        assert_eq!(c.serving(), Some(t(5)));
    }

    #[test]
    fn a_fence_that_ends_after_the_election_moved_on_does_not_serve() {
        let mut c = core();
        c.handle(server(5), Duration::ZERO);
        c.handle(client(6), 100 * MS);
        assert_eq!(c.handle(fenced(5, ok()), 200 * MS), vec![]);
        assert_eq!(c.serving(), None);

        let mut c = core();
        c.handle(server(5), Duration::ZERO);
        assert_eq!(
            c.handle(server(6), 100 * MS),
            vec![Action::Fence { term: t(6) }]
        );
        assert_eq!(
            c.handle(fenced(5, ok()), 200 * MS),
            vec![],
            "the older fence is ignored"
        );
        assert_eq!(c.phase(), Phase::Fencing(t(6)));
    }

    #[test]
    fn a_fence_that_ends_after_election_silence_does_not_serve() {
        let mut c = core();
        c.handle(server(5), Duration::ZERO);
        assert_eq!(c.handle(fenced(5, ok()), LIVENESS_WINDOW), vec![]);
        assert_eq!(c.serving(), None);
        assert_eq!(
            c.handle(server(5), LIVENESS_WINDOW + MS),
            vec![Action::Fence { term: t(5) }]
        );
    }

    #[test]
    fn a_deposed_term_is_never_fenced_again() {
        let mut c = core();
        c.handle(server(5), Duration::ZERO);
        c.handle(fenced(5, FenceOutcome::Deposed { by: t(9) }), 10 * MS);
        assert_eq!(c.phase(), Phase::Deposed(t(5)));
        assert_eq!(c.handle(server(5), 250 * MS), vec![]);
        assert_eq!(c.handle(Input::Tick, 500 * MS), vec![]);
        assert_eq!(c.next_deadline(), None);
        assert_eq!(
            c.handle(server(10), 600 * MS),
            vec![Action::Fence { term: t(10) }]
        );
    }

    #[test]
    fn a_commit_that_finds_a_newer_term_stops_serving_for_good() {
        let mut c = serving(5, Duration::ZERO);
        let acts = c.handle(
            Input::Committed {
                term: t(5),
                outcome: CommitOutcome::Deposed,
            },
            10 * MS,
        );
        assert_eq!(
            acts,
            vec![Action::Stop {
                term: t(5),
                reason: StopReason::Deposed
            }]
        );
        assert_eq!(c.handle(server(5), 250 * MS), vec![]);
        assert_eq!(c.handle(Input::Tick, 450 * MS), vec![]);
    }

    #[test]
    fn a_failed_fence_is_retried_while_the_election_says_server() {
        let mut c = core();
        c.handle(server(5), Duration::ZERO);
        assert_eq!(c.handle(fenced(5, FenceOutcome::Failed), 10 * MS), vec![]);
        assert_eq!(c.next_deadline(), Some(10 * MS + FENCE_RETRY));
        assert_eq!(
            c.handle(Input::Tick, 100 * MS),
            vec![],
            "not before the retry"
        );
        assert_eq!(
            c.handle(Input::Tick, 10 * MS + FENCE_RETRY),
            vec![Action::Fence { term: t(5) }]
        );
        c.handle(fenced(5, FenceOutcome::Failed), 300 * MS);
        c.handle(client(5), 400 * MS);
        assert_eq!(
            c.handle(Input::Tick, 600 * MS),
            vec![],
            "no retry for a client"
        );
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn a_retry_that_comes_due_after_election_silence_waits_for_the_next_report() {
        let mut c = core();
        c.handle(server(5), Duration::ZERO);
        c.handle(fenced(5, FenceOutcome::Failed), 10 * MS);
        let late = LIVENESS_WINDOW + 10 * MS;
        assert_eq!(c.handle(Input::Tick, late), vec![]);
        assert_eq!(c.next_deadline(), None, "no deadline left in the past");
        assert_eq!(
            c.handle(server(5), late),
            vec![Action::Fence { term: t(5) }]
        );
    }

    #[test]
    fn silence_from_the_election_service_stops_serving() {
        let mut c = serving(5, Duration::ZERO);
        assert_eq!(c.next_deadline(), Some(LIVENESS_WINDOW));
        assert_eq!(c.handle(Input::Tick, LIVENESS_WINDOW - MS), vec![]);
        assert_eq!(
            c.handle(Input::Tick, LIVENESS_WINDOW),
            vec![Action::Stop {
                term: t(5),
                reason: StopReason::ElectionSilent
            }]
        );
        assert_eq!(c.next_deadline(), None);
        assert_eq!(
            c.handle(server(5), LIVENESS_WINDOW + MS),
            vec![Action::Fence { term: t(5) }]
        );
    }

    #[test]
    fn the_election_saying_client_stops_serving() {
        let mut c = serving(5, Duration::ZERO);
        assert_eq!(
            c.handle(client(5), 100 * MS),
            vec![Action::Stop {
                term: t(5),
                reason: StopReason::NotServer
            }]
        );
    }

    #[test]
    fn a_newer_term_of_its_own_stops_the_old_one_and_fences_again() {
        let mut c = serving(5, Duration::ZERO);
        assert_eq!(
            c.handle(server(8), 100 * MS),
            vec![
                Action::Stop {
                    term: t(5),
                    reason: StopReason::NewTerm
                },
                Action::Fence { term: t(8) }
            ]
        );
    }

    #[test]
    fn an_unknown_commit_outcome_stops_serving_and_refences() {
        let mut c = serving(5, Duration::ZERO);
        let acts = c.handle(
            Input::Committed {
                term: t(5),
                outcome: CommitOutcome::Unknown,
            },
            100 * MS,
        );
        assert_eq!(
            acts,
            vec![
                Action::Stop {
                    term: t(5),
                    reason: StopReason::UnknownCommitOutcome
                },
                Action::Fence { term: t(5) }
            ]
        );
        assert!(!c.may_commit(t(5), 100 * MS));
    }

    #[test]
    fn a_written_commit_is_announced_and_serving_goes_on() {
        let mut c = serving(5, Duration::ZERO);
        let acts = c.handle(
            Input::Committed {
                term: t(5),
                outcome: CommitOutcome::Written {
                    revision: revision(4),
                },
            },
            100 * MS,
        );
        assert_eq!(
            acts,
            vec![Action::Publish(ProjectEventKind::RevisionCommitted {
                revision: revision(4)
            })]
        );
        assert_eq!(c.serving(), Some(t(5)));
    }

    #[test]
    fn commits_need_a_fresh_confirmation_of_the_served_term() {
        let c = serving(5, Duration::ZERO);
        assert!(c.may_commit(t(5), CONFIRM_FRESH - MS));
        assert!(!c.may_commit(t(5), CONFIRM_FRESH));
        assert!(!c.may_commit(t(4), Duration::ZERO));
        assert!(!core().may_commit(t(5), Duration::ZERO));
    }

    #[test]
    fn shutting_down_stops_serving() {
        let mut c = serving(5, Duration::ZERO);
        assert_eq!(
            c.handle(Input::Shutdown, MS),
            vec![Action::Stop {
                term: t(5),
                reason: StopReason::Shutdown
            }]
        );
    }
}
