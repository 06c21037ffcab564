//! Identifiers. Newtypes so a call id is never passed where an incident id
//! belongs.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A newtype over a String: compared, hashed, serialized and shown as
/// the text it holds.
macro_rules! text_type {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// An id we make: a new UUID each time.
macro_rules! id_type {
    ($name:ident, $doc:literal) => {
        text_type!($name, $doc);

        impl $name {
            pub fn new() -> Self {
                $name(uuid::Uuid::new_v4().to_string())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }
    };
}

id_type!(
    CallId,
    "Our id of one call (not the SIP Call-ID, which the caller chose)."
);
id_type!(IncidentId, "Id of an incident record.");
id_type!(
    TransferId,
    "Id of one warm transfer of a call to an agency's dispatchers."
);

/// A name from the configuration: what it calls an agent or a queue.
macro_rules! name_type {
    ($name:ident, $doc:literal) => {
        text_type!($name, $doc);

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_string())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }
    };
}

name_type!(
    AgentId,
    "An agent (call-taker or dispatcher) by their configured id; for an overflow, the SIP target that stands in for one."
);
name_type!(QueueId, "A queue by its configured name.");
