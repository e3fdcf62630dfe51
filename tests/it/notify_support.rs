//! Harness of the notification tests: a real SMTP server (aiosmtpd, `tests/smtp/sink.py`)
//! on a free loopback port, a webhook receiver that fails the first requests, and the
//! notifications processor with its dispatcher running in-process on a fresh PostgreSQL
//! database and fresh topics, with a clock the test moves forward.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use lms_bus::{BusMetrics, KafkaConfig, Producer, TopicMap, TopicsFile};
use lms_events::data::AchievementUnlocked;
use lms_events::{Domain, Event, EventData};
use lms_state::Store;
use processors::achievements::rules::Rules;
use processors::notifications::preferences::{self, Preferences};
use processors::notifications::{Clock, NotifyConfig, Settings};
use processors::runtime::{self, Plumbing, Running};
use serde_json::Value;
use tests::{create_topic, eventually, init_logs, unique_prefix};
use tokio::io::AsyncBufReadExt as _;

use crate::support::{fast_consumer, fresh_postgres_db, kafka, produce_all};

/// The tenant of the notification tests.
pub const TENANT: &str = "acme";

/// A received e-mail, as the SMTP server decoded it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub rcpt_tos: Vec<String>,
    pub subject: String,
    pub to: String,
    pub body: String,
}

/// aiosmtpd on a loopback port, storing messages as files; killed when dropped.
pub struct SmtpServer {
    pub port: u16,
    dir: PathBuf,
    _child: tokio::process::Child,
}

impl SmtpServer {
    /// Starts it (installing aiosmtpd with pip if the machine lacks it).
    pub async fn start() -> SmtpServer {
        let have = std::process::Command::new("python3").args(["-c", "import aiosmtpd"]).status().expect("python3 runs");
        if !have.success() {
            let pip = std::process::Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--break-system-packages", "aiosmtpd"])
                .status()
                .expect("pip runs");
            assert!(pip.success(), "installing aiosmtpd failed");
        }
        let dir = std::env::temp_dir().join(format!("lms-smtp-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("mail dir");
        let script = tests::repo_root().join("tests/smtp/sink.py");
        // A free port can be taken between probing and binding: retry a few times.
        for _ in 0..5 {
            let port = tests::free_port();
            let mut child = tokio::process::Command::new("python3")
                .arg(&script)
                .arg(&dir)
                .arg(port.to_string())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("start the SMTP server");
            let stdout = child.stdout.take().expect("stdout");
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
            if matches!(&ready, Ok(Ok(Some(line))) if line.trim() == "ready") {
                return SmtpServer { port, dir, _child: child };
            }
        }
        panic!("the SMTP server did not start");
    }

    /// Messages received so far.
    pub fn mails(&self) -> Vec<Mail> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).expect("mail dir").flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let doc: Value = serde_json::from_slice(&std::fs::read(&path).expect("mail file")).expect("mail json");
            out.push(Mail {
                rcpt_tos: doc["rcpt_tos"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
                subject: doc["subject"].as_str().unwrap_or_default().to_owned(),
                to: doc["to"].as_str().unwrap_or_default().to_owned(),
                body: doc["body"].as_str().unwrap_or_default().to_owned(),
            });
        }
        out
    }

    /// Waits until at least `n` messages arrived; answers them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Mail> {
        eventually(&format!("{n} e-mails"), timeout, || async {
            let m = self.mails();
            (m.len() >= n).then_some(m)
        })
        .await
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A webhook receiver that answers 500 to the first `failures` requests, then 200; it
/// checks every signature with the payment webhook's signing code.
pub struct WebhookReceiver {
    pub url: String,
    pub requests: Arc<AtomicUsize>,
    pub accepted: Arc<Mutex<Vec<Value>>>,
    pub bad_signatures: Arc<AtomicUsize>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl WebhookReceiver {
    pub async fn start(secret: &'static str, failures: usize) -> WebhookReceiver {
        let requests = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let bad_signatures = Arc::new(AtomicUsize::new(0));
        let (r, a, b) = (requests.clone(), accepted.clone(), bad_signatures.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (r, a, b) = (r.clone(), a.clone(), b.clone());
                async move {
                    let n = r.fetch_add(1, Ordering::SeqCst);
                    let sig = headers.get("lms-signature").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                    let t: i64 = sig.split(',').find_map(|p| p.strip_prefix("t=")).and_then(|t| t.parse().ok()).unwrap_or_default();
                    if sig != api::webhook::sign(secret.as_bytes(), t, &body) || (Utc::now().timestamp() - t).abs() > 300 {
                        b.fetch_add(1, Ordering::SeqCst);
                        return StatusCode::UNAUTHORIZED;
                    }
                    if n < failures {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    a.lock().expect("lock").push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        });
        WebhookReceiver { url, requests, accepted, bad_signatures, shutdown }
    }
}

/// The notifications processor and its dispatcher on a fresh database and topics.
pub struct Pipeline {
    pub store: Store,
    pub producer: Arc<Producer>,
    pub topics: TopicMap,
    pub kafka: KafkaConfig,
    pub brokers: String,
    pub clock: Clock,
    pub settings: Arc<Settings>,
    running: Option<Running>,
}

/// A configuration for tests: SMTP on `smtp_port`, quick dispatcher rounds and retries.
pub fn config(smtp_port: u16) -> NotifyConfig {
    let mut c = NotifyConfig::default();
    c.smtp.port = smtp_port;
    c.smtp.from = "LMS <noreply@lms.test>".to_owned();
    c.dispatcher.poll_interval_ms = 50;
    c.dispatcher.retry_base_ms = 50;
    c.dispatcher.retry_max_ms = 500;
    c
}

impl Pipeline {
    /// Creates topics and a database for `test` and starts the processor.
    pub async fn start(test: &str, config: NotifyConfig, templates_dir: Option<&Path>) -> Pipeline {
        init_logs();
        let brokers = tests::durable_kafka_brokers();
        let prefix = unique_prefix(test);
        let kafka = kafka(&brokers, &prefix);
        let topics = TopicsFile::bundled().topic_map(&prefix);
        for d in Domain::ALL {
            create_topic(&brokers, topics.topic(d), 1).await;
        }
        let store = processors::open_store(&fresh_postgres_db(test).await, 8).await.expect("store");
        let producer = Arc::new(Producer::new(&kafka, topics.clone(), BusMetrics::standalone(), "notify-test").expect("producer"));
        let clock = Clock::default();
        let config = NotifyConfig { templates_dir: templates_dir.map(Path::to_path_buf), ..config };
        let settings = Arc::new(Settings::load(config).expect("templates").with_clock(clock.clone()));
        let mut p = Pipeline { store, producer, topics, kafka, brokers, clock, settings, running: None };
        p.run();
        p
    }

    fn run(&mut self) {
        let (mut ctx, relay) = runtime::context(self.store.clone(), Arc::clone(&self.producer));
        ctx.extensions.insert(Arc::new(Rules::load(None).expect("rules")));
        ctx.extensions.insert(Arc::clone(&self.settings));
        let plumbing = Plumbing {
            kafka: self.kafka.clone(),
            consumer: fast_consumer(),
            topics: self.topics.clone(),
            producer: Arc::clone(&self.producer),
            metrics: BusMetrics::standalone(),
        };
        let names = [processors::lookup("notifications").expect("registered")];
        self.running = Some(runtime::start(&plumbing, &ctx, relay, &names, 1).expect("start"));
    }

    /// Kills the members (no drain of their batches) and stops the dispatcher.
    pub async fn kill(&mut self) {
        if let Some(running) = self.running.take() {
            for (_, m) in running.members() {
                m.kill_switch().cancel();
            }
            let _ = running.stop().await;
        }
    }

    /// Starts the processor again on the same store and topics.
    pub fn restart(&mut self) {
        assert!(self.running.is_none(), "kill first");
        self.run();
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("stop");
        }
        self.store.close().await;
    }

    /// Stores a learner's preferences as the PUT endpoint does.
    pub async fn set_preferences(&self, learner: &str, prefs: &Preferences) {
        preferences::write(&self.store, TENANT, learner, prefs).await.expect("preferences");
    }

    /// Produces events of one domain; answers one past the last offset (one partition).
    pub async fn produce(&self, events: &[Event]) -> i64 {
        produce_all(&self.producer, events).await.ends.values().copied().max().unwrap_or(0)
    }

    /// Waits until the group's stored offsets cover every record now on `domain`'s topic
    /// (the events produced so far are decided and committed).
    pub async fn wait_decided(&self, domain: Domain, end: i64) {
        let group = self.kafka.group_id("notifications");
        let topic = self.topics.topic(domain).to_owned();
        eventually(&format!("offsets of {topic} to reach {end}"), Duration::from_secs(60), || async {
            let stored = lms_state::offsets::load(&self.store, &group).await.ok()?;
            (*stored.get(&lms_bus::TopicPartition::new(&topic, 0))? >= end).then_some(())
        })
        .await;
    }

    /// A SQL count.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql).fetch_one(self.store.pool()).await.expect(sql)
    }
}

/// An `achievement.unlocked` event of `learner`.
pub fn achievement(learner: &str, n: usize) -> Event {
    let data = AchievementUnlocked {
        learner_id: learner.to_owned(),
        achievement_id: format!("badge-{n}"),
        title: format!("Badge number {n}"),
        course_id: Some("rust-101".to_owned()),
        unlocked_at: Utc::now(),
    };
    Event::derived(TENANT, "notify-test", Utc::now(), EventData::AchievementUnlocked(data))
}

/// Preferences with an e-mail address, in-app and e-mail on, no webhook.
pub fn email_prefs(learner: &str) -> Preferences {
    let mut p = Preferences { email: Some(format!("{learner}@example.org")), ..Preferences::default() };
    p.channels.webhook = false;
    p
}
