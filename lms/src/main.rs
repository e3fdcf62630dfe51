//! `lms`: the one binary of lms-pipeline. A thin main: parse the command line, load the
//! configuration, set up logs, hand over to the subcommand's module.

mod config;
mod demo;
mod processor;
mod topics;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info,librdkafka=warn")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the pipeline in one process with nothing installed (in-process Kafka).
    Demo(demo::DemoArgs),
    /// Shows or applies topics.yaml against the cluster.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// Runs or lists the stream processors (catalog, progress, achievements, ...).
    #[command(subcommand)]
    Processor(processor::ProcessorCommand),
    /// Applies the state store's schema migrations (also done on every start).
    Migrate,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log)?).with_target(false).init();
    let config = config::Config::load(cli.config.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Topics(cmd) => topics::run(cmd, &config).await,
            Command::Processor(cmd) => processor::run(cmd, &config).await,
            Command::Migrate => processor::migrate(&config).await,
        }
    })
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM: the signal to drain and stop.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
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
