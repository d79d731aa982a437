//! understudy's JSON control gateway (B9, B10): read and
//! set scores, take devices online and offline, trigger elections, read a
//! group's status, roster and counts, and follow its events — over HTTP
//! (with Server-Sent Events and WebSocket streams and a web dashboard) and
//! over a newline-delimited JSON TCP protocol.
//!
//! The gateway is a service like the others: it talks to the devices only
//! through the bus (docs/bus.md) — roster and control requests, trigger
//! publishes, the JetStream event stream — and announces each of its client
//! sessions as presence so every device's counts show them. It holds no
//! state of the group itself. The contract for clients is
//! `docs/openapi.json` and `docs/control.md`.
//!
//! One file per concern: [`input`] validates what clients send, [`auth`] the
//! tokens and roles, [`bus`] asks the devices, [`ops`] is each call once for both
//! protocols, [`answers`] the documents they answer with, [`events`] reads
//! the event stream, [`presence`] announces sessions and lists groups,
//! [`http`] and [`tcp`] are the two front doors, [`cli`] the `understudy
//! gateway` command.

pub mod answers;
mod assets;
pub mod auth;
pub mod bus;
pub mod cli;
mod error;
pub mod events;
pub mod http;
pub mod input;
pub mod openapi;
pub mod ops;
pub mod presence;
pub mod tcp;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};
use understudy_bus::NatsSettings;

pub use error::{ApiError, GatewayError};

/// The default HTTP listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The default TCP listen address.
pub const DEFAULT_TCP_LISTEN: &str = "127.0.0.1:8081";

/// How long the servers get to finish at shutdown before they are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A gateway's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// NATS servers, credentials and TLS.
    pub nats: NatsSettings,
    /// Where the HTTP API listens.
    pub listen: String,
    /// Where the TCP protocol listens.
    pub tcp_listen: String,
    /// The admin token (reads and writes); none makes the gateway refuse
    /// every write.
    pub api_token: Option<String>,
    /// Read-only tokens (reads and event streams). With no token at all,
    /// reads are open.
    pub read_tokens: Vec<String>,
    /// Where `GET /metrics` listens; `None` serves no metrics.
    pub metrics_listen: Option<String>,
    /// A PEM certificate chain and private key: the HTTP listener speaks
    /// TLS (HTTPS, WSS) with them; `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
}

/// The files of the HTTP listener's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM, the server's certificate first.
    pub cert: std::path::PathBuf,
    /// The private key, PEM.
    pub key: std::path::PathBuf,
}

/// Connects to NATS; if the bus is not up yet the gateway starts anyway,
/// answers `bus_unavailable` and connects as soon as it can.
async fn connect(
    nats: &NatsSettings,
) -> Result<(async_nats::Client, understudy_bus::Refused), GatewayError> {
    nats.connect_service("understudy-gateway", |o| {
        o.request_timeout(Some(bus::ANSWER_WITHIN))
    })
    .await
    .map_err(|e| GatewayError::Connect {
        url: nats.servers.clone(),
        detail: e.to_string(),
    })
}

async fn bind(what: &'static str, addr: &str) -> Result<TcpListener, GatewayError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind {
            what,
            addr: addr.to_owned(),
            source,
        })?;
    if let Ok(local) = listener.local_addr()
        && !local.ip().is_loopback()
    {
        warn!(%local, "{what} listens beyond this machine: anyone who can reach it can read the group's state");
    }
    Ok(listener)
}

fn local(l: &TcpListener) -> String {
    l.local_addr()
        .map_or_else(|_| "?".into(), |a: SocketAddr| a.to_string())
}

/// Runs the gateway until `shutdown` resolves; then closes every session
/// (announcing them gone) and stops.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
    let tokens = auth::Tokens::new(config.api_token.as_deref(), &config.read_tokens);
    let tls = match &config.tls {
        Some(files) => Some(tls::server_config(&files.cert, &files.key)?),
        None => None,
    };
    let http_listener = bind("--listen", &config.listen).await?;
    let tcp_listener = bind("--tcp-listen", &config.tcp_listen).await?;
    let metrics_listener = match &config.metrics_listen {
        Some(addr) => Some(bind("--metrics-listen", addr).await?),
        None => None,
    };
    let (client, mut refused) = connect(&config.nats).await?;
    if !tokens.is_set() {
        warn!(
            "no token configured (--api-token-file, --read-tokens-file): reads are open to anyone who can reach the gateway and every mutating call is refused with 401"
        );
    } else if !tokens.has_admin() {
        warn!(
            "no admin token configured (--api-token-file or UNDERSTUDY_API_TOKEN): every mutating call will be refused"
        );
    }
    info!(
        admin = tokens.has_admin(),
        read_only = tokens.read_only_count(),
        "tokens configured"
    );
    info!(
        http = %local(&http_listener),
        tls = tls.is_some(),
        tcp = %local(&tcp_listener),
        nats = %config.nats.servers,
        "gateway listening"
    );
    let (stop, stopped) = watch::channel(false);
    let shared = Arc::new(ops::Shared {
        bus: bus::BusApi::new(client.clone()),
        tokens,
        sessions: presence::Sessions::new(),
        groups: presence::GroupsSeen::new(),
        shutdown: stopped.clone(),
    });
    let announcer = tokio::spawn(presence::announce(
        client.clone(),
        Arc::clone(&shared.sessions),
        stopped.clone(),
    ));
    let watcher = tokio::spawn(presence::watch_groups(
        client.clone(),
        Arc::clone(&shared.groups),
        stopped.clone(),
    ));
    let tcp = tokio::spawn(tcp::serve(tcp_listener, Arc::clone(&shared)));
    if let Some(listener) = metrics_listener {
        let mut stop = stopped.clone();
        tokio::spawn(understudy_telemetry::serve(listener, async move {
            understudy_bus::stopped(&mut stop).await;
        }));
    }
    let mut http_stop = stopped.clone();
    let graceful = async move { understudy_bus::stopped(&mut http_stop).await };
    let app = http::router(Arc::clone(&shared));
    let mut http = match tls {
        Some(tls) => {
            let listener =
                tls::TlsListener::new(http_listener, tls).map_err(|source| GatewayError::Bind {
                    what: "--listen",
                    addr: config.listen.clone(),
                    source,
                })?;
            tokio::spawn(
                axum::serve(listener, app)
                    .with_graceful_shutdown(graceful)
                    .into_future(),
            )
        }
        None => tokio::spawn(
            axum::serve(http_listener, app)
                .with_graceful_shutdown(graceful)
                .into_future(),
        ),
    };
    let mut refusal = None;
    let http_ended = tokio::select! {
        () = shutdown => None,
        r = &mut http => Some(r),
        why = refused.wait() => {
            refusal = Some(why);
            None
        }
    };
    info!("gateway stopping");
    let _ = stop.send(true);
    let finished = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let _ = tcp.await;
        let _ = watcher.await;
        let _ = announcer.await;
        match http_ended {
            Some(r) => r,
            None => (&mut http).await,
        }
    })
    .await;
    http.abort();
    match finished {
        Ok(Ok(Err(source))) => {
            return Err(GatewayError::Serve {
                what: "HTTP",
                source,
            });
        }
        Ok(Err(e)) if !e.is_cancelled() => {
            return Err(GatewayError::Config(format!(
                "the HTTP server stopped: {e}"
            )));
        }
        _ => {}
    }
    if let Some(why) = refusal {
        return Err(GatewayError::Connect {
            url: config.nats.servers.clone(),
            detail: format!("the server refused the gateway: {why}"),
        });
    }
    info!("gateway stopped");
    Ok(())
}
