//! Logs and traces of the binary.
//!
//! - Logs: `tracing` to stderr, human-readable or JSON lines (`--log-format json`), filtered
//!   by `--log`/`RUST_LOG`. JSON lines carry the fields of their spans, so a request's lines
//!   carry its `trace_id` and `span_id`.
//! - Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard variable, for example
//!   `http://otel-collector:4318`), spans are exported over OTLP/HTTP (JSON) in batches: the
//!   API's request spans (tracing-opentelemetry, from the `http_request` span of
//!   `api::telemetry`) and, for every event a processor handles, its `process` and `write`
//!   spans, in the event's trace (see `lms_bus::otel`). `OTEL_SERVICE_NAME` overrides the
//!   service name (`lms-<subcommand>`); the other `OTEL_EXPORTER_OTLP_*` and `OTEL_BSP_*`
//!   variables work as the OpenTelemetry SDK documents them.

use anyhow::Context as _;
use clap::ValueEnum;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// For people: one colored line per event.
    Text,
    /// For log pipelines: one JSON object per line, with the fields of the current spans.
    Json,
}

/// Keeps the trace exporter; [`Telemetry::shutdown`] flushes what is buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Sets up logging and, when configured, the OTLP trace exporter.
///
/// One `tracing` subscriber with two layers, each with its own filter: the log lines (the
/// `--log` filter), and, when traces are exported, tracing-opentelemetry for the API's
/// `http_request` spans only (whatever the log level: `--log warn` keeps the traces). The
/// processors' `process` and `write` spans are made per record after their batch is
/// written, with the batch's times, so they go to the same provider through the
/// OpenTelemetry API (`lms_bus::otel`), not through `tracing`.
pub fn init(filter: &str, format: LogFormat, service: &str) -> anyhow::Result<Telemetry> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{Layer as _, filter::filter_fn};

    let filter = tracing_subscriber::EnvFilter::try_new(filter).context("invalid --log filter")?;
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_target(false).with_writer(std::io::stderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .boxed(),
    }
    .with_filter(filter);
    let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty()) {
        None => None,
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
                .build()
                .context("cannot set up the OTLP exporter")?;
            let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(name.clone()).build())
                .build();
            opentelemetry::global::set_tracer_provider(provider.clone());
            Some((provider, endpoint, name))
        }
    };
    let spans = provider.as_ref().map(|(p, _, _)| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("lms-pipeline"))
            .with_filter(filter_fn(|meta| meta.is_span() && meta.name() == "http_request"))
    });
    tracing_subscriber::registry().with(logs).with(spans).init();
    let Some((provider, endpoint, name)) = provider else { return Ok(Telemetry { provider: None }) };
    lms_bus::otel::enable();
    tracing::info!(%endpoint, service = %name, "exporting traces over OTLP/HTTP");
    Ok(Telemetry { provider: Some(provider) })
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("trace export did not finish: {e}");
        }
    }
}
