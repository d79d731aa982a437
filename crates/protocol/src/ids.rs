//! Names: project groups, devices and process instances.
//!
//! Group names and device ids become tokens of NATS subjects
//! (`understudy.<group>.…`), so they may hold only `[A-Za-z0-9_-]`: no dot, no
//! space, no wildcard. Both are 1–64 characters.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ProtocolError;

const MAX_NAME: usize = 64;

fn check_name(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("it is empty");
    }
    if value.chars().count() > MAX_NAME {
        return Err("it is longer than 64 characters");
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err("only letters, digits, '_' and '-' are allowed");
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $variant:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ProtocolError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                check_name(s).map_err(|reason| ProtocolError::$variant {
                    value: s.to_owned(),
                    reason,
                })?;
                Ok(Self(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = ProtocolError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// The name of a project group: 1–64 of `[A-Za-z0-9_-]`.
    GroupName,
    InvalidGroupName
);
name_type!(
    /// The id of a device, unique within the network: 1–64 of `[A-Za-z0-9_-]`.
    DeviceId,
    InvalidDeviceId
);

/// One run of one process, chosen at random when it starts.
///
/// Two processes that claim the same [`DeviceId`] have different instance ids,
/// which is how a duplicate device id is told from a restart (B2).
/// Written as 16 lowercase hexadecimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceId(u64);

impl InstanceId {
    /// Wraps a number (drivers draw it at random).
    pub const fn new(n: u64) -> Self {
        Self(n)
    }
    /// The number behind the id.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl FromStr for InstanceId {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ProtocolError::InvalidInstanceId {
            value: s.to_owned(),
        };
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        u64::from_str_radix(s, 16).map(Self).map_err(|_| bad())
    }
}

impl TryFrom<String> for InstanceId {
    type Error = ProtocolError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<InstanceId> for String {
    fn from(i: InstanceId) -> String {
        i.to_string()
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_follow_the_subject_rule() {
        assert!("main-stage_1".parse::<GroupName>().is_ok());
        assert!("a".repeat(64).parse::<GroupName>().is_ok());
        for bad in ["", "a.b", "a b", "*", ">", "é", &"a".repeat(65)] {
            let err = bad.parse::<GroupName>().unwrap_err();
            assert!(
                err.to_string().starts_with("group name"),
                "{bad:?} gave {err}"
            );
        }
    }

    #[test]
    fn device_ids_follow_the_subject_rule() {
        assert!("desk-1".parse::<DeviceId>().is_ok());
        let err = "desk.1".parse::<DeviceId>().unwrap_err();
        assert!(err.to_string().contains("only letters"), "{err}");
    }

    #[test]
    fn instance_ids_print_as_sixteen_hex_digits() {
        let id = InstanceId::new(0xabc);
        assert_eq!(id.to_string(), "0000000000000abc");
        assert_eq!("0000000000000abc".parse::<InstanceId>(), Ok(id));
        assert!("xyz".parse::<InstanceId>().is_err());
        assert!("1".repeat(17).parse::<InstanceId>().is_err());
    }
}
