//! `siaga serve`: wires the parts together and runs until shutdown.

use crate::acd::{runtime::AcdHandle, Acd};
use crate::call::{self, Services};
use crate::config::Config;
use crate::live::Live;
use crate::media::{ports::PortPool, prompts::Prompts, recorder::Recorder};
use crate::sip::{RegistrationEvent, SipAddrs, SipStack};
use crate::store::{Changed, Store, StoreWriter};
use crate::web;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Prompts(#[from] crate::media::prompts::PromptError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Sip(#[from] crate::sip::SipError),
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running server: where it listens, and how to stop it.
pub struct Running {
    pub sip: SipAddrs,
    pub http: SocketAddr,
    stack: SipStack,
    services: Arc<Services>,
    shutdown: CancellationToken,
}

impl Running {
    /// Stops gracefully: refuse new calls (503, so trunks fail over), let
    /// calls in progress go on for `grace`, then end the rest; recordings
    /// are finished and records written before this returns.
    pub async fn shutdown(self, grace: Duration) {
        self.stack.stop_taking_calls();
        let tracker = &self.services.tracker;
        tracker.close();
        info!(
            calls = tracker.len(),
            ?grace,
            "draining: new calls are refused"
        );
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(
                calls = tracker.len(),
                "grace period over: ending the remaining calls"
            );
            self.services.hangup_all.cancel();
            if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
                .await
                .is_err()
            {
                warn!(calls = tracker.len(), "calls did not end in time");
            }
        }
        // Durable first (the journal), then the database if it is there.
        self.services.store.journaled().await;
        if tokio::time::timeout(Duration::from_secs(10), self.services.store.flush())
            .await
            .is_err()
        {
            warn!("the database did not take every record before exit; they wait in the journal for the next start");
        }
        self.shutdown.cancel();
        drop(self.stack);
    }
}

/// Makes the allocator give large blocks back to the system when they are
/// freed. glibc serves a block of 128 KiB or more with its own mapping,
/// unmapped at free, but raises that threshold to the size of the largest
/// such block freed: after the first login, Argon2id's 19 MiB came from a
/// thread's heap and stayed there, and 500 logins left the process about
/// 350 MiB larger for good, though only two checks ran at once (measured).
/// A fixed 1 MiB threshold keeps every block that large a mapping of its
/// own; nothing siaga does per packet or per call is that large.
pub fn return_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers; setting the mapping threshold is
    // allowed at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Starts every part and returns once all listen; the work continues in
/// background tasks until `shutdown` is cancelled.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, ServerError> {
    let config = Arc::new(config);
    let prompts = Prompts::load(&config.resolve(&config.server.media.prompts_dir))?;
    let store = Store::lazy(&config.server.database.url)?;
    // Migrate before serving so the API finds its tables; a database that
    // is down must not keep calls out, so this is bounded and the store
    // writer keeps trying in the background.
    match tokio::time::timeout(std::time::Duration::from_secs(2), store.migrate()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "database not ready; serving calls anyway"),
        Err(_) => tracing::warn!("database slow to answer; serving calls anyway"),
    }
    // What /healthz says of the database, kept current beside the
    // writer's own findings (a database idle of writes is probed too).
    {
        let store = store.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stop.cancelled() => return,
                }
                store.probe(std::time::Duration::from_millis(1500)).await;
            }
        });
    }
    let live = Live::new();
    // A fresh database gets its first admin before READY, so the password
    // file is there when the operator looks; a database that does not
    // answer must not hold the calls back for it: then it is done once
    // the database answers.
    if tokio::time::timeout(
        std::time::Duration::from_secs(2),
        first_admin(&config, &store),
    )
    .await
    .is_err()
    {
        let (config, store) = (config.clone(), store.clone());
        tokio::spawn(async move {
            while store.ping().await.is_err() {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
            first_admin(&config, &store).await;
        });
    }
    let dispositions = &config.server.dispositions;
    let pranks = crate::pranks::Pranks::new(dispositions.prank_repeat, dispositions.prank_window);
    pranks.spawn(store.clone());
    let writer = {
        let live = live.clone();
        let store = store.clone();
        let pranks = pranks.clone();
        let places = crate::store::Places {
            journal: Some(config.resolve(&config.server.database.journal_dir)),
            recordings: Some(config.resolve(&config.server.media.recordings_dir)),
            node: config.server.node().to_string(),
        };
        StoreWriter::spawn(store.clone(), places, move |changed| match changed {
            Changed::Calls => live.calls_changed(),
            Changed::Incident(id) => {
                pranks.changed();
                let (live, store) = (live.clone(), store.clone());
                tokio::spawn(async move {
                    if let Ok(Some(incident)) = store.get_incident(&id).await {
                        live.send(crate::live::LiveEvent::Incident {
                            incident,
                            previous_agency: None,
                        });
                    }
                });
            }
        })
    };
    let acd = AcdHandle::spawn(Acd::new(
        &config.queues,
        &config.agents,
        std::time::Instant::now(),
    ));
    let (calls_tx, calls_rx) = mpsc::unbounded_channel();
    let (reg_tx, mut reg_rx) = mpsc::unbounded_channel::<RegistrationEvent>();
    // Each time this node starts leading (once at start for a node alone),
    // it takes the agents' phones and desks on record (`shared`), once SIP
    // runs.
    let (led_tx, led_rx) = mpsc::unbounded_channel::<()>();
    let leadership = match &config.server.cluster {
        None => {
            let _ = led_tx.send(());
            crate::cluster::Leadership::always(config.server.node())
        }
        Some(cluster) => crate::cluster::spawn(
            store.clone(),
            cluster,
            TakeOver {
                store: store.clone(),
                led: led_tx,
                pranks: pranks.clone(),
            },
        ),
    };
    let sip = SipStack::start(
        config.clone(),
        calls_tx,
        reg_tx,
        leadership.clone(),
        shutdown.clone(),
    )
    .await?;
    let to_acd = acd.clone();
    let records = writer.clone();
    tokio::spawn(async move {
        while let Some(ev) = reg_rx.recv().await {
            if let Some(bindings) = &ev.bindings {
                records.send(crate::store::StoreCmd::Bindings {
                    agent: ev.agent.clone(),
                    now: bindings
                        .iter()
                        .map(|b| crate::shared::on_record(&ev.agent, b))
                        .collect(),
                });
            }
            if ev.changed {
                info!(agent = %ev.agent, registered = ev.reachable, "agent phone registration changed");
                to_acd.reachable(ev.agent, crate::acd::Reach::Phone, ev.reachable);
            }
        }
    });
    tokio::spawn(crate::shared::keep_agents(
        crate::shared::Agents {
            store: store.clone(),
            records: writer.clone(),
            sip: sip.handle(),
            acd: acd.clone(),
            leadership: leadership.clone(),
        },
        led_rx,
    ));
    let media = &config.server.media;
    let phones = crate::webphone::Phones::new(
        acd.clone(),
        crate::webphone::Settings {
            ice_ip: config.server.webphone.ice_ip.unwrap_or(media.rtp_ip),
            ice_servers: config.server.webphone.ice_servers.clone(),
            connect_timeout: config.server.webphone.connect_timeout,
        },
    );
    let services = Arc::new(Services {
        config: config.clone(),
        prompts,
        ports: PortPool::new(media.rtp_ip, media.rtp_port_min, media.rtp_port_max),
        recorder: Recorder::start(
            &config.resolve(&media.recordings_dir),
            media.recording_queue_mib << 20,
        ),
        store: writer,
        acd: acd.clone(),
        sip: sip.handle(),
        hangup_all: CancellationToken::new(),
        tracker: TaskTracker::new(),
        live: live.clone(),
        controls: Default::default(),
        phones: phones.clone(),
        rules: Arc::new(crate::call::machine::Rules::of(&config)),
        leadership: leadership.clone(),
        pranks,
    });
    live.spawn_feeds(
        acd.clone(),
        store.clone(),
        config.server.http.utc_offset_hours,
    );
    tokio::spawn(call::run_intake(services.clone(), calls_rx));

    let http_addr = config.server.http.listen;
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .map_err(|source| ServerError::Http {
            addr: http_addr,
            source,
        })?;
    let http = listener.local_addr().map_err(|source| ServerError::Http {
        addr: http_addr,
        source,
    })?;
    let recordings_dir = config.resolve(&config.server.media.recordings_dir);
    if let Err(e) = std::fs::create_dir_all(&recordings_dir) {
        // Calls are still taken; each will report its recording failure.
        tracing::error!(
            folder = %recordings_dir.display(),
            error = %e,
            "recordings folder cannot be created: calls will go unrecorded until this is fixed"
        );
    }
    let app = web::app(web::AppState {
        controls: Some(services.controls.clone()),
        callbacks: Some(call::Callbacks::new(services.clone(), store.clone())),
        store,
        recordings_dir,
        recorder: services.recorder.clone(),
        acd,
        config: config.clone(),
        live,
        logins: Default::default(),
        phones: Some(phones),
        leadership: Some(leadership),
        pranks: services.pranks.clone(),
    });
    // SIP's sockets, the RTP pool (a descriptor a port, twice over for
    // browser calls' gateways) and the recorder's files come first.
    let media = &config.server.media;
    let rtp_ports = (u64::from(media.rtp_port_max) - u64::from(media.rtp_port_min)) / 2 + 1;
    let limits = web::serve::Limits {
        max_connections: web::serve::raise_fd_limit(
            config.server.http.max_connections,
            2 * rtp_ports + 1024,
        ),
        header_read_timeout: config.server.http.header_read_timeout,
    };
    tokio::spawn(web::serve::serve(listener, app, limits, shutdown.clone()));
    info!(%http, "HTTP API listening");
    Ok(Running {
        sip: sip.addrs.clone(),
        http,
        stack: sip,
        services,
        shutdown,
    })
}

/// On the very first start (no panel user at all), makes the user `admin`
/// with a random password, written to `ROOT/initial-admin-password`
/// (owner-only) for the operator to read, log in with and change.
async fn first_admin(config: &Config, store: &Store) {
    match store.list_users().await {
        Ok(users) if users.is_empty() => {}
        _ => return,
    }
    let password: String = {
        use rand::Rng;
        const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzACDEFGHJKLMNPQRSTUVWXYZ23456789";
        let mut rng = rand::rng();
        (0..16)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect()
    };
    let user = match web::new_user(
        config,
        web::UserRequest {
            username: "admin".into(),
            display_name: Some("Administrator".into()),
            role: "admin".into(),
            agency: None,
            agent_id: None,
            password: password.clone(),
        },
    ) {
        Ok(u) => u,
        Err(e) => {
            warn!(error = %e, "first admin not made");
            return;
        }
    };
    let path = config.root.join("initial-admin-password");
    let written = {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        opts.mode(0o600);
        opts.open(&path).and_then(|mut f| writeln!(f, "{password}"))
    };
    if let Err(e) = written {
        warn!(file = %path.display(), error = %e, "first admin not made: cannot write its password");
        return;
    }
    match store.create_user(&user).await {
        Ok(()) => warn!(
            file = %path.display(),
            "first start: panel user `admin` made; its password is in this file. Log in, \
             add users, then change it (`siaga user passwd admin`) and delete the file"
        ),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            warn!(error = %e, "first admin not made");
        }
    }
}

/// Starting to lead: the agents' phones and desks on record are taken
/// (`led`, `shared::keep_agents`), and when the lease was taken over from
/// a node that is gone, its calls left open are closed (`interrupted`,
/// node failure), with their recordings' checksums where this node can
/// read them.
struct TakeOver {
    store: Store,
    led: mpsc::UnboundedSender<()>,
    /// Counted again at once: the old leader's last classifications.
    pranks: crate::pranks::Pranks,
}

impl crate::cluster::OnLead for TakeOver {
    fn took_over(&self, previous: Option<String>) {
        let _ = self.led.send(());
        self.pranks.changed();
        let Some(gone) = previous else { return };
        let store = self.store.clone();
        tokio::spawn(async move {
            let whose = crate::store::Whose::Gone(&gone);
            if let Err(e) = crate::store::close_left_open(&store, whose).await {
                tracing::error!(error = %e, node = %gone, "the calls of the node taken over could not be closed");
            }
        });
    }
}
