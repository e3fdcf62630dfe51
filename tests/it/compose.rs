//! docker-compose.yml cannot run here (no Docker); this keeps it honest instead: every `lms`
//! service runs a real subcommand (checked against the binary's own `--help`), sets only
//! environment variables the configuration reads, and mounts files that exist.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_yaml::Value;

fn repo() -> PathBuf {
    tests::repo_root()
}

fn lms_help(args: &[&str]) -> (bool, String) {
    let bin = std::env::var("LMS_BIN").expect("LMS_BIN: the lms binary (run the tests with `cargo xtask test`)");
    let out = Command::new(bin).args(args).arg("--help").output().expect("run lms --help");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `lms` argument lists a service runs: its `command`, or each `lms ...` of a
/// `/bin/sh -c` command joined by `&&`.
fn invocations(service: &Value) -> Vec<Vec<String>> {
    let command: Vec<String> =
        service["command"].as_sequence().map(|s| s.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()).unwrap_or_default();
    let shell = service["entrypoint"].as_sequence().is_some_and(|e| e.first().and_then(Value::as_str) == Some("/bin/sh"));
    if shell {
        command
            .join(" ")
            .split("&&")
            .map(|part| {
                let words: Vec<String> = part.split_whitespace().map(str::to_owned).collect();
                assert_eq!(words.first().map(String::as_str), Some("lms"), "a shell command runs lms: {part:?}");
                words[1..].to_vec()
            })
            .collect()
    } else {
        vec![command]
    }
}

/// Checks `args` against clap: the subcommand path exists and every `--flag` is one its
/// help lists.
fn check_invocation(args: &[String]) {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let path: Vec<&str> = words.iter().take_while(|w| !w.starts_with('-')).copied().collect();
    // The longest prefix of positional words that is a subcommand path (the rest are
    // arguments, such as processor names).
    let mut found = None;
    for n in (1..=path.len()).rev() {
        let (ok, help) = lms_help(&path[..n]);
        if ok {
            found = Some(help);
            break;
        }
    }
    let help = found.unwrap_or_else(|| panic!("`lms {}` is not an lms subcommand", words.join(" ")));
    for flag in words.iter().filter(|w| w.starts_with("--")) {
        assert!(help.contains(flag), "`lms {}`: {flag} is not an option of the subcommand:\n{help}", words.join(" "));
    }
}

#[test]
fn every_lms_service_runs_a_real_subcommand_with_known_settings() {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).expect("docker-compose.yml");
    let mut doc: Value = serde_yaml::from_str(&text).expect("docker-compose.yml is YAML");
    doc.apply_merge().expect("the `<<` merge keys resolve");
    let services = doc["services"].as_mapping().expect("services");
    let config_source = ["lms/src/config.rs", "lms-bus/src/config.rs", "api/src/config.rs", "sinks/lms-analytics/src/clickhouse.rs"]
        .iter()
        .map(|p| std::fs::read_to_string(repo().join(p)).unwrap_or_default())
        .collect::<String>();
    let sections: BTreeSet<&str> = ["kafka", "consumer", "store", "notifications", "api", "analytics"].into();

    let mut lms_services = 0;
    let mut processors = BTreeSet::new();
    for (name, service) in services {
        let name = name.as_str().expect("service name");
        if service["image"].as_str() != Some("lms-pipeline:latest") {
            continue;
        }
        lms_services += 1;
        for args in invocations(service) {
            check_invocation(&args);
            if args.first().map(String::as_str) == Some("processor") {
                let names: Vec<&String> = args.iter().skip(2).take_while(|a| !a.starts_with("--")).collect();
                for n in names {
                    processors.insert(n.clone());
                }
                assert!(service["deploy"]["replicas"].as_u64().is_some(), "{name}: processors set deploy.replicas");
            }
        }
        let env = service["environment"].as_mapping().expect("environment");
        for key in env.keys().filter_map(Value::as_str) {
            // Read outside the configuration sections: by clap (`--config`, `--log`,
            // `--log-format`), by `Config::load` (the secret) and by lms/src/telemetry.rs.
            if ["LMS_JWT_SECRET", "RUST_LOG", "LMS_CONFIG", "LMS_LOG_FORMAT", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"]
                .contains(&key)
            {
                let readers = ["lms/src/main.rs", "lms/src/config.rs", "lms/src/telemetry.rs"]
                    .iter()
                    .map(|p| std::fs::read_to_string(repo().join(p)).unwrap_or_default())
                    .collect::<String>();
                assert!(readers.contains(key) || key == "RUST_LOG" && readers.contains("env = \"RUST_LOG\""), "{name}: {key} is read");
                continue;
            }
            let rest = key.strip_prefix("LMS_").unwrap_or_else(|| panic!("{name}: {key} is not read by lms"));
            let mut parts = rest.split("__").map(str::to_ascii_lowercase);
            let section = parts.next().unwrap_or_default();
            assert!(sections.contains(section.as_str()), "{name}: {key}: no configuration section {section}");
            for field in parts {
                assert!(
                    config_source.contains(&format!("pub {field}:")) || processor_config_has(&field),
                    "{name}: {key}: no configuration field {field}"
                );
            }
        }
    }
    assert!(lms_services >= 7, "init, api and every processor are lms services");
    let (_, list) = lms_help(&["processor", "list"]);
    let registry: BTreeSet<String> = processors::REGISTRY.iter().map(|r| r.name.to_owned()).filter(|n| n != "noop").collect();
    assert_eq!(processors, registry, "each processor is its own service:\n{list}");

    for mount in text.lines().filter_map(|l| l.trim().strip_prefix("- ./")) {
        let host = mount.split(':').next().unwrap_or_default();
        assert!(repo().join(host).exists(), "mounted {host} exists");
    }
    assert!(repo().join("Dockerfile").exists());
}

fn processor_config_has(field: &str) -> bool {
    std::fs::read_to_string(repo().join("processors/src/notifications/config.rs")).is_ok_and(|s| s.contains(&format!("pub {field}:")))
}

/// What issue 29 found wrong with the stack: Kafka's data off its volume, services without
/// a healthcheck, Jaeger v1, Grafana open to anonymous viewers.
#[test]
fn the_stack_keeps_its_data_checks_its_services_and_closes_grafana() {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).expect("docker-compose.yml");
    let mut doc: Value = serde_yaml::from_str(&text).expect("docker-compose.yml is YAML");
    doc.apply_merge().expect("merge keys");
    let services = &doc["services"];
    let kafka = &services["kafka"];
    let log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"].as_str().expect("KAFKA_LOG_DIRS set");
    let mounted = kafka["volumes"]
        .as_sequence()
        .expect("kafka volumes")
        .iter()
        .filter_map(Value::as_str)
        .any(|v| v.split(':').nth(1).is_some_and(|target| log_dirs.starts_with(target)));
    assert!(mounted, "KAFKA_LOG_DIRS ({log_dirs}) is on a mounted volume");
    // The Jaeger and collector images are distroless (no shell, no HTTP client), so they
    // cannot carry a healthcheck; nothing waits on them.
    for (name, service) in services.as_mapping().expect("services") {
        let name = name.as_str().expect("name");
        if ["init", "clickhouse-init", "jaeger", "otel-collector"].contains(&name) {
            continue;
        }
        assert!(service["healthcheck"]["test"].as_sequence().is_some(), "{name} has a healthcheck");
    }
    let jaeger = services["jaeger"]["image"].as_str().expect("jaeger image");
    assert!(jaeger.starts_with("jaegertracing/jaeger:2."), "Jaeger v2: {jaeger}");
    let grafana = &services["grafana"]["environment"];
    assert_eq!(grafana["GF_AUTH_ANONYMOUS_ENABLED"].as_str(), Some("false"), "no anonymous Grafana");
    assert!(
        grafana["GF_SECURITY_ADMIN_PASSWORD"].as_str().is_some_and(|p| p.contains("GRAFANA_ADMIN_PASSWORD")),
        "the admin password comes from the environment"
    );
    // Grafana reads ClickHouse as the read-only user clickhouse-init creates.
    let datasources = std::fs::read_to_string(repo().join("dashboards/grafana/provisioning/datasources/lms.yaml")).expect("datasources");
    assert!(
        datasources.contains("username: grafana") && datasources.contains("password: $GRAFANA_CLICKHOUSE_PASSWORD"),
        "Grafana's ClickHouse user"
    );
    let init = services["clickhouse-init"]["command"][0].as_str().expect("clickhouse-init command");
    assert!(
        init.contains("CREATE USER IF NOT EXISTS grafana")
            && init.contains("readonly = 1")
            && init.contains("GRANT SELECT ON lms_analytics.* TO grafana"),
        "{init}"
    );
}

/// `docker-compose config` (Debian's `docker-compose`, which `cargo xtask install` adds)
/// accepts the file: its schema, the merge keys, the interpolation of the required
/// variables. Without them set it refuses, naming them.
#[test]
fn docker_compose_config_accepts_the_file() {
    let run = |with_secrets: bool| {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(repo()).args(["-f", "docker-compose.yml", "config", "-q"]);
        for k in ["LMS_JWT_SECRET", "GRAFANA_ADMIN_PASSWORD", "GRAFANA_CLICKHOUSE_PASSWORD"] {
            if with_secrets {
                cmd.env(k, "test-secret");
            } else {
                cmd.env_remove(k);
            }
        }
        cmd.output().expect("docker-compose (cargo xtask install adds the Debian package)")
    };
    let out = run(true);
    assert!(out.status.success(), "docker-compose config: {}", String::from_utf8_lossy(&out.stderr));
    let out = run(false);
    assert!(!out.status.success(), "the Grafana passwords are required");
    assert!(String::from_utf8_lossy(&out.stderr).contains("GRAFANA_ADMIN_PASSWORD"), "{}", String::from_utf8_lossy(&out.stderr));
}
