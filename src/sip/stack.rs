//! The SIP runtime on rsipstack: transports, the transaction endpoint, the
//! dialog layer, and the dispatch of every incoming transaction.
//!
//! UDP is read here, not by rsipstack, so a request its parser refuses
//! still gets 400 or 501 (see `salvage`); parsed messages go to the
//! endpoint as if its own loop had read them. TCP framing stays with
//! rsipstack.

use super::accounts::Authenticated;
use super::accounts::{self, Accounts, RegisterReply, RegistrationEvent};
use super::guard::Verdict;
use super::registrar::{Binding, Reach};
use super::request::{self, header_value, InviteInfo};
use super::routing::{self, AgentRequest, FeatureCode, InviteDecision, MethodDecision};
use super::salvage;
use super::unconfirmed::{Place, Unconfirmed};
use crate::cluster::Leadership;
use crate::config::{Config, Route};
use crate::leg::{AgentFailure, AgentLegEvent, Answer, LegEnd, LegEvent, Respond, Responder};
use rsipstack::dialog::dialog::{
    DialogState, DialogStateReceiver, TerminatedReason, TransactionHandle,
};
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::{prelude::HeadersExt, Header, SipMessage, StatusCode, Transport};
use rsipstack::transaction::endpoint::EndpointInner;
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transport::tcp_listener::TcpListenerConnection;
use rsipstack::transport::udp::UdpConnection;
use rsipstack::transport::{SipAddr, SipConnection, TransportLayer};
use rsipstack::EndpointBuilder;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum SipError {
    #[error("cannot listen for SIP on {addr}: {message}")]
    Listen { addr: SocketAddr, message: String },
    #[error("SIP stack: {0}")]
    Stack(#[source] Box<rsipstack::Error>),
    #[error("cannot call `{target}`: {source}")]
    Target {
        target: String,
        #[source]
        source: rsipstack::sip::Error,
    },
    #[error("no SIP listener for {0}")]
    NoListener(&'static str),
    #[error("the caller leg is gone: {0}")]
    LegGone(#[source] Box<rsipstack::Error>),
}

impl From<rsipstack::Error> for SipError {
    fn from(e: rsipstack::Error) -> Self {
        SipError::Stack(Box::new(e))
    }
}

/// A new call the dispatcher accepted.
pub struct IncomingCall {
    pub leg: ServerLeg,
    pub info: InviteInfo,
    pub kind: CallKind,
}

pub enum CallKind {
    /// An emergency call for a route, from a trusted trunk.
    Emergency { route: Route, trunk: Option<String> },
    /// An authenticated agent dialing a feature code.
    Feature { agent: String, code: FeatureCode },
    /// An authenticated agent dialing an agency from the phone while on a
    /// call: the consultation of an attended transfer.
    Consult { agent: String, agency: String },
}

/// Where the SIP stack listens, once bound.
#[derive(Debug, Clone)]
pub struct SipAddrs {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
}

pub struct SipStack {
    pub addrs: SipAddrs,
    layer: Arc<DialogLayer>,
    draining: Arc<AtomicBool>,
    handle: SipHandle,
}

impl SipStack {
    /// Binds every configured SIP address and starts serving. New calls
    /// that a route accepts are sent to `calls`.
    pub async fn start(
        config: Arc<Config>,
        calls: mpsc::UnboundedSender<IncomingCall>,
        registrations: mpsc::UnboundedSender<RegistrationEvent>,
        leadership: Leadership,
        cancel: CancellationToken,
    ) -> Result<SipStack, SipError> {
        let transport_layer = TransportLayer::new(cancel.child_token());
        // A TCP connection that sends nothing (not even RFC 5626's CRLF
        // keep-alive) for this long is closed: idle ones held open would
        // take descriptors from the calls.
        transport_layer.set_stream_idle_timeout(config.server.sip.tcp_idle_timeout);
        // rsipstack's own UDP reader is given a cancelled token so it stops
        // at once; the socket stays registered for sending.
        let parked = CancellationToken::new();
        parked.cancel();
        let mut udp = Vec::new();
        let mut udp_conns = Vec::new();
        for addr in &config.server.sip.udp {
            let listen = |e: &dyn std::fmt::Display| SipError::Listen {
                addr: *addr,
                message: e.to_string(),
            };
            let (socket, reader) = bind_udp(*addr).map_err(|e| listen(&e))?;
            let conn = UdpConnection::from_socket(Arc::new(socket), None, Some(parked.clone()))
                .await
                .map_err(|e| listen(&e))?;
            let bound = conn.get_addr().get_socketaddr().map_err(|e| listen(&e))?;
            transport_layer.add_transport(SipConnection::Udp(conn.clone()));
            udp.push(bound);
            udp_conns.push((conn, reader, bound));
        }
        let mut tcp = Vec::new();
        for addr in &config.server.sip.tcp {
            // Port 0 takes the UDP port number when it is free for TCP too,
            // so one number serves both, as 5060 does.
            let mut want = *addr;
            if want.port() == 0 {
                if let Some(u) = udp.iter().find(|u| u.ip() == addr.ip()) {
                    want.set_port(u.port());
                }
            }
            let probe = std::net::TcpListener::bind(want)
                .or_else(|_| std::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0)))
                .map_err(|e| SipError::Listen {
                    addr: *addr,
                    message: e.to_string(),
                })?;
            let bound = probe.local_addr().map_err(|e| SipError::Listen {
                addr: *addr,
                message: e.to_string(),
            })?;
            drop(probe);
            let listener = TcpListenerConnection::new(bound, None).await?;
            transport_layer.add_transport(SipConnection::TcpListener(listener));
            tcp.push(bound);
        }

        let endpoint = EndpointBuilder::new()
            .with_cancel_token(cancel.clone())
            .with_transport_layer(transport_layer)
            .with_user_agent(&config.server.sip.user_agent)
            .build();
        let mut incoming = endpoint.incoming_transactions()?;
        let inner = endpoint.inner.clone();
        let layer = Arc::new(DialogLayer::new(inner.clone()));

        for (conn, reader, bound) in udp_conns {
            let (tx, rx) = mpsc::channel(READ_AHEAD);
            let stop = cancel.clone();
            std::thread::Builder::new()
                .name("siaga-sip-read".into())
                .spawn(move || read_udp(reader, tx, stop))
                .map_err(|e| SipError::Listen {
                    addr: bound,
                    message: e.to_string(),
                })?;
            super::runtime::spawn(udp_loop(conn, rx, inner.clone(), cancel.clone()));
        }
        super::runtime::spawn(async move { endpoint.serve().await });

        let addrs = SipAddrs { udp, tcp };
        let draining = Arc::new(AtomicBool::new(false));
        let accounts = Arc::new(Accounts::new(config.clone(), registrations));
        accounts::spawn_expiry(accounts.clone(), cancel.clone());
        let handle = SipHandle {
            config: config.clone(),
            layer: layer.clone(),
            accounts: accounts.clone(),
            addrs: addrs.clone(),
        };
        let dispatcher = Arc::new(Dispatcher {
            unconfirmed: Unconfirmed::new(config.server.unconfirmed_bound()),
            refusal_logged: Default::default(),
            holding: Default::default(),
            config,
            layer: layer.clone(),
            addrs: addrs.clone(),
            calls,
            draining: draining.clone(),
            leadership,
            accounts,
        });
        let stop = cancel.clone();
        super::runtime::spawn(async move {
            loop {
                tokio::select! {
                    tx = incoming.recv() => match tx {
                        Some(tx) => dispatcher.dispatch(tx).await,
                        None => break,
                    },
                    _ = stop.cancelled() => break,
                }
            }
        });
        info!(udp = ?addrs.udp, tcp = ?addrs.tcp, "SIP listening");
        Ok(SipStack {
            addrs,
            layer,
            draining,
            handle,
        })
    }

    /// What call tasks use to reach agents.
    pub fn handle(&self) -> SipHandle {
        self.handle.clone()
    }

    /// Dialogs open right now.
    pub fn dialogs(&self) -> usize {
        self.layer.len()
    }

    /// From now on, new INVITEs get 503 with Retry-After so the trunk
    /// routes them to another center; calls in progress go on.
    pub fn stop_taking_calls(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
}

/// Receive buffer asked for each SIP UDP socket. The kernel's default
/// (208 KiB) holds about a hundred INVITE-sized datagrams, a few tens of
/// milliseconds of a surge: any pause of the reader beyond that dropped
/// requests, and each dropped INVITE cost its caller a retransmission
/// (500 ms and more) or the call.
const SIP_RECEIVE_BUFFER: usize = 4 << 20;

/// Binds a SIP UDP socket with a receive buffer for bursts. Where the
/// system caps it lower (`net.core.rmem_max`), says so once and goes on.
fn bind_udp(addr: SocketAddr) -> std::io::Result<(tokio::net::UdpSocket, std::net::UdpSocket)> {
    use std::os::fd::AsRawFd;
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    let fd = socket.as_raw_fd();
    let int = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let want = SIP_RECEIVE_BUFFER as libc::c_int;
    // SAFETY: a valid socket, and int-sized options read and written in
    // locals of that size.
    let got = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&want as *const libc::c_int).cast(),
            int,
        );
        let mut got: libc::c_int = 0;
        let mut len = int;
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut got as *mut libc::c_int).cast(),
            &mut len,
        );
        got
    };
    // Linux reports twice what it grants (bookkeeping included).
    if (got as usize) < SIP_RECEIVE_BUFFER {
        warn!(
            %addr,
            granted_bytes = got / 2,
            wanted_bytes = SIP_RECEIVE_BUFFER,
            "SIP receive buffer capped by the system: raise net.core.rmem_max, or bursts of calls may be dropped"
        );
    }
    let reader = socket.try_clone()?;
    Ok((tokio::net::UdpSocket::from_std(socket)?, reader))
}

/// Parsed SIP messages the reader thread may hold for the endpoint; then
/// it waits, and the socket's own buffer takes the rest.
const READ_AHEAD: usize = 4096;

/// A SIP datagram, parsed on the reader thread.
struct Received {
    msg: SipMessage,
    from: SipAddr,
}

/// Reads and parses a SIP UDP socket on a thread of its own, which the
/// kernel wakes when a datagram arrives. Read by a task on the main
/// runtime, a request first waited for a busy worker to poll the socket's
/// readiness and reach that task: at 500 calls a second the socket held up
/// to 155 KB unread (p90 40 KB); read here, up to 18 KB (p90 1 KB), and
/// parsing no longer takes the runtime's time. Keep-alives and unparsable
/// requests are answered here; the rest goes to `udp_loop`, in order.
fn read_udp(socket: std::net::UdpSocket, tx: mpsc::Sender<Received>, cancel: CancellationToken) {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; 65535];
    let mut pfd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while !cancel.is_cancelled() {
        // SAFETY: one pollfd, valid for the call; the socket outlives it.
        let ready = unsafe { libc::poll(&mut pfd, 1, 100) };
        if ready <= 0 {
            continue;
        }
        loop {
            let (len, source) = match socket.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!(error = %e, "udp receive failed");
                    break;
                }
            };
            let raw = &buf[..len];
            // A parser's panic (ours or rsipstack's) costs this datagram,
            // never the reader every call comes in through.
            let taken = std::panic::catch_unwind(|| take_datagram(raw, source));
            let msg = match taken {
                Ok(Datagram::Message(msg)) => msg,
                Ok(Datagram::Answer(reply)) => {
                    let _ = socket.send_to(&reply, source);
                    continue;
                }
                Ok(Datagram::Dropped) => continue,
                Err(_) => {
                    error!(%source, len, "a datagram made the SIP parser panic; dropped");
                    continue;
                }
            };
            let from = SipAddr {
                r#type: Some(Transport::Udp),
                addr: source.into(),
            };
            // Waits while the endpoint is READ_AHEAD behind.
            if tx.blocking_send(Received { msg, from }).is_err() {
                return;
            }
        }
    }
}

/// What the UDP reader does with one datagram.
pub(crate) enum Datagram {
    /// A message for the endpoint, its top Via and source stamped.
    Message(SipMessage),
    /// Bytes to send back at once (a keep-alive's CRLF, a 400 or 501 for
    /// a request the parser refuses).
    Answer(Vec<u8>),
    Dropped,
}

/// One datagram from `source`, as the reader takes it: no socket, no
/// clock, so the fuzzer drives exactly this (`sip::fuzz`).
pub(crate) fn take_datagram(raw: &[u8], source: SocketAddr) -> Datagram {
    if raw.iter().all(|b| b.is_ascii_whitespace()) {
        // RFC 5626 keep-alive: answer a double CRLF with a CRLF.
        return if raw == b"\r\n\r\n" {
            Datagram::Answer(b"\r\n".to_vec())
        } else {
            Datagram::Dropped
        };
    }
    let msg = match SipMessage::try_from(raw) {
        Ok(msg) => msg,
        Err(e) => {
            return match salvage::reply_for_unparsable(raw) {
                Some(reply) => {
                    info!(%source, error = %e, "answered an unparsable request");
                    Datagram::Answer(reply)
                }
                None => {
                    debug!(%source, error = %e, len = raw.len(), "dropped an unparsable datagram");
                    Datagram::Dropped
                }
            };
        }
    };
    match request::stamp_udp_source(msg, source) {
        Ok(m) => Datagram::Message(m),
        Err(e) => {
            debug!(%source, error = %e, "dropped a message without a usable Via");
            Datagram::Dropped
        }
    }
}

/// Hands what the reader thread parsed to the endpoint, in order.
async fn udp_loop(
    conn: UdpConnection,
    mut rx: mpsc::Receiver<Received>,
    endpoint: Arc<EndpointInner>,
    cancel: CancellationToken,
) {
    loop {
        let Received { msg, from } = tokio::select! {
            r = rx.recv() => match r {
                Some(r) => r,
                None => return,
            },
            _ = cancel.cancelled() => return,
        };
        if let Err(e) = endpoint
            .on_received_message(msg, SipConnection::Udp(conn.clone()), &from)
            .await
        {
            debug!(source = %from.addr, error = %e, "message not taken by the endpoint");
        }
    }
}

struct Dispatcher {
    config: Arc<Config>,
    layer: Arc<DialogLayer>,
    addrs: SipAddrs,
    calls: mpsc::UnboundedSender<IncomingCall>,
    draining: Arc<AtomicBool>,
    /// Only the leader takes calls, registrations and probes (a standby
    /// answers 503, so the front sends them to the leader).
    leadership: Leadership,
    accounts: Arc<Accounts>,
    unconfirmed: Unconfirmed,
    /// When a refusal for too many unconfirmed calls was last logged.
    refusal_logged: std::sync::Mutex<Option<std::time::Instant>>,
    /// INVITEs held by a standby while it takes the lease over.
    holding: AtomicUsize,
}

/// What a node that does not lead answers: 503, try again in a second
/// (the front sends it to the leader meanwhile).
async fn standing_by(mut tx: Transaction) {
    let headers = vec![Header::Other("Retry-After".into(), "1".into())];
    let _ = tx
        .reply_with(StatusCode::ServiceUnavailable, headers, None)
        .await;
}

/// At most this many INVITEs wait at once on a node that does not lead
/// (the queue's own measured size); beyond it they get 503 at once.
const HOLD_AT_MOST: usize = 2_000;

impl Dispatcher {
    async fn dispatch(self: &Arc<Self>, mut tx: Transaction) {
        let method = tx.original.method.to_string();
        let in_dialog = tx
            .original
            .to_header()
            .ok()
            .and_then(|t| t.tag().ok().flatten())
            .is_some();
        if in_dialog {
            match self.layer.match_dialog(&tx) {
                Some(mut dialog) => {
                    tokio::spawn(async move {
                        if let Err(e) = dialog.handle(&mut tx).await {
                            debug!(error = %e, "in-dialog request failed");
                        }
                    });
                }
                None if method == "ACK" => {}
                None => {
                    let _ = tx.reply(StatusCode::CallTransactionDoesNotExist).await;
                }
            }
            return;
        }
        let decision = routing::out_of_dialog(&method);
        let asks_leader = matches!(
            decision,
            MethodDecision::Invite | MethodDecision::Register | MethodDecision::Options
        );
        if asks_leader && !self.leadership.leads() {
            if decision == MethodDecision::Invite {
                if self.holding.fetch_add(1, Ordering::SeqCst) < HOLD_AT_MOST {
                    tokio::spawn(self.clone().hold(tx));
                    return;
                }
                self.holding.fetch_sub(1, Ordering::SeqCst);
            }
            // Standing by (or the lease unproven): never a call here.
            standing_by(tx).await;
            return;
        }
        match decision {
            MethodDecision::Invite => self.invite(tx).await,
            MethodDecision::Register => {
                let Some((source, transport, fronted)) = self.origin(&tx) else {
                    let _ = tx.reply(StatusCode::BadRequest).await;
                    return;
                };
                // A Path is believed only from a front: from anyone else it
                // would send our calls wherever the sender liked.
                let path = if fronted {
                    match request::path(&tx.original) {
                        Ok(path) => path,
                        Err(reason) => {
                            info!(%source, reason, "REGISTER with a bad Path refused");
                            let _ = tx.reply(StatusCode::BadRequest).await;
                            return;
                        }
                    }
                } else {
                    Vec::new()
                };
                let reach = Reach {
                    source,
                    transport,
                    path,
                };
                tokio::spawn(register(self.accounts.clone(), tx, reach));
            }
            MethodDecision::Options => {
                let headers = vec![
                    Header::Other("Allow".into(), routing::ALLOW.into()),
                    Header::Other("Accept".into(), "application/sdp".into()),
                ];
                let _ = tx.reply_with(StatusCode::OK, headers, None).await;
            }
            MethodDecision::Reply(405) => {
                let headers = vec![Header::Other("Allow".into(), routing::ALLOW.into())];
                let _ = tx
                    .reply_with(StatusCode::MethodNotAllowed, headers, None)
                    .await;
            }
            MethodDecision::Reply(code) => {
                let _ = tx.reply(StatusCode::from(code)).await;
            }
            MethodDecision::Absorb => {}
        }
    }

    /// An INVITE that reached this node while it does not lead (the front
    /// found no leader: perhaps the old one just died and this one does
    /// not lead yet): 100 Trying at once, so the front waits, then the
    /// call is taken the moment this node leads, or refused with 503 once
    /// a reading of the lease made after it came shows no take-over
    /// coming (`Leadership::after_take_over`; a renewal or two at most).
    /// Never answered before the lease is proven.
    async fn hold(self: Arc<Self>, mut tx: Transaction) {
        let source = self.source_and_transport(&tx).map(|(s, _)| s);
        let _ = tx.send_trying().await;
        let leads = self.leadership.after_take_over().await;
        self.holding.fetch_sub(1, Ordering::SeqCst);
        if leads {
            info!(
                ?source,
                "INVITE held while this node took the lease over: taken"
            );
            self.invite(tx).await;
        } else {
            debug!(?source, "INVITE refused: this node stands by");
            standing_by(tx).await;
        }
    }

    /// Where a request came from, and over what: the packet's source (the
    /// datagram's, the TCP peer's), or, for a request relayed by one of
    /// `sip.fronts`, the source that front says (a front's own request,
    /// its probe, says none and is the front's).
    fn source_and_transport(&self, tx: &Transaction) -> Option<(SocketAddr, &'static str)> {
        self.origin(tx)
            .map(|(source, transport, _)| (source, transport))
    }

    /// `source_and_transport`, and whether a front relayed the request.
    fn origin(&self, tx: &Transaction) -> Option<(SocketAddr, &'static str, bool)> {
        let transport = match tx.connection.as_ref().map(|c| c.transport()) {
            Some(Transport::Tcp) => "tcp",
            _ => "udp",
        };
        let packet = if transport == "tcp" {
            tx.connection
                .as_ref()?
                .get_remote_addr()?
                .get_socketaddr()
                .ok()?
        } else {
            request::udp_source(&tx.original)?
        };
        if self.config.server.sip.is_front(packet, transport) {
            if let Some((source, transport)) = request::front_source(&tx.original) {
                return Some((source, transport, true));
            }
        }
        Some((packet, transport, false))
    }

    async fn invite(&self, mut tx: Transaction) {
        if self.draining.load(Ordering::SeqCst) {
            let headers = vec![Header::Other("Retry-After".into(), "30".into())];
            let _ = tx
                .reply_with(StatusCode::ServiceUnavailable, headers, None)
                .await;
            return;
        }
        let Some((source, transport)) = self.source_and_transport(&tx) else {
            let _ = tx.reply(StatusCode::BadRequest).await;
            return;
        };
        if let Err(reason) = request::check_invite(&tx.original) {
            info!(%source, reason, "malformed INVITE refused");
            let headers = vec![Header::Other(
                "Warning".into(),
                format!("399 siaga \"{reason}\""),
            )];
            let _ = tx.reply_with(StatusCode::BadRequest, headers, None).await;
            return;
        }
        let req = &tx.original;
        let trunk = self.config.trunk_for(source.ip()).map(|t| t.name.clone());
        let dialed = request::dialed_target(&req.uri);
        let kind = if let Some(ask) = routing::agent_request(dialed.as_ref(), &self.config.agencies)
        {
            let now = std::time::Instant::now();
            if self.accounts.guard(source.ip(), now) == Verdict::Blocked {
                let _ = tx.reply(StatusCode::Forbidden).await;
                return;
            }
            let auth = header_value(req, "Authorization");
            match self
                .accounts
                .authenticate(auth.as_deref(), "INVITE", source, now)
            {
                Authenticated::Agent(agent) => match ask {
                    AgentRequest::Feature(code) => CallKind::Feature { agent, code },
                    AgentRequest::Consult { agency } => CallKind::Consult { agent, agency },
                },
                Authenticated::Challenge(values) => {
                    let headers = values
                        .into_iter()
                        .map(|v| Header::Other("WWW-Authenticate".into(), v))
                        .collect();
                    let _ = tx.reply_with(StatusCode::Unauthorized, headers, None).await;
                    return;
                }
                Authenticated::Forbidden => {
                    let _ = tx.reply(StatusCode::Forbidden).await;
                    return;
                }
            }
        } else {
            match routing::route_invite(dialed.as_ref(), trunk.as_deref(), &self.config.dialplan) {
                InviteDecision::Accept(route) => CallKind::Emergency {
                    route: *route,
                    trunk: trunk.clone(),
                },
                InviteDecision::Reject { code, reason } => {
                    info!(%source, ruri = %req.uri, code, reason, "INVITE refused");
                    let _ = tx.reply(StatusCode::from(code)).await;
                    return;
                }
            }
        };
        let from_uri = header_value(req, "From").unwrap_or_default();
        // P-Asserted-Identity is trusted only from a trunk (RFC 3325).
        let caller_number = trunk
            .as_ref()
            .and_then(|_| header_value(req, "P-Asserted-Identity"))
            .and_then(|v| request::number_from_address(&v))
            .or_else(|| request::number_from_address(&from_uri));
        let content_type = header_value(req, "Content-Type");
        let (sdp, pidf) = request::split_body(content_type.as_deref(), &req.body);
        let info = InviteInfo {
            sip_call_id: header_value(req, "Call-ID").unwrap_or_default(),
            request_uri: req.uri.to_string(),
            from_uri,
            to_uri: header_value(req, "To").unwrap_or_default(),
            dialed,
            caller_number,
            geolocation: header_value(req, "Geolocation"),
            pidf,
            sdp,
            source,
            transport,
        };

        // Until its ACK comes, the call holds a port on this source's
        // account (`unconfirmed`); a source past its bound waits.
        let Some(place) = self.unconfirmed.admit(source.ip()) else {
            {
                let mut logged = crate::lock(&self.refusal_logged);
                if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    warn!(%source, bound = self.config.server.unconfirmed_bound(), "a source holds too many calls not yet confirmed by an ACK; refusing its new ones with 503");
                    *logged = Some(std::time::Instant::now());
                }
            }
            let headers = vec![Header::Other("Retry-After".into(), "5".into())];
            let _ = tx
                .reply_with(StatusCode::ServiceUnavailable, headers, None)
                .await;
            return;
        };
        let contact = self.contact(transport);
        let (state_tx, states) = self.layer.new_dialog_state_channel();
        let dialog = match self
            .layer
            .get_or_create_server_invite(&tx, state_tx, None, contact)
        {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "cannot create the caller's dialog");
                let _ = tx.reply(StatusCode::ServerInternalError).await;
                return;
            }
        };
        let mut handler = dialog.clone();
        tokio::spawn(async move {
            // Sends 100 Trying at once, then waits for ACK or CANCEL.
            if let Err(e) = handler.handle(&mut tx).await {
                debug!(error = %e, "INVITE transaction ended with an error");
            }
        });
        let leg = ServerLeg {
            dialog,
            states,
            layer: self.layer.clone(),
            confirmed: false,
            unconfirmed: Some(place),
        };
        if self.calls.send(IncomingCall { leg, info, kind }).is_err() {
            warn!("no call handler is running");
        }
    }

    fn contact(&self, transport: &str) -> Option<rsipstack::sip::Uri> {
        contact_uri(&self.config, &self.addrs, None, transport)
    }
}

/// `sip:[user@]public-ip:port[;transport=tcp]` for our Contact headers.
fn contact_uri(
    config: &Config,
    addrs: &SipAddrs,
    user: Option<&str>,
    transport: &str,
) -> Option<rsipstack::sip::Uri> {
    let ip = config.server.sip.public_ip;
    let (port, suffix) = if transport == "tcp" {
        (addrs.tcp.first()?.port(), ";transport=tcp")
    } else {
        (addrs.udp.first()?.port(), "")
    };
    let host = if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let user = user.map(|u| format!("{u}@")).unwrap_or_default();
    rsipstack::sip::Uri::try_from(format!("sip:{user}{host}:{port}{suffix}").as_str()).ok()
}

/// Answers one REGISTER (RFC 3261 §10.3), after the guard's delay.
async fn register(accounts: Arc<Accounts>, mut tx: Transaction, reach: Reach) {
    match accounts.guard(reach.source.ip(), std::time::Instant::now()) {
        Verdict::Blocked => {
            let _ = tx.reply(StatusCode::Forbidden).await;
            return;
        }
        Verdict::Delay(d) => tokio::time::sleep(d).await,
        Verdict::Allow => {}
    }
    let req = &tx.original;
    let user = header_value(req, "To")
        .and_then(|t| {
            let (uri, _) = accounts::split_contact(&t);
            let rest = uri.split_once(':')?.1;
            Some(rest.split_once('@')?.0.to_string())
        })
        .unwrap_or_default();
    let contacts: Vec<String> = request::header_values(req, "Contact")
        .flat_map(|v| accounts::split_contacts(&v))
        .collect();
    let expires = header_value(req, "Expires").and_then(|v| v.parse().ok());
    let authorization = header_value(req, "Authorization");
    // RFC 3327 §5.3: a UA that supports Path learns it from the 200.
    let echo_path = request::supports(req, "path");
    let path = reach.path.clone();
    let reply = accounts.register(
        &user,
        authorization.as_deref(),
        &contacts,
        expires,
        &reach,
        std::time::Instant::now(),
    );
    let result = match reply {
        RegisterReply::Challenge(values) => {
            let headers = values
                .into_iter()
                .map(|v| Header::Other("WWW-Authenticate".into(), v))
                .collect();
            tx.reply_with(StatusCode::Unauthorized, headers, None).await
        }
        RegisterReply::Ok(bindings) => {
            let mut headers: Vec<Header> = bindings
                .into_iter()
                .map(|v| Header::Other("Contact".into(), v))
                .collect();
            if echo_path {
                headers.extend(path.into_iter().map(|p| Header::Other("Path".into(), p)));
            }
            tx.reply_with(StatusCode::OK, headers, None).await
        }
        RegisterReply::TooBrief(min) => {
            let headers = vec![Header::Other("Min-Expires".into(), min.to_string())];
            tx.reply_with(StatusCode::IntervalTooBrief, headers, None)
                .await
        }
        RegisterReply::Forbidden => tx.reply(StatusCode::Forbidden).await,
        RegisterReply::BadRequest => tx.reply(StatusCode::BadRequest).await,
    };
    if let Err(e) = result {
        debug!(error = %e, "REGISTER answer not sent");
    }
}

/// What call tasks use to reach agents' phones.
#[derive(Clone)]
pub struct SipHandle {
    config: Arc<Config>,
    layer: Arc<DialogLayer>,
    accounts: Arc<Accounts>,
    addrs: SipAddrs,
}

impl SipHandle {
    /// Takes phone bindings other nodes made (`Accounts::restore`).
    pub fn restore_bindings(&self, bindings: Vec<(String, Binding)>) {
        self.accounts.restore(bindings);
    }

    pub fn agent_binding(&self, agent: &str) -> Option<Binding> {
        self.accounts.lookup(agent)
    }

    /// Rings an agent's registered phone with `sdp` as the offer. The From
    /// shows the caller's number; Call-Info points at the incident.
    pub fn call_agent(
        &self,
        binding: &Binding,
        caller: &str,
        sdp: String,
        call_info: Option<String>,
    ) -> Result<AgentLeg, SipError> {
        let transport = if binding.transport == "tcp" {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        // Registered through a front: the INVITE takes the binding's Path
        // as its preloaded route (RFC 3327 §5.3), to the front's address;
        // else it goes to where the REGISTER came from.
        let route = binding
            .path
            .iter()
            .map(|p| rsipstack::sip::typed::Route::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| SipError::Target {
                target: binding.path.join(", "),
                source,
            })?;
        let destination = route.is_empty().then(|| rsipstack::transport::SipAddr {
            r#type: Some(transport),
            addr: binding.source.into(),
        });
        // Phones offer attended transfer only to a peer that takes
        // Replaces (RFC 3891 §6); we take it in a REFER's Refer-To.
        let mut headers = vec![Header::Supported("replaces".into())];
        headers.extend(call_info.map(|ci| Header::Other("Call-Info".into(), ci)));
        self.invite(
            &binding.contact,
            Dest {
                address: destination,
                route,
            },
            binding.transport,
            caller,
            sdp,
            headers,
        )
    }

    /// Calls any SIP destination (another center's trunk); rsipstack
    /// resolves the URI.
    pub fn call_uri(
        &self,
        target: &str,
        caller: &str,
        sdp: String,
        call_info: Option<String>,
    ) -> Result<AgentLeg, SipError> {
        let transport = if target.contains("transport=tcp") {
            "tcp"
        } else {
            "udp"
        };
        let headers = call_info
            .map(|ci| vec![Header::Other("Call-Info".into(), ci)])
            .unwrap_or_default();
        let dest = Dest {
            address: None,
            route: Vec::new(),
        };
        self.invite(target, dest, transport, caller, sdp, headers)
    }

    fn invite(
        &self,
        target: &str,
        dest: Dest,
        transport: &str,
        caller: &str,
        sdp: String,
        headers: Vec<Header>,
    ) -> Result<AgentLeg, SipError> {
        let callee = rsipstack::sip::Uri::try_from(target).map_err(|source| SipError::Target {
            target: target.to_string(),
            source,
        })?;
        let caller_uri = contact_uri(&self.config, &self.addrs, Some(caller), "udp")
            .ok_or(SipError::NoListener("UDP"))?;
        let contact = contact_uri(&self.config, &self.addrs, None, transport)
            .ok_or(SipError::NoListener("the target's transport"))?;
        let opt = rsipstack::dialog::invitation::InviteOption {
            caller_display_name: Some(caller.to_string()),
            caller: caller_uri,
            callee,
            destination: dest.address,
            route_set: dest.route,
            content_type: Some("application/sdp".into()),
            offer: Some(sdp.into_bytes()),
            contact,
            headers: Some(headers),
            ..Default::default()
        };
        let (state_tx, states) = self.layer.new_dialog_state_channel();
        let (dialog, task) = self.layer.do_invite_async(opt, state_tx)?;
        Ok(AgentLeg {
            dialog,
            states,
            layer: self.layer.clone(),
            _task: task,
            answered: false,
        })
    }
}

/// Where an INVITE goes besides its Request-URI: an address to send it
/// to (None: the first Route's, else the URI's), and Route headers.
struct Dest {
    address: Option<rsipstack::transport::SipAddr>,
    route: Vec<rsipstack::sip::typed::Route>,
}

/// How long hanging up waits for the far end's answer (the BYE has been
/// sent, and retransmitted twice, by then). A far end that never answers
/// (a dead trunk, a caller whose own BYE we lost in a flood) must not hold
/// the call's end, its records and its recording's checksum, for the 32 s
/// of a transaction timeout: seen in a benchmark, where 271 calls were
/// still waiting on their BYEs when the shutdown's time was up.
const BYE_WAIT: Duration = Duration::from_secs(3);

/// Our INVITE to an agent's phone (we are the UAC).
pub struct AgentLeg {
    dialog: InviteDialog,
    states: DialogStateReceiver,
    layer: Arc<DialogLayer>,
    _task: rsipstack::platform::JoinHandle<rsipstack::dialog::invitation::InviteAsyncResult>,
    answered: bool,
}

impl AgentLeg {
    pub async fn next_event(&mut self) -> AgentLegEvent {
        loop {
            let Some(state) = self.states.recv().await else {
                return if self.answered {
                    AgentLegEvent::Ended
                } else {
                    AgentLegEvent::Failed(AgentFailure::Unreachable)
                };
            };
            match state {
                DialogState::Trying(..) => return AgentLegEvent::Trying,
                DialogState::Early(..) => return AgentLegEvent::Ringing,
                DialogState::Confirmed(_, resp) if !self.answered => {
                    self.answered = true;
                    return AgentLegEvent::Answered { sdp: resp.body };
                }
                DialogState::Terminated(_, reason) => {
                    if self.answered {
                        return AgentLegEvent::Ended;
                    }
                    let code = match &reason {
                        TerminatedReason::UasOther(c) | TerminatedReason::ProxyError(c) => {
                            Some(c.code())
                        }
                        _ => None,
                    };
                    return AgentLegEvent::Failed(match (reason, code) {
                        (TerminatedReason::UasBusy | TerminatedReason::UasDecline, _) => {
                            AgentFailure::Declined
                        }
                        (_, Some(486 | 600 | 603)) => AgentFailure::Declined,
                        (TerminatedReason::Timeout | TerminatedReason::UacCancel, _) => {
                            AgentFailure::NoAnswer
                        }
                        (_, Some(408 | 480 | 487)) => AgentFailure::NoAnswer,
                        _ => AgentFailure::Unreachable,
                    });
                }
                DialogState::Updated(_, req, handle) => {
                    let sdp = Some(req.body).filter(|b| !b.is_empty());
                    return AgentLegEvent::ReOffer {
                        sdp,
                        responder: responder(handle),
                    };
                }
                DialogState::Refer(_, req, handle) if self.answered => {
                    let Some(refer_to) =
                        header_value(&req, "Refer-To").or_else(|| header_value(&req, "r"))
                    else {
                        tokio::spawn(async move {
                            let _ = handle.reply(StatusCode::BadRequest).await;
                        });
                        continue;
                    };
                    let (target, replaces) = request::refer_target(&refer_to);
                    return AgentLegEvent::Refer {
                        target,
                        replaces,
                        responder: responder(handle),
                    };
                }
                other => answer_routine(other),
            }
        }
    }

    /// Tells the phone how the transfer it asked for went (RFC 3515 §2.4.5:
    /// NOTIFY with a message/sipfrag status line).
    pub async fn notify_transfer(&self, code: u16, reason: &str, done: bool) {
        let state = if done {
            "terminated;reason=noresource"
        } else {
            "active;expires=60"
        };
        let headers = vec![
            Header::Event("refer".into()),
            Header::SubscriptionState(state.into()),
            Header::ContentType("message/sipfrag;version=2.0".into()),
        ];
        let body = format!("SIP/2.0 {code} {reason}\r\n").into_bytes();
        if let Err(e) = self.dialog.notify(Some(headers), Some(body)).await {
            debug!(error = %e, "NOTIFY of the transfer failed");
        }
    }

    /// Stops ringing (CANCEL) or hangs up (BYE), whichever applies.
    pub async fn end(&self) {
        let ending = async {
            if self.answered {
                self.dialog.hangup().await
            } else {
                self.dialog.cancel().await
            }
        };
        match tokio::time::timeout(BYE_WAIT, ending).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, "ending the agent leg failed"),
            Err(_) => warn!("the agent's phone did not answer our BYE/CANCEL; the leg ends anyway"),
        }
    }
}

impl Drop for AgentLeg {
    fn drop(&mut self) {
        self.layer.remove_dialog(&self.dialog.id());
    }
}

/// Answers the in-dialog requests neither leg acts on: INFO, OPTIONS,
/// MESSAGE and NOTIFY get 200; REFER gets 603 (only an agent's leg, where
/// we are the caller, may transfer: `AgentLeg` surfaces it); other states
/// need no answer.
fn answer_routine(state: DialogState) {
    let (handle, code) = match state {
        DialogState::Info(_, _, h)
        | DialogState::Options(_, _, h)
        | DialogState::Message(_, _, h)
        | DialogState::Notify(_, _, h) => (h, StatusCode::OK),
        DialogState::Refer(_, _, h) => (h, StatusCode::from(603)),
        _ => return,
    };
    // Beside the leg's reader, so reading its next event stays cancel-safe.
    tokio::spawn(async move {
        let _ = handle.reply(code).await;
    });
}

/// A SIP transaction's answer to a request inside a dialog.
struct InDialog(TransactionHandle);

impl Respond for InDialog {
    fn respond(self: Box<Self>, answer: Answer) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let _ = match answer {
                Answer::Sdp(sdp) => {
                    let headers = vec![Header::ContentType("application/sdp".into())];
                    self.0
                        .respond(StatusCode::OK, Some(headers), Some(sdp.into_bytes()))
                        .await
                }
                Answer::Status(code) => self.0.reply(StatusCode::from(code)).await,
            };
        })
    }
}

fn responder(handle: TransactionHandle) -> Responder {
    Responder::new(Box::new(InDialog(handle)))
}

/// A server dialog's identity, kept apart from its leg.
#[derive(Clone)]
pub struct DialogName(InviteDialog);

impl DialogName {
    /// Whether a Replaces header (RFC 3891) names this dialog.
    pub fn is_named_by(&self, r: &request::Replaces) -> bool {
        let id = self.0.id();
        r.names(&id.call_id, &id.local_tag, &id.remote_tag)
    }
}

/// The caller's side of a call: a server INVITE dialog.
pub struct ServerLeg {
    dialog: InviteDialog,
    states: DialogStateReceiver,
    layer: Arc<DialogLayer>,
    confirmed: bool,
    /// This call's place among its source's unconfirmed ones: given back
    /// at the ACK, or when the leg goes.
    unconfirmed: Option<Place>,
}

impl ServerLeg {
    pub fn ringing(&self) {
        let _ = self.dialog.ringing(None, None);
    }

    pub fn answer(&self, sdp: String) -> Result<(), SipError> {
        let headers = vec![Header::ContentType("application/sdp".into())];
        self.dialog
            .accept(Some(headers), Some(sdp.into_bytes()))
            .map_err(|e| SipError::LegGone(Box::new(e)))
    }

    pub fn reject(&self, code: u16, reason: &str) {
        let _ = self
            .dialog
            .reject(Some(StatusCode::from(code)), Some(reason.to_string()));
    }

    pub async fn hangup(&self) {
        match tokio::time::timeout(BYE_WAIT, self.dialog.hangup()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, "BYE to the caller failed"),
            Err(_) => warn!("the caller did not answer our BYE; the call ends anyway"),
        }
    }

    /// What answers, later and from elsewhere, whether a Replaces header
    /// (RFC 3891) names this dialog.
    pub fn name(&self) -> DialogName {
        DialogName(self.dialog.clone())
    }

    /// The next thing that matters to the call. In-dialog INFO, OPTIONS,
    /// MESSAGE and NOTIFY are answered here.
    pub async fn next_event(&mut self) -> LegEvent {
        loop {
            let Some(state) = self.states.recv().await else {
                return LegEvent::Ended(LegEnd::Closed);
            };
            match state {
                DialogState::Confirmed(..) if !self.confirmed => {
                    self.confirmed = true;
                    self.unconfirmed = None;
                    let ack_body = self
                        .dialog
                        .last_remote_ack()
                        .map(|ack| ack.body)
                        .filter(|b| !b.is_empty());
                    return LegEvent::Confirmed { ack_body };
                }
                DialogState::Terminated(_, reason) => {
                    return LegEvent::Ended(match reason {
                        TerminatedReason::UacCancel => LegEnd::Cancelled,
                        TerminatedReason::UacBye => LegEnd::RemoteBye,
                        TerminatedReason::UasBye => LegEnd::LocalBye,
                        TerminatedReason::Timeout => LegEnd::NoAck,
                        other => LegEnd::Other(format!("{other:?}").to_lowercase()),
                    });
                }
                DialogState::Updated(_, req, handle) => {
                    let sdp = Some(req.body).filter(|b| !b.is_empty());
                    return LegEvent::ReOffer {
                        sdp,
                        responder: responder(handle),
                    };
                }
                other => answer_routine(other),
            }
        }
    }
}

impl Drop for ServerLeg {
    fn drop(&mut self) {
        self.layer.remove_dialog(&self.dialog.id());
    }
}
