//! Talking to the group's server: find it with the lease, then fetch, submit
//! and watch over gRPC. Used by the device driver, the CLI, the tests and the
//! benchmark.
//!
//! The server's address is in the lease record (`project_addr`), so a client
//! finds the new server after a failover by reading the lease again. Every
//! reply's term goes through a [`TermGuard`]: a reply from a term older than
//! the newest seen is dropped as [`ClientError::StaleTerm`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use understudy_protocol::messages::{self, LeaseRecord};
use understudy_protocol::{DeviceId, GroupName, Term, grpc, subjects};

use crate::core::TermGuard;
use crate::local::{CopyMeta, Incoming, LocalCopy, LocalError, sha256_hex};
use crate::security::{BearerToken, ClientSecurity, error_chain};

/// The largest HTTP/2 frame either side accepts (the default is 16 KiB).
pub const MAX_FRAME: u32 = 1024 * 1024;
use crate::pb;

/// Content is submitted in chunks of this size.
pub const SUBMIT_CHUNK: usize = 1024 * 1024;

/// The group's server as the lease names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRef {
    /// The serving device.
    pub device: DeviceId,
    /// Its project-sync address (`host:port`), when it published one.
    pub address: Option<String>,
    /// Its term.
    pub term: Term,
}

/// Why a call to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No device holds the lease.
    #[error("group {0} has no server")]
    NoServer(GroupName),
    /// The server published no project-sync address.
    #[error("the server {0} publishes no project-sync address")]
    NoAddress(DeviceId),
    /// The bus (lease) could not be read.
    #[error("cannot read the lease: {0}")]
    Bus(String),
    /// The server could not be reached.
    #[error("cannot reach the project server at {address}: {detail}")]
    Connect {
        /// Where.
        address: String,
        /// Why.
        detail: String,
    },
    /// The device asked is not (or no longer) the server.
    #[error("{message}")]
    NotServer {
        /// The server's words.
        message: String,
        /// Who it says serves, when it knows.
        server: Option<ServerRef>,
    },
    /// The reply came from an older term than one already seen.
    #[error("dropped a reply of term {got}: term {seen} was already seen")]
    StaleTerm {
        /// The reply's term.
        got: Term,
        /// The newest seen.
        seen: Term,
    },
    /// The server refused the request (bad input, limits) or failed.
    #[error("{code:?}: {message}")]
    Rejected {
        /// The gRPC code.
        code: Code,
        /// The server's words.
        message: String,
    },
    /// The reply broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The local copy could not be written.
    #[error("{0}")]
    Local(#[from] LocalError),
}

impl ClientError {
    /// Whether trying again (later, or after finding the server again) may
    /// succeed: the server is gone, not serving, or busy.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::NoServer(_)
            | ClientError::NoAddress(_)
            | ClientError::Bus(_)
            | ClientError::Connect { .. }
            | ClientError::NotServer { .. }
            | ClientError::StaleTerm { .. } => true,
            ClientError::Rejected { code, .. } => matches!(
                code,
                Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown
            ),
            ClientError::Protocol(_) | ClientError::Local(_) => false,
        }
    }

    /// Whether the server's caller check refused this client
    /// (`UNAUTHENTICATED`, `PERMISSION_DENIED`): its token or certificate is
    /// missing or not the group's.
    pub fn is_refused_caller(&self) -> bool {
        matches!(
            self,
            ClientError::Rejected {
                code: Code::Unauthenticated | Code::PermissionDenied,
                ..
            }
        )
    }
}

impl From<Status> for ClientError {
    fn from(s: Status) -> ClientError {
        if s.code() == Code::FailedPrecondition {
            let md = s.metadata();
            let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
            let server = match (
                get(grpc::SERVER).and_then(|d| d.parse::<DeviceId>().ok()),
                get(grpc::TERM).and_then(|t| t.parse::<u64>().ok()),
            ) {
                (Some(device), Some(term)) => Some(ServerRef {
                    device,
                    address: get(grpc::SERVER_ADDRESS),
                    term: Term::from_revision(term),
                }),
                _ => None,
            };
            return ClientError::NotServer {
                message: s.message().to_string(),
                server,
            };
        }
        ClientError::Rejected {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

/// The server named by the group's lease, read from JetStream KV; `None`
/// when nobody holds it. `timeout` bounds the read.
pub async fn find_server(
    js: &jetstream::Context,
    group: &GroupName,
    timeout: Duration,
) -> Result<Option<ServerRef>, ClientError> {
    let read = async {
        let store = js
            .get_key_value(subjects::lease_bucket(group))
            .await
            .map_err(|e| ClientError::Bus(e.to_string()))?;
        let entry = store
            .entry(subjects::LEASE_KEY)
            .await
            .map_err(|e| ClientError::Bus(e.to_string()))?;
        Ok(entry.and_then(|e| lease_server(&e)))
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ClientError::Bus(format!("JetStream did not answer within {timeout:?}")))?
}

/// The server a lease KV entry names, if any.
pub fn lease_server(entry: &kv::Entry) -> Option<ServerRef> {
    if entry.operation != kv::Operation::Put {
        return None;
    }
    let rec = messages::decode::<LeaseRecord>(&entry.value).ok()?;
    let term = rec.term_at(entry.revision);
    let holder = rec.holder?;
    Some(ServerRef {
        device: holder.device,
        address: holder.project_addr,
        term,
    })
}

/// What a fetch brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The client already had the head revision.
    UpToDate(pb::Revision),
    /// The head revision's content, verified.
    Content(pb::Revision, Vec<u8>),
}

/// What a submit ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Committed: acknowledged and durable.
    Committed(pb::Revision),
    /// Committed before (the same change id): nothing applied again.
    AlreadyCommitted(pb::Revision),
    /// Refused: the project moved on since the base; nothing applied.
    Conflict(pb::Revision),
}

/// A change to submit.
#[derive(Debug, Clone)]
pub struct Change {
    /// The revision it was made on.
    pub base_revision: u64,
    /// Who makes it.
    pub changed_by: String,
    /// Its id (1–64 of A–Z a–z 0–9 _ -).
    pub change_id: String,
    /// The new content.
    pub data: Bytes,
}

/// What a fetch reserves up front, whatever size its head announces (a
/// server cannot make a client hold memory for bytes it never sends).
const FIRST_RESERVE: u64 = 8 * 1024 * 1024;

/// A fetch's content as its chunks arrive (their terms checked apart): the
/// first chunk names the head, each next one follows the bytes received
/// without a gap or running past the head's size, and the whole must match
/// the head's size and SHA-256. Pure, for the fuzz targets (`fuzz/`).
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct FetchAssembly {
    head: Option<pb::Revision>,
    data: Vec<u8>,
}

impl FetchAssembly {
    /// Takes the next chunk; `Some` when it ends the fetch (up to date).
    pub fn take(&mut self, chunk: pb::FetchChunk) -> Result<Option<Fetched>, ClientError> {
        if let Some(h) = chunk.head {
            if chunk.up_to_date {
                return Ok(Some(Fetched::UpToDate(h)));
            }
            match &self.head {
                Some(first) if *first != h => {
                    return Err(ClientError::Protocol(format!(
                        "the head changed within one fetch (revision {} then {})",
                        first.revision, h.revision
                    )));
                }
                Some(_) => {}
                None => {
                    // The size announced is not trusted with memory: room
                    // for the first part only, the rest as the bytes come.
                    self.data.reserve(h.size.min(FIRST_RESERVE) as usize);
                    self.head = Some(h);
                }
            }
        }
        let Some(h) = &self.head else {
            return Err(ClientError::Protocol("content before the head".into()));
        };
        let received = self.data.len() as u64;
        if chunk.offset != received || received + chunk.data.len() as u64 > h.size {
            return Err(ClientError::Protocol(format!(
                "chunk at {} (len {}) does not follow byte {received} of {}",
                chunk.offset,
                chunk.data.len(),
                h.size
            )));
        }
        self.data.extend_from_slice(&chunk.data);
        Ok(None)
    }

    /// The content, verified, once the stream ended.
    pub fn finish(self) -> Result<Fetched, ClientError> {
        let head = self
            .head
            .ok_or_else(|| ClientError::Protocol("empty fetch".into()))?;
        verify(&head, &self.data)?;
        Ok(Fetched::Content(head, self.data))
    }
}

/// A connection to one group's server.
#[derive(Clone)]
pub struct ProjectClient {
    group: GroupName,
    server: ServerRef,
    rpc: pb::project_client::ProjectClient<InterceptedService<Channel, BearerToken>>,
    guard: TermGuard,
    /// Counts the project bytes fetched, when the caller keeps the figure.
    received: Option<understudy_telemetry::Counter>,
}

impl ProjectClient {
    /// Connects to `server` (bounded by `timeout`) over plain gRPC, with no
    /// credentials: [`connect_with`](Self::connect_with) and
    /// [`ClientSecurity::plain`].
    pub async fn connect(
        group: &GroupName,
        server: ServerRef,
        timeout: Duration,
    ) -> Result<ProjectClient, ClientError> {
        Self::connect_with(group, server, timeout, &ClientSecurity::plain()).await
    }

    /// Connects to `server` (bounded by `timeout`) with `security`'s TLS and
    /// token. HTTP/2 keep-alives find a server that stopped answering within
    /// about two seconds.
    pub async fn connect_with(
        group: &GroupName,
        server: ServerRef,
        timeout: Duration,
        security: &ClientSecurity,
    ) -> Result<ProjectClient, ClientError> {
        let address = server
            .address
            .clone()
            .ok_or_else(|| ClientError::NoAddress(server.device.clone()))?;
        let connect_err = |detail: String| ClientError::Connect {
            address: address.clone(),
            detail,
        };
        let endpoint = security
            .endpoint(&address)
            .map_err(connect_err)?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(1))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(Some(4 * 1024 * 1024))
            .initial_connection_window_size(Some(16 * 1024 * 1024))
            // Fetch chunks are 1 MiB: let them come in few HTTP/2 frames.
            .max_frame_size(MAX_FRAME);
        let channel = tokio::time::timeout(timeout, endpoint.connect())
            .await
            .map_err(|_| connect_err(format!("no connection within {timeout:?}")))?
            .map_err(|e| connect_err(error_chain(&e)))?;
        let rpc = pb::project_client::ProjectClient::with_interceptor(channel, security.token())
            .max_decoding_message_size(4 * 1024 * 1024)
            .max_encoding_message_size(4 * 1024 * 1024);
        let mut guard = TermGuard::new();
        guard.observe(server.term);
        Ok(ProjectClient {
            group: group.clone(),
            server,
            rpc,
            guard,
            received: None,
        })
    }

    /// The server this client talks to.
    pub fn server(&self) -> &ServerRef {
        &self.server
    }

    /// The newest term seen.
    pub fn seen_term(&self) -> Term {
        self.guard.seen()
    }

    /// Remembers a newer term learnt elsewhere (the lease).
    pub fn observe_term(&mut self, term: Term) {
        self.guard.observe(term);
    }

    fn check_term(&mut self, term: u64) -> Result<(), ClientError> {
        let got = Term::from_revision(term);
        if self.guard.accept(got) {
            Ok(())
        } else {
            Err(ClientError::StaleTerm {
                got,
                seen: self.guard.seen(),
            })
        }
    }

    /// The server's head.
    pub async fn describe(&mut self) -> Result<pb::DescribeReply, ClientError> {
        let reply = self
            .rpc
            .describe(pb::DescribeRequest {
                group: self.group.to_string(),
                seen_term: self.guard.seen().get(),
            })
            .await?
            .into_inner();
        self.check_term(reply.term)?;
        Ok(reply)
    }

    /// The head's content in memory, unless `have` is already the head.
    pub async fn fetch(&mut self, have: Option<(u64, &str)>) -> Result<Fetched, ClientError> {
        let mut stream = self
            .rpc
            .fetch(pb::FetchRequest {
                group: self.group.to_string(),
                seen_term: self.guard.seen().get(),
                have_revision: have.map_or(0, |h| h.0),
                have_sha256: have.map_or(String::new(), |h| h.1.to_string()),
                resume_revision: 0,
                offset: 0,
            })
            .await?
            .into_inner();
        let mut assembly = FetchAssembly::default();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            self.check_term(chunk.term)?;
            if let Some(done) = assembly.take(chunk)? {
                return Ok(done);
            }
        }
        assembly.finish()
    }

    /// Counts the bytes [`fetch_into`](Self::fetch_into) receives in `counter`.
    pub fn count_received(&mut self, counter: understudy_telemetry::Counter) {
        self.received = Some(counter);
    }

    /// Brings `local` to the head revision, resuming a partial download of
    /// the same revision; returns the copy's meta.
    pub async fn fetch_into(&mut self, local: &LocalCopy) -> Result<CopyMeta, ClientError> {
        let have = local.current_unverified()?;
        // A partial download of the head, if one is there, is resumed.
        let described = self.describe().await?;
        let head = described
            .head
            .ok_or_else(|| ClientError::Protocol("describe without a head".into()))?;
        let target = meta_of(&head);
        if have.as_ref() == Some(&target) {
            return Ok(target);
        }
        let mut writer = Writer::start(local.begin(&target)?, partial_path(local, &target));
        let mut stream = self
            .rpc
            .fetch(pb::FetchRequest {
                group: self.group.to_string(),
                seen_term: self.guard.seen().get(),
                have_revision: have.as_ref().map_or(0, |h| h.revision),
                have_sha256: have.as_ref().map_or(String::new(), |h| h.sha256.clone()),
                resume_revision: target.revision,
                offset: writer.offset,
            })
            .await?
            .into_inner();
        let mut started = false;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            self.check_term(chunk.term)?;
            if let Some(h) = chunk.head {
                if chunk.up_to_date {
                    writer.abandon().await;
                    return Ok(meta_of(&h));
                }
                let meta = meta_of(&h);
                if meta != writer.meta || chunk.offset != writer.offset {
                    // The head moved on (or the server restarted the
                    // transfer): start over on the new revision.
                    writer.abandon().await;
                    let mut incoming = local.begin(&meta)?;
                    if chunk.offset != incoming.offset() {
                        drop(incoming);
                        incoming = restart(local, &meta)?;
                    }
                    writer = Writer::start(incoming, partial_path(local, &meta));
                }
                started = true;
            }
            if !started || chunk.offset != writer.offset {
                let at = writer.offset;
                writer.abandon().await;
                return Err(ClientError::Protocol(format!(
                    "chunk at {} does not follow byte {at}",
                    chunk.offset
                )));
            }
            if let Some(c) = &self.received {
                c.inc_by(chunk.data.len() as u64);
            }
            writer.write(chunk.data).await?;
        }
        let meta = writer.meta.clone();
        writer.finish().await?;
        Ok(meta)
    }

    /// Submits a change.
    pub async fn submit(&mut self, change: Change) -> Result<Submitted, ClientError> {
        let header = pb::SubmitHeader {
            group: self.group.to_string(),
            seen_term: self.guard.seen().get(),
            changed_by: change.changed_by,
            change_id: change.change_id,
            base_revision: change.base_revision,
            size: change.data.len() as u64,
            sha256: sha256_hex(&change.data),
        };
        let data = change.data;
        let mut parts = vec![pb::SubmitChunk {
            part: Some(pb::submit_chunk::Part::Header(header)),
        }];
        let mut off = 0;
        while off < data.len() {
            let end = (off + SUBMIT_CHUNK).min(data.len());
            parts.push(pb::SubmitChunk {
                part: Some(pb::submit_chunk::Part::Data(data.slice(off..end))),
            });
            off = end;
        }
        // The change's trace starts here and goes on in the server.
        let span = tracing::info_span!(
            "project.submit",
            group = %self.group,
            server = %self.server.device,
            size = data.len()
        );
        let mut request = tonic::Request::new(futures::stream::iter(parts));
        understudy_telemetry::trace::inject_grpc(&span, request.metadata_mut());
        let reply = tracing::Instrument::instrument(self.rpc.submit(request), span)
            .await?
            .into_inner();
        self.check_term(reply.term)?;
        match reply.outcome {
            Some(pb::submit_reply::Outcome::Committed(r)) => Ok(Submitted::Committed(r)),
            Some(pb::submit_reply::Outcome::AlreadyCommitted(r)) => {
                Ok(Submitted::AlreadyCommitted(r))
            }
            Some(pb::submit_reply::Outcome::Conflict(r)) => Ok(Submitted::Conflict(r)),
            None => Err(ClientError::Protocol(
                "a submit reply without an outcome".into(),
            )),
        }
    }

    /// Every new revision after `after_revision`, as the server commits them.
    pub async fn watch(
        &mut self,
        after_revision: u64,
    ) -> Result<tonic::Streaming<pb::WatchEvent>, ClientError> {
        Ok(self
            .rpc
            .watch(pb::WatchRequest {
                group: self.group.to_string(),
                seen_term: self.guard.seen().get(),
                after_revision,
            })
            .await?
            .into_inner())
    }

    /// Checks a watch event's term; `Err(StaleTerm)` when it must be dropped.
    pub fn accept_event(&mut self, event: &pb::WatchEvent) -> Result<(), ClientError> {
        self.check_term(event.term)
    }
}

/// Writes (and hashes) a download on a blocking thread, so the next chunks
/// arrive while the disk works; a few chunks are buffered between the two.
/// Every [`Writer::FLUSH_STEP`] bytes a [`Flusher`] pushes what was written
/// to the disk, so the writeback overlaps the network instead of waiting for
/// the final fsync.
struct Writer {
    tx: Option<tokio::sync::mpsc::Sender<Bytes>>,
    task: tokio::task::JoinHandle<Result<Incoming, LocalError>>,
    /// Bytes handed to the writer so far (the resume offset included).
    offset: u64,
    meta: CopyMeta,
}

impl Writer {
    const BUFFERED_CHUNKS: usize = 8;
    /// Bytes written between two flushes.
    const FLUSH_STEP: u64 = 8 * 1024 * 1024;

    /// Writes into `incoming`, whose file is `path` (for the [`Flusher`]).
    fn start(mut incoming: Incoming, path: PathBuf) -> Writer {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(Self::BUFFERED_CHUNKS);
        let offset = incoming.offset();
        let meta = incoming.meta().clone();
        let task = tokio::task::spawn_blocking(move || {
            let flusher = Flusher::start(&path);
            let mut unflushed = 0;
            while let Some(data) = rx.blocking_recv() {
                incoming.write(&data)?;
                unflushed += data.len() as u64;
                if unflushed >= Self::FLUSH_STEP {
                    flusher.kick();
                    unflushed = 0;
                }
            }
            drop(flusher);
            Ok(incoming)
        });
        Writer {
            tx: Some(tx),
            task,
            offset,
            meta,
        }
    }

    async fn write(&mut self, data: Bytes) -> Result<(), ClientError> {
        let len = data.len() as u64;
        let sent = match &self.tx {
            Some(tx) => tx.send(data).await.is_ok(),
            None => false,
        };
        if !sent {
            // The writer stopped on an error: report it.
            self.tx = None;
            return match (&mut self.task).await {
                Ok(Err(e)) => Err(e.into()),
                Ok(Ok(_)) => Err(ClientError::Protocol("the download writer stopped".into())),
                Err(e) => Err(ClientError::Protocol(format!(
                    "the download writer failed: {e}"
                ))),
            };
        }
        self.offset += len;
        Ok(())
    }

    /// Waits for every byte to be written, then checks and installs the copy.
    async fn finish(mut self) -> Result<(), ClientError> {
        self.tx = None;
        let incoming = match self.task.await {
            Ok(r) => r?,
            Err(e) => {
                return Err(ClientError::Protocol(format!(
                    "the download writer failed: {e}"
                )));
            }
        };
        match tokio::task::spawn_blocking(move || incoming.finish()).await {
            Ok(r) => Ok(r?),
            Err(e) => Err(ClientError::Protocol(format!(
                "installing the download failed: {e}"
            ))),
        }
    }

    /// Stops writing; what was written stays as a partial to resume.
    async fn abandon(mut self) {
        self.tx = None;
        let _ = self.task.await;
    }
}

/// Flushes a download's written bytes to the disk (`fdatasync` on a second
/// handle of the partial file, on a thread of its own) when kicked, so the
/// writer goes on while the disk works. It only makes the bytes reach the
/// disk sooner: the partial file stays partial, and [`Incoming::finish`]
/// still verifies, fsyncs and then renames. A failed flush stops the
/// flushing; the error is not lost, Linux reports a writeback error to every
/// open handle of the file, so the final fsync sees it too.
struct Flusher {
    kick: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    /// A flusher of `path`, or one that does nothing if the file cannot be
    /// opened again or no thread started (the final fsync does it all then).
    fn start(path: &Path) -> Flusher {
        let idle = Flusher {
            kick: None,
            thread: None,
        };
        let file = match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(file) => file,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "download not flushed while written");
                return idle;
            }
        };
        // One kick pending at most: a kick during a flush asks for one more.
        let (kick, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("download-flush".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    if let Err(e) = file.sync_data() {
                        tracing::warn!(path = %shown, error = %e, "flushing a download failed");
                        break;
                    }
                }
            });
        match thread {
            Ok(thread) => Flusher {
                kick: Some(kick),
                thread: Some(thread),
            },
            Err(_) => idle,
        }
    }

    /// Asks for a flush, unless one is already asked for.
    fn kick(&self) {
        if let Some(k) = &self.kick {
            let _ = k.try_send(());
        }
    }
}

impl Drop for Flusher {
    /// Stops the thread after the flush in progress, if any.
    fn drop(&mut self) {
        self.kick = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The file a download of `meta` into `local` is written to (named as
/// `LocalCopy::begin` names it).
fn partial_path(local: &LocalCopy, meta: &CopyMeta) -> PathBuf {
    local
        .dir()
        .join(format!("partial-{}-{}", meta.revision, meta.sha256))
}

fn restart(local: &LocalCopy, meta: &CopyMeta) -> Result<Incoming, ClientError> {
    // Drop any partial of this revision and begin from byte 0.
    let _ = std::fs::remove_file(partial_path(local, meta));
    Ok(local.begin(meta)?)
}

/// The local-copy meta of a revision.
pub fn meta_of(r: &pb::Revision) -> CopyMeta {
    CopyMeta {
        revision: r.revision,
        committed_term: r.committed_term,
        sha256: r.sha256.clone(),
        size: r.size,
    }
}

fn verify(head: &pb::Revision, data: &[u8]) -> Result<(), ClientError> {
    let actual = sha256_hex(data);
    if data.len() as u64 != head.size || actual != head.sha256 {
        return Err(ClientError::Protocol(format!(
            "revision {} arrived as {} bytes hashing to {actual}, not {} bytes hashing to {}",
            head.revision,
            data.len(),
            head.size,
            head.sha256
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(revision: u64, data: &[u8]) -> pb::Revision {
        pb::Revision {
            revision,
            size: data.len() as u64,
            sha256: crate::local::sha256_hex(data),
            ..Default::default()
        }
    }

    fn chunk(head: Option<pb::Revision>, offset: u64, data: &[u8]) -> pb::FetchChunk {
        pb::FetchChunk {
            term: 1,
            head,
            up_to_date: false,
            offset,
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn a_huge_announced_size_reserves_only_the_first_part() {
        let mut a = FetchAssembly::default();
        let mut h = head(3, b"abc");
        h.size = u64::MAX;
        assert!(a.take(chunk(Some(h), 0, b"abc")).expect("taken").is_none());
        assert!(a.data.capacity() as u64 <= FIRST_RESERVE);
        assert!(a.finish().is_err(), "3 bytes are not the size announced");
    }

    #[test]
    fn a_head_that_changes_within_a_fetch_is_refused() {
        let mut a = FetchAssembly::default();
        a.take(chunk(Some(head(3, b"abcd")), 0, b"ab"))
            .expect("first chunk");
        let again = a.take(chunk(Some(head(3, b"abcd")), 2, b"cd"));
        assert!(again.expect("the same head again is fine").is_none());
        let mut b = FetchAssembly::default();
        b.take(chunk(Some(head(3, b"abcd")), 0, b"ab"))
            .expect("first chunk");
        let other = b.take(chunk(Some(head(4, b"abcd")), 2, b"cd"));
        assert!(matches!(other, Err(ClientError::Protocol(m)) if m.contains("head changed")));
    }

    #[test]
    fn chunks_in_order_make_the_verified_content() {
        let mut a = FetchAssembly::default();
        a.take(chunk(Some(head(7, b"hello world")), 0, b"hello "))
            .expect("first");
        a.take(chunk(None, 6, b"world")).expect("second");
        match a.finish().expect("verified") {
            Fetched::Content(h, data) => {
                assert_eq!(h.revision, 7);
                assert_eq!(data, b"hello world");
            }
            other => panic!("not content: {other:?}"),
        }
    }
}
