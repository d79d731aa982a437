//! `understudy lab`: a local project group on this machine — a nats-server
//! with JetStream and N devices with distinct scores and MACs — with the
//! election events shown live. `--kill-every` kills the server device with
//! SIGKILL at that pace and restarts it, to show failovers without a hand.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use futures::StreamExt;
use understudy_protocol::messages::{self, ElectionEvent, ElectionEventKind, Heartbeat};
use understudy_protocol::{GroupName, Role, subjects};

use crate::ctl::describe;
use crate::settings::{connect, parse_duration};

/// `understudy lab` settings.
#[derive(Debug, Args)]
pub struct LabArgs {
    /// How many devices.
    #[arg(long, default_value_t = 5)]
    devices: usize,
    /// The group's name.
    #[arg(long, default_value = "lab")]
    group: String,
    /// Use this NATS instead of starting a nats-server.
    #[arg(long)]
    nats: Option<String>,
    /// The nats-server binary [default: $UNDERSTUDY_NATS_SERVER, .tools/bin/nats-server, PATH].
    #[arg(long, env = "UNDERSTUDY_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    /// Folder for logs and the NATS store.
    #[arg(long, default_value = ".lab")]
    dir: PathBuf,
    /// Kill -9 the server device this often, and restart it 3 s later (e.g. 10s).
    #[arg(long)]
    kill_every: Option<String>,
    /// Stop by itself after this long (e.g. 60s) [default: run until Ctrl-C].
    #[arg(long)]
    duration: Option<String>,
    /// Do not start the control gateway (HTTP API and dashboard).
    #[arg(long)]
    no_gateway: bool,
    /// The API token of the lab's gateway (mutating calls need it).
    #[arg(long, default_value = "lab-secret")]
    api_token: String,
}

pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port(preferred: u16) -> Result<u16> {
    if TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        return Ok(preferred);
    }
    let l = TcpListener::bind("127.0.0.1:0").context("no free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

pub(crate) fn nats_binary(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let local = Path::new(".tools/bin/nats-server");
    if local.exists() {
        return Ok(local.to_path_buf());
    }
    Ok(PathBuf::from("nats-server"))
}

pub(crate) fn start_nats(bin: &Path, dir: &Path) -> Result<(Proc, String)> {
    let port = free_port(4222)?;
    let store = dir.join("nats");
    std::fs::create_dir_all(&store)?;
    let log = std::fs::File::create(dir.join("nats-server.log"))?;
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&store)
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (run scripts/ensure-nats.sh to install a current nats-server)",
                bin.display()
            )
        })?;
    let proc = Proc {
        name: "nats-server".into(),
        child,
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("nats-server did not accept connections on {addr} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((proc, format!("nats://127.0.0.1:{port}")))
}

pub(crate) fn spawn_device(
    exe: &Path,
    dir: &Path,
    nats: &str,
    group: &str,
    i: usize,
    score: u8,
) -> Result<Proc> {
    spawn_device_with(exe, dir, nats, group, i, score, &[])
}

/// Starts device `dev-<i+1>` with extra `understudy node` arguments.
pub(crate) fn spawn_device_with(
    exe: &Path,
    dir: &Path,
    nats: &str,
    group: &str,
    i: usize,
    score: u8,
    extra: &[&str],
) -> Result<Proc> {
    let name = format!("dev-{}", i + 1);
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = Command::new(exe)
        .args([
            "node",
            "--group",
            group,
            "--device-id",
            &name,
            "--mac",
            &format!("02:00:00:00:00:{:02x}", i + 1),
            "--score",
            &score.to_string(),
            "--nats",
            nats,
            "--data-dir",
            &dir.join(&name).display().to_string(),
        ])
        .args(extra)
        .env("UNDERSTUDY_LOG", "info")
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start device {name}"))?;
    Ok(Proc { name, child })
}

/// Starts the control gateway on 127.0.0.1:8080 and :8081 (other free ports
/// if those are taken); returns it and its HTTP and TCP addresses.
fn spawn_gateway(
    exe: &Path,
    dir: &Path,
    nats: &str,
    token: &str,
) -> Result<(Proc, String, String)> {
    let http = format!("127.0.0.1:{}", free_port(8080)?);
    let tcp = format!("127.0.0.1:{}", free_port(8081)?);
    let log = std::fs::File::create(dir.join("gateway.log"))?;
    let child = Command::new(exe)
        .args([
            "gateway",
            "--nats",
            nats,
            "--listen",
            &http,
            "--tcp-listen",
            &tcp,
        ])
        .env("UNDERSTUDY_API_TOKEN", token)
        .env("UNDERSTUDY_LOG", "info")
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start the gateway")?;
    Ok((
        Proc {
            name: "gateway".into(),
            child,
        },
        http,
        tcp,
    ))
}

pub(crate) fn scores(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| 200u8.saturating_sub((i * 200 / n.max(1)) as u8).max(1))
        .collect()
}

/// Runs the lab until Ctrl-C (or `--duration`).
pub async fn run(a: LabArgs) -> Result<()> {
    if a.devices == 0 || a.devices > 50 {
        bail!("--devices must be 1–50");
    }
    let group: GroupName = a.group.parse()?;
    std::fs::create_dir_all(&a.dir)?;
    let exe = std::env::current_exe().context("cannot find my own binary")?;
    let (_nats, url) = match a.nats.clone() {
        Some(u) => (None, u),
        None => {
            let bin = nats_binary(a.nats_server.clone())?;
            let (p, u) = start_nats(&bin, &a.dir)?;
            println!(
                "nats-server with JetStream at {u} (log {})",
                a.dir.join("nats-server.log").display()
            );
            (Some(p), u)
        }
    };
    let scores = scores(a.devices);
    let mut devices: Vec<Option<Proc>> = Vec::new();
    for (i, s) in scores.iter().enumerate() {
        devices.push(Some(spawn_device(
            &exe,
            &a.dir,
            &url,
            group.as_str(),
            i,
            *s,
        )?));
    }
    println!("{} devices in group {group}:", a.devices);
    for (i, d) in devices.iter().flatten().enumerate() {
        println!(
            "  {:<6} score {:>3}  mac 02:00:00:00:00:{:02x}  pid {:<7} log {}",
            d.name,
            scores[i],
            i + 1,
            d.child.id(),
            a.dir.join(format!("{}.log", d.name)).display()
        );
    }
    let _gateway = if a.no_gateway {
        None
    } else {
        let (p, http, tcp) = spawn_gateway(&exe, &a.dir, &url, &a.api_token)?;
        println!(
            "gateway:      dashboard http://{http}/?group={group}  API http://{http}/api/v1  TCP {tcp}  token {} (log {})",
            a.api_token,
            a.dir.join("gateway.log").display()
        );
        Some(p)
    };
    println!("look at it:   understudy status --group {group} --nats {url}");
    println!("events:       understudy events --group {group} --nats {url}");
    println!("fail over:    kill -9 <pid of the server>   (the best remaining device takes over)");
    println!("rig it:       understudy score set --group {group} --device dev-5 255 --nats {url}");
    println!("Ctrl-C stops the lab. Live election events:");

    let client = connect(&url, "understudy-lab").await?;
    let mut events = client.subscribe(subjects::election_events(&group)).await?;
    let mut beats = client.subscribe(subjects::heartbeats(&group)).await?;
    let kill_every = a
        .kill_every
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| anyhow!(e))?;
    let stop_after = a
        .duration
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| anyhow!(e))?;
    let started = tokio::time::Instant::now();
    let mut next_kill = kill_every.map(|d| started + d.max(Duration::from_secs(3)));
    let mut restart: Option<(tokio::time::Instant, usize)> = None;
    let mut server: Option<String> = None;
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    loop {
        let wake = [
            next_kill,
            restart.map(|r| r.0),
            stop_after.map(|d| started + d),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(started + Duration::from_secs(365 * 24 * 3600));
        tokio::select! {
            _ = &mut ctrl_c => break,
            Some(msg) = events.next() => {
                if let Ok(e) = messages::decode::<ElectionEvent>(&msg.payload) {
                    let t = started.elapsed().as_secs_f64();
                    println!("{t:8.3}s  {}", describe(&e));
                    if let ElectionEventKind::ServerElected { device, .. } = &e.kind {
                        server = Some(device.to_string());
                    }
                }
            }
            Some(msg) = beats.next() => {
                if let Ok(hb) = messages::decode::<Heartbeat>(&msg.payload)
                    && hb.role == Role::Server
                {
                    server = Some(hb.device.to_string());
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = tokio::time::Instant::now();
                if stop_after.is_some_and(|d| now >= started + d) {
                    break;
                }
                if let Some((at, i)) = restart && now >= at {
                    devices[i] = Some(spawn_device(&exe, &a.dir, &url, group.as_str(), i, scores[i])?);
                    println!("{:8.3}s  lab restarts dev-{}", started.elapsed().as_secs_f64(), i + 1);
                    restart = None;
                }
                if let (Some(at), Some(every)) = (next_kill, kill_every) && now >= at {
                    next_kill = Some(now + every);
                    let victim = server.clone().and_then(|s| devices.iter().position(|d| d.as_ref().is_some_and(|p| p.name == s)));
                    if let (Some(i), None) = (victim, restart) {
                        println!("{:8.3}s  lab kills the server dev-{} with SIGKILL", started.elapsed().as_secs_f64(), i + 1);
                        devices[i] = None;
                        server = None;
                        restart = Some((now + Duration::from_secs(3), i));
                    }
                }
            }
        }
    }
    println!("stopping the lab");
    for d in devices.iter().flatten() {
        let _ = Command::new("kill")
            .args(["-TERM", &d.child.id().to_string()])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    for d in devices.iter_mut().flatten() {
        while Instant::now() < deadline && matches!(d.child.try_wait(), Ok(None)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}
