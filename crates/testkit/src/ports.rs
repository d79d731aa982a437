//! Free TCP ports on 127.0.0.1.
//!
//! A port is found by binding port 0 and releasing it, so another process
//! may take it before ours binds it; servers that start on such a port
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
/// released).
pub fn free_ports(n: usize) -> Result<Vec<u16>, Error> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(Error::io("bind", "127.0.0.1:0")))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(Error::io("read the address of", "127.0.0.1:0"))
        })
        .collect()
}

/// `preferred` if it is free on 127.0.0.1 (a well-known port a person
/// types, like 4222 or 8080), else a free one.
pub fn port_or_free(preferred: u16) -> Result<u16, Error> {
    if TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        return Ok(preferred);
    }
    free_port()
}
