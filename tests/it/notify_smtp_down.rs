//! The SMTP server unreachable for a while, under `lms processor run notifications` as
//! deployed: the process stays alive (`/livez` 200), its `/readyz` names the SMTP server
//! as down, events keep being decided and in-app deliveries keep flowing, e-mails wait
//! (more connection failures than `max_attempts` fail nothing: unreachable is not a
//! failure), and once the server is back every pending e-mail is delivered exactly once,
//! nothing dead-lettered. The metrics of the processor and its dispatcher move along.
//!
//! The outage is a TCP proxy in front of the real SMTP server (aiosmtpd) cutting every
//! connection (`tests::proxy`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lms_bus::{BusMetrics, Producer, TopicPartition};
use lms_events::{Domain, Event};
use lms_state::Store;
use processors::notifications::preferences;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use tests::proxy::Proxy;
use tests::{BusFixture, eventually, free_port, init_logs, lms_env, spawn_lms};

use crate::notify_support::{SmtpServer, TENANT, achievement, email_prefs};
use crate::support::{fresh_postgres_db, kafka, produce_all};

const WAIT: Duration = Duration::from_secs(60);
const LEARNERS: [&str; 4] = ["ina", "jon", "kai", "lea"];
const MAX_ATTEMPTS: i64 = 2;

async fn get(http: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let r = http.get(url).timeout(Duration::from_secs(5)).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// The value of one sample (`name{labels}`) in a Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql).fetch_one(store.pool()).await.expect(sql)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_smtp_down_delays_emails_and_delivers_each_once_when_it_is_back() {
    init_logs();
    let smtp = SmtpServer::start().await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", smtp.port)).await;
    let brokers = tests::durable_kafka_brokers();
    let BusFixture { prefix, topics, .. } = BusFixture::fresh(&brokers, "notify-smtp-down", 1).await;
    let db = fresh_postgres_db("notify_smtp_down").await;
    let store = processors::open_store(&db, 2).await.expect("store");
    for learner in LEARNERS {
        preferences::write(&store, TENANT, learner, &email_prefs(learner)).await.expect("preferences");
    }

    let health = free_port();
    let mut env = lms_env(&brokers, &prefix, &db, free_port(), "notify-smtp-down");
    for (k, v) in [
        ("LMS_NOTIFICATIONS__SMTP__PORT", proxy.addr().port().to_string()),
        ("LMS_NOTIFICATIONS__SMTP__FROM", "LMS <noreply@lms.test>".to_owned()),
        ("LMS_NOTIFICATIONS__SMTP__TIMEOUT_MS", "2000".to_owned()),
        ("LMS_NOTIFICATIONS__DISPATCHER__POLL_INTERVAL_MS", "50".to_owned()),
        ("LMS_NOTIFICATIONS__DISPATCHER__RETRY_BASE_MS", "100".to_owned()),
        ("LMS_NOTIFICATIONS__DISPATCHER__RETRY_MAX_MS", "800".to_owned()),
        ("LMS_NOTIFICATIONS__DISPATCHER__MAX_ATTEMPTS", MAX_ATTEMPTS.to_string()),
    ] {
        env.push((k, v));
    }
    let _processor = spawn_lms(
        &["processor", "run", "notifications", "--listen", &format!("127.0.0.1:{health}")],
        &env,
        &format!("{prefix}processor.log"),
    );
    let http = reqwest::Client::new();
    let (ready, live, metrics) = (
        format!("http://127.0.0.1:{health}/readyz"),
        format!("http://127.0.0.1:{health}/livez"),
        format!("http://127.0.0.1:{health}/metrics"),
    );
    let body =
        eventually("ready before the outage", WAIT, || async { get(&http, &ready).await.filter(|(s, _)| *s == 200).map(|(_, b)| b) }).await;
    assert!(body.contains("smtp: ok"), "readiness checks the SMTP server: {body}");

    // The SMTP server goes away: not ready, still alive.
    proxy.cut();
    let body =
        eventually("unready during the outage", WAIT, || async { get(&http, &ready).await.filter(|(s, _)| *s == 503).map(|(_, b)| b) })
            .await;
    assert!(body.contains("smtp: 127.0.0.1:") && body.contains("store: ok") && body.contains("broker: ok"), "{body}");
    assert_eq!(get(&http, &live).await.map(|(s, _)| s), Some(200), "alive during the outage");

    // Events keep being decided; in-app deliveries flow; e-mails wait, attempted more often
    // than max_attempts without failing.
    let producer =
        Producer::new(&kafka(&brokers, &prefix), topics.clone(), BusMetrics::standalone(), "notify-smtp-down").expect("producer");
    let events: Vec<Event> = LEARNERS.iter().enumerate().map(|(i, l)| achievement(l, i + 1)).collect();
    let end = produce_all(&producer, &events).await.ends.values().copied().max().unwrap_or(0);
    let group = kafka(&brokers, &prefix).group_id("notifications");
    let topic = topics.topic(Domain::Derived).to_owned();
    eventually("the events decided during the outage", WAIT, || async {
        let stored = lms_state::offsets::load(&store, &group).await.ok()?;
        (*stored.get(&TopicPartition::new(&topic, 0))? >= end).then_some(())
    })
    .await;
    eventually("in-app deliveries during the outage", WAIT, || async {
        (count(&store, "SELECT COUNT(*) FROM notification_deliveries WHERE channel = 'in_app' AND state = 'sent'").await == 4).then_some(())
    })
    .await;
    eventually("e-mails attempted more than max_attempts times", WAIT, || async {
        let n = count(&store, "SELECT COALESCE(MIN(attempts), 0) FROM notification_deliveries WHERE channel = 'email'").await;
        (n > MAX_ATTEMPTS).then_some(())
    })
    .await;
    assert_eq!(count(&store, "SELECT COUNT(*) FROM notification_deliveries WHERE channel = 'email' AND state = 'pending'").await, 4);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM notification_deliveries WHERE state = 'failed'").await, 0);
    assert!(smtp.mails().is_empty());
    assert_eq!(get(&http, &live).await.map(|(s, _)| s), Some(200), "alive during the outage");
    let text = eventually("the metrics of the outage", WAIT, || async {
        let (_, text) = get(&http, &metrics).await?;
        (sample(&text, "lms_notifications_pending_deliveries{channel=\"email\"}") == Some(4.0)).then_some(text)
    })
    .await;
    assert_eq!(sample(&text, "lms_notifications_decided_total{category=\"achievement\",decision=\"direct\"}"), Some(4.0), "{text}");
    assert_eq!(sample(&text, "lms_notifications_deliveries_planned_total{category=\"achievement\",channel=\"email\"}"), Some(4.0));
    assert_eq!(sample(&text, "lms_notifications_delivery_attempts_total{channel=\"in_app\",outcome=\"sent\"}"), Some(4.0));
    assert!(
        sample(&text, "lms_notifications_delivery_attempts_total{channel=\"email\",outcome=\"retry\"}").unwrap_or(0.0) >= 4.0,
        "{text}"
    );
    assert_eq!(sample(&text, "lms_notifications_delivery_attempts_total{channel=\"email\",outcome=\"sent\"}"), None);
    assert_eq!(sample(&text, "lms_notifications_digest_windows_pending"), Some(0.0));
    assert_eq!(sample(&text, "lms_ready"), Some(0.0));

    // Back: ready again, every e-mail delivered once.
    proxy.restore();
    eventually("ready after the outage", WAIT, || async { get(&http, &ready).await.filter(|(s, _)| *s == 200).map(|_| ()) }).await;
    eventually("every e-mail delivery recorded as sent", WAIT, || async {
        (count(&store, "SELECT COUNT(*) FROM notification_deliveries WHERE channel = 'email' AND state = 'sent'").await == 4).then_some(())
    })
    .await;
    let mails = smtp.wait_for(4, WAIT).await;
    let got: BTreeSet<(String, String)> = mails.iter().map(|m| (m.to.clone(), m.subject.clone())).collect();
    let want: BTreeSet<(String, String)> = LEARNERS
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("{l}@example.org"), format!("Achievement unlocked: Badge number {}", i + 1)))
        .collect();
    assert_eq!(got, want);
    assert_eq!(mails.len(), 4, "each e-mail once: {mails:#?}");
    assert_eq!(count(&store, "SELECT COUNT(*) FROM notification_attempts WHERE outcome = 'failed'").await, 0);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM notification_deliveries WHERE state <> 'sent'").await, 0);
    let text = eventually("the metrics after the outage", WAIT, || async {
        let (_, text) = get(&http, &metrics).await?;
        (sample(&text, "lms_notifications_pending_deliveries{channel=\"email\"}") == Some(0.0)).then_some(text)
    })
    .await;
    assert_eq!(sample(&text, "lms_notifications_delivery_attempts_total{channel=\"email\",outcome=\"sent\"}"), Some(4.0));
    assert_eq!(sample(&text, "lms_notifications_delivery_attempts_total{channel=\"email\",outcome=\"failed\"}"), None);

    // Nothing dead-lettered, and no second e-mail once everything is recorded.
    let dlq = topics.topic(Domain::DeadLetter).to_owned();
    let consumer: Arc<BaseConsumer> = Arc::new(
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("{prefix}probe"))
            .create()
            .expect("consumer"),
    );
    let (low, high) = tokio::task::spawn_blocking(move || consumer.fetch_watermarks(&dlq, 0, Duration::from_secs(10)))
        .await
        .expect("join")
        .expect("watermarks");
    assert_eq!(high - low, 0, "nothing dead-lettered");
    assert_eq!(smtp.mails().len(), 4);
    store.close().await;
}
