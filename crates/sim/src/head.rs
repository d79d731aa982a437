//! The project store: the head, a compare-and-set register like the
//! JetStream KV entry `head`, and the content, a set of objects named by
//! SHA-256 like the JetStream object store.
//!
//! Revisions come from one counter that never goes back (a stream
//! sequence). No expiry: the head bucket has none.

use std::collections::BTreeSet;

use understudy_protocol::messages::ProjectHead;

/// A refused compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

#[derive(Debug, Default)]
pub struct HeadStore {
    revision: u64,
    head: Option<(u64, ProjectHead)>,
    contents: BTreeSet<String>,
    /// When set, writes skip the revision check (a plain put instead of a
    /// compare-and-set), to prove the checker catches it; never set in a
    /// normal run.
    pub blind_writes: bool,
}

impl HeadStore {
    /// An empty store; `blind_writes` breaks its compare-and-set.
    pub fn new(blind_writes: bool) -> HeadStore {
        HeadStore {
            blind_writes,
            ..HeadStore::default()
        }
    }

    /// The head and its KV revision.
    pub fn read(&self) -> Option<(u64, ProjectHead)> {
        self.head.clone()
    }

    /// Writes `head` if the entry is at `expect` (`None`: absent).
    pub fn write(&mut self, head: ProjectHead, expect: Option<u64>) -> Result<u64, Refused> {
        let current = self.head.as_ref().map(|(r, _)| *r);
        if current != expect && !self.blind_writes {
            return Err(Refused);
        }
        self.revision += 1;
        self.head = Some((self.revision, head));
        Ok(self.revision)
    }

    /// Stores content.
    pub fn put_content(&mut self, sha256: &str) {
        self.contents.insert(sha256.to_string());
    }

    /// Whether content is stored.
    pub fn has_content(&self, sha256: &str) -> bool {
        self.contents.contains(sha256)
    }
}
