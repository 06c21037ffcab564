//! SIP: transports, transactions and dialogs on rsipstack (pinned), and our
//! own decisions on top (routing a request, answering what the parser
//! refuses, digest auth, the registrar). Only this module names rsipstack,
//! so its churn stays here.

pub mod accounts;
pub mod digest;
#[doc(hidden)]
pub mod fuzz;
pub mod guard;
pub mod registrar;
pub mod request;
pub mod routing;
pub mod runtime;
pub mod salvage;
mod stack;
pub mod unconfirmed;

pub use accounts::RegistrationEvent;
pub use registrar::Binding;
pub use stack::{
    AgentLeg, CallKind, DialogName, IncomingCall, ServerLeg, SipAddrs, SipError, SipHandle,
    SipStack,
};
