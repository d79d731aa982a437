//! The dashboard in a real browser: a real nats-server, three real
//! `understudy node` devices and a real `understudy gateway`, with the
//! dashboard opened in headless Debian Chromium driven by chromedriver over
//! the W3C WebDriver HTTP protocol (a minimal client below, over a
//! hand-written HTTP/1.1 request on a loopback TCP stream).
//!
//! The test sees the devices and the server, is refused a score change
//! without the API token (and shows the gateway's error message), enters the
//! token, raises a client's score above the server's and sees the server
//! change on screen. Then it follows the events over Server-Sent Events
//! instead of the WebSocket, restarts the gateway while the server changes
//! again, and sees the page resume the stream after the last event it showed:
//! the missed election appears once, nothing is doubled. Screenshots go to `target/test-artifacts/`
//! (`dashboard-before.png`, `dashboard.png`).
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium`
//! and `chromium-driver`; `scripts/ensure-chromium.sh` installs them). Without
//! them the test prints a note and passes, unless `CI` is set: then it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use harness::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GROUP: &str = "stage";
const TOKEN: &str = "dashboard-test-token";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Grace (2 s) plus generous room for a loaded CI machine.
const FIRST_SERVER_WITHIN: Duration = Duration::from_secs(15);
/// How long the page may take to show what the bus already says.
const ON_SCREEN_WITHIN: Duration = Duration::from_secs(15);
/// One HTTP exchange with chromedriver or the gateway (a new session starts
/// a browser, which can take a while on a cold machine).
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

fn mac(i: u8) -> String {
    format!("02:00:00:00:00:{i:02x}")
}

// ---- a minimal HTTP/1.1 client ----------------------------------------------

/// A response: status code and body.
struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "not JSON (HTTP {}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends one request (`Connection: close`) to `addr` and reads the whole
/// response, within [`HTTP_TIMEOUT`].
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Result<Reply> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        stream
            .write_all(&request_bytes(addr, method, path, body, headers))
            .await?;
        // Some servers (chromedriver) keep the connection open despite
        // `Connection: close`: stop once the body is complete.
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return parse_response(&raw);
            }
            raw.extend_from_slice(&buf[..n]);
            if let Some(reply) = complete_response(&raw) {
                return reply;
            }
        }
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("{method} http://{addr}{path}: no answer within {HTTP_TIMEOUT:?}"))?
        .with_context(|| format!("{method} http://{addr}{path}"))
}

fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let body = body.map(|b| b.to_string().into_bytes());
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = &body {
        head.push_str(&format!(
            "Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n",
            body.len()
        ));
    } else if method == "POST" || method == "PUT" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend(body.unwrap_or_default());
    bytes
}

/// The response in `raw` once all of it has arrived (by `Content-Length` or
/// the last chunk).
fn complete_response(raw: &[u8]) -> Option<Result<Reply>> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    let length = head.lines().find_map(|line| {
        line.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    let complete = if head.contains("transfer-encoding: chunked") {
        dechunk(body).is_ok()
    } else if let Some(n) = length {
        body.len() >= n
    } else {
        // A body without length or chunks ends when the connection does;
        // a status without a body (204, 304) ends at the headers.
        head.starts_with("http/1.1 204") || head.starts_with("http/1.1 304")
    };
    complete.then(|| parse_response(raw))
}

fn parse_response(raw: &[u8]) -> Result<Reply> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers in {} bytes", raw.len()))?;
    let head = std::str::from_utf8(&raw[..end]).context("headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        } else if name == "content-length" {
            length = value.parse::<usize>().ok();
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        ensure!(
            rest.len() >= n,
            "body cut short: {} of {n} bytes",
            rest.len()
        );
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Reply { status, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("chunk size line not terminated"))?;
        let size_text = std::str::from_utf8(&data[..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        ensure!(data.len() >= size + 2, "chunk cut short");
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Decodes standard base64 (the WebDriver screenshot), ignoring whitespace.
fn base64_decode(text: &str) -> Result<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        if c == b'=' {
            break;
        }
        if c.is_ascii_whitespace() {
            continue;
        }
        let v = value(c).ok_or_else(|| anyhow!("not base64: {:?}", c as char))?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Ok(out)
}

// ---- processes --------------------------------------------------------------

/// Removes the developer's `UNDERSTUDY_*` settings (but the nats-server
/// choice) so they do not leak into a child.
fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key_str = key.to_string_lossy();
        if key_str.starts_with("UNDERSTUDY_") && key_str != "UNDERSTUDY_NATS_SERVER" {
            cmd.env_remove(&key);
        }
    }
}

/// A child process with its output in a log file: killed on drop (with its
/// whole process group when it leads one), its log shown if the test fails.
struct Proc {
    name: &'static str,
    child: Child,
    group_leader: bool,
    log: PathBuf,
    _dir: TempDir,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, group_leader: bool) -> Proc {
        let dir = TempDir::new(name);
        let log = dir.path().join(format!("{name}.log"));
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let err = out.try_clone().expect("dup log");
        if group_leader {
            cmd.process_group(0);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc {
            name,
            child,
            group_leader,
            log,
            _dir: dir,
        }
    }

    fn dir(&self) -> &Path {
        self._dir.path()
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "{} exited ({status}); its log {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 30)
            )),
            _ => None,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.group_leader {
            // chromedriver leads a process group; the browsers it started are
            // in it too.
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", self.child.id())])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "[dashboard] {} log: {}\n--- last lines ---\n{}\n---",
                self.name,
                self.log.display(),
                tail(&self.log, 40)
            );
        }
    }
}

/// `understudy gateway` listening on `http` and `tcp`, with an API token.
fn start_gateway(nats_url: &str, http: SocketAddr, tcp: SocketAddr) -> Proc {
    let mut cmd = Command::new(understudy_bin());
    scrub_env(&mut cmd);
    cmd.args(["gateway", "--nats", nats_url, "--listen"])
        .arg(http.to_string())
        .arg("--tcp-listen")
        .arg(tcp.to_string())
        .args(["--api-token", TOKEN])
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "1");
    Proc::spawn("gateway", cmd, false)
}

/// chromedriver on a free loopback port, in its own process group.
fn start_chromedriver(driver: &Path) -> (Proc, SocketAddr) {
    let port = free_port();
    let mut cmd = Command::new(driver);
    cmd.arg(format!("--port={port}"));
    (
        Proc::spawn("chromedriver", cmd, true),
        ([127, 0, 0, 1], port).into(),
    )
}

// ---- a minimal WebDriver client ---------------------------------------------

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One WebDriver session (one browser). Deleted (the browser closed) on drop.
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
        let reply = http(driver, "POST", "/session", Some(&caps), &[]).await?;
        let value = webdriver_value(reply).context("new session")?;
        let id = value["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {value}"))?
            .to_string();
        Ok(Session { driver, id })
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let full = format!("/session/{}{path}", self.id);
        let body = match (method, body) {
            ("POST", None) => Some(json!({})),
            (_, body) => body,
        };
        let reply = http(self.driver, method, &full, body.as_ref(), &[]).await?;
        webdriver_value(reply).with_context(|| format!("WebDriver {method} {path}"))
    }

    async fn goto(&self, url: &str) -> Result<()> {
        self.call("POST", "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    async fn find(&self, css: &str) -> Result<String> {
        let found = self
            .call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        found[ELEMENT]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no element reference for {css} in {found}"))
    }

    async fn find_all(&self, css: &str) -> Result<Vec<String>> {
        let found = self
            .call(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(found
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str().map(str::to_string))
            .collect())
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
        self.call("POST", &format!("/element/{element}/click"), None)
            .await
            .map(drop)
    }

    async fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let element = self.find(css).await?;
        self.call("POST", &format!("/element/{element}/clear"), None)
            .await?;
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await
        .map(drop)
    }

    async fn execute(&self, script: &str) -> Result<Value> {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn screenshot(&self, path: &Path) -> Result<()> {
        self.execute("window.scrollTo(0, 0); return true;").await?;
        let png = self.call("GET", "/screenshot", None).await?;
        let bytes = base64_decode(png.as_str().unwrap_or_default())?;
        ensure!(bytes.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        std::fs::create_dir_all(path.parent().expect("a folder"))?;
        std::fs::write(path, bytes).with_context(|| format!("write {}", path.display()))?;
        eprintln!("[dashboard] screenshot: {}", path.display());
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Close the browser cleanly (best effort, blocking, short timeouts);
        // chromedriver's process group is killed after this anyway.
        let Ok(mut stream) =
            std::net::TcpStream::connect_timeout(&self.driver, Duration::from_secs(2))
        else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        let path = format!("/session/{}", self.id);
        if stream
            .write_all(&request_bytes(self.driver, "DELETE", &path, None, &[]))
            .is_ok()
        {
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                raw.extend_from_slice(&buf[..n]);
                if n == 0 || complete_response(&raw).is_some() {
                    break;
                }
            }
        }
    }
}

/// The `value` of a WebDriver reply, or its error as an error.
fn webdriver_value(reply: Reply) -> Result<Value> {
    let json = reply.json()?;
    let value = json.get("value").cloned().unwrap_or(Value::Null);
    if reply.status != 200 {
        bail!(
            "HTTP {}: {} {}",
            reply.status,
            value["error"].as_str().unwrap_or("error"),
            value["message"].as_str().unwrap_or_default()
        );
    }
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
         (run scripts/ensure-chromium.sh)",
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
    let reply = http(
        gateway,
        "GET",
        &format!("/api/v1/groups/{GROUP}"),
        None,
        &[],
    )
    .await?;
    ensure!(
        reply.status == 200,
        "HTTP {}: {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_group_follows_a_score_change_and_resumes_its_events() {
    let Some((browser, driver_bin)) = browser_tools() else {
        return;
    };

    // The group: three devices, dev-1 the best.
    let nats = NatsServer::start().await;
    let obs = Observer::start(&nats.url(), GROUP).await;
    let urls = vec![nats.url()];
    let _devices: Vec<Device> = [200u8, 150, 100]
        .iter()
        .enumerate()
        .map(|(i, score)| {
            let n = i as u8 + 1;
            Device::spawn(
                &urls,
                DeviceOpts::new(GROUP, &format!("dev-{n}"), &mac(n), *score),
            )
        })
        .collect();
    let (first, first_term) = obs
        .wait_for(
            |v: &View| v.converged().filter(|(d, _)| d == "dev-1"),
            FIRST_SERVER_WITHIN,
        )
        .await
        .unwrap();
    assert_eq!(first, "dev-1", "the highest score serves");

    // The gateway sees the same.
    let ports = free_ports(2);
    let gateway_addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    let gateway_tcp: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    let mut gateway = start_gateway(&nats.url(), gateway_addr, gateway_tcp);
    wait_until(
        "the gateway to report dev-1 serving three devices",
        secs(20),
        || {
            let exited = gateway.exited();
            async move {
                if let Some(exited) = exited {
                    bail!("{exited}");
                }
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
    let (mut chromedriver, driver_addr) = start_chromedriver(&driver_bin);
    wait_until("chromedriver to be ready", secs(20), || {
        let exited = chromedriver.exited();
        async move {
            if let Some(exited) = exited {
                bail!("{exited}");
            }
            let status = http(driver_addr, "GET", "/status", None, &[])
                .await?
                .json()?;
            ensure!(status["value"]["ready"] == true, "not ready: {status}");
            Ok(())
        }
    })
    .await
    .unwrap();
    let profile = chromedriver.dir().join("profile");
    std::fs::create_dir_all(&profile).unwrap();
    let session = Session::start(driver_addr, &browser, &profile)
        .await
        .unwrap();
    let page = format!("http://{gateway_addr}/?group={GROUP}");
    session.goto(&page).await.unwrap();
    let s = &session;

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
        "the event stream to be live over WebSocket with dev-1's election in the log",
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
                state[0] == "live" && state[1] == "ws",
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

    // Without the token the change is refused, and the page says why.
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
        ensure!(shown.contains("unauthorized"), "dev-3's row says {shown:?}");
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(session.text_of("#server").await.unwrap(), "dev-1");

    // With the token, dev-3 outranks dev-1 and takes over, on screen.
    session.type_into("#token", TOKEN).await.unwrap();
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

    // Server-Sent Events, and a gateway restart: the page resumes after the
    // last event it showed, so it neither misses nor doubles one.
    session
        .goto(&format!("{page}&transport=sse"))
        .await
        .unwrap();
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
    let url = nats.url();
    run_cli_ok(&[
        "score", "set", "--group", GROUP, "--device", "dev-1", "255", "--nats", &url,
    ])
    .await;
    let (server, term) = obs
        .wait_for(
            |v: &View| v.converged().filter(|(d, _)| d == "dev-1"),
            FIRST_SERVER_WITHIN,
        )
        .await
        .unwrap();
    assert_eq!(server, "dev-1");
    let _gateway = start_gateway(&nats.url(), gateway_addr, gateway_tcp);
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
