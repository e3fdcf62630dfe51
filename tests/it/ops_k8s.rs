//! `deploy/k8s/`: every manifest parses; every container command is a real `lms`
//! command line (the binary accepts it, processor names are registered); every
//! Deployment has readiness and liveness probes on `/readyz` and `/livez`, on a port it
//! declares and listens on, a PodDisruptionBudget, and (processors) a KEDA Kafka
//! ScaledObject on its own consumer group bounded by its partitions. The probe paths are
//! requested from a running `lms processor run --listen` and `lms api`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use lms_bus::TopicsFile;
use serde_yaml::Value;
use tests::{eventually, free_port, kafka_brokers, unique_prefix};

use crate::ops_replay::{Proc, lms_bin};

fn dir() -> PathBuf {
    tests::repo_root().join("deploy/k8s")
}

/// Every document of every manifest, by file.
fn documents() -> BTreeMap<String, Vec<Value>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir()).expect("deploy/k8s") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let text = std::fs::read_to_string(&p).expect("manifest");
            let docs: Vec<Value> =
                text.split("\n---\n").map(|d| serde_yaml::from_str(d).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).collect();
            out.insert(p.file_name().expect("name").to_string_lossy().into_owned(), docs);
        }
    }
    out
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// A probe: (path, port).
fn probe(c: &Value, which: &str) -> (String, i64) {
    let g = &c[which]["httpGet"];
    (s(&g["path"]).to_owned(), g["port"].as_i64().unwrap_or_else(|| panic!("{which} port of {c:?}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_run_real_commands_and_probe_served_paths() {
    let docs = documents();
    let kustomization = &docs["kustomization.yaml"][0];
    let listed: BTreeSet<String> = kustomization["resources"].as_sequence().expect("resources").iter().map(|r| s(r).to_owned()).collect();
    let files: BTreeSet<String> = docs.keys().filter(|f| *f != "kustomization.yaml").cloned().collect();
    assert_eq!(listed, files, "kustomization.yaml lists every manifest");

    let all: Vec<&Value> = docs.values().flatten().collect();
    let of_kind = |kind: &str| all.iter().filter(|d| s(&d["kind"]) == kind).copied().collect::<Vec<_>>();
    let topics = TopicsFile::bundled();
    let partitions = |domain: lms_events::Domain| topics.topics.iter().find(|t| t.domain == domain).map(|t| t.partitions).expect("topic");
    let mut probes: Vec<(String, String, i64)> = Vec::new();
    let mut processors_deployed = BTreeSet::new();
    for dep in of_kind("Deployment") {
        let name = s(&dep["metadata"]["name"]);
        let labels = &dep["spec"]["template"]["metadata"]["labels"];
        assert_eq!(&dep["spec"]["selector"]["matchLabels"], labels, "{name}: the selector matches the pod labels");
        let c = &dep["spec"]["template"]["spec"]["containers"][0];
        let cmd: Vec<&str> = c["command"].as_sequence().expect("command").iter().map(s).collect();
        assert_eq!(cmd[0], "lms", "{name}: runs the lms binary");
        // The binary accepts the command line (clap answers --help only for a valid one).
        let mut help = cmd[1..].to_vec();
        help.push("--help");
        let out = Command::new(lms_bin()).args(&help).output().expect("lms --help");
        assert!(
            out.status.success(),
            "{name}: `lms {}` is not a valid command line: {}",
            cmd[1..].join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        let ports: BTreeSet<i64> =
            c["ports"].as_sequence().expect("ports").iter().map(|p| p["containerPort"].as_i64().expect("port")).collect();
        let (ready, ready_port) = probe(c, "readinessProbe");
        let (live, live_port) = probe(c, "livenessProbe");
        assert_eq!(ready, "/readyz", "{name}");
        assert!(live == "/healthz" || live == "/livez", "{name}: liveness on {live}");
        assert!(ports.contains(&ready_port) && ports.contains(&live_port), "{name}: probes on a declared port");
        let kind = if cmd[1] == "processor" {
            assert_eq!(&cmd[1..3], ["processor", "run"], "{name}");
            let processor = cmd[3];
            let reg = processors::lookup(processor).unwrap_or_else(|e| panic!("{name}: {e}"));
            let listen = cmd.iter().position(|a| *a == "--listen").map(|i| cmd[i + 1]).expect("--listen");
            assert!(listen.ends_with(&format!(":{ready_port}")), "{name}: listens where it is probed");
            // KEDA: its own group, no more replicas than partitions to share.
            let so = of_kind("ScaledObject")
                .into_iter()
                .find(|o| s(&o["spec"]["scaleTargetRef"]["name"]) == name)
                .unwrap_or_else(|| panic!("{name}: a ScaledObject"));
            let trigger = &so["spec"]["triggers"][0];
            assert_eq!(s(&trigger["type"]), "kafka");
            assert_eq!(s(&trigger["metadata"]["consumerGroup"]), format!("lms-{processor}"));
            let widest = reg.domains.iter().map(|d| partitions(*d)).max().expect("domains");
            let max = so["spec"]["maxReplicaCount"].as_i64().expect("maxReplicaCount");
            assert!((1..=i64::from(widest)).contains(&max), "{name}: maxReplicaCount {max} within 1..={widest}");
            processors_deployed.insert(processor.to_owned());
            "processor"
        } else {
            assert_eq!(cmd[1..], ["api"], "{name}");
            "api"
        };
        for (path, port) in [(ready, ready_port), (live, live_port)] {
            probes.push((kind.to_owned(), path, port));
        }
        let pdb = of_kind("PodDisruptionBudget")
            .into_iter()
            .find(|p| &p["spec"]["selector"]["matchLabels"] == labels)
            .unwrap_or_else(|| panic!("{name}: a PodDisruptionBudget"));
        assert!(pdb["spec"]["maxUnavailable"].is_number() || pdb["spec"]["minAvailable"].is_number());
    }
    let wanted: BTreeSet<String> = processors::REGISTRY.iter().map(|r| r.name.to_owned()).filter(|n| n != "noop").collect();
    assert_eq!(processors_deployed, wanted, "a Deployment per processor (noop is a benchmark baseline)");

    assert_eq!(probes.len(), 2 * (wanted.len() + 1), "two probes per Deployment");

    // The probed paths are served.
    let work = std::env::temp_dir().join(unique_prefix("ops-k8s"));
    std::fs::create_dir_all(&work).expect("dir");
    let (api_port, ops_port) = (free_port(), free_port());
    // Each process its own SQLite file: one file shared by two processes would lock.
    let spawn = |args: &[&str], db: &str| -> Proc {
        Proc(
            Command::new(lms_bin())
                .args(args)
                .current_dir(&work)
                .env("LMS_KAFKA__BROKERS", kafka_brokers())
                .env("LMS_KAFKA__TOPIC_PREFIX", unique_prefix("ops-k8s"))
                .env("LMS_STORE__URL", format!("sqlite://{}", work.join(db).display()))
                .env("LMS_ANALYTICS__STORE", "parquet")
                .env("LMS_ANALYTICS__DIR", work.join(format!("{db}.analytics")).display().to_string())
                .env("LMS_JWT_SECRET", "k8s-test-secret")
                .env("LMS_API__LISTEN", format!("127.0.0.1:{api_port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start lms"),
        )
    };
    let children = vec![
        spawn(&["processor", "run", "catalog", "--listen", &format!("127.0.0.1:{ops_port}")], "processor.db"),
        spawn(&["api"], "api.db"),
    ];
    let http = reqwest::Client::new();
    for (kind, path, _) in &probes {
        let port = if kind == "api" { api_port } else { ops_port };
        let url = format!("http://127.0.0.1:{port}{path}");
        eventually(&format!("{kind} to answer {path} with 200"), Duration::from_secs(60), || async {
            (http.get(&url).send().await.ok()?.status() == 200).then_some(())
        })
        .await;
    }
    tracing::info!(probes = probes.len(), "every probed path answered 200");
    drop(children);
    let _ = std::fs::remove_dir_all(&work);
}

/// What issue 29 found wrong in the manifests: one image name (compose's), no `replicas`
/// where KEDA scales, a restricted securityContext, compose's metrics port, Secrets as
/// files, a Job for `topics apply` + `migrate` (whose commands run here, verbatim, against
/// the test broker and PostgreSQL), and a TriggerAuthentication for SASL Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_are_restricted_scaled_by_keda_alone_and_initialised_by_a_job() {
    let docs = documents();
    let all: Vec<&Value> = docs.values().flatten().collect();
    let of_kind = |kind: &str| all.iter().filter(|d| s(&d["kind"]) == kind).copied().collect::<Vec<_>>();
    let compose: Value = serde_yaml::from_str(&std::fs::read_to_string(tests::repo_root().join("docker-compose.yml")).expect("compose"))
        .expect("compose YAML");
    let image = s(&compose["x-lms"]["image"]).to_owned();
    let compose_port =
        s(&compose["x-lms"]["healthcheck"]["test"][1]).split(':').nth(2).and_then(|p| p.split('/').next()).expect("port").to_owned();
    let scaled: BTreeSet<&str> = of_kind("ScaledObject").iter().map(|o| s(&o["spec"]["scaleTargetRef"]["name"])).collect();
    let mut pods: Vec<(&str, &Value)> =
        of_kind("Deployment").iter().map(|d| (s(&d["metadata"]["name"]), &d["spec"]["template"]["spec"])).collect();
    for dep in of_kind("Deployment") {
        let name = s(&dep["metadata"]["name"]);
        if scaled.contains(name) {
            assert!(dep["spec"]["replicas"].is_null(), "{name}: no replicas, KEDA owns the scale");
        }
    }
    let jobs = of_kind("Job");
    assert_eq!(jobs.len(), 1, "one init Job");
    pods.push(("lms-init", &jobs[0]["spec"]["template"]["spec"]));
    for (name, pod) in &pods {
        assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true), "{name}: runAsNonRoot");
        let c = &pod["containers"][0];
        assert_eq!(s(&c["image"]), image, "{name}: compose's image");
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"].as_bool(), Some(true), "{name}");
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"].as_bool(), Some(false), "{name}");
        assert!(
            c["securityContext"]["capabilities"]["drop"].as_sequence().is_some_and(|d| d.iter().any(|x| s(x) == "ALL")),
            "{name}: drop ALL"
        );
        assert!(
            c["envFrom"].as_sequence().into_iter().flatten().all(|e| e["secretRef"].is_null()),
            "{name}: secrets as files, not envFrom"
        );
        let secret_volume = pod["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|v| s(&v["secret"]["secretName"]) == "lms-secrets")
            .expect("the Secret as a volume");
        assert!(
            c["volumeMounts"].as_sequence().into_iter().flatten().any(|m| m["name"] == secret_volume["name"]),
            "{name}: mounts the Secret"
        );
        let cmd: Vec<&str> = c["command"].as_sequence().expect("command").iter().map(s).collect();
        if cmd.get(1) == Some(&"processor") {
            assert!(cmd.last().is_some_and(|l| l.ends_with(&format!(":{compose_port}"))), "{name}: compose's metrics port {compose_port}");
            assert_eq!(probe(c, "livenessProbe").0, "/livez", "{name}");
        }
    }
    // The Job's shell command, each `lms ...` run verbatim against the real services.
    let c = &jobs[0]["spec"]["template"]["spec"]["containers"][0];
    let cmd: Vec<&str> = c["command"].as_sequence().expect("command").iter().map(s).collect();
    assert_eq!(&cmd[..2], ["/bin/sh", "-c"]);
    let db = crate::support::fresh_postgres_db("ops_k8s_job").await;
    let work = std::env::temp_dir().join(unique_prefix("ops-k8s-job"));
    let env: Vec<(&str, String)> = vec![
        ("LMS_KAFKA__BROKERS", kafka_brokers()),
        ("LMS_KAFKA__TOPIC_PREFIX", unique_prefix("ops-k8s-job")),
        ("LMS_STORE__URL", db),
        ("LMS_ANALYTICS__STORE", "parquet".to_owned()),
        ("LMS_ANALYTICS__DIR", work.display().to_string()),
    ];
    let parts: Vec<&str> = cmd[2].split("&&").map(str::trim).collect();
    assert_eq!(parts, ["lms topics apply", "lms migrate"], "the Job applies the topics, then migrates");
    for part in parts {
        let args: Vec<&str> = part.split_whitespace().skip(1).collect();
        let out = tests::run_lms(&args, &env);
        assert!(out.ok, "`{part}` succeeds: {}{}", out.stdout, out.stderr);
    }
    let _ = std::fs::remove_dir_all(&work);
    let auth = of_kind("TriggerAuthentication");
    assert!(
        auth.iter().any(|a| a["spec"]["secretTargetRef"].as_sequence().into_iter().flatten().any(|r| s(&r["parameter"]) == "sasl")),
        "a TriggerAuthentication example for SASL Kafka"
    );
}

/// `kubernetes-validate --strict` (PyPI, with the Kubernetes OpenAPI schemas it ships;
/// `cargo xtask install` adds it) accepts every built-in resource of the manifests: unknown
/// or misplaced fields fail. KEDA's kinds (ScaledObject, TriggerAuthentication) have no
/// schema there and are checked by the tests above.
#[test]
fn kubernetes_validate_accepts_the_manifests() {
    let files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("deploy/k8s")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml") && p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
        .expect("kubernetes-validate (cargo xtask install adds it from PyPI)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !text.contains("ERROR"), "kubernetes-validate: {text}");
    assert!(text.matches(" passed for resource ").count() >= files.len(), "every file validated: {text}");
}
