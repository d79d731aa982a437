//! How the project head changes (S1, S2, and the fenced takeover).
//!
//! The head ([`ProjectHead`]) is one JetStream KV entry, written only by
//! compare-and-set on the entry's KV revision. Two writes exist:
//!
//! - **Fence** ([`fence`]): a device that just won the lease rewrites the head
//!   with its term before it serves. From then on the KV revision a deposed
//!   server last knew is stale, so any commit it attempts fails its
//!   compare-and-set. A head already fenced by a newer term means this device
//!   was deposed before it could serve: it must not serve.
//! - **Commit** ([`commit`]): a change made on `base_revision` becomes revision
//!   `base + 1` only if the head is still at `base`; otherwise the submitter
//!   gets a conflict carrying the current head, and nothing is applied. A
//!   change whose id is among the recent revisions was committed before (its
//!   acknowledgement was lost): it is not applied twice.
//!
//! Together with compare-and-set this gives: the head's term never decreases,
//! its revision grows by exactly one per commit, and a commit is acknowledged
//! only once the head names it — so every acknowledged change is in the
//! history every later server resumes from.

use understudy_protocol::messages::{ProjectHead, RevisionSummary};
use understudy_protocol::{GroupName, SCHEMA_VERSION, Term};

/// A change offered for commit (its content already checked, see
/// [`super::Upload`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeMeta {
    /// The revision the change was made on.
    pub base_revision: u64,
    /// The content's SHA-256, lower-case hex.
    pub sha256: String,
    /// The content's size.
    pub size: u64,
    /// Who submitted it.
    pub changed_by: Option<String>,
    /// The submitter's id for the change.
    pub change_id: Option<String>,
}

/// What a new server must do before it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceDecision {
    /// Write this head by compare-and-set on the revision it was read at
    /// (create it when there was none).
    Write(ProjectHead),
    /// The head already carries this term: serve.
    AlreadyFenced,
    /// A newer term fenced or committed the head: do not serve.
    Deposed {
        /// The head's term.
        head_term: Term,
    },
}

/// What a server does with a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitDecision {
    /// Write `head` by compare-and-set; once written, `revision` is committed.
    Apply {
        /// The new head.
        head: ProjectHead,
        /// The new revision.
        revision: RevisionSummary,
    },
    /// The project moved on since the change's base: refuse, apply nothing.
    Conflict {
        /// The current revision (None for the empty project).
        current: Option<RevisionSummary>,
    },
    /// This change was committed before; answer with that revision.
    AlreadyCommitted(RevisionSummary),
    /// A newer term holds the head: this server is deposed.
    Deposed {
        /// The head's term.
        head_term: Term,
    },
}

/// The head a server with `term` must write before it serves, given the
/// head as read (`None`: the group has no project yet).
pub fn fence(current: Option<&ProjectHead>, group: &GroupName, term: Term) -> FenceDecision {
    match current {
        None => FenceDecision::Write(ProjectHead {
            schema: SCHEMA_VERSION,
            group: group.clone(),
            term,
            current: None,
            recent: Vec::new(),
        }),
        Some(h) if h.term > term => FenceDecision::Deposed { head_term: h.term },
        Some(h) if h.term == term => FenceDecision::AlreadyFenced,
        Some(h) => FenceDecision::Write(ProjectHead { term, ..h.clone() }),
    }
}

/// What a server of `term` does with `change` on `head` at wall-clock
/// `now_ms` (recorded, never compared).
pub fn commit(head: &ProjectHead, term: Term, change: &ChangeMeta, now_ms: u64) -> CommitDecision {
    if head.term > term {
        return CommitDecision::Deposed {
            head_term: head.term,
        };
    }
    if let Some(id) = &change.change_id
        && let Some(done) = head
            .recent
            .iter()
            .find(|r| r.change_id.as_ref() == Some(id) && r.sha256 == change.sha256)
    {
        return CommitDecision::AlreadyCommitted(done.clone());
    }
    if change.base_revision != head.revision() {
        return CommitDecision::Conflict {
            current: head.current.clone(),
        };
    }
    let revision = RevisionSummary {
        revision: head.revision() + 1,
        term,
        sha256: change.sha256.clone(),
        size: change.size,
        changed_by: change.changed_by.clone(),
        change_id: change.change_id.clone(),
        committed_at_ms: now_ms,
    };
    let mut recent = head.recent.clone();
    recent.push(revision.clone());
    let excess = recent.len().saturating_sub(ProjectHead::RECENT);
    recent.drain(..excess);
    CommitDecision::Apply {
        head: ProjectHead {
            schema: SCHEMA_VERSION,
            group: head.group.clone(),
            term,
            current: Some(revision.clone()),
            recent,
        },
        revision,
    }
}

/// Whether a head read back after a commit's compare-and-set went
/// unanswered shows the commit landed: it carries the committing `term` and
/// names `revision` as current. Anything else leaves the outcome unknown (the
/// read may come from a replica that is behind): the server must not guess.
pub fn landed(read: Option<&ProjectHead>, term: Term, revision: &RevisionSummary) -> bool {
    read.is_some_and(|h| h.term == term && h.current.as_ref() == Some(revision))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn group() -> GroupName {
        "stage".parse().unwrap()
    }

    fn t(n: u64) -> Term {
        Term::from_revision(n)
    }

    fn change(base: u64, id: &str) -> ChangeMeta {
        ChangeMeta {
            base_revision: base,
            sha256: format!("{:064x}", base + 1),
            size: 10,
            changed_by: Some("desk-1".into()),
            change_id: Some(id.into()),
        }
    }

    fn fenced(term: u64) -> ProjectHead {
        match fence(None, &group(), t(term)) {
            FenceDecision::Write(h) => h,
            other => panic!("{other:?}"),
        }
    }

    fn applied(d: CommitDecision) -> ProjectHead {
        match d {
            CommitDecision::Apply { head, .. } => head,
            other => panic!("expected a commit, got {other:?}"),
        }
    }

    #[test]
    fn a_new_server_fences_with_its_term_and_keeps_the_history() {
        let h = applied(commit(&fenced(3), t(3), &change(0, "a"), 1));
        match fence(Some(&h), &group(), t(7)) {
            FenceDecision::Write(f) => {
                assert_eq!(f.term, t(7));
                assert_eq!(f.current, h.current);
                assert_eq!(f.recent, h.recent);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            fence(Some(&h), &group(), t(3)),
            FenceDecision::AlreadyFenced
        );
    }

    #[test]
    fn a_server_deposed_before_it_fenced_does_not_serve() {
        assert_eq!(
            fence(Some(&fenced(9)), &group(), t(4)),
            FenceDecision::Deposed { head_term: t(9) }
        );
    }

    #[test]
    fn a_deposed_server_cannot_commit() {
        assert_eq!(
            commit(&fenced(9), t(4), &change(0, "a"), 1),
            CommitDecision::Deposed { head_term: t(9) }
        );
    }

    #[test]
    fn a_change_on_a_stale_base_is_a_conflict_carrying_the_head() {
        let h = applied(commit(&fenced(3), t(3), &change(0, "a"), 1));
        match commit(&h, t(3), &change(0, "b"), 2) {
            CommitDecision::Conflict { current } => assert_eq!(current, h.current),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_resubmitted_change_is_not_applied_twice() {
        let h = applied(commit(&fenced(3), t(3), &change(0, "a"), 1));
        let h = fence_to(&h, 5);
        match commit(&h, t(5), &change(0, "a"), 2) {
            CommitDecision::AlreadyCommitted(r) => assert_eq!(r.revision, 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_a_head_naming_the_commit_under_its_term_shows_it_landed() {
        let before = fenced(3);
        let d = commit(&before, t(3), &change(0, "a"), 1);
        let CommitDecision::Apply { head, revision } = d else {
            panic!("{d:?}")
        };
        assert!(landed(Some(&head), t(3), &revision));
        assert!(
            !landed(Some(&before), t(3), &revision),
            "an unchanged head proves nothing"
        );
        assert!(!landed(Some(&fence_to(&head, 4)), t(3), &revision));
        assert!(!landed(None, t(3), &revision));
    }

    fn fence_to(h: &ProjectHead, term: u64) -> ProjectHead {
        match fence(Some(h), &group(), t(term)) {
            FenceDecision::Write(f) => f,
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        /// Any interleaving of fences by growing terms and commits keeps the
        /// head's term monotonic, its revisions consecutive, and the recent
        /// history bounded and in order.
        #[test]
        fn history_grows_by_one_and_terms_never_fall(ops in proptest::collection::vec((any::<bool>(), 0u64..3), 1..200)) {
            let mut term = 1;
            let mut head = fenced(term);
            let mut n = 0u64;
            for (is_fence, bump) in ops {
                if is_fence {
                    term += bump;
                    if let FenceDecision::Write(f) = fence(Some(&head), &group(), t(term)) {
                        prop_assert!(f.term >= head.term);
                        head = f;
                    }
                } else {
                    n += 1;
                    let c = change(head.revision(), &format!("c{n}"));
                    let before = head.revision();
                    head = applied(commit(&head, t(term), &c, n));
                    prop_assert_eq!(head.revision(), before + 1);
                }
                prop_assert!(head.recent.len() <= ProjectHead::RECENT);
                prop_assert!(head.recent.windows(2).all(|w| w[1].revision == w[0].revision + 1));
            }
        }
    }
}
