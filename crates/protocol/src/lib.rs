//! The shared vocabulary of understudy.
//!
//! Every service speaks in these types: names that cannot hold a character a
//! NATS subject would choke on, scores that cannot leave 0–255 (B3),
//! MAC addresses ordered as 48-bit numbers (B4), terms that only grow (S1),
//! the JSON messages that travel on the bus, each with a schema version, the
//! roster reply ([`roster`]) and every subject ([`subjects`]).
//!
//! Validation happens at the edge — `FromStr`, `TryFrom` and `Deserialize` —
//! so code further in can trust a value once it has the type.

pub mod device_setting;
mod error;
pub mod grpc;
pub mod hold;
mod ids;
pub mod ledger;
mod mac;
pub mod messages;
pub mod roster;
mod score;
mod status;
pub mod subjects;
mod term;
pub mod timing;

pub use error::ProtocolError;
pub use ids::{DeviceId, GroupName, InstanceId};
pub use mac::Mac;
pub use messages::{ControlErrorCode, SCHEMA_VERSION};
pub use score::Score;
pub use status::{Problem, Role, StatusColour};
pub use term::Term;
