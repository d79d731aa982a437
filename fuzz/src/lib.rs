//! What the fuzz targets share: the invariants of the robustness suite
//! (crates/protocol/tests/decode_robustness.rs), for any decoder — a value
//! or a typed error, never a panic; a decoded value round-trips.

use std::fmt::Debug;

use understudy_protocol::messages::{self, BusMessage};

/// Decodes `bytes` as `M` with the bus decoder; a value that decodes must
/// encode and decode to itself. Returns the value, if any.
pub fn bus_round_trip<M: BusMessage + PartialEq + Debug>(bytes: &[u8]) -> Option<M> {
    let m = messages::decode::<M>(bytes).ok()?;
    let again = match messages::decode::<M>(&messages::encode(&m)) {
        Ok(again) => again,
        Err(e) => panic!("{} decoded, but not its own encoding: {e}", M::KIND),
    };
    assert_eq!(again, m, "{} does not round-trip", M::KIND);
    Some(m)
}

/// Decodes `bytes` as the protobuf message `M`; a value that decodes must
/// encode and decode to itself. Returns the value, if any.
pub fn pb_round_trip<M: prost::Message + Default + PartialEq + Debug>(bytes: &[u8]) -> Option<M> {
    let m = M::decode(bytes).ok()?;
    let again = match M::decode(m.encode_to_vec().as_slice()) {
        Ok(again) => again,
        Err(e) => panic!(
            "{} decoded, but not its own encoding: {e}",
            std::any::type_name::<M>()
        ),
    };
    assert_eq!(
        again,
        m,
        "{} does not round-trip",
        std::any::type_name::<M>()
    );
    Some(m)
}

/// Decodes `bytes` as the JSON document `T` (serde_json, as the local
/// stores read their files); a value that decodes must round-trip.
pub fn json_round_trip<T>(bytes: &[u8]) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Debug,
{
    let t: T = serde_json::from_slice(bytes).ok()?;
    let encoded = match serde_json::to_vec(&t) {
        Ok(v) => v,
        Err(e) => panic!(
            "{} decoded, but cannot be encoded: {e}",
            std::any::type_name::<T>()
        ),
    };
    let again: T = match serde_json::from_slice(&encoded) {
        Ok(again) => again,
        Err(e) => panic!(
            "{} decoded, but not its own encoding: {e}",
            std::any::type_name::<T>()
        ),
    };
    assert_eq!(
        again,
        t,
        "{} does not round-trip",
        std::any::type_name::<T>()
    );
    Some(t)
}

/// Splits `bytes` into length-delimited protobuf messages (a gRPC stream's
/// messages, one after another), as many as decode.
pub fn pb_stream<M: prost::Message + Default>(mut bytes: &[u8]) -> Vec<M> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        match M::decode_length_delimited(&mut bytes) {
            Ok(m) => out.push(m),
            Err(_) => break,
        }
    }
    out
}
