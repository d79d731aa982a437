//! Free TCP ports on 127.0.0.1.
//!
//! A port is found by binding it and releasing it (below the kernel's
//! ephemeral range, see [`free_ports`]), so another process may still take
//! it before ours binds it; servers that start on such a port
//! ([`crate::NatsServer`], [`crate::NatsCluster`]) retry with new ports when
//! that happens.

use std::net::TcpListener;

use crate::Error;

/// A free TCP port on 127.0.0.1 (bound, then released). Several calls in a
/// row may return the same port; use [`free_ports`] for distinct ones.
pub fn free_port() -> Result<u16, Error> {
    Ok(free_ports(1)?[0])
}

/// `n` distinct free TCP ports on 127.0.0.1 (all bound at once, then
/// released), chosen below the kernel's ephemeral range when it leaves room:
/// a port bound with port 0 comes from that range, which every outgoing
/// connection also draws from, so between our release and a server's bind a
/// device's new connection could take it ("address already in use" — seen
/// in CI). Below the range only another test's chosen port can collide.
pub fn free_ports(n: usize) -> Result<Vec<u16>, Error> {
    let below = ephemeral_start().filter(|start| *start > LOW + 1_000);
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(n);
    if let Some(top) = below {
        let span = u64::from(top - LOW);
        let mut tries = 0;
        while listeners.len() < n && tries < 64 * n {
            tries += 1;
            let port = LOW + u16::try_from(random() % span).unwrap_or(0);
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                listeners.push(l);
            }
        }
    }
    while listeners.len() < n {
        listeners.push(TcpListener::bind("127.0.0.1:0").map_err(Error::io("bind", "127.0.0.1:0"))?);
    }
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(Error::io("read the address of", "127.0.0.1:0"))
        })
        .collect()
}

/// The lowest port [`free_ports`] picks.
const LOW: u16 = 20_000;

/// The first port of the kernel's ephemeral range (Linux), if known.
fn ephemeral_start() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// A random number (std's per-hasher random keys; no dependency).
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// `preferred` if it is free on 127.0.0.1 (a well-known port a person
/// types, like 4222 or 8080), else a free one.
pub fn port_or_free(preferred: u16) -> Result<u16, Error> {
    if TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        return Ok(preferred);
    }
    free_port()
}
