//! End to end, with the bus itself failing: a nats-server restart, a 3-node
//! NATS cluster losing a node, and one device cut off from NATS by a
//! fault-injecting TCP proxy. Real processes on loopback throughout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use harness::*;
use understudy_protocol::messages::{ElectionEventKind, StepDownReason};
use understudy_protocol::roster::RosterReply;
use understudy_protocol::{Problem, Role};

const GROUP: &str = "stage";
const FIRST_SERVER_WITHIN: Duration = Duration::from_secs(8);

fn opts(id: &str, i: u8, score: u8, extra: &[&str]) -> DeviceOpts {
    DeviceOpts::new(GROUP, id, &mac(i), score).with_args(extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_recovers_after_nats_restarts() {
    let mut nats = start_nats().await;
    let urls = vec![nats.url()];
    let _devs: Vec<Device> = [(1, 200), (2, 150), (3, 100)]
        .iter()
        .map(|(i, s)| spawn_device(&urls, opts(&format!("dev-{i}"), *i, *s, &[])))
        .collect();
    {
        let obs = Observer::start(&nats.url(), GROUP).await;
        let (server, _) = obs
            .wait_converged_on("dev-1", FIRST_SERVER_WITHIN)
            .await
            .unwrap();
        assert_eq!(server, "dev-1");
        obs.check_one_server().unwrap();
    }
    nats.kill();
    nats.restart().await.unwrap();
    let obs = Observer::start(&nats.url(), GROUP).await;
    let (server, _) = obs
        .wait_for(
            |v: &View| {
                v.converged()
                    .filter(|(d, _)| d == "dev-1" && v.live().len() == 3)
            },
            secs(15),
        )
        .await
        .unwrap();
    assert_eq!(server, "dev-1", "the rightful server serves again");
    obs.wait_for(
        |v: &View| {
            v.live()
                .iter()
                .all(|h| h.colour == understudy_protocol::StatusColour::Blue)
        },
        secs(5),
    )
    .await
    .unwrap();
    obs.check_one_server().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_node_of_a_three_node_cluster_never_yields_two_servers() {
    let mut cluster = start_cluster(3).await;
    let all = cluster.urls();
    let joined = all.join(",");
    let _devs: Vec<Device> = [(1, 200), (2, 150), (3, 100)]
        .iter()
        .map(|(i, s)| {
            spawn_device(
                &all,
                opts(&format!("dev-{i}"), *i, *s, &["--replicas", "3"]),
            )
        })
        .collect();
    // The observer listens through the two nodes that stay up.
    let survivors = format!("{},{}", cluster.url(1), cluster.url(2));
    let obs = Observer::start(&survivors, GROUP).await;
    obs.wait_for(View::converged, secs(15)).await.unwrap();
    let killed_ms = unix_ms_now();
    cluster.kill(0);
    // Whoever it is, the group has a server again, and only one: judged on
    // beats every device sent well after the node died (so those that were
    // connected through it have reconnected), not on the view from before.
    obs.wait_for(
        |v: &View| {
            v.converged().filter(|_| {
                let live = v.live();
                live.len() == 3 && live.iter().all(|h| h.sent_at_ms > killed_ms + 3_000)
            })
        },
        secs(20),
    )
    .await
    .unwrap();
    obs.check_one_server().unwrap();
    let _ = joined;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_cut_off_from_nats_steps_down_and_the_next_best_takes_over() {
    let nats = start_nats().await;
    let proxy = FaultProxy::start(nats.addr()).await;
    let direct = vec![nats.url()];
    // A long preempt delay keeps the healed device a client for the test.
    let extra = ["--preempt-delay", "60s"];
    let a = spawn_device(&[proxy.url()], opts("dev-1", 1, 200, &extra));
    let _b = spawn_device(&direct, opts("dev-2", 2, 150, &extra));
    let _c = spawn_device(&direct, opts("dev-3", 3, 100, &extra));
    let obs = Observer::start(&nats.url(), GROUP).await;
    let (server, term) = obs
        .wait_converged_on("dev-1", FIRST_SERVER_WITHIN)
        .await
        .unwrap();
    assert_eq!(server, "dev-1");

    proxy.blackhole();
    let (next, new_term) = obs
        .wait_for(|v: &View| v.server().filter(|(d, _)| d != "dev-1"), secs(3))
        .await
        .unwrap();
    assert_eq!(next, "dev-2");
    assert!(new_term > term);

    // Keep it cut off until its own lease has run out and it has stepped
    // down by itself (healing earlier would let it learn of dev-2 from the
    // bus instead, which is a different test).
    wait_until("dev-1 to step down while cut off", secs(10), || async {
        if a.log().contains("stepped down") {
            Ok(())
        } else {
            anyhow::bail!("dev-1 has not stepped down yet")
        }
    })
    .await
    .unwrap();

    let healed_at_ms = unix_ms_now();
    proxy.heal();
    // Beats it queued while cut off may arrive late; what it says once it
    // speaks again is what counts.
    let back = wait_until("a fresh beat from dev-1", secs(10), || {
        let beats = obs.heartbeats();
        async move {
            beats
                .into_iter()
                .map(|b| b.msg)
                .find(|h| h.device.as_str() == "dev-1" && h.sent_at_ms >= healed_at_ms)
                .ok_or_else(|| anyhow::anyhow!("no beat from dev-1 since the heal"))
        }
    })
    .await
    .unwrap();
    assert_eq!(
        back.role,
        Role::Client,
        "the cut-off server rejoins as a client"
    );
    obs.wait_converged_on("dev-2", secs(5)).await.unwrap();
    // It said why it stopped once it could speak again: the event made while
    // it was cut off is sent again until JetStream has stored it.
    obs.wait_for(
        |v: &View| {
            v.events().iter().any(|e| matches!(&e.msg.kind,
                ElectionEventKind::SteppedDown { device, reason: StepDownReason::LeaseLost | StepDownReason::Deposed, .. }
                    if device.as_str() == "dev-1"))
        },
        secs(10),
    )
    .await
    .unwrap();
    obs.check_one_server().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_with_one_id_are_reported_not_merged() {
    let nats = start_nats().await;
    let urls = vec![nats.url()];
    let _a = spawn_device(&urls, opts("dev-1", 1, 200, &[]));
    // The twins beat every 100 ms, as a server does, so that 3 s of beats
    // give 30 chances to catch one beating with the other's state.
    let fast = ["--client-heartbeat-interval", "100ms"];
    let _b = spawn_device(&urls, opts("dev-2", 2, 100, &fast));
    let _twin = spawn_device(&urls, opts("dev-2", 3, 50, &fast));
    let obs = Observer::start(&nats.url(), GROUP).await;
    // Both processes named dev-2 say so in their own heartbeats (B2)...
    wait_until(
        "both dev-2 processes to flag the duplicate",
        secs(10),
        || {
            let beats = obs.heartbeats();
            async move {
                let flagging: BTreeSet<String> = beats
                    .iter()
                    .map(|b| &b.msg)
                    .filter(|h| h.device.as_str() == "dev-2")
                    .filter(|h| h.problems.contains(&Problem::DuplicateDeviceId))
                    .map(|h| h.mac.to_string())
                    .collect();
                if flagging.len() == 2 {
                    Ok(())
                } else {
                    anyhow::bail!("flagged by {flagging:?} only")
                }
            }
        },
    )
    .await
    .unwrap();
    // ...and neither is merged into the other: each process beats under its
    // own instance, always with its own MAC and its own score. (Before the
    // services followed one election service, a twin's heartbeat service
    // took the other's election state, reported four times a second, and
    // beat as it now and then.) Judge on at least 3 s of beats from each.
    wait_until("30 beats from each dev-2 process", secs(10), || {
        let beats = obs.heartbeats();
        async move {
            let mut per_mac: BTreeMap<String, usize> = BTreeMap::new();
            for h in beats.iter().map(|b| &b.msg) {
                if h.device.as_str() == "dev-2" {
                    *per_mac.entry(h.mac.to_string()).or_default() += 1;
                }
            }
            if per_mac.len() == 2 && per_mac.values().all(|n| *n >= 30) {
                Ok(())
            } else {
                anyhow::bail!("beats so far: {per_mac:?}")
            }
        }
    })
    .await
    .unwrap();
    let mut seen: BTreeMap<String, BTreeSet<(String, u8)>> = BTreeMap::new();
    for h in obs.heartbeats().iter().map(|b| &b.msg) {
        if h.device.as_str() == "dev-2" {
            seen.entry(h.instance.to_string())
                .or_default()
                .insert((h.mac.to_string(), h.score.get()));
        }
    }
    let mut pairs: Vec<(String, u8)> = seen
        .values()
        .map(|p| {
            assert_eq!(p.len(), 1, "one instance beat as two devices: {seen:?}");
            p.iter().next().cloned().unwrap()
        })
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        vec![
            ("02:00:00:00:00:02".to_string(), 100),
            ("02:00:00:00:00:03".to_string(), 50)
        ],
        "{seen:?}"
    );
    // Whichever device answers the status request flags it too, once it has
    // heard both instances.
    let url = nats.url();
    wait_until("status to show the duplicate", secs(5), || {
        let url = url.clone();
        async move {
            let out =
                run_cli_checked(&["status", "--group", GROUP, "--nats", &url, "--json"]).await?;
            let doc: RosterReply = serde_json::from_str(&out)?;
            let dup = doc
                .devices
                .iter()
                .any(|d| d.device.as_str() == "dev-2" && d.duplicate);
            if dup {
                Ok(())
            } else {
                anyhow::bail!("not flagged yet: {out}")
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_stops_promptly_on_sigterm_even_with_the_bus_gone() {
    let mut nats = start_nats().await;
    let urls = vec![nats.url()];
    let mut dev = spawn_device(&urls, opts("dev-1", 1, 200, &[]));
    let obs = Observer::start(&nats.url(), GROUP).await;
    obs.wait_for(View::converged, FIRST_SERVER_WITHIN)
        .await
        .unwrap();
    drop(obs);
    nats.kill();
    dev.signal(Signal::Term).unwrap();
    let status = dev.wait_exit(secs(10)).await.unwrap();
    assert!(status.success(), "exit status {status}");
}

/// B10 with discovery hearing only its own group's heartbeats: the devices
/// of another group are counted network-wide from their presence — online,
/// offline, servers and clients — and one that stops cleanly is no longer
/// counted; the group's own roster lists its own devices only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_of_another_group_are_counted_network_wide() {
    let nats = start_nats().await;
    let urls = vec![nats.url()];
    let _stage = spawn_device(&urls, opts("dev-1", 1, 200, &[]));
    let _foyer_1 = spawn_device(&urls, DeviceOpts::new("foyer", "foyer-1", &mac(11), 200));
    let _foyer_2 = spawn_device(
        &urls,
        DeviceOpts::new("foyer", "foyer-2", &mac(12), 100).with_args(&["--offline"]),
    );
    let mut foyer_3 = spawn_device(&urls, DeviceOpts::new("foyer", "foyer-3", &mac(13), 50));
    let url = nats.url();
    let status = || {
        let url = url.clone();
        async move {
            // Retried by the waits: right after the start no device of
            // the group may answer yet.
            let out =
                run_cli_checked(&["status", "--group", GROUP, "--nats", &url, "--json"]).await?;
            anyhow::Ok(serde_json::from_str::<RosterReply>(&out)?)
        }
    };
    wait_until("stage to count the foyer's devices", secs(15), || async {
        let doc = status().await?;
        let n = &doc.network_counts;
        let own: Vec<&str> = doc.devices.iter().map(|d| d.device.as_str()).collect();
        anyhow::ensure!(own == ["dev-1"], "stage's roster lists {own:?}");
        let got = (n.devices_online, n.devices_offline, n.servers, n.clients);
        // dev-1 and foyer-1 serve; foyer-3 is a client; foyer-2 is offline.
        anyhow::ensure!(got == (3, 1, 2, 1), "network counts {n:?}");
        Ok(())
    })
    .await
    .unwrap();
    foyer_3.signal(Signal::Term).unwrap();
    foyer_3.wait_exit(secs(10)).await.unwrap();
    wait_until(
        "stage to stop counting foyer-3 after its goodbye",
        secs(10),
        || async {
            let n = status().await?.network_counts;
            let got = (n.devices_online, n.devices_offline, n.devices_missing);
            anyhow::ensure!(got == (2, 1, 0), "network counts {n:?}");
            Ok(())
        },
    )
    .await
    .unwrap();
}
