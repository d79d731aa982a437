//! Every error the gateway answers with, and its stable code and status.
//!
//! The contract (docs/control.md, docs/openapi.json): an error is
//! `{"error":{"code":"<stable_code>","message":"<human text>"}}`, on HTTP with
//! the status below and on TCP in the reply line. A client decides on the
//! code; the message is for people and may change. Nothing here is ever a
//! 500: a failure the gateway cannot blame on the request is the bus's
//! (503) or the device's (504).

use axum::http::StatusCode;
use serde_json::{Value, json};
use thiserror::Error;

/// What went wrong with a request, as told to the client.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// No token, or one the gateway does not accept, where one is needed
    /// (or a write to a gateway with no token configured).
    #[error("{0}")]
    Unauthorized(String),
    /// A valid read-only token on a call that changes something.
    #[error("{0}")]
    Forbidden(String),
    /// The body (or a TCP line) is not JSON, or a field has the wrong type.
    #[error("{0}")]
    InvalidJson(String),
    /// A score that is an integer but outside 0–255.
    #[error("{0}")]
    ScoreOutOfRange(String),
    /// A group name or device id that breaks the naming rule.
    #[error("{0}")]
    InvalidName(String),
    /// A show hold the device would not store as asked: `until` not in the
    /// future or more than 30 days ahead, `until` when lifting, a reason or
    /// `by` too long.
    #[error("{0}")]
    InvalidHold(String),
    /// The group is under a show hold and the call did not insist
    /// (`force`): an election trigger.
    #[error("{0}")]
    Held(String),
    /// No device of the group answers.
    #[error(
        "no device of group {group} answers (is the group's name right, and is any device running?)"
    )]
    UnknownGroup {
        /// The group asked about.
        group: String,
    },
    /// The group answers but this device does not.
    #[error(
        "device {device} of group {group} does not answer (it is not running or not in this group)"
    )]
    UnknownDevice {
        /// The group asked about.
        group: String,
        /// The device asked about.
        device: String,
    },
    /// A body that is not `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A body (or a TCP line) over the 16 KiB limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// An unknown path (or an unknown TCP command).
    #[error("{0}")]
    NotFound(String),
    /// A known path with a method it does not take.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// An event-stream path asked for without a WebSocket upgrade.
    #[error("{0}")]
    UpgradeRequired(String),
    /// The device (or group) was reached but did not answer in time.
    #[error("{0}")]
    DeviceUnavailable(String),
    /// The gateway is not connected to NATS, or the bus failed the request.
    #[error("{0}")]
    BusUnavailable(String),
}

impl ApiError {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::ScoreOutOfRange(_) => "score_out_of_range",
            ApiError::InvalidName(_) => "invalid_name",
            ApiError::InvalidHold(_) => "invalid_hold",
            ApiError::Held(_) => "held",
            ApiError::UnknownGroup { .. } => "unknown_group",
            ApiError::UnknownDevice { .. } => "unknown_device",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::UpgradeRequired(_) => "upgrade_required",
            ApiError::DeviceUnavailable(_) => "device_unavailable",
            ApiError::BusUnavailable(_) => "bus_unavailable",
        }
    }

    /// The HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::InvalidJson(_) | ApiError::InvalidName(_) => StatusCode::BAD_REQUEST,
            ApiError::ScoreOutOfRange(_) | ApiError::InvalidHold(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Held(_) => StatusCode::CONFLICT,
            ApiError::UnknownGroup { .. } | ApiError::UnknownDevice { .. } => StatusCode::NOT_FOUND,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UpgradeRequired(_) => StatusCode::UPGRADE_REQUIRED,
            ApiError::DeviceUnavailable(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::BusUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// `{"code": …, "message": …}`, the inside of an error answer.
    pub fn body(&self) -> Value {
        json!({ "code": self.code(), "message": self.to_string() })
    }

    /// `{"error": {"code": …, "message": …}}`, the whole HTTP error body.
    pub fn document(&self) -> Value {
        json!({ "error": self.body() })
    }
}

/// An error of the gateway as a whole: it could not start or keep running.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// A listen address could not be bound.
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        /// Which listener (`--listen`, `--tcp-listen`).
        what: &'static str,
        /// The address given.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// A setting is invalid.
    #[error("{0}")]
    Config(String),
    /// NATS could not be reached or the address is invalid.
    #[error("cannot connect to NATS at {url}: {detail}")]
    Connect {
        /// The address(es) given.
        url: String,
        /// Why.
        detail: String,
    },
    /// A server stopped with an I/O error.
    #[error("the {what} server failed: {source}")]
    Serve {
        /// Which server (HTTP, TCP).
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_a_4xx_or_the_bus_or_device_timeouts() {
        let all = [
            ApiError::Unauthorized(String::new()),
            ApiError::Forbidden(String::new()),
            ApiError::InvalidJson(String::new()),
            ApiError::ScoreOutOfRange(String::new()),
            ApiError::InvalidName(String::new()),
            ApiError::InvalidHold(String::new()),
            ApiError::Held(String::new()),
            ApiError::UnknownGroup { group: "g".into() },
            ApiError::UnknownDevice {
                group: "g".into(),
                device: "d".into(),
            },
            ApiError::UnsupportedMediaType(String::new()),
            ApiError::PayloadTooLarge(String::new()),
            ApiError::NotFound(String::new()),
            ApiError::MethodNotAllowed(String::new()),
            ApiError::UpgradeRequired(String::new()),
            ApiError::DeviceUnavailable(String::new()),
            ApiError::BusUnavailable(String::new()),
        ];
        for e in all {
            let s = e.status().as_u16();
            assert!(
                (400..500).contains(&s) || s == 503 || s == 504,
                "{e:?} -> {s}"
            );
            assert_eq!(e.document()["error"]["code"], e.code());
        }
    }
}
