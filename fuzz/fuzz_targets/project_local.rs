//! What project-sync reads back from its own disk (a device's local copy and
//! its outbox): `meta.json`, an outbox entry and a conflict entry, decoded
//! with serde_json as the stores do. A value or an error, never a panic; a
//! decoded value round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use understudy_fuzz::json_round_trip;
use understudy_project_sync::local::{ConflictEntry, CopyMeta, OutboxEntry, valid_change_id};

fuzz_target!(|bytes: &[u8]| {
    json_round_trip::<CopyMeta>(bytes);
    if let Some(e) = json_round_trip::<OutboxEntry>(bytes) {
        let _ = valid_change_id(&e.change_id);
    }
    json_round_trip::<ConflictEntry>(bytes);
});
