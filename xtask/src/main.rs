//! `cargo xtask`: developer and CI tasks for the lms-pipeline workspace.
//!
//! `cargo xtask test` installs what the test suite needs, starts the real
//! services (two tansu brokers, PostgreSQL and ClickHouse) on free loopback
//! ports, runs `cargo nextest` against them and stops them again. This crate
//! uses the standard library only, so that it builds in seconds.

mod install;
mod services;
mod util;

use std::{
    env,
    io::{self, BufRead as _},
    process::{Command, ExitCode},
};

use services::{Layout, Services};
use util::Result;

const USAGE: &str = "\
Usage: cargo xtask <command> [options]

Commands:
  test [-- <args>]  Check formatting (`cargo fmt --all --check`), install what is
                    missing, start the services, run
                    `cargo nextest run --workspace --no-fail-fast --profile ci <args>`
                    with the services' addresses in the environment, then stop them.
                    Then `cargo clippy --workspace --all-targets -- -D warnings` and
                    `cargo clippy -p api -- -D warnings` (the API without the
                    processors' delivery stack).
                    Unformatted code or a lint fails the run after the tests.
                    The fuzz targets are not part of it (their build alone takes
                    longer than the suite): run `cargo xtask fuzz` as a step of its own.
  services          Install what is missing, start the services, print their
                    environment as `export` lines (also written to
                    <target>/xtask/services/env) and keep them running until Enter
                    is pressed or stdin is closed. Stop with Enter rather than Ctrl-C:
                    Ctrl-C leaves PostgreSQL running until the next start.
  fuzz [--seconds N] [<target>...]
                    Run each cargo-fuzz target of fuzz/ (default: all) for N seconds
                    (default 30) with the nightly toolchain, starting from the committed
                    corpus fuzz/corpus/<target>/; installs cargo-fuzz when missing. New
                    inputs go to <target>/fuzz/corpus/<target>/, crashes to
                    <target>/fuzz/artifacts/<target>/; the final libFuzzer statistics
                    (executions, exec/s, coverage) are printed per target.
  install           Only install what is missing.
  help              Print this message.

The services' data and logs are kept in <target>/xtask/services/ until the next run.";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match command.as_str() {
        "test" => test(rest),
        "services" if rest.is_empty() => services(),
        "fuzz" => fuzz(rest),
        "install" if rest.is_empty() => install::ensure_all().map(|()| ExitCode::SUCCESS),
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        "services" | "install" => {
            eprintln!("`{command}` takes no arguments\n\n{USAGE}");
            Ok(ExitCode::from(2))
        }
        _ => {
            eprintln!("unknown command `{command}`\n\n{USAGE}");
            Ok(ExitCode::from(2))
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("xtask: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask test [-- <args>]`: runs the whole test suite against the real
/// services and exits with nextest's exit code.
fn test(args: &[String]) -> Result<ExitCode> {
    // Cargo's alias passes the user's `--` through; the arguments after it go to nextest.
    let extra = match args.split_first() {
        Some((first, rest)) if first == "--" => rest,
        _ if args.iter().any(|arg| arg == "-h" || arg == "--help") => {
            println!("{USAGE}");
            return Ok(ExitCode::SUCCESS);
        }
        _ => args,
    };

    // Formatting first (seconds); a failure does not stop the suite, so one run shows both.
    let formatted = Command::new(util::cargo())
        .current_dir(util::workspace_root())
        .args(["fmt", "--all", "--check"])
        .status()
        .is_ok_and(|s| s.success());
    if !formatted {
        eprintln!("xtask: `cargo fmt --all --check` found unformatted code (the diff above; `cargo fmt --all` fixes it)");
    }

    install::ensure_all()?;
    util::prune_target();
    let services = Services::start(&Layout::new())?;
    let env = services.env();
    for (name, value) in &env {
        println!("{name}={value}");
    }

    // Tests that kill processor processes with SIGKILL run the `lms` binary itself;
    // nextest builds test targets only, so build it first and tell the tests where it is.
    // `--workspace --tests` gives this build the feature resolution of nextest's own
    // (`cargo test --workspace`, dev-dependencies included): `-p lms` alone resolves tokio
    // without `test-util`, getrandom without `std` (proptest's) and figment without `test`,
    // and every crate above them (tokio, uuid and DataFusion among them) was compiled twice.
    util::run(Command::new(util::cargo()).current_dir(util::workspace_root()).args(["build", "--workspace", "--tests", "--bin", "lms"]))?;
    let lms_bin = util::target_dir().join("debug").join("lms");

    let mut nextest = Command::new(util::cargo());
    nextest.current_dir(util::workspace_root()).args(["nextest", "run", "--workspace", "--no-fail-fast", "--profile", "ci"]);
    // A run that executes no test at all must fail rather than pass silently.
    if !extra.iter().any(|arg| arg == "--no-tests" || arg.starts_with("--no-tests=")) {
        nextest.arg("--no-tests=fail");
    }
    nextest.args(extra).envs(env.iter().map(|(name, value)| (*name, value))).env("LMS_BIN", &lms_bin);
    println!("running {nextest:?}");
    let status = nextest.status();

    // Stop the services before reporting, so their messages come first.
    drop(services);
    let status = status.map_err(|error| format!("could not run cargo nextest: {error}"))?;
    if !status.success() {
        eprintln!("xtask: cargo nextest failed ({status})");
    }

    // Lints last: a lint must not hide a failing test, and the suite's build is warm by now.
    let linted = Command::new(util::cargo())
        .current_dir(util::workspace_root())
        .args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])
        .status()
        .is_ok_and(|s| s.success());
    if !linted {
        eprintln!("xtask: `cargo clippy --workspace --all-targets -- -D warnings` found warnings (above)");
    }
    // The API alone builds without the delivery stack (processors' `delivery` feature, which
    // the workspace build always has): keep that configuration compiling and clean.
    let slim = Command::new(util::cargo())
        .current_dir(util::workspace_root())
        .args(["clippy", "-p", "api", "--", "-D", "warnings"])
        .status()
        .is_ok_and(|s| s.success());
    if !slim {
        eprintln!("xtask: `cargo clippy -p api -- -D warnings` (the API without the delivery stack) failed (above)");
    }
    let linted = linted && slim;
    if !formatted {
        eprintln!("xtask: the tests ran, but the code is not formatted (`cargo fmt --all`)");
    }
    if !formatted || !linted {
        return Ok(ExitCode::FAILURE);
    }
    // A nextest killed by a signal has no exit code; report a plain failure then.
    Ok(status.code().and_then(|code| u8::try_from(code).ok()).map_or(ExitCode::FAILURE, ExitCode::from))
}

/// The cargo-fuzz targets of `fuzz/`.
const FUZZ_TARGETS: &[&str] = &["parse_event", "webhook_signature"];

/// `cargo xtask fuzz [--seconds N] [<target>...]`: runs the fuzz targets for a while each.
fn fuzz(args: &[String]) -> Result<ExitCode> {
    let mut seconds: u64 = 30;
    let mut targets: Vec<&str> = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let value = args.next().ok_or("--seconds needs a value")?;
                seconds = value.parse().map_err(|_| format!("--seconds {value}: not a number of seconds"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            target if FUZZ_TARGETS.contains(&target) => targets.push(target),
            other => return Err(format!("unknown fuzz target or option `{other}`; the targets are {FUZZ_TARGETS:?}")),
        }
    }
    if targets.is_empty() {
        targets = FUZZ_TARGETS.to_vec();
    }
    if !util::succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        return Err("cargo fuzz needs the nightly toolchain: `rustup toolchain install nightly`".to_owned());
    }
    install::ensure(install::FUZZ_REQUIREMENTS)?;
    let root = util::workspace_root();
    let work = util::target_dir().join("fuzz");
    for target in targets {
        let corpus = work.join("corpus").join(target);
        let artifacts = work.join("artifacts").join(target);
        util::create_dir(&corpus)?;
        util::create_dir(&artifacts)?;
        // Without sanitizers: the code under test has no `unsafe`, and the build and the
        // runs are several times faster; libFuzzer still finds panics and hangs.
        util::run(
            // `rustup run`, not `cargo +nightly`: `$CARGO` is the stable toolchain's cargo
            // itself, which knows no `+toolchain`.
            Command::new("rustup")
                .current_dir(&root)
                .args(["run", "nightly", "cargo", "fuzz", "run", "--sanitizer", "none", "--target-dir"])
                .arg(&work)
                .arg(target)
                .arg(&corpus)
                .arg(root.join("fuzz").join("corpus").join(target))
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg(format!("-artifact_prefix={}/", artifacts.display()))
                .arg("-print_final_stats=1"),
        )
        .map_err(|e| format!("fuzz target {target}: {e} (a crash input is in {})", artifacts.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask services`: keeps the services running for tests run by hand.
fn services() -> Result<ExitCode> {
    install::ensure_all()?;
    let services = Services::start(&Layout::new())?;
    let env_file = services.write_env_file()?;
    println!();
    for (name, value) in services.env() {
        println!("export {name}={}", util::shell_quote(&value));
    }
    println!();
    println!("(also in {}: `source` it in another shell)", env_file.display());
    println!("The services are running. Press Enter or close stdin to stop them.");
    // Any outcome of reading — a line, end of input or an error — means stop.
    let _ = io::stdin().lock().read_line(&mut String::new());
    drop(services);
    Ok(ExitCode::SUCCESS)
}
