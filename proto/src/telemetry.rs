//! Logs and traces: a tracing subscriber (pretty or JSON lines on stderr), an OpenTelemetry
//! layer so every span has a W3C trace context, and OTLP/gRPC export when an endpoint is set.
//!
//! Context crosses process boundaries in gRPC metadata (`traceparent`): [`crate::client`]
//! injects it on every call and [`crate::server`] continues it, so one berthctl command is one
//! trace across every service it touches.

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat};

/// Keeps the tracer provider; [`Telemetry::shutdown`] flushes spans not yet exported.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Flushes and stops export. Blocks: call it from a plain thread or `spawn_blocking`.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("trace export shutdown: {e}");
        }
    }
}

/// Installs the global subscriber and propagator for a process named `service_name`.
pub fn init(
    service_name: &str,
    log: &LogConfig,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<Telemetry> {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = otlp_endpoint {
        let exporter = OwnRuntimeExporter::new(endpoint)?;
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(Duration::from_millis(500))
            .build();
        builder = builder.with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build(),
        );
    }
    let provider = builder.build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("berth"));
    let filter = EnvFilter::try_new(&log.level)?;
    let fmt = match log.format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        // Spans below INFO (h2, tower internals) would cost every call without adding to a trace.
        .with(otel.with_filter(tracing_subscriber::filter::LevelFilter::INFO))
        .with(fmt.with_filter(filter))
        .try_init()?;
    Ok(Telemetry { provider })
}

/// The OTLP/tonic exporter needs a tokio reactor, but the SDK's batch processor exports from a
/// plain thread; this wrapper gives the exporter a small runtime of its own.
#[derive(Debug)]
struct OwnRuntimeExporter {
    runtime: tokio::runtime::Runtime,
    inner: opentelemetry_otlp::SpanExporter,
}

impl OwnRuntimeExporter {
    fn new(endpoint: &str) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let inner = {
            let _guard = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(Duration::from_secs(3))
                .build()?
        };
        Ok(OwnRuntimeExporter { runtime, inner })
    }
}

impl opentelemetry_sdk::trace::SpanExporter for OwnRuntimeExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        let result = self.runtime.block_on(self.inner.export(batch));
        std::future::ready(result)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Writes the current span's trace context into outgoing gRPC metadata.
pub fn inject(span: &tracing::Span, metadata: &mut tonic::metadata::MetadataMap) {
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut MetadataInjector(metadata))
    });
}

/// Makes `span` a child of the trace context carried by incoming HTTP/2 headers, if any.
pub fn continue_from(span: &tracing::Span, headers: &http::HeaderMap) {
    let cx =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    // A span whose parent cannot be set simply starts a new trace.
    let _ = span.set_parent(cx);
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
