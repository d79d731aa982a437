//! The one way project-sync publishes a [`ProjectEvent`]: on
//! `understudy.<group>.events.project`, bounded by the bus's publish timeout,
//! never while a lock is held (callers publish after releasing theirs).

use std::time::SystemTime;

use understudy_bus::unix_ms;
use understudy_protocol::messages::{ProjectEvent, ProjectEventKind};
use understudy_protocol::{DeviceId, GroupName, SCHEMA_VERSION, subjects};

/// Publishes `kind` as reported by `reporter` of `group`; a failure is
/// logged (at debug level) by the bus, never returned.
pub async fn publish(
    client: &async_nats::Client,
    group: &GroupName,
    reporter: &DeviceId,
    kind: ProjectEventKind,
) {
    let event = ProjectEvent {
        schema: SCHEMA_VERSION,
        group: group.clone(),
        reporter: reporter.clone(),
        at_ms: unix_ms(SystemTime::now()),
        kind,
    };
    understudy_bus::publish(client, subjects::project_events(group), &event).await;
}
