//! Logs and traces of the binary.
//!
//! - Logs: `tracing` to stderr, human-readable or JSON lines (`--log-format json`), filtered
//!   by `--log`/`RUST_LOG`. JSON lines carry the fields of their spans, so a request's lines
//!   carry its `trace_id` and `span_id`.
//! - Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard variable, for example
//!   `http://otel-collector:4318`), spans are exported over OTLP/HTTP (JSON) in batches: the
//!   API's request spans and, for every event a processor handles, its `process` and `write`
//!   spans, in the event's trace (see `lms_bus::otel`). `OTEL_SERVICE_NAME` overrides the
//!   service name (`lms-<subcommand>`); the other `OTEL_EXPORTER_OTLP_*` and `OTEL_BSP_*`
//!   variables work as the OpenTelemetry SDK documents them.

use anyhow::Context as _;
use clap::ValueEnum;
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
pub fn init(filter: &str, format: LogFormat, service: &str) -> anyhow::Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).context("invalid --log filter")?;
    match format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .init(),
    }
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty());
    let Some(endpoint) = endpoint else { return Ok(Telemetry { provider: None }) };
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
