//! The one toolkit for running understudy on this machine: the end-to-end
//! tests in `tests/`, `understudy lab` and `understudy bench` all start their
//! processes through it.
//!
//! - [`process`]: a child process with its output captured in a log file,
//!   signalled by its own PID and killed (with its process group, if it leads
//!   one) when its handle is dropped. Nothing here ever signals a process it
//!   did not start.
//! - [`nats`]: a `nats-server` with JetStream, single or a cluster, that can
//!   be killed and restarted on the same ports and store.
//! - [`understudy`]: `understudy node` devices and the `understudy gateway`.
//! - [`ports`]: free loopback ports; [`TempDir`]: a temporary folder kept
//!   when a test fails; [`wait_until`]: wait for a condition with a deadline,
//!   never a sleep as synchronisation.
//!
//! Everything listens on 127.0.0.1 only.

pub mod nats;
pub mod ports;
pub mod process;
pub mod secure;
pub mod understudy;

mod dirs;
mod wait;

use std::path::PathBuf;
use std::time::Duration;

pub use dirs::TempDir;
pub use nats::{NatsCluster, NatsServer, connect, find_nats_server};
pub use ports::{free_port, free_ports, port_or_free};
pub use process::{Launch, Process, Signal, tail};
pub use secure::SecureBus;
pub use understudy::{Device, DeviceOpts, Gateway, GatewayOpts, mac};
pub use wait::{POLL, wait_until};

/// Why starting, stopping or waiting for something failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system or socket operation failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// What was being done ("open the log", "bind", …).
        what: &'static str,
        /// The file, folder or address it was done to.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A program could not be started.
    #[error("cannot start {name} ({}): {source}", program.display())]
    Spawn {
        /// The process's name in the toolkit's messages.
        name: String,
        /// The program.
        program: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A process ended while it was expected to start or keep running.
    #[error("{name} exited ({status}); its log {}:\n{tail}", log.display())]
    Exited {
        /// The process's name.
        name: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },
    /// Signalling a process failed (or it had already exited).
    #[error("cannot send SIG{signal} to {name}: {detail}")]
    Signal {
        /// The process's name.
        name: String,
        /// The signal's name, e.g. `TERM`.
        signal: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// A condition did not hold before its deadline.
    #[error("timed out after {within:?} waiting for {what}: {last}")]
    TimedOut {
        /// What was awaited.
        what: String,
        /// The deadline, from the start of the wait.
        within: Duration,
        /// The last probe's complaint.
        last: String,
    },
    /// No usable `nats-server` binary.
    #[error(
        "{detail}; run `scripts/ensure-nats.sh` (or `source` it) to install a current nats-server into .tools/bin, or set UNDERSTUDY_NATS_SERVER"
    )]
    NatsServerMissing {
        /// What was found, or not.
        detail: String,
    },
    /// A secured bus could not be set up (a group name, a certificate).
    #[error("{0}")]
    Config(String),
    /// The ports picked for a server kept being taken by others.
    #[error("{name}: the ports picked kept being taken by other processes: {last}")]
    PortsTaken {
        /// The server.
        name: String,
        /// The last failure.
        last: String,
    },
}

impl Error {
    fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}
