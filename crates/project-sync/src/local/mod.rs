//! A device's durable local state for the project file (B11).
//!
//! B11: clients keep running on their local copy when no server is reachable;
//! changes made meanwhile are kept in a durable outbox and submitted after
//! re-election; a conflicting one is reported, not lost. This module is that
//! durability and nothing more: synchronous `std` file I/O, no network, no
//! async, so the device service and the CLI can both use it and a test can
//! drive it in a temporary directory.
//!
//! Layout under the root directory:
//!
//! ```text
//! meta.json                    CopyMeta of the current copy
//! content-<sha256>             the current copy's bytes
//! partial-<revision>-<sha256>  a download in progress (resumable)
//! outbox/<key>.bin + .json     queued changes (the .json makes the entry exist)
//! conflicts/<key>.bin + .json  changes the server refused with a conflict
//! ```
//!
//! Crash safety comes from one pattern used everywhere: write a `*.tmp` file,
//! fsync it, rename it over its final name, fsync the directory. A crash
//! leaves either the old state or the new one, both whole, and at worst a
//! stray `*.tmp` that [`LocalCopy::open`] sweeps once it is old. Several
//! processes may share the directory (the device service reads the outbox
//! while the CLI adds to it), so readers ignore `*.tmp` files and the sweep
//! spares young ones, which may belong to a writer still at work.
//!
//! The code is split by concern: `copy` holds the verified local copy and
//! downloads into it, `outbox` the changes waiting for a server and the
//! refused ones, `digest` the size and SHA-256 checks, and `fsio` the one
//! way files are written (temporary file, fsync, rename, fsync the folder).

mod copy;
mod digest;
mod fsio;
mod outbox;

use std::io;
use std::path::PathBuf;

pub use copy::{CopyMeta, CopyState, Incoming, LocalCopy};
pub use digest::{sha256_file, sha256_hex};
pub use fsio::replace_file;
pub use outbox::{ConflictEntry, Outbox, OutboxEntry, fresh_change_id, valid_change_id};

/// Subdirectory of queued changes.
const OUTBOX_DIR: &str = "outbox";
/// Subdirectory of refused changes.
const CONFLICTS_DIR: &str = "conflicts";

/// Why a local-state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A file-system operation failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "rename into place", …).
        what: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Content does not have the SHA-256 it should.
    #[error("{} has SHA-256 {actual}, expected {expected}", path.display())]
    Checksum {
        /// The file checked (for bytes given in memory, the file they were to become).
        path: PathBuf,
        /// The SHA-256 it should have.
        expected: String,
        /// The SHA-256 it has.
        actual: String,
    },
    /// Content has the wrong size, or a write would go past the expected size.
    #[error("content of {actual} bytes does not match the expected {expected} bytes")]
    Size {
        /// The size the content should have.
        expected: u64,
        /// The size it has (or would have after the refused write).
        actual: u64,
    },
    /// A file's contents cannot be decoded.
    #[error("{} is corrupt: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// No queued or conflicted change has this key.
    #[error("no change with key {key:?}")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// A change id is not 1–64 of A–Z a–z 0–9 _ -.
    #[error("change id {value:?} is invalid: use 1–64 of A–Z a–z 0–9 _ -")]
    InvalidChangeId {
        /// The id given.
        value: String,
    },
    /// A SHA-256 given in a [`CopyMeta`] is not 64 lower-case hex digits.
    #[error("SHA-256 {value:?} is invalid: expected 64 lower-case hex digits")]
    InvalidSha {
        /// The value given.
        value: String,
    },
}

#[cfg(test)]
mod tests;
