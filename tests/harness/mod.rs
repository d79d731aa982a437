//! The end-to-end test harness: real `nats-server` processes (single and a
//! 3-node cluster), real `understudy` device processes, a fault-injecting TCP
//! proxy and an observer that records what a group says on the bus.
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
//! process is killed and every temp dir removed when its handle is dropped; when
//! a test fails (the thread is panicking) the logs are kept and their paths
//! printed.
//!
//! The `nats-server` binary comes from `UNDERSTUDY_NATS_SERVER`, else
//! `<repo>/.tools/bin/nats-server`, else `nats-server` on `PATH`; it must be
//! 2.11 or newer (`scripts/ensure-nats.sh` installs one).

// Each test file uses only part of the harness.
#![allow(dead_code, unused_imports)]

pub mod device;
pub mod nats;
pub mod observer;
pub mod proxy;

use std::ffi::OsStr;
use std::fs;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};

pub use device::{Device, DeviceOpts};
pub use nats::{NatsCluster, NatsServer};
pub use observer::{Observer, Recording, Timed, View};
pub use proxy::FaultProxy;

/// How often conditions are polled while waiting for them.
pub const POLL: Duration = Duration::from_millis(20);

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

/// The root of the repository (the folder that holds `tests/harness/`).
pub fn repo_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        // `file!()` is relative to the workspace root when the test lives in
        // the workspace, and absolute otherwise; find the ancestor of the
        // package's manifest dir it is relative to.
        let this = Path::new(file!());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let found = manifest
            .ancestors()
            .map(|dir| dir.join(this))
            .find(|candidate| candidate.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "cannot locate {} from {}",
                    this.display(),
                    manifest.display()
                )
            });
        let found = found.canonicalize().unwrap_or(found);
        // <root>/tests/harness/mod.rs
        found
            .ancestors()
            .nth(3)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| panic!("{} has no repository root", found.display()))
    })
}

/// The `understudy` binary under test: Cargo's `CARGO_BIN_EXE_understudy`
/// when the test is built as part of the CLI package, else
/// `<repo>/target/debug/understudy`.
pub fn understudy_bin() -> PathBuf {
    let bin = match option_env!("CARGO_BIN_EXE_understudy") {
        Some(path) => PathBuf::from(path),
        None => repo_root().join("target/debug/understudy"),
    };
    assert!(
        bin.is_file(),
        "the understudy binary {} does not exist; build it with `cargo build -p understudy`",
        bin.display()
    );
    bin
}

/// Runs the `understudy` CLI with `args` and returns its output; kills it and
/// panics if it runs longer than [`CLI_TIMEOUT`].
pub async fn run_cli<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let bin = understudy_bin();
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    let child = tokio::process::Command::new(&bin)
        .args(args)
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

/// Connects a NATS client for the test itself: `urls` is one URL or several
/// separated by commas. Short connection timeout (2 s), quick reconnects (at
/// most 250 ms apart), 5 s request timeout, and servers a cluster gossips are
/// ignored (so a client behind a [`FaultProxy`] stays behind it).
pub async fn connect(urls: &str) -> Result<async_nats::Client> {
    let addrs: Vec<&str> = urls.split(',').map(str::trim).collect();
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5)))
        .reconnect_delay_callback(|attempt| Duration::from_millis((attempt as u64 * 50).min(250)))
        .ignore_discovered_servers()
        .connect(addrs.as_slice())
        .await
        .with_context(|| format!("cannot connect to {urls}"))
}

/// Polls `probe` every [`POLL`] until it returns `Some`, or fails after
/// `within` with `what` and the last probe's complaint in the message.
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match tokio::time::timeout_at(deadline.into(), probe()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "the last attempt was still running".to_string(),
        };
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released). Several calls in a
/// row may return the same port; use [`free_ports`] when you need distinct ones.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free TCP ports on 127.0.0.1 (all bound at once, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// The wall clock in Unix milliseconds, as heartbeats' `sent_at_ms` give it.
pub fn unix_ms_now() -> u64 {
    understudy_bus::unix_ms(SystemTime::now())
}

/// A fresh temporary directory, removed on drop unless the thread is
/// panicking (a failing test keeps it for its logs).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/understudy-e2e-<label>-<pid>-<n>`.
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "understudy-e2e-{label}-{}-{n}-{nanos:08x}",
            std::process::id()
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// The last `lines` lines of the text file at `path` (empty if unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends `signal` (e.g. "KILL", "STOP", "CONT", "TERM") to process `pid` with
/// `kill -s`.
pub fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run `kill -s {signal} {pid}`"))?;
    if !status.success() {
        return Err(anyhow!("`kill -s {signal} {pid}` failed: {status}"));
    }
    Ok(())
}
