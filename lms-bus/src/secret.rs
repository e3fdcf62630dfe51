//! Secrets: configuration values that must never be printed.
//!
//! A [`Secret`] shows as `<redacted>` in `Debug` output and when serialised (a configuration
//! dump), so a secret reaches only the client that uses it, through [`Secret::expose`]. Every
//! secret of the configuration can also be read from a file ([`Secret::from_file`]: a mounted
//! Kubernetes Secret, a Docker secret), trimmed of its trailing newline.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};

/// What a secret shows instead of its value.
pub const REDACTED: &str = "<redacted>";

/// A secret value (password, signing key). Deserialises from a plain string.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

/// A secret file that could not be read. Names the file, never its content.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the secret file {path}: {source}")]
pub struct SecretFileError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Reads a secret from a file, without its trailing line break (`\n` or `\r\n`), as
    /// editors and `kubectl create secret --from-file` leave one.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SecretFileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SecretFileError { path: path.to_owned(), source })?;
        Ok(Self(trim_line_break(&text).to_owned()))
    }

    /// The value, for the one client that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// `text` without one trailing `\n` or `\r\n`.
pub fn trim_line_break(text: &str) -> &str {
    let t = text.strip_suffix('\n').unwrap_or(text);
    t.strip_suffix('\r').unwrap_or(t)
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Serialises as `<redacted>`: a dumped configuration never carries the value. (So a
/// configuration does not survive a serialise-deserialise round trip with its secrets.)
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_never_shown() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(serde_json::to_string(&s).unwrap_or_default(), "\"<redacted>\"");
        assert_eq!(s.expose(), "hunter2");
        let back: Secret = serde_json::from_str("\"x\"").expect("a string");
        assert_eq!(back.expose(), "x");
    }

    #[test]
    fn a_secret_file_loses_its_trailing_line_break_only() {
        let dir = std::env::temp_dir().join(format!("lms-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for (content, expected) in [("pw\n", "pw"), ("pw\r\n", "pw"), ("pw", "pw"), (" pw \n\n", " pw \n"), ("", "")] {
            let f = dir.join("s");
            std::fs::write(&f, content).expect("write");
            assert_eq!(Secret::from_file(&f).expect("read").expose(), expected, "{content:?}");
        }
        let err = Secret::from_file(dir.join("absent")).expect_err("absent");
        assert!(err.to_string().contains("absent"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
