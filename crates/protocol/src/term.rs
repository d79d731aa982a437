//! Terms: the fencing token of the server lease (S1).
//!
//! A term is the revision of the JetStream KV write that claimed the lease.
//! Revisions only grow, so a later claim always carries a larger term, and
//! anyone holding a newer term refuses what an older one says.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A lease term. Ordered; `Term::ZERO` is "no term seen yet".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Term(u64);

impl Term {
    /// No term has been seen.
    pub const ZERO: Term = Term(0);

    /// The term granted by a store write of this revision.
    pub const fn from_revision(revision: u64) -> Term {
        Term(revision)
    }

    /// The number behind the term.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
