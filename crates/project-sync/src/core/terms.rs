//! The client side of fencing (S1): every reply of a server carries
//! its term, and a client drops anything from a term older than the newest it
//! has seen, so a deposed server that wakes up cannot feed it stale data.

use understudy_protocol::Term;

/// The newest term a client has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TermGuard {
    seen: Term,
}

impl TermGuard {
    /// A guard that has seen nothing yet.
    pub fn new() -> TermGuard {
        TermGuard::default()
    }

    /// The newest term seen.
    pub fn seen(&self) -> Term {
        self.seen
    }

    /// Whether a reply of `term` may be used; a newer term is remembered.
    pub fn accept(&mut self, term: Term) -> bool {
        if term < self.seen {
            return false;
        }
        self.seen = term;
        true
    }

    /// Remembers `term` (learnt from the lease, say) without a reply.
    pub fn observe(&mut self, term: Term) {
        if term > self.seen {
            self.seen = term;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_term_is_dropped_and_a_newer_one_remembered() {
        let mut g = TermGuard::new();
        assert!(g.accept(Term::from_revision(5)));
        assert!(g.accept(Term::from_revision(5)));
        assert!(!g.accept(Term::from_revision(4)));
        g.observe(Term::from_revision(9));
        assert!(!g.accept(Term::from_revision(8)));
        assert!(g.accept(Term::from_revision(10)));
        assert_eq!(g.seen(), Term::from_revision(10));
    }
}
