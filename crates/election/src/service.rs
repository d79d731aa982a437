//! The NATS driver around the election [`Machine`].
//!
//! Plumbing only: it hands heartbeats and the heartbeat service's peer
//! verdicts to the [`InputStage`] (which decides what reaches the machine),
//! turns the lease entry's KV watch, operator requests and timers into
//! [`Event`]s, and the machine's [`Action`]s into JetStream KV
//! compare-and-set calls (`create` for [`Expect::Absent`], `update` on a
//! revision otherwise) and bus publishes. Every rule lives in the core.
//!
//! It also keeps the group's show hold ([`crate::settings`]): it watches
//! (and re-reads) the `hold` key and tells the machine whether the group is
//! held, at once on a change and again when a hold lapses by itself; one
//! election service of the group (a NATS queue group) answers the operators'
//! settings requests, stores the hold and publishes `hold_changed`.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv, stream};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use understudy_bus::{
    Beats, Inbox, Request, SubscribeError, Subscription, connected, flush, publish, stopped,
    ticker, unix_ms,
};
use understudy_protocol::device_setting::DeviceSetting;
use understudy_protocol::hold::{
    HoldChange, HoldRecord, SettingsErrorCode, SettingsOp, SettingsReply, SettingsRequest,
};
use understudy_protocol::ledger::LedgerEntry;
use understudy_protocol::messages::{
    self, ControlOp, ControlReply, ControlRequest, ElectionEvent, ElectionEventKind,
    ElectionReason, ElectionState, Heartbeat, LeaseRecord, PeerChangeKind, PeerNotice, Trigger,
    TriggerReply,
};
use understudy_protocol::{
    ControlErrorCode, DeviceId, GroupName, InstanceId, Mac, SCHEMA_VERSION, Score, Term, subjects,
};
use understudy_telemetry::{ElectionMetrics, ServerWatch};

use crate::core::{
    Action, ElectionConfig, Event, Expect, Ignored, Input, InputStage, Machine, OpId, StoreOutcome,
};
use crate::settings::{
    next_device_setting, next_hold, open_settings_bucket, read_device_setting, read_hold,
    write_device_setting, write_hold,
};

/// What the election service needs to run for one device.
#[derive(Debug, Clone)]
pub struct ElectionServiceConfig {
    /// The device's project group.
    pub group: GroupName,
    /// The device.
    pub device: DeviceId,
    /// This process.
    pub instance: InstanceId,
    /// The device's MAC.
    pub mac: Mac,
    /// The score at start (B3).
    pub score: Score,
    /// Whether the device starts online (B1).
    pub online: bool,
    /// Election timing.
    pub election: ElectionConfig,
    /// JetStream replicas for the lease bucket and the events stream (1, or 3
    /// on a 3-node cluster).
    pub replicas: usize,
    /// How long election events are kept for late subscribers.
    pub events_max_age: Duration,
    /// How long the group's election ledger keeps its entries (set when
    /// this device creates the ledger stream, or finds it set otherwise).
    pub ledger_max_age: Duration,
    /// Where this device's project-sync gRPC service can be reached
    /// (`host:port`); written into the lease while this device serves.
    pub project_addr: Option<String>,
    /// The group's heartbeats as the process's services share them (one
    /// subscription, decoded once: `understudy_bus::beats`). `None`: this
    /// service subscribes on its own.
    pub shared_beats: Option<understudy_bus::SharedBeats>,
}

/// Why the election service could not start (the shared [`understudy_bus::StartError`]:
/// only a subscription refused can stop it).
pub use understudy_bus::StartError as ServiceError;

/// The lease bucket's name and config for a group.
pub fn lease_bucket_config(group: &GroupName, lease: Duration, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: subjects::lease_bucket(group),
        description: format!("understudy server lease of group {group}"),
        history: 1,
        max_age: lease,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    }
}

/// Opens the group's lease bucket, creating it if it does not exist.
pub async fn open_lease_bucket(
    js: &jetstream::Context,
    group: &GroupName,
    lease: Duration,
    replicas: usize,
) -> Result<kv::Store, String> {
    crate::settings::open_or_create(js, lease_bucket_config(group, lease, replicas)).await
}

/// Makes sure the stream that keeps election events exists.
pub async fn ensure_events_stream(
    js: &jetstream::Context,
    replicas: usize,
    max_age: Duration,
) -> Result<(), String> {
    js.get_or_create_stream(stream::Config {
        name: subjects::EVENTS_STREAM.to_string(),
        subjects: vec![subjects::EVENTS_STREAM_SUBJECTS.to_string()],
        max_age,
        max_messages: 1_000_000,
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|e| format!("cannot create stream {}: {e}", subjects::EVENTS_STREAM))
}

/// The config of a group's election ledger stream: one per group, file
/// storage, entries kept for `max_age` and at most
/// [`ledger::MAX_ENTRIES`](understudy_protocol::ledger::MAX_ENTRIES).
pub fn ledger_stream_config(
    group: &GroupName,
    replicas: usize,
    max_age: Duration,
) -> stream::Config {
    stream::Config {
        name: subjects::ledger_stream(group),
        description: Some(format!("understudy election ledger of group {group}")),
        subjects: vec![subjects::ledger(group)],
        max_age,
        max_messages: understudy_protocol::ledger::MAX_ENTRIES,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    }
}

/// Makes sure the group's ledger stream exists and keeps entries for
/// `max_age`: created when absent; its age limit set again when it differs
/// (the devices of a group should agree on `--ledger-retention-days`).
pub async fn ensure_ledger_stream(
    js: &jetstream::Context,
    group: &GroupName,
    replicas: usize,
    max_age: Duration,
) -> Result<(), String> {
    let config = ledger_stream_config(group, replicas, max_age);
    let name = config.name.clone();
    let mut stream = js
        .get_or_create_stream(config.clone())
        .await
        .map_err(|e| format!("cannot create stream {name}: {e}"))?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("cannot read stream {name}: {e}"))?;
    if info.config.max_age != max_age {
        info!(
            stream = %name,
            was_days = info.config.max_age.as_secs() / 86_400,
            now_days = max_age.as_secs() / 86_400,
            "setting the ledger's retention"
        );
        let updated = stream::Config {
            max_age,
            ..info.config.clone()
        };
        js.update_stream(updated)
            .await
            .map_err(|e| format!("cannot set the retention of stream {name}: {e}"))?;
    }
    Ok(())
}

/// A message on its way to a JetStream stream (see [`publish_events`]).
struct Outgoing {
    /// The `Nats-Msg-Id`; `None`: this instance and a sequence number.
    id: Option<String>,
    payload: Vec<u8>,
    /// Whether it is a ledger entry (else an election event).
    ledger: bool,
}

/// Where [`publish_events`] sends and which streams it (re)creates.
struct Streams {
    group: GroupName,
    instance: InstanceId,
    replicas: usize,
    events_max_age: Duration,
    ledger_max_age: Duration,
}

struct Driver {
    cfg: ElectionServiceConfig,
    client: async_nats::Client,
    machine: Machine,
    start: Instant,
    /// Which peer heartbeats and verdicts reach the machine.
    input: InputStage,
    last_state: Option<ElectionState>,
    replies: mpsc::Sender<(OpId, StoreOutcome)>,
    store: Option<kv::Store>,
    store_timeout: Duration,
    /// Election events and ledger entries, encoded, on their way to their
    /// streams (in order).
    events: Option<mpsc::Sender<Outgoing>>,
    /// How long the lost server had been silent when this device gave it
    /// up, by device (for the ledger entry of the election that follows).
    detections: Vec<(DeviceId, Term, u64)>,
    events_task: Option<tokio::task::JoinHandle<()>>,
    /// This device's election figures for `/metrics`.
    metrics: ElectionMetrics,
    /// Who serves over time, for the server-change and failover figures.
    server_watch: ServerWatch,
    /// The trace span of the election under way, from its first news
    /// (the server lost, or a claim) to its end, and when it began.
    election_span: Option<(tracing::Span, Duration)>,
    /// The group's settings bucket, once open.
    settings: Option<kv::Store>,
    /// The show hold as last stored, with its KV revision (`None`: never
    /// set, or not read yet).
    hold: Option<(u64, Option<HoldRecord>)>,
    /// This device's operator settings as last stored, with their KV
    /// revision (`None`: never set, or not read yet).
    device_setting: Option<(u64, Option<DeviceSetting>)>,
}

/// Everything the loop waits on besides the shutdown signal.
struct Sources {
    /// The group's heartbeats.
    heartbeats: Beats,
    /// This device's heartbeat service's verdicts.
    notices: Inbox<PeerNotice>,
    /// Operator requests; raw, so an unreadable one still gets an answer.
    control: Subscription,
    /// Operator-triggered elections (answered when asked as requests).
    triggers: Inbox<Trigger>,
    /// Operators' settings requests (the show hold), shared with the
    /// group's other election services: one answers each.
    settings: Subscription,
    /// The watch of the show hold, when open.
    hold_watch: Option<kv::Watch>,
    /// The watch of this device's operator settings, when open.
    setting_watch: Option<kv::Watch>,
    /// Replies of store calls running in the background.
    replies: mpsc::Receiver<(OpId, StoreOutcome)>,
    /// The lease watch, when open.
    watch: Option<kv::Watch>,
    /// Reads the lease every second besides watching it (an expiry is not
    /// watched).
    resync: tokio::time::Interval,
    /// Lease reads so far (the settings are read again every
    /// [`SETTINGS_REREAD_EVERY`]th).
    resyncs: u64,
    /// Lets the machine see the time and says the state four times a second.
    state_tick: tokio::time::Interval,
    /// Paces opening the lease bucket and its watch while either is missing
    /// (at start, and after the bus or JetStream came back).
    reopen: tokio::time::Interval,
    /// Problems already warned about since the store was last open.
    warned: BTreeSet<&'static str>,
}

impl Sources {
    async fn subscribe(
        client: &async_nats::Client,
        cfg: &ElectionServiceConfig,
        replies: mpsc::Receiver<(OpId, StoreOutcome)>,
    ) -> Result<Self, SubscribeError> {
        let (group, device) = (&cfg.group, &cfg.device);
        Ok(Self {
            heartbeats: Beats::subscribe(
                client,
                subjects::heartbeats(group),
                cfg.shared_beats.as_ref(),
            )
            .await?,
            notices: Inbox::subscribe(client, subjects::local_peers(group, device)).await?,
            control: Subscription::subscribe(client, subjects::control(group, device)).await?,
            triggers: Inbox::subscribe(client, subjects::trigger(group)).await?,
            settings: Subscription::queue_subscribe(
                client,
                subjects::settings(group),
                subjects::SETTINGS_QUEUE,
            )
            .await?,
            hold_watch: None,
            setting_watch: None,
            replies,
            watch: None,
            resync: ticker(Duration::from_secs(1)),
            resyncs: 0,
            state_tick: ticker(Duration::from_millis(250)),
            reopen: ticker(REOPEN_PACE),
            warned: BTreeSet::new(),
        })
    }
}

/// An election span still open this long is closed (`no_server_yet`).
const ELECTION_SPAN_LIMIT: Duration = Duration::from_secs(10);

/// The hold and this device's settings are read again (besides watched)
/// at every this many lease reads (one a second).
const SETTINGS_REREAD_EVERY: u64 = 10;

/// How often opening the lease bucket or its watch is retried while missing.
const REOPEN_PACE: Duration = Duration::from_millis(250);

/// How many election events may wait for the bus; beyond that the newest are
/// dropped with a warning (a device makes a handful per election).
const EVENTS_QUEUE: usize = 256;

/// How often an election event the bus refused is offered again.
const EVENTS_RETRY: Duration = Duration::from_millis(250);

/// How long a stopping device waits for its last election events to be
/// stored.
const EVENTS_DRAIN: Duration = Duration::from_secs(1);

/// Publishes election events (to the events stream) and ledger entries (to
/// the group's ledger stream) one at a time, in order, each until JetStream
/// acknowledges it: an event made while the bus was silently gone (before
/// the client noticed) is not lost but sent again once it is back. Each
/// carries a `Nats-Msg-Id` — an event one of this instance and a sequence
/// number, a ledger entry one of its term — so a retry after a lost
/// acknowledgement is stored once.
///
/// A refusal (no stream answers: it could not be made at start, or was
/// deleted) makes it create the stream again before the next try.
async fn publish_events(
    js: jetstream::Context,
    streams: Streams,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    let events_subject = subjects::election_events(&streams.group);
    let ledger_subject = subjects::ledger(&streams.group);
    let mut seq: u64 = 0;
    while let Some(out) = rx.recv().await {
        let id = match out.id {
            Some(id) => id,
            None => {
                seq += 1;
                format!("{}-{seq}", streams.instance)
            }
        };
        let subject = if out.ledger {
            &ledger_subject
        } else {
            &events_subject
        };
        let what = if out.ledger {
            "ledger entry"
        } else {
            "election event"
        };
        // Retries are paced by this task's own timer; each attempt is also
        // bounded by the 2 s acknowledgement timeout below.
        let mut retry = understudy_bus::ticker(EVENTS_RETRY);
        retry.tick().await; // the first tick is immediate
        let mut attempts = 0u32;
        loop {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            let sent = tokio::time::timeout(Duration::from_secs(2), async {
                js.publish_with_headers(subject.clone(), headers, out.payload.clone().into())
                    .await?
                    .await
            })
            .await;
            match sent {
                Ok(Ok(_ack)) => break,
                Ok(Err(e)) => {
                    debug!(%id, error = %e, "{what} not stored yet; retrying");
                    let made = tokio::time::timeout(Duration::from_secs(2), async {
                        if out.ledger {
                            ensure_ledger_stream(
                                &js,
                                &streams.group,
                                streams.replicas,
                                streams.ledger_max_age,
                            )
                            .await
                        } else {
                            ensure_events_stream(&js, streams.replicas, streams.events_max_age)
                                .await
                        }
                    })
                    .await;
                    if let Ok(Err(e)) = made {
                        debug!("{e}");
                    }
                }
                Err(_) => debug!(%id, "{what} not acknowledged in time; retrying"),
            }
            attempts += 1;
            if attempts == 5 {
                warn!(%id, "an {what} is waiting for the bus");
            }
            retry.tick().await;
        }
    }
}

/// Runs the election service until `shutdown` turns true; then hands over
/// the lease if this device serves (planned failover) and returns.
pub async fn run(
    client: async_nats::Client,
    cfg: ElectionServiceConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ServiceError> {
    let (tx, rx) = mpsc::channel(64);
    let mut inbox = Sources::subscribe(&client, &cfg, rx).await?;
    let mut d = Driver::new(client.clone(), cfg, tx);
    let js = jetstream::new(client);
    // An operator's stored score and online/offline apply from the first
    // state this device says, well before its grace ends. Bounded: with
    // JetStream slow or down the device says its state anyway and the loop
    // opens the bucket (and applies what is stored) when it can.
    let first_read = d.store_timeout;
    if tokio::time::timeout(first_read, d.open_settings(&js, &mut inbox.warned))
        .await
        .is_err()
    {
        debug!("the settings bucket did not open at start; retrying in the loop");
    }
    d.publish_state(true).await;
    while d.turn(&mut inbox, &js, &mut shutdown).await {}
    d.shut_down().await;
    Ok(())
}

async fn next_entry(w: &mut Option<kv::Watch>) -> Option<Option<(u64, LeaseRecord)>> {
    let Some(watch) = w.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match watch.next().await {
            None => return None,
            Some(Err(e)) => {
                debug!("lease watch error: {e}");
                return None;
            }
            Some(Ok(entry)) => {
                if let Some(obs) = observation(&entry) {
                    return Some(obs);
                }
            }
        }
    }
}

/// What a KV entry says about the lease; `None` for an undecodable value.
fn observation(entry: &kv::Entry) -> Option<Option<(u64, LeaseRecord)>> {
    match entry.operation {
        kv::Operation::Delete | kv::Operation::Purge => Some(None),
        kv::Operation::Put => match messages::decode::<LeaseRecord>(&entry.value) {
            Ok(rec) => Some(Some((entry.revision, rec))),
            Err(e) => {
                warn!(revision = entry.revision, "ignoring a lease entry: {e}");
                None
            }
        },
    }
}

async fn read_lease(store: &kv::Store) -> Result<Option<(u64, LeaseRecord)>, String> {
    match store.entry(subjects::LEASE_KEY).await {
        Ok(None) => Ok(None),
        Ok(Some(entry)) => Ok(observation(&entry).flatten()),
        Err(e) => Err(e.to_string()),
    }
}

async fn store_call(store: kv::Store, expect: Expect, record: LeaseRecord) -> StoreOutcome {
    let value = messages::encode(&record).into();
    let result = match expect {
        Expect::Absent => store
            .create(subjects::LEASE_KEY, value)
            .await
            .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists),
        Expect::Revision(r) => store
            .update(subjects::LEASE_KEY, value, r)
            .await
            .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
    };
    match result {
        Ok(revision) => StoreOutcome::Written { revision },
        Err(true) => match read_lease(&store).await {
            Ok(current) => StoreOutcome::Conflict { current },
            Err(_) => StoreOutcome::Failed,
        },
        Err(false) => StoreOutcome::Failed,
    }
}

impl Driver {
    /// The driver of a device that has just started, with its event
    /// publisher running.
    fn new(
        client: async_nats::Client,
        cfg: ElectionServiceConfig,
        replies: mpsc::Sender<(OpId, StoreOutcome)>,
    ) -> Self {
        let mut machine = Machine::new(
            cfg.election.clone(),
            cfg.group.clone(),
            cfg.device.clone(),
            cfg.instance,
            cfg.mac,
            cfg.score,
            cfg.online,
            Duration::ZERO,
        );
        machine.set_project_addr(cfg.project_addr.clone());
        let (events_tx, events_rx) = mpsc::channel(EVENTS_QUEUE);
        let metrics =
            understudy_telemetry::metrics().election(cfg.group.as_str(), cfg.device.as_str());
        let events_task = tokio::spawn(publish_events(
            jetstream::new(client.clone()),
            Streams {
                group: cfg.group.clone(),
                instance: cfg.instance,
                replicas: cfg.replicas,
                events_max_age: cfg.events_max_age,
                ledger_max_age: cfg.ledger_max_age,
            },
            events_rx,
        ));
        Self {
            store_timeout: cfg.election.store_timeout,
            input: InputStage::new(cfg.group.clone(), cfg.device.clone()),
            cfg,
            client,
            machine,
            start: Instant::now(),
            last_state: None,
            replies,
            store: None,
            metrics,
            server_watch: ServerWatch::new(),
            election_span: None,
            events: Some(events_tx),
            detections: Vec::new(),
            events_task: Some(events_task),
            settings: None,
            hold: None,
            device_setting: None,
        }
    }

    /// Opens the lease bucket (and makes sure the events stream exists).
    async fn open_store(&mut self, js: &jetstream::Context, warned: &mut BTreeSet<&'static str>) {
        let (group, lease, replicas) = (
            &self.cfg.group,
            self.cfg.election.lease_duration,
            self.cfg.replicas,
        );
        let open = tokio::time::timeout(
            self.store_timeout * 2,
            open_lease_bucket(js, group, lease, replicas),
        )
        .await
        .unwrap_or_else(|_| Err("JetStream did not answer".to_string()));
        match open {
            Ok(store) => {
                info!(bucket = %subjects::lease_bucket(group), "lease bucket open");
                match tokio::time::timeout(
                    self.store_timeout * 2,
                    ensure_events_stream(js, replicas, self.cfg.events_max_age),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!("{e}"),
                    Err(_) => warn!("JetStream did not answer creating the event stream"),
                }
                match tokio::time::timeout(
                    self.store_timeout * 2,
                    ensure_ledger_stream(js, group, replicas, self.cfg.ledger_max_age),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!("{e}"),
                    Err(_) => warn!("JetStream did not answer creating the ledger stream"),
                }
                self.store = Some(store);
                warned.clear();
            }
            Err(e) => {
                if warned.insert("bucket") {
                    warn!("{e}; retrying");
                }
            }
        }
    }

    /// Opens the store and its watch, whichever is missing (at start, or
    /// after the bus came back).
    async fn reopen(&mut self, js: &jetstream::Context, inbox: &mut Sources) {
        if self.store.is_none() {
            self.open_store(js, &mut inbox.warned).await;
        }
        if inbox.watch.is_none() {
            self.open_watch(inbox).await;
        }
        if self.settings.is_none() {
            self.open_settings(js, &mut inbox.warned).await;
        }
        if inbox.hold_watch.is_none() {
            self.open_hold_watch(inbox).await;
        }
        if inbox.setting_watch.is_none() {
            self.open_setting_watch(inbox).await;
        }
    }

    /// Opens the settings bucket and reads the hold at once: a device that
    /// starts while the group is held knows it long before its grace ends.
    async fn open_settings(
        &mut self,
        js: &jetstream::Context,
        warned: &mut BTreeSet<&'static str>,
    ) {
        let (group, replicas) = (&self.cfg.group, self.cfg.replicas);
        let open = tokio::time::timeout(
            self.store_timeout * 2,
            open_settings_bucket(js, group, replicas),
        )
        .await
        .unwrap_or_else(|_| Err("JetStream did not answer".to_string()));
        match open {
            Ok(store) => {
                info!(bucket = %subjects::settings_bucket(group), "settings bucket open");
                self.settings = Some(store);
                self.reread_hold().await;
                self.reread_device_setting().await;
            }
            Err(e) => {
                if warned.insert("settings") {
                    warn!("{e}; retrying");
                }
            }
        }
    }

    /// Opens the watch of the hold, once the settings bucket is open.
    async fn open_hold_watch(&self, inbox: &mut Sources) {
        let Some(store) = &self.settings else { return };
        let watch = tokio::time::timeout(
            self.store_timeout * 2,
            store.watch_with_history(subjects::HOLD_KEY),
        )
        .await
        .unwrap_or_else(|_| Err(kv::WatchError::new(kv::WatchErrorKind::TimedOut)));
        match watch {
            Ok(w) => inbox.hold_watch = Some(w),
            Err(e) => {
                if inbox.warned.insert("hold watch") {
                    warn!("cannot watch the show hold: {e}; retrying");
                }
            }
        }
    }

    /// Opens the watch of this device's settings, once the settings bucket
    /// is open.
    async fn open_setting_watch(&self, inbox: &mut Sources) {
        let Some(store) = &self.settings else { return };
        let key = subjects::device_setting_key(&self.cfg.device);
        let watch = tokio::time::timeout(self.store_timeout * 2, store.watch_with_history(key))
            .await
            .unwrap_or_else(|_| Err(kv::WatchError::new(kv::WatchErrorKind::TimedOut)));
        match watch {
            Ok(w) => inbox.setting_watch = Some(w),
            Err(e) => {
                if inbox.warned.insert("setting watch") {
                    warn!("cannot watch this device's operator settings: {e}; retrying");
                }
            }
        }
    }

    /// Reads this device's operator settings and applies them; `false` if
    /// the store did not answer.
    async fn reread_device_setting(&mut self) -> bool {
        let Some(store) = self.settings.clone() else {
            return false;
        };
        let read = tokio::time::timeout(
            self.store_timeout,
            read_device_setting(&store, &self.cfg.device),
        )
        .await;
        match read {
            Ok(Ok(Some(obs))) => {
                self.observe_device_setting(obs).await;
                true
            }
            Ok(Ok(None)) => true,
            _ => false,
        }
    }

    /// A value of this device's settings seen in the bucket (watched, read
    /// or written): kept unless older than the one known, then applied over
    /// the configured score and online (an unset field means "as
    /// configured").
    async fn observe_device_setting(&mut self, (revision, record): (u64, Option<DeviceSetting>)) {
        if self
            .device_setting
            .as_ref()
            .is_some_and(|(known, _)| *known > revision)
        {
            return;
        }
        let (score, online) = understudy_protocol::device_setting::effective(
            record.as_ref(),
            self.cfg.score,
            self.cfg.online,
        );
        self.device_setting = Some((revision, record));
        let st = self.machine.status(self.now());
        if st.score != score {
            info!(%score, configured = %self.cfg.score, "applying the operator's stored score");
            self.feed(Event::SetScore(score)).await;
        }
        if st.online != online {
            info!(online, "applying the operator's stored online/offline");
            self.feed(Event::SetOnline(online)).await;
        }
    }

    /// Stores the change `op` of this device's settings (read fresh first,
    /// so the other field is kept), then applies it. Refused, and not
    /// applied, when the store does not answer: an operator's choice is
    /// never applied without being kept.
    async fn store_control(
        &mut self,
        op: &ControlOp,
        set_by: Option<String>,
        js: &jetstream::Context,
    ) -> Result<(), String> {
        if matches!(op, ControlOp::Get) {
            return Ok(());
        }
        if self.settings.is_none() {
            let mut warned = BTreeSet::new();
            self.open_settings(js, &mut warned).await;
        }
        let bucket = subjects::settings_bucket(&self.cfg.group);
        let Some(store) = self.settings.clone() else {
            return Err(format!(
                "cannot open the settings bucket {bucket} (is JetStream up?); nothing changed"
            ));
        };
        let current = tokio::time::timeout(
            self.store_timeout * 2,
            read_device_setting(&store, &self.cfg.device),
        )
        .await
        .unwrap_or_else(|_| Err("JetStream did not answer in time".to_string()))
        .map_err(|e| {
            format!("cannot read this device's settings from {bucket}: {e}; nothing changed")
        })?;
        let base = current
            .and_then(|(_, r)| r)
            .unwrap_or_else(|| DeviceSetting::empty(&self.cfg.group, &self.cfg.device));
        let Some(next) = base.changed(op, set_by, unix_ms(SystemTime::now())) else {
            return Ok(());
        };
        let revision =
            tokio::time::timeout(self.store_timeout * 2, write_device_setting(&store, &next))
                .await
                .unwrap_or_else(|_| Err("JetStream did not answer in time".to_string()))
                .map_err(|e| format!("{e}; nothing changed"))?;
        info!(score = ?next.score, online = ?next.online, set_by = ?next.set_by,
            revision, "operator setting stored");
        self.observe_device_setting((revision, Some(next))).await;
        Ok(())
    }

    /// Reads the hold from the bucket and applies it; `false` if the store
    /// did not answer.
    async fn reread_hold(&mut self) -> bool {
        let Some(store) = self.settings.clone() else {
            return false;
        };
        match tokio::time::timeout(self.store_timeout, read_hold(&store)).await {
            Ok(Ok(Some(obs))) => {
                self.observe_hold(obs).await;
                true
            }
            Ok(Ok(None)) => {
                self.apply_hold().await;
                true
            }
            _ => false,
        }
    }

    /// A value of the hold seen in the bucket (watched, read or written):
    /// kept unless an older revision than the one already known (a read
    /// may lag a write on a cluster).
    async fn observe_hold(&mut self, (revision, record): (u64, Option<HoldRecord>)) {
        if self
            .hold
            .as_ref()
            .is_some_and(|(known, _)| *known > revision)
        {
            return;
        }
        self.hold = Some((revision, record));
        self.apply_hold().await;
    }

    /// Whether the group is held now, by the wall clock.
    fn held_now(&self) -> bool {
        let now = unix_ms(SystemTime::now());
        self.hold
            .as_ref()
            .and_then(|(_, r)| r.as_ref())
            .is_some_and(|r| r.in_effect(now))
    }

    /// When the hold in effect lapses by itself, on the loop's clock.
    fn hold_lapses_at(&self) -> Option<Instant> {
        let now = unix_ms(SystemTime::now());
        let rec = self.hold.as_ref().and_then(|(_, r)| r.as_ref())?;
        rec.lapses_in_ms(now)
            .map(|ms| Instant::now() + Duration::from_millis(ms))
    }

    /// Tells the machine whether the group is held, when that changed (a
    /// new value, or a hold that lapsed by itself).
    async fn apply_hold(&mut self) {
        let held = self.held_now();
        if held == self.machine.held() {
            return;
        }
        let rec = self.hold.as_ref().and_then(|(_, r)| r.clone());
        match (&rec, held) {
            (Some(r), true) => info!(
                until_ms = ?r.until_ms, reason = ?r.reason, set_by = ?r.set_by,
                "the group is held: no preemption until the hold is lifted"
            ),
            (Some(r), false) if r.held => info!("the show hold lapsed"),
            _ => info!("the show hold is lifted"),
        }
        self.feed(Event::SetHold(held)).await;
    }

    /// Opens the watch of the lease entry, once the store is open.
    async fn open_watch(&self, inbox: &mut Sources) {
        let Some(store) = &self.store else { return };
        let watch = tokio::time::timeout(
            self.store_timeout * 2,
            store.watch_with_history(subjects::LEASE_KEY),
        )
        .await
        .unwrap_or_else(|_| Err(kv::WatchError::new(kv::WatchErrorKind::TimedOut)));
        match watch {
            Ok(w) => inbox.watch = Some(w),
            Err(e) => {
                if inbox.warned.insert("watch") {
                    warn!("cannot watch the lease: {e}; retrying");
                }
            }
        }
    }

    /// Waits for one message or timer and hands it on; `false` once told to
    /// stop.
    async fn turn(
        &mut self,
        inbox: &mut Sources,
        js: &jetstream::Context,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut deadline = self
            .machine
            .next_deadline()
            .map(|t| self.start + t)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        if let Some(lapse) = self.hold_lapses_at() {
            deadline = deadline.min(lapse);
        }
        let missing = self.store.is_none()
            || inbox.watch.is_none()
            || self.settings.is_none()
            || inbox.hold_watch.is_none()
            || inbox.setting_watch.is_none();
        tokio::select! {
            () = stopped(shutdown) => return false,
            hb = inbox.heartbeats.next() => self.on_heartbeat(&hb).await,
            notice = inbox.notices.next() => self.on_notice(&notice).await,
            msg = inbox.control.next() => self.on_control(msg, js).await,
            req = inbox.triggers.next_request() => self.on_trigger(req).await,
            msg = inbox.settings.next() => self.on_settings(msg, js).await,
            obs = next_hold(&mut inbox.hold_watch) => match obs {
                Some(obs) => self.observe_hold(obs).await,
                None => {
                    debug!("hold watch ended; reopening");
                    inbox.hold_watch = None;
                }
            },
            obs = next_device_setting(&mut inbox.setting_watch) => match obs {
                Some(obs) => self.observe_device_setting(obs).await,
                None => {
                    debug!("device setting watch ended; reopening");
                    inbox.setting_watch = None;
                }
            },
            Some((op, outcome)) = inbox.replies.recv() => {
                self.feed(Event::StoreReply { op, outcome }).await;
            }
            entry = next_entry(&mut inbox.watch) => match entry {
                Some(obs) => self.feed(Event::LeaseObserved(obs)).await,
                None => {
                    debug!("lease watch ended; reopening");
                    inbox.watch = None;
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                self.apply_hold().await;
                self.feed(Event::Tick).await;
            }
            _ = inbox.resync.tick() => {
                // The hold only when the store answered for the lease: a
                // store that does not answer holds the loop up once, not
                // twice. The settings are watched; reading them again is a
                // safety net, every SETTINGS_REREAD_EVERY-th lease read
                // (each read is a JetStream request: at 200 devices, every
                // second would be 400 more requests a second).
                inbox.resyncs = inbox.resyncs.wrapping_add(1);
                if self.resync(&mut inbox.watch).await
                    && inbox.resyncs.is_multiple_of(SETTINGS_REREAD_EVERY)
                {
                    if !self.reread_hold().await {
                        inbox.hold_watch = None;
                    }
                    if !self.reread_device_setting().await {
                        inbox.setting_watch = None;
                    }
                }
            }
            _ = inbox.state_tick.tick() => {
                // Let the machine see the time first (a pause may have ended
                // its lease, a hold may have lapsed), then say what it is.
                self.apply_hold().await;
                self.feed(Event::Tick).await;
                self.publish_state(true).await;
            }
            _ = inbox.reopen.tick(), if missing => self.reopen(js, inbox).await,
        }
        true
    }

    /// Reads the lease; if the store does not answer, drops the watch so it
    /// is rebuilt when the bus is back (and returns `false`).
    async fn resync(&mut self, watch: &mut Option<kv::Watch>) -> bool {
        let Some(store) = self.store.clone() else {
            return false;
        };
        match tokio::time::timeout(self.store_timeout, read_lease(&store)).await {
            Ok(Ok(obs)) => {
                self.feed(Event::LeaseObserved(obs)).await;
                true
            }
            _ => {
                *watch = None;
                false
            }
        }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    async fn feed(&mut self, event: Event) {
        let now = self.now();
        let actions = self.machine.handle(event, now);
        self.act(actions).await;
        self.record(now);
        self.publish_state(false).await;
    }

    /// The span of the election under way, opened now (`cause`) if none is.
    fn election_span(&mut self, cause: &'static str) -> tracing::Span {
        if let Some((span, _)) = &self.election_span {
            return span.clone();
        }
        let span = tracing::info_span!(
            "election",
            group = %self.cfg.group,
            device = %self.cfg.device,
            cause,
            outcome = tracing::field::Empty
        );
        self.election_span = Some((span.clone(), self.now()));
        span
    }

    /// Closes the election span with its `outcome`.
    fn end_election(&mut self, outcome: &'static str) {
        if let Some((span, _)) = self.election_span.take() {
            span.record("outcome", outcome);
        }
    }

    /// Sets this device's election figures from the machine's status.
    fn record(&mut self, now: Duration) {
        let st = self.machine.status(now);
        if let Some((_, since)) = &self.election_span {
            if st
                .server
                .as_ref()
                .is_some_and(|(d, _)| *d != self.cfg.device)
            {
                self.end_election("another_device_serves");
            } else if now.saturating_sub(*since) > ELECTION_SPAN_LIMIT {
                self.end_election("no_server_yet");
            }
        }
        let m = &self.metrics;
        let serving = st
            .server
            .as_ref()
            .is_some_and(|(d, _)| *d == self.cfg.device);
        m.is_server.set(i64::from(serving));
        m.group_has_server.set(i64::from(st.server.is_some()));
        m.group_held.set(i64::from(self.machine.held()));
        let term = st
            .server
            .as_ref()
            .map_or(st.term, |(_, t)| (*t).max(st.term));
        ElectionMetrics::set(&m.term, term.get());
        ElectionMetrics::set(&m.score, u64::from(st.score.get()));
        m.online.set(i64::from(st.online));
        let seen = self
            .server_watch
            .server(st.server.as_ref().map(|(d, t)| (d, *t)), now);
        m.seen(seen);
    }

    async fn act(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Claim { op, expect, record } => {
                    self.election_span("claim").in_scope(|| {
                        info!(?expect, view = %self.machine.describe_view(), "claiming the lease");
                    });
                    self.call(op, expect, record)
                }
                Action::Renew {
                    op,
                    revision,
                    record,
                }
                | Action::Release {
                    op,
                    revision,
                    record,
                } => self.call(op, Expect::Revision(revision), record),
                Action::BecomeServer { term } => {
                    self.election_span("claim")
                        .in_scope(|| info!(%term, "serving the project group"));
                    self.end_election("elected");
                    self.metrics.became_server.inc();
                }
                Action::StepDown { term, reason } => {
                    info!(%term, ?reason, "stepped down");
                    self.metrics.stepped_down(reason.as_str());
                }
                Action::Ledger(mut entry) => {
                    entry.at_ms = unix_ms(SystemTime::now());
                    self.ledger_timings(&mut entry);
                    info!(
                        term = %entry.term,
                        cause = ?entry.cause,
                        rule = entry.rule.as_str(),
                        "ledger entry"
                    );
                    let out = Outgoing {
                        id: Some(entry.msg_id()),
                        payload: messages::encode(&entry),
                        ledger: true,
                    };
                    if let Some(events) = &self.events
                        && events.try_send(out).is_err()
                    {
                        warn!(
                            "ledger entry dropped: {EVENTS_QUEUE} messages are waiting for the bus"
                        );
                    }
                }
                Action::Publish(mut kind) => {
                    if let ElectionEventKind::ServerLost {
                        device,
                        silent_ms,
                        term,
                    } = &mut kind
                    {
                        let now = self.now();
                        *silent_ms = self.server_watch.last_heard(device).map(|t| {
                            u64::try_from(now.saturating_sub(t).as_millis()).unwrap_or(u64::MAX)
                        });
                        if let Some(silent) = *silent_ms {
                            self.detections.retain(|(d, _, _)| d != device);
                            self.detections.push((device.clone(), *term, silent));
                            if self.detections.len() > 16 {
                                self.detections.remove(0);
                            }
                        }
                    }
                    let event = ElectionEvent {
                        schema: SCHEMA_VERSION,
                        group: self.cfg.group.clone(),
                        reporter: self.cfg.device.clone(),
                        at_ms: unix_ms(SystemTime::now()),
                        kind,
                    };
                    info!(event = ?event.kind, "election event");
                    if let ElectionEventKind::ElectionStarted { .. } = &event.kind {
                        self.metrics.elections_started.inc();
                    }
                    let out = Outgoing {
                        id: None,
                        payload: messages::encode(&event),
                        ledger: false,
                    };
                    if let Some(events) = &self.events
                        && events.try_send(out).is_err()
                    {
                        warn!("election event dropped: {EVENTS_QUEUE} are waiting for the bus");
                    }
                }
            }
        }
    }

    /// Adds to a ledger entry what only the driver knows: for a lost
    /// server, how long it had been silent when this device gave it up
    /// (from the `server_lost` report, else its last beat less the
    /// vacancy), and how long the group was without a server (since the
    /// lost server's last beat).
    fn ledger_timings(&self, entry: &mut LedgerEntry) {
        if entry.cause != ElectionReason::ServerLost {
            return;
        }
        let Some(prev) = &entry.previous else { return };
        let Some(device) = &prev.device else { return };
        let reported = self
            .detections
            .iter()
            .find(|(d, t, _)| d == device && *t == prev.term)
            .map(|(_, _, silent)| *silent);
        let now = self.now();
        let since_last_beat = self
            .server_watch
            .last_heard(device)
            .map(|t| u64::try_from(now.saturating_sub(t).as_millis()).unwrap_or(u64::MAX));
        let t = &mut entry.timings;
        let vacant = t.vacant_ms.unwrap_or(0);
        t.detection_ms = reported.or(since_last_beat.map(|s| s.saturating_sub(vacant)));
        t.without_server_ms = since_last_beat
            .or(reported.map(|d| d.saturating_add(vacant)))
            .or(t.vacant_ms);
    }

    /// Runs one store call in the background; its reply comes back as an event.
    fn call(&self, op: OpId, expect: Expect, record: LeaseRecord) {
        let Some(store) = self.store.clone() else {
            // No store yet: the machine times the call out and retries.
            return;
        };
        let tx = self.replies.clone();
        let timeout = self.store_timeout;
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(timeout, store_call(store, expect, record))
                .await
                .unwrap_or(StoreOutcome::Failed);
            let _ = tx.send((op, outcome)).await;
        });
    }

    async fn on_heartbeat(&mut self, hb: &Heartbeat) {
        let now = self.now();
        self.server_watch.beat(&hb.device, now);
        if let Input::Feed(event) = self.input.heartbeat(hb, unix_ms(SystemTime::now())) {
            self.feed(event).await;
        }
    }

    async fn on_notice(&mut self, notice: &PeerNotice) {
        match self.input.notice(notice, unix_ms(SystemTime::now())) {
            Input::Feed(event) => {
                if let Event::PeerLost {
                    device: peer,
                    instance,
                } = &event
                {
                    info!(%peer, %instance, change = ?notice.change, "peer gone");
                    let now = self.now();
                    let serving = self.machine.status(now).server;
                    if serving.is_some_and(|(d, _)| d == *peer) {
                        self.election_span("server_lost")
                            .in_scope(|| info!(%peer, "the server is gone"));
                    }
                    if notice.change == PeerChangeKind::Left {
                        self.server_watch.left(peer);
                    } else {
                        let now = self.now();
                        self.metrics.seen(self.server_watch.lost(peer, now));
                    }
                }
                self.feed(event).await;
            }
            Input::Ignored(Ignored::Stale { age }) => {
                info!(peer = %notice.device, ?age, "stale peer-lost notice ignored (it waited for the bus)");
            }
            Input::Ignored(why) => debug!(peer = %notice.device, ?why, "peer notice ignored"),
        }
    }

    /// An operator's trigger: the machine decides (a trigger without
    /// `force` is ignored while the group is held); a trigger asked as a
    /// request is answered with what this device did.
    async fn on_trigger(&mut self, req: Request<Trigger>) {
        let Trigger { force, by, .. } = req.message;
        let held = self.machine.held();
        let acted = !held || force;
        if acted {
            info!(force, by = ?by, "operator triggered an election");
        } else {
            info!(by = ?by, "election trigger ignored: the group is held (use force)");
        }
        self.feed(Event::TriggerElection { force }).await;
        if let Some(to) = req.reply {
            let reply = TriggerReply {
                schema: SCHEMA_VERSION,
                device: self.cfg.device.clone(),
                acted,
                held,
            };
            publish(&self.client, to.to_string(), &reply).await;
        }
    }

    /// An operator's settings request (this device answers it for the
    /// group): validated, stored, evented, answered.
    async fn on_settings(&mut self, msg: async_nats::Message, js: &jetstream::Context) {
        let reply = match messages::decode::<SettingsRequest>(&msg.payload) {
            Err(e) => {
                info!("unreadable settings request refused: {e}");
                SettingsReply::unreadable(&e)
            }
            Ok(req) => match req.op {
                SettingsOp::SetHold(change) => self.set_hold(&change, js).await,
            },
        };
        if let Some(to) = msg.reply {
            publish(&self.client, to.to_string(), &reply).await;
        }
    }

    async fn set_hold(&mut self, change: &HoldChange, js: &jetstream::Context) -> SettingsReply {
        let record = match change.validate(&self.cfg.group, unix_ms(SystemTime::now())) {
            Ok(r) => r,
            Err(e) => {
                info!("show hold change refused: {e}");
                return SettingsReply::refused(e.code(), e.to_string());
            }
        };
        if self.settings.is_none() {
            let mut warned = BTreeSet::new();
            self.open_settings(js, &mut warned).await;
        }
        let Some(store) = self.settings.clone() else {
            return SettingsReply::refused(
                SettingsErrorCode::StoreUnavailable,
                format!(
                    "cannot open the settings bucket {} (is JetStream up?)",
                    subjects::settings_bucket(&self.cfg.group)
                ),
            );
        };
        let written = tokio::time::timeout(self.store_timeout * 2, write_hold(&store, &record))
            .await
            .unwrap_or_else(|_| Err("JetStream did not answer in time".to_string()));
        let revision = match written {
            Ok(r) => r,
            Err(e) => {
                warn!("{e}");
                return SettingsReply::refused(SettingsErrorCode::StoreUnavailable, e);
            }
        };
        info!(held = record.held, until_ms = ?record.until_ms, reason = ?record.reason,
            set_by = ?record.set_by, "show hold stored");
        self.act(vec![Action::Publish(ElectionEventKind::HoldChanged {
            held: record.held,
            until_ms: record.until_ms,
            reason: record.reason.clone(),
            set_by: record.set_by.clone(),
        })])
        .await;
        self.observe_hold((revision, Some(record.clone()))).await;
        SettingsReply::ok(record)
    }

    async fn on_control(&mut self, msg: async_nats::Message, js: &jetstream::Context) {
        // A gateway call's trace goes on here (its context in the headers).
        let span =
            tracing::info_span!("control", group = %self.cfg.group, device = %self.cfg.device);
        understudy_telemetry::trace::follow_nats(&span, msg.headers.as_ref());
        tracing::Instrument::instrument(self.answer_control(msg, js), span).await;
    }

    /// Carries out an operator's control request: a change of score or
    /// online is stored first ([`Self::store_control`]) and applied from
    /// what was stored.
    async fn answer_control(&mut self, msg: async_nats::Message, js: &jetstream::Context) {
        let reply = match messages::decode::<ControlRequest>(&msg.payload) {
            Err(e) => ControlReply::unreadable(&e, Some(self.state())),
            Ok(req) => {
                match &req.op {
                    ControlOp::SetScore { score } => info!(%score, "score set by an operator"),
                    ControlOp::ResetScore => info!(
                        configured = %self.cfg.score,
                        "score reset to the configured one by an operator"
                    ),
                    ControlOp::SetOnline { online } => info!(
                        online,
                        "taken {} by an operator",
                        if *online { "online" } else { "offline" }
                    ),
                    ControlOp::Get => {}
                }
                match self.store_control(&req.op, req.set_by, js).await {
                    Ok(()) => ControlReply::ok(self.state()),
                    Err(e) => {
                        warn!("operator change refused: {e}");
                        ControlReply::refused(
                            ControlErrorCode::StoreUnavailable,
                            e,
                            Some(self.state()),
                        )
                    }
                }
            }
        };
        if let Some(to) = msg.reply {
            publish(&self.client, to.to_string(), &reply).await;
        }
    }

    fn state(&self) -> ElectionState {
        let st = self.machine.status(self.now());
        ElectionState {
            schema: SCHEMA_VERSION,
            group: self.cfg.group.clone(),
            device: self.cfg.device.clone(),
            instance: self.cfg.instance,
            mac: self.cfg.mac,
            score: st.score,
            online: st.online,
            role: st.role,
            term: st.term,
            in_grace: st.in_grace,
            server: st.server.map(|(d, _)| d),
        }
    }

    /// Tells the device's other services what the election decided: at once
    /// on a change, and every second regardless.
    async fn publish_state(&mut self, always: bool) {
        let state = self.state();
        if !always && self.last_state.as_ref() == Some(&state) {
            return;
        }
        let subject = subjects::local_election(&self.cfg.group, &self.cfg.device);
        publish(&self.client, subject, &state).await;
        self.last_state = Some(state);
    }

    /// SIGTERM: hand over at once and wait (bounded) for the release to land.
    async fn shut_down(&mut self) {
        let now = self.now();
        let actions = self.machine.handle(Event::Shutdown, now);
        let mut releases = Vec::new();
        let mut rest = Vec::new();
        for a in actions {
            match a {
                Action::Release {
                    revision, record, ..
                } => releases.push((revision, record)),
                other => rest.push(other),
            }
        }
        self.act(rest).await;
        if let Some(store) = self.store.clone() {
            for (revision, record) in releases {
                let outcome = tokio::time::timeout(
                    self.store_timeout,
                    store_call(store.clone(), Expect::Revision(revision), record),
                )
                .await
                .unwrap_or(StoreOutcome::Failed);
                info!(?outcome, "lease released for hand-over");
            }
        }
        self.publish_state(true).await;
        // Let the last events (the hand-over) reach the stream, briefly.
        // Not when the bus is known to be gone: nothing would get through.
        self.events = None;
        if let Some(task) = self.events_task.take()
            && connected(&self.client)
            && tokio::time::timeout(EVENTS_DRAIN, task).await.is_err()
        {
            debug!("stopping with election events not yet stored");
        }
        flush(&self.client).await;
    }
}
