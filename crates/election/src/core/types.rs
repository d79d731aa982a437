//! The events a [`Machine`](super::Machine) is fed and the actions it returns.

use understudy_protocol::ledger::LedgerEntry;
use understudy_protocol::messages::StepDownReason;
use understudy_protocol::messages::{ElectionEventKind, LeaseRecord};
use understudy_protocol::{DeviceId, InstanceId, Mac, Role, Score, Term};

/// Identifies one store call, so its reply can be matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

/// What a compare-and-set write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist (a JetStream KV `create`).
    Absent,
    /// The key's last revision must be this (a JetStream KV `update`).
    Revision(u64),
}

/// A peer as its latest heartbeat describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer.
    pub device: DeviceId,
    /// Its process instance: a restarted holder is not the holder any more.
    pub instance: InstanceId,
    /// Its MAC.
    pub mac: Mac,
    /// Its score.
    pub score: Score,
    /// Whether it is online (B1).
    pub online: bool,
    /// Whether it acts as server.
    pub role: Role,
    /// The newest term it knows.
    pub term: Term,
    /// Whether it is in its start-up grace (B6).
    pub in_grace: bool,
}

/// What a store call came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOutcome {
    /// The write landed at this revision.
    Written {
        /// The new revision of the lease entry.
        revision: u64,
    },
    /// The expectation did not hold; this is what the store holds now.
    Conflict {
        /// The current entry, or `None` when the key is absent.
        current: Option<(u64, LeaseRecord)>,
    },
    /// No answer (timeout, bus down): the write may or may not have landed.
    Failed,
}

/// Something that happened, fed to [`Machine::handle`](super::Machine::handle).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Only time passed (a timer fired).
    Tick,
    /// A heartbeat from a peer.
    PeerSeen(PeerStatus),
    /// The failure detector gave up one process instance of a peer, or it
    /// left cleanly. Only that instance is gone: a lease naming another
    /// instance of the same device is not news of this loss.
    PeerLost {
        /// The device.
        device: DeviceId,
        /// The instance that is gone.
        instance: InstanceId,
    },
    /// The lease entry as a watch or a read saw it; `None` when it is absent.
    LeaseObserved(Option<(u64, LeaseRecord)>),
    /// The reply to a store call.
    StoreReply {
        /// Which call.
        op: OpId,
        /// What came back.
        outcome: StoreOutcome,
    },
    /// This device's score was changed (B3).
    SetScore(Score),
    /// This device was taken online or offline (B1).
    SetOnline(bool),
    /// An operator asked for an election (B9). While the group is held
    /// only a forced one is acted on.
    TriggerElection {
        /// Whether the operator insisted (`--force`) past a show hold.
        force: bool,
    },
    /// The group's show hold was set or lifted: while it is on, the server
    /// does not hand over to a better candidate (see the machine's docs).
    SetHold(bool),
    /// This device is shutting down: hand over at once if serving.
    Shutdown,
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write `record` to the lease entry if `expect` holds: claiming the lease.
    Claim {
        /// Reply with this id.
        op: OpId,
        /// The compare-and-set condition.
        expect: Expect,
        /// The value to write.
        record: LeaseRecord,
    },
    /// Rewrite the lease entry if its revision is still `revision`: renewing.
    Renew {
        /// Reply with this id.
        op: OpId,
        /// The revision of this server's last write.
        revision: u64,
        /// The value to write.
        record: LeaseRecord,
    },
    /// Release the lease (possibly to a named successor) if its revision is
    /// still `revision`. The device has already stopped serving.
    Release {
        /// Reply with this id.
        op: OpId,
        /// The revision of this server's last write.
        revision: u64,
        /// The vacant record to write.
        record: LeaseRecord,
    },
    /// Start serving with this term.
    BecomeServer {
        /// The fencing token to carry.
        term: Term,
    },
    /// Stop serving now.
    StepDown {
        /// The term given up.
        term: Term,
        /// Why.
        reason: StepDownReason,
    },
    /// Publish an election event on the bus.
    Publish(ElectionEventKind),
    /// Append this entry to the group's election ledger. The machine
    /// leaves to the driver what only it knows: the wall-clock time
    /// (`at_ms`, 0 here) and, for a lost server, how long it had been
    /// silent (`timings.detection_ms`, to be added to `without_server_ms`).
    Ledger(LedgerEntry),
}
