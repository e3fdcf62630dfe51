//! `dashboards/prometheus/alerts.yml`: Prometheus accepts it (`promtool check rules`; the
//! Debian package `prometheus` ships it, `cargo xtask` installs it), and every
//! `lms_*` metric an expression names is one the code registers, so no alert watches a
//! metric that does not exist. Metrics from outside the code (Prometheus' own `up`,
//! kube-state-metrics) are named in a short list.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

/// Metrics that come from Prometheus itself or kube-state-metrics.
const EXTERNAL: &[&str] = &["up", "kube_pod_status_ready"];

fn repo() -> PathBuf {
    tests::repo_root()
}

/// Metric names registered in the code: string literals `"lms_…"` passed to `Opts::new`,
/// `HistogramOpts::new` or `IntGauge::new` in the crates that export metrics.
fn registered() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack: Vec<PathBuf> = ["lms-bus/src", "api/src", "lms/src", "processors/src", "sinks"].iter().map(|d| repo().join(d)).collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("source");
                // The name is the first argument, on the same line or (rustfmt) the next.
                for ctor in ["Opts::new(", "HistogramOpts::new(", "IntGauge::new(", "Gauge::new(", "IntCounter::new("] {
                    for (i, _) in text.match_indices(ctor) {
                        let Some(rest) = text[i + ctor.len()..].trim_start().strip_prefix('"') else { continue };
                        if let Some(end) = rest.find('"') {
                            names.insert(rest[..end].to_owned());
                        }
                    }
                }
            }
        }
    }
    names
}

/// Identifiers in a PromQL expression that are metric names: words not followed by `(`
/// (functions), not label names (followed by `=`, `!=`, `=~`), not inside `{…}` label
/// matchers or `[…]` ranges, not keywords, not inside quotes.
fn metrics_in(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        // Aggregations may be followed by `by (…)` before their parenthesis.
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
    ];
    let mut out = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let (mut i, mut depth_brace, mut depth_bracket, mut in_str, mut depth_paren_by) = (0, 0, 0, false, 0);
    let mut after_by = false;
    while i < chars.len() {
        let c = chars[i];
        if in_str {
            in_str = c != '"';
            i += 1;
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            '(' if after_by => {
                depth_paren_by += 1;
                after_by = false;
            }
            ')' if depth_paren_by > 0 => depth_paren_by -= 1,
            _ => {}
        }
        if (c.is_ascii_alphabetic() || c == '_') && depth_brace == 0 && depth_bracket == 0 {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace()).copied();
            if word == "by" || word == "without" || word == "on" || word == "ignoring" {
                after_by = true;
            } else if depth_paren_by == 0 && next != Some('(') && !KEYWORDS.contains(&word.as_str()) {
                out.insert(word);
            }
            continue;
        }
        i += 1;
    }
    out
}

#[test]
fn every_alert_watches_metrics_that_exist() {
    let path = repo().join("dashboards/prometheus/alerts.yml");
    let file: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&path).expect("alerts.yml")).expect("YAML");
    let known = registered();
    assert!(known.contains("lms_bus_consumer_lag_records") && known.contains("lms_ready"), "registered metrics found: {known:?}");
    let mut alerts = BTreeSet::new();
    for group in file["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("every rule is an alert with a name");
            let expr = rule["expr"].as_str().expect("expr");
            assert!(rule["annotations"]["summary"].is_string() && rule["labels"]["severity"].is_string(), "{name}: summary and severity");
            let used = metrics_in(expr);
            assert!(!used.is_empty(), "{name}: no metric found in {expr:?}");
            for m in used {
                assert!(known.contains(&m) || EXTERNAL.contains(&m.as_str()), "{name} uses {m}, which the code does not register");
            }
            alerts.insert(name.to_owned());
        }
    }
    for wanted in ["LmsConsumerLagGrowing", "LmsDeadLetters", "LmsApiErrorRate", "LmsSinkFailing", "LmsProcessorUnready", "LmsPodUnready"] {
        assert!(alerts.contains(wanted), "{wanted} is defined");
    }
}

#[test]
fn the_metric_finder_reads_promql() {
    let got = metrics_in("sum by (group) (rate(lms_a_total{kind=\"x\", status=~\"5..\"}[5m])) / on (group) lms_b > 0 and up == 0");
    assert_eq!(got, BTreeSet::from(["lms_a_total".to_owned(), "lms_b".to_owned(), "up".to_owned()]));
}

#[test]
fn promtool_accepts_the_rules() {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo().join("dashboards/prometheus/alerts.yml"))
        .output()
        .expect("promtool (`cargo xtask test` installs it: Debian package prometheus)");
    assert!(out.status.success(), "promtool check rules: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
