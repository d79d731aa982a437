//! The lease store: a compare-and-set register with expiry, like a JetStream
//! KV entry in a bucket with `max_age`.
//!
//! Revisions come from one counter that never goes back, even when the entry
//! expires (a stream sequence). The store also keeps the ground truth the
//! checker needs: which device was granted which term, and when each term was
//! last written.

use std::collections::BTreeMap;
use std::time::Duration;

use understudy_election::{Expect, StoreOutcome};
use understudy_protocol::messages::LeaseRecord;
use understudy_protocol::{DeviceId, InstanceId, Term};

/// What a write asks.
#[derive(Debug, Clone)]
pub enum Write {
    /// A claim: create or update if `expect` holds.
    Claim(Expect),
    /// A renewal or release: update if the revision is this one.
    Update(u64),
}

/// A grant: the holder of a term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub device: DeviceId,
    pub instance: InstanceId,
}

#[derive(Debug, Default)]
pub struct Store {
    revision: u64,
    entry: Option<(u64, LeaseRecord, Duration)>,
    /// Term → who was granted it.
    pub grants: BTreeMap<Term, Grant>,
    /// Term → the true time of the last write that kept it held.
    pub last_held_write: BTreeMap<Term, Duration>,
    /// The largest term ever stored.
    pub max_term: Term,
    /// Set when a write would store a smaller term than one stored before.
    pub regression: Option<String>,
    /// When set, renewals skip the revision check (used to prove the checker
    /// catches a blind renewal; never set in a normal run).
    pub blind_updates: bool,
}

impl Store {
    /// The entry as of `now` (expired entries are gone).
    pub fn current(&mut self, now: Duration) -> Option<(u64, LeaseRecord)> {
        if self.entry.as_ref().is_some_and(|(_, _, exp)| *exp <= now) {
            self.entry = None;
        }
        self.entry.as_ref().map(|(r, rec, _)| (*r, rec.clone()))
    }

    /// Applies one compare-and-set write at `now`.
    pub fn write(
        &mut self,
        write: Write,
        record: LeaseRecord,
        now: Duration,
        ttl: Duration,
    ) -> StoreOutcome {
        let current = self.current(now);
        let ok = match (&write, &current) {
            (Write::Claim(Expect::Absent), None) => true,
            (Write::Claim(Expect::Absent), Some(_)) => false,
            (Write::Claim(Expect::Revision(r)), Some((cur, _))) => r == cur,
            (Write::Claim(Expect::Revision(_)), None) => false,
            (Write::Update(r), Some((cur, _))) => r == cur || self.blind_updates,
            (Write::Update(_), None) => self.blind_updates,
        };
        if !ok {
            return StoreOutcome::Conflict { current };
        }
        self.revision += 1;
        let rev = self.revision;
        let term = record.term_at(rev);
        if term < self.max_term && self.regression.is_none() {
            self.regression = Some(format!(
                "store term went backwards: term {term} written over term {} at revision {rev}",
                self.max_term
            ));
        }
        self.max_term = self.max_term.max(term);
        if let Some(h) = &record.holder {
            if record.term.is_none() {
                self.grants.insert(
                    term,
                    Grant {
                        device: h.device.clone(),
                        instance: h.instance,
                    },
                );
            }
            self.last_held_write.insert(term, now);
        }
        self.entry = Some((rev, record, now + ttl));
        StoreOutcome::Written { revision: rev }
    }
}
