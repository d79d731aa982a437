//! End to end: the gateway's tokens and roles (docs/control.md, "Tokens and
//! roles") on a real `understudy gateway` in front of real devices on a real
//! nats-server.
//!
//! Every operation of `docs/openapi.json` is called, its path parameters
//! filled with the running group and one of its devices: without a token
//! (401 with `WWW-Authenticate: Bearer`), with a token the gateway does not
//! know (401), with a read-only token (403 `forbidden` on every write, let
//! through on every read) and with the admin token (let through). The routes
//! the document marks open (`security: []`, the dashboard's files) answer
//! without a token. The test counts the operations it called against the
//! document's, so a route added to the document cannot be skipped. The TCP
//! protocol's `auth` gives the same roles. With `--tls-cert`/`--tls-key`
//! the same API answers over HTTPS (rustls on both sides), and plain HTTP to
//! that port gets nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use harness::http::open;
use harness::*;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const GROUP: &str = "stage";
const ADMIN: &str = "roles-admin-token";
const DESK: &str = "roles-read-desk";
const TABLET: &str = "roles-read-tablet";
/// The device whose path parameters the calls use (a client, score 100).
const DEVICE: &str = "dev-2";
/// Grace (2 s) plus room for a loaded 2-core machine.
const SERVER_WITHIN: Duration = Duration::from_secs(15);
/// One request or one event, on a loaded machine.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// A nats-server, dev-1 (200) and dev-2 (100) of [`GROUP`], and a gateway
/// with the admin token and the read-only tokens given by `read_env` (an
/// environment variable and its value); returns once the group has a server.
async fn lab(read_env: (&str, String)) -> (NatsServer, Vec<Device>, Gateway) {
    let nats = start_nats().await;
    let urls = vec![nats.url()];
    let devices: Vec<Device> = [200u8, 100]
        .iter()
        .enumerate()
        .map(|(i, s)| spawn_device(&urls, DeviceOpts::numbered(GROUP, i as u8 + 1, *s)))
        .collect();
    let mut opts = GatewayOpts::free_ports(Some(ADMIN)).unwrap();
    opts.env.push((read_env.0.to_string(), read_env.1));
    let gw = start_gateway_on(&nats.url(), opts).await;
    wait_until("the group to have a server", SERVER_WITHIN, || async {
        let r = call(
            gw.http(),
            "GET",
            &format!("/api/v1/groups/{GROUP}"),
            Some(ADMIN),
        )
        .await?;
        ensure!(r.status == 200, "status {}: {}", r.status, r.body);
        ensure!(!r.body["server"].is_null(), "no server yet");
        Ok(())
    })
    .await
    .unwrap();
    (nats, devices, gw)
}

/// What a call answered: status, `WWW-Authenticate`, and the body as JSON
/// (`Null` for an event stream, which is not read, or a body that is not JSON).
#[derive(Debug)]
struct Answer {
    status: u16,
    challenge: Option<String>,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// A write's body that changes nothing: dev-2 keeps its score and stays
/// online, the group stays unheld (the election trigger takes none).
fn harmless_body(path: &str) -> Option<Vec<u8>> {
    if path.ends_with("/hold") {
        Some(json!({"held": false}).to_string().into_bytes())
    } else if path.ends_with("/score") {
        Some(json!({"score": 100}).to_string().into_bytes())
    } else if path.ends_with("/online") {
        Some(json!({"online": true}).to_string().into_bytes())
    } else {
        None
    }
}

/// `method path` with `token` as a bearer token (if any) and, on a write,
/// [`harmless_body`]. An event stream's body is not read (it does not end).
async fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Result<Answer> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    let body = if method == "GET" {
        None
    } else {
        harmless_body(path)
    };
    let response = open(addr, method, path, &headers, body.as_deref()).await?;
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let challenge = header("www-authenticate");
    let streaming = header("content-type").is_some_and(|c| c.contains("text/event-stream"));
    let body = if streaming {
        Value::Null
    } else {
        let bytes = tokio::time::timeout(ANSWER_WITHIN, response.into_body().collect())
            .await?
            .map(|b| b.to_bytes())?;
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    Ok(Answer {
        status,
        challenge,
        body,
    })
}

/// Every operation of docs/openapi.json: (method in upper case, path
/// template, whether it declares the bearer scheme).
fn operations() -> Vec<(String, String, bool)> {
    let text = std::fs::read_to_string(repo_root().join("docs/openapi.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let security = op["security"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path}: every operation states its security"));
            let bearer = security.iter().any(|s| s.get("bearer").is_some());
            ops.push((method.to_uppercase(), path.clone(), bearer));
        }
    }
    ops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_documented_route_refuses_no_token_and_a_read_only_token_on_writes() {
    let dir = TempDir::new("read-tokens").unwrap();
    let file = dir.path().join("read-tokens");
    std::fs::write(
        &file,
        format!("# the lighting desk\n{DESK}\n\n# the stage manager's tablet\n  {TABLET}  \n"),
    )
    .unwrap();
    let (nats, _devices, gw) =
        lab(("UNDERSTUDY_READ_TOKENS_FILE", file.display().to_string())).await;
    let addr = gw.http();

    let ops = operations();
    let (mut reads, mut writes, mut open_routes) = (0, 0, 0);
    for (method, template, bearer) in &ops {
        let path = template
            .replace("{group}", GROUP)
            .replace("{device}", DEVICE);
        let what = format!("{method} {path}");
        if !bearer {
            // Documented as open: the dashboard's files.
            let r = call(addr, method, &path, None).await.unwrap();
            assert_eq!(r.status, 200, "{what} is documented open: {r:?}");
            assert!(
                !template.starts_with("/api/"),
                "{what}: nothing under /api/ is open"
            );
            open_routes += 1;
            continue;
        }
        for token in [None, Some("not-a-token-of-this-gateway")] {
            let r = call(addr, method, &path, token).await.unwrap();
            assert_eq!(
                (r.status, r.code()),
                (401, "unauthorized"),
                "{what} with {token:?}: {r:?}"
            );
            assert!(
                r.challenge
                    .as_deref()
                    .is_some_and(|c| c.starts_with("Bearer")),
                "{what}: 401 carries WWW-Authenticate: Bearer ({r:?})"
            );
        }
        for reader in [DESK, TABLET] {
            let r = call(addr, method, &path, Some(reader)).await.unwrap();
            if method == "GET" {
                assert!(
                    r.status != 401 && r.status != 403,
                    "{what}: a read-only token reads ({r:?})"
                );
            } else {
                assert_eq!(
                    (r.status, r.code()),
                    (403, "forbidden"),
                    "{what}: a read-only token may not write ({r:?})"
                );
            }
        }
        let r = call(addr, method, &path, Some(ADMIN)).await.unwrap();
        assert!(
            r.status != 401 && r.status != 403,
            "{what}: the admin token may ({r:?})"
        );
        if method == "GET" {
            reads += 1;
        } else {
            writes += 1;
        }
    }
    // Every documented operation was called, and the document lists every
    // route the gateway serves (a unit test of the gateway holds that).
    assert_eq!(reads + writes + open_routes, ops.len());
    assert_eq!(
        ops.len(),
        understudy_control_gateway::http::ROUTES.len(),
        "the document and the router list the same routes"
    );
    assert_eq!(
        (reads, writes, open_routes),
        (11, 5, 3),
        "11 reads (groups, status, devices, device, score, hold, ledger, why, the two event \
         streams, the document), 5 writes (score, score reset, online, hold, election) and the \
         dashboard's 3 files"
    );
    eprintln!("[roles] {reads} read, {writes} write and {open_routes} open routes checked");

    // A read-only token follows the events (SSE), and its refused writes
    // changed nothing: dev-2's score is still 100.
    let mut sse = harness::http::Sse::open(
        addr,
        &format!("/api/v1/groups/{GROUP}/events?last=1"),
        &[("Authorization", &format!("Bearer {DESK}"))],
    )
    .await
    .unwrap();
    let (_, kind, event) = sse.next_within(ANSWER_WITHIN).await;
    assert!(kind == "election" || kind == "project", "{kind}");
    assert_eq!(event["group"], GROUP);
    let r = call(
        addr,
        "GET",
        &format!("/api/v1/groups/{GROUP}/devices/{DEVICE}/score"),
        Some(TABLET),
    )
    .await
    .unwrap();
    assert_eq!((r.status, &r.body["score"]), (200, &json!(100)), "{r:?}");
    // …and reads the ledger: dev-1's election is in it (once the winner
    // has written it).
    let ledger = format!("/api/v1/groups/{GROUP}/ledger");
    wait_until(
        "a read-only token to read dev-1's election",
        ANSWER_WITHIN,
        || async {
            let r = call(addr, "GET", &ledger, Some(DESK)).await?;
            ensure!(r.status == 200, "{r:?}");
            ensure!(
                r.body["entries"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["server"] == "dev-1")),
                "{r:?}"
            );
            Ok(())
        },
    )
    .await
    .unwrap();

    // A read-only token over WebSocket: the upgrade carries the header.
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("ws://{addr}/api/v1/groups/{GROUP}/events/ws?last=1");
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {DESK}").parse().unwrap());
        let (_ws, response) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(response.status().as_u16(), 101);
        let refused = tokio_tungstenite::connect_async(url.as_str()).await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 401, "a WebSocket without a token")
            }
            other => panic!("a WebSocket without a token was not refused: {other:?}"),
        }
    }

    // Without any token configured: reads open, writes refused (401).
    let open_gw = start_gateway(&nats.url(), None).await;
    let status = format!("/api/v1/groups/{GROUP}");
    wait_until(
        "the open gateway to read the group",
        SERVER_WITHIN,
        || async {
            let r = call(open_gw.http(), "GET", &status, None).await?;
            ensure!(r.status == 200, "{r:?}");
            Ok(())
        },
    )
    .await
    .unwrap();
    let score = format!("/api/v1/groups/{GROUP}/devices/{DEVICE}/score");
    for token in [None, Some(ADMIN)] {
        let r = call(open_gw.http(), "PUT", &score, token).await.unwrap();
        assert_eq!((r.status, r.code()), (401, "unauthorized"), "{r:?}");
    }
}

// ---------------------------------------------------------------- TCP roles

/// A TCP control connection.
struct Tcp {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
    events: Vec<Value>,
}

impl Tcp {
    async fn connect(addr: SocketAddr) -> Tcp {
        let (read, write) = TcpStream::connect(addr).await.unwrap().into_split();
        Tcp {
            lines: BufReader::new(read).lines(),
            write,
            events: Vec::new(),
        }
    }

    async fn line(&mut self) -> Value {
        let line = tokio::time::timeout(ANSWER_WITHIN, self.lines.next_line())
            .await
            .expect("a TCP line in time")
            .unwrap()
            .expect("the connection stays open");
        serde_json::from_str(&line).unwrap()
    }

    /// Sends a request and returns its reply (event lines are kept).
    async fn call(&mut self, req: Value) -> Value {
        self.write
            .write_all(format!("{req}\n").as_bytes())
            .await
            .unwrap();
        loop {
            let v = self.line().await;
            if let Some(ev) = v.get("event") {
                self.events.push(ev.clone());
            } else {
                assert_eq!(v["id"], req["id"], "reply {v} to {req}");
                return v;
            }
        }
    }

    /// The error code of a request, or "ok".
    async fn outcome(&mut self, req: Value) -> String {
        let r = self.call(req).await;
        if r["ok"] == true {
            "ok".into()
        } else {
            r["error"]["code"].as_str().unwrap_or("?").to_string()
        }
    }

    /// The next event frame.
    async fn event(&mut self) -> Value {
        if !self.events.is_empty() {
            return self.events.remove(0);
        }
        let v = self.line().await;
        v.get("event")
            .cloned()
            .unwrap_or_else(|| panic!("not an event: {v}"))
    }
}

/// Every read command and every write command (with harmless values).
fn tcp_reads() -> Vec<Value> {
    vec![
        json!({"id": "groups", "cmd": "groups"}),
        json!({"id": "status", "cmd": "status", "group": GROUP}),
        json!({"id": "devices", "cmd": "devices", "group": GROUP}),
        json!({"id": "get_score", "cmd": "get_score", "group": GROUP, "device": DEVICE}),
        json!({"id": "hold_status", "cmd": "hold_status", "group": GROUP}),
        json!({"id": "ledger", "cmd": "ledger", "group": GROUP, "limit": 5}),
        json!({"id": "why", "cmd": "why", "group": GROUP}),
    ]
}

fn tcp_writes() -> Vec<Value> {
    vec![
        json!({"id": "set_score", "cmd": "set_score", "group": GROUP, "device": DEVICE, "score": 100}),
        json!({"id": "set_online", "cmd": "set_online", "group": GROUP, "device": DEVICE, "online": true}),
        json!({"id": "trigger", "cmd": "trigger", "group": GROUP}),
        json!({"id": "hold", "cmd": "hold", "group": GROUP, "held": false}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_auth_gives_the_same_roles_as_http() {
    let (_nats, _devices, gw) = lab(("UNDERSTUDY_READ_TOKENS", format!("{DESK},{TABLET}"))).await;

    // Before `auth`, nothing: reads and subscriptions are refused too.
    let mut tcp = Tcp::connect(gw.tcp()).await;
    let subscribe = json!({"id": "sub", "cmd": "subscribe", "group": GROUP, "last": 1});
    for req in tcp_reads()
        .into_iter()
        .chain(tcp_writes())
        .chain([subscribe.clone()])
    {
        assert_eq!(tcp.outcome(req.clone()).await, "unauthorized", "{req}");
    }
    // An unknown token: refused, and still nothing allowed.
    let r = tcp
        .call(json!({"id": 1, "cmd": "auth", "token": "not-a-token"}))
        .await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    assert_eq!(tcp.outcome(tcp_reads()[1].clone()).await, "unauthorized");

    // A read-only token: every read and a subscription, every write forbidden.
    let r = tcp
        .call(json!({"id": 2, "cmd": "auth", "token": TABLET}))
        .await;
    assert_eq!(
        r["result"],
        json!({"authorised": true, "role": "read"}),
        "{r}"
    );
    for req in tcp_reads() {
        assert_eq!(tcp.outcome(req.clone()).await, "ok", "{req}");
    }
    for req in tcp_writes() {
        assert_eq!(tcp.outcome(req.clone()).await, "forbidden", "{req}");
    }
    assert_eq!(tcp.outcome(subscribe.clone()).await, "ok");
    let ev = tcp.event().await;
    assert_eq!(ev["event"]["group"], GROUP, "{ev}");

    // A failed `auth` drops the role the connection had.
    let r = tcp
        .call(json!({"id": 3, "cmd": "auth", "token": "wrong"}))
        .await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    assert_eq!(tcp.outcome(tcp_reads()[0].clone()).await, "unauthorized");

    // The admin token: everything.
    let mut admin = Tcp::connect(gw.tcp()).await;
    let r = admin
        .call(json!({"id": 4, "cmd": "auth", "token": ADMIN}))
        .await;
    assert_eq!(
        r["result"],
        json!({"authorised": true, "role": "admin"}),
        "{r}"
    );
    for req in tcp_reads().into_iter().chain(tcp_writes()) {
        assert_eq!(admin.outcome(req.clone()).await, "ok", "{req}");
    }
}

// ---------------------------------------------------------------------- HTTPS

/// `GET path` over HTTPS (trusting only `ca`), with `token` if any: the
/// status line and the body.
async fn https_get(
    addr: SocketAddr,
    ca: &[u8],
    path: &str,
    token: Option<&str>,
) -> Result<(String, String)> {
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, pki_types};
    let mut roots = RootCertStore::empty();
    roots.add(pki_types::CertificateDer::from(ca.to_vec()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let exchange = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = pki_types::ServerName::try_from("localhost")?;
        let mut tls = connector.connect(name, tcp).await?;
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.lines().next().unwrap_or_default().to_string();
        anyhow::Ok((status, body.to_string()))
    };
    tokio::time::timeout(ANSWER_WITHIN, exchange).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_certificate_the_api_answers_over_https_with_the_same_roles() {
    let nats = start_nats().await;
    let dir = TempDir::new("gateway-tls").unwrap();
    let pki = understudy_testkit::secure::make_pki(dir.path(), "gateway-").unwrap();
    let (ca, cert, key) = (pki.ca_der, pki.cert, pki.key);
    let mut opts = GatewayOpts::free_ports(Some(ADMIN)).unwrap();
    opts.env
        .push(("UNDERSTUDY_READ_TOKENS".into(), DESK.into()));
    opts.env.push((
        "UNDERSTUDY_GATEWAY_TLS_CERT".into(),
        cert.display().to_string(),
    ));
    opts.env.push((
        "UNDERSTUDY_GATEWAY_TLS_KEY".into(),
        key.display().to_string(),
    ));
    let gw = start_gateway_on(&nats.url(), opts).await;
    let addr = gw.http();

    let (status, body) = https_get(addr, &ca, "/api/v1/groups", Some(DESK))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.contains("\"groups\""), "{body}");
    let (status, _) = https_get(addr, &ca, "/api/v1/groups", None).await.unwrap();
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    let (status, body) = https_get(addr, &ca, "/", None).await.unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("token-form"), "the dashboard");

    // Plain HTTP on the TLS port gets no answer.
    let plain = harness::http::get(addr, "/api/v1/groups").await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
}
