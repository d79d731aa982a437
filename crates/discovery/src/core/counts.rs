//! The status-bar counts, per group and network-wide (B10).
//!
//! Every device in the roster falls in exactly one of three buckets, so
//! `devices_online + devices_offline + devices_missing` is the number of devices
//! listed:
//!
//! - **online**: live and saying it is online; split further by the role it
//!   reports into `clients` and `servers`;
//! - **offline**: live but administratively offline (B1) — it still beats;
//! - **missing**: no longer heard (stale), whatever it last said, so a vanished
//!   device stands out.
//!
//! Sessions are the live GUI and control sessions (presence), so a stray GUI
//! configuring the system stands out as well.

use serde::{Deserialize, Serialize};
use understudy_protocol::Role;
use understudy_protocol::messages::InstanceKind;

use super::roster::{DeviceEntry, SessionEntry};

/// How many instances of each kind are on the bus (B10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Live devices that are online.
    pub devices_online: u32,
    /// Live devices that are administratively offline.
    pub devices_offline: u32,
    /// Devices no longer heard (stale).
    pub devices_missing: u32,
    /// Live, online devices acting as clients.
    pub clients: u32,
    /// Live, online devices acting as servers (more than one in a group is a
    /// transient the election resolves).
    pub servers: u32,
    /// Live GUI (dashboard) sessions.
    pub gui_sessions: u32,
    /// Live control sessions.
    pub control_sessions: u32,
}

impl Counts {
    /// Counts `devices` (as listed by the roster) and `sessions` (live ones).
    pub fn tally<'a>(
        devices: impl IntoIterator<Item = &'a DeviceEntry>,
        sessions: impl IntoIterator<Item = &'a SessionEntry>,
    ) -> Self {
        let mut counts = Counts::default();
        for device in devices {
            counts.add_device(device.live, device.online, device.role);
        }
        for session in sessions {
            match session.kind {
                InstanceKind::Gui => bump(&mut counts.gui_sessions),
                InstanceKind::Control => bump(&mut counts.control_sessions),
                InstanceKind::Device => {}
            }
        }
        counts
    }

    /// Counts one device: missing unless `live`; else online (as a client or
    /// a server by `role`) or offline.
    pub fn add_device(&mut self, live: bool, online: bool, role: Role) {
        let bucket = match (live, online) {
            (false, _) => &mut self.devices_missing,
            (true, false) => &mut self.devices_offline,
            (true, true) => &mut self.devices_online,
        };
        bump(bucket);
        if live && online {
            bump(match role {
                Role::Client => &mut self.clients,
                Role::Server => &mut self.servers,
            });
        }
    }

    /// How many devices were counted: online, offline and missing together.
    pub fn devices(&self) -> u32 {
        self.devices_online
            .saturating_add(self.devices_offline)
            .saturating_add(self.devices_missing)
    }
}

fn bump(n: &mut u32) {
    *n = n.saturating_add(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_serialise_with_named_fields() {
        let counts = Counts {
            devices_online: 2,
            devices_missing: 1,
            servers: 1,
            clients: 1,
            gui_sessions: 3,
            ..Counts::default()
        };
        let json = serde_json::to_value(counts).expect("serialises");
        assert_eq!(
            json,
            serde_json::json!({
                "devices_online": 2,
                "devices_offline": 0,
                "devices_missing": 1,
                "clients": 1,
                "servers": 1,
                "gui_sessions": 3,
                "control_sessions": 0
            })
        );
        assert_eq!(counts.devices(), 3);
    }
}
