//! understudy's Prometheus metrics: one registry per process, the metric
//! families every service fills, and the `GET /metrics` endpoint.
//!
//! Metrics enter in one place. Every family is registered here, once per
//! process, in [`metrics()`]; a service takes the handles of its own device
//! (`metrics().election(group, device)`, …) when it starts and only counts
//! and sets through them. Nothing is exported until a process is asked to
//! ([`serve`], `--metrics-listen`), and counting costs an atomic add. The
//! names, types and meaning of every family are in `docs/telemetry.md`.
//!
//! Figures about time — leaderless stretches, failovers — come from the
//! pure [`watch::ServerWatch`], which the election driver feeds.

pub mod trace;
pub mod watch;

use std::fmt::Write as _;
use std::future::Future;
use std::sync::LazyLock;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{info, warn};

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::gauge::Gauge;
pub use watch::{Seen, ServerWatch};

/// The labels of a device's own figures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    /// The project group.
    pub group: String,
    /// The device.
    pub device: String,
}

/// A device's figure broken down by one more label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    group: String,
    device: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    group: String,
    device: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProblemLabels {
    group: String,
    device: String,
    problem: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

type Seconds = Family<DeviceLabels, Histogram, fn() -> Histogram>;

/// Bounds (seconds) of the failover and leaderless-time histograms: the
/// failover target (≤ 500 ms p99) falls between buckets, and a stuck group
/// (many seconds) is still told apart.
pub const SECONDS_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0,
];

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS)
}

/// Every metric family of this process (module docs).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    // election
    is_server: Family<DeviceLabels, Gauge>,
    group_has_server: Family<DeviceLabels, Gauge>,
    group_held: Family<DeviceLabels, Gauge>,
    term: Family<DeviceLabels, Gauge>,
    score: Family<DeviceLabels, Gauge>,
    online: Family<DeviceLabels, Gauge>,
    server_changes: Family<DeviceLabels, Counter>,
    elections_started: Family<DeviceLabels, Counter>,
    became_server: Family<DeviceLabels, Counter>,
    stepped_down: Family<ReasonLabels, Counter>,
    without_server: Seconds,
    failover: Seconds,
    // heartbeat
    peers: Family<StateLabels, Gauge>,
    heartbeats_sent: Family<DeviceLabels, Counter>,
    heartbeats_received: Family<DeviceLabels, Counter>,
    status_colour: Family<DeviceLabels, Gauge>,
    problems: Family<ProblemLabels, Gauge>,
    // project sync
    project_revision: Family<DeviceLabels, Gauge>,
    project_commits: Family<DeviceLabels, Counter>,
    project_outbox: Family<DeviceLabels, Gauge>,
    project_conflicts: Family<DeviceLabels, Counter>,
    project_sent: Family<DeviceLabels, Counter>,
    project_received: Family<DeviceLabels, Counter>,
    // gateway
    requests: Family<RequestLabels, Counter>,
    sessions: Family<KindLabels, Gauge>,
    subscribers: Gauge,
    // process
    bad_messages: Family<KindLabels, Counter>,
    nats_connected: Gauge,
    nats_reconnects: Counter,
    nats_connected_before: std::sync::atomic::AtomicBool,
}

macro_rules! register {
    ($reg:expr, $name:literal, $help:literal, $metric:expr) => {{
        let m = $metric;
        $reg.register($name, $help, m.clone());
        m
    }};
}

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::default();
        let build_info: Family<VersionLabels, Gauge> = register!(
            r,
            "understudy_build_info",
            "Always 1; the version of understudy this process runs",
            Family::default()
        );
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        Self {
            is_server: register!(
                r,
                "understudy_is_server",
                "1 while this device serves its group's project, else 0",
                Family::default()
            ),
            group_has_server: register!(
                r,
                "understudy_group_has_server",
                "1 while this device knows a live server of its group, else 0",
                Family::default()
            ),
            group_held: register!(
                r,
                "understudy_group_held",
                "1 while this device's group is under a show hold (no preemption), else 0",
                Family::default()
            ),
            term: register!(
                r,
                "understudy_term",
                "The highest election term this device has seen",
                Family::default()
            ),
            score: register!(
                r,
                "understudy_score",
                "This device's election score (0 = client only)",
                Family::default()
            ),
            online: register!(
                r,
                "understudy_online",
                "1 while this device is online (a member of its group's elections)",
                Family::default()
            ),
            server_changes: register!(
                r,
                "understudy_server_changes",
                "Changes of server (device or term) this device has seen, the first included",
                Family::default()
            ),
            elections_started: register!(
                r,
                "understudy_elections_started",
                "Elections this device started (claims of the lease)",
                Family::default()
            ),
            became_server: register!(
                r,
                "understudy_became_server",
                "Times this device won the lease and began serving",
                Family::default()
            ),
            stepped_down: register!(
                r,
                "understudy_stepped_down",
                "Times this device stopped serving, by reason",
                Family::default()
            ),
            without_server: register!(
                r,
                "understudy_without_server_seconds",
                "Stretches of time this device knew no server of its group, after it had known one",
                Seconds::new_with_constructor(seconds_histogram)
            ),
            failover: register!(
                r,
                "understudy_failover_seconds",
                "Failovers seen: from the lost server's last heartbeat to its successor serving",
                Seconds::new_with_constructor(seconds_histogram)
            ),
            peers: register!(
                r,
                "understudy_peers",
                "Peers of this device by the failure detector's verdict (live, lost, gone)",
                Family::default()
            ),
            heartbeats_sent: register!(
                r,
                "understudy_heartbeats_sent",
                "Heartbeats this device published",
                Family::default()
            ),
            heartbeats_received: register!(
                r,
                "understudy_heartbeats_received",
                "Heartbeats of its peers this device heard",
                Family::default()
            ),
            status_colour: register!(
                r,
                "understudy_status_colour",
                "This device's status colour: 0 grey, 1 blue, 2 red",
                Family::default()
            ),
            problems: register!(
                r,
                "understudy_problems",
                "1 for each problem this device reports now",
                Family::default()
            ),
            project_revision: register!(
                r,
                "understudy_project_revision",
                "The project revision this device holds",
                Family::default()
            ),
            project_commits: register!(
                r,
                "understudy_project_commits",
                "Project changes this device committed while serving",
                Family::default()
            ),
            project_outbox: register!(
                r,
                "understudy_project_outbox_changes",
                "Project changes waiting in this device's outbox for a server",
                Family::default()
            ),
            project_conflicts: register!(
                r,
                "understudy_project_conflicts",
                "Project changes set aside as conflicts on this device",
                Family::default()
            ),
            project_sent: register!(
                r,
                "understudy_project_sent_bytes",
                "Project bytes this device sent to others",
                Family::default()
            ),
            project_received: register!(
                r,
                "understudy_project_received_bytes",
                "Project bytes this device received",
                Family::default()
            ),
            requests: register!(
                r,
                "understudy_gateway_requests",
                "Gateway requests answered, by route and HTTP status",
                Family::default()
            ),
            sessions: register!(
                r,
                "understudy_gateway_sessions",
                "Open gateway client sessions, by kind",
                Family::default()
            ),
            subscribers: register!(
                r,
                "understudy_gateway_event_subscribers",
                "Clients following an event stream of the gateway now",
                Gauge::default()
            ),
            bad_messages: register!(
                r,
                "understudy_bad_messages",
                "Bus messages dropped because they could not be read, by kind",
                Family::default()
            ),
            nats_connected: register!(
                r,
                "understudy_nats_connected",
                "1 while this process holds a connection to NATS",
                Gauge::default()
            ),
            nats_reconnects: register!(
                r,
                "understudy_nats_reconnects",
                "Times this process connected to NATS again after losing it",
                Counter::default()
            ),
            nats_connected_before: std::sync::atomic::AtomicBool::new(false),
            registry: r,
        }
    }

    /// Every family in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            // Only a formatter error can occur, writing to a String: none.
            let _ = writeln!(out, "# encoding failed: {e}");
        }
        out
    }

    /// The election figures of `device` in `group`.
    pub fn election(&self, group: &str, device: &str) -> ElectionMetrics {
        let l = labels(group, device);
        ElectionMetrics {
            is_server: one(&self.is_server, &l),
            group_has_server: one(&self.group_has_server, &l),
            group_held: one(&self.group_held, &l),
            term: one(&self.term, &l),
            score: one(&self.score, &l),
            online: one(&self.online, &l),
            server_changes: one(&self.server_changes, &l),
            elections_started: one(&self.elections_started, &l),
            became_server: one(&self.became_server, &l),
            without_server: one(&self.without_server, &l),
            failover: one(&self.failover, &l),
            stepped_down: self.stepped_down.clone(),
            labels: l,
        }
    }

    /// The heartbeat figures of `device` in `group`.
    pub fn heartbeat(&self, group: &str, device: &str) -> HeartbeatMetrics {
        let l = labels(group, device);
        HeartbeatMetrics {
            sent: one(&self.heartbeats_sent, &l),
            received: one(&self.heartbeats_received, &l),
            colour: one(&self.status_colour, &l),
            peers: self.peers.clone(),
            problems: self.problems.clone(),
            reported: Vec::new(),
            labels: l,
        }
    }

    /// The project-sync figures of `device` in `group`.
    pub fn project(&self, group: &str, device: &str) -> ProjectMetrics {
        let l = labels(group, device);
        ProjectMetrics {
            revision: one(&self.project_revision, &l),
            commits: one(&self.project_commits, &l),
            outbox: one(&self.project_outbox, &l),
            conflicts: one(&self.project_conflicts, &l),
            sent: one(&self.project_sent, &l),
            received: one(&self.project_received, &l),
        }
    }

    /// One gateway request answered on `route` (the route's pattern, not
    /// the path asked for) with HTTP `status`.
    pub fn gateway_request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                status: status.to_string(),
            })
            .inc();
    }

    /// The number of open gateway sessions of `kind` (http, tcp, sse,
    /// websocket) is now `open`.
    pub fn gateway_sessions(&self, kind: &str, open: usize) {
        self.sessions
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .set(gauge_value(open));
    }

    /// The gauge of clients following an event stream.
    pub fn gateway_subscribers(&self) -> &Gauge {
        &self.subscribers
    }

    /// A bus message of `kind` could not be read and was dropped.
    pub fn bad_message(&self, kind: &str) {
        self.bad_messages
            .get_or_create(&KindLabels {
                kind: kind.replace(' ', "_"),
            })
            .inc();
    }

    /// Follows the NATS client's connection events (pass to
    /// `ConnectOptions::event_callback`).
    pub fn nats_event(&self, event: &async_nats::Event) {
        use std::sync::atomic::Ordering;
        match event {
            async_nats::Event::Connected => {
                self.nats_connected.set(1);
                if self.nats_connected_before.swap(true, Ordering::Relaxed) {
                    self.nats_reconnects.inc();
                }
            }
            async_nats::Event::Disconnected | async_nats::Event::Closed => {
                self.nats_connected.set(0);
            }
            _ => {}
        }
    }
}

/// The metric of `family` for `labels`, created if new. The family's lock
/// is released on return (a handle is kept, not the guard).
fn one<M: Clone, C: Fn() -> M>(family: &Family<DeviceLabels, M, C>, labels: &DeviceLabels) -> M {
    family.get_or_create(labels).clone()
}

fn labels(group: &str, device: &str) -> DeviceLabels {
    DeviceLabels {
        group: group.to_owned(),
        device: device.to_owned(),
    }
}

fn gauge_value(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// The metrics of this process, registered on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// What the election service of one device counts and sets.
#[derive(Debug, Clone)]
pub struct ElectionMetrics {
    labels: DeviceLabels,
    /// `understudy_is_server`.
    pub is_server: Gauge,
    /// `understudy_group_has_server`.
    pub group_has_server: Gauge,
    /// `understudy_group_held`.
    pub group_held: Gauge,
    /// `understudy_term`.
    pub term: Gauge,
    /// `understudy_score`.
    pub score: Gauge,
    /// `understudy_online`.
    pub online: Gauge,
    /// `understudy_server_changes_total`.
    pub server_changes: Counter,
    /// `understudy_elections_started_total`.
    pub elections_started: Counter,
    /// `understudy_became_server_total`.
    pub became_server: Counter,
    without_server: Histogram,
    failover: Histogram,
    stepped_down: Family<ReasonLabels, Counter>,
}

impl ElectionMetrics {
    /// This device stopped serving for `reason`.
    pub fn stepped_down(&self, reason: &str) {
        self.stepped_down
            .get_or_create(&ReasonLabels {
                group: self.labels.group.clone(),
                device: self.labels.device.clone(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Records what a [`ServerWatch`] made of a new view of the server.
    pub fn seen(&self, seen: Seen) {
        if seen.changed {
            self.server_changes.inc();
        }
        if let Some(d) = seen.without_server {
            self.without_server.observe(d.as_secs_f64());
        }
        if let Some(d) = seen.failover {
            self.failover.observe(d.as_secs_f64());
        }
    }

    /// Sets a gauge from an unsigned figure.
    pub fn set(gauge: &Gauge, value: u64) {
        gauge.set(gauge_value(value));
    }
}

/// What the heartbeat service of one device counts and sets.
#[derive(Debug, Clone)]
pub struct HeartbeatMetrics {
    labels: DeviceLabels,
    /// `understudy_heartbeats_sent_total`.
    pub sent: Counter,
    /// `understudy_heartbeats_received_total`.
    pub received: Counter,
    /// `understudy_status_colour`.
    pub colour: Gauge,
    peers: Family<StateLabels, Gauge>,
    problems: Family<ProblemLabels, Gauge>,
    /// Problems set to 1 last time, so a cleared one goes back to 0.
    reported: Vec<String>,
}

impl HeartbeatMetrics {
    /// How many peers the failure detector holds live, lost and gone.
    pub fn peers(&self, live: usize, lost: usize, gone: usize) {
        for (state, n) in [("live", live), ("lost", lost), ("gone", gone)] {
            self.peers
                .get_or_create(&StateLabels {
                    group: self.labels.group.clone(),
                    device: self.labels.device.clone(),
                    state: state.to_owned(),
                })
                .set(gauge_value(n));
        }
    }

    /// The problems this device reports now; each is 1, a cleared one 0.
    pub fn problems<'a>(&mut self, now: impl IntoIterator<Item = &'a str>) {
        let now: Vec<String> = now.into_iter().map(str::to_owned).collect();
        for p in self.reported.iter().chain(now.iter()) {
            let on = now.contains(p);
            self.problems
                .get_or_create(&ProblemLabels {
                    group: self.labels.group.clone(),
                    device: self.labels.device.clone(),
                    problem: p.clone(),
                })
                .set(i64::from(on));
        }
        self.reported = now;
    }
}

/// What the project-sync service of one device counts and sets.
#[derive(Debug, Clone)]
pub struct ProjectMetrics {
    /// `understudy_project_revision`.
    pub revision: Gauge,
    /// `understudy_project_commits_total`.
    pub commits: Counter,
    /// `understudy_project_outbox_changes`.
    pub outbox: Gauge,
    /// `understudy_project_conflicts_total`.
    pub conflicts: Counter,
    /// `understudy_project_sent_bytes_total`.
    pub sent: Counter,
    /// `understudy_project_received_bytes_total`.
    pub received: Counter,
}

/// The metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source}")]
pub struct ServeError {
    /// The address asked for.
    pub addr: String,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Binds the metrics endpoint at `addr` (`host:port`), so a bad address is
/// an error at start rather than a silent absence.
pub async fn bind(addr: &str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError {
        addr: addr.to_owned(),
        source,
    })
}

/// The HTTP routes of the metrics endpoint: `GET /metrics`.
pub fn router() -> Router {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        metrics().render(),
    )
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves. A failure
/// of the endpoint is logged, never fatal: metrics must not stop a device.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    info!(%addr, "metrics at http://{addr}/metrics");
    if let Err(e) = axum::serve(listener, router())
        .with_graceful_shutdown(shutdown)
        .await
    {
        warn!(%addr, "metrics endpoint stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_family_renders_with_its_type_and_the_total_suffix() {
        let m = metrics();
        let e = m.election("g", "d1");
        e.is_server.set(1);
        e.server_changes.inc();
        e.stepped_down("deposed");
        e.seen(Seen {
            changed: true,
            without_server: Some(Duration::from_millis(20)),
            failover: Some(Duration::from_millis(320)),
        });
        m.bad_message("lease record");
        let text = m.render();
        assert!(text.contains("# TYPE understudy_is_server gauge"), "{text}");
        assert!(text.contains("understudy_is_server{group=\"g\",device=\"d1\"} 1"));
        assert!(text.contains("# TYPE understudy_server_changes_total counter"));
        assert!(text.contains("understudy_server_changes_total{group=\"g\",device=\"d1\"} 2"));
        assert!(text.contains(
            "understudy_stepped_down_total{group=\"g\",device=\"d1\",reason=\"deposed\"} 1"
        ));
        assert!(text.contains("understudy_failover_seconds_count{group=\"g\",device=\"d1\"} 1"));
        assert!(
            text.contains(
                "understudy_failover_seconds_bucket{le=\"0.4\",group=\"g\",device=\"d1\"} 1"
            ) || text.contains(
                "understudy_failover_seconds_bucket{group=\"g\",device=\"d1\",le=\"0.4\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("understudy_bad_messages_total{kind=\"lease_record\"} 1"));
        assert!(text.contains("understudy_build_info{version="));
    }

    #[test]
    fn a_cleared_problem_goes_back_to_zero() {
        let mut h = metrics().heartbeat("g", "d2");
        h.problems(["no_server"]);
        assert!(
            metrics()
                .render()
                .contains("understudy_problems{group=\"g\",device=\"d2\",problem=\"no_server\"} 1")
        );
        h.problems([]);
        assert!(
            metrics()
                .render()
                .contains("understudy_problems{group=\"g\",device=\"d2\",problem=\"no_server\"} 0")
        );
    }
}
