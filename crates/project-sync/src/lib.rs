//! understudy's project-sync service (B11, S1, S2): the
//! group's project file, served over gRPC by the elected device, with
//! fenced, durable revisions in JetStream.
//!
//! - [`core`]: the pure rules — fencing, committing, conflicts, term checks,
//!   upload validation.
//! - [`local`]: a device's local copy (atomic replace, checksum verified) and
//!   its durable outbox of changes made while there is no server.
//! - With the default `driver` feature: [`pb`] (the generated gRPC code of
//!   `proto/understudy/v1/project.proto`), [`store`] (the head in JetStream KV,
//!   the content in a JetStream object store), [`server`] (the gRPC service of
//!   the elected device), [`client`] (finding the server with the lease and
//!   talking to it), [`security`] (TLS and the check that a caller is a
//!   device of the group), [`events`] (publishing project events) and [`service`]
//!   (the device's driver).

pub mod core;
pub mod local;

/// The generated gRPC code of `proto/understudy/v1/project.proto`.
#[cfg(feature = "driver")]
#[allow(missing_docs, clippy::all, clippy::unwrap_used)]
pub mod pb {
    tonic::include_proto!("understudy.v1");
}

/// The gRPC library the generated code uses, for callers that speak to the
/// service directly.
#[cfg(feature = "driver")]
pub use tonic;

#[cfg(feature = "driver")]
pub mod client;
#[cfg(feature = "driver")]
pub mod events;
#[cfg(feature = "driver")]
pub mod security;
#[cfg(feature = "driver")]
pub mod server;
#[cfg(feature = "driver")]
pub mod service;
#[cfg(feature = "driver")]
pub mod store;
