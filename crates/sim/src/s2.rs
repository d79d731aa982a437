//! S2 — no acknowledged change lost, history never forks — and S1 for the
//! project ("at most one server with effect"), checked on the simulated
//! project store at every write of the head and every acknowledgement.
//!
//! The ground truth is every revision any head ever named. A head write
//! must:
//!
//! - never lower the head's term;
//! - name only stored content;
//! - agree with every revision named before (same number, same change:
//!   otherwise history forked) and never fall below the highest revision
//!   named (otherwise a revision, maybe acknowledged, was lost);
//! - if it commits a change, come from the device the lease granted its term
//!   to, and from a term no older than any term that has begun serving: once
//!   a newer server fenced the head and serves, an older one must not commit.
//!
//! An acknowledgement must name a revision the head named. Since the history
//! only grows and never forks, every acknowledged change stays in it.

use std::collections::BTreeMap;

use understudy_protocol::messages::{ProjectHead, RevisionSummary};
use understudy_protocol::{DeviceId, Term};

use crate::head::HeadStore;
use crate::store::Grant;

/// A write of the head that landed.
pub struct HeadWrite<'a> {
    /// The device whose process sent it.
    pub by: &'a DeviceId,
    /// The term it was sent under.
    pub term: Term,
    /// A commit (else a fence).
    pub commit: bool,
    /// The head before.
    pub before: Option<&'a ProjectHead>,
    /// The head written.
    pub after: &'a ProjectHead,
}

#[derive(Debug, Default)]
pub struct Truth {
    history: BTreeMap<u64, RevisionSummary>,
    top: u64,
    newest_serving: Term,
    /// Changes acknowledged to a writer.
    pub acknowledged: u64,
}

impl Truth {
    /// A device began serving `term`.
    pub fn serving_started(&mut self, term: Term) {
        self.newest_serving = self.newest_serving.max(term);
    }

    /// Checks a write of the head that landed.
    pub fn head_written(
        &mut self,
        w: HeadWrite<'_>,
        store: &HeadStore,
        grants: &BTreeMap<Term, Grant>,
    ) -> Result<(), String> {
        let (by, term, head) = (w.by, w.term, w.after);
        if let Some(before) = w.before
            && head.term < before.term
        {
            return Err(format!(
                "S2: {by} wrote the head with term {}, over term {}",
                head.term, before.term
            ));
        }
        if let Some(c) = &head.current
            && !store.has_content(&c.sha256)
        {
            return Err(format!(
                "S2: the head names revision {} whose content is not stored",
                c.revision
            ));
        }
        for r in head.recent.iter().chain(head.current.iter()) {
            match self.history.get(&r.revision) {
                Some(known) if known != r => {
                    return Err(format!(
                        "S2: history forks at revision {}: {:?} (term {}) then {:?} (term {}, written by {by})",
                        r.revision, known.change_id, known.term, r.change_id, r.term
                    ));
                }
                Some(_) => {}
                None => {
                    self.history.insert(r.revision, r.clone());
                }
            }
        }
        if head.revision() < self.top {
            return Err(format!(
                "S2: revision {} was lost: {by} wrote the head back to revision {}",
                self.top,
                head.revision()
            ));
        }
        self.top = head.revision();
        if w.commit {
            match grants.get(&term) {
                Some(g) if &g.device == by => {}
                other => {
                    return Err(format!(
                        "S1: {by} committed with term {term}, granted to {:?}",
                        other.map(|g| g.device.to_string())
                    ));
                }
            }
            if term < self.newest_serving {
                return Err(format!(
                    "S1: {by} committed revision {} with term {term} after term {} began serving",
                    head.revision(),
                    self.newest_serving
                ));
            }
        }
        Ok(())
    }

    /// A server acknowledged `revision` to a writer.
    pub fn acknowledge(&mut self, by: &DeviceId, revision: &RevisionSummary) -> Result<(), String> {
        self.acknowledged += 1;
        if self.history.get(&revision.revision) != Some(revision) {
            return Err(format!(
                "S2: {by} acknowledged revision {} ({:?}), which no head named",
                revision.revision, revision.change_id
            ));
        }
        Ok(())
    }
}
