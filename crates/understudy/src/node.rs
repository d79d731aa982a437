//! `understudy node`: one device — discovery, heartbeat, election and
//! project-sync — in one process, each service still talking only through
//! the bus (and gRPC for the project file).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use tokio::sync::watch;
use tracing::{info, warn};
use understudy_discovery::service::DiscoveryConfig;
use understudy_election::ElectionConfig;
use understudy_election::service::ElectionServiceConfig;
use understudy_heartbeat::service::HeartbeatConfig;
use understudy_project_sync::security::{DeviceSecurity, ProjectSecurity};
use understudy_project_sync::service::ProjectSyncConfig;
use understudy_protocol::{DeviceId, GroupName, InstanceId, Mac, Score};

use crate::nic;
use crate::settings::{self, parse_duration};

/// `understudy node` settings. Flags win over environment variables, which
/// win over the TOML file (`--config`), which wins over the defaults shown.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// TOML settings file with a `[node]` table (keys as the flags, with `_`).
    #[arg(long, env = "UNDERSTUDY_CONFIG")]
    config: Option<PathBuf>,
    /// The project group (1–64 of A–Z a–z 0–9 _ -).
    #[arg(long, env = "UNDERSTUDY_GROUP")]
    group: Option<String>,
    /// This device's id, unique in the network (1–64 of A–Z a–z 0–9 _ -).
    #[arg(long, env = "UNDERSTUDY_DEVICE_ID")]
    device_id: Option<String>,
    /// MAC address, the election tie-breaker [default: the first real NIC's].
    #[arg(long, env = "UNDERSTUDY_MAC")]
    mac: Option<String>,
    /// Election score 0–255; 0 = client only [default: 0]. Applies only
    /// while no operator setting is stored for this device: a score set at
    /// run time (`understudy score set`, the gateway) survives a restart
    /// until `understudy score reset`.
    #[arg(long, env = "UNDERSTUDY_SCORE", allow_negative_numbers = true)]
    score: Option<String>,
    /// NATS server(s), comma-separated [default: nats://127.0.0.1:4222].
    #[arg(long, env = "UNDERSTUDY_NATS")]
    nats: Option<String>,
    /// NATS credentials and TLS (settings file keys: nats_token, nats_user,
    /// nats_password, nats_password_file, nats_nkey_file, nats_creds_file, nats_tls_ca,
    /// nats_tls_cert, nats_tls_key, nats_tls_required).
    #[command(flatten)]
    nats_auth: understudy_bus::NatsAuthArgs,
    /// How often the server publishes a heartbeat: every device detects its
    /// loss after three missed [default: 100ms].
    #[arg(long, env = "UNDERSTUDY_HEARTBEAT_INTERVAL")]
    heartbeat_interval: Option<String>,
    /// How often a device that is not the server publishes a heartbeat (a
    /// lost client is noticed after three missed; changes of role, term,
    /// score, online or grace go out at once); never faster than
    /// --heartbeat-interval. Every beat reaches every device of the group, so
    /// this sets a large group's load (docs/BENCHMARKS.md, "Scale")
    /// [default: 1s].
    #[arg(long, env = "UNDERSTUDY_CLIENT_HEARTBEAT_INTERVAL")]
    client_heartbeat_interval: Option<String>,
    /// Start-up grace before claiming the server [default: 2s].
    #[arg(long, env = "UNDERSTUDY_GRACE_PERIOD")]
    grace_period: Option<String>,
    /// How long a better candidate waits before it preempts [default: 0].
    #[arg(long, env = "UNDERSTUDY_PREEMPT_DELAY")]
    preempt_delay: Option<String>,
    /// Server lease duration [default: 1500ms].
    #[arg(long, env = "UNDERSTUDY_LEASE")]
    lease: Option<String>,
    /// Folder for this device's files (project copy, outbox, conflicts)
    /// [default: $XDG_STATE_HOME/understudy/<group>/<device>, else
    /// ~/.local/state/understudy/<group>/<device>].
    #[arg(long, env = "UNDERSTUDY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Start offline (out of the group until taken online). An operator's
    /// stored online/offline (`understudy online|offline`, the gateway)
    /// overrides it.
    #[arg(long, env = "UNDERSTUDY_OFFLINE")]
    offline: bool,
    /// Which of this device's services to run in this process, comma-separated
    /// (election, heartbeat, discovery, project), so each can run in its own
    /// process or container [default: all four].
    #[arg(long, env = "UNDERSTUDY_SERVICES")]
    services: Option<String>,
    /// JetStream replicas (1–5) for the lease bucket, the events stream and
    /// the project store, when this device creates them (3 on a 3-node
    /// cluster) [default: 1].
    #[arg(long, env = "UNDERSTUDY_REPLICAS")]
    replicas: Option<usize>,
    /// How many days the group's election ledger keeps its entries (1–3650;
    /// give every device of a group the same) [default: 30].
    #[arg(long, env = "UNDERSTUDY_LEDGER_RETENTION_DAYS")]
    ledger_retention_days: Option<u64>,
    /// Where the project-sync gRPC service listens [default: 127.0.0.1:0, a
    /// free port].
    #[arg(long, env = "UNDERSTUDY_PROJECT_LISTEN")]
    project_listen: Option<String>,
    /// The project-sync address other devices dial, written into the lease
    /// [default: the address it listens on].
    #[arg(long, env = "UNDERSTUDY_PROJECT_ADVERTISE")]
    project_advertise: Option<String>,
    /// The project service's TLS and group check (settings file keys:
    /// project_tls_cert, project_tls_key, project_tls_ca,
    /// project_tls_server_name, project_token, project_token_file). A device
    /// gives its certificate, key and CA together, or none.
    #[command(flatten)]
    project_auth: crate::settings::ProjectAuthArgs,
    /// The largest project file accepted, in bytes [default: 268435456 = 256 MiB].
    #[arg(long, env = "UNDERSTUDY_MAX_PROJECT_SIZE")]
    max_project_size: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9464
    /// (docs/telemetry.md) [default: off].
    #[arg(long, env = "UNDERSTUDY_METRICS_LISTEN")]
    metrics_listen: Option<String>,
}

impl NodeArgs {
    /// The one service this process runs, if `--services` names exactly one.
    pub(crate) fn services_alone(&self) -> Option<&str> {
        let list = self.services.as_deref()?;
        let mut names = list.split(',').map(str::trim).filter(|n| !n.is_empty());
        let one = names.next()?;
        names.next().is_none().then_some(one)
    }
}

/// Resolved settings of a node.
#[derive(Debug)]
struct Node {
    group: GroupName,
    device: DeviceId,
    mac: Mac,
    score: Score,
    nats: understudy_bus::NatsSettings,
    heartbeat: Duration,
    client_heartbeat: Duration,
    grace: Duration,
    preempt: Duration,
    lease: Duration,
    offline: bool,
    replicas: usize,
    ledger_retention: Duration,
    data_dir: PathBuf,
    services: Services,
    project_listen: String,
    project_advertise: Option<String>,
    project_security: ProjectSecurity,
    max_project_size: u64,
    metrics_listen: Option<String>,
}

/// Which services a node process runs.
#[derive(Debug, Clone, Copy)]
struct Services {
    election: bool,
    heartbeat: bool,
    discovery: bool,
    project: bool,
}

fn parse_services(list: Option<String>) -> Result<Services> {
    let Some(list) = list else {
        return Ok(Services {
            election: true,
            heartbeat: true,
            discovery: true,
            project: true,
        });
    };
    let mut s = Services {
        election: false,
        heartbeat: false,
        discovery: false,
        project: false,
    };
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "election" => s.election = true,
            "heartbeat" => s.heartbeat = true,
            "discovery" => s.discovery = true,
            "project" => s.project = true,
            other => {
                return Err(anyhow!(
                    "--services: unknown service {other:?} (election, heartbeat, discovery, project)"
                ));
            }
        }
    }
    if !(s.election || s.heartbeat || s.discovery || s.project) {
        return Err(anyhow!("--services names no service"));
    }
    Ok(s)
}

fn resolve(a: NodeArgs) -> Result<Node> {
    let file = match &a.config {
        Some(p) => settings::read_file(p)?,
        None => settings::File::default(),
    };
    let f = file.node;
    let file_nats_auth = f.nats_auth();
    let file_project_auth = f.project_auth();
    let group = a.group.or(f.group).ok_or_else(|| {
        anyhow!("--group is required (or UNDERSTUDY_GROUP, or group in the settings file)")
    })?;
    let group: GroupName = group.parse()?;
    let device = a.device_id.or(f.device_id).ok_or_else(|| {
        anyhow!(
            "--device-id is required (or UNDERSTUDY_DEVICE_ID, or device_id in the settings file)"
        )
    })?;
    let device: DeviceId = device.parse()?;
    let mac = match a.mac.or(f.mac) {
        Some(m) => m.parse()?,
        None => nic::host_mac()
            .ok_or_else(|| anyhow!("no --mac given and no network interface with a MAC found"))?,
    };
    let score: Score = match (a.score, f.score) {
        (Some(s), _) => s.parse()?,
        (None, Some(n)) => Score::try_from(n)?,
        (None, None) => Score::CLIENT_ONLY,
    };
    let dur = |flag: Option<String>, file: Option<String>, default: Duration, name: &str| match flag
        .or(file)
    {
        Some(s) => parse_duration(&s).map_err(|e| anyhow!("--{name}: {e}")),
        None => Ok(default),
    };
    let heartbeat = dur(
        a.heartbeat_interval,
        f.heartbeat_interval,
        Duration::from_millis(100),
        "heartbeat-interval",
    )?;
    if heartbeat < Duration::from_millis(10) || heartbeat > Duration::from_secs(60) {
        return Err(anyhow!("--heartbeat-interval must be between 10ms and 60s"));
    }
    let client_heartbeat = dur(
        a.client_heartbeat_interval,
        f.client_heartbeat_interval,
        understudy_heartbeat::service::DEFAULT_CLIENT_INTERVAL,
        "client-heartbeat-interval",
    )?;
    if client_heartbeat < Duration::from_millis(10) || client_heartbeat > Duration::from_secs(60) {
        return Err(anyhow!(
            "--client-heartbeat-interval must be between 10ms and 60s"
        ));
    }
    let lease = dur(a.lease, f.lease, Duration::from_millis(1500), "lease")?;
    if lease < heartbeat * 5 {
        return Err(anyhow!("--lease must be at least five heartbeat intervals"));
    }
    let data_dir = match a.data_dir.or(f.data_dir) {
        Some(d) => d,
        None => default_data_dir(&group, &device),
    };
    Ok(Node {
        group,
        device,
        mac,
        score,
        nats: a.nats_auth.or(file_nats_auth).with_servers(
            a.nats
                .or(f.nats)
                .unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
        ),
        heartbeat,
        client_heartbeat,
        grace: dur(
            a.grace_period,
            f.grace_period,
            Duration::from_secs(2),
            "grace-period",
        )?,
        preempt: dur(
            a.preempt_delay,
            f.preempt_delay,
            Duration::ZERO,
            "preempt-delay",
        )?,
        lease,
        offline: a.offline || f.offline.unwrap_or(false),
        replicas: match a.replicas.or(f.replicas).unwrap_or(1) {
            r @ 1..=5 => r,
            r => return Err(anyhow!("--replicas must be 1 to 5, not {r}")),
        },
        ledger_retention: match a
            .ledger_retention_days
            .or(f.ledger_retention_days)
            .unwrap_or(understudy_protocol::ledger::DEFAULT_RETENTION_SECS / 86_400)
        {
            d @ 1..=3650 => Duration::from_secs(d * 86_400),
            d => {
                return Err(anyhow!(
                    "--ledger-retention-days must be 1 to 3650, not {d}"
                ));
            }
        },
        data_dir,
        services: parse_services(a.services.or(f.services))?,
        project_listen: a
            .project_listen
            .or(f.project_listen)
            .unwrap_or_else(|| "127.0.0.1:0".into()),
        project_advertise: a.project_advertise.or(f.project_advertise),
        project_security: a.project_auth.or(file_project_auth).settings(),
        max_project_size: a
            .max_project_size
            .or(f.max_project_size)
            .unwrap_or(understudy_project_sync::core::MAX_PROJECT_SIZE),
        metrics_listen: a.metrics_listen.or(f.metrics_listen),
    })
}

/// `$XDG_STATE_HOME/understudy/<group>/<device>`, else
/// `$HOME/.local/state/understudy/<group>/<device>`, else
/// `./understudy-state/<group>/<device>`.
fn default_data_dir(group: &GroupName, device: &DeviceId) -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        })
        .map(|b| b.join("understudy"))
        .unwrap_or_else(|| PathBuf::from("understudy-state"));
    base.join(group.as_str()).join(device.as_str())
}

/// Runs a device until SIGTERM or Ctrl-C; then hands over and leaves.
pub async fn run(args: NodeArgs) -> Result<()> {
    let n = resolve(args)?;
    std::fs::create_dir_all(&n.data_dir)
        .with_context(|| format!("cannot create data dir {}", n.data_dir.display()))?;
    // The project service's TLS files and token are read now: a bad one is
    // an error at start, not a refused call later.
    let project_security = if n.services.project {
        n.project_security
            .device()
            .context("the project service's TLS or token settings")?
    } else {
        DeviceSecurity::default()
    };
    // Bind the project-sync port first: its address goes into the lease.
    let project_listener = if n.services.project {
        let l = tokio::net::TcpListener::bind(&n.project_listen)
            .await
            .with_context(|| format!("cannot listen on --project-listen {}", n.project_listen))?;
        Some(l)
    } else {
        None
    };
    let project_addr = match (&n.project_advertise, &project_listener) {
        (Some(a), _) => Some(a.clone()),
        (None, Some(l)) => {
            let addr = l
                .local_addr()
                .context("the project-sync listener has no address")?;
            if addr.ip().is_unspecified() {
                return Err(anyhow!(
                    "--project-listen {addr} is a wildcard address: give --project-advertise host:port"
                ));
            }
            Some(addr.to_string())
        }
        (None, None) => None,
    };
    let metrics_listener = match &n.metrics_listen {
        Some(addr) => Some(understudy_telemetry::bind(addr).await?),
        None => None,
    };
    let instance = InstanceId::new(rand::random());
    info!(group = %n.group, device = %n.device, mac = %n.mac, score = %n.score, %instance, nats = %n.nats.servers, "starting");
    let (client, mut refused) =
        settings::connect(&n.nats, &format!("understudy-node-{}", n.device)).await?;
    // One subscription to the group's heartbeats for the three services
    // below (nats-server would otherwise deliver every beat three times to
    // this connection, and the process decode it three times).
    let shared_beats = Some(
        understudy_bus::SharedBeats::subscribe(
            &client,
            understudy_protocol::subjects::heartbeats(&n.group),
        )
        .await
        .context("subscribing to the group's heartbeats")?,
    );

    let election = ElectionConfig {
        grace_period: n.grace,
        preempt_delay: n.preempt,
        lease_duration: n.lease,
        renew_interval: n.lease / 6,
        ..ElectionConfig::default()
    };
    let (stop_election, election_rx) = watch::channel(false);
    let (stop_others, others_rx) = watch::channel(false);

    let svc = n.services;
    // With the election service in this process, the others follow only it
    // (a second process with this device id must not be merged in, B2).
    let election_instance = svc.election.then_some(instance);
    let election_cfg = ElectionServiceConfig {
        group: n.group.clone(),
        device: n.device.clone(),
        instance,
        mac: n.mac,
        score: n.score,
        online: !n.offline,
        election,
        replicas: n.replicas,
        events_max_age: Duration::from_secs(7 * 24 * 3600),
        ledger_max_age: n.ledger_retention,
        project_addr: project_addr.clone(),
        shared_beats: shared_beats.clone(),
    };
    let project_cfg = ProjectSyncConfig {
        group: n.group.clone(),
        device: n.device.clone(),
        data_dir: n.data_dir.join("project"),
        advertise: project_addr.clone().unwrap_or_default(),
        replicas: n.replicas,
        max_size: n.max_project_size,
        store_timeout: Duration::from_secs(2),
        election_instance,
        security: project_security,
    };
    let heartbeat_cfg = HeartbeatConfig {
        group: n.group.clone(),
        device: n.device.clone(),
        instance,
        mac: n.mac,
        interval: n.heartbeat,
        client_interval: n.client_heartbeat,
        misses: 3,
        presence_interval: understudy_heartbeat::service::DEFAULT_PRESENCE_INTERVAL,
        election_instance,
        shared_beats: shared_beats.clone(),
    };
    let discovery_cfg = DiscoveryConfig {
        group: n.group.clone(),
        device: n.device.clone(),
        instance,
        publish_interval: Duration::from_secs(1),
        election_instance,
        shared_beats,
    };
    let (c1, c2, c3) = (client.clone(), client.clone(), client.clone());
    if let Some(listener) = metrics_listener {
        let mut stop = others_rx.clone();
        tokio::spawn(understudy_telemetry::serve(listener, async move {
            understudy_bus::stopped(&mut stop).await;
        }));
    }
    let others_rx2 = others_rx.clone();
    let others_rx3 = others_rx.clone();
    // Project transfers (a server serving fifty fetches, a client receiving
    // and hashing 64 MiB) run on a runtime and a NATS connection of their
    // own: the lease's renewal, the heartbeats and discovery never queue
    // behind them. On one shared runtime a server serving 50 fetches on two
    // loaded cores missed its renewals and lost its lease 2–4 times per run
    // (docs/BENCHMARKS.md, "Project distribution").
    let project_runtime = ProjectRuntime::start()?;
    let project_nats = n.nats.clone();
    let project_name = format!("understudy-node-{}-project", n.device);
    let mut project_task = project_runtime.spawn(async move {
        let Some(listener) = project_listener else {
            return idle(others_rx3).await;
        };
        // The control connection's refusals already stop the process; this
        // one's show in project-sync's errors.
        let own = match settings::connect(&project_nats, &project_name).await {
            Ok((own, _refused)) => own,
            Err(e) => return Err(format!("project-sync's NATS connection: {e:#}")),
        };
        understudy_project_sync::service::run(own, project_cfg, listener, others_rx3)
            .await
            .map_err(|e| e.to_string())
    });
    let mut election_task = tokio::spawn(async move {
        if svc.election {
            understudy_election::service::run(c1, election_cfg, election_rx)
                .await
                .map_err(|e| e.to_string())
        } else {
            idle(election_rx).await
        }
    });
    let mut heartbeat_task = tokio::spawn(async move {
        if svc.heartbeat {
            understudy_heartbeat::service::run(c2, heartbeat_cfg, others_rx)
                .await
                .map_err(|e| e.to_string())
        } else {
            idle(others_rx).await
        }
    });
    let mut discovery_task = tokio::spawn(async move {
        if svc.discovery {
            understudy_discovery::service::run(c3, discovery_cfg, others_rx2)
                .await
                .map_err(|e| e.to_string())
        } else {
            idle(others_rx2).await
        }
    });

    // Run until a signal, or until a service stops on its own (an error that
    // leaves the device half alive must not go unnoticed).
    let failed: Option<String> = tokio::select! {
        _ = understudy_bus::terminate_or_interrupt() => None,
        why = refused.wait() => Some(format!("NATS at {} refused this process: {why}", n.nats.servers)),
        r = &mut election_task => Some(format!("election service stopped: {r:?}")),
        r = &mut heartbeat_task => Some(format!("heartbeat service stopped: {r:?}")),
        r = &mut discovery_task => Some(format!("discovery service stopped: {r:?}")),
        r = &mut project_task => Some(format!("project-sync service stopped: {r:?}")),
    };
    if let Some(why) = failed {
        let _ = stop_election.send(true);
        let _ = stop_others.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
        return Err(anyhow!(why));
    }
    info!("shutting down: handing over first");
    let _ = stop_election.send(true);
    report(
        "election",
        tokio::time::timeout(Duration::from_secs(2), election_task).await,
    );
    let _ = stop_others.send(true);
    let (h, d, p) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(2), heartbeat_task),
        tokio::time::timeout(Duration::from_secs(2), discovery_task),
        tokio::time::timeout(Duration::from_secs(3), project_task)
    );
    report("heartbeat", h);
    report("discovery", d);
    report("project-sync", p);
    let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
    info!("stopped");
    Ok(())
}

type Stopped =
    Result<Result<Result<(), String>, tokio::task::JoinError>, tokio::time::error::Elapsed>;

fn report(name: &str, r: Stopped) {
    match r {
        Ok(Ok(Err(e))) => warn!("{name} service: {e}"),
        Ok(Err(e)) => warn!("{name} service panicked: {e}"),
        Err(_) => warn!("{name} service did not stop in 2 s"),
        Ok(Ok(Ok(()))) => {}
    }
}

/// The runtime project transfers run on (two worker threads named
/// `project-sync`), apart from the control services'; shut down without
/// waiting when the device stops (its tasks were stopped before).
struct ProjectRuntime(Option<tokio::runtime::Runtime>);

impl ProjectRuntime {
    fn start() -> Result<ProjectRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("project-sync")
            .enable_all()
            .build()
            .context("cannot start the project-sync runtime")?;
        Ok(ProjectRuntime(Some(rt)))
    }

    fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.0 {
            Some(rt) => rt.spawn(f),
            None => tokio::spawn(f),
        }
    }
}

impl Drop for ProjectRuntime {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's task would panic.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A service this process does not run: it only waits for the stop.
async fn idle(mut stop: watch::Receiver<bool>) -> Result<(), String> {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            break;
        }
    }
    Ok(())
}
