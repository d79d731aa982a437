//! The gateway's front door never panics on what a client sends: a TCP line
//! or HTTP body of any bytes, and any JSON value in any field the commands
//! read (group and device names, scores, flags, counts, strings) gets a
//! value or a 4xx error (a bounded property run in every `cargo test`).

#![allow(clippy::unwrap_used)]

#[path = "../../protocol/tests/support/json.rs"]
mod json;

use json::any_json;
use proptest::prelude::*;
use serde_json::Value;
use understudy_control_gateway::input;

/// Every reader of a request's fields, on one request object: a value or a
/// client error (4xx), never a panic.
fn read_every_field(map: &serde_json::Map<String, Value>) {
    for name in ["cmd", "group", "device", "token", "id", "x"] {
        if let Err(e) = input::string(map, name) {
            assert!(e.status().is_client_error(), "{e:?}");
        }
        if let Err(e) = input::boolean(map, name) {
            assert!(e.status().is_client_error(), "{e:?}");
        }
        if let Err(e) = input::count(map, name) {
            assert!(e.status().is_client_error(), "{e:?}");
        }
        if let Some(v) = map.get(name) {
            if let Err(e) = input::score(v) {
                assert!(e.status().is_client_error(), "{e:?}");
            }
            if let Value::String(s) = v {
                let _ = input::group(s);
                let _ = input::device(s);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_as_a_request_get_an_object_or_a_client_error(
        bytes in prop::collection::vec(any::<u8>(), 0..(input::MAX_BODY + 64)),
    ) {
        match input::object(&bytes) {
            Ok(map) => read_every_field(&map),
            Err(e) => prop_assert!(e.status().is_client_error(), "{e:?}"),
        }
    }

    #[test]
    fn any_value_in_any_field_gets_a_value_or_a_client_error(
        fields in prop::collection::btree_map(
            prop_oneof![Just("cmd".to_string()), Just("group".to_string()),
                        Just("device".to_string()), Just("score".to_string()),
                        Just("online".to_string()), Just("after".to_string()),
                        Just("token".to_string()), ".{0,8}"],
            any_json(),
            0..6,
        ),
    ) {
        let doc = Value::Object(fields.into_iter().collect());
        let bytes = serde_json::to_vec(&doc).unwrap();
        match input::object(&bytes) {
            Ok(map) => read_every_field(&map),
            Err(e) => prop_assert!(e.status().is_client_error(), "{e:?}"),
        }
    }
}
