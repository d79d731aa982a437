//! MAC addresses, the tie-breaker of the election (B4).
//!
//! A MAC is ordered as the 48-bit number it spells, so `00:00:00:00:00:02`
//! ranks before `00:00:00:00:01:00`: the lower number wins a tie.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ProtocolError;

/// A 48-bit MAC address, printed as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mac(u64);

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mac({self})")
    }
}

impl Mac {
    /// The largest MAC, `ff:ff:ff:ff:ff:ff`.
    pub const MAX: Mac = Mac(0xffff_ffff_ffff);

    /// A MAC from the low 48 bits of `n`; `None` if higher bits are set.
    pub const fn from_u64(n: u64) -> Option<Mac> {
        if n > Self::MAX.0 { None } else { Some(Mac(n)) }
    }

    /// The address as a 48-bit number.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// A MAC from its six octets.
    pub fn from_octets(o: [u8; 6]) -> Mac {
        Mac(o.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }
}

impl FromStr for Mac {
    type Err = ProtocolError;
    /// Accepts `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff`, any letter case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ProtocolError::InvalidMac {
            value: s.to_owned(),
        };
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut octets = [0u8; 6];
        let mut parts = s.split(sep);
        for octet in &mut octets {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac::from_octets(octets))
    }
}

impl TryFrom<String> for Mac {
    type Error = ProtocolError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Mac> for String {
    fn from(m: Mac) -> String {
        m.to_string()
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0.to_be_bytes();
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[2], b[3], b[4], b[5], b[6], b[7]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_colon_form() {
        let m: Mac = "AA:bb:0C:dd:ee:0f".parse().unwrap();
        assert_eq!(m.to_string(), "aa:bb:0c:dd:ee:0f");
        assert_eq!(m.as_u64(), 0xaabb0cddee0f);
        assert_eq!("aa-bb-0c-dd-ee-0f".parse::<Mac>(), Ok(m));
    }

    #[test]
    fn rejects_malformed_addresses() {
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:fg",
            "a:bb:cc:dd:ee:ff",
            "aabb.ccdd.eeff",
            "aa:bb-cc:dd:ee:ff",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn orders_as_a_48_bit_number() {
        let a: Mac = "00:00:00:00:00:02".parse().unwrap();
        let b: Mac = "00:00:00:00:01:00".parse().unwrap();
        let c: Mac = "01:00:00:00:00:00".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(Mac::from_u64(1 << 48), None);
    }
}
