//! `understudy` processes: devices (`understudy node`) and the control
//! gateway (`understudy gateway`), each with its log captured.
//!
//! The caller says which binary to run (a test its
//! `CARGO_BIN_EXE_understudy`, the lab and the bench their own executable)
//! and where logs and data go: a folder it keeps (`.lab/`, `.bench/`), or a
//! fresh temporary one that a failing test keeps.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use understudy_bus::accounts::Role;

use crate::dirs::Home;
use crate::process::{Launch, Process, Signal};
use crate::{Error, POLL, free_ports};

/// The MAC of numbered device `n` in a lab or test group:
/// `02:00:00:00:00:<n in hex>` (locally administered).
pub fn mac(n: u8) -> String {
    format!("02:00:00:00:00:{n:02x}")
}

/// How a device is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceOpts {
    /// The project group (`--group`).
    pub group: String,
    /// The device id (`--device-id`).
    pub device_id: String,
    /// The MAC, `aa:bb:cc:dd:ee:ff` (`--mac`), the election tie-breaker.
    pub mac: String,
    /// The score, 0–255 (`--score`).
    pub score: u8,
    /// More `understudy node` arguments, after the standard ones.
    pub extra_args: Vec<String>,
    /// Environment variables set for the device (e.g. `OTEL_*`).
    pub env: Vec<(String, String)>,
}

impl DeviceOpts {
    /// Options with no extra arguments.
    pub fn new(group: &str, device_id: &str, mac: &str, score: u8) -> DeviceOpts {
        DeviceOpts {
            group: group.to_string(),
            device_id: device_id.to_string(),
            mac: mac.to_string(),
            score,
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Device `dev-<n>` with [`mac`]`(n)`.
    pub fn numbered(group: &str, n: u8, score: u8) -> DeviceOpts {
        DeviceOpts::new(group, &format!("dev-{n}"), &mac(n), score)
    }

    /// Sets an environment variable of the device.
    pub fn with_env(mut self, key: &str, value: &str) -> DeviceOpts {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds `understudy node` arguments.
    pub fn with_args<S: AsRef<str>>(mut self, args: &[S]) -> DeviceOpts {
        self.extra_args
            .extend(args.iter().map(|a| a.as_ref().to_string()));
        self
    }
}

/// One `understudy node` process (a device), its stdout and stderr in
/// `<folder>/<device id>.log`, its `--data-dir` `<folder>/<device id>`.
/// Killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct Device {
    opts: DeviceOpts,
    proc: Process,
    data_dir: PathBuf,
    _home: Home,
}

impl Device {
    /// Starts `bin node --group G --device-id D --mac M --score N --nats
    /// url1,url2 --data-dir <dir>/<D> <extra args>` with logs and data in
    /// `dir`, or in a fresh temporary folder when `dir` is `None`. Does not
    /// wait for it to be up.
    pub fn start<S: AsRef<str>>(
        bin: &Path,
        dir: Option<&Path>,
        urls: &[S],
        opts: DeviceOpts,
    ) -> Result<Device, Error> {
        let home = Home::new(dir, &format!("device-{}", opts.device_id))?;
        let data_dir = home.path().join(&opts.device_id);
        let log = home.path().join(format!("{}.log", opts.device_id));
        let nats: Vec<&str> = urls.iter().map(AsRef::as_ref).collect();
        let mut launch =
            Launch::new(format!("device {}", opts.device_id), bin, log).scrub_understudy_env();
        if let Some(bus) = crate::secure::from_env() {
            let role = opts
                .group
                .parse()
                .map(Role::Device)
                .unwrap_or(Role::Observer);
            for (k, v) in bus.env(&role) {
                launch = launch.env(k, v);
            }
            for (k, v) in bus.project_device_env()? {
                launch = launch.env(k, v);
            }
        }
        for (k, v) in &opts.env {
            launch = launch.env(k, v);
        }
        let proc = launch
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .env("UNDERSTUDY_LOG", "info")
            .args([
                "node",
                "--group",
                &opts.group,
                "--device-id",
                &opts.device_id,
            ])
            .args(["--mac", &opts.mac, "--score", &opts.score.to_string()])
            .args(["--nats", &nats.join(",")])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(&opts.extra_args)
            .spawn()?;
        Ok(Device {
            opts,
            proc,
            data_dir,
            _home: home,
        })
    }

    /// The options it was started with.
    pub fn opts(&self) -> &DeviceOpts {
        &self.opts
    }

    /// Its device id.
    pub fn id(&self) -> &str {
        &self.opts.device_id
    }

    /// The full argument list given to `understudy`.
    pub fn args(&self) -> Vec<String> {
        self.proc
            .launch()
            .arguments()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// The process id of the current process (also after it exited).
    pub fn pid(&self) -> u32 {
        self.proc.pid().unwrap_or(0)
    }

    /// The device's `--data-dir` (its project copy, outbox and conflicts live
    /// in `<data dir>/project`); kept across restarts.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The log file (stdout and stderr, appended to across restarts).
    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Whether the process is still running (a stopped process counts).
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// The exit status, once it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.proc.exit_status()
    }

    /// Sends `signal` to the device's process.
    pub fn signal(&mut self, signal: Signal) -> Result<(), Error> {
        self.proc.signal(signal)
    }

    /// SIGSTOP, returning once every thread of the device has stopped (see
    /// [`Process::pause`]).
    pub async fn pause(&mut self) -> Result<(), Error> {
        self.proc.pause().await
    }

    /// SIGKILL (crash: no goodbye, no lease release) and reap.
    pub fn kill9(&mut self) {
        self.proc.kill();
    }

    /// Waits until the process exits; fails after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus, Error> {
        self.proc.wait_exit(within).await
    }

    /// SIGTERM, then waits at most `within` before SIGKILL.
    pub async fn stop(&mut self, within: Duration) {
        self.proc.stop(within).await;
    }

    /// Starts the device again with the same arguments (a new instance),
    /// killing it first if it still runs. The log continues in the same file.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.proc.restart()
    }
}

/// Where a gateway listens and with which API token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayOpts {
    /// The HTTP API, event streams and dashboard (`--listen`).
    pub http: SocketAddr,
    /// The newline-delimited JSON control port (`--tcp-listen`).
    pub tcp: SocketAddr,
    /// The API token mutating calls need; `None` runs without one.
    pub api_token: Option<String>,
    /// Where `GET /metrics` listens (`--metrics-listen`); `None`: nowhere.
    pub metrics: Option<SocketAddr>,
    /// Environment variables set for the gateway (e.g. `OTEL_*`).
    pub env: Vec<(String, String)>,
}

impl GatewayOpts {
    /// Two free loopback ports and the token.
    pub fn free_ports(api_token: Option<&str>) -> Result<GatewayOpts, Error> {
        let ports = free_ports(2)?;
        Ok(GatewayOpts {
            http: SocketAddr::from(([127, 0, 0, 1], ports[0])),
            tcp: SocketAddr::from(([127, 0, 0, 1], ports[1])),
            api_token: api_token.map(str::to_string),
            metrics: None,
            env: Vec::new(),
        })
    }
}

/// One `understudy gateway` process, its log in `<folder>/gateway.log`.
/// Killed on drop.
#[derive(Debug)]
pub struct Gateway {
    opts: GatewayOpts,
    proc: Process,
    _home: Home,
}

impl Gateway {
    /// Starts `bin gateway --nats <nats> --listen <http> --tcp-listen <tcp>`
    /// (the token through `UNDERSTUDY_API_TOKEN`, so it shows in no process
    /// list), with its log in `dir` or in a fresh temporary folder. Does not
    /// wait for it: see [`Gateway::wait_listening`].
    pub fn start(
        bin: &Path,
        dir: Option<&Path>,
        nats: &str,
        opts: GatewayOpts,
    ) -> Result<Gateway, Error> {
        let home = Home::new(dir, "gateway")?;
        let mut launch = Launch::new("gateway", bin, home.path().join("gateway.log"))
            .scrub_understudy_env()
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .env("UNDERSTUDY_LOG", "info")
            .args(["gateway", "--nats", nats])
            .args(["--listen", &opts.http.to_string()])
            .args(["--tcp-listen", &opts.tcp.to_string()]);
        if let Some(token) = &opts.api_token {
            launch = launch.env("UNDERSTUDY_API_TOKEN", token);
        }
        if let Some(metrics) = &opts.metrics {
            launch = launch.args(["--metrics-listen", &metrics.to_string()]);
        }
        if let Some(bus) = crate::secure::from_env() {
            for (k, v) in bus.env(&Role::Gateway) {
                launch = launch.env(k, v);
            }
        }
        for (k, v) in &opts.env {
            launch = launch.env(k, v);
        }
        Ok(Gateway {
            proc: launch.spawn()?,
            opts,
            _home: home,
        })
    }

    /// The HTTP address.
    pub fn http(&self) -> SocketAddr {
        self.opts.http
    }

    /// The TCP control address.
    pub fn tcp(&self) -> SocketAddr {
        self.opts.tcp
    }

    /// Where `GET /metrics` listens, if it does.
    pub fn metrics(&self) -> Option<SocketAddr> {
        self.opts.metrics
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid().unwrap_or(0)
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    /// `Err` (with its log's tail) once the gateway has exited.
    pub fn check_running(&mut self) -> Result<(), Error> {
        self.proc.check_running()
    }

    /// Waits until the HTTP port accepts connections (at most `within`);
    /// fails at once if the gateway exits.
    pub async fn wait_listening(&mut self, within: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + within;
        loop {
            self.proc.check_running()?;
            if tokio::net::TcpStream::connect(self.opts.http).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::TimedOut {
                    what: format!("the gateway to listen on {}", self.opts.http),
                    within,
                    last: crate::tail(self.proc.log_path(), 20),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
