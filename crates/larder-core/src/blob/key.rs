//! Validated blob keys.

use std::fmt;

use crate::error::{Error, Result};

/// The longest key, in bytes (S3's limit; Azure allows more).
pub const MAX_KEY_BYTES: usize = 1024;

/// The first segment of a key may not start with this: larder keeps its own files there
/// (staging uploads, the filesystem backend's temporary files).
pub const RESERVED_PREFIX: &str = ".larder";

/// A validated blob key: `/`-separated segments, relative, never able to leave the store's
/// root on any backend.
///
/// Refused, with [`Error::InvalidBlobKey`] naming the rule (never silently rewritten, unlike
/// `object_store::path::Path::from`, which drops `..`):
/// - empty keys and keys over [`MAX_KEY_BYTES`] bytes;
/// - a leading `/` (absolute), a trailing `/` or `//` (empty segments);
/// - `.` and `..` segments, and segments made only of dots or of characters some systems
///   read as dots (`․` U+2024, `﹒` U+FE52, `．` U+FF0E);
/// - backslashes, and characters some systems read as separators (`∕` U+2215, `⁄` U+2044,
///   `／` U+FF0F, `＼` U+FF3C);
/// - control characters (NUL included) and invisible formatting characters (zero-width,
///   bidirectional overrides, byte-order mark);
/// - percent-encoded `.`, `/`, `\`, `%` or control characters (`%2e%2e`, `%2F`, `%00`…),
///   which a server or proxy may decode;
/// - a first segment starting with [`RESERVED_PREFIX`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobKey(String);

fn invalid(key: &str, reason: &'static str) -> Error {
    Error::InvalidBlobKey {
        key: key.chars().take(200).collect(),
        reason,
    }
}

fn dot_like(c: char) -> bool {
    matches!(c, '.' | '\u{2024}' | '\u{FE52}' | '\u{FF0E}')
}

fn separator_like(c: char) -> bool {
    matches!(c, '\\' | '\u{2215}' | '\u{2044}' | '\u{FF0F}' | '\u{FF3C}')
}

fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether `s` holds a percent-encoded byte that could turn into traversal once decoded.
fn encoded_danger(s: &str) -> bool {
    let b = s.as_bytes();
    (0..b.len().saturating_sub(2)).any(|i| {
        b[i] == b'%'
            && matches!((hex(b[i + 1]), hex(b[i + 2])), (Some(h), Some(l))
                if matches!(h * 16 + l, b'.' | b'/' | b'\\' | b'%' | 0..=0x1f | 0x7f))
    })
}

/// The folders of objects larder manages for [`Attachments`](super::Attachments): one
/// object per staged upload, and one per content hash in content-addressed mode.
pub const MANAGED_PREFIXES: [&str; 2] = [".larder-objects/", ".larder-cas/"];

impl BlobKey {
    /// Validates `key` (see the type's rules).
    pub fn new(key: impl Into<String>) -> Result<BlobKey> {
        Self::checked(key.into(), false)
    }

    /// A key in one of larder's managed folders ([`MANAGED_PREFIXES`]), for backends that
    /// list them back and for the sweep. Every other rule applies; [`Blobs`](super::Blobs)'s
    /// own calls refuse such keys, so callers cannot overwrite managed objects.
    pub fn managed(key: impl Into<String>) -> Result<BlobKey> {
        let key = key.into();
        if !MANAGED_PREFIXES.iter().any(|p| key.starts_with(p)) {
            return Err(invalid(&key, "is not in a folder larder manages"));
        }
        Self::checked(key, true)
    }

    /// Whether the key is in larder's reserved area (only [`BlobKey::managed`] makes one).
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with(RESERVED_PREFIX)
    }

    fn checked(key: String, managed: bool) -> Result<BlobKey> {
        if key.is_empty() {
            return Err(invalid(&key, "is empty"));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(invalid(&key, "is longer than 1024 bytes"));
        }
        if key.starts_with('/') {
            return Err(invalid(
                &key,
                "is absolute (starts with `/`); keys are relative",
            ));
        }
        if key.chars().any(char::is_control) {
            return Err(invalid(&key, "contains a control character"));
        }
        if key.chars().any(invisible) {
            return Err(invalid(&key, "contains an invisible formatting character"));
        }
        if key.chars().any(separator_like) {
            return Err(invalid(
                &key,
                "contains a backslash or a character some systems read as a path separator",
            ));
        }
        if encoded_danger(&key) {
            return Err(invalid(
                &key,
                "contains a percent-encoded `.`, `/`, `\\`, `%` or control character",
            ));
        }
        for (i, seg) in key.split('/').enumerate() {
            if seg.is_empty() {
                return Err(invalid(
                    &key,
                    "has an empty segment (`//` or a trailing `/`)",
                ));
            }
            if seg.chars().all(dot_like) {
                return Err(invalid(&key, "has a `.` or `..` segment"));
            }
            if i == 0 && seg.starts_with(RESERVED_PREFIX) && !managed {
                return Err(invalid(
                    &key,
                    "starts with `.larder`, which larder reserves",
                ));
            }
        }
        Ok(BlobKey(key))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The first segment (what spans and usage reports show instead of the whole key).
    pub fn top(&self) -> &str {
        self.0.split('/').next().unwrap_or_default()
    }
}

impl fmt::Display for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobKey({:?})", self.0)
    }
}

impl TryFrom<&str> for BlobKey {
    type Error = Error;
    fn try_from(s: &str) -> Result<BlobKey> {
        BlobKey::new(s)
    }
}

impl TryFrom<String> for BlobKey {
    type Error = Error;
    fn try_from(s: String) -> Result<BlobKey> {
        BlobKey::new(s)
    }
}

impl AsRef<str> for BlobKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_keys_pass() {
        for k in [
            "a",
            "invoices/2026/12/inv-1.pdf",
            "a.b/c..d/e...txt",
            "über/ファイル",
            "100%/done",
            "x%41y",
            ".hidden/file",
        ] {
            assert!(BlobKey::new(k).is_ok(), "{k}");
        }
    }

    #[test]
    fn hostile_keys_fail_with_their_rule() {
        for (k, why) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("a/../b", "`..`"),
            ("..", "`..`"),
            ("a/./b", "`..`"),
            ("a//b", "empty segment"),
            ("a/", "empty segment"),
            ("a\\b", "backslash"),
            ("a\0b", "control"),
            ("%2e%2e/x", "percent"),
            ("a%2Fb", "percent"),
            ("\u{FF0E}\u{FF0E}/x", "`..`"),
            ("a\u{202E}b", "invisible"),
            (".larder-staging/x", "reserves"),
        ] {
            let e = BlobKey::new(k).unwrap_err().to_string();
            assert!(e.contains(why), "{k:?}: {e}");
        }
        assert!(BlobKey::new("a".repeat(1025)).is_err());
        assert!(BlobKey::new("a".repeat(1024)).is_ok());
    }
}
