//! The invariants of DESIGN.md §2, checked against the simulated world.
//!
//! - S1, after every step of a device: a device acting as server holds a term
//!   the store granted to it (that very instance); no two devices act with the
//!   same term; no device acts as server once its lease could have expired at
//!   the store (true time past its term's last write + lease duration); and
//!   the store's term never goes backwards. A lease is valid from its grant
//!   until it expires or a later term is granted; a deposed server that has not
//!   yet heard of its successor is tolerated only within its own validity — the
//!   fencing of the project head makes it harmless (DESIGN.md "Fast and fenced
//!   takeover").
//! - L2 and P1, once the faults have ended and the bound has passed: every
//!   online device agrees on one server, the rightful one by B4, and it holds
//!   the store's lease. B7: with no viable device, nobody serves.
//! - Quiet: after convergence the server and term do not change.

use understudy_election::{Candidate, winner};
use understudy_protocol::{DeviceId, Term};

use crate::world::{Failure, World};

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
