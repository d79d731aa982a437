//! The project-sync driver of one device: plumbing around [`ProjectService`]
//! (the gRPC side) and the device's local copy and outbox.
//!
//! - **Serving.** The reports of the device's election service, the results
//!   of fences ([`fence_and_load`]) and the serving core's deadlines are fed
//!   to the serving core ([`crate::core::Serving`], through
//!   [`ProjectService::feed`]), which decides when to fence, serve and stop;
//!   this file only carries those decisions out.
//! - **Following.** Every device (the server too) watches the lease for the
//!   server's address, keeps its local copy at the server's head (watch, then
//!   fetch, verified and atomically replaced), and submits the changes queued
//!   in its outbox once a server is there. A queued change refused with a
//!   conflict moves to `conflicts/`, is announced on the bus, and turns the
//!   device red through discovery; it is never dropped.
//! - **Reporting.** The device's project state (local revision, outbox,
//!   conflicts, serving) goes to `understudy.<group>.local.<device>.project`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};
use understudy_bus::{ElectionFeed, SubscribeError, unix_ms};
use understudy_protocol::messages::{ElectionState, ProjectEventKind, ProjectState};
use understudy_protocol::{DeviceId, GroupName, InstanceId, SCHEMA_VERSION, Term, subjects};

use crate::client::{Change, ClientError, ProjectClient, ServerRef, Submitted, lease_server};
use crate::core::{FenceOutcome, Input};
use crate::events;
use crate::local::{CopyState, LocalCopy, LocalError, Outbox, OutboxEntry};
use crate::security::{DeviceSecurity, ServerSecurity};
use crate::server::{FenceError, ProjectService, ServerConfig, Snapshot, fence_and_load};
use crate::store::ProjectStore;

/// What the project-sync service needs to run for one device.
#[derive(Debug, Clone)]
pub struct ProjectSyncConfig {
    /// The device's project group.
    pub group: GroupName,
    /// The device.
    pub device: DeviceId,
    /// Where the local copy, outbox and conflicts live.
    pub data_dir: PathBuf,
    /// The address written into the lease (what clients dial).
    pub advertise: String,
    /// JetStream replicas for the head bucket and object store.
    pub replicas: usize,
    /// The largest project accepted, in bytes.
    pub max_size: u64,
    /// A JetStream call unanswered for this long has failed.
    pub store_timeout: Duration,
    /// The device's election service instance when it runs in this process:
    /// only its state says whether this device serves. `None` (the services
    /// run apart): the first election service to report is followed, and
    /// another only once that one falls silent (`understudy_bus::follow`).
    /// Either way a second process with this device id (B2) cannot make
    /// this one serve.
    pub election_instance: Option<InstanceId>,
    /// TLS and the caller check of its gRPC server, and how it dials the
    /// group's server ([`crate::security`]); the default is plain gRPC.
    pub security: DeviceSecurity,
}

/// Why the project-sync service stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A subscription could not be made.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// The local copy or outbox could not be opened.
    #[error("{0}")]
    Local(#[from] LocalError),
    /// The gRPC server failed.
    #[error("the gRPC server stopped: {0}")]
    Grpc(String),
}

/// Runs the service on `listener` until `shutdown` turns true.
pub async fn run(
    client: async_nats::Client,
    cfg: ProjectSyncConfig,
    listener: tokio::net::TcpListener,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ServiceError> {
    let local = LocalCopy::open(&cfg.data_dir)?;
    let outbox = Outbox::open(&cfg.data_dir)?;
    let (svc, fence_rx) = ProjectService::new(
        ServerConfig {
            group: cfg.group.clone(),
            device: cfg.device.clone(),
            advertise: Some(cfg.advertise.clone()),
            max_size: cfg.max_size,
        },
        Some(client.clone()),
    );
    let election =
        ElectionFeed::subscribe(&client, &cfg.group, &cfg.device, cfg.election_instance).await?;
    info!(
        security = cfg.security.server.describe(),
        "project service on {}", cfg.advertise
    );
    let grpc = tokio::spawn(serve_grpc(
        svc.clone(),
        cfg.security.server.clone(),
        listener,
        shutdown.clone(),
    ));
    let (server_tx, server_rx) = watch::channel::<Option<ServerRef>>(None);
    let sync = tokio::spawn(sync_loop(
        client.clone(),
        cfg.clone(),
        local,
        outbox,
        server_rx,
        shutdown.clone(),
    ));
    let (fenced_tx, fenced_rx) = mpsc::channel(4);
    let mut driver = Driver {
        js: jetstream::new(client.clone()),
        client,
        followed: None,
        cfg,
        svc,
        store: None,
        lease_watch: None,
        server_tx,
        fenced_tx,
    };
    driver.run(election, fence_rx, fenced_rx, shutdown).await;
    let events = driver.svc.feed(Input::Shutdown, None);
    driver.svc.publish(events).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), sync).await;
    match tokio::time::timeout(Duration::from_secs(2), grpc).await {
        Ok(Ok(Err(e))) => Err(ServiceError::Grpc(e.to_string())),
        _ => Ok(()),
    }
}

/// The gRPC server on `listener`, with TLS and the caller check of
/// `security`, until `shutdown`.
async fn serve_grpc(
    svc: ProjectService,
    security: ServerSecurity,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = security.tls() {
        builder = builder.tls_config(tls.clone())?;
    }
    builder
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        .max_frame_size(Some(crate::client::MAX_FRAME))
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(Duration::from_secs(2)))
        .add_service(svc.into_server(security.check().clone()))
        .serve_with_incoming_shutdown(incoming, async move {
            understudy_bus::stopped(&mut shutdown).await;
        })
        .await
}

type FenceResult = (Term, Result<Snapshot, FenceError>);

/// The serving side's plumbing: election reports, fences, the lease watch
/// and timers go to the serving core (through [`ProjectService::feed`]).
struct Driver {
    client: async_nats::Client,
    cfg: ProjectSyncConfig,
    svc: ProjectService,
    js: jetstream::Context,
    store: Option<ProjectStore>,
    lease_watch: Option<kv::Watch>,
    /// The election service followed (its reports are the only ones taken).
    followed: Option<InstanceId>,
    server_tx: watch::Sender<Option<ServerRef>>,
    fenced_tx: mpsc::Sender<FenceResult>,
}

impl Driver {
    async fn run(
        &mut self,
        mut election: ElectionFeed,
        mut fence_rx: mpsc::UnboundedReceiver<Term>,
        mut fenced_rx: mpsc::Receiver<FenceResult>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = understudy_bus::ticker(Duration::from_millis(200));
        let mut report = understudy_bus::ticker(Duration::from_secs(1));
        loop {
            let deadline = self.svc.next_deadline();
            tokio::select! {
                _ = understudy_bus::stopped(&mut shutdown) => break,
                state = election.next() => self.on_election(state).await,
                Some(term) = fence_rx.recv() => self.start_fence(term).await,
                Some((term, result)) = fenced_rx.recv() => self.on_fenced(term, result).await,
                entry = next_lease(&mut self.lease_watch) => self.on_lease(entry),
                _ = sleep_until(deadline) => {
                    let events = self.svc.feed(Input::Tick, None);
                    self.svc.publish(events).await;
                }
                // Only while the lease watch is missing: an idle device
                // wakes for nothing else here (issue 15, idle cost).
                _ = tick.tick(), if self.lease_watch.is_none() => {
                    self.lease_watch = open_lease_watch(&self.js, &self.cfg).await;
                }
                _ = report.tick() => self.report().await,
            }
        }
    }

    /// A report of the followed election service (the feed took only this
    /// device's, from the one election service followed) goes to the serving
    /// core.
    async fn on_election(&mut self, state: ElectionState) {
        self.followed = Some(state.instance);
        let input = Input::Election {
            role: state.role,
            term: state.term,
        };
        let events = self.svc.feed(input, None);
        self.svc.publish(events).await;
    }

    /// The serving core asked to fence `term`: open the store if needed and
    /// fence in the background; the result comes back on `fenced_tx`.
    async fn start_fence(&mut self, term: Term) {
        if self.store.is_none() {
            let opened = ProjectStore::open(
                &self.js,
                &self.cfg.group,
                self.cfg.replicas,
                self.cfg.store_timeout,
            )
            .await;
            match opened {
                Ok(s) => self.store = Some(s),
                Err(e) => return self.on_fenced(term, Err(e.into())).await,
            }
        }
        let Some(store) = self.store.clone() else {
            return;
        };
        let (group, done) = (self.cfg.group.clone(), self.fenced_tx.clone());
        tokio::spawn(async move {
            let result = fence_and_load(&store, &group, term).await;
            let _ = done.send((term, result)).await;
        });
    }

    async fn on_fenced(&mut self, term: Term, result: Result<Snapshot, FenceError>) {
        let (outcome, snapshot) = match result {
            Ok(s) => (
                FenceOutcome::Fenced {
                    revision: s.head.revision(),
                },
                Some(s),
            ),
            Err(FenceError::Deposed(by)) => {
                warn!(%term, "cannot serve the project: the head is held by term {by}");
                (FenceOutcome::Deposed { by }, None)
            }
            Err(e) => {
                warn!(%term, "cannot serve the project: {e}");
                self.store = None;
                (FenceOutcome::Failed, None)
            }
        };
        let events = self.svc.feed(Input::Fenced { term, outcome }, snapshot);
        self.svc.publish(events).await;
    }

    fn on_lease(&mut self, entry: Option<Option<ServerRef>>) {
        let Some(server) = entry else {
            self.lease_watch = None;
            return;
        };
        self.svc.set_known_server(server.clone());
        // Renewals rewrite the lease four times a second; only a different
        // server (or term) is news for the follower.
        self.server_tx.send_if_modified(|cur| {
            let changed = *cur != server;
            if changed {
                *cur = server;
            }
            changed
        });
    }

    /// Publishes the device's project state (`&mut self`: the driver is
    /// `Send` but not `Sync`, and this future must stay `Send`).
    async fn report(&mut self) {
        let state = project_state(&self.cfg, self.svc.serving_term().is_some(), self.followed);
        let m = metrics(&self.cfg);
        m.revision
            .set(i64::try_from(state.revision).unwrap_or(i64::MAX));
        m.outbox.set(i64::from(state.outbox));
        understudy_bus::publish(
            &self.client,
            subjects::local_project(&self.cfg.group, &self.cfg.device),
            &state,
        )
        .await;
    }
}

/// Sleeps until `deadline`; never wakes without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

async fn open_lease_watch(js: &jetstream::Context, cfg: &ProjectSyncConfig) -> Option<kv::Watch> {
    let open = async {
        let store = js
            .get_key_value(subjects::lease_bucket(&cfg.group))
            .await
            .ok()?;
        store.watch_with_history(subjects::LEASE_KEY).await.ok()
    };
    tokio::time::timeout(cfg.store_timeout * 2, open)
        .await
        .ok()
        .flatten()
}

/// The next server the lease names (`Some(None)`: nobody), or `None` when
/// the watch ended.
async fn next_lease(w: &mut Option<kv::Watch>) -> Option<Option<ServerRef>> {
    let Some(watch) = w.as_mut() else {
        return std::future::pending().await;
    };
    match watch.next().await {
        Some(Ok(entry)) => Some(lease_server(&entry)),
        _ => None,
    }
}

/// This device's project-sync figures for `/metrics`.
fn metrics(cfg: &ProjectSyncConfig) -> understudy_telemetry::ProjectMetrics {
    understudy_telemetry::metrics().project(cfg.group.as_str(), cfg.device.as_str())
}

fn project_state(
    cfg: &ProjectSyncConfig,
    serving: bool,
    instance: Option<InstanceId>,
) -> ProjectState {
    let local = LocalCopy::open(&cfg.data_dir).ok();
    let outbox = Outbox::open(&cfg.data_dir).ok();
    ProjectState {
        schema: SCHEMA_VERSION,
        group: cfg.group.clone(),
        device: cfg.device.clone(),
        revision: local
            .and_then(|l| l.current_unverified().ok().flatten())
            .map_or(0, |m| m.revision),
        serving,
        outbox: outbox
            .as_ref()
            .and_then(|o| o.pending().ok())
            .map_or(0, |p| p.len() as u32),
        conflicts: outbox
            .as_ref()
            .and_then(|o| o.conflicts().ok())
            .map_or(0, |c| c.len() as u32),
        instance,
    }
}

/// Follows the server the lease names: keeps the local copy at its head and
/// submits the outbox. Reconnects whenever the lease names another server.
async fn sync_loop(
    client: async_nats::Client,
    cfg: ProjectSyncConfig,
    local: LocalCopy,
    outbox: Outbox,
    mut server_rx: watch::Receiver<Option<ServerRef>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = Arc::new(local);
    // Verify the copy once at start (a crash or a disk fault may have hurt
    // it); a damaged copy is discarded and fetched again from the server.
    let checking = local.clone();
    match tokio::task::spawn_blocking(move || checking.check()).await {
        Ok(Ok(CopyState::Discarded { meta, reason })) => {
            warn!(revision = ?meta.map(|m| m.revision), "the local project copy was damaged and is discarded: {reason}")
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!("cannot verify the local project copy: {e}"),
        Err(e) => warn!("cannot verify the local project copy: {e}"),
    }
    let mut backoff = Duration::from_millis(50);
    // The last refusal by a server's caller check, said once.
    let mut refused: Option<String> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let server = server_rx.borrow_and_update().clone();
        let Some(server) = server else {
            tokio::select! {
                _ = understudy_bus::stopped(&mut shutdown) => return,
                r = server_rx.changed() => if r.is_err() { return },
            }
            continue;
        };
        let outcome = tokio::select! {
            _ = understudy_bus::stopped(&mut shutdown) => return,
            r = server_rx.changed() => {
                if r.is_err() { return }
                backoff = Duration::from_millis(50);
                continue;
            }
            r = follow(&client, &cfg, &local, &outbox, server.clone()) => r,
        };
        match outcome {
            // Refused by the server's caller check: a configuration fault
            // an operator must see (retried all the same, it may be mended).
            Err(e) if e.is_refused_caller() => {
                let said = e.to_string();
                if refused.as_ref() != Some(&said) {
                    warn!(server = %server.device, "the project server refused this device: {said}");
                    refused = Some(said);
                }
            }
            Err(e) => debug!(server = %server.device, "following the project server: {e}"),
            Ok(()) => {}
        }
        // Wait a little (or for the lease to name someone else) and retry.
        tokio::select! {
            _ = understudy_bus::stopped(&mut shutdown) => return,
            _ = server_rx.changed() => backoff = Duration::from_millis(50),
            _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(Duration::from_secs(1)),
        }
    }
}

async fn follow(
    client: &async_nats::Client,
    cfg: &ProjectSyncConfig,
    local: &LocalCopy,
    outbox: &Outbox,
    server: ServerRef,
) -> Result<(), ClientError> {
    let mut pc = ProjectClient::connect_with(
        &cfg.group,
        server.clone(),
        cfg.store_timeout * 2,
        &cfg.security.client,
    )
    .await?;
    pc.count_received(metrics(cfg).received);
    let copy = pc.fetch_into(local).await?;
    let mut have = copy.revision;
    info!(server = %server.device, term = %server.term, revision = have, "project copy up to date");
    drain(client, cfg, local, outbox, &mut pc, &mut have).await?;
    let mut stream = pc.watch(have).await?;
    let mut outbox_tick = understudy_bus::ticker(Duration::from_millis(200));
    loop {
        tokio::select! {
            ev = stream.next() => {
                let ev = match ev {
                    None => return Ok(()),
                    Some(Err(s)) => return Err(s.into()),
                    Some(Ok(ev)) => ev,
                };
                if pc.accept_event(&ev).is_err() {
                    continue;
                }
                let rev = ev.head.as_ref().map_or(0, |h| h.revision);
                if rev > have {
                    have = pc.fetch_into(local).await?.revision.max(have);
                }
            }
            _ = outbox_tick.tick() => {
                drain(client, cfg, local, outbox, &mut pc, &mut have).await?;
            }
        }
    }
}

/// Submits every queued change in order. A change queued on the same base as
/// the one just committed was made after it on this device, so it goes on top
/// of it (its base becomes the new revision).
async fn drain(
    client: &async_nats::Client,
    cfg: &ProjectSyncConfig,
    local: &LocalCopy,
    outbox: &Outbox,
    pc: &mut ProjectClient,
    have: &mut u64,
) -> Result<(), ClientError> {
    let pending = outbox.pending()?;
    if pending.is_empty() {
        return Ok(());
    }
    let mut rebase: Option<(u64, u64)> = None;
    for entry in pending {
        let data = match outbox.content(&entry) {
            Ok(d) => d,
            Err(e) => {
                // Damaged on disk: set it aside (kept, reported), or leave it
                // if even that fails; the other changes go on either way.
                let reason = format!("the queued content is unreadable: {e}");
                warn!(change = %entry.change_id, "{reason}; kept in conflicts/");
                set_aside(client, cfg, outbox, &entry, entry.base_revision, reason).await;
                continue;
            }
        };
        let base = match rebase {
            Some((old, new)) if entry.base_revision == old => new,
            _ => entry.base_revision,
        };
        let change = Change {
            base_revision: base,
            changed_by: entry.changed_by.clone(),
            change_id: entry.change_id.clone(),
            data: Bytes::from(data),
        };
        match pc.submit(change).await {
            Ok(Submitted::Committed(r)) | Ok(Submitted::AlreadyCommitted(r)) => {
                info!(change = %entry.change_id, revision = r.revision, "queued change committed");
                outbox.remove(&entry)?;
                rebase = Some((entry.base_revision, r.revision));
            }
            Ok(Submitted::Conflict(head)) => {
                warn!(change = %entry.change_id, base, head = head.revision, "queued change conflicts; kept in conflicts/");
                outbox.move_to_conflicts(
                    &entry,
                    head.revision,
                    None,
                    unix_ms(SystemTime::now()),
                )?;
                events::publish(
                    client,
                    &cfg.group,
                    &cfg.device,
                    ProjectEventKind::ChangeConflicted {
                        device: cfg.device.clone(),
                        change_id: entry.change_id.clone(),
                        base_revision: base,
                        head_revision: head.revision,
                    },
                )
                .await;
            }
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                let reason = format!("the server refused it: {e}");
                warn!(change = %entry.change_id, "{reason}; kept in conflicts/");
                set_aside(client, cfg, outbox, &entry, base, reason).await;
            }
        }
    }
    *have = pc.fetch_into(local).await?.revision.max(*have);
    Ok(())
}

/// Moves a queued change that cannot be applied to `conflicts/` with the
/// reason, and reports it on the bus.
async fn set_aside(
    client: &async_nats::Client,
    cfg: &ProjectSyncConfig,
    outbox: &Outbox,
    entry: &OutboxEntry,
    base_revision: u64,
    reason: String,
) {
    match outbox.move_to_conflicts(entry, 0, Some(&reason), unix_ms(SystemTime::now())) {
        Ok(_) => {
            metrics(cfg).conflicts.inc();
        }
        Err(LocalError::NotFound { .. }) => {
            // Its content file is gone: there is nothing left to keep.
            error!(change = %entry.change_id, "a queued change lost its content; dropped");
            if let Err(e) = outbox.remove(entry) {
                warn!(change = %entry.change_id, "cannot drop it: {e}");
            }
        }
        Err(e) => {
            warn!(change = %entry.change_id, "cannot set a queued change aside: {e}");
            return;
        }
    }
    events::publish(
        client,
        &cfg.group,
        &cfg.device,
        ProjectEventKind::ChangeRefused {
            device: cfg.device.clone(),
            change_id: entry.change_id.clone(),
            base_revision,
            reason,
        },
    )
    .await;
}
