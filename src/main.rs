//! The `siaga` binary: serve, migrate, check-config.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "siaga",
    version,
    about = "Emergency call center for NTPD 112 and 119"
)]
struct Cli {
    /// Folder holding sip-config/, dialplans/ and prompts/.
    #[arg(long, global = true, default_value = ".")]
    config_root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the call center.
    Serve,
    /// Check sip-config/ and dialplans/ (and the prompts) without serving.
    CheckConfig,
    /// Create or update the database schema, then exit.
    Migrate,
    /// Print the HA1 secrets of an agent account for sip-config/agents.toml.
    /// Reads the password from standard input; it is never stored or shown.
    AgentSecret {
        /// The agent's id (SIP user name).
        id: String,
    },
    /// Panel users (call-takers, dispatchers, supervisors, admins).
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; the password is read from standard input.
    Add {
        username: String,
        /// call-taker, dispatcher, supervisor or admin.
        #[arg(long)]
        role: String,
        /// The name the panel shows (default: the agent's name or the user name).
        #[arg(long)]
        name: Option<String>,
        /// The agency a dispatcher works for (default: the agent's).
        #[arg(long)]
        agency: Option<String>,
        /// The SIP agent account whose calls this user takes.
        #[arg(long)]
        agent: Option<String>,
    },
    /// Set a new password (read from standard input); ends the user's sessions.
    Passwd { username: String },
    /// Refuse the user's logins and end their sessions.
    Disable { username: String },
    /// Let a disabled user log in again.
    Enable { username: String },
    /// List the users.
    List,
}

fn read_password() -> anyhow::Result<String> {
    let mut password = String::new();
    std::io::stdin()
        .read_line(&mut password)
        .context("reading the password from standard input")?;
    Ok(password.trim_end_matches(['\r', '\n']).to_string())
}

async fn user_command(config: &siaga::config::Config, cmd: UserCommand) -> anyhow::Result<()> {
    use siaga::store::now_ms;
    use siaga::web::auth;
    let store = siaga::store::Store::lazy(&config.server.database.url)?;
    store.migrate().await.context("running migrations")?;
    let find = |name: String| {
        let store = store.clone();
        async move {
            store
                .user_by_username(&name)
                .await?
                .with_context(|| format!("no user `{name}`"))
        }
    };
    match cmd {
        UserCommand::Add {
            username,
            role,
            name,
            agency,
            agent,
        } => {
            anyhow::ensure!(
                store.user_by_username(&username).await?.is_none(),
                "user `{username}` exists already"
            );
            let new = siaga::web::new_user(
                config,
                siaga::web::UserRequest {
                    username,
                    display_name: name,
                    role,
                    agency,
                    agent_id: agent,
                    password: read_password()?,
                },
            )
            .map_err(anyhow::Error::msg)?;
            store.create_user(&new).await?;
            println!("user `{}` added as {}", new.username, new.role);
        }
        UserCommand::Passwd { username } => {
            let user = find(username).await?;
            let password = read_password()?;
            auth::check_password(&user.username, &password).map_err(anyhow::Error::msg)?;
            let hash = auth::hash_password(&password).map_err(anyhow::Error::msg)?;
            store.set_password(&user.id, &hash, now_ms()).await?;
            println!(
                "password of `{}` changed; its sessions ended",
                user.username
            );
        }
        UserCommand::Disable { username } => {
            let user = find(username).await?;
            store.set_disabled(&user.id, true, now_ms()).await?;
            println!("`{}` disabled; its sessions ended", user.username);
        }
        UserCommand::Enable { username } => {
            let user = find(username).await?;
            store.set_disabled(&user.id, false, now_ms()).await?;
            println!("`{}` enabled", user.username);
        }
        UserCommand::List => {
            for u in store.list_users().await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}{}",
                    u.username,
                    u.role,
                    u.agency.as_deref().unwrap_or("-"),
                    u.agent_id.as_deref().unwrap_or("-"),
                    u.display_name,
                    if u.disabled != 0 { "\t(disabled)" } else { "" }
                );
            }
        }
    }
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIAGA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(siaga::DEFAULT_LOG));
    // Logs go to stderr; stdout carries only the READY line for scripts.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::CheckConfig => {
            let config = siaga::config::Config::load(&cli.config_root)?;
            let prompts = config.resolve(&config.server.media.prompts_dir);
            siaga::media::prompts::Prompts::load(&prompts)?;
            println!(
                "config OK: {} route(s), {} queue(s), {} trunk(s), {} agent(s)",
                config.dialplan.routes.len(),
                config.queues.len(),
                config.server.trunks.len(),
                config.agents.len()
            );
        }
        Command::AgentSecret { id } => {
            let config = siaga::config::Config::load(&cli.config_root)?;
            let realm = &config.server.sip.realm;
            let password = read_password()?;
            let password = password.as_str();
            anyhow::ensure!(
                password.len() >= 8,
                "use a password of at least 8 characters"
            );
            use siaga::sip::digest::{ha1, Algorithm};
            println!(
                "ha1_md5 = \"{}\"",
                ha1(Algorithm::Md5, &id, realm, password)
            );
            println!(
                "ha1_sha256 = \"{}\"",
                ha1(Algorithm::Sha256, &id, realm, password)
            );
        }
        Command::User(cmd) => {
            let config = siaga::config::Config::load(&cli.config_root)?;
            user_command(&config, cmd).await?;
        }
        Command::Migrate => {
            let config = siaga::config::Config::load(&cli.config_root)?;
            let store = siaga::store::Store::lazy(&config.server.database.url)?;
            store.migrate().await.context("running migrations")?;
            println!("database schema is current");
        }
        Command::Serve => {
            siaga::server::return_large_blocks();
            let config = siaga::config::Config::load(&cli.config_root)?;
            let grace = config.server.sip.shutdown_grace;
            let shutdown = CancellationToken::new();
            let running = siaga::server::start(config, shutdown.clone()).await?;
            // One machine-readable line, for scripts and tests.
            let list = |v: &[std::net::SocketAddr]| {
                v.iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            println!(
                "READY sip-udp={} sip-tcp={} http={}",
                list(&running.sip.udp),
                list(&running.sip.tcp),
                running.http
            );
            wait_for_signal().await;
            tracing::info!("stopping; a second signal stops at once");
            tokio::select! {
                _ = running.shutdown(grace) => {}
                _ = wait_for_signal() => tracing::warn!("stopped at once"),
            }
        }
    }
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
