//! The gRPC service of the elected device (`understudy.v1.Project`).
//!
//! Every device runs it, but only the device whose serving core
//! ([`crate::core::Serving`]) says it serves — it won the lease *and* fenced
//! the project head with its term — answers project calls; any other answers
//! `FAILED_PRECONDITION` naming the server it knows (trailers named in
//! [`understudy_protocol::grpc`]).
//!
//! A change is acknowledged only after its content is in the object store and
//! the head names it, written by compare-and-set on the KV revision this
//! server last wrote ([`crate::core::commit`]). What a refused or unanswered
//! compare-and-set means (deposed; outcome unknown) is the serving core's
//! decision; this file carries it out. A commit is also refused when the
//! election service has not confirmed the lease recently
//! ([`crate::core::CONFIRM_FRESH`]: a process that was paused must not act
//! on an old belief).

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};
use understudy_bus::unix_ms;
use understudy_protocol::messages::{ProjectEventKind, ProjectHead, RevisionSummary};
use understudy_protocol::{DeviceId, GroupName, Term, grpc};

use crate::client::ServerRef;
use crate::core::{
    self, Action, ChangeMeta, CommitDecision, CommitOutcome, FenceDecision, Input, Serving, Upload,
    UploadError,
};
use crate::local::valid_change_id;
use crate::pb::{self, submit_chunk::Part};
use crate::security::CallerCheck;
use crate::store::{CasError, ProjectStore, StoreError};

/// Content is streamed to clients in chunks of this size.
pub const FETCH_CHUNK: usize = 1024 * 1024;

/// How many recent revisions keep their content in the object store.
const KEEP_CONTENT: usize = 4;
/// Old content is pruned after every this many revisions.
const PRUNE_EVERY: u64 = 16;
/// Content stored more recently than this is never pruned.
const PRUNE_MIN_AGE: Duration = Duration::from_secs(600);

/// What this device serves, once fenced.
#[derive(Clone)]
pub struct Snapshot {
    /// The lease term this device serves under.
    pub term: Term,
    /// The head's KV revision this server last wrote or read.
    pub kv_revision: u64,
    /// The head.
    pub head: ProjectHead,
    /// The content of the head's revision.
    pub content: Bytes,
    store: ProjectStore,
}

impl Snapshot {
    /// A snapshot of a fenced head.
    pub fn new(
        term: Term,
        kv_revision: u64,
        head: ProjectHead,
        content: Bytes,
        store: ProjectStore,
    ) -> Snapshot {
        Snapshot {
            term,
            kv_revision,
            head,
            content,
            store,
        }
    }
}

/// Settings of the gRPC service.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The group served.
    pub group: GroupName,
    /// This device.
    pub device: DeviceId,
    /// Where clients dial this device (named in `serving_project`).
    pub advertise: Option<String>,
    /// The largest project accepted, in bytes.
    pub max_size: u64,
}

struct Shared {
    cfg: ServerConfig,
    origin: Instant,
    /// The serving core; `serving` changes only while it is locked.
    core: Mutex<Serving>,
    serving: watch::Sender<Option<Arc<Snapshot>>>,
    commit: tokio::sync::Mutex<()>,
    known: Mutex<Option<ServerRef>>,
    events: Option<async_nats::Client>,
    fences: mpsc::UnboundedSender<Term>,
}

/// The `understudy.v1.Project` service of one device.
#[derive(Clone)]
pub struct ProjectService {
    shared: Arc<Shared>,
}
/// Why a new server could not fence the head.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// A newer term already holds the head.
    #[error("deposed before serving: the head carries term {0}")]
    Deposed(Term),
    /// The store did not answer or refused.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Other writers kept moving the head.
    #[error("the head kept changing while fencing")]
    Contended,
}

/// Fences the head with `term` (the fenced takeover, S1) and
/// loads the head's content: what a new server does before it serves.
pub async fn fence_and_load(
    store: &ProjectStore,
    group: &GroupName,
    term: Term,
) -> Result<Snapshot, FenceError> {
    for _ in 0..10 {
        let current = store.read_head().await?;
        let (kv_revision, head) = match core::fence(current.as_ref().map(|(_, h)| h), group, term) {
            FenceDecision::Deposed { head_term } => return Err(FenceError::Deposed(head_term)),
            FenceDecision::AlreadyFenced => match current {
                Some(c) => c,
                None => return Err(FenceError::Contended),
            },
            FenceDecision::Write(head) => {
                let written = match &current {
                    None => store.create_head(&head).await,
                    Some((rev, _)) => store.update_head(&head, *rev).await,
                };
                match written {
                    Ok(rev) => (rev, head),
                    Err(CasError::Conflict) => continue,
                    Err(CasError::Failed(e)) => return Err(e.into()),
                }
            }
        };
        let content = match &head.current {
            None => Bytes::new(),
            Some(r) => Bytes::from(store.get_content(&r.sha256, r.size).await?),
        };
        return Ok(Snapshot::new(
            term,
            kv_revision,
            head,
            content,
            store.clone(),
        ));
    }
    Err(FenceError::Contended)
}

fn to_pb(r: &RevisionSummary) -> pb::Revision {
    pb::Revision {
        revision: r.revision,
        committed_term: r.term.get(),
        size: r.size,
        sha256: r.sha256.clone(),
        changed_by: r.changed_by.clone().unwrap_or_default(),
        change_id: r.change_id.clone().unwrap_or_default(),
        committed_at_ms: r.committed_at_ms,
    }
}

/// The head's current revision as a gRPC message (revision 0 when empty).
pub fn head_to_pb(head: &ProjectHead) -> pb::Revision {
    head.current.as_ref().map(to_pb).unwrap_or(pb::Revision {
        sha256: crate::local::sha256_hex(b""),
        ..Default::default()
    })
}

fn upload_status(e: UploadError) -> Status {
    match e {
        UploadError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

/// The checks a submit's header must pass once its group and term are
/// accepted: a valid change id, a `changed_by` of at most 128 bytes, a size
/// within `max_size` and a well-formed SHA-256. Returns the upload the
/// content goes into. Pure, for the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub fn check_submit_header(header: &pb::SubmitHeader, max_size: u64) -> Result<Upload, Status> {
    if !valid_change_id(&header.change_id) {
        return Err(Status::invalid_argument(format!(
            "change_id {:?} is invalid: expected 1–64 of A–Z a–z 0–9 _ -",
            header.change_id.chars().take(80).collect::<String>()
        )));
    }
    if header.changed_by.len() > 128 {
        return Err(Status::invalid_argument(
            "changed_by is longer than 128 bytes",
        ));
    }
    Upload::new(header.size, &header.sha256, max_size).map_err(upload_status)
}

/// Takes one message of a submit after its header: content goes into
/// `upload`, a second header is refused. Pure, for the fuzz targets.
#[doc(hidden)]
pub fn submit_content(upload: &mut Upload, chunk: pb::SubmitChunk) -> Result<(), Status> {
    match chunk.part {
        Some(Part::Data(d)) => upload.push(&d).map_err(upload_status),
        Some(Part::Header(_)) => Err(Status::invalid_argument(
            "a submit carries exactly one header",
        )),
        None => Ok(()),
    }
}

/// Where a fetch of `head_revision` (`size` bytes) starts: the request's
/// offset when it resumes that revision (refused past the end), else 0.
/// Pure, for the fuzz targets.
#[doc(hidden)]
pub fn fetch_start(req: &pb::FetchRequest, head_revision: u64, size: u64) -> Result<u64, Status> {
    if req.resume_revision == head_revision && req.resume_revision != 0 {
        if req.offset > size {
            return Err(Status::invalid_argument(format!(
                "offset {} is past the end of revision {head_revision} ({size} bytes)",
                req.offset
            )));
        }
        Ok(req.offset)
    } else {
        Ok(0)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl ProjectService {
    /// A service that serves nothing until the serving core says so (fed
    /// through [`ProjectService::feed`]). `events` publishes project events
    /// on the bus when given. The receiver gets the terms the core asks to
    /// fence: the driver fences them and feeds the outcome back.
    pub fn new(
        cfg: ServerConfig,
        events: Option<async_nats::Client>,
    ) -> (ProjectService, mpsc::UnboundedReceiver<Term>) {
        let (serving, _) = watch::channel(None);
        let (fences, fence_rx) = mpsc::unbounded_channel();
        let core = Serving::new(cfg.device.clone(), cfg.advertise.clone());
        let shared = Arc::new(Shared {
            cfg,
            origin: Instant::now(),
            core: Mutex::new(core),
            serving,
            commit: tokio::sync::Mutex::new(()),
            known: Mutex::new(None),
            events,
            fences,
        });
        (ProjectService { shared }, fence_rx)
    }

    /// The tonic server for this service, with message limits fitted to the
    /// chunk sizes, behind `check`: every call (describe, fetch, submit,
    /// watch) passes it before the service sees it.
    pub fn into_server(
        self,
        check: CallerCheck,
    ) -> InterceptedService<pb::project_server::ProjectServer<ProjectService>, CallerCheck> {
        let server = pb::project_server::ProjectServer::new(self)
            .max_decoding_message_size(FETCH_CHUNK * 2 + 4096)
            .max_encoding_message_size(FETCH_CHUNK * 2 + 4096);
        InterceptedService::new(server, check)
    }

    /// The serving core's clock: time since this service was made.
    fn now(&self) -> Duration {
        self.shared.origin.elapsed()
    }

    /// When the serving core next wants [`Input::Tick`], if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        let core = self.shared.core.lock().ok()?;
        core.next_deadline().map(|d| self.shared.origin + d)
    }

    /// Reads a submitted change (header, then content) and commits it.
    async fn receive_submit(
        &self,
        mut stream: Streaming<pb::SubmitChunk>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        let header = match stream.message().await? {
            Some(pb::SubmitChunk {
                part: Some(Part::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a submit must be its header",
                ));
            }
        };
        let snap = self.serving_for(&header.group, header.seen_term)?;
        drop(snap);
        let mut upload = check_submit_header(&header, self.shared.cfg.max_size)?;
        while let Some(chunk) = stream.message().await? {
            submit_content(&mut upload, chunk)?;
        }
        let data = upload.finish().map_err(upload_status)?;
        self.metrics().received.inc_by(data.len() as u64);
        let meta = ChangeMeta {
            base_revision: header.base_revision,
            sha256: header.sha256,
            size: header.size,
            changed_by: Some(header.changed_by).filter(|s| !s.is_empty()),
            change_id: Some(header.change_id),
        };
        self.commit(meta, data).await.map(Response::new)
    }

    /// This device's project-sync figures for `/metrics`.
    fn metrics(&self) -> understudy_telemetry::ProjectMetrics {
        let cfg = &self.shared.cfg;
        understudy_telemetry::metrics().project(cfg.group.as_str(), cfg.device.as_str())
    }

    /// Feeds the serving core and carries out what it decides: stop (at
    /// once), fence (asked of the driver), serve — `snapshot` is installed
    /// if the core serves its term afterwards (a fence's result, a commit's
    /// new head). Returns the events to publish, for the caller to
    /// [`ProjectService::publish`] once it holds no lock.
    pub fn feed(&self, input: Input, snapshot: Option<Snapshot>) -> Vec<ProjectEventKind> {
        let Ok(mut core) = self.shared.core.lock() else {
            return Vec::new();
        };
        let mut events = Vec::new();
        for action in core.handle(input, self.now()) {
            match action {
                Action::Fence { term } => {
                    info!(%term, "fencing the project head before serving");
                    let _ = self.shared.fences.send(term);
                }
                Action::Serve { term } => info!(%term, "serving the project"),
                Action::Stop { term, reason } => {
                    info!(%term, why = reason.as_str(), "stopped serving the project");
                    self.shared.serving.send_replace(None);
                }
                Action::Publish(kind) => events.push(kind),
            }
        }
        if let Some(s) = snapshot.filter(|s| core.serving() == Some(s.term)) {
            self.shared.serving.send_replace(Some(Arc::new(s)));
        }
        events
    }

    /// Publishes `events` (see [`crate::events`]).
    pub async fn publish(&self, events: Vec<ProjectEventKind>) {
        let Some(client) = &self.shared.events else {
            return;
        };
        for kind in events {
            crate::events::publish(
                client,
                &self.shared.cfg.group,
                &self.shared.cfg.device,
                kind,
            )
            .await;
        }
    }

    /// The term served, if any.
    pub fn serving_term(&self) -> Option<Term> {
        self.shared.serving.borrow().as_ref().map(|s| s.term)
    }

    /// The snapshot served, if any.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.shared.serving.borrow().clone()
    }

    /// Who serves the group, as the lease says (for "not the server" answers).
    pub fn set_known_server(&self, server: Option<ServerRef>) {
        if let Ok(mut k) = self.shared.known.lock() {
            *k = server;
        }
    }

    fn may_commit(&self, term: Term) -> bool {
        let now = self.now();
        self.shared
            .core
            .lock()
            .is_ok_and(|c| c.may_commit(term, now))
    }

    fn not_server(&self, why: &str) -> Status {
        let known = self.shared.known.lock().ok().and_then(|k| k.clone());
        let who = match &known {
            Some(s) if s.device != self.shared.cfg.device => format!(
                "; the server is {} at {} (term {})",
                s.device,
                s.address.as_deref().unwrap_or("an unknown address"),
                s.term
            ),
            _ => "; no server is known".to_string(),
        };
        let mut status = Status::failed_precondition(format!(
            "{} does not serve group {}: {why}{who}",
            self.shared.cfg.device, self.shared.cfg.group
        ));
        if let Some(s) = known.filter(|s| s.device != self.shared.cfg.device) {
            let md = status.metadata_mut();
            if let Ok(v) = MetadataValue::try_from(s.device.to_string()) {
                md.insert(grpc::SERVER, v);
            }
            if let Some(Ok(v)) = s.address.map(MetadataValue::try_from) {
                md.insert(grpc::SERVER_ADDRESS, v);
            }
            if let Ok(v) = MetadataValue::try_from(s.term.get().to_string()) {
                md.insert(grpc::TERM, v);
            }
        }
        status
    }

    /// The snapshot to answer from, after the checks every call makes: the
    /// right group, this device serving, and no newer term seen by the client.
    fn serving_for(&self, group: &str, seen_term: u64) -> Result<Arc<Snapshot>, Status> {
        let group: GroupName = group
            .parse()
            .map_err(|e| Status::invalid_argument(format!("{e}")))?;
        if group != self.shared.cfg.group {
            return Err(Status::permission_denied(format!(
                "this device serves group {}, not {group}",
                self.shared.cfg.group
            )));
        }
        let Some(snap) = self.snapshot() else {
            return Err(self.not_server("it is not the elected server"));
        };
        if seen_term > snap.term.get() {
            return Err(self.not_server(&format!(
                "its term {} is older than the term {seen_term} the client has seen",
                snap.term
            )));
        }
        Ok(snap)
    }

    /// Commits a change: one at a time, then the events are published with
    /// the commit lock released.
    async fn commit(&self, meta: ChangeMeta, data: Vec<u8>) -> Result<pb::SubmitReply, Status> {
        let (reply, events) = {
            let _one_at_a_time = self.shared.commit.lock().await;
            self.commit_locked(meta, data).await
        };
        self.publish(events).await;
        reply
    }

    /// The commit itself (module docs): confirm, decide, store the content,
    /// compare-and-set the head, and let the serving core judge the outcome.
    async fn commit_locked(
        &self,
        meta: ChangeMeta,
        data: Vec<u8>,
    ) -> (Result<pb::SubmitReply, Status>, Vec<ProjectEventKind>) {
        let Some(snap) = self.snapshot() else {
            return (Err(self.not_server("it stopped serving")), Vec::new());
        };
        let reply = |outcome| pb::SubmitReply {
            term: snap.term.get(),
            outcome: Some(outcome),
        };
        if !self.may_commit(snap.term) {
            return (
                Err(Status::unavailable(
                    "this server cannot confirm it still holds the lease; nothing was committed, try again",
                )),
                Vec::new(),
            );
        }
        let now_ms = unix_ms(SystemTime::now());
        let (head, revision) = match core::commit(&snap.head, snap.term, &meta, now_ms) {
            CommitDecision::Deposed { head_term } => {
                let events = self.committed(snap.term, CommitOutcome::Deposed, None);
                return (
                    Err(self.not_server(&format!("it was deposed by term {head_term}"))),
                    events,
                );
            }
            CommitDecision::Conflict { current } => {
                let current = current
                    .as_ref()
                    .map(to_pb)
                    .unwrap_or_else(|| head_to_pb(&snap.head));
                return (
                    Ok(reply(pb::submit_reply::Outcome::Conflict(current))),
                    Vec::new(),
                );
            }
            CommitDecision::AlreadyCommitted(r) => {
                return (
                    Ok(reply(pb::submit_reply::Outcome::AlreadyCommitted(to_pb(
                        &r,
                    )))),
                    Vec::new(),
                );
            }
            CommitDecision::Apply { head, revision } => (head, revision),
        };
        if let Err(e) = snap.store.put_content(&revision.sha256, &data).await {
            warn!("cannot store a change's content: {e}");
            return (
                Err(Status::unavailable(format!(
                    "cannot store the change: {e}; nothing was committed"
                ))),
                Vec::new(),
            );
        }
        let (outcome, written) = write_head(&snap, head, &revision).await;
        let next = written.map(|(kv_revision, head)| Snapshot {
            kv_revision,
            head,
            content: Bytes::from(data),
            ..(*snap).clone()
        });
        let events = self.committed(snap.term, outcome.clone(), next);
        let answer =
            match outcome {
                CommitOutcome::Written { revision } => Ok(reply(
                    pb::submit_reply::Outcome::Committed(to_pb(&revision)),
                )),
                CommitOutcome::Deposed => Err(self
                    .not_server("a newer server fenced the project head; nothing was committed")),
                CommitOutcome::Unknown => Err(Status::unavailable(
                    "the commit's outcome is unknown; resubmit with the same change_id",
                )),
            };
        (answer, events)
    }

    /// Feeds a commit's outcome to the serving core, installs the new head
    /// (if still serving), and prunes every [`PRUNE_EVERY`] revisions.
    fn committed(
        &self,
        term: Term,
        outcome: CommitOutcome,
        next: Option<Snapshot>,
    ) -> Vec<ProjectEventKind> {
        match &outcome {
            CommitOutcome::Written { revision } => {
                info!(revision = revision.revision, %term, size = revision.size, by = ?revision.changed_by, "committed");
                self.metrics().commits.inc();
                if let Some(n) = next
                    .as_ref()
                    .filter(|_| revision.revision.is_multiple_of(PRUNE_EVERY))
                {
                    let (shared, store) = (self.shared.clone(), n.store.clone());
                    tokio::spawn(async move { prune(shared, store, term).await });
                }
            }
            CommitOutcome::Deposed => {
                warn!(%term, "the head was fenced by a newer server: deposed")
            }
            CommitOutcome::Unknown => warn!(%term, "the outcome of a commit is unknown"),
        }
        self.feed(Input::Committed { term, outcome }, next)
    }
}

/// Writes a commit's head by compare-and-set on the KV revision the server
/// last wrote. Refused: a newer server fenced it. Unanswered: the head is
/// read back, and only a head that shows the commit ([`core::landed`]) counts
/// as written; anything else is unknown.
async fn write_head(
    snap: &Snapshot,
    head: ProjectHead,
    revision: &RevisionSummary,
) -> (CommitOutcome, Option<(u64, ProjectHead)>) {
    let written = CommitOutcome::Written {
        revision: revision.clone(),
    };
    match snap.store.update_head(&head, snap.kv_revision).await {
        Ok(kv_revision) => (written, Some((kv_revision, head))),
        Err(CasError::Conflict) => (CommitOutcome::Deposed, None),
        Err(CasError::Failed(e)) => match snap.store.read_head().await {
            Ok(Some((rev, h))) if core::landed(Some(&h), snap.term, revision) => {
                (written, Some((rev, h)))
            }
            read => {
                debug!(error = %e, landed = ?read.map(|r| r.map(|(_, h)| h.revision())), "the head compare-and-set went unanswered");
                (CommitOutcome::Unknown, None)
            }
        },
    }
}

/// Deletes content no longer needed: everything but the last
/// [`KEEP_CONTENT`] revisions of the head as stored. It runs under the commit
/// lock (no commit of this server is between storing its content and moving
/// the head), only while the stored head still carries this server's term,
/// and never touches an object younger than [`PRUNE_MIN_AGE`] (a newer
/// server's commit in flight).
async fn prune(shared: Arc<Shared>, store: ProjectStore, term: Term) {
    let _no_commit_in_flight = shared.commit.lock().await;
    let head = match store.read_head().await {
        Ok(Some((_, head))) if head.term == term => head,
        Ok(_) => return debug!("not pruning: the head is no longer this server's"),
        Err(e) => return debug!("not pruning: cannot read the head: {e}"),
    };
    let keep: BTreeSet<String> = head
        .recent
        .iter()
        .rev()
        .take(KEEP_CONTENT)
        .map(|r| r.sha256.clone())
        .chain(head.current.iter().map(|r| r.sha256.clone()))
        .collect();
    match store.prune(&keep, PRUNE_MIN_AGE).await {
        Ok(n) if n > 0 => debug!(removed = n, "pruned old project content"),
        Ok(_) => {}
        Err(e) => debug!("cannot prune old project content: {e}"),
    }
}

#[tonic::async_trait]
impl pb::project_server::Project for ProjectService {
    async fn describe(
        &self,
        request: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::DescribeReply>, Status> {
        let req = request.into_inner();
        let snap = self.serving_for(&req.group, req.seen_term)?;
        Ok(Response::new(pb::DescribeReply {
            term: snap.term.get(),
            server: self.shared.cfg.device.to_string(),
            head: Some(head_to_pb(&snap.head)),
            max_size: self.shared.cfg.max_size,
        }))
    }

    type FetchStream = BoxStream<pb::FetchChunk>;

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let req = request.into_inner();
        let snap = self.serving_for(&req.group, req.seen_term)?;
        let head = head_to_pb(&snap.head);
        let term = snap.term.get();
        if req.have_revision == head.revision && req.have_sha256 == head.sha256 {
            let only = pb::FetchChunk {
                term,
                head: Some(head),
                up_to_date: true,
                offset: 0,
                data: Bytes::new(),
            };
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(only)]))));
        }
        let size = snap.content.len() as u64;
        let start = fetch_start(&req, head.revision, size)?;
        let content = snap.content.clone();
        self.metrics().sent.inc_by(size.saturating_sub(start));
        let mut offsets: Vec<u64> = (start..size).step_by(FETCH_CHUNK).collect();
        if offsets.is_empty() {
            offsets.push(start);
        }
        let first = offsets[0];
        let chunks = offsets.into_iter().map(move |off| {
            let end = (off as usize + FETCH_CHUNK).min(content.len());
            Ok(pb::FetchChunk {
                term,
                head: (off == first).then(|| head.clone()),
                up_to_date: false,
                offset: off,
                data: content.slice(off as usize..end),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn submit(
        &self,
        request: Request<Streaming<pb::SubmitChunk>>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        // One change is one trace: the submitter's context comes in the
        // metadata, and the compare-and-set and the reply happen inside.
        let cfg = &self.shared.cfg;
        let span = tracing::info_span!("project.commit", group = %cfg.group, device = %cfg.device);
        understudy_telemetry::trace::follow_grpc(&span, request.metadata());
        tracing::Instrument::instrument(self.receive_submit(request.into_inner()), span).await
    }

    type WatchStream = BoxStream<pb::WatchEvent>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        let snap = self.serving_for(&req.group, req.seen_term)?;
        let term = snap.term;
        let rx = self.shared.serving.subscribe();
        let this = self.clone();
        struct St {
            rx: watch::Receiver<Option<Arc<Snapshot>>>,
            last: u64,
            done: bool,
            queue: std::collections::VecDeque<pb::WatchEvent>,
        }
        let st = St {
            rx,
            last: req.after_revision,
            done: false,
            queue: Default::default(),
        };
        let stream = futures::stream::unfold(st, move |mut st| {
            let this = this.clone();
            async move {
                loop {
                    if let Some(ev) = st.queue.pop_front() {
                        return Some((Ok(ev), st));
                    }
                    if st.done {
                        return None;
                    }
                    let current = st.rx.borrow_and_update().clone();
                    match current {
                        Some(s) if s.term == term => {
                            // Every revision after the last one sent, from the
                            // recent history, so none is skipped.
                            for r in s.head.recent.iter().filter(|r| r.revision > st.last) {
                                st.queue.push_back(pb::WatchEvent {
                                    term: term.get(),
                                    head: Some(to_pb(r)),
                                });
                            }
                            if s.head.revision() > st.last {
                                st.last = s.head.revision();
                                if st.queue.is_empty() {
                                    st.queue.push_back(pb::WatchEvent {
                                        term: term.get(),
                                        head: Some(head_to_pb(&s.head)),
                                    });
                                }
                                continue;
                            }
                        }
                        _ => {
                            st.done = true;
                            return Some((Err(this.not_server("it stopped serving")), st));
                        }
                    }
                    if st.rx.changed().await.is_err() {
                        return None;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream.boxed())))
    }
}
