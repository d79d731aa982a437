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
//!   ([`ControlErrorCode`]), never by its wording: see [`refused`].

use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use understudy_protocol::messages::{
    self, ControlErrorCode, ControlOp, ControlReply, ControlRequest, ElectionState, Refusal,
    Trigger,
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
    /// that the group answers at all).
    pub async fn trigger(&self, group: &GroupName, by: &str) -> Result<(), ApiError> {
        self.roster(group).await?;
        let t = Trigger {
            schema: SCHEMA_VERSION,
            by: Some(by.to_owned()),
            force: false,
        };
        self.client
            .publish(subjects::trigger(group), messages::encode(&t).into())
            .await
            .map_err(|e| ApiError::BusUnavailable(format!("publishing the trigger: {e}")))?;
        tokio::time::timeout(ANSWER_WITHIN, self.client.flush())
            .await
            .map_err(|_| {
                ApiError::BusUnavailable("the bus did not take the trigger in time".into())
            })?
            .map_err(|e| ApiError::BusUnavailable(format!("publishing the trigger: {e}")))
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
