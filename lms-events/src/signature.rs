//! The `Lms-Signature` scheme of CONTRACT.md: `t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<raw body>">`. Payment providers sign the webhooks the API receives with it, and the
//! notification dispatcher signs the webhooks it sends with it; one implementation for both,
//! and for the fuzz target (`fuzz/`), which therefore needs nothing but this crate.

use ring::hmac;

/// The signature header value of `body` sent at `t` (Unix seconds) with `secret`.
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("t={t},v1={}", hex::encode(ctx.sign().as_ref()))
}

/// Parses `t=<secs>,v1=<hex>[,v1=<hex>…]` (several `v1` during a secret rotation).
fn parse(value: &str) -> Option<(&str, Vec<Vec<u8>>)> {
    let mut t = None;
    let mut tags = Vec::new();
    for part in value.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "t" => t = Some(v),
            "v1" => tags.push(hex::decode(v).ok()?),
            _ => {}
        }
    }
    Some((t?, tags)).filter(|(_, tags)| !tags.is_empty())
}

/// Checks the `Lms-Signature` header value of a delivery of `body` against `secret`, at
/// `now` (Unix seconds) with a tolerance of `tolerance_s` on the signature's `t` (constant
/// time comparison); the error says why, for a 401's detail.
pub fn verify(secret: &[u8], header: Option<&str>, body: &[u8], now: i64, tolerance_s: u64) -> Result<(), String> {
    let header = header.ok_or("missing Lms-Signature header")?;
    let (t, tags) = parse(header).ok_or("Lms-Signature must be `t=<unix seconds>,v1=<hex HMAC-SHA256>`")?;
    let t_secs: i64 = t.parse().map_err(|_| "the signature timestamp `t` is not an integer")?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut message = Vec::with_capacity(t.len() + 1 + body.len());
    message.extend_from_slice(t.as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    if !tags.iter().any(|tag| hmac::verify(&key, &message, tag).is_ok()) {
        return Err("the signature does not match the body".to_owned());
    }
    if now.abs_diff(t_secs) > tolerance_s {
        return Err(format!("the signature timestamp is more than {tolerance_s} s away from now; replays are refused"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_time_dot_body() {
        // echo -n '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        let s = sign(b"secret", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(s, "t=1700000000,v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686");
        assert_ne!(s, sign(b"other", 1_700_000_000, br#"{"a":1}"#));
        assert_eq!(verify(b"secret", Some(&s), br#"{"a":1}"#, 1_700_000_100, 300), Ok(()));
        assert!(verify(b"secret", Some(&s), br#"{"a":2}"#, 1_700_000_100, 300).is_err());
        assert!(verify(b"secret", Some(&s), br#"{"a":1}"#, 1_700_000_301, 300).unwrap_err().contains("replays"));
        let rotated = format!("{s},v1={}", "00".repeat(32));
        assert_eq!(verify(b"secret", Some(&rotated), br#"{"a":1}"#, 1_700_000_000, 300), Ok(()));
        assert!(verify(b"secret", Some("t=1,v1=zz"), b"", 1, 300).is_err());
    }
}
