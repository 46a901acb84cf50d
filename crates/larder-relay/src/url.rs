//! Sink URLs: [`SinkUrl`] (a URL whose secrets never print) and [`sink_from_url`].

use std::fmt;
use std::sync::Arc;

use larder_core::error::quote;
use larder_core::outbox::{JsonLinesSink, Sink, StdoutSink};
use larder_core::{Error, Result};

const HIDDEN: &str = "***";

/// Query parameters whose values a [`SinkUrl`] shows: they configure a sink or a broker
/// connection and never carry a secret. Every other value is shown as `***`.
const SHOWN_PARAMS: &[&str] = &[
    "prefix",
    "maxlen",
    "timeout_ms",
    "connect_timeout_ms",
    "exchange",
    "routing_key",
    "mandatory",
    "persistent",
    "envelope",
    "client_id",
    "keep_alive_ms",
    "retain",
    "topic_path",
    "protocol",
    "heartbeat",
    "channel_max",
    "frame_max",
    "connection_timeout",
];

/// A sink URL whose secrets never appear in `Debug` or `Display` (nor in any error or log
/// line of this crate, which only ever prints [`SinkUrl::redacted`]).
///
/// Redaction fails closed: the password of the userinfo (and a NATS token given as the
/// username), every query value not known to be harmless and the fragment are replaced
/// by `***`; a URL that does not parse, or has an `@` after its authority (where a reader
/// and the parser would disagree on where the password ends), is shown as its scheme
/// followed by `:***`. `stdout` and `file:PATH` are shown as they are.
///
/// ```
/// use larder_relay::SinkUrl;
/// let url = SinkUrl::new("amqp://app:hunter2@mq:5672/%2f?exchange=orders&token=abc");
/// assert_eq!(url.to_string(), "amqp://app:***@mq:5672/%2f?exchange=orders&token=***");
/// assert!(!format!("{url:?}").contains("hunter2"));
/// assert_eq!(url.expose(), "amqp://app:hunter2@mq:5672/%2f?exchange=orders&token=abc");
/// assert_eq!(SinkUrl::new("nats://s3cret@127.0.0.1:4222").to_string(), "nats://***@127.0.0.1:4222");
/// assert_eq!(SinkUrl::new("redis://u:12/x@h").to_string(), "redis:***");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SinkUrl(String);

impl SinkUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> SinkUrl {
        SinkUrl(url.into().trim().to_owned())
    }

    /// The real URL, secrets included: only for handing to a client.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The scheme, lowercased (`redis`, `nats`, `amqp`, `mqtt`, `http`, `https`, `file`),
    /// or `stdout`.
    pub fn scheme(&self) -> String {
        match self.0.split_once(':') {
            Some((s, _)) => s.to_ascii_lowercase(),
            None => self.0.to_ascii_lowercase(),
        }
    }

    /// The URL with its secrets replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }

    /// Parses the URL for a sink of `scheme`, refusing shapes that could hide a password
    /// where no client would look for one.
    #[cfg_attr(
        not(any(
            feature = "redis",
            feature = "nats",
            feature = "amqp",
            feature = "mqtt",
            feature = "http"
        )),
        allow(dead_code)
    )]
    pub(crate) fn parse_as(&self, what: &str) -> Result<url::Url> {
        let bad = |why: &str| {
            Error::Configuration(format!(
                "the {what} sink url `{}` {why}",
                quote(&self.redacted())
            ))
        };
        if after_authority_has_at(&self.0) {
            return Err(bad(
                "has an `@` after its host: percent-encode `@`, `/` and `:` in the password \
                 (`%40`, `%2F`, `%3A`)",
            ));
        }
        let u =
            url::Url::parse(&self.0).map_err(|e| bad(&format!("does not parse ({e}): fix it")))?;
        if !u.has_host() || u.host_str().is_some_and(str::is_empty) {
            return Err(bad("has no host: write it as `scheme://host:port`"));
        }
        Ok(u)
    }

    /// The secrets to scrub from client error texts (see `util::Scrub`).
    pub(crate) fn secrets(&self) -> Vec<String> {
        let Ok(u) = url::Url::parse(&self.0) else {
            // Unparsable: every word could be a secret, but a sink is never built from
            // such a URL, so there is nothing to scrub.
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut push = |raw: &str| {
            if raw.is_empty() {
                return;
            }
            out.push(raw.to_owned());
            if let Ok(decoded) = percent_decode(raw) {
                out.push(decoded);
            }
        };
        if let Some(p) = u.password() {
            push(p);
        } else if token_user(&u) {
            push(u.username());
        }
        for (k, v) in u.query_pairs() {
            if !shown(&k) {
                push(&v);
            }
        }
        if let Some(f) = u.fragment() {
            push(f);
        }
        out
    }
}

impl fmt::Display for SinkUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for SinkUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SinkUrl").field(&self.redacted()).finish()
    }
}

impl From<&str> for SinkUrl {
    fn from(s: &str) -> SinkUrl {
        SinkUrl::new(s)
    }
}

impl From<String> for SinkUrl {
    fn from(s: String) -> SinkUrl {
        SinkUrl::new(s)
    }
}

fn percent_decode(s: &str) -> std::result::Result<String, ()> {
    let bytes: Vec<u8> = url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned().into_bytes())
        .ok_or(())?;
    String::from_utf8(bytes).map_err(|_| ())
}

fn shown(name: &str) -> bool {
    SHOWN_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// NATS reads `nats://TOKEN@host` as a token.
fn token_user(u: &url::Url) -> bool {
    u.scheme().eq_ignore_ascii_case("nats") && u.password().is_none() && !u.username().is_empty()
}

/// Whether an `@` follows the end of the authority: `redis://u:12/x@h` is host `u`, port
/// 12 to the parser, while a reader sees the password `12/x`.
fn after_authority_has_at(s: &str) -> bool {
    let Some((_, rest)) = s.split_once("://") else {
        return false;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    rest[end..].contains('@')
}

fn redact(s: &str) -> String {
    if s.eq_ignore_ascii_case("stdout") {
        return s.to_owned();
    }
    let Some((scheme, rest)) = s.split_once(':') else {
        return "<redacted>".to_owned();
    };
    if scheme.eq_ignore_ascii_case("file") && !rest.starts_with("//") {
        return s.to_owned();
    }
    let valid_scheme = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme {
        return "<redacted>".to_owned();
    }
    let closed = || format!("{scheme}:{HIDDEN}");
    if after_authority_has_at(s) {
        return closed();
    }
    let Ok(mut u) = url::Url::parse(s) else {
        return closed();
    };
    if u.cannot_be_a_base() {
        return closed();
    }
    if u.password().is_some() {
        if u.set_password(Some(HIDDEN)).is_err() {
            return closed();
        }
    } else if token_user(&u) && u.set_username(HIDDEN).is_err() {
        return closed();
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let plain = v.chars().all(|c| {
                    c.is_ascii_alphanumeric()
                        || matches!(c, '.' | '_' | '-' | '/' | ':' | '~' | '{' | '}')
                });
                let v = if v.is_empty() || (shown(&k) && plain) {
                    v.into_owned()
                } else {
                    HIDDEN.to_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        if pairs.is_empty() {
            u.set_query(None);
        } else {
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
    }
    if u.fragment().is_some() {
        u.set_fragment(Some(HIDDEN));
    }
    // The parser keeps a userinfo's text, so nothing secret can survive; still, fail
    // closed if it somehow did.
    let out = u.to_string();
    if SinkUrl(s.to_owned())
        .secrets()
        .iter()
        .filter(|x| x.len() >= 3)
        .any(|x| out.contains(x.as_str()))
    {
        return closed();
    }
    out
}

/// A feature-gated scheme whose feature is off.
#[allow(dead_code)]
fn feature_off(scheme: &str, feature: &str) -> Error {
    Error::Configuration(format!(
        "`{scheme}://` sinks are not compiled in: enable the `{feature}` feature of larder-relay"
    ))
}

/// Builds a sink from a URL (the CLI's `--sink` and the settings' `outbox.sink`).
///
/// | URL | sink | feature |
/// | --- | --- | --- |
/// | `stdout` | [`StdoutSink`]: JSON lines on standard output | — |
/// | `file:PATH` | [`JsonLinesSink`]: JSON lines appended to `PATH`, synced per batch | — |
/// | `redis://[user:pass@]host[:port][/db]` | `RedisSink` | `redis` |
/// | `nats://[user:pass@ or token@]host[:port]` | `NatsSink` | `nats` |
/// | `amqp://user:pass@host[:port][/vhost]` | `AmqpSink` | `amqp` |
/// | `mqtt://[user:pass@]host[:port]` | `MqttSink` | `mqtt` |
/// | `http://…`, `https://…` | `HttpSink` (webhook) | `http`, `https` |
///
/// Query parameters configure the sink; each sink's options type lists its own
/// (`RedisOptions::from_url`, …). Common to the brokers: `timeout_ms` (how long a publish
/// waits for the broker's acknowledgement) and `connect_timeout_ms`. An unknown parameter
/// is refused, except on webhook URLs, whose other parameters stay in the URL that is
/// called.
///
/// No sink connects here: each connects on its first publish and reconnects after an
/// outage, so a relay starts while its broker is down (publishes then report
/// [`SinkError::Unavailable`](larder_core::outbox::SinkError::Unavailable)).
///
/// # Errors
///
/// [`Error::Configuration`] for an unknown scheme, a scheme whose feature is off (the
/// message names the feature), a malformed URL or an invalid parameter. Messages show
/// the URL redacted ([`SinkUrl`]).
///
/// ```
/// let sink = larder_relay::sink_from_url("stdout").unwrap();
/// assert_eq!(sink.system(), "stdout");
/// let err = larder_relay::sink_from_url("kafka://broker:9092").err().unwrap();
/// assert!(err.to_string().contains("unknown sink scheme"));
/// ```
pub fn sink_from_url(url: &str) -> Result<Arc<dyn Sink>> {
    let url = SinkUrl::new(url);
    let scheme = url.scheme();
    match scheme.as_str() {
        "stdout" if url.expose().eq_ignore_ascii_case("stdout") => Ok(Arc::new(StdoutSink)),
        "file" => {
            let raw = &url.expose()["file:".len()..];
            let path = if raw.starts_with("//") {
                let u = url::Url::parse(url.expose()).map_err(|e| {
                    Error::Configuration(format!(
                        "the file sink url `{}` does not parse ({e}): write `file:PATH`",
                        quote(url.expose())
                    ))
                })?;
                u.to_file_path().map_err(|()| {
                    Error::Configuration(format!(
                        "the file sink url `{}` names no local path: write `file:PATH`",
                        quote(url.expose())
                    ))
                })?
            } else {
                std::path::PathBuf::from(raw)
            };
            if path.as_os_str().is_empty() {
                return Err(Error::Configuration(
                    "the file sink url has no path: write `file:PATH`".into(),
                ));
            }
            Ok(Arc::new(JsonLinesSink::open(path)?))
        }
        "redis" => {
            #[cfg(feature = "redis")]
            return Ok(Arc::new(crate::RedisSink::new(
                crate::RedisOptions::from_url(url)?,
            )?));
            #[cfg(not(feature = "redis"))]
            return Err(feature_off("redis", "redis"));
        }
        "nats" => {
            #[cfg(feature = "nats")]
            return Ok(Arc::new(crate::NatsSink::new(
                crate::NatsOptions::from_url(url)?,
            )?));
            #[cfg(not(feature = "nats"))]
            return Err(feature_off("nats", "nats"));
        }
        "amqp" => {
            #[cfg(feature = "amqp")]
            return Ok(Arc::new(crate::AmqpSink::new(
                crate::AmqpOptions::from_url(url)?,
            )?));
            #[cfg(not(feature = "amqp"))]
            return Err(feature_off("amqp", "amqp"));
        }
        "mqtt" => {
            #[cfg(feature = "mqtt")]
            return Ok(Arc::new(crate::MqttSink::new(
                crate::MqttOptions::from_url(url)?,
            )?));
            #[cfg(not(feature = "mqtt"))]
            return Err(feature_off("mqtt", "mqtt"));
        }
        "http" => {
            #[cfg(feature = "http")]
            return Ok(Arc::new(crate::HttpSink::new(
                crate::HttpOptions::from_url(url)?,
            )?));
            #[cfg(not(feature = "http"))]
            return Err(feature_off("http", "http"));
        }
        "https" => {
            #[cfg(feature = "https")]
            return Ok(Arc::new(crate::HttpSink::new(
                crate::HttpOptions::from_url(url)?,
            )?));
            #[cfg(not(feature = "https"))]
            return Err(feature_off("https", "https"));
        }
        "rediss" | "amqps" | "mqtts" | "tls" => Err(Error::Configuration(format!(
            "`{scheme}://` (TLS to the broker) is not supported yet: use the plain scheme on a \
             trusted network or through a TLS tunnel"
        ))),
        _ => Err(Error::Configuration(format!(
            "unknown sink scheme in `{}`: use stdout, file:PATH, redis://, nats://, amqp://, \
             mqtt://, http:// or https://",
            quote(&url.redacted())
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: Result<Arc<dyn Sink>>) -> String {
        match r {
            Ok(s) => format!("ok: {}", s.system()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn passwords_are_redacted_everywhere_in_the_url() {
        let cases = [
            (
                "redis://:hunter2@127.0.0.1:6379/0?maxlen=1000",
                "redis://:***@127.0.0.1:6379/0?maxlen=1000",
            ),
            (
                "amqp://guest:hunter2@127.0.0.1:5672/%2f?exchange=x&routing_key={key}",
                "amqp://guest:***@127.0.0.1:5672/%2f?exchange=x&routing_key=%7Bkey%7D",
            ),
            ("mqtt://u:p%40ss@h:1883", "mqtt://u:***@h:1883"),
            (
                "https://hooks.example/in?code=hunter2&topic_path=true#frag",
                "https://hooks.example/in?code=***&topic_path=true#***",
            ),
            ("nats://tok3n@h:4222", "nats://***@h:4222"),
            ("nats://u:pw3@h:4222", "nats://u:***@h:4222"),
            ("stdout", "stdout"),
            ("file:out/relay.jsonl", "file:out/relay.jsonl"),
            ("redis://u:12/x@h", "redis:***"),
            ("not a url", "<redacted>"),
            ("redis://[bad", "redis:***"),
        ];
        for (raw, want) in cases {
            let u = SinkUrl::new(raw);
            assert_eq!(u.to_string(), want, "{raw}");
            assert!(format!("{u:?}").contains(want), "{raw}");
        }
    }

    #[test]
    fn secrets_include_decoded_password_and_hidden_query_values() {
        let s = SinkUrl::new("mqtt://u:p%40ss@h:1883?token=abc%2Fdef&timeout_ms=10").secrets();
        assert!(s.contains(&"p%40ss".to_owned()), "{s:?}");
        assert!(s.contains(&"p@ss".to_owned()), "{s:?}");
        assert!(s.contains(&"abc/def".to_owned()), "{s:?}");
        assert!(!s.contains(&"10".to_owned()), "{s:?}");
    }

    #[test]
    fn unknown_schemes_are_configuration_errors() {
        let e = sink_from_url("kafka://u:hunter2@b:9092")
            .err()
            .map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(e.contains("unknown sink scheme"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(matches!(
            sink_from_url("kafka://b"),
            Err(Error::Configuration(_))
        ));
        assert!(text(sink_from_url("rediss://h")).contains("not supported"));
        assert!(text(sink_from_url("")).contains("unknown sink scheme"));
    }

    #[cfg(not(feature = "https"))]
    #[test]
    fn a_scheme_whose_feature_is_off_names_the_feature() {
        let e = text(sink_from_url("https://hooks.example/in"));
        assert!(e.contains("enable the `https` feature"), "{e}");
    }

    #[test]
    fn stdout_and_file_sinks() {
        assert_eq!(text(sink_from_url("stdout")), "ok: stdout");
        assert_eq!(text(sink_from_url("STDOUT")), "ok: stdout");
        let dir = std::env::temp_dir().join(format!("larder-relay-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).ok();
        let path = dir.join("out.jsonl");
        assert_eq!(
            text(sink_from_url(&format!("file:{}", path.display()))),
            "ok: file"
        );
        assert_eq!(
            text(sink_from_url(&format!("file://{}", path.display()))),
            "ok: file"
        );
        assert!(text(sink_from_url("file:")).contains("no path"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[cfg(all(
        feature = "redis",
        feature = "nats",
        feature = "amqp",
        feature = "mqtt",
        feature = "http"
    ))]
    #[test]
    fn broker_urls_build_sinks_without_connecting() {
        for (url, system) in [
            ("redis://127.0.0.1:1/?maxlen=10&prefix=app.", "redis"),
            ("nats://127.0.0.1:1?timeout_ms=500", "nats"),
            (
                "amqp://guest:guest@127.0.0.1:1/%2f?exchange=x&mandatory=false",
                "rabbitmq",
            ),
            ("mqtt://127.0.0.1:1?envelope=json&client_id=c1", "mqtt"),
            ("http://127.0.0.1:1/hook?topic_path=true&code=abc", "http"),
        ] {
            assert_eq!(text(sink_from_url(url)), format!("ok: {system}"), "{url}");
        }
    }

    #[cfg(all(
        feature = "redis",
        feature = "nats",
        feature = "amqp",
        feature = "mqtt",
        feature = "http"
    ))]
    #[test]
    fn bad_parameters_are_refused_without_showing_their_values() {
        for (url, needle) in [
            ("redis://h?maxlen=lots", "maxlen=lots"),
            ("redis://h?password=hunter2", "unknown parameter `password`"),
            ("nats://h?timeout_ms=0", "timeout_ms=0"),
            ("amqp://h?mandatory=perhaps", "mandatory=perhaps"),
            ("mqtt://h?envelope=xml", "envelope"),
            ("mqtt://h?qos=2", "unknown parameter `qos`"),
            ("http://h/x?timeout_ms=soon", "timeout_ms=soon"),
            ("redis://", "has no host"),
        ] {
            let e = text(sink_from_url(url));
            assert!(e.contains(needle), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{url}: {e}");
        }
    }

    #[cfg(all(
        feature = "redis",
        feature = "nats",
        feature = "amqp",
        feature = "mqtt",
        feature = "http"
    ))]
    #[test]
    fn sink_debug_never_shows_the_password() {
        for url in [
            "redis://:hunter2@127.0.0.1:1/",
            "nats://app:hunter2@127.0.0.1:1",
            "nats://hunter2@127.0.0.1:1",
            "amqp://guest:hunter2@127.0.0.1:1/%2f",
            "mqtt://app:hunter2@127.0.0.1:1",
            "http://app:hunter2@127.0.0.1:1/hook?token=hunter2",
        ] {
            let sink = debug_of(url);
            assert!(!sink.contains("hunter2"), "{url}: {sink}");
            assert!(sink.contains("***"), "{url}: {sink}");
        }
    }

    /// The `Debug` of the sink `url` builds (tests).
    #[cfg(all(
        feature = "redis",
        feature = "nats",
        feature = "amqp",
        feature = "mqtt",
        feature = "http"
    ))]
    fn debug_of(url: &str) -> String {
        let u = SinkUrl::new(url);
        let r = match u.scheme().as_str() {
            "redis" => crate::RedisOptions::from_url(u)
                .and_then(crate::RedisSink::new)
                .map(|s| format!("{s:?}")),
            "nats" => crate::NatsOptions::from_url(u)
                .and_then(crate::NatsSink::new)
                .map(|s| format!("{s:?}")),
            "amqp" => crate::AmqpOptions::from_url(u)
                .and_then(crate::AmqpSink::new)
                .map(|s| format!("{s:?}")),
            "mqtt" => crate::MqttOptions::from_url(u)
                .and_then(crate::MqttSink::new)
                .map(|s| format!("{s:?}")),
            _ => crate::HttpOptions::from_url(u)
                .and_then(crate::HttpSink::new)
                .map(|s| format!("{s:?}")),
        };
        r.unwrap_or_else(|e| e.to_string())
    }
}
