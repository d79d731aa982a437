//! Ranking (B4): the highest score wins; a tie goes to the lower MAC
//! read as a 48-bit number; score 0 never wins (B3, B7).
//!
//! The order is total: two distinct devices with the same score and the same
//! MAC (a misconfiguration) are ordered by device id, so every device computes
//! the same winner from the same view, whatever order it saw the peers in.

use std::cmp::Ordering;

use understudy_protocol::ledger::LedgerRule;
use understudy_protocol::{DeviceId, Mac, Score};

/// A device as the election ranks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The device.
    pub device: DeviceId,
    /// Its MAC, the tie-breaker.
    pub mac: Mac,
    /// Its score.
    pub score: Score,
}

impl Candidate {
    /// Compares by rank: `Greater` means `self` ranks above `other`.
    pub fn rank_cmp(&self, other: &Candidate) -> Ordering {
        self.score
            .cmp(&other.score)
            .then_with(|| other.mac.cmp(&self.mac))
            .then_with(|| other.device.cmp(&self.device))
    }

    /// Whether `self` ranks above `other`.
    pub fn outranks(&self, other: &Candidate) -> bool {
        self.rank_cmp(other) == Ordering::Greater
    }
}

/// The rightful server among `candidates`: the best ranked with a non-zero
/// score, or `None` when nobody is viable (B7).
pub fn winner<'a, I>(candidates: I) -> Option<&'a Candidate>
where
    I: IntoIterator<Item = &'a Candidate>,
{
    candidates
        .into_iter()
        .filter(|c| c.score.is_candidate())
        .max_by(|a, b| a.rank_cmp(b))
}

/// The rule by which `winner` ranks above every candidate in `others` (the
/// other online devices with a non-zero score), for the election ledger:
/// alone, by score, by the lower MAC at equal score, or by device id at
/// equal score and MAC. When some other candidate outranks the winner (the
/// winner was named by a hand-over), [`LedgerRule::NamedSuccessor`].
pub fn deciding_rule(winner: &Candidate, others: &[Candidate]) -> LedgerRule {
    let Some(runner_up) = others
        .iter()
        .filter(|c| c.device != winner.device && c.score.is_candidate())
        .max_by(|a, b| a.rank_cmp(b))
    else {
        return LedgerRule::OnlyCandidate;
    };
    if runner_up.outranks(winner) {
        LedgerRule::NamedSuccessor
    } else if winner.score != runner_up.score {
        LedgerRule::HighestScore
    } else if winner.mac != runner_up.mac {
        LedgerRule::LowerMac
    } else {
        LedgerRule::DeviceId
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cand(id: &str, mac: u64, score: u8) -> Candidate {
        Candidate {
            device: id.parse().unwrap(),
            mac: Mac::from_u64(mac).unwrap(),
            score: Score::new(score),
        }
    }

    #[test]
    fn higher_score_wins() {
        let c = [cand("a", 1, 10), cand("b", 2, 200), cand("c", 3, 100)];
        assert_eq!(winner(&c).unwrap().device.as_str(), "b");
    }

    #[test]
    fn lower_mac_breaks_a_tie() {
        let c = [cand("a", 0x0200, 50), cand("b", 0x0002, 50)];
        assert_eq!(winner(&c).unwrap().device.as_str(), "b");
    }

    #[test]
    fn the_deciding_rule_names_what_separated_the_winner() {
        let w = cand("w", 0x10, 100);
        assert_eq!(deciding_rule(&w, &[]), LedgerRule::OnlyCandidate);
        assert_eq!(
            deciding_rule(&w, &[cand("z", 0x01, 0)]),
            LedgerRule::OnlyCandidate,
            "a score-0 device is no candidate"
        );
        assert_eq!(
            deciding_rule(&w, &[cand("a", 0x01, 50), cand("b", 0x02, 99)]),
            LedgerRule::HighestScore
        );
        assert_eq!(
            deciding_rule(&w, &[cand("a", 0x20, 100), cand("b", 0x02, 99)]),
            LedgerRule::LowerMac
        );
        assert_eq!(
            deciding_rule(&w, &[cand("x", 0x10, 100)]),
            LedgerRule::DeviceId
        );
        assert_eq!(
            deciding_rule(&w, &[cand("a", 0x01, 200)]),
            LedgerRule::NamedSuccessor
        );
    }

    #[test]
    fn zero_scores_never_elect() {
        let c = [cand("a", 1, 0), cand("b", 2, 0)];
        assert_eq!(winner(&c), None);
        assert_eq!(winner(&[]), None);
    }

    #[test]
    fn manual_assignment_elects_the_only_non_zero_device() {
        let c = [cand("a", 1, 0), cand("b", 9, 1), cand("c", 2, 0)];
        assert_eq!(winner(&c).unwrap().device.as_str(), "b");
    }

    fn arb_candidates() -> impl Strategy<Value = Vec<Candidate>> {
        prop::collection::vec((0u64..8, any::<u8>()), 0..12).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (mac, score))| cand(&format!("d{i}"), mac, score))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn ranking_is_a_total_order(c in arb_candidates()) {
            for a in &c {
                prop_assert_eq!(a.rank_cmp(a), Ordering::Equal);
                for b in &c {
                    prop_assert_eq!(a.rank_cmp(b), b.rank_cmp(a).reverse());
                    if a.device != b.device {
                        prop_assert_ne!(a.rank_cmp(b), Ordering::Equal);
                    }
                    for x in &c {
                        if a.outranks(b) && b.outranks(x) {
                            prop_assert!(a.outranks(x));
                        }
                    }
                }
            }
        }

        #[test]
        fn same_winner_whatever_the_input_order(c in arb_candidates(), seed in any::<u64>()) {
            let mut shuffled = c.clone();
            // A deterministic shuffle driven by the seed.
            let n = shuffled.len();
            let mut s = seed;
            for i in (1..n).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let j = (s >> 33) as usize % (i + 1);
                shuffled.swap(i, j);
            }
            prop_assert_eq!(winner(&c), winner(&shuffled));
        }

        #[test]
        fn the_winner_is_viable_and_unbeaten(c in arb_candidates()) {
            match winner(&c) {
                None => prop_assert!(c.iter().all(|x| !x.score.is_candidate())),
                Some(w) => {
                    prop_assert!(w.score.is_candidate());
                    for x in &c {
                        prop_assert!(x.score <= w.score, "higher score {:?} lost to {:?}", x, w);
                        if x.score == w.score && x.device != w.device {
                            prop_assert!(x.mac >= w.mac, "lower MAC {:?} lost a tie to {:?}", x, w);
                        }
                    }
                }
            }
        }

        #[test]
        fn mac_decides_only_ties(a in arb_candidates()) {
            for x in &a {
                for y in &a {
                    if x.score > y.score {
                        prop_assert!(x.outranks(y));
                    }
                }
            }
        }
    }
}
