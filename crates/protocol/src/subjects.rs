//! NATS subjects and JetStream names, in one place (documented in docs/bus.md).
//!
//! Everything of a group lives under `understudy.<group>.`; presence is
//! network-wide under `understudy.presence.`. Group names and device ids
//! cannot hold a dot or a wildcard, so every subject built here is well formed.

use crate::{DeviceId, GroupName, InstanceId};

/// The JetStream stream that keeps every group's election events.
pub const EVENTS_STREAM: &str = "UNDERSTUDY_EVENTS";
/// The subjects [`EVENTS_STREAM`] captures.
pub const EVENTS_STREAM_SUBJECTS: &str = "understudy.*.events.>";
/// The key of the lease entry in a group's lease bucket.
pub const LEASE_KEY: &str = "lease";

/// `understudy.<group>.heartbeat.<device>`: a device's heartbeat.
pub fn heartbeat(group: &GroupName, device: &DeviceId) -> String {
    format!("understudy.{group}.heartbeat.{device}")
}

/// `understudy.<group>.heartbeat.*`: every heartbeat of a group.
pub fn heartbeats(group: &GroupName) -> String {
    format!("understudy.{group}.heartbeat.*")
}

/// `understudy.*.heartbeat.*`: every heartbeat of every group (what an
/// observer of the whole network may follow; discovery hears its own group's
/// beats and counts other groups' devices from their presence, B10).
pub const ALL_HEARTBEATS: &str = "understudy.*.heartbeat.*";

/// `understudy.*.leave.*`: every goodbye of every group.
pub const ALL_LEAVES: &str = "understudy.*.leave.*";

/// `understudy.<group>.leave.<device>`: a device's clean goodbye.
pub fn leave(group: &GroupName, device: &DeviceId) -> String {
    format!("understudy.{group}.leave.{device}")
}

/// `understudy.<group>.leave.*`: every goodbye of a group.
pub fn leaves(group: &GroupName) -> String {
    format!("understudy.{group}.leave.*")
}

/// `understudy.presence.<instance>`: network-wide presence of one instance.
pub fn presence(instance: InstanceId) -> String {
    format!("understudy.presence.{instance}")
}

/// `understudy.presence.*`: every presence announcement.
pub const PRESENCE_ALL: &str = "understudy.presence.*";

/// `understudy.<group>.events.election`: the group's election events.
pub fn election_events(group: &GroupName) -> String {
    format!("understudy.{group}.events.election")
}

/// `understudy.<group>.events.>`: every event of a group, election and
/// project (what a client following the group reads from [`EVENTS_STREAM`]).
pub fn group_events(group: &GroupName) -> String {
    format!("understudy.{group}.events.>")
}

/// The type of an event from the subject it was published on:
/// `"election"` for `understudy.<group>.events.election`, `"project"` for
/// `….events.project`; `None` for a subject that is not an event's.
pub fn event_type(subject: &str) -> Option<&str> {
    let mut tokens = subject.split('.');
    match (
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
    ) {
        (Some("understudy"), Some(_), Some("events"), Some(kind), None) if !kind.is_empty() => {
            Some(kind)
        }
        _ => None,
    }
}

/// Whether `subject` matches the NATS subject `pattern` (`*` is one token,
/// a final `>` one or more): for readers that filter what they received.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// `understudy.<group>.ledger`: the group's election ledger entries.
pub fn ledger(group: &GroupName) -> String {
    format!("understudy.{group}.ledger")
}

/// The JetStream stream that keeps a group's election ledger (one stream
/// per group, so each has its own retention): `UNDERSTUDY_LEDGER_<group>`.
pub fn ledger_stream(group: &GroupName) -> String {
    format!("UNDERSTUDY_LEDGER_{group}")
}

/// `understudy.<group>.control.<device>`: requests to one device (request/reply).
pub fn control(group: &GroupName, device: &DeviceId) -> String {
    format!("understudy.{group}.control.{device}")
}

/// `understudy.<group>.trigger`: an operator's election trigger, to every device.
pub fn trigger(group: &GroupName) -> String {
    format!("understudy.{group}.trigger")
}

/// `understudy.<group>.settings`: an operator's request to change a group
/// setting (the show hold), request/reply. One election service of the
/// group answers: they subscribe in the queue group [`SETTINGS_QUEUE`].
pub fn settings(group: &GroupName) -> String {
    format!("understudy.{group}.settings")
}

/// `understudy.*.settings`: every group's settings requests (what an
/// operator or the gateway may publish on).
pub const ALL_SETTINGS: &str = "understudy.*.settings";

/// The NATS queue group the election services of a group answer
/// [`settings`] requests in, so exactly one answers each.
pub const SETTINGS_QUEUE: &str = "understudy-settings";

/// The JetStream KV bucket that holds a group's operator settings (the show
/// hold under [`HOLD_KEY`]).
pub fn settings_bucket(group: &GroupName) -> String {
    format!("understudy-settings-{group}")
}

/// The key of the show hold in a group's settings bucket.
pub const HOLD_KEY: &str = "hold";

/// The prefix of the per-device keys in a group's settings bucket.
pub const DEVICE_SETTING_PREFIX: &str = "device.";

/// The key of one device's operator settings (its run-time score and
/// online/offline) in its group's settings bucket: `device.<id>`.
pub fn device_setting_key(device: &DeviceId) -> String {
    format!("{DEVICE_SETTING_PREFIX}{device}")
}

/// `understudy.<group>.local.<device>.election`: the election service's state,
/// for the other services of the same device.
pub fn local_election(group: &GroupName, device: &DeviceId) -> String {
    format!("understudy.{group}.local.{device}.election")
}

/// `understudy.<group>.local.<device>.peers`: the failure detector's verdicts.
pub fn local_peers(group: &GroupName, device: &DeviceId) -> String {
    format!("understudy.{group}.local.{device}.peers")
}

/// `understudy.<group>.local.<device>.status`: discovery's colour and problems.
pub fn local_status(group: &GroupName, device: &DeviceId) -> String {
    format!("understudy.{group}.local.{device}.status")
}

/// `understudy.<group>.roster`: ask any device's discovery service for the
/// group's roster and counts (request/reply; take the first answer).
pub fn roster(group: &GroupName) -> String {
    format!("understudy.{group}.roster")
}

/// The JetStream KV bucket that holds a group's lease.
pub fn lease_bucket(group: &GroupName) -> String {
    format!("understudy-lease-{group}")
}

/// `understudy.<group>.events.project`: the group's project events (revisions
/// committed, conflicts, a new server serving).
pub fn project_events(group: &GroupName) -> String {
    format!("understudy.{group}.events.project")
}

/// `understudy.<group>.local.<device>.project`: the project-sync service's
/// state, for discovery (conflicts turn the device red).
pub fn local_project(group: &GroupName, device: &DeviceId) -> String {
    format!("understudy.{group}.local.{device}.project")
}

/// The JetStream KV bucket that holds a group's project head, and the object
/// store bucket of the same name that holds the project's content.
pub fn project_bucket(group: &GroupName) -> String {
    format!("understudy-project-{group}")
}

/// The key of the head entry in a group's project bucket.
pub const PROJECT_HEAD_KEY: &str = "head";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_built_from_validated_names() {
        let g: GroupName = "main-stage".parse().unwrap();
        let d: DeviceId = "desk_1".parse().unwrap();
        assert_eq!(heartbeat(&g, &d), "understudy.main-stage.heartbeat.desk_1");
        assert_eq!(election_events(&g), "understudy.main-stage.events.election");
        assert_eq!(lease_bucket(&g), "understudy-lease-main-stage");
        assert_eq!(settings(&g), "understudy.main-stage.settings");
        assert!(matches(ALL_SETTINGS, &settings(&g)));
        assert_eq!(settings_bucket(&g), "understudy-settings-main-stage");
        assert_eq!(
            presence(InstanceId::new(255)),
            "understudy.presence.00000000000000ff"
        );
    }

    #[test]
    fn network_wide_subjects_match_every_group() {
        let g: GroupName = "stage".parse().unwrap();
        let d: DeviceId = "desk-1".parse().unwrap();
        assert!(matches(ALL_HEARTBEATS, &heartbeat(&g, &d)));
        assert!(matches(ALL_LEAVES, &leave(&g, &d)));
        assert!(!matches(ALL_HEARTBEATS, &leave(&g, &d)));
        assert!(matches(PRESENCE_ALL, &presence(InstanceId::new(1))));
        assert!(matches(&heartbeats(&g), &heartbeat(&g, &d)));
    }

    #[test]
    fn a_group_s_events_are_its_election_and_project_events_only() {
        let g: GroupName = "stage".parse().unwrap();
        let other: GroupName = "stage-2".parse().unwrap();
        assert_eq!(group_events(&g), "understudy.stage.events.>");
        assert!(matches(&group_events(&g), &election_events(&g)));
        assert!(matches(&group_events(&g), &project_events(&g)));
        assert!(!matches(&group_events(&g), &election_events(&other)));
        assert!(!matches(&group_events(&g), "understudy.stage.events"));
        assert!(matches(EVENTS_STREAM_SUBJECTS, &project_events(&other)));
    }

    #[test]
    fn an_event_s_type_is_the_last_token_of_its_subject() {
        let g: GroupName = "stage".parse().unwrap();
        assert_eq!(event_type(&election_events(&g)), Some("election"));
        assert_eq!(event_type(&project_events(&g)), Some("project"));
        assert_eq!(event_type("understudy.stage.trigger"), None);
        assert_eq!(event_type("understudy.stage.events.a.b"), None);
        assert_eq!(event_type("other.stage.events.election"), None);
    }

    #[test]
    fn patterns_match_token_by_token() {
        assert!(matches("a.*.c", "a.b.c"));
        assert!(!matches("a.*.c", "a.b.c.d"));
        assert!(!matches("a.*", "a"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(!matches("a.b", "a.c"));
    }
}
