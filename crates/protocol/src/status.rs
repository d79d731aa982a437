//! What a device shows: its role, its status colour and its problems (B1, B2).

use std::fmt;

use serde::{Deserialize, Serialize};

/// What an online device does in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs on a copy of the project served by someone else.
    Client,
    /// Holds the lease and serves the project file.
    Server,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Server => "server",
        })
    }
}

/// The colour an operator sees beside a device (B2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusColour {
    /// Offline: out of any group; what is shown may be residual.
    Grey,
    /// Online, and the group has a live server.
    Blue,
    /// Online with at least one problem.
    Red,
}

impl fmt::Display for StatusColour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StatusColour::Grey => "grey",
            StatusColour::Blue => "blue",
            StatusColour::Red => "red",
        })
    }
}

/// Something wrong that turns a device red (B2). `Display` gives the text an
/// operator reads; the serialised form carries a stable `code` and the details.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Problem {
    /// Nobody serves the project group.
    NoServer,
    /// Some peers this device expects are silent.
    MissingPeers {
        /// How many peers were expected.
        expected: u32,
        /// How many are heard.
        actual: u32,
    },
    /// The device cannot reach NATS.
    BusUnreachable,
    /// Another process uses this device's id.
    DuplicateDeviceId,
    /// A project change made while there was no server conflicted on submit.
    ProjectConflict {
        /// How many changes wait for an operator.
        changes: u32,
    },
    /// A problem whose code this build does not know (a newer device
    /// reported it); decoding keeps the rest of the message.
    #[serde(other)]
    Unknown,
}

impl Problem {
    /// The problem's stable `code`, as serialised (and as the
    /// `understudy_problems{problem}` label spells it).
    pub fn code(&self) -> &'static str {
        match self {
            Problem::NoServer => "no_server",
            Problem::MissingPeers { .. } => "missing_peers",
            Problem::BusUnreachable => "bus_unreachable",
            Problem::DuplicateDeviceId => "duplicate_device_id",
            Problem::ProjectConflict { .. } => "project_conflict",
            Problem::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NoServer => f.write_str("Project group has no server"),
            Problem::MissingPeers { expected, actual } => write!(
                f,
                "Not receiving peer data from {} peer(s): expected {expected}, actual {actual}",
                expected.saturating_sub(*actual)
            ),
            Problem::BusUnreachable => f.write_str("Cannot reach the message bus"),
            Problem::DuplicateDeviceId => f.write_str("Duplicate device id"),
            Problem::ProjectConflict { changes } => {
                write!(
                    f,
                    "{changes} project change(s) conflict with the server's copy"
                )
            }
            Problem::Unknown => f.write_str("A problem this version does not know"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problems_code_is_its_serialised_code() {
        for p in [
            Problem::NoServer,
            Problem::MissingPeers {
                expected: 2,
                actual: 1,
            },
            Problem::BusUnreachable,
            Problem::DuplicateDeviceId,
            Problem::ProjectConflict { changes: 1 },
        ] {
            let json = serde_json::to_value(&p).expect("serialisable");
            assert_eq!(json["code"], p.code(), "{p:?}");
        }
    }

    #[test]
    fn problems_read_as_the_design_says() {
        assert_eq!(Problem::NoServer.to_string(), "Project group has no server");
        assert_eq!(
            Problem::MissingPeers {
                expected: 4,
                actual: 2
            }
            .to_string(),
            "Not receiving peer data from 2 peer(s): expected 4, actual 2"
        );
        assert_eq!(
            Problem::BusUnreachable.to_string(),
            "Cannot reach the message bus"
        );
        assert_eq!(
            Problem::DuplicateDeviceId.to_string(),
            "Duplicate device id"
        );
    }

    #[test]
    fn a_problem_code_from_a_newer_device_still_decodes() {
        let p: Problem =
            serde_json::from_value(serde_json::json!({"code": "disk_full", "free": 0})).unwrap();
        assert_eq!(p, Problem::Unknown);
    }

    #[test]
    fn problems_serialise_with_a_stable_code() {
        let json = serde_json::to_value(Problem::MissingPeers {
            expected: 3,
            actual: 1,
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"code": "missing_peers", "expected": 3, "actual": 1})
        );
    }
}
