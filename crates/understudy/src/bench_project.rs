//! `understudy bench project`: the project file exchange measured on real
//! processes — a nats-server with JetStream and one `understudy node` as the
//! group's server — with the clients in this process, talking to it through
//! the same library calls devices use. It prints figures and whether each
//! target is met; it asserts nothing.
//!
//! - **change notification**: W watchers, each on a gRPC connection of its
//!   own (as each device has), hold a `Watch` stream open; M small changes
//!   are submitted one after the other, each on the previous revision. A
//!   change's latency runs from just before its submit until the *last*
//!   watcher received the `WatchEvent` naming its revision (all notified);
//!   the per-watcher latencies are reported too. Target: p99 of "all
//!   notified" ≤ 50 ms.
//! - **distribution**: one change of S MiB of random bytes, then N clients
//!   at once fetch it, timed until the last one finished, twice: kept in
//!   memory ([`ProjectClient::fetch`], SHA-256 verified) and to disk
//!   ([`ProjectClient::fetch_into`]: written, SHA-256 verified, fsynced,
//!   atomic replace). Each is reported as a fraction of a ceiling measured
//!   in the same run: in memory against a *verified transfer* (N raw
//!   loopback TCP receives + N SHA-256 + N copies into memory, the sum of
//!   the three times), target ≥ 80 %; to disk against the *disk* alone
//!   (N files of the same bytes written and fsynced at once), target ≥ 70 %.
//!   Raw loopback TCP alone is printed for information.
//! - **wide distribution**: the same revision to `--wide-clients` clients at
//!   once with `fetch_into`; every copy is checked again from disk (size and
//!   SHA-256) and the time printed, beside the disk alone for that many files.

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
use understudy_project_sync::local::{CopyState, LocalCopy};
use understudy_project_sync::pb;
use understudy_project_sync::security::ClientSecurity;
use understudy_protocol::GroupName;

use crate::bench::{ensure_open_files, fresh_workspace, ms, quantile, summary};
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
/// How long a client of a distribution run keeps trying again.
const RETRY_FOR: Duration = Duration::from_secs(60);
/// Target: the in-memory fetch's rate as a share of the verified-transfer
/// ceiling (receive + SHA-256 + one copy) measured in the same run.
const MEMORY_SHARE_TARGET: f64 = 0.80;
/// Target: `fetch_into`'s rate as a share of the disk alone (the same bytes
/// written and fsynced, as many files at once) measured in the same run.
const DISK_SHARE_TARGET: f64 = 0.70;

/// `understudy bench project` settings.
#[derive(Debug, Args)]
pub struct ProjectArgs {
    /// Downloaders in the distribution run compared with the ceilings.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Watchers in the notification run, each on a gRPC connection of its
    /// own.
    #[arg(long, default_value_t = 200)]
    watchers: usize,
    /// Downloaders in the wide distribution run (`fetch_into` only, every
    /// copy verified); 0 skips it.
    #[arg(long, default_value_t = 50)]
    wide_clients: usize,
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
    ensure!(a.watchers >= 1, "--watchers must be at least 1");
    ensure!(a.changes >= 1, "--changes must be at least 1");
    ensure!(a.size_mib >= 1, "--size-mib must be at least 1");
    let n = a.watchers.max(a.clients).max(a.wide_clients);
    // A socket per client here, and one per client in the server device,
    // which inherits the limit; a file or two per download.
    ensure_open_files(3 * n as u64 + 256, &format!("{n} clients"))?;
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
        "understudy bench project: the clients in this process, the server `understudy node` {} \
         in its own, single nats-server (JetStream, file store), loopback, gRPC {}",
        server.device,
        if sec.is_tls() { "over TLS" } else { "in clear" }
    );

    let mut rng = StdRng::seed_from_u64(0x5eed_f11e);
    let on = (&group, &server, &sec);
    notification(on, &mut pc, &mut rng, a.watchers, a.changes).await?;
    let (rev, data) = distribution(on, &mut pc, &mut rng, a.clients, size, &dir).await?;
    if a.wide_clients > 0 {
        wide_distribution(on, &rev, data, a.wide_clients, &dir).await?;
    }
    Ok(())
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

/// N clients at once bringing a local copy each (in `copies/client-<i>`)
/// to the head with `fetch_into`: the wall time until the last one finished,
/// when the first did, how many calls were tried again, and the copies. A
/// client whose fetch fails for a reason that may pass (the server stepped
/// down and is not serving yet) tries again on the same connection, as a
/// device does, resuming its partial download.
async fn fetch_into_all(
    (group, server, sec): On<'_>,
    n: usize,
    rev: &pb::Revision,
    copies: &Path,
) -> Result<Fetches> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let local = LocalCopy::open(&copies.join(format!("client-{}", i + 1)))?;
        let c = ProjectClient::connect_with(group, server.clone(), CALL_TIMEOUT, sec).await?;
        clients.push((c, local));
    }
    let t0 = Instant::now();
    let deadline = t0 + RETRY_FOR;
    let mut fetches = Tasks(
        clients
            .into_iter()
            .map(|(mut c, local)| {
                tokio::spawn(async move {
                    let mut retries = Vec::new();
                    loop {
                        match c.fetch_into(&local).await {
                            Ok(meta) => return anyhow::Ok((meta, Instant::now(), local, retries)),
                            Err(e) if e.is_transient() && Instant::now() < deadline => {
                                retries.push(e.to_string());
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(e) => return Err(anyhow!(e).context("fetch_into")),
                        }
                    }
                })
            })
            .collect(),
    );
    let mut first = None::<Duration>;
    let mut locals = Vec::with_capacity(n);
    let mut retries = Vec::new();
    for f in &mut fetches.0 {
        // `&mut JoinHandle` is a future too; the guard still owns the handle.
        let (meta, at, local, r) = f.await??;
        ensure!(
            meta.revision == rev.revision && meta.sha256 == rev.sha256,
            "a client fetched revision {} ({}), not {} ({})",
            meta.revision,
            meta.sha256,
            rev.revision,
            rev.sha256
        );
        let took = at - t0;
        first = Some(first.map_or(took, |f| f.min(took)));
        locals.push(local);
        retries.extend(r);
    }
    Ok(Fetches {
        took: t0.elapsed(),
        first: first.unwrap_or_default(),
        retries,
        locals,
    })
}

/// What [`fetch_into_all`] measured.
struct Fetches {
    /// Until the last client finished.
    took: Duration,
    /// Until the first did.
    first: Duration,
    /// Why fetches were tried again, one entry per retry, all clients.
    retries: Vec<String>,
    /// The clients' copies.
    locals: Vec<LocalCopy>,
}

/// Waits (at most 60 s) until the server device's own local copy holds
/// `rev`; how long that took.
async fn server_copy_current(dir: &Path, rev: &pb::Revision) -> Result<Duration> {
    let t0 = Instant::now();
    let own = LocalCopy::open(&dir.join("dev-1").join("project"))?;
    loop {
        if let Some(meta) = own.current_unverified()?
            && meta.revision >= rev.revision
        {
            return Ok(t0.elapsed());
        }
        ensure!(
            t0.elapsed() < RETRY_FOR,
            "the server device's own copy did not reach revision {} within {RETRY_FOR:?}",
            rev.revision
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many times the server device stepped down so far (its log says so):
/// under CPU starvation it misses the renewal of its 1.5 s lease, stops
/// serving, and takes the lease again.
fn step_downs(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("dev-1.log"))
        .map(|log| log.lines().filter(|l| l.contains("stepped down")).count())
        .unwrap_or(0)
}

/// A note for the output when a phase needed retries or saw the server step
/// down (with why the fetches were tried again, each reason once); empty
/// otherwise.
fn trouble(retries: &[String], step_downs: usize) -> String {
    if retries.is_empty() && step_downs == 0 {
        return String::new();
    }
    let reasons: std::collections::BTreeSet<&str> = retries.iter().map(String::as_str).collect();
    let why: Vec<&str> = reasons.into_iter().take(3).collect();
    let downs = match step_downs {
        0 => "the server never stepped down".to_string(),
        k => format!("the server stepped down {k} times, its lease not renewed in time"),
    };
    format!(
        "\n    ({} fetches tried again ({}); {downs}: the figure is not clean)",
        retries.len(),
        why.join("; ")
    )
}

/// Part 2: S MiB to N clients at once, in memory and to disk, each against
/// its ceiling measured in the same run. Returns the revision and its bytes.
async fn distribution(
    on: On<'_>,
    pc: &mut ProjectClient,
    rng: &mut StdRng,
    n: usize,
    size: usize,
    dir: &Path,
) -> Result<(pb::Revision, Bytes)> {
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
    // The server device brings its own local copy to the new revision too
    // (with fetch_into, from itself): let it finish first, so the clients
    // timed share the cores and the disk with nothing the ceilings lack.
    let own = server_copy_current(dir, &rev).await?;

    let copies = dir.join("copies");
    let downs = step_downs(dir);
    let fetched = fetch_into_all(on, n, &rev, &copies).await?;
    let (to_disk, first) = (fetched.took, fetched.first);
    let disk_trouble = trouble(&fetched.retries, step_downs(dir) - downs);
    drop(fetched);
    let _ = std::fs::remove_dir_all(&copies);
    let disk = disk_only(&copies, n, data.clone()).await?;
    let _ = std::fs::remove_dir_all(&copies);
    let downs = step_downs(dir);
    let (in_memory, retries) = fetch_in_memory(on, n, &rev).await?;
    let memory_trouble = trouble(&retries, step_downs(dir) - downs);
    let hash = hash_only(n, data.clone()).await?;
    let copy = copy_only(n, data.clone()).await?;
    let raw = raw_loopback(n, data.clone()).await?;
    // Every client must at least receive (raw), verify (hash) and keep (one
    // copy) the bytes, all on the same cores: the sum bounds any verified
    // transfer on this machine.
    let verified = raw + hash + copy;

    let total = mib * n as f64;
    let rate = |d: Duration| total / d.as_secs_f64();
    let line = |what: &str, d: Duration| {
        format!(
            "{what}: {total:.0} MiB in {:.2} s = {:.1} MiB/s",
            d.as_secs_f64(),
            rate(d)
        )
    };
    let memory_share = rate(in_memory) / rate(verified);
    let disk_share = rate(to_disk) / rate(disk);
    println!("distribution: {mib:.0} MiB of random bytes to {n} clients at once");
    println!(
        "  submit {mib:.0} MiB -> committed: {:.0} ms; the server device's own copy current {:.0} ms later \
         (waited for before the runs)",
        ms(submitted),
        ms(own)
    );
    println!(
        "{}{memory_trouble}",
        line(
            "  in memory (fetch: gRPC, SHA-256 verified, kept in memory)",
            in_memory
        )
    );
    println!(
        "{}",
        line(
            "    ceiling, verified transfer (raw TCP + SHA-256 + one copy, times added)",
            verified
        )
    );
    println!(
        "      raw loopback TCP alone ({n} connections receiving {mib:.0} MiB at once): {:.2} s = {:.1} MiB/s",
        raw.as_secs_f64(),
        rate(raw)
    );
    println!(
        "      SHA-256 alone ({n} x {mib:.0} MiB hashed at once): {:.2} s = {:.1} MiB/s",
        hash.as_secs_f64(),
        rate(hash)
    );
    println!(
        "      one copy into fresh memory alone ({n} x {mib:.0} MiB at once): {:.2} s = {:.1} MiB/s",
        copy.as_secs_f64(),
        rate(copy)
    );
    println!(
        "    in memory / verified-transfer ceiling = {:.1} %; target >= {:.0} %: {}",
        memory_share * 100.0,
        MEMORY_SHARE_TARGET * 100.0,
        met(memory_share >= MEMORY_SHARE_TARGET)
    );
    println!(
        "{} (first client done after {:.2} s){disk_trouble}",
        line(
            "  to disk (fetch_into: written, SHA-256 verified, fsynced, atomic replace)",
            to_disk
        ),
        first.as_secs_f64()
    );
    println!(
        "{}",
        line(
            &format!(
                "    ceiling, disk alone ({n} files of {mib:.0} MiB written and fsynced at once)"
            ),
            disk
        )
    );
    println!(
        "    to disk / disk ceiling = {:.1} %; target >= {:.0} %: {}",
        disk_share * 100.0,
        DISK_SHARE_TARGET * 100.0,
        met(disk_share >= DISK_SHARE_TARGET)
    );
    println!(
        "  for information: in memory = {:.1} % and to disk = {:.1} % of raw loopback TCP",
        rate(in_memory) / rate(raw) * 100.0,
        rate(to_disk) / rate(raw) * 100.0
    );
    Ok((rev, data))
}

/// Part 3: the revision to many clients at once with `fetch_into`; every
/// copy verified again from disk; the time printed beside the disk alone.
async fn wide_distribution(
    on: On<'_>,
    rev: &pb::Revision,
    data: Bytes,
    n: usize,
    dir: &Path,
) -> Result<()> {
    let mib = (data.len() / MIB) as f64;
    let copies = dir.join("copies");
    let downs = step_downs(dir);
    let Fetches {
        took: to_disk,
        first,
        retries,
        locals,
    } = fetch_into_all(on, n, rev, &copies).await?;
    let wide_trouble = trouble(&retries, step_downs(dir) - downs);
    let mut whole = 0;
    for local in &locals {
        match local.check()? {
            CopyState::Whole(meta) if meta.sha256 == rev.sha256 => whole += 1,
            other => bail!(
                "a copy of revision {} is not whole: {other:?}",
                rev.revision
            ),
        }
    }
    drop(locals);
    let _ = std::fs::remove_dir_all(&copies);
    let disk = disk_only(&copies, n, data).await?;
    let _ = std::fs::remove_dir_all(&copies);

    let total = mib * n as f64;
    let rate = |d: Duration| total / d.as_secs_f64();
    println!(
        "wide distribution: {mib:.0} MiB to {n} clients at once with fetch_into (one gRPC connection each)"
    );
    println!(
        "  to disk: {total:.0} MiB in {:.2} s = {:.1} MiB/s (first client done after {:.2} s); \
         {whole} of {n} copies whole on disk (size and SHA-256 checked again){wide_trouble}",
        to_disk.as_secs_f64(),
        rate(to_disk),
        first.as_secs_f64()
    );
    println!(
        "    disk alone ({n} files of {mib:.0} MiB written and fsynced at once): {:.2} s = {:.1} MiB/s; \
         to disk / disk alone = {:.1} %",
        disk.as_secs_f64(),
        rate(disk),
        rate(to_disk) / rate(disk) * 100.0
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

/// N clients at once fetching `rev` into memory (verified, not written):
/// the wall time, and how many fetches were tried again (from the start:
/// an in-memory fetch does not resume).
async fn fetch_in_memory(
    (group, server, sec): On<'_>,
    n: usize,
    rev: &pb::Revision,
) -> Result<(Duration, Vec<String>)> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(ProjectClient::connect_with(group, server.clone(), CALL_TIMEOUT, sec).await?);
    }
    let t0 = Instant::now();
    let deadline = t0 + RETRY_FOR;
    let mut fetches = Tasks(
        clients
            .into_iter()
            .map(|mut c| {
                tokio::spawn(async move {
                    let mut retries = Vec::new();
                    loop {
                        match c.fetch(None).await {
                            Ok(got) => return anyhow::Ok((got, retries)),
                            Err(e) if e.is_transient() && Instant::now() < deadline => {
                                retries.push(e.to_string());
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(e) => return Err(anyhow!(e).context("fetch")),
                        }
                    }
                })
            })
            .collect(),
    );
    let mut retries = Vec::new();
    for f in &mut fetches.0 {
        match f.await?? {
            (Fetched::Content(r, _), k) if r.sha256 == rev.sha256 => retries.extend(k),
            _ => bail!("an in-memory fetch did not bring revision {}", rev.revision),
        }
    }
    Ok((t0.elapsed(), retries))
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
