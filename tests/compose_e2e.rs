//! The compose lab, end to end: `scripts/compose-lab.sh up` builds the
//! images without a registry and brings up `docker-compose.yml` under a
//! project of this test's own (its own host ports and subnets); the five
//! containerised devices elect the best one over the 3-node NATS cluster,
//! secured (TLS, a user per role, credentials made by the `secrets`
//! service); the host's CLI, the dashboard and Prometheus see them. Then
//! everything is torn down — containers, networks, volumes — pass or fail.
//!
//! Needs a Docker daemon and `docker compose` or `docker-compose`; without a
//! daemon it prints why and passes, unless `CI` is set. Bounded: at most
//! 25 min to come up with the images built cold (`compose::UP_WITHIN`; the
//! static release build is most of it), of which 300 s for the services to
//! be healthy; about 10 s when the images are cached. Then at most 60 s for
//! the group to converge, 30 s for the scrapes and 30 s for the heartbeats,
//! and the teardown (about 3 s).

#[path = "harness/compose.rs"]
mod compose;
#[path = "harness/mod.rs"]
mod harness;

use anyhow::{Context, Result, bail, ensure};
use harness::*;
use understudy_protocol::Role;

use compose::{ComposeLab, GROUP};

const DEVICES: [&str; 5] = ["dev-1", "dev-2", "dev-3", "dev-4", "dev-5"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_compose_lab_comes_up_with_five_devices_and_one_server() -> Result<()> {
    let Some(lab) = ComposeLab::up_or_skip("e2e").await? else {
        return Ok(());
    };
    println!(
        "compose lab {} up and healthy in {:.1} s (images included)",
        lab.project(),
        lab.up_took.as_secs_f64()
    );

    // On the bus: five devices, dev-1 (score 200) the one server, all blue.
    let obs = Observer::start_with(lab.connect().await?, GROUP).await;
    let (server, term) = obs
        .wait_for(
            |v: &View| {
                let live = v.live();
                let all = live.len() == DEVICES.len()
                    && live.iter().all(|h| {
                        h.colour == understudy_protocol::StatusColour::Blue && !h.in_grace
                    });
                v.converged().filter(|(d, _)| all && d == "dev-1")
            },
            secs(60),
        )
        .await
        .context("five blue devices converged on dev-1")?;
    let view = obs.view();
    assert_eq!(view.live_ids(), DEVICES, "{}", view.summary());
    let clients = view
        .live()
        .iter()
        .filter(|h| h.role == Role::Client)
        .count();
    assert_eq!(clients, 4, "{}", view.summary());
    // Each device is on the lab network with the MAC compose gave it.
    for (i, id) in DEVICES.iter().enumerate() {
        let beat = view.device(id).context("live")?;
        assert_eq!(beat.mac.to_string(), format!("02:42:00:00:00:0{}", i + 1));
    }

    // The host's CLI as the operator: the same group, every device blue.
    let status = run_with_env(&["status", "--json"], &lab.operator_env()).await?;
    let roster: serde_json::Value = serde_json::from_str(&status)?;
    ensure!(
        roster["server"]["device"] == "dev-1",
        "status shows another server: {status}"
    );
    let blue = roster["devices"]
        .as_array()
        .context("devices")?
        .iter()
        .filter(|d| d["colour"] == "blue" && d["live"] == true)
        .count();
    ensure!(blue == 5, "status shows {blue} blue devices: {status}");

    // The dashboard answers, and the API with the admin token.
    let page = http::get(lab.gateway(), "/").await?;
    ensure!(page.status == 200, "dashboard: {}", page.status);
    let token = format!("Bearer {}", lab.admin_token()?);
    let groups = http::request(
        lab.gateway(),
        "GET",
        "/api/v1/groups",
        &[("authorization", token.as_str())],
        None,
    )
    .await?;
    ensure!(
        groups.status == 200,
        "GET /api/v1/groups: {}",
        groups.status
    );

    // Prometheus scrapes every device.
    wait_until("Prometheus scraping all five devices up", secs(30), || {
        let addr = lab.prometheus();
        async move {
            let reply = http::get(addr, "/api/v1/targets?state=active").await?;
            let body = reply.json()?;
            let targets = body["data"]["activeTargets"]
                .as_array()
                .context("activeTargets")?;
            let up = targets
                .iter()
                .filter(|t| t["labels"]["job"] == "understudy-devices" && t["health"] == "up")
                .count();
            if up == 5 {
                Ok(())
            } else {
                bail!("{up} device targets up: {body}")
            }
        }
    })
    .await?;

    // S1 over a good stretch of the group's life: at least 56 heartbeats
    // (four seconds of the server beating every 100 ms and four clients
    // every second).
    wait_until("56 heartbeats recorded", secs(30), || {
        let beats = obs.recording().heartbeats.len();
        async move {
            if beats >= 56 {
                Ok(())
            } else {
                bail!("{beats} heartbeats so far")
            }
        }
    })
    .await?;
    obs.check_one_server()?;
    let view = obs.view();
    ensure!(
        view.servers() == [("dev-1".to_string(), term)],
        "{}",
        view.summary()
    );
    let beats = obs.recording().heartbeats.len();
    println!(
        "server {server} (term {term}); S1 held over {beats} heartbeats; the CLI, the dashboard and Prometheus see the five devices"
    );
    Ok(())
}

/// Runs this build's `understudy` with `args` and the variables `env` (and
/// no other `UNDERSTUDY_*` of the developer's); its standard output, or an
/// error with its standard error.
async fn run_with_env(args: &[&str], env: &[(String, String)]) -> Result<String> {
    let mut cmd = tokio::process::Command::new(understudy_bin());
    cmd.args(args).stdin(std::process::Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("UNDERSTUDY_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let out = tokio::time::timeout(CLI_TIMEOUT, cmd.output())
        .await
        .context("the CLI did not finish")??;
    if !out.status.success() {
        bail!(
            "understudy {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
