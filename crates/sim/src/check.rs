//! The invariants (S1, L2, P1, B7, H1), checked against the simulated world.
//!
//! - S1, after every step of a device: a device acting as server holds a term
//!   the store granted to it (that very instance); no two devices act with the
//!   same term; no device acts as server once its lease could have expired at
//!   the store (true time past its term's last write + lease duration); and
//!   the store's term never goes backwards. A lease is valid from its grant
//!   until it expires or a later term is granted; a deposed server that has not
//!   yet heard of its successor is tolerated only within its own validity — the
//!   fencing of the project head makes it harmless ("fast and fenced
//!   takeover").
//! - L2 and P1, once the faults have ended and the bound has passed: every
//!   online device agrees on one server, the rightful one by B4, and it holds
//!   the store's lease. B7: with no viable device, nobody serves.
//! - Quiet: after convergence the server and term do not change.
//! - No needless takeover: a device takes a held lease from a server that
//!   is running, serving, on the bus and not paused — and has been for
//!   longer than the failure detector needs — only if the claimant itself
//!   was just back from a short cut-off or pause (shorter than the stale
//!   window plus detection: its loss verdicts look fresh, and cannot be told
//!   from news). A device back from a longer one must not act on the
//!   verdicts it made while away (B5: the status quo was never upset).
//!   Not checked on a lossy bus, where a live server can honestly look lost.
//! - H1 show hold (in the world's step, where the input is known): a device
//!   the group's hold has reached never hands the server over to a better
//!   candidate unless an operator forced a trigger. A third of the plans
//!   hold the group for a while (`schedule::holds`); with the core's hold
//!   check removed, 40 of the 2,000 suite seeds broke H1, the first seed 72
//!   (2026-12-01, then reverted).
//! - Ledger (in the world's step): every win of the lease writes exactly
//!   one ledger entry of that term naming the winner, whose candidates
//!   hold the winner online with a non-zero score and rank it first unless
//!   the rule says it was a named successor.

use std::time::Duration;

use understudy_election::{Action, Candidate, winner};
use understudy_protocol::ledger::{LedgerEntry, LedgerKind, LedgerRule};
use understudy_protocol::messages::LeaseRecord;
use understudy_protocol::timing::LIVENESS_WINDOW;
use understudy_protocol::{DeviceId, Term};

use crate::schedule::Fault;
use crate::world::{Failure, HEARTBEAT, World};

/// How long the failure detector needs to call a silent peer lost (three
/// beats), plus bus slack.
const DETECTION: Duration = Duration::from_millis(3 * HEARTBEAT.as_millis() as u64 + 200);

/// How soon after coming back a device acts on what it decided while away.
const SETTLE: Duration = Duration::from_millis(500);

/// The ledger check of one step's actions by device `id` (see the module
/// docs).
pub(crate) fn ledger(id: &DeviceId, acts: &[Action]) -> Result<(), String> {
    let won: Vec<Term> = acts
        .iter()
        .filter_map(|a| match a {
            Action::BecomeServer { term } => Some(*term),
            _ => None,
        })
        .collect();
    let entries: Vec<&LedgerEntry> = acts
        .iter()
        .filter_map(|a| match a {
            Action::Ledger(e) => Some(e),
            _ => None,
        })
        .collect();
    for term in &won {
        let n = entries
            .iter()
            .filter(|e| e.kind == LedgerKind::Elected && e.term == *term)
            .count();
        if n != 1 {
            return Err(format!(
                "{id} won term {term} and wrote {n} ledger entries of it"
            ));
        }
    }
    for e in entries {
        if &e.server != id {
            return Err(format!("{id} wrote an entry naming {}", e.server));
        }
        if e.kind == LedgerKind::Elected && !won.contains(&e.term) {
            return Err(format!(
                "{id} wrote an elected entry of term {} it did not win",
                e.term
            ));
        }
        let Some(w) = e.winner() else {
            return Err(format!(
                "{id} is not among the candidates of its entry, term {}",
                e.term
            ));
        };
        if !w.online || !w.score.is_candidate() {
            return Err(format!("{id} won term {} offline or with score 0", e.term));
        }
        let first = e.candidates.first().map(|c| &c.device);
        if e.kind == LedgerKind::Elected
            && e.rule != LedgerRule::NamedSuccessor
            && first != Some(id)
        {
            return Err(format!(
                "{id} won term {} by rule {} but ranks {:?} first",
                e.term,
                e.rule.as_str(),
                first.map(|d| d.to_string())
            ));
        }
    }
    Ok(())
}

pub(crate) fn after_step(w: &mut World, i: usize) -> Result<(), Failure> {
    if let Some(r) = &w.store.regression {
        return Err(w.fail(format!("S1: {r}")));
    }
    let Some(p) = w.devs[i].proc.as_ref() else {
        return Ok(());
    };
    let Some(term) = p.machine.server_term() else {
        return Ok(());
    };
    let id = &w.devs[i].id;
    match w.store.grants.get(&term) {
        Some(g) if &g.device == id && g.instance == p.instance => {}
        other => {
            return Err(w.fail(format!(
                "S1: {id} acts as server with term {term}, which the store granted to {other:?}"
            )));
        }
    }
    let last = w
        .store
        .last_held_write
        .get(&term)
        .copied()
        .unwrap_or_default();
    if w.now >= last + w.cfg.lease_duration {
        return Err(w.fail(format!(
            "S1: {id} acts as server with term {term} {:?} after its lease expired at the store",
            w.now - (last + w.cfg.lease_duration)
        )));
    }
    for (j, d) in w.devs.iter().enumerate() {
        if j != i
            && d.proc
                .as_ref()
                .is_some_and(|q| q.machine.server_term() == Some(term))
        {
            return Err(w.fail(format!(
                "S1: {id} and {} both act as server with term {term}",
                d.id
            )));
        }
    }
    Ok(())
}

/// The server every online device sees, if they agree, and its term.
pub(crate) fn server_view(w: &World) -> (Option<DeviceId>, Option<Term>) {
    let servers: Vec<_> = w
        .devs
        .iter()
        .filter_map(|d| {
            let p = d.proc.as_ref()?;
            p.machine.server_term().map(|t| (d.id.clone(), t))
        })
        .collect();
    match servers.as_slice() {
        [(d, t)] => (Some(d.clone()), Some(*t)),
        _ => (None, None),
    }
}

pub(crate) fn converged(w: &mut World) -> Result<(), Failure> {
    let mut candidates = Vec::new();
    for d in &w.devs {
        let Some(p) = d.proc.as_ref() else { continue };
        if p.machine.status(d.local(w.now)).online {
            candidates.push(Candidate {
                device: d.id.clone(),
                mac: d.mac,
                score: d.score,
            });
        }
    }
    let rightful = winner(&candidates).map(|c| c.device.clone());
    let servers: Vec<(DeviceId, Term)> = w
        .devs
        .iter()
        .filter_map(|d| {
            let p = d.proc.as_ref()?;
            p.machine.server_term().map(|t| (d.id.clone(), t))
        })
        .collect();
    match (&rightful, servers.as_slice()) {
        (None, []) => {}
        (None, s) => {
            return Err(w.fail(format!("B7: nobody is viable, yet {s:?} act as server")));
        }
        (Some(r), [(s, term)]) if r == s => {
            let (rev, holder) = match w.store.current(w.now) {
                Some((rev, rec)) => (rev, rec.holder.map(|h| h.device)),
                None => (0, None),
            };
            if holder.as_ref() != Some(r) {
                return Err(w.fail(format!(
                    "L2: {r} serves term {term} but the store's lease (revision {rev}) is held by {holder:?}"
                )));
            }
            for d in &w.devs {
                let Some(p) = d.proc.as_ref() else { continue };
                let st = p.machine.status(d.local(w.now));
                if st.online && st.server != Some((r.clone(), *term)) {
                    return Err(w.fail(format!(
                        "L2: {} sees server {:?}, not {r} with term {term}",
                        d.id, st.server
                    )));
                }
            }
        }
        (Some(r), s) => {
            return Err(w.fail(format!(
                "L2/P1: the rightful server is {r}, but {s:?} act as server"
            )));
        }
    }
    Ok(())
}

pub(crate) fn quiet(w: &World) -> Result<(), Failure> {
    let now = server_view(w);
    if let Some(before) = &w.converged_at
        && before != &now
    {
        return Err(w.fail(format!(
            "quiet: after convergence the server changed from {before:?} to {now:?} with no fault"
        )));
    }
    Ok(())
}

/// No needless takeover (see the module docs), checked at each store write
/// that granted `revision` to `claimant` over the entry `before`.
pub(crate) fn takeover(
    w: &World,
    claimant: usize,
    before: Option<(u64, LeaseRecord)>,
    revision: u64,
) -> Result<(), Failure> {
    let Some((prev_rev, prev)) = before else {
        return Ok(());
    };
    let (Some(holder), true) = (
        &prev.holder,
        w.store.grants.contains_key(&Term::from_revision(revision)),
    ) else {
        return Ok(()); // a release was followed, or a renewal
    };
    if w.plan
        .faults
        .iter()
        .any(|(_, f)| matches!(f, Fault::Loss(_)))
    {
        return Ok(());
    }
    let Some(h) = w.devs.iter().position(|d| d.id == holder.device) else {
        return Ok(());
    };
    let prev_term = prev.term_at(prev_rev);
    let serving = w.devs[h].proc.as_ref().is_some_and(|p| {
        p.instance == holder.instance && p.machine.server_term() == Some(prev_term)
    });
    let steady = |i: usize, need: Duration| {
        w.devs[i].disturbed_since().is_none()
            && w.devs[i]
                .last_disturbance
                .is_none_or(|(_, end)| end + need <= w.now)
    };
    if h == claimant || !serving || !steady(h, DETECTION + SETTLE) {
        return Ok(());
    }
    let excused = w.devs[claimant]
        .last_disturbance
        .is_some_and(|(start, end)| {
            end + SETTLE > w.now && end - start < LIVENESS_WINDOW + DETECTION
        });
    if excused || !steady(claimant, Duration::ZERO) {
        return Ok(());
    }
    Err(w.fail(format!(
        "needless takeover: {} took term {} from {}, which serves term {prev_term}, \
         live and on the bus (claimant's last cut-off or pause: {:?})",
        w.devs[claimant].id,
        Term::from_revision(revision),
        holder.device,
        w.devs[claimant].last_disturbance,
    )))
}
