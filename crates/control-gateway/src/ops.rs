//! What each call does, once: HTTP handlers and TCP commands both come here
//! with validated names and values, and get the answer document or an
//! [`ApiError`]. So the two protocols cannot drift apart.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use tokio::sync::watch;
use understudy_protocol::messages::ControlOp;
use understudy_protocol::{DeviceId, GroupName, Problem, Score};

use crate::ApiError;
use crate::auth::Token;
use crate::bus::BusApi;
use crate::presence::{GroupsSeen, Sessions};

/// Everything a request handler needs, shared by every connection.
#[derive(Debug)]
pub struct Shared {
    /// Requests to the devices.
    pub bus: BusApi,
    /// The API token for mutating calls.
    pub token: Token,
    /// Open sessions, announced as presence.
    pub sessions: Arc<Sessions>,
    /// Groups seen in device presence.
    pub groups: Arc<GroupsSeen>,
    /// Turns true when the gateway shuts down; long-lived streams end then.
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// `{"groups":[{"group":"stage","devices":3}]}`.
    pub fn groups(&self) -> Value {
        let groups: Vec<Value> = self
            .groups
            .groups(Instant::now())
            .into_iter()
            .map(|(g, n)| json!({ "group": g, "devices": n }))
            .collect();
        json!({ "groups": groups })
    }

    /// The roster document plus `term`, `colours` and `problems`.
    pub async fn status(&self, group: &GroupName) -> Result<Value, ApiError> {
        let roster = self.bus.roster(group).await?;
        Ok(summarise(roster))
    }

    /// `{"devices":[…]}`: the roster's device entries.
    pub async fn devices(&self, group: &GroupName) -> Result<Value, ApiError> {
        let roster = self.bus.roster(group).await?;
        let devices = roster.get("devices").cloned().unwrap_or_else(|| json!([]));
        Ok(json!({ "devices": devices }))
    }

    /// One roster device entry.
    pub async fn device(&self, group: &GroupName, device: &DeviceId) -> Result<Value, ApiError> {
        let roster = self.bus.roster(group).await?;
        roster
            .get("devices")
            .and_then(Value::as_array)
            .and_then(|ds| {
                ds.iter()
                    .find(|d| d.get("device").and_then(Value::as_str) == Some(device.as_str()))
            })
            .cloned()
            .ok_or_else(|| ApiError::UnknownDevice {
                group: group.to_string(),
                device: device.to_string(),
            })
    }

    /// `{"group","device","score"}` as the device says.
    pub async fn get_score(&self, group: &GroupName, device: &DeviceId) -> Result<Value, ApiError> {
        let state = self.bus.control(group, device, ControlOp::Get).await?;
        Ok(json!({ "group": group, "device": device, "score": state.score }))
    }

    /// Sets a score; `{"group","device","score","server"}` after it.
    pub async fn set_score(
        &self,
        group: &GroupName,
        device: &DeviceId,
        score: Score,
    ) -> Result<Value, ApiError> {
        let state = self
            .bus
            .control(group, device, ControlOp::SetScore { score })
            .await?;
        Ok(json!({
            "group": group, "device": device, "score": state.score, "server": state.server,
        }))
    }

    /// Takes a device online or offline; `{"group","device","online"}`.
    pub async fn set_online(
        &self,
        group: &GroupName,
        device: &DeviceId,
        online: bool,
    ) -> Result<Value, ApiError> {
        let state = self
            .bus
            .control(group, device, ControlOp::SetOnline { online })
            .await?;
        Ok(json!({ "group": group, "device": device, "online": state.online }))
    }

    /// Triggers an election; `{"group","triggered":true}`.
    pub async fn trigger(&self, group: &GroupName) -> Result<Value, ApiError> {
        self.bus.trigger(group, "understudy gateway").await?;
        Ok(json!({ "group": group, "triggered": true }))
    }
}

/// Adds to a roster document what a status bar shows at a glance: `term`
/// (the server's, or null), `colours` (`{"grey","blue","red"}`: live devices
/// by the colour they show; a missing device counts as grey) and `problems`
/// (every device's problems, each with its `device` and human `text`).
pub fn summarise(mut roster: Value) -> Value {
    let mut colours = [0u64; 3];
    let mut problems = Vec::new();
    if let Some(devices) = roster.get("devices").and_then(Value::as_array) {
        for d in devices {
            let live = d.get("live").and_then(Value::as_bool).unwrap_or(true);
            let colour = if live {
                d.get("colour").and_then(Value::as_str).unwrap_or("grey")
            } else {
                "grey"
            };
            match colour {
                "blue" => colours[1] += 1,
                "red" => colours[2] += 1,
                _ => colours[0] += 1,
            }
            let name = d.get("device").cloned().unwrap_or(Value::Null);
            for p in d
                .get("problems")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let text = serde_json::from_value::<Problem>(p.clone()).map_or_else(
                    |_| {
                        p.get("code")
                            .and_then(Value::as_str)
                            .unwrap_or("unknown problem")
                            .to_owned()
                    },
                    |p| p.to_string(),
                );
                let mut entry = p.clone();
                if let Some(obj) = entry.as_object_mut() {
                    obj.insert("device".into(), name.clone());
                    obj.insert("text".into(), Value::String(text));
                }
                problems.push(entry);
            }
        }
    }
    let term = roster
        .get("server")
        .and_then(|s| s.get("term"))
        .cloned()
        .unwrap_or(Value::Null);
    if let Some(obj) = roster.as_object_mut() {
        obj.insert("term".into(), term);
        obj.insert(
            "colours".into(),
            json!({ "grey": colours[0], "blue": colours[1], "red": colours[2] }),
        );
        obj.insert("problems".into(), Value::Array(problems));
    }
    roster
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_colours_and_lists_problems() {
        let roster = json!({
            "server": {"device": "a", "term": 7},
            "devices": [
                {"device": "a", "live": true, "colour": "blue", "problems": []},
                {"device": "b", "live": true, "colour": "red",
                 "problems": [{"code": "no_server"}]},
                {"device": "c", "live": false, "colour": "blue", "problems": []},
                {"device": "d", "live": true, "colour": "grey", "problems": []}
            ]
        });
        let s = summarise(roster);
        assert_eq!(s["term"], 7);
        assert_eq!(s["colours"], json!({"grey": 2, "blue": 1, "red": 1}));
        assert_eq!(s["problems"][0]["device"], "b");
        assert_eq!(s["problems"][0]["code"], "no_server");
        assert_eq!(s["problems"][0]["text"], "Project group has no server");
    }
}
