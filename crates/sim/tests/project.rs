//! S2 over seeds: the project-sync serving core on every simulated device,
//! writers submitting changes through failovers, and a checker with teeth.
//!
//! Every seed of `simulation.rs` already runs project-sync and checks S2 at
//! each head write and acknowledgement; these tests show the run does commit
//! changes, and that a takeover without a fence, or a head written without
//! compare-and-set, is caught.

#![allow(clippy::unwrap_used)]

use understudy_sim::{Mutation, Plan, run_mutated, run_seed};

/// The first failing seed under `mutation` among `seeds`, printed.
fn first_caught(
    mutation: Mutation,
    seeds: std::ops::Range<u64>,
) -> Option<understudy_sim::Failure> {
    let failure = seeds
        .clone()
        .find_map(|seed| run_mutated(Plan::from_seed(seed), mutation).err())?;
    println!("{failure}");
    Some(failure)
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
    let mutation = Mutation {
        skip_fence: true,
        ..Mutation::default()
    };
    let failure =
        first_caught(mutation, 0..400).expect("400 seeds without fencing and no invariant broken");
    assert!(
        failure.what.starts_with("S1") || failure.what.starts_with("S2"),
        "{failure}"
    );
}

#[test]
fn a_head_written_without_compare_and_set_is_caught() {
    let mutation = Mutation {
        blind_head_writes: true,
        ..Mutation::default()
    };
    let failure = first_caught(mutation, 0..400)
        .expect("400 seeds with blind head writes and no invariant broken");
    assert!(
        failure.what.starts_with("S1") || failure.what.starts_with("S2"),
        "{failure}"
    );
}

#[test]
fn a_stale_verdict_acted_on_is_caught() {
    let mutation = Mutation {
        undated_notices: true,
        ..Mutation::default()
    };
    let failure = first_caught(mutation, 0..400)
        .expect("400 seeds without the stale-verdict filter and no invariant broken");
    assert!(
        failure.what.starts_with("needless takeover") || failure.what.starts_with("S1"),
        "{failure}"
    );
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
