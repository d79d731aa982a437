//! `understudy settings`: the operator settings a group keeps in its
//! settings bucket (`understudy-settings-<group>`): the show hold and every
//! device's stored score and online/offline, with who set them and when.
//!
//! Read from the bucket directly, so it works for a read-only user and with
//! no device running.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::Serialize;
use understudy_bus::{NatsSettings, unix_ms};
use understudy_protocol::device_setting::DeviceSetting;
use understudy_protocol::hold::HoldRecord;
use understudy_protocol::{GroupName, messages, subjects};

use crate::hold::{describe, rfc3339};
use crate::settings::connect_once;

const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// What `settings --json` prints.
#[derive(Debug, Serialize)]
pub struct StoredSettings {
    /// The group.
    pub group: GroupName,
    /// The show hold as last stored (`null`: never set).
    pub hold: Option<HoldRecord>,
    /// Every device's stored settings, by device id.
    pub devices: Vec<DeviceSetting>,
}

/// `understudy settings --group G [--json]`.
pub async fn run(nats: &NatsSettings, group: &str, json: bool) -> Result<()> {
    let group: GroupName = group.parse()?;
    let client = connect_once(nats, "understudy-ctl").await?;
    let stored = read(&client, &group).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stored)?);
        return Ok(());
    }
    match &stored.hold {
        Some(h) => println!("{}", describe(h, unix_ms(SystemTime::now()))),
        None => println!("group {group}: not held (no hold was ever set)"),
    }
    if stored.devices.is_empty() {
        println!("no device has operator settings: every device runs as configured");
        return Ok(());
    }
    println!(
        "{:<20} {:>10} {:>12}  {:<16} SET AT",
        "DEVICE", "SCORE", "ONLINE", "SET BY"
    );
    for d in &stored.devices {
        let score = d.score.map_or("configured".into(), |s| s.to_string());
        let online = d
            .online
            .map_or("configured", |o| if o { "online" } else { "offline" });
        println!(
            "{:<20} {:>10} {:>12}  {:<16} {}",
            d.device.as_str(),
            score,
            online,
            d.set_by.as_deref().unwrap_or("-"),
            rfc3339(d.set_at_ms)
        );
    }
    Ok(())
}

/// Reads everything stored for `group` (nothing when it has no bucket yet).
pub async fn read(client: &async_nats::Client, group: &GroupName) -> Result<StoredSettings> {
    let mut stored = StoredSettings {
        group: group.clone(),
        hold: None,
        devices: Vec::new(),
    };
    let js = jetstream::new(client.clone());
    let bucket = subjects::settings_bucket(group);
    let stream = within(js.get_stream(format!("KV_{bucket}"))).await?;
    if let Err(e) = &stream
        && let jetstream::context::GetStreamErrorKind::JetStream(js_err) = e.kind()
        && js_err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    {
        return Ok(stored);
    }
    let store = within(js.get_key_value(&bucket))
        .await?
        .with_context(|| format!("cannot open the settings bucket {bucket}"))?;
    let keys: Vec<String> = within(async {
        let keys = store.keys().await.map_err(|e| e.to_string())?;
        let keys: Vec<Result<String, _>> = keys.collect().await;
        keys.into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    })
    .await?
    .map_err(|e| anyhow!("cannot list the keys of {bucket}: {e}"))?;
    for key in keys {
        let Some(value) = get(&store, &key).await? else {
            continue;
        };
        if key == subjects::HOLD_KEY {
            stored.hold = Some(messages::decode(&value).context("the stored hold is unreadable")?);
        } else if key.starts_with(subjects::DEVICE_SETTING_PREFIX) {
            let rec: DeviceSetting = messages::decode(&value)
                .with_context(|| format!("the stored {key} is unreadable"))?;
            stored.devices.push(rec);
        }
    }
    stored.devices.sort_by(|a, b| a.device.cmp(&b.device));
    Ok(stored)
}

async fn get(store: &kv::Store, key: &str) -> Result<Option<bytes::Bytes>> {
    let entry = within(store.entry(key))
        .await?
        .with_context(|| format!("cannot read {key}"))?;
    Ok(entry
        .filter(|e| e.operation == kv::Operation::Put)
        .map(|e| e.value))
}

async fn within<F: std::future::Future>(f: F) -> Result<F::Output> {
    tokio::time::timeout(ANSWER_WITHIN, f)
        .await
        .map_err(|_| anyhow!("JetStream did not answer within 5 s"))
}
