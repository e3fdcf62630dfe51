//! `loadtest http`: the write API under load, next to the raw producer rate against the
//! same broker in the same run.
//!
//! Phases: (1) the raw producer (the pipeline's producer, `acks=all`) sends the batch
//! phase's events directly; (2) batch mode: JSON arrays of `--batch-size` events from
//! `--concurrency` connections; (3) single mode at the maximum rate: one event per request
//! from `--single-concurrency` connections; (4) single mode paced at half of the rate
//! phase 3 reached (or `--rate`), where the latency target applies. Without `--url` the API
//! runs in this process on a free loopback port against `--brokers`, on topics of a fresh
//! prefix. Latency is per request, measured from the moment the request was due (so a
//! client falling behind shows up as latency, not as fewer requests), on connections every
//! worker opens before the phase's clock starts.
//!
//! With `--tls-brokers` (a broker that speaks TLS, and `--tls-ca-file` the authority that
//! signs its certificate), phases 1 and 2 run again with every client over TLS, and the
//! TLS-to-plaintext ratios are printed: the price of the encryption operators need.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use indicatif::{ProgressBar, ProgressStyle};
use lms_bus::{BusMetrics, KafkaConfig, KafkaSecurity, OnQueueFull, Producer, SecurityProtocol, TopicsFile};
use lms_events::{Domain, Event, EventType, TraceContext};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Options of `loadtest http`.
#[derive(Debug, clap::Args)]
pub struct HttpArgs {
    /// Bootstrap servers of the broker under test (the raw producer's, and the in-process
    /// API's when `--url` is not given).
    #[arg(long, env = "LMS_KAFKA__BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Base URL of a running API; without it the API runs in this process.
    #[arg(long)]
    url: Option<String>,
    /// The API's JWT secret, to sign the load generator's token.
    #[arg(long, env = "LMS_JWT_SECRET", default_value = "loadtest-secret")]
    jwt_secret: String,
    /// Tenant of the token.
    #[arg(long, default_value = "bench")]
    tenant: String,
    /// Events of the raw-producer and batch phases.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Events per request in batch mode.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Concurrent connections in batch mode.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Requests (one event each) of each single-mode phase.
    #[arg(long, default_value_t = 30_000)]
    single_events: usize,
    /// Concurrent connections in single mode (each request waits about the producer's
    /// linger, so the maximum rate needs many in flight).
    #[arg(long, default_value_t = 256)]
    single_concurrency: usize,
    /// Request rate of the paced single-mode phase (requests/s); half of the measured
    /// maximum when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Partitions of the learning topic (the in-process API's topics).
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Bootstrap servers of a broker reached over TLS: phases 1 and 2 run again against it
    /// (the raw producer and an in-process API, both with `security.protocol=ssl`) and the
    /// ratios to the plaintext figures are printed. `loadtest/tls-bench.sh` starts one.
    #[arg(long, requires = "tls_ca_file")]
    tls_brokers: Option<String>,
    /// PEM file of the authority that signs the `--tls-brokers` certificate.
    #[arg(long)]
    tls_ca_file: Option<std::path::PathBuf>,
}

/// One phase's figures.
struct Figures {
    events: usize,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    errors: usize,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
    fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

pub async fn run(args: HttpArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let plain = raw_and_batch(&args, KafkaConfig::new(&args.brokers), args.url.as_deref(), &shutdown, "").await?;
    let (raw, batch, url, auth) = (plain.raw, &plain.batch, plain.url.clone(), plain.auth.clone());

    // Phase 3: single events at the maximum rate.
    let singles =
        |tag: &'static str| -> Vec<Bytes> { (0..args.single_events).map(|i| Bytes::from(client_json(i, tag).to_string())).collect() };
    let single = drive(&url, &auth, singles("single"), 1, args.single_concurrency, None, "single, max rate").await?;
    report("API single (max)", &single, raw, 1);

    // Phase 4: single events paced at half of that.
    let rate = args.rate.unwrap_or(single.rate() / 2.0);
    let paced = drive(&url, &auth, singles("paced"), 1, args.single_concurrency, Some(rate), "single, paced").await?;
    report(&format!("API single @{rate:.0}/s"), &paced, raw, 1);

    println!();
    println!("targets: batch ≥ 0.6× raw: {:.2}× {}", batch.rate() / raw, verdict(batch.rate() / raw >= 0.6));
    println!("         single ≥ 0.1× raw: {:.2}× {}", single.rate() / raw, verdict(single.rate() / raw >= 0.1));
    println!("         p99 ≤ 20 ms at half the max single rate: {:.1} ms {}", paced.ms(0.99), verdict(paced.ms(0.99) <= 20.0));

    if let Some(brokers) = &args.tls_brokers {
        let mut kafka = KafkaConfig::new(brokers);
        kafka.security = KafkaSecurity { protocol: SecurityProtocol::Ssl, ca_file: args.tls_ca_file.clone(), ..KafkaSecurity::default() };
        println!();
        let tls = raw_and_batch(&args, kafka, None, &shutdown, " (TLS)").await?;
        println!();
        println!("TLS / plaintext: raw producer {:.2}×, API batch {:.2}×", tls.raw / raw, tls.batch.rate() / batch.rate());
    }
    shutdown.cancel();
    Ok(())
}

/// The figures of phases 1 and 2 against one broker.
struct BusPhases {
    raw: f64,
    batch: Figures,
    url: String,
    auth: String,
}

/// Phase 1 (the raw producer) and phase 2 (API batches) against the broker of `kafka`, on
/// topics of a fresh prefix; the API is `url` or one started in this process on those
/// topics (stopped with `shutdown`). `label` marks the printed lines.
async fn raw_and_batch(
    args: &HttpArgs,
    kafka: KafkaConfig,
    url: Option<&str>,
    shutdown: &CancellationToken,
    label: &str,
) -> anyhow::Result<BusPhases> {
    let prefix = format!("bench-{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let topics = TopicsFile::bundled().topic_map(&prefix);
    let admin: AdminClient<DefaultClientContext> = kafka.client_config("loadtest-admin").create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for d in Domain::ALL {
        let p = if d == Domain::Learning { args.partitions } else { 2 };
        for r in admin.create_topics([&NewTopic::new(topics.topic(d), p, TopicReplication::Fixed(1))], &opts).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
        }
    }
    println!("broker {}{label}, topics {prefix}* (learning: {} partitions)", kafka.brokers, args.partitions);

    // Phase 1: the raw producer.
    let kafka = kafka.with_prefix(&prefix);
    let producer = Producer::new(&kafka, topics.clone(), BusMetrics::standalone(), "loadtest-raw")?;
    let events: Vec<(Event, Option<TraceContext>)> = (0..args.events).map(|i| (event(i, "raw", &args.tenant), None)).collect();
    let bar = progress(args.events as u64, "raw producer");
    let started = Instant::now();
    for chunk in events.chunks(20_000) {
        let failed = producer.send_events(chunk, OnQueueFull::Wait(Duration::from_secs(60))).await.iter().filter(|r| r.is_err()).count();
        anyhow::ensure!(failed == 0, "{failed} records were not acknowledged");
        bar.inc(chunk.len() as u64);
    }
    let raw = args.events as f64 / started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    println!("{:<24} {raw:>9.0} events/s (acks=all, idempotent, lz4)", format!("raw producer{label}:"));
    drop(events);
    drop(producer);

    // The API: given, or in this process.
    let url = match url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => start_api(args, &kafka, &topics, shutdown.clone()).await?,
    };
    let exp = (chrono::Utc::now().timestamp() + 24 * 3600) as u64;
    let claims = api::Claims { sub: "loadtest".into(), tenant: args.tenant.clone(), scope: "events:write".into(), exp };
    let auth = format!("Bearer {}", api::auth::sign_hs256(args.jwt_secret.as_bytes(), &claims));
    let client = reqwest::Client::builder().pool_max_idle_per_host(1024).tcp_nodelay(true).build()?;
    wait_ready(&client, &url).await?;
    println!("API {url}{label}");

    // Phase 2: batches.
    let bodies: Vec<Bytes> = (0..args.events.div_ceil(args.batch_size))
        .map(|b| {
            let items: Vec<Value> =
                (b * args.batch_size..((b + 1) * args.batch_size).min(args.events)).map(|i| client_json(i, "batch")).collect();
            Bytes::from(serde_json::to_vec(&items).unwrap_or_default())
        })
        .collect();
    let batch = drive(&url, &auth, bodies, args.batch_size, args.concurrency, None, "batch").await?;
    report(&format!("API batch{label}"), &batch, raw, args.batch_size);
    Ok(BusPhases { raw, batch, url, auth })
}

fn verdict(ok: bool) -> &'static str {
    if ok { "(met)" } else { "(NOT met)" }
}

fn report(what: &str, f: &Figures, raw: f64, per_request: usize) {
    println!(
        "{what:<24} {:>9.0} events/s ({:.2}× raw), latency per request p50 {:.1} ms, p99 {:.1} ms, p999 {:.1} ms ({} events/request, {} errors)",
        f.rate(),
        f.rate() / raw,
        f.ms(0.5),
        f.ms(0.99),
        f.ms(0.999),
        per_request,
        f.errors
    );
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>18} [{elapsed_precise}] {wide_bar} {pos}/{len} events ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(what.to_owned());
    bar
}

/// Sends every body from `concurrency` workers (paced at `rate` requests/s when given)
/// and measures events/s and per-request latency.
#[allow(clippy::too_many_arguments)]
async fn drive(
    url: &str,
    auth: &str,
    bodies: Vec<Bytes>,
    per_request: usize,
    concurrency: usize,
    rate: Option<f64>,
    what: &str,
) -> anyhow::Result<Figures> {
    let total_events = (bodies.len() * per_request) as u64;
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let authority = url.trim_start_matches("http://").trim_end_matches('/').to_owned();
    // Every worker connects before the clock starts: the phase measures requests on
    // kept-alive connections, as clients of a running service send them, not a storm of
    // simultaneous connects (which the listen backlog answers with 1 s SYN retransmits).
    let mut connections = Vec::with_capacity(concurrency.max(1));
    for _ in 0..concurrency.max(1) {
        connections.push(connect(&authority).await);
    }
    let bar = progress(total_events, what);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for mut conn in connections {
        let (authority, auth, bodies, next, bar) = (authority.clone(), auth.to_owned(), bodies.clone(), next.clone(), bar.clone());
        workers.spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let due = match rate {
                    Some(r) => {
                        let due = started + Duration::from_secs_f64(i as f64 / r);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                let ok = post(&mut conn, &authority, &auth, body.clone()).await;
                h.saturating_record(due.elapsed().as_micros() as u64);
                if ok {
                    bar.inc(per_request as u64);
                } else {
                    errors += 1;
                }
            }
            (h, errors)
        });
    }
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    while let Some(done) = workers.join_next().await {
        let (h, e) = done?;
        latency_us.add(h)?;
        errors += e;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok(Figures { events: total_events as usize - errors * per_request, elapsed, latency_us, errors })
}

type Connection = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A kept-alive HTTP/1.1 connection to `authority` (a plain hyper connection per worker:
/// the load generator should cost the shared cores as little as possible); None when the
/// connect fails (the worker's first request tries again).
async fn connect(authority: &str) -> Option<Connection> {
    let stream = tokio::net::TcpStream::connect(authority).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(connection);
    Some(sender)
}

/// POSTs one body to `/v1/events` on the worker's connection (reconnecting when it is
/// gone); true on 202.
async fn post(conn: &mut Option<Connection>, authority: &str, auth: &str, body: Bytes) -> bool {
    if conn.as_ref().is_none_or(hyper::client::conn::http1::SendRequest::is_closed) {
        *conn = connect(authority).await;
    }
    let Some(sender) = conn.as_mut() else { return false };
    if sender.ready().await.is_err() {
        *conn = None;
        return false;
    }
    let request = hyper::Request::post("/v1/events")
        .header("host", authority)
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(Full::new(body));
    let Ok(request) = request else { return false };
    match sender.send_request(request).await {
        Ok(response) => {
            let ok = response.status() == 202;
            ok && response.into_body().collect().await.is_ok()
        }
        Err(_) => {
            *conn = None;
            false
        }
    }
}

/// Starts the API in this process on a free loopback port; returns its URL.
async fn start_api(
    args: &HttpArgs,
    kafka: &KafkaConfig,
    topics: &lms_bus::TopicMap,
    shutdown: CancellationToken,
) -> anyhow::Result<String> {
    let config = api::ApiConfig {
        jwt_secret: Some(args.jwt_secret.clone().into()),
        rate_limit: api::RateLimitConfig { per_second: 0.0, burst: 1 },
        ..api::ApiConfig::default()
    };
    let registry = prometheus::Registry::new();
    let metrics = BusMetrics::register(&registry)?;
    let producer_kafka = config.producer_kafka_config(kafka);
    let producer = Arc::new(Producer::new(&producer_kafka, topics.clone(), metrics.clone(), "loadtest-api")?);
    let factory_topics = topics.clone();
    let router = api::Api::new(&config, producer, &registry)?
        .producer_factory(Box::new(move || Producer::new(&producer_kafka, factory_topics.clone(), metrics.clone(), "loadtest-api")))
        .into_router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(api::serve_on(listener, router, shutdown));
    Ok(url)
}

async fn wait_ready(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if client.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{url}/readyz did not answer 200 within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A realistic client event: lesson starts and completions, video progress and graded
/// assessments over 10 000 learners and 50 courses.
pub(crate) fn client_json(i: usize, tag: &str) -> Value {
    let learner = format!("learner-{}", i % 10_000);
    let course = format!("course-{}", i % 50);
    let lesson = format!("lesson-{}", i % 40);
    let (t, data) = match i % 10 {
        0..=2 => (EventType::LessonStarted, json!({"learner_id": learner, "course_id": course, "lesson_id": lesson})),
        3..=5 => (EventType::LessonCompleted, json!({"learner_id": learner, "course_id": course, "lesson_id": lesson})),
        6..=8 => (
            EventType::VideoProgressed,
            json!({"learner_id": learner, "course_id": course, "lesson_id": lesson, "position_s": (i % 600) as f64, "duration_s": 600.0, "watched_s": 30.0}),
        ),
        _ => (
            EventType::AssessmentGraded,
            json!({"learner_id": learner, "course_id": course, "assessment_id": format!("quiz-{}", i % 5), "score": (i % 11) as f64, "max_score": 10.0, "attempt": 1}),
        ),
    };
    json!({
        "specversion": "1.0",
        "id": format!("{tag}-{i:09}"),
        "type": t.as_str(),
        "source": "loadtest",
        "time": format!("2026-11-20T{:02}:{:02}:{:02}Z", (i / 3600) % 24, (i / 60) % 60, i % 60),
        "data": data,
    })
}

/// The raw producer's events: the same shapes as [`client_json`], completed.
pub(crate) fn event(i: usize, tag: &str, tenant: &str) -> Event {
    lms_events::parse_client_event(&client_json(i, tag), tenant).expect("the load generator's events are valid")
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_events_are_valid() {
        for i in 0..100 {
            assert!(lms_events::parse_client_event(&super::client_json(i, "t"), "bench").is_ok(), "{i}");
        }
    }
}
