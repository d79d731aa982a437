//! Every bus message a device or the gateway reads (docs/bus.md): the bytes
//! are decoded as each type through `messages::decode`. A value or a typed
//! error, never a panic; a decoded value round-trips. The lease record and
//! the roster reply have targets of their own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use understudy_fuzz::bus_round_trip;
use understudy_protocol::messages::{
    self, ControlReply, ControlRequest, DeviceStatus, ElectionEvent, ElectionState, Heartbeat,
    Leave, PeerNotice, Presence, ProjectEvent, ProjectHead, ProjectState, Trigger,
};

fuzz_target!(|bytes: &[u8]| {
    bus_round_trip::<Heartbeat>(bytes);
    bus_round_trip::<Presence>(bytes);
    bus_round_trip::<Leave>(bytes);
    bus_round_trip::<ElectionEvent>(bytes);
    bus_round_trip::<ElectionState>(bytes);
    bus_round_trip::<PeerNotice>(bytes);
    bus_round_trip::<DeviceStatus>(bytes);
    bus_round_trip::<Trigger>(bytes);
    bus_round_trip::<ProjectHead>(bytes);
    bus_round_trip::<ProjectEvent>(bytes);
    bus_round_trip::<ProjectState>(bytes);
    // A device answers every control request, readable or not: the refusal
    // of an unreadable one must itself be a reply that decodes.
    match messages::decode::<ControlRequest>(bytes) {
        Ok(_) => {
            bus_round_trip::<ControlRequest>(bytes);
        }
        Err(e) => {
            let reply = ControlReply::unreadable(&e, None);
            let back = bus_round_trip::<ControlReply>(&messages::encode(&reply));
            assert_eq!(
                back.and_then(|r| r.refusal()).map(|r| r.code),
                Some((&e).into())
            );
        }
    }
    if let Some(reply) = bus_round_trip::<ControlReply>(bytes) {
        assert_eq!(reply.refusal().is_none(), reply.ok);
    }
});
