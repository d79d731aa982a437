//! The dashboard in a real browser: a real nats-server, three real
//! `understudy node` devices and a real `understudy gateway`, with the
//! dashboard opened in headless Debian Chromium driven by chromedriver over
//! the W3C WebDriver protocol: a few JSON commands over the harness's HTTP
//! client (hyper), the screenshot decoded by the `base64` crate. (`fantoccini`
//! was measured and not taken: through `webdriver` 0.53 it pulls second
//! copies of `http`, `cookie`, `thiserror` and the ICU 1.5 crates.)
//!
//! The gateway has an admin token and a read-only token, so reads need one
//! too. The page first asks for a token; with the read-only token it shows
//! the devices, the server and the live events (Server-Sent Events read with
//! fetch(), carrying the token), and a score change is refused with the
//! gateway's `forbidden` message on screen. With the admin token it raises a
//! client's score above the server's and sees the server change on screen.
//! Then it restarts the gateway while the server changes again, and sees the
//! page resume the stream after the last event it showed: the missed
//! election appears once, nothing is doubled. Last, a show hold put on
//! through the gateway brings up the hold banner (reason, who, until) and
//! lifting it takes the banner away. And the Ledger panel lists the
//! elections the test caused, newest first, naming each server with its
//! term and cause, under the paragraph saying why dev-1 serves. Screenshots
//! go to `target/test-artifacts/` (`dashboard-before.png`, `dashboard.png`,
//! `dashboard-hold.png`, `dashboard-hold-lifted.png`, `dashboard-ledger.png`).
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium`
//! and `chromium-driver`; `scripts/test.sh` installs them). Without
//! them the test prints a note and passes, unless `CI` is set: then it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use harness::http::{get, request};
use harness::*;
use serde_json::{Value, json};
use understudy_testkit::{Launch, Process};

const GROUP: &str = "stage";
const TOKEN: &str = "dashboard-test-token";
const READ_TOKEN: &str = "dashboard-read-token";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Grace (2 s) plus generous room for a loaded CI machine.
const FIRST_SERVER_WITHIN: Duration = Duration::from_secs(15);
/// How long the page may take to show what the bus already says.
const ON_SCREEN_WITHIN: Duration = Duration::from_secs(15);

// ---- processes ----------------------------------------------------------------

/// chromedriver on a free loopback port, leading its own process group (so
/// the browsers it starts die with it), its log and the browser profile in a
/// temp dir.
fn start_chromedriver(driver: &Path) -> (Process, SocketAddr, TempDir) {
    let dir = TempDir::new("chromedriver").unwrap();
    let port = free_port().unwrap();
    let proc = Launch::new("chromedriver", driver, dir.path().join("chromedriver.log"))
        .arg(format!("--port={port}"))
        .own_process_group()
        .spawn()
        .unwrap();
    (proc, ([127, 0, 0, 1], port).into(), dir)
}

// ---- the browser: W3C WebDriver over the harness's HTTP client -------------------

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One WebDriver session (one browser): the few commands the test uses, as
/// JSON over hyper, the screenshot decoded by the `base64` crate.
struct Session {
    driver: SocketAddr,
    id: String,
}

impl Session {
    async fn start(driver: SocketAddr, browser: &Path, profile: &Path) -> Result<Session> {
        let args = [
            "--headless".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-quic".to_string(),
            "--no-first-run".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--window-size=1280,1400".to_string(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": browser.display().to_string(), "args": args},
        }}});
        let value = webdriver(driver, "POST", "/session", Some(caps))
            .await
            .context("new session")?;
        let id = value["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {value}"))?
            .to_string();
        Ok(Session { driver, id })
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let full = format!("/session/{}{path}", self.id);
        webdriver(self.driver, method, &full, body).await
    }

    async fn goto(&self, url: &str) -> Result<()> {
        self.call("POST", "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    async fn find_all(&self, css: &str) -> Result<Vec<String>> {
        let by = json!({"using": "css selector", "value": css});
        let found = self.call("POST", "/elements", Some(by)).await?;
        Ok(found
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str().map(str::to_string))
            .collect())
    }

    async fn find(&self, css: &str) -> Result<String> {
        let by = json!({"using": "css selector", "value": css});
        let found = self.call("POST", "/element", Some(by)).await?;
        found[ELEMENT]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no element reference for {css} in {found}"))
    }

    async fn text_of(&self, css: &str) -> Result<String> {
        let element = self.find(css).await?;
        let text = self
            .call("GET", &format!("/element/{element}/text"), None)
            .await?;
        Ok(text.as_str().unwrap_or_default().trim().to_string())
    }

    async fn click(&self, css: &str) -> Result<()> {
        let element = self.find(css).await?;
        let path = format!("/element/{element}/click");
        self.call("POST", &path, None).await.map(drop)
    }

    async fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let element = self.find(css).await?;
        let clear = format!("/element/{element}/clear");
        self.call("POST", &clear, None).await?;
        let value = format!("/element/{element}/value");
        self.call("POST", &value, Some(json!({ "text": text })))
            .await
            .map(drop)
    }

    async fn execute(&self, script: &str) -> Result<Value> {
        let body = json!({"script": script, "args": []});
        self.call("POST", "/execute/sync", Some(body)).await
    }

    async fn screenshot(&self, path: &Path) -> Result<()> {
        self.execute("window.scrollTo(0, 0); return true;").await?;
        self.screenshot_here(path).await
    }

    /// A screenshot of the window as it is scrolled now.
    async fn screenshot_here(&self, path: &Path) -> Result<()> {
        use base64::Engine as _;
        let png = self.call("GET", "/screenshot", None).await?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .context("the screenshot is not base64")?;
        ensure!(bytes.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        std::fs::create_dir_all(path.parent().expect("a folder"))?;
        std::fs::write(path, bytes).with_context(|| format!("write {}", path.display()))?;
        eprintln!("[dashboard] screenshot: {}", path.display());
        Ok(())
    }

    /// Closes the browser (chromedriver's process group is killed after
    /// this anyway, also when the test fails).
    async fn close(self) -> Result<()> {
        self.call("DELETE", "", None).await.map(drop)
    }
}

/// One WebDriver command: its `value`, or its error as an error. A POST
/// always carries a JSON body (`{}` when there is nothing to say).
async fn webdriver(
    driver: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value> {
    let body = match (method, body) {
        ("POST", None) => Some(json!({})),
        (_, body) => body,
    };
    let bytes = body.map(|b| b.to_string().into_bytes());
    let headers = [("Content-Type", "application/json; charset=utf-8")];
    let reply = request(driver, method, path, &headers, bytes.as_deref())
        .await
        .with_context(|| format!("WebDriver {method} {path}"))?;
    let doc = reply.json()?;
    let value = doc.get("value").cloned().unwrap_or(Value::Null);
    ensure!(
        reply.status == 200,
        "WebDriver {method} {path}: HTTP {}: {} {}",
        reply.status,
        value["error"].as_str().unwrap_or("error"),
        value["message"].as_str().unwrap_or_default()
    );
    Ok(value)
}

// ---- the test ---------------------------------------------------------------

/// Where screenshots go: `<target dir>/test-artifacts`.
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                repo_root().join(t)
            }
        })
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("test-artifacts")
}

/// The browser and driver, or `None` (after a note) when the test should be
/// skipped. Panics when they are missing and `CI` is set.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let browser = PathBuf::from(CHROMIUM);
    let driver = PathBuf::from(CHROMEDRIVER);
    let missing: Vec<&str> = [(&browser, CHROMIUM), (&driver, CHROMEDRIVER)]
        .into_iter()
        .filter(|(path, _)| !path.is_file())
        .map(|(_, name)| name)
        .collect();
    if missing.is_empty() {
        return Some((browser, driver));
    }
    let what = format!(
        "{} missing: the dashboard browser test needs Debian's chromium and chromium-driver \
         (apt-get install chromium chromium-driver, as scripts/test.sh does)",
        missing.join(" and ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{what}; CI is set, so this is a failure");
    }
    eprintln!("note: skipping the dashboard browser test: {what}");
    None
}

/// The gateway's roster document for the group.
async fn roster(gateway: SocketAddr) -> Result<Value> {
    let bearer = format!("Bearer {TOKEN}");
    let path = format!("/api/v1/groups/{GROUP}");
    let reply = request(gateway, "GET", &path, &[("Authorization", &bearer)], None).await?;
    ensure!(
        reply.status == 200,
        "HTTP {}: {}",
        reply.status,
        reply.text()
    );
    reply.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_group_follows_a_score_change_and_resumes_its_events() {
    let Some((browser, driver_bin)) = browser_tools() else {
        return;
    };

    // The group: three devices, dev-1 the best.
    let nats = start_nats().await;
    let obs = Observer::start(&nats.url(), GROUP).await;
    let urls = vec![nats.url()];
    let _devices: Vec<Device> = [200u8, 150, 100]
        .iter()
        .enumerate()
        .map(|(i, score)| spawn_device(&urls, DeviceOpts::numbered(GROUP, i as u8 + 1, *score)))
        .collect();
    let (first, first_term) = obs
        .wait_converged_on("dev-1", FIRST_SERVER_WITHIN)
        .await
        .unwrap();
    assert_eq!(first, "dev-1", "the highest score serves");

    // The gateway sees the same.
    let mut gateway_opts = GatewayOpts::free_ports(Some(TOKEN)).unwrap();
    gateway_opts
        .env
        .push(("UNDERSTUDY_READ_TOKENS".into(), READ_TOKEN.into()));
    let gateway_addr = gateway_opts.http;
    let mut gateway = start_gateway_on(&nats.url(), gateway_opts.clone()).await;
    wait_until(
        "the gateway to report dev-1 serving three devices",
        secs(20),
        || {
            let alive = gateway.check_running();
            async move {
                alive?;
                let doc = roster(gateway_addr).await?;
                let devices = doc["devices"].as_array().map_or(0, Vec::len);
                ensure!(
                    doc["server"]["device"] == "dev-1" && devices == 3,
                    "server {}, {devices} device(s)",
                    doc["server"]
                );
                Ok(())
            }
        },
    )
    .await
    .unwrap();

    // The browser.
    let (mut chromedriver, driver_addr, driver_dir) = start_chromedriver(&driver_bin);
    wait_until("chromedriver to be ready", secs(20), || {
        let alive = chromedriver.check_running();
        async move {
            alive?;
            let status = get(driver_addr, "/status").await?.json()?;
            ensure!(status["value"]["ready"] == true, "not ready: {status}");
            Ok(())
        }
    })
    .await
    .unwrap();
    let profile = driver_dir.path().join("profile");
    std::fs::create_dir_all(&profile).unwrap();
    let session = Session::start(driver_addr, &browser, &profile)
        .await
        .unwrap();
    let page = format!("http://{gateway_addr}/?group={GROUP}");
    session.goto(&page).await.unwrap();
    let s = &session;

    // Without a token the page reads nothing and asks for one.
    wait_until(
        "the page to ask for a token",
        ON_SCREEN_WITHIN,
        || async move {
            let asked = s
                .execute("return document.querySelector('#token-form').dataset.needsToken;")
                .await?;
            ensure!(asked == "true", "the token form is not marked: {asked}");
            let note = s.text_of("#group-note").await?;
            ensure!(note.contains("needs a token"), "#group-note says {note:?}");
            Ok(())
        },
    )
    .await
    .unwrap();
    assert_eq!(session.text_of("#server").await.unwrap(), "—");

    // The read-only token: the page shows the group.
    session.type_into("#token", READ_TOKEN).await.unwrap();
    session.click("#token-use").await.unwrap();
    // The devices and the server.
    wait_until(
        "the page to show dev-1 as server",
        ON_SCREEN_WITHIN,
        || async move {
            let server = s.text_of("#server").await?;
            ensure!(server == "dev-1", "#server shows {server:?}");
            let rows = s.find_all("[data-device]").await?.len();
            ensure!(rows == 3, "{rows} device rows");
            for (device, role) in [
                ("dev-1", "server"),
                ("dev-2", "client"),
                ("dev-3", "client"),
            ] {
                let shown = s
                    .text_of(&format!("[data-device=\"{device}\"] [data-field=\"role\"]"))
                    .await?;
                ensure!(shown == role, "{device} shows role {shown:?}");
            }
            Ok(())
        },
    )
    .await
    .unwrap();
    // The term on screen is the lease's (compared with the lease as it is
    // now: a renewal stalled past the lease under load legitimately moves
    // dev-1 to a newer term).
    let o = &obs;
    wait_until(
        "the term on screen to be the lease's",
        ON_SCREEN_WITHIN,
        || async move {
            let shown = s.text_of("#term").await?;
            let (server, term) = o
                .view()
                .converged()
                .ok_or_else(|| anyhow::anyhow!("the group has not converged"))?;
            ensure!(
                server == "dev-1" && shown == term.get().to_string(),
                "#term shows {shown:?}, the lease says {server} term {term}"
            );
            Ok(())
        },
    )
    .await
    .unwrap();
    for (device, score, n) in [("dev-1", 200, 1u8), ("dev-2", 150, 2), ("dev-3", 100, 3)] {
        let row = format!("[data-device=\"{device}\"]");
        assert_eq!(
            session
                .text_of(&format!("{row} [data-field=\"score\"]"))
                .await
                .unwrap(),
            score.to_string()
        );
        assert_eq!(
            session
                .text_of(&format!("{row} [data-field=\"mac\"]"))
                .await
                .unwrap(),
            mac(n)
        );
    }
    wait_until(
        "the status bar to count 3 online devices, 1 server and this GUI session",
        ON_SCREEN_WITHIN,
        || async move {
            let online = s.text_of("#count-devices_online").await?;
            let servers = s.text_of("#count-servers").await?;
            let clients = s.text_of("#count-clients").await?;
            let gui = s.text_of("#count-gui_sessions").await?;
            ensure!(
                (online.as_str(), servers.as_str(), clients.as_str()) == ("3", "1", "2")
                    && gui.parse::<u32>().unwrap_or(0) >= 1,
                "online {online}, servers {servers}, clients {clients}, GUI sessions {gui}"
            );
            Ok(())
        },
    )
    .await
    .unwrap();
    wait_until(
        "the event stream to be live over SSE with dev-1's election in the log",
        ON_SCREEN_WITHIN,
        || async move {
            let state = s
                .execute(
                    "const c = document.querySelector('#connection');
                     return [c.dataset.state, c.dataset.transport,
                             document.querySelector('#event-log').textContent];",
                )
                .await?;
            ensure!(
                state[0] == "live" && state[1] == "sse",
                "connection {} over {}",
                state[0],
                state[1]
            );
            let log = state[2].as_str().unwrap_or_default();
            ensure!(
                log.contains("dev-1 elected server"),
                "the log has no election of dev-1: {log:?}"
            );
            Ok(())
        },
    )
    .await
    .unwrap();
    let artifacts = artifacts_dir();
    session
        .screenshot(&artifacts.join("dashboard-before.png"))
        .await
        .unwrap();

    // With the read-only token the change is refused, and the page says why.
    let dev3 = "[data-device=\"dev-3\"]";
    session
        .type_into(&format!("{dev3} [data-score-input]"), "250")
        .await
        .unwrap();
    session
        .click(&format!("{dev3} [data-score-set]"))
        .await
        .unwrap();
    wait_until("the refusal to be shown", ON_SCREEN_WITHIN, || async move {
        let shown = s.text_of(&format!("{dev3} [data-score-error]")).await?;
        ensure!(shown.contains("forbidden"), "dev-3's row says {shown:?}");
        let message = s
            .execute(
                "const m = document.querySelector('#message');
                 return [m.hidden, m.textContent];",
            )
            .await?;
        ensure!(
            message[0] == false
                && message[1]
                    .as_str()
                    .is_some_and(|t| t.contains("forbidden") && t.contains("admin token")),
            "the message box shows {message}"
        );
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(session.text_of("#server").await.unwrap(), "dev-1");

    // With the admin token, dev-3 outranks dev-1 and takes over, on screen.
    session.type_into("#token", TOKEN).await.unwrap();
    session.click("#token-use").await.unwrap();
    session
        .type_into(&format!("{dev3} [data-score-input]"), "250")
        .await
        .unwrap();
    session
        .click(&format!("{dev3} [data-score-set]"))
        .await
        .unwrap();
    let new_term = wait_until(
        "the page to show dev-3 as server",
        ON_SCREEN_WITHIN,
        || async move {
            let server = s.text_of("#server").await?;
            ensure!(server == "dev-3", "#server shows {server:?}");
            let role3 = s.text_of(&format!("{dev3} [data-field=\"role\"]")).await?;
            let role1 = s
                .text_of("[data-device=\"dev-1\"] [data-field=\"role\"]")
                .await?;
            let score3 = s.text_of(&format!("{dev3} [data-field=\"score\"]")).await?;
            ensure!(
                role3 == "server" && role1 == "client" && score3 == "250",
                "dev-3 {role3} with {score3}, dev-1 {role1}"
            );
            let term: u64 = s.text_of("#term").await?.parse()?;
            Ok(term)
        },
    )
    .await
    .unwrap();
    assert!(
        new_term > first_term.get(),
        "the takeover carries a newer term ({new_term} after {})",
        first_term.get()
    );
    wait_until(
        "the log to show dev-3's election",
        ON_SCREEN_WITHIN,
        || async move {
            let log = s.text_of("#event-log").await?;
            ensure!(
                log.contains("dev-3 elected server"),
                "the log has no election of dev-3: {log:?}"
            );
            Ok(())
        },
    )
    .await
    .unwrap();
    // The server-change chart shows the hand-over from dev-1 to dev-3.
    wait_until(
        "the chart to show the hand-over",
        ON_SCREEN_WITHIN,
        || async move {
            // Every bar's kind and title, so a failure says what was drawn.
            let bars = s
                .execute(
                    "return Array.from(document.querySelectorAll('#change-chart rect'))
                       .map((r) => r.getAttribute('class') + ': ' + r.textContent);",
                )
                .await?;
            let summary = s.text_of("#change-summary").await?;
            let planned = bars
                .as_array()
                .into_iter()
                .flatten()
                .filter(|b| b.as_str().is_some_and(|b| b.starts_with("planned: ")))
                .count();
            ensure!(
                planned >= 1 && summary.contains("hand-over"),
                "bars {bars}, summary {summary:?}"
            );
            Ok(())
        },
    )
    .await
    .unwrap();
    let result = session
        .text_of(&format!("{dev3} [data-score-error]"))
        .await
        .unwrap();
    assert!(
        result.starts_with("Score set to 250"),
        "dev-3's row says {result:?}"
    );
    session
        .screenshot(&artifacts.join("dashboard.png"))
        .await
        .unwrap();

    // The bus agrees, and the token is kept for the tab (sessionStorage).
    let (server, _) = obs
        .wait_for(View::converged, FIRST_SERVER_WITHIN)
        .await
        .unwrap();
    assert_eq!(server, "dev-3");
    obs.check_one_server().unwrap();
    session.goto(&page).await.unwrap();
    let kept = session
        .execute("return document.querySelector('#token').value;")
        .await
        .unwrap();
    assert_eq!(kept, TOKEN, "the token survives a reload of the tab");

    // A gateway restart: the page resumes after the last event it showed,
    // so it neither misses nor doubles one.
    wait_until(
        "the SSE stream to be live with dev-3's election in the log",
        ON_SCREEN_WITHIN,
        || async move {
            let (state, transport) = connection(s).await?;
            ensure!(
                state == "live" && transport == "sse",
                "connection {state} over {transport}"
            );
            let log = s.text_of("#event-log").await?;
            ensure!(log.contains("dev-3 elected server"), "log: {log:?}");
            Ok(())
        },
    )
    .await
    .unwrap();
    let before = event_ids(s).await.unwrap();
    drop(gateway);
    set_score(&nats.url(), GROUP, "dev-1", 255).await;
    let (server, term) = obs
        .wait_converged_on("dev-1", FIRST_SERVER_WITHIN)
        .await
        .unwrap();
    assert_eq!(server, "dev-1");
    let gateway = start_gateway_on(&nats.url(), gateway_opts).await;
    let elected = format!("dev-1 elected server: term {}", term.get());
    let elected = elected.as_str();
    wait_until(
        "the page to resume and show dev-1's election while the gateway was down",
        ON_SCREEN_WITHIN,
        || async move {
            let (state, transport) = connection(s).await?;
            ensure!(
                state == "live" && transport == "sse",
                "connection {state} over {transport}"
            );
            let server = s.text_of("#server").await?;
            ensure!(server == "dev-1", "#server shows {server:?}");
            let log = s.text_of("#event-log").await?;
            ensure!(log.contains(elected), "no {elected:?} in the log: {log:?}");
            Ok(())
        },
    )
    .await
    .unwrap();
    let after = event_ids(s).await.unwrap();
    assert!(
        after.windows(2).all(|w| w[0] > w[1]),
        "event ids are unique, newest first: {after:?}"
    );
    assert!(
        before.iter().all(|id| after.contains(id)) && after.len() > before.len(),
        "the log keeps what it showed and adds what it missed: {before:?} then {after:?}"
    );
    let log = session.text_of("#event-log").await.unwrap();
    assert_eq!(log.matches(elected).count(), 1, "shown once: {log:?}");
    obs.check_one_server().unwrap();

    // The show hold: no banner while the group is not held; put on through
    // the gateway, the banner appears with the reason and who set it;
    // lifted, it goes.
    assert!(!hold_banner(s).await.unwrap().0, "no hold, no banner");
    set_hold(
        gateway.http(),
        json!({"held": true, "reason": "evening show", "by": "stage manager"}),
    )
    .await;
    wait_until(
        "the hold banner to appear",
        ON_SCREEN_WITHIN,
        || async move {
            let (shown, text) = hold_banner(s).await?;
            ensure!(shown, "no banner yet");
            for words in [
                "SHOW HOLD — no preemption; failover still automatic",
                "Reason: evening show",
                "set by stage manager",
                "until lifted",
            ] {
                ensure!(text.contains(words), "no {words:?} in the banner: {text:?}");
            }
            let log = s.text_of("#event-log").await?;
            ensure!(log.contains("show hold ON: evening show"), "log: {log:?}");
            Ok(())
        },
    )
    .await
    .unwrap();
    session
        .screenshot(&artifacts.join("dashboard-hold.png"))
        .await
        .unwrap();
    set_hold(gateway.http(), json!({"held": false})).await;
    wait_until("the hold banner to go", ON_SCREEN_WITHIN, || async move {
        let (shown, text) = hold_banner(s).await?;
        ensure!(!shown, "the banner still shows {text:?}");
        let log = s.text_of("#event-log").await?;
        ensure!(log.contains("show hold lifted"), "log: {log:?}");
        Ok(())
    })
    .await
    .unwrap();
    session
        .screenshot(&artifacts.join("dashboard-hold-lifted.png"))
        .await
        .unwrap();

    // The Ledger panel: the elections the test caused, newest first —
    // dev-1 taking the server back on top, with the lease's term (a
    // renewal stalled under load may have moved it on since), dev-3's
    // election below — and why dev-1 serves, read again after the hold's
    // events.
    wait_until(
        "the Ledger panel to list the elections",
        ON_SCREEN_WITHIN,
        || async move {
            let (server, term) = o
                .view()
                .converged()
                .ok_or_else(|| anyhow!("the group has not converged"))?;
            ensure!(server == "dev-1", "{server} serves");
            let rows = ledger_rows(s).await?;
            let top = rows.first().ok_or_else(|| anyhow!("no ledger rows"))?;
            ensure!(
                top.server == "dev-1" && top.term == term.get().to_string(),
                "the newest row is {top:?}, not dev-1's term {term}: {rows:?}"
            );
            ensure!(
                rows.iter().any(|r| r.server == "dev-3"),
                "no row of dev-3's election: {rows:?}"
            );
            ensure!(
                rows.iter().all(|r| !r.cause.is_empty() && r.cause != "?"),
                "a row without its cause: {rows:?}"
            );
            let why = s.text_of("#why").await?;
            ensure!(
                why.starts_with(&format!("dev-1 serves group {GROUP} (term {term})")),
                "#why says {why:?}"
            );
            // Read again after the hold was lifted: no hold in it.
            ensure!(!why.contains("show hold"), "#why says {why:?}");
            Ok(())
        },
    )
    .await
    .unwrap();
    session
        .execute("document.querySelector('#ledger-heading').scrollIntoView(); return true;")
        .await
        .unwrap();
    session
        .screenshot_here(&artifacts.join("dashboard-ledger.png"))
        .await
        .unwrap();
    session.close().await.unwrap();
}

/// Puts the group's show hold on or off through the gateway's API.
async fn set_hold(gateway: SocketAddr, body: Value) {
    let auth = format!("Bearer {TOKEN}");
    let r = request(
        gateway,
        "PUT",
        &format!("/api/v1/groups/{GROUP}/hold"),
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        Some(body.to_string().as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Whether the hold banner is shown (laid out, not hidden), and its text.
async fn hold_banner(s: &Session) -> Result<(bool, String)> {
    let v = s
        .execute(
            "const b = document.querySelector('#hold-banner');
             return [!b.hidden && b.offsetHeight > 0, b.innerText];",
        )
        .await?;
    Ok((
        v[0].as_bool().unwrap_or(false),
        v[1].as_str().unwrap_or_default().to_string(),
    ))
}

/// One row of the Ledger panel as shown.
#[derive(Debug)]
struct LedgerRow {
    term: String,
    server: String,
    cause: String,
}

/// The Ledger panel's rows, in page order (newest first).
async fn ledger_rows(s: &Session) -> Result<Vec<LedgerRow>> {
    let v = s
        .execute(
            "return Array.from(document.querySelectorAll('#ledger-rows tr')).map((tr) =>
                 Array.from(tr.cells).map((td) => td.innerText.trim()));",
        )
        .await?;
    let rows = v.as_array().ok_or_else(|| anyhow!("not a list: {v}"))?;
    Ok(rows
        .iter()
        .map(|cells| {
            let cell = |i: usize| cells[i].as_str().unwrap_or_default().to_string();
            LedgerRow {
                term: cell(1),
                // The server's cell may add "held".
                server: cell(2)
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                cause: cell(3),
            }
        })
        .collect())
}

/// The event stream's state and transport as the page shows them.
async fn connection(s: &Session) -> Result<(String, String)> {
    let v = s
        .execute(
            "const c = document.querySelector('#connection');
             return [c.dataset.state, c.dataset.transport];",
        )
        .await?;
    Ok((
        v[0].as_str().unwrap_or_default().to_string(),
        v[1].as_str().unwrap_or_default().to_string(),
    ))
}

/// The ids of the events in the log, in page order (newest first).
async fn event_ids(s: &Session) -> Result<Vec<u64>> {
    let v = s
        .execute(
            "return Array.from(document.querySelectorAll('#event-log li[data-event-id]'))
                 .map(li => Number(li.dataset.eventId));",
        )
        .await?;
    v.as_array()
        .ok_or_else(|| anyhow!("not a list: {v}"))?
        .iter()
        .map(|id| id.as_u64().ok_or_else(|| anyhow!("bad id {id}")))
        .collect()
}
