//! JSON round trips and edge cases of the bus messages.

#![allow(clippy::unwrap_used)]

use understudy_protocol::messages::*;
use understudy_protocol::*;

fn heartbeat() -> Heartbeat {
    Heartbeat {
        schema: SCHEMA_VERSION,
        group: "stage".parse().unwrap(),
        device: "desk-1".parse().unwrap(),
        instance: InstanceId::new(7),
        mac: "02:00:00:00:00:01".parse().unwrap(),
        score: Score::new(200),
        online: true,
        role: Role::Server,
        term: Term::from_revision(12),
        in_grace: false,
        colour: StatusColour::Red,
        problems: vec![Problem::MissingPeers {
            expected: 3,
            actual: 2,
        }],
        seq: 3,
        interval_ms: 100,
        sent_at_ms: 1_700_000_000_000,
    }
}

fn event(kind: ElectionEventKind) -> ElectionEvent {
    ElectionEvent {
        schema: SCHEMA_VERSION,
        group: "stage".parse().unwrap(),
        reporter: "desk-1".parse().unwrap(),
        at_ms: 5,
        kind,
    }
}

#[test]
fn heartbeat_round_trips() {
    let hb = heartbeat();
    assert_eq!(decode::<Heartbeat>(&encode(&hb)).unwrap(), hb);
}

#[test]
fn heartbeat_reads_as_documented() {
    let json: serde_json::Value = serde_json::from_slice(&encode(&heartbeat())).unwrap();
    assert_eq!(json["mac"], "02:00:00:00:00:01");
    assert_eq!(json["instance"], "0000000000000007");
    assert_eq!(json["role"], "server");
    assert_eq!(json["term"], 12);
    assert_eq!(json["schema"], 1);
}

#[test]
fn unknown_fields_are_tolerated() {
    let mut json: serde_json::Value = serde_json::from_slice(&encode(&heartbeat())).unwrap();
    json["added_in_a_later_minor"] = serde_json::json!({"x": 1});
    let bytes = serde_json::to_vec(&json).unwrap();
    assert_eq!(decode::<Heartbeat>(&bytes).unwrap(), heartbeat());
}

#[test]
fn a_missing_field_is_named() {
    let mut json: serde_json::Value = serde_json::from_slice(&encode(&heartbeat())).unwrap();
    json.as_object_mut().unwrap().remove("mac");
    let err = decode::<Heartbeat>(&serde_json::to_vec(&json).unwrap()).unwrap_err();
    assert!(err.to_string().contains("missing field `mac`"), "{err}");
}

#[test]
fn a_bad_value_is_refused_with_its_reason() {
    let mut json: serde_json::Value = serde_json::from_slice(&encode(&heartbeat())).unwrap();
    json["score"] = serde_json::json!(256);
    let err = decode::<Heartbeat>(&serde_json::to_vec(&json).unwrap()).unwrap_err();
    assert!(err.to_string().contains("out of range 0–255"), "{err}");
    json["score"] = serde_json::json!(1);
    json["group"] = serde_json::json!("a.b");
    let err = decode::<Heartbeat>(&serde_json::to_vec(&json).unwrap()).unwrap_err();
    assert!(err.to_string().contains("group name"), "{err}");
}

#[test]
fn schema_version_is_checked_first() {
    let err = decode::<Heartbeat>(br#"{"schema": 2, "whatever": true}"#).unwrap_err();
    assert_eq!(
        err,
        ProtocolError::UnsupportedSchema {
            found: 2,
            supported: 1
        }
    );
    let err = decode::<Heartbeat>(br#"{"device": "x"}"#).unwrap_err();
    assert!(err.to_string().contains("`schema`"), "{err}");
    let err = decode::<Heartbeat>(b"not json").unwrap_err();
    assert!(err.to_string().starts_with("malformed heartbeat"), "{err}");
}

#[test]
fn presence_and_leave_round_trip() {
    let p = Presence {
        schema: SCHEMA_VERSION,
        instance: InstanceId::new(9),
        kind: InstanceKind::Gui,
        device: None,
        group: Some("stage".parse().unwrap()),
        online: true,
        role: None,
        interval_ms: 1000,
        sent_at_ms: 1,
    };
    assert_eq!(decode::<Presence>(&encode(&p)).unwrap(), p);
    let l = Leave {
        schema: SCHEMA_VERSION,
        group: "stage".parse().unwrap(),
        device: "desk-1".parse().unwrap(),
        instance: InstanceId::new(9),
        reason: "shutdown".into(),
    };
    assert_eq!(decode::<Leave>(&encode(&l)).unwrap(), l);
}

#[test]
fn election_events_round_trip_with_a_type_tag() {
    let kinds = vec![
        ElectionEventKind::ElectionStarted {
            reason: ElectionReason::ServerLost,
        },
        ElectionEventKind::ServerElected {
            device: "desk-2".parse().unwrap(),
            mac: "02:00:00:00:00:02".parse().unwrap(),
            score: Score::new(100),
            term: Term::from_revision(40),
            reason: ElectionReason::ServerLost,
        },
        ElectionEventKind::ServerLost {
            device: "desk-1".parse().unwrap(),
            term: Term::from_revision(12),
            silent_ms: Some(305),
        },
        ElectionEventKind::SteppedDown {
            device: "desk-1".parse().unwrap(),
            term: Term::from_revision(12),
            reason: StepDownReason::LeaseLost,
        },
        ElectionEventKind::HandedOver {
            from: "desk-1".parse().unwrap(),
            to: "desk-2".parse().unwrap(),
            term: Term::from_revision(12),
        },
        ElectionEventKind::NoViableCandidate,
    ];
    for kind in kinds {
        let e = event(kind);
        assert_eq!(decode::<ElectionEvent>(&encode(&e)).unwrap(), e);
    }
    let json: serde_json::Value =
        serde_json::from_slice(&encode(&event(ElectionEventKind::NoViableCandidate))).unwrap();
    assert_eq!(json["type"], "no_viable_candidate");
}

#[test]
fn unknown_event_types_and_reasons_decode_as_unknown() {
    let e = decode::<ElectionEvent>(
        br#"{"schema":1,"group":"g","reporter":"d","at_ms":1,"type":"new_thing","x":1}"#,
    )
    .unwrap();
    assert_eq!(e.kind, ElectionEventKind::Unknown);
    let e = decode::<ElectionEvent>(
        br#"{"schema":1,"group":"g","reporter":"d","at_ms":1,"type":"election_started","reason":"solar_flare"}"#,
    )
    .unwrap();
    assert_eq!(
        e.kind,
        ElectionEventKind::ElectionStarted {
            reason: ElectionReason::Other
        }
    );
}

#[test]
fn the_claiming_write_takes_its_revision_as_term() {
    let mut r = LeaseRecord {
        schema: SCHEMA_VERSION,
        group: "g".parse().unwrap(),
        holder: None,
        term: None,
        handover_to: None,
        released: None,
    };
    assert_eq!(r.term_at(41), Term::from_revision(41));
    r.term = Some(Term::from_revision(41));
    assert_eq!(r.term_at(57), Term::from_revision(41));
    assert_eq!(decode::<LeaseRecord>(&encode(&r)).unwrap(), r);
}

fn state() -> ElectionState {
    ElectionState {
        schema: SCHEMA_VERSION,
        group: "stage".parse().unwrap(),
        device: "desk-1".parse().unwrap(),
        instance: InstanceId::new(7),
        mac: "02:00:00:00:00:01".parse().unwrap(),
        score: Score::new(200),
        online: true,
        role: Role::Client,
        term: Term::from_revision(3),
        in_grace: false,
        server: None,
    }
}

#[test]
fn a_refused_control_request_carries_a_snake_case_code_and_a_message() {
    let err = decode::<ControlRequest>(br#"{"schema":1,"op":"set_score","score":300}"#)
        .expect_err("300 is out of range");
    let reply = ControlReply::unreadable(&err, Some(state()));
    let json: serde_json::Value = serde_json::from_slice(&encode(&reply)).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["code"], "score_out_of_range");
    assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()));
    let back: ControlReply = decode(&encode(&reply)).unwrap();
    let refusal = back.refusal().expect("a refusal");
    assert_eq!(refusal.code, ControlErrorCode::ScoreOutOfRange);
    assert_eq!(refusal.message, err.to_string());
}

#[test]
fn every_unreadable_request_maps_to_a_code() {
    for (body, code) in [
        (&b"{not json"[..], ControlErrorCode::InvalidRequest),
        (
            br#"{"schema":1,"op":"dance"}"#,
            ControlErrorCode::InvalidRequest,
        ),
        (
            br#"{"schema":1,"op":"set_score","score":-1}"#,
            ControlErrorCode::ScoreOutOfRange,
        ),
        (
            br#"{"schema":9,"op":"get"}"#,
            ControlErrorCode::UnsupportedSchema,
        ),
        (
            br#"{"schema":1,"op":"set_score","score":1.5}"#,
            ControlErrorCode::InvalidRequest,
        ),
        (
            br#"{"schema":1,"op":"set_score","score":"ten"}"#,
            ControlErrorCode::InvalidRequest,
        ),
        (
            br#"{"schema":1,"op":"set_score"}"#,
            ControlErrorCode::InvalidRequest,
        ),
        (
            br#"{"schema":1,"op":"set_score","score":18446744073709551615}"#,
            ControlErrorCode::ScoreOutOfRange,
        ),
    ] {
        let err = decode::<ControlRequest>(body).expect_err("refused");
        assert_eq!(ControlErrorCode::from(&err), code, "{err}");
    }
}

#[test]
fn a_carried_out_request_has_no_code_and_no_refusal() {
    let reply = ControlReply::ok(state());
    let json: serde_json::Value = serde_json::from_slice(&encode(&reply)).unwrap();
    assert!(json.get("code").is_none(), "{json}");
    assert_eq!(json["error"], serde_json::Value::Null);
    assert_eq!(reply.refusal(), None);
}

#[test]
fn a_refusal_from_an_older_device_without_a_code_reads_as_an_invalid_request() {
    let reply: ControlReply =
        decode(br#"{"schema":1,"ok":false,"error":"malformed control request: x"}"#).unwrap();
    let refusal = reply.refusal().expect("a refusal");
    assert_eq!(refusal.code, ControlErrorCode::InvalidRequest);
    assert_eq!(refusal.message, "malformed control request: x");
}

#[test]
fn a_control_error_code_from_a_newer_device_reads_as_unknown() {
    let reply: ControlReply =
        decode(br#"{"schema":1,"ok":false,"code":"disk_full","error":"no room"}"#).unwrap();
    assert_eq!(
        reply.refusal().map(|r| r.code),
        Some(ControlErrorCode::Unknown)
    );
}

#[test]
fn control_requests_round_trip() {
    for op in [
        ControlOp::SetScore { score: Score::MAX },
        ControlOp::SetOnline { online: false },
        ControlOp::ResetScore,
        ControlOp::Get,
    ] {
        let req = ControlRequest {
            schema: SCHEMA_VERSION,
            op,
            set_by: None,
        };
        assert_eq!(decode::<ControlRequest>(&encode(&req)).unwrap(), req);
    }
}

#[test]
fn a_step_down_reason_reads_as_its_serialised_name() {
    for r in [
        StepDownReason::HandOver,
        StepDownReason::LeaseLost,
        StepDownReason::Deposed,
        StepDownReason::Offline,
        StepDownReason::ScoreZero,
        StepDownReason::Shutdown,
    ] {
        assert_eq!(serde_json::to_value(r).unwrap(), r.as_str(), "{r:?}");
    }
}

#[test]
fn election_reasons_spell_as_they_serialise() {
    use understudy_protocol::messages::ElectionReason as R;
    for r in [
        R::Startup,
        R::ServerLost,
        R::NoServer,
        R::ScoreChanged,
        R::Preemption,
        R::HandOver,
        R::Operator,
    ] {
        assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
    }
}
