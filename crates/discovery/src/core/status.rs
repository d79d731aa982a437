//! This device's status colour and problems (B1, B2).
//!
//! - **Offline** (B1) is grey, whatever else is true: an offline device is out
//!   of any group, so nothing is computed for it. Anything it shows beside the
//!   grey may be residual from when it was online.
//! - **Online** devices list their problems in a fixed order, most fundamental
//!   first: [`Problem::BusUnreachable`], [`Problem::DuplicateDeviceId`],
//!   [`Problem::NoServer`] (no live, online device of the group — this one
//!   included — acts as server), [`Problem::MissingPeers`] (fewer expected
//!   peers are live than the group expects), [`Problem::ProjectConflict`]
//!   (project changes made here were refused with a conflict, B11).
//! - **Colour** follows from the list: blue when it is empty (the group has a
//!   live server and nothing is wrong), red otherwise, so every red carries at
//!   least one human-readable problem.
//!
//! [`assess`] is the whole rule as a pure function of [`Findings`]; the roster
//! gathers the findings (see `Discovery::status`).

use serde::{Deserialize, Serialize};
use understudy_protocol::{GroupName, Mac, Problem, Role, Score, StatusColour, Term};

/// What this device knows about itself, from its own configuration and from the
/// election service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfState {
    /// The group this device belongs to (it keeps the group while offline).
    pub group: GroupName,
    /// Whether it is online (B1).
    pub online: bool,
    /// Whether it acts as server.
    pub role: Role,
    /// The newest term it knows.
    pub term: Term,
    /// Its score (B3).
    pub score: Score,
    /// Its MAC.
    pub mac: Mac,
    /// Whether it is still in its start-up grace (B6).
    pub in_grace: bool,
}

/// What the roster and the bus say about this device's situation, as input to
/// [`assess`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Findings {
    /// Whether the driver holds a connection to the message bus.
    pub bus_connected: bool,
    /// Whether another live process claims this device's id.
    pub duplicate_id: bool,
    /// Whether a live, online device of the group (this one included) acts as
    /// server.
    pub server_live: bool,
    /// How many peers the group expects (this device excluded).
    pub expected_peers: u32,
    /// How many of those peers are live.
    pub live_peers: u32,
    /// How many project changes of this device were refused with a conflict
    /// and wait for an operator (from the project-sync service).
    #[serde(default)]
    pub project_conflicts: u32,
}

/// A device's colour and the problems behind it (B2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Grey, blue or red.
    pub colour: StatusColour,
    /// Why it is red; empty unless it is red.
    pub problems: Vec<Problem>,
}

impl Status {
    /// The status of an offline device: grey, nothing computed.
    pub fn offline() -> Self {
        Self {
            colour: StatusColour::Grey,
            problems: Vec::new(),
        }
    }

    /// The status of an online device with these problems: blue if there are
    /// none, red otherwise.
    pub fn online(problems: Vec<Problem>) -> Self {
        let colour = if problems.is_empty() {
            StatusColour::Blue
        } else {
            StatusColour::Red
        };
        Self { colour, problems }
    }
}

/// The status of a device that is `online` (or not) given `findings` (B1, B2).
pub fn assess(online: bool, findings: &Findings) -> Status {
    if !online {
        return Status::offline();
    }
    let mut problems = Vec::new();
    if !findings.bus_connected {
        problems.push(Problem::BusUnreachable);
    }
    if findings.duplicate_id {
        problems.push(Problem::DuplicateDeviceId);
    }
    if !findings.server_live {
        problems.push(Problem::NoServer);
    }
    if findings.live_peers < findings.expected_peers {
        problems.push(Problem::MissingPeers {
            expected: findings.expected_peers,
            actual: findings.live_peers,
        });
    }
    if findings.project_conflicts > 0 {
        problems.push(Problem::ProjectConflict {
            changes: findings.project_conflicts,
        });
    }
    Status::online(problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn healthy() -> Findings {
        Findings {
            bus_connected: true,
            duplicate_id: false,
            server_live: true,
            expected_peers: 2,
            live_peers: 2,
            project_conflicts: 0,
        }
    }

    #[test]
    fn offline_is_grey_with_nothing_computed() {
        let all_wrong = Findings::default();
        assert_eq!(assess(false, &all_wrong), Status::offline());
    }

    #[test]
    fn healthy_online_device_is_blue() {
        let s = assess(true, &healthy());
        assert_eq!(s.colour, StatusColour::Blue);
        assert!(s.problems.is_empty());
    }

    #[test]
    fn problems_come_in_a_fixed_order() {
        let s = assess(
            true,
            &Findings {
                expected_peers: 3,
                live_peers: 1,
                ..Findings::default()
            },
        );
        assert_eq!(s.colour, StatusColour::Red);
        assert_eq!(
            s.problems,
            vec![
                Problem::BusUnreachable,
                Problem::NoServer,
                Problem::MissingPeers {
                    expected: 3,
                    actual: 1
                }
            ]
        );
    }

    #[test]
    fn conflicted_project_changes_turn_a_device_red() {
        let s = assess(
            true,
            &Findings {
                project_conflicts: 2,
                ..healthy()
            },
        );
        assert_eq!(s.colour, StatusColour::Red);
        assert_eq!(s.problems, vec![Problem::ProjectConflict { changes: 2 }]);
        assert_eq!(
            s.problems[0].to_string(),
            "2 project change(s) conflict with the server's copy"
        );
    }

    #[test]
    fn more_live_peers_than_expected_is_not_a_problem() {
        let s = assess(
            true,
            &Findings {
                expected_peers: 1,
                live_peers: 4,
                ..healthy()
            },
        );
        assert_eq!(s.colour, StatusColour::Blue);
    }

    proptest! {
        #[test]
        fn colour_follows_online_and_problems(
            online: bool,
            bus_connected: bool,
            duplicate_id: bool,
            server_live: bool,
            expected_peers: u32,
            live_peers: u32,
            project_conflicts in 0u32..3,
        ) {
            let findings = Findings { bus_connected, duplicate_id, server_live, expected_peers, live_peers, project_conflicts };
            let s = assess(online, &findings);
            prop_assert_eq!(s.colour == StatusColour::Grey, !online);
            prop_assert_eq!(s.colour == StatusColour::Blue, online && s.problems.is_empty());
            prop_assert_eq!(s.colour == StatusColour::Red, online && !s.problems.is_empty());
            if online {
                let all_well = bus_connected && !duplicate_id && server_live && live_peers >= expected_peers && project_conflicts == 0;
                prop_assert_eq!(s.problems.is_empty(), all_well);
            } else {
                prop_assert!(s.problems.is_empty());
            }
        }
    }
}
