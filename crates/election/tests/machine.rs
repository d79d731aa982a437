//! The election state machine, rule by rule (B3–B8, S1).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use understudy_election::{
    Action, ElectionConfig, Event, Expect, Machine, OpId, PeerStatus, StoreOutcome,
    UNHEARD_HOLDER_WAIT,
};
use understudy_protocol::ledger::{LedgerEntry, LedgerKind, LedgerRule};
use understudy_protocol::messages::{
    ElectionEventKind, ElectionReason, LeaseHolder, LeaseRecord, Released, StepDownReason,
};
use understudy_protocol::{DeviceId, InstanceId, Mac, Role, SCHEMA_VERSION, Score, Term};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn id(s: &str) -> DeviceId {
    s.parse().unwrap()
}

fn mac(n: u64) -> Mac {
    Mac::from_u64(n).unwrap()
}

const ME: &str = "me";

fn machine(score: u8, my_mac: u64, cfg: ElectionConfig) -> Machine {
    Machine::new(
        cfg,
        "stage".parse().unwrap(),
        id(ME),
        InstanceId::new(1),
        mac(my_mac),
        Score::new(score),
        true,
        Duration::ZERO,
    )
}

fn peer(name: &str, score: u8, m: u64) -> PeerStatus {
    PeerStatus {
        device: id(name),
        instance: InstanceId::new(100 + m),
        mac: mac(m),
        score: Score::new(score),
        online: true,
        role: Role::Client,
        term: Term::ZERO,
        in_grace: false,
    }
}

fn server_peer(name: &str, score: u8, m: u64, term: u64) -> PeerStatus {
    PeerStatus {
        role: Role::Server,
        term: Term::from_revision(term),
        ..peer(name, score, m)
    }
}

/// The failure detector's verdict that this very instance of `p` is gone.
fn lost(p: &PeerStatus) -> Event {
    Event::PeerLost {
        device: p.device.clone(),
        instance: p.instance,
    }
}

fn held_by(p: &PeerStatus, term: Option<u64>) -> LeaseRecord {
    LeaseRecord {
        schema: SCHEMA_VERSION,
        group: "stage".parse().unwrap(),
        holder: Some(LeaseHolder {
            device: p.device.clone(),
            instance: p.instance,
            mac: p.mac,
            score: p.score,
            project_addr: None,
        }),
        term: term.map(Term::from_revision),
        handover_to: None,
        released: None,
    }
}

fn claim(actions: &[Action]) -> Option<(OpId, Expect, LeaseRecord)> {
    actions.iter().find_map(|a| match a {
        Action::Claim { op, expect, record } => Some((*op, *expect, record.clone())),
        _ => None,
    })
}

fn renew(actions: &[Action]) -> Option<(OpId, u64)> {
    actions.iter().find_map(|a| match a {
        Action::Renew { op, revision, .. } => Some((*op, *revision)),
        _ => None,
    })
}

fn release(actions: &[Action]) -> Option<(u64, LeaseRecord)> {
    actions.iter().find_map(|a| match a {
        Action::Release {
            revision, record, ..
        } => Some((*revision, record.clone())),
        _ => None,
    })
}

fn step_down(actions: &[Action]) -> Option<StepDownReason> {
    actions.iter().find_map(|a| match a {
        Action::StepDown { reason, .. } => Some(*reason),
        _ => None,
    })
}

fn published(actions: &[Action]) -> Vec<ElectionEventKind> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish(k) => Some(k.clone()),
            _ => None,
        })
        .collect()
}

/// Runs the machine's timer until `until`, collecting every action.
fn run_until(m: &mut Machine, from: Duration, until: Duration) -> Vec<Action> {
    let mut out = m.handle(Event::Tick, from);
    while let Some(d) = m.next_deadline() {
        if d > until {
            break;
        }
        out.extend(m.handle(Event::Tick, d));
    }
    out.extend(m.handle(Event::Tick, until));
    out
}

/// A machine that has won term 7 at revision 7, claimed at `at`.
fn serving(score: u8, my_mac: u64, cfg: ElectionConfig) -> (Machine, Duration) {
    let mut m = machine(score, my_mac, cfg);
    let at = ms(2000);
    let a = m.handle(Event::LeaseObserved(None), at);
    let (op, expect, _) = claim(&a).expect("a lone viable device claims after grace");
    assert_eq!(expect, Expect::Absent);
    let a = m.handle(
        Event::StoreReply {
            op,
            outcome: StoreOutcome::Written { revision: 7 },
        },
        at + ms(1),
    );
    assert!(a.contains(&Action::BecomeServer {
        term: Term::from_revision(7)
    }));
    (m, at)
}

#[test]
fn does_not_claim_during_grace() {
    let mut m = machine(100, 1, ElectionConfig::default());
    let a = run_until(&mut m, ms(0), ms(1999));
    assert_eq!(claim(&a), None, "claimed inside the grace period: {a:?}");
    assert!(m.status(ms(1999)).in_grace);
    let a = run_until(&mut m, ms(1999), ms(2000));
    let (_, expect, record) = claim(&a).expect("claims when grace ends");
    assert_eq!(expect, Expect::Absent);
    assert_eq!(
        record.term, None,
        "the claiming write leaves the term to its revision"
    );
    assert!(published(&a).contains(&ElectionEventKind::ElectionStarted {
        reason: ElectionReason::Startup
    }));
}

#[test]
fn joins_an_existing_server_at_once() {
    let mut m = machine(200, 1, ElectionConfig::default());
    let s = server_peer("srv", 100, 9, 5);
    m.handle(Event::PeerSeen(s.clone()), ms(10));
    let a = m.handle(Event::LeaseObserved(Some((5, held_by(&s, None)))), ms(20));
    assert_eq!(claim(&a), None);
    let st = m.status(ms(20));
    assert!(!st.in_grace, "grace ends as soon as a live server is seen");
    assert_eq!(st.server, Some((id("srv"), Term::from_revision(5))));
    assert_eq!(st.role, Role::Client);
}

#[test]
fn winning_a_claim_makes_its_revision_the_term() {
    let (m, _) = serving(100, 1, ElectionConfig::default());
    assert_eq!(m.server_term(), Some(Term::from_revision(7)));
    assert_eq!(m.status(ms(2001)).role, Role::Server);
}

#[test]
fn renewal_is_a_compare_and_set_on_the_last_revision() {
    let cfg = ElectionConfig::default();
    let (mut m, at) = serving(100, 1, cfg.clone());
    let a = run_until(&mut m, at + ms(1), at + cfg.renew_interval);
    let (op, revision) = renew(&a).expect("renews on time");
    assert_eq!(revision, 7, "renews on the revision it wrote");
    m.handle(
        Event::StoreReply {
            op,
            outcome: StoreOutcome::Written { revision: 9 },
        },
        at + cfg.renew_interval + ms(1),
    );
    let a = run_until(
        &mut m,
        at + cfg.renew_interval + ms(1),
        at + cfg.renew_interval * 2,
    );
    assert_eq!(renew(&a).map(|(_, r)| r), Some(9));
    assert_eq!(
        m.server_term(),
        Some(Term::from_revision(7)),
        "renewal keeps the term"
    );
}

#[test]
fn a_refused_renewal_deposes_the_server() {
    let cfg = ElectionConfig::default();
    let (mut m, at) = serving(100, 1, cfg.clone());
    let a = run_until(&mut m, at + ms(1), at + cfg.renew_interval);
    let (op, _) = renew(&a).unwrap();
    let other = peer("other", 50, 2);
    let a = m.handle(
        Event::StoreReply {
            op,
            outcome: StoreOutcome::Conflict {
                current: Some((12, held_by(&other, None))),
            },
        },
        at + cfg.renew_interval + ms(1),
    );
    assert_eq!(step_down(&a), Some(StepDownReason::Deposed));
    assert!(!m.is_server());
}

#[test]
fn a_newer_term_in_the_store_deposes_the_server() {
    let (mut m, at) = serving(100, 1, ElectionConfig::default());
    let other = peer("other", 50, 2);
    let a = m.handle(
        Event::LeaseObserved(Some((12, held_by(&other, None)))),
        at + ms(5),
    );
    assert_eq!(step_down(&a), Some(StepDownReason::Deposed));
}

#[test]
fn a_server_that_cannot_renew_stops_before_its_lease_can_expire() {
    let cfg = ElectionConfig::default();
    let (mut m, at) = serving(100, 1, cfg.clone());
    // Every renewal goes unanswered (the bus is gone).
    let mut t = at + ms(1);
    let mut stepped = None;
    while t < at + cfg.lease_duration * 2 {
        let a = m.handle(Event::Tick, t);
        if let Some(r) = step_down(&a) {
            stepped = Some((t, r));
            break;
        }
        t = m.next_deadline().unwrap_or(t + ms(10));
    }
    let (when, reason) = stepped.expect("steps down on its own");
    assert_eq!(reason, StepDownReason::LeaseLost);
    assert!(
        when < at + cfg.lease_duration,
        "stepped down at {when:?}, after the lease (sent at {at:?}) could expire"
    );
}

#[test]
fn a_lost_server_is_replaced_by_the_rightful_device_at_once() {
    let mut m = machine(100, 1, ElectionConfig::default());
    let s = server_peer("srv", 200, 9, 5);
    m.handle(Event::PeerSeen(s.clone()), ms(10));
    m.handle(Event::PeerSeen(peer("low", 50, 3)), ms(10));
    m.handle(
        Event::LeaseObserved(Some((6, held_by(&s, Some(5))))),
        ms(20),
    );
    let a = m.handle(lost(&s), ms(3000));
    let (_, expect, _) = claim(&a).expect("the successor claims on detection");
    assert_eq!(
        expect,
        Expect::Revision(6),
        "compare-and-set on the lease it saw"
    );
    let events = published(&a);
    assert!(events.contains(&ElectionEventKind::ServerLost {
        device: id("srv"),
        term: Term::from_revision(5),
        silent_ms: None,
    }));
    assert!(events.contains(&ElectionEventKind::ElectionStarted {
        reason: ElectionReason::ServerLost
    }));
}

#[test]
fn only_the_rightful_device_claims() {
    let mut m = machine(100, 1, ElectionConfig::default());
    m.handle(Event::PeerSeen(peer("better", 101, 9)), ms(10));
    let a = run_until(&mut m, ms(10), ms(5000));
    assert_eq!(claim(&a), None);
}

#[test]
fn the_lower_mac_wins_a_tie() {
    let mut low = machine(100, 0x10, ElectionConfig::default());
    low.handle(Event::PeerSeen(peer("high-mac", 100, 0x20)), ms(10));
    let a = run_until(&mut low, ms(10), ms(2000));
    assert!(claim(&a).is_some(), "the lower MAC claims");

    let mut high = machine(100, 0x20, ElectionConfig::default());
    high.handle(Event::PeerSeen(peer("low-mac", 100, 0x10)), ms(10));
    let a = run_until(&mut high, ms(10), ms(5000));
    assert_eq!(claim(&a), None, "the higher MAC waits");
}

#[test]
fn zero_scores_never_claim_and_one_device_reports_it() {
    let mut m = machine(0, 1, ElectionConfig::default());
    m.handle(Event::PeerSeen(peer("a", 0, 5)), ms(10));
    m.handle(Event::PeerSeen(peer("b", 0, 6)), ms(10));
    let a = run_until(&mut m, ms(10), ms(10_000));
    assert_eq!(claim(&a), None);
    let events = published(&a);
    assert_eq!(
        events,
        vec![ElectionEventKind::NoViableCandidate],
        "the lowest MAC reports once"
    );
    // A device with a higher MAC stays quiet.
    let mut quiet = machine(0, 9, ElectionConfig::default());
    quiet.handle(Event::PeerSeen(peer("a", 0, 5)), ms(10));
    let a = run_until(&mut quiet, ms(10), ms(10_000));
    assert!(published(&a).is_empty());
}

#[test]
fn manual_assignment_waits_for_an_operator() {
    // B8: the only non-zero device was the server and is lost.
    let mut m = machine(0, 1, ElectionConfig::default());
    let s = server_peer("manual", 10, 9, 5);
    m.handle(Event::PeerSeen(s.clone()), ms(10));
    m.handle(Event::LeaseObserved(Some((5, held_by(&s, None)))), ms(20));
    let a = m.handle(lost(&s), ms(3000));
    assert_eq!(claim(&a), None);
    let a = run_until(&mut m, ms(3000), ms(8000));
    assert_eq!(claim(&a), None, "nobody else is viable: no server");
    let a = m.handle(Event::SetScore(Score::new(5)), ms(8000));
    let (_, expect, _) = claim(&a).expect("a non-zero score triggers the election at once");
    assert_eq!(expect, Expect::Revision(5));
}

#[test]
fn a_better_candidate_preempts_after_the_preempt_delay() {
    let cfg = ElectionConfig {
        preempt_delay: ms(500),
        ..ElectionConfig::default()
    };
    let (mut m, at) = serving(100, 1, cfg);
    let t0 = at + ms(100);
    let a = m.handle(Event::PeerSeen(peer("better", 200, 9)), t0);
    assert_eq!(release(&a), None);
    let a = run_until(&mut m, t0, t0 + ms(499));
    assert_eq!(release(&a), None, "held back by preempt_delay");
    let a = run_until(&mut m, t0 + ms(499), t0 + ms(500));
    let (_, record) = release(&a).expect("hands over when the delay has passed");
    assert_eq!(record.holder, None);
    assert_eq!(record.handover_to, Some(id("better")));
    assert_eq!(step_down(&a), Some(StepDownReason::HandOver));
    assert!(!m.is_server());
}

#[test]
fn a_better_candidate_in_its_grace_does_not_preempt_yet() {
    let (mut m, at) = serving(100, 1, ElectionConfig::default());
    let mut young = peer("young", 200, 9);
    young.in_grace = true;
    let a = m.handle(Event::PeerSeen(young.clone()), at + ms(10));
    assert_eq!(release(&a), None);
    young.in_grace = false;
    let a = m.handle(Event::PeerSeen(young), at + ms(110));
    assert!(release(&a).is_some());
}

#[test]
fn an_operator_trigger_skips_the_preempt_delay() {
    let cfg = ElectionConfig {
        preempt_delay: Duration::from_secs(60),
        ..ElectionConfig::default()
    };
    let (mut m, at) = serving(100, 1, cfg);
    m.handle(Event::PeerSeen(peer("better", 200, 9)), at + ms(10));
    let a = m.handle(Event::TriggerElection { force: false }, at + ms(20));
    assert!(release(&a).is_some());
}

#[test]
fn shutdown_hands_over_at_once() {
    let (mut m, at) = serving(100, 1, ElectionConfig::default());
    m.handle(Event::PeerSeen(peer("next", 50, 9)), at + ms(10));
    m.handle(Event::PeerSeen(peer("zero", 0, 3)), at + ms(10));
    let a = m.handle(Event::Shutdown, at + ms(20));
    assert_eq!(step_down(&a), Some(StepDownReason::Shutdown));
    let (revision, record) = release(&a).expect("releases by compare-and-set");
    assert_eq!(revision, 7);
    assert_eq!(record.handover_to, Some(id("next")));
    assert_eq!(record.term, Some(Term::from_revision(7)));
    assert!(
        m.handle(Event::Tick, at + ms(30)).is_empty(),
        "a stopped machine does nothing"
    );
    assert_eq!(m.next_deadline(), None);
}

#[test]
fn the_named_successor_claims_even_in_its_grace() {
    let mut m = machine(100, 5, ElectionConfig::default());
    let s = server_peer("old", 50, 9, 5);
    m.handle(Event::PeerSeen(s.clone()), ms(10));
    let mut released = held_by(&s, Some(5));
    released.holder = None;
    released.handover_to = Some(id(ME));
    let a = m.handle(Event::LeaseObserved(Some((8, released))), ms(20));
    let (_, expect, _) = claim(&a).expect("the named successor claims");
    assert_eq!(expect, Expect::Revision(8));
    assert!(published(&a).contains(&ElectionEventKind::ElectionStarted {
        reason: ElectionReason::HandOver
    }));
}

#[test]
fn going_offline_hands_over_and_an_offline_device_never_claims() {
    let (mut m, at) = serving(100, 1, ElectionConfig::default());
    m.handle(Event::PeerSeen(peer("next", 50, 9)), at + ms(10));
    let a = m.handle(Event::SetOnline(false), at + ms(20));
    assert_eq!(step_down(&a), Some(StepDownReason::Offline));
    assert!(release(&a).is_some());
    let a = m.handle(Event::LeaseObserved(None), at + ms(30));
    let a2 = run_until(&mut m, at + ms(30), at + ms(10_000));
    assert_eq!(claim(&a), None);
    assert_eq!(claim(&a2), None);
    assert!(!m.status(at + ms(30)).online);
}

#[test]
fn a_restarted_holder_is_not_the_holder() {
    let mut m = machine(100, 1, ElectionConfig::default());
    let s = server_peer("srv", 200, 9, 5);
    m.handle(Event::LeaseObserved(Some((5, held_by(&s, None)))), ms(10));
    // srv restarted: new instance, knows no term yet, lower than us now.
    let mut reborn = peer("srv", 20, 9);
    reborn.instance = InstanceId::new(999);
    let a = m.handle(Event::PeerSeen(reborn), ms(2500));
    let (_, expect, _) = claim(&a).expect("the lease of a dead instance is vacant");
    assert_eq!(expect, Expect::Revision(5));
}

#[test]
fn hostile_store_replies_do_not_panic() {
    let (mut m, at) = serving(100, 1, ElectionConfig::default());
    for (i, outcome) in [
        StoreOutcome::Failed,
        StoreOutcome::Conflict { current: None },
        StoreOutcome::Written { revision: 0 },
        StoreOutcome::Written { revision: u64::MAX },
    ]
    .into_iter()
    .enumerate()
    {
        m.handle(
            Event::StoreReply {
                op: OpId(i as u64 + 1000),
                outcome,
            },
            at + ms(i as u64),
        );
    }
    m.handle(
        Event::LeaseObserved(Some((u64::MAX, held_by(&peer("x", 1, 1), None)))),
        at + ms(9),
    );
    assert!(!m.is_server());
}

#[test]
fn a_server_past_its_lease_never_shows_as_server() {
    let cfg = ElectionConfig::default();
    let (m, at) = serving(100, 1, cfg.clone());
    assert_eq!(m.status(at + ms(10)).role, Role::Server);
    // Woken from a pause, before any event is fed.
    let late = at + cfg.lease_duration;
    let st = m.status(late);
    assert_eq!(st.role, Role::Client);
    assert_eq!(st.server, None);
}

#[test]
fn a_woken_server_does_not_depose_its_live_successor() {
    let cfg = ElectionConfig::default();
    let (mut m, at) = serving(200, 1, cfg.clone());
    let b = peer("b", 150, 2);
    m.handle(Event::PeerSeen(b.clone()), at + ms(10));
    m.handle(Event::PeerSeen(peer("c", 100, 3)), at + ms(10));
    // Paused for 2 s: b took over meanwhile (term 2, renewed up to revision 8).
    let woke = at + ms(2000);
    let a = m.handle(Event::Tick, woke);
    assert_eq!(step_down(&a), Some(StepDownReason::LeaseLost));
    if let Some((op, _, _)) = claim(&a) {
        let a = m.handle(
            Event::StoreReply {
                op,
                outcome: StoreOutcome::Conflict {
                    current: Some((8, held_by(&b, Some(2)))),
                },
            },
            woke + ms(1),
        );
        assert_eq!(claim(&a), None, "claimed over a live successor: {a:?}");
    }
}

#[test]
fn a_stale_heartbeat_does_not_make_a_held_lease_vacant() {
    let mut m = machine(200, 1, ElectionConfig::default());
    // b's last beat we processed predates its win: client, knows term 2.
    let mut b = peer("b", 150, 2);
    b.term = Term::from_revision(2);
    m.handle(Event::PeerSeen(b.clone()), ms(2500));
    let a = m.handle(
        Event::LeaseObserved(Some((8, held_by(&b, Some(2))))),
        ms(2600),
    );
    assert_eq!(claim(&a), None, "claimed over a live holder: {a:?}");
    assert_eq!(
        m.status(ms(2600)).server,
        Some((id("b"), Term::from_revision(2)))
    );
}

#[test]
fn a_holder_not_yet_heard_is_waited_for_not_deposed() {
    // Back from a pause, this device sees the lease of a server that started
    // meanwhile before its failure detector's "joined" verdict arrives.
    let mut m = machine(100, 1, ElectionConfig::default());
    let s = server_peer("srv", 50, 9, 5);
    let seen = ms(3000);
    let a = m.handle(Event::LeaseObserved(Some((5, held_by(&s, None)))), seen);
    assert_eq!(claim(&a), None, "an unheard holder is not lost yet");
    assert_eq!(
        m.status(seen).server,
        Some((id("srv"), Term::from_revision(5)))
    );
    let a = m.handle(Event::PeerSeen(s), seen + ms(5));
    assert_eq!(claim(&a), None, "heard: it holds the lease");
    let a = run_until(&mut m, seen + ms(5), seen + ms(1400));
    assert_eq!(claim(&a), None);
}

#[test]
fn a_holder_never_heard_counts_as_gone_after_the_wait() {
    let mut m = machine(100, 1, ElectionConfig::default());
    let s = server_peer("srv", 50, 9, 5);
    let seen = ms(3000);
    m.handle(Event::LeaseObserved(Some((5, held_by(&s, None)))), seen);
    let early = run_until(&mut m, seen, seen + UNHEARD_HOLDER_WAIT - ms(1));
    assert_eq!(claim(&early), None);
    let a = run_until(
        &mut m,
        seen + UNHEARD_HOLDER_WAIT - ms(1),
        seen + UNHEARD_HOLDER_WAIT,
    );
    let (_, expect, _) = claim(&a).expect("a holder never heard is gone");
    assert_eq!(expect, Expect::Revision(5));
}

#[test]
fn a_holder_declared_lost_after_its_lease_was_seen_is_gone_at_once() {
    let mut m = machine(100, 1, ElectionConfig::default());
    let s = server_peer("srv", 50, 9, 5);
    m.handle(Event::LeaseObserved(Some((5, held_by(&s, None)))), ms(3000));
    m.handle(Event::PeerSeen(s.clone()), ms(3001));
    let a = m.handle(lost(&s), ms(3100));
    let (_, expect, _) = claim(&a).expect("the successor claims on detection");
    assert_eq!(expect, Expect::Revision(5));
}

#[test]
fn a_loss_verdict_about_a_holder_never_heard_serving_waits_like_an_unheard_holder() {
    // Cut off while a client was elected: the last beats heard from it were
    // its slow client beats, and the detector's verdict on them arrives just
    // after this device is back and sees the lease. That silence was this
    // device's own: the holder is waited for, and its server beats keep it.
    let mut m = machine(100, 1, ElectionConfig::default());
    let as_client = peer("srv", 50, 9);
    m.handle(Event::PeerSeen(as_client.clone()), ms(1000));
    let s = server_peer("srv", 50, 9, 5);
    let seen = ms(4000);
    m.handle(Event::LeaseObserved(Some((5, held_by(&s, None)))), seen);
    let a = m.handle(lost(&as_client), seen + ms(2));
    assert_eq!(claim(&a), None, "the verdict rests on its client beats");
    let a = run_until(&mut m, seen + ms(2), seen + ms(100));
    assert_eq!(claim(&a), None);
    m.handle(Event::PeerSeen(s.clone()), seen + ms(100));
    let a = run_until(&mut m, seen + ms(100), seen + UNHEARD_HOLDER_WAIT + ms(500));
    assert_eq!(claim(&a), None, "heard serving: it holds the lease");
    // Heard serving, then silent: gone at once.
    let t = seen + UNHEARD_HOLDER_WAIT + ms(500);
    let a = m.handle(lost(&s), t);
    assert!(
        claim(&a).is_some(),
        "a holder heard serving then lost is replaced at once"
    );
}

#[test]
fn a_loss_verdict_about_a_holder_never_heard_serving_still_ends_after_the_wait() {
    let mut m = machine(100, 1, ElectionConfig::default());
    let as_client = peer("srv", 50, 9);
    m.handle(Event::PeerSeen(as_client.clone()), ms(1000));
    let s = server_peer("srv", 50, 9, 5);
    let seen = ms(4000);
    m.handle(Event::LeaseObserved(Some((5, held_by(&s, None)))), seen);
    let verdict = seen + ms(2);
    m.handle(lost(&as_client), verdict);
    let early = run_until(&mut m, verdict, verdict + UNHEARD_HOLDER_WAIT - ms(1));
    assert_eq!(claim(&early), None);
    let a = run_until(
        &mut m,
        verdict + UNHEARD_HOLDER_WAIT - ms(1),
        verdict + UNHEARD_HOLDER_WAIT,
    );
    assert!(
        claim(&a).is_some(),
        "never heard serving, silent: gone after the wait"
    );
}

#[test]
fn a_loss_verdict_about_a_holder_never_heard_serving_restarts_the_wait() {
    // The lease naming it was seen just before this device was cut off for
    // seconds; its first server beat never arrived. Back on the bus, the
    // verdict on its client beats must not depose it at once (simulator
    // seed 7975 of the soak, 2026-12-01).
    let mut m = machine(100, 1, ElectionConfig::default());
    let as_client = peer("srv", 50, 9);
    m.handle(Event::PeerSeen(as_client.clone()), ms(1000));
    let s = server_peer("srv", 50, 9, 5);
    m.handle(Event::LeaseObserved(Some((5, held_by(&s, None)))), ms(1200));
    let back = ms(4800);
    let a = m.handle(lost(&as_client), back);
    assert_eq!(claim(&a), None, "the wait starts again from the verdict");
    m.handle(Event::PeerSeen(s), back + ms(100));
    let a = run_until(&mut m, back + ms(100), back + UNHEARD_HOLDER_WAIT + ms(500));
    assert_eq!(claim(&a), None, "heard serving: it holds the lease");
}

#[test]
fn a_holder_declared_lost_that_renews_its_lease_afterwards_is_waited_for() {
    // Heard serving, then declared lost just as this device was cut off for
    // seconds; meanwhile the better candidate was lost too (this device's
    // own silence). Back on the bus, the lease shows the holder renewed it
    // after the verdict: it is alive and must not be deposed (simulator seed
    // 50535 of the soak with 1 s client beats, 2026-12-01).
    let mut m = machine(100, 1, ElectionConfig::default());
    let s = server_peer("srv", 200, 9, 5);
    let better = peer("b", 150, 8);
    m.handle(Event::PeerSeen(better.clone()), ms(2500));
    m.handle(Event::PeerSeen(s.clone()), ms(2500));
    m.handle(Event::LeaseObserved(Some((5, held_by(&s, None)))), ms(2600));
    run_until(&mut m, ms(2600), ms(4000));
    let a = m.handle(lost(&s), ms(4000));
    assert_eq!(claim(&a), None, "b is the rightful one, not this device");
    // Back from the cut-off: the holder's renewals since, then the
    // detector's verdict on b (made while this device heard nothing).
    let back = ms(7000);
    let a = m.handle(Event::LeaseObserved(Some((17, held_by(&s, Some(5))))), back);
    assert_eq!(claim(&a), None);
    let a = m.handle(lost(&better), back + ms(1));
    assert_eq!(
        claim(&a),
        None,
        "the holder renewed after the verdict: it is waited for"
    );
    m.handle(Event::PeerSeen(s), back + ms(100));
    let a = run_until(&mut m, back + ms(100), back + UNHEARD_HOLDER_WAIT + ms(500));
    assert_eq!(claim(&a), None, "heard serving again: it holds the lease");
}

#[test]
fn a_holder_declared_lost_that_renews_but_stays_unheard_is_replaced_after_the_wait() {
    let mut m = machine(100, 1, ElectionConfig::default());
    let s = server_peer("srv", 200, 9, 5);
    m.handle(Event::PeerSeen(s.clone()), ms(2500));
    m.handle(Event::LeaseObserved(Some((5, held_by(&s, None)))), ms(2600));
    run_until(&mut m, ms(2600), ms(4000));
    let a = m.handle(lost(&s), ms(4000));
    assert!(
        claim(&a).is_some(),
        "lost and not renewed: replaced at once"
    );
    // Another device: the renewal comes first, then silence.
    let mut m = machine(100, 1, ElectionConfig::default());
    m.handle(Event::PeerSeen(s.clone()), ms(2500));
    m.handle(Event::LeaseObserved(Some((5, held_by(&s, None)))), ms(2600));
    run_until(&mut m, ms(2600), ms(4000));
    let better = peer("b", 150, 8);
    m.handle(Event::PeerSeen(better.clone()), ms(3900));
    m.handle(lost(&s), ms(4000));
    let renewed = ms(4100);
    m.handle(
        Event::LeaseObserved(Some((6, held_by(&s, Some(5))))),
        renewed,
    );
    let a = m.handle(lost(&better), renewed + ms(1));
    assert_eq!(claim(&a), None);
    let early = run_until(
        &mut m,
        renewed + ms(1),
        renewed + UNHEARD_HOLDER_WAIT - ms(1),
    );
    assert_eq!(claim(&early), None);
    let a = run_until(
        &mut m,
        renewed + UNHEARD_HOLDER_WAIT - ms(1),
        renewed + UNHEARD_HOLDER_WAIT + ms(300),
    );
    assert!(
        claim(&a).is_some(),
        "renewed but never heard: replaced after the wait"
    );
}

#[test]
fn a_holder_known_only_as_its_older_instance_is_waited_for() {
    // Away while the holder's device restarted and took the lease again:
    // the lease names the new instance before its beats are heard.
    let mut m = machine(100, 1, ElectionConfig::default());
    let old = server_peer("srv", 50, 9, 5);
    m.handle(Event::PeerSeen(old.clone()), ms(10));
    let mut reborn = server_peer("srv", 50, 9, 18);
    reborn.instance = InstanceId::new(999);
    let seen = ms(3000);
    let a = m.handle(
        Event::LeaseObserved(Some((18, held_by(&reborn, None)))),
        seen,
    );
    assert_eq!(claim(&a), None, "the new instance is not heard yet");
    let a = m.handle(Event::PeerSeen(reborn), seen + ms(5));
    assert_eq!(claim(&a), None);
    let a = run_until(&mut m, seen + ms(5), seen + ms(1400));
    assert_eq!(claim(&a), None, "heard: it holds the lease");
}

#[test]
fn the_goodbye_of_an_older_instance_does_not_depose_the_new_one() {
    // Paused while the holder's device shut down (saying goodbye), restarted
    // and was handed the lease: the queued goodbye is about the old process,
    // and arrives with the new lease but before the new process is heard.
    let mut m = machine(100, 1, ElectionConfig::default());
    let old = server_peer("srv", 150, 9, 5);
    m.handle(Event::PeerSeen(old.clone()), ms(10));
    m.handle(Event::LeaseObserved(Some((5, held_by(&old, None)))), ms(20));
    let mut reborn = server_peer("srv", 150, 9, 10);
    reborn.instance = InstanceId::new(999);
    let back = ms(4000);
    m.handle(
        Event::LeaseObserved(Some((12, held_by(&reborn, Some(10))))),
        back,
    );
    let a = m.handle(lost(&old), back);
    assert_eq!(claim(&a), None, "the new instance holds the lease");
    assert!(
        !published(&a)
            .iter()
            .any(|e| matches!(e, ElectionEventKind::ServerLost { .. })),
        "the server is not lost: only its old process is"
    );
    let a = m.handle(Event::PeerSeen(reborn.clone()), back + ms(5));
    assert_eq!(claim(&a), None);
    let a = run_until(&mut m, back + ms(5), back + ms(3000));
    assert_eq!(claim(&a), None, "heard: it holds the lease");
    // The new instance's own loss is news.
    let a = m.handle(lost(&reborn), back + ms(3100));
    assert!(claim(&a).is_some(), "the holder itself lost: take over");
}

#[test]
fn a_holder_lost_before_it_won_a_new_term_is_waited_for() {
    // Lost while cut off from this device, it then won a new term: the new
    // lease is newer news than the loss.
    let mut m = machine(100, 1, ElectionConfig::default());
    let s = server_peer("srv", 50, 9, 5);
    m.handle(Event::PeerSeen(s.clone()), ms(10));
    m.handle(Event::LeaseObserved(Some((5, held_by(&s, None)))), ms(20));
    m.handle(lost(&s), ms(2100));
    let seen = ms(4000);
    let a = m.handle(Event::LeaseObserved(Some((16, held_by(&s, None)))), seen);
    assert_eq!(claim(&a), None, "a new term is news that it is alive");
    let a = m.handle(Event::PeerSeen(s), seen + ms(5));
    assert_eq!(claim(&a), None);
}

// ----- show hold -----

#[test]
fn a_held_server_keeps_serving_past_a_better_candidate_until_the_hold_is_lifted() {
    let cfg = ElectionConfig {
        preempt_delay: ms(300),
        ..ElectionConfig::default()
    };
    let (mut m, at) = serving(100, 1, cfg);
    m.handle(Event::SetHold(true), at + ms(5));
    assert!(m.held());
    let t0 = at + ms(10);
    let a = m.handle(Event::PeerSeen(peer("better", 200, 9)), t0);
    assert_eq!(release(&a), None);
    // A score change that makes another device better is no reason either.
    let a = m.handle(Event::SetScore(Score::new(20)), t0 + ms(100));
    assert_eq!(release(&a), None, "no score-driven re-election while held");
    let a = run_until(&mut m, t0 + ms(100), t0 + ms(900));
    assert_eq!(release(&a), None, "no preemption while held");
    assert!(m.is_server());
    // Lifted: the better device has waited past preempt_delay already.
    let a = m.handle(Event::SetHold(false), t0 + ms(950));
    let (_, record) = release(&a).expect("hands over as soon as the hold is lifted");
    assert_eq!(record.handover_to, Some(id("better")));
    assert_eq!(step_down(&a), Some(StepDownReason::HandOver));
}

#[test]
fn while_held_only_a_forced_trigger_hands_over() {
    let (mut m, at) = serving(100, 1, ElectionConfig::default());
    m.handle(Event::SetHold(true), at + ms(5));
    m.handle(Event::PeerSeen(peer("better", 200, 9)), at + ms(10));
    let a = m.handle(Event::TriggerElection { force: false }, at + ms(20));
    assert_eq!(release(&a), None, "an unforced trigger is not acted on");
    assert!(published(&a).is_empty(), "nor announced: {a:?}");
    let a = m.handle(Event::TriggerElection { force: true }, at + ms(30));
    assert!(release(&a).is_some(), "a forced one is");
}

#[test]
fn a_held_server_still_hands_over_when_taken_offline_set_to_zero_or_stopped() {
    for (event, reason) in [
        (Event::SetOnline(false), StepDownReason::Offline),
        (Event::SetScore(Score::new(0)), StepDownReason::ScoreZero),
        (Event::Shutdown, StepDownReason::Shutdown),
    ] {
        let (mut m, at) = serving(100, 1, ElectionConfig::default());
        m.handle(Event::SetHold(true), at + ms(5));
        m.handle(Event::PeerSeen(peer("next", 50, 9)), at + ms(10));
        let a = m.handle(event, at + ms(20));
        assert_eq!(step_down(&a), Some(reason));
        assert!(release(&a).is_some(), "{reason:?}: the lease is released");
    }
}

#[test]
fn a_held_group_still_fails_over_at_once_when_its_server_is_lost() {
    let mut m = machine(100, 1, ElectionConfig::default());
    m.handle(Event::SetHold(true), ms(5));
    let s = server_peer("srv", 200, 9, 5);
    m.handle(Event::PeerSeen(s.clone()), ms(10));
    m.handle(
        Event::LeaseObserved(Some((6, held_by(&s, Some(5))))),
        ms(20),
    );
    let a = m.handle(lost(&s), ms(3000));
    assert!(claim(&a).is_some(), "the hold never delays a failover");
}

// ----- the election ledger (issue 16) -----

fn ledger(actions: &[Action]) -> Vec<LedgerEntry> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Ledger(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// Wins the claim found in `a` at revision `rev`, returning what winning did.
fn win(m: &mut Machine, a: &[Action], rev: u64, at: Duration) -> Vec<Action> {
    let (op, _, _) = claim(a).expect("a claim");
    m.handle(
        Event::StoreReply {
            op,
            outcome: StoreOutcome::Written { revision: rev },
        },
        at,
    )
}

#[test]
fn the_winner_of_a_lost_server_writes_who_was_lost_the_candidates_and_the_rule() {
    let mut m = machine(100, 0x10, ElectionConfig::default());
    let s = server_peer("srv", 200, 9, 5);
    m.handle(Event::PeerSeen(s.clone()), ms(10));
    m.handle(Event::PeerSeen(peer("twin", 100, 0x20)), ms(10));
    m.handle(Event::PeerSeen(peer("zero", 0, 3)), ms(10));
    m.handle(
        Event::LeaseObserved(Some((6, held_by(&s, Some(5))))),
        ms(20),
    );
    let a = m.handle(lost(&s), ms(3000));
    assert!(
        ledger(&a).is_empty(),
        "nothing is written before the claim wins"
    );
    let a = win(&mut m, &a, 9, ms(3004));
    let entries = ledger(&a);
    assert_eq!(entries.len(), 1, "{a:?}");
    let e = &entries[0];
    assert_eq!(e.kind, LedgerKind::Elected);
    assert_eq!(e.server, id(ME));
    assert_eq!(e.term, Term::from_revision(9));
    assert_eq!(e.cause, ElectionReason::ServerLost);
    assert_eq!(
        e.rule,
        LedgerRule::LowerMac,
        "equal score 100, MAC 0x10 < 0x20"
    );
    let prev = e.previous.as_ref().expect("the previous server");
    assert_eq!(prev.device, Some(id("srv")));
    assert_eq!(prev.term, Term::from_revision(5));
    assert_eq!(prev.stepped_down, None, "it was lost, not stepped down");
    let names: Vec<&str> = e.candidates.iter().map(|c| c.device.as_str()).collect();
    assert_eq!(
        names,
        ["me", "twin", "zero"],
        "the candidates heard at the claim, best first; the lost server is gone"
    );
    assert_eq!(e.timings.claim_ms, Some(4));
    assert_eq!(e.timings.vacant_ms, Some(4), "vacant from the verdict");
    assert!(!e.held);
}

#[test]
fn a_hand_over_for_a_better_score_says_so_in_the_successors_entry() {
    let (mut old, at) = serving(100, 1, ElectionConfig::default());
    old.handle(Event::PeerSeen(peer("next", 100, 9)), at + ms(10));
    // Its score rises above the server's: the server hands over to it.
    let a = old.handle(Event::PeerSeen(peer("next", 150, 9)), at + ms(20));
    let (rev, record) = release(&a).expect("the server hands over");
    let released = record.released.clone().expect("the release says why");
    assert_eq!(released.by, id(ME));
    assert_eq!(released.reason, StepDownReason::HandOver);
    assert_eq!(released.cause, ElectionReason::ScoreChanged);

    // The successor, named, claims and writes the cause it was given.
    let mut next = Machine::new(
        ElectionConfig::default(),
        "stage".parse().unwrap(),
        id("next"),
        InstanceId::new(109),
        mac(9),
        Score::new(150),
        true,
        ms(0),
    );
    let mut old_peer = server_peer(ME, 100, 1, 7);
    old_peer.instance = InstanceId::new(1);
    next.handle(Event::PeerSeen(old_peer), ms(10));
    let mut release_rec = record;
    release_rec.term = Some(Term::from_revision(7));
    let a = next.handle(
        Event::LeaseObserved(Some((rev + 1, release_rec))),
        at + ms(30),
    );
    let a = win(&mut next, &a, rev + 2, at + ms(32));
    let e = ledger(&a).pop().expect("an entry");
    assert_eq!(e.cause, ElectionReason::ScoreChanged);
    assert_eq!(e.rule, LedgerRule::HighestScore);
    let prev = e.previous.expect("previous");
    assert_eq!(prev.device, Some(id(ME)));
    assert_eq!(prev.term, Term::from_revision(7));
    assert_eq!(prev.stepped_down, Some(StepDownReason::HandOver));
}

#[test]
fn shutdown_and_offline_hand_overs_carry_their_reason() {
    let (mut m, at) = serving(100, 1, ElectionConfig::default());
    m.handle(Event::PeerSeen(peer("next", 50, 9)), at + ms(10));
    let a = m.handle(Event::Shutdown, at + ms(20));
    let released = release(&a).unwrap().1.released.unwrap();
    assert_eq!(released.reason, StepDownReason::Shutdown);
    assert_eq!(released.cause, ElectionReason::HandOver);

    let (mut m, at) = serving(100, 1, ElectionConfig::default());
    m.handle(Event::PeerSeen(peer("next", 50, 9)), at + ms(10));
    let a = m.handle(Event::SetScore(Score::new(0)), at + ms(20));
    let released = release(&a).unwrap().1.released.unwrap();
    assert_eq!(released.reason, StepDownReason::ScoreZero);
    assert_eq!(released.cause, ElectionReason::ScoreChanged);

    let (mut m, at) = serving(100, 1, ElectionConfig::default());
    m.handle(Event::PeerSeen(peer("next", 50, 9)), at + ms(10));
    let a = m.handle(Event::TriggerElection { force: false }, at + ms(15));
    assert!(release(&a).is_none(), "the server is the rightful one");
    let e = ledger(&a)
        .pop()
        .expect("a kept election is in the ledger too");
    assert_eq!(e.kind, LedgerKind::Kept);
    assert_eq!(e.cause, ElectionReason::Operator);
    assert_eq!(e.term, Term::from_revision(7));
    assert_eq!(e.rule, LedgerRule::HighestScore);
}

#[test]
fn a_better_device_joining_is_a_preemption_and_an_operator_trigger_is_the_operators() {
    let (mut m, at) = serving(100, 1, ElectionConfig::default());
    let a = m.handle(Event::PeerSeen(peer("better", 200, 9)), at + ms(10));
    let released = release(&a).unwrap().1.released.unwrap();
    assert_eq!(released.cause, ElectionReason::Preemption);

    let cfg = ElectionConfig {
        preempt_delay: Duration::from_secs(60),
        ..ElectionConfig::default()
    };
    let (mut m, at) = serving(100, 1, cfg);
    m.handle(Event::PeerSeen(peer("better", 200, 9)), at + ms(10));
    let a = m.handle(Event::TriggerElection { force: false }, at + ms(20));
    let released = release(&a).unwrap().1.released.unwrap();
    assert_eq!(released.cause, ElectionReason::Operator);
}

#[test]
fn a_lone_device_at_start_up_is_the_only_candidate() {
    let mut m = machine(100, 1, ElectionConfig::default());
    let a = run_until(&mut m, ms(0), ms(2000));
    let a = win(&mut m, &a, 1, ms(2003));
    let e = ledger(&a).pop().expect("an entry");
    assert_eq!(e.cause, ElectionReason::Startup);
    assert_eq!(e.rule, LedgerRule::OnlyCandidate);
    assert_eq!(e.previous, None);
    assert_eq!(
        e.timings.vacant_ms,
        Some(2003),
        "no server since it started"
    );
}

#[test]
fn a_successor_does_not_hand_back_to_a_server_that_shut_down() {
    // Found by the ledger's e2e test: the successor of a SIGTERM hand-over
    // still heard the leaving server's last beats (better score, online)
    // and handed straight back to it, leaving the group without a server
    // for the hand-over timeout.
    let mut m = machine(100, 5, ElectionConfig::default());
    let old = server_peer("old", 200, 9, 5);
    m.handle(Event::PeerSeen(old.clone()), ms(10));
    let mut released = held_by(&old, Some(5));
    released.holder = None;
    released.handover_to = Some(id(ME));
    released.released = Some(Released {
        by: id("old"),
        instance: old.instance,
        reason: StepDownReason::Shutdown,
        cause: ElectionReason::HandOver,
    });
    let a = m.handle(Event::LeaseObserved(Some((8, released))), ms(20));
    let a = win(&mut m, &a, 9, ms(22));
    assert!(m.is_server());
    let e = ledger(&a).pop().unwrap();
    assert_eq!(
        candidate_names(&e),
        ["me"],
        "the leaving server is no candidate"
    );
    // Its last beat, sent before it stopped, arrives now.
    let a = m.handle(Event::PeerSeen(old.clone()), ms(30));
    assert_eq!(release(&a), None, "handed back to a leaving device: {a:?}");
    assert!(m.is_server());
    // The same device restarted (a new instance) is a candidate again.
    let mut back = peer("old", 200, 9);
    back.instance = InstanceId::new(999);
    let a = m.handle(Event::PeerSeen(back), ms(40));
    assert!(release(&a).is_some(), "a restarted better device preempts");
}

fn candidate_names(e: &LedgerEntry) -> Vec<&str> {
    e.candidates.iter().map(|c| c.device.as_str()).collect()
}

#[test]
fn a_renewal_of_a_holder_not_heard_starts_the_wait_again() {
    // Simulator seed 198737 at 1 s client beats: cut off past the wait for
    // an unheard holder, this device saw the renewed lease on its return
    // and deposed a server that had served throughout.
    let mut m = machine(200, 1, ElectionConfig::default());
    let s = server_peer("srv", 100, 9, 5);
    m.handle(Event::LeaseObserved(Some((5, held_by(&s, None)))), ms(2500));
    // Not heard for longer than the wait (this device was cut off)...
    let late = ms(2500) + UNHEARD_HOLDER_WAIT + ms(500);
    // ...then the holder's renewal arrives: it is alive; wait for its beats.
    let a = m.handle(Event::LeaseObserved(Some((14, held_by(&s, Some(5))))), late);
    assert_eq!(claim(&a), None, "deposed a holder that just renewed: {a:?}");
    let a = run_until(&mut m, late, late + UNHEARD_HOLDER_WAIT - ms(10));
    assert_eq!(claim(&a), None, "the wait starts again from the renewal");
    // No beat and no renewal for the whole wait: it is gone.
    let a = run_until(
        &mut m,
        late + UNHEARD_HOLDER_WAIT - ms(10),
        late + UNHEARD_HOLDER_WAIT + ms(10),
    );
    assert!(
        claim(&a).is_some(),
        "an unheard holder is replaced after the wait"
    );
}
