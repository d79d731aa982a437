//! Container faults on the compose lab (`docker-compose.yml`): the faults a
//! real show network has — a device's host killed or frozen, a cable pulled,
//! a NATS node lost, a rolling upgrade — done to real containers with
//! `docker kill`, `pause`, `network disconnect`, `stop` and `restart`.
//!
//! Each test brings up its own lab (`compose::ComposeLab`, its own project,
//! host ports and subnets; torn down on drop, failure or not), records every
//! heartbeat of the group on the bus from the host (`Observer`) and checks S1
//! over all of them (`Observer::check_one_server`); where project changes
//! are made, a writer on the host submits them over TLS with the group token
//! (the lab's `.compose-lab/<project>/` credentials) and S2 is checked over
//! every acknowledged one: each is in the final history, once, in order.
//! Each test prints what it saw (time without a server, changes acked).
//!
//! Bounds. `FAILOVER_WITHIN` (10 s) is the successor bound asserted here:
//! the loopback e2e bound is 3 s (`tests/election_e2e.rs`), but here five
//! devices, three NATS nodes, the gateway and Prometheus share a 2-core CI
//! machine with the test's build and Docker's own work, so the same
//! detection (liveness window 1 s, lease 1.5 s) gets a wider margin; the
//! measured figures are printed (0.3–0.5 s here). A hand-over during a
//! rolling upgrade is bounded by `HANDOVER_WITHIN` (10 s, same reasoning;
//! measured under 0.2 s). Each test runs in 15–25 s warm (lab up ≈ 10 s,
//! down ≈ 3 s of it) and every wait in it has a deadline, so none can run
//! past 2 min by much more than its lab's bring-up.
//!
//! They run **one at a time** (a lock in `Faults::up`, held until the lab
//! is down; five labs at once — 50 containers — overload two cores and
//! would measure the overload, not the product). The whole file takes about 2 min
//! warm with the images cached (`scripts/images.sh`; a cold image build
//! comes on top the first time, as for `compose_e2e`).
//!
//! Needs a Docker daemon and `docker compose`/`docker-compose`; without a
//! daemon each test prints why and passes, unless `CI` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/compose.rs"]
mod compose;
#[path = "harness/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use async_nats::jetstream;
use harness::*;
use understudy_project_sync::client::{
    Change, ClientError, Fetched, ProjectClient, Submitted, find_server,
};
use understudy_project_sync::local::sha256_hex;
use understudy_project_sync::security::{ClientSecurity, ProjectSecurity};
use understudy_protocol::messages::Heartbeat;
use understudy_protocol::{GroupName, Role};

use compose::{ComposeLab, GROUP};

/// The successor must serve within this after the server is lost (see the
/// module docs for why it is wider than the loopback bound).
const FAILOVER_WITHIN: Duration = Duration::from_secs(10);
/// The longest a rolling upgrade may leave the group without a server.
const HANDOVER_WITHIN: Duration = Duration::from_secs(10);
/// The lab converges on dev-1 within this once up.
const CONVERGED_WITHIN: Duration = Duration::from_secs(60);
/// One gRPC call's timeout.
const CALL: Duration = Duration::from_secs(3);

const DEVICES: [&str; 5] = ["dev-1", "dev-2", "dev-3", "dev-4", "dev-5"];

fn group() -> GroupName {
    GROUP.parse().unwrap()
}

// ---------------------------------------------------------------------------
// The lab, the observer and the project as the host sees them
// ---------------------------------------------------------------------------

/// A lab with its observer, converged on dev-1 (all five devices live).
struct Faults {
    lab: ComposeLab,
    obs: Observer,
    project: Project,
    started: Instant,
    /// Held until the lab is down (fields drop in order, this one last).
    _one_lab: tokio::sync::MutexGuard<'static, ()>,
}

/// One lab at a time in this process, whatever `--test-threads` says: two
/// labs (twenty containers) on two cores would measure the overload.
static ONE_LAB: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Faults {
    async fn up(name: &str) -> Result<Option<Faults>> {
        let one_lab = ONE_LAB.lock().await;
        let started = Instant::now();
        let Some(lab) = ComposeLab::up_or_skip(name).await? else {
            return Ok(None);
        };
        let obs = Observer::start_with(lab.connect().await?, GROUP).await;
        obs.wait_for(
            |v: &View| {
                v.converged()
                    .filter(|(d, _)| d == "dev-1" && v.live().len() == DEVICES.len())
            },
            CONVERGED_WITHIN,
        )
        .await
        .context("five devices converged on dev-1")?;
        let project = Project::new(&lab).await?;
        Ok(Some(Faults {
            lab,
            obs,
            project,
            started,
            _one_lab: one_lab,
        }))
    }

    /// A container id of `service`.
    fn id(&self, service: &str) -> String {
        self.lab.container(service).unwrap()
    }

    /// The lab network's compose name.
    fn lab_network(&self) -> String {
        format!("{}_lab", self.lab.project())
    }

    /// The bus network's compose name.
    fn bus_network(&self) -> String {
        format!("{}_bus", self.lab.project())
    }

    /// S1 over every heartbeat heard; returns how many.
    fn check_s1(&self) -> usize {
        self.obs
            .check_one_server()
            .unwrap_or_else(|e| panic!("S1: {e:#}\n{}", self.obs.view().summary()));
        self.obs.recording().heartbeats.len()
    }

    /// `understudy <args>` on the host as the operator.
    async fn cli(&self, args: &[&str]) -> Result<String> {
        let mut cmd = tokio::process::Command::new(understudy_bin());
        cmd.args(args).stdin(std::process::Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("UNDERSTUDY_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.lab.operator_env());
        let out = tokio::time::timeout(CLI_TIMEOUT, cmd.output())
            .await
            .context("the CLI did not finish")??;
        ensure!(
            out.status.success(),
            "understudy {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn set_score(&self, device: &str, score: u8) -> Result<()> {
        let score = score.to_string();
        let out = self
            .cli(&["score", "set", "--group", GROUP, "--device", device, &score])
            .await?;
        ensure!(
            out.contains(&format!("score of {device} set to {score}")),
            "{out}"
        );
        Ok(())
    }

    fn took(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// `docker <args>` off the runtime's threads.
async fn docker(args: &[&str]) -> Result<String> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        compose::docker(&refs)
    })
    .await?
}

/// The project as the host's operator reaches it: the lease and head in
/// JetStream, gRPC clients of whoever serves (TLS, the group token).
struct Project {
    js: jetstream::Context,
    security: ClientSecurity,
}

impl Project {
    async fn new(lab: &ComposeLab) -> Result<Project> {
        let dir = lab.state_dir();
        let security = ProjectSecurity {
            tls_ca: Some(dir.join("ca.pem")),
            token_file: Some(dir.join("project-token")),
            ..ProjectSecurity::default()
        }
        .client()?;
        Ok(Project {
            js: jetstream::new(lab.connect().await?),
            security,
        })
    }

    /// A client of the current server, once one answers.
    async fn client(&self, within: Duration) -> Result<ProjectClient> {
        wait_until("a project server that answers", within, || async {
            let server = find_server(&self.js, &group(), CALL)
                .await?
                .ok_or_else(|| anyhow!("no server holds the lease"))?;
            let mut pc =
                ProjectClient::connect_with(&group(), server, CALL, &self.security).await?;
            pc.describe().await?;
            Ok(pc)
        })
        .await
    }

    /// A client of `device` once it serves.
    async fn client_of(&self, device: &str, within: Duration) -> Result<ProjectClient> {
        wait_until(&format!("{device} serving the project"), within, || async {
            let pc = self.client(CALL).await?;
            if pc.server().device.as_str() != device {
                bail!("{} serves", pc.server().device);
            }
            Ok(pc)
        })
        .await
    }

    /// The head and content, from whoever serves.
    async fn fetch(&self) -> Result<(u64, Vec<u8>)> {
        wait_until("the head from the server", secs(30), || async {
            let mut pc = self.client(CALL).await?;
            match pc.fetch(None).await? {
                Fetched::Content(head, content) => Ok((head.revision, content)),
                Fetched::UpToDate(_) => bail!("no content"),
            }
        })
        .await
    }
}

fn change(base: u64, id: &str, data: Vec<u8>) -> Change {
    Change {
        base_revision: base,
        changed_by: "faults-e2e".into(),
        change_id: id.into(),
        data: data.into(),
    }
}

/// One acknowledged change.
#[derive(Debug, Clone)]
struct Ack {
    revision: u64,
    line: String,
    at: Instant,
}

/// A writer on the host: appends one line per change to the content it
/// last saw, until stopped; a conflict refetches, a lost server is found
/// again. A change counts only when the server acknowledged it.
struct Writer {
    acked: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
    /// Why the writer stopped early, for the waits to say.
    failed: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Writer {
    async fn start(lab: &ComposeLab) -> Result<Writer> {
        let project = Project::new(lab).await?;
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(Mutex::new(None));
        let (a, s, f) = (acked.clone(), stop.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let result = write(project, a, s).await;
            if let Err(e) = &result {
                *f.lock().unwrap() = Some(format!("{e:#}"));
            }
            result
        });
        Ok(Writer {
            acked,
            stop,
            failed,
            task,
        })
    }

    fn done(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `n` more changes than now are acknowledged.
    async fn wait_more(&self, n: usize, within: Duration) -> Result<()> {
        let target = self.done() + n;
        wait_until(
            &format!("{target} changes acknowledged"),
            within,
            || async {
                if self.task.is_finished() {
                    let why = self.failed.lock().unwrap().clone();
                    bail!("the writer stopped: {}", why.unwrap_or_default());
                }
                let done = self.done();
                ensure!(done >= target, "{done} of {target} acknowledged");
                Ok(())
            },
        )
        .await
    }

    /// Stops the writer and returns what it got acknowledged.
    async fn finish(self) -> Result<Vec<Ack>> {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(secs(70), self.task)
            .await
            .context("the writer did not stop")???;
        Ok(self.acked.lock().unwrap().clone())
    }
}

async fn write(project: Project, acked: Arc<Mutex<Vec<Ack>>>, stop: Arc<AtomicBool>) -> Result<()> {
    let mut pc: Option<ProjectClient> = None;
    let (mut base, mut content) = (0u64, Vec::new());
    let mut k = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let line = format!("w-{k:05}");
        let deadline = Instant::now() + secs(60);
        loop {
            ensure!(
                Instant::now() < deadline,
                "change {line} not acknowledged within 60 s"
            );
            let c = match pc.as_mut() {
                Some(c) => c,
                // Waits (with this change's deadline) for a server that answers.
                None => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let c = project
                        .client(left)
                        .await
                        .with_context(|| format!("change {line}: no project server"))?;
                    pc.insert(c)
                }
            };
            let mut data = content.clone();
            data.extend_from_slice(line.as_bytes());
            data.push(b'\n');
            match c.submit(change(base, &line, data.clone())).await {
                Ok(Submitted::Committed(r)) | Ok(Submitted::AlreadyCommitted(r)) => {
                    acked.lock().unwrap().push(Ack {
                        revision: r.revision,
                        line: line.clone(),
                        at: Instant::now(),
                    });
                    if r.sha256 == sha256_hex(&data) {
                        content = data;
                    }
                    base = r.revision;
                    break;
                }
                Ok(Submitted::Conflict(_)) => match c.fetch(None).await {
                    Ok(Fetched::Content(h, d)) => {
                        base = h.revision;
                        content = d;
                    }
                    Ok(Fetched::UpToDate(_)) => bail!("a fetch without a 'have' was up to date"),
                    Err(_) => pc = None,
                },
                // The server went away: find it again (the wait above).
                Err(e) if e.is_transient() => pc = None,
                Err(e) => bail!("change {line}: {e}"),
            }
        }
        k += 1;
    }
    Ok(())
}

/// S2: every acknowledged change is in the final content, once, in the
/// order of its revision, and the head is at least the last acknowledged
/// revision. Returns the head revision.
async fn check_s2(project: &Project, acks: &[Ack]) -> Result<u64> {
    let mut acks = acks.to_vec();
    acks.sort_by_key(|a| a.revision);
    for w in acks.windows(2) {
        ensure!(
            w[0].revision < w[1].revision,
            "two acknowledgements name revision {}",
            w[0].revision
        );
    }
    let (head, content) = project.fetch().await?;
    let text = String::from_utf8(content)?;
    let position: BTreeMap<&str, usize> = text.lines().enumerate().map(|(i, l)| (l, i)).collect();
    ensure!(
        position.len() == text.lines().count(),
        "a line appears twice"
    );
    let mut prev = None;
    for a in &acks {
        let at = *position.get(a.line.as_str()).ok_or_else(|| {
            anyhow!(
                "acknowledged change {} (revision {}) is lost",
                a.line,
                a.revision
            )
        })?;
        ensure!(
            prev.is_none_or(|p| at > p),
            "change {} is out of order",
            a.line
        );
        prev = Some(at);
    }
    if let Some(last) = acks.last() {
        ensure!(
            head >= last.revision,
            "the head {head} is older than the acknowledged revision {}",
            last.revision
        );
    }
    Ok(head)
}

/// The longest stretch after `since` with no server heartbeat heard (from
/// `since` to the first, between consecutive ones, to now).
fn longest_without_server(beats: &[Timed<Heartbeat>], since: Instant) -> Duration {
    let mut last = since;
    let mut longest = Duration::ZERO;
    for b in beats
        .iter()
        .filter(|b| b.at >= since && b.msg.role == Role::Server)
    {
        longest = longest.max(b.at.saturating_duration_since(last));
        last = b.at;
    }
    longest.max(Instant::now().saturating_duration_since(last))
}

/// The first heartbeat of `device` heard after `since`.
fn first_beat_after(obs: &Observer, device: &str, since: Instant) -> Option<Timed<Heartbeat>> {
    obs.recording()
        .heartbeats
        .into_iter()
        .find(|b| b.at > since && b.msg.device.as_str() == device)
}

/// How long after `since` the first server heartbeat of `device` was heard.
fn first_server_beat_after(obs: &Observer, device: &str, since: Instant) -> Option<Duration> {
    obs.recording()
        .heartbeats
        .into_iter()
        .find(|b| b.at > since && b.msg.device.as_str() == device && b.msg.role == Role::Server)
        .map(|b| b.at - since)
}

/// Waits until the observer heard `device` for `span` after `since`
/// (progress on the bus, not a sleep).
async fn heard_for(obs: &Observer, device: &str, since: Instant, span: Duration) -> Result<()> {
    obs.wait_for(
        |v: &View| {
            v.last_heard(device)
                .is_some_and(|t| t.at.saturating_duration_since(since) >= span)
        },
        span + secs(10),
    )
    .await
}

/// The lab address of a device (`device-N` → `<lab>.2N`).
fn lab_ip(f: &Faults, n: usize) -> String {
    format!("{}.{}", f.lab.lab_net, 20 + n)
}

// ---------------------------------------------------------------------------
// 1. docker kill
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_server_container_is_succeeded_in_bounds_and_rejoins_as_a_client() -> Result<()> {
    let Some(f) = Faults::up("kill").await? else {
        return Ok(());
    };
    let (_, term1) = f.obs.view().converged().context("converged")?;
    let writer = Writer::start(&f.lab).await?;
    writer.wait_more(5, secs(30)).await?;

    let killed = Instant::now();
    docker(&["kill", &f.id("device-1")]).await?;
    let (_, term2) = f
        .obs
        .wait_for(
            |v: &View| v.server().filter(|(d, _)| d == "dev-2"),
            FAILOVER_WITHIN,
        )
        .await
        .context("dev-2 serving after dev-1 was killed")?;
    let failover = first_server_beat_after(&f.obs, "dev-2", killed).context("dev-2 as server")?;
    ensure!(
        term2 > term1,
        "the successor's term {term2} is not newer than {term1}"
    );
    writer.wait_more(5, secs(30)).await?;

    // `docker kill` is not restarted by `unless-stopped`: start it again.
    let started = Instant::now();
    docker(&["start", &f.id("device-1")]).await?;
    let (_, term3) = f
        .obs
        .wait_converged_on("dev-1", secs(30))
        .await
        .context("dev-1 back as server (P1, after its grace)")?;
    ensure!(
        term3 > term2,
        "dev-1 took over with term {term3}, not newer than {term2}"
    );
    let first = first_beat_after(&f.obs, "dev-1", started).context("dev-1 heard again")?;
    ensure!(
        first.msg.role == Role::Client,
        "dev-1 came back as {} instead of joining as a client",
        first.msg.role
    );
    writer.wait_more(5, secs(30)).await?;
    let acks = writer.finish().await?;
    let gap = longest_without_server(&f.obs.recording().heartbeats, killed);
    let head = check_s2(&f.project, &acks).await?;
    let beats = f.check_s1();
    println!(
        "kill: dev-2 served {:.2} s after dev-1 was killed (bound {FAILOVER_WITHIN:?}); longest time without a server {:.2} s; dev-1 rejoined as a client and took back the lease in term {term3}; {} changes acked, head {head}; S1 over {beats} heartbeats; {:.0} s in all",
        failover.as_secs_f64(),
        gap.as_secs_f64(),
        acks.len(),
        f.took()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. docker pause
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_server_container_comes_back_deposed_and_cannot_commit() -> Result<()> {
    let Some(f) = Faults::up("pause").await? else {
        return Ok(());
    };
    let mut to_1 = f.project.client_of("dev-1", secs(30)).await?;
    // A fresh lab's project has no revision yet: the first change is on 0.
    let (r0, mut content) = (0, Vec::new());
    content.extend_from_slice(b"before the pause\n");
    let r1 = match to_1
        .submit(change(r0, "before-pause", content.clone()))
        .await?
    {
        Submitted::Committed(r) | Submitted::AlreadyCommitted(r) => r,
        other => bail!("first change: {other:?}"),
    };

    let paused = Instant::now();
    docker(&["pause", &f.id("device-1")]).await?;
    // A change sent to the frozen server waits in its socket.
    let mut late = to_1.clone();
    let stale = content.clone();
    let pending = tokio::spawn(async move {
        late.submit(change(
            r1.revision,
            "from-the-past",
            [stale, b"stale\n".to_vec()].concat(),
        ))
        .await
    });
    let mut to_2 = f.project.client_of("dev-2", FAILOVER_WITHIN).await?;
    let failover = first_server_beat_after(&f.obs, "dev-2", paused).context("dev-2 as server")?;
    content.extend_from_slice(b"via the new server\n");
    let r2 = match to_2
        .submit(change(r1.revision, "via-dev-2", content.clone()))
        .await?
    {
        Submitted::Committed(r) | Submitted::AlreadyCommitted(r) => r,
        other => bail!("change via dev-2: {other:?}"),
    };
    // dev-2 must outrank dev-1 while it wakes, or dev-1 is handed the lease
    // back at once (P1) and serves legitimately in a newer term.
    f.set_score("dev-2", 250).await?;
    // Past the lease: dev-1 has been frozen longer than 1.5 s by now.
    ensure!(paused.elapsed() > observer::LEASE_DURATION);

    docker(&["unpause", &f.id("device-1")]).await?;
    let queued = tokio::time::timeout(secs(15), pending)
        .await
        .context("the queued submit ends")??;
    ensure!(
        !matches!(queued, Ok(Submitted::Committed(_))),
        "a deposed server committed a queued change: {queued:?}"
    );
    let fresh = to_1
        .submit(change(r1.revision, "after-waking", b"stale 2\n".to_vec()))
        .await;
    ensure!(
        matches!(
            fresh,
            Err(ClientError::NotServer { .. })
                | Err(ClientError::Rejected { .. })
                | Err(ClientError::StaleTerm { .. })
                | Err(ClientError::Connect { .. })
        ),
        "a deposed server took a change: {fresh:?}"
    );
    let (head, text) = f.project.fetch().await?;
    ensure!(
        head == r2.revision,
        "the history forked: head {head}, expected {}",
        r2.revision
    );
    ensure!(
        sha256_hex(&text) == r2.sha256,
        "the head is not dev-2's change"
    );
    // dev-1 is back, deposed, a client.
    f.obs
        .wait_for(
            |v: &View| v.device("dev-1").is_some_and(|h| h.role == Role::Client),
            secs(10),
        )
        .await
        .context("dev-1 back as a client")?;

    // Scores back: dev-1 ranks first again and takes over (P1).
    f.set_score("dev-2", 160).await?;
    let (_, term) = f.obs.wait_converged_on("dev-1", secs(20)).await?;
    ensure!(term > to_2.seen_term(), "dev-1 serves in an older term");
    let (head, text) = f.project.fetch().await?;
    ensure!(
        head == r2.revision && sha256_hex(&text) == r2.sha256,
        "dev-1 serves another head"
    );
    let gap = longest_without_server(&f.obs.recording().heartbeats, paused);
    let beats = f.check_s1();
    println!(
        "pause: dev-2 served {:.2} s after dev-1 was frozen (bound {FAILOVER_WITHIN:?}); longest time without a server {:.2} s; the woken dev-1 refused a queued change ({}) and a new one ({}); 2 changes acked, head {head}; S1 over {beats} heartbeats; {:.0} s in all",
        failover.as_secs_f64(),
        gap.as_secs_f64(),
        match &queued {
            Ok(s) => format!("{s:?}"),
            Err(e) => e.to_string(),
        },
        fresh.err().map(|e| e.to_string()).unwrap_or_default(),
        f.took()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. docker network disconnect
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn network_cuts_of_the_server_and_of_a_client_keep_one_server_and_every_change() -> Result<()>
{
    let Some(f) = Faults::up("netcut").await? else {
        return Ok(());
    };
    let (_, term) = f.obs.view().converged().context("converged")?;

    // The server loses the lab network, keeps the bus: it stays server (it
    // holds the lease), its clients cannot reach its project service.
    let writer = Writer::start(&f.lab).await?;
    writer.wait_more(5, secs(30)).await?;
    let dev1 = f.id("device-1");
    docker(&["network", "disconnect", &f.lab_network(), &dev1]).await?;
    let cut = Instant::now();
    heard_for(&f.obs, "dev-1", cut, secs(3)).await?;
    let during = f.obs.view();
    ensure!(
        during.server() == Some(("dev-1".into(), term)),
        "the server cut from the lab network lost its lease: {}",
        during.summary()
    );
    let before = writer.done();
    let reconnecting = Instant::now();
    docker(&[
        "network",
        "connect",
        "--ip",
        &lab_ip(&f, 1),
        &f.lab_network(),
        &dev1,
    ])
    .await?;
    let healed = Instant::now();
    let cut_for = reconnecting - cut;
    writer.wait_more(5, secs(30)).await?;
    let resumed = writer
        .acked
        .lock()
        .unwrap()
        .iter()
        .find(|a| a.at > healed)
        .map(|a| a.at - healed);
    let acks = writer.finish().await?;
    let acked_during = acks
        .iter()
        .filter(|a| a.at > cut && a.at < reconnecting)
        .count();
    let head = check_s2(&f.project, &acks).await?;
    ensure!(
        f.obs.view().server() == Some(("dev-1".into(), term)),
        "{}",
        f.obs.view().summary()
    );

    // A client loses both networks: it falls silent on the bus and cannot
    // reach NATS; a change made on it meanwhile waits in its outbox and is
    // submitted once it is back.
    let dev5 = f.id("device-5");
    let (base, mut content) = f.project.fetch().await?;
    docker(&["network", "disconnect", &f.lab_network(), &dev5]).await?;
    docker(&["network", "disconnect", &f.bus_network(), &dev5]).await?;
    f.obs
        .wait_for(|v: &View| !v.is_live("dev-5"), secs(5))
        .await
        .context("dev-5 silent")?;
    // Red (B2, "Cannot reach the message bus"): its own status colour, read
    // by its health check from its metrics, with the lost NATS link.
    let red = wait_until(
        "dev-5 showing red, the bus unreachable",
        secs(30),
        || async {
            match docker(&["exec", &dev5, "/understudy", "health"]).await {
                Ok(out) => bail!("still healthy: {out}"),
                Err(e) => {
                    let said = e.to_string();
                    ensure!(
                        said.contains("not connected to NATS") && said.contains("status red"),
                        "{said}"
                    );
                    Ok(said)
                }
            }
        },
    )
    .await?;
    // The operator edits on the device itself: `project put --data-dir`.
    content.extend_from_slice(b"made on dev-5 while cut off\n");
    let tmp = TempDir::new("faults-netcut")?;
    let file = tmp.path().join("change.txt");
    std::fs::write(&file, &content)?;
    docker(&[
        "cp",
        &file.display().to_string(),
        &format!("{dev5}:/change.txt"),
    ])
    .await?;
    let queued = docker(&[
        "exec",
        &dev5,
        "/understudy",
        "project",
        "put",
        "--group",
        GROUP,
        "--file",
        "/change.txt",
        "--data-dir",
        "/data",
        "--by",
        "dev-5-operator",
    ])
    .await?;
    let outbox = |dir: &std::path::Path| -> Result<usize> {
        let outbox = dir.join("outbox");
        let _ = std::fs::remove_dir_all(&outbox);
        compose::docker(&[
            "cp",
            &format!("{dev5}:/data/project/outbox"),
            &outbox.display().to_string(),
        ])?;
        Ok(std::fs::read_dir(&outbox)?
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
            })
            .count())
    };
    ensure!(
        outbox(tmp.path())? == 1,
        "the change is not in dev-5's outbox"
    );
    ensure!(
        f.project.fetch().await?.0 == base,
        "the change landed while dev-5 was cut off"
    );
    docker(&["network", "connect", &f.bus_network(), &dev5]).await?;
    docker(&[
        "network",
        "connect",
        "--ip",
        &lab_ip(&f, 5),
        &f.lab_network(),
        &dev5,
    ])
    .await?;
    let back = Instant::now();
    let drained = wait_until("dev-5's change committed", secs(30), || async {
        let (head, text) = f.project.fetch().await?;
        ensure!(head == base + 1 && text == content, "head {head}");
        Ok(back.elapsed())
    })
    .await?;
    ensure!(
        outbox(tmp.path())? == 0,
        "dev-5's outbox still holds the change"
    );
    f.obs.wait_converged_on("dev-1", secs(20)).await?;
    let beats = f.check_s1();
    println!(
        "netcut: dev-1 cut from the lab network {:.1} s: it stayed server (term {term}), {acked_during} changes acked while cut ({before} before the cut ended), writes resumed {:.2} s after reconnecting; {} changes acked, head {head}, none lost; dev-5 cut off from both networks: silent, red ({red}), its change queued ({}) and committed {:.2} s after reconnecting; S1 over {beats} heartbeats; {:.0} s in all",
        cut_for.as_secs_f64(),
        resumed.unwrap_or_default().as_secs_f64(),
        acks.len(),
        queued.trim(),
        drained.as_secs_f64(),
        f.took()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. NATS rolling restart
// ---------------------------------------------------------------------------

/// Waits until a NATS node answers `/healthz` on its bus address.
async fn nats_healthy(f: &Faults, service: &str, within: Duration) -> Result<()> {
    let id = f.id(service);
    let net = f.bus_network();
    wait_until(&format!("{service} healthy"), within, || async {
        let ip = docker(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
            &id,
        ])
        .await?;
        let addr: std::net::SocketAddr = format!("{}:8222", ip.trim()).parse()?;
        let reply = http::get(addr, "/healthz").await?;
        ensure!(reply.status == 200, "/healthz: {}", reply.status);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_the_nats_cluster_loses_no_acknowledged_change() -> Result<()> {
    let Some(f) = Faults::up("natsroll").await? else {
        return Ok(());
    };
    let writer = Writer::start(&f.lab).await?;
    writer.wait_more(5, secs(30)).await?;
    let t0 = Instant::now();

    docker(&["stop", &f.id("nats-2")]).await?;
    writer
        .wait_more(5, secs(60))
        .await
        .context("writes with nats-2 stopped")?;
    docker(&["restart", &f.id("nats-3")]).await?;
    nats_healthy(&f, "nats-3", secs(60)).await?;
    writer
        .wait_more(5, secs(60))
        .await
        .context("writes after nats-3 restarted")?;
    docker(&["start", &f.id("nats-2")]).await?;
    nats_healthy(&f, "nats-2", secs(60)).await?;
    writer
        .wait_more(5, secs(60))
        .await
        .context("writes with all nodes back")?;
    let acks = writer.finish().await?;
    let longest_stall = acks
        .windows(2)
        .filter(|w| w[1].at > t0)
        .map(|w| w[1].at - w[0].at)
        .max()
        .unwrap_or_default();
    let head = check_s2(&f.project, &acks).await?;
    f.obs.wait_converged_on("dev-1", secs(30)).await?;
    let gap = longest_without_server(&f.obs.recording().heartbeats, t0);
    let beats = f.check_s1();
    println!(
        "natsroll: nats-2 stopped, nats-3 restarted, nats-2 started: {} changes acked, head {head}, none lost; longest wait for an acknowledgement {:.2} s; longest time without a server heard {:.2} s; S1 over {beats} heartbeats; {:.0} s in all",
        acks.len(),
        longest_stall.as_secs_f64(),
        gap.as_secs_f64(),
        f.took()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. rolling upgrade of the devices
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_every_device_keeps_a_server_but_for_bounded_handovers() -> Result<()>
{
    let Some(f) = Faults::up("devroll").await? else {
        return Ok(());
    };
    let writer = Writer::start(&f.lab).await?;
    writer.wait_more(5, secs(30)).await?;
    let t0 = Instant::now();
    for (i, device) in DEVICES.iter().enumerate() {
        docker(&["restart", &f.id(&format!("device-{}", i + 1))]).await?;
        // `docker restart` returns once the new process started: every
        // heartbeat of the device heard from now on is the new process's.
        let restarted = Instant::now();
        // Back: its own heartbeats again, and the group on dev-1, all live.
        f.obs
            .wait_for(
                |v: &View| {
                    v.last_heard(device).is_some_and(|t| t.at > restarted)
                        && v.live().len() == DEVICES.len()
                        && v.converged().is_some_and(|(d, _)| d == "dev-1")
                },
                secs(40),
            )
            .await
            .with_context(|| format!("the group back on dev-1 after restarting {device}"))?;
        writer.wait_more(2, secs(30)).await?;
    }
    let gap = longest_without_server(&f.obs.recording().heartbeats, t0);
    ensure!(
        gap <= HANDOVER_WITHIN,
        "the group was without a server for {:.2} s",
        gap.as_secs_f64()
    );
    let acks = writer.finish().await?;
    let head = check_s2(&f.project, &acks).await?;
    let beats = f.check_s1();
    println!(
        "devroll: five devices restarted one by one in {:.1} s; longest time without a server {:.2} s (bound {HANDOVER_WITHIN:?}); {} changes acked, head {head}, none lost; S1 over {beats} heartbeats; {:.0} s in all",
        t0.elapsed().as_secs_f64(),
        gap.as_secs_f64(),
        acks.len(),
        f.took()
    );
    Ok(())
}
