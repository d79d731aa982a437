//! The JSON messages that travel on the bus, and the lease record kept in
//! JetStream KV.
//!
//! Every message carries `schema` ([`SCHEMA_VERSION`]). Decoding is tolerant of
//! fields it does not know (a newer peer may add some) and strict about fields
//! it needs: a missing one is refused with an error that names it. Use
//! [`decode`] rather than `serde_json` directly so the version is checked first.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{
    DeviceId, GroupName, InstanceId, Mac, Problem, ProtocolError, Role, Score, StatusColour, Term,
};

/// The schema version this build writes, and the only one it reads.
pub const SCHEMA_VERSION: u32 = 1;

/// A message type that can travel on the bus.
pub trait BusMessage: Serialize + DeserializeOwned {
    /// A short name for error messages ("heartbeat", "election event", …).
    const KIND: &'static str;

    /// Decodes the fields, once [`decode`] has checked the schema version.
    /// A message whose refusals a program must tell apart (a
    /// [`ControlRequest`]'s score out of range) overrides this to return
    /// the precise [`ProtocolError`] instead of [`ProtocolError::Malformed`].
    fn from_json(bytes: &[u8]) -> Result<Self, ProtocolError> {
        serde_json::from_slice(bytes).map_err(|e| malformed::<Self>(&e))
    }
}

fn malformed<M: BusMessage>(e: &serde_json::Error) -> ProtocolError {
    ProtocolError::Malformed {
        kind: M::KIND,
        detail: e.to_string(),
    }
}

/// Encodes a message as JSON.
pub fn encode<M: BusMessage>(message: &M) -> Vec<u8> {
    // Serialising these plain structs cannot fail: no maps with non-string
    // keys, no custom serialisers that error.
    serde_json::to_vec(message).unwrap_or_default()
}

#[derive(Deserialize)]
struct SchemaProbe {
    schema: Option<u32>,
}

/// Decodes a message, checking its schema version before its fields.
pub fn decode<M: BusMessage>(bytes: &[u8]) -> Result<M, ProtocolError> {
    let probe: SchemaProbe = serde_json::from_slice(bytes).map_err(|e| malformed::<M>(&e))?;
    match probe.schema {
        Some(SCHEMA_VERSION) => {}
        Some(found) => {
            return Err(ProtocolError::UnsupportedSchema {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        None => {
            return Err(ProtocolError::Malformed {
                kind: M::KIND,
                detail: "missing field `schema`".into(),
            });
        }
    }
    M::from_json(bytes)
}

/// A device's periodic "I am alive" on `understudy.<group>.heartbeat.<device>`.
///
/// It carries everything a peer needs to rank the sender (B4) and to tell a
/// restart from a duplicate id (instance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The sender's project group.
    pub group: GroupName,
    /// The sender.
    pub device: DeviceId,
    /// The sender's process instance.
    pub instance: InstanceId,
    /// The sender's MAC, the election tie-breaker.
    pub mac: Mac,
    /// The sender's current score.
    pub score: Score,
    /// Whether the sender is online (B1). Offline devices still beat so counts stay true (B10).
    pub online: bool,
    /// Whether the sender acts as server.
    pub role: Role,
    /// The newest term the sender knows; its own when it is server.
    pub term: Term,
    /// Whether the sender is still in its start-up grace (B6).
    pub in_grace: bool,
    /// The colour the sender shows (B2).
    #[serde(default = "grey")]
    pub colour: StatusColour,
    /// The sender's problems, if it is red (B2).
    #[serde(default)]
    pub problems: Vec<Problem>,
    /// Counts up by one per heartbeat of this instance.
    pub seq: u64,
    /// How often the sender beats, in milliseconds.
    pub interval_ms: u32,
    /// The sender's wall clock, Unix milliseconds; for display only.
    pub sent_at_ms: u64,
}

fn grey() -> StatusColour {
    StatusColour::Grey
}

impl BusMessage for Heartbeat {
    const KIND: &'static str = "heartbeat";
}

/// What kind of instance announces itself on `understudy.presence.<instance>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceKind {
    /// A device running the understudy services.
    Device,
    /// A GUI (dashboard) session.
    Gui,
    /// A control session (JSON over HTTP, WebSocket or TCP).
    Control,
}

/// Network-wide presence of any instance, for counts (B10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The announcing process.
    pub instance: InstanceId,
    /// Device, GUI or control session.
    pub kind: InstanceKind,
    /// The device id, for devices.
    #[serde(default)]
    pub device: Option<DeviceId>,
    /// The group the instance belongs to or looks at.
    #[serde(default)]
    pub group: Option<GroupName>,
    /// Whether a device is online (B1); true for sessions.
    pub online: bool,
    /// A device's role.
    #[serde(default)]
    pub role: Option<Role>,
    /// How often presence is announced, in milliseconds.
    pub interval_ms: u32,
    /// The sender's wall clock, Unix milliseconds; for display only.
    pub sent_at_ms: u64,
}

impl BusMessage for Presence {
    const KIND: &'static str = "presence";
}

/// A clean goodbye on `understudy.<group>.leave.<device>`, so peers need not
/// wait for the failure detector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leave {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The group being left.
    pub group: GroupName,
    /// The leaving device.
    pub device: DeviceId,
    /// The leaving process instance.
    pub instance: InstanceId,
    /// Why, in words.
    pub reason: String,
}

impl BusMessage for Leave {
    const KIND: &'static str = "leave";
}

/// Why an election was held (B5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElectionReason {
    /// Devices came up and their grace ended with no server.
    Startup,
    /// The server stopped being heard.
    ServerLost,
    /// The server left or stepped down and nobody holds the lease.
    NoServer,
    /// A score changed.
    ScoreChanged,
    /// A better device joined or came online (preemption).
    Preemption,
    /// The previous server handed the lease over.
    HandOver,
    /// An operator asked for one.
    Operator,
    /// A reason this build does not know.
    #[serde(other)]
    Other,
}

/// Why a server stopped serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepDownReason {
    /// It handed over to a better or remaining device.
    HandOver,
    /// It could not renew its lease in time (bus or store unreachable).
    LeaseLost,
    /// Another device holds a newer term.
    Deposed,
    /// It was taken offline.
    Offline,
    /// Its score became 0.
    ScoreZero,
    /// It is shutting down.
    Shutdown,
    /// A reason this build does not know.
    #[serde(other)]
    Other,
}

impl ElectionReason {
    /// The reason as it is serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            ElectionReason::Startup => "startup",
            ElectionReason::ServerLost => "server_lost",
            ElectionReason::NoServer => "no_server",
            ElectionReason::ScoreChanged => "score_changed",
            ElectionReason::Preemption => "preemption",
            ElectionReason::HandOver => "hand_over",
            ElectionReason::Operator => "operator",
            ElectionReason::Other => "other",
        }
    }
}

impl StepDownReason {
    /// The reason as it is serialised (and as metric labels spell it).
    pub fn as_str(self) -> &'static str {
        match self {
            StepDownReason::HandOver => "hand_over",
            StepDownReason::LeaseLost => "lease_lost",
            StepDownReason::Deposed => "deposed",
            StepDownReason::Offline => "offline",
            StepDownReason::ScoreZero => "score_zero",
            StepDownReason::Shutdown => "shutdown",
            StepDownReason::Other => "other",
        }
    }
}

/// What happened, in an [`ElectionEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ElectionEventKind {
    /// The reporter starts an election: it tries to claim the lease.
    ElectionStarted {
        /// Why.
        reason: ElectionReason,
    },
    /// The reporter won the lease.
    ServerElected {
        /// The new server.
        device: DeviceId,
        /// Its MAC.
        mac: Mac,
        /// Its score.
        score: Score,
        /// Its term.
        term: Term,
        /// Why the election was held.
        reason: ElectionReason,
    },
    /// The server is no longer heard.
    ServerLost {
        /// The lost server.
        device: DeviceId,
        /// Its term.
        term: Term,
        /// How long the reporter had not heard the server when it gave it
        /// up (its detection time), in milliseconds, if it knows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        silent_ms: Option<u64>,
    },
    /// The reporter stopped serving.
    SteppedDown {
        /// The former server.
        device: DeviceId,
        /// Its term.
        term: Term,
        /// Why.
        reason: StepDownReason,
    },
    /// The reporter released the lease to a named successor.
    HandedOver {
        /// The former server.
        from: DeviceId,
        /// The successor.
        to: DeviceId,
        /// The term handed over.
        term: Term,
    },
    /// Every online score is 0: no election runs (B7).
    NoViableCandidate,
    /// An operator put the group's show hold on or lifted it (see
    /// [`crate::hold`]); the reporter is the device that stored it.
    HoldChanged {
        /// Whether the group is now held.
        held: bool,
        /// When the hold lapses by itself, Unix milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until_ms: Option<u64>,
        /// Why, in the operator's words.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Who set it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        set_by: Option<String>,
    },
    /// An event type this build does not know.
    #[serde(other)]
    Unknown,
}

/// An election event on `understudy.<group>.events.election` (B9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionEvent {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The group.
    pub group: GroupName,
    /// The device that saw it happen and published it.
    pub reporter: DeviceId,
    /// The reporter's wall clock, Unix milliseconds.
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: ElectionEventKind,
}

impl BusMessage for ElectionEvent {
    const KIND: &'static str = "election event";
}

/// Who holds the server lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHolder {
    /// The server device.
    pub device: DeviceId,
    /// Its process instance.
    pub instance: InstanceId,
    /// Its MAC.
    pub mac: Mac,
    /// Its score when it wrote the record.
    pub score: Score,
    /// Where its project-sync gRPC service listens (`host:port`), so clients
    /// find the server with the lease; `None` when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_addr: Option<String>,
}

/// The value of the lease entry in JetStream KV (key `lease`, bucket per group).
///
/// The entry is only ever changed by compare-and-set on its revision. The write
/// that claims the lease leaves `term` empty: its own revision is the term
/// (S1). Renewals keep the term they hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The group.
    pub group: GroupName,
    /// The holder; `None` when the lease was released.
    #[serde(default)]
    pub holder: Option<LeaseHolder>,
    /// The term, or `None` on the claiming write.
    #[serde(default)]
    pub term: Option<Term>,
    /// On a release: the device the lease is handed to.
    #[serde(default)]
    pub handover_to: Option<DeviceId>,
    /// On a release: who let go and why (for the successor's ledger entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<Released>,
}

/// Why a server released its lease, written into the release record so the
/// device that claims next can say it in the election ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The server that released.
    pub by: DeviceId,
    /// Its process instance: after a shutdown, the successor counts that
    /// instance out at once, though its last beats may still be arriving.
    pub instance: InstanceId,
    /// How it stopped serving (`hand_over`, `shutdown`, `offline`,
    /// `score_zero`).
    pub reason: StepDownReason,
    /// What led to it: `preemption` or `score_changed` (a better device),
    /// `operator` (a trigger), `hand_over` (shutdown, offline).
    pub cause: ElectionReason,
}

impl LeaseRecord {
    /// The term of this record when it is stored at `revision`.
    pub fn term_at(&self, revision: u64) -> Term {
        self.term.unwrap_or(Term::from_revision(revision))
    }
}

impl BusMessage for LeaseRecord {
    const KIND: &'static str = "lease record";
}

/// The election service's state, for the other services of the same device
/// (`understudy.<group>.local.<device>.election`), published on every change
/// and four times a second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionState {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The group.
    pub group: GroupName,
    /// The device.
    pub device: DeviceId,
    /// The election service's process instance.
    pub instance: InstanceId,
    /// The device's MAC.
    pub mac: Mac,
    /// The device's current score.
    pub score: Score,
    /// Whether the device is online.
    pub online: bool,
    /// Client or server.
    pub role: Role,
    /// The newest term known; the device's own when it serves.
    pub term: Term,
    /// Whether the start-up grace is running.
    pub in_grace: bool,
    /// The server as this device sees it.
    #[serde(default)]
    pub server: Option<DeviceId>,
}

impl BusMessage for ElectionState {
    const KIND: &'static str = "election state";
}

/// What the failure detector concluded about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerChangeKind {
    /// First heard, or heard again after it was lost or left.
    Joined,
    /// A new instance of a live device.
    Restarted,
    /// Silent for three of its intervals.
    Lost,
    /// Said goodbye.
    Left,
}

/// The heartbeat service's verdict about a peer
/// (`understudy.<group>.local.<observer>.peers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNotice {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The group.
    pub group: GroupName,
    /// The device whose detector decided.
    pub observer: DeviceId,
    /// What was decided.
    pub change: PeerChangeKind,
    /// The peer.
    pub device: DeviceId,
    /// The peer's instance.
    pub instance: InstanceId,
    /// When the detector decided, in Unix milliseconds (the device's own
    /// clock). A verdict that waited for the bus (made while the device was
    /// cut off) is old news by the time it arrives. Absent from older senders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<u64>,
}

impl BusMessage for PeerNotice {
    const KIND: &'static str = "peer notice";
}

/// Discovery's view of this device (`understudy.<group>.local.<device>.status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The group.
    pub group: GroupName,
    /// The device.
    pub device: DeviceId,
    /// Its colour (B2).
    pub colour: StatusColour,
    /// Its problems.
    #[serde(default)]
    pub problems: Vec<Problem>,
    /// The election service instance the publishing discovery service
    /// follows, so that a second process with this device id is not taken
    /// for this one (B2). Absent from older senders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceId>,
}

impl BusMessage for DeviceStatus {
    const KIND: &'static str = "device status";
}

/// What an operator asks of a device on `understudy.<group>.control.<device>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlOp {
    /// Set the device's score (B3); triggers an election.
    SetScore {
        /// The new score, 0–255.
        score: Score,
    },
    /// Take the device online or offline (B1).
    SetOnline {
        /// Online when true.
        online: bool,
    },
    /// Forget the score an operator set: the device returns to its
    /// configured score; an election follows.
    ResetScore,
    /// Answer with the device's election state.
    Get,
}

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRequest {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// What to do.
    #[serde(flatten)]
    pub op: ControlOp,
    /// Who asks (a person, a tool), kept with the stored setting; at most
    /// [`crate::hold::SET_BY_MAX_CHARS`] characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_by: Option<String>,
}

impl BusMessage for ControlRequest {
    const KIND: &'static str = "control request";

    /// Reads the score as a plain number first, so that a score outside
    /// 0–255 is refused as [`ProtocolError::ScoreOutOfRange`] (a code the
    /// reply carries), not as a malformed message.
    fn from_json(bytes: &[u8]) -> Result<Self, ProtocolError> {
        #[derive(Deserialize)]
        #[serde(tag = "op", rename_all = "snake_case")]
        enum LooseOp {
            SetScore { score: serde_json::Number },
            SetOnline { online: bool },
            ResetScore,
            Get,
        }
        #[derive(Deserialize)]
        struct Loose {
            schema: u32,
            #[serde(flatten)]
            op: LooseOp,
            #[serde(default)]
            set_by: Option<String>,
        }
        let loose: Loose = serde_json::from_slice(bytes).map_err(|e| malformed::<Self>(&e))?;
        let op = match loose.op {
            LooseOp::SetScore { score } => ControlOp::SetScore {
                score: control_score(&score)?,
            },
            LooseOp::SetOnline { online } => ControlOp::SetOnline { online },
            LooseOp::ResetScore => ControlOp::ResetScore,
            LooseOp::Get => ControlOp::Get,
        };
        if let Some(by) = &loose.set_by
            && by.chars().count() > crate::hold::SET_BY_MAX_CHARS
        {
            return Err(ProtocolError::Malformed {
                kind: Self::KIND,
                detail: format!(
                    "set_by is {} characters long; at most {} are allowed",
                    by.chars().count(),
                    crate::hold::SET_BY_MAX_CHARS
                ),
            });
        }
        Ok(ControlRequest {
            schema: loose.schema,
            op,
            set_by: loose.set_by,
        })
    }
}

/// A control request's score: an integer outside 0–255 is out of range; a
/// number that is not an integer is malformed.
fn control_score(n: &serde_json::Number) -> Result<Score, ProtocolError> {
    if let Some(i) = n.as_i64() {
        return Score::try_from(i);
    }
    if n.is_u64() {
        return Err(ProtocolError::ScoreOutOfRange {
            value: n.to_string(),
        });
    }
    Err(ProtocolError::Malformed {
        kind: ControlRequest::KIND,
        detail: format!("score {n} is not an integer (expected 0–255)"),
    })
}

/// Why a device refused a [`ControlRequest`], as a stable code a program
/// matches on (the reply's `error` text is for people and may change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlErrorCode {
    /// The request asked for a score outside 0–255 (B3).
    ScoreOutOfRange,
    /// The request was not a control request this device can read: not
    /// JSON, an unknown `op`, a missing field or one of the wrong type.
    InvalidRequest,
    /// The request carried a schema version this device does not speak.
    UnsupportedSchema,
    /// The device could not store the change in its group's settings
    /// bucket (JetStream unavailable), so it did not apply it either.
    StoreUnavailable,
    /// A code this build does not know (a newer device sent it).
    #[serde(other)]
    Unknown,
}

impl ControlErrorCode {
    /// The code as it is written on the bus.
    pub fn as_str(self) -> &'static str {
        match self {
            ControlErrorCode::ScoreOutOfRange => "score_out_of_range",
            ControlErrorCode::InvalidRequest => "invalid_request",
            ControlErrorCode::UnsupportedSchema => "unsupported_schema",
            ControlErrorCode::StoreUnavailable => "store_unavailable",
            ControlErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ControlErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&ProtocolError> for ControlErrorCode {
    fn from(e: &ProtocolError) -> Self {
        match e {
            ProtocolError::ScoreOutOfRange { .. } => ControlErrorCode::ScoreOutOfRange,
            ProtocolError::UnsupportedSchema { .. } => ControlErrorCode::UnsupportedSchema,
            ProtocolError::InvalidGroupName { .. }
            | ProtocolError::InvalidDeviceId { .. }
            | ProtocolError::InvalidInstanceId { .. }
            | ProtocolError::InvalidMac { .. }
            | ProtocolError::Malformed { .. } => ControlErrorCode::InvalidRequest,
        }
    }
}

/// The answer to a [`ControlRequest`]: build it with [`ControlReply::ok`] or
/// [`ControlReply::refused`], read a refusal with [`ControlReply::refusal`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlReply {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not, when it was not: the stable code. Absent from older
    /// devices; [`ControlReply::refusal`] supplies a default then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ControlErrorCode>,
    /// Why not, when it was not, in words for people.
    #[serde(default)]
    pub error: Option<String>,
    /// The device's state after the request.
    #[serde(default)]
    pub state: Option<ElectionState>,
}

/// Why a device refused a control request: [`ControlReply::refusal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The code to match on.
    pub code: ControlErrorCode,
    /// The text for people.
    pub message: String,
}

impl ControlReply {
    /// The request was carried out; `state` is the device's state after it.
    pub fn ok(state: ElectionState) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            ok: true,
            code: None,
            error: None,
            state: Some(state),
        }
    }

    /// The request was refused with `code` and `message`; `state` is the
    /// device's (unchanged) state.
    pub fn refused(
        code: ControlErrorCode,
        message: impl Into<String>,
        state: Option<ElectionState>,
    ) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            ok: false,
            code: Some(code),
            error: Some(message.into()),
            state,
        }
    }

    /// The request could not be read: the code follows from the error.
    pub fn unreadable(error: &ProtocolError, state: Option<ElectionState>) -> Self {
        Self::refused(error.into(), error.to_string(), state)
    }

    /// Why the request was refused, or `None` when it was carried out. A
    /// refusal without a code (an older device) is
    /// [`ControlErrorCode::InvalidRequest`]: the only thing such a device
    /// refuses is a request it cannot read.
    pub fn refusal(&self) -> Option<Refusal> {
        if self.ok {
            return None;
        }
        Some(Refusal {
            code: self.code.unwrap_or(ControlErrorCode::InvalidRequest),
            message: self
                .error
                .clone()
                .unwrap_or_else(|| "no reason given".into()),
        })
    }
}

impl BusMessage for ControlReply {
    const KIND: &'static str = "control reply";
}

/// An operator's election trigger on `understudy.<group>.trigger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// Who asked, in words (for the log).
    #[serde(default)]
    pub by: Option<String>,
    /// Whether the operator insists past a show hold (`--force`); a trigger
    /// while the group is held is ignored without it. Absent means false.
    #[serde(default)]
    pub force: bool,
}

impl BusMessage for Trigger {
    const KIND: &'static str = "trigger";
}

/// A device's answer to a [`Trigger`] sent as a request (each device of the
/// group answers; a requester takes the first answer). A trigger published
/// without a reply subject gets none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerReply {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The answering device.
    pub device: DeviceId,
    /// Whether the device acted on the trigger (held an election).
    pub acted: bool,
    /// Whether the group is under a show hold, as the device knows it: a
    /// trigger without `force` is not acted on then.
    pub held: bool,
}

impl BusMessage for TriggerReply {
    const KIND: &'static str = "trigger reply";
}

/// One committed project revision, as remembered in [`ProjectHead::recent`]
/// and announced in [`ProjectEventKind::RevisionCommitted`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionSummary {
    /// The project revision: 1 for the first change, one more per change.
    pub revision: u64,
    /// The term of the server that committed it.
    pub term: Term,
    /// The content's SHA-256, lower-case hex.
    pub sha256: String,
    /// The content's size in bytes.
    pub size: u64,
    /// The device (or tool) that submitted the change.
    #[serde(default)]
    pub changed_by: Option<String>,
    /// The submitter's id for the change, so a resubmission is recognised.
    #[serde(default)]
    pub change_id: Option<String>,
    /// When the server committed it, Unix milliseconds (its wall clock).
    pub committed_at_ms: u64,
}

/// The project head: the value of key `head` in the group's project bucket
/// (JetStream KV `understudy-project-<group>`), changed only by
/// compare-and-set on the entry's revision (S2).
///
/// `term` is the fencing term: a new server rewrites the head with its own
/// term before it serves, and a server commits only on the KV revision it
/// last wrote or read, so a deposed server's later commit fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectHead {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The group.
    pub group: GroupName,
    /// The newest term that fenced or committed the head; never decreases.
    pub term: Term,
    /// The current revision; `None` before the first change (empty project).
    #[serde(default)]
    pub current: Option<RevisionSummary>,
    /// The last committed revisions, oldest first, the current one last (at
    /// most [`ProjectHead::RECENT`]): for recognising a resubmitted change and
    /// for `understudy project status`.
    #[serde(default)]
    pub recent: Vec<RevisionSummary>,
}

impl ProjectHead {
    /// How many revisions [`ProjectHead::recent`] keeps.
    pub const RECENT: usize = 64;

    /// The current revision number (0 for an empty project).
    pub fn revision(&self) -> u64 {
        self.current.as_ref().map_or(0, |c| c.revision)
    }
}

impl BusMessage for ProjectHead {
    const KIND: &'static str = "project head";
}

/// What happened to the project, in a [`ProjectEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProjectEventKind {
    /// A new server fenced the head with its term and serves the project.
    ServingProject {
        /// The server.
        device: DeviceId,
        /// Its term.
        term: Term,
        /// The revision it serves.
        revision: u64,
        /// Where its gRPC service listens.
        #[serde(default)]
        address: Option<String>,
    },
    /// The server committed a change (acknowledged to its submitter).
    RevisionCommitted {
        /// The new revision.
        #[serde(flatten)]
        revision: RevisionSummary,
    },
    /// A device's queued change was refused because the project moved on
    /// since the revision it was made on; the change is kept on the device.
    ChangeConflicted {
        /// The device that holds the change.
        device: DeviceId,
        /// The change's id.
        change_id: String,
        /// The revision the change was made on.
        base_revision: u64,
        /// The server's revision when it refused.
        head_revision: u64,
    },
    /// A device's queued change could not be applied for another reason than
    /// a conflict (the server refused it, or its queued content is damaged);
    /// the change is kept on the device with the reason.
    ChangeRefused {
        /// The device that holds the change.
        device: DeviceId,
        /// The change's id.
        change_id: String,
        /// The revision the change was made on.
        base_revision: u64,
        /// Why it was refused.
        reason: String,
    },
    /// An event type this build does not know.
    #[serde(other)]
    Unknown,
}

/// A project event on `understudy.<group>.events.project`, kept in the
/// `UNDERSTUDY_EVENTS` stream with the election events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectEvent {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The group.
    pub group: GroupName,
    /// The device that published it.
    pub reporter: DeviceId,
    /// The reporter's wall clock, Unix milliseconds.
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: ProjectEventKind,
}

impl BusMessage for ProjectEvent {
    const KIND: &'static str = "project event";
}

/// The project-sync service's state, for the other services of the same
/// device (`understudy.<group>.local.<device>.project`), published once a
/// second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectState {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The group.
    pub group: GroupName,
    /// The device.
    pub device: DeviceId,
    /// The revision of the device's local copy (0 when it has none).
    pub revision: u64,
    /// Whether this device serves the project.
    pub serving: bool,
    /// Changes queued in the outbox, waiting for a server.
    pub outbox: u32,
    /// Changes refused with a conflict, kept for an operator.
    pub conflicts: u32,
    /// The election service instance the publishing project-sync service
    /// follows (see [`DeviceStatus::instance`]). Absent from older senders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceId>,
}

impl BusMessage for ProjectState {
    const KIND: &'static str = "project state";
}
