//! The compose lab (`docker-compose.yml`) for tests: brought up under a
//! compose project of the test's own, on host ports and subnets nobody else
//! uses, through the same `scripts/compose-lab.sh` the README shows; each
//! container found by its compose labels; torn down (containers, networks,
//! volumes, the copied credentials) when the handle drops, failure or not.
//!
//! ```ignore
//! #[path = "harness/compose.rs"]
//! mod compose;
//! let Some(lab) = compose::ComposeLab::up_or_skip("my-test").await? else { return Ok(()) };
//! let dev1 = lab.container("device-1")?;      // a container id, for `docker kill` etc.
//! let client = lab.connect("gateway").await?; // the operator on the bus
//! ```
//!
//! Only containers, networks and volumes of the lab's own project are ever
//! touched (`docker compose --project-name <its own> down`).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// The lab's group.
pub const GROUP: &str = "lab";

/// How long the services may take to be healthy once started (the
/// script's own wait).
pub const HEALTHY_WITHIN: Duration = Duration::from_secs(300);

/// How long `up` may take in all, images included: a cold static release
/// build took 14 min on a busy 2-core machine; with the images cached `up`
/// takes about 10 s.
pub const UP_WITHIN: Duration = Duration::from_secs(1500);

/// A running compose lab of the test's own project.
#[derive(Debug)]
pub struct ComposeLab {
    project: String,
    repo: PathBuf,
    env: Vec<(String, String)>,
    /// Host ports of the three NATS nodes' clients.
    pub nats_ports: [u16; 3],
    /// Host port of the gateway (API and dashboard).
    pub gateway_port: u16,
    /// Host port of Prometheus.
    pub prometheus_port: u16,
    /// First three octets of the lab network (devices at `.21`–`.25`).
    pub lab_net: String,
    /// How long `up` took, image builds included.
    pub up_took: Duration,
}

/// Why there is no Docker to run on, if there is none: `docker info` fails.
pub fn docker_missing() -> Option<String> {
    match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .output()
    {
        Err(e) => Some(format!("no docker command ({e})")),
        Ok(out) if !out.status.success() => Some(format!(
            "no Docker daemon reachable: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    }
}

impl ComposeLab {
    /// Brings the lab up as project `understudy-<name>-<pid>`, or returns
    /// `None` after printing why when no Docker daemon is reachable — a
    /// failure instead when `CI` is set.
    pub async fn up_or_skip(name: &str) -> Result<Option<ComposeLab>> {
        if let Some(why) = docker_missing() {
            if std::env::var_os("CI").is_some() {
                bail!("CI is set but {why}");
            }
            eprintln!("SKIPPED: the compose lab test needs Docker: {why}");
            return Ok(None);
        }
        Self::up(name).await.map(Some)
    }

    /// Brings the lab up (see the module docs); on failure everything
    /// already made is torn down before the error returns.
    pub async fn up(name: &str) -> Result<ComposeLab> {
        let repo = repo_root();
        let project = format!("understudy-{name}-{}", std::process::id());
        let ports = free_host_ports(5)?;
        let (lab_net, bus_net) = free_subnets()?;
        let nats_ports = [ports[0], ports[1], ports[2]];
        let env: Vec<(String, String)> = vec![
            ("COMPOSE_PROJECT_NAME".into(), project.clone()),
            ("UNDERSTUDY_PUBLISH".into(), "127.0.0.1".into()),
            ("UNDERSTUDY_NATS_PORT_1".into(), ports[0].to_string()),
            ("UNDERSTUDY_NATS_PORT_2".into(), ports[1].to_string()),
            ("UNDERSTUDY_NATS_PORT_3".into(), ports[2].to_string()),
            ("UNDERSTUDY_GATEWAY_PORT".into(), ports[3].to_string()),
            ("UNDERSTUDY_PROMETHEUS_PORT".into(), ports[4].to_string()),
            ("UNDERSTUDY_LAB_NET".into(), lab_net.clone()),
            ("UNDERSTUDY_BUS_NET".into(), bus_net),
            (
                "UNDERSTUDY_COMPOSE_TIMEOUT".into(),
                HEALTHY_WITHIN.as_secs().to_string(),
            ),
        ];
        let mut lab = ComposeLab {
            project,
            repo: repo.to_path_buf(),
            env,
            nats_ports,
            gateway_port: ports[3],
            prometheus_port: ports[4],
            lab_net,
            up_took: Duration::ZERO,
        };
        // From here on, dropping `lab` tears down whatever `up` made.
        let started = Instant::now();
        let mut cmd = tokio::process::Command::from(lab.command("up"));
        cmd.kill_on_drop(true);
        let out = tokio::time::timeout(UP_WITHIN, cmd.output())
            .await
            .map_err(|_| anyhow!("scripts/compose-lab.sh up took more than {UP_WITHIN:?}"))?
            .context("cannot run scripts/compose-lab.sh up")?;
        lab.up_took = started.elapsed();
        if !out.status.success() {
            bail!(
                "scripts/compose-lab.sh up failed ({}):\n{}\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                lab.logs()
            );
        }
        Ok(lab)
    }

    /// The compose project's name.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The compose settings of this lab (`COMPOSE_PROJECT_NAME`, ports,
    /// subnets), for running `docker compose` or the script by hand.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// `scripts/compose-lab.sh <what>` with this lab's settings.
    pub fn command(&self, what: &str) -> Command {
        let mut cmd = Command::new(self.repo.join("scripts/compose-lab.sh"));
        cmd.arg(what)
            .current_dir(&self.repo)
            .stdin(Stdio::null())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    /// Runs `scripts/compose-lab.sh <what>` (`status`, `down`…) to its end.
    pub fn script(&self, what: &str) -> Result<Output> {
        self.command(what)
            .output()
            .with_context(|| format!("cannot run scripts/compose-lab.sh {what}"))
    }

    /// The id of `service`'s container (`device-1`…`device-5`, `nats-1`…,
    /// `gateway`, `prometheus`, `secrets`), found by its compose labels.
    pub fn container(&self, service: &str) -> Result<String> {
        let out = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ])?;
        out.lines()
            .next()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("project {} has no {service} container", self.project))
    }

    /// The folder the operator's credentials were copied to.
    pub fn state_dir(&self) -> PathBuf {
        self.repo.join(".compose-lab").join(&self.project)
    }

    /// The NATS addresses from the host.
    pub fn nats_urls(&self) -> String {
        self.nats_ports
            .iter()
            .map(|p| format!("tls://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The `UNDERSTUDY_*` variables of the operator (NATS user `gateway`)
    /// for the CLI on the host.
    pub fn operator_env(&self) -> Vec<(String, String)> {
        let dir = self.state_dir();
        let path = |f: &str| dir.join(f).display().to_string();
        vec![
            ("UNDERSTUDY_NATS".into(), self.nats_urls()),
            ("UNDERSTUDY_NATS_USER".into(), "gateway".into()),
            (
                "UNDERSTUDY_NATS_PASSWORD_FILE".into(),
                path("nats-password-gateway"),
            ),
            ("UNDERSTUDY_NATS_TLS_CA".into(), path("ca.pem")),
            ("UNDERSTUDY_PROJECT_TLS_CA".into(), path("ca.pem")),
            (
                "UNDERSTUDY_PROJECT_TOKEN_FILE".into(),
                path("project-token"),
            ),
            ("UNDERSTUDY_GROUP".into(), GROUP.into()),
        ]
    }

    /// A NATS client on the lab as the operator (`gateway`: reads every
    /// group's heartbeats and events, may trigger and change scores).
    pub async fn connect(&self) -> Result<async_nats::Client> {
        let dir = self.state_dir();
        let password = std::fs::read_to_string(dir.join("nats-password-gateway"))
            .context("the operator's password file")?;
        let options = async_nats::ConnectOptions::with_user_and_password(
            "gateway".into(),
            password.trim().into(),
        )
        .add_root_certificates(dir.join("ca.pem"))
        .require_tls(true)
        .connection_timeout(Duration::from_secs(5));
        let addrs: Vec<async_nats::ServerAddr> = self
            .nats_urls()
            .split(',')
            .map(|u| u.parse())
            .collect::<std::result::Result<_, _>>()?;
        Ok(options.connect(addrs).await?)
    }

    /// The gateway's HTTP address on the host.
    pub fn gateway(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.gateway_port))
    }

    /// Prometheus's address on the host.
    pub fn prometheus(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.prometheus_port))
    }

    /// The admin token of the gateway.
    pub fn admin_token(&self) -> Result<String> {
        let text = std::fs::read_to_string(self.state_dir().join("api-token"))?;
        Ok(text.trim().to_string())
    }

    /// The last lines of every container's log (for a failure message).
    pub fn logs(&self) -> String {
        let ids = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
        ])
        .unwrap_or_default();
        let mut out = String::new();
        for id in ids.lines() {
            let name =
                docker(&["inspect", "-f", "{{.Name}} {{.State.Status}}", id]).unwrap_or_default();
            let log = Command::new("docker")
                .args(["logs", "--tail", "15", id])
                .output()
                .map(|o| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_default();
            out.push_str(&format!("--- {}\n{log}", name.trim()));
        }
        out
    }

    /// Tears the lab down now (also done on drop).
    pub fn down(&mut self) -> Result<()> {
        if self.project.is_empty() {
            return Ok(());
        }
        let out = self.script("down")?;
        if !out.status.success() {
            bail!(
                "scripts/compose-lab.sh down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.project.clear();
        Ok(())
    }
}

impl Drop for ComposeLab {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.project.is_empty() {
            eprintln!("compose lab {} at failure:\n{}", self.project, self.logs());
        }
        if let Err(e) = self.down() {
            eprintln!("tearing down the compose lab: {e:#}");
        }
    }
}

/// `docker <args>`'s standard output; an error with its standard error.
pub fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run docker")?;
    if !out.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The repository root (holds `docker-compose.yml`).
fn repo_root() -> &'static Path {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|d| d.join("docker-compose.yml").is_file())
        .unwrap_or(manifest)
}

/// `n` free TCP ports on the host's loopback.
fn free_host_ports(n: usize) -> Result<Vec<u16>> {
    Ok(understudy_testkit::free_ports(n)?)
}

/// Two /24 subnets (as their first three octets) in 172.29.0.0/16 that no
/// Docker network uses, starting from an offset of this process's so that
/// parallel runs seldom meet.
fn free_subnets() -> Result<(String, String)> {
    let ids = docker(&["network", "ls", "-q"])?;
    let mut used = String::new();
    for id in ids.lines() {
        used.push_str(&docker(&[
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
            id,
        ])?);
    }
    let free = |n: u32| !used.contains(&format!("172.29.{n}.0/"));
    let start = std::process::id() % 127;
    for k in 0..127 {
        let n = (start + k) % 127 * 2;
        if free(n) && free(n + 1) {
            return Ok((format!("172.29.{n}"), format!("172.29.{}", n + 1)));
        }
    }
    bail!("no two free /24 subnets in 172.29.0.0/16 among the Docker networks")
}
