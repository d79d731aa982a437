//! The gateway's side of the bus: the same requests `understudy status`,
//! `score`, `online`/`offline` and `election trigger` make (docs/bus.md,
//! "Control"), with their failures turned into the contract's error codes.
//!
//! - The bus is not connected → `bus_unavailable` (503), at once.
//! - Nobody subscribes to the subject (NATS "no responders") → the group, or
//!   the device, is unknown (404): a roster request tells which.
//! - Somebody is there but does not answer within [`ANSWER_WITHIN`] →
//!   `device_unavailable` (504).
//! - A device refuses a control request → by the reply's code
//!   ([`ControlErrorCode`]), never by its wording: see [`refused`]; a hold
//!   change likewise by its [`SettingsErrorCode`]: see [`settings_refused`].
//! - A trigger the group does not act on because it is held → `held` (409).
//!
//! The show hold, the election ledger and `why` are read from JetStream,
//! not asked of a device: they answer with no device running, and a group
//! that never had a hold or a ledger has none (not `unknown_group`).

use std::time::Duration;

use async_nats::jetstream::{self, context::GetStreamErrorKind};
use async_nats::{Client, RequestErrorKind};
use understudy_bus::ledger::{LedgerError, LedgerPage, LedgerQuery, read_ledger};
use understudy_bus::why::Why;
use understudy_protocol::hold::{
    HoldChange, HoldRecord, SettingsErrorCode, SettingsOp, SettingsReply, SettingsRequest,
};
use understudy_protocol::messages::{
    self, ControlErrorCode, ControlOp, ControlReply, ControlRequest, ElectionState, Refusal,
    Trigger, TriggerReply,
};
use understudy_protocol::roster::RosterReply;
use understudy_protocol::{DeviceId, GroupName, SCHEMA_VERSION, subjects};

use crate::ApiError;

/// How long a device (or a group's discovery service) has to answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// Requests to the devices of any group, over one NATS connection.
#[derive(Debug, Clone)]
pub struct BusApi {
    client: Client,
}

/// Why a request got no answer.
enum NoAnswer {
    NoResponders,
    TimedOut,
    Bus(String),
}

impl BusApi {
    /// Wraps a NATS client.
    pub fn new(client: Client) -> BusApi {
        BusApi { client }
    }

    /// The NATS client (for JetStream and presence).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A JetStream context on the same connection (for the event stream).
    pub fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client.clone())
    }

    /// Fails with `bus_unavailable` unless the client is connected now.
    pub fn ensure_connected(&self) -> Result<(), ApiError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            other => Err(ApiError::BusUnavailable(format!(
                "the gateway is not connected to NATS ({other}); try again when the bus is back"
            ))),
        }
    }

    async fn request(&self, subject: String, payload: Vec<u8>) -> Result<Vec<u8>, NoAnswer> {
        let mut headers = async_nats::HeaderMap::new();
        understudy_telemetry::trace::inject_nats(&tracing::Span::current(), &mut headers);
        let asked = tokio::time::timeout(
            ANSWER_WITHIN,
            self.client
                .request_with_headers(subject, headers, payload.into()),
        )
        .await;
        match asked {
            Err(_) => Err(NoAnswer::TimedOut),
            Ok(Err(e)) => Err(match e.kind() {
                RequestErrorKind::NoResponders => NoAnswer::NoResponders,
                RequestErrorKind::TimedOut => NoAnswer::TimedOut,
                _ => NoAnswer::Bus(e.to_string()),
            }),
            Ok(Ok(msg)) => Ok(msg.payload.to_vec()),
        }
    }

    /// The group's roster (`understudy status --json`), as the first device
    /// that answers sees it.
    pub async fn roster(&self, group: &GroupName) -> Result<RosterReply, ApiError> {
        self.ensure_connected()?;
        match self.request(subjects::roster(group), Vec::new()).await {
            Ok(payload) => messages::decode(&payload).map_err(|e| {
                ApiError::DeviceUnavailable(format!(
                    "group {group} answered with a roster this gateway cannot read: {e}"
                ))
            }),
            Err(NoAnswer::NoResponders) => Err(ApiError::UnknownGroup {
                group: group.to_string(),
            }),
            Err(NoAnswer::TimedOut) => Err(ApiError::DeviceUnavailable(format!(
                "no device of group {group} answered within {} s",
                ANSWER_WITHIN.as_secs()
            ))),
            Err(NoAnswer::Bus(e)) => Err(ApiError::BusUnavailable(format!(
                "asking group {group} for its roster: {e}"
            ))),
        }
    }

    /// Sends a control request to one device and returns its state after it.
    pub async fn control(
        &self,
        group: &GroupName,
        device: &DeviceId,
        op: ControlOp,
    ) -> Result<ElectionState, ApiError> {
        self.ensure_connected()?;
        let req = ControlRequest {
            schema: SCHEMA_VERSION,
            op,
            set_by: Some("gateway".to_owned()),
        };
        let payload = match self
            .request(subjects::control(group, device), messages::encode(&req))
            .await
        {
            Ok(p) => p,
            Err(NoAnswer::NoResponders) => {
                // Is it the device or the whole group that is missing?
                return Err(match self.roster(group).await {
                    Err(e @ ApiError::UnknownGroup { .. }) => e,
                    _ => ApiError::UnknownDevice {
                        group: group.to_string(),
                        device: device.to_string(),
                    },
                });
            }
            Err(NoAnswer::TimedOut) => {
                return Err(ApiError::DeviceUnavailable(format!(
                    "device {device} of group {group} did not answer within {} s",
                    ANSWER_WITHIN.as_secs()
                )));
            }
            Err(NoAnswer::Bus(e)) => {
                return Err(ApiError::BusUnavailable(format!(
                    "asking device {device} of group {group}: {e}"
                )));
            }
        };
        let reply: ControlReply = messages::decode(&payload).map_err(|e| {
            ApiError::DeviceUnavailable(format!("device {device} answered unreadably: {e}"))
        })?;
        if let Some(refusal) = reply.refusal() {
            return Err(refused(device, &refusal));
        }
        reply.state.ok_or_else(|| {
            ApiError::DeviceUnavailable(format!("device {device} answered without its state"))
        })
    }

    /// Asks every device of the group to hold an election (after checking
    /// that the group answers at all), as a request: the first device's
    /// [`TriggerReply`] says whether the group took it. Without `force`, a
    /// group under a show hold does not: `held` (409).
    pub async fn trigger(
        &self,
        group: &GroupName,
        by: &str,
        force: bool,
    ) -> Result<TriggerReply, ApiError> {
        self.roster(group).await?;
        let t = Trigger {
            schema: SCHEMA_VERSION,
            by: Some(by.to_owned()),
            force,
        };
        let payload = self
            .request(subjects::trigger(group), messages::encode(&t))
            .await
            .map_err(|e| self.no_answer(group, "election trigger", e))?;
        let reply: TriggerReply = messages::decode(&payload).map_err(|e| {
            ApiError::DeviceUnavailable(format!(
                "group {group} answered the trigger unreadably: {e}"
            ))
        })?;
        if !reply.acted {
            return Err(ApiError::Held(format!(
                "the group {group} is held (show hold): no election was triggered; \
                 use force to trigger one anyway, or lift the hold"
            )));
        }
        Ok(reply)
    }

    /// Puts the group's show hold on or lifts it: a settings request one
    /// device of the group answers (docs/bus.md, "The show hold"); the hold
    /// as stored.
    pub async fn set_hold(
        &self,
        group: &GroupName,
        change: HoldChange,
    ) -> Result<HoldRecord, ApiError> {
        self.ensure_connected()?;
        let req = SettingsRequest {
            schema: SCHEMA_VERSION,
            op: SettingsOp::SetHold(change),
        };
        let payload = match self
            .request(subjects::settings(group), messages::encode(&req))
            .await
        {
            Ok(p) => p,
            Err(NoAnswer::NoResponders) => {
                // The whole group missing, or only its election services?
                self.roster(group).await?;
                return Err(ApiError::DeviceUnavailable(format!(
                    "group {group} answers, but none of its devices takes settings requests \
                     (are they older than the show hold?)"
                )));
            }
            Err(e) => return Err(self.no_answer(group, "hold change", e)),
        };
        let reply: SettingsReply = messages::decode(&payload).map_err(|e| {
            ApiError::DeviceUnavailable(format!(
                "group {group} answered the hold change unreadably: {e}"
            ))
        })?;
        match (reply.ok, reply.hold) {
            (true, Some(record)) => Ok(record),
            (true, None) => Err(ApiError::DeviceUnavailable(format!(
                "group {group} stored the hold but sent no record back"
            ))),
            (false, _) => Err(settings_refused(
                group,
                reply.code.unwrap_or(SettingsErrorCode::Unknown),
                reply.error.as_deref().unwrap_or("no reason given"),
            )),
        }
    }

    /// The group's show hold as stored in its settings bucket (`None`:
    /// never set, or no bucket yet). Read from JetStream, so it works with
    /// no device running.
    pub async fn hold(&self, group: &GroupName) -> Result<Option<HoldRecord>, ApiError> {
        self.ensure_connected()?;
        let js = self.jetstream();
        let bucket = subjects::settings_bucket(group);
        let slow = || {
            ApiError::BusUnavailable(format!(
                "JetStream did not answer within {} s reading the hold",
                ANSWER_WITHIN.as_secs()
            ))
        };
        let stream = tokio::time::timeout(ANSWER_WITHIN, js.get_stream(format!("KV_{bucket}")))
            .await
            .map_err(|_| slow())?;
        match stream {
            Ok(_) => {}
            Err(e) => {
                if let GetStreamErrorKind::JetStream(js_err) = e.kind()
                    && js_err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                {
                    // No bucket: no hold was ever set in this group.
                    return Ok(None);
                }
                return Err(ApiError::BusUnavailable(format!(
                    "cannot read the settings bucket {bucket}: {e}"
                )));
            }
        }
        let store = tokio::time::timeout(ANSWER_WITHIN, js.get_key_value(&bucket))
            .await
            .map_err(|_| slow())?
            .map_err(|e| {
                ApiError::BusUnavailable(format!("cannot open the settings bucket {bucket}: {e}"))
            })?;
        let entry = tokio::time::timeout(ANSWER_WITHIN, store.entry(subjects::HOLD_KEY))
            .await
            .map_err(|_| slow())?
            .map_err(|e| {
                ApiError::BusUnavailable(format!("cannot read the hold from {bucket}: {e}"))
            })?;
        match entry {
            Some(e) if e.operation == jetstream::kv::Operation::Put => {
                messages::decode(&e.value).map(Some).map_err(|e| {
                    ApiError::DeviceUnavailable(format!(
                        "the hold stored in {bucket} is unreadable: {e}"
                    ))
                })
            }
            _ => Ok(None),
        }
    }

    /// Entries of the group's election ledger, as `query` asks (read from
    /// its stream, so it works with no device running). A group with no
    /// ledger stream yet has no entries.
    pub async fn ledger(
        &self,
        group: &GroupName,
        query: LedgerQuery,
    ) -> Result<LedgerPage, ApiError> {
        self.ensure_connected()?;
        match read_ledger(&self.jetstream(), group, query).await {
            Ok(page) => Ok(page),
            Err(LedgerError::NoLedger(_)) => Ok(LedgerPage {
                entries: Vec::new(),
                more: false,
                unreadable: 0,
            }),
            Err(e) => Err(ledger_error(e)),
        }
    }

    /// Why the group's server serves, as of `now_ms`: its lease, hold and
    /// ledger, read and explained as `understudy why` does.
    pub async fn why(&self, group: &GroupName, now_ms: u64) -> Result<Why, ApiError> {
        self.ensure_connected()?;
        understudy_bus::why::why(&self.jetstream(), group, now_ms)
            .await
            .map_err(ledger_error)
    }

    /// The error for a group request (not to one device) nobody answered.
    fn no_answer(&self, group: &GroupName, what: &str, e: NoAnswer) -> ApiError {
        match e {
            NoAnswer::NoResponders => ApiError::UnknownGroup {
                group: group.to_string(),
            },
            NoAnswer::TimedOut => ApiError::DeviceUnavailable(format!(
                "no device of group {group} answered the {what} within {} s",
                ANSWER_WITHIN.as_secs()
            )),
            NoAnswer::Bus(e) => {
                ApiError::BusUnavailable(format!("sending group {group} the {what}: {e}"))
            }
        }
    }
}

/// A failed ledger read as told to the client: JetStream's failure is the
/// bus's (503).
fn ledger_error(e: LedgerError) -> ApiError {
    match e {
        LedgerError::BadLimit(_) => ApiError::InvalidJson(e.to_string()),
        LedgerError::NoLedger(_) | LedgerError::Unavailable { .. } => {
            ApiError::BusUnavailable(e.to_string())
        }
    }
}

/// The answer to a client whose hold change a device refused, chosen by the
/// reply's code; the device's own words become the message.
pub fn settings_refused(group: &GroupName, code: SettingsErrorCode, message: &str) -> ApiError {
    let message = format!("group {group} refused the hold change: {message}");
    match code {
        SettingsErrorCode::UntilInPast
        | SettingsErrorCode::UntilTooFar
        | SettingsErrorCode::ReasonTooLong => ApiError::InvalidHold(message),
        SettingsErrorCode::StoreUnavailable => ApiError::BusUnavailable(message),
        SettingsErrorCode::InvalidRequest
        | SettingsErrorCode::UnsupportedSchema
        | SettingsErrorCode::Unknown => ApiError::InvalidJson(message),
    }
}

/// The answer to a client whose request a device refused, chosen by the
/// refusal's code; the device's own words become the message.
pub fn refused(device: &DeviceId, refusal: &Refusal) -> ApiError {
    let message = format!("device {device} refused: {}", refusal.message);
    match refusal.code {
        ControlErrorCode::ScoreOutOfRange => ApiError::ScoreOutOfRange(message),
        ControlErrorCode::InvalidRequest
        | ControlErrorCode::UnsupportedSchema
        | ControlErrorCode::Unknown => ApiError::InvalidJson(message),
        ControlErrorCode::StoreUnavailable => ApiError::BusUnavailable(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: ControlErrorCode, message: &str) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }

    #[test]
    fn a_refused_hold_change_is_answered_by_its_code() {
        let g: GroupName = "stage".parse().expect("a group");
        for (code, api) in [
            (SettingsErrorCode::UntilInPast, "invalid_hold"),
            (SettingsErrorCode::UntilTooFar, "invalid_hold"),
            (SettingsErrorCode::ReasonTooLong, "invalid_hold"),
            (SettingsErrorCode::InvalidRequest, "invalid_json"),
            (SettingsErrorCode::Unknown, "invalid_json"),
            (SettingsErrorCode::StoreUnavailable, "bus_unavailable"),
        ] {
            let e = settings_refused(&g, code, "words");
            assert_eq!(e.code(), api, "{code}");
            assert!(e.to_string().ends_with("words"), "{e}");
        }
    }

    #[test]
    fn a_refusal_is_answered_by_its_code_not_its_wording() {
        let dev: DeviceId = "dev-1".parse().expect("a device id");
        let e = refused(
            &dev,
            &refusal(ControlErrorCode::ScoreOutOfRange, "that will not do"),
        );
        assert_eq!(e.code(), "score_out_of_range");
        assert_eq!(e.to_string(), "device dev-1 refused: that will not do");
        let e = refused(
            &dev,
            &refusal(
                ControlErrorCode::InvalidRequest,
                "score 300 is out of range",
            ),
        );
        assert_eq!(e.code(), "invalid_json");
        for code in [
            ControlErrorCode::UnsupportedSchema,
            ControlErrorCode::Unknown,
        ] {
            assert_eq!(refused(&dev, &refusal(code, "x")).code(), "invalid_json");
        }
    }
}
