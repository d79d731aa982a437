//! End to end: the Prometheus metrics of real `understudy node` processes and
//! a real gateway, scraped over HTTP while the server is killed. Every
//! scrape also passes `promtool check metrics` (Debian's `prometheus`
//! package; `scripts/test.sh` installs it) and the Prometheus naming rules.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use harness::*;
use tokio::io::AsyncWriteExt;

const GROUP: &str = "stage";
/// Grace (2 s) plus room for a loaded 2-core CI machine.
const FIRST_SERVER_WITHIN: Duration = Duration::from_secs(8);
/// Loose on purpose: the figures are the benchmark's job.
const FAILOVER_WITHIN: Duration = Duration::from_secs(5);
const PROMTOOL: &str = "/usr/bin/promtool";

/// One scrape: the samples of `GET /metrics`, as `name{labels} value` lines.
struct Scrape {
    text: String,
}

impl Scrape {
    async fn of(addr: SocketAddr) -> Result<Scrape> {
        let reply = http::get(addr, "/metrics").await?;
        if reply.status != 200 {
            bail!("GET /metrics answered {}", reply.status);
        }
        let content_type = reply.header("content-type").unwrap_or_default();
        if !content_type.starts_with("text/plain; version=0.0.4") {
            bail!("GET /metrics is {content_type:?}, not the Prometheus text format");
        }
        Ok(Scrape { text: reply.text() })
    }

    /// The value of the sample `name` whose labels include every `labels`
    /// pair; `None` if there is none.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.text.lines().find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            (n == name && all).then(|| value.parse().ok()).flatten()
        })
    }

    fn device(&self, name: &str, device: &str) -> Option<f64> {
        self.value(name, &[("group", GROUP), ("device", device)])
    }
}

/// Metric names `[a-zA-Z_:][a-zA-Z0-9_:]*`, ours all `understudy_…`; label
/// names `[a-zA-Z_][a-zA-Z0-9_]*`, none reserved (`__…`).
fn check_names(text: &str) -> Result<()> {
    let word = |s: &str, colon: bool| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    };
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        if !word(name, true) || !name.starts_with("understudy_") {
            bail!("metric name {name:?} breaks the naming rules: {line}");
        }
        for pair in labels
            .trim_end_matches('}')
            .split("\",")
            .filter(|p| !p.is_empty())
        {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            if !word(key, false) || key.starts_with("__") {
                bail!("label name {key:?} breaks the naming rules: {line}");
            }
        }
    }
    Ok(())
}

/// Runs `promtool args…` with `stdin`, failing unless it succeeds. `Ok(false)`
/// when promtool is not installed and `CI` is not set (the check is skipped
/// with a note).
async fn promtool(args: &[&str], stdin: &str) -> Result<bool> {
    if !Path::new(PROMTOOL).exists() {
        if std::env::var_os("CI").is_some() {
            bail!(
                "{PROMTOOL} is missing (Debian's prometheus package; scripts/test.sh installs it)"
            );
        }
        eprintln!(
            "note: {PROMTOOL} is missing: promtool {} is skipped",
            args.join(" ")
        );
        return Ok(false);
    }
    let mut child = tokio::process::Command::new(PROMTOOL)
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run promtool")?;
    let mut input = child.stdin.take().context("promtool's stdin")?;
    input.write_all(stdin.as_bytes()).await?;
    drop(input);
    let out = tokio::time::timeout(secs(30), child.wait_with_output())
        .await
        .context("promtool did not finish")??;
    if !out.status.success() {
        return Err(anyhow!(
            "promtool {} failed:\n{}{}\n--- its input:\n{stdin}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_failover_on_every_device_and_the_gateway() {
    let nats = start_nats().await;
    let obs = Observer::start(&nats.url(), GROUP).await;
    let urls = vec![nats.url()];
    let ports = free_ports(4).unwrap();
    let addr = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[i]));
    let mut devs: Vec<Device> = [200u8, 150, 100]
        .iter()
        .enumerate()
        .map(|(i, score)| {
            let id = format!("dev-{}", i + 1);
            let listen = addr(i).to_string();
            spawn_device(
                &urls,
                DeviceOpts::new(GROUP, &id, &mac(i as u8 + 1), *score)
                    .with_args(&["--metrics-listen", listen.as_str()]),
            )
        })
        .collect();
    let mut gw_opts = GatewayOpts::free_ports(None).unwrap();
    gw_opts.metrics = Some(addr(3));
    let gateway = start_gateway_on(&nats.url(), gw_opts).await;

    obs.wait_converged_on("dev-1", FIRST_SERVER_WITHIN)
        .await
        .unwrap();
    // Every device has seen dev-1 serve; remember where the counters stand.
    let before = wait_until("every device to report dev-1 serving", secs(5), || async {
        let mut seen = Vec::new();
        for (i, id) in ["dev-1", "dev-2", "dev-3"].iter().enumerate() {
            let s = Scrape::of(addr(i)).await?;
            let has = s.device("understudy_group_has_server", id);
            if has != Some(1.0) {
                bail!("{id}: understudy_group_has_server is {has:?}");
            }
            seen.push(s);
        }
        Ok(seen)
    })
    .await
    .unwrap();
    assert_eq!(before[0].device("understudy_is_server", "dev-1"), Some(1.0));
    assert_eq!(before[1].device("understudy_is_server", "dev-2"), Some(0.0));
    assert_eq!(before[0].device("understudy_score", "dev-1"), Some(200.0));
    assert_eq!(before[0].device("understudy_online", "dev-1"), Some(1.0));
    let counters = |s: &Scrape, id: &str| {
        (
            s.device("understudy_server_changes_total", id)
                .unwrap_or(0.0),
            s.device("understudy_failover_seconds_count", id)
                .unwrap_or(0.0),
        )
    };
    let was = [counters(&before[1], "dev-2"), counters(&before[2], "dev-3")];
    assert!(was[0].0 >= 1.0, "dev-2 has seen dev-1 become the server");

    devs[0].kill9();
    obs.wait_for(
        |v: &View| v.server().filter(|(d, _)| d == "dev-2"),
        FAILOVER_WITHIN,
    )
    .await
    .unwrap();
    let after = wait_until(
        "the survivors' metrics to show the failover",
        secs(5),
        || async {
            let s2 = Scrape::of(addr(1)).await?;
            let s3 = Scrape::of(addr(2)).await?;
            if s2.device("understudy_is_server", "dev-2") != Some(1.0) {
                bail!("dev-2 does not report serving yet");
            }
            for (i, (s, id)) in [(&s2, "dev-2"), (&s3, "dev-3")].into_iter().enumerate() {
                let (changes, failovers) = counters(s, id);
                if changes != was[i].0 + 1.0 {
                    bail!("{id}: server changes {changes}, was {}", was[i].0);
                }
                if failovers <= was[i].1 {
                    bail!("{id}: failover count {failovers}, was {}", was[i].1);
                }
            }
            Ok((s2, s3))
        },
    )
    .await
    .unwrap();
    let (s2, s3) = after;
    assert_eq!(s3.device("understudy_is_server", "dev-3"), Some(0.0));
    assert_eq!(s3.device("understudy_group_has_server", "dev-3"), Some(1.0));
    assert!(
        s2.device("understudy_became_server_total", "dev-2") >= Some(1.0),
        "dev-2 counts becoming the server"
    );
    assert!(
        s3.device("understudy_heartbeats_received_total", "dev-3") > Some(0.0)
            && s3.device("understudy_heartbeats_sent_total", "dev-3") > Some(0.0)
    );
    assert_eq!(s3.value("understudy_nats_connected", &[]), Some(1.0));
    obs.check_one_server().unwrap();

    // A show hold shows on every device (and lifted, goes).
    assert_eq!(s2.device("understudy_group_held", "dev-2"), Some(0.0));
    let url = nats.url();
    for (on, want) in [("on", 1.0), ("off", 0.0)] {
        run_cli_ok(&["hold", on, "--group", GROUP, "--nats", &url]).await;
        wait_until("every survivor to report the hold", secs(5), || async {
            for (i, id) in [(1, "dev-2"), (2, "dev-3")] {
                let held = Scrape::of(addr(i))
                    .await?
                    .device("understudy_group_held", id);
                if held != Some(want) {
                    bail!("{id}: understudy_group_held is {held:?}, not {want} after hold {on}");
                }
            }
            Ok(())
        })
        .await
        .unwrap();
    }

    // The gateway counts what it answers.
    let reply = http::get(gateway.http(), "/api/v1/groups").await.unwrap();
    assert_eq!(reply.status, 200);
    let g = Scrape::of(addr(3)).await.unwrap();
    assert!(
        g.value(
            "understudy_gateway_requests_total",
            &[("route", "/api/v1/groups"), ("status", "200")]
        ) >= Some(1.0),
        "{}",
        g.text
    );
    assert_eq!(g.value("understudy_nats_connected", &[]), Some(1.0));

    for s in [&s2, &s3, &g] {
        check_names(&s.text).unwrap();
        assert!(s.text.contains("understudy_build_info{version=\""));
        promtool(&["check", "metrics"], &s.text).await.unwrap();
    }
}

/// B2 on a device's own metrics: cut off from NATS it shows red with
/// "Cannot reach the message bus" (its discovery's status cannot reach it
/// over the bus, so the last one heard must not stand), blue once back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cut_off_from_nats_shows_red_in_its_metrics_and_blue_once_back() {
    let nats = start_nats().await;
    let proxy = FaultProxy::start(nats.addr()).await;
    let ports = free_ports(1).unwrap();
    let metrics = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let listen = metrics.to_string();
    let _server = spawn_device(&[nats.url()], DeviceOpts::new(GROUP, "dev-1", &mac(1), 200));
    let _client = spawn_device(
        &[proxy.url()],
        DeviceOpts::new(GROUP, "dev-2", &mac(2), 100)
            .with_args(&["--metrics-listen", listen.as_str()]),
    );
    let obs = Observer::start(&nats.url(), GROUP).await;
    obs.wait_converged_on("dev-1", FIRST_SERVER_WITHIN)
        .await
        .unwrap();
    let colour = |want: f64, bus: f64| async move {
        let s = Scrape::of(metrics).await?;
        let colour = s.device("understudy_status_colour", "dev-2");
        let connected = s.value("understudy_nats_connected", &[]);
        let problem = s.value(
            "understudy_problems",
            &[("device", "dev-2"), ("problem", "bus_unreachable")],
        );
        ensure!(
            colour == Some(want) && connected == Some(bus),
            "colour {colour:?}, connected {connected:?}, bus_unreachable {problem:?}"
        );
        Ok(problem)
    };
    wait_until("dev-2 blue in its metrics", secs(5), || colour(1.0, 1.0))
        .await
        .unwrap();

    proxy.cut();
    let problem = wait_until("dev-2 red in its metrics while cut off", secs(15), || {
        colour(2.0, 0.0)
    })
    .await
    .unwrap();
    assert_eq!(problem, Some(1.0), "the problem is named");

    proxy.heal();
    wait_until("dev-2 blue again in its metrics", secs(15), || {
        colour(1.0, 1.0)
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_address_that_cannot_be_bound_stops_the_device_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = TempDir::new("metrics-bind").unwrap();
    let out = run_cli(&[
        "node",
        "--group",
        GROUP,
        "--device-id",
        "dev-x",
        "--mac",
        &mac(9),
        "--nats",
        "nats://127.0.0.1:1",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--metrics-listen",
        &addr,
    ])
    .await;
    assert!(!out.status.success(), "the device must not start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen for metrics on {addr}")),
        "{err}"
    );
}

#[tokio::test]
async fn the_shipped_alert_rules_are_valid_and_fire_when_they_should() {
    promtool(&["check", "rules", "deploy/prometheus/alerts.yml"], "")
        .await
        .unwrap();
    // Each alert fires on the series that should raise it, and a failover
    // shorter than 2 s raises none (deploy/prometheus/alerts_test.yml).
    promtool(&["test", "rules", "deploy/prometheus/alerts_test.yml"], "")
        .await
        .unwrap();
}

#[tokio::test]
async fn the_grafana_dashboard_queries_are_valid_promql() {
    let path = repo_root().join("deploy/grafana/understudy.json");
    let dash: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("an expr").to_owned());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    for wanted in [
        "understudy_is_server",
        "understudy_failover_seconds",
        "understudy_without_server_seconds",
        "understudy_peers",
        "understudy_project_revision",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(wanted)),
            "no panel shows {wanted}"
        );
    }
    // Grafana's variables as Prometheus would receive them, each query as a
    // recording rule: promtool parses every one.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e.replace("$group", ".*").replace("$__range", "1h");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let dir = TempDir::new("dashboard-rules").unwrap();
    let file = dir.path().join("rules.yml");
    std::fs::write(&file, &rules).unwrap();
    promtool(&["check", "rules", file.to_str().unwrap()], "")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_labs_prometheus_has_one_series_per_device() {
    let Some(prometheus) = ["/usr/bin/prometheus"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "/usr/bin/prometheus is missing (scripts/test.sh installs it)"
        );
        eprintln!("note: /usr/bin/prometheus is missing: the lab's Prometheus is not tested");
        return;
    };
    let dir = TempDir::new("lab").unwrap();
    // Its own process group: if this test fails, dropping it kills the lab
    // and everything the lab started (nats-server, devices, Prometheus).
    let mut lab = Launch::new("lab", understudy_bin(), dir.path().join("lab.log"))
        .scrub_understudy_env()
        .env("NO_COLOR", "1")
        .args([
            "lab",
            "--devices",
            "3",
            "--no-gateway",
            "--duration",
            "120s",
        ])
        .arg("--dir")
        .arg(dir.path().join("lab"))
        .arg("--nats-server")
        .arg(nats_server_bin())
        .args(["--prometheus", prometheus])
        .own_process_group()
        .spawn()
        .unwrap();
    let addr: SocketAddr = wait_until("the lab to say where its Prometheus is", secs(60), || {
        let log = lab.log();
        async move {
            log.lines()
                .find_map(|l| l.strip_prefix("prometheus:   http://"))
                .and_then(|rest| rest.split_whitespace().next())
                .context("not yet")?
                .parse::<SocketAddr>()
                .map_err(Into::into)
        }
    })
    .await
    .unwrap();
    let devices = wait_until(
        "the lab's Prometheus to hold one understudy_group_has_server series per device",
        secs(30),
        || async {
            let reply = http::get(addr, "/api/v1/query?query=understudy_group_has_server").await?;
            let doc = reply.json()?;
            let mut devices: Vec<String> = doc["data"]["result"]
                .as_array()
                .context("no result")?
                .iter()
                .filter(|r| r["value"][1] == "1")
                .filter_map(|r| r["metric"]["device"].as_str().map(str::to_owned))
                .collect();
            devices.sort();
            if devices.len() != 3 {
                bail!("series with a server: {devices:?}");
            }
            Ok(devices)
        },
    )
    .await
    .unwrap();
    assert_eq!(devices, ["dev-1", "dev-2", "dev-3"]);
    // SIGTERM: the lab stops everything it started.
    lab.signal(Signal::Term).unwrap();
    let status = lab.wait_exit(secs(20)).await.unwrap();
    assert!(status.success(), "{status}");
}

/// One span an OTLP receiver of this test was sent.
#[derive(Debug, Clone)]
struct SpanSeen {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
}

/// The spans an OTLP receiver of this test was sent.
type Received = std::sync::Arc<std::sync::Mutex<Vec<SpanSeen>>>;

mod otlp {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };

    /// A collector that only keeps what it is sent.
    pub struct Receiver(pub super::Received);

    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut got = self.0.lock().unwrap();
            for rs in request.into_inner().resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(|v| match &v.value {
                        Some(
                            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                                s,
                            ),
                        ) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                    got.push(super::SpanSeen {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent: span.parent_span_id,
                    });
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }
}

/// The first span named `name` that `service` exported, if it came yet.
fn find_span(received: &Received, service: &str, name: &str) -> Result<SpanSeen> {
    let got = received.lock().unwrap();
    got.iter()
        .find(|s| s.service == service && s.name == name)
        .cloned()
        .with_context(|| format!("no {name} span from {service} yet; got {got:?}"))
}

/// Starts an OTLP/gRPC receiver on a free loopback port; it runs until the
/// test's runtime ends.
async fn start_otlp_receiver() -> (SocketAddr, Received) {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
    let received: Received = Default::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(otlp::Receiver(received.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_change_and_a_gateway_call_are_each_one_trace_across_processes() {
    let (collector, received) = start_otlp_receiver().await;
    let endpoint = format!("http://{collector}");
    let nats = start_nats().await;
    let obs = Observer::start(&nats.url(), GROUP).await;
    let _dev = spawn_device(
        &[nats.url()],
        DeviceOpts::new(GROUP, "dev-1", &mac(1), 100)
            .with_env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            // Export within 200 ms rather than the default 5 s.
            .with_env("OTEL_BSP_SCHEDULE_DELAY", "200"),
    );
    obs.wait_converged_on("dev-1", FIRST_SERVER_WITHIN)
        .await
        .unwrap();
    let dir = TempDir::new("trace").unwrap();
    let file = dir.path().join("show.json");
    std::fs::write(&file, b"{\"cues\": [1, 2, 3]}").unwrap();
    let out = tokio::process::Command::new(understudy_bin())
        .args(["project", "put", "--group", GROUP, "--nats", &nats.url()])
        .arg("--file")
        .arg(&file)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CLI_TIMEOUT, out)
        .await
        .expect("project put finishes")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (submit, commit) = wait_until(
        "the CLI's submit span and the server's commit span",
        secs(10),
        || async {
            Ok((
                find_span(&received, "understudy-cli", "project.submit")?,
                find_span(&received, "understudy-node", "project.commit")?,
            ))
        },
    )
    .await
    .unwrap();
    assert_eq!(submit.trace_id.len(), 16, "a trace id");
    assert_eq!(
        submit.trace_id, commit.trace_id,
        "one change, one trace across processes"
    );
    assert_eq!(
        commit.parent, submit.span_id,
        "the server's commit is a child of the CLI's submit"
    );

    // A gateway call is one trace too: the gateway's request span, and the
    // device's answer to the control request it made over NATS.
    let mut opts = GatewayOpts::free_ports(Some("secret")).unwrap();
    opts.env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
    ];
    let gateway = start_gateway_on(&nats.url(), opts).await;
    let reply = http::request(
        gateway.http(),
        "PUT",
        &format!("/api/v1/groups/{GROUP}/devices/dev-1/score"),
        &[
            ("Authorization", "Bearer secret"),
            ("Content-Type", "application/json"),
        ],
        Some(b"{\"score\":120}".as_slice()),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let (call, control, election) = wait_until(
        "the gateway's request span, the device's control span and its election span",
        secs(10),
        || async {
            Ok((
                find_span(&received, "understudy-gateway", "gateway.request")?,
                find_span(&received, "understudy-node", "control")?,
                find_span(&received, "understudy-node", "election")?,
            ))
        },
    )
    .await
    .unwrap();
    assert_eq!(
        call.trace_id, control.trace_id,
        "one call, one trace across processes"
    );
    assert_eq!(
        control.parent, call.span_id,
        "the device's answer is a child of the call"
    );
    assert_ne!(
        election.trace_id, call.trace_id,
        "the start-up election is a trace of its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_otel_variables_nothing_connects_to_a_collector() {
    if std::env::vars().any(|(k, _)| k.starts_with("OTEL_")) {
        eprintln!("note: OTEL_* variables are set here: this check is skipped");
        return;
    }
    // The OTLP default endpoint, if free: a process exporting without being
    // asked would connect here.
    let Ok(default) = tokio::net::TcpListener::bind("127.0.0.1:4317").await else {
        eprintln!("note: 127.0.0.1:4317 is taken: this check is skipped");
        return;
    };
    let nats = start_nats().await;
    let obs = Observer::start(&nats.url(), GROUP).await;
    let _dev = spawn_device(&[nats.url()], DeviceOpts::new(GROUP, "dev-1", &mac(1), 100));
    obs.wait_converged_on("dev-1", FIRST_SERVER_WITHIN)
        .await
        .unwrap();
    let dir = TempDir::new("no-trace").unwrap();
    let file = dir.path().join("show.json");
    std::fs::write(&file, b"{}").unwrap();
    run_cli_ok(&[
        "project",
        "put",
        "--group",
        GROUP,
        "--nats",
        &nats.url(),
        "--file",
        file.to_str().unwrap(),
    ])
    .await;
    let accepted = tokio::time::timeout(Duration::from_millis(500), default.accept()).await;
    assert!(
        accepted.is_err(),
        "something connected to the OTLP port without OTEL variables"
    );
}
