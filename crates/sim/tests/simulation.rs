//! Thousands of seeded fault schedules against the real election cores.
//!
//! `cargo test` runs [`SEEDS`] seeds split over the machine's cores. A failure
//! prints `seed=… step=…`, the last events, and the command that replays it:
//! `UNDERSTUDY_SEED=<seed> cargo test -p understudy-sim --test simulation replay_one_seed -- --nocapture`.

#![allow(clippy::unwrap_used)]

use std::thread;
use std::time::Duration;

use understudy_sim::{Failure, Plan, run_plan, run_seed};

/// How many seeds `cargo test` runs.
const SEEDS: u64 = 2_000;

/// How many of the same seeds run again with clients beating every 100 ms
/// (the default before 2026-12-02, still a supported setting).
const SEEDS_AT_100_MS: u64 = 200;

fn run_range(seeds: std::ops::Range<u64>, client: Option<Duration>) -> Vec<Failure> {
    seeds
        .filter_map(|s| match client {
            None => run_seed(s).err(),
            Some(client_heartbeat) => run_plan(
                Plan {
                    client_heartbeat,
                    ..Plan::from_seed(s)
                },
                false,
            )
            .err(),
        })
        .collect()
}

fn run_many(first: u64, count: u64, client: Option<Duration>) {
    let threads = thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let chunk = count.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let lo = first + t * chunk;
            let hi = (lo + chunk).min(first + count);
            thread::spawn(move || run_range(lo..hi, client))
        })
        .collect();
    let mut failures: Vec<Failure> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect();
    failures.sort_by_key(|f| f.seed);
    if let Some(first) = failures.first() {
        panic!(
            "{} of {count} seeds broke an invariant; the first:\n{first}\nall failing seeds: {:?}",
            failures.len(),
            failures.iter().map(|f| f.seed).collect::<Vec<_>>()
        );
    }
}

#[test]
fn two_thousand_seeded_fault_schedules_hold_every_invariant() {
    run_many(0, SEEDS, None);
}

/// Clients may still be set to beat as fast as the server: the first
/// [`SEEDS_AT_100_MS`] seeds hold every invariant that way too.
#[test]
fn seeded_fault_schedules_hold_every_invariant_with_clients_at_100_ms() {
    run_many(0, SEEDS_AT_100_MS, Some(Duration::from_millis(100)));
}

/// Seeds beyond [`SEEDS`] that once broke an invariant, each with what it
/// found; they run on every `cargo test`.
const FOUND_BY_SOAK: &[(u64, u64, &str)] = &[
    (
        181_049,
        100,
        "a device back from a pause got the goodbye of the server's old process \
         with the lease of its new one, and deposed it (needless takeover)",
    ),
    (
        7_975,
        1_000,
        "a device back from a cut-off heard the new server's fresh beats, then \
         its own loss verdict made while away, and deposed it (needless takeover)",
    ),
    (
        30_566,
        1_000,
        "a device back from a cut-off deposed a live server it had declared lost \
         before the cut-off, though the server had renewed its lease since",
    ),
    (
        50_535,
        1_000,
        "the same as 30566: a verdict from before a 3.4 s cut-off, the lease \
         renewed twelve times since",
    ),
    (68_531, 1_000, "the same as 30566, after a 2.4 s cut-off"),
    (
        161_759,
        1_000,
        "a device back from a cut-off got its own 'joined' verdict about the \
         old process of a device that had restarted since and now served; the \
         old process's 3 s old beat was fed and made the server look replaced",
    ),
    (
        198_737,
        1_000,
        "a device cut off past the unheard-holder wait saw, back on the bus, \
         the server's renewed lease and deposed it on the old wait",
    ),
];

/// Each seed a soak once failed, with the clients' cadence it failed at.
#[test]
fn seeds_the_soak_once_failed_hold_every_invariant() {
    for (seed, client_ms, found) in FOUND_BY_SOAK {
        let plan = Plan {
            client_heartbeat: Duration::from_millis(*client_ms),
            ..Plan::from_seed(*seed)
        };
        if let Err(f) = run_plan(plan, false) {
            panic!(
                "seed {seed} (clients every {client_ms} ms) broke again (it once found: {found}):\n{f}"
            );
        }
    }
}

#[test]
fn replay_one_seed() {
    let Ok(seed) = std::env::var("UNDERSTUDY_SEED") else {
        return;
    };
    let seed: u64 = seed.parse().expect("UNDERSTUDY_SEED must be a number");
    match run_seed(seed) {
        Ok(report) => println!("seed={seed} passed: {report:?}"),
        Err(f) => panic!("{f}"),
    }
}

/// The checker has teeth: a store whose renewals skip the revision check (a
/// renewal without compare-and-set) must be caught by S1 on some seed.
#[test]
fn a_renewal_without_compare_and_set_is_caught() {
    let caught = (0..400u64).find_map(|seed| {
        understudy_sim::run_plan(understudy_sim::Plan::from_seed(seed), true).err()
    });
    let failure = caught.expect("400 seeds with blind renewals and no invariant broken");
    println!("{failure}");
    assert!(failure.what.starts_with("S1"), "{failure}");
}

/// The model makes the stale-verdict filter necessary: devices cut off from
/// the bus long enough to lose their peers get those verdicts on coming
/// back, and the input stage ignores them. (With the filter broken, the
/// needless-takeover check fails on such seeds.)
#[test]
fn devices_back_on_the_bus_receive_stale_verdicts_and_ignore_them() {
    let ignored: u64 = (0..50u64)
        .filter_map(|seed| run_seed(seed).ok())
        .map(|r| r.stale_verdicts_ignored)
        .sum();
    assert!(
        ignored > 0,
        "50 seeds and no stale verdict: the model lost its cut-offs"
    );
}
