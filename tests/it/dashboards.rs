//! The Grafana dashboards as code (dashboards/grafana): every SQL query runs on the test
//! ClickHouse against the analytics schema, every PromQL expression names only metrics the
//! services export, and every datasource a panel uses is provisioned.

use std::collections::BTreeSet;
use std::path::PathBuf;

use lms_analytics::AnalyticsStore;
use lms_bus::BusMetrics;
use prometheus::core::Collector;
use serde_json::Value;
use tests::init_logs;

use crate::analytics_common::{fresh_clickhouse, generate, start};

fn grafana_dir() -> PathBuf {
    tests::repo_root().join("dashboards/grafana")
}

/// Every dashboard file and its JSON.
fn dashboards() -> Vec<(String, Value)> {
    let dir = grafana_dir().join("dashboards");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .expect("dashboards dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read dashboard");
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            (p.file_name().expect("name").to_string_lossy().into_owned(), json)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(out.len(), 2, "two dashboards: learning analytics and pipeline health");
    out
}

/// (where, datasource type, query) of every panel target and template variable.
fn queries(dashboard: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let ds = target["datasource"]["type"].as_str().or(panel["datasource"]["type"].as_str()).expect("datasource type");
            let query = target["rawSql"].as_str().or(target["expr"].as_str()).expect("rawSql or expr");
            out.push((format!("panel {:?}", panel["title"]), ds.to_owned(), query.to_owned()));
        }
    }
    for var in dashboard["templating"]["list"].as_array().expect("templating") {
        let ds = var["datasource"]["type"].as_str().expect("variable datasource");
        let query = var["query"].as_str().or(var["query"]["query"].as_str()).expect("variable query");
        out.push((format!("variable {}", var["name"]), ds.to_owned(), query.to_owned()));
    }
    out
}

#[test]
fn dashboards_use_provisioned_datasources() {
    let yaml = std::fs::read_to_string(grafana_dir().join("provisioning/datasources/lms.yaml")).expect("datasources");
    let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("datasources YAML");
    let provisioned: BTreeSet<(String, String)> = doc["datasources"]
        .as_sequence()
        .expect("datasources list")
        .iter()
        .map(|d| (d["uid"].as_str().expect("uid").to_owned(), d["type"].as_str().expect("type").to_owned()))
        .collect();
    assert!(provisioned.iter().any(|(_, t)| t == "grafana-clickhouse-datasource"));
    assert!(provisioned.iter().any(|(_, t)| t == "prometheus"));
    let providers = std::fs::read_to_string(grafana_dir().join("provisioning/dashboards/lms.yaml")).expect("providers");
    let providers: serde_yaml::Value = serde_yaml::from_str(&providers).expect("providers YAML");
    assert_eq!(providers["providers"][0]["type"].as_str(), Some("file"));
    for (file, d) in dashboards() {
        let mut refs = Vec::new();
        for panel in d["panels"].as_array().expect("panels") {
            refs.push(&panel["datasource"]);
            refs.extend(panel["targets"].as_array().expect("targets").iter().map(|t| &t["datasource"]));
        }
        refs.extend(d["templating"]["list"].as_array().expect("templating").iter().map(|v| &v["datasource"]));
        for r in refs {
            let key = (r["uid"].as_str().unwrap_or_default().to_owned(), r["type"].as_str().unwrap_or_default().to_owned());
            assert!(provisioned.contains(&key), "{file}: datasource {r} is not provisioned");
        }
    }
    let (_, learning) = &dashboards()[0];
    let vars: Vec<&str> = learning["templating"]["list"].as_array().expect("list").iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(vars, ["tenant", "course"]);
}

/// Grafana's macros and the variables, as Grafana would expand them for the test data.
fn expand(sql: &str, course: &str) -> String {
    let from = (start() - chrono::Duration::days(30)).timestamp();
    let to = (start() + chrono::Duration::days(120)).timestamp();
    let out = sql
        .replace("$__fromTime", &format!("toDateTime({from})"))
        .replace("$__toTime", &format!("toDateTime({to})"))
        .replace("${tenant}", "tenant-0")
        .replace("${course}", course);
    assert!(!out.contains('$'), "an unexpanded macro or variable remains in {out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_sql_runs_on_the_test_clickhouse() {
    init_logs();
    let store = fresh_clickhouse("dashboards").await;
    let stream = generate(5, 1, 30);
    let events: Vec<&lms_events::Event> = stream.delivered.iter().collect();
    store.insert(&events).await.expect("insert test data");
    let mut ran = 0;
    for (file, d) in dashboards() {
        for (place, ds, sql) in queries(&d).into_iter().filter(|q| q.1 == "grafana-clickhouse-datasource") {
            debug_assert_eq!(ds, "grafana-clickhouse-datasource");
            for course in ["__all", "course-1"] {
                let sql = expand(&sql, course);
                let mut cursor = store.client().query(&sql).fetch_bytes("TSV").unwrap_or_else(|e| panic!("{file} {place}: {e}"));
                let body = cursor.collect().await.unwrap_or_else(|e| panic!("{file} {place} failed on ClickHouse: {e}\n{sql}"));
                let rows = body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
                assert!(rows > 0, "{file} {place} (course {course}) returned no rows over the test data:\n{sql}");
                ran += 1;
            }
        }
    }
    assert!(ran >= 16, "every ClickHouse query ran, twice ({ran})");
}

/// The metric names the services export: lms-bus's registry, and the API's.
fn exported_metrics() -> BTreeSet<String> {
    let m = BusMetrics::standalone();
    let collectors: [&dyn Collector; 9] = [
        &m.produced,
        &m.produce_errors,
        &m.consumed,
        &m.processed,
        &m.batch_failures,
        &m.dead_lettered,
        &m.batch_duration,
        &m.consumer_lag,
        &m.committed_offset,
    ];
    let mut names = BTreeSet::new();
    for c in collectors {
        for d in c.desc() {
            names.insert(d.fq_name.clone());
        }
    }
    // The API's metrics (api/): requests by route, method and status; their latency; and
    // events taken in by outcome.
    names.insert("lms_http_requests_total".to_owned());
    names.insert("lms_http_request_duration_seconds".to_owned());
    names.insert("lms_api_events_total".to_owned());
    // `lms api`'s group lag computed from offsets and log ends (lms/src/ops/lag.rs; the
    // ops_lag test reads it from a running API's /metrics).
    names.insert("lms_group_lag_records".to_owned());
    names.insert("lms_group_lag_refreshed_timestamp_seconds".to_owned());
    // Histograms are exported as _bucket, _sum and _count series.
    for h in ["lms_bus_batch_duration_seconds", "lms_http_request_duration_seconds"] {
        assert!(names.contains(h), "{h} is exported");
        for suffix in ["_bucket", "_sum", "_count"] {
            names.insert(format!("{h}{suffix}"));
        }
    }
    names
}

/// Identifiers of a PromQL expression that name lms metrics (outside strings).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = expr.chars().peekable();
    let mut in_string = false;
    let mut word = String::new();
    while let Some(c) = chars.next() {
        if c == '"' {
            in_string = !in_string;
            continue;
        }
        if in_string {
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            if chars.peek().is_none_or(|n| !(n.is_ascii_alphanumeric() || *n == '_' || *n == ':')) {
                if word.starts_with("lms_") {
                    names.push(std::mem::take(&mut word));
                }
                word.clear();
            }
        } else {
            word.clear();
        }
    }
    names
}

#[test]
fn dashboards_promql_names_only_exported_metrics() {
    let known = exported_metrics();
    let mut checked = 0;
    for (file, d) in dashboards() {
        for (place, _, expr) in queries(&d).into_iter().filter(|q| q.1 == "prometheus") {
            let names = metric_names(&expr);
            assert!(!names.is_empty(), "{file} {place}: no lms metric in {expr}");
            for n in names {
                assert!(known.contains(&n), "{file} {place}: {n} is not exported; known: {known:?}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "the pipeline health dashboard was checked ({checked} names)");
    assert_eq!(metric_names(r#"sum(rate(lms_x_total{a="lms_not_a_metric"}[5m]))"#), ["lms_x_total"]);
}

/// The panel's ClickHouse query of a dashboard, by title.
fn panel_sql(title: &str) -> String {
    let (_, d) = dashboards().into_iter().find(|(f, _)| f == "learning-analytics.json").expect("the learning analytics dashboard");
    queries(&d)
        .into_iter()
        .find(|(place, _, _)| place == &format!("panel {:?}", Value::from(title)))
        .unwrap_or_else(|| panic!("no panel {title:?}"))
        .2
}

/// The TSV rows of a query, as columns of numbers.
async fn tsv(store: &lms_analytics::ClickHouseStore, sql: &str) -> Vec<Vec<String>> {
    let mut cursor = store.client().query(sql).fetch_bytes("TSV").expect("query");
    let body = cursor.collect().await.unwrap_or_else(|e| panic!("{e}\n{sql}"));
    String::from_utf8_lossy(&body).lines().filter(|l| !l.is_empty()).map(|l| l.split('\t').map(str::to_owned).collect()).collect()
}

/// Grafana's completions and funnel panels answer what the API and the oracle answer, over a
/// stream whose course versions arrive late (adding a lesson takes completions back,
/// removing one gives them): the panels follow the learners' progress too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_completions_and_funnel_agree_with_the_api() {
    use lms_analytics::{FunnelParams, Granularity, SeriesParams};
    init_logs();
    let store = fresh_clickhouse("dashboards_agree").await;
    let stream = generate(11, 1, 60);
    let events: Vec<&lms_events::Event> = stream.delivered.iter().collect();
    store.insert(&events).await.expect("insert test data");
    let oracle = crate::analytics_common::Oracle::new(&stream.distinct);

    // Completions per day, over the dashboard's range.
    let series = SeriesParams {
        tenant: "tenant-0".to_owned(),
        from: (start() - chrono::Duration::days(30)).date_naive(),
        to: (start() + chrono::Duration::days(120)).date_naive(),
        granularity: Granularity::Day,
        course_id: None,
    };
    let api: Vec<(String, u64)> =
        store.completions(&series).await.expect("completions").into_iter().map(|p| (p.bucket.to_string(), p.completions)).collect();
    let want: Vec<(String, u64)> = oracle.completions(&series).into_iter().map(|p| (p.bucket.to_string(), p.completions)).collect();
    assert_eq!(api, want, "the API's completions equal the oracle's");
    assert!(want.iter().map(|(_, n)| n).sum::<u64>() > 5, "the stream has completions: {want:?}");
    let grafana: Vec<(String, u64)> = tsv(&store, &expand(&panel_sql("Completions per day"), "__all"))
        .await
        .into_iter()
        .map(|r| (r[0].split(' ').next().unwrap_or_default().to_owned(), r[1].parse().expect("a count")))
        .collect();
    assert_eq!(grafana, api, "Grafana's completions per day");

    // The funnel of one course, and of all courses (the sum of the courses' funnels).
    let funnel = |course: &str| FunnelParams { tenant: "tenant-0".to_owned(), course_id: course.to_owned() };
    let as_row = |f: lms_analytics::Funnel| vec![f.enrolled, f.started, f.reached_25, f.reached_50, f.reached_75, f.completed];
    let mut all = vec![0u64; 6];
    for c in 0..3 {
        let course = format!("course-{c}");
        let api = as_row(store.funnel(&funnel(&course)).await.expect("funnel"));
        assert_eq!(api, as_row(oracle.funnel(&funnel(&course))), "the API's funnel of {course} equals the oracle's");
        for (a, x) in all.iter_mut().zip(&api) {
            *a += x;
        }
        let grafana: Vec<u64> =
            tsv(&store, &expand(&panel_sql("Course funnel"), &course)).await[0].iter().map(|v| v.parse().expect("a count")).collect();
        assert_eq!(grafana, api, "Grafana's funnel of {course}");
    }
    let grafana: Vec<u64> =
        tsv(&store, &expand(&panel_sql("Course funnel"), "__all")).await[0].iter().map(|v| v.parse().expect("a count")).collect();
    assert_eq!(grafana, all, "Grafana's funnel of all courses");
}
