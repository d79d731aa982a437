//! End to end: a nats-server that asks for credentials, and one that speaks
//! only TLS. A device with the right credentials (or trusting the right CA)
//! serves; one without, with a wrong password or with an untrusted
//! certificate stops within 10 s naming the cause, and leaves nothing on the
//! bus; credentials written in a NATS address are refused before anything
//! connects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::process::Stdio;
use std::time::Duration;

use harness::*;
use understudy_protocol::{GroupName, Role, subjects};

const GROUP: &str = "stage";
const USER: &str = "device";
const PASSWORD: &str = "s3cret-pw";
/// Grace (2 s) plus room for a loaded 2-core CI machine.
const FIRST_SERVER_WITHIN: Duration = Duration::from_secs(8);

fn config() -> String {
    format!("authorization {{ users = [ {{ user: \"{USER}\", password: \"{PASSWORD}\" }} ] }}\n")
}

async fn authorized(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(USER.into(), PASSWORD.into())
        .connect(url)
        .await
        .expect("the right credentials connect")
}

/// A nats-server with the test's user, a client logged in as it, and its
/// subscription to the group's heartbeats.
async fn server_with_users() -> (NatsServer, async_nats::Client, async_nats::Subscriber) {
    let nats = NatsServer::start_configured(nats_server_bin(), &config())
        .await
        .unwrap();
    let client = authorized(&nats.url()).await;
    let group: GroupName = GROUP.parse().unwrap();
    let beats = client
        .subscribe(subjects::heartbeats(&group))
        .await
        .unwrap();
    (nats, client, beats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_right_password_a_device_serves_and_the_cli_reads_the_group() {
    let (nats, _client, mut beats) = server_with_users().await;
    let _dev = spawn_device(
        &[nats.url()],
        DeviceOpts::new(GROUP, "dev-1", &mac(1), 100)
            .with_env("UNDERSTUDY_NATS_USER", USER)
            .with_env("UNDERSTUDY_NATS_PASSWORD", PASSWORD),
    );
    let serving = beat_where(&mut beats, FIRST_SERVER_WITHIN, |hb| {
        hb.device.as_str() == "dev-1" && hb.role == Role::Server
    })
    .await;
    assert!(serving.is_some(), "dev-1 serves with the right credentials");

    // The CLI with the password from the environment (not the command line).
    let out = tokio::process::Command::new(understudy_bin())
        .args(["status", "--group", GROUP, "--json", "--nats", &nats.url()])
        .args(["--nats-user", USER])
        .env("UNDERSTUDY_NATS_PASSWORD", PASSWORD)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CLI_TIMEOUT, out)
        .await
        .expect("status finishes")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("\"dev-1\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_without_or_with_wrong_credentials_stops_naming_the_cause() {
    let (nats, _client, mut beats) = server_with_users().await;
    let cases = [
        (
            "no credentials",
            DeviceOpts::new(GROUP, "dev-x", &mac(8), 100),
        ),
        (
            "a wrong password",
            DeviceOpts::new(GROUP, "dev-y", &mac(9), 100)
                .with_env("UNDERSTUDY_NATS_USER", USER)
                .with_env("UNDERSTUDY_NATS_PASSWORD", "not-the-password"),
        ),
    ];
    for (what, opts) in cases {
        let mut dev = spawn_device(&[nats.url()], opts);
        let status = dev
            .wait_exit(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("a device with {what} must stop within 10 s: {e}"));
        assert!(!status.success(), "a device with {what} must fail");
        let log = dev.log();
        assert!(
            log.contains("refused this process: authorization violation"),
            "the cause is named for {what}:\n{log}"
        );
        assert!(
            !log.contains(PASSWORD) && !log.contains("not-the-password"),
            "no secret in the log"
        );
    }
    assert!(
        beat_where(&mut beats, Duration::from_millis(500), |_| true)
            .await
            .is_none(),
        "nothing of the group changed: no heartbeat reached the bus"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_written_in_the_address_are_refused_without_echoing_them() {
    let out = run_cli(&[
        "status",
        "--group",
        GROUP,
        "--nats",
        "nats://admin:hunter2@127.0.0.1:4222",
    ])
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("carries credentials"), "{err}");
    assert!(err.contains("--nats-user"), "{err}");
    assert!(
        !err.contains("hunter2"),
        "the password is not echoed: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_device_trusting_the_ca_serves_and_one_trusting_another_stops() {
    let dir = TempDir::new("nats-tls").unwrap();
    let good = understudy_testkit::secure::make_pki(dir.path(), "good-").unwrap();
    let (ca, cert, key) = (good.ca, good.cert, good.key);
    let other_ca = understudy_testkit::secure::make_pki(dir.path(), "other-")
        .unwrap()
        .ca;
    let conf = format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\" }}\n",
        cert.display(),
        key.display()
    );
    let nats = NatsServer::start_configured(nats_server_bin(), &conf)
        .await
        .unwrap();
    let url = nats.url().replace("nats://", "tls://");
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(ca.clone())
        .require_tls(true)
        .connect(url.as_str())
        .await
        .expect("the test's client trusts the CA");
    let group: GroupName = GROUP.parse().unwrap();
    let mut beats = client
        .subscribe(subjects::heartbeats(&group))
        .await
        .unwrap();

    let mut stranger = spawn_device(
        std::slice::from_ref(&url),
        DeviceOpts::new(GROUP, "dev-x", &mac(8), 200)
            .with_env("UNDERSTUDY_NATS_TLS_CA", other_ca.to_str().unwrap()),
    );
    let status = stranger
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("a device that does not trust the server's certificate stops within 10 s");
    assert!(!status.success());
    let log = stranger.log();
    assert!(
        log.contains("refused this process: TLS error"),
        "the cause is named:\n{log}"
    );

    let _dev = spawn_device(
        &[url],
        DeviceOpts::new(GROUP, "dev-1", &mac(1), 100)
            .with_env("UNDERSTUDY_NATS_TLS_CA", ca.to_str().unwrap()),
    );
    let serving = beat_where(&mut beats, FIRST_SERVER_WITHIN, |hb| {
        hb.device.as_str() == "dev-1" && hb.role == Role::Server
    })
    .await;
    assert!(serving.is_some(), "dev-1 serves over TLS");
}
