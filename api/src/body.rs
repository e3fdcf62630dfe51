//! Reading request bodies: content types (415), size and time limits (413, 408), JSON and
//! NDJSON parsing (400), batches of at most `max_batch_events` items (413).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use lms_events::FieldError;
use serde_json::Value;

use crate::problem::Problem;

/// How a body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// One JSON document: an object or an array of objects.
    Json,
    /// Newline-delimited JSON: one document per line.
    Ndjson,
}

/// The JSON media types every write endpoint reads.
const JSON_TYPES: &[&str] = &["application/json", "application/cloudevents+json", "application/cloudevents-batch+json"];
/// The NDJSON media types `POST /v1/events` reads.
const NDJSON_TYPES: &[&str] = &["application/x-ndjson", "application/ndjson"];

/// The format of a request from its `Content-Type`; `ndjson` tells whether the endpoint
/// reads NDJSON. Anything else is 415.
pub(crate) fn format(headers: &HeaderMap, ndjson: bool) -> Result<Format, Problem> {
    let value = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if JSON_TYPES.contains(&essence.as_str()) {
        return Ok(Format::Json);
    }
    if ndjson && NDJSON_TYPES.contains(&essence.as_str()) {
        return Ok(Format::Ndjson);
    }
    let mut accepted: Vec<&str> = JSON_TYPES.to_vec();
    if ndjson {
        accepted.extend(NDJSON_TYPES);
    }
    let got = if value.is_empty() { "no Content-Type".to_owned() } else { format!("Content-Type {value:?}") };
    Err(Problem::unsupported_media_type(format!("{got}; send one of {}", accepted.join(", "))))
}

/// Reads the whole body, at most `limit` bytes within `timeout`.
pub(crate) async fn read(body: Body, headers: &HeaderMap, limit: usize, timeout: Duration) -> Result<Bytes, Problem> {
    let too_large = || Problem::payload_too_large(format!("the body exceeds the limit of {limit} bytes"));
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // http-body-util's `Limited` stops at the limit whatever the declared length says.
    let collect = async {
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
            Err(e) => Err(Problem::bad_request(format!("the body could not be read: {e}"))),
        }
    };
    match tokio::time::timeout(timeout, collect).await {
        Ok(result) => result,
        Err(_) => Err(Problem::request_timeout(format!("the body was not received within {} ms", timeout.as_millis()))),
    }
}

/// The items of a request body.
#[derive(Debug)]
pub(crate) struct Items {
    /// True when the body was one object rather than an array or NDJSON.
    pub single: bool,
    /// Each item, or why it could not be read (an NDJSON line that is not JSON, an item over
    /// the size limit).
    pub items: Vec<Result<Value, FieldError>>,
}

/// Parses a body into items: one JSON value, a JSON array of at most `max_items`, or NDJSON
/// lines. Malformed JSON is 400 (for NDJSON, a malformed line is rejected at its index).
pub(crate) fn parse(bytes: &[u8], format: Format, max_items: usize, max_item_bytes: usize) -> Result<Items, Problem> {
    let too_many = |n: usize| Problem::payload_too_large(format!("{n} items; at most {max_items} are accepted per request"));
    let items = match format {
        Format::Json => {
            let value: Value = serde_json::from_slice(bytes).map_err(|e| Problem::bad_request(format!("malformed JSON: {e}")))?;
            match value {
                Value::Array(items) => {
                    if items.len() > max_items {
                        return Err(too_many(items.len()));
                    }
                    Items { single: false, items: items.into_iter().map(|v| sized(v, max_item_bytes)).collect() }
                }
                other => Items { single: true, items: vec![sized(other, max_item_bytes)] },
            }
        }
        Format::Ndjson => {
            let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').map(<[u8]>::trim_ascii).filter(|l| !l.is_empty()).collect();
            if lines.len() > max_items {
                return Err(too_many(lines.len()));
            }
            let items = lines
                .into_iter()
                .map(|line| {
                    serde_json::from_slice::<Value>(line)
                        .map_err(|e| FieldError::new("", format!("malformed JSON on this line: {e}")))
                        .and_then(|v| sized(v, max_item_bytes))
                })
                .collect();
            Items { single: false, items }
        }
    };
    if items.items.is_empty() {
        return Err(Problem::unprocessable("the request holds no items", vec![FieldError::new("", "send at least one item")]));
    }
    Ok(items)
}

/// Refuses an item whose JSON is longer than `limit` bytes.
fn sized(value: Value, limit: usize) -> Result<Value, FieldError> {
    let mut counter = ByteCounter(0);
    // Writing to a counter cannot fail.
    let _ = serde_json::to_writer(&mut counter, &value);
    if counter.0 > limit {
        Err(FieldError::new("", format!("the item is {} bytes of JSON, more than the limit of {limit}", counter.0)))
    } else {
        Ok(value)
    }
}

/// Counts the bytes written to it.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        h
    }

    #[test]
    fn content_types() {
        assert_eq!(format(&headers("application/json; charset=utf-8"), true).unwrap(), Format::Json);
        assert_eq!(format(&headers("Application/CloudEvents+JSON"), false).unwrap(), Format::Json);
        assert_eq!(format(&headers("application/x-ndjson"), true).unwrap(), Format::Ndjson);
        assert_eq!(format(&headers("application/x-ndjson"), false).unwrap_err().status, 415);
        assert_eq!(format(&headers("text/plain"), true).unwrap_err().status, 415);
        assert_eq!(format(&HeaderMap::new(), true).unwrap_err().status, 415);
    }

    #[test]
    fn json_ndjson_and_limits() {
        let one = parse(br#"{"a": 1}"#, Format::Json, 2, 100).unwrap();
        assert!(one.single && one.items.len() == 1);
        let arr = parse(br#"[{"a": 1}, {"b": "xxxxxxxxxxxxxxxxxxxxxxxx"}]"#, Format::Json, 2, 20).unwrap();
        assert!(!arr.single);
        assert!(arr.items[0].is_ok());
        assert!(arr.items[1].as_ref().unwrap_err().message.contains("limit of 20"));
        assert_eq!(parse(b"[1, 2, 3]", Format::Json, 2, 100).unwrap_err().status, 413);
        assert_eq!(parse(b"[]", Format::Json, 2, 100).unwrap_err().status, 422);
        assert_eq!(parse(b"{\"a\": ", Format::Json, 2, 100).unwrap_err().status, 400);
        let nd = parse(b"{\"a\":1}\r\n\n{oops\n", Format::Ndjson, 2, 100).unwrap();
        assert_eq!(nd.items.len(), 2);
        assert!(nd.items[0].is_ok() && nd.items[1].is_err());
        assert_eq!(parse(b"{}\n{}\n{}\n", Format::Ndjson, 2, 100).unwrap_err().status, 413);
        assert_eq!(parse(b"\n \n", Format::Ndjson, 2, 100).unwrap_err().status, 422);
    }

    #[tokio::test]
    async fn body_limits() {
        let h = HeaderMap::new();
        let t = Duration::from_secs(1);
        assert_eq!(read(Body::from("12345"), &h, 5, t).await.unwrap().len(), 5);
        assert_eq!(read(Body::from("123456"), &h, 5, t).await.unwrap_err().status, 413);
        let mut declared = HeaderMap::new();
        declared.insert(CONTENT_LENGTH, HeaderValue::from_static("1000000"));
        assert_eq!(read(Body::from("1"), &declared, 5, t).await.unwrap_err().status, 413);
        let (tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let slow = Body::from_stream(rx);
        assert_eq!(read(slow, &h, 5, Duration::from_millis(50)).await.unwrap_err().status, 408);
        drop(tx);
    }
}
