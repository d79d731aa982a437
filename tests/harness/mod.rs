//! The end-to-end tests' side of the shared toolkit: `understudy-testkit`
//! starts the processes (nats-server, single or a cluster; `understudy`
//! devices and gateway; temp dirs, free ports, waits with a deadline), and
//! this module adds what only tests need: where this build's binaries are,
//! a CLI runner, a fault-injecting TCP proxy, an observer that records what a
//! group says on the bus, and an HTTP client for the gateway.
//!
//! Include it from a test file with
//!
//! ```ignore
//! #[path = "harness/mod.rs"]
//! mod harness;
//! use harness::*;
//! ```
//!
//! and run the tests on a multi-threaded runtime
//! (`#[tokio::test(flavor = "multi_thread", worker_threads = 4)]`).
//!
//! Every wait is bounded by a deadline; nothing sleeps to synchronise. Every
//! process is killed and every temp dir removed when its handle is dropped;
//! when a test fails (the thread is panicking) the logs are kept and their
//! paths printed.
//!
//! The `nats-server` binary comes from `UNDERSTUDY_NATS_SERVER`, else
//! `<repo>/.tools/bin/nats-server`, else `nats-server` on `PATH`; it must be
//! 2.11 or newer (`scripts/ensure-nats.sh` installs one).

// Each test file uses only part of the harness.
#![allow(dead_code, unused_imports)]

pub mod http;
pub mod observer;
pub mod proxy;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

pub use observer::{Observer, Recording, Timed, View};
pub use proxy::FaultProxy;
pub use understudy_testkit::{
    Device, DeviceOpts, Gateway, GatewayOpts, Launch, NatsCluster, NatsServer, POLL, Signal,
    TempDir, connect, free_port, free_ports, mac, tail,
};

/// [`understudy_testkit::wait_until`] with the tests' error type: polls
/// `probe` until it returns `Ok`, failing after `within` with `what` and the
/// last complaint.
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    Ok(understudy_testkit::wait_until(what, within, probe).await?)
}

/// How long `run_cli` lets the CLI run before it kills it.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(20);

/// Shorthand for a `Duration` of whole seconds.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Shorthand for a `Duration` of milliseconds.
pub fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// The root of the repository: the workspace holding this package.
pub fn repo_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        // The package is <root>/crates/understudy.
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest
            .ancestors()
            .find(|dir| dir.join("tests/harness/mod.rs").is_file())
            .unwrap_or_else(|| panic!("no repository root above {}", manifest.display()));
        root.to_path_buf()
    })
}

/// The `understudy` binary under test (Cargo builds it for this package's
/// tests).
pub fn understudy_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_understudy"))
}

/// The `nats-server` binary (see the module docs); panics, saying how to
/// install one, when there is none or it is too old.
pub fn nats_server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let tools = [repo_root().join(".tools/bin/nats-server")];
        understudy_testkit::find_nats_server(None, &tools).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Starts a single nats-server with JetStream in a temp dir; panics on failure.
pub async fn start_nats() -> NatsServer {
    NatsServer::start(nats_server_bin())
        .await
        .unwrap_or_else(|e| panic!("cannot start nats-server: {e}"))
}

/// Starts an `n`-node NATS cluster in a temp dir, JetStream ready; panics on
/// failure.
pub async fn start_cluster(n: usize) -> NatsCluster {
    NatsCluster::start(nats_server_bin(), n)
        .await
        .unwrap_or_else(|e| panic!("cannot start a {n}-node NATS cluster: {e}"))
}

/// Starts a device in its own temp dir with the test timings pinned
/// (`--heartbeat-interval 100ms --grace-period 2s`, then `opts.extra_args`);
/// does not wait for it to be up (watch it with an [`Observer`]). Panics if
/// it cannot be spawned.
pub fn spawn_device<S: AsRef<str>>(urls: &[S], mut opts: DeviceOpts) -> Device {
    let mut args: Vec<String> = ["--heartbeat-interval", "100ms", "--grace-period", "2s"]
        .map(String::from)
        .to_vec();
    args.append(&mut opts.extra_args);
    opts.extra_args = args;
    Device::start(understudy_bin(), None, urls, opts)
        .unwrap_or_else(|e| panic!("cannot start a device: {e}"))
}

/// Starts `understudy gateway` on free loopback ports in its own temp dir
/// and waits until it accepts connections; panics on failure.
pub async fn start_gateway(nats: &str, api_token: Option<&str>) -> Gateway {
    let opts = GatewayOpts::free_ports(api_token).expect("two free ports");
    start_gateway_on(nats, opts).await
}

/// Like [`start_gateway`], on the addresses `opts` gives (a restarted
/// gateway keeps its ports).
pub async fn start_gateway_on(nats: &str, opts: GatewayOpts) -> Gateway {
    let mut gw = Gateway::start(understudy_bin(), None, nats, opts)
        .unwrap_or_else(|e| panic!("cannot start the gateway: {e}"));
    if let Err(e) = gw.wait_listening(secs(15)).await {
        panic!("{e}");
    }
    gw
}

/// How the tests' own gRPC clients reach the project service: plain, or on
/// a secured run over TLS with the group token (as the devices do).
pub fn project_security() -> understudy_project_sync::security::ClientSecurity {
    use understudy_project_sync::security::{ClientSecurity, ProjectSecurity};
    match understudy_testkit::secure::from_env() {
        None => ClientSecurity::plain(),
        Some(bus) => ProjectSecurity {
            tls_ca: Some(bus.ca()),
            token_file: Some(bus.project_token_file().expect("the project token file")),
            ..ProjectSecurity::default()
        }
        .client()
        .expect("the project client's settings"),
    }
}

/// A raw gRPC client of the project service, as [`raw_project_client`]
/// makes it.
pub type RawProjectClient = understudy_project_sync::pb::project_client::ProjectClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        understudy_project_sync::security::BearerToken,
    >,
>;

/// A raw gRPC client of the project service at `address` (`host:port`),
/// as [`project_security`] says (TLS and the token on a secured run).
pub async fn raw_project_client(address: &str) -> anyhow::Result<RawProjectClient> {
    let security = project_security();
    let channel = security
        .endpoint(address)
        .map_err(anyhow::Error::msg)?
        .connect()
        .await?;
    Ok(
        understudy_project_sync::pb::project_client::ProjectClient::with_interceptor(
            channel,
            security.token(),
        ),
    )
}

/// Runs the `understudy` CLI with `args` and returns its output; kills it and
/// panics if it runs longer than [`CLI_TIMEOUT`].
pub async fn run_cli<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let bin = understudy_bin();
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    // On a secured run the CLI is an operator's: the gateway's credentials,
    // and the project service's CA and group token.
    let secured = understudy_testkit::secure::from_env()
        .map(|bus| {
            let mut env = bus.env(&understudy_bus::accounts::Role::Gateway);
            env.extend(bus.project_client_env().expect("the project token file"));
            env
        })
        .unwrap_or_default();
    let child = tokio::process::Command::new(bin)
        .args(args)
        .envs(secured)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    match tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("understudy {}: {e}", shown.join(" ")),
        Err(_) => panic!(
            "understudy {} did not finish within {CLI_TIMEOUT:?}",
            shown.join(" ")
        ),
    }
}

/// Runs the CLI; its stdout when it succeeded, else an error with its exit
/// status and stderr — for a call retried inside a wait (a device that has
/// just started may not answer yet).
pub async fn run_cli_checked<S: AsRef<OsStr>>(args: &[S]) -> anyhow::Result<String> {
    let output = run_cli(args).await;
    anyhow::ensure!(
        output.status.success(),
        "understudy failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs the `understudy` CLI like [`run_cli`], panics unless it exits with
/// success, and returns its standard output.
pub async fn run_cli_ok<S: AsRef<OsStr>>(args: &[S]) -> String {
    let output = run_cli(args).await;
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    assert!(
        output.status.success(),
        "understudy {} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        shown.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Sets a device's score through the CLI (`understudy score set`), as an
/// operator would, and checks the CLI confirms it.
pub async fn set_score(url: &str, group: &str, device: &str, score: u8) {
    let score = score.to_string();
    let out = run_cli_ok(&[
        "score", "set", "--group", group, "--device", device, &score, "--nats", url,
    ])
    .await;
    assert!(
        out.contains(&format!("score of {device} set to {score}")),
        "{out}"
    );
}

/// The wall clock in Unix milliseconds, as heartbeats' `sent_at_ms` give it.
pub fn unix_ms_now() -> u64 {
    understudy_bus::unix_ms(SystemTime::now())
}

/// The first heartbeat on `beats` that `pick` accepts, within `within`
/// (`None` if none came).
pub async fn beat_where(
    beats: &mut async_nats::Subscriber,
    within: Duration,
    pick: impl Fn(&understudy_protocol::messages::Heartbeat) -> bool,
) -> Option<understudy_protocol::messages::Heartbeat> {
    use futures::StreamExt;
    tokio::time::timeout(within, async {
        while let Some(m) = beats.next().await {
            if let Ok(hb) = understudy_protocol::messages::decode(&m.payload)
                && pick(&hb)
            {
                return Some(hb);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}
