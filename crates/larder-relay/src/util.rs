//! Pieces every sink shares: secret scrubbing, option parsing, the reconnect gate and a
//! few checks.

// Some helpers serve only some sinks; with a sink's feature off they are unused.
#![allow(dead_code)]

use std::borrow::Cow;
use std::time::{Duration, Instant};

use larder_core::error::one_line;
use larder_core::{Error, Result};

use crate::url::SinkUrl;

/// Texts that must never leave the crate: a URL's password (raw and percent-encoded) and
/// the values of query parameters that may be tokens. Every error message a sink builds
/// from a client's error text goes through [`Scrub::clean`], so a client that echoes its
/// connection string cannot leak it.
#[derive(Clone, Default)]
pub(crate) struct Scrub {
    secrets: Vec<String>,
}

impl std::fmt::Debug for Scrub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrub(..)")
    }
}

impl Scrub {
    /// The secrets of `url`.
    pub(crate) fn of(url: &SinkUrl) -> Scrub {
        let mut secrets: Vec<String> = url.secrets();
        // Short secrets would blank out ordinary words; they are still redacted from the
        // URL itself, which is the only place they could appear verbatim.
        secrets.retain(|s| s.len() >= 3);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Scrub { secrets }
    }

    /// One line of `text` with every secret replaced by `***`.
    pub(crate) fn clean(&self, text: impl std::fmt::Display) -> String {
        let mut s = one_line(&text.to_string());
        for secret in &self.secrets {
            if s.contains(secret.as_str()) {
                s = s.replace(secret.as_str(), "***");
            }
        }
        s
    }
}

/// The query parameters of a sink URL that configure the sink, read once: each known
/// name is taken out, and what is left is either refused (brokers) or handed on (the
/// webhook's own query).
#[derive(Debug)]
pub(crate) struct Params {
    scheme: &'static str,
    pairs: Vec<(String, String)>,
}

impl Params {
    pub(crate) fn new(scheme: &'static str, url: &url::Url) -> Params {
        Params {
            scheme,
            pairs: url
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        }
    }

    /// Takes the last value of `name`.
    pub(crate) fn take(&mut self, name: &str) -> Option<String> {
        let mut found = None;
        self.pairs.retain(|(k, v)| {
            if k == name {
                found = Some(v.clone());
                false
            } else {
                true
            }
        });
        found
    }

    pub(crate) fn take_bool(&mut self, name: &str) -> Result<Option<bool>> {
        match self.take(name).as_deref() {
            None => Ok(None),
            Some("1" | "true" | "yes" | "on") => Ok(Some(true)),
            Some("0" | "false" | "no" | "off") => Ok(Some(false)),
            Some(v) => Err(self.bad(name, v, "true or false")),
        }
    }

    pub(crate) fn take_u64(&mut self, name: &str) -> Result<Option<u64>> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| self.bad(name, &v, "a whole number")),
        }
    }

    /// A duration in milliseconds, at least 1.
    pub(crate) fn take_millis(&mut self, name: &str) -> Result<Option<Duration>> {
        match self.take_u64(name)? {
            Some(0) => Err(self.bad(name, "0", "at least 1 (milliseconds)")),
            other => Ok(other.map(Duration::from_millis)),
        }
    }

    fn bad(&self, name: &str, value: &str, want: &str) -> Error {
        Error::Configuration(format!(
            "the {} sink url has `{name}={}`: give {want}",
            self.scheme,
            larder_core::error::quote(value)
        ))
    }

    /// Refuses what is left: a parameter no sink option reads is a typo, not something to
    /// ignore (its value is not shown: it could be a secret).
    pub(crate) fn finish(self, known: &[&str]) -> Result<()> {
        match self.pairs.first() {
            None => Ok(()),
            Some((k, _)) => Err(Error::Configuration(format!(
                "the {} sink url has an unknown parameter `{}`: remove it; known \
                 parameters: {}",
                self.scheme,
                larder_core::error::quote(k),
                known.join(", ")
            ))),
        }
    }

    /// What is left, for a webhook URL's own query.
    pub(crate) fn rest(self) -> Vec<(String, String)> {
        self.pairs
    }
}

/// Paces reconnects: after `n` failed connects in a row, no new attempt before
/// `min(base · 2ⁿ⁻¹, cap)` has passed, so a relay retrying every few milliseconds does not
/// hammer a broker that is down. A publish that meets the gate closed returns
/// `Unavailable` at once.
#[derive(Debug)]
pub(crate) struct Gate {
    failures: u32,
    not_before: Option<Instant>,
    base: Duration,
    cap: Duration,
}

impl Gate {
    pub(crate) fn new(base: Duration, cap: Duration) -> Gate {
        Gate {
            failures: 0,
            not_before: None,
            base,
            cap: cap.max(base),
        }
    }

    /// `Err(wait)` while the gate is closed.
    pub(crate) fn check(&self) -> std::result::Result<(), Duration> {
        match self.not_before {
            Some(t) => match t.checked_duration_since(Instant::now()) {
                Some(wait) if !wait.is_zero() => Err(wait),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }

    pub(crate) fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let exp = self.failures.saturating_sub(1).min(20);
        let delay = self.base.saturating_mul(1 << exp).min(self.cap);
        self.not_before = Some(Instant::now() + delay);
    }

    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
        self.not_before = None;
    }
}

/// Checks a header name against RFC 9110's `token` (what HTTP, NATS and most brokers
/// accept): visible ASCII without separators.
pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value that every broker carries: no control characters but tab.
pub(crate) fn is_plain_value(v: &str) -> bool {
    !v.chars().any(|c| c.is_control() && c != '\t')
}

/// The `content-type` message header, if any (compared without case).
pub(crate) fn content_type(headers: &std::collections::BTreeMap<String, String>) -> Option<&str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.as_str())
}

/// `prefix` + `topic` without allocating when there is no prefix.
pub(crate) fn prefixed<'a>(prefix: &str, topic: &'a str) -> Cow<'a, str> {
    if prefix.is_empty() {
        Cow::Borrowed(topic)
    } else {
        Cow::Owned(format!("{prefix}{topic}"))
    }
}

/// A duration for messages: `250ms`, `5s`.
pub(crate) fn show(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_opens_after_the_backoff_and_resets_on_success() {
        let mut g = Gate::new(Duration::from_millis(50), Duration::from_millis(200));
        assert!(g.check().is_ok());
        g.failed();
        assert!(g.check().is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert!(g.check().is_ok());
        for _ in 0..10 {
            g.failed();
        }
        let wait = g.check().err().unwrap_or_default();
        assert!(wait <= Duration::from_millis(200), "{wait:?}");
        g.succeeded();
        assert!(g.check().is_ok());
    }

    #[test]
    fn tokens_and_values() {
        assert!(is_token("larder-actor"));
        assert!(is_token("X_Y.z"));
        assert!(!is_token("has space"));
        assert!(!is_token("a:b"));
        assert!(!is_token(""));
        assert!(!is_token("é"));
        assert!(is_plain_value("a\tb"));
        assert!(!is_plain_value("a\r\nb"));
    }

    #[test]
    fn show_durations() {
        assert_eq!(show(Duration::from_secs(5)), "5s");
        assert_eq!(show(Duration::from_millis(250)), "250ms");
        assert_eq!(show(Duration::from_millis(1500)), "1500ms");
    }
}
