//! The lease record read from JetStream KV (the election and every
//! project-sync client read it to find the server): a value or a typed
//! error, never a panic; a decoded value round-trips, and its term at any
//! KV revision is the one it carries, else that revision.
#![no_main]

use libfuzzer_sys::fuzz_target;
use understudy_fuzz::bus_round_trip;
use understudy_protocol::Term;
use understudy_protocol::messages::LeaseRecord;

fuzz_target!(|bytes: &[u8]| {
    if let Some(rec) = bus_round_trip::<LeaseRecord>(bytes) {
        for revision in [0, 1, bytes.len() as u64, u64::MAX] {
            let term = rec.term_at(revision);
            assert_eq!(term, rec.term.unwrap_or(Term::from_revision(revision)));
        }
    }
});
