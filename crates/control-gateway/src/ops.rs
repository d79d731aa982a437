//! What each call does, once: HTTP handlers and TCP commands both come here
//! with validated names and values, and get the typed answer document
//! ([`crate::answers`]) or an [`ApiError`]. So the two protocols cannot
//! drift apart.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::watch;
use understudy_bus::ledger::LedgerQuery;
use understudy_bus::unix_ms;
use understudy_bus::why::Why;
use understudy_protocol::hold::HoldChange;
use understudy_protocol::messages::ControlOp;
use understudy_protocol::roster::RosterDevice;
use understudy_protocol::{DeviceId, GroupName, Score};

use crate::ApiError;
use crate::answers::{
    DeviceList, GroupList, GroupSeen, HoldAnswer, HoldState, LedgerAnswer, OnlineAnswer,
    ScoreAnswer, SetScoreAnswer, StatusDocument, TriggerAnswer,
};
use crate::auth::Tokens;
use crate::bus::BusApi;
use crate::presence::{GroupsSeen, Sessions};

/// Everything a request handler needs, shared by every connection.
#[derive(Debug)]
pub struct Shared {
    /// Requests to the devices.
    pub bus: BusApi,
    /// The admin and read-only tokens.
    pub tokens: Tokens,
    /// Open sessions, announced as presence.
    pub sessions: Arc<Sessions>,
    /// Groups seen in device presence.
    pub groups: Arc<GroupsSeen>,
    /// Turns true when the gateway shuts down; long-lived streams end then.
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// The groups seen in device presence.
    pub fn groups(&self) -> GroupList {
        let groups = self
            .groups
            .groups(Instant::now())
            .into_iter()
            .map(|(group, devices)| GroupSeen { group, devices })
            .collect();
        GroupList { groups }
    }

    /// The roster document plus `term`, `colours`, `problems` and the
    /// show hold (`null` if it cannot be read: the status still answers).
    pub async fn status(&self, group: &GroupName) -> Result<StatusDocument, ApiError> {
        let (roster, hold) = tokio::join!(self.bus.roster(group), self.bus.hold(group));
        let mut doc: StatusDocument = roster?.into();
        doc.hold = match hold {
            Ok(record) => Some(HoldState::new(record, unix_ms(SystemTime::now()))),
            Err(e) => {
                tracing::debug!(%group, error = %e, "status without the hold");
                None
            }
        };
        Ok(doc)
    }

    /// The group's show hold, from its settings bucket (works with no
    /// device running; a group that never had a hold is not held).
    pub async fn hold(&self, group: &GroupName) -> Result<HoldAnswer, ApiError> {
        let record = self.bus.hold(group).await?;
        Ok(HoldAnswer {
            group: group.clone(),
            state: HoldState::new(record, unix_ms(SystemTime::now())),
        })
    }

    /// Puts the show hold on or lifts it (`change` as validated at the
    /// edge, [`crate::input::hold`]); the hold as the device stored it.
    pub async fn set_hold(
        &self,
        group: &GroupName,
        change: HoldChange,
    ) -> Result<HoldAnswer, ApiError> {
        let record = self.bus.set_hold(group, change).await?;
        Ok(HoldAnswer {
            group: group.clone(),
            state: HoldState::new(Some(record), unix_ms(SystemTime::now())),
        })
    }

    /// Entries of the group's election ledger (`query` as validated at the
    /// edge, [`crate::input::ledger`]); none for a group without a ledger.
    pub async fn ledger(
        &self,
        group: &GroupName,
        query: LedgerQuery,
    ) -> Result<LedgerAnswer, ApiError> {
        let page = self.bus.ledger(group, query).await?;
        if page.unreadable > 0 {
            tracing::debug!(
                %group,
                unreadable = page.unreadable,
                "ledger entries this build cannot read were left out"
            );
        }
        Ok(LedgerAnswer {
            group: group.clone(),
            entries: page.entries,
            more: page.more,
        })
    }

    /// Why the group's server serves, in one paragraph, with the ledger
    /// entry of its term (`understudy why --json`'s document).
    pub async fn why(&self, group: &GroupName) -> Result<Why, ApiError> {
        self.bus.why(group, unix_ms(SystemTime::now())).await
    }

    /// The roster's device entries.
    pub async fn devices(&self, group: &GroupName) -> Result<DeviceList, ApiError> {
        let roster = self.bus.roster(group).await?;
        Ok(DeviceList {
            devices: roster.devices,
        })
    }

    /// One roster device entry.
    pub async fn device(
        &self,
        group: &GroupName,
        device: &DeviceId,
    ) -> Result<RosterDevice, ApiError> {
        let roster = self.bus.roster(group).await?;
        roster
            .device(device)
            .cloned()
            .ok_or_else(|| ApiError::UnknownDevice {
                group: group.to_string(),
                device: device.to_string(),
            })
    }

    /// A device's score, as the device says.
    pub async fn get_score(
        &self,
        group: &GroupName,
        device: &DeviceId,
    ) -> Result<ScoreAnswer, ApiError> {
        let state = self.bus.control(group, device, ControlOp::Get).await?;
        Ok(ScoreAnswer {
            group: group.clone(),
            device: device.clone(),
            score: state.score,
        })
    }

    /// Sets a score; the score and the server the device knew right after.
    pub async fn set_score(
        &self,
        group: &GroupName,
        device: &DeviceId,
        score: Score,
    ) -> Result<SetScoreAnswer, ApiError> {
        let state = self
            .bus
            .control(group, device, ControlOp::SetScore { score })
            .await?;
        Ok(SetScoreAnswer {
            group: group.clone(),
            device: device.clone(),
            score: state.score,
            server: state.server,
        })
    }

    /// Forgets the score an operator stored for a device, which returns to
    /// its configured score; the score and the server the device knew right
    /// after.
    pub async fn reset_score(
        &self,
        group: &GroupName,
        device: &DeviceId,
    ) -> Result<SetScoreAnswer, ApiError> {
        let state = self
            .bus
            .control(group, device, ControlOp::ResetScore)
            .await?;
        Ok(SetScoreAnswer {
            group: group.clone(),
            device: device.clone(),
            score: state.score,
            server: state.server,
        })
    }

    /// Takes a device online or offline.
    pub async fn set_online(
        &self,
        group: &GroupName,
        device: &DeviceId,
        online: bool,
    ) -> Result<OnlineAnswer, ApiError> {
        let state = self
            .bus
            .control(group, device, ControlOp::SetOnline { online })
            .await?;
        Ok(OnlineAnswer {
            group: group.clone(),
            device: device.clone(),
            online: state.online,
        })
    }

    /// Triggers an election; while the group is held only with `force`
    /// (else `held`, 409).
    pub async fn trigger(&self, group: &GroupName, force: bool) -> Result<TriggerAnswer, ApiError> {
        let reply = self.bus.trigger(group, "understudy gateway", force).await?;
        Ok(TriggerAnswer {
            group: group.clone(),
            triggered: true,
            held: reply.held,
            device: reply.device,
        })
    }
}
