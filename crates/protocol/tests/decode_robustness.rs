//! Network input never panics a decoder (a bounded property run in every
//! `cargo test`): every bus message a device or the gateway reads from the
//! network — heartbeat, peer notice, control request, lease record,
//! election event, trigger, goodbye, presence, project head, settings
//! request and reply, hold record, trigger reply — is decoded
//! from arbitrary bytes, from valid messages with bytes flipped, cut or
//! inserted, and from valid JSON with a field replaced by any JSON value.
//! Decoding must return a value or a typed error, and a value that decodes
//! must encode and decode to itself.

#![allow(clippy::unwrap_used)]

#[path = "support/json.rs"]
mod json;

use json::any_json;
use proptest::prelude::*;
use serde_json::Value;
use understudy_protocol::hold::{HoldRecord, SettingsReply, SettingsRequest};
use understudy_protocol::messages::{
    self, BusMessage, ControlOp, ControlRequest, ElectionEvent, ElectionEventKind, ElectionReason,
    Heartbeat, LeaseHolder, LeaseRecord, Leave, PeerChangeKind, PeerNotice, ProjectHead, Trigger,
    TriggerReply,
};
use understudy_protocol::{InstanceId, Mac, Role, SCHEMA_VERSION, Score, StatusColour, Term};

/// Decodes `bytes` as `M`: never a panic; a decoded value round-trips.
fn survives<M: BusMessage + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(m) = messages::decode::<M>(bytes) {
        let again = messages::decode::<M>(&messages::encode(&m))
            .unwrap_or_else(|e| panic!("{} decoded, but not its own encoding: {e}", M::KIND));
        assert_eq!(again, m, "{} does not round-trip", M::KIND);
    }
}

/// Every network message type, one decoder each, for the properties below.
fn all_survive(bytes: &[u8]) {
    survives::<Heartbeat>(bytes);
    survives::<PeerNotice>(bytes);
    survives::<ControlRequest>(bytes);
    survives::<LeaseRecord>(bytes);
    survives::<ElectionEvent>(bytes);
    survives::<Trigger>(bytes);
    survives::<Leave>(bytes);
    survives::<ProjectHead>(bytes);
    survives::<SettingsRequest>(bytes);
    survives::<SettingsReply>(bytes);
    survives::<HoldRecord>(bytes);
    survives::<TriggerReply>(bytes);
}

/// One valid example of each, encoded: the seeds the mutations start from.
fn seeds() -> Vec<Vec<u8>> {
    let group = "stage".parse().unwrap();
    let device: understudy_protocol::DeviceId = "desk-1".parse().unwrap();
    let mac: Mac = "02:00:00:00:00:01".parse().unwrap();
    vec![
        messages::encode(&Heartbeat {
            schema: SCHEMA_VERSION,
            group: "stage".parse().unwrap(),
            device: device.clone(),
            instance: InstanceId::new(7),
            mac,
            score: Score::new(200),
            online: true,
            role: Role::Server,
            term: Term::from_revision(3),
            in_grace: false,
            colour: StatusColour::Blue,
            problems: vec![],
            seq: 42,
            interval_ms: 100,
            sent_at_ms: 1_764_000_000_000,
        }),
        messages::encode(&PeerNotice {
            schema: SCHEMA_VERSION,
            group: "stage".parse().unwrap(),
            observer: "desk-2".parse().unwrap(),
            change: PeerChangeKind::Lost,
            device: device.clone(),
            instance: InstanceId::new(7),
            sent_at_ms: Some(1_764_000_000_000),
        }),
        messages::encode(&ControlRequest {
            schema: SCHEMA_VERSION,
            op: ControlOp::SetScore {
                score: Score::new(150),
            },
            set_by: None,
        }),
        messages::encode(&LeaseRecord {
            schema: SCHEMA_VERSION,
            group: "stage".parse().unwrap(),
            holder: Some(LeaseHolder {
                device: device.clone(),
                instance: InstanceId::new(7),
                mac,
                score: Score::new(200),
                project_addr: Some("10.0.0.5:7000".into()),
            }),
            term: Some(Term::from_revision(3)),
            handover_to: None,
            released: None,
        }),
        messages::encode(&ElectionEvent {
            schema: SCHEMA_VERSION,
            group,
            reporter: device.clone(),
            at_ms: 1_764_000_000_000,
            kind: ElectionEventKind::ServerElected {
                device: device.clone(),
                mac,
                score: Score::new(200),
                term: Term::from_revision(3),
                reason: ElectionReason::ServerLost,
            },
        }),
        messages::encode(&Trigger {
            schema: SCHEMA_VERSION,
            by: Some("operator".into()),
            force: false,
        }),
        messages::encode(&Leave {
            schema: SCHEMA_VERSION,
            group: "stage".parse().unwrap(),
            device,
            instance: InstanceId::new(7),
            reason: "shutdown".into(),
        }),
        br#"{"schema":1,"group":"stage","term":3,"current":null,"recent":[]}"#.to_vec(),
        br#"{"schema":1,"op":"set_hold","held":true,"until_ms":1764097200000,"reason":"act 2","set_by":"ops"}"#.to_vec(),
        br#"{"schema":1,"ok":true,"hold":{"schema":1,"group":"stage","held":true,"reason":"act 2","since_ms":1764090000000}}"#.to_vec(),
        br#"{"schema":1,"ok":false,"code":"until_in_past","error":"until is not in the future"}"#.to_vec(),
        br#"{"schema":1,"device":"desk-1","acted":false,"held":true}"#.to_vec(),
        br#"{"schema":1,"group":"stage","reporter":"desk-1","at_ms":1,"type":"hold_changed","held":true,"reason":"act 2"}"#.to_vec(),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048)
}

proptest! {
    // 2,048 cases each in the suite; `PROPTEST_CASES=N` for a long run.
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        all_survive(&bytes);
    }

    #[test]
    fn damaged_messages_never_panic_a_decoder(
        seed in 0usize..8,
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut bytes = seeds()[seed].clone();
        for (at, byte, how) in edits {
            let i = at % (bytes.len() + 1);
            match how {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => bytes.truncate(i),
            }
        }
        all_survive(&bytes);
    }

    #[test]
    fn any_value_in_any_field_never_panics_a_decoder(
        seed in 0usize..8,
        field in any::<usize>(),
        value in any_json(),
    ) {
        let mut doc: Value = serde_json::from_slice(&seeds()[seed]).unwrap();
        if let Value::Object(map) = &mut doc {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = keys[field % keys.len()].clone();
            map.insert(key, value);
        }
        all_survive(&serde_json::to_vec(&doc).unwrap());
    }
}
