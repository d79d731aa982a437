//! Durable operator settings of one device: its run-time score and
//! online/offline, as an operator last set them.
//!
//! When a device's election service carries out a [`ControlOp::SetScore`],
//! [`ControlOp::SetOnline`] or [`ControlOp::ResetScore`] (whatever path the
//! operator took: CLI, gateway HTTP, TCP), it first stores the device's
//! [`DeviceSetting`] as key `device.<id>` ([`crate::subjects::device_setting_key`])
//! of the group's settings bucket `understudy-settings-<group>`, and only
//! then applies it and answers. A device that starts reads its key before
//! its start-up grace ends and applies it over its start-up `--score` /
//! `--offline`, so an operator's choice survives a restart. A field left
//! `None` means "as configured at start-up".
//!
//! [`ControlOp::SetScore`]: crate::messages::ControlOp::SetScore
//! [`ControlOp::SetOnline`]: crate::messages::ControlOp::SetOnline
//! [`ControlOp::ResetScore`]: crate::messages::ControlOp::ResetScore

use serde::{Deserialize, Serialize};

use crate::messages::{BusMessage, ControlOp, SCHEMA_VERSION};
use crate::{DeviceId, GroupName, Score};

/// One device's operator settings as stored (JSON, value of key
/// `device.<id>` in the bucket `understudy-settings-<group>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSetting {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The group.
    pub group: GroupName,
    /// The device.
    pub device: DeviceId,
    /// The score an operator set; `None`: the configured score applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<Score>,
    /// Online (`true`) or offline as an operator set it; `None`: as
    /// configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// Who made the last change (a person, a tool), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_by: Option<String>,
    /// When the last change was stored, Unix milliseconds (the device's
    /// clock).
    pub set_at_ms: u64,
}

impl BusMessage for DeviceSetting {
    const KIND: &'static str = "device setting";
}

impl DeviceSetting {
    /// Nothing set yet for `device`.
    pub fn empty(group: &GroupName, device: &DeviceId) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            group: group.clone(),
            device: device.clone(),
            score: None,
            online: None,
            set_by: None,
            set_at_ms: 0,
        }
    }

    /// This setting changed by `op`, by `set_by` at `now_ms`; `None` for an
    /// op that changes no setting ([`ControlOp::Get`]).
    pub fn changed(&self, op: &ControlOp, set_by: Option<String>, now_ms: u64) -> Option<Self> {
        let mut next = self.clone();
        match op {
            ControlOp::SetScore { score } => next.score = Some(*score),
            ControlOp::ResetScore => next.score = None,
            ControlOp::SetOnline { online } => next.online = Some(*online),
            ControlOp::Get => return None,
        }
        next.schema = SCHEMA_VERSION;
        next.set_by = set_by.filter(|s| !s.trim().is_empty());
        next.set_at_ms = now_ms;
        Some(next)
    }

    /// The score in effect, given the configured one.
    pub fn score_or(&self, configured: Score) -> Score {
        self.score.unwrap_or(configured)
    }

    /// Online or not in effect, given the configured state.
    pub fn online_or(&self, configured: bool) -> bool {
        self.online.unwrap_or(configured)
    }
}

/// What a device runs with: the operator's stored settings where set,
/// the start-up configuration (`--score`, `--offline`) elsewhere. This is
/// the whole precedence rule; the election driver applies its result.
pub fn effective(
    stored: Option<&DeviceSetting>,
    configured_score: Score,
    configured_online: bool,
) -> (Score, bool) {
    match stored {
        Some(r) => (r.score_or(configured_score), r.online_or(configured_online)),
        None => (configured_score, configured_online),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{decode, encode};

    #[test]
    fn the_record_reads_as_documented() {
        let json = br#"{"schema":1,"group":"stage","device":"dev-1","score":0,"online":false,"set_by":"ops","set_at_ms":1767225600000}"#;
        let rec: DeviceSetting = decode(json).expect("documented record");
        assert_eq!(rec.score, Some(Score::CLIENT_ONLY));
        assert_eq!(rec.online, Some(false));
        assert_eq!(decode::<DeviceSetting>(&encode(&rec)).unwrap(), rec);
    }

    #[test]
    fn control_requests_carry_reset_and_who_asks() {
        use crate::messages::ControlRequest;
        let req: ControlRequest =
            decode(br#"{"schema":1,"op":"reset_score","set_by":"ops"}"#).expect("reset");
        assert_eq!(req.op, ControlOp::ResetScore);
        assert_eq!(req.set_by.as_deref(), Some("ops"));
        let long = format!(
            r#"{{"schema":1,"op":"set_score","score":1,"set_by":"{}"}}"#,
            "x".repeat(crate::hold::SET_BY_MAX_CHARS + 1)
        );
        let e = decode::<ControlRequest>(long.as_bytes()).expect_err("too long");
        assert_eq!(
            crate::ControlErrorCode::from(&e),
            crate::ControlErrorCode::InvalidRequest,
            "{e}"
        );
    }

    #[test]
    fn a_reset_returns_the_configured_score_and_keeps_online() {
        let g: GroupName = "stage".parse().unwrap();
        let d: DeviceId = "dev-1".parse().unwrap();
        let set = DeviceSetting::empty(&g, &d)
            .changed(
                &ControlOp::SetScore {
                    score: Score::CLIENT_ONLY,
                },
                Some("ops".into()),
                5,
            )
            .and_then(|s| s.changed(&ControlOp::SetOnline { online: false }, None, 6))
            .expect("changed");
        assert_eq!(set.score_or(Score::new(200)), Score::CLIENT_ONLY);
        assert!(!set.online_or(true));
        let reset = set.changed(&ControlOp::ResetScore, None, 7).expect("reset");
        assert_eq!(reset.score_or(Score::new(200)), Score::new(200));
        assert!(!reset.online_or(true));
        assert_eq!(reset.set_at_ms, 7);
        assert!(set.changed(&ControlOp::Get, None, 8).is_none());
    }

    #[test]
    fn stored_settings_win_field_by_field_over_the_configuration() {
        let g: GroupName = "g".parse().unwrap();
        let d: DeviceId = "d".parse().unwrap();
        let (cfg_score, cfg_online) = (Score::new(200), true);
        assert_eq!(effective(None, cfg_score, cfg_online), (cfg_score, true));
        let mut r = DeviceSetting::empty(&g, &d);
        assert_eq!(
            effective(Some(&r), cfg_score, cfg_online),
            (cfg_score, true),
            "nothing set: as configured"
        );
        r.score = Some(Score::new(0));
        assert_eq!(
            effective(Some(&r), cfg_score, cfg_online),
            (Score::new(0), true),
            "a stored score 0 wins over --score 200; online stays as configured"
        );
        r.online = Some(false);
        assert_eq!(
            effective(Some(&r), cfg_score, cfg_online),
            (Score::new(0), false)
        );
        r.score = None;
        assert_eq!(
            effective(Some(&r), cfg_score, cfg_online),
            (cfg_score, false),
            "after a score reset the configured score is back; offline stays"
        );
    }
}
