//! Decisions about requests that arrive outside a dialog. Pure: the request
//! is summarized into plain data first, so this is tested without sockets.

use crate::config::{dialplan::DialedTarget, AgencyConfig, Dialplan, Route};

/// What to do with a new INVITE.
#[derive(Debug, Clone, PartialEq)]
pub enum InviteDecision {
    /// Take the call into this route's queue.
    Accept(Box<Route>),
    Reject {
        code: u16,
        reason: &'static str,
    },
}

/// Routes an INVITE. `trunk` is the trusted trunk it came from, if any;
/// emergency routes need one (RFC 6881 practice: no authentication for
/// emergency calls from trusted sources). Anything else needs the digest
/// authentication that arrives with agent accounts, so it is refused.
pub fn route_invite(
    dialed: Option<&DialedTarget>,
    trunk: Option<&str>,
    plan: &Dialplan,
) -> InviteDecision {
    let Some(route) = dialed.and_then(|d| plan.lookup(d)) else {
        return InviteDecision::Reject {
            code: 404,
            reason: "Not Found",
        };
    };
    if !route.emergency || trunk.is_none() {
        return InviteDecision::Reject {
            code: 403,
            reason: "Forbidden",
        };
    }
    InviteDecision::Accept(Box::new(route.clone()))
}

/// Codes an agent dials from the softphone to change state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureCode {
    /// `*11`: log in / ready for calls.
    Ready,
    /// `*12`: not ready (break).
    NotReady,
    /// `*13`: log out.
    LoggedOut,
}

pub fn feature_code(dialed: Option<&DialedTarget>) -> Option<FeatureCode> {
    match dialed? {
        DialedTarget::Number(n) => match n.as_str() {
            "*11" => Some(FeatureCode::Ready),
            "*12" => Some(FeatureCode::NotReady),
            "*13" => Some(FeatureCode::LoggedOut),
            _ => None,
        },
        DialedTarget::Urn(_) => None,
    }
}

/// What an authenticated agent's INVITE asks for, when it is not a call
/// into a dialplan route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentRequest {
    /// A state change (`*11`, `*12`, `*13`).
    Feature(FeatureCode),
    /// A consultation with an agency's dispatchers (`sip:damkar@siaga`),
    /// the first half of an attended transfer (RFC 5589 §7): the phone
    /// holds its call, dials the agency, then REFERs the held call with
    /// Replaces naming this consultation.
    Consult { agency: String },
}

pub fn agent_request(
    dialed: Option<&DialedTarget>,
    agencies: &[AgencyConfig],
) -> Option<AgentRequest> {
    if let Some(code) = feature_code(dialed) {
        return Some(AgentRequest::Feature(code));
    }
    match dialed? {
        DialedTarget::Number(user) => crate::config::transfer_agency(user, agencies)
            .map(|agency| AgentRequest::Consult { agency }),
        DialedTarget::Urn(_) => None,
    }
}

/// What to do with a request outside a dialog, by method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodDecision {
    Invite,
    /// An agent's phone registering.
    Register,
    /// Answer 200 with our capabilities.
    Options,
    /// Answer with this status (405 carries an Allow header).
    Reply(u16),
    /// ACK of a non-2xx or of nothing: nothing to answer.
    Absorb,
}

/// Methods we accept, for Allow headers.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REGISTER";

pub fn out_of_dialog(method: &str) -> MethodDecision {
    match method {
        "INVITE" => MethodDecision::Invite,
        "OPTIONS" => MethodDecision::Options,
        "ACK" => MethodDecision::Absorb,
        // A BYE or in-dialog request for a dialog we do not know.
        "BYE" | "INFO" | "UPDATE" | "PRACK" => MethodDecision::Reply(481),
        // Known SIP methods this server does not offer (yet).
        "REGISTER" => MethodDecision::Register,
        "SUBSCRIBE" | "NOTIFY" | "PUBLISH" | "MESSAGE" | "REFER" => MethodDecision::Reply(405),
        _ => MethodDecision::Reply(501),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::PathBuf;

    fn plan() -> Dialplan {
        Config::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")))
            .unwrap()
            .dialplan
    }

    fn accept_queue(d: InviteDecision) -> String {
        match d {
            InviteDecision::Accept(r) => r.queue,
            other => panic!("expected accept, got {other:?}"),
        }
    }

    #[test]
    fn emergency_numbers_from_trunk_are_accepted() {
        let p = plan();
        let t = Some("trunk");
        assert_eq!(
            accept_queue(route_invite(Some(&DialedTarget::number("112")), t, &p)),
            "ntpd-112"
        );
        assert_eq!(
            accept_queue(route_invite(Some(&DialedTarget::number("119")), t, &p)),
            "psc-119"
        );
        assert_eq!(
            accept_queue(route_invite(
                Some(&DialedTarget::urn("urn:service:sos")),
                t,
                &p
            )),
            "ntpd-112"
        );
        assert_eq!(
            accept_queue(route_invite(
                Some(&DialedTarget::urn("urn:service:sos.fire")),
                t,
                &p
            )),
            "ntpd-112"
        );
        assert_eq!(
            accept_queue(route_invite(
                Some(&DialedTarget::urn("urn:service:sos.ambulance")),
                t,
                &p
            )),
            "psc-119"
        );
    }

    #[test]
    fn refusals() {
        let p = plan();
        let r = |d: DialedTarget, t| route_invite(Some(&d), t, &p);
        assert_eq!(
            r(DialedTarget::number("0215551234"), Some("t")),
            InviteDecision::Reject {
                code: 404,
                reason: "Not Found"
            }
        );
        assert_eq!(
            r(DialedTarget::number("112"), None),
            InviteDecision::Reject {
                code: 403,
                reason: "Forbidden"
            }
        );
        assert_eq!(
            route_invite(None, Some("t"), &p),
            InviteDecision::Reject {
                code: 404,
                reason: "Not Found"
            }
        );
    }

    #[test]
    fn feature_codes() {
        assert_eq!(
            feature_code(Some(&DialedTarget::number("*11"))),
            Some(FeatureCode::Ready)
        );
        assert_eq!(
            feature_code(Some(&DialedTarget::number("*12"))),
            Some(FeatureCode::NotReady)
        );
        assert_eq!(
            feature_code(Some(&DialedTarget::number("*13"))),
            Some(FeatureCode::LoggedOut)
        );
        assert_eq!(feature_code(Some(&DialedTarget::number("112"))), None);
        assert_eq!(feature_code(None), None);
    }

    #[test]
    fn agents_consult_agencies_with_a_dispatcher_queue() {
        let config = Config::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR"))).unwrap();
        let a = &config.agencies;
        let ask = |n: &str| agent_request(Some(&DialedTarget::number(n)), a);
        assert_eq!(
            ask("damkar"),
            Some(AgentRequest::Consult {
                agency: "damkar".into()
            })
        );
        assert_eq!(ask("*11"), Some(AgentRequest::Feature(FeatureCode::Ready)));
        // An agency without a dispatcher queue takes no transfers.
        assert_eq!(ask("polri"), None);
        assert_eq!(ask("nobody"), None);
        assert_eq!(ask("112"), None);
        assert_eq!(agent_request(None, a), None);
        assert_eq!(
            agent_request(Some(&DialedTarget::urn("urn:service:sos")), a),
            None
        );
    }

    #[test]
    fn methods() {
        assert_eq!(out_of_dialog("INVITE"), MethodDecision::Invite);
        assert_eq!(out_of_dialog("OPTIONS"), MethodDecision::Options);
        assert_eq!(out_of_dialog("BYE"), MethodDecision::Reply(481));
        assert_eq!(out_of_dialog("SUBSCRIBE"), MethodDecision::Reply(405));
        assert_eq!(out_of_dialog("FOOBAR"), MethodDecision::Reply(501));
        assert_eq!(out_of_dialog("ACK"), MethodDecision::Absorb);
        assert_eq!(out_of_dialog("REGISTER"), MethodDecision::Register);
    }
}
