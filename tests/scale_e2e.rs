//! End to end at scale (issue 15): 50 real `understudy node` processes in
//! one group on one nats-server agree on the rightful server, then hold it
//! for 30 s with one server only (S1, the harness's checker over every
//! heartbeat) and no election at all: no false failover.
//!
//! The figures (CPU, messages, failover times against the group's size) are
//! `understudy bench scale`'s job (docs/BENCHMARKS.md); this test proves the
//! behaviour. It is one test in its own binary: Cargo runs test binaries one
//! after the other, so the 50 devices do not share the machine with another
//! test's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::*;
use understudy_protocol::{Role, Term};

/// The group every scenario uses (a secured run's users are made for it).
const GROUP: &str = "stage";
/// Devices in the group.
const DEVICES: u8 = 50;
/// Start → every device agrees on dev-1: the 2 s grace plus generous room
/// for 50 debug processes starting at once on a loaded 2-core machine.
const AGREE_WITHIN: Duration = Duration::from_secs(60);
/// Devices started together (module docs of the test).
const WAVE: u8 = 10;
/// How long the agreed group is watched.
const WINDOW: Duration = Duration::from_secs(30);

/// Device `i`'s score: 200 for dev-1, then 3 less per device (all distinct:
/// dev-1 is the rightful server).
fn score(i: u8) -> u8 {
    200 - 3 * (i - 1)
}

// Back in the suite (2026-12-02), after a quarantine since 2026-12-01: 50
// *debug* devices saturated this 2-core machine (1.82 cores) and a starved
// server lost its lease — a false failover of a starved machine, not of
// the protocol. What changed: clients beat every 1 s by default, each
// device process subscribes to its group's beats once (not three times),
// presence every 5 s, the runtime, NATS client and JSON crates optimised
// in the dev profile (Cargo.toml), and the devices start in waves of ten.
// Measured in the 30 s window: 1.28–1.39 cores for the 50 devices, 0.15
// for nats-server (5 passes of 5 on 2026-12-02).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_devices_agree_then_hold_one_server_for_30_s_without_a_false_failover() {
    let nats = start_nats().await;
    let obs = Observer::start(&nats.url(), GROUP).await;
    let urls = vec![nats.url()];
    let started = Instant::now();
    // In waves of WAVE, each once the one before is heard: 50 debug
    // processes starting at once spend seconds of CPU each on two cores
    // (see the comment above the test); a show's devices power up over
    // minutes anyway. `understudy bench scale` times the all-at-once start.
    let mut devices: Vec<Device> = Vec::with_capacity(usize::from(DEVICES));
    let load = Load::start(&nats, &devices);
    for first in (1..=DEVICES).step_by(usize::from(WAVE)) {
        let last = (first + WAVE - 1).min(DEVICES);
        devices.extend(
            (first..=last).map(|i| spawn_device(&urls, DeviceOpts::numbered(GROUP, i, score(i)))),
        );
        let heard = obs
            .wait_for(|v: &View| v.live().len() >= usize::from(last), AGREE_WITHIN)
            .await;
        if let Err(e) = heard {
            panic!(
                "dev-{first}..dev-{last} were not all heard within {AGREE_WITHIN:?}: {e:#}\n{}",
                what_was_heard(&obs, &mut devices, &load)
            );
        }
    }

    // Agreement: all 50 heard, out of grace, in dev-1's term.
    let agreed = obs
        .wait_for(
            |v: &View| {
                v.converged()
                    .filter(|(d, _)| d == "dev-1" && v.live().len() == usize::from(DEVICES))
            },
            AGREE_WITHIN,
        )
        .await;
    let (_, term) = match agreed {
        Ok(agreed) => agreed,
        Err(e) => panic!(
            "{DEVICES} devices did not all agree on dev-1 within {AGREE_WITHIN:?}: {e:#}\n{}",
            what_was_heard(&obs, &mut devices, &load)
        ),
    };
    let agreed_after = started.elapsed();

    // The window: an election ends it at once (the observer's wait);
    // judged as a whole at its end.
    let w0 = Instant::now();
    // The window's own load (the start-up's is behind it).
    let load = Load::start(&nats, &devices);
    let events_before = obs.events().len();
    // Ends early on an election; otherwise runs out at the window's end.
    let _ = obs
        .wait_for(|_: &View| obs.events().len() > events_before, WINDOW)
        .await;
    let watched = w0.elapsed();
    let rec = obs.recording();
    let in_window: Vec<_> = rec.heartbeats.iter().filter(|b| b.at >= w0).collect();
    let elections: Vec<String> = rec.events[events_before..]
        .iter()
        .map(|e| {
            format!(
                "+{:.1} s: {} reported {:?}",
                e.at.saturating_duration_since(w0).as_secs_f64(),
                e.msg.reporter,
                e.msg.kind
            )
        })
        .collect();
    let mut diagnosis = || what_was_heard(&obs, &mut devices, &load);

    // S1 over everything heard since the start.
    if let Err(e) = obs.check_one_server() {
        panic!("S1 violated: {e:#}\n{}", diagnosis());
    }
    // No false failover: not one election event, no other term, no other
    // server.
    assert!(
        elections.is_empty(),
        "{} election event(s) in the {:.0} s window after agreement on dev-1 in term {term} \
         (no fault was injected): {}\n{}",
        elections.len(),
        watched.as_secs_f64(),
        elections.join("; "),
        diagnosis()
    );
    let odd = off_agreement(&in_window, term);
    assert!(
        odd.is_empty(),
        "heartbeats in the window left the agreement (dev-1 serving in term {term}): {}\n{}",
        odd.join("; "),
        diagnosis()
    );
    // Every device was heard through the window and still is.
    let heard: BTreeMap<String, usize> = in_window.iter().fold(BTreeMap::new(), |mut m, b| {
        *m.entry(b.msg.device.to_string()).or_default() += 1;
        m
    });
    let view = obs.view();
    assert!(
        heard.len() == usize::from(DEVICES) && view.live().len() == usize::from(DEVICES),
        "{} devices heard in the window and {} live at its end, not {DEVICES}: {}\n{}",
        heard.len(),
        view.live().len(),
        view.summary(),
        diagnosis()
    );
    println!(
        "{DEVICES} devices agreed on dev-1 (term {term}) {:.1} s after the start; then {:.0} s \
         with {} heartbeats, one server, no election; {}",
        agreed_after.as_secs_f64(),
        watched.as_secs_f64(),
        in_window.len(),
        load.since(&devices)
    );
}

/// What left the agreement in `beats`: a term other than `term`, or a
/// server other than dev-1 (the first ten, and how many in all).
fn off_agreement(
    beats: &[&Timed<understudy_protocol::messages::Heartbeat>],
    term: Term,
) -> Vec<String> {
    let odd: Vec<String> = beats
        .iter()
        .filter(|b| {
            b.msg.term != term || (b.msg.role == Role::Server && b.msg.device.as_str() != "dev-1")
        })
        .map(|b| format!("{} {} in term {}", b.msg.device, b.msg.role, b.msg.term))
        .collect();
    let mut first: Vec<String> = odd.iter().take(10).cloned().collect();
    if odd.len() > first.len() {
        first.push(format!("{} in all", odd.len()));
    }
    first
}

/// For a failure: the election events heard (by kind), devices that exited
/// (with the end of their log), and the machine's load since the start.
fn what_was_heard(obs: &Observer, devices: &mut [Device], load: &Load) -> String {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for e in obs.events() {
        let kind = format!("{:?}", e.msg.kind);
        let name = kind
            .split([' ', '{', '('])
            .next()
            .unwrap_or_default()
            .to_string();
        *kinds.entry(name).or_default() += 1;
    }
    let exited: Vec<String> = devices
        .iter_mut()
        .filter_map(|d| {
            (!d.is_running()).then(|| format!("{}:\n{}", d.id(), tail(d.log_path(), 10)))
        })
        .collect();
    format!(
        "election events heard since the start: {kinds:?}; {} of {DEVICES} devices exited{}; {}",
        exited.len(),
        if exited.is_empty() {
            String::new()
        } else {
            format!(": {}", exited.join("\n"))
        },
        load.since(devices)
    )
}

/// CPU used since the devices started (`/proc/<pid>/stat`, Linux), to tell
/// a starved machine from a protocol fault in a failure.
struct Load {
    at: Instant,
    nats: Option<u32>,
    nats_ticks: u64,
    device_ticks: u64,
    own_ticks: u64,
}

impl Load {
    fn start(nats: &NatsServer, devices: &[Device]) -> Load {
        let nats = nats.pid();
        Load {
            at: Instant::now(),
            nats,
            nats_ticks: nats.and_then(cpu_ticks).unwrap_or(0),
            device_ticks: devices.iter().filter_map(|d| cpu_ticks(d.pid())).sum(),
            own_ticks: cpu_ticks(std::process::id()).unwrap_or(0),
        }
    }

    /// Cores used on average by nats-server, the devices and this test
    /// since the start, and the load average.
    fn since(&self, devices: &[Device]) -> String {
        let tick = rustix::param::clock_ticks_per_second() as f64;
        let secs = self.at.elapsed().as_secs_f64();
        let cores = |ticks: u64| ticks as f64 / tick / secs;
        let nats = self.nats.and_then(cpu_ticks).unwrap_or(0);
        let devices: u64 = devices.iter().filter_map(|d| cpu_ticks(d.pid())).sum();
        let own = cpu_ticks(std::process::id()).unwrap_or(0);
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        format!(
            "over the {secs:.0} s since the start: the devices used {:.2} cores together, \
             nats-server {:.2}, this test {:.2}; load average {}",
            cores(devices.saturating_sub(self.device_ticks)),
            cores(nats.saturating_sub(self.nats_ticks)),
            cores(own.saturating_sub(self.own_ticks)),
            loadavg
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        )
    }
}

/// utime + stime of process `pid` in clock ticks (fields 14 and 15 of
/// `/proc/<pid>/stat`, counted after the command name's last `)`).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}
