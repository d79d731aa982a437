//! Real `nats-server` processes with JetStream: a single server and a 3-node
//! cluster, on loopback ports, killed on drop.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream;
use tokio::io::AsyncReadExt;

use super::{TempDir, connect, free_ports, repo_root, tail, wait_until};

/// How long a started server has to accept connections.
pub const START_DEADLINE: Duration = Duration::from_secs(10);

/// How long a cluster has to get JetStream ready cluster-wide.
pub const CLUSTER_READY_DEADLINE: Duration = Duration::from_secs(30);

/// The oldest nats-server the tests run against (async-nats 0.51 cannot create
/// a KV bucket on Debian's 2.9).
const MIN_VERSION: (u32, u32) = (2, 11);

/// The `nats-server` binary: `UNDERSTUDY_NATS_SERVER`, else
/// `<repo>/.tools/bin/nats-server`, else `nats-server` on `PATH`. Panics,
/// pointing at `scripts/ensure-nats.sh`, when none is found or it is too old.
pub fn nats_server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let hint = "run `scripts/ensure-nats.sh` (or `source` it) to install a current \
                    nats-server into .tools/bin, or set UNDERSTUDY_NATS_SERVER";
        let from_env = std::env::var_os("UNDERSTUDY_NATS_SERVER")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let tools = repo_root().join(".tools/bin/nats-server");
        let bin = match from_env {
            Some(bin) => bin,
            None if tools.is_file() => tools,
            None => std::env::var_os("PATH")
                .and_then(|path| {
                    std::env::split_paths(&path)
                        .map(|dir| dir.join("nats-server"))
                        .find(|candidate| candidate.is_file())
                })
                .unwrap_or_else(|| panic!("no nats-server found; {hint}")),
        };
        let out = Command::new(&bin)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} --version: {e}; {hint}", bin.display()));
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        match parse_version(&text) {
            Some(v) if v >= MIN_VERSION => bin,
            _ => panic!(
                "{} reports {:?}; the tests need nats-server >= {}.{}; {hint}",
                bin.display(),
                text.trim(),
                MIN_VERSION.0,
                MIN_VERSION.1
            ),
        }
    })
}

/// Parses "nats-server: v2.15.1" into (2, 15).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.trim().rsplit('v').next()?;
    let mut parts = v.split('.');
    let major = parts.next()?.trim().parse().ok()?;
    let minor = parts.next()?.trim().parse().ok()?;
    Some((major, minor))
}

/// One nats-server process with fixed ports and store, that can be killed and
/// restarted.
#[derive(Debug)]
struct Proc {
    name: String,
    port: u16,
    args: Vec<String>,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Spawns the process; does not wait for it.
    fn spawn(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let log2 = log.try_clone()?;
        let child = Command::new(nats_server_bin())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .with_context(|| format!("spawn {}", nats_server_bin().display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the server answers on its client port with its INFO line.
    async fn wait_accepting(&mut self, within: Duration) -> Result<()> {
        let addr = self.addr();
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "{} exited during start-up ({status}); its log {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log, 20)
                );
            }
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), read_info(addr)).await
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not accept connections on {addr} within {within:?}; its log {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log, 20)
                );
            }
            tokio::time::sleep(super::POLL).await;
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and reap; a no-op when not running.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Kill, and when the test fails, say where the log is.
    fn drop_report(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("[harness] {} log: {}", self.name, self.log.display());
        }
    }
}

/// Connects to `addr` and reads the server's `INFO` line.
async fn read_info(addr: SocketAddr) -> Result<()> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await?;
    if &buf != b"INFO" {
        bail!("{addr} is not a NATS server");
    }
    Ok(())
}

/// Whether a log says the port was taken between picking and binding it.
fn port_taken(log: &Path) -> bool {
    fs::read_to_string(log)
        .map(|t| t.contains("address already in use"))
        .unwrap_or(false)
}

/// A single nats-server with JetStream on a free loopback port; killed on drop,
/// its store removed on drop.
#[derive(Debug)]
pub struct NatsServer {
    proc: Proc,
    // Dropped after `proc` (fields drop in order), so the process is gone first.
    _dir: TempDir,
}

impl NatsServer {
    /// Starts a nats-server (`-a 127.0.0.1 -p <free port> -js -sd <tempdir>`)
    /// and waits (at most 10 s) until it accepts connections. Panics on failure.
    pub async fn start() -> NatsServer {
        let mut last = String::new();
        for _ in 0..3 {
            let dir = TempDir::new("nats");
            let port = free_ports(1)[0];
            let store = dir.path().join("store");
            let args = vec![
                "-a".to_string(),
                "127.0.0.1".to_string(),
                "-p".to_string(),
                port.to_string(),
                "-js".to_string(),
                "-sd".to_string(),
                store.display().to_string(),
                "--server_name".to_string(),
                format!("single-{port}"),
            ];
            let mut proc = Proc {
                name: format!("nats-server :{port}"),
                port,
                args,
                store,
                log: dir.path().join("nats-server.log"),
                child: None,
            };
            let started = match proc.spawn() {
                Ok(()) => proc.wait_accepting(START_DEADLINE).await,
                Err(e) => Err(e),
            };
            match started {
                Ok(()) => return NatsServer { proc, _dir: dir },
                Err(e) if port_taken(&proc.log) => {
                    last = format!("{e:#}");
                    proc.kill();
                }
                Err(e) => {
                    proc.kill();
                    panic!("cannot start nats-server: {e:#}");
                }
            }
        }
        panic!("cannot start nats-server (ports kept being taken): {last}");
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.proc.url()
    }

    /// The client address, e.g. for [`super::FaultProxy::start`].
    pub fn addr(&self) -> SocketAddr {
        self.proc.addr()
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.proc.port
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// The server's log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.proc.log
    }

    /// The JetStream store directory (kept across [`NatsServer::restart`]).
    pub fn store_dir(&self) -> &Path {
        &self.proc.store
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Kills the server with SIGKILL (no clean shutdown); a no-op when it is
    /// not running.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts the server again (killing it first if it runs) on the same port
    /// with the same store, and waits (at most 10 s) until it accepts
    /// connections. Panics on failure.
    pub async fn restart(&mut self) {
        self.proc.kill();
        if let Err(e) = self.proc.spawn() {
            panic!("cannot restart nats-server: {e:#}");
        }
        if let Err(e) = self.proc.wait_accepting(START_DEADLINE).await {
            self.proc.kill();
            panic!("cannot restart nats-server: {e:#}");
        }
    }

    /// A NATS client for the test itself (see [`super::connect`]).
    pub async fn client(&self) -> Result<async_nats::Client> {
        connect(&self.url()).await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.proc.drop_report();
        // The store may be large and is of no use after a failure; the log is
        // kept with the temp dir when the test fails.
        if std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.proc.store);
        }
    }
}

/// A NATS cluster of nats-servers with JetStream (cluster name `understudy`,
/// server names `n1`, `n2`, …) on loopback; killed on drop.
///
/// Each node runs from a config file with `cluster.no_advertise`, so clients
/// only use the URLs they are given (a device behind a proxy stays behind it).
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Proc>,
    _dir: TempDir,
}

impl NatsCluster {
    /// Starts `n` nodes in one cluster and waits until JetStream is ready
    /// cluster-wide: a client can create (and delete) a KV bucket with `n`
    /// replicas, retried for at most 30 s. Panics on failure.
    pub async fn start(n: usize) -> NatsCluster {
        assert!(n >= 1, "a cluster needs at least one node");
        let mut last = String::new();
        for _ in 0..3 {
            let dir = TempDir::new("nats-cluster");
            let ports = free_ports(2 * n);
            let (client_ports, cluster_ports) = ports.split_at(n);
            let routes: Vec<String> = cluster_ports
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            let mut nodes = Vec::with_capacity(n);
            for i in 0..n {
                let name = format!("n{}", i + 1);
                let store = dir.path().join(format!("{name}-store"));
                let conf = dir.path().join(format!("{name}.conf"));
                let mut text = String::new();
                let _ = writeln!(text, "server_name: {name}");
                let _ = writeln!(text, "listen: \"127.0.0.1:{}\"", client_ports[i]);
                let _ = writeln!(
                    text,
                    "jetstream {{ store_dir: {:?} }}",
                    store.display().to_string()
                );
                let _ = writeln!(text, "cluster {{");
                let _ = writeln!(text, "  name: understudy");
                let _ = writeln!(text, "  listen: \"127.0.0.1:{}\"", cluster_ports[i]);
                let _ = writeln!(text, "  no_advertise: true");
                let _ = writeln!(
                    text,
                    "  routes: [{}]",
                    routes
                        .iter()
                        .map(|r| format!("{r:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let _ = writeln!(text, "}}");
                fs::write(&conf, text).unwrap_or_else(|e| panic!("write {}: {e}", conf.display()));
                nodes.push(Proc {
                    name: format!("nats-server {name} :{}", client_ports[i]),
                    port: client_ports[i],
                    args: vec!["-c".to_string(), conf.display().to_string()],
                    store,
                    log: dir.path().join(format!("{name}.log")),
                    child: None,
                });
            }
            let mut cluster = NatsCluster { nodes, _dir: dir };
            match cluster.boot().await {
                Ok(()) => return cluster,
                Err(e) if cluster.nodes.iter().any(|p| port_taken(&p.log)) => {
                    last = format!("{e:#}");
                    cluster.kill_all();
                }
                Err(e) => {
                    cluster.kill_all();
                    panic!("cannot start a {n}-node NATS cluster: {e:#}");
                }
            }
        }
        panic!("cannot start a NATS cluster (ports kept being taken): {last}");
    }

    async fn boot(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            node.spawn()?;
        }
        for node in &mut self.nodes {
            node.wait_accepting(START_DEADLINE).await?;
        }
        self.wait_jetstream_ready(CLUSTER_READY_DEADLINE).await
    }

    fn kill_all(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }

    /// Waits until a client (to any running node) can create and delete a KV
    /// bucket replicated on every node; fails after `within`.
    pub async fn wait_jetstream_ready(&self, within: Duration) -> Result<()> {
        let urls = self.urls().join(",");
        static READY_PROBES: AtomicU64 = AtomicU64::new(0);
        let replicas = self.nodes.len();
        wait_until("JetStream to be ready cluster-wide", within, || {
            let urls = urls.clone();
            async move {
                let client = connect(&urls).await?;
                let js = jetstream::new(client);
                let bucket = format!(
                    "harness-ready-{}",
                    READY_PROBES.fetch_add(1, Ordering::Relaxed)
                );
                js.create_key_value(async_nats::jetstream::kv::Config {
                    bucket: bucket.clone(),
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow!("create an R{replicas} KV bucket: {e}"))?;
                js.delete_key_value(&bucket)
                    .await
                    .map_err(|e| anyhow!("delete the KV bucket: {e}"))?;
                Ok(())
            }
        })
        .await
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes (never: `start` needs one).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's client URL, `nats://127.0.0.1:<port>`, node 0 first.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Proc::url).collect()
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Node `i`'s client address, e.g. for [`super::FaultProxy::start`].
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr()
    }

    /// Node `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].pid()
    }

    /// Node `i`'s log file.
    pub fn log_path(&self, i: usize) -> &Path {
        &self.nodes[i].log
    }

    /// Whether node `i` is running.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i].is_running()
    }

    /// Kills node `i` with SIGKILL; a no-op when it is not running.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again (killing it first if it runs) with the same ports,
    /// config and store, and waits (at most 10 s) until it accepts client
    /// connections. It does not wait for JetStream; use
    /// [`NatsCluster::wait_jetstream_ready`] for that. Panics on failure.
    pub async fn restart(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.kill();
        if let Err(e) = node.spawn() {
            panic!("cannot restart {}: {e:#}", node.name);
        }
        if let Err(e) = node.wait_accepting(START_DEADLINE).await {
            node.kill();
            panic!("cannot restart node {i}: {e:#}");
        }
    }

    /// A NATS client for the test itself, given every node's URL.
    pub async fn client(&self) -> Result<async_nats::Client> {
        connect(&self.urls().join(",")).await
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.drop_report();
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                let _ = fs::remove_dir_all(&node.store);
            }
        }
    }
}
