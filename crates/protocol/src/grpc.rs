//! The gRPC contract's metadata, in one place for the server and its clients.
//!
//! A device that does not serve answers project calls with
//! `FAILED_PRECONDITION`; when it knows who serves (from the lease) it names
//! that server in these trailers, so a client can go there without reading
//! the lease again.

/// The serving device's id.
pub const SERVER: &str = "understudy-server";

/// The serving device's project-sync address (`host:port`).
pub const SERVER_ADDRESS: &str = "understudy-server-address";

/// The serving device's term.
pub const TERM: &str = "understudy-term";
