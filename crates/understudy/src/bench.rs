//! `understudy bench failover`: measures what the performance goals (L1's
//! failover bound) are about, on real processes and a real nats-server on loopback, and
//! prints the figures (docs/BENCHMARKS.md quotes them). Not a test: it
//! asserts nothing.
//!
//! - cold start: N devices started together until every one agrees on the
//!   rightful server (reported with and without the 2 s grace);
//! - failover after SIGKILL of the server, R times, at a random phase of the
//!   heartbeat: detection (kill → the successor's `election_started`),
//!   election (→ its `server_elected`) and total (kill → `server_elected`);
//! - planned hand-over after SIGTERM, R times (SIGTERM → `server_elected`);
//! - optionally an idle period, counting elections that should not happen.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use tokio::time::Instant;
use understudy_protocol::messages::{
    self, ElectionEvent, ElectionEventKind, ElectionReason, Heartbeat,
};
use understudy_protocol::{GroupName, Role, Term, subjects};
use understudy_testkit::{Device, NatsCluster, Signal};

use crate::lab::{LabBus, nats_binary, scores, spawn_device, start_bus};
use crate::settings::{connect, parse_duration};
use understudy_bus::accounts::Role as AccountRole;

/// `understudy bench …`
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Failover, hand-over and cold-start times.
    Failover(FailoverArgs),
    /// A 3-node NATS cluster losing one node at a time: how long the group
    /// is without a server, and whether two servers ever overlap.
    Cluster(ClusterArgs),
    /// Project file exchange: change-notification latency and distribution of a large project to many clients.
    Project(crate::bench_project::ProjectArgs),
    /// One group of N devices (up to 255) on one bus, or a sweep of sizes:
    /// cold start, failover, CPU and memory per device, nats-server load and
    /// false failovers while idle, as a curve.
    Scale(crate::bench_scale::ScaleArgs),
}

/// `understudy bench cluster` settings.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Devices in the group.
    #[arg(long, default_value_t = 5)]
    devices: usize,
    /// Node kills (each node in turn, restarted after the group recovered).
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// The nats-server binary [default: $UNDERSTUDY_NATS_SERVER, .tools/bin/nats-server, PATH].
    #[arg(long, env = "UNDERSTUDY_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    /// Folder for logs and the NATS stores.
    #[arg(long, default_value = ".bench-cluster")]
    dir: PathBuf,
}

/// `understudy bench failover` settings.
#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// Devices in the group.
    #[arg(long, default_value_t = 5)]
    devices: usize,
    /// Kills (and as many SIGTERM hand-overs).
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Cold starts to measure.
    #[arg(long, default_value_t = 3)]
    cold_starts: usize,
    /// Then stay idle this long and count elections (e.g. 600s).
    #[arg(long)]
    idle: Option<String>,
    /// The nats-server binary [default: $UNDERSTUDY_NATS_SERVER, .tools/bin/nats-server, PATH].
    #[arg(long, env = "UNDERSTUDY_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    /// Folder for logs and the NATS store.
    #[arg(long, default_value = ".bench")]
    dir: PathBuf,
    /// Devices serve `/metrics`, scraped every second during the run (`on`),
    /// or not (`off`); `both` measures off then on in the same run, to show
    /// what metrics cost.
    #[arg(long, value_enum, default_value_t = OffOn::Off)]
    metrics: OffOn,
    /// The nats-server speaks TLS and every process logs in as its role's
    /// user (`on`: the secured bus the lab runs), or neither (`off`);
    /// `both` measures off then on in the same run, to show what TLS costs.
    #[arg(long, value_enum, default_value_t = OffOn::Off)]
    nats_tls: OffOn,
}

/// A feature of `bench failover` off, on, or both in turn in one run (to
/// show what it costs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OffOn {
    /// Without it.
    Off,
    /// With it.
    On,
    /// Without, then with, in the same run.
    Both,
}

impl OffOn {
    /// The settings to measure, in order.
    fn modes(self) -> &'static [bool] {
        match self {
            OffOn::Off => &[false],
            OffOn::On => &[true],
            OffOn::Both => &[false, true],
        }
    }
}

/// What the bench process hears on the bus, stamped on arrival.
pub(crate) struct Ear {
    beats: async_nats::Subscriber,
    events: async_nats::Subscriber,
    /// Each device's latest heartbeat, by device id.
    pub(crate) latest: BTreeMap<String, (Instant, Heartbeat)>,
    /// Every election event heard, in order.
    pub(crate) log: Vec<(Instant, ElectionEvent)>,
}

/// A device counts as live while its latest heartbeat is younger than this
/// (a server beating every 100 ms), or than [`live_within`] of it.
pub(crate) const LIVE_WITHIN: Duration = Duration::from_millis(350);

/// How long `beat` keeps its sender live: three of the intervals it
/// advertises plus 50 ms, at least [`LIVE_WITHIN`] (a client beats every
/// second, the server every 100 ms).
pub(crate) fn live_within(beat: &Heartbeat) -> Duration {
    (Duration::from_millis(u64::from(beat.interval_ms)) * 3 + Duration::from_millis(50))
        .max(LIVE_WITHIN)
}

impl Ear {
    /// Takes in what arrives until `done` returns something; fails after `within`.
    pub(crate) async fn pump_until<T>(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&Self) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = done(self) {
                return Ok(v);
            }
            // Checked on every pass: under a steady stream of heartbeats
            // the quiet branch below may never run.
            if Instant::now() >= deadline {
                bail!("timed out after {within:?}");
            }
            tokio::select! {
                Some(m) = self.beats.next() => {
                    if let Ok(hb) = messages::decode::<Heartbeat>(&m.payload) {
                        self.latest.insert(hb.device.to_string(), (Instant::now(), hb));
                    }
                }
                Some(m) = self.events.next() => {
                    if let Ok(e) = messages::decode::<ElectionEvent>(&m.payload) {
                        self.log.push((Instant::now(), e));
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    }

    /// The devices heard within [`live_within`] their latest heartbeats.
    pub(crate) fn live(&self) -> Vec<&Heartbeat> {
        let now = Instant::now();
        self.latest
            .values()
            .filter(|(at, h)| now.duration_since(*at) < live_within(h))
            .map(|(_, h)| h)
            .collect()
    }

    /// The server every live device agrees on, once none is in grace.
    pub(crate) fn converged(&self, expect_live: usize) -> Option<(String, Term)> {
        let live = self.live();
        if live.len() != expect_live || live.iter().any(|h| h.in_grace) {
            return None;
        }
        let servers: Vec<&&Heartbeat> = live.iter().filter(|h| h.role == Role::Server).collect();
        let [s] = servers.as_slice() else { return None };
        live.iter()
            .all(|h| h.term == s.term)
            .then(|| (s.device.to_string(), s.term))
    }

    /// The first `server_elected` after `t0` of a device other than `not`.
    fn elected_after(&self, t0: Instant, not: &str) -> Option<(Instant, String, ElectionReason)> {
        self.log.iter().find_map(|(at, e)| match &e.kind {
            ElectionEventKind::ServerElected { device, reason, .. }
                if *at >= t0 && device.as_str() != not =>
            {
                Some((*at, device.to_string(), *reason))
            }
            _ => None,
        })
    }

    /// When `by` started an election after `t0`, if it did.
    fn started_after(&self, t0: Instant, by: &str) -> Option<Instant> {
        self.log.iter().find_map(|(at, e)| match &e.kind {
            ElectionEventKind::ElectionStarted { .. } if *at >= t0 && e.reporter.as_str() == by => {
                Some(*at)
            }
            _ => None,
        })
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The value at quantile `q` of sorted, non-empty `sorted` (the nearest
/// rank: p99 of fewer than 50 samples is the maximum).
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

pub(crate) fn summary(name: &str, mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return format!("{name:<38} (no samples)");
    }
    v.sort_by(f64::total_cmp);
    let pick = |q: f64| quantile(&v, q);
    format!(
        "{name:<38} n={:<3} p50 {:>8.1} ms   p99 {:>8.1} ms   max {:>8.1} ms",
        v.len(),
        pick(0.5),
        pick(0.99),
        v[v.len() - 1]
    )
}

/// Runs the benchmark and prints its figures.
///
/// Ctrl-C or SIGTERM stops it cleanly: dropping the run kills the
/// nats-servers and devices it started.
pub async fn run(cmd: BenchCmd) -> Result<()> {
    let work = async move {
        match cmd {
            BenchCmd::Failover(a) => failover(a).await,
            BenchCmd::Cluster(a) => cluster(a).await,
            BenchCmd::Project(a) => crate::bench_project::project(a).await,
            BenchCmd::Scale(a) => crate::bench_scale::scale(a).await,
        }
    };
    tokio::select! {
        r = work => r,
        _ = understudy_bus::terminate_or_interrupt() => Err(anyhow!("interrupted; stopped the processes it started")),
    }
}

/// Empties `dir` (what an earlier run left) and returns it absolute, with
/// this executable and the nats-server to run.
pub(crate) fn fresh_workspace(
    dir: &Path,
    nats_server: Option<&Path>,
) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let dir = std::fs::canonicalize(dir)?;
    let exe = std::env::current_exe().context("cannot find my own binary")?;
    let bin = nats_binary(nats_server)?;
    Ok((dir, exe, bin))
}

impl Ear {
    /// Subscribes to `group`'s heartbeats and election events.
    pub(crate) async fn listen(client: &async_nats::Client, group: &GroupName) -> Result<Ear> {
        let ear = Ear {
            beats: client.subscribe(subjects::heartbeats(group)).await?,
            events: client.subscribe(subjects::election_events(group)).await?,
            latest: BTreeMap::new(),
            log: Vec::new(),
        };
        client.flush().await?;
        Ok(ear)
    }
}

async fn cluster(a: ClusterArgs) -> Result<()> {
    let group: GroupName = "bench".parse()?;
    let (dir, exe, bin) = fresh_workspace(&a.dir, a.nats_server.as_deref())?;
    let mut nats = NatsCluster::start_in(&bin, &dir, 3).await?;
    let all = nats.urls().join(",");
    println!(
        "understudy bench cluster: {} devices, 3-node NATS cluster (R3 lease bucket), loopback, defaults",
        a.devices
    );
    let scores = scores(a.devices);
    let mut devices = Vec::new();
    for (i, s) in scores.iter().enumerate() {
        let extra = ["--replicas", "3"];
        devices.push(spawn_device(
            &exe,
            &dir,
            &LabBus::plain(&all),
            group.as_str(),
            i,
            *s,
            &extra,
        )?);
    }
    let (client, _) = connect(
        &understudy_bus::NatsSettings::plain(all.as_str()),
        "understudy-bench",
    )
    .await?;
    let mut ear = Ear::listen(&client, &group).await?;
    ear.pump_until(Duration::from_secs(30), |e| e.converged(a.devices))
        .await
        .map_err(|e| anyhow!("the group did not converge on the cluster: {e}"))?;

    let mut without = Vec::new();
    let mut to_converge = Vec::new();
    let mut overlaps = 0usize;
    for r in 0..a.rounds {
        let victim = r % 3;
        let t0 = Instant::now();
        nats.kill(victim);
        // Watch until converged again, noting the longest stretch with no
        // live server and whether two live servers ever showed at once.
        let mut gap_start: Option<Instant> = None;
        let mut longest_gap = Duration::ZERO;
        let deadline = t0 + Duration::from_secs(60);
        let converged_at = loop {
            ear.pump_until(Duration::from_millis(20), |_| None::<()>)
                .await
                .ok();
            let now = Instant::now();
            let live: Vec<&Heartbeat> = ear
                .latest
                .values()
                .filter(|(at, h)| now.duration_since(*at) < live_within(h))
                .map(|(_, h)| h)
                .collect();
            let servers: Vec<(String, Term)> = live
                .iter()
                .filter(|h| h.role == Role::Server)
                .map(|h| (h.device.to_string(), h.term))
                .collect();
            if servers.len() > 1 {
                overlaps += 1;
            }
            if servers.is_empty() {
                gap_start.get_or_insert(now);
            } else if let Some(g) = gap_start.take() {
                longest_gap = longest_gap.max(now - g);
            }
            if now > t0 + Duration::from_millis(500) && ear.converged(a.devices).is_some() {
                break now;
            }
            if now > deadline {
                bail!(
                    "the group did not converge within 60 s after losing node n{}",
                    victim + 1
                );
            }
        };
        without.push(ms(longest_gap));
        to_converge.push(ms(converged_at - t0));
        println!(
            "  round {}: killed n{}: longest time without a server {:.0} ms, all agree again after {:.0} ms",
            r + 1,
            victim + 1,
            ms(longest_gap),
            ms(converged_at - t0)
        );
        nats.restart(victim).await?;
        nats.wait_jetstream_ready(Duration::from_secs(60)).await?;
    }
    println!("{}", summary("longest time without a server", without));
    println!(
        "{}",
        summary("node lost -> group agrees again", to_converge)
    );
    println!("samples with two live servers reported at once: {overlaps}");
    drop(devices);
    Ok(())
}

async fn failover(a: FailoverArgs) -> Result<()> {
    if a.devices < 2 {
        bail!("--devices must be at least 2");
    }
    let (dir, exe, bin) = fresh_workspace(&a.dir, a.nats_server.as_deref())?;
    for &tls in a.nats_tls.modes() {
        let groups: Vec<String> = a
            .metrics
            .modes()
            .iter()
            .map(|&metrics| {
                let mut name = "bench".to_string();
                if metrics {
                    name.push_str("-metrics");
                }
                if tls {
                    name.push_str("-tls");
                }
                name
            })
            .collect();
        let names: Vec<&str> = groups.iter().map(String::as_str).collect();
        let nats_dir = dir.join(if tls { "nats-tls" } else { "nats" });
        std::fs::create_dir_all(&nats_dir)?;
        let (_nats, bus) = start_bus(&bin, &nats_dir, None, &names, tls, None).await?;
        for (&metrics, group) in a.metrics.modes().iter().zip(&groups) {
            let group: GroupName = group.parse()?;
            let run_dir = dir.join(group.as_str());
            std::fs::create_dir_all(&run_dir)?;
            failover_run(&a, &run_dir, &exe, &bus, &group, metrics).await?;
        }
    }
    Ok(())
}

/// One `bench failover` measurement, with or without metrics.
async fn failover_run(
    a: &FailoverArgs,
    dir: &Path,
    exe: &Path,
    bus: &LabBus,
    group: &GroupName,
    metrics: bool,
) -> Result<()> {
    let (client, _) = connect(&bus.settings(&AccountRole::Gateway), "understudy-bench").await?;
    let mut ear = Ear::listen(&client, group).await?;
    let scores = scores(a.devices);
    let n = a.devices;
    let endpoints: Vec<String> = if metrics {
        understudy_testkit::free_ports(n)?
            .into_iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    } else {
        Vec::new()
    };
    let scraper = metrics.then(|| tokio::spawn(scrape_every_second(endpoints.clone())));
    println!(
        "understudy bench failover: {n} devices, loopback, single nats-server, defaults (heartbeat 100 ms, grace 2 s, lease 1.5 s; UNDERSTUDY_* variables reach the devices), metrics {}, NATS {}",
        if metrics {
            "on (/metrics scraped every second)"
        } else {
            "off"
        },
        if bus.secure.is_some() {
            "over TLS with a user per role"
        } else {
            "plain"
        }
    );
    let spawn = |i: usize, s: u8| {
        let extra: Vec<&str> = match endpoints.get(i) {
            Some(e) => vec!["--metrics-listen", e.as_str()],
            None => vec![],
        };
        spawn_device(exe, dir, bus, group.as_str(), i, s, &extra)
    };

    // Cold starts.
    let mut cold = Vec::new();
    let mut devices: Vec<Device> = Vec::new();
    for round in 0..a.cold_starts.max(1) {
        devices.clear();
        ear.latest.clear();
        // Let the previous group's lease expire so each start is cold.
        if round > 0 {
            let gone = Instant::now() + Duration::from_secs(2);
            ear.pump_until(Duration::from_secs(3), |_| {
                (Instant::now() >= gone).then_some(())
            })
            .await?;
            ear.latest.clear();
        }
        let t0 = Instant::now();
        for (i, s) in scores.iter().enumerate() {
            devices.push(spawn(i, *s)?);
        }
        let (server, _) = ear
            .pump_until(Duration::from_secs(15), |e| e.converged(n))
            .await
            .map_err(|e| anyhow!("cold start did not converge: {e}"))?;
        if server != "dev-1" {
            bail!("cold start converged on {server}, not the rightful dev-1");
        }
        cold.push(t0.elapsed());
    }

    // Failovers after SIGKILL, then planned hand-overs after SIGTERM.
    let mut detect = Vec::new();
    let mut elect = Vec::new();
    let mut total = Vec::new();
    let mut handover = Vec::new();
    for planned in [false, true] {
        for r in 0..a.rounds {
            let round = fail_server_once(
                &mut ear,
                &mut devices,
                n,
                r,
                planned,
                Duration::from_secs(15),
            )
            .await?;
            if planned {
                handover.push(ms(round.total));
            } else {
                total.push(ms(round.total));
                if let Some(started) = round.started {
                    detect.push(ms(started));
                    elect.push(ms(round.total - started));
                }
            }
        }
    }

    println!(
        "{}",
        summary(
            "cold start to agreement",
            cold.iter().map(|d| ms(*d)).collect()
        )
    );
    println!(
        "{}",
        summary(
            "  minus the 2 s grace",
            cold.iter().map(|d| ms(*d) - 2000.0).collect()
        )
    );
    println!("{}", summary("failover: detection (kill -9)", detect));
    println!("{}", summary("failover: election", elect));
    println!("{}", summary("failover: total (kill -9 -> elected)", total));
    println!("{}", summary("planned hand-over (SIGTERM)", handover));
    let rss: Vec<f64> = devices.iter().filter_map(|d| rss_mib(d.pid())).collect();
    if let (Some(max), false) = (rss.iter().copied().reduce(f64::max), rss.is_empty()) {
        println!(
            "RSS per device after the rounds: mean {:.1} MiB, max {max:.1} MiB",
            rss.iter().sum::<f64>() / rss.len() as f64
        );
    }
    if let Some(s) = scraper {
        s.abort();
    }

    if let Some(idle) = a.idle.as_deref() {
        let idle = parse_duration(idle).map_err(|e| anyhow!(e))?;
        let before = ear.log.len();
        let until = Instant::now() + idle;
        ear.pump_until(idle + Duration::from_secs(1), |_| {
            (Instant::now() >= until).then_some(())
        })
        .await?;
        let spurious = ear.log[before..]
            .iter()
            .filter(|(_, e)| matches!(e.kind, ElectionEventKind::ElectionStarted { .. }))
            .count();
        println!(
            "idle {:.0} s: {spurious} election(s) started",
            idle.as_secs_f64()
        );
    }
    Ok(())
}

/// The times of one failover of the group's server.
pub(crate) struct Round {
    /// Kill → the successor's `server_elected`.
    pub total: Duration,
    /// Kill → the successor's `election_started`, if it was heard.
    pub started: Option<Duration>,
}

/// Waits until the `n` devices agree on a server, kills it (SIGKILL, or
/// SIGTERM when `planned`) at a phase against the 100 ms heartbeat that
/// round `r` picks, times the failover as heard on the bus, then restarts
/// the victim and waits until the group agrees on it again (it preempts as
/// the rightful server). Each wait for agreement fails after `converge`.
pub(crate) async fn fail_server_once(
    ear: &mut Ear,
    devices: &mut [Device],
    n: usize,
    r: usize,
    planned: bool,
    converge: Duration,
) -> Result<Round> {
    let (server, _) = ear
        .pump_until(converge, |e| e.converged(n))
        .await
        .map_err(|e| anyhow!("no agreement before the kill: {e}"))?;
    // A random phase against the 100 ms heartbeat.
    let phase = Instant::now() + Duration::from_millis((r as u64 * 37) % 100);
    ear.pump_until(Duration::from_secs(1), |_| {
        (Instant::now() >= phase).then_some(())
    })
    .await?;
    let i = devices
        .iter()
        .position(|d| d.id() == server)
        .ok_or_else(|| anyhow!("server {server} is not one of ours"))?;
    let t0 = Instant::now();
    if planned {
        devices[i].signal(Signal::Term)?;
    } else {
        devices[i].kill9();
    }
    let (at, successor, _) = ear
        .pump_until(Duration::from_secs(10), |e| e.elected_after(t0, &server))
        .await
        .map_err(|e| anyhow!("no failover after killing {server}: {e}"))?;
    let started = ear.started_after(t0, &successor).map(|s| s - t0);
    // Bring the device back (killing it if a hand-over left it running);
    // it preempts as the rightful server.
    devices[i].restart()?;
    // Judge agreement on heartbeats sent after the restart only.
    ear.latest.clear();
    ear.pump_until(converge, |e| e.converged(n).filter(|(s, _)| *s == server))
        .await
        .map_err(|e| anyhow!("no agreement on {server} again after its restart: {e}"))?;
    Ok(Round {
        total: at - t0,
        started,
    })
}

/// Resident memory of process `pid` in MiB (Linux), if readable.
pub(crate) fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// GETs `/metrics` of every endpoint once a second, as a Prometheus would
/// (the lab's scrape interval), reading each answer to its end.
async fn scrape_every_second(endpoints: Vec<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tick = understudy_bus::ticker(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for e in &endpoints {
            let scrape = async {
                let mut conn = tokio::net::TcpStream::connect(e).await?;
                conn.write_all(
                    b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n",
                )
                .await?;
                let mut body = Vec::new();
                conn.read_to_end(&mut body).await?;
                Ok::<_, std::io::Error>(body.len())
            };
            // A device being restarted does not answer: that is expected.
            let _ = tokio::time::timeout(Duration::from_secs(1), scrape).await;
        }
    }
}

/// Makes sure the open-files soft limit is at least `need` (for `what`, as
/// the messages say it), raising it up to the hard limit if needed; the
/// processes this one starts inherit it.
pub(crate) fn ensure_open_files(need: u64, what: &str) -> Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let Some(soft) = limit.current else {
        return Ok(());
    };
    if soft >= need {
        return Ok(());
    }
    if let Some(hard) = limit.maximum
        && hard < need
    {
        bail!(
            "{what} need about {need} open files, but the hard limit is {hard}: raise it \
             (ulimit -Hn as root, or LimitNOFILE) and run again"
        );
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(need),
            maximum: limit.maximum,
        },
    )
    .with_context(|| format!("cannot raise the open-files soft limit from {soft} to {need}"))?;
    println!("raised the open-files soft limit from {soft} to {need} for {what}");
    Ok(())
}
