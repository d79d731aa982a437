//! The project-sync driver of one device: plumbing around [`ProjectService`]
//! (the gRPC side) and the device's local copy and outbox.
//!
//! - **Serving.** When the election service says this device serves with term
//!   T, the driver fences the project head with T and loads its content
//!   ([`fence_and_load`]) before the gRPC service answers anything; when the
//!   election says otherwise, or goes quiet for a second, it stops serving.
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
use understudy_bus::{ElectionFollower, Followed, unix_ms};
use understudy_protocol::messages::{ElectionState, ProjectEvent, ProjectEventKind, ProjectState};
use understudy_protocol::{DeviceId, GroupName, InstanceId, Role, SCHEMA_VERSION, Term, subjects};

use crate::client::{Change, ClientError, ProjectClient, ServerRef, Submitted, lease_server};
use crate::local::{CopyState, LocalCopy, LocalError, Outbox, OutboxEntry};
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
}

/// Why the project-sync service stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A subscription could not be made.
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// Why.
        source: async_nats::SubscribeError,
    },
    /// The local copy or outbox could not be opened.
    #[error("{0}")]
    Local(#[from] LocalError),
    /// The gRPC server failed.
    #[error("the gRPC server stopped: {0}")]
    Grpc(String),
}

/// If the election service is silent this long, stop serving.
const ELECTION_SILENCE: Duration = Duration::from_secs(1);

/// Runs the service on `listener` until `shutdown` turns true.
pub async fn run(
    client: async_nats::Client,
    cfg: ProjectSyncConfig,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ServiceError> {
    let local = LocalCopy::open(&cfg.data_dir)?;
    let outbox = Outbox::open(&cfg.data_dir)?;
    let svc = ProjectService::new(
        ServerConfig {
            group: cfg.group.clone(),
            device: cfg.device.clone(),
            max_size: cfg.max_size,
        },
        Some(client.clone()),
    );
    let subject = subjects::local_election(&cfg.group, &cfg.device);
    let mut election = client
        .subscribe(subject.clone())
        .await
        .map_err(|source| ServiceError::Subscribe { subject, source })?;

    let mut grpc_stop = shutdown.clone();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(4 * 1024 * 1024))
            .initial_connection_window_size(Some(16 * 1024 * 1024))
            .max_frame_size(Some(crate::client::MAX_FRAME))
            .http2_keepalive_interval(Some(Duration::from_secs(1)))
            .http2_keepalive_timeout(Some(Duration::from_secs(2)))
            .add_service(svc.clone().into_server())
            .serve_with_incoming_shutdown(incoming, async move {
                understudy_bus::stopped(&mut grpc_stop).await;
            }),
    );

    let (server_tx, server_rx) = watch::channel::<Option<ServerRef>>(None);
    let sync = tokio::spawn(sync_loop(
        client.clone(),
        cfg.clone(),
        local,
        outbox,
        server_rx,
        shutdown.clone(),
    ));

    let js = jetstream::new(client.clone());
    let mut store: Option<ProjectStore> = None;
    let mut lease_watch: Option<kv::Watch> = None;
    let (fenced_tx, mut fenced_rx) = mpsc::channel::<(Term, Result<Snapshot, FenceError>)>(4);
    let mut fencing: Option<Term> = None;
    // A term found deposed in the store is not fenced again: a newer server
    // holds the head, and the election will step this device down.
    let mut deposed: Option<Term> = None;
    let mut last_state: Option<(ElectionState, Instant)> = None;
    let mut follower = ElectionFollower::new(cfg.election_instance);
    let mut tick = understudy_bus::ticker(Duration::from_millis(200));
    let mut report = understudy_bus::ticker(Duration::from_secs(1));

    loop {
        tokio::select! {
            _ = understudy_bus::stopped(&mut shutdown) => break,
            Some(msg) = election.next() => {
                let Some(state) = understudy_bus::decoded::<ElectionState>(&msg) else { continue };
                let now = Instant::now();
                if state.device != cfg.device || state.group != cfg.group {
                    continue;
                }
                match follower.follow(state.instance, now) {
                    Followed::Other { followed } => {
                        debug!(instance = %state.instance, %followed, "election state of another process with this device id ignored");
                        continue;
                    }
                    Followed::Switched { from: Some(from) } => {
                        info!(%from, to = %state.instance, "following a new election service (the old one fell silent)");
                    }
                    Followed::Same | Followed::Switched { from: None } => {}
                }
                if state.role == Role::Server {
                    svc.confirm(state.term, now);
                    if svc.serving_term() != Some(state.term)
                        && fencing != Some(state.term)
                        && deposed != Some(state.term)
                    {
                        if svc.serving_term().is_some() {
                            svc.stop_serving("a new term");
                        }
                        fencing = Some(state.term);
                        start_fence(&js, &cfg, &mut store, state.term, fenced_tx.clone()).await;
                    }
                } else if svc.serving_term().is_some() {
                    svc.stop_serving("the election service says this device no longer serves");
                }
                last_state = Some((state, now));
            }
            Some((term, result)) = fenced_rx.recv() => {
                if fencing == Some(term) {
                    fencing = None;
                }
                let still = last_state.as_ref().is_some_and(|(s, at)| {
                    s.role == Role::Server && s.term == term && at.elapsed() < ELECTION_SILENCE
                });
                match result {
                    Ok(snapshot) if still => {
                        let revision = snapshot.head.revision();
                        svc.start_serving(snapshot);
                        publish_event(&client, &cfg, ProjectEventKind::ServingProject {
                            device: cfg.device.clone(),
                            term,
                            revision,
                            address: Some(cfg.advertise.clone()),
                        }).await;
                    }
                    Ok(_) => debug!(%term, "fenced, but no longer the server"),
                    Err(FenceError::Deposed(by)) => {
                        warn!(%term, "cannot serve the project: the head is held by term {by}");
                        deposed = Some(term);
                    }
                    Err(e) => {
                        warn!(%term, "cannot serve the project: {e}");
                        store = None;
                    }
                }
            }
            entry = next_lease(&mut lease_watch) => match entry {
                Some(server) => {
                    svc.set_known_server(server.clone());
                    // Renewals rewrite the lease four times a second; only a
                    // different server (or term) is news for the follower.
                    server_tx.send_if_modified(|cur| {
                        let changed = *cur != server;
                        if changed {
                            *cur = server;
                        }
                        changed
                    });
                }
                None => lease_watch = None,
            },
            _ = tick.tick() => {
                // The election service confirms four times a second; silence
                // means it is gone or this process was paused: stop serving.
                if svc.serving_term().is_some()
                    && last_state.as_ref().is_none_or(|(_, at)| at.elapsed() > ELECTION_SILENCE)
                {
                    svc.stop_serving("no word from the election service");
                }
                // A server whose fence failed (store away) tries again.
                if let Some((s, at)) = &last_state
                    && s.role == Role::Server
                    && at.elapsed() < ELECTION_SILENCE
                    && svc.serving_term() != Some(s.term)
                    && fencing.is_none()
                    && deposed != Some(s.term)
                {
                    fencing = Some(s.term);
                    start_fence(&js, &cfg, &mut store, s.term, fenced_tx.clone()).await;
                }
                if lease_watch.is_none() {
                    lease_watch = open_lease_watch(&js, &cfg).await;
                }
            }
            _ = report.tick() => {
                let state = project_state(&cfg, svc.serving_term().is_some(), follower.followed());
                understudy_bus::publish(
                    &client,
                    subjects::local_project(&cfg.group, &cfg.device),
                    &state,
                ).await;
            }
        }
    }
    svc.stop_serving("shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), sync).await;
    match tokio::time::timeout(Duration::from_secs(2), grpc).await {
        Ok(Ok(Err(e))) => Err(ServiceError::Grpc(e.to_string())),
        _ => Ok(()),
    }
}

async fn start_fence(
    js: &jetstream::Context,
    cfg: &ProjectSyncConfig,
    store: &mut Option<ProjectStore>,
    term: Term,
    done: mpsc::Sender<(Term, Result<Snapshot, FenceError>)>,
) {
    if store.is_none() {
        match ProjectStore::open(js, &cfg.group, cfg.replicas, cfg.store_timeout).await {
            Ok(s) => *store = Some(s),
            Err(e) => {
                let _ = done.send((term, Err(e.into()))).await;
                return;
            }
        }
    }
    let Some(store) = store.clone() else { return };
    let group = cfg.group.clone();
    info!(%term, "fencing the project head before serving");
    tokio::spawn(async move {
        let result = fence_and_load(&store, &group, term).await;
        let _ = done.send((term, result)).await;
    });
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

async fn publish_event(
    client: &async_nats::Client,
    cfg: &ProjectSyncConfig,
    kind: ProjectEventKind,
) {
    let event = ProjectEvent {
        schema: SCHEMA_VERSION,
        group: cfg.group.clone(),
        reporter: cfg.device.clone(),
        at_ms: unix_ms(SystemTime::now()),
        kind,
    };
    understudy_bus::publish(client, subjects::project_events(&cfg.group), &event).await;
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
        if let Err(e) = outcome {
            debug!(server = %server.device, "following the project server: {e}");
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
    let mut pc = ProjectClient::connect(&cfg.group, server.clone(), cfg.store_timeout * 2).await?;
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
                publish_event(
                    client,
                    cfg,
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
        Ok(_) => {}
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
    publish_event(
        client,
        cfg,
        ProjectEventKind::ChangeRefused {
            device: cfg.device.clone(),
            change_id: entry.change_id.clone(),
            base_revision,
            reason,
        },
    )
    .await;
}
