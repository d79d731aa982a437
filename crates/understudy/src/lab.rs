//! `understudy lab`: a local project group on this machine — a nats-server
//! with JetStream, N devices with distinct scores and MACs, the gateway and
//! a Prometheus scraping them all — with the election events shown live. `--kill-every` kills the server device with
//! SIGKILL at that pace and restarts it, to show failovers without a hand.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use futures::StreamExt;
use futures::future::join_all;
use understudy_bus::accounts::Role as AccountRole;
use understudy_protocol::messages::{self, ElectionEvent, ElectionEventKind, Heartbeat};
use understudy_protocol::{GroupName, Role, subjects};
use understudy_testkit::{
    Device, DeviceOpts, Gateway, GatewayOpts, NatsServer, SecureBus, find_nats_server, port_or_free,
};

use crate::ctl::describe;
use crate::lab_prometheus::{self, LabPrometheus};
use crate::settings::{connect, parse_duration};

/// `understudy lab` settings.
#[derive(Debug, Args)]
pub struct LabArgs {
    /// How many devices.
    #[arg(long, default_value_t = 5)]
    devices: usize,
    /// The group's name.
    #[arg(long, default_value = "lab")]
    group: String,
    /// Use this NATS instead of starting a nats-server (with the
    /// credentials and TLS settings of the `--nats-*` options or
    /// `UNDERSTUDY_NATS_*` variables, handed to every process of the lab).
    #[arg(long)]
    nats: Option<String>,
    #[command(flatten)]
    auth: understudy_bus::NatsAuthArgs,
    /// The nats-server binary [default: $UNDERSTUDY_NATS_SERVER, .tools/bin/nats-server, PATH].
    #[arg(long, env = "UNDERSTUDY_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    /// Folder for logs and the NATS store.
    #[arg(long, default_value = ".lab")]
    dir: PathBuf,
    /// Kill -9 the server device this often, and restart it 3 s later (e.g. 10s).
    #[arg(long)]
    kill_every: Option<String>,
    /// Stop by itself after this long (e.g. 60s) [default: run until Ctrl-C].
    #[arg(long)]
    duration: Option<String>,
    /// Do not start the control gateway (HTTP API and dashboard).
    #[arg(long)]
    no_gateway: bool,
    /// The admin API token of the lab's gateway, a file holding it [default:
    /// a random one, written to `<dir>/api-token`; a read-only one to
    /// `<dir>/read-token`].
    #[arg(long)]
    api_token_file: Option<PathBuf>,
    /// The Prometheus binary [default: prometheus on PATH, /usr/bin/prometheus].
    #[arg(long, env = "UNDERSTUDY_PROMETHEUS")]
    prometheus: Option<PathBuf>,
    /// Do not start Prometheus.
    #[arg(long)]
    no_prometheus: bool,
    /// Run the lab's nats-server without TLS and accounts (by default it
    /// makes a local CA and a user per role in `<dir>/secure`).
    #[arg(long)]
    insecure: bool,
}

/// The nats-server binary: `--nats-server` (or `UNDERSTUDY_NATS_SERVER`),
/// else `.tools/bin/nats-server` (where `scripts/ensure-nats.sh` puts it),
/// else `nats-server` on `PATH`; 2.11 or newer.
pub(crate) fn nats_binary(given: Option<&Path>) -> Result<PathBuf> {
    let tools = [PathBuf::from(".tools/bin/nats-server")];
    Ok(find_nats_server(given, &tools)?)
}

/// Starts device `dev-<i+1>` of the lab (MAC `02:00:00:00:00:<i+1>`) with
/// its log and data in `dir`, plus `extra` `understudy node` arguments.
pub(crate) fn spawn_device(
    exe: &Path,
    dir: &Path,
    bus: &LabBus,
    group: &str,
    i: usize,
    score: u8,
    extra: &[&str],
) -> Result<Device> {
    let n = u8::try_from(i + 1).context("at most 255 devices")?;
    let mut opts = DeviceOpts::numbered(group, n, score).with_args(extra);
    let role = AccountRole::Device(group.parse()?);
    for (k, v) in bus.env(&role) {
        opts = opts.with_env(&k, &v);
    }
    if let Some(secure) = &bus.secure {
        for (k, v) in secure.project_device_env()? {
            opts = opts.with_env(&k, &v);
        }
    }
    Ok(Device::start(exe, Some(dir), &[bus.url.as_str()], opts)?)
}

/// Starts the control gateway on 127.0.0.1:8080 and :8081 (other free ports
/// if those are taken), its log in `dir`.
fn spawn_gateway(exe: &Path, dir: &Path, bus: &LabBus, tokens: &LabTokens) -> Result<Gateway> {
    // The gateway reads (and checks) both token files itself.
    let mut env = bus.env(&AccountRole::Gateway);
    env.push((
        "UNDERSTUDY_API_TOKEN_FILE".to_string(),
        tokens.admin.display().to_string(),
    ));
    env.push((
        "UNDERSTUDY_READ_TOKENS_FILE".to_string(),
        tokens.read.display().to_string(),
    ));
    let opts = GatewayOpts {
        http: SocketAddr::from(([127, 0, 0, 1], port_or_free(8080)?)),
        tcp: SocketAddr::from(([127, 0, 0, 1], port_or_free(8081)?)),
        api_token: None,
        metrics: Some(loopback(9460)?),
        env,
    };
    Ok(Gateway::start(exe, Some(dir), &bus.url, opts)?)
}

/// The lab gateway's tokens: files holding them (owner-only).
struct LabTokens {
    /// The admin token's file.
    admin: PathBuf,
    /// The read-only token's file.
    read: PathBuf,
}

impl LabTokens {
    /// `given` as the admin token's file, or a random token written to
    /// `<dir>/api-token`; a random read-only token in `<dir>/read-token`.
    fn make(dir: &Path, given: Option<&Path>) -> Result<LabTokens> {
        let random = || format!("{:032x}", rand::random::<u128>());
        let admin = match given {
            Some(file) => std::path::absolute(file)?,
            None => {
                let file = std::path::absolute(dir.join("api-token"))?;
                understudy_testkit::secure::write_private(&file, &format!("{}\n", random()))?;
                file
            }
        };
        let read = std::path::absolute(dir.join("read-token"))?;
        understudy_testkit::secure::write_private(&read, &format!("{}\n", random()))?;
        Ok(LabTokens { admin, read })
    }
}

/// The NATS a lab or benchmark runs on: its address and, when secured,
/// its CA and users (`understudy_testkit::SecureBus`).
pub(crate) struct LabBus {
    /// Where it is.
    pub url: String,
    /// The CA and users of a secured bus; `None`: plain, or the user's own
    /// NATS with `given` credentials.
    pub secure: Option<SecureBus>,
    /// The credentials given for a NATS of the user's, the same for every
    /// process.
    pub given: Option<understudy_bus::NatsAuthArgs>,
}

impl LabBus {
    /// A plain bus at `url`.
    pub fn plain(url: &str) -> LabBus {
        LabBus {
            url: url.to_string(),
            secure: None,
            given: None,
        }
    }

    /// The `UNDERSTUDY_NATS_*` variables of a process of `role`.
    pub fn env(&self, role: &AccountRole) -> Vec<(String, String)> {
        match (&self.secure, &self.given) {
            (Some(b), _) => b.env(role),
            (None, Some(given)) => given.to_env(),
            (None, None) => Vec::new(),
        }
    }

    /// Connection settings for a process of `role`.
    pub fn settings(&self, role: &AccountRole) -> understudy_bus::NatsSettings {
        match (&self.secure, &self.given) {
            (Some(b), _) => b.settings(role, &self.url),
            (None, Some(given)) => given.clone().with_servers(self.url.as_str()),
            (None, None) => understudy_bus::NatsSettings::plain(self.url.as_str()),
        }
    }
}

/// Starts a nats-server with JetStream in `dir` (on `preferred` if it is
/// free): with TLS and least-privilege users for `groups` (their CA and
/// passwords made in `<dir>/secure`) when `secured`, else plain; with its
/// monitoring endpoints (`/varz`…) on `127.0.0.1:<monitor>` when given.
pub(crate) async fn start_bus(
    bin: &Path,
    dir: &Path,
    preferred: Option<u16>,
    groups: &[&str],
    secured: bool,
    monitor: Option<u16>,
) -> Result<(NatsServer, LabBus)> {
    let monitoring = monitor
        .map(|p| format!("http: \"127.0.0.1:{p}\"\n"))
        .unwrap_or_default();
    if !secured {
        let nats = if monitoring.is_empty() {
            NatsServer::start_in(bin, dir, preferred).await?
        } else {
            NatsServer::start_in_configured(bin, dir, preferred, &monitoring).await?
        };
        let url = nats.url();
        return Ok((nats, LabBus::plain(&url)));
    }
    let secure = SecureBus::create(&dir.join("secure"), groups, false)?;
    let config = secure.server_config() + &monitoring;
    let nats = NatsServer::start_in_configured(bin, dir, preferred, &config).await?;
    let url = nats.url();
    Ok((
        nats,
        LabBus {
            url,
            secure: Some(secure),
            given: None,
        },
    ))
}

/// 127.0.0.1 on `preferred`, or on a free port if that one is taken.
fn loopback(preferred: u16) -> Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], port_or_free(preferred)?)))
}

pub(crate) fn scores(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| 200u8.saturating_sub((i * 200 / n.max(1)) as u8).max(1))
        .collect()
}

/// Runs the lab until Ctrl-C or SIGTERM (or `--duration`), then stops
/// everything it started.
pub async fn run(a: LabArgs) -> Result<()> {
    if a.devices == 0 || a.devices > 50 {
        bail!("--devices must be 1–50");
    }
    let group: GroupName = a.group.parse()?;
    std::fs::create_dir_all(&a.dir)?;
    let exe = std::env::current_exe().context("cannot find my own binary")?;
    let (_nats, bus) = match a.nats.clone() {
        Some(url) => (
            None,
            LabBus {
                url,
                secure: None,
                given: Some(a.auth.clone()),
            },
        ),
        None => {
            let bin = nats_binary(a.nats_server.as_deref())?;
            let (nats, bus) = start_bus(
                &bin,
                &a.dir,
                Some(4222),
                &[group.as_str()],
                !a.insecure,
                None,
            )
            .await?;
            println!(
                "nats-server with JetStream at {} ({}; log {})",
                nats.url(),
                if bus.secure.is_some() {
                    "TLS and a user per role"
                } else {
                    "insecure: no TLS, no users"
                },
                nats.log_path().display()
            );
            (Some(nats), bus)
        }
    };
    let url = bus.url.clone();
    let operator = write_operator_env(&a.dir, &bus)?;
    let scores = scores(a.devices);
    let mut devices = Vec::with_capacity(scores.len());
    let mut scraped = Vec::with_capacity(scores.len());
    for (i, s) in scores.iter().enumerate() {
        let metrics = loopback(9464 + u16::try_from(i).unwrap_or(0))?;
        let listen = metrics.to_string();
        devices.push(spawn_device(
            &exe,
            &a.dir,
            &bus,
            group.as_str(),
            i,
            *s,
            &["--metrics-listen", &listen],
        )?);
        scraped.push(metrics);
    }
    println!("{} devices in group {group}:", a.devices);
    for (d, metrics) in devices.iter().zip(&scraped) {
        println!(
            "  {:<6} score {:>3}  mac {}  pid {:<7} metrics http://{}/metrics  log {}",
            d.id(),
            d.opts().score,
            d.opts().mac,
            d.pid(),
            metrics,
            d.log_path().display()
        );
    }
    let gateway = if a.no_gateway {
        None
    } else {
        let tokens = LabTokens::make(&a.dir, a.api_token_file.as_deref())?;
        let gw = spawn_gateway(&exe, &a.dir, &bus, &tokens)?;
        let http = gw.http();
        println!(
            "gateway:      dashboard http://{http}/?group={group}  API http://{http}/api/v1  TCP {}  (log {})",
            gw.tcp(),
            gw.log_path().display()
        );
        println!(
            "              admin token in {}, read-only token in {} (the dashboard asks for one)",
            tokens.admin.display(),
            tokens.read.display()
        );
        Some(gw)
    };
    let _prometheus = start_prometheus(&a, &group, &scraped, gateway.as_ref())?;
    if let Some(env) = &operator {
        println!(
            "credentials:  source {}   (the operator's NATS user, password and CA, for the commands below)",
            env.display()
        );
    }
    println!("look at it:   understudy status --group {group} --nats {url}");
    println!("events:       understudy events --group {group} --nats {url}");
    println!("fail over:    kill -9 <pid of the server>   (the best remaining device takes over)");
    println!("rig it:       understudy score set --group {group} --device dev-5 255 --nats {url}");
    println!("Ctrl-C stops the lab. Live election events:");
    let result = watch(&a, &group, &bus, &mut devices).await;
    println!("stopping the lab");
    join_all(devices.iter_mut().map(|d| d.stop(Duration::from_secs(3)))).await;
    result
}

/// On a secured bus, writes `<dir>/operator.env`: the variables that give
/// the CLI the gateway's NATS user (operators' rights), its password and
/// the CA, and the project service's CA and group token file, for
/// `source`; readable by its owner only. Returns its path.
fn write_operator_env(dir: &Path, bus: &LabBus) -> Result<Option<PathBuf>> {
    let mut text = String::from(
        "# The lab's operator credentials (NATS user `gateway`): source this file,\n\
         # then run understudy's CLI commands against the lab.\n",
    );
    let Some(secure) = &bus.secure else {
        return Ok(None);
    };
    let mut vars = bus.env(&AccountRole::Gateway);
    vars.extend(secure.project_client_env()?);
    for (k, v) in vars {
        text.push_str(&format!("export {k}='{v}'\n"));
    }
    let path = std::path::absolute(dir.join("operator.env"))?;
    understudy_testkit::secure::write_private(&path, &text)?;
    Ok(Some(path))
}

/// Starts the lab's Prometheus unless told not to, or says why there is none.
fn start_prometheus(
    a: &LabArgs,
    group: &GroupName,
    devices: &[SocketAddr],
    gateway: Option<&Gateway>,
) -> Result<Option<LabPrometheus>> {
    if a.no_prometheus {
        return Ok(None);
    }
    let Some(bin) = lab_prometheus::binary(a.prometheus.as_deref()) else {
        println!(
            "prometheus:   not started: no prometheus binary (Debian's prometheus package; scripts/lab.sh installs it)"
        );
        return Ok(None);
    };
    let gw_metrics = gateway.and_then(Gateway::metrics);
    let p = LabPrometheus::start(&bin, &a.dir, devices, gw_metrics)?;
    let addr = p.addr();
    println!(
        "prometheus:   http://{addr}  (alerts http://{addr}/alerts; log {})",
        p.log().display()
    );
    println!(
        "              curl -s 'http://{addr}/api/v1/query?query=understudy_group_has_server{{group=\"{group}\"}}'"
    );
    Ok(Some(p))
}

/// Shows the group's election events until Ctrl-C, SIGTERM or `--duration`, killing
/// and restarting the server device at the `--kill-every` pace.
async fn watch(a: &LabArgs, group: &GroupName, bus: &LabBus, devices: &mut [Device]) -> Result<()> {
    let (client, _) = connect(&bus.settings(&AccountRole::Observer), "understudy-lab").await?;
    let mut events = client.subscribe(subjects::election_events(group)).await?;
    let mut beats = client.subscribe(subjects::heartbeats(group)).await?;
    let duration = |flag: &Option<String>| {
        flag.as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| anyhow!(e))
    };
    let kill_every = duration(&a.kill_every)?;
    let stop_after = duration(&a.duration)?;
    let started = tokio::time::Instant::now();
    let elapsed = || started.elapsed().as_secs_f64();
    let mut next_kill = kill_every.map(|d| started + d.max(Duration::from_secs(3)));
    let mut restart: Option<(tokio::time::Instant, usize)> = None;
    let mut server: Option<String> = None;
    let mut stop = Box::pin(understudy_bus::terminate_or_interrupt());
    loop {
        let wake = [
            next_kill,
            restart.map(|r| r.0),
            stop_after.map(|d| started + d),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(started + Duration::from_secs(365 * 24 * 3600));
        tokio::select! {
            _ = &mut stop => return Ok(()),
            Some(msg) = events.next() => {
                if let Ok(e) = messages::decode::<ElectionEvent>(&msg.payload) {
                    println!("{:8.3}s  {}", elapsed(), describe(&e));
                    if let ElectionEventKind::ServerElected { device, .. } = &e.kind {
                        server = Some(device.to_string());
                    }
                }
            }
            Some(msg) = beats.next() => {
                if let Ok(hb) = messages::decode::<Heartbeat>(&msg.payload)
                    && hb.role == Role::Server
                {
                    server = Some(hb.device.to_string());
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = tokio::time::Instant::now();
                if stop_after.is_some_and(|d| now >= started + d) {
                    return Ok(());
                }
                if let Some((at, i)) = restart && now >= at {
                    devices[i].restart()?;
                    println!("{:8.3}s  lab restarts {}", elapsed(), devices[i].id());
                    restart = None;
                }
                if let (Some(at), Some(every)) = (next_kill, kill_every) && now >= at {
                    next_kill = Some(now + every);
                    let victim = server.as_deref().and_then(|s| devices.iter().position(|d| d.id() == s));
                    if let (Some(i), None) = (victim, restart) {
                        println!("{:8.3}s  lab kills the server {} with SIGKILL", elapsed(), devices[i].id());
                        devices[i].kill9();
                        server = None;
                        restart = Some((now + Duration::from_secs(3), i));
                    }
                }
            }
        }
    }
}
