//! End to end: the project file over gRPC between real `understudy node`
//! processes on a real nats-server (B11, S1, S2).
//!
//! The clients in these tests are the project-sync client library (what the
//! CLI and the devices use), so every acknowledgement a test counts is one a
//! real client received.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use harness::*;
use understudy_project_sync::client::{
    Change, ClientError, Fetched, ProjectClient, Submitted, find_server,
};
use understudy_project_sync::local::{LocalCopy, Outbox, sha256_hex};
use understudy_project_sync::pb;
use understudy_project_sync::store::ProjectStore;
use understudy_project_sync::tonic::{self, Code};
use understudy_protocol::grpc;
use understudy_protocol::messages::{
    self, DeviceStatus, ProjectEvent, ProjectEventKind, ProjectHead,
};
use understudy_protocol::{GroupName, Problem, subjects};

const GROUP: &str = "stage";
const FIRST_SERVER_WITHIN: Duration = Duration::from_secs(10);
const CALL: Duration = Duration::from_secs(3);

fn group() -> GroupName {
    GROUP.parse().unwrap()
}

fn spawn(urls: &[String], i: u8, score: u8, extra: &[&str]) -> Device {
    spawn_device(urls, DeviceOpts::numbered(GROUP, i, score).with_args(extra))
}

/// The test's own view of the group's project: the lease and the head in
/// JetStream, and clients of whoever serves.
struct Project {
    js: jetstream::Context,
}

impl Project {
    async fn new(url: &str) -> Project {
        let client = connect(url).await.unwrap();
        Project {
            js: jetstream::new(client),
        }
    }

    /// A client of the current server, once one answers.
    async fn client(&self, within: Duration) -> Result<ProjectClient> {
        wait_until("a project server that answers", within, || async {
            let server = find_server(&self.js, &group(), CALL)
                .await?
                .ok_or_else(|| anyhow!("no server holds the lease"))?;
            let mut pc =
                ProjectClient::connect_with(&group(), server, CALL, &project_security()).await?;
            pc.describe().await?;
            Ok(pc)
        })
        .await
    }

    /// The serving device's id, as the lease says.
    async fn server_device(&self) -> Option<String> {
        find_server(&self.js, &group(), CALL)
            .await
            .ok()
            .flatten()
            .map(|s| s.device.to_string())
    }

    /// The head as stored in JetStream KV (the store's truth).
    async fn head(&self) -> Option<ProjectHead> {
        ProjectStore::read_only_head(&self.js, &group(), CALL)
            .await
            .unwrap()
            .map(|(_, h)| h)
    }
}

fn change(base: u64, id: &str, data: impl Into<Bytes>) -> Change {
    Change {
        base_revision: base,
        changed_by: "e2e".into(),
        change_id: id.into(),
        data: data.into(),
    }
}

async fn commit(pc: &mut ProjectClient, base: u64, id: &str, data: &[u8]) -> pb::Revision {
    // A transient refusal ("nothing was committed, try again", a busy store)
    // is answered as clients do: the same change again, same id, so it is
    // applied at most once.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match pc.submit(change(base, id, data.to_vec())).await {
            Ok(Submitted::Committed(r)) | Ok(Submitted::AlreadyCommitted(r)) => return r,
            Ok(other) => panic!("submit {id}: expected a commit, got {other:?}"),
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                eprintln!("submit {id}: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("submit {id}: {e}"),
        }
    }
}

/// Waits until the device's local copy is `revision` with this content.
async fn wait_local_copy(dev: &Device, revision: u64, sha: &str, within: Duration) -> Result<()> {
    let dir = dev.data_dir().join("project");
    let id = dev.id().to_string();
    wait_until(
        &format!("{id}'s local copy at revision {revision}"),
        within,
        || {
            let dir = dir.clone();
            async move {
                let local = LocalCopy::open(&dir)?;
                match local.current()? {
                    Some(m) if m.revision == revision && m.sha256 == sha => Ok(()),
                    other => bail!("it has {other:?}"),
                }
            }
        },
    )
    .await
}

// ---------------------------------------------------------------------------
// S2 under failovers
// ---------------------------------------------------------------------------

/// One acknowledged change: which writer line, at which revision, with which
/// content hash.
#[derive(Debug, Clone)]
struct Ack {
    revision: u64,
    line: String,
    sha256: String,
}

/// Submits `count` changes, each appending one line to the content it last
/// saw; a conflict refetches and tries again, a lost server is found again.
/// A change counts only when the server acknowledged it.
async fn writer(
    url: String,
    id: usize,
    count: usize,
    acked: Arc<Mutex<Vec<Ack>>>,
    total: Arc<AtomicUsize>,
) -> Result<()> {
    let project = Project::new(&url).await;
    let mut pc: Option<ProjectClient> = None;
    let mut content: Vec<u8> = Vec::new();
    let mut base = 0u64;
    for k in 0..count {
        let line = format!("w{id}-{k:04}");
        let change_id = format!("w{id}-{k:04}");
        let deadline = Instant::now() + Duration::from_secs(60);
        // What went wrong last, so a stall says why.
        let mut last = String::from("nothing yet");
        loop {
            if Instant::now() > deadline {
                bail!("writer {id}: change {k} not acknowledged within 60 s (last: {last})");
            }
            let c = match pc.as_mut() {
                Some(c) => c,
                None => match project.client(Duration::from_secs(30)).await {
                    Ok(c) => pc.insert(c),
                    Err(e) => bail!("writer {id}: change {k}: {e:#} (before: {last})"),
                },
            };
            let mut data = content.clone();
            data.extend_from_slice(line.as_bytes());
            data.push(b'\n');
            match c.submit(change(base, &change_id, data.clone())).await {
                Ok(Submitted::Committed(r)) | Ok(Submitted::AlreadyCommitted(r)) => {
                    // AlreadyCommitted: an earlier attempt landed but its
                    // reply was lost; the hash says which content it was.
                    acked.lock().unwrap().push(Ack {
                        revision: r.revision,
                        line,
                        sha256: r.sha256.clone(),
                    });
                    if r.sha256 == sha256_hex(&data) {
                        content = data;
                    }
                    base = r.revision;
                    break;
                }
                Ok(Submitted::Conflict(_)) => match c.fetch(None).await {
                    Ok(Fetched::Content(h, d)) => {
                        last = format!(
                            "a conflict at base {base}; refetched revision {}",
                            h.revision
                        );
                        base = h.revision;
                        content = d;
                    }
                    Ok(Fetched::UpToDate(_)) => bail!("a fetch without a 'have' was up to date"),
                    Err(e) if e.is_transient() => {
                        last = format!("fetch after a conflict: {e}");
                        pc = None;
                    }
                    Err(e) => bail!("writer {id}: fetch: {e}"),
                },
                Err(e) if e.is_transient() => {
                    last = format!("submit: {e}");
                    pc = None;
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => bail!("writer {id}: change {k}: {e}"),
            }
        }
        total.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

/// `n` [`writer`]s sharing `changes` changes, and what they got acknowledged.
struct Writers {
    acked: Arc<Mutex<Vec<Ack>>>,
    total: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Result<()>>>,
}

impl Writers {
    fn start(url: &str, n: usize, changes: usize) -> Writers {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let total = Arc::new(AtomicUsize::new(0));
        let tasks = (0..n)
            .map(|id| {
                let count = changes / n + usize::from(id < changes % n);
                tokio::spawn(writer(
                    url.to_string(),
                    id,
                    count,
                    acked.clone(),
                    total.clone(),
                ))
            })
            .collect();
        Writers {
            acked,
            total,
            tasks,
        }
    }

    /// Changes acknowledged so far.
    fn done(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// Whether a writer is still at work.
    fn running(&self) -> bool {
        self.tasks.iter().any(|t| !t.is_finished())
    }

    /// Waits until `n` changes are acknowledged.
    async fn wait_for(&self, n: usize) {
        wait_until(
            &format!("{n} changes acknowledged"),
            Duration::from_secs(120),
            || async {
                let done = self.done();
                if done >= n {
                    Ok(())
                } else {
                    bail!("{done} of {n} changes acknowledged")
                }
            },
        )
        .await
        .unwrap();
    }

    /// Waits for every writer to finish (each must succeed).
    async fn finish(self) -> Arc<Mutex<Vec<Ack>>> {
        for w in self.tasks {
            tokio::time::timeout(Duration::from_secs(240), w)
                .await
                .expect("writers finish")
                .expect("writer task")
                .expect("writer");
        }
        self.acked
    }
}

/// Every acknowledged change is in the final history, in order, once; the
/// final content is the last acknowledged, and holds exactly `changes` lines.
async fn assert_history(project: &Project, acked: &Mutex<Vec<Ack>>, changes: usize) {
    let mut acks = acked.lock().unwrap().clone();
    assert_eq!(acks.len(), changes);
    acks.sort_by_key(|a| a.revision);
    let revisions: BTreeSet<u64> = acks.iter().map(|a| a.revision).collect();
    assert_eq!(
        revisions.len(),
        acks.len(),
        "two acknowledgements name one revision"
    );
    let last = acks.last().unwrap().clone();
    // The restarted top-ranked device may take the lease back between
    // finding the server and fetching: ask again until one answers.
    let (head, content) = wait_until(
        "the head from the server",
        Duration::from_secs(30),
        || async {
            let mut pc = project.client(CALL).await?;
            match pc.fetch(None).await? {
                Fetched::Content(head, content) => Ok((head, content)),
                other => bail!("no content: {other:?}"),
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        head.revision, last.revision,
        "the head is the last acknowledged revision"
    );
    assert_eq!(
        head.sha256, last.sha256,
        "the final content is the last acknowledged"
    );
    let text = String::from_utf8(content).unwrap();
    let position: BTreeMap<&str, usize> = text.lines().enumerate().map(|(i, l)| (l, i)).collect();
    assert_eq!(position.len(), text.lines().count(), "a line appears twice");
    let mut prev = None;
    for a in &acks {
        let at = *position.get(a.line.as_str()).unwrap_or_else(|| {
            panic!(
                "acknowledged change {} (revision {}) is lost",
                a.line, a.revision
            )
        });
        assert!(
            prev.is_none_or(|p| at > p),
            "change {} is out of order",
            a.line
        );
        prev = Some(at);
    }
    assert_eq!(
        text.lines().count(),
        changes,
        "the history holds exactly the acknowledged changes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_changes_from_three_clients_survive_losing_the_server_every_fifty() {
    const CHANGES: usize = 1000;
    const KILL_EVERY: usize = 50;
    let nats = start_nats().await;
    let obs = Observer::start(&nats.url(), GROUP).await;
    let urls = vec![nats.url()];
    let mut devs: Vec<Device> = (1..=3).map(|i| spawn(&urls, i, 40 - i * 10, &[])).collect();
    let project = Project::new(&nats.url()).await;
    project.client(FIRST_SERVER_WITHIN).await.unwrap();

    let writers = Writers::start(&nats.url(), 3, CHANGES);

    // Every ~50 acknowledged changes, take the server out: alternately kill
    // -9 it (and start it again at once: it comes back as a client and, if
    // it ranks first, takes the lease back after its grace), or freeze it —
    // most likely in the middle of a commit, since the writers keep it busy —
    // until another device serves and has committed more, then wake it. A
    // woken server finishing its commit must be refused by the head's
    // compare-and-set, or acknowledged changes would be overwritten.
    let mut kills = 0;
    let mut pauses = 0;
    let mut next_kill = KILL_EVERY;
    while writers.done() < CHANGES && writers.running() {
        // No server named at this instant (a hand-back, a read timing out):
        // look again at the next poll rather than skip this one.
        let server = if writers.done() >= next_kill {
            project.server_device().await
        } else {
            None
        };
        if let Some(d) = devs.iter_mut().find(|d| Some(d.id().to_string()) == server) {
            next_kill += KILL_EVERY;
            if (kills + pauses) % 2 == 0 {
                d.kill9();
                d.restart().unwrap();
                kills += 1;
            } else {
                d.pause().await.unwrap();
                let frozen = d.id().to_string();
                let before = writers.done();
                let moved_on = wait_until(
                    "another server committing",
                    Duration::from_secs(15),
                    || async {
                        let now = project.server_device().await;
                        let done = writers.done();
                        if now.is_some()
                            && now.as_deref() != Some(frozen.as_str())
                            && (done >= before + 5 || done >= CHANGES)
                        {
                            Ok(())
                        } else {
                            bail!("server {now:?}, {} changes since the pause", done - before)
                        }
                    },
                )
                .await;
                d.signal(Signal::Cont).unwrap();
                moved_on.unwrap();
                pauses += 1;
            }
        }
        tokio::time::sleep(POLL).await;
    }
    let acked = writers.finish().await;
    assert!(
        kills + pauses >= CHANGES / KILL_EVERY - 2,
        "only {kills} kills and {pauses} pauses happened"
    );

    assert_history(&project, &acked, CHANGES).await;
    obs.check_one_server().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_changes_survive_losing_a_nats_node_and_the_server_on_a_cluster() {
    const CHANGES: usize = 150;
    let mut cluster = start_cluster(3).await;
    let all = cluster.urls();
    // The test's own clients go through the two nodes that stay up.
    let survivors = format!("{},{}", cluster.url(1), cluster.url(2));
    let obs = Observer::start(&survivors, GROUP).await;
    let mut devs: Vec<Device> = (1..=3)
        .map(|i| spawn(&all, i, 40 - i * 10, &["--replicas", "3"]))
        .collect();
    let project = Project::new(&survivors).await;
    project.client(FIRST_SERVER_WITHIN).await.unwrap();

    let writers = Writers::start(&survivors, 2, CHANGES);
    // A third of the way: a NATS node dies (the replicated head and content
    // stay on the other two). Two thirds: the server device dies too.
    writers.wait_for(CHANGES / 3).await;
    cluster.kill(0);
    writers.wait_for(2 * CHANGES / 3).await;
    // The lease bucket's stream may still be choosing a new leader: wait for
    // the lease to name a server.
    let server = wait_until(
        "a server named in the lease",
        Duration::from_secs(30),
        || async {
            project
                .server_device()
                .await
                .ok_or_else(|| anyhow!("no server in the lease yet"))
        },
    )
    .await
    .unwrap();
    let d = devs
        .iter_mut()
        .find(|d| d.id() == server)
        .expect("a server device");
    d.kill9();
    d.restart().unwrap();
    let acked = writers.finish().await;
    assert_history(&project, &acked, CHANGES).await;
    obs.check_one_server().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_changes_survive_a_nats_server_killed_and_restarted() {
    const CHANGES: usize = 100;
    let mut nats = start_nats().await;
    let urls = vec![nats.url()];
    let _devs: Vec<Device> = (1..=3).map(|i| spawn(&urls, i, 40 - i * 10, &[])).collect();
    let project = Project::new(&nats.url()).await;
    project.client(FIRST_SERVER_WITHIN).await.unwrap();
    let writers = Writers::start(&nats.url(), 2, CHANGES);
    // Halfway, the bus dies (SIGKILL) under the writers and comes back on the
    // same store: what JetStream acknowledged is still there.
    writers.wait_for(CHANGES / 2).await;
    nats.restart().await.unwrap();
    let acked = writers.finish().await;
    assert_history(&project, &acked, CHANGES).await;
}

// ---------------------------------------------------------------------------
// S1: a deposed server cannot commit
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_server_that_wakes_up_deposed_cannot_commit() {
    let nats = start_nats().await;
    let obs = Observer::start(&nats.url(), GROUP).await;
    let urls = vec![nats.url()];
    let mut a = spawn(&urls, 1, 30, &[]);
    let b = spawn(&urls, 2, 20, &[]);
    let project = Project::new(&nats.url()).await;
    let mut to_a = project.client(FIRST_SERVER_WITHIN).await.unwrap();
    assert_eq!(to_a.server().device.as_str(), "dev-1");
    let r1 = commit(&mut to_a, 0, "one", b"revision one\n").await;

    // Freeze the server; a change sent to it now waits in its socket.
    a.pause().await.unwrap();
    let mut late = to_a.clone();
    let pending = tokio::spawn(async move {
        late.submit(change(r1.revision, "from-the-past", &b"stale write\n"[..]))
            .await
    });
    let mut to_b = wait_until("dev-2 serving", Duration::from_secs(10), || async {
        let pc = project.client(CALL).await?;
        if pc.server().device.as_str() != "dev-2" {
            bail!("{} serves", pc.server().device);
        }
        Ok(pc)
    })
    .await
    .unwrap();
    let r2 = commit(
        &mut to_b,
        r1.revision,
        "two",
        b"revision one\nrevision two\n",
    )
    .await;
    assert!(to_b.seen_term() > to_a.seen_term());

    // While dev-1 wakes, dev-2 must outrank it; otherwise dev-1 (score 30)
    // is handed the lease back within milliseconds (P1) and then serves
    // legitimately in a newer term, which is not what this part checks.
    set_score(&nats.url(), GROUP, "dev-2", 40).await;

    // Wake the deposed server: neither the queued change nor a new one may
    // commit, whatever it believes for the first instants.
    a.signal(Signal::Cont).unwrap();
    let queued = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the queued submit ends")
        .unwrap();
    assert!(
        !matches!(queued, Ok(Submitted::Committed(_))),
        "a deposed server committed a queued change: {queued:?}"
    );
    let fresh = to_a
        .submit(change(r1.revision, "after-waking", &b"stale write 2\n"[..]))
        .await;
    assert!(
        matches!(
            fresh,
            Err(ClientError::NotServer { .. })
                | Err(ClientError::Rejected { .. })
                | Err(ClientError::StaleTerm { .. })
                | Err(ClientError::Connect { .. })
        ),
        "a deposed server took a change: {fresh:?}"
    );
    let head = project.head().await.unwrap();
    let current = head.current.clone().unwrap();
    assert_eq!(current.revision, r2.revision, "the history did not fork");
    assert_eq!(current.sha256, r2.sha256);
    assert!(!a.log().contains("from-the-past") || !a.log().contains("committed revision=3"));

    // dev-1 stays a client as long as dev-2 outranks it: the fresh change
    // was refused, not queued for later.
    assert_eq!(project.server_device().await.as_deref(), Some("dev-2"));

    // The woken device rejoins; once it ranks first again it takes the lease
    // back with a newer term, fences, and serves revision two unchanged.
    set_score(&nats.url(), GROUP, "dev-2", 20).await;
    let mut back = wait_until("dev-1 serving again", Duration::from_secs(15), || async {
        let pc = project.client(CALL).await?;
        if pc.server().device.as_str() != "dev-1" {
            bail!("{} serves", pc.server().device);
        }
        Ok(pc)
    })
    .await
    .unwrap();
    let d = back.describe().await.unwrap();
    assert_eq!(d.head.unwrap().sha256, r2.sha256);
    assert!(d.term > to_b.seen_term().get());
    wait_local_copy(&b, r2.revision, &r2.sha256, Duration::from_secs(10))
        .await
        .unwrap();
    obs.check_one_server().unwrap();
}

// ---------------------------------------------------------------------------
// B11: offline edits, conflicts
// ---------------------------------------------------------------------------

fn queue(dev: &Device, base: u64, id: &str, data: &[u8]) {
    Outbox::open(&dev.data_dir().join("project"))
        .unwrap()
        .add(base, dev.id(), Some(id), data)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_made_without_a_server_are_submitted_after_reelection() {
    let nats = start_nats().await;
    let urls = vec![nats.url()];
    // Manual assignment (B8): only dev-1 may serve.
    let mut a = spawn(&urls, 1, 50, &[]);
    let b = spawn(&urls, 2, 0, &[]);
    let c = spawn(&urls, 3, 0, &[]);
    let project = Project::new(&nats.url()).await;
    let mut pc = project.client(FIRST_SERVER_WITHIN).await.unwrap();
    let r1 = commit(&mut pc, 0, "one", b"cue list v1\n").await;
    wait_local_copy(&b, 1, &r1.sha256, Duration::from_secs(10))
        .await
        .unwrap();

    a.kill9();
    wait_until("no server", Duration::from_secs(10), || async {
        match project.server_device().await {
            None => Ok(()),
            Some(d) => bail!("{d} still holds the lease"),
        }
    })
    .await
    .unwrap();

    // Two edits on dev-2 while nobody serves, made one after the other on
    // its copy of revision one — through the CLI, as an operator would.
    let v2 = b"cue list v1\ncue 2 added offline\n";
    let f2 = TempDir::new("edit").unwrap();
    std::fs::write(f2.path().join("v2"), v2).unwrap();
    let out = run_cli_ok(&[
        "project",
        "put",
        "--group",
        GROUP,
        "--file",
        f2.path().join("v2").to_str().unwrap(),
        "--data-dir",
        b.data_dir().to_str().unwrap(),
        "--change-id",
        "offline-1",
    ])
    .await;
    assert!(
        out.contains("queued change offline-1 on base revision 1"),
        "{out}"
    );
    let v3 = b"cue list v1\ncue 2 added offline\ncue 3 added offline\n";
    queue(&b, 1, "offline-2", v3);
    // The device still runs on its local copy, and the change waits.
    let out = run_cli_ok(&[
        "project",
        "get",
        "--group",
        GROUP,
        "--file",
        f2.path().join("copy").to_str().unwrap(),
        "--data-dir",
        b.data_dir().to_str().unwrap(),
    ])
    .await;
    assert!(out.contains("local copy: revision 1"), "{out}");
    let held = Outbox::open(&b.data_dir().join("project"))
        .unwrap()
        .pending()
        .unwrap();
    assert_eq!(held.len(), 2, "the changes wait in the outbox");

    // An operator gives dev-3 a score: it is elected at once, and dev-2's
    // queued changes are submitted, in order.
    set_score(&nats.url(), GROUP, "dev-3", 10).await;
    let head = wait_until(
        "both offline edits committed",
        Duration::from_secs(15),
        || async {
            match project.head().await.and_then(|h| h.current) {
                Some(r) if r.revision == 3 => Ok(r),
                other => bail!("head {other:?}"),
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(head.sha256, sha256_hex(v3));
    let h = project.head().await.unwrap();
    let ids: Vec<_> = h
        .recent
        .iter()
        .filter_map(|r| r.change_id.clone())
        .collect();
    assert_eq!(ids, ["one", "offline-1", "offline-2"]);
    // dev-2 clears its outbox when the server's reply reaches it, a moment
    // after the head moved.
    wait_until(
        "dev-2's outbox to empty",
        Duration::from_secs(10),
        || async {
            let pending = Outbox::open(&b.data_dir().join("project"))?.pending()?;
            if pending.is_empty() {
                Ok(())
            } else {
                bail!("{} changes still queued", pending.len())
            }
        },
    )
    .await
    .unwrap();
    wait_local_copy(&c, 3, &head.sha256, Duration::from_secs(10))
        .await
        .unwrap();
    wait_local_copy(&b, 3, &head.sha256, Duration::from_secs(10))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conflicting_edit_is_reported_and_kept() {
    let nats = start_nats().await;
    let urls = vec![nats.url()];
    // The server takes projects up to 1 KiB, so a larger queued change is
    // refused for its size (not a conflict).
    let _a = spawn(&urls, 1, 50, &["--max-project-size", "1024"]);
    let b = spawn(&urls, 2, 0, &[]);
    let project = Project::new(&nats.url()).await;
    let mut pc = project.client(FIRST_SERVER_WITHIN).await.unwrap();
    let r1 = commit(&mut pc, 0, "one", b"v1\n").await;
    wait_local_copy(&b, 1, &r1.sha256, Duration::from_secs(10))
        .await
        .unwrap();

    let nc = connect(&nats.url()).await.unwrap();
    let mut events = nc
        .subscribe(subjects::project_events(&group()))
        .await
        .unwrap();
    let mut statuses = nc
        .subscribe(subjects::local_status(&group(), &"dev-2".parse().unwrap()))
        .await
        .unwrap();
    nc.flush().await.unwrap();

    // Someone commits revision two on revision one; dev-2's edit, also made
    // on revision one, arrives after it.
    let r2 = commit(&mut pc, 1, "theirs", b"v1\ntheirs\n").await;
    let mine = b"v1\nmine\n";
    queue(&b, 1, "mine", mine);

    let conflict = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = events.next().await {
            if let Ok(ProjectEvent {
                kind:
                    ProjectEventKind::ChangeConflicted {
                        device,
                        change_id,
                        base_revision,
                        head_revision,
                    },
                ..
            }) = messages::decode::<ProjectEvent>(&m.payload)
            {
                return (device.to_string(), change_id, base_revision, head_revision);
            }
        }
        panic!("event stream ended")
    })
    .await
    .expect("a conflict event on the bus");
    assert_eq!(conflict, ("dev-2".into(), "mine".into(), 1, r2.revision));

    // The change is kept, with its content.
    let outbox = Outbox::open(&b.data_dir().join("project")).unwrap();
    let kept = outbox.conflicts().unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(outbox.conflict_content(&kept[0]).unwrap(), mine);
    assert_eq!(kept[0].reason, None);

    // A change the server refuses for another reason (too large), and one
    // whose queued content was damaged on disk, are set aside too, with the
    // reason, and reported; the queue goes on.
    let big = vec![b'x'; 2000];
    queue(&b, r2.revision, "too-big", &big);
    let scratch = TempDir::new("damaged").unwrap();
    let damaged = Outbox::open(scratch.path()).unwrap();
    let entry = damaged
        .add(r2.revision, "dev-2", Some("damaged"), b"intact\n")
        .unwrap();
    std::fs::write(
        scratch
            .path()
            .join("outbox")
            .join(format!("{}.bin", entry.key)),
        b"rotten\n",
    )
    .unwrap();
    // Into dev-2's outbox, content first: the entry exists once its .json does.
    for ext in ["bin", "json"] {
        let name = format!("{}.{ext}", entry.key);
        std::fs::copy(
            scratch.path().join("outbox").join(&name),
            b.data_dir().join("project").join("outbox").join(&name),
        )
        .unwrap();
    }
    let mut refused = tokio::time::timeout(Duration::from_secs(10), async {
        let mut got = Vec::new();
        while let Some(m) = events.next().await {
            if let Ok(ProjectEvent {
                kind:
                    ProjectEventKind::ChangeRefused {
                        device,
                        change_id,
                        reason,
                        ..
                    },
                ..
            }) = messages::decode::<ProjectEvent>(&m.payload)
            {
                assert_eq!(device.to_string(), "dev-2");
                got.push((change_id, reason));
                if got.len() == 2 {
                    return got;
                }
            }
        }
        panic!("event stream ended")
    })
    .await
    .expect("two change_refused events on the bus");
    refused.sort();
    assert_eq!(refused[0].0, "damaged");
    assert!(refused[0].1.contains("unreadable"), "{}", refused[0].1);
    assert_eq!(refused[1].0, "too-big");
    assert!(refused[1].1.contains("over the limit"), "{}", refused[1].1);
    let kept = outbox.conflicts().unwrap();
    assert_eq!(kept.len(), 3);
    let big_kept = kept
        .iter()
        .find(|c| c.entry.change_id == "too-big")
        .unwrap();
    assert_eq!(outbox.conflict_content(big_kept).unwrap(), big);
    assert!(outbox.pending().unwrap().is_empty());

    // The device shows all three as a problem.
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = statuses.next().await {
            if let Ok(s) = messages::decode::<DeviceStatus>(&m.payload)
                && s.problems
                    .contains(&Problem::ProjectConflict { changes: 3 })
            {
                return;
            }
        }
    })
    .await
    .expect("dev-2 shows the set-aside changes as a problem");
    // Nothing was applied blindly.
    let head = project.head().await.unwrap().current.unwrap();
    assert_eq!((head.revision, head.sha256), (r2.revision, r2.sha256));
}

// ---------------------------------------------------------------------------
// Large projects
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_64_mib_project_reaches_ten_clients_intact() {
    let nats = start_nats().await;
    let obs = Observer::start(&nats.url(), GROUP).await;
    let urls = vec![nats.url()];
    let mut devs = vec![spawn(&urls, 1, 100, &[])];
    devs.extend((2..=11).map(|i| spawn(&urls, i, 0, &[])));
    let project = Project::new(&nats.url()).await;
    let mut pc = project.client(FIRST_SERVER_WITHIN).await.unwrap();
    let first = obs.wait_for_server(FIRST_SERVER_WITHIN).await.unwrap();
    let mut data = vec![0u8; 64 * 1024 * 1024];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let r = commit(&mut pc, 0, "big", &data).await;
    assert_eq!(r.size, data.len() as u64);
    for d in &devs[1..] {
        wait_local_copy(d, r.revision, &r.sha256, Duration::from_secs(120))
            .await
            .unwrap();
    }
    // Serving ten clients at once did not cost the server its lease: the
    // transfers run apart from the lease's renewal (own runtime and NATS
    // connection), so no other device was elected meanwhile.
    // (Before that, all on one runtime, it lost its lease in each of three
    // runs of this test, re-elected at terms 17 to 20.)
    assert_eq!(
        obs.view().elected(),
        vec![first.clone()],
        "the server was deposed or re-elected while ten clients fetched"
    );
    // And a fresh client fetches it whole too.
    let (h, got) = wait_until(
        "a whole fetch of the big revision",
        Duration::from_secs(60),
        || async {
            let mut pc = project.client(Duration::from_secs(20)).await?;
            match pc.fetch(None).await? {
                Fetched::Content(h, got) => Ok((h, got)),
                other => bail!("{other:?}"),
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(h.revision, r.revision);
    assert!(got == data, "the fetched content differs");
    obs.check_one_server().unwrap();
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

async fn raw_submit(
    rpc: &mut RawProjectClient,
    header: pb::SubmitHeader,
    chunks: Vec<Vec<u8>>,
) -> std::result::Result<pb::SubmitReply, tonic::Status> {
    let mut parts = vec![pb::SubmitChunk {
        part: Some(pb::submit_chunk::Part::Header(header)),
    }];
    parts.extend(chunks.into_iter().map(|c| pb::SubmitChunk {
        part: Some(pb::submit_chunk::Part::Data(c.into())),
    }));
    rpc.submit(futures::stream::iter(parts))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_submits_are_refused_clearly_and_change_nothing() {
    let nats = start_nats().await;
    let urls = vec![nats.url()];
    let ports = free_ports(2).unwrap();
    let addr_a = format!("127.0.0.1:{}", ports[0]);
    let addr_b = format!("127.0.0.1:{}", ports[1]);
    let _a = spawn(
        &urls,
        1,
        50,
        &["--project-listen", &addr_a, "--max-project-size", "1048576"],
    );
    let _b = spawn(&urls, 2, 0, &["--project-listen", &addr_b]);
    let project = Project::new(&nats.url()).await;
    let mut pc = project.client(FIRST_SERVER_WITHIN).await.unwrap();
    let r1 = commit(&mut pc, 0, "one", b"good\n").await;
    let term = pc.seen_term().get();

    let mut rpc = raw_project_client(&addr_a).await.unwrap();
    let data = b"new content\n".to_vec();
    let good = pb::SubmitHeader {
        group: GROUP.into(),
        seen_term: term,
        changed_by: "e2e".into(),
        change_id: "bad-input".into(),
        base_revision: r1.revision,
        size: data.len() as u64,
        sha256: sha256_hex(&data),
    };
    // (what, header, chunks, expected code, expected message part)
    type Case<'a> = (&'a str, pb::SubmitHeader, Vec<Vec<u8>>, Code, &'a str);
    let cases: Vec<Case> = vec![
        (
            "over the size limit",
            pb::SubmitHeader {
                size: 1048577,
                ..good.clone()
            },
            vec![],
            Code::ResourceExhausted,
            "over the limit",
        ),
        (
            "a chunk past the declared size",
            good.clone(),
            vec![data.clone(), b"x".to_vec()],
            Code::InvalidArgument,
            "past the declared size",
        ),
        (
            "a hash that does not match",
            pb::SubmitHeader {
                sha256: sha256_hex(b"other"),
                ..good.clone()
            },
            vec![data.clone()],
            Code::InvalidArgument,
            "SHA-256",
        ),
        (
            "a malformed hash",
            pb::SubmitHeader {
                sha256: "not-a-hash".into(),
                ..good.clone()
            },
            vec![data.clone()],
            Code::InvalidArgument,
            "hexadecimal",
        ),
        (
            "a client of another group",
            pb::SubmitHeader {
                group: "other-group".into(),
                ..good.clone()
            },
            vec![data.clone()],
            Code::PermissionDenied,
            "not other-group",
        ),
        (
            "an invalid group name",
            pb::SubmitHeader {
                group: "bad.group".into(),
                ..good.clone()
            },
            vec![data.clone()],
            Code::InvalidArgument,
            "group name",
        ),
        (
            "a newer term than the server's",
            pb::SubmitHeader {
                seen_term: term + 1000,
                ..good.clone()
            },
            vec![data.clone()],
            Code::FailedPrecondition,
            "older than the term",
        ),
        (
            "a bad change id",
            pb::SubmitHeader {
                change_id: "no spaces".into(),
                ..good.clone()
            },
            vec![data.clone()],
            Code::InvalidArgument,
            "change_id",
        ),
        (
            "content shorter than declared",
            good.clone(),
            vec![data[..4].to_vec()],
            Code::InvalidArgument,
            "ended after 4",
        ),
    ];
    for (what, header, chunks, code, words) in cases {
        let err = raw_submit(&mut rpc, header, chunks).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(err.message().contains(words), "{what}: {:?}", err.message());
    }
    // A submit whose first message is not a header.
    let err = rpc
        .submit(futures::stream::iter([pb::SubmitChunk {
            part: Some(pb::submit_chunk::Part::Data(data.clone().into())),
        }]))
        .await
        .expect_err("data before the header");
    assert_eq!(err.code(), Code::InvalidArgument);

    // A device that is not the server says who is.
    let mut not_server = raw_project_client(&addr_b).await.unwrap();
    let err = not_server
        .describe(pb::DescribeRequest {
            group: GROUP.into(),
            seen_term: 0,
        })
        .await
        .expect_err("dev-2 does not serve");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("the server is dev-1"),
        "{}",
        err.message()
    );
    let md = err.metadata();
    assert_eq!(md.get(grpc::SERVER).unwrap().to_str().unwrap(), "dev-1");
    assert_eq!(
        md.get(grpc::SERVER_ADDRESS).unwrap().to_str().unwrap(),
        addr_a
    );

    // Nothing changed, and the server still takes a good change.
    let head = project.head().await.unwrap().current.unwrap();
    assert_eq!(
        (head.revision, head.sha256.clone()),
        (r1.revision, r1.sha256.clone())
    );
    let ok = raw_submit(&mut rpc, good, vec![data.clone()])
        .await
        .unwrap();
    match ok.outcome {
        Some(pb::submit_reply::Outcome::Committed(r)) => assert_eq!(r.revision, 2),
        other => panic!("{other:?}"),
    }
    // A stale base is a conflict carrying the head, never applied blindly.
    let stale = pb::SubmitHeader {
        group: GROUP.into(),
        seen_term: term,
        changed_by: "e2e".into(),
        change_id: "stale".into(),
        base_revision: 1,
        size: 3,
        sha256: sha256_hex(b"old"),
    };
    let reply = raw_submit(&mut rpc, stale, vec![b"old".to_vec()])
        .await
        .unwrap();
    match reply.outcome {
        Some(pb::submit_reply::Outcome::Conflict(h)) => assert_eq!(h.revision, 2),
        other => panic!("{other:?}"),
    }
}
