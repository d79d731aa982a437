//! Typed errors for everything that is validated at the edge.

use thiserror::Error;

/// What was wrong with a value that came from outside: a person, a file or the bus.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// A group name broke the naming rule.
    #[error("group name {value:?} is invalid: {reason}")]
    InvalidGroupName {
        /// The rejected text.
        value: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A device id broke the naming rule.
    #[error("device id {value:?} is invalid: {reason}")]
    InvalidDeviceId {
        /// The rejected text.
        value: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// An instance id was not 1–16 hexadecimal digits.
    #[error("instance id {value:?} is invalid: expected 1–16 hexadecimal digits")]
    InvalidInstanceId {
        /// The rejected text.
        value: String,
    },
    /// A MAC address was not six hexadecimal octets.
    #[error(
        "MAC address {value:?} is invalid: expected six hexadecimal octets like aa:bb:cc:dd:ee:ff"
    )]
    InvalidMac {
        /// The rejected text.
        value: String,
    },
    /// A score outside 0–255, or not an integer at all.
    #[error("score {value} is out of range 0–255")]
    ScoreOutOfRange {
        /// The rejected value, as it was written.
        value: String,
    },
    /// A message carried a schema version this build does not speak.
    #[error(
        "message schema version {found} is not supported (this build speaks version {supported})"
    )]
    UnsupportedSchema {
        /// The version in the message.
        found: u32,
        /// The version this build writes and reads.
        supported: u32,
    },
    /// A message could not be decoded; the text names the field.
    #[error("malformed {kind} message: {detail}")]
    Malformed {
        /// Which message was being decoded.
        kind: &'static str,
        /// The decoder's explanation, which names the offending field.
        detail: String,
    },
}
