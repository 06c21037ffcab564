//! `GET /api/live`: the panel's WebSocket. The server pushes JSON events
//! (see `crate::live::LiveEvent`), each filtered to what the user may see,
//! after a first `snapshot`. A connection that falls behind the broadcast
//! gets a fresh snapshot instead of the events it missed. The session is
//! checked again every minute: a user logged out or disabled is cut off.

use super::auth::{self, Role, User};
use super::AppState;
use crate::live::LiveEvent;
use crate::store::now_ms;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use std::borrow::Cow;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

pub async fn socket(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    ws.on_upgrade(move |socket| run(s, user, headers, socket))
}

async fn run(s: AppState, user: User, headers: HeaderMap, mut socket: WebSocket) {
    let mut events = s.live.subscribe();
    if send(&mut socket, &snapshot(&s, &user).await).await.is_err() {
        return;
    }
    let mut recheck = tokio::time::interval(Duration::from_secs(60));
    recheck.tick().await;
    // This tab's browser phone, while it is on: (tab id, what to tell it).
    let mut phone: Option<(u64, mpsc::UnboundedReceiver<serde_json::Value>)> = None;
    loop {
        let to_phone = async {
            match phone.as_mut() {
                Some((_, rx)) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => {
                    if let Some(ev) = shown(&user, &ev) {
                        let text = match serde_json::to_string(&*ev) {
                            Ok(t) => t,
                            Err(_) => continue,
                        };
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(user = %user.username, missed, "panel fell behind; fresh snapshot");
                    if send(&mut socket, &snapshot(&s, &user).await).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Closed) => break,
            },
            msg = to_phone => match msg {
                Some(v) => {
                    if send(&mut socket, &v).await.is_err() {
                        break;
                    }
                }
                // Another tab took the phone (it was told why).
                None => phone = None,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if let Some(reply) = phone_message(&s, &user, &mut phone, &text) {
                        if send(&mut socket, &reply).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = recheck.tick() => {
                if !matches!(auth::session_user(&s, &headers).await, Ok(Some(_))) {
                    let _ = send(&mut socket, &serde_json::json!({ "type": "logged_out" })).await;
                    break;
                }
            }
        }
    }
    // A closed or reloaded tab takes its phone with it.
    if let (Some((tab, _)), Some(agent), Some(phones)) =
        (phone, user.agent_id.as_deref(), s.phones.as_ref())
    {
        phones.detach(agent, tab);
    }
}

/// What the panel sends: the browser phone's signalling. The answer, if
/// any, is for this tab alone.
fn phone_message(
    s: &AppState,
    user: &User,
    phone: &mut Option<(u64, mpsc::UnboundedReceiver<serde_json::Value>)>,
    text: &str,
) -> Option<serde_json::Value> {
    let error =
        |message: &str| Some(serde_json::json!({ "type": "phone_error", "message": message }));
    let Ok(msg) = serde_json::from_str::<serde_json::Value>(text) else {
        return error("not JSON");
    };
    let (Some(agent), Some(phones)) = (user.agent_id.as_deref(), s.phones.as_ref()) else {
        return error("Akun ini tidak terhubung ke agen: telepon browser tidak tersedia");
    };
    match msg["type"].as_str().unwrap_or_default() {
        "phone_on" => {
            if phone.is_some() {
                // Already this tab's: nothing changes (no flap to not ready).
                return Some(serde_json::json!({ "type": "phone", "on": true }));
            }
            *phone = Some(phones.attach(agent));
            None
        }
        "phone_off" => {
            if let Some((tab, _)) = phone.take() {
                phones.detach(agent, tab);
            }
            Some(serde_json::json!({ "type": "phone", "on": false, "reason": "off" }))
        }
        _ => match phone.as_ref() {
            Some((tab, _)) => phones
                .from_tab(agent, *tab, &msg)
                .err()
                .and_then(|e| error(&e)),
            None => error("the browser phone is off"),
        },
    }
}

async fn send(socket: &mut WebSocket, v: &serde_json::Value) -> Result<(), axum::Error> {
    socket.send(Message::Text(v.to_string().into())).await
}

/// Everything the user's screen needs to start from.
async fn snapshot(s: &AppState, user: &User) -> serde_json::Value {
    let queues = s.acd.snapshot().await;
    let agents = s.acd.agents().await;
    let my_call = user.agent_id.as_deref().and_then(|a| s.live.bridged_to(a));
    let figures = if user.is(&[Role::Supervisor, Role::Admin]) {
        s.live.figures()
    } else {
        None
    };
    serde_json::json!({
        "type": "snapshot",
        "at": now_ms(),
        "user": user,
        "queues": queues,
        "agents": agents,
        "my_call": my_call,
        "figures": figures,
    })
}

/// What of the broadcast this user may see: the event itself, a part of
/// it, or nothing. The one place that decides a panel's live view; a
/// dispatcher's share is `User::sees_agency`'s, as in the API.
pub fn shown<'e>(user: &User, ev: &'e LiveEvent) -> Option<Cow<'e, LiveEvent>> {
    let everything = user.is(&[Role::Supervisor, Role::Admin]);
    let whole = match ev {
        LiveEvent::Queues { .. } => true,
        LiveEvent::CallBridged(b) => everything || user.agent_id.as_deref() == Some(&b.agent_id),
        LiveEvent::CallEnded { agent_id, .. } => {
            everything || (agent_id.is_some() && user.agent_id == *agent_id)
        }
        LiveEvent::Incident {
            incident,
            previous_agency,
        } => {
            if user.sees_agency(incident.agency.as_deref()) {
                true
            } else if previous_agency.is_some() && user.sees_agency(previous_agency.as_deref()) {
                // The agency it left learns only that it left.
                return Some(Cow::Owned(LiveEvent::IncidentLeft {
                    incident_id: incident.id.clone(),
                }));
            } else {
                false
            }
        }
        LiveEvent::IncidentLeft { .. } => false,
        LiveEvent::Figures(_) => everything,
        LiveEvent::SilentEmergency { agent_id, .. } => {
            everything || (agent_id.is_some() && user.agent_id == *agent_id)
        }
        LiveEvent::CallerVoice { agent_id, .. } => {
            everything || user.agent_id.as_deref() == Some(agent_id)
        }
        LiveEvent::Transfer {
            agent_id,
            agency,
            dispatcher,
            ..
        } => {
            everything
                || (user.agent_id.is_some()
                    && (user.agent_id == *agent_id || user.agent_id == *dispatcher))
                || (user.role == Role::Dispatcher && user.sees_agency(Some(agency)))
        }
    };
    whole.then_some(Cow::Borrowed(ev))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::BridgedCall;
    use crate::store::IncidentRow;

    fn visible(user: &User, ev: &LiveEvent) -> bool {
        shown(user, ev).is_some()
    }

    fn user(role: Role, agent: Option<&str>, agency: Option<&str>) -> User {
        User {
            id: "u".into(),
            username: "u".into(),
            display_name: "U".into(),
            role,
            agency: agency.map(Into::into),
            agent_id: agent.map(Into::into),
        }
    }

    fn incident(agency: Option<&str>) -> IncidentRow {
        IncidentRow {
            id: "i".into(),
            status: "new".into(),
            service: "112".into(),
            caller_number: None,
            location_text: None,
            latitude: None,
            longitude: None,
            geolocation: None,
            prior_incidents: 0,
            recent_incidents: 0,
            created_at: 0,
            category: None,
            priority: None,
            address: None,
            notes: None,
            agency: agency.map(Into::into),
            merged_into: None,
            updated_at: None,
        }
    }

    #[test]
    fn each_role_sees_its_share() {
        let bridged = LiveEvent::CallBridged(BridgedCall {
            call_id: "c".into(),
            incident_id: "i".into(),
            agent_id: "ct-01".into(),
            caller_number: None,
            location: None,
            latitude: None,
            longitude: None,
            service: "112".into(),
            arrived_at: 0,
            bridged_at: 0,
            speaking: false,
            silent_emergency: false,
            pranks: 0,
        });
        let siti = user(Role::CallTaker, Some("ct-01"), Some("ntpd"));
        let budi = user(Role::CallTaker, Some("ct-02"), Some("ntpd"));
        let unbound = user(Role::CallTaker, None, None);
        let sup = user(Role::Supervisor, None, None);
        let damkar = user(Role::Dispatcher, Some("disp-damkar-01"), Some("damkar"));
        assert!(visible(&siti, &bridged));
        assert!(!visible(&budi, &bridged));
        assert!(visible(&sup, &bridged));
        let ended_unanswered = LiveEvent::CallEnded {
            call_id: "c".into(),
            incident_id: "i".into(),
            agent_id: None,
            cause: "caller_bye".into(),
        };
        assert!(
            !visible(&unbound, &ended_unanswered),
            "None is nobody's agent"
        );

        let fire = LiveEvent::Incident {
            incident: incident(Some("damkar")),
            previous_agency: None,
        };
        let moved_away = LiveEvent::Incident {
            incident: incident(Some("polri")),
            previous_agency: Some("damkar".into()),
        };
        let unassigned = LiveEvent::Incident {
            incident: incident(None),
            previous_agency: None,
        };
        assert!(visible(&damkar, &fire));
        // The agency it left hears that it left, not what it holds now.
        assert!(matches!(
            shown(&damkar, &moved_away).as_deref(),
            Some(LiveEvent::IncidentLeft { incident_id }) if incident_id == "i"
        ));
        let polri = user(Role::Dispatcher, None, Some("polri"));
        assert!(matches!(
            shown(&polri, &moved_away).as_deref(),
            Some(LiveEvent::Incident { .. })
        ));
        let left = shown(&damkar, &moved_away).unwrap();
        assert!(!visible(&polri, &left), "never passed on as it is");
        assert!(!visible(&damkar, &unassigned));
        assert!(visible(&siti, &unassigned));
        let figures = LiveEvent::Figures(Default::default());
        assert!(visible(&sup, &figures));
        assert!(!visible(&siti, &figures));
        assert!(!visible(&damkar, &figures));
    }
}
