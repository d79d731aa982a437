//! The group's settings bucket (JetStream KV `understudy-settings-<group>`)
//! and what is kept in it: the show hold (key `hold`, a [`HoldRecord`]) and
//! each device's operator settings (key `device.<id>`, a [`DeviceSetting`]).
//!
//! Plumbing for the driver: open or create the bucket, read, watch and
//! write the hold and this device's settings. Whether the group is held at a given moment is the
//! record's to say ([`HoldRecord::in_effect`]); what a hold means for the
//! election is the core's ([`crate::Event::SetHold`]).

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use tracing::{debug, warn};
use understudy_protocol::device_setting::DeviceSetting;
use understudy_protocol::hold::HoldRecord;
use understudy_protocol::messages;
use understudy_protocol::{DeviceId, GroupName, subjects};

/// How many values of each key the settings bucket keeps, so who set and
/// lifted the last holds, and when, can be looked up.
pub const SETTINGS_HISTORY: i64 = 16;

/// The settings bucket's name and config for a group: kept on file, no
/// expiry (a hold lasts until lifted or its own `until_ms`).
pub fn settings_bucket_config(group: &GroupName, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: subjects::settings_bucket(group),
        description: format!("understudy operator settings of group {group}"),
        history: SETTINGS_HISTORY,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    }
}

/// Opens the group's settings bucket, creating it if it does not exist.
pub async fn open_settings_bucket(
    js: &jetstream::Context,
    group: &GroupName,
    replicas: usize,
) -> Result<kv::Store, String> {
    open_or_create(js, settings_bucket_config(group, replicas)).await
}

/// Opens the bucket `config` names, creating it with `config` if it does not
/// exist.
pub async fn open_or_create(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, String> {
    match js.get_key_value(&config.bucket).await {
        Ok(store) => Ok(store),
        Err(_) => {
            let name = config.bucket.clone();
            js.create_key_value(config)
                .await
                .map_err(|e| format!("cannot open or create KV bucket {name}: {e}"))
        }
    }
}

/// The hold as a KV entry gives it, with the entry's revision (the record
/// is `None` for a deleted key); `None` for an undecodable value, which is
/// skipped with a warning.
pub fn hold_entry(entry: &kv::Entry) -> Option<(u64, Option<HoldRecord>)> {
    match entry.operation {
        kv::Operation::Delete | kv::Operation::Purge => Some((entry.revision, None)),
        kv::Operation::Put => match messages::decode::<HoldRecord>(&entry.value) {
            Ok(rec) => Some((entry.revision, Some(rec))),
            Err(e) => {
                warn!(revision = entry.revision, "ignoring a hold entry: {e}");
                None
            }
        },
    }
}

/// Reads the hold: `Ok(None)` when it was never set.
pub async fn read_hold(store: &kv::Store) -> Result<Option<(u64, Option<HoldRecord>)>, String> {
    match store.entry(subjects::HOLD_KEY).await {
        Ok(None) => Ok(None),
        Ok(Some(entry)) => Ok(hold_entry(&entry)),
        Err(e) => Err(e.to_string()),
    }
}

/// Stores `record` as the group's hold; returns the entry's revision.
pub async fn write_hold(store: &kv::Store, record: &HoldRecord) -> Result<u64, String> {
    store
        .put(subjects::HOLD_KEY, messages::encode(record).into())
        .await
        .map_err(|e| format!("cannot store the hold: {e}"))
}

/// The next change of the hold on `watch`; `None` when the watch ended
/// (it is reopened). Waits forever without a watch.
pub async fn next_hold(w: &mut Option<kv::Watch>) -> Option<(u64, Option<HoldRecord>)> {
    next_decoded(w, "hold", hold_entry).await
}

/// A KV entry read as a `T` with its revision (`T` is `None` for a deleted
/// key); `None` for an entry skipped.
type Decode<T> = fn(&kv::Entry) -> Option<(u64, Option<T>)>;

/// The next entry of `watch` that `decode` reads, with its revision; `None`
/// when the watch ended or failed (it is reopened; `what` names it in the
/// log). Waits forever without a watch.
async fn next_decoded<T>(
    w: &mut Option<kv::Watch>,
    what: &str,
    decode: Decode<T>,
) -> Option<(u64, Option<T>)> {
    let Some(watch) = w.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match watch.next().await {
            None => return None,
            Some(Err(e)) => {
                debug!("{what} watch error: {e}");
                return None;
            }
            Some(Ok(entry)) => {
                if let Some(obs) = decode(&entry) {
                    return Some(obs);
                }
            }
        }
    }
}

/// A device's settings as a KV entry gives them, with the entry's revision
/// (the record is `None` for a deleted key); `None` for an undecodable
/// value, which is skipped with a warning.
pub fn device_setting_entry(entry: &kv::Entry) -> Option<(u64, Option<DeviceSetting>)> {
    match entry.operation {
        kv::Operation::Delete | kv::Operation::Purge => Some((entry.revision, None)),
        kv::Operation::Put => match messages::decode::<DeviceSetting>(&entry.value) {
            Ok(rec) => Some((entry.revision, Some(rec))),
            Err(e) => {
                warn!(
                    key = %entry.key,
                    revision = entry.revision,
                    "ignoring a device setting: {e}"
                );
                None
            }
        },
    }
}

/// Reads `device`'s settings: `Ok(None)` when none were ever stored.
pub async fn read_device_setting(
    store: &kv::Store,
    device: &DeviceId,
) -> Result<Option<(u64, Option<DeviceSetting>)>, String> {
    match store.entry(subjects::device_setting_key(device)).await {
        Ok(None) => Ok(None),
        Ok(Some(entry)) => Ok(device_setting_entry(&entry)),
        Err(e) => Err(e.to_string()),
    }
}

/// Stores `record` as its device's settings; returns the entry's revision.
pub async fn write_device_setting(
    store: &kv::Store,
    record: &DeviceSetting,
) -> Result<u64, String> {
    store
        .put(
            subjects::device_setting_key(&record.device),
            messages::encode(record).into(),
        )
        .await
        .map_err(|e| format!("cannot store the setting of device {}: {e}", record.device))
}

/// The next change of a device's settings on `watch`; `None` when the
/// watch ended (it is reopened). Waits forever without a watch.
pub async fn next_device_setting(
    w: &mut Option<kv::Watch>,
) -> Option<(u64, Option<DeviceSetting>)> {
    next_decoded(w, "device setting", device_setting_entry).await
}
