//! One berthctl command is one trace: berthctl and every service it touched export spans with
//! the same trace id to an OTLP collector (a small in-test receiver on loopback).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_tests::{Berth, Mode, Options};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// A received span: process (service.name), span name, trace id, `berth.service` attribute.
#[derive(Debug, Clone)]
struct Received {
    process: String,
    name: String,
    trace_id: Vec<u8>,
    berth_service: Option<String>,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Received>>>);

fn string_value(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<String> {
    match v.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let process = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| string_value(&kv.value))
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                let berth_service = span
                    .attributes
                    .iter()
                    .find(|kv| kv.key == "berth.service")
                    .and_then(|kv| string_value(&kv.value));
                spans.push(Received {
                    process: process.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    berth_service,
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[test]
fn one_trace_across_berthctl_and_every_service() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let collector = Collector::default();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let options = Options {
        config: Some(format!("[otlp]\nendpoint = \"{endpoint}\"\n")),
        ..Default::default()
    };
    let berth = Berth::start_with(Mode::Separate, options)?;
    let out = berth
        .ctl()
        .args(["--otlp-endpoint", &endpoint, "info"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // berthctl flushes on exit; the services export every 500 ms.
    let root = collector
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.process == "berthctl" && s.name == "berthctl info")
        .cloned()
        .expect("berthctl exported its root span before exiting");
    let wanted: BTreeSet<String> = berth_tests::harness::SERVICES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen: BTreeSet<String> = collector
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == root.trace_id)
            .filter(|s| {
                Some(s.process.as_str())
                    == s.berth_service
                        .as_ref()
                        .map(|b| format!("berth-{b}"))
                        .as_deref()
            })
            .filter_map(|s| s.berth_service.clone())
            .collect();
        if seen == wanted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "services in the trace: {seen:?}, want {wanted:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    berth.stop()
}
