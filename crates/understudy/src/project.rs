//! `understudy project …`: the group's project file from the command line —
//! put a new revision, get the current one, watch revisions land, and show
//! the head. The server is found with the lease on the bus (`--nats`); the
//! content travels over gRPC (B11).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream;
use bytes::Bytes;
use clap::Subcommand;
use futures::StreamExt;
use understudy_project_sync::client::{
    Change, ClientError, ProjectClient, ServerRef, Submitted, find_server,
};
use understudy_project_sync::local::{
    LocalCopy, Outbox, fresh_change_id, replace_file, sha256_hex,
};
use understudy_project_sync::pb;
use understudy_project_sync::security::ClientSecurity;
use understudy_project_sync::store::ProjectStore;
use understudy_protocol::GroupName;

use crate::Bus;
use crate::settings::ProjectAuthArgs;
use crate::settings::connect_once;
use understudy_bus::NatsSettings;

/// How long a command keeps looking for a server (a failover may be under way).
const FIND_WITHIN: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// `understudy project …`
#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// Submit a file as the group's next project revision.
    Put {
        /// The project group.
        #[arg(long, env = "UNDERSTUDY_GROUP")]
        group: String,
        /// The new content.
        #[arg(long)]
        file: PathBuf,
        /// The revision the change was made on [default: the server's
        /// current revision, or with --data-dir the device's local copy].
        #[arg(long)]
        base: Option<u64>,
        /// An id for the change (1–64 of A–Z a–z 0–9 _ -), so a retry is not
        /// applied twice [default: a fresh one].
        #[arg(long)]
        change_id: Option<String>,
        /// Who makes the change, for the history.
        #[arg(long, default_value = "understudy-cli")]
        by: String,
        /// Queue the change in the outbox of the device whose `--data-dir`
        /// this is, instead of submitting it now; the device submits it when
        /// a server is there.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        bus: Bus,
        #[command(flatten)]
        project: ProjectAuthArgs,
    },
    /// Write the group's current project to a file.
    Get {
        /// The project group.
        #[arg(long, env = "UNDERSTUDY_GROUP")]
        group: String,
        /// Where to write it (replaced atomically).
        #[arg(long)]
        file: PathBuf,
        /// Copy the local copy of the device whose `--data-dir` this is,
        /// without asking the server (works with no server).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        bus: Bus,
        #[command(flatten)]
        project: ProjectAuthArgs,
    },
    /// Print the current revision, then every new one as it lands; follows
    /// the group to a new server after a failover.
    Watch {
        /// The project group.
        #[arg(long, env = "UNDERSTUDY_GROUP")]
        group: String,
        /// Stop after this many revisions [default: follow forever].
        #[arg(long)]
        count: Option<u64>,
        /// Print each revision as a JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bus: Bus,
        #[command(flatten)]
        project: ProjectAuthArgs,
    },
    /// Show the server, the head and the recent history.
    Status {
        /// The project group.
        #[arg(long, env = "UNDERSTUDY_GROUP")]
        group: String,
        /// Print a JSON document instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bus: Bus,
        #[command(flatten)]
        project: ProjectAuthArgs,
    },
}

/// Runs a `project` command.
pub async fn run(cmd: ProjectCmd) -> Result<()> {
    match cmd {
        ProjectCmd::Put {
            group,
            file,
            base,
            change_id,
            by,
            data_dir,
            bus,
            project,
        } => {
            let group: GroupName = group.parse()?;
            let data = std::fs::read(&file)
                .with_context(|| format!("cannot read --file {}", file.display()))?;
            match data_dir {
                Some(dir) => queue(&dir, base, change_id.as_deref(), &by, &data),
                None => {
                    let sec = project.client()?;
                    put(&bus.settings(), &sec, &group, base, change_id, &by, data).await
                }
            }
        }
        ProjectCmd::Get {
            group,
            file,
            data_dir,
            bus,
            project,
        } => {
            let group: GroupName = group.parse()?;
            match data_dir {
                Some(dir) => get_local(&dir, &file),
                None => get(&bus.settings(), &project.client()?, &group, &file).await,
            }
        }
        ProjectCmd::Watch {
            group,
            count,
            json,
            bus,
            project,
        } => {
            let sec = project.client()?;
            watch(&bus.settings(), &sec, &group.parse()?, count, json).await
        }
        ProjectCmd::Status {
            group,
            json,
            bus,
            project,
        } => status(&bus.settings(), &project.client()?, &group.parse()?, json).await,
    }
}

/// Finds the server and connects, retrying while a failover may be under way.
async fn connect_server(
    js: &jetstream::Context,
    sec: &ClientSecurity,
    group: &GroupName,
) -> Result<ProjectClient> {
    connect_server_within(js, sec, group, Some(FIND_WITHIN)).await
}

/// Like [`connect_server`]; `None` waits for a server for as long as it takes
/// (saying so once on stderr).
pub(crate) async fn connect_server_within(
    js: &jetstream::Context,
    sec: &ClientSecurity,
    group: &GroupName,
    within: Option<Duration>,
) -> Result<ProjectClient> {
    let deadline = within.map(|w| Instant::now() + w);
    let mut said = false;
    loop {
        let attempt = async {
            let server = find_server(js, group, CALL_TIMEOUT)
                .await?
                .ok_or_else(|| ClientError::NoServer(group.clone()))?;
            let mut pc = ProjectClient::connect_with(group, server, CALL_TIMEOUT, sec).await?;
            pc.describe().await?;
            Ok::<_, ClientError>(pc)
        };
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        match attempt.await {
            Ok(pc) => return Ok(pc),
            Err(ClientError::NoServer(_)) if expired => bail!(
                "group {group} has no server: nothing was exchanged (a device's local \
                 copy is still there: `understudy project get --data-dir`)"
            ),
            Err(e) if e.is_transient() => {
                if expired {
                    bail!(
                        "no project server answered within {:?}: {e}",
                        within.unwrap_or_default()
                    );
                }
                if deadline.is_none() && !said {
                    eprintln!("waiting for a project server of group {group} ({e})");
                    said = true;
                }
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn put(
    nats: &NatsSettings,
    sec: &ClientSecurity,
    group: &GroupName,
    base: Option<u64>,
    change_id: Option<String>,
    by: &str,
    data: Vec<u8>,
) -> Result<()> {
    let client = connect_once(nats, "understudy-project").await?;
    let js = jetstream::new(client);
    let change_id = change_id.unwrap_or_else(fresh_change_id);
    let data = Bytes::from(data);
    let deadline = Instant::now() + FIND_WITHIN;
    let mut base = base;
    loop {
        let mut pc = connect_server(&js, sec, group).await?;
        if base.is_none() {
            let head = pc.describe().await?.head.unwrap_or_default();
            base = Some(head.revision);
        }
        let change = Change {
            base_revision: base.unwrap_or(0),
            changed_by: by.to_string(),
            change_id: change_id.clone(),
            data: data.clone(),
        };
        match pc.submit(change).await {
            Ok(Submitted::Committed(r)) => {
                println!(
                    "committed revision {} (term {}, {} bytes, sha256 {}) change {change_id}",
                    r.revision, r.committed_term, r.size, r.sha256
                );
                return Ok(());
            }
            Ok(Submitted::AlreadyCommitted(r)) => {
                println!(
                    "already committed as revision {} (term {}) change {change_id}",
                    r.revision, r.committed_term
                );
                return Ok(());
            }
            Ok(Submitted::Conflict(head)) => bail!(
                "conflict: the project is at revision {} (by {}), not the base {}; nothing was applied",
                head.revision,
                if head.changed_by.is_empty() {
                    "-"
                } else {
                    &head.changed_by
                },
                base.unwrap_or(0)
            ),
            // Same change id: a retry after a failover is applied at most once.
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(anyhow!(e).context("the change was not committed")),
        }
    }
}

fn queue(
    data_dir: &Path,
    base: Option<u64>,
    change_id: Option<&str>,
    by: &str,
    data: &[u8],
) -> Result<()> {
    let dir = data_dir.join("project");
    let local = LocalCopy::open(&dir)?;
    let base = match base {
        Some(b) => b,
        None => local.current_unverified()?.map_or(0, |m| m.revision),
    };
    let entry = Outbox::open(&dir)?.add(base, by, change_id, data)?;
    println!(
        "queued change {} on base revision {base} in {}; the device submits it when its group has a server",
        entry.change_id,
        dir.join("outbox").display()
    );
    Ok(())
}

async fn get(
    nats: &NatsSettings,
    sec: &ClientSecurity,
    group: &GroupName,
    file: &Path,
) -> Result<()> {
    let client = connect_once(nats, "understudy-project").await?;
    let js = jetstream::new(client);
    let mut pc = connect_server(&js, sec, group).await?;
    // Streamed to disk beside the target (hashed, verified, fsynced), then
    // renamed over it: a 256 MiB project never sits in memory.
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = file
        .file_name()
        .ok_or_else(|| anyhow!("--file {} names no file", file.display()))?;
    if !dir.is_dir() {
        bail!(
            "cannot write {}: {} is not a folder",
            file.display(),
            dir.display()
        );
    }
    let staging = dir.join(format!(".{}.understudy-get", name.to_string_lossy()));
    let result = async {
        let local = LocalCopy::open(&staging)?;
        let meta = pc.fetch_into(&local).await?;
        let content = local
            .content_path()?
            .ok_or_else(|| anyhow!("the download left no content"))?;
        std::fs::rename(&content, file)
            .with_context(|| format!("cannot replace {}", file.display()))?;
        anyhow::Ok(meta)
    }
    .await;
    let _ = std::fs::remove_dir_all(&staging);
    let meta = result?;
    println!(
        "revision {} (term {}, {} bytes, sha256 {}) written to {}",
        meta.revision,
        meta.committed_term,
        meta.size,
        meta.sha256,
        file.display()
    );
    Ok(())
}

fn get_local(data_dir: &Path, file: &Path) -> Result<()> {
    let local = LocalCopy::open(&data_dir.join("project"))?;
    let Some((meta, data)) = local.read()? else {
        bail!("{} holds no project copy", data_dir.display());
    };
    replace_file(file, &data).with_context(|| format!("cannot write --file {}", file.display()))?;
    println!(
        "local copy: revision {} ({} bytes, sha256 {}) written to {}",
        meta.revision,
        meta.size,
        sha256_hex(&data),
        file.display()
    );
    Ok(())
}

fn print_revision(r: &pb::Revision, term: u64, json: bool) {
    if json {
        let v = serde_json::json!({
            "revision": r.revision,
            "term": term,
            "committed_term": r.committed_term,
            "size": r.size,
            "sha256": r.sha256,
            "changed_by": r.changed_by,
            "change_id": r.change_id,
            "committed_at_ms": r.committed_at_ms,
        });
        println!("{v}");
    } else {
        println!(
            "revision {} term {} size {} sha256 {} by {} change {}",
            r.revision,
            r.committed_term,
            r.size,
            r.sha256,
            if r.changed_by.is_empty() {
                "-"
            } else {
                &r.changed_by
            },
            if r.change_id.is_empty() {
                "-"
            } else {
                &r.change_id
            },
        );
    }
    let _ = std::io::stdout().flush();
}

async fn watch(
    nats: &NatsSettings,
    sec: &ClientSecurity,
    group: &GroupName,
    count: Option<u64>,
    json: bool,
) -> Result<()> {
    let client = connect_once(nats, "understudy-project").await?;
    let js = jetstream::new(client);
    let mut printed = 0u64;
    let mut last: Option<u64> = None;
    let mut seen_term = 0u64;
    loop {
        // Follows the group for as long as it runs: no server is a wait.
        let mut pc = connect_server_within(&js, sec, group, None).await?;
        pc.observe_term(understudy_protocol::Term::from_revision(seen_term));
        let after = match last {
            Some(l) => l,
            None => match pc.describe().await {
                Ok(d) => d.head.unwrap_or_default().revision.saturating_sub(1),
                Err(e) if e.is_transient() => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            },
        };
        let mut stream = match pc.watch(after).await {
            Ok(s) => s,
            Err(e) if e.is_transient() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { break };
            if pc.accept_event(&ev).is_err() {
                continue;
            }
            seen_term = pc.seen_term().get();
            let Some(r) = ev.head else { continue };
            if last.is_some_and(|l| r.revision <= l) {
                continue;
            }
            last = Some(r.revision);
            print_revision(&r, ev.term, json);
            printed += 1;
            if count.is_some_and(|c| printed >= c) {
                return Ok(());
            }
        }
        // The server stopped serving: find the next one.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status(
    nats: &NatsSettings,
    sec: &ClientSecurity,
    group: &GroupName,
    json: bool,
) -> Result<()> {
    let client = connect_once(nats, "understudy-project").await?;
    let js = jetstream::new(client);
    let head = ProjectStore::read_only_head(&js, group, CALL_TIMEOUT)
        .await
        .context("cannot read the project head")?;
    let server: Option<ServerRef> = find_server(&js, group, CALL_TIMEOUT).await.ok().flatten();
    let answering = match &server {
        Some(s) => match ProjectClient::connect_with(group, s.clone(), CALL_TIMEOUT, sec).await {
            Ok(mut pc) => pc.describe().await.map(|_| true).unwrap_or(false),
            Err(_) => false,
        },
        None => false,
    };
    if json {
        let v = serde_json::json!({
            "group": group.to_string(),
            "server": server.as_ref().map(|s| serde_json::json!({
                "device": s.device.to_string(),
                "address": s.address,
                "term": s.term.get(),
                "answering": answering,
            })),
            "head": head.as_ref().map(|(_, h)| h),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("group {group}");
    match &server {
        Some(s) => println!(
            "server: {} at {} (term {}){}",
            s.device,
            s.address.as_deref().unwrap_or("-"),
            s.term,
            if answering { "" } else { " — not answering" }
        ),
        None => println!("server: none (clients run on their local copies)"),
    }
    match head {
        None => println!("head: none yet (no server has served this group's project)"),
        Some((_, h)) => {
            match &h.current {
                None => println!("head: empty project (fenced by term {})", h.term),
                Some(c) => println!(
                    "head: revision {} ({} bytes, sha256 {}) committed in term {} by {}; fenced by term {}",
                    c.revision,
                    c.size,
                    c.sha256,
                    c.term,
                    c.changed_by.as_deref().unwrap_or("-"),
                    h.term
                ),
            }
            for r in h.recent.iter().rev().take(10) {
                println!(
                    "  revision {:>6}  term {:>6}  {:>10} bytes  by {}  change {}",
                    r.revision,
                    r.term,
                    r.size,
                    r.changed_by.as_deref().unwrap_or("-"),
                    r.change_id.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(())
}
