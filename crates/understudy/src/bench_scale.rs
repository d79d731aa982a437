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
//!
//! With `--groups G`, G groups of N devices each share the bus: the cold
//! start waits for every group to agree on its own dev-1; the failover
//! rounds take the groups in turn (R rounds per group), and around each one
//! the bench takes in what every other group said and counts as cross-talk
//! any heartbeat naming another server or term than the group agreed on,
//! and any election event; false failovers and CPU are counted per group
//! and for the whole run.

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
use understudy_protocol::messages::ElectionEventKind;
use understudy_protocol::{GroupName, Role, Term};
use understudy_testkit::{Device, NatsCluster, NatsServer};

use crate::bench::{
    Ear, ensure_open_files, fail_server_once, fresh_workspace, ms, quantile, rss_mib, summary,
};
use crate::lab::{LabBus, scores, spawn_device, start_bus};
use crate::settings::{connect, parse_duration};

/// The fewest and most devices in one group (device numbers are one byte).
const SIZES: std::ops::RangeInclusive<usize> = 2..=255;

/// The fewest and most groups on one bus (named with two digits).
const GROUPS: std::ops::RangeInclusive<usize> = 1..=99;

/// Taking in a group's buffered messages ends after this long without one.
const QUIET: Duration = Duration::from_millis(4);

/// `understudy bench scale` settings.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Devices in the group (2–255); in each group with `--groups`.
    #[arg(long, default_value_t = 5, conflicts_with = "sweep")]
    devices: usize,
    /// Groups of `--devices` devices each, all on the same bus (1–99):
    /// `scale` alone, else `scale-01`, `scale-02`… The failover rounds take
    /// the groups in turn, and every other group is watched for cross-talk.
    #[arg(long, default_value_t = 1)]
    groups: usize,
    /// Sizes to measure in turn, each on a fresh bus with fresh devices
    /// (e.g. 5,25,50,100,200); ends with the curve as one table.
    #[arg(long)]
    sweep: Option<String>,
    /// Failovers (kill -9 of the server) per size; per group with `--groups`.
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
    /// The devices' `--client-heartbeat-interval` (e.g. 1s) [default: the
    /// devices' own default].
    #[arg(long)]
    client_heartbeat_interval: Option<String>,
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
    /// Starting the processes (the spawn loop), every group's.
    spawn: Duration,
    /// First spawn → every group agrees on its dev-1, the grace included.
    cold: Duration,
    /// Kill -9 → the successor's `server_elected`, per round, in ms, every
    /// group's.
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
    /// `election_started` events during the idle window, every group's.
    false_failovers: usize,
    /// Each group's own figures, in order.
    groups: Vec<GroupFigures>,
}

impl Figures {
    /// What groups said while another group failed over, all together.
    fn cross_talk(&self) -> usize {
        self.groups.iter().map(|g| g.cross_talk.len()).sum()
    }
}

/// What one group of a size measured.
#[derive(Debug, Clone, Default, PartialEq)]
struct GroupFigures {
    /// The group's name.
    name: String,
    /// Kill -9 → the successor's `server_elected`, per own round, in ms.
    failovers: Vec<f64>,
    /// `election_started` events of the group during the idle window.
    false_failovers: usize,
    /// What the group said while another group failed over (or between
    /// rounds), other than heartbeats agreeing on its server and term: one
    /// line per kind of message per round.
    cross_talk: Vec<String>,
}

/// One line of the curve.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    /// Devices per group.
    devices: usize,
    /// Groups on the bus.
    groups: usize,
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
    if !GROUPS.contains(&a.groups) {
        bail!(
            "--groups {}: from {} to {} groups",
            a.groups,
            GROUPS.start(),
            GROUPS.end()
        );
    }
    let idle = parse_duration(&a.idle).map_err(|e| anyhow!(e))?;
    if idle.is_zero() {
        bail!("--idle must be longer than 0");
    }
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let n = largest * a.groups;
    // nats-server, started by this process, inherits the limit and holds a
    // connection per device.
    ensure_open_files(4 * n as u64 + 256, &format!("{n} devices"))?;
    let (dir, exe, bin) = fresh_workspace(&a.dir, a.nats_server.as_deref())?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "understudy bench scale: sizes {sizes:?}{}, {} rounds{}, idle {:.0} s, {}, loopback, \
         defaults (heartbeat 100 ms, grace 2 s, lease 1.5 s; UNDERSTUDY_* variables reach the devices), {cores} cores; logs in {}",
        if a.groups > 1 {
            format!(" in each of {} groups on one bus", a.groups)
        } else {
            String::new()
        },
        a.rounds,
        if a.groups > 1 { " per group" } else { "" },
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
        let (size_dir, title) = if a.groups > 1 {
            (
                dir.join(format!("{}x{n}-devices", a.groups)),
                format!("{} groups x {n} devices", a.groups),
            )
        } else {
            (dir.join(format!("{n}-devices")), format!("{n} devices"))
        };
        std::fs::create_dir_all(&size_dir)?;
        println!("\n== {title} ==");
        let names = group_names(a.groups)?;
        let dirs = group_dirs(&size_dir, &names);
        let outcome = measure_size(&a, n, idle, &exe, &bin, &size_dir, &names, &dirs)
            .await
            .map_err(|e| format!("{e:#}"));
        match &outcome {
            Err(reason) => println!("{title} FAILED: {reason}"),
            Ok(f) if a.groups > 1 => println!("{}", group_table(f)),
            Ok(_) => {}
        }
        println!("{}", device_log_counts(&dirs, n));
        rows.push(Row {
            devices: n,
            groups: a.groups,
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

/// The names of `g` groups: `scale` alone, else `scale-01`, `scale-02`…
fn group_names(g: usize) -> Result<Vec<GroupName>> {
    if g == 1 {
        return Ok(vec!["scale".parse()?]);
    }
    (1..=g)
        .map(|i| Ok(format!("scale-{i:02}").parse()?))
        .collect()
}

/// Where each group's devices keep their logs and data: the size's folder
/// for one group, a folder per group (named after it) for several.
fn group_dirs(size_dir: &Path, names: &[GroupName]) -> Vec<PathBuf> {
    if names.len() == 1 {
        return vec![size_dir.to_path_buf()];
    }
    names.iter().map(|g| size_dir.join(g.as_str())).collect()
}

/// 15 s plus 100 ms per device: how long a size may take to agree.
fn converge_deadline(n: usize) -> Duration {
    Duration::from_secs(15) + Duration::from_millis(100) * u32::try_from(n).unwrap_or(u32::MAX)
}

/// The process ids of every group's devices.
fn pids_of(groups: &[Vec<Device>]) -> Vec<u32> {
    groups.iter().flatten().map(Device::pid).collect()
}

/// One size, on a fresh bus with fresh devices: `names.len()` groups of `n`,
/// each group's logs and data in its folder of `dirs`.
#[allow(clippy::too_many_arguments)]
async fn measure_size(
    a: &ScaleArgs,
    n: usize,
    idle: Duration,
    exe: &Path,
    bin: &Path,
    dir: &Path,
    names: &[GroupName],
    dirs: &[PathBuf],
) -> Result<Figures> {
    let g = names.len();
    let deadline = converge_deadline(n * g);
    let nats_dir = dir.join("nats");
    std::fs::create_dir_all(&nats_dir)?;
    for d in dirs {
        std::fs::create_dir_all(d)?;
    }
    let (nats, bus, monitor) = if a.cluster {
        let cluster = NatsCluster::start_in(bin, &nats_dir, 3).await?;
        let urls = cluster.urls().join(",");
        (Nats::Cluster(cluster), LabBus::plain(&urls), None)
    } else {
        let port = understudy_testkit::free_port()?;
        let groups: Vec<&str> = names.iter().map(GroupName::as_str).collect();
        let (server, bus) = start_bus(bin, &nats_dir, None, &groups, false, Some(port)).await?;
        let monitor = SocketAddr::from(([127, 0, 0, 1], port));
        (Nats::Single(Box::new(server)), bus, Some(monitor))
    };
    let (client, _) = connect(&bus.settings(&AccountRole::Gateway), "understudy-bench").await?;
    let mut ears = Vec::with_capacity(g);
    for name in names {
        ears.push(Ear::listen(&client, name).await?);
    }
    let mut extra: Vec<&str> = Vec::new();
    if a.cluster {
        extra.extend(["--replicas", "3"]);
    }
    if let Some(every) = &a.client_heartbeat_interval {
        extra.extend(["--client-heartbeat-interval", every.as_str()]);
    }
    let extra = extra.as_slice();

    // Cold start: every process started in one loop, one group after the
    // other.
    let mut groups: Vec<Vec<Device>> = Vec::with_capacity(g);
    let load = Load::start(&nats);
    let t0 = Instant::now();
    for (name, gdir) in names.iter().zip(dirs) {
        let mut devices = Vec::with_capacity(n);
        for (i, s) in scores(n).iter().enumerate() {
            let d = spawn_device(exe, gdir, &bus, name.as_str(), i, *s, extra)
                .with_context(|| format!("cannot start device {} of {n} in {name}", i + 1))?;
            devices.push(d);
        }
        groups.push(devices);
    }
    let spawn = t0.elapsed();
    // Each group's agreement (server, term), heard one group after the
    // other: the later groups' messages wait in their subscriptions, so the
    // time is that of the last group to agree, give or take that backlog.
    let mut agreed: Vec<(String, Term)> = Vec::with_capacity(g);
    for i in 0..g {
        let left = deadline.saturating_sub(t0.elapsed());
        let heard_agree = ears[i]
            .pump_until(left, |e| e.converged(n).filter(|(s, _)| s == "dev-1"))
            .await;
        match heard_agree {
            Ok(pair) => agreed.push(pair),
            Err(e) => {
                let all = agreeing(&mut ears, names, n).await;
                bail!(
                    "cold start: no agreement on dev-1{} ({e}); then: {}; {all}; {}",
                    if g > 1 {
                        format!(" in {}", names[i])
                    } else {
                        String::new()
                    },
                    heard(&ears[i], &mut groups[i], n),
                    load.since(&pids_of(&groups))
                )
            }
        }
    }
    let cold = t0.elapsed();
    println!("started {} processes in {:.0} ms", n * g, ms(spawn));
    println!(
        "cold start to agreement{} (the 2 s grace included): {:.0} ms ({:.0} ms after the grace)",
        if g > 1 { " of every group" } else { "" },
        ms(cold),
        ms(cold) - 2000.0
    );

    // Failovers: the groups in turn; around each round, what every other
    // group said is taken in and checked against its agreement.
    let mut per_group: Vec<GroupFigures> = names
        .iter()
        .map(|name| GroupFigures {
            name: name.to_string(),
            ..GroupFigures::default()
        })
        .collect();
    let mut marks: Vec<usize> = ears.iter().map(|e| e.log.len()).collect();
    let mut failovers = Vec::with_capacity(a.rounds * g);
    for r in 0..a.rounds * g {
        let v = r % g;
        let before = format!("before round {}", r + 1);
        listen_to_others(&mut ears, v, &agreed, &mut marks, &mut per_group, &before).await;
        let round = fail_server_once(&mut ears[v], &mut groups[v], n, r, false, deadline).await;
        let round = match round {
            Ok(round) => round,
            Err(e) => bail!(
                "failover round {}{}: {e:#}; then: {}; {}",
                r + 1,
                if g > 1 {
                    format!(" ({})", names[v])
                } else {
                    String::new()
                },
                heard(&ears[v], &mut groups[v], n),
                load.since(&pids_of(&groups))
            ),
        };
        // It agrees again on its restarted dev-1, in a newer term.
        agreed[v] = ears[v]
            .converged(n)
            .ok_or_else(|| anyhow!("{} agreed, then did not", names[v]))?;
        // The group's own reports of the round (the restarted dev-1's
        // `server_elected` last) may arrive after the heartbeats that showed
        // it: take them in before the mark, so they are not counted as
        // cross-talk later.
        let (server, term) = agreed[v].clone();
        let from = marks[v];
        let _ = ears[v]
            .pump_until(Duration::from_secs(5), |e| {
                e.log[from..]
                    .iter()
                    .any(|(_, ev)| {
                        matches!(&ev.kind, ElectionEventKind::ServerElected { device, term: t, .. }
                            if device.as_str() == server && *t == term)
                    })
                    .then_some(())
            })
            .await;
        marks[v] = ears[v].log.len();
        let during = format!("during round {} ({}'s failover)", r + 1, names[v]);
        let talk =
            listen_to_others(&mut ears, v, &agreed, &mut marks, &mut per_group, &during).await;
        println!(
            "  round {}{}: kill -9 -> elected {:.0} ms (detection {}){}",
            r + 1,
            if g > 1 {
                format!(" ({})", names[v])
            } else {
                String::new()
            },
            ms(round.total),
            round
                .started
                .map_or("not heard".to_string(), |d| format!("{:.0} ms", ms(d))),
            if g > 1 {
                format!(
                    ", other groups: {}",
                    talk.unwrap_or_else(|| "quiet".to_string())
                )
            } else {
                String::new()
            }
        );
        failovers.push(ms(round.total));
        per_group[v].failovers.push(ms(round.total));
    }
    if a.rounds > 0 {
        println!(
            "{}",
            summary("failover: total (kill -9 -> elected)", failovers.clone())
        );
    }

    // The idle window.
    let tick = rustix::param::clock_ticks_per_second() as f64;
    let pids = pids_of(&groups);
    let nats_pids = nats.pids();
    for (ear, mark) in ears.iter_mut().zip(&mut marks) {
        take_in(ear, |_| {}).await;
        *mark = ear.log.len();
    }
    let before: Vec<Option<u64>> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let nats_before = total_ticks(&nats_pids);
    let varz_before = match monitor {
        Some(m) => Some(varz(m).await?),
        None => None,
    };
    let w0 = Instant::now();
    let until = w0 + idle;
    while Instant::now() < until {
        for ear in &mut ears {
            take_in(ear, |_| {}).await;
        }
    }
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
    let mut started: Vec<String> = Vec::new();
    for ((ear, mark), group) in ears.iter().zip(&marks).zip(&mut per_group) {
        for (at, e) in &ear.log[*mark..] {
            if let ElectionEventKind::ElectionStarted { reason } = &e.kind {
                group.false_failovers += 1;
                started.push(format!(
                    "{}{} at {:.1} s ({reason:?})",
                    if g > 1 {
                        format!("{}/", group.name)
                    } else {
                        String::new()
                    },
                    e.reporter,
                    at.saturating_duration_since(w0).as_secs_f64()
                ));
            }
        }
    }
    let exited = groups
        .iter_mut()
        .flatten()
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
        groups: per_group,
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
    if g > 1 {
        println!(
            "cross-talk (a group heard to change server or term, or to hold an election, \
             while another failed over or between rounds): {}",
            f.cross_talk()
        );
        for group in f.groups.iter().filter(|g| !g.cross_talk.is_empty()) {
            println!("  {}: {}", group.name, group.cross_talk.join("; "));
        }
    }
    if exited > 0 {
        println!("  {exited} device(s) exited during the run");
    }
    drop(groups);
    drop(nats);
    Ok(f)
}

/// Takes in what `ear` has buffered, until no message came for [`QUIET`]
/// (2 s at most), calling `each` after every message.
async fn take_in(ear: &mut Ear, mut each: impl FnMut(&Ear)) {
    let mut prev = Instant::now();
    // Timing out means messages kept coming for 2 s: what was taken in is
    // enough for now, the rest is taken in next time.
    let _ = ear
        .pump_until(Duration::from_secs(2), |e| {
            each(e);
            let now = Instant::now();
            let quiet = now.duration_since(prev) >= QUIET;
            prev = now;
            quiet.then_some(())
        })
        .await;
}

/// Takes in what every group but `skip` said since its mark and checks it
/// against the group's agreement: a heartbeat naming another server or term,
/// or any election event, is cross-talk, noted in the group's figures with
/// `when`. Returns a summary of what was noted, `None` if nothing.
async fn listen_to_others(
    ears: &mut [Ear],
    skip: usize,
    agreed: &[(String, Term)],
    marks: &mut [usize],
    groups: &mut [GroupFigures],
    when: &str,
) -> Option<String> {
    let mut noted = Vec::new();
    for (i, ear) in ears.iter_mut().enumerate() {
        if i == skip {
            continue;
        }
        let (server, term) = &agreed[i];
        let mut odd = std::collections::BTreeSet::new();
        take_in(ear, |e| {
            for (_, h) in e.latest.values() {
                if h.term != *term {
                    odd.insert(format!("{} in term {} (not {term})", h.device, h.term));
                } else if h.role == Role::Server && h.device.as_str() != server.as_str() {
                    odd.insert(format!("{} serving (not {server})", h.device));
                }
            }
        })
        .await;
        for (_, e) in &ear.log[marks[i]..] {
            if let Some(what) = disturbance(&e.kind, *term) {
                odd.insert(format!("{} reported {what}", e.reporter));
            }
        }
        marks[i] = ear.log.len();
        if !odd.is_empty() {
            let odd: Vec<String> = odd.into_iter().collect();
            groups[i]
                .cross_talk
                .push(format!("{when}: {}", odd.join(", ")));
            noted.push(format!("{} heard {}", groups[i].name, odd.len()));
        }
    }
    (!noted.is_empty()).then(|| noted.join(", "))
}

/// Whether an election event heard in a group that agreed on `term` is
/// cross-talk, and what it was: an election started, or a change to a newer
/// term. A report about `term` or an older one is the group's own earlier
/// change heard late (events travel through JetStream and may arrive after
/// the heartbeats that show their effect); a real disturbance also starts
/// an election.
fn disturbance(kind: &ElectionEventKind, term: Term) -> Option<String> {
    let newer = |t: &Term, what: String| (*t > term).then_some(what);
    match kind {
        ElectionEventKind::ElectionStarted { reason } => {
            Some(format!("election_started ({reason:?})"))
        }
        ElectionEventKind::ServerElected {
            device, term: t, ..
        } => newer(t, format!("server_elected {device} term {t}")),
        ElectionEventKind::ServerLost {
            device, term: t, ..
        } => newer(t, format!("server_lost {device} term {t}")),
        ElectionEventKind::SteppedDown {
            device, term: t, ..
        } => newer(t, format!("stepped_down {device} term {t}")),
        ElectionEventKind::HandedOver { from, to, term: t } => {
            newer(t, format!("handed_over {from} -> {to} term {t}"))
        }
        ElectionEventKind::NoViableCandidate => Some("no_viable_candidate".to_string()),
        ElectionEventKind::HoldChanged { held, .. } => Some(format!("hold_changed held {held}")),
        ElectionEventKind::Unknown => Some("an event of an unknown type".to_string()),
    }
}

/// After a failure: how many groups agree now, and what the others were
/// heard saying (each group's buffered messages taken in first: a device
/// counts as heard if any heartbeat of it was, however old).
async fn agreeing(ears: &mut [Ear], names: &[GroupName], n: usize) -> String {
    let mut not = Vec::new();
    for (ear, name) in ears.iter_mut().zip(names) {
        take_in(ear, |_| {}).await;
        if ear.converged(n).is_none_or(|(s, _)| s != "dev-1") {
            let servers: Vec<String> = ear
                .latest
                .values()
                .filter(|(_, h)| h.role == Role::Server)
                .map(|(_, h)| format!("{} term {}", h.device, h.term))
                .collect();
            let grace = ear.latest.values().filter(|(_, h)| h.in_grace).count();
            not.push(format!(
                "{name} (heard {}/{n}, {grace} in grace, serving [{}])",
                ear.latest.len(),
                servers.join(", ")
            ));
        }
    }
    format!(
        "{}/{} group(s) agree on dev-1 now{}",
        ears.len() - not.len(),
        ears.len(),
        if not.is_empty() {
            String::new()
        } else {
            format!(", not: [{}]", not.join(", "))
        }
    )
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

    /// The cores nats-server and the devices (processes `pids`) used on
    /// average since the start, and the load average.
    fn since(&self, pids: &[u32]) -> String {
        let tick = rustix::param::clock_ticks_per_second() as f64;
        let secs = self.at.elapsed().as_secs_f64();
        let cores = |ticks: u64| ticks as f64 / tick / secs;
        let nats = match (self.nats_ticks, total_ticks(&self.nats_pids)) {
            (Some(b), Some(a)) => format!("{:.2}", cores(a.saturating_sub(b))),
            _ => "?".to_string(),
        };
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

/// Warning and error lines in the size's device logs (`n` devices in each
/// folder of `dirs`), and the most frequent warning, as one line.
fn device_log_counts(dirs: &[PathBuf], n: usize) -> String {
    let mut warn = 0usize;
    let mut error = 0usize;
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for (dir, i) in dirs.iter().flat_map(|d| (1..=n).map(move |i| (d, i))) {
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
        "| groups | devices per group | cold start ms (grace incl.) | failover p50 / p99 / max ms \
         | CPU s per device per s (mean / max) | RSS MiB (mean / max) | nats-server cores \
         | msgs/s in / out | false failovers | cross-talk |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        match &r.outcome {
            Ok(f) => {
                let msgs = f
                    .msgs
                    .map_or("–".to_string(), |(i, o)| format!("{i:.0} / {o:.0}"));
                let _ = writeln!(
                    t,
                    "| {} | {} | {:.0} | {} | {} | {} | {:.2} | {msgs} | {} | {} |",
                    r.groups,
                    r.devices,
                    ms(f.cold),
                    p50_p99_max(&f.failovers),
                    mean_max(&f.cpu, 4),
                    mean_max(&f.rss, 1),
                    f.nats_cores,
                    f.false_failovers,
                    f.cross_talk()
                );
            }
            Err(reason) => {
                // The first clause only: the whole reason is printed above
                // and in the CSV.
                let first = reason.split("; ").next().unwrap_or_default();
                let reason: String = first.replace('|', "/").chars().take(120).collect();
                let _ = writeln!(
                    t,
                    "| {} | {} | failed: {reason} | | | | | | | |",
                    r.groups, r.devices
                );
            }
        }
    }
    t
}

/// Each group's own figures as a Markdown table.
fn group_table(f: &Figures) -> String {
    let mut t = String::from(
        "| group | failovers | failover p50 / p99 / max ms | false failovers | cross-talk |\n\
         |---|---|---|---|---|\n",
    );
    for g in &f.groups {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} |",
            g.name,
            g.failovers.len(),
            p50_p99_max(&g.failovers),
            g.false_failovers,
            g.cross_talk.len()
        );
    }
    t
}

/// The curve as CSV, one row per size (empty fields where a size failed).
fn csv(rows: &[Row]) -> String {
    let mut t = String::from(
        "groups,devices,status,spawn_ms,cold_start_ms,failover_p50_ms,failover_p99_ms,\
         failover_max_ms,idle_s,cpu_s_per_s_mean,cpu_s_per_s_max,rss_mib_mean,rss_mib_max,\
         nats_cores,msgs_in_per_s,msgs_out_per_s,false_failovers,cross_talk,reason\n",
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
                    "{},{},ok,{:.1},{:.1},{},{},{},{:.1},{},{},{},{},{:.4},{i},{o},{},{},",
                    r.groups,
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
                    f.false_failovers,
                    f.cross_talk()
                );
            }
            Err(reason) => {
                let reason = reason.replace('"', "'");
                let _ = writeln!(
                    t,
                    "{},{},failed,,,,,,,,,,,,,,,,\"{reason}\"",
                    r.groups, r.devices
                );
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
            groups: vec![GroupFigures {
                name: "scale".to_string(),
                failovers: vec![300.0, 250.0, 260.0],
                false_failovers: 0,
                cross_talk: Vec::new(),
            }],
        }
    }

    /// Two groups: the second heard electing during the first's failover.
    fn two_groups() -> Figures {
        let mut f = figures();
        f.groups = vec![
            GroupFigures {
                name: "scale-01".to_string(),
                failovers: vec![300.0, 250.0],
                false_failovers: 0,
                cross_talk: Vec::new(),
            },
            GroupFigures {
                name: "scale-02".to_string(),
                failovers: vec![260.0],
                false_failovers: 1,
                cross_talk: vec!["during round 1 (scale-01's failover): dev-2 serving".into()],
            },
        ];
        f.false_failovers = 1;
        f
    }

    #[test]
    fn the_curve_has_a_row_per_size_and_says_why_one_failed() {
        let rows = [
            Row {
                devices: 5,
                groups: 1,
                outcome: Ok(figures()),
            },
            Row {
                devices: 10,
                groups: 2,
                outcome: Ok(two_groups()),
            },
            Row {
                devices: 200,
                groups: 1,
                outcome: Err("cold start: no | agreement; then: 3/200 heard".to_string()),
            },
        ];
        let t = curve(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert_eq!(
            lines[2],
            "| 1 | 5 | 2150 | 260 / 300 / 300 | 0.0200 / 0.0300 | 9.0 / 10.0 | 0.12 | 250 / 6250 \
             | 0 | 0 |"
        );
        assert!(lines[3].starts_with("| 2 | 10 | 2150 |"), "{}", lines[3]);
        assert!(lines[3].ends_with("| 1 | 1 |"), "{}", lines[3]);
        assert_eq!(
            lines[4],
            "| 1 | 200 | failed: cold start: no / agreement | | | | | | | |"
        );
        for l in &lines {
            assert_eq!(l.matches('|').count(), 11, "{l}");
        }
    }

    #[test]
    fn the_group_table_has_a_row_per_group() {
        let t = group_table(&two_groups());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        // The nearest rank: p50 of two samples is the higher.
        assert_eq!(lines[2], "| scale-01 | 2 | 300 / 300 / 300 | 0 | 0 |");
        assert_eq!(lines[3], "| scale-02 | 1 | 260 / 260 / 260 | 1 | 1 |");
    }

    #[test]
    fn late_reports_of_a_groups_own_change_are_not_cross_talk() {
        use understudy_protocol::messages::ElectionReason;
        let term = Term::from_revision(5);
        let lost = |t| ElectionEventKind::ServerLost {
            device: "dev-1".parse().expect("valid"),
            term: Term::from_revision(t),
            silent_ms: None,
        };
        let handed = |t| ElectionEventKind::HandedOver {
            from: "dev-2".parse().expect("valid"),
            to: "dev-1".parse().expect("valid"),
            term: Term::from_revision(t),
        };
        assert_eq!(disturbance(&lost(5), term), None);
        assert_eq!(disturbance(&handed(4), term), None);
        assert_eq!(
            disturbance(&lost(6), term).as_deref(),
            Some("server_lost dev-1 term 6")
        );
        assert!(disturbance(&handed(6), term).is_some());
        let started = ElectionEventKind::ElectionStarted {
            reason: ElectionReason::ServerLost,
        };
        assert!(disturbance(&started, term).is_some());
        assert!(disturbance(&ElectionEventKind::NoViableCandidate, term).is_some());
    }

    #[test]
    fn groups_are_named_with_two_digits_unless_alone() {
        let names = |g| -> Vec<String> {
            group_names(g)
                .expect("valid names")
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(names(1), ["scale"]);
        assert_eq!(names(3), ["scale-01", "scale-02", "scale-03"]);
        let dirs = group_dirs(Path::new("/b/20x10"), &group_names(2).expect("valid"));
        assert_eq!(
            dirs,
            [
                Path::new("/b/20x10/scale-01"),
                Path::new("/b/20x10/scale-02")
            ]
        );
        assert_eq!(
            group_dirs(Path::new("/b/10"), &group_names(1).expect("valid")),
            [Path::new("/b/10")]
        );
    }

    #[test]
    fn the_csv_has_the_same_rows_with_a_fixed_column_count() {
        let mut no_msgs = figures();
        no_msgs.msgs = None;
        no_msgs.failovers.clear();
        let rows = [
            Row {
                devices: 5,
                groups: 1,
                outcome: Ok(figures()),
            },
            Row {
                devices: 25,
                groups: 1,
                outcome: Ok(no_msgs),
            },
            Row {
                devices: 200,
                groups: 20,
                outcome: Err("timed \"out\"".to_string()),
            },
        ];
        let t = csv(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        let columns = lines[0].split(',').count();
        assert_eq!(columns, 19);
        for l in &lines {
            assert_eq!(l.split(',').count(), columns, "{l}");
        }
        assert!(lines[1].starts_with("1,5,ok,40.0,2150.0,260.0,300.0,300.0,60.0,0.02000,0.03000,"));
        assert!(lines[1].ends_with(",0,0,"), "{}", lines[1]);
        assert!(lines[3].starts_with("20,200,failed,"));
        assert!(lines[3].ends_with("\"timed 'out'\""));
    }
}
