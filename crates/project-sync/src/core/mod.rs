//! The pure rules of project-sync: no tokio, no NATS, no clock of its own.
//!
//! - [`serving`]: whether this device serves, under which term — fencing on
//!   the election's word, stopping on silence, a deposed term, or an unknown
//!   commit outcome (S1, S2).
//! - [`head`]: how the project head changes — fencing by a new server and
//!   committing a change — so that an acknowledged change is never lost and
//!   history never forks (S1, S2).
//! - [`upload`]: what a submitted change must satisfy before it is committed
//!   (declared size within the limit, no chunk past it, SHA-256 matching).
//! - [`terms`]: a client drops anything from an older term than it has seen.

pub mod head;
pub mod serving;
pub mod terms;
pub mod upload;

pub use head::{ChangeMeta, CommitDecision, FenceDecision, commit, fence, landed};
pub use serving::{
    Action, CONFIRM_FRESH, CommitOutcome, FenceOutcome, Input, Phase, Serving, StopReason,
};
pub use terms::TermGuard;
pub use upload::{MAX_PROJECT_SIZE, Upload, UploadError};
