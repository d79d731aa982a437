//! Self-test of the end-to-end harness: real nats-servers (single and a
//! 3-node cluster), the fault proxy, the observer and the one-server check.
//! Needs a nats-server >= 2.11 (`scripts/ensure-nats.sh`); does not run the
//! understudy CLI.

#[path = "harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use harness::observer::{LEASE_DURATION, check_one_server};
use harness::*;
use understudy_protocol::messages::Heartbeat;
use understudy_protocol::{GroupName, Term, subjects};

/// A heartbeat as a device would send it.
fn beat(device: &str, role: &str, term: u64, seq: u64) -> Heartbeat {
    serde_json::from_value(serde_json::json!({
        "schema": 1,
        "group": "selftest",
        "device": device,
        "instance": "00000000000000aa",
        "mac": "00:00:00:00:00:01",
        "score": 100,
        "online": true,
        "role": role,
        "term": term,
        "in_grace": false,
        "colour": "blue",
        "problems": [],
        "seq": seq,
        "interval_ms": 100,
        "sent_at_ms": 0,
    }))
    .expect("a valid heartbeat")
}

/// Heartbeats every 100 ms: `(device, role, term, from_ms, to_ms)` spells.
fn timeline(origin: Instant, spells: &[(&str, &str, u64, u64, u64)]) -> Vec<Timed<Heartbeat>> {
    let mut beats = Vec::new();
    for &(device, role, term, from, to) in spells {
        for (seq, ms) in (from..=to).step_by(100).enumerate() {
            beats.push(Timed {
                at: origin + Duration::from_millis(ms),
                msg: beat(device, role, term, seq as u64),
            });
        }
    }
    beats.sort_by_key(|b| b.at);
    beats
}

async fn kv_get(kv: &kv::Store, key: &str) -> Result<String> {
    let value = kv
        .get(key)
        .await
        .map_err(|e| anyhow!("get {key}: {e}"))?
        .with_context(|| format!("{key} is missing"))?;
    Ok(String::from_utf8_lossy(&value).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_server_starts_kills_and_restarts_with_its_store() -> Result<()> {
    let mut nats = start_nats().await;
    assert!(nats.is_running());
    let client = nats.client().await?;
    let js = jetstream::new(client.clone());
    let store = js
        .create_key_value(kv::Config {
            bucket: "selftest".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("create KV: {e}"))?;
    store
        .put("k", "v1".into())
        .await
        .map_err(|e| anyhow!("put: {e}"))?;
    assert_eq!(kv_get(&store, "k").await?, "v1");

    nats.kill();
    assert!(!nats.is_running());
    assert!(
        connect(&nats.url()).await.is_err(),
        "a killed server must refuse connections"
    );

    nats.restart().await.unwrap();
    assert!(nats.is_running());
    // The old client reconnects by itself, and the store survived.
    let value = wait_until("the KV value after a restart", secs(10), || {
        let store = store.clone();
        async move { kv_get(&store, "k").await }
    })
    .await?;
    assert_eq!(value, "v1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_cluster_keeps_an_r3_bucket_readable_when_a_node_dies() -> Result<()> {
    let mut cluster = start_cluster(3).await;
    assert_eq!(cluster.urls().len(), 3);
    let client = cluster.client().await?;
    let js = jetstream::new(client);
    let store = wait_until("an R3 KV bucket", secs(10), || {
        let js = js.clone();
        async move {
            js.create_key_value(kv::Config {
                bucket: "selftest-r3".into(),
                num_replicas: 3,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("create KV: {e}"))
        }
    })
    .await?;
    store
        .put("k", "v1".into())
        .await
        .map_err(|e| anyhow!("put: {e}"))?;
    assert_eq!(kv_get(&store, "k").await?, "v1");

    let started = Instant::now();
    cluster.kill(0);
    assert!(!cluster.is_running(0));
    let value = wait_until("the KV value with node n1 dead", secs(20), || {
        let store = store.clone();
        async move { kv_get(&store, "k").await }
    })
    .await?;
    assert_eq!(value, "v1");
    eprintln!("KV readable {:?} after killing n1", started.elapsed());

    cluster.restart(0).await.unwrap();
    assert!(cluster.is_running(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_proxy_cuts_blackholes_and_heals() -> Result<()> {
    let nats = start_nats().await;
    // A responder connected directly to the server.
    let direct = nats.client().await?;
    let mut requests = direct.subscribe("selftest.echo").await?;
    let responder_client = direct.clone();
    let responder = tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = responder_client.publish(reply, request.payload).await;
            }
        }
    });
    direct.flush().await?;

    let proxy = FaultProxy::start(nats.addr()).await;
    let client = connect(&proxy.url()).await?;
    let echo = |client: async_nats::Client| async move {
        let reply = tokio::time::timeout(millis(500), client.request("selftest.echo", "hi".into()))
            .await
            .map_err(|_| anyhow!("request timed out"))?
            .map_err(|e| anyhow!("request failed: {e}"))?;
        anyhow::ensure!(&reply.payload[..] == b"hi", "wrong reply");
        Ok(())
    };

    // Publish and receive through the proxy.
    // A flush only empties the client's buffer; the server may not have the
    // subscription yet, so publish until it arrives (deadline 5 s).
    let mut sub = client.subscribe("selftest.data").await?;
    client.flush().await?;
    let deadline = Instant::now() + secs(5);
    let got = loop {
        direct.publish("selftest.data", "x".into()).await?;
        direct.flush().await?;
        match tokio::time::timeout(millis(100), sub.next()).await {
            Ok(got) => break got.context("subscription ended")?,
            Err(_) if Instant::now() < deadline => continue,
            Err(_) => bail!("nothing arrived through the proxy within 5 s"),
        }
    };
    assert_eq!(&got.payload[..], b"x");
    echo(client.clone()).await?;

    for fault in ["cut", "blackhole"] {
        match fault {
            "cut" => proxy.cut(),
            _ => proxy.blackhole(),
        }
        if echo(client.clone()).await.is_ok() {
            bail!("a request went through the proxy after {fault}()");
        }
        // A new connection is accepted but hears nothing.
        let started = Instant::now();
        let refused = connect(&proxy.url()).await;
        assert!(refused.is_err(), "a new client connected after {fault}()");
        assert!(
            started.elapsed() >= millis(1500),
            "the proxy did not stay silent"
        );

        proxy.heal();
        wait_until(
            &format!("requests after heal() from {fault}()"),
            secs(10),
            || echo(client.clone()),
        )
        .await?;
    }
    responder.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn observer_records_heartbeats_and_sees_the_server() -> Result<()> {
    let nats = start_nats().await;
    let observer = Observer::start(&nats.url(), "selftest").await;
    let device = nats.client().await?;
    let group: GroupName = "selftest".parse()?;
    let publisher = tokio::spawn(async move {
        for seq in 0.. {
            let role = if seq < 5 { "client" } else { "server" };
            let term = if seq < 5 { 0 } else { 7 };
            for id in ["a", "b"] {
                let role = if id == "a" { role } else { "client" };
                let payload = serde_json::to_vec(&beat(id, role, term, seq)).expect("json");
                let _ = device
                    .publish(
                        subjects::heartbeat(&group, &id.parse().expect("device id")),
                        payload.into(),
                    )
                    .await;
            }
            tokio::time::sleep(millis(100)).await;
        }
    });
    let (server, term) = observer.wait_for_server(secs(5)).await?;
    assert_eq!((server.as_str(), term), ("a", Term::from_revision(7)));
    let live = observer
        .wait_for(|v| (v.live_ids().len() == 2).then(|| v.live_ids()), secs(2))
        .await?;
    assert_eq!(live, ["a", "b"]);
    observer
        .wait_for(|v| v.converged().is_some(), secs(2))
        .await?;
    assert_eq!(
        observer.server(),
        vec![("a".to_string(), Term::from_revision(7))]
    );
    assert!(observer.heartbeats().len() >= 12);
    observer.check_one_server()?;

    publisher.abort();
    let err = observer
        .wait_for(|v| v.live().is_empty(), millis(100))
        .await
        .expect_err("the devices were heard less than 500 ms ago");
    assert!(err.to_string().contains("a: server term 7"), "{err}");
    observer.wait_for(|v| v.live().is_empty(), secs(2)).await?;
    Ok(())
}

#[test]
fn one_server_check_accepts_a_clean_handover() {
    let t0 = Instant::now();
    let beats = timeline(
        t0,
        &[
            ("a", "server", 3, 0, 2000),
            ("b", "client", 3, 0, 1900),
            // b takes over with overlap of 1 s, inside the lease.
            ("b", "server", 9, 2000, 4000),
            ("a", "server", 3, 2100, 3000),
            ("a", "client", 9, 3100, 4000),
        ],
    );
    check_one_server(&beats, t0).expect("a valid history");
}

#[test]
fn one_server_check_catches_violations() {
    let t0 = Instant::now();
    let same_term = timeline(
        t0,
        &[("a", "server", 3, 0, 500), ("b", "server", 3, 1000, 1500)],
    );
    let err = check_one_server(&same_term, t0).expect_err("same term twice");
    assert!(err.to_string().contains("two servers with term 3"), "{err}");

    let backwards = timeline(
        t0,
        &[("a", "server", 5, 0, 500), ("a", "server", 4, 1500, 2000)],
    );
    let err = check_one_server(&backwards, t0).expect_err("term backwards");
    assert!(err.to_string().contains("went backwards"), "{err}");

    let overlap = timeline(
        t0,
        &[("a", "server", 3, 0, 3000), ("b", "server", 4, 1000, 3000)],
    );
    let err = check_one_server(&overlap, t0).expect_err("overlap of 2 s");
    assert!(err.to_string().contains("longer than"), "{err}");

    // The same overlap broken by silence (a paused server) is fine as long as
    // no spell overlaps longer than the lease.
    let paused = timeline(
        t0,
        &[
            ("a", "server", 3, 0, 1000),
            ("b", "server", 4, 1200, 4000),
            (
                "a",
                "server",
                3,
                2000,
                2000 + LEASE_DURATION.as_millis() as u64 - 100,
            ),
        ],
    );
    check_one_server(&paused, t0).expect("overlap within the lease");
}

/// On a secured run (`UNDERSTUDY_TEST_SECURE`, as `scripts/test.sh` runs the
/// election and project suites a second time), the harness's nats-server
/// refuses a client without TLS and credentials, and the harness's own
/// client gets in, and a device's project service speaks TLS. (On an
/// ordinary run there is nothing to check.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_secured_run_the_bus_refuses_strangers() {
    if understudy_testkit::secure::from_env().is_none() {
        return;
    }
    let nats = start_nats().await;
    let stranger = async_nats::ConnectOptions::new()
        .connection_timeout(secs(2))
        .connect(nats.url())
        .await;
    assert!(
        stranger.is_err(),
        "a client without TLS or credentials is refused"
    );
    connect(&nats.url())
        .await
        .expect("the harness's own client logs in");
    // A device's project service speaks TLS and checks its callers.
    let dev = spawn_device(&[nats.url()], DeviceOpts::numbered("stage", 1, 100));
    let line = wait_until("the device's project service to start", secs(15), || {
        let log = dev.log();
        async move {
            log.lines()
                .find(|l| l.contains("project service on"))
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("not yet"))
        }
    })
    .await
    .unwrap();
    assert!(line.contains("TLS, callers checked"), "{line}");
}
