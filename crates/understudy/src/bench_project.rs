//! `understudy bench project`: the project file exchange measured on real
//! processes — a nats-server with JetStream and one `understudy node` as the
//! group's server — with the clients in this process, talking to it through
//! the same library calls devices use. It prints figures and whether each
//! target is met; it asserts nothing.
//!
//! - **change notification**: N clients hold a `Watch` stream open; M small
//!   changes are submitted one after the other, each on the previous
//!   revision. A change's latency runs from just before its submit until the
//!   *last* client received the `WatchEvent` naming its revision (all
//!   notified); the per-client latencies are reported too. Target: p99 of
//!   "all notified" ≤ 50 ms.
//! - **distribution**: one change of S MiB of random bytes, then N clients
//!   at once bring their own local copy to it with
//!   [`ProjectClient::fetch_into`] (to disk, SHA-256 verified, atomic
//!   replace), timed until the last one finished; compared with N plain TCP
//!   connections on loopback each receiving S MiB from memory. Target: the
//!   project's aggregate rate ≥ 30 % of the raw one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use async_nats::jetstream;
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use understudy_project_sync::client::{Change, Fetched, ProjectClient, ServerRef, Submitted};
use understudy_project_sync::local::LocalCopy;
use understudy_project_sync::pb;
use understudy_project_sync::security::ClientSecurity;
use understudy_protocol::GroupName;

use crate::bench::{fresh_workspace, ms, quantile, summary};
use crate::lab::spawn_device;
use crate::project::connect_server_within;
use crate::settings::ProjectAuthArgs;
use crate::settings::connect_once;
use understudy_testkit::NatsServer;

const MIB: usize = 1024 * 1024;
/// The size of each change of the notification run.
const SMALL_CHANGE: usize = 1024;
/// Bound on every single call to the bus or the server.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Target: p99 of change → all watchers notified.
const NOTIFY_P99_TARGET_MS: f64 = 50.0;
/// Target: project distribution rate as a share of raw loopback TCP.
const RATE_SHARE_TARGET: f64 = 0.30;

/// `understudy bench project` settings.
#[derive(Debug, Args)]
pub struct ProjectArgs {
    /// Clients: watchers in the notification run, downloaders in the
    /// distribution run.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Small (1 KiB) changes to time, each made on the previous revision.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Size of the project distributed to every client, in MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: usize,
    /// The nats-server binary [default: $UNDERSTUDY_NATS_SERVER, .tools/bin/nats-server, PATH].
    #[arg(long, env = "UNDERSTUDY_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    /// Folder for logs, the NATS store, the server's data and the clients'
    /// local copies.
    #[arg(long, default_value = ".bench-project")]
    dir: PathBuf,
    /// TLS and the group token of the project service: the server device
    /// is started with them, the clients use them (to time TLS against
    /// plain gRPC).
    #[command(flatten)]
    project: ProjectAuthArgs,
}

/// Aborts the tasks it holds when dropped, so an early return leaves no
/// watcher or downloader running.
struct Tasks<T>(Vec<JoinHandle<T>>);

impl<T> Drop for Tasks<T> {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Runs `understudy bench project` and prints its figures.
pub async fn project(a: ProjectArgs) -> Result<()> {
    ensure!(a.clients >= 1, "--clients must be at least 1");
    ensure!(a.changes >= 1, "--changes must be at least 1");
    ensure!(a.size_mib >= 1, "--size-mib must be at least 1");
    let group: GroupName = "bench".parse()?;
    let (dir, exe, bin) = fresh_workspace(&a.dir, a.nats_server.as_deref())?;
    let nats = NatsServer::start_in(&bin, &dir, None).await?;
    let url = nats.url();
    let size = a.size_mib * MIB;
    let max_size = (size as u64 + MIB as u64).max(256 * MIB as u64).to_string();
    let sec = a.project.client()?;
    let mut extra: Vec<String> = ["--grace-period", "0", "--max-project-size", &max_size]
        .map(String::from)
        .to_vec();
    extra.extend(a.project.node_args(&dir)?);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let _server = spawn_device(
        &exe,
        &dir,
        &crate::lab::LabBus::plain(&url),
        group.as_str(),
        0,
        200,
        &extra,
    )?;
    let client = connect_once(
        &understudy_bus::NatsSettings::plain(url.as_str()),
        "understudy-bench-project",
    )
    .await?;
    let js = jetstream::new(client);
    let within = Some(Duration::from_secs(30));
    let mut pc = connect_server_within(&js, &sec, &group, within)
        .await
        .context("the server device did not serve the project")?;
    let server = pc.server().clone();
    println!(
        "understudy bench project: {} clients in this process, the server `understudy node` {} \
         in its own, single nats-server (JetStream, file store), loopback, gRPC {}",
        a.clients,
        server.device,
        if sec.is_tls() { "over TLS" } else { "in clear" }
    );

    let mut rng = StdRng::seed_from_u64(0x5eed_f11e);
    let on = (&group, &server, &sec);
    notification(on, &mut pc, &mut rng, a.clients, a.changes).await?;
    distribution(on, &mut pc, &mut rng, a.clients, size, &dir).await
}

/// The server and how to dial it.
type On<'a> = (&'a GroupName, &'a ServerRef, &'a ClientSecurity);

/// The server's head revision.
async fn head(pc: &mut ProjectClient) -> Result<pb::Revision> {
    pc.describe()
        .await?
        .head
        .ok_or_else(|| anyhow!("the server described no head"))
}

/// Submits `change`, retrying what may succeed later (the server confirming
/// its lease); returns the committed revision and how many retries it took.
async fn submit(pc: &mut ProjectClient, change: Change) -> Result<(pb::Revision, usize)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut retries = 0;
    loop {
        match pc.submit(change.clone()).await {
            Ok(Submitted::Committed(r) | Submitted::AlreadyCommitted(r)) => {
                return Ok((r, retries));
            }
            Ok(Submitted::Conflict(r)) => bail!(
                "change {} on revision {} conflicted with revision {}",
                change.change_id,
                change.base_revision,
                r.revision
            ),
            Err(e) if e.is_transient() && Instant::now() < deadline => retries += 1,
            Err(e) => return Err(anyhow!(e).context(format!("submit {}", change.change_id))),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn random_bytes(rng: &mut StdRng, n: usize) -> Bytes {
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    Bytes::from(v)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// Part 1: change → every watcher notified.
async fn notification(
    (group, server, sec): On<'_>,
    pc: &mut ProjectClient,
    rng: &mut StdRng,
    n: usize,
    changes: usize,
) -> Result<()> {
    // One change first, so the timed ones find the commit path warm.
    let base = head(pc).await?.revision;
    let (mut last, _) = submit(
        pc,
        Change {
            base_revision: base,
            changed_by: "bench".into(),
            change_id: "warm-up".into(),
            data: random_bytes(rng, SMALL_CHANGE),
        },
    )
    .await?;

    // Each watcher has a connection of its own, as a device does; the
    // stream is open on the server once `watch` returns (its headers came).
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, u64, Instant)>();
    let mut watchers = Tasks(Vec::new());
    for i in 0..n {
        let mut wc = ProjectClient::connect_with(group, server.clone(), CALL_TIMEOUT, sec).await?;
        let mut stream = wc.watch(last.revision).await?;
        let tx = tx.clone();
        watchers.0.push(tokio::spawn(async move {
            while let Some(Ok(ev)) = stream.next().await {
                let at = Instant::now();
                if wc.accept_event(&ev).is_err() {
                    continue;
                }
                if let Some(h) = ev.head
                    && tx.send((i, h.revision, at)).is_err()
                {
                    break;
                }
            }
        }));
    }
    drop(tx);

    let mut acked = Vec::with_capacity(changes);
    let mut all = Vec::with_capacity(changes);
    let mut each = Vec::with_capacity(changes * n);
    let mut retries = 0;
    for k in 0..changes {
        let change = Change {
            base_revision: last.revision,
            changed_by: "bench".into(),
            change_id: format!("small-{k}"),
            data: random_bytes(rng, SMALL_CHANGE),
        };
        let t0 = Instant::now();
        let (rev, r) = submit(pc, change).await?;
        acked.push(ms(t0.elapsed()));
        retries += r;
        let mut got: Vec<Option<Instant>> = vec![None; n];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while got.iter().any(Option::is_none) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((i, revision, at))) if revision == rev.revision => got[i] = Some(at),
                Ok(Some(_)) => {} // an older revision, already counted
                Ok(None) => bail!("a watch stream ended during the run"),
                Err(_) => bail!(
                    "{} of {n} watchers not notified of revision {} within 10 s",
                    got.iter().filter(|g| g.is_none()).count(),
                    rev.revision
                ),
            }
        }
        let lat: Vec<f64> = got.iter().flatten().map(|at| ms(*at - t0)).collect();
        all.push(lat.iter().copied().fold(0.0, f64::max));
        each.extend(lat);
        last = rev;
    }
    drop(watchers);

    println!(
        "change notification: {changes} changes of {} KiB, each on the previous revision, {n} watchers",
        SMALL_CHANGE / 1024
    );
    let mut sorted = all.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = quantile(&sorted, 0.99);
    println!("{}", summary("  submit -> committed (acknowledged)", acked));
    println!("{}", summary("  change -> one watcher notified", each));
    println!("{}", summary("  change -> all watchers notified", all));
    if retries > 0 {
        println!("  ({retries} submit retries, counted in the latencies)");
    }
    println!(
        "  target p99 (all notified) <= {NOTIFY_P99_TARGET_MS:.0} ms: {} ({p99:.1} ms)",
        met(p99 <= NOTIFY_P99_TARGET_MS)
    );
    Ok(())
}

/// Part 2: S MiB to N clients at once, against raw loopback TCP.
async fn distribution(
    (group, server, sec): On<'_>,
    pc: &mut ProjectClient,
    rng: &mut StdRng,
    n: usize,
    size: usize,
    dir: &Path,
) -> Result<()> {
    let mib = (size / MIB) as f64;
    let data = random_bytes(rng, size);
    let base = head(pc).await?.revision;
    let t0 = Instant::now();
    let (rev, _) = submit(
        pc,
        Change {
            base_revision: base,
            changed_by: "bench".into(),
            change_id: "large".into(),
            data: data.clone(),
        },
    )
    .await?;
    let submitted = t0.elapsed();

    let copies = dir.join("copies");
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let local = LocalCopy::open(&copies.join(format!("client-{}", i + 1)))?;
        let c = ProjectClient::connect_with(group, server.clone(), CALL_TIMEOUT, sec).await?;
        clients.push((c, local));
    }
    let t0 = Instant::now();
    let mut fetches = Tasks(
        clients
            .into_iter()
            .map(|(mut c, local)| {
                tokio::spawn(async move {
                    let meta = c.fetch_into(&local).await?;
                    anyhow::Ok((meta, Instant::now()))
                })
            })
            .collect(),
    );
    let mut done = Vec::with_capacity(n);
    for f in &mut fetches.0 {
        // `&mut JoinHandle` is a future too; the guard still owns the handle.
        let (meta, at) = f.await??;
        ensure!(
            meta.revision == rev.revision && meta.sha256 == rev.sha256,
            "a client fetched revision {} ({}), not {} ({})",
            meta.revision,
            meta.sha256,
            rev.revision,
            rev.sha256
        );
        done.push(at - t0);
    }
    drop(fetches);
    let project = t0.elapsed();
    let _ = std::fs::remove_dir_all(&copies);

    // Where the time goes: the same transfer kept in memory, and the disk
    // writes alone.
    let in_memory = fetch_in_memory((group, server, sec), n, &rev).await?;
    let disk = disk_only(&copies, n, data.clone()).await?;
    let _ = std::fs::remove_dir_all(&copies);
    let hash = hash_only(n, data.clone()).await?;
    let copy = copy_only(n, data.clone()).await?;
    let raw = raw_loopback(n, data).await?;

    let total = mib * n as f64;
    let rate = |d: Duration| total / d.as_secs_f64();
    let first = done.iter().min().copied().unwrap_or_default();
    let share = rate(project) / rate(raw);
    println!(
        "distribution: {mib:.0} MiB of random bytes, {n} clients fetch_into a local copy each at once \
         (to disk, SHA-256 verified, atomic replace)"
    );
    println!(
        "  submit {mib:.0} MiB -> committed: {:.0} ms",
        ms(submitted)
    );
    println!(
        "  project fetch_into: {total:.0} MiB in {:.2} s = {:.1} MiB/s (first client done after {:.2} s)",
        project.as_secs_f64(),
        rate(project),
        first.as_secs_f64()
    );
    println!(
        "    same, kept in memory (fetch: gRPC + SHA-256, no disk): {:.2} s = {:.1} MiB/s",
        in_memory.as_secs_f64(),
        rate(in_memory)
    );
    println!(
        "    disk alone ({n} files of {mib:.0} MiB written and fsynced at once): {:.2} s = {:.1} MiB/s",
        disk.as_secs_f64(),
        rate(disk)
    );
    println!(
        "  raw loopback TCP:   {total:.0} MiB in {:.2} s = {:.1} MiB/s",
        raw.as_secs_f64(),
        rate(raw)
    );
    println!(
        "    SHA-256 alone ({n} x {mib:.0} MiB hashed at once): {:.2} s = {:.1} MiB/s",
        hash.as_secs_f64(),
        rate(hash)
    );
    println!(
        "    one copy into fresh memory alone ({n} x {mib:.0} MiB at once): {:.2} s = {:.1} MiB/s",
        copy.as_secs_f64(),
        rate(copy)
    );
    // Every client must at least receive (raw), verify (hash) and keep
    // (one copy) the bytes, all on the same cores: the sum bounds any
    // verified, stored transfer on this machine.
    let floor = raw + hash + copy;
    println!(
        "  ceiling for a verified, kept transfer (raw + SHA-256 + one copy): {:.1} MiB/s = {:.1} % of raw",
        rate(floor),
        rate(floor) / rate(raw) * 100.0
    );
    println!(
        "  project / raw = {:.1} % (in memory: {:.1} %); target >= {:.0} %: {}",
        share * 100.0,
        rate(in_memory) / rate(raw) * 100.0,
        RATE_SHARE_TARGET * 100.0,
        met(share >= RATE_SHARE_TARGET)
    );
    Ok(())
}

/// N threads at once hashing `data` (SHA-256, as clients verify).
async fn hash_only(n: usize, data: Bytes) -> Result<Duration> {
    let t0 = Instant::now();
    let mut hashers = Tasks(
        (0..n)
            .map(|_| {
                let data = data.clone();
                tokio::task::spawn_blocking(move || {
                    understudy_project_sync::local::sha256_hex(&data).len()
                })
            })
            .collect(),
    );
    for h in &mut hashers.0 {
        h.await?;
    }
    Ok(t0.elapsed())
}

/// N threads at once copying `data` into fresh memory in 1 MiB slices.
async fn copy_only(n: usize, data: Bytes) -> Result<Duration> {
    let t0 = Instant::now();
    let mut copiers = Tasks(
        (0..n)
            .map(|_| {
                let data = data.clone();
                tokio::task::spawn_blocking(move || {
                    let mut v = Vec::new();
                    for slice in data.chunks(MIB) {
                        v.extend_from_slice(slice);
                    }
                    v.len()
                })
            })
            .collect(),
    );
    for c in &mut copiers.0 {
        c.await?;
    }
    Ok(t0.elapsed())
}

/// N clients at once fetching `rev` into memory (verified, not written).
async fn fetch_in_memory(
    (group, server, sec): On<'_>,
    n: usize,
    rev: &pb::Revision,
) -> Result<Duration> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(ProjectClient::connect_with(group, server.clone(), CALL_TIMEOUT, sec).await?);
    }
    let t0 = Instant::now();
    let mut fetches = Tasks(
        clients
            .into_iter()
            .map(|mut c| tokio::spawn(async move { anyhow::Ok(c.fetch(None).await?) }))
            .collect(),
    );
    for f in &mut fetches.0 {
        match f.await?? {
            Fetched::Content(r, _) if r.sha256 == rev.sha256 => {}
            _ => bail!("an in-memory fetch did not bring revision {}", rev.revision),
        }
    }
    Ok(t0.elapsed())
}

/// N files of `data` written at once (1 MiB writes) and fsynced, as the
/// local copies are, without the network.
async fn disk_only(dir: &Path, n: usize, data: Bytes) -> Result<Duration> {
    std::fs::create_dir_all(dir)?;
    let t0 = Instant::now();
    let mut writers = Tasks(
        (0..n)
            .map(|i| {
                let path = dir.join(format!("disk-{}", i + 1));
                let data = data.clone();
                tokio::task::spawn_blocking(move || {
                    use std::io::Write as _;
                    let mut f = std::fs::File::create(&path)?;
                    for slice in data.chunks(MIB) {
                        f.write_all(slice)?;
                    }
                    f.sync_all()
                })
            })
            .collect(),
    );
    for w in &mut writers.0 {
        w.await??;
    }
    Ok(t0.elapsed())
}

/// N loopback TCP connections at once, each receiving `data` (written in
/// 1 MiB slices from memory, read into a buffer and discarded); the wall
/// time until every reader has all of it.
async fn raw_loopback(n: usize, data: Bytes) -> Result<Duration> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let size = data.len();
    let t0 = Instant::now();
    let mut sender = Tasks(vec![tokio::spawn(async move {
        let mut writers = Tasks(Vec::with_capacity(n));
        for _ in 0..n {
            let (mut sock, _) = listener.accept().await?;
            let data = data.clone();
            writers.0.push(tokio::spawn(async move {
                for slice in data.chunks(MIB) {
                    sock.write_all(slice).await?;
                }
                sock.shutdown().await
            }));
        }
        for w in &mut writers.0 {
            w.await??;
        }
        anyhow::Ok(())
    })]);
    let mut readers = Tasks(
        (0..n)
            .map(|_| {
                tokio::spawn(async move {
                    let mut sock = tokio::net::TcpStream::connect(addr).await?;
                    let mut buf = vec![0u8; MIB];
                    let mut got = 0usize;
                    loop {
                        match sock.read(&mut buf).await? {
                            0 => break,
                            k => got += k,
                        }
                    }
                    anyhow::Ok(got)
                })
            })
            .collect(),
    );
    for r in &mut readers.0 {
        let got = r.await??;
        ensure!(got == size, "a raw reader got {got} of {size} bytes");
    }
    let took = t0.elapsed();
    for s in &mut sender.0 {
        s.await??;
    }
    Ok(took)
}
