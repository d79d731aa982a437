//! S2 over seeds: the project-sync serving core on every simulated device,
//! writers submitting changes through failovers, and a checker with teeth.
//!
//! Every seed of `simulation.rs` already runs project-sync and checks S2 at
//! each head write and acknowledgement; these tests show the run does commit
//! changes, and that a takeover without a fence, a head written without
//! compare-and-set, or a peer-lost verdict acted on however stale, is caught.

#![allow(clippy::unwrap_used)]

use understudy_sim::{Mutation, Plan, run_mutated, run_seed};

/// Runs the first 400 seeds with the mutation `name` (see
/// [`Mutation::named`]) and asserts one fails, on an invariant whose
/// message starts with one of `caught_by`; prints the first failure.
fn assert_caught(name: &str, caught_by: &[&str]) {
    let mutation = Mutation::named(name).unwrap();
    let failure = (0..400u64)
        .find_map(|seed| run_mutated(Plan::from_seed(seed), mutation).err())
        .unwrap_or_else(|| panic!("400 seeds with {name} and no invariant broken"));
    println!("{failure}");
    assert_eq!(failure.mutation, Some(name), "{failure}");
    assert!(
        caught_by.iter().any(|p| failure.what.starts_with(p)),
        "{name} caught by an unexpected check: {failure}"
    );
}

#[test]
fn writers_get_changes_acknowledged_through_the_faults() {
    let acked: Vec<u64> = (0..40)
        .map(|seed| run_seed(seed).unwrap().changes_acknowledged)
        .collect();
    let with_changes = acked.iter().filter(|n| **n > 0).count();
    println!("acknowledged per seed: {acked:?}");
    assert!(with_changes >= 30, "{acked:?}");
}

#[test]
fn a_takeover_without_a_fence_is_caught() {
    assert_caught("skip_fence", &["S1", "S2"]);
}

#[test]
fn a_head_written_without_compare_and_set_is_caught() {
    assert_caught("blind_head_writes", &["S1", "S2"]);
}

#[test]
fn a_stale_verdict_acted_on_is_caught() {
    assert_caught("undated_notices", &["needless takeover", "S1"]);
}

/// Replays one seed with a mutation:
/// `UNDERSTUDY_SEED=350 UNDERSTUDY_MUTATION=skip_fence cargo test -p understudy-sim --test project replay_one_mutated_seed -- --nocapture`
/// (`undated_notices`, `blind_renewals`, `skip_fence` or `blind_head_writes`).
#[test]
fn replay_one_mutated_seed() {
    let (Ok(seed), Ok(which)) = (
        std::env::var("UNDERSTUDY_SEED"),
        std::env::var("UNDERSTUDY_MUTATION"),
    ) else {
        return;
    };
    let seed: u64 = seed.parse().expect("UNDERSTUDY_SEED must be a number");
    let mutation = Mutation::named(&which).unwrap_or_else(|| {
        panic!(
            "UNDERSTUDY_MUTATION {which:?}: expected undated_notices, blind_renewals, skip_fence or blind_head_writes"
        )
    });
    match run_mutated(Plan::from_seed(seed), mutation) {
        Ok(report) => println!("seed={seed} {which} passed: {report:?}"),
        Err(f) => panic!("{f}"),
    }
}
