//! End to end: the JSON control gateway (docs/control.md) as a real
//! `understudy gateway` process between test clients and real `understudy
//! node` devices on a real nats-server. HTTP through hyper's client, TCP as
//! newline-delimited JSON, WebSocket through tokio-tungstenite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use futures::StreamExt;
use harness::http::{Reply, Sse, request};
use harness::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use understudy_protocol::subjects;

const GROUP: &str = "stage";
const TOKEN: &str = "e2e-secret";
/// The admin token as an `Authorization` header value.
const BEARER: &str = "Bearer e2e-secret";
/// Grace (2 s) plus room for a loaded 2-core machine.
const SERVER_WITHIN: Duration = Duration::from_secs(15);
/// Presence is announced every second; counts follow within a few.
const COUNTS_WITHIN: Duration = Duration::from_secs(10);
/// One request or one event, on a loaded machine.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// A nats-server, `n` devices of [`GROUP`] (dev-1 … dev-n, scores given) and
/// a gateway with [`TOKEN`]; returns once the group has a server.
async fn lab(scores: &[u8]) -> (NatsServer, Vec<Device>, Gateway) {
    let nats = start_nats().await;
    let urls = vec![nats.url()];
    let devices: Vec<Device> = scores
        .iter()
        .enumerate()
        .map(|(i, s)| spawn_device(&urls, DeviceOpts::numbered(GROUP, i as u8 + 1, *s)))
        .collect();
    let gw = start_gateway(&nats.url(), Some(TOKEN)).await;
    wait_until("the group to have a server", SERVER_WITHIN, || async {
        let r = get(gw.http(), &format!("/api/v1/groups/{GROUP}")).await?;
        let doc = r.json()?;
        ensure!(r.status == 200, "status {}: {doc}", r.status);
        ensure!(!doc["server"].is_null(), "no server yet");
        Ok(())
    })
    .await
    .unwrap();
    (nats, devices, gw)
}

/// `GET path` with the admin token: a gateway with a token configured wants
/// one on reads too (tests/gateway_roles_e2e.rs checks the roles); a gateway
/// without one ignores it on reads.
async fn get(addr: SocketAddr, path: &str) -> Result<Reply> {
    request(addr, "GET", path, &[("Authorization", BEARER)], None).await
}

/// A WebSocket request for `path` carrying the admin token.
fn ws_request(
    gw: &Gateway,
    path: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}{path}", gw.http())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", BEARER.parse().unwrap());
    req
}

/// The `error.code` of a JSON error answer, checking its shape.
fn error_code(r: &Reply) -> String {
    let doc = r.json().unwrap();
    assert_eq!(r.header("content-type"), Some("application/json"), "{doc}");
    let code = doc["error"]["code"].as_str().unwrap_or_else(|| {
        panic!("no error.code in {doc}");
    });
    assert!(
        doc["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "no error.message in {doc}"
    );
    code.to_string()
}

/// A mutating call with JSON body and the token.
async fn put_json(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    request(
        addr,
        "PUT",
        path,
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {TOKEN}")),
        ],
        Some(body.to_string().as_bytes()),
    )
    .await
    .unwrap()
}

fn score_path(device: &str) -> String {
    format!("/api/v1/groups/{GROUP}/devices/{device}/score")
}

async fn status_doc(gw: &Gateway) -> Result<Value> {
    let r = get(gw.http(), &format!("/api/v1/groups/{GROUP}")).await?;
    ensure!(r.status == 200, "status {}", r.status);
    r.json()
}

async fn wait_server(gw: &Gateway, device: &str) {
    wait_until(&format!("{device} to serve"), SERVER_WITHIN, || async {
        let doc = status_doc(gw).await?;
        ensure!(
            doc["server"]["device"] == device,
            "server is {}",
            doc["server"]
        );
        Ok(())
    })
    .await
    .unwrap();
}

async fn wait_sessions(gw: &Gateway, gui: u64, control: u64) {
    wait_until(
        &format!("{gui} GUI and {control} control session(s)"),
        COUNTS_WITHIN,
        || async {
            let c = status_doc(gw).await?["counts"].clone();
            ensure!(
                c["gui_sessions"] == gui && c["control_sessions"] == control,
                "counts {c}"
            );
            Ok(())
        },
    )
    .await
    .unwrap();
}

// ----------------------------------------------------------------- TCP client

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

    async fn send_raw(&mut self, line: &[u8]) {
        self.write.write_all(line).await.unwrap();
        self.write.write_all(b"\n").await.unwrap();
    }

    /// The next line that is a reply (event lines are kept in `events`).
    async fn reply(&mut self) -> Value {
        loop {
            let line = tokio::time::timeout(ANSWER_WITHIN, self.lines.next_line())
                .await
                .expect("a TCP line in time")
                .unwrap()
                .expect("the connection stays open");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v.get("event").is_some() {
                self.events.push(v["event"].clone());
            } else {
                return v;
            }
        }
    }

    /// Sends a request and returns its reply.
    async fn call(&mut self, req: Value) -> Value {
        self.send_raw(req.to_string().as_bytes()).await;
        let reply = self.reply().await;
        assert_eq!(reply["id"], req["id"], "reply {reply} to {req}");
        reply
    }

    /// Authenticates with the admin token.
    async fn auth(&mut self) {
        let r = self
            .call(json!({"id": "auth", "cmd": "auth", "token": TOKEN}))
            .await;
        assert_eq!(
            r["result"],
            json!({"authorised": true, "role": "admin"}),
            "{r}"
        );
    }

    /// The error code of a refused request.
    async fn error(&mut self, req: Value) -> String {
        let r = self.call(req.clone()).await;
        assert_eq!(r["ok"], false, "{req} -> {r}");
        assert!(r["error"]["message"].as_str().is_some(), "{r}");
        r["error"]["code"].as_str().unwrap().to_string()
    }

    /// The next event frame `{"id","type","event"}`.
    async fn event(&mut self) -> Value {
        if !self.events.is_empty() {
            return self.events.remove(0);
        }
        let line = tokio::time::timeout(ANSWER_WITHIN, self.lines.next_line())
            .await
            .expect("a TCP event in time")
            .unwrap()
            .expect("the connection stays open");
        let v: Value = serde_json::from_str(&line).unwrap();
        v.get("event")
            .cloned()
            .unwrap_or_else(|| panic!("not an event: {v}"))
    }
}

// ---------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_reads_and_controls_a_group() {
    let (_nats, _devices, gw) = lab(&[100, 200, 50]).await;
    wait_server(&gw, "dev-2").await;

    // Groups seen in device presence.
    wait_until("the group listed", COUNTS_WITHIN, || async {
        let doc = get(gw.http(), "/api/v1/groups").await?.json()?;
        ensure!(
            doc["groups"] == json!([{"group": GROUP, "devices": 3}]),
            "{doc}"
        );
        Ok(())
    })
    .await
    .unwrap();

    // Status: roster, counts and the gateway's colour summary.
    let doc = status_doc(&gw).await.unwrap();
    assert_eq!(doc["group"], GROUP);
    assert_eq!(doc["counts"]["devices_online"], 3, "{doc}");
    assert_eq!(doc["counts"]["servers"], 1, "{doc}");
    assert_eq!(doc["counts"]["clients"], 2, "{doc}");
    assert_eq!(doc["term"], doc["server"]["term"]);
    let colours = &doc["colours"];
    assert_eq!(
        colours["grey"].as_u64().unwrap()
            + colours["blue"].as_u64().unwrap()
            + colours["red"].as_u64().unwrap(),
        3,
        "{doc}"
    );
    assert!(doc["problems"].is_array());

    // Devices and one device.
    let r = get(gw.http(), &format!("/api/v1/groups/{GROUP}/devices"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let names: Vec<String> = r.json().unwrap()["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["dev-1", "dev-2", "dev-3"]);
    let r = get(gw.http(), &format!("/api/v1/groups/{GROUP}/devices/dev-3"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json().unwrap()["score"], 50);

    // Get a score, set one: the server changes.
    let r = get(gw.http(), &score_path("dev-1")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json().unwrap(),
        json!({"group": GROUP, "device": "dev-1", "score": 100})
    );
    let r = put_json(gw.http(), &score_path("dev-3"), &json!({"score": 250})).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let doc = r.json().unwrap();
    assert_eq!(doc["score"], 250);
    assert_eq!(doc["device"], "dev-3");
    assert!(doc.get("server").is_some());
    wait_server(&gw, "dev-3").await;
    let r = get(gw.http(), &score_path("dev-3")).await.unwrap();
    assert_eq!(r.json().unwrap()["score"], 250);

    // Trigger an election: 202, and the group keeps its rightful server.
    let r = request(
        gw.http(),
        "POST",
        &format!("/api/v1/groups/{GROUP}/election"),
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202);
    let doc = r.json().unwrap();
    assert_eq!(
        (&doc["group"], &doc["triggered"], &doc["held"]),
        (&json!(GROUP), &json!(true), &json!(false)),
        "{doc}"
    );
    assert!(
        doc["device"]
            .as_str()
            .is_some_and(|d| d.starts_with("dev-")),
        "{doc}"
    );
    wait_server(&gw, "dev-3").await;

    // Offline, then online again.
    let online = format!("/api/v1/groups/{GROUP}/devices/dev-1/online");
    let r = put_json(gw.http(), &online, &json!({"online": false})).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json().unwrap(),
        json!({"group": GROUP, "device": "dev-1", "online": false})
    );
    wait_until("dev-1 offline", COUNTS_WITHIN, || async {
        let doc = status_doc(&gw).await?;
        ensure!(doc["counts"]["devices_offline"] == 1, "{}", doc["counts"]);
        Ok(())
    })
    .await
    .unwrap();
    let r = put_json(gw.http(), &online, &json!({"online": true})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json().unwrap()["online"], true);
    wait_until("dev-1 online", COUNTS_WITHIN, || async {
        let doc = status_doc(&gw).await?;
        ensure!(
            doc["counts"]["devices_online"] == 3 && doc["counts"]["devices_offline"] == 0,
            "{}",
            doc["counts"]
        );
        Ok(())
    })
    .await
    .unwrap();

    // TCP `reset_score`: dev-3 forgets its stored 250 and returns to its
    // configured 50; the best device, dev-2, takes over again.
    let mut tcp = Tcp::connect(gw.tcp()).await;
    tcp.auth().await;
    let r = tcp
        .call(json!({"id": 1, "cmd": "reset_score", "group": GROUP, "device": "dev-3"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["score"], 50, "{r}");
    wait_server(&gw, "dev-2").await;

    // The OpenAPI document and the dashboard are served.
    let r = get(gw.http(), "/api/v1/openapi.json").await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.json().unwrap()["paths"].is_object());
    let r = get(gw.http(), "/").await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_json_error_with_the_right_status_on_http_and_tcp() {
    let (nats, _devices, gw) = lab(&[100, 200]).await;
    let path = score_path("dev-1");

    // Scores: wrong type is invalid_json, out of range is score_out_of_range.
    let cases: [(&str, u16, &str); 4] = [
        (r#"{"score":256}"#, 422, "score_out_of_range"),
        (r#"{"score":-1}"#, 422, "score_out_of_range"),
        (r#"{"score":1.5}"#, 400, "invalid_json"),
        (r#"{"score":"ten"}"#, 400, "invalid_json"),
    ];
    for (body, status, code) in cases {
        let v: Value = serde_json::from_str(body).unwrap();
        let r = put_json(gw.http(), &path, &v).await;
        assert_eq!(
            (r.status, error_code(&r).as_str()),
            (status, code),
            "{body}"
        );
    }
    let auth = format!("Bearer {TOKEN}");
    let json_auth = [
        ("Content-Type", "application/json"),
        ("Authorization", auth.as_str()),
    ];
    let check = |r: Reply, status: u16, code: &str, what: &str| {
        assert_eq!(
            (r.status, error_code(&r).as_str()),
            (status, code),
            "{what}"
        );
    };
    // Malformed JSON, wrong content type, oversized body.
    let r = request(gw.http(), "PUT", &path, &json_auth, Some(b"{\"score\": 1"))
        .await
        .unwrap();
    check(r, 400, "invalid_json", "malformed JSON");
    let r = request(
        gw.http(),
        "PUT",
        &path,
        &[("Content-Type", "text/plain"), ("Authorization", &auth)],
        Some(b"{\"score\": 1}"),
    )
    .await
    .unwrap();
    check(r, 415, "unsupported_media_type", "text/plain body");
    let big = format!("{{\"score\": 1, \"pad\": \"{}\"}}", "x".repeat(20_000));
    let r = request(gw.http(), "PUT", &path, &json_auth, Some(big.as_bytes()))
        .await
        .unwrap();
    check(r, 413, "payload_too_large", "20 kB body");
    // Unknown group, unknown device, bad names.
    let r = put_json(
        gw.http(),
        "/api/v1/groups/nosuchgroup/devices/dev-1/score",
        &json!({"score": 1}),
    )
    .await;
    check(r, 404, "unknown_group", "unknown group (PUT)");
    let r = get(gw.http(), "/api/v1/groups/nosuchgroup").await.unwrap();
    check(r, 404, "unknown_group", "unknown group (GET)");
    let r = put_json(gw.http(), &score_path("dev-9"), &json!({"score": 1})).await;
    check(r, 404, "unknown_device", "unknown device (PUT)");
    let r = get(gw.http(), &format!("/api/v1/groups/{GROUP}/devices/dev-9"))
        .await
        .unwrap();
    check(r, 404, "unknown_device", "unknown device (GET)");
    let r = get(gw.http(), "/api/v1/groups/bad%20name").await.unwrap();
    check(r, 400, "invalid_name", "a name with a space");
    // Missing or wrong token.
    let r = request(
        gw.http(),
        "PUT",
        &path,
        &[("Content-Type", "application/json")],
        Some(b"{\"score\": 1}"),
    )
    .await
    .unwrap();
    check(r, 401, "unauthorized", "no token");
    let r = request(
        gw.http(),
        "POST",
        &format!("/api/v1/groups/{GROUP}/election"),
        &[("Authorization", "Bearer wrong")],
        None,
    )
    .await
    .unwrap();
    check(r, 401, "unauthorized", "wrong token");
    // Unknown path, wrong method.
    let r = get(gw.http(), "/api/v1/nothing/here").await.unwrap();
    check(r, 404, "not_found", "unknown path");
    let r = request(gw.http(), "DELETE", "/api/v1/groups", &[], None)
        .await
        .unwrap();
    check(r, 405, "method_not_allowed", "DELETE");
    // Nothing changed.
    let r = get(gw.http(), &path).await.unwrap();
    assert_eq!(r.json().unwrap()["score"], 100);

    // The same over TCP.
    let mut tcp = Tcp::connect(gw.tcp()).await;
    let set = |id: u64, score: Value| json!({"id": id, "cmd": "set_score", "group": GROUP, "device": "dev-1", "score": score});
    assert_eq!(tcp.error(set(1, json!(5))).await, "unauthorized");
    assert_eq!(
        tcp.error(json!({"id": 2, "cmd": "auth", "token": "wrong"}))
            .await,
        "unauthorized"
    );
    assert_eq!(tcp.error(set(3, json!(5))).await, "unauthorized");
    tcp.auth().await;
    assert_eq!(tcp.error(set(4, json!(256))).await, "score_out_of_range");
    assert_eq!(tcp.error(set(5, json!(-1))).await, "score_out_of_range");
    assert_eq!(tcp.error(set(6, json!(1.5))).await, "invalid_json");
    assert_eq!(tcp.error(set(7, json!("ten"))).await, "invalid_json");
    assert_eq!(
        tcp.error(json!({"id": 8, "cmd": "status", "group": "nosuchgroup"}))
            .await,
        "unknown_group"
    );
    assert_eq!(
        tcp.error(json!({"id": 9, "cmd": "get_score", "group": GROUP, "device": "dev-9"}))
            .await,
        "unknown_device"
    );
    assert_eq!(
        tcp.error(json!({"id": 10, "cmd": "status", "group": "a.b"}))
            .await,
        "invalid_name"
    );
    assert_eq!(
        tcp.error(json!({"id": 11, "cmd": "dance"})).await,
        "not_found"
    );
    assert_eq!(
        tcp.error(json!({"id": 12, "cmd": "set_online", "group": GROUP, "device": "dev-1", "online": "yes"}))
            .await,
        "invalid_json"
    );
    // Malformed JSON and an oversized line: refused, the connection stays usable.
    tcp.send_raw(b"{\"id\": 13, \"cmd\": ").await;
    let r = tcp.reply().await;
    assert_eq!(
        (r["ok"].clone(), r["error"]["code"].clone()),
        (json!(false), json!("invalid_json")),
        "{r}"
    );
    tcp.send_raw(format!("{{\"id\":14,\"pad\":\"{}\"}}", "x".repeat(20_000)).as_bytes())
        .await;
    let r = tcp.reply().await;
    assert_eq!(r["error"]["code"], "payload_too_large", "{r}");
    let r = tcp.call(json!({"id": 15, "cmd": "groups"})).await;
    assert_eq!(r["ok"], true, "{r}");
    let r = tcp
        .call(json!({"id": 16, "cmd": "get_score", "group": GROUP, "device": "dev-1"}))
        .await;
    assert_eq!(
        r,
        json!({"id": 16, "ok": true, "result": {"group": GROUP, "device": "dev-1", "score": 100}})
    );

    // A gateway without a token refuses every mutating call, even with one.
    let open = start_gateway(&nats.url(), None).await;
    let r = put_json(open.http(), &path, &json!({"score": 1})).await;
    check(r, 401, "unauthorized", "gateway without a token");
    let mut tcp = Tcp::connect(open.tcp()).await;
    assert_eq!(
        tcp.error(json!({"id": 1, "cmd": "auth", "token": TOKEN}))
            .await,
        "unauthorized"
    );
    assert_eq!(
        tcp.error(json!({"id": 2, "cmd": "trigger", "group": GROUP}))
            .await,
        "unauthorized"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_sessions_show_in_the_counts() {
    let (_nats, _devices, gw) = lab(&[100, 200]).await;
    wait_sessions(&gw, 0, 0).await;

    let dashboard = Sse::open(
        gw.http(),
        &format!("/api/v1/groups/{GROUP}/events?client=dashboard&last=0"),
        &[("Authorization", BEARER)],
    )
    .await
    .unwrap();
    wait_sessions(&gw, 1, 0).await;

    let (ws, _) = tokio_tungstenite::connect_async(ws_request(
        &gw,
        &format!("/api/v1/groups/{GROUP}/events/ws?last=0"),
    ))
    .await
    .unwrap();
    wait_sessions(&gw, 1, 1).await;

    let mut tcp = Tcp::connect(gw.tcp()).await;
    tcp.auth().await;
    let r = tcp
        .call(json!({"id": 1, "cmd": "subscribe", "group": GROUP, "last": 0}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    wait_sessions(&gw, 1, 2).await;

    drop(dashboard);
    drop(ws);
    drop(tcp);
    wait_sessions(&gw, 0, 0).await;
}

/// The events of [`GROUP`] in the stream with a sequence in `from..=to`, read
/// straight from JetStream: the reference a late subscriber must match.
async fn stream_events(client: &async_nats::Client, from: u64, to: u64) -> Vec<u64> {
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(subjects::EVENTS_STREAM).await.unwrap();
    let ours = subjects::group_events(&GROUP.parse().unwrap());
    let mut ids = Vec::new();
    for seq in from..=to {
        if let Ok(m) = stream.get_raw_message(seq).await
            && subjects::matches(&ours, m.subject.as_str())
        {
            ids.push(seq);
        }
    }
    ids
}

async fn last_sequence(client: &async_nats::Client) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream(subjects::EVENTS_STREAM).await.unwrap();
    stream.info().await.unwrap().state.last_sequence
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// The id of the next WebSocket event frame, checking its shape.
async fn next_ws(ws: &mut Ws) -> u64 {
    let msg = tokio::time::timeout(ANSWER_WITHIN, ws.next())
        .await
        .expect("a WebSocket frame in time")
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
    assert!(v["type"] == "election" || v["type"] == "project", "{v}");
    assert!(v["event"]["type"].is_string(), "{v}");
    assert_eq!(v["event"]["group"], GROUP, "{v}");
    v["id"].as_u64().unwrap()
}

/// Checks what a late subscriber got: exactly `missed`, then `live` ids, all
/// increasing (no duplicate, no gap against the stream).
fn check_resumed(got: &[u64], missed: &[u64], what: &str) {
    assert!(
        got.len() > missed.len(),
        "{what}: got {got:?}, missed {missed:?}"
    );
    assert_eq!(&got[..missed.len()], missed, "{what}: the missed events");
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "{what}: ids not increasing: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_subscribers_get_exactly_the_missed_events_then_live_ones() {
    let (nats, _devices, gw) = lab(&[100, 200, 50]).await;
    let client = nats.client().await.unwrap();
    wait_server(&gw, "dev-2").await;
    // Some history: a score change moves the server (more events).
    put_json(gw.http(), &score_path("dev-1"), &json!({"score": 250})).await;
    wait_server(&gw, "dev-1").await;
    let last = last_sequence(&client).await;
    let history = stream_events(&client, 1, last).await;
    assert!(history.len() >= 4, "history {history:?}");
    // A subscriber that saw up to the middle of the history.
    let seen = history[history.len() / 2 - 1];
    let missed: Vec<u64> = history.iter().copied().filter(|id| *id > seen).collect();

    // WebSocket with after=N.
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(
        &gw,
        &format!("/api/v1/groups/{GROUP}/events/ws?after={seen}"),
    ))
    .await
    .unwrap();
    let mut ws_ids = Vec::new();
    while ws_ids.len() < missed.len() {
        ws_ids.push(next_ws(&mut ws).await);
    }

    // SSE with Last-Event-ID (which wins over ?after=0) and TCP with after.
    let mut sse = Sse::open(
        gw.http(),
        &format!("/api/v1/groups/{GROUP}/events?after=0"),
        &[
            ("Last-Event-ID", &seen.to_string()),
            ("Authorization", BEARER),
        ],
    )
    .await
    .unwrap();
    let mut sse_ids = Vec::new();
    while sse_ids.len() < missed.len() {
        let (id, kind, data) = sse.next_within(ANSWER_WITHIN).await;
        assert!(kind == "election" || kind == "project", "{kind}");
        assert_eq!(data["group"], GROUP);
        sse_ids.push(id);
    }
    let mut tcp = Tcp::connect(gw.tcp()).await;
    tcp.auth().await;
    let r = tcp
        .call(json!({"id": 1, "cmd": "subscribe", "group": GROUP, "after": seen}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let mut tcp_ids = Vec::new();
    while tcp_ids.len() < missed.len() {
        tcp_ids.push(tcp.event().await["id"].as_u64().unwrap());
    }

    // A live event: give dev-3 the top score.
    put_json(gw.http(), &score_path("dev-3"), &json!({"score": 255})).await;
    ws_ids.push(next_ws(&mut ws).await);
    sse_ids.push(sse.next_within(ANSWER_WITHIN).await.0);
    tcp_ids.push(tcp.event().await["id"].as_u64().unwrap());
    check_resumed(&ws_ids, &missed, "WebSocket after=N");
    check_resumed(&sse_ids, &missed, "SSE Last-Event-ID");
    check_resumed(&tcp_ids, &missed, "TCP subscribe after");
    // The live one is the group's first event after the history, in all three.
    let live = *ws_ids.last().unwrap();
    assert!(live > last);
    let between = stream_events(&client, last + 1, live).await;
    assert_eq!(between.first(), Some(&live), "events between: {between:?}");
    assert_eq!(sse_ids.last(), Some(&live));
    assert_eq!(tcp_ids.last(), Some(&live));

    // last=K without a resume point: the last K events.
    let now_last = last_sequence(&client).await;
    let all = stream_events(&client, 1, now_last).await;
    let mut recent = Sse::open(
        gw.http(),
        &format!("/api/v1/groups/{GROUP}/events?last=2"),
        &[("Authorization", BEARER)],
    )
    .await
    .unwrap();
    let first = recent.next_within(ANSWER_WITHIN).await.0;
    assert!(
        all.len() >= 2 && first >= all[all.len() - 2],
        "last=2 began at {first}, the group's events are {all:?}"
    );
    let _ = ws.close(None).await;
}

// ------------------------------------------------------------------ show hold

fn hold_path() -> String {
    format!("/api/v1/groups/{GROUP}/hold")
}

/// `GET /hold`, checked to be a 200.
async fn hold_doc(gw: &Gateway) -> Result<Value> {
    let r = get(gw.http(), &hold_path()).await?;
    ensure!(r.status == 200, "status {}: {}", r.status, r.text());
    r.json()
}

/// `POST /election` (with `?force=true` when `force`).
async fn trigger(gw: &Gateway, force: bool) -> Reply {
    let path = format!(
        "/api/v1/groups/{GROUP}/election{}",
        if force { "?force=true" } else { "" }
    );
    request(gw.http(), "POST", &path, &[("Authorization", BEARER)], None)
        .await
        .unwrap()
}

/// An RFC 3339 time `ahead` from now (UTC, whole seconds).
fn rfc3339_in(ahead: Duration) -> String {
    let at = std::time::SystemTime::now() + ahead;
    let secs = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let t = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Asserts over `window` (polling the gateway's status) that no device
/// but `device` serves: neither as the roster's server nor by its own role
/// (a device that has just started may not know the server yet, and its
/// roster says `null`), and that `device` serves at the end.
async fn keeps_serving(gw: &Gateway, device: &str, window: Duration) {
    let end = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < end {
        let doc = status_doc(gw).await.unwrap();
        let server = &doc["server"]["device"];
        assert!(
            server.is_null() || server == device,
            "{server} serves while the group was held ({device} did)"
        );
        for d in doc["devices"].as_array().unwrap() {
            assert!(
                d["role"] != "server" || d["device"] == device,
                "{} serves while the group was held ({device} did)",
                d["device"]
            );
        }
        tokio::time::sleep(POLL).await;
    }
    wait_server(gw, device).await;
}

/// Waits until the roster shows `device` live and online (a restarted
/// device is heard again).
async fn wait_live(gw: &Gateway, device: &str) {
    wait_until(&format!("{device} live again"), SERVER_WITHIN, || async {
        let doc = status_doc(gw).await?;
        let d = doc["devices"]
            .as_array()
            .and_then(|ds| ds.iter().find(|d| d["device"] == device).cloned())
            .unwrap_or(Value::Null);
        ensure!(d["live"] == true && d["online"] == true, "{d}");
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_set_through_the_gateway_holds_shows_and_lifts_on_http_and_tcp() {
    let (_nats, mut devices, gw) = lab(&[100, 200]).await;
    wait_server(&gw, "dev-2").await;

    // Never set: not held.
    let doc = hold_doc(&gw).await.unwrap();
    assert_eq!(doc, json!({"group": GROUP, "held": false, "record": null}));

    // On, until an hour from now, with a reason.
    let until = rfc3339_in(Duration::from_secs(3600));
    let r = put_json(
        gw.http(),
        &hold_path(),
        &json!({"held": true, "until": until, "reason": "evening show"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json().unwrap();
    assert_eq!(doc["held"], true, "{doc}");
    assert_eq!(doc["record"]["reason"], "evening show", "{doc}");
    assert_eq!(doc["record"]["set_by"], "gateway", "{doc}");
    let until_ms = doc["record"]["until_ms"].as_u64().unwrap();
    assert!(
        until_ms.abs_diff(unix_ms_now() + 3_600_000) < 10_000,
        "{doc}"
    );
    let doc = hold_doc(&gw).await.unwrap();
    assert_eq!(doc["held"], true, "{doc}");
    assert_eq!(doc["record"]["until_ms"], until_ms, "{doc}");
    let status = status_doc(&gw).await.unwrap();
    assert_eq!(status["hold"]["held"], true, "{status}");
    assert_eq!(status["hold"]["record"]["reason"], "evening show");

    // Held: losing the server still fails over at once; the better device
    // coming back does not take the server back.
    devices[1].kill9();
    wait_server(&gw, "dev-1").await;
    devices[1].restart().unwrap();
    wait_live(&gw, "dev-2").await;
    keeps_serving(&gw, "dev-1", Duration::from_secs(5)).await;

    // A trigger without force is refused while held: 409, and nothing moves.
    let r = trigger(&gw, false).await;
    assert_eq!((r.status, error_code(&r).as_str()), (409, "held"));
    let message = r.json().unwrap()["error"]["message"].to_string();
    assert!(message.contains("use force"), "{message}");
    let mut tcp = Tcp::connect(gw.tcp()).await;
    tcp.auth().await;
    let r = tcp
        .call(json!({"id": "hs", "cmd": "hold_status", "group": GROUP}))
        .await;
    assert_eq!(r["result"]["held"], true, "{r}");
    let code = tcp
        .error(json!({"id": "t", "cmd": "trigger", "group": GROUP}))
        .await;
    assert_eq!(code, "held");
    wait_server(&gw, "dev-1").await;

    // With force: an election, and the best device (dev-2) serves.
    let r = trigger(&gw, true).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let doc = r.json().unwrap();
    assert_eq!(
        (doc["triggered"].clone(), doc["held"].clone()),
        (json!(true), json!(true))
    );
    wait_server(&gw, "dev-2").await;

    // Lifted over TCP (named), put on and lifted again over HTTP.
    let r = tcp
        .call(json!({"id": "off", "cmd": "hold", "group": GROUP, "held": false, "by": "desk"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["held"], false, "{r}");
    assert_eq!(r["result"]["record"]["set_by"], "desk", "{r}");
    let r = tcp
        .call(json!({"id": "on", "cmd": "hold", "group": GROUP, "held": true, "reason": "tcp"}))
        .await;
    assert_eq!(r["result"]["held"], true, "{r}");
    assert_eq!(hold_doc(&gw).await.unwrap()["record"]["reason"], "tcp");
    let r = put_json(gw.http(), &hold_path(), &json!({"held": false})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = hold_doc(&gw).await.unwrap();
    assert_eq!(doc["held"], false, "{doc}");
    assert_eq!(doc["record"]["held"], false, "{doc}");
    assert_eq!(status_doc(&gw).await.unwrap()["hold"]["held"], false);
    // Not held: a plain trigger is taken again (once every device has
    // seen the lifted hold in the bucket).
    wait_until("a plain trigger taken", ANSWER_WITHIN, || async {
        let r = trigger(&gw, false).await;
        ensure!(r.status == 202, "{}: {}", r.status, r.text());
        ensure!(r.json()?["held"] == false, "{}", r.text());
        Ok(())
    })
    .await
    .unwrap();

    // Bad input: a clear 4xx on HTTP, the same code on TCP; nothing stored.
    let long = "x".repeat(201);
    let past = "2020-01-01T00:00:00Z";
    let far = rfc3339_in(Duration::from_secs(31 * 24 * 3600));
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!({"held": true, "until": past}),
            422,
            "invalid_hold",
            "not in the future",
        ),
        (
            json!({"held": true, "until": far}),
            422,
            "invalid_hold",
            "30 days",
        ),
        (
            json!({"held": true, "until": "tonight"}),
            400,
            "invalid_json",
            "RFC 3339",
        ),
        (
            json!({"held": false, "until": until}),
            422,
            "invalid_hold",
            "only for putting",
        ),
        (
            json!({"held": true, "reason": long}),
            422,
            "invalid_hold",
            "at most 200",
        ),
        (json!({"held": "yes"}), 400, "invalid_json", "true or false"),
        (json!({"until": until}), 400, "invalid_json", "held"),
    ];
    for (body, status, code, words) in cases {
        let r = put_json(gw.http(), &hold_path(), &body).await;
        assert_eq!(
            (r.status, error_code(&r).as_str()),
            (status, code),
            "{body}"
        );
        let message = r.json().unwrap()["error"]["message"].to_string();
        assert!(message.contains(words), "{body}: {message}");
        let mut req = body.clone();
        req["id"] = json!("bad");
        req["cmd"] = json!("hold");
        req["group"] = json!(GROUP);
        assert_eq!(tcp.error(req).await, code, "{body} on TCP");
    }
    let r = put_json(
        gw.http(),
        "/api/v1/groups/nosuch/hold",
        &json!({"held": true}),
    )
    .await;
    assert_eq!((r.status, error_code(&r).as_str()), (404, "unknown_group"));
    let r = request(
        gw.http(),
        "POST",
        &format!("/api/v1/groups/{GROUP}/election?force=yes"),
        &[("Authorization", BEARER)],
        None,
    )
    .await
    .unwrap();
    assert_eq!((r.status, error_code(&r).as_str()), (400, "invalid_json"));
    assert_eq!(hold_doc(&gw).await.unwrap()["held"], false);
}

/// Issue 16's acceptance: a hold set through the gateway survives a restart
/// of every device and of nats-server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_set_through_the_gateway_survives_a_restart_of_every_device_and_of_nats() {
    let (mut nats, mut devices, gw) = lab(&[100, 200]).await;
    let r = put_json(
        gw.http(),
        &hold_path(),
        &json!({"held": true, "reason": "survives"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    for d in &mut devices {
        d.kill9();
    }
    nats.restart().await.unwrap();
    // With no device running, the gateway reads the hold from the bucket
    // (once it has reconnected).
    wait_until(
        "the hold read with no device running",
        SERVER_WITHIN,
        || async {
            let doc = hold_doc(&gw).await?;
            ensure!(doc["held"] == true, "{doc}");
            ensure!(doc["record"]["reason"] == "survives", "{doc}");
            Ok(())
        },
    )
    .await
    .unwrap();
    for d in &mut devices {
        d.restart().unwrap();
    }
    wait_until(
        "the group to have a server again",
        SERVER_WITHIN,
        || async {
            let doc = status_doc(&gw).await?;
            ensure!(!doc["server"].is_null(), "no server yet");
            Ok(())
        },
    )
    .await
    .unwrap();

    // The gateway reads it back, and the devices act on it: a trigger
    // without force is refused.
    let doc = hold_doc(&gw).await.unwrap();
    assert_eq!(doc["held"], true, "{doc}");
    assert_eq!(doc["record"]["reason"], "survives", "{doc}");
    wait_until(
        "the restarted devices to know the hold",
        SERVER_WITHIN,
        || async {
            let r = trigger(&gw, false).await;
            ensure!(
                r.status == 409,
                "trigger answered {}: {}",
                r.status,
                r.text()
            );
            Ok(())
        },
    )
    .await
    .unwrap();
}

// ------------------------------------------------------------- the ledger

fn ledger_path(query: &str) -> String {
    format!("/api/v1/groups/{GROUP}/ledger{query}")
}

/// `GET …/ledger<query>`, checked to be a 200.
async fn ledger_doc(gw: &Gateway, query: &str) -> Result<Value> {
    let r = get(gw.http(), &ledger_path(query)).await?;
    ensure!(r.status == 200, "status {}: {}", r.status, r.text());
    r.json()
}

/// The `at_ms` of a ledger entry as an RFC 3339 time with milliseconds.
fn rfc3339_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Issue 16: the ledger through the gateway. A failover (the server killed
/// with SIGKILL) is the last entry: cause `server_lost`, the new server, the
/// killed one as the previous server, the candidates the winner heard; the
/// gateway answers the same entries as `understudy ledger --json`, on HTTP
/// and TCP, from a time and with a limit, and `…/why` the same document as
/// `understudy why --json`; bad input is a 400 with the error document.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_and_why_name_a_failover_its_cause_and_the_lost_server_as_the_cli_does() {
    let (nats, mut devices, gw) = lab(&[200, 150, 100]).await;
    wait_server(&gw, "dev-1").await;
    let first_term = status_doc(&gw).await.unwrap()["term"].as_u64().unwrap();
    // The winner writes its entry just after it serves.
    wait_until("dev-1's entry in the ledger", ANSWER_WITHIN, || async {
        let doc = ledger_doc(&gw, "").await?;
        let last = doc["entries"].as_array().and_then(|e| e.last()).cloned();
        let last = last.unwrap_or(Value::Null);
        ensure!(
            last["server"] == "dev-1" && last["term"] == first_term,
            "last entry {last}"
        );
        Ok(())
    })
    .await
    .unwrap();

    devices[0].kill9();
    wait_server(&gw, "dev-2").await;
    let term = status_doc(&gw).await.unwrap()["term"].as_u64().unwrap();
    let doc = wait_until(
        "the failover's entry in the ledger",
        ANSWER_WITHIN,
        || async {
            let doc = ledger_doc(&gw, "").await?;
            let last = doc["entries"].as_array().and_then(|e| e.last()).cloned();
            ensure!(
                last.is_some_and(|l| l["term"] == term),
                "no entry of term {term} yet: {doc}"
            );
            Ok(doc)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (&doc["group"], &doc["more"]),
        (&json!(GROUP), &json!(false))
    );
    let entries = doc["entries"].as_array().unwrap().clone();
    assert!(
        entries.len() >= 2,
        "dev-1's election and the failover: {doc}"
    );
    let last = entries.last().unwrap();
    assert_eq!(last["kind"], "elected", "{last}");
    assert_eq!(last["cause"], "server_lost", "{last}");
    assert_eq!(last["server"], "dev-2", "{last}");
    assert_eq!(last["previous"]["device"], "dev-1", "{last}");
    assert!(
        last["previous"]["term"].as_u64().unwrap() < term,
        "the previous term is older: {last}"
    );
    assert_eq!(last["rule"], "highest_score", "{last}");
    // Every device the winner heard, best first; the lost server is not
    // among them.
    let candidates: Vec<(&str, u64, bool)> = last["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert!(c["mac"].as_str().is_some(), "{c}");
            let device = c["device"].as_str().unwrap();
            (device, c["score"].as_u64().unwrap(), c["online"] == true)
        })
        .collect();
    assert_eq!(
        candidates,
        [("dev-2", 150, true), ("dev-3", 100, true)],
        "the winner first, then the runner-up: {last}"
    );
    assert!(
        last["timings"]["without_server_ms"].as_u64().is_some(),
        "how long the group was without a server: {last}"
    );

    // The same entries as the CLI reads.
    let cli = run_cli_ok(&[
        "ledger",
        "--group",
        GROUP,
        "--json",
        "--limit",
        "100",
        "--nats",
        &nats.url(),
    ])
    .await;
    let cli: Value = serde_json::from_str(&cli).unwrap();
    assert_eq!(
        cli,
        Value::Array(entries.clone()),
        "the CLI and the gateway agree"
    );

    // Why dev-2 serves: the same document as `understudy why --json`.
    let r = get(gw.http(), &format!("/api/v1/groups/{GROUP}/why"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let why = r.json().unwrap();
    assert_eq!(
        (&why["group"], &why["server"], &why["term"], &why["entry"]),
        (&json!(GROUP), &json!("dev-2"), &json!(term), last),
        "{why}"
    );
    let paragraph = why["paragraph"].as_str().unwrap();
    let previous_term = &last["previous"]["term"];
    for words in [
        format!("dev-2 serves group {GROUP} (term {term})"),
        format!("dev-1 (term {previous_term}) was lost"),
        "rule: highest_score".to_string(),
    ] {
        assert!(paragraph.contains(&words), "no {words:?} in {paragraph:?}");
    }
    let cli = run_cli_ok(&["why", "--group", GROUP, "--json", "--nats", &nats.url()]).await;
    let cli: Value = serde_json::from_str(&cli).unwrap();
    assert_eq!(cli, why, "the CLI and the gateway explain it alike");
    let r = get(gw.http(), "/api/v1/groups/nosuch/why").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json().unwrap();
    assert_eq!(
        (&doc["server"], &doc["entry"]),
        (&Value::Null, &Value::Null),
        "{doc}"
    );
    assert!(
        doc["paragraph"]
            .as_str()
            .is_some_and(|p| p.contains("has no server now")),
        "{doc}"
    );

    // The latest entry alone; from a time (Unix ms or RFC 3339), with more
    // to follow when the limit cuts the read short.
    let doc = ledger_doc(&gw, "?limit=1").await.unwrap();
    assert_eq!(doc["entries"], json!([last]), "{doc}");
    let at = last["at_ms"].as_u64().unwrap();
    for since in [at.to_string(), rfc3339_ms(at)] {
        let doc = ledger_doc(&gw, &format!("?since={since}")).await.unwrap();
        assert_eq!(doc["entries"], json!([last]), "since={since}: {doc}");
        assert_eq!(doc["more"], false);
    }
    let first_at = entries[0]["at_ms"].as_u64().unwrap();
    let doc = ledger_doc(&gw, &format!("?since={first_at}&limit=1"))
        .await
        .unwrap();
    assert_eq!(doc["entries"], json!([entries[0]]), "{doc}");
    assert_eq!(doc["more"], true, "{doc}");
    let doc = ledger_doc(&gw, &format!("?since={}", at + 3_600_000))
        .await
        .unwrap();
    assert_eq!(
        doc["entries"],
        json!([]),
        "nothing after the last entry: {doc}"
    );

    // A group without a ledger has no entries (as a group without a hold
    // is not held); a bad name is refused.
    let r = get(gw.http(), "/api/v1/groups/nosuch/ledger")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json().unwrap(),
        json!({"group": "nosuch", "entries": [], "more": false})
    );
    let r = get(gw.http(), "/api/v1/groups/a%2Eb/ledger").await.unwrap();
    assert_eq!((r.status, error_code(&r).as_str()), (400, "invalid_name"));

    // Bad input: 400 invalid_json with the error document, saying what.
    for (query, words) in [
        ("?limit=0", "1 to 1000"),
        ("?limit=1001", "1 to 1000"),
        ("?limit=abc", "integer from 1 to 1000"),
        ("?since=garbage", "RFC 3339"),
        ("?since=-5", "RFC 3339"),
    ] {
        let r = get(gw.http(), &ledger_path(query)).await.unwrap();
        assert_eq!(
            (r.status, error_code(&r).as_str()),
            (400, "invalid_json"),
            "{query}"
        );
        let message = r.json().unwrap()["error"]["message"].to_string();
        assert!(message.contains(words), "{query}: {message}");
    }

    // TCP: the same entries, the same refusals.
    let mut tcp = Tcp::connect(gw.tcp()).await;
    tcp.auth().await;
    let r = tcp
        .call(json!({"id": "l", "cmd": "ledger", "group": GROUP}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["entries"], Value::Array(entries.clone()));
    let r = tcp
        .call(json!({"id": "l1", "cmd": "ledger", "group": GROUP, "since": first_at, "limit": 1}))
        .await;
    assert_eq!(
        (&r["result"]["entries"], &r["result"]["more"]),
        (&json!([entries[0]]), &json!(true)),
        "{r}"
    );
    let r = tcp
        .call(json!({"id": "l2", "cmd": "ledger", "group": GROUP, "since": rfc3339_ms(at)}))
        .await;
    assert_eq!(r["result"]["entries"], json!([last]), "{r}");
    let r = tcp
        .call(json!({"id": "w", "cmd": "why", "group": GROUP}))
        .await;
    assert_eq!(r["result"], why, "{r}");
    for bad in [
        json!({"limit": 0}),
        json!({"limit": "abc"}),
        json!({"since": "garbage"}),
    ] {
        let mut req = bad.clone();
        req["id"] = json!("bad");
        req["cmd"] = json!("ledger");
        req["group"] = json!(GROUP);
        assert_eq!(tcp.error(req).await, "invalid_json", "{bad}");
    }
}
