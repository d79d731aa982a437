//! The TCP control protocol: newline-delimited JSON, one request per line,
//! one reply per line (docs/control.md).
//!
//! A request is `{"id":…,"cmd":"…",…}`; the reply echoes `id` with
//! `"ok":true,"result":{…}` or `"ok":false,"error":{"code","message"}` — the
//! same codes as HTTP. After `subscribe`, event lines `{"event":{…}}` are
//! interleaved with replies. A line over 16 KiB is refused with
//! `payload_too_large` and skipped up to its newline, so the connection stays
//! usable. Each connection is one `control` session (B10).

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info};
use understudy_protocol::messages::InstanceKind;

use crate::answers::{AuthAnswer, SubscribeAnswer};
use crate::auth::{Access, Role};
use crate::events::{self, Start};
use crate::ops::Shared;
use crate::presence::SessionGuard;
use crate::{ApiError, input};

/// Accepts connections until the gateway shuts down.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    debug!(%peer, "TCP control connection");
                    tokio::spawn(connection(stream, Arc::clone(&shared)));
                }
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    info!(error = %e, "accepting a TCP connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = understudy_bus::stopped(&mut shutdown) => return,
        }
    }
}

/// One line read from the client.
#[doc(hidden)]
pub enum Line {
    /// A complete line (without its newline).
    Text(Vec<u8>),
    /// A line longer than the limit, skipped.
    TooLong,
}

/// Reads the next line, at most [`input::MAX_BODY`] bytes kept; `None` at the
/// end of the stream. Public (hidden) for the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub async fn next_line<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (too_long, line.is_empty()) {
                (true, _) => Some(Line::TooLong),
                (false, true) => None,
                (false, false) => Some(Line::Text(line)),
            });
        }
        let (chunk, used, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        if !too_long {
            if line.len() + chunk.len() > input::MAX_BODY {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        reader.consume(used);
        if done {
            return Ok(Some(if too_long {
                Line::TooLong
            } else {
                Line::Text(line)
            }));
        }
    }
}

/// The state of one connection.
struct Conn {
    shared: Arc<Shared>,
    out: mpsc::Sender<String>,
    session: SessionGuard,
    /// The role `auth` gave this connection; `None` before (or after a
    /// failed `auth`).
    role: Option<Role>,
    pending: Option<Pending>,
    subscription: Option<JoinHandle<()>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(task) = self.subscription.take() {
            task.abort();
        }
    }
}

async fn connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let (out, mut lines) = mpsc::channel::<String>(256);
    let writer = tokio::spawn(async move {
        while let Some(mut line) = lines.recv().await {
            line.push('\n');
            if write.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
        let _ = write.shutdown().await;
    });
    let mut conn = Conn {
        session: shared.sessions.open(InstanceKind::Control, None),
        shared,
        out,
        role: None,
        pending: None,
        subscription: None,
    };
    let mut reader = BufReader::new(read);
    let mut shutdown = conn.shared.shutdown.clone();
    loop {
        let line = tokio::select! {
            line = next_line(&mut reader) => line,
            _ = understudy_bus::stopped(&mut shutdown) => break,
        };
        let reply = match line {
            Ok(None) | Err(_) => break,
            Ok(Some(Line::TooLong)) => failure(
                Value::Null,
                &ApiError::PayloadTooLarge(format!(
                    "the line is longer than the limit of {} bytes",
                    input::MAX_BODY
                )),
            ),
            Ok(Some(Line::Text(text))) => {
                let text = text.strip_suffix(b"\r").unwrap_or(&text);
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                conn.request(text).await
            }
        };
        if conn.out.send(reply.to_string()).await.is_err() {
            break;
        }
        conn.start_pending_subscription();
    }
    drop(conn);
    let _ = writer.await;
}

/// An answer document as the `result` of a reply line.
fn document(answer: impl Serialize) -> Value {
    // The answer types are plain structs with string keys: serialising them
    // cannot fail.
    serde_json::to_value(answer).unwrap_or(Value::Null)
}

fn success(id: Value, result: Value) -> Value {
    json!({ "id": id, "ok": true, "result": result })
}

fn failure(id: Value, e: &ApiError) -> Value {
    json!({ "id": id, "ok": false, "error": e.body() })
}

/// A subscription asked for, started once its reply is on its way.
struct Pending {
    group: understudy_protocol::GroupName,
    start: Start,
}

impl Conn {
    /// Starts the subscription the last request asked for (replacing any
    /// earlier one), now that its reply is queued ahead of its events.
    fn start_pending_subscription(&mut self) {
        let Some(p) = self.pending.take() else {
            return;
        };
        if let Some(old) = self.subscription.take() {
            old.abort();
        }
        self.session.follow(p.group.clone());
        let mut rx = events::subscribe(
            self.shared.bus.jetstream(),
            p.group,
            p.start,
            self.shared.shutdown.clone(),
        );
        let out = self.out.clone();
        self.subscription = Some(tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let line = json!({ "event": ev.frame() }).to_string();
                if out.send(line).await.is_err() {
                    return;
                }
            }
        }));
    }

    async fn request(&mut self, line: &[u8]) -> Value {
        let map = match input::object(line) {
            Ok(m) => m,
            Err(e) => return failure(Value::Null, &e),
        };
        let id = map.get("id").cloned().unwrap_or(Value::Null);
        match self.command(&map).await {
            Ok(result) => success(id, result),
            Err(e) => failure(id, &e),
        }
    }

    /// The same rule as HTTP: reads need a token once any is configured,
    /// writes need the admin token.
    fn allow(&self, need: Access) -> Result<(), ApiError> {
        self.shared.tokens.permit(self.role, need)
    }

    async fn command(&mut self, map: &Map<String, Value>) -> Result<Value, ApiError> {
        let cmd = input::string(map, "cmd")?;
        let s = Arc::clone(&self.shared);
        let group = || input::group(input::string(map, "group")?);
        let device = || input::device(input::string(map, "device")?);
        match cmd {
            "auth" => {
                let token = input::string(map, "token")?;
                self.role = None;
                let role = s.tokens.authenticate(token.as_bytes())?;
                self.role = Some(role);
                Ok(document(AuthAnswer {
                    authorised: true,
                    role,
                }))
            }
            "groups" => {
                self.allow(Access::Read)?;
                Ok(document(s.groups()))
            }
            "status" => {
                self.allow(Access::Read)?;
                s.status(&group()?).await.map(document)
            }
            "devices" => {
                self.allow(Access::Read)?;
                s.devices(&group()?).await.map(document)
            }
            "get_score" => {
                self.allow(Access::Read)?;
                s.get_score(&group()?, &device()?).await.map(document)
            }
            "set_score" => {
                self.allow(Access::Write)?;
                let (g, d) = (group()?, device()?);
                let score = input::score(input::field(map, "score")?)?;
                s.set_score(&g, &d, score).await.map(document)
            }
            "reset_score" => {
                self.allow(Access::Write)?;
                let (g, d) = (group()?, device()?);
                s.reset_score(&g, &d).await.map(document)
            }
            "set_online" => {
                self.allow(Access::Write)?;
                let (g, d) = (group()?, device()?);
                let online = input::boolean(map, "online")?;
                s.set_online(&g, &d, online).await.map(document)
            }
            "trigger" => {
                self.allow(Access::Write)?;
                let g = group()?;
                let force = input::flag(map, "force")?;
                s.trigger(&g, force).await.map(document)
            }
            "hold_status" => {
                self.allow(Access::Read)?;
                s.hold(&group()?).await.map(document)
            }
            "ledger" => {
                self.allow(Access::Read)?;
                let g = group()?;
                let query = input::ledger(map)?;
                s.ledger(&g, query).await.map(document)
            }
            "why" => {
                self.allow(Access::Read)?;
                s.why(&group()?).await.map(document)
            }
            "hold" => {
                self.allow(Access::Write)?;
                let g = group()?;
                let change = input::hold(map)?;
                s.set_hold(&g, change).await.map(document)
            }
            "subscribe" => {
                self.allow(Access::Read)?;
                let g = group()?;
                let start =
                    Start::from_request(input::count(map, "after")?, input::count(map, "last")?);
                s.bus.ensure_connected()?;
                self.pending = Some(Pending {
                    group: g.clone(),
                    start,
                });
                Ok(document(SubscribeAnswer {
                    group: g,
                    subscribed: true,
                }))
            }
            other => Err(ApiError::NotFound(format!(
                "unknown command {:?}: auth, groups, status, devices, get_score, set_score, \
                 reset_score, set_online, trigger, hold, hold_status, ledger, why, subscribe",
                other.chars().take(64).collect::<String>()
            ))),
        }
    }
}
