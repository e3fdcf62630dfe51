//! The notifications processor against a real broker, PostgreSQL, SMTP server and webhook
//! receiver: templates, preferences, throttle and digests, dedupe, retries, dead letters.

use std::time::Duration;

use chrono::{Timelike as _, Utc};
use lms_events::data::{EnrollmentCreated, EnrollmentSource, PaymentSucceeded};
use lms_events::{Domain, Event, EventData, EventType, codec};
use processors::notifications::config::WebhookConfig;
use processors::notifications::inbox;
use processors::notifications::preferences::QuietHours;
use tests::eventually;

use crate::api_support::read_until;
use crate::notify_support::{Pipeline, SmtpServer, TENANT, WebhookReceiver, achievement, config, email_prefs};

const WAIT: Duration = Duration::from_secs(60);

fn enrollment(learner: &str) -> Event {
    let data =
        EnrollmentCreated { learner_id: learner.to_owned(), course_id: "rust-101".to_owned(), source: EnrollmentSource::SelfService };
    Event::derived(TENANT, "notify-test", Utc::now(), EventData::EnrollmentCreated(data))
}

fn payment(learner: &str) -> Event {
    let data = PaymentSucceeded {
        payment_id: format!("pay-{}", uuid::Uuid::new_v4().simple()),
        learner_id: learner.to_owned(),
        course_id: Some("rust-101".to_owned()),
        amount_minor: 1234,
        currency: "EUR".to_owned(),
    };
    Event::derived(TENANT, "notify-test", Utc::now(), EventData::PaymentSucceeded(data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_email_is_rendered_from_the_template_and_redelivery_sends_nothing_twice() {
    let smtp = SmtpServer::start().await;
    let p = Pipeline::start("notify-email", config(smtp.port), None).await;
    p.set_preferences("ada", &email_prefs("ada")).await;
    let unlock = achievement("ada", 1);
    p.produce(std::slice::from_ref(&unlock)).await;

    let mails = smtp.wait_for(1, WAIT).await;
    assert_eq!(mails[0].rcpt_tos, ["ada@example.org"]);
    assert_eq!(mails[0].to, "ada@example.org");
    assert_eq!(mails[0].subject, "Achievement unlocked: Badge number 1");
    assert_eq!(mails[0].body.trim(), "You earned \"Badge number 1\" in rust-101. Keep going!");
    let listed = eventually("the in-app notification", WAIT, || async {
        let l = inbox::list(&p.store, TENANT, "ada", false).await.ok()?;
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].category.as_str(), listed[0].title.as_str()), ("achievement", "Achievement unlocked: Badge number 1"));

    // The same event twice more (a producer retry, a replay): decided, and nothing new.
    let end = p.produce(&[unlock.clone(), unlock.clone()]).await;
    p.wait_decided(Domain::Derived, end).await;
    eventually("both deliveries recorded", WAIT, || async {
        (p.count("SELECT COUNT(*) FROM notification_deliveries WHERE state = 'sent'").await == 2).then_some(())
    })
    .await;
    assert_eq!(p.count("SELECT COUNT(*) FROM notifications").await, 1);
    assert_eq!(p.count("SELECT COUNT(*) FROM notification_deliveries").await, 2, "in-app and e-mail, once each");
    assert_eq!(p.count("SELECT COUNT(*) FROM notification_attempts WHERE outcome = 'sent'").await, 2);
    assert_eq!(smtp.mails().len(), 1, "no second e-mail");

    // Each attempt is announced with notification.sent.
    let topic = p.topics.topic(Domain::Derived).to_owned();
    let recs =
        read_until(&p.brokers, &topic, |rs| rs.iter().filter(|r| r.event.event_type() == EventType::NotificationSent).count() >= 2).await;
    let sent: Vec<_> = recs.iter().filter(|r| r.event.event_type() == EventType::NotificationSent).collect();
    assert_eq!(sent.len(), 2);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_quiet_hours_defer_delivery_to_their_end() {
    let smtp = SmtpServer::start().await;
    let p = Pipeline::start("notify-quiet", config(smtp.port), None).await;
    let now = p.clock.now();
    let hhmm = |t: chrono::DateTime<Utc>| format!("{:02}:{:02}", t.hour(), t.minute());
    let mut prefs = email_prefs("bea");
    prefs.quiet_hours = Some(QuietHours { start: hhmm(now - chrono::Duration::hours(1)), end: hhmm(now + chrono::Duration::hours(1)) });
    p.set_preferences("bea", &prefs).await;
    let end = p.produce(&[achievement("bea", 1)]).await;
    p.wait_decided(Domain::Derived, end).await;

    assert_eq!(p.count("SELECT COUNT(*) FROM notification_deliveries WHERE state = 'pending'").await, 2, "deferred, not dropped");
    let due = p.count("SELECT MIN(due_at_us) FROM notification_deliveries").await;
    let wait_s = (due - now.timestamp_micros()) / 1_000_000;
    assert!((3000..=3660).contains(&wait_s), "due at the end of the quiet hours, {wait_s} s after now");
    assert!(smtp.mails().is_empty(), "nothing is sent during quiet hours");
    assert!(inbox::list(&p.store, TENANT, "bea", false).await.expect("inbox").is_empty());

    p.clock.advance(Duration::from_secs(2 * 3600));
    let mails = smtp.wait_for(1, WAIT).await;
    assert_eq!(mails[0].subject, "Achievement unlocked: Badge number 1");
    eventually("the inbox entry after the quiet hours", WAIT, || async {
        (inbox::list(&p.store, TENANT, "bea", false).await.ok()?.len() == 1).then_some(())
    })
    .await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_mute_suppresses_a_category_but_not_payments() {
    let smtp = SmtpServer::start().await;
    let p = Pipeline::start("notify-mute", config(smtp.port), None).await;
    let mut prefs = email_prefs("cyd");
    prefs.muted_categories = vec!["achievement".into(), "payment".into()];
    p.set_preferences("cyd", &prefs).await;
    let end = p.produce(&[achievement("cyd", 1)]).await;
    p.produce(&[payment("cyd")]).await;

    let mails = smtp.wait_for(1, WAIT).await;
    assert_eq!(mails[0].subject, "Payment received: 12.34 EUR", "payments are transactional: never muted");
    assert!(mails[0].body.contains("for rust-101"), "{}", mails[0].body);
    p.wait_decided(Domain::Derived, end).await;
    assert_eq!(p.count("SELECT COUNT(*) FROM notifications WHERE category = 'achievement' AND state = 'muted'").await, 1);
    assert_eq!(
        p.count("SELECT COUNT(*) FROM notification_deliveries WHERE category = 'achievement'").await,
        0,
        "a muted notification has no delivery"
    );
    eventually("the payment's deliveries", WAIT, || async {
        (p.count("SELECT COUNT(*) FROM notification_deliveries WHERE state = 'sent'").await == 2).then_some(())
    })
    .await;
    assert_eq!(smtp.mails().len(), 1);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_throttle_turns_a_burst_into_n_messages_and_one_digest_that_survives_a_kill() {
    let smtp = SmtpServer::start().await;
    let mut c = config(smtp.port);
    c.throttle_per_window = 3;
    let mut p = Pipeline::start("notify-throttle", c, None).await;
    // Start just after a window boundary so the burst falls in one window.
    let into_window = p.clock.now().timestamp().rem_euclid(3600);
    p.clock.advance(Duration::from_secs(u64::try_from(3600 - into_window).unwrap_or(0) + 1));
    p.set_preferences("dan", &email_prefs("dan")).await;
    let start = Utc::now();
    let burst: Vec<Event> =
        (1..=20).map(|n| Event { time: start + chrono::Duration::milliseconds(n as i64), ..achievement("dan", n) }).collect();
    let end = p.produce(&burst).await;
    p.wait_decided(Domain::Derived, end).await;

    let direct = smtp.wait_for(3, WAIT).await;
    assert_eq!(p.count("SELECT COUNT(*) FROM notifications WHERE state = 'digest'").await, 17);
    assert_eq!(p.count("SELECT COUNT(*) FROM notification_digests WHERE state = 'open'").await, 1);

    // Killed between the items and the window's end: the timer is a row, not a task.
    p.kill().await;
    assert_eq!(direct.len(), 3);
    assert_eq!(smtp.mails().len(), 3, "3 messages within the limit, the rest wait for the digest");
    p.restart();
    p.clock.advance(Duration::from_secs(3600));

    let mails = smtp.wait_for(4, WAIT).await;
    let digest = mails.iter().find(|m| m.subject.starts_with("17 new")).unwrap_or_else(|| panic!("a digest among {mails:#?}"));
    assert_eq!(digest.subject, "17 new notifications");
    let items: Vec<&str> = digest.body.lines().filter_map(|l| l.trim().strip_prefix("- ")).collect();
    let want: Vec<String> = (4..=20).map(|n| format!("Achievement unlocked: Badge number {n}")).collect();
    assert_eq!(items, want, "the throttled items in event order: {}", digest.body);
    eventually("the digest's deliveries recorded", WAIT, || async {
        let sent = p.count("SELECT COUNT(*) FROM notification_deliveries WHERE category = 'digest' AND state = 'sent'").await;
        (sent == 2).then_some(())
    })
    .await;
    assert_eq!(p.count("SELECT COUNT(*) FROM notifications WHERE category = 'digest'").await, 1);
    assert_eq!(p.count("SELECT COUNT(*) FROM notifications WHERE state = 'digested'").await, 17);
    assert_eq!(p.count("SELECT COUNT(*) FROM notification_digests WHERE state = 'sent'").await, 1);
    // Kill and restart once more: the sent digest stays sent.
    p.kill().await;
    p.restart();
    p.clock.advance(Duration::from_secs(3600));
    let redelivered = p.produce(&burst[..5]).await;
    p.wait_decided(Domain::Derived, redelivered).await;
    assert_eq!(p.count("SELECT COUNT(*) FROM notification_deliveries").await, 3 * 2 + 2, "nothing new was planned");
    assert_eq!(smtp.mails().len(), 4, "3 messages plus one digest");
    let inbox = inbox::list(&p.store, TENANT, "dan", false).await.expect("inbox");
    assert_eq!(inbox.len(), 4);
    assert_eq!(inbox[0].category, "digest");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_webhook_retries_with_backoff_until_one_delivery_is_accepted() {
    const SECRET: &str = "whsec_notify_test";
    let smtp = SmtpServer::start().await;
    let hook = WebhookReceiver::start(SECRET, 2).await;
    let mut c = config(smtp.port);
    c.webhooks.insert(TENANT.to_owned(), WebhookConfig { url: hook.url.clone(), secret: SECRET.into() });
    let p = Pipeline::start("notify-webhook", c, None).await;
    // Defaults: in-app and webhook (no e-mail address).
    let e = enrollment("eve");
    p.produce(std::slice::from_ref(&e)).await;

    eventually("the webhook delivery to succeed", WAIT, || async {
        (p.count("SELECT COUNT(*) FROM notification_deliveries WHERE channel = 'webhook' AND state = 'sent'").await == 1).then_some(())
    })
    .await;
    let accepted = hook.accepted.lock().expect("lock").clone();
    assert_eq!(accepted.len(), 1, "exactly one accepted delivery");
    assert_eq!(hook.requests.load(std::sync::atomic::Ordering::SeqCst), 3, "500, 500, 200");
    assert_eq!(hook.bad_signatures.load(std::sync::atomic::Ordering::SeqCst), 0, "every request is signed");
    assert_eq!(accepted[0]["learner_id"], "eve");
    assert_eq!(accepted[0]["category"], "enrollment");
    assert_eq!(accepted[0]["title"], "You are enrolled in rust-101");
    assert_eq!(accepted[0]["source_event_id"], e.id.as_str());
    let outcomes: Vec<String> = sqlx::query_scalar("SELECT outcome FROM notification_attempts WHERE channel = 'webhook' ORDER BY attempt")
        .fetch_all(p.store.pool())
        .await
        .expect("attempts");
    assert_eq!(outcomes, ["retry", "retry", "sent"]);

    // Every attempt's outcome is an event: two failed, then sent (plus the in-app one).
    let topic = p.topics.topic(Domain::Derived).to_owned();
    let outcome_events = |rs: &[crate::api_support::Rec]| {
        rs.iter()
            .filter_map(|r| match &r.event.data {
                EventData::NotificationSent(d) | EventData::NotificationFailed(d) if d.channel.as_str() == "webhook" => {
                    Some((r.event.event_type(), d.attempt, d.error.is_some()))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let recs = read_until(&p.brokers, &topic, |rs| outcome_events(rs).len() >= 3).await;
    let mut got = outcome_events(&recs);
    got.sort_by_key(|(_, attempt, _)| *attempt);
    assert_eq!(
        got,
        [(EventType::NotificationFailed, 1, true), (EventType::NotificationFailed, 2, true), (EventType::NotificationSent, 3, false)]
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_template_error_dead_letters_the_event_and_the_rest_flows() {
    let smtp = SmtpServer::start().await;
    let dir = std::env::temp_dir().join(format!("lms-templates-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join(TENANT)).expect("templates dir");
    std::fs::write(dir.join(TENANT).join("en.yaml"), "achievement_unlocked:\n  title: '{{ title'\n  body: 'x'\n").expect("template");
    let p = Pipeline::start("notify-template", config(smtp.port), Some(&dir)).await;
    p.set_preferences("fay", &email_prefs("fay")).await;
    let broken = achievement("fay", 1);
    p.produce(std::slice::from_ref(&broken)).await;
    p.produce(&[enrollment("fay")]).await;

    let mails = smtp.wait_for(1, WAIT).await;
    assert_eq!(mails[0].subject, "You are enrolled in rust-101", "the other kinds still render");
    let dlq = p.topics.topic(Domain::DeadLetter).to_owned();
    let recs = read_until(&p.brokers, &dlq, |rs| rs.iter().any(|r| r.event.id == broken.id)).await;
    let rec = recs.iter().find(|r| r.event.id == broken.id).expect("dead letter");
    let reason = rec.headers.get(codec::headers::DLQ_REASON).cloned().unwrap_or_default();
    assert!(reason.contains("template") && reason.contains("achievement_unlocked"), "reason: {reason}");
    assert_eq!(p.count("SELECT COUNT(*) FROM notifications WHERE category = 'achievement'").await, 0);
    p.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn progress(learner: &str, percent: f64) -> Event {
    let completed = percent >= 100.0;
    let data = lms_events::data::ProgressUpdated {
        learner_id: learner.to_owned(),
        course_id: "rust-101".to_owned(),
        course_version: 1,
        lessons_completed: (percent / 10.0) as u32,
        lessons_total: 10,
        percent_complete: percent,
        status: if completed { lms_events::data::ProgressStatus::Completed } else { lms_events::data::ProgressStatus::InProgress },
        time_spent_s: 0.0,
        last_activity_at: Some(Utc::now()),
        completed_at: completed.then(Utc::now),
        revision: 1,
    };
    Event::derived(TENANT, "notify-test", Utc::now(), EventData::ProgressUpdated(data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_milestones_once_per_course_and_refunds_reach_the_payer() {
    let smtp = SmtpServer::start().await;
    let p = Pipeline::start("notify-milestones", config(smtp.port), None).await;
    p.set_preferences("gus", &email_prefs("gus")).await;
    let completion = lms_events::data::CourseCompleted {
        learner_id: "gus".to_owned(),
        course_id: "rust-101".to_owned(),
        course_version: 1,
        completed_at: Utc::now(),
    };
    let derived = [
        progress("gus", 30.0),
        progress("gus", 60.0),
        progress("gus", 60.0),
        progress("gus", 100.0),
        Event::derived(TENANT, "notify-test", Utc::now(), EventData::CourseCompleted(completion)),
    ];
    for e in &derived {
        p.produce(std::slice::from_ref(e)).await;
    }
    let paid = payment("gus");
    let EventData::PaymentSucceeded(ref d) = paid.data else { unreachable!() };
    let refund = lms_events::data::PaymentRefunded { payment_id: d.payment_id.clone(), amount_minor: 500, currency: "EUR".to_owned() };
    p.produce(&[paid.clone(), Event::derived(TENANT, "notify-test", Utc::now(), EventData::PaymentRefunded(refund))]).await;

    let mails = smtp.wait_for(5, WAIT).await;
    let mut subjects: Vec<&str> = mails.iter().map(|m| m.subject.as_str()).collect();
    subjects.sort_unstable();
    assert_eq!(
        subjects,
        [
            "25 % of rust-101 done",
            "50 % of rust-101 done",
            "Congratulations, you completed rust-101!",
            "Payment received: 12.34 EUR",
            "Refund issued: 5.00 EUR",
        ]
    );
    assert!(mails.iter().all(|m| m.rcpt_tos == ["gus@example.org"]));
    let milestones: Vec<(String, String)> =
        sqlx::query_as("SELECT source_key, state FROM notifications WHERE category = 'milestone' ORDER BY source_key")
            .fetch_all(p.store.pool())
            .await
            .expect("milestones");
    let want = [("milestone:rust-101:25", "direct"), ("milestone:rust-101:50", "direct"), ("milestone:rust-101:75", "superseded")];
    assert_eq!(milestones, want.map(|(k, s)| (k.to_owned(), s.to_owned())), "each milestone once; 75 % was passed by the completion");
    eventually("all deliveries recorded", WAIT, || async {
        (p.count("SELECT COUNT(*) FROM notification_deliveries WHERE state = 'sent'").await == 10).then_some(())
    })
    .await;
    assert_eq!(smtp.mails().len(), 5);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_two_dispatchers_share_the_deliveries_without_duplicates() {
    const SECRET: &str = "whsec_notify_pair";
    const N: usize = 150;
    let smtp = SmtpServer::start().await;
    let hook = WebhookReceiver::start(SECRET, 0).await;
    let mut c = config(smtp.port);
    c.webhooks.insert(TENANT.to_owned(), WebhookConfig { url: hook.url.clone(), secret: SECRET.into() });
    c.dispatcher.batch_rows = 10;
    let p = Pipeline::start("notify-pair", c, None).await;
    // A second dispatcher on the same database, as in another process.
    let stop = tokio_util::sync::CancellationToken::new();
    let second = processors::notifications::dispatcher::Dispatcher::new(
        p.store.clone(),
        std::sync::Arc::clone(&p.settings),
        std::sync::Arc::clone(&p.producer),
        std::sync::Arc::new(tokio::sync::Notify::new()),
        p.kafka.group_id("notifications"),
    );
    let task = tokio::spawn(second.run(stop.clone()));
    let events: Vec<Event> = (0..N).map(|i| enrollment(&format!("learner-{i}"))).collect();
    p.produce(&events).await;

    eventually("every webhook delivery", WAIT, || async {
        let sent = p.count("SELECT COUNT(*) FROM notification_deliveries WHERE channel = 'webhook' AND state = 'sent'").await;
        (sent as usize == N).then_some(())
    })
    .await;
    stop.cancel();
    task.await.expect("second dispatcher");
    let accepted = hook.accepted.lock().expect("lock").clone();
    let mut ids: Vec<&str> = accepted.iter().filter_map(|a| a["id"].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!((ids.len(), accepted.len()), (N, N), "each notification POSTed once");
    assert_eq!(p.count("SELECT COUNT(*) FROM notification_attempts").await as usize, 2 * N, "one attempt per delivery");
    p.stop().await;
}
