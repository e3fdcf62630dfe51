//! `lms`: the one binary of lms-pipeline. A thin main: parse the command line, load the
//! configuration, set up logs, hand over to the subcommand's module.

mod config;
mod demo;
mod generate;
mod import;
mod learners;
mod ops;
mod processor;
mod serve;
mod telemetry;
mod topics;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: the write API allocates and frees a JSON tree per
/// event from several threads, and glibc's arenas spent a third of its CPU on that
/// (`loadtest http` batch ingest: 101 k → 134 k events/s on 2 cores).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// lms-pipeline: the event backbone of a learning platform.
///
/// Client apps and payment providers send learning, enrollment and payment events to
/// thin HTTP services, which put them on Kafka; stateful processors turn them into
/// learner progress, achievements, notifications and analytics.
#[derive(Debug, Parser)]
#[command(name = "lms", version, propagate_version = true)]
struct Cli {
    /// YAML configuration file; `LMS_<SECTION>__<KEY>` environment variables override it
    /// (for example `LMS_KAFKA__BROKERS=kafka:9092`).
    #[arg(long, global = true, env = "LMS_CONFIG")]
    config: Option<PathBuf>,

    /// Log filter (tracing `EnvFilter` syntax), for example `info,lms_bus=debug`.
    ///
    /// Default: `info,librdkafka=warn`; for `lms demo` `warn`, so that its terminal shows the
    /// plan, the progress and the URLs (`--log info` brings the service logs back).
    #[arg(long, global = true, env = "RUST_LOG")]
    log: Option<String>,

    /// Log lines as text (for people) or JSON (for log pipelines: one object per line with
    /// the fields of its spans, such as a request's `trace_id`).
    #[arg(long, global = true, env = "LMS_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: telemetry::LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the whole pipeline in one process with nothing installed: in-process Kafka,
    /// SQLite, the Parquet analytics twin, every processor, the API and the dashboard, fed
    /// by the cohort generator.
    ///
    /// Example: `lms demo` then open the printed dashboard URL; `lms demo --exit-when-caught-up`
    /// runs the backfill through every processor and exits.
    Demo(demo::DemoArgs),
    /// Serves the HTTP API: event intake (write) and progress, achievements, analytics (read).
    ///
    /// Needs `LMS_JWT_SECRET`, a state store (`store.url`) and an analytics store
    /// (`analytics.store`), set explicitly: it refuses to start rather than fall back to
    /// files on its own disk. Listens on `api.listen` (default 0.0.0.0:8080); see
    /// `/openapi.json` for the routes.
    ///
    /// Example: `LMS_JWT_SECRET=... LMS_KAFKA__BROKERS=kafka:9092 LMS_STORE__URL=postgres://lms@db/lms
    /// LMS_ANALYTICS__STORE=clickhouse LMS_ANALYTICS__URL=http://clickhouse:8123 lms api`
    Api,
    /// Shows or applies topics.yaml against the cluster.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// Runs or lists the stream processors (catalog, progress, achievements, ...).
    #[command(subcommand)]
    Processor(processor::ProcessorCommand),
    /// Applies the state store's schema migrations (also done on every start).
    Migrate,
    /// Shows every consumer group: members, partitions, offsets, log ends, lag and trend.
    Groups(ops::groups::GroupsArgs),
    /// Resets a stopped group's offsets (store and Kafka) so it reads records again.
    Replay(ops::replay::ReplayArgs),
    /// Lists, shows and re-drives dead letters.
    #[command(subcommand)]
    Dlq(ops::dlq::DlqCommand),
    /// Generates a synthetic cohort (courses, learners, videos, quizzes, payments) and sends
    /// it to the API, to Kafka or to a file. Deterministic with --seed.
    Generate(generate::GenerateArgs),
    /// Imports history from files: NDJSON events or xAPI statements (JSON array or NDJSON),
    /// plain or gzip, validated as the API validates them and sent to the same topics.
    /// Idempotent and resumable; rejected lines go to a report.
    ///
    /// Example: `lms import --tenant acme moodle-export.json.gz`
    Import(import::ImportArgs),
    /// Learner data lifecycle: `lms learners erase` erases learners everywhere, as
    /// `DELETE /v1/learners/{learner_id}` does.
    #[command(subcommand)]
    Learners(learners::LearnersCommand),
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let service = match &cli.command {
        Command::Api => "lms-api",
        Command::Processor(_) => "lms-processor",
        Command::Demo(_) => "lms-demo",
        _ => "lms",
    };
    let default_log = match &cli.command {
        Command::Demo(_) => "warn",
        _ => "info,librdkafka=warn",
    };
    let telemetry = telemetry::init(cli.log.as_deref().unwrap_or(default_log), cli.log_format, service)?;
    let config = config::Config::load(cli.config.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let outcome = rt.block_on(async move {
        let done = match cli.command {
            // The one command with an exit status of its own (2: changes pending).
            Command::Topics(cmd) => return topics::run(cmd, &config).await,
            Command::Demo(args) => demo::run(args, &config).await,
            Command::Api => serve::run(&config).await,
            Command::Processor(cmd) => processor::run(cmd, &config).await,
            Command::Migrate => processor::migrate(&config).await,
            Command::Groups(args) => ops::groups::run(args, &config).await,
            Command::Replay(args) => ops::replay::run(args, &config).await,
            Command::Dlq(cmd) => ops::dlq::run(cmd, &config).await,
            Command::Generate(args) => generate::run(args, &config).await,
            Command::Import(args) => import::run(args, &config).await,
            Command::Learners(cmd) => learners::run(cmd, &config).await,
        };
        done.map(|()| ExitCode::SUCCESS)
    });
    drop(rt);
    telemetry.shutdown();
    outcome
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM: the signal to drain and stop.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
