//! `nats-server` with JetStream on loopback: a single server and a cluster,
//! each killed on drop and able to restart on the same ports and store.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio::io::AsyncReadExt;

use crate::dirs::Home;
use crate::process::{Launch, Process};
use crate::{Error, POLL, free_ports, port_or_free, wait_until};

/// How long a started server has to accept connections.
pub const START_DEADLINE: Duration = Duration::from_secs(10);

/// How long a cluster has to get JetStream ready cluster-wide.
pub const CLUSTER_READY_DEADLINE: Duration = Duration::from_secs(30);

/// The oldest usable nats-server: async-nats 0.51 cannot create a KV bucket
/// on Debian's 2.9.
const MIN_VERSION: (u32, u32) = (2, 11);

/// How often a start is tried again when its ports were taken meanwhile.
const PORT_ATTEMPTS: usize = 3;

/// Finds the `nats-server` binary: `given` (a flag), else
/// `UNDERSTUDY_NATS_SERVER`, else the first of `tools` that exists (e.g.
/// `<repo>/.tools/bin/nats-server`, where `scripts/ensure-nats.sh` installs
/// it), else `nats-server` on `PATH`; and checks it is 2.11 or newer.
pub fn find_nats_server(given: Option<&Path>, tools: &[PathBuf]) -> Result<PathBuf, Error> {
    let from_env = std::env::var_os("UNDERSTUDY_NATS_SERVER")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let bin = given
        .map(Path::to_path_buf)
        .or(from_env)
        .or_else(|| tools.iter().find(|t| t.is_file()).cloned())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join("nats-server"))
                    .find(|candidate| candidate.is_file())
            })
        })
        .ok_or_else(|| Error::NatsServerMissing {
            detail: "no nats-server found".to_string(),
        })?;
    let out = Command::new(&bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::NatsServerMissing {
            detail: format!("cannot run {} --version: {e}", bin.display()),
        })?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    match parse_version(&text) {
        Some(v) if v >= MIN_VERSION => Ok(bin),
        _ => Err(Error::NatsServerMissing {
            detail: format!(
                "{} reports {:?}; understudy needs nats-server >= {}.{}",
                bin.display(),
                text.trim(),
                MIN_VERSION.0,
                MIN_VERSION.1
            ),
        }),
    }
}

/// Parses "nats-server: v2.15.1" into (2, 15).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.trim().rsplit('v').next()?;
    let mut parts = v.split('.');
    let major = parts.next()?.trim().parse().ok()?;
    let minor = parts.next()?.trim().parse().ok()?;
    Some((major, minor))
}

/// Connects a NATS client for a test or a tool: `urls` is one URL or several
/// separated by commas. Short connection timeout (2 s), quick reconnects (at
/// most 250 ms apart), 5 s request timeout, and servers a cluster gossips are
/// ignored (so a client behind a fault proxy stays behind it).
///
/// On a secured test run (`UNDERSTUDY_TEST_SECURE`, [`crate::secure`]) it
/// logs in over TLS as the test's user.
pub async fn connect(urls: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    match crate::secure::from_env() {
        Some(bus) => bus.connect(urls).await,
        None => connect_with(async_nats::ConnectOptions::new(), urls).await,
    }
}

/// [`connect`] with `options` (credentials, TLS) as the base.
pub async fn connect_with(
    options: async_nats::ConnectOptions,
    urls: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let addrs: Vec<&str> = urls.split(',').map(str::trim).collect();
    options
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5)))
        .reconnect_delay_callback(|attempt| Duration::from_millis((attempt as u64 * 50).min(250)))
        .ignore_discovered_servers()
        .connect(addrs.as_slice())
        .await
}

/// One nats-server process on a fixed client port.
#[derive(Debug)]
struct Node {
    port: u16,
    store: PathBuf,
    proc: Process,
}

impl Node {
    fn spawn(
        name: String,
        bin: &Path,
        port: u16,
        store: PathBuf,
        log: PathBuf,
        args: Vec<String>,
    ) -> Result<Node, Error> {
        let proc = Launch::new(name, bin, log).args(args).spawn()?;
        Ok(Node { port, store, proc })
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Waits until the server answers on its client port with its INFO line.
    async fn wait_accepting(&mut self, within: Duration) -> Result<(), Error> {
        let addr = self.addr();
        let deadline = Instant::now() + within;
        loop {
            self.proc.check_running()?;
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), read_info(addr)).await
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::TimedOut {
                    what: format!("{} to accept connections on {addr}", self.proc.name()),
                    within,
                    last: format!(
                        "its log {}:\n{}",
                        self.proc.log_path().display(),
                        crate::tail(self.proc.log_path(), 20)
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn restart(&mut self) -> Result<(), Error> {
        self.proc.restart()?;
        let started = self.wait_accepting(START_DEADLINE).await;
        if started.is_err() {
            self.proc.kill();
        }
        started
    }

    /// Whether its log says a port was taken between picking and binding it.
    fn port_taken(&self) -> bool {
        self.proc.log().contains("address already in use")
    }
}

/// Connects to `addr` and reads the server's `INFO` line.
async fn read_info(addr: SocketAddr) -> std::io::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await?;
    if &buf != b"INFO" {
        return Err(std::io::Error::other(format!(
            "{addr} is not a NATS server"
        )));
    }
    Ok(())
}

/// A single nats-server with JetStream on loopback; killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    node: Node,
    /// Started on the secured test bus: fail the test on a refusal.
    secured: bool,
    // Dropped after `node` (fields drop in order), so the process is gone first.
    home: Home,
}

impl NatsServer {
    /// Starts `bin` on a free port with its store and log in a fresh temporary
    /// folder, and waits (at most 10 s) until it accepts connections.
    ///
    /// On a secured test run ([`crate::secure::from_env`]) it is started
    /// with that bus's configuration (TLS, accounts).
    pub async fn start(bin: &Path) -> Result<NatsServer, Error> {
        let secured = crate::secure::from_env().map(crate::SecureBus::server_config);
        let mut server = Self::start_at(bin, None, None, secured.as_deref()).await?;
        server.secured = secured.is_some();
        Ok(server)
    }

    /// Like [`start`](Self::start), with `config` (nats-server configuration
    /// text: accounts, users, TLS…) in a file it reads; the port, store and
    /// JetStream are still set on the command line.
    pub async fn start_configured(bin: &Path, config: &str) -> Result<NatsServer, Error> {
        Self::start_at(bin, None, None, Some(config)).await
    }

    /// Starts `bin` with its store in `<dir>/nats` and its log in
    /// `<dir>/nats-server.log` (both kept), on `preferred` if it is free, else
    /// on a free port; waits (at most 10 s) until it accepts connections.
    pub async fn start_in(
        bin: &Path,
        dir: &Path,
        preferred: Option<u16>,
    ) -> Result<NatsServer, Error> {
        Self::start_at(bin, Some(dir), preferred, None).await
    }

    /// [`start_in`](Self::start_in) with `config` (see
    /// [`start_configured`](Self::start_configured)), written to
    /// `<dir>/nats-server.conf` readable by its owner only (it may hold
    /// passwords).
    pub async fn start_in_configured(
        bin: &Path,
        dir: &Path,
        preferred: Option<u16>,
        config: &str,
    ) -> Result<NatsServer, Error> {
        Self::start_at(bin, Some(dir), preferred, Some(config)).await
    }

    async fn start_at(
        bin: &Path,
        dir: Option<&Path>,
        preferred: Option<u16>,
        config: Option<&str>,
    ) -> Result<NatsServer, Error> {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let home = Home::new(dir, "nats")?;
            let port = match preferred {
                Some(p) => port_or_free(p)?,
                None => crate::free_port()?,
            };
            match Self::boot(bin, home.path(), port, config).await? {
                Ok(node) => {
                    return Ok(NatsServer {
                        node,
                        secured: false,
                        home,
                    });
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(Error::PortsTaken {
            name: "nats-server".to_string(),
            last,
        })
    }

    /// Spawns and waits; `Ok(Err(_))` when the port was taken meanwhile (try
    /// another), `Err(_)` for any other failure.
    async fn boot(
        bin: &Path,
        dir: &Path,
        port: u16,
        config: Option<&str>,
    ) -> Result<Result<Node, Error>, Error> {
        let store = dir.join("nats");
        let mut args = vec![
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
        if let Some(text) = config {
            let file = dir.join("nats-server.conf");
            crate::secure::write_private(&file, text)?;
            args.push("-c".to_string());
            args.push(file.display().to_string());
        }
        let log = dir.join("nats-server.log");
        let mut node = Node::spawn(format!("nats-server :{port}"), bin, port, store, log, args)?;
        match node.wait_accepting(START_DEADLINE).await {
            Ok(()) => Ok(Ok(node)),
            Err(e) if node.port_taken() => Ok(Err(e)),
            Err(e) => Err(e),
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.node.url()
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        self.node.addr()
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.node.port
    }

    /// The process id of the current process.
    pub fn pid(&self) -> Option<u32> {
        self.node.proc.pid()
    }

    /// The server's log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        self.node.proc.log_path()
    }

    /// The JetStream store folder (kept across [`NatsServer::restart`]).
    pub fn store_dir(&self) -> &Path {
        &self.node.store
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.node.proc.is_running()
    }

    /// Kills the server with SIGKILL (no clean shutdown); a no-op when it is
    /// not running.
    pub fn kill(&mut self) {
        self.node.proc.kill();
    }

    /// Starts the server again (killing it first if it runs) on the same port
    /// with the same store, and waits (at most 10 s) until it accepts
    /// connections.
    pub async fn restart(&mut self) -> Result<(), Error> {
        self.node.restart().await
    }

    /// A NATS client (see [`connect`]).
    pub async fn client(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        connect(&self.url()).await
    }
}

/// A NATS cluster of nats-servers with JetStream (cluster name `understudy`,
/// server names `n1`, `n2`, …) on loopback; killed on drop.
///
/// Each node runs from a config file with `cluster.no_advertise`, so clients
/// only use the URLs they are given (a device behind a proxy stays behind it).
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
    home: Home,
}

impl NatsCluster {
    /// Starts `n` nodes in one cluster, with their configs, stores and logs
    /// in a fresh temporary folder, and waits until JetStream is ready
    /// cluster-wide (see [`NatsCluster::wait_jetstream_ready`], at most 30 s).
    pub async fn start(bin: &Path, n: usize) -> Result<NatsCluster, Error> {
        Self::start_at(bin, None, n).await
    }

    /// Like [`NatsCluster::start`], with everything in `dir` (kept).
    pub async fn start_in(bin: &Path, dir: &Path, n: usize) -> Result<NatsCluster, Error> {
        Self::start_at(bin, Some(dir), n).await
    }

    async fn start_at(bin: &Path, dir: Option<&Path>, n: usize) -> Result<NatsCluster, Error> {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let home = Home::new(dir, "nats-cluster")?;
            match Self::boot(bin, home.path(), n).await? {
                Ok(nodes) => return Ok(NatsCluster { nodes, home }),
                Err(e) => last = e.to_string(),
            }
        }
        Err(Error::PortsTaken {
            name: format!("a {n}-node NATS cluster"),
            last,
        })
    }

    /// Spawns and waits; `Ok(Err(_))` when a port was taken meanwhile.
    async fn boot(bin: &Path, dir: &Path, n: usize) -> Result<Result<Vec<Node>, Error>, Error> {
        assert!(n >= 1, "a cluster needs at least one node");
        let ports = free_ports(2 * n)?;
        let (client_ports, cluster_ports) = ports.split_at(n);
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("n{}", i + 1);
            let store = dir.join(format!("{name}-store"));
            let conf = dir.join(format!("{name}.conf"));
            let text = node_config(
                &name,
                client_ports[i],
                cluster_ports[i],
                cluster_ports,
                &store,
            );
            let text = match crate::secure::from_env() {
                Some(bus) => text + &bus.server_config(),
                None => text,
            };
            std::fs::write(&conf, text).map_err(Error::io("write", &conf))?;
            let args = vec!["-c".to_string(), conf.display().to_string()];
            let log = dir.join(format!("{name}.log"));
            let label = format!("nats-server {name} :{}", client_ports[i]);
            nodes.push(Node::spawn(label, bin, client_ports[i], store, log, args)?);
        }
        // On failure the nodes are dropped, which kills them.
        match wait_booted(&mut nodes).await {
            Ok(()) => Ok(Ok(nodes)),
            Err(e) if nodes.iter().any(Node::port_taken) => Ok(Err(e)),
            Err(e) => Err(e),
        }
    }

    /// Waits until a client (to any running node) can create and delete a KV
    /// bucket replicated on every node; fails after `within`.
    pub async fn wait_jetstream_ready(&self, within: Duration) -> Result<(), Error> {
        jetstream_ready(&self.nodes, within).await
    }
    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes (never: it starts with at least one).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's client URL, `nats://127.0.0.1:<port>`, node 0 first.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Node `i`'s client address.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr()
    }

    /// Node `i`'s process id.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].proc.pid()
    }

    /// Node `i`'s log file.
    pub fn log_path(&self, i: usize) -> &Path {
        self.nodes[i].proc.log_path()
    }

    /// Whether node `i` is running.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i].proc.is_running()
    }

    /// Kills node `i` with SIGKILL; a no-op when it is not running.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].proc.kill();
    }

    /// Starts node `i` again (killing it first if it runs) with the same
    /// ports, config and store, and waits (at most 10 s) until it accepts
    /// client connections. It does not wait for JetStream; use
    /// [`NatsCluster::wait_jetstream_ready`] for that.
    pub async fn restart(&mut self, i: usize) -> Result<(), Error> {
        self.nodes[i].restart().await
    }

    /// A NATS client given every node's URL (see [`connect`]).
    pub async fn client(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        connect(&self.urls().join(",")).await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if self.secured {
            refuse_permission_violations([&self.node]);
        }
        forget_store_of_failed_test(self.home.is_temporary(), [&mut self.node]);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        refuse_permission_violations(&self.nodes);
        forget_store_of_failed_test(self.home.is_temporary(), self.nodes.iter_mut());
    }
}

/// When a test fails its temporary folder is kept for the logs; the
/// JetStream stores in it may be large and are of no use then: kill the
/// servers and remove their stores. Folders given by the caller are left
/// alone.
/// For servers started on the secured test bus ([`crate::secure::from_env`]):
/// fails the test (panics, unless it is failing already) when a server
/// refused one of the suite's processes something — every role's
/// permissions must be enough for everything the suite does.
fn refuse_permission_violations<'a>(nodes: impl IntoIterator<Item = &'a Node>) {
    if crate::secure::from_env().is_none() || std::thread::panicking() {
        return;
    }
    let refused: Vec<String> = nodes
        .into_iter()
        .flat_map(|node| {
            node.proc
                .log()
                .lines()
                .filter(|l| l.contains("Publish Violation") || l.contains("Subscription Violation"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        refused.is_empty(),
        "on the secured bus, nats-server refused the suite's processes:\n{}",
        refused.join("\n")
    );
}

fn forget_store_of_failed_test<'a>(temporary: bool, nodes: impl IntoIterator<Item = &'a mut Node>) {
    if !temporary || !std::thread::panicking() {
        return;
    }
    for node in nodes {
        node.proc.kill();
        let _ = std::fs::remove_dir_all(&node.store);
    }
}

/// Every node listening, then JetStream ready on all of them.
async fn wait_booted(nodes: &mut [Node]) -> Result<(), Error> {
    for node in nodes.iter_mut() {
        node.wait_accepting(START_DEADLINE).await?;
    }
    jetstream_ready(nodes, CLUSTER_READY_DEADLINE).await
}

/// Waits until a client of `nodes` can create and delete a KV bucket with a
/// replica on each; fails after `within`.
async fn jetstream_ready(nodes: &[Node], within: Duration) -> Result<(), Error> {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let urls = nodes.iter().map(Node::url).collect::<Vec<_>>().join(",");
    let replicas = nodes.len();
    wait_until("JetStream to be ready cluster-wide", within, || {
        let urls = urls.clone();
        async move {
            let client = connect(&urls).await.map_err(|e| e.to_string())?;
            let js = jetstream::new(client);
            let bucket = format!("testkit-ready-{}", PROBES.fetch_add(1, Ordering::Relaxed));
            js.create_key_value(jetstream::kv::Config {
                bucket: bucket.clone(),
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("create an R{replicas} KV bucket: {e}"))?;
            js.delete_key_value(&bucket)
                .await
                .map_err(|e| format!("delete the KV bucket: {e}"))?;
            Ok::<(), String>(())
        }
    })
    .await
}

/// The config file of one cluster node.
fn node_config(name: &str, client: u16, cluster: u16, routes: &[u16], store: &Path) -> String {
    let routes: Vec<String> = routes
        .iter()
        .map(|p| format!("\"nats://127.0.0.1:{p}\""))
        .collect();
    let mut text = String::new();
    let _ = writeln!(text, "server_name: {name}");
    let _ = writeln!(text, "listen: \"127.0.0.1:{client}\"");
    let _ = writeln!(
        text,
        "jetstream {{ store_dir: {:?} }}",
        store.display().to_string()
    );
    let _ = writeln!(text, "cluster {{");
    let _ = writeln!(text, "  name: understudy");
    let _ = writeln!(text, "  listen: \"127.0.0.1:{cluster}\"");
    let _ = writeln!(text, "  no_advertise: true");
    let _ = writeln!(text, "  routes: [{}]", routes.join(", "));
    let _ = writeln!(text, "}}");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_the_banner() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn node_config_routes_to_every_node_and_advertises_none() {
        let text = node_config("n2", 4223, 6223, &[6222, 6223], Path::new("/s"));
        assert!(text.contains("server_name: n2"));
        assert!(text.contains("listen: \"127.0.0.1:4223\""));
        assert!(text.contains("routes: [\"nats://127.0.0.1:6222\", \"nats://127.0.0.1:6223\"]"));
        assert!(text.contains("no_advertise: true"));
    }
}
