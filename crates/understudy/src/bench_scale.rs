//! `understudy bench scale`: one group of N real `understudy node`
//! processes on one nats-server (or the 3-node cluster), at default
//! settings, for one size or a sweep of sizes, printed as a curve
//! (docs/BENCHMARKS.md quotes it). Not a test: it asserts nothing.
//!
//! Per size, on a fresh bus with fresh devices:
//! - cold start: all N started together until every device's heartbeat
//!   names the rightful server (dev-1) and none is in grace (the 2 s grace
//!   included);
//! - failover after SIGKILL of the server, R times, as `bench failover`
//!   times it (kill → the successor's `server_elected`), the victim
//!   restarted and the group agreeing on it again between rounds;
//! - an idle window: CPU time per device (utime + stime from
//!   `/proc/<pid>/stat`) per second, RSS per device, nats-server CPU (cores)
//!   and messages per second through it (`/varz` at both ends of the
//!   window), and false failovers (`election_started` with no fault).
//!
//! A size that does not agree within its deadline (15 s + 100 ms per
//! device) is reported as failed, with what was heard, and the sweep goes
//! on.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use understudy_bus::accounts::Role as AccountRole;
use understudy_protocol::GroupName;
use understudy_protocol::Role;
use understudy_protocol::messages::ElectionEventKind;
use understudy_testkit::{Device, NatsCluster, NatsServer};

use crate::bench::{Ear, fail_server_once, fresh_workspace, ms, quantile, rss_mib, summary};
use crate::lab::{LabBus, scores, spawn_device, start_bus};
use crate::settings::{connect, parse_duration};

/// The fewest and most devices in one group (device numbers are one byte).
const SIZES: std::ops::RangeInclusive<usize> = 2..=255;

/// `understudy bench scale` settings.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Devices in the group (2–255).
    #[arg(long, default_value_t = 5, conflicts_with = "sweep")]
    devices: usize,
    /// Sizes to measure in turn, each on a fresh bus with fresh devices
    /// (e.g. 5,25,50,100,200); ends with the curve as one table.
    #[arg(long)]
    sweep: Option<String>,
    /// Failovers (kill -9 of the server) per size.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The idle window per size, in which CPU, messages and false
    /// failovers are counted (e.g. 300s, 5s for a quick run).
    #[arg(long, default_value = "300s")]
    idle: String,
    /// Run on a 3-node NATS cluster (lease bucket R3) instead of one
    /// nats-server (its nodes have no monitoring port: no msgs/s).
    #[arg(long)]
    cluster: bool,
    /// Also write the curve's rows to this CSV file (rewritten after each size).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// The nats-server binary [default: $UNDERSTUDY_NATS_SERVER, .tools/bin/nats-server, PATH].
    #[arg(long, env = "UNDERSTUDY_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    /// Folder for the logs, the devices' data and the NATS stores (one
    /// folder per size).
    #[arg(long, default_value = ".bench-scale")]
    dir: PathBuf,
}

/// What one size measured.
#[derive(Debug, Clone, Default, PartialEq)]
struct Figures {
    /// Starting the N processes (the spawn loop).
    spawn: Duration,
    /// First spawn → every device agrees on dev-1, the grace included.
    cold: Duration,
    /// Kill -9 → the successor's `server_elected`, per round, in ms.
    failovers: Vec<f64>,
    /// The idle window's length.
    idle: Duration,
    /// CPU seconds per second, per device, over the idle window.
    cpu: Vec<f64>,
    /// RSS in MiB per device at the end of the idle window.
    rss: Vec<f64>,
    /// nats-server CPU over the idle window, in cores (all nodes together).
    nats_cores: f64,
    /// Messages per second into and out of nats-server over the idle
    /// window (`None`: no monitoring port).
    msgs: Option<(f64, f64)>,
    /// `election_started` events during the idle window.
    false_failovers: usize,
}

/// One line of the curve.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    devices: usize,
    /// The figures, or why the size failed.
    outcome: Result<Figures, String>,
}

/// The nats-server(s) of one size; killed on drop.
enum Nats {
    Single(Box<NatsServer>),
    Cluster(NatsCluster),
}

impl Nats {
    /// The process ids of its servers.
    fn pids(&self) -> Vec<u32> {
        match self {
            Nats::Single(s) => s.pid().into_iter().collect(),
            Nats::Cluster(c) => (0..c.len()).filter_map(|i| c.pid(i)).collect(),
        }
    }
}

/// Runs `bench scale` and prints its figures, then the curve.
pub async fn scale(a: ScaleArgs) -> Result<()> {
    let sizes = match &a.sweep {
        Some(s) => parse_sizes(s),
        None => parse_sizes(&a.devices.to_string()),
    }
    .map_err(|e| anyhow!(e))?;
    let idle = parse_duration(&a.idle).map_err(|e| anyhow!(e))?;
    if idle.is_zero() {
        bail!("--idle must be longer than 0");
    }
    let largest = sizes.iter().copied().max().unwrap_or(0);
    ensure_open_files(largest)?;
    let (dir, exe, bin) = fresh_workspace(&a.dir, a.nats_server.as_deref())?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "understudy bench scale: sizes {sizes:?}, {} rounds, idle {:.0} s, {}, loopback, defaults \
         (heartbeat 100 ms, grace 2 s, lease 1.5 s), {cores} cores; logs in {}",
        a.rounds,
        idle.as_secs_f64(),
        if a.cluster {
            "3-node NATS cluster (lease bucket R3)"
        } else {
            "single nats-server"
        },
        dir.display()
    );
    let mut rows = Vec::with_capacity(sizes.len());
    for &n in &sizes {
        let size_dir = dir.join(format!("{n}-devices"));
        std::fs::create_dir_all(&size_dir)?;
        println!("\n== {n} devices ==");
        let outcome = measure_size(&a, n, idle, &exe, &bin, &size_dir)
            .await
            .map_err(|e| format!("{e:#}"));
        if let Err(reason) = &outcome {
            println!("{n} devices FAILED: {reason}");
        }
        println!("{}", device_log_counts(&size_dir, n));
        rows.push(Row {
            devices: n,
            outcome,
        });
        if let Some(file) = &a.csv {
            std::fs::write(file, csv(&rows))
                .with_context(|| format!("cannot write {}", file.display()))?;
        }
    }
    println!("\n{}", curve(&rows));
    if let Some(file) = &a.csv {
        println!("rows written to {}", file.display());
    }
    Ok(())
}

/// 15 s plus 100 ms per device: how long a size may take to agree.
fn converge_deadline(n: usize) -> Duration {
    Duration::from_secs(15) + Duration::from_millis(100) * u32::try_from(n).unwrap_or(u32::MAX)
}

/// One size, on a fresh bus with fresh devices in `dir`.
async fn measure_size(
    a: &ScaleArgs,
    n: usize,
    idle: Duration,
    exe: &Path,
    bin: &Path,
    dir: &Path,
) -> Result<Figures> {
    let group: GroupName = "scale".parse()?;
    let deadline = converge_deadline(n);
    let nats_dir = dir.join("nats");
    std::fs::create_dir_all(&nats_dir)?;
    let (nats, bus, monitor) = if a.cluster {
        let cluster = NatsCluster::start_in(bin, &nats_dir, 3).await?;
        let urls = cluster.urls().join(",");
        (Nats::Cluster(cluster), LabBus::plain(&urls), None)
    } else {
        let port = understudy_testkit::free_port()?;
        let (server, bus) =
            start_bus(bin, &nats_dir, None, &[group.as_str()], false, Some(port)).await?;
        let monitor = SocketAddr::from(([127, 0, 0, 1], port));
        (Nats::Single(Box::new(server)), bus, Some(monitor))
    };
    let (client, _) = connect(&bus.settings(&AccountRole::Gateway), "understudy-bench").await?;
    let mut ear = Ear::listen(&client, &group).await?;
    let extra: &[&str] = if a.cluster { &["--replicas", "3"] } else { &[] };

    // Cold start: every process started in one loop, one after the other.
    let mut devices: Vec<Device> = Vec::with_capacity(n);
    let load = Load::start(&nats);
    let t0 = Instant::now();
    for (i, s) in scores(n).iter().enumerate() {
        let d = spawn_device(exe, dir, &bus, group.as_str(), i, *s, extra)
            .with_context(|| format!("cannot start device {} of {n}", i + 1))?;
        devices.push(d);
    }
    let spawn = t0.elapsed();
    let agreed = ear
        .pump_until(deadline, |e| e.converged(n).filter(|(s, _)| s == "dev-1"))
        .await;
    if let Err(e) = agreed {
        bail!(
            "cold start: no agreement on dev-1 ({e}); then: {}; {}",
            heard(&ear, &mut devices, n),
            load.since(&devices)
        );
    }
    let cold = t0.elapsed();
    println!("started {n} processes in {:.0} ms", ms(spawn));
    println!(
        "cold start to agreement (the 2 s grace included): {:.0} ms ({:.0} ms after the grace)",
        ms(cold),
        ms(cold) - 2000.0
    );

    // Failovers.
    let mut failovers = Vec::with_capacity(a.rounds);
    for r in 0..a.rounds {
        let round = fail_server_once(&mut ear, &mut devices, n, r, false, deadline).await;
        let round = match round {
            Ok(round) => round,
            Err(e) => bail!(
                "failover round {}: {e:#}; then: {}; {}",
                r + 1,
                heard(&ear, &mut devices, n),
                load.since(&devices)
            ),
        };
        println!(
            "  round {}: kill -9 -> elected {:.0} ms (detection {})",
            r + 1,
            ms(round.total),
            round
                .started
                .map_or("not heard".to_string(), |d| format!("{:.0} ms", ms(d)))
        );
        failovers.push(ms(round.total));
    }
    if a.rounds > 0 {
        println!(
            "{}",
            summary("failover: total (kill -9 -> elected)", failovers.clone())
        );
    }

    // The idle window.
    let tick = rustix::param::clock_ticks_per_second() as f64;
    let pids: Vec<u32> = devices.iter().map(Device::pid).collect();
    let nats_pids = nats.pids();
    let before: Vec<Option<u64>> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let nats_before = total_ticks(&nats_pids);
    let varz_before = match monitor {
        Some(m) => Some(varz(m).await?),
        None => None,
    };
    let events_before = ear.log.len();
    let w0 = Instant::now();
    let until = w0 + idle;
    ear.pump_until(idle + Duration::from_secs(5), |_| {
        (Instant::now() >= until).then_some(())
    })
    .await?;
    let varz_after = match monitor {
        Some(m) => Some(varz(m).await?),
        None => None,
    };
    let after: Vec<Option<u64>> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let nats_after = total_ticks(&nats_pids);
    let window = w0.elapsed();
    let secs = window.as_secs_f64();
    let cpu: Vec<f64> = before
        .iter()
        .zip(&after)
        .filter_map(|(b, a)| Some(a.as_ref()?.checked_sub(*b.as_ref()?)? as f64 / tick / secs))
        .collect();
    let rss: Vec<f64> = pids.iter().filter_map(|&p| rss_mib(p)).collect();
    let nats_cores = match (nats_before, nats_after) {
        (Some(b), Some(a)) => a.saturating_sub(b) as f64 / tick / secs,
        _ => f64::NAN,
    };
    let msgs = match (varz_before, varz_after) {
        (Some(b), Some(a)) => Some((
            a.in_msgs.saturating_sub(b.in_msgs) as f64 / secs,
            a.out_msgs.saturating_sub(b.out_msgs) as f64 / secs,
        )),
        _ => None,
    };
    let started: Vec<String> = ear.log[events_before..]
        .iter()
        .filter_map(|(at, e)| match &e.kind {
            ElectionEventKind::ElectionStarted { reason } => Some(format!(
                "{} at {:.1} s ({reason:?})",
                e.reporter,
                at.saturating_duration_since(w0).as_secs_f64()
            )),
            _ => None,
        })
        .collect();
    let exited = devices
        .iter_mut()
        .filter_map(|d| (!d.is_running()).then_some(()))
        .count();
    let f = Figures {
        spawn,
        cold,
        failovers,
        idle: window,
        cpu,
        rss,
        nats_cores,
        msgs,
        false_failovers: started.len(),
    };
    println!("idle {secs:.0} s:");
    println!(
        "  CPU per device: {} s per s (mean / max over {} devices)",
        mean_max(&f.cpu, 4),
        f.cpu.len()
    );
    println!("  RSS per device: {} MiB (mean / max)", mean_max(&f.rss, 1));
    println!(
        "  nats-server: {:.2} cores, {}",
        f.nats_cores,
        f.msgs.map_or(
            "msgs/s not measured (no monitoring port)".to_string(),
            |(i, o)| { format!("{i:.0} msgs/s in, {o:.0} msgs/s out") }
        )
    );
    println!(
        "  false failovers (election_started with no fault): {}{}",
        f.false_failovers,
        if started.is_empty() {
            String::new()
        } else {
            format!(": {}", started.join(", "))
        }
    );
    if exited > 0 {
        println!("  {exited} device(s) exited during the run");
    }
    drop(devices);
    drop(nats);
    Ok(f)
}

/// The machine's load from the devices' start, for a failure's reason.
struct Load {
    at: Instant,
    nats_pids: Vec<u32>,
    nats_ticks: Option<u64>,
}

impl Load {
    fn start(nats: &Nats) -> Load {
        let nats_pids = nats.pids();
        Load {
            at: Instant::now(),
            nats_ticks: total_ticks(&nats_pids),
            nats_pids,
        }
    }

    /// The cores nats-server and the devices (their current processes)
    /// used on average since the start, and the load average.
    fn since(&self, devices: &[Device]) -> String {
        let tick = rustix::param::clock_ticks_per_second() as f64;
        let secs = self.at.elapsed().as_secs_f64();
        let cores = |ticks: u64| ticks as f64 / tick / secs;
        let nats = match (self.nats_ticks, total_ticks(&self.nats_pids)) {
            (Some(b), Some(a)) => format!("{:.2}", cores(a.saturating_sub(b))),
            _ => "?".to_string(),
        };
        let pids: Vec<u32> = devices.iter().map(Device::pid).collect();
        let devices: u64 = pids.iter().filter_map(|&p| cpu_ticks(p)).sum();
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        format!(
            "over the {secs:.0} s since the start: nats-server {nats} cores, the devices {:.2} cores \
             together; load average {}",
            cores(devices),
            loadavg
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        )
    }
}

/// What the bench hears of the group, for a failure's reason: devices
/// heard lately, in grace, who claims to serve, and devices that exited.
fn heard(ear: &Ear, devices: &mut [Device], n: usize) -> String {
    let live = ear.live();
    let grace = live.iter().filter(|h| h.in_grace).count();
    let servers: Vec<String> = live
        .iter()
        .filter(|h| h.role == Role::Server)
        .map(|h| format!("{} (term {})", h.device, h.term))
        .collect();
    let mut terms: Vec<String> = live.iter().map(|h| h.term.to_string()).collect();
    terms.sort();
    terms.dedup();
    let exited: Vec<String> = devices
        .iter_mut()
        .filter_map(|d| (!d.is_running()).then(|| d.id().to_string()))
        .collect();
    let elections = ear
        .log
        .iter()
        .filter(|(_, e)| matches!(e.kind, ElectionEventKind::ElectionStarted { .. }))
        .count();
    format!(
        "{}/{n} devices heard within {} ms, {grace} in grace, serving: [{}], terms seen: [{}], \
         {elections} election(s) started so far, exited: [{}]",
        live.len(),
        crate::bench::LIVE_WITHIN.as_millis(),
        servers.join(", "),
        terms.join(", "),
        exited.join(", ")
    )
}

/// Warning and error lines in the size's device logs, and the most
/// frequent warning, as one line.
fn device_log_counts(dir: &Path, n: usize) -> String {
    let mut warn = 0usize;
    let mut error = 0usize;
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for i in 1..=n {
        let Ok(text) = std::fs::read_to_string(dir.join(format!("dev-{i}.log"))) else {
            continue;
        };
        for line in text.lines() {
            let (level, at) = if let Some(at) = line.find(" WARN ") {
                (&mut warn, at + 6)
            } else if let Some(at) = line.find(" ERROR ") {
                (&mut error, at + 7)
            } else {
                continue;
            };
            *level += 1;
            *kinds.entry(log_message(&line[at..])).or_default() += 1;
        }
    }
    let top = kinds
        .iter()
        .max_by_key(|(_, c)| **c)
        .map(|(k, c)| format!("; most frequent ({c}x): {k}"))
        .unwrap_or_default();
    format!("device logs: {warn} warning and {error} error lines{top}")
}

/// A log line's message without its fields (`key=value`), at most 100
/// characters: what kind of line it is.
fn log_message(after_level: &str) -> String {
    let words: Vec<&str> = after_level
        .split_whitespace()
        .take_while(|w| !w.contains('='))
        .collect();
    words.join(" ").chars().take(100).collect()
}

/// Makes sure the open-files limit (which nats-server, started by this
/// process, inherits: one connection per device) is enough for `n` devices,
/// raising the soft limit up to the hard one if needed.
fn ensure_open_files(n: usize) -> Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let need = 4 * n as u64 + 256;
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
            "{n} devices need about {need} open files (nats-server holds a connection per device \
             and inherits this limit), but the hard limit is {hard}: raise it (ulimit -Hn as root, \
             or LimitNOFILE) and run again"
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
    println!("raised the open-files soft limit from {soft} to {need} for {n} devices");
    Ok(())
}

/// utime + stime of process `pid` in clock ticks, if it runs.
fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The sum of [`cpu_ticks`] of `pids`, if every one is readable.
fn total_ticks(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|&p| cpu_ticks(p)).sum()
}

/// utime (field 14) + stime (field 15) of a `/proc/<pid>/stat` line, in
/// clock ticks. The command name (field 2) is in parentheses and may hold
/// spaces or parentheses itself, so fields are counted from its last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The message counters of nats-server's `/varz`.
#[derive(Debug, Clone, Copy, Deserialize)]
struct Varz {
    in_msgs: u64,
    out_msgs: u64,
}

/// GETs `/varz` from nats-server's monitoring port.
async fn varz(addr: SocketAddr) -> Result<Varz> {
    let get = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        conn.write_all(b"GET /varz HTTP/1.0\r\nHost: bench\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .map_err(|_| anyhow!("nats-server's /varz at {addr} did not answer within 5 s"))?
        .with_context(|| format!("GET http://{addr}/varz"))?;
    parse_varz(&answer).with_context(|| format!("reading http://{addr}/varz"))
}

/// The counters in an HTTP answer from `/varz`.
fn parse_varz(answer: &[u8]) -> Result<Varz> {
    let body = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| &answer[at + 4..])
        .ok_or_else(|| anyhow!("no HTTP body"))?;
    Ok(serde_json::from_slice(body)?)
}

/// `5,25,50` → `[5, 25, 50]`, each size within 2–255.
fn parse_sizes(s: &str) -> Result<Vec<usize>, String> {
    let sizes = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let n: usize = p
                .parse()
                .map_err(|_| format!("{p:?} is not a number of devices"))?;
            if SIZES.contains(&n) {
                Ok(n)
            } else {
                Err(format!(
                    "{n} devices: a group here has {} to {} devices",
                    SIZES.start(),
                    SIZES.end()
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if sizes.is_empty() {
        return Err(format!("no sizes in {s:?} (e.g. 5,25,50,100,200)"));
    }
    Ok(sizes)
}

/// `mean / max` of `v` with `digits` decimals, or `–`.
fn mean_max(v: &[f64], digits: usize) -> String {
    match v.iter().copied().reduce(f64::max) {
        Some(max) => format!(
            "{:.digits$} / {max:.digits$}",
            v.iter().sum::<f64>() / v.len() as f64
        ),
        None => "–".to_string(),
    }
}

/// p50 / p99 / max of `v` (ms), or `–`.
fn p50_p99_max(v: &[f64]) -> String {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return "–".to_string();
    }
    format!(
        "{:.0} / {:.0} / {:.0}",
        quantile(&v, 0.5),
        quantile(&v, 0.99),
        v[v.len() - 1]
    )
}

/// The curve as a Markdown table, one row per size.
fn curve(rows: &[Row]) -> String {
    let mut t = String::from(
        "| devices | cold start ms (grace incl.) | failover p50 / p99 / max ms \
         | CPU s per device per s (mean / max) | RSS MiB (mean / max) | nats-server cores \
         | msgs/s in / out | false failovers |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        match &r.outcome {
            Ok(f) => {
                let msgs = f
                    .msgs
                    .map_or("–".to_string(), |(i, o)| format!("{i:.0} / {o:.0}"));
                let _ = writeln!(
                    t,
                    "| {} | {:.0} | {} | {} | {} | {:.2} | {msgs} | {} |",
                    r.devices,
                    ms(f.cold),
                    p50_p99_max(&f.failovers),
                    mean_max(&f.cpu, 4),
                    mean_max(&f.rss, 1),
                    f.nats_cores,
                    f.false_failovers
                );
            }
            Err(reason) => {
                // The first clause only: the whole reason is printed above
                // and in the CSV.
                let first = reason.split("; ").next().unwrap_or_default();
                let reason: String = first.replace('|', "/").chars().take(120).collect();
                let _ = writeln!(t, "| {} | failed: {reason} | | | | | | |", r.devices);
            }
        }
    }
    t
}

/// The curve as CSV, one row per size (empty fields where a size failed).
fn csv(rows: &[Row]) -> String {
    let mut t = String::from(
        "devices,status,spawn_ms,cold_start_ms,failover_p50_ms,failover_p99_ms,failover_max_ms,\
         idle_s,cpu_s_per_s_mean,cpu_s_per_s_max,rss_mib_mean,rss_mib_max,nats_cores,\
         msgs_in_per_s,msgs_out_per_s,false_failovers,reason\n",
    );
    for r in rows {
        match &r.outcome {
            Ok(f) => {
                let mut v = f.failovers.clone();
                v.sort_by(f64::total_cmp);
                let q = |q: f64| {
                    if v.is_empty() {
                        String::new()
                    } else {
                        format!("{:.1}", quantile(&v, q))
                    }
                };
                let stat = |v: &[f64], max: bool| match v.iter().copied().reduce(f64::max) {
                    None => String::new(),
                    Some(m) if max => format!("{m:.5}"),
                    Some(_) => format!("{:.5}", v.iter().sum::<f64>() / v.len() as f64),
                };
                let (i, o) = f.msgs.map_or((String::new(), String::new()), |(i, o)| {
                    (format!("{i:.1}"), format!("{o:.1}"))
                });
                let _ = writeln!(
                    t,
                    "{},ok,{:.1},{:.1},{},{},{},{:.1},{},{},{},{},{:.4},{i},{o},{},",
                    r.devices,
                    ms(f.spawn),
                    ms(f.cold),
                    q(0.5),
                    q(0.99),
                    q(1.0),
                    f.idle.as_secs_f64(),
                    stat(&f.cpu, false),
                    stat(&f.cpu, true),
                    stat(&f.rss, false),
                    stat(&f.rss, true),
                    f.nats_cores,
                    f.false_failovers
                );
            }
            Err(reason) => {
                let reason = reason.replace('"', "'");
                let _ = writeln!(t, "{},failed,,,,,,,,,,,,,,,\"{reason}\"", r.devices);
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_are_utime_plus_stime_counted_from_the_last_parenthesis() {
        // Fields 14 and 15 are 1234 and 56; the name holds ") (" and spaces.
        let stat = "4242 (understudy) (x y) S 1 4242 4242 0 -1 4194560 3000 0 0 0 \
                    1234 56 0 0 20 0 7 0 100 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(1290));
        assert_eq!(parse_stat_ticks("4242 (short) S 1 2"), None);
        assert_eq!(parse_stat_ticks("no parenthesis"), None);
    }

    #[test]
    fn own_stat_parses() {
        assert!(cpu_ticks(std::process::id()).is_some());
    }

    #[test]
    fn log_kinds_drop_the_fields() {
        assert_eq!(
            log_message("heartbeat late by 120 ms device=dev-3 term=4"),
            "heartbeat late by 120 ms"
        );
    }

    #[test]
    fn sizes_parse_in_order_and_within_bounds() {
        assert_eq!(
            parse_sizes("5,25, 50,100,200"),
            Ok(vec![5, 25, 50, 100, 200])
        );
        assert_eq!(parse_sizes("7"), Ok(vec![7]));
        assert!(parse_sizes("1").is_err());
        assert!(parse_sizes("5,256").is_err());
        assert!(parse_sizes("5,x").is_err());
        assert!(parse_sizes(" , ").is_err());
    }

    #[test]
    fn the_deadline_grows_with_the_group() {
        assert_eq!(converge_deadline(5), Duration::from_millis(15_500));
        assert_eq!(converge_deadline(200), Duration::from_secs(35));
    }

    #[test]
    fn varz_counters_come_from_the_http_body() {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n\
                       {\"server_id\":\"X\",\"in_msgs\":120,\"out_msgs\":3400,\"cpu\":1.5}";
        let v = parse_varz(answer).expect("parses");
        assert_eq!((v.in_msgs, v.out_msgs), (120, 3400));
        assert!(parse_varz(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    fn figures() -> Figures {
        Figures {
            spawn: Duration::from_millis(40),
            cold: Duration::from_millis(2150),
            failovers: vec![300.0, 250.0, 260.0],
            idle: Duration::from_secs(60),
            cpu: vec![0.01, 0.03],
            rss: vec![8.0, 10.0],
            nats_cores: 0.125,
            msgs: Some((250.0, 6250.0)),
            false_failovers: 0,
        }
    }

    #[test]
    fn the_curve_has_a_row_per_size_and_says_why_one_failed() {
        let rows = [
            Row {
                devices: 5,
                outcome: Ok(figures()),
            },
            Row {
                devices: 200,
                outcome: Err("cold start: no | agreement; then: 3/200 heard".to_string()),
            },
        ];
        let t = curve(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert_eq!(
            lines[2],
            "| 5 | 2150 | 260 / 300 / 300 | 0.0200 / 0.0300 | 9.0 / 10.0 | 0.12 | 250 / 6250 | 0 |"
        );
        assert_eq!(
            lines[3],
            "| 200 | failed: cold start: no / agreement | | | | | | |"
        );
        for l in &lines {
            assert_eq!(l.matches('|').count(), 9, "{l}");
        }
    }

    #[test]
    fn the_csv_has_the_same_rows_with_a_fixed_column_count() {
        let mut no_msgs = figures();
        no_msgs.msgs = None;
        no_msgs.failovers.clear();
        let rows = [
            Row {
                devices: 5,
                outcome: Ok(figures()),
            },
            Row {
                devices: 25,
                outcome: Ok(no_msgs),
            },
            Row {
                devices: 200,
                outcome: Err("timed \"out\"".to_string()),
            },
        ];
        let t = csv(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        let columns = lines[0].split(',').count();
        assert_eq!(columns, 17);
        for l in &lines {
            assert_eq!(l.split(',').count(), columns, "{l}");
        }
        assert!(lines[1].starts_with("5,ok,40.0,2150.0,260.0,300.0,300.0,60.0,0.02000,0.03000,"));
        assert!(lines[3].starts_with("200,failed,"));
        assert!(lines[3].ends_with("\"timed 'out'\""));
    }
}
