//! Seeded plans: the group, its clocks and the faults that hit it.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use understudy_protocol::{Mac, Score};

use crate::MAX_DRIFT_PPM;

/// Something the schedule does to the group at a given instant.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// kill -9 a device.
    Crash(usize),
    /// Start a crashed or shut-down device again, as a new instance.
    Restart(usize),
    /// SIGSTOP a device for this long, then SIGCONT it.
    Pause(usize, Duration),
    /// Split the devices in two; `with_store` says whether this side keeps
    /// the lease store, and with it the bus's server. Every device on the
    /// other side is cut off: it hears nothing, and what it publishes waits
    /// in its client until it is back.
    Partition {
        /// The cut-off side.
        side: Vec<usize>,
        /// Whether the store is on that side.
        with_store: bool,
    },
    /// Mend every partition.
    Heal,
    /// Drop this many messages in a thousand until the faults end.
    Loss(u32),
    /// Change a device's score at run time.
    SetScore(usize, Score),
    /// Take a device online or offline.
    SetOnline(usize, bool),
    /// An operator triggers an election through this device.
    Trigger(usize),
    /// SIGTERM: a planned hand-over, then the process ends.
    Shutdown(usize),
    /// The operator sets (`true`) or lifts the group's show hold (kept in
    /// the store: every device on the store's side learns it after a bus
    /// delay, a starting or healed one when it reads it).
    Hold(bool),
    /// An operator forces an election through this device (`--force`, past
    /// a show hold).
    ForcedTrigger(usize),
}

/// Everything a run needs; made from a seed by [`Plan::from_seed`].
#[derive(Debug, Clone)]
pub struct Plan {
    /// The seed the plan came from (also seeds the run's delays and losses).
    pub seed: u64,
    /// Each device's MAC.
    pub macs: Vec<Mac>,
    /// Each device's starting score.
    pub scores: Vec<Score>,
    /// Each device's clock-rate error, in parts per million.
    pub drift_ppm: Vec<i64>,
    /// Each device's clock offset from true time.
    pub clock_offset: Vec<Duration>,
    /// When each device starts (cold start spread).
    pub start_at: Vec<Duration>,
    /// The preempt delay every device is configured with.
    pub preempt_delay: Duration,
    /// The faults, in time order.
    pub faults: Vec<(Duration, Fault)>,
    /// When faults end: the bus heals, every device runs again.
    pub faults_end: Duration,
    /// The one-way bus delay range.
    pub delay: (Duration, Duration),
    /// How often devices that are not the server beat (the run's
    /// [`crate::client_heartbeat`]; a test may set another).
    pub client_heartbeat: Duration,
}

impl Plan {
    /// The plan for `seed`.
    pub fn from_seed(seed: u64) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = match rng.random_range(0..10) {
            0..6 => rng.random_range(3..=6),
            6..9 => rng.random_range(7..=12),
            _ => rng.random_range(13..=25),
        };
        let mode = rng.random_range(0..100);
        let scores: Vec<Score> = match mode {
            // B7: nobody is viable.
            0..7 => vec![Score::CLIENT_ONLY; n],
            // B8: manual assignment, one device non-zero.
            7..15 => {
                let chosen = rng.random_range(0..n);
                (0..n)
                    .map(|i| {
                        if i == chosen {
                            Score::new(rng.random_range(1..=255))
                        } else {
                            Score::CLIENT_ONLY
                        }
                    })
                    .collect()
            }
            _ => (0..n).map(|_| random_score(&mut rng)).collect(),
        };
        let mut macs: Vec<Mac> = Vec::with_capacity(n);
        while macs.len() < n {
            let m = Mac::from_u64(rng.random_range(0..(1u64 << 48))).unwrap_or(Mac::MAX);
            if !macs.contains(&m) {
                macs.push(m);
            }
        }
        let drift_ppm = (0..n)
            .map(|_| rng.random_range(-MAX_DRIFT_PPM..=MAX_DRIFT_PPM))
            .collect();
        let clock_offset = (0..n)
            .map(|_| Duration::from_millis(rng.random_range(0..100_000)))
            .collect();
        let spread = rng.random_range(0..1500u64);
        let start_at = (0..n)
            .map(|_| Duration::from_millis(rng.random_range(0..=spread)))
            .collect();
        let preempt_delay = if rng.random_bool(0.7) {
            Duration::ZERO
        } else {
            Duration::from_millis(rng.random_range(100..1000))
        };
        let faults_end = Duration::from_millis(rng.random_range(4000..12_000));
        let count = rng.random_range(1..=10);
        let mut faults = Vec::new();
        let mut cut = false;
        for _ in 0..count {
            let at = Duration::from_millis(rng.random_range(500..faults_end.as_millis() as u64));
            let d = rng.random_range(0..n);
            let fault = match rng.random_range(0..100) {
                0..18 => Fault::Crash(d),
                18..26 => Fault::Restart(d),
                26..40 => Fault::Pause(d, Duration::from_millis(rng.random_range(50..3000))),
                40..52 => {
                    cut = true;
                    let k = rng.random_range(1..n.max(2));
                    let mut side: Vec<usize> = (0..n).collect();
                    for i in (1..n).rev() {
                        let j = rng.random_range(0..=i);
                        side.swap(i, j);
                    }
                    side.truncate(k);
                    side.sort_unstable();
                    Fault::Partition {
                        side,
                        with_store: rng.random_bool(0.3),
                    }
                }
                52..58 if cut => Fault::Heal,
                52..58 => Fault::Loss(rng.random_range(10..300)),
                58..72 => Fault::SetScore(
                    d,
                    if mode < 15 && rng.random_bool(0.5) {
                        Score::new(rng.random_range(1..=255))
                    } else {
                        random_score(&mut rng)
                    },
                ),
                72..82 => Fault::SetOnline(d, rng.random_bool(0.5)),
                82..90 => Fault::Trigger(d),
                _ => Fault::Shutdown(d),
            };
            faults.push((at, fault));
        }
        // Show holds come from their own stream of the seed, so the faults
        // above (and every seed's schedule before holds existed) stay as
        // they were.
        faults.extend(holds(seed, n, faults_end));
        faults.sort_by_key(|(at, _)| *at);
        let lo = Duration::from_micros(rng.random_range(100..2000));
        let hi = lo + Duration::from_micros(rng.random_range(0..8000));
        Plan {
            seed,
            macs,
            scores,
            drift_ppm,
            clock_offset,
            start_at,
            preempt_delay,
            faults,
            faults_end,
            delay: (lo, hi),
            client_heartbeat: crate::world::client_heartbeat(),
        }
    }
}

/// A third of the plans hold the group for a while or two (the end of the
/// faults lifts a hold still on), with an operator trigger, forced or not,
/// now and then during it.
fn holds(seed: u64, n: usize, faults_end: Duration) -> Vec<(Duration, Fault)> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x484f_4c44_5f53_494d); // "HOLD_SIM"
    let mut out = Vec::new();
    if !rng.random_bool(1.0 / 3.0) {
        return out;
    }
    let end = faults_end.as_millis() as u64;
    for _ in 0..rng.random_range(1..=2) {
        let on = rng.random_range(0..end.saturating_sub(500).max(1));
        out.push((Duration::from_millis(on), Fault::Hold(true)));
        let off = on + rng.random_range(200..4000);
        if off < end {
            out.push((Duration::from_millis(off), Fault::Hold(false)));
        }
        if rng.random_bool(0.5) {
            let at = Duration::from_millis(rng.random_range(on..off.min(end).max(on + 1)));
            let d = rng.random_range(0..n);
            let trigger = if rng.random_bool(0.5) {
                Fault::Trigger(d)
            } else {
                Fault::ForcedTrigger(d)
            };
            out.push((at, trigger));
        }
    }
    out
}

fn random_score(rng: &mut StdRng) -> Score {
    match rng.random_range(0..10) {
        0..2 => Score::CLIENT_ONLY,
        // A few shared values so MACs must break ties.
        2..5 => Score::new([50, 100, 150][rng.random_range(0..3)]),
        _ => Score::new(rng.random_range(1..=255)),
    }
}
