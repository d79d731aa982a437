//! The MAC of the host's first real network interface, when none is given.

use std::path::Path;

use understudy_protocol::Mac;

/// The MAC of the first physical interface (by name), else of the first
/// non-loopback interface with a non-zero address.
pub fn host_mac() -> Option<Mac> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    let read = |name: &str| -> Option<Mac> {
        let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).ok()?;
        let mac: Mac = text.trim().parse().ok()?;
        (mac.as_u64() != 0).then_some(mac)
    };
    let physical = names
        .iter()
        .filter(|n| Path::new(&format!("/sys/class/net/{n}/device")).exists())
        .find_map(|n| read(n));
    physical.or_else(|| names.iter().find_map(|n| read(n)))
}
