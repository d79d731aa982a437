//! The detector's verdicts as bus messages.
//!
//! The heartbeat service publishes each [`PeerChange`] as a [`PeerNotice`] on
//! `understudy.<group>.local.<device>.peers`, where this device's election
//! service (its input stage) and discovery read them. The notice is stamped
//! with the wall clock of the moment the detector decided, so a reader can
//! tell a verdict that waited for the bus (made while the device was cut off)
//! from fresh news. The simulator calls this same function, so the seeded
//! runs carry exactly the notices a device sends.

use understudy_protocol::messages::{PeerChangeKind, PeerNotice};
use understudy_protocol::{DeviceId, GroupName, SCHEMA_VERSION};

use super::detector::PeerChange;

/// `change`, decided by `observer`'s detector when its wall clock read
/// `sent_at_ms` (Unix milliseconds), as the notice for that device's services.
/// A restart names the new (live) instance.
pub fn peer_notice(
    group: &GroupName,
    observer: &DeviceId,
    change: &PeerChange,
    sent_at_ms: u64,
) -> PeerNotice {
    let (kind, device, instance) = match change {
        PeerChange::Joined { device, instance } => (PeerChangeKind::Joined, device, *instance),
        PeerChange::Restarted { device, new, .. } => (PeerChangeKind::Restarted, device, *new),
        PeerChange::Lost { device, instance } => (PeerChangeKind::Lost, device, *instance),
        PeerChange::Left { device, instance } => (PeerChangeKind::Left, device, *instance),
    };
    PeerNotice {
        schema: SCHEMA_VERSION,
        group: group.clone(),
        observer: observer.clone(),
        change: kind,
        device: device.clone(),
        instance,
        sent_at_ms: Some(sent_at_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use understudy_protocol::InstanceId;

    fn id(s: &str) -> DeviceId {
        s.parse().expect("valid device id")
    }

    #[test]
    fn peer_changes_become_notices_naming_the_live_instance_and_the_time() {
        let group: GroupName = "g".parse().expect("valid group");
        let restarted = PeerChange::Restarted {
            device: id("p"),
            old: InstanceId::new(1),
            new: InstanceId::new(2),
        };
        let notice = peer_notice(&group, &id("me"), &restarted, 1_234);
        assert_eq!(notice.change, PeerChangeKind::Restarted);
        assert_eq!(notice.instance, InstanceId::new(2));
        assert_eq!((notice.observer, notice.device), (id("me"), id("p")));
        assert_eq!(notice.sent_at_ms, Some(1_234));
        for (change, kind) in [
            (
                PeerChange::Joined {
                    device: id("p"),
                    instance: InstanceId::new(3),
                },
                PeerChangeKind::Joined,
            ),
            (
                PeerChange::Lost {
                    device: id("p"),
                    instance: InstanceId::new(3),
                },
                PeerChangeKind::Lost,
            ),
            (
                PeerChange::Left {
                    device: id("p"),
                    instance: InstanceId::new(3),
                },
                PeerChangeKind::Left,
            ),
        ] {
            let n = peer_notice(&group, &id("me"), &change, 1);
            assert_eq!((n.change, n.instance), (kind, InstanceId::new(3)));
        }
    }
}
