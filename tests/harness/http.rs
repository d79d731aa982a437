//! An HTTP/1.1 client for the gateway's API, its event streams and
//! chromedriver: hyper's client (already in the tree through tonic and
//! axum), with the whole exchange bounded by a deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long one exchange (request and the whole answer) may take.
pub const HTTP_WITHIN: Duration = Duration::from_secs(20);

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "status {}: body is not JSON: {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header's value, if it is there and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn client() -> &'static Client<HttpConnector, Full<Bytes>> {
    static CLIENT: OnceLock<Client<HttpConnector, Full<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(|| Client::builder(TokioExecutor::new()).build_http())
}

/// Starts a request and returns the answer's head with its body still
/// streaming (for event streams).
pub async fn open(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<hyper::Response<Incoming>> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        req = req.header(HeaderName::try_from(*name)?, HeaderValue::try_from(*value)?);
    }
    let body = Full::new(Bytes::copy_from_slice(body.unwrap_or_default()));
    let req = req.body(body)?;
    let what = format!("{method} http://{addr}{path}");
    within(&what, async { Ok(client().request(req).await?) }).await
}

/// Sends one request and reads the whole answer.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Reply> {
    let response = open(addr, method, path, headers, body).await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let what = format!("the body of {method} http://{addr}{path}");
    let body = within(&what, async {
        Ok(response.into_body().collect().await?.to_bytes())
    })
    .await?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// `exchange`, failing with `what` after [`HTTP_WITHIN`].
async fn within<T>(what: &str, exchange: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(HTTP_WITHIN, exchange)
        .await
        .map_err(|_| anyhow!("{what}: no complete answer within {HTTP_WITHIN:?}"))?
        .with_context(|| what.to_string())
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Reply> {
    request(addr, "GET", path, &[], None).await
}

/// An open Server-Sent Events stream.
pub struct Sse {
    body: Incoming,
    pending: String,
}

/// One SSE event: (id, event type, data as JSON).
pub type SseEvent = (u64, String, Value);

impl Sse {
    /// `GET path` with `Accept: text/event-stream`; fails unless the answer
    /// is 200 with that content type.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Sse> {
        let mut all = vec![("Accept", "text/event-stream")];
        all.extend_from_slice(headers);
        let response = open(addr, "GET", path, &all, None).await?;
        anyhow::ensure!(
            response.status() == 200,
            "SSE answered {}",
            response.status()
        );
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        anyhow::ensure!(
            kind.contains("text/event-stream"),
            "SSE content type {kind}"
        );
        Ok(Sse {
            body: response.into_body(),
            pending: String::new(),
        })
    }

    /// The next event (comments and keep-alives skipped).
    pub async fn next(&mut self) -> Result<SseEvent> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                if let Some(event) = parse_event(&block)? {
                    return Ok(event);
                }
                continue;
            }
            let frame = self
                .body
                .frame()
                .await
                .ok_or_else(|| anyhow!("the SSE stream ended"))??;
            if let Ok(data) = frame.into_data() {
                self.pending
                    .push_str(&String::from_utf8_lossy(&data).replace("\r\n", "\n"));
            }
        }
    }

    /// The next event within `within`; panics otherwise.
    pub async fn next_within(&mut self, within: Duration) -> SseEvent {
        tokio::time::timeout(within, self.next())
            .await
            .expect("an SSE event in time")
            .expect("an SSE event")
    }
}

/// One SSE block's event, `None` for a block without an id (a comment).
fn parse_event(block: &str) -> Result<Option<SseEvent>> {
    let (mut id, mut kind, mut data) = (None, String::new(), String::new());
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().parse::<u64>()?);
        } else if let Some(v) = line.strip_prefix("event:") {
            kind = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
    match id {
        Some(id) => Ok(Some((id, kind, serde_json::from_str(&data)?))),
        None => Ok(None),
    }
}
