//! End to end: the project service over TLS with the group check, between
//! real `understudy node` processes on a real nats-server.
//!
//! A group whose devices speak TLS and carry the group token elects a
//! server, and a change made on a client device reaches the server and the
//! other devices. Then raw gRPC clients dial the server's advertised
//! address: in clear, over TLS with nothing, with a wrong token, with a
//! client certificate of another CA — each is refused and gets no project
//! bytes — and with the right token, or a client certificate of the group's
//! CA, the fetch brings the project.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use understudy_testkit::secure::{Pki, make_pki};

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use async_nats::jetstream;
use futures::StreamExt;
use harness::*;
use understudy_project_sync::client::{ClientError, ProjectClient, ServerRef, find_server};
use understudy_project_sync::local::{LocalCopy, sha256_hex};
use understudy_project_sync::pb::{self, project_client::ProjectClient as RawClient};
use understudy_project_sync::security::{ClientSecurity, ProjectSecurity};
use understudy_project_sync::store::ProjectStore;
use understudy_project_sync::tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity,
};
use understudy_project_sync::tonic::{Code, Request, Status};
use understudy_protocol::GroupName;

const GROUP: &str = "stage";
const TOKEN: &str = "group-token-7d1f0c2a9e";
const CALL: Duration = Duration::from_secs(3);

fn group() -> GroupName {
    GROUP.parse().unwrap()
}

/// A CA and a certificate it signed for 127.0.0.1 (the toolkit's).
fn pki(dir: &Path, tag: &str) -> Pki {
    make_pki(dir, &format!("{tag}-")).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A device of the group: TLS with the group's certificate, the token from
/// a file (named in a variable: no secret on its command line).
fn secure_device(urls: &[String], pki: &Pki, token_file: &Path, i: u8, score: u8) -> Device {
    spawn_device(
        urls,
        DeviceOpts::numbered(GROUP, i, score)
            .with_env("UNDERSTUDY_PROJECT_TLS_CERT", s(&pki.cert))
            .with_env("UNDERSTUDY_PROJECT_TLS_KEY", s(&pki.key))
            .with_env("UNDERSTUDY_PROJECT_TLS_CA", s(&pki.ca))
            .with_env("UNDERSTUDY_PROJECT_TOKEN_FILE", s(token_file)),
    )
}

/// Waits until the device's local copy is `revision` with this content.
async fn wait_local_copy(dev: &Device, revision: u64, sha: &str) -> Result<()> {
    let dir = dev.data_dir().join("project");
    wait_until(
        &format!("{}'s local copy at revision {revision}", dev.id()),
        secs(15),
        || {
            let dir = dir.clone();
            async move {
                match LocalCopy::open(&dir)?.current()? {
                    Some(m) if m.revision == revision && m.sha256 == sha => Ok(()),
                    other => bail!("it has {other:?}"),
                }
            }
        },
    )
    .await
}

/// The server as the lease names it, once it answers a client with `sec`.
async fn answering_server(js: &jetstream::Context, sec: &ClientSecurity) -> Result<ServerRef> {
    wait_until(
        "a project server that answers over TLS",
        secs(20),
        || async {
            let server = find_server(js, &group(), CALL)
                .await?
                .ok_or_else(|| anyhow!("no server holds the lease"))?;
            let mut pc = ProjectClient::connect_with(&group(), server.clone(), CALL, sec).await?;
            pc.describe().await?;
            Ok(server)
        },
    )
    .await
}

// ---------------------------------------------------------------------------
// Raw gRPC clients: what an outsider on the network could try.
// ---------------------------------------------------------------------------

/// A raw client of `address`: in clear (`tls` None) or over TLS.
async fn raw(address: &str, tls: Option<ClientTlsConfig>) -> Result<RawClient<Channel>, String> {
    let endpoint = match tls {
        None => Endpoint::from_shared(format!("http://{address}")).map_err(|e| e.to_string())?,
        Some(t) => Endpoint::from_shared(format!("https://{address}"))
            .and_then(|e| e.tls_config(t))
            .map_err(|e| e.to_string())?,
    };
    let channel = tokio::time::timeout(CALL, endpoint.connect_timeout(CALL).connect())
        .await
        .map_err(|_| "no connection within the deadline".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    Ok(RawClient::new(channel))
}

fn tls_trusting(ca: &Path) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
}

fn with_cert(tls: ClientTlsConfig, pki: &Pki) -> ClientTlsConfig {
    tls.identity(Identity::from_pem(
        std::fs::read(&pki.cert).unwrap(),
        std::fs::read(&pki.key).unwrap(),
    ))
}

fn request<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

/// A fetch of the whole project: the bytes that came, and how it ended.
async fn raw_fetch(
    c: &mut RawClient<Channel>,
    token: Option<&str>,
) -> (Vec<u8>, Result<(), Status>) {
    let req = request(
        pb::FetchRequest {
            group: GROUP.into(),
            ..Default::default()
        },
        token,
    );
    let mut got = Vec::new();
    let mut stream = match tokio::time::timeout(CALL, c.fetch(req)).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(status)) => return (got, Err(status)),
        Err(_) => return (got, Err(Status::deadline_exceeded("no answer"))),
    };
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => got.extend_from_slice(&c.data),
            Err(status) => return (got, Err(status)),
        }
    }
    (got, Ok(()))
}

/// Connects to `address` and fetches with `token`: the bytes that came,
/// and how it ended (a failed connection is an `Err` too).
async fn attempt(
    address: &str,
    tls: Option<ClientTlsConfig>,
    token: Option<&str>,
) -> (Vec<u8>, Result<(), String>) {
    match raw(address, tls).await {
        Err(e) => (Vec::new(), Err(format!("no connection: {e}"))),
        Ok(mut c) => {
            let (bytes, end) = raw_fetch(&mut c, token).await;
            (
                bytes,
                end.map_err(|s| format!("{:?}: {}", s.code(), s.message())),
            )
        }
    }
}

/// Every call of the service with `token`: the code each one ended with.
async fn every_call(c: &mut RawClient<Channel>, token: Option<&str>) -> Vec<(&'static str, Code)> {
    let code = |r: Result<(), Status>| r.err().map_or(Code::Ok, |s| s.code());
    let describe = c
        .describe(request(
            pb::DescribeRequest {
                group: GROUP.into(),
                seen_term: 0,
            },
            token,
        ))
        .await
        .map(|_| ());
    let (bytes, fetch) = raw_fetch(c, token).await;
    assert!(
        bytes.is_empty(),
        "a refused fetch brought {} bytes",
        bytes.len()
    );
    let data = bytes::Bytes::from_static(b"an outsider's project\n");
    let header = pb::SubmitHeader {
        group: GROUP.into(),
        seen_term: 0,
        changed_by: "outsider".into(),
        change_id: "outsider-1".into(),
        base_revision: 1,
        size: data.len() as u64,
        sha256: sha256_hex(&data),
    };
    let parts = vec![
        pb::SubmitChunk {
            part: Some(pb::submit_chunk::Part::Header(header)),
        },
        pb::SubmitChunk {
            part: Some(pb::submit_chunk::Part::Data(data)),
        },
    ];
    let submit = c
        .submit(request(futures::stream::iter(parts), token))
        .await
        .map(|_| ());
    let watch = c
        .watch(request(
            pb::WatchRequest {
                group: GROUP.into(),
                seen_term: 0,
                after_revision: 0,
            },
            token,
        ))
        .await
        .map(|_| ());
    vec![
        ("describe", code(describe)),
        ("fetch", code(fetch)),
        ("submit", code(submit)),
        ("watch", code(watch)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_tls_with_the_group_token_the_project_flows_and_outsiders_get_nothing() {
    let dir = TempDir::new("grpc-tls").unwrap();
    let good = pki(dir.path(), "group");
    let other = pki(dir.path(), "other");
    let token_file = dir.path().join("project-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();

    let nats = start_nats().await;
    let urls = vec![nats.url()];
    let devs: Vec<Device> = [(1, 200), (2, 100), (3, 0)]
        .iter()
        .map(|(i, score)| secure_device(&urls, &good, &token_file, *i, *score))
        .collect();
    let js = jetstream::new(connect(&nats.url()).await.unwrap());
    let member = ProjectSecurity {
        tls_ca: Some(good.ca.clone()),
        token_file: Some(token_file.clone()),
        ..Default::default()
    }
    .client()
    .unwrap();
    let server = answering_server(&js, &member).await.unwrap();
    assert_eq!(server.device.as_str(), "dev-1", "the best score serves");
    let address = server
        .address
        .clone()
        .expect("the lease advertises an address");

    // A change made on a client device (queued in dev-3's outbox, as
    // `understudy project put --data-dir` does) reaches the server over TLS
    // with the token, and from there every device.
    let content = b"cue list over TLS\ncue 1 go\n";
    let edit = dir.path().join("edit");
    std::fs::write(&edit, content).unwrap();
    run_cli_ok(&[
        "project",
        "put",
        "--group",
        GROUP,
        "--file",
        s(&edit),
        "--data-dir",
        s(devs[2].data_dir()),
        "--change-id",
        "from-dev-3",
    ])
    .await;
    let sha = sha256_hex(content);
    for d in &devs {
        wait_local_copy(d, 1, &sha).await.unwrap();
    }
    let head = ProjectStore::read_only_head(&js, &group(), CALL)
        .await
        .unwrap()
        .unwrap()
        .1;
    let current = head.current.expect("a revision");
    assert_eq!(current.change_id.as_deref(), Some("from-dev-3"));

    // (a) In clear against the TLS port: the connection or the call
    // fails; no project bytes.
    let (bytes, end) = attempt(&address, None, Some(TOKEN)).await;
    eprintln!("(a) ended with: {end:?}");
    assert!(end.is_err(), "a plain-text fetch must fail");
    assert!(bytes.is_empty(), "a plain-text fetch brought bytes");

    // (b) TLS, trusting the CA, but no token and no certificate: every
    // call is UNAUTHENTICATED.
    let mut c = raw(&address, Some(tls_trusting(&good.ca))).await.unwrap();
    for (call, code) in every_call(&mut c, None).await {
        assert_eq!(code, Code::Unauthenticated, "{call} without credentials");
    }

    // (c) A wrong token: every call is PERMISSION_DENIED.
    for (call, code) in every_call(&mut c, Some("not-the-group-token")).await {
        assert_eq!(code, Code::PermissionDenied, "{call} with a wrong token");
    }

    // (d) A client certificate from another CA: the server does not trust
    // it and the handshake fails, so no call goes through (with TLS 1.3 the
    // client may believe it connected until the server's verdict arrives;
    // its call fails then, in the transport).
    let other_cert = with_cert(tls_trusting(&good.ca), &other);
    let (bytes, end) = attempt(&address, Some(other_cert), None).await;
    let why = end.expect_err("a certificate of another CA must be refused");
    eprintln!("(d) ended with: {why}");
    assert!(
        !why.contains("Unauthenticated") && !why.contains("PermissionDenied"),
        "refused in the TLS handshake, before any call: {why}"
    );
    assert!(bytes.is_empty(), "an untrusted certificate brought bytes");

    // Nothing the outsiders tried changed the project.
    let after = ProjectStore::read_only_head(&js, &group(), CALL)
        .await
        .unwrap()
        .unwrap()
        .1;
    assert_eq!(after.revision(), 1, "the refused submits committed nothing");

    // (e) The controls: the right token, and a client certificate of the
    // group's CA with no token (mutual TLS alone), each fetch the project.
    let (bytes, end) = raw_fetch(&mut c, Some(TOKEN)).await;
    end.unwrap();
    assert_eq!(bytes, content, "the token brings the project");
    let mut mtls = raw(&address, Some(with_cert(tls_trusting(&good.ca), &good)))
        .await
        .unwrap();
    let (bytes, end) = raw_fetch(&mut mtls, None).await;
    end.unwrap();
    assert_eq!(
        bytes, content,
        "the group's client certificate brings the project"
    );

    // The server name: checked against the address's IP by default; an
    // explicit name must be on the certificate.
    let named = |name: &str| ProjectSecurity {
        tls_ca: Some(good.ca.clone()),
        tls_server_name: Some(name.into()),
        token: Some(TOKEN.into()),
        ..Default::default()
    };
    let mut pc = ProjectClient::connect_with(
        &group(),
        server.clone(),
        CALL,
        &named("localhost").client().unwrap(),
    )
    .await
    .unwrap();
    pc.describe().await.unwrap();
    let wrong_name = named("elsewhere.invalid").client().unwrap();
    let refused =
        match ProjectClient::connect_with(&group(), server.clone(), CALL, &wrong_name).await {
            Ok(mut pc) => pc.describe().await.map(|_| ()),
            Err(e) => Err(e),
        };
    assert!(
        matches!(
            refused,
            Err(ClientError::Connect { .. }) | Err(ClientError::Rejected { .. })
        ),
        "a certificate without the name asked for is refused: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_needs_the_group_token_and_a_device_with_a_wrong_one_gets_no_copy() {
    let dir = TempDir::new("grpc-cli").unwrap();
    let good = pki(dir.path(), "group");
    let token_file = dir.path().join("project-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let wrong_file = dir.path().join("wrong-token");
    std::fs::write(&wrong_file, "not-the-group-token").unwrap();

    let nats = start_nats().await;
    let urls = vec![nats.url()];
    let _server = secure_device(&urls, &good, &token_file, 1, 200);
    let js = jetstream::new(connect(&nats.url()).await.unwrap());
    let member = ProjectSecurity {
        tls_ca: Some(good.ca.clone()),
        token: Some(TOKEN.into()),
        ..Default::default()
    }
    .client()
    .unwrap();
    answering_server(&js, &member).await.unwrap();

    // The CLI with the CA on the command line and the token in a variable.
    let content = b"cue list from the CLI\n";
    let file = dir.path().join("v1");
    std::fs::write(&file, content).unwrap();
    let cli = |args: Vec<String>, token: Option<&str>| {
        let mut cmd = tokio::process::Command::new(understudy_bin());
        cmd.args(&args)
            .args(["--nats", &nats.url(), "--project-tls-ca", s(&good.ca)])
            .env_remove("UNDERSTUDY_PROJECT_TOKEN")
            .env_remove("UNDERSTUDY_PROJECT_TOKEN_FILE")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(t) = token {
            cmd.env("UNDERSTUDY_PROJECT_TOKEN", t);
        }
        async move {
            tokio::time::timeout(CLI_TIMEOUT, cmd.output())
                .await
                .expect("the CLI finishes")
                .unwrap()
        }
    };
    let put = |f: &Path| {
        ["project", "put", "--group", GROUP, "--file", s(f)]
            .map(String::from)
            .to_vec()
    };
    let out = cli(put(&file), Some(TOKEN)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(put(&file), None).await;
    assert!(!out.status.success(), "a put without the token must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Unauthenticated"), "{err}");
    let out = cli(put(&file), Some("not-the-group-token")).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("PermissionDenied"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-group-token"),
        "no secret echoed: {err}"
    );

    let got = dir.path().join("got");
    let get = ["project", "get", "--group", GROUP, "--file", s(&got)]
        .map(String::from)
        .to_vec();
    let out = cli(get, Some(TOKEN)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&got).unwrap(), content);

    // A device with a wrong token: refused, said in its log, and its copy
    // never gets the project.
    let stray = secure_device(&urls, &good, &wrong_file, 2, 0);
    wait_until("the stray device to be refused", secs(15), || async {
        if stray
            .log()
            .contains("the project server refused this device")
        {
            Ok(())
        } else {
            bail!("not yet")
        }
    })
    .await
    .unwrap();
    let copy = LocalCopy::open(&stray.data_dir().join("project"))
        .unwrap()
        .current()
        .unwrap();
    assert!(copy.is_none(), "the refused device holds {copy:?}");
    assert!(
        !stray.log().contains("not-the-group-token"),
        "no secret in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_half_its_tls_settings_stops_at_start_naming_them() {
    let dir = TempDir::new("grpc-misconf").unwrap();
    let good = pki(dir.path(), "group");
    let nats = start_nats().await;
    let cases = [
        (
            "a certificate without its key",
            DeviceOpts::numbered(GROUP, 1, 100)
                .with_env("UNDERSTUDY_PROJECT_TLS_CERT", s(&good.cert))
                .with_env("UNDERSTUDY_PROJECT_TLS_CA", s(&good.ca)),
            "--project-tls-key",
        ),
        (
            "a CA file that is not there",
            DeviceOpts::numbered(GROUP, 2, 100)
                .with_env("UNDERSTUDY_PROJECT_TLS_CERT", s(&good.cert))
                .with_env("UNDERSTUDY_PROJECT_TLS_KEY", s(&good.key))
                .with_env("UNDERSTUDY_PROJECT_TLS_CA", "/nonexistent/ca.pem"),
            "/nonexistent/ca.pem",
        ),
        (
            "a token without TLS",
            DeviceOpts::numbered(GROUP, 3, 100).with_env("UNDERSTUDY_PROJECT_TOKEN", TOKEN),
            "in clear",
        ),
    ];
    for (what, opts, named) in cases {
        let mut dev = spawn_device(&[nats.url()], opts);
        let status = dev
            .wait_exit(secs(10))
            .await
            .unwrap_or_else(|e| panic!("a device with {what} must stop: {e}"));
        assert!(!status.success(), "a device with {what} must fail");
        let log = dev.log();
        assert!(log.contains(named), "{what}: the log names {named}:\n{log}");
        assert!(!log.contains(TOKEN), "no secret in the log");
    }
}
