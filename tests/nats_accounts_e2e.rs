//! End to end: least privilege on a real nats-server configured with the
//! accounts of `understudy_bus::accounts` and TLS (a `SecureBus`, as the lab
//! runs). An observer can read the group but cannot trigger an election,
//! change a score, or write the lease or the project head; a device of one
//! group cannot publish on another group's subjects; a device without
//! credentials, with a wrong password or trusting another CA stops within
//! 10 s naming the cause, and the group does not change. Each refusal is the
//! server's own (its permissions violation reaches the client), and each
//! refused write is checked not to have happened.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;

use async_nats::jetstream;
use futures::{FutureExt, StreamExt};
use harness::*;
use tokio::sync::mpsc;
use understudy_bus::accounts::Role;
use understudy_protocol::messages::{self, ControlOp, ControlRequest, Trigger};
use understudy_protocol::roster::RosterReply;
use understudy_protocol::{GroupName, Role as DeviceRole, Score, subjects};
use understudy_testkit::SecureBus;

const GROUP: &str = "stage";
const OTHER: &str = "foyer";
/// Grace (2 s) plus room for a loaded 2-core CI machine.
const FIRST_SERVER_WITHIN: Duration = Duration::from_secs(8);
/// How long a refusal may take to come back from the server.
const REFUSAL_WITHIN: Duration = Duration::from_secs(5);

fn group() -> GroupName {
    GROUP.parse().unwrap()
}

/// A secured nats-server for the groups `stage` and `foyer`, and the bus's
/// files (kept alive with it).
async fn secured() -> (TempDir, SecureBus, NatsServer) {
    let dir = TempDir::new("nats-accounts").unwrap();
    let bus = SecureBus::create(dir.path(), &[GROUP, OTHER], true).unwrap();
    let nats = NatsServer::start_configured(nats_server_bin(), &bus.server_config())
        .await
        .unwrap();
    (dir, bus, nats)
}

/// A client logged in as `role`, and the errors the server sends it.
async fn client_as(
    bus: &SecureBus,
    url: &str,
    role: &Role,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (user, pw) = bus.credentials(role).expect("a user for the role");
    let (tx, rx) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), pw.into())
        .add_root_certificates(bus.ca())
        .require_tls(true)
        // A refused request is never answered: give up on it soon.
        .request_timeout(Some(Duration::from_millis(500)))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .expect("the role's credentials connect");
    (client, rx)
}

/// Waits for the server's permissions violation naming `subject`.
async fn refused(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    let found = tokio::time::timeout(REFUSAL_WITHIN, async {
        while let Some(e) = errors.recv().await {
            let e = e.to_lowercase();
            if e.contains("permissions violation") && e.contains(&subject.to_lowercase()) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "the server refused a publish on {subject} within {REFUSAL_WITHIN:?}"
    );
}

/// Starts device `n` of `group` with the bus's credentials for its group.
fn device(bus: &SecureBus, url: &str, group: &str, n: u8, score: u8) -> Device {
    let mut opts = DeviceOpts::numbered(group, n, score);
    for (k, v) in bus.env(&Role::Device(group.parse().unwrap())) {
        opts = opts.with_env(&k, &v);
    }
    spawn_device(&[url], opts)
}

/// The revision of `key` in `bucket`, read by the test's own user.
async fn revision(admin: &async_nats::Client, bucket: &str, key: &str) -> u64 {
    let kv = jetstream::new(admin.clone())
        .get_key_value(bucket)
        .await
        .unwrap();
    kv.entry(key)
        .await
        .unwrap()
        .expect("the key exists")
        .revision
}

/// dev-2's score, from a roster that `client` asks for.
async fn score_of_dev2(client: &async_nats::Client) -> u8 {
    let reply = client
        .request(subjects::roster(&group()), "".into())
        .await
        .expect("a roster");
    let roster: RosterReply = serde_json::from_slice(&reply.payload).unwrap();
    roster
        .devices
        .iter()
        .find(|d| d.device.as_str() == "dev-2")
        .expect("dev-2 in the roster")
        .score
        .get()
}

/// A secured nats-server with devices `dev-1…` of `stage` at `scores`,
/// the test's own client, its subscription to the group's heartbeats, and
/// dev-1's first heartbeat as server.
struct ServingGroup {
    dir: TempDir,
    bus: SecureBus,
    nats: NatsServer,
    admin: async_nats::Client,
    beats: async_nats::Subscriber,
    serving: understudy_protocol::messages::Heartbeat,
    _devices: Vec<Device>,
}

async fn serving_group(scores: &[u8]) -> ServingGroup {
    let (dir, bus, nats) = secured().await;
    let url = nats.url();
    let admin = bus.connect(&url).await.unwrap();
    let mut beats = admin
        .subscribe(subjects::heartbeats(&group()))
        .await
        .unwrap();
    let devices = scores
        .iter()
        .enumerate()
        .map(|(i, s)| device(&bus, &url, GROUP, i as u8 + 1, *s))
        .collect();
    let serving = beat_where(&mut beats, FIRST_SERVER_WITHIN, |hb| {
        hb.device.as_str() == "dev-1" && hb.role == DeviceRole::Server
    })
    .await
    .expect("dev-1 serves on the secured bus");
    ServingGroup {
        dir,
        bus,
        nats,
        admin,
        beats,
        serving,
        _devices: devices,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_observer_reads_the_group_but_cannot_change_it() {
    // Every field bound: what is not would be dropped (devices killed) here.
    let ServingGroup {
        dir: _dir,
        bus,
        nats,
        admin,
        mut beats,
        serving,
        _devices,
    } = serving_group(&[200, 100]).await;
    let url = nats.url();
    let lease_bucket = subjects::lease_bucket(&group());
    let head_bucket = subjects::project_bucket(&group());
    let lease_before = revision(&admin, &lease_bucket, subjects::LEASE_KEY).await;
    // The new server fences the project head soon after it wins the lease.
    let head_before = wait_until("the project head to be fenced", secs(10), || async {
        let kv = jetstream::new(admin.clone())
            .get_key_value(&head_bucket)
            .await?;
        match kv.entry(subjects::PROJECT_HEAD_KEY).await? {
            Some(entry) => Ok(entry.revision),
            None => anyhow::bail!("no head yet"),
        }
    })
    .await
    .unwrap();

    let (observer, mut errors) = client_as(&bus, &url, &Role::Observer).await;
    // It reads: heartbeats and a roster.
    let mut seen = observer
        .subscribe(subjects::heartbeats(&group()))
        .await
        .unwrap();
    assert!(
        beat_where(&mut seen, Duration::from_secs(5), |_| true)
            .await
            .is_some(),
        "the observer hears the group's heartbeats"
    );
    assert_eq!(score_of_dev2(&observer).await, 100);

    // It cannot trigger an election.
    let trigger = subjects::trigger(&group());
    let t = Trigger {
        schema: messages::SCHEMA_VERSION,
        by: Some("observer".into()),
        force: false,
    };
    observer
        .publish(trigger.clone(), messages::encode(&t).into())
        .await
        .unwrap();
    observer.flush().await.unwrap();
    refused(&mut errors, &trigger).await;

    // It cannot change a score: the request is refused and dev-2 keeps 100.
    let control = subjects::control(&group(), &"dev-2".parse().unwrap());
    let req = ControlRequest {
        schema: messages::SCHEMA_VERSION,
        op: ControlOp::SetScore {
            score: Score::new(255),
        },
        set_by: None,
    };
    let answer = observer
        .request(control.clone(), messages::encode(&req).into())
        .await;
    assert!(answer.is_err(), "no device answers a refused request");
    refused(&mut errors, &control).await;
    assert_eq!(
        score_of_dev2(&admin).await,
        100,
        "dev-2's score is unchanged"
    );

    // It cannot put the group on a show hold.
    let settings = subjects::settings(&group());
    let hold = br#"{"schema":1,"op":"set_hold","held":true,"set_by":"observer"}"#;
    let answer = observer
        .request(settings.clone(), hold.to_vec().into())
        .await;
    assert!(answer.is_err(), "no device answers a refused hold");
    refused(&mut errors, &settings).await;

    // It cannot write the lease, the head or the hold, nor purge a bucket.
    let forged = format!(
        "{{\"schema\":1,\"group\":\"{GROUP}\",\"holder\":null,\"term\":{},\"handover_to\":null}}",
        serving.term.get() + 1
    );
    for subject in [
        format!("$KV.{lease_bucket}.{}", subjects::LEASE_KEY),
        format!("$KV.{head_bucket}.{}", subjects::PROJECT_HEAD_KEY),
        format!(
            "$KV.{}.{}",
            subjects::settings_bucket(&group()),
            subjects::HOLD_KEY
        ),
        format!("$JS.API.STREAM.PURGE.KV_{lease_bucket}"),
        format!("$JS.API.STREAM.DELETE.KV_{head_bucket}"),
    ] {
        let answer = observer
            .request(subject.clone(), forged.clone().into())
            .await;
        assert!(answer.is_err(), "{subject}: no acknowledgement");
        refused(&mut errors, &subject).await;
    }
    assert_eq!(
        revision(&admin, &head_bucket, subjects::PROJECT_HEAD_KEY).await,
        head_before,
        "the project head is unchanged"
    );
    // The lease is renewed all the time: unchanged means still dev-1's,
    // with its term, at a revision no older than before.
    let kv = jetstream::new(admin.clone())
        .get_key_value(&lease_bucket)
        .await
        .unwrap();
    let entry = kv.entry(subjects::LEASE_KEY).await.unwrap().unwrap();
    assert!(entry.revision >= lease_before);
    let lease: messages::LeaseRecord = messages::decode(&entry.value).unwrap();
    assert_eq!(
        lease.holder.map(|h| h.device.to_string()),
        Some("dev-1".to_string()),
        "dev-1 still holds the lease"
    );
    assert_eq!(
        beat_where(&mut beats, Duration::from_secs(5), |hb| hb.device.as_str()
            == "dev-1")
        .await
        .map(|hb| (hb.role, hb.term)),
        Some((DeviceRole::Server, serving.term)),
        "dev-1 still serves in the same term: no election ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_of_one_group_cannot_publish_to_another() {
    let (_dir, bus, nats) = secured().await;
    let url = nats.url();
    let admin = bus.connect(&url).await.unwrap();
    let mut foyer = admin
        .subscribe(format!("understudy.{OTHER}.>"))
        .await
        .unwrap();
    let mut stage = admin
        .subscribe(format!("understudy.{GROUP}.>"))
        .await
        .unwrap();
    admin.flush().await.unwrap();

    let (device, mut errors) = client_as(&bus, &url, &Role::Device(group())).await;
    let other: GroupName = OTHER.parse().unwrap();
    let beat = subjects::heartbeat(&other, &"dev-9".parse().unwrap());
    for subject in [beat.clone(), subjects::trigger(&other)] {
        device.publish(subject.clone(), "{}".into()).await.unwrap();
        device.flush().await.unwrap();
        refused(&mut errors, &subject).await;
    }
    for subject in [
        format!(
            "$KV.{}.{}",
            subjects::lease_bucket(&other),
            subjects::LEASE_KEY
        ),
        format!(
            "$JS.API.STREAM.CREATE.KV_{}",
            subjects::lease_bucket(&other)
        ),
    ] {
        assert!(
            device.request(subject.clone(), "{}".into()).await.is_err(),
            "{subject}: no answer"
        );
        refused(&mut errors, &subject).await;
    }
    // Its own group's subjects pass (the control case) …
    let own = subjects::heartbeat(&group(), &"dev-9".parse().unwrap());
    device.publish(own.clone(), "{}".into()).await.unwrap();
    device.flush().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), stage.next())
        .await
        .expect("the own group's subject is delivered")
        .unwrap();
    assert_eq!(got.subject.as_str(), own);
    // … and nothing reached the other group (its publishes were refused
    // before the control case was sent, so it would have arrived first).
    assert!(
        foyer.next().now_or_never().is_none(),
        "nothing of stage's device reached foyer's subjects"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_right_credentials_or_ca_a_device_stops_and_the_group_is_unchanged() {
    let ServingGroup {
        dir,
        bus,
        nats,
        admin: _admin,
        mut beats,
        serving,
        _devices,
    } = serving_group(&[100]).await;
    let url = nats.url();

    let other = SecureBus::create(&dir.path().join("other"), &[GROUP], false).unwrap();
    let right = bus.env(&Role::Device(group()));
    let with = |key: &str, value: String| -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> =
            right.iter().filter(|(k, _)| k != key).cloned().collect();
        env.push((key.to_string(), value));
        env
    };
    let cases = [
        (
            "no credentials",
            vec![(
                "UNDERSTUDY_NATS_TLS_CA".to_string(),
                bus.ca().display().to_string(),
            )],
            "authorization violation",
        ),
        (
            "a wrong password",
            with("UNDERSTUDY_NATS_PASSWORD", "not-the-password".to_string()),
            "authorization violation",
        ),
        (
            "the right password but trusting another CA",
            with("UNDERSTUDY_NATS_TLS_CA", other.ca().display().to_string()),
            "TLS error",
        ),
    ];
    for (i, (case, env, cause)) in cases.into_iter().enumerate() {
        let mut opts = DeviceOpts::numbered(GROUP, 10 + i as u8, 255);
        for (k, v) in &env {
            opts = opts.with_env(k, v);
        }
        let mut dev = spawn_device(&[url.as_str()], opts);
        let status = dev
            .wait_exit(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{case}: the device did not stop within 10 s: {e}"));
        assert!(!status.success(), "{case}: exits non-zero");
        let log = dev.log();
        assert!(
            log.contains(cause),
            "{case}: the cause ({cause}) is named:\n{log}"
        );
    }
    // None of them was heard, and dev-1 still serves in its term.
    let heard_others = beat_where(&mut beats, Duration::from_secs(1), |hb| {
        hb.device.as_str() != "dev-1"
    })
    .await;
    assert!(
        heard_others.is_none(),
        "a refused device beat: {heard_others:?}"
    );
    let now = beat_where(&mut beats, Duration::from_secs(5), |hb| {
        hb.device.as_str() == "dev-1"
    })
    .await
    .expect("dev-1 still beats");
    assert_eq!((now.role, now.term), (DeviceRole::Server, serving.term));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_accounts_are_what_nats_config_prints_and_nats_server_takes_them() {
    let printed = run_cli_ok(&["nats-config", "--group", GROUP, "--group", OTHER]).await;
    let shipped = std::fs::read_to_string(repo_root().join("deploy/nats/accounts.conf")).unwrap();
    assert_eq!(
        shipped, printed,
        "deploy/nats/accounts.conf is `understudy nats-config --group stage --group foyer`"
    );
    // nats-server checks the whole shipped configuration (with stand-in
    // certificates) and reads each password from its variable.
    let dir = TempDir::new("nats-shipped").unwrap();
    // Writes the stand-in certificates.
    SecureBus::create(dir.path(), &[GROUP], false).unwrap();
    let conf = std::fs::read_to_string(repo_root().join("deploy/nats/nats-server.conf"))
        .unwrap()
        .replace(
            "\"server.pem\"",
            &format!("{:?}", dir.path().join("server.pem")),
        )
        .replace(
            "\"server.key\"",
            &format!("{:?}", dir.path().join("server.key")),
        )
        .replace(
            "\"/var/lib/nats\"",
            &format!("{:?}", dir.path().join("store")),
        );
    std::fs::write(dir.path().join("nats-server.conf"), conf).unwrap();
    std::fs::write(dir.path().join("accounts.conf"), &shipped).unwrap();
    let check = |with_passwords: bool| {
        let mut cmd = tokio::process::Command::new(nats_server_bin());
        cmd.arg("-t")
            .arg("-c")
            .arg(dir.path().join("nats-server.conf"))
            .kill_on_drop(true);
        if with_passwords {
            for user in ["DEVICE_STAGE", "DEVICE_FOYER", "GATEWAY", "OBSERVER"] {
                cmd.env(format!("UNDERSTUDY_NATS_PASSWORD_{user}"), "pw");
            }
        }
        async move {
            tokio::time::timeout(CLI_TIMEOUT, cmd.output())
                .await
                .expect("nats-server -t finishes")
                .unwrap()
        }
    };
    let ok = check(true).await;
    assert!(
        ok.status.success(),
        "nats-server takes the shipped configuration:\n{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    let missing = check(false).await;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&missing.stdout),
        String::from_utf8_lossy(&missing.stderr)
    );
    assert!(
        !missing.status.success(),
        "no password variables: refused\n{said}"
    );
    assert!(
        said.contains("UNDERSTUDY_NATS_PASSWORD_"),
        "it names the variable:\n{said}"
    );
}

/// Runs `understudy` with `args` and `env` (and nothing of the developer's
/// `UNDERSTUDY_*`), returning its output.
async fn cli_with(args: &[&str], env: &[(String, String)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(understudy_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("UNDERSTUDY_") {
            cmd.env_remove(k);
        }
    }
    let run = cmd
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(CLI_TIMEOUT, run)
        .await
        .expect("the CLI finishes")
        .unwrap()
}

/// The `export K='V'` lines of the lab's operator.env.
fn exports(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_runs_secured_by_default() {
    let dir = TempDir::new("secure-lab").unwrap();
    let lab_dir = dir.path().join("lab");
    // Its own process group: if this test fails, dropping it kills the lab
    // and everything the lab started.
    let mut lab = Launch::new("lab", understudy_bin(), dir.path().join("lab.log"))
        .scrub_understudy_env()
        .env("NO_COLOR", "1")
        .args([
            "lab",
            "--devices",
            "3",
            "--no-prometheus",
            "--duration",
            "120s",
        ])
        .arg("--dir")
        .arg(&lab_dir)
        .arg("--nats-server")
        .arg(nats_server_bin())
        .own_process_group()
        .spawn()
        .unwrap();
    let (nats, gateway) = wait_until("the lab to print its addresses", secs(60), || {
        let log = lab.log();
        async move {
            let after = |prefix: &str| {
                log.lines()
                    .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest.to_string()))
                    .and_then(|rest| rest.split_whitespace().next().map(str::to_string))
            };
            let nats = after("nats-server with JetStream at ").context("no NATS yet")?;
            let gateway = after("API http://").context("no gateway yet")?;
            anyhow::ensure!(log.contains("credentials:  source"), "no credentials yet");
            let gateway: SocketAddr = gateway.trim_end_matches("/api/v1").parse()?;
            Ok((nats, gateway))
        }
    })
    .await
    .unwrap();

    // NATS: TLS and users; strangers are refused.
    let stranger = async_nats::ConnectOptions::new()
        .connection_timeout(secs(2))
        .connect(nats.as_str())
        .await;
    assert!(
        stranger.is_err(),
        "the lab's NATS refuses a client without TLS or credentials"
    );
    let operator = exports(&std::fs::read_to_string(lab_dir.join("operator.env")).unwrap());
    let status = wait_until("the lab's group to have a server", secs(30), || {
        let (nats, operator) = (nats.clone(), operator.clone());
        async move {
            let out = cli_with(
                &["status", "--group", "lab", "--json", "--nats", &nats],
                &operator,
            )
            .await;
            anyhow::ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            anyhow::ensure!(doc["server"]["device"] == "dev-1", "no server yet: {doc}");
            Ok(doc)
        }
    })
    .await
    .unwrap();
    assert_eq!(status["counts"]["devices_online"], 3);
    let without = cli_with(&["status", "--group", "lab", "--nats", &nats], &[]).await;
    assert!(
        !without.status.success(),
        "the CLI without the operator's credentials is refused"
    );

    // The project service: TLS and the group token.
    let file = dir.path().join("show.txt");
    std::fs::write(&file, "cue 1\n").unwrap();
    let file = file.to_str().unwrap();
    let put = cli_with(
        &[
            "project", "put", "--group", "lab", "--file", file, "--nats", &nats,
        ],
        &operator,
    )
    .await;
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let no_token: Vec<(String, String)> = operator
        .iter()
        .filter(|(k, _)| k != "UNDERSTUDY_PROJECT_TOKEN_FILE")
        .cloned()
        .collect();
    let refused = cli_with(
        &[
            "project", "put", "--group", "lab", "--file", file, "--nats", &nats,
        ],
        &no_token,
    )
    .await;
    assert!(
        !refused.status.success(),
        "a project change without the group token is refused"
    );

    // The gateway: tokens from owner-only files; reads need one.
    let read = std::fs::read_to_string(lab_dir.join("read-token")).unwrap();
    let bearer = format!("Bearer {}", read.trim());
    let open = http::get(gateway, "/api/v1/groups/lab").await.unwrap();
    assert_eq!(open.status, 401);
    let reply = http::request(
        gateway,
        "GET",
        "/api/v1/groups/lab",
        &[("authorization", &bearer)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    use std::os::unix::fs::PermissionsExt;
    for secret in [
        "api-token",
        "read-token",
        "operator.env",
        "nats-server.conf",
        "secure/server.key",
    ] {
        let mode = std::fs::metadata(lab_dir.join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{secret} is readable by its owner only");
    }
    lab.signal(Signal::Term).unwrap();
    let exit = lab.wait_exit(secs(20)).await.unwrap();
    assert!(exit.success(), "{exit}");
}
