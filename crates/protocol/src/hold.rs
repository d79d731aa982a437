//! The show hold: an operator's "no needless hand-over during the show".
//!
//! While a group is held, the election core lets no better device preempt
//! the server and re-elects on no score change; losing the server still
//! fails over at once, and an operator trigger needs `force`. The hold is a
//! group setting:
//!
//! - an operator asks for it with a [`SettingsRequest`] on
//!   `understudy.<group>.settings` (request/reply; one election service of
//!   the group answers, see [`crate::subjects::SETTINGS_QUEUE`]);
//! - that device validates it ([`HoldChange::validate`]), stores the
//!   [`HoldRecord`] as key `hold` of the JetStream KV bucket
//!   `understudy-settings-<group>`, publishes a `hold_changed` election
//!   event and answers with a [`SettingsReply`];
//! - every election service watches the key, so the hold survives any
//!   device's restart, and lapses by itself at `until_ms`.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::messages::{BusMessage, SCHEMA_VERSION};
use crate::{GroupName, ProtocolError};

/// The longest reason a hold may carry, in characters.
pub const REASON_MAX_CHARS: usize = 200;
/// The longest `set_by` a hold may carry, in characters.
pub const SET_BY_MAX_CHARS: usize = 64;
/// How far ahead a hold's `until_ms` may lie: 30 days.
pub const UNTIL_MAX_AHEAD_MS: u64 = 30 * 24 * 3600 * 1000;

/// The group's show hold as stored: the value of key `hold` in the KV bucket
/// `understudy-settings-<group>`. A lifted hold is stored too (`held:
/// false`), so who lifted it and when is kept; the bucket keeps some history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRecord {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The group.
    pub group: GroupName,
    /// Whether the operator put the hold on.
    pub held: bool,
    /// When the hold lapses by itself, Unix milliseconds; `None` until
    /// lifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// Why, in the operator's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who set it (a person, a tool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_by: Option<String>,
    /// When it was set, Unix milliseconds (the answering device's clock).
    pub since_ms: u64,
}

impl HoldRecord {
    /// Whether the hold is in effect at `now_ms`: on, and not lapsed.
    pub fn in_effect(&self, now_ms: u64) -> bool {
        self.held && self.until_ms.is_none_or(|until| now_ms < until)
    }

    /// How long until a hold in effect lapses by itself (`None` when it is
    /// not in effect or has no end).
    pub fn lapses_in_ms(&self, now_ms: u64) -> Option<u64> {
        if !self.in_effect(now_ms) {
            return None;
        }
        self.until_ms.map(|until| until.saturating_sub(now_ms))
    }
}

impl BusMessage for HoldRecord {
    const KIND: &'static str = "hold record";
}

/// An operator's change of the show hold, as asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldChange {
    /// Hold on (`true`) or off.
    pub held: bool,
    /// When the hold lapses by itself, Unix milliseconds: in the future, at
    /// most [`UNTIL_MAX_AHEAD_MS`] ahead; only with `held: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// Why (at most [`REASON_MAX_CHARS`] characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who asks (at most [`SET_BY_MAX_CHARS`] characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_by: Option<String>,
}

/// Why a [`HoldChange`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HoldError {
    /// `until_ms` is not in the future.
    #[error("until {until_ms} (Unix ms) is not in the future (now is {now_ms})")]
    UntilInPast {
        /// The time asked for.
        until_ms: u64,
        /// The answering device's clock.
        now_ms: u64,
    },
    /// `until_ms` lies more than [`UNTIL_MAX_AHEAD_MS`] ahead.
    #[error("until {until_ms} (Unix ms) is more than 30 days ahead")]
    UntilTooFar {
        /// The time asked for.
        until_ms: u64,
    },
    /// `until_ms` was given for lifting the hold.
    #[error("until is only for putting a hold on (held: true)")]
    UntilWithoutHold,
    /// The reason is longer than [`REASON_MAX_CHARS`].
    #[error("reason is {chars} characters long; at most {REASON_MAX_CHARS} are allowed")]
    ReasonTooLong {
        /// Its length in characters.
        chars: usize,
    },
    /// `set_by` is longer than [`SET_BY_MAX_CHARS`].
    #[error("set_by is {chars} characters long; at most {SET_BY_MAX_CHARS} are allowed")]
    SetByTooLong {
        /// Its length in characters.
        chars: usize,
    },
}

impl HoldError {
    /// The stable code a reply carries for this refusal.
    pub fn code(&self) -> SettingsErrorCode {
        match self {
            HoldError::UntilInPast { .. } => SettingsErrorCode::UntilInPast,
            HoldError::UntilTooFar { .. } => SettingsErrorCode::UntilTooFar,
            HoldError::ReasonTooLong { .. } => SettingsErrorCode::ReasonTooLong,
            HoldError::UntilWithoutHold | HoldError::SetByTooLong { .. } => {
                SettingsErrorCode::InvalidRequest
            }
        }
    }
}

impl HoldChange {
    /// Checks the change at `now_ms` (Unix ms) and makes the record to store.
    pub fn validate(&self, group: &GroupName, now_ms: u64) -> Result<HoldRecord, HoldError> {
        match (self.held, self.until_ms) {
            (false, Some(_)) => return Err(HoldError::UntilWithoutHold),
            (true, Some(until_ms)) if until_ms <= now_ms => {
                return Err(HoldError::UntilInPast { until_ms, now_ms });
            }
            (true, Some(until_ms)) if until_ms - now_ms > UNTIL_MAX_AHEAD_MS => {
                return Err(HoldError::UntilTooFar { until_ms });
            }
            _ => {}
        }
        let chars = |s: &Option<String>| s.as_deref().map_or(0, |s| s.chars().count());
        if chars(&self.reason) > REASON_MAX_CHARS {
            return Err(HoldError::ReasonTooLong {
                chars: chars(&self.reason),
            });
        }
        if chars(&self.set_by) > SET_BY_MAX_CHARS {
            return Err(HoldError::SetByTooLong {
                chars: chars(&self.set_by),
            });
        }
        let text = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
        Ok(HoldRecord {
            schema: SCHEMA_VERSION,
            group: group.clone(),
            held: self.held,
            until_ms: self.until_ms,
            reason: text(&self.reason),
            set_by: text(&self.set_by),
            since_ms: now_ms,
        })
    }
}

/// What an operator asks on `understudy.<group>.settings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SettingsOp {
    /// Put the show hold on or lift it.
    SetHold(HoldChange),
}

/// A settings request (`understudy hold on|off`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsRequest {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// What to change.
    #[serde(flatten)]
    pub op: SettingsOp,
}

impl BusMessage for SettingsRequest {
    const KIND: &'static str = "settings request";
}

/// Why a device refused a [`SettingsRequest`], as a stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettingsErrorCode {
    /// Not a settings request this device can read (not JSON, unknown `op`,
    /// a missing or mistyped field), or a field out of its rules
    /// (`until_ms` when lifting, `set_by` too long).
    InvalidRequest,
    /// A schema version this device does not speak.
    UnsupportedSchema,
    /// `until_ms` is not in the future.
    UntilInPast,
    /// `until_ms` is more than 30 days ahead.
    UntilTooFar,
    /// The reason is too long.
    ReasonTooLong,
    /// The device could not store the setting (JetStream unavailable).
    StoreUnavailable,
    /// A code this build does not know.
    #[serde(other)]
    Unknown,
}

impl SettingsErrorCode {
    /// The code as it is written on the bus.
    pub fn as_str(self) -> &'static str {
        match self {
            SettingsErrorCode::InvalidRequest => "invalid_request",
            SettingsErrorCode::UnsupportedSchema => "unsupported_schema",
            SettingsErrorCode::UntilInPast => "until_in_past",
            SettingsErrorCode::UntilTooFar => "until_too_far",
            SettingsErrorCode::ReasonTooLong => "reason_too_long",
            SettingsErrorCode::StoreUnavailable => "store_unavailable",
            SettingsErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for SettingsErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to a [`SettingsRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsReply {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// Whether the change was stored.
    pub ok: bool,
    /// Why not, as a stable code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<SettingsErrorCode>,
    /// Why not, in words for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The hold as stored, when the change was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldRecord>,
}

impl SettingsReply {
    /// The change was stored as `hold`.
    pub fn ok(hold: HoldRecord) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            ok: true,
            code: None,
            error: None,
            hold: Some(hold),
        }
    }

    /// The change was refused.
    pub fn refused(code: SettingsErrorCode, message: impl Into<String>) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            ok: false,
            code: Some(code),
            error: Some(message.into()),
            hold: None,
        }
    }

    /// The request could not be read.
    pub fn unreadable(error: &ProtocolError) -> Self {
        let code = match error {
            ProtocolError::UnsupportedSchema { .. } => SettingsErrorCode::UnsupportedSchema,
            _ => SettingsErrorCode::InvalidRequest,
        };
        Self::refused(code, error.to_string())
    }
}

impl BusMessage for SettingsReply {
    const KIND: &'static str = "settings reply";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{decode, encode};

    const NOW: u64 = 1_767_225_600_000;

    fn group() -> GroupName {
        "stage".parse().expect("group")
    }

    fn change(held: bool, until_ms: Option<u64>, reason: Option<&str>) -> HoldChange {
        HoldChange {
            held,
            until_ms,
            reason: reason.map(String::from),
            set_by: Some("ops".into()),
        }
    }

    #[test]
    fn a_hold_with_an_end_lapses_by_itself() {
        let rec = change(true, Some(NOW + 60_000), Some("show"))
            .validate(&group(), NOW)
            .expect("valid");
        assert!(rec.in_effect(NOW));
        assert_eq!(rec.lapses_in_ms(NOW), Some(60_000));
        assert!(!rec.in_effect(NOW + 60_000));
        assert_eq!(rec.since_ms, NOW);
        let lifted = change(false, None, None).validate(&group(), NOW).unwrap();
        assert!(!lifted.in_effect(NOW));
    }

    #[test]
    fn bad_changes_are_refused_with_their_code() {
        let g = group();
        let long = "x".repeat(REASON_MAX_CHARS + 1);
        for (c, code) in [
            (
                change(true, Some(NOW - 1), None),
                SettingsErrorCode::UntilInPast,
            ),
            (
                change(true, Some(NOW + UNTIL_MAX_AHEAD_MS + 1), None),
                SettingsErrorCode::UntilTooFar,
            ),
            (
                change(true, None, Some(&long)),
                SettingsErrorCode::ReasonTooLong,
            ),
            (
                change(false, Some(NOW + 1000), None),
                SettingsErrorCode::InvalidRequest,
            ),
        ] {
            let e = c.validate(&g, NOW).expect_err("refused");
            assert_eq!(e.code(), code, "{e}");
        }
    }

    #[test]
    fn the_request_reads_as_documented() {
        let json = br#"{"schema":1,"op":"set_hold","held":true,"until_ms":1767229200000,"reason":"show","set_by":"ops"}"#;
        let req: SettingsRequest = decode(json).expect("documented request");
        let SettingsOp::SetHold(c) = &req.op;
        assert!(c.held && c.until_ms == Some(1_767_229_200_000));
        assert_eq!(decode::<SettingsRequest>(&encode(&req)).unwrap(), req);
        for bad in [&b"{not json"[..], br#"{"schema":1,"op":"dance"}"#] {
            let e = decode::<SettingsRequest>(bad).expect_err("malformed");
            assert_eq!(
                SettingsReply::unreadable(&e).code,
                Some(SettingsErrorCode::InvalidRequest)
            );
        }
    }
}
