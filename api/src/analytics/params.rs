//! The parameters of the analytics endpoints: parsed from the query string into the typed
//! queries of the analytics stores ([`lms_analytics::query`]), with an error naming the
//! parameter for every problem.
//!
//! Parse, don't validate: a [`SeriesParams`] always has `from ≤ to`, a range of at most
//! [`MAX_RANGE_DAYS`] days and a known granularity, so the stores never check them again.
//!
//! Query parameters are given as decoded `(name, value)` pairs (what
//! `axum::extract::Query<Vec<(String, String)>>` yields). Unknown names and repeated names
//! are errors, so a misspelt parameter (`granulartiy=week`) is reported instead of being
//! silently ignored.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use lms_analytics::query::{AtRiskParams, FunnelParams, Granularity, RevenueParams, ScoresParams, SeriesParams};
use serde::Serialize;

/// The longest `from`..=`to` range accepted, in days (both ends included): 1,096 days, three
/// years including a leap day. Longer ranges are refused with 400 rather than answered slowly;
/// a dashboard wanting more asks per range.
pub const MAX_RANGE_DAYS: i64 = 1096;

/// The longest id accepted in a parameter, as in the event contract.
pub const MAX_ID_LEN: usize = 128;

/// The default of `inactive_days` on the at-risk endpoint.
pub const DEFAULT_INACTIVE_DAYS: u32 = 7;

/// The largest `inactive_days` accepted (ten years).
pub const MAX_INACTIVE_DAYS: u32 = 3650;

/// The default and the largest `limit` of the at-risk list.
pub const DEFAULT_AT_RISK_LIMIT: u32 = 1000;
/// See [`DEFAULT_AT_RISK_LIMIT`].
pub const MAX_AT_RISK_LIMIT: u32 = 10_000;

/// One problem with one parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParamProblem {
    /// The parameter: a query parameter name (`from`) or a path segment name (`course_id`).
    pub param: String,
    /// What is wrong, as a full sentence for the client.
    pub message: String,
}

/// Why the parameters of an analytics request were refused (answer 400 with `errors`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid analytics parameters: {}", summary(.problems))]
pub struct ParamError {
    /// Every problem found, in parameter order.
    pub problems: Vec<ParamProblem>,
}

fn summary(problems: &[ParamProblem]) -> String {
    problems.iter().map(|p| format!("{}: {}", p.param, p.message)).collect::<Vec<_>>().join("; ")
}

/// Collects problems while reading a query string.
struct Reader<'a> {
    pairs: &'a [(String, String)],
    allowed: &'static [&'static str],
    problems: Vec<ParamProblem>,
}

impl<'a> Reader<'a> {
    fn new(pairs: &'a [(String, String)], allowed: &'static [&'static str]) -> Self {
        let mut r = Reader { pairs, allowed, problems: Vec::new() };
        let mut seen: Vec<&str> = Vec::new();
        for (name, _) in pairs {
            if !allowed.contains(&name.as_str()) {
                let known = r.allowed.join(", ");
                r.problem(name, format!("unknown parameter; the known ones are {known}"));
            } else if seen.contains(&name.as_str()) {
                r.problem(name, "the parameter is given more than once".to_owned());
            } else {
                seen.push(name);
            }
        }
        r
    }

    fn problem(&mut self, param: &str, message: String) {
        self.problems.push(ParamProblem { param: param.to_owned(), message });
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn date(&mut self, name: &str, required: bool) -> Option<NaiveDate> {
        match self.get(name) {
            None if required => {
                self.problem(name, "the parameter is required (a UTC date YYYY-MM-DD)".to_owned());
                None
            }
            None => None,
            Some(v) => match parse_date(v) {
                Ok(d) => Some(d),
                Err(m) => {
                    self.problem(name, m);
                    None
                }
            },
        }
    }

    fn id(&mut self, name: &str, value: Option<&str>) -> Option<String> {
        let v = value?;
        match check_id(v) {
            Ok(()) => Some(v.to_owned()),
            Err(m) => {
                self.problem(name, m);
                None
            }
        }
    }

    /// Reads `from`, `to` (both required when `required`, else both or neither) and checks
    /// the range.
    fn range(&mut self, required: bool) -> Option<(NaiveDate, NaiveDate)> {
        if !required && self.get("from").is_none() && self.get("to").is_none() {
            return None;
        }
        if !required && (self.get("from").is_none() || self.get("to").is_none()) {
            let missing = if self.get("from").is_none() { "from" } else { "to" };
            self.problem(missing, "give both from and to, or neither".to_owned());
            return None;
        }
        let from = self.date("from", true);
        let to = self.date("to", true);
        let (from, to) = (from?, to?);
        if to < from {
            self.problem("to", format!("to ({to}) is before from ({from})"));
            return None;
        }
        let days = (to - from).num_days() + 1;
        if days > MAX_RANGE_DAYS {
            self.problem("to", format!("the range covers {days} days; at most {MAX_RANGE_DAYS} are allowed"));
            return None;
        }
        Some((from, to))
    }

    fn finish<T>(self, value: Option<T>) -> Result<T, ParamError> {
        match value {
            Some(v) if self.problems.is_empty() => Ok(v),
            _ => {
                debug_assert!(!self.problems.is_empty(), "no value without a problem");
                Err(ParamError { problems: self.problems })
            }
        }
    }
}

fn parse_date(v: &str) -> Result<NaiveDate, String> {
    // Exactly YYYY-MM-DD: chrono alone would also take a sign or more year digits.
    let shaped = v.len() == 10 && v.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
    if !shaped {
        return Err(format!("{v:?} is not a date of the form YYYY-MM-DD"));
    }
    NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| format!("{v:?} is not a valid calendar date"))
}

fn check_id(v: &str) -> Result<(), String> {
    if v.is_empty() {
        Err("must not be empty".to_owned())
    } else if v.chars().count() > MAX_ID_LEN {
        Err(format!("must be at most {MAX_ID_LEN} characters"))
    } else {
        Ok(())
    }
}

fn check_tenant(r: &mut Reader<'_>, tenant: &str) -> Option<String> {
    r.id("tenant", Some(tenant))
}

fn granularity(r: &mut Reader<'_>) -> Option<Granularity> {
    match r.get("granularity") {
        None => Some(Granularity::Day),
        Some(v) => match v.parse() {
            Ok(g) => Some(g),
            Err(m) => {
                r.problem("granularity", m);
                None
            }
        },
    }
}

const SERIES: &[&str] = &["from", "to", "granularity", "course_id"];
const REVENUE: &[&str] = &["from", "to", "granularity", "course_id", "currency"];
const SCORES: &[&str] = &["from", "to", "course_id"];
const AT_RISK: &[&str] = &["inactive_days", "as_of", "limit"];
const NONE: &[&str] = &[];

fn series_in(r: &mut Reader<'_>, tenant: &str) -> Option<SeriesParams> {
    let tenant = check_tenant(r, tenant);
    let range = r.range(true);
    let granularity = granularity(r);
    let course = r.get("course_id");
    let course_id = r.id("course_id", course);
    let course_ok = course.is_none() || course_id.is_some();
    let (from, to) = range?;
    if !course_ok {
        return None;
    }
    Some(SeriesParams { tenant: tenant?, from, to, granularity: granularity?, course_id })
}

/// Parses the parameters of the active-learners, enrollments and completions endpoints:
/// `from` and `to` (required, inclusive UTC dates), `granularity` (`day` by default) and
/// `course_id` (optional).
pub fn series(tenant: &str, query: &[(String, String)]) -> Result<SeriesParams, ParamError> {
    let mut r = Reader::new(query, SERIES);
    let p = series_in(&mut r, tenant);
    r.finish(p)
}

/// Parses the parameters of the revenue endpoint: those of [`series`] and `currency`
/// (optional, three uppercase letters).
pub fn revenue(tenant: &str, query: &[(String, String)]) -> Result<RevenueParams, ParamError> {
    let mut r = Reader::new(query, REVENUE);
    let series = series_in(&mut r, tenant);
    let currency = match r.get("currency") {
        None => Some(None),
        Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) => Some(Some(c.to_owned())),
        Some(c) => {
            r.problem("currency", format!("{c:?} is not an ISO 4217 code (three uppercase letters)"));
            None
        }
    };
    let p = match (series, currency) {
        (Some(series), Some(currency)) => Some(RevenueParams { series, currency }),
        _ => None,
    };
    r.finish(p)
}

/// Parses the parameters of the funnel endpoint (the course comes from the path; no query
/// parameters).
pub fn funnel(tenant: &str, course_id: &str, query: &[(String, String)]) -> Result<FunnelParams, ParamError> {
    let mut r = Reader::new(query, NONE);
    let tenant = check_tenant(&mut r, tenant);
    let course_id = r.id("course_id", Some(course_id));
    let p = match (tenant, course_id) {
        (Some(tenant), Some(course_id)) => Some(FunnelParams { tenant, course_id }),
        _ => None,
    };
    r.finish(p)
}

/// Parses the parameters of the scores endpoint: the assessment from the path, optional
/// `from`/`to` (both or neither) and `course_id`.
pub fn scores(tenant: &str, assessment_id: &str, query: &[(String, String)]) -> Result<ScoresParams, ParamError> {
    let mut r = Reader::new(query, SCORES);
    let tenant = check_tenant(&mut r, tenant);
    let assessment_id = r.id("assessment_id", Some(assessment_id));
    let had_range = r.get("from").is_some() || r.get("to").is_some();
    let range = r.range(false);
    let course = r.get("course_id");
    let course_id = r.id("course_id", course);
    let ok = (!had_range || range.is_some()) && (course.is_none() || course_id.is_some());
    let p = match (tenant, assessment_id) {
        (Some(tenant), Some(assessment_id)) if ok => Some(ScoresParams { tenant, assessment_id, range, course_id }),
        _ => None,
    };
    r.finish(p)
}

/// Parses the parameters of the at-risk endpoint: the course from the path,
/// `inactive_days` (default 7, 0 to [`MAX_INACTIVE_DAYS`]), `as_of` (RFC 3339 with offset,
/// default `now`) and `limit` (default and maximum in [`DEFAULT_AT_RISK_LIMIT`] and
/// [`MAX_AT_RISK_LIMIT`]).
pub fn at_risk(tenant: &str, course_id: &str, query: &[(String, String)], now: DateTime<Utc>) -> Result<AtRiskParams, ParamError> {
    let mut r = Reader::new(query, AT_RISK);
    let tenant = check_tenant(&mut r, tenant);
    let course_id = r.id("course_id", Some(course_id));
    let inactive_days = match r.get("inactive_days") {
        None => Some(DEFAULT_INACTIVE_DAYS),
        Some(v) => match v.parse::<u32>() {
            Ok(d) if d <= MAX_INACTIVE_DAYS => Some(d),
            _ => {
                r.problem("inactive_days", format!("{v:?} is not a whole number of days from 0 to {MAX_INACTIVE_DAYS}"));
                None
            }
        },
    };
    let as_of = match r.get("as_of") {
        None => Some(now),
        Some(v) => match DateTime::parse_from_rfc3339(v) {
            // Both stores hold times from 1970 to 2199 (ClickHouse's DateTime64 ends in 2299);
            // a reference time outside them is a client error, not a store failure.
            Ok(t) if (1970..=2199).contains(&t.with_timezone(&Utc).year()) => Some(t.with_timezone(&Utc)),
            Ok(_) => {
                r.problem("as_of", format!("{v:?} is outside the years 1970 to 2199"));
                None
            }
            Err(_) => {
                r.problem("as_of", format!("{v:?} is not an RFC 3339 time with offset"));
                None
            }
        },
    };
    let limit = match r.get("limit") {
        None => Some(DEFAULT_AT_RISK_LIMIT),
        Some(v) => match v.parse::<u32>() {
            Ok(l) if (1..=MAX_AT_RISK_LIMIT).contains(&l) => Some(l),
            _ => {
                r.problem("limit", format!("{v:?} is not a whole number from 1 to {MAX_AT_RISK_LIMIT}"));
                None
            }
        },
    };
    let p = match (tenant, course_id, inactive_days, as_of, limit) {
        (Some(tenant), Some(course_id), Some(inactive_days), Some(as_of), Some(limit)) => {
            Some(AtRiskParams { tenant, course_id, inactive_days, as_of, limit })
        }
        _ => None,
    };
    r.finish(p)
}

/// The query parameters of each endpoint as the OpenAPI document shows them (utoipa's
/// `IntoParams`). The parsers above read the raw pairs, so that every problem names its
/// parameter; the test `documented_parameters_are_the_parsed_ones` keeps these in step with
/// the names each parser accepts and with the limits above.
#[allow(dead_code)] // documentation types: never built
pub(crate) mod doc {
    use chrono::{DateTime, NaiveDate, Utc};
    use lms_analytics::query::Granularity;

    /// `from`, `to`, `granularity`, `course_id`.
    #[derive(utoipa::IntoParams)]
    #[into_params(parameter_in = Query)]
    pub(crate) struct Series {
        /// First day (UTC), inclusive
        pub from: NaiveDate,
        /// Last day (UTC), inclusive; not before `from`, at most 1095 days after it
        pub to: NaiveDate,
        /// Bucket size
        #[param(inline, default = "day")]
        pub granularity: Option<Granularity>,
        /// Only this course
        #[param(min_length = 1, max_length = 128)]
        pub course_id: Option<String>,
    }

    /// `currency`, the revenue endpoint's parameter besides those of [`Series`].
    #[derive(utoipa::IntoParams)]
    #[into_params(parameter_in = Query)]
    pub(crate) struct Currency {
        /// Only this ISO 4217 currency
        #[param(pattern = "^[A-Z]{3}$")]
        pub currency: Option<String>,
    }

    /// The path of the funnel and at-risk endpoints.
    #[derive(utoipa::IntoParams)]
    #[into_params(parameter_in = Path)]
    pub(crate) struct CoursePath {
        /// The course
        #[param(min_length = 1, max_length = 128)]
        pub course_id: String,
    }

    /// `inactive_days`, `as_of`, `limit`.
    #[derive(utoipa::IntoParams)]
    #[into_params(parameter_in = Query)]
    pub(crate) struct AtRisk {
        /// Days without learning activity
        #[param(minimum = 0, maximum = 3650, default = 7)]
        pub inactive_days: Option<u32>,
        /// Reference time (default now), in the years 1970 to 2199
        pub as_of: Option<DateTime<Utc>>,
        /// Most learners returned
        #[param(minimum = 1, maximum = 10000, default = 1000)]
        pub limit: Option<u32>,
    }

    /// The path of the scores endpoint.
    #[derive(utoipa::IntoParams)]
    #[into_params(parameter_in = Path)]
    pub(crate) struct AssessmentPath {
        /// The assessment
        #[param(min_length = 1, max_length = 128)]
        pub assessment_id: String,
    }

    /// `from`, `to` (both or neither), `course_id`.
    #[derive(utoipa::IntoParams)]
    #[into_params(parameter_in = Query)]
    pub(crate) struct Scores {
        /// First day (with `to`)
        pub from: Option<NaiveDate>,
        /// Last day (with `from`; not before it, at most 1095 days after it)
        pub to: Option<NaiveDate>,
        /// Only this course
        #[param(min_length = 1, max_length = 128)]
        pub course_id: Option<String>,
    }
}

#[cfg(test)]
mod as_of_tests {
    use super::*;

    #[test]
    fn a_far_reference_time_is_a_parameter_problem() {
        let q = |v: &str| vec![("as_of".to_owned(), v.to_owned())];
        let err = at_risk("acme", "c", &q("6143-03-16T07:26:23Z"), Utc::now()).expect_err("refused");
        assert_eq!(err.problems[0].param, "as_of");
        assert!(at_risk("acme", "c", &q("2026-03-16T07:26:23Z"), Utc::now()).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    /// The documented parameters of each endpoint are the names its parser accepts, with the
    /// limits the parser applies.
    #[test]
    fn documented_parameters_are_the_parsed_ones() {
        use utoipa::IntoParams;
        let names = |params: Vec<utoipa::openapi::path::Parameter>| params.into_iter().map(|p| p.name).collect::<Vec<_>>();
        assert_eq!(names(doc::Series::into_params(|| None)), SERIES);
        let revenue = [names(doc::Series::into_params(|| None)), names(doc::Currency::into_params(|| None))].concat();
        assert_eq!(revenue, REVENUE);
        assert_eq!(names(doc::Scores::into_params(|| None)), SCORES);
        assert_eq!(names(doc::AtRisk::into_params(|| None)), AT_RISK);
        let json = serde_json::to_value(doc::AtRisk::into_params(|| None)).unwrap();
        assert_eq!(json[0]["schema"]["maximum"], MAX_INACTIVE_DAYS);
        assert_eq!(json[0]["schema"]["default"], DEFAULT_INACTIVE_DAYS);
        assert_eq!(json[2]["schema"]["maximum"], MAX_AT_RISK_LIMIT);
        assert_eq!(json[2]["schema"]["default"], DEFAULT_AT_RISK_LIMIT);
        let series = serde_json::to_value(doc::Series::into_params(|| None)).unwrap();
        let most = format!("at most {} days after it", MAX_RANGE_DAYS - 1);
        assert!(series[1]["description"].as_str().unwrap().contains(&most), "{}", series[1]);
        let scores = serde_json::to_value(doc::Scores::into_params(|| None)).unwrap();
        assert!(scores[1]["description"].as_str().unwrap().contains(&most), "{}", scores[1]);
        for p in [&series[3], &scores[2]] {
            assert_eq!(p["schema"]["maxLength"], MAX_ID_LEN, "{p}");
        }
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    fn params(problems: &ParamError) -> Vec<&str> {
        problems.problems.iter().map(|p| p.param.as_str()).collect()
    }

    #[test]
    fn a_valid_series() {
        let p =
            series("t1", &q(&[("from", "2026-01-01"), ("to", "2026-01-31"), ("granularity", "week"), ("course_id", "c")])).expect("valid");
        assert_eq!(p.from, NaiveDate::from_ymd_opt(2026, 1, 1).expect("date"));
        assert_eq!(p.to, NaiveDate::from_ymd_opt(2026, 1, 31).expect("date"));
        assert_eq!(p.granularity, Granularity::Week);
        assert_eq!(p.course_id.as_deref(), Some("c"));
        let p = series("t1", &q(&[("from", "2026-01-01"), ("to", "2026-01-01")])).expect("one day");
        assert_eq!(p.granularity, Granularity::Day, "day by default");
    }

    #[test]
    fn series_problems_name_their_parameter() {
        type Case = (&'static [(&'static str, &'static str)], &'static [&'static str], &'static str);
        let cases: &[Case] = &[
            (&[("to", "2026-01-01")], &["from"], "required"),
            (&[("from", "2026-02-01"), ("to", "2026-01-01")], &["to"], "before from"),
            (&[("from", "2026-02-30"), ("to", "2026-03-01")], &["from"], "not a valid calendar date"),
            (&[("from", "26-02-01"), ("to", "2026-03-01")], &["from"], "YYYY-MM-DD"),
            (&[("from", "2026-01-01"), ("to", "2026-01-02"), ("granularity", "hour")], &["granularity"], "unknown granularity"),
            (&[("from", "2020-01-01"), ("to", "2026-01-01")], &["to"], "at most 1096"),
            (&[("from", "2026-01-01"), ("to", "2026-01-02"), ("granulartiy", "week")], &["granulartiy"], "unknown parameter"),
            (&[("from", "2026-01-01"), ("from", "2026-01-01"), ("to", "2026-01-02")], &["from"], "more than once"),
            (&[("from", "2026-01-01"), ("to", "2026-01-02"), ("course_id", "")], &["course_id"], "empty"),
        ];
        for (query, expected, message) in cases {
            let err = series("t1", &q(query)).expect_err("invalid");
            assert_eq!(params(&err), *expected, "{query:?}");
            assert!(err.problems[0].message.contains(message), "{query:?}: {err}");
        }
    }

    #[test]
    fn the_longest_range_is_accepted() {
        let from = NaiveDate::from_ymd_opt(2024, 1, 1).expect("date");
        let to = from + Duration::days(MAX_RANGE_DAYS - 1);
        let query = q(&[("from", &from.to_string()), ("to", &to.to_string())]);
        assert!(series("t", &query).is_ok());
        let query = q(&[("from", &from.to_string()), ("to", &(to + Duration::days(1)).to_string())]);
        assert!(series("t", &query).is_err());
    }

    #[test]
    fn revenue_currency() {
        let base = [("from", "2026-01-01"), ("to", "2026-01-02")];
        let mut ok = base.to_vec();
        ok.push(("currency", "EUR"));
        assert_eq!(revenue("t", &q(&ok)).expect("valid").currency.as_deref(), Some("EUR"));
        let mut bad = base.to_vec();
        bad.push(("currency", "eur"));
        assert_eq!(params(&revenue("t", &q(&bad)).expect_err("lowercase")), ["currency"]);
    }

    #[test]
    fn scores_range_is_both_or_neither() {
        assert_eq!(scores("t", "a", &[]).expect("valid").range, None);
        let err = scores("t", "a", &q(&[("from", "2026-01-01")])).expect_err("half a range");
        assert_eq!(params(&err), ["to"]);
        assert!(scores("t", "a", &q(&[("from", "2026-01-01"), ("to", "2026-01-01")])).is_ok());
    }

    #[test]
    fn at_risk_defaults_and_problems() {
        let now = DateTime::parse_from_rfc3339("2026-11-20T10:00:00Z").expect("time").with_timezone(&Utc);
        let p = at_risk("t", "c", &[], now).expect("valid");
        assert_eq!((p.inactive_days, p.as_of, p.limit), (7, now, DEFAULT_AT_RISK_LIMIT));
        assert_eq!(p.threshold(), now - Duration::days(7));
        let p = at_risk("t", "c", &q(&[("as_of", "2026-01-01T01:00:00+01:00"), ("inactive_days", "3")]), now).expect("valid");
        assert_eq!(p.as_of.to_rfc3339(), "2026-01-01T00:00:00+00:00");
        let err = at_risk("t", "c", &q(&[("inactive_days", "-1"), ("as_of", "yesterday"), ("limit", "0")]), now).expect_err("invalid");
        assert_eq!(params(&err), ["inactive_days", "as_of", "limit"]);
        let err = funnel("t", &"x".repeat(129), &[]).expect_err("too long");
        assert_eq!(params(&err), ["course_id"]);
    }

    #[test]
    fn buckets_start_on_monday_and_the_first() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 26).expect("date"); // a Thursday
        assert_eq!(Granularity::Week.bucket_start(d).to_string(), "2026-11-23");
        assert_eq!(Granularity::Month.bucket_start(d).to_string(), "2026-11-01");
        assert_eq!(Granularity::Day.bucket_start(d), d);
        let monday = NaiveDate::from_ymd_opt(2026, 11, 23).expect("date");
        assert_eq!(Granularity::Week.bucket_start(monday), monday);
    }
}
