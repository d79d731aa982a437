//! Validating what a client sends, the same way for HTTP and TCP.
//!
//! Names become `GroupName`/`DeviceId` (bus.md's naming rule) and a score
//! becomes a `Score` (B3) here, at the edge, so the rest of the gateway only
//! handles valid values. The contract tells two score mistakes apart: a value
//! of the wrong *type* (`"ten"`, `1.5`, `true`) is `invalid_json` (400), an
//! integer out of 0–255 (`256`, `-1`) is `score_out_of_range` (422). A whole
//! number written with a fraction or exponent (`140.0`, `1e2`) is an integer,
//! as JSON Schema (and so docs/openapi.json) counts them.
//!
//! A ledger read's `since` is an RFC 3339 time or Unix milliseconds and its
//! `limit` 1–[`MAX_LIMIT`]; anything else is `invalid_json` (400), like
//! every other bad query parameter.

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use understudy_bus::ledger::{LedgerQuery, MAX_LIMIT};
use understudy_protocol::hold::{HoldChange, REASON_MAX_CHARS, SET_BY_MAX_CHARS};
use understudy_protocol::{DeviceId, GroupName, Score};

use crate::ApiError;

/// The most bytes one HTTP body or one TCP line may hold: 16 KiB.
pub const MAX_BODY: usize = 16 * 1024;

/// Parses a group name.
pub fn group(text: &str) -> Result<GroupName, ApiError> {
    text.parse()
        .map_err(|e: understudy_protocol::ProtocolError| ApiError::InvalidName(e.to_string()))
}

/// Parses a device id.
pub fn device(text: &str) -> Result<DeviceId, ApiError> {
    text.parse()
        .map_err(|e: understudy_protocol::ProtocolError| ApiError::InvalidName(e.to_string()))
}

/// Parses a request body (or a TCP line) as a JSON object.
pub fn object(bytes: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::InvalidJson(format!(
            "expected a JSON object, got {}",
            kind(&other)
        ))),
        Err(e) => Err(ApiError::InvalidJson(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

/// A required field of an object.
pub fn field<'a>(
    map: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Result<&'a Value, ApiError> {
    map.get(name)
        .ok_or_else(|| ApiError::InvalidJson(format!("missing field `{name}`")))
}

/// A required string field.
pub fn string<'a>(
    map: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Result<&'a str, ApiError> {
    match field(map, name)? {
        Value::String(s) => Ok(s),
        other => Err(ApiError::InvalidJson(format!(
            "field `{name}` must be a string, got {}",
            kind(other)
        ))),
    }
}

/// A required boolean field.
pub fn boolean(map: &serde_json::Map<String, Value>, name: &str) -> Result<bool, ApiError> {
    match field(map, name)? {
        Value::Bool(b) => Ok(*b),
        other => Err(ApiError::InvalidJson(format!(
            "field `{name}` must be true or false, got {}",
            kind(other)
        ))),
    }
}

/// An optional non-negative integer field (`after`, `last`).
pub fn count(map: &serde_json::Map<String, Value>, name: &str) -> Result<Option<u64>, ApiError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::InvalidJson(format!(
                "field `{name}` must be a non-negative integer, got {}",
                kind(v)
            ))
        }),
    }
}

/// An optional boolean field (absent or null: false), e.g. `force`.
pub fn flag(map: &serde_json::Map<String, Value>, name: &str) -> Result<bool, ApiError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(_) => boolean(map, name),
    }
}

/// An optional string field (absent or null: `None`).
fn optional_string(
    map: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<String>, ApiError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => string(map, name).map(|s| Some(s.to_owned())),
    }
}

/// Who a hold change is kept as set by when the client names nobody.
pub const DEFAULT_SET_BY: &str = "gateway";

/// A show hold change: `held` (required), `until` (an RFC 3339 time or
/// null; only with `held: true`), `reason` (at most 200 characters) and
/// `by` (who asks, at most 64; default [`DEFAULT_SET_BY`]). Whether `until`
/// lies in the future is the answering device's to say, by its clock.
pub fn hold(map: &serde_json::Map<String, Value>) -> Result<HoldChange, ApiError> {
    let held = boolean(map, "held")?;
    let until_ms = match optional_string(map, "until")? {
        None => None,
        Some(text) => Some(rfc3339_ms(&text)?),
    };
    if !held && until_ms.is_some() {
        return Err(ApiError::InvalidHold(
            "`until` is only for putting a hold on (held: true); lifting takes no end".into(),
        ));
    }
    let reason = optional_string(map, "reason")?;
    let chars = |s: &Option<String>| s.as_deref().map_or(0, |s| s.chars().count());
    if chars(&reason) > REASON_MAX_CHARS {
        return Err(ApiError::InvalidHold(format!(
            "reason is {} characters long; at most {REASON_MAX_CHARS} are allowed",
            chars(&reason)
        )));
    }
    let by = optional_string(map, "by")?.filter(|b| !b.trim().is_empty());
    if chars(&by) > SET_BY_MAX_CHARS {
        return Err(ApiError::InvalidHold(format!(
            "by is {} characters long; at most {SET_BY_MAX_CHARS} are allowed",
            chars(&by)
        )));
    }
    Ok(HoldChange {
        held,
        until_ms,
        reason,
        set_by: Some(by.unwrap_or_else(|| DEFAULT_SET_BY.to_owned())),
    })
}

/// An RFC 3339 time (`2026-12-01T23:30:00Z`) as Unix milliseconds.
fn rfc3339_ms(text: &str) -> Result<u64, ApiError> {
    let shown: String = text.chars().take(40).collect();
    let t = OffsetDateTime::parse(text.trim(), &Rfc3339).map_err(|_| {
        ApiError::InvalidJson(format!(
            "`until` must be an RFC 3339 time such as 2026-12-01T23:30:00Z, got {shown:?}"
        ))
    })?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| ApiError::InvalidHold(format!("`until` {shown} is before 1970")))
}

/// How many ledger entries a read returns when it does not say.
pub const DEFAULT_LEDGER_LIMIT: usize = 100;

/// The latest `since` a ledger read may name, in Unix milliseconds: the
/// last millisecond of the year 9999 (`9999-12-31T23:59:59.999Z`), the last
/// an RFC 3339 time can write.
pub const SINCE_MAX_MS: u64 = 253_402_300_799_999;

/// A ledger read's `since`, as text: Unix milliseconds (digits only, at most
/// [`SINCE_MAX_MS`]) or an RFC 3339 time. A time before 1970 reads from
/// the start, one after 9999 (by its offset) from [`SINCE_MAX_MS`].
pub fn since(text: &str) -> Result<u64, ApiError> {
    let shown: String = text.chars().take(40).collect();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms <= SINCE_MAX_MS)
            .ok_or_else(|| {
                ApiError::InvalidJson(format!(
                    "`since` {shown} is past the last time it may name \
                     ({SINCE_MAX_MS}, 9999-12-31T23:59:59.999Z)"
                ))
            });
    }
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        ApiError::InvalidJson(format!(
            "`since` must be an RFC 3339 time such as 2026-12-01T20:00:00Z or Unix \
             milliseconds, got {shown:?}"
        ))
    })?;
    let ms = (t.unix_timestamp_nanos() / 1_000_000).max(0);
    Ok(u64::try_from(ms).map_or(SINCE_MAX_MS, |ms| ms.min(SINCE_MAX_MS)))
}

/// A ledger read's `limit`: 1–[`MAX_LIMIT`].
pub fn ledger_limit(n: u64) -> Result<usize, ApiError> {
    usize::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| ApiError::InvalidJson(format!("`limit` must be 1 to {MAX_LIMIT}, not {n}")))
}

/// A TCP `ledger` command's `since` (a string as for [`since`], or a JSON
/// integer of milliseconds; absent or null: none) and `limit` (an integer;
/// absent or null: [`DEFAULT_LEDGER_LIMIT`]).
pub fn ledger(map: &serde_json::Map<String, Value>) -> Result<LedgerQuery, ApiError> {
    let since_ms = match map.get("since") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(since(text)?),
        Some(v) => match v.as_u64() {
            Some(ms) => Some(since(&ms.to_string())?),
            None => {
                return Err(ApiError::InvalidJson(format!(
                    "field `since` must be an RFC 3339 time or Unix milliseconds, got {}",
                    kind(v)
                )));
            }
        },
    };
    let limit = match count(map, "limit")? {
        None => DEFAULT_LEDGER_LIMIT,
        Some(n) => ledger_limit(n)?,
    };
    Ok(LedgerQuery { since_ms, limit })
}

/// A score: a JSON integer 0–255 (`140.0` counts as the integer 140).
pub fn score(value: &Value) -> Result<Score, ApiError> {
    let out_of_range =
        |shown: String| ApiError::ScoreOutOfRange(format!("score {shown} is out of range 0–255"));
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Score::try_from(i).map_err(|_| out_of_range(i.to_string()))
            } else if n.as_u64().is_some() {
                Err(out_of_range(n.to_string()))
            } else {
                // A float: a whole one (`140.0`, `1e2`) is an integer, as
                // JSON Schema counts them; anything with a fraction is not a
                // score at all.
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.is_finite() => {
                        if (0.0..=255.0).contains(&f) {
                            // In range and whole: the cast is exact.
                            Ok(Score::new(f as u8))
                        } else {
                            Err(out_of_range(n.to_string()))
                        }
                    }
                    _ => Err(ApiError::InvalidJson(format!(
                        "score must be an integer 0–255, got {n}"
                    ))),
                }
            }
        }
        other => Err(ApiError::InvalidJson(format!(
            "score must be an integer 0–255, got {}",
            kind(other)
        ))),
    }
}

/// How a JSON value is described in an error message.
pub fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.chars().count() <= 32 => format!("the string {s:?}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scores_tell_wrong_type_from_out_of_range() {
        assert_eq!(score(&json!(0)).map(Score::get), Ok(0));
        assert_eq!(score(&json!(255)).map(Score::get), Ok(255));
        for bad in [json!(256), json!(-1), json!(1e30), json!(u64::MAX)] {
            assert_eq!(
                score(&bad).map_err(|e| e.code()),
                Err("score_out_of_range"),
                "{bad}"
            );
        }
        for bad in [
            json!(1.5),
            json!("ten"),
            json!(true),
            json!(null),
            json!([1]),
        ] {
            assert_eq!(
                score(&bad).map_err(|e| e.code()),
                Err("invalid_json"),
                "{bad}"
            );
        }
    }

    /// schemathesis sent `{"score": 140.0}`, valid for the document's
    /// `"type": "integer"` (JSON Schema counts 140.0 as an integer), and the
    /// gateway answered 422 "score 140.0 is out of range 0–255".
    #[test]
    fn a_score_of_140_point_0_is_the_integer_140_not_out_of_range() {
        for (whole, expected) in [
            (json!(140.0), 140),
            (json!(0.0), 0),
            (json!(-0.0), 0),
            (json!(255.0), 255),
        ] {
            assert_eq!(score(&whole).map(Score::get), Ok(expected), "{whole}");
        }
        let exponent: Value = serde_json::from_str("1e2").expect("a JSON number");
        assert_eq!(score(&exponent).map(Score::get), Ok(100));
        for bad in [json!(256.0), json!(-1.0), json!(1e300)] {
            assert_eq!(
                score(&bad).map_err(|e| e.code()),
                Err("score_out_of_range"),
                "{bad}"
            );
        }
        assert_eq!(
            score(&json!(140.5)).map_err(|e| e.code()),
            Err("invalid_json")
        );
    }

    #[test]
    fn a_hold_change_is_checked_at_the_edge() {
        let obj = |v: Value| v.as_object().cloned().expect("an object");
        let c = hold(&obj(
            json!({"held": true, "until": "2026-01-01T01:00:00+01:00",
            "reason": "show"}),
        ))
        .expect("valid");
        assert_eq!(c.until_ms, Some(1_767_225_600_000));
        assert_eq!(c.set_by.as_deref(), Some(DEFAULT_SET_BY));
        let c = hold(&obj(json!({"held": false, "until": null, "by": "desk"}))).expect("valid");
        assert_eq!(
            (c.held, c.until_ms, c.set_by.as_deref()),
            (false, None, Some("desk"))
        );
        let long = "x".repeat(REASON_MAX_CHARS + 1);
        for (bad, code) in [
            (json!({}), "invalid_json"),
            (json!({"held": "yes"}), "invalid_json"),
            (json!({"held": true, "until": "tomorrow"}), "invalid_json"),
            (json!({"held": true, "until": 5}), "invalid_json"),
            (json!({"held": true, "reason": 5}), "invalid_json"),
            (
                json!({"held": false, "until": "2026-01-01T00:00:00Z"}),
                "invalid_hold",
            ),
            (json!({"held": true, "reason": long}), "invalid_hold"),
            (json!({"held": true, "by": "y".repeat(65)}), "invalid_hold"),
        ] {
            assert_eq!(
                hold(&obj(bad.clone())).map_err(|e| e.code()).err(),
                Some(code),
                "{bad}"
            );
        }
    }

    #[test]
    fn since_is_unix_milliseconds_or_an_rfc_3339_time() {
        assert_eq!(since("0"), Ok(0));
        assert_eq!(since("1767225600000"), Ok(1_767_225_600_000));
        assert_eq!(since("2026-01-01T01:00:00+01:00"), Ok(1_767_225_600_000));
        assert_eq!(since("2026-01-01t00:00:00.5z"), Ok(1_767_225_600_500));
        // Before 1970: from the start; past 9999 by its offset: the last.
        assert_eq!(since("0001-01-01T00:00:00+00:00"), Ok(0));
        assert_eq!(since("9999-12-31T23:59:59-23:59"), Ok(SINCE_MAX_MS));
        assert_eq!(since(&SINCE_MAX_MS.to_string()), Ok(SINCE_MAX_MS));
        for bad in [
            "",
            "garbage",
            "-1",
            "1.5",
            "2h",
            "2026-01-01",
            "253402300800000",
            "99999999999999999999999",
        ] {
            assert_eq!(
                since(bad).map_err(|e| e.code()),
                Err("invalid_json"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_ledger_command_takes_since_and_limit() {
        let obj = |v: Value| v.as_object().cloned().expect("an object");
        assert_eq!(
            ledger(&obj(json!({}))),
            Ok(LedgerQuery {
                since_ms: None,
                limit: DEFAULT_LEDGER_LIMIT
            })
        );
        assert_eq!(
            ledger(&obj(json!({"since": 5, "limit": 1000}))),
            Ok(LedgerQuery {
                since_ms: Some(5),
                limit: 1000
            })
        );
        assert_eq!(
            ledger(&obj(
                json!({"since": "1970-01-01T00:00:01Z", "limit": null})
            )),
            Ok(LedgerQuery {
                since_ms: Some(1000),
                limit: DEFAULT_LEDGER_LIMIT
            })
        );
        for bad in [
            json!({"limit": 0}),
            json!({"limit": 1001}),
            json!({"limit": "10"}),
            json!({"limit": -1}),
            json!({"since": "yesterday"}),
            json!({"since": -5}),
            json!({"since": true}),
        ] {
            assert_eq!(
                ledger(&obj(bad.clone())).map_err(|e| e.code()),
                Err("invalid_json"),
                "{bad}"
            );
        }
    }

    #[test]
    fn names_follow_the_bus_rule() {
        assert!(group("stage").is_ok());
        assert_eq!(group("a.b").map_err(|e| e.code()), Err("invalid_name"));
        assert_eq!(device("").map_err(|e| e.code()), Err("invalid_name"));
    }

    #[test]
    fn bodies_must_be_objects() {
        assert!(object(br#"{"score":1}"#).is_ok());
        assert_eq!(object(b"{").map_err(|e| e.code()), Err("invalid_json"));
        assert_eq!(object(b"[1]").map_err(|e| e.code()), Err("invalid_json"));
    }
}
