//! The HTTP API (docs/openapi.json, docs/control.md): JSON in, JSON out, and
//! the event streams (Server-Sent Events and WebSocket) and the dashboard.
//!
//! Nothing axum would answer in plain text reaches a client: bodies are read
//! by [`json_body`] (content type, 16 KiB limit, JSON), path names by
//! [`Names`], queries by [`stream_query`], [`force_query`] and
//! [`ledger_query`], and unknown paths and methods get
//! JSON fallbacks. Every failure is an [`ApiError`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{FromRequestParts, RawPathParams, RawQuery, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Map, Value};
use understudy_bus::ledger::LedgerQuery;
use understudy_bus::why::Why;
use understudy_protocol::messages::InstanceKind;
use understudy_protocol::roster::RosterDevice;
use understudy_protocol::{DeviceId, GroupName};

use crate::answers::{
    DeviceList, GroupList, HoldAnswer, LedgerAnswer, OnlineAnswer, ScoreAnswer, SetScoreAnswer,
    StatusDocument, TriggerAnswer,
};
use crate::auth::Access;
use crate::events::{self, FeedEvent, Start};
use crate::ops::Shared;
use crate::{ApiError, assets, input};

/// Every route: method and path (axum syntax), as the OpenAPI document lists
/// them (a unit test holds the two together).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/groups"),
    ("GET", "/api/v1/groups/{group}"),
    ("GET", "/api/v1/groups/{group}/devices"),
    ("GET", "/api/v1/groups/{group}/devices/{device}"),
    ("GET", "/api/v1/groups/{group}/devices/{device}/score"),
    ("PUT", "/api/v1/groups/{group}/devices/{device}/score"),
    ("DELETE", "/api/v1/groups/{group}/devices/{device}/score"),
    ("PUT", "/api/v1/groups/{group}/devices/{device}/online"),
    ("GET", "/api/v1/groups/{group}/hold"),
    ("PUT", "/api/v1/groups/{group}/hold"),
    ("GET", "/api/v1/groups/{group}/ledger"),
    ("GET", "/api/v1/groups/{group}/why"),
    ("POST", "/api/v1/groups/{group}/election"),
    ("GET", "/api/v1/groups/{group}/events"),
    ("GET", "/api/v1/groups/{group}/events/ws"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/"),
    ("GET", "/dashboard.js"),
    ("GET", "/dashboard.css"),
];

/// How often an idle SSE stream sends a comment, so proxies keep it open.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

type St = State<Arc<Shared>>;

/// The HTTP router over the shared state.
///
/// Every route under `/api/` passes [`require_role`] first: a `GET` (or
/// `HEAD`) reads, every other method writes ([`crate::auth`]). The
/// dashboard's page, script and style sheet hold no group data and stay
/// open, so a browser can load the page that asks for the token.
pub fn router(shared: Arc<Shared>) -> Router {
    let g = "/api/v1/groups/{group}";
    let api = Router::new()
        .route("/api/v1/groups", get(groups))
        .route(g, get(status))
        .route(&format!("{g}/devices"), get(devices))
        .route(&format!("{g}/devices/{{device}}"), get(device))
        .route(
            &format!("{g}/devices/{{device}}/score"),
            get(get_score).put(put_score).delete(delete_score),
        )
        .route(&format!("{g}/devices/{{device}}/online"), put(put_online))
        .route(&format!("{g}/hold"), get(get_hold).put(put_hold))
        .route(&format!("{g}/ledger"), get(get_ledger))
        .route(&format!("{g}/why"), get(get_why))
        .route(&format!("{g}/election"), post(post_election))
        .route(&format!("{g}/events"), get(events_sse))
        .route(&format!("{g}/events/ws"), get(events_ws))
        .route("/api/v1/openapi.json", get(openapi))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            require_role,
        ));
    Router::new()
        .merge(api)
        .route("/", get(|| async { assets::index() }))
        .route("/dashboard.js", get(|| async { assets::script() }))
        .route("/dashboard.css", get(|| async { assets::style() }))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(count_request))
        .with_state(shared)
}

/// What a request needs: `GET` and `HEAD` read, every other method writes.
pub fn access_of(method: &Method) -> Access {
    if method == Method::GET || method == Method::HEAD {
        Access::Read
    } else {
        Access::Write
    }
}

/// Lets a request through only with a token whose role allows it (or, with
/// no token configured, a read).
async fn require_role(State(s): St, req: Request, next: Next) -> Response {
    let header = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
    match s.tokens.check_header(header, access_of(req.method())) {
        Ok(_) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Counts each request answered in `understudy_gateway_requests_total`, by
/// route pattern (not the path asked for: names stay out of the labels)
/// and status.
async fn count_request(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // One span per call; the requests it makes of devices carry its context.
    let span = tracing::info_span!(
        "gateway.request",
        method = %req.method(),
        route = %route,
        status = tracing::field::Empty
    );
    let response = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let status = response.status().as_u16();
    span.record("status", status);
    understudy_telemetry::metrics().gateway_request(&route, status);
    response
}

/// A JSON answer.
pub fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = json_response(self.status(), &self.document());
        // RFC 6750: how to authenticate, and that this token is not enough.
        let challenge = match self {
            ApiError::Unauthorized(_) => Some("Bearer realm=\"understudy\""),
            ApiError::Forbidden(_) => {
                Some("Bearer realm=\"understudy\", error=\"insufficient_scope\"")
            }
            _ => None,
        };
        if let Some(c) = challenge {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        response
    }
}

/// A typed answer document with its status: what every handler returns
/// on success (an [`ApiError`] otherwise).
#[derive(Debug)]
pub struct Answer<T> {
    /// 200, or 202 for a call that only starts something.
    pub status: StatusCode,
    /// The document.
    pub body: T,
}

impl<T> Answer<T> {
    /// A 200 answer.
    pub fn ok(body: T) -> Self {
        Answer {
            status: StatusCode::OK,
            body,
        }
    }
}

impl<T: Serialize> IntoResponse for Answer<T> {
    fn into_response(self) -> Response {
        json_response(self.status, &self.body)
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such path; the API is under /api/v1 (see /api/v1/openapi.json)".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed(
        "this path does not take this method (see /api/v1/openapi.json)".into(),
    )
}

/// The `{group}` and `{device}` of a path, validated when asked for.
#[derive(Debug)]
pub struct Names {
    group: String,
    device: String,
}

impl Names {
    fn group(&self) -> Result<GroupName, ApiError> {
        input::group(&self.group)
    }
    fn device(&self) -> Result<DeviceId, ApiError> {
        input::device(&self.device)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Names {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::InvalidName(e.body_text()))?;
        let mut names = Names {
            group: String::new(),
            device: String::new(),
        };
        for (key, value) in &raw {
            match key {
                "group" => names.group = value.to_owned(),
                "device" => names.device = value.to_owned(),
                _ => {}
            }
        }
        Ok(names)
    }
}

/// Reads a JSON object body: `Content-Type: application/json`, at most
/// [`input::MAX_BODY`] bytes, valid JSON.
pub async fn json_body(headers: &HeaderMap, body: Body) -> Result<Map<String, Value>, ApiError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::UnsupportedMediaType(format!(
            "the body must be JSON with `Content-Type: application/json` (got {:?})",
            content_type
        )));
    }
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "the body is larger than the limit of {} bytes",
            input::MAX_BODY
        ))
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut chunks = body.into_data_stream();
    if declared.is_some_and(|n| n > input::MAX_BODY as u64) {
        drain(&mut chunks, declared).await;
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::InvalidJson(format!("the body could not be read: {e}")))?;
        if bytes.len() + chunk.len() > input::MAX_BODY {
            drain(&mut chunks, None).await;
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    input::object(&bytes)
}

/// Reads and drops the rest of a refused body, when it is not huge, so the
/// client (still sending) reads the 413 instead of a connection reset.
async fn drain(chunks: &mut axum::body::BodyDataStream, declared: Option<u64>) {
    const DRAIN_AT_MOST: usize = 1024 * 1024;
    if declared.is_some_and(|n| n > DRAIN_AT_MOST as u64) {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut seen = 0usize;
        while let Some(Ok(chunk)) = chunks.next().await {
            seen += chunk.len();
            if seen > DRAIN_AT_MOST {
                return;
            }
        }
    })
    .await;
}

async fn openapi() -> Response {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        crate::openapi::DOCUMENT,
    )
        .into_response()
}

async fn groups(State(s): St) -> Answer<GroupList> {
    Answer::ok(s.groups())
}

async fn status(State(s): St, names: Names) -> Result<Answer<StatusDocument>, ApiError> {
    Ok(Answer::ok(s.status(&names.group()?).await?))
}

async fn devices(State(s): St, names: Names) -> Result<Answer<DeviceList>, ApiError> {
    Ok(Answer::ok(s.devices(&names.group()?).await?))
}

async fn device(State(s): St, names: Names) -> Result<Answer<RosterDevice>, ApiError> {
    let (group, device) = (names.group()?, names.device()?);
    Ok(Answer::ok(s.device(&group, &device).await?))
}

async fn get_score(State(s): St, names: Names) -> Result<Answer<ScoreAnswer>, ApiError> {
    let (group, device) = (names.group()?, names.device()?);
    Ok(Answer::ok(s.get_score(&group, &device).await?))
}

async fn put_score(
    State(s): St,
    names: Names,
    headers: HeaderMap,
    body: Body,
) -> Result<Answer<SetScoreAnswer>, ApiError> {
    let (group, device) = (names.group()?, names.device()?);
    let map = json_body(&headers, body).await?;
    let score = input::score(input::field(&map, "score")?)?;
    Ok(Answer::ok(s.set_score(&group, &device, score).await?))
}

/// Forgets the score an operator stored for the device: it returns to its
/// configured score and an election follows.
async fn delete_score(State(s): St, names: Names) -> Result<Answer<SetScoreAnswer>, ApiError> {
    let (group, device) = (names.group()?, names.device()?);
    Ok(Answer::ok(s.reset_score(&group, &device).await?))
}

async fn put_online(
    State(s): St,
    names: Names,
    headers: HeaderMap,
    body: Body,
) -> Result<Answer<OnlineAnswer>, ApiError> {
    let (group, device) = (names.group()?, names.device()?);
    let map = json_body(&headers, body).await?;
    let online = input::boolean(&map, "online")?;
    Ok(Answer::ok(s.set_online(&group, &device, online).await?))
}

async fn get_hold(State(s): St, names: Names) -> Result<Answer<HoldAnswer>, ApiError> {
    Ok(Answer::ok(s.hold(&names.group()?).await?))
}

async fn put_hold(
    State(s): St,
    names: Names,
    headers: HeaderMap,
    body: Body,
) -> Result<Answer<HoldAnswer>, ApiError> {
    let group = names.group()?;
    let map = json_body(&headers, body).await?;
    let change = input::hold(&map)?;
    Ok(Answer::ok(s.set_hold(&group, change).await?))
}

/// The query of a ledger read: `since` (Unix milliseconds or an RFC 3339
/// time, percent-encoded as a URL needs: `%2B01:00` for `+01:00`; a `+`
/// left as it is stays a plus) and `limit` (1–1000, default
/// [`input::DEFAULT_LEDGER_LIMIT`]); unknown parameters are ignored.
pub fn ledger_query(query: Option<&str>) -> Result<LedgerQuery, ApiError> {
    let mut q = LedgerQuery {
        since_ms: None,
        limit: input::DEFAULT_LEDGER_LIMIT,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "since" && key != "limit" {
            continue;
        }
        let value = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| {
                ApiError::InvalidJson(format!("query parameter {key} is not UTF-8 text"))
            })?;
        if key == "since" {
            q.since_ms = Some(input::since(&value)?);
        } else {
            let n = value.parse::<u64>().map_err(|_| {
                ApiError::InvalidJson(format!(
                    "query parameter limit={:?} must be an integer from 1 to {}",
                    value.chars().take(32).collect::<String>(),
                    understudy_bus::ledger::MAX_LIMIT
                ))
            })?;
            q.limit = input::ledger_limit(n)?;
        }
    }
    Ok(q)
}

/// The group's election ledger: the latest entries, or those from a time.
async fn get_ledger(
    State(s): St,
    names: Names,
    RawQuery(query): RawQuery,
) -> Result<Answer<LedgerAnswer>, ApiError> {
    let group = names.group()?;
    let query = ledger_query(query.as_deref())?;
    Ok(Answer::ok(s.ledger(&group, query).await?))
}

/// Why the group's server serves: `understudy why --json`'s document.
async fn get_why(State(s): St, names: Names) -> Result<Answer<Why>, ApiError> {
    Ok(Answer::ok(s.why(&names.group()?).await?))
}

/// The query of an election trigger: `force=true` triggers past a show
/// hold (`force=false`, or none, does not).
pub fn force_query(query: Option<&str>) -> Result<bool, ApiError> {
    let mut force = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "force" {
            force = match value {
                "true" => true,
                "false" => false,
                other => {
                    return Err(ApiError::InvalidJson(format!(
                        "query parameter force={:?} must be true or false",
                        other.chars().take(32).collect::<String>()
                    )));
                }
            };
        }
    }
    Ok(force)
}

async fn post_election(
    State(s): St,
    names: Names,
    RawQuery(query): RawQuery,
) -> Result<Answer<TriggerAnswer>, ApiError> {
    let group = names.group()?;
    let force = force_query(query.as_deref())?;
    let answer = s.trigger(&group, force).await?;
    Ok(Answer {
        status: StatusCode::ACCEPTED,
        body: answer,
    })
}

/// The query of an event stream: `after`, `last`, `client`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StreamQuery {
    /// `after=N`: events with id above N.
    pub after: Option<u64>,
    /// `last=K`: the last K events.
    pub last: Option<u64>,
    /// `client=dashboard`: the session is a GUI.
    pub dashboard: bool,
}

/// Parses an event stream's query; unknown parameters are ignored.
pub fn stream_query(query: Option<&str>) -> Result<StreamQuery, ApiError> {
    let mut q = StreamQuery::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value.parse::<u64>().map_err(|_| {
                ApiError::InvalidJson(format!(
                    "query parameter {key}={value:?} must be a non-negative integer"
                ))
            })
        };
        match key {
            "after" => q.after = Some(number()?),
            "last" => q.last = Some(number()?),
            "client" => q.dashboard = value == "dashboard",
            _ => {}
        }
    }
    Ok(q)
}

/// Where a stream starts: `Last-Event-ID` (an EventSource reconnecting), else
/// `after`, else `last`.
fn stream_start(headers: &HeaderMap, q: &StreamQuery) -> Result<Start, ApiError> {
    let last_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::InvalidJson(
                        "the Last-Event-ID header must be a non-negative integer".into(),
                    )
                })?,
        ),
    };
    Ok(Start::from_request(last_id.or(q.after), q.last))
}

fn session_kind(q: &StreamQuery) -> InstanceKind {
    if q.dashboard {
        InstanceKind::Gui
    } else {
        InstanceKind::Control
    }
}

/// An event's type as an SSE `event:` field (only subject-token characters).
fn sse_type(kind: &str) -> String {
    kind.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect()
}

fn sse_event(ev: &FeedEvent) -> Event {
    Event::default()
        .id(ev.id.to_string())
        .event(sse_type(&ev.kind))
        .data(ev.event.to_string())
}

async fn events_sse(
    State(s): St,
    names: Names,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let group = names.group()?;
    let q = stream_query(query.as_deref())?;
    let start = stream_start(&headers, &q)?;
    s.bus.ensure_connected()?;
    let guard = s.sessions.open(session_kind(&q), Some(group.clone()));
    let rx = events::subscribe(s.bus.jetstream(), group, start, s.shutdown.clone());
    let stream = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        let ev = rx.recv().await?;
        Some((Ok::<_, Infallible>(sse_event(&ev)), (rx, guard)))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
        .into_response())
}

async fn events_ws(
    State(s): St,
    names: Names,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let group = names.group()?;
    let q = stream_query(query.as_deref())?;
    let start = stream_start(&headers, &q)?;
    let ws = ws.map_err(|e| {
        ApiError::UpgradeRequired(format!(
            "this path is a WebSocket: connect with a WebSocket client ({})",
            e.body_text()
        ))
    })?;
    s.bus.ensure_connected()?;
    let kind = session_kind(&q);
    Ok(ws.on_upgrade(move |socket| ws_session(socket, s, group, start, kind)))
}

/// Sends the group's events as text frames until the client goes away or the
/// gateway stops. Whatever the client sends is ignored (except a close).
async fn ws_session(
    mut socket: WebSocket,
    s: Arc<Shared>,
    group: GroupName,
    start: Start,
    kind: InstanceKind,
) {
    let _session = s.sessions.open(kind, Some(group.clone()));
    let mut rx = events::subscribe(s.bus.jetstream(), group, start, s.shutdown.clone());
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                let frame = Message::Text(ev.frame().to_string().into());
                if socket.send(frame).await.is_err() {
                    return;
                }
            }
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_queries_parse_and_refuse_bad_numbers() {
        assert_eq!(
            stream_query(Some("after=5&client=dashboard&x=y")),
            Ok(StreamQuery {
                after: Some(5),
                last: None,
                dashboard: true
            })
        );
        assert_eq!(stream_query(None), Ok(StreamQuery::default()));
        assert_eq!(
            stream_query(Some("last=-1")).map_err(|e| e.code()),
            Err("invalid_json")
        );
    }

    #[test]
    fn force_is_true_or_false() {
        assert_eq!(force_query(None), Ok(false));
        assert_eq!(force_query(Some("force=true")), Ok(true));
        assert_eq!(force_query(Some("x=1&force=false")), Ok(false));
        for bad in ["force=1", "force=", "force", "force=TRUE"] {
            assert_eq!(
                force_query(Some(bad)).map_err(|e| e.code()),
                Err("invalid_json"),
                "{bad}"
            );
        }
    }

    #[test]
    fn ledger_queries_take_milliseconds_or_a_percent_encoded_time() {
        let q = |since_ms, limit| Ok(LedgerQuery { since_ms, limit });
        assert_eq!(ledger_query(None), q(None, input::DEFAULT_LEDGER_LIMIT));
        assert_eq!(ledger_query(Some("limit=1&x=y")), q(None, 1));
        assert_eq!(
            ledger_query(Some("since=1767225600000&limit=1000")),
            q(Some(1_767_225_600_000), 1000)
        );
        for time in [
            "2026-01-01T01%3A00%3A00%2B01%3A00",
            "2026-01-01T01:00:00+01:00",
            "2026-01-01T00:00:00Z",
        ] {
            assert_eq!(
                ledger_query(Some(&format!("since={time}"))),
                q(Some(1_767_225_600_000), input::DEFAULT_LEDGER_LIMIT),
                "{time}"
            );
        }
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=abc",
            "limit=",
            "limit=-1",
            "since=garbage",
            "since=",
            "since=%FF",
            "since=2h",
        ] {
            assert_eq!(
                ledger_query(Some(bad)).map_err(|e| e.code()),
                Err("invalid_json"),
                "{bad}"
            );
        }
    }

    #[test]
    fn last_event_id_wins_over_after() {
        let mut h = HeaderMap::new();
        h.insert("last-event-id", HeaderValue::from_static("9"));
        let q = StreamQuery {
            after: Some(3),
            last: Some(1),
            dashboard: false,
        };
        assert_eq!(stream_start(&h, &q), Ok(Start::After(9)));
        assert_eq!(stream_start(&HeaderMap::new(), &q), Ok(Start::After(3)));
    }
}
