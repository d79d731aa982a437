//! Logs and OpenTelemetry traces.
//!
//! [`init`] sets up the process's `tracing` subscriber: logs to stderr, and —
//! only when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set — every span exported over
//! OTLP/gRPC, named by `OTEL_SERVICE_NAME` (default: the process's role,
//! e.g. `understudy-node`). Without those variables nothing tries to connect
//! anywhere.
//!
//! A span's context crosses processes in W3C `traceparent` form: in gRPC
//! metadata ([`inject_grpc`], [`follow_grpc`]) and NATS headers
//! ([`inject_nats`], [`follow_nats`]), so one project change or one control
//! call is one trace across the CLI, the gateway and the devices.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The variables that switch traces on (either; the first wins).
pub const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Whether traces are switched on by the environment.
pub fn enabled() -> bool {
    ENDPOINT_VARS
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

/// Traces could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces over OTLP: {0}")]
pub struct TraceError(String);

/// The OTLP exporter of this process while it lives; [`Traces::shutdown`]
/// sends what is still queued.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Exports the spans still queued (bounded by the exporter's timeout)
    /// and stops. Call it before the runtime goes away.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("warning: traces: {e}");
        }
    }
}

/// Sets up logs to stderr (`filter`, colours if `ansi`) and, when the
/// environment asks for them, OTLP traces as `default_service` unless
/// `OTEL_SERVICE_NAME` says otherwise. Must run inside a tokio runtime (the
/// exporter's gRPC channel lives there).
pub fn init(
    filter: EnvFilter,
    ansi: bool,
    default_service: &str,
) -> Result<Option<Traces>, TraceError> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .with_filter(filter);
    let provider = enabled()
        .then(|| exporting_provider(default_service))
        .transpose()?;
    // Our own spans and events, info and up, whatever the log level: not the
    // exporter's (tonic, h2), which would trace their own exporting.
    let ours = tracing_subscriber::filter::filter_fn(|m| {
        m.target().starts_with("understudy") && *m.level() <= tracing::Level::INFO
    });
    let spans = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("understudy"))
            .with_filter(ours)
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .map_err(|e| TraceError(e.to_string()))?;
    Ok(provider.map(|provider| Traces { provider }))
}

/// A tracer provider exporting over OTLP/gRPC as `OTEL_SERVICE_NAME`, or as
/// `default_service` when that is not set.
fn exporting_provider(default_service: &str) -> Result<SdkTracerProvider, TraceError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| TraceError(e.to_string()))?;
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some_and(|v| !v.is_empty());
    let resource = if named {
        Resource::builder().build()
    } else {
        Resource::builder()
            .with_service_name(default_service.to_owned())
            .build()
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

struct GrpcOut<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for GrpcOut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct GrpcIn<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for GrpcIn<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct NatsOut<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsOut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct NatsIn<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsIn<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes `span`'s trace context into outgoing gRPC metadata (nothing when
/// traces are off).
pub fn inject_grpc(span: &tracing::Span, metadata: &mut tonic::metadata::MetadataMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut GrpcOut(metadata));
}

/// Makes `span` a child of the trace context in incoming gRPC metadata, if
/// there is one. Call it before entering the span.
pub fn follow_grpc(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let cx = TraceContextPropagator::new().extract(&GrpcIn(metadata));
    let _ = span.set_parent(cx);
}

/// Writes `span`'s trace context into outgoing NATS headers (nothing when
/// traces are off).
pub fn inject_nats(span: &tracing::Span, headers: &mut async_nats::HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut NatsOut(headers));
}

/// Makes `span` a child of the trace context in incoming NATS headers, if
/// there are any. Call it before entering the span.
pub fn follow_nats(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    if let Some(h) = headers {
        let cx = TraceContextPropagator::new().extract(&NatsIn(h));
        let _ = span.set_parent(cx);
    }
}
