//! Scores: an integer 0–255 per device (B3). 0 means client only.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ProtocolError;

/// A device's election score. The highest live, online, non-zero score is the
/// server (B4); [`Score::CLIENT_ONLY`] never is (B3, B7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Score(u8);

impl Score {
    /// Score 0: this device is never a candidate.
    pub const CLIENT_ONLY: Score = Score(0);
    /// The highest score, 255.
    pub const MAX: Score = Score(255);

    /// Wraps a score; every `u8` is a valid score.
    pub const fn new(n: u8) -> Score {
        Score(n)
    }

    /// The score as a number.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// Whether this device may ever be elected (score ≠ 0).
    pub const fn is_candidate(self) -> bool {
        self.0 != 0
    }
}

impl TryFrom<i64> for Score {
    type Error = ProtocolError;
    fn try_from(n: i64) -> Result<Self, Self::Error> {
        u8::try_from(n)
            .map(Score)
            .map_err(|_| ProtocolError::ScoreOutOfRange {
                value: n.to_string(),
            })
    }
}

impl FromStr for Score {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        match trimmed.parse::<i64>() {
            Ok(n) => Score::try_from(n),
            Err(_) => Err(ProtocolError::ScoreOutOfRange {
                value: format!("{s:?} (not an integer)"),
            }),
        }
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Score {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.0)
    }
}

impl<'de> Deserialize<'de> for Score {
    /// Only a JSON integer 0–255 is a score: `256`, `-1`, `1.5` and `"ten"` are
    /// refused with a message that says so.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ScoreVisitor;
        impl Visitor<'_> for ScoreVisitor {
            type Value = Score;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a score, an integer 0–255")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Score, E> {
                u8::try_from(v)
                    .map(Score)
                    .map_err(|_| E::custom(format!("score {v} is out of range 0–255")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Score, E> {
                Score::try_from(v).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Score, E> {
                Err(E::custom(format!(
                    "score {v} is not an integer (expected 0–255)"
                )))
            }
        }
        d.deserialize_any(ScoreVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_whole_range() {
        assert_eq!("0".parse::<Score>(), Ok(Score::CLIENT_ONLY));
        assert_eq!("255".parse::<Score>(), Ok(Score::MAX));
        assert_eq!(
            serde_json::from_str::<Score>("200").unwrap(),
            Score::new(200)
        );
        assert!(!Score::CLIENT_ONLY.is_candidate());
        assert!(Score::new(1).is_candidate());
    }

    #[test]
    fn refuses_anything_else_with_a_clear_message() {
        assert_eq!(
            "256".parse::<Score>().unwrap_err().to_string(),
            "score 256 is out of range 0–255"
        );
        assert!("-1".parse::<Score>().is_err());
        assert!(
            "ten"
                .parse::<Score>()
                .unwrap_err()
                .to_string()
                .contains("not an integer")
        );
        for (json, needle) in [
            ("256", "out of range"),
            ("-1", "out of range"),
            ("1.5", "not an integer"),
            ("\"ten\"", "integer 0–255"),
            ("null", "integer 0–255"),
        ] {
            let err = serde_json::from_str::<Score>(json).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
