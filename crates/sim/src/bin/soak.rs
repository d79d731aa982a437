//! Long soak of the simulator: `cargo run --release -p understudy-sim --bin soak -- [SEEDS] [FIRST]`.
//!
//! Runs SEEDS seeds (default 200 000) from FIRST (default 0) on every core and
//! prints the figures; exits non-zero with the first failure's replay line.
//! `UNDERSTUDY_SIM_CLIENT_HEARTBEAT_MS` sets the clients' cadence (default:
//! the product's).

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use understudy_sim::{Failure, client_heartbeat, run_seed};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let count: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let first: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let threads = thread::available_parallelism().map_or(2, |n| n.get());
    let next = Arc::new(AtomicU64::new(first));
    let failures: Arc<Mutex<Vec<Failure>>> = Arc::default();
    let steps = Arc::new(AtomicU64::new(0));
    let terms = Arc::new(AtomicU64::new(0));
    let stale = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (next, failures, steps, terms, stale, acked, done) = (
                next.clone(),
                failures.clone(),
                steps.clone(),
                terms.clone(),
                stale.clone(),
                acked.clone(),
                done.clone(),
            );
            thread::spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= first + count {
                        break;
                    }
                    match run_seed(seed) {
                        Ok(r) => {
                            steps.fetch_add(r.steps, Ordering::Relaxed);
                            terms.fetch_add(r.terms_granted as u64, Ordering::Relaxed);
                            stale.fetch_add(r.stale_verdicts_ignored, Ordering::Relaxed);
                            acked.fetch_add(r.changes_acknowledged, Ordering::Relaxed);
                        }
                        Err(f) => {
                            // Said at once: a long soak stopped early still
                            // names what it found.
                            eprintln!(
                                "soak: seed {} FAILED (replay: UNDERSTUDY_SIM_CLIENT_HEARTBEAT_MS={} UNDERSTUDY_SEED={} cargo test -p understudy-sim --test simulation replay_one_seed -- --nocapture)",
                                f.seed,
                                client_heartbeat().as_millis(),
                                f.seed
                            );
                            if let Ok(mut v) = failures.lock() {
                                v.push(f);
                            }
                        }
                    }
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n % 10_000 == 0 {
                        eprintln!(
                            "soak: {n} of {count} seeds in {:.0} s",
                            started.elapsed().as_secs_f64()
                        );
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let secs = started.elapsed().as_secs_f64();
    let mut failures = failures.lock().map(|v| v.clone()).unwrap_or_default();
    failures.sort_by_key(|f| f.seed);
    println!(
        "soak: {count} seeds from {first} with clients beating every {:?}, in {secs:.1} s on {threads} threads ({:.0} seeds/s), {} steps, {} terms granted, {} stale verdicts ignored, {} project changes acknowledged",
        client_heartbeat(),
        count as f64 / secs,
        steps.load(Ordering::Relaxed),
        terms.load(Ordering::Relaxed),
        stale.load(Ordering::Relaxed),
        acked.load(Ordering::Relaxed)
    );
    match failures.first() {
        None => {
            println!("{count} passed, 0 failed");
            ExitCode::SUCCESS
        }
        Some(f) => {
            println!(
                "{} passed, {} failed",
                count - failures.len() as u64,
                failures.len()
            );
            println!("first failure:\n{f}");
            println!(
                "failing seeds: {:?}",
                failures.iter().map(|f| f.seed).take(50).collect::<Vec<_>>()
            );
            ExitCode::FAILURE
        }
    }
}
