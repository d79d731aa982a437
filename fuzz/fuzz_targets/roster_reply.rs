//! The roster reply (`understudy status`, the gateway): a value or a typed
//! error, never a panic; a decoded value round-trips, and reading it (a
//! device's entry, its shown colour, the counts) never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use understudy_fuzz::bus_round_trip;
use understudy_protocol::StatusColour;
use understudy_protocol::roster::RosterReply;

fuzz_target!(|bytes: &[u8]| {
    if let Some(reply) = bus_round_trip::<RosterReply>(bytes) {
        for d in &reply.devices {
            assert!(reply.device(&d.device).is_some());
            if !d.live {
                assert_eq!(d.shown_colour(), StatusColour::Grey);
            }
        }
        let _ = reply.counts.devices();
        let _ = reply.network_counts.devices();
    }
});
