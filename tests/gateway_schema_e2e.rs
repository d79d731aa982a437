//! End to end: the HTTP API checked against its own document,
//! `docs/openapi.json`, by schemathesis (from PyPI; the version
//! `scripts/ensure-schemathesis.sh` pins) on a real group: a nats-server,
//! three real `understudy node` devices and a real `understudy gateway` with
//! an admin API token.
//!
//! schemathesis reads the document and sends what it allows (and what it
//! does not): boundary values, random names and bodies, other methods,
//! requests without the token, and sequences it infers from the answers
//! (`GET /api/v1/groups` names the group, which later calls use). Every
//! answer must be no 5xx, a status the document lists for the operation, of
//! the content type and schema it documents, and schema-invalid requests must
//! be refused with a 4xx. The settings (checks, seed, number of examples, the
//! two event-stream routes) are in `tests/schemathesis-gateway.toml`, shared
//! with the command docs/control.md gives for a lab gateway.
//!
//! Needs schemathesis in `<repo>/.tools/venv` (or `UNDERSTUDY_SCHEMATHESIS`);
//! `scripts/test.sh` installs it. Without it the test prints a note and
//! passes, unless `CI` is set: then it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::ensure;
use harness::*;

const GROUP: &str = "stage";
const TOKEN: &str = "schema-e2e-secret";
/// Grace (2 s) plus room for a loaded 2-core machine.
const SERVER_WITHIN: Duration = Duration::from_secs(15);
/// Presence is announced every second; the gateway lists the group soon after.
const LISTED_WITHIN: Duration = Duration::from_secs(10);
/// The whole schemathesis run; it takes about 10 s here.
const RUN_WITHIN: Duration = Duration::from_secs(100);

/// The schemathesis console script, or `None` (after a note) when the test
/// should be skipped. Panics when it is missing and `CI` is set.
fn schemathesis() -> Option<PathBuf> {
    let bin = std::env::var_os("UNDERSTUDY_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools/venv/bin/schemathesis"));
    if bin.is_file() {
        return Some(bin);
    }
    let what = format!(
        "{} missing: the gateway's schema test needs schemathesis from PyPI \
         (bash scripts/ensure-schemathesis.sh installs it, as scripts/test.sh does)",
        bin.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{what}; CI is set, so this is a failure");
    }
    eprintln!("note: skipping the gateway schema test: {what}");
    None
}

/// The lines of schemathesis' summary from "Test cases:" on.
fn summary(output: &str) -> String {
    output
        .lines()
        .skip_while(|l| !l.starts_with("Test cases:"))
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Runs schemathesis with the suite's settings against the gateway at
/// `base_url`, in a temp dir of its own (it keeps working files in its
/// folder); returns its exit status and output.
/// Panics, with the output so far, if it runs longer than [`RUN_WITHIN`].
async fn run_schemathesis(bin: &Path, base_url: &str) -> (ExitStatus, String) {
    let work = TempDir::new("schemathesis").unwrap();
    let out_path = work.path().join("schemathesis.out");
    let out = File::create(&out_path).unwrap();
    let root = repo_root();
    let mut child = tokio::process::Command::new(bin)
        .arg("--no-color")
        .arg("--config-file")
        .arg(root.join("tests/schemathesis-gateway.toml"))
        .arg("run")
        .arg(root.join("docs/openapi.json"))
        .arg("--url")
        .arg(base_url)
        // The config file reads the token from here (never the command line).
        .env("UNDERSTUDY_API_TOKEN", TOKEN)
        .env("NO_COLOR", "1")
        .current_dir(work.path())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let status = tokio::time::timeout(RUN_WITHIN, child.wait()).await;
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    match status {
        Ok(status) => (status.unwrap(), output),
        // The child is killed when dropped.
        Err(_) => {
            panic!("schemathesis did not finish within {RUN_WITHIN:?}; its output:\n{output}")
        }
    }
}

/// `GET path` with the admin token (reads need a token once one is set).
async fn get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<harness::http::Reply> {
    let bearer = format!("Bearer {TOKEN}");
    harness::http::request(addr, "GET", path, &[("authorization", &bearer)], None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_answers_as_its_openapi_document_says() {
    let Some(schemathesis) = schemathesis() else {
        return;
    };

    let nats = start_nats().await;
    let urls = [nats.url()];
    let _devices: Vec<Device> = [200, 150, 100]
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
    // schemathesis learns the group's name from this list.
    wait_until("the gateway to list the group", LISTED_WITHIN, || async {
        let doc = get(gw.http(), "/api/v1/groups").await?.json()?;
        ensure!(doc["groups"][0]["group"] == GROUP, "groups {doc}");
        Ok(())
    })
    .await
    .unwrap();

    let (status, output) = run_schemathesis(&schemathesis, &format!("http://{}", gw.http())).await;
    assert!(
        status.success(),
        "schemathesis found the gateway answering otherwise than docs/openapi.json says \
         ({status}); its output:\n{output}"
    );
    eprintln!("[schemathesis] {}", summary(&output));

    // And the gateway is still there, serving the group.
    let r = get(gw.http(), &format!("/api/v1/groups/{GROUP}"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}
