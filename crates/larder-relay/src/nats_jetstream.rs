//! The NATS JetStream sink: publish with `Nats-Msg-Id`, wait for the PubAck.

use std::error::Error as _;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::{ConnectErrorKind, HeaderMap, HeaderName, HeaderValue};
use larder_core::Result;
use larder_core::backend::BoxFuture;
use larder_core::outbox::{Outgoing, Sink, SinkError};
use tokio::sync::Mutex;

use crate::url::SinkUrl;
use crate::util::{Gate, Params, Scrub, is_plain_value, is_token, prefixed, show};

const PARAMS: &[&str] = &["prefix", "timeout_ms", "connect_timeout_ms", "name"];

/// The header carrying the message's ordering key (NATS has no key field).
pub const KEY_HEADER: &str = "Larder-Key";

/// Options of a [`NatsSink`].
#[derive(Debug, Clone)]
pub struct NatsOptions {
    url: SinkUrl,
    prefix: String,
    timeout: Duration,
    connect_timeout: Duration,
    name: String,
}

impl NatsOptions {
    /// Options for the server at `url` (`nats://[user:password@ | token@]host[:port]`),
    /// with the defaults: no subject prefix, a 5 s acknowledgement timeout, a 3 s connect
    /// timeout and the connection name `larder-relay`.
    pub fn new(url: impl Into<SinkUrl>) -> NatsOptions {
        NatsOptions {
            url: url.into(),
            prefix: String::new(),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            name: "larder-relay".into(),
        }
    }

    /// Options from a URL whose query may set them: `prefix` (subject prefix),
    /// `timeout_ms` (PubAck wait), `connect_timeout_ms`, `name` (connection name).
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`](larder_core::Error::Configuration) for a URL that is not `nats://host…`, an unknown
    /// parameter or a malformed value.
    pub fn from_url(url: impl Into<SinkUrl>) -> Result<NatsOptions> {
        let url = url.into();
        let u = url.parse_as("nats")?;
        let mut p = Params::new("nats", &u);
        let mut o = NatsOptions::new(url.clone());
        if let Some(prefix) = p.take("prefix") {
            o.prefix = prefix;
        }
        if let Some(t) = p.take_millis("timeout_ms")? {
            o.timeout = t;
        }
        if let Some(t) = p.take_millis("connect_timeout_ms")? {
            o.connect_timeout = t;
        }
        if let Some(n) = p.take("name") {
            o.name = n;
        }
        p.finish(PARAMS)?;
        Ok(o)
    }

    /// Prepends `prefix` to every topic to form the subject (default: none).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a publish waits for the PubAck (default 5 s); on expiry it reports an
    /// outage.
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// How long connecting may take (default 3 s).
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The connection name the server shows (default `larder-relay`).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The server URL (redacted when shown).
    pub fn url(&self) -> &SinkUrl {
        &self.url
    }
}

/// Publishes each message to JetStream on the subject named by its topic (after an
/// optional prefix) and waits for the stream's PubAck.
///
/// The message id goes in `Nats-Msg-Id`, so the stream drops a second copy published
/// within its duplicate window (a relay that died between publishing and recording);
/// the key goes in [`KEY_HEADER`] and the message headers go as NATS headers. One
/// connection is shared: concurrent publishes are pipelined and NATS keeps the order of
/// one connection's messages. It is opened on the first publish (retried, paced, while
/// the server is down) and then reconnects by itself.
///
/// # Errors
///
/// - [`SinkError::Unavailable`]: no connection, no PubAck within the timeout, a broken
///   connection, too many acknowledgements pending, or "no responders": nothing listens
///   on the subject, which means JetStream is down or still electing a leader, or no
///   stream captures the subject yet. The last is a deployment step (create the stream),
///   not the message's fault: the messages wait, uncounted, instead of filling the dead
///   letters.
/// - [`SinkError::Poison`]: a subject NATS cannot carry (empty, whitespace, wildcards,
///   empty tokens), a header name or value NATS cannot carry, or a message above the
///   server's `max_payload`.
/// - [`SinkError::Failed`]: an error in the PubAck (the stream refused the message: limits
///   with `discard: new`, a sealed stream…), retried with backoff.
pub struct NatsSink {
    opts: NatsOptions,
    server: String,
    auth: Auth,
    scrub: Scrub,
    js: Mutex<Option<async_nats::jetstream::Context>>,
    gate: std::sync::Mutex<Gate>,
}

#[derive(Clone)]
enum Auth {
    None,
    UserPassword(String, String),
    Token(String),
}

impl fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSink")
            .field("opts", &self.opts)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

impl NatsSink {
    /// A sink with `opts`; it connects on its first publish.
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`](larder_core::Error::Configuration) for a URL that is not `nats://host…`.
    pub fn new(opts: NatsOptions) -> Result<NatsSink> {
        let u = opts.url.parse_as("nats")?;
        let auth = match (u.username(), u.password()) {
            ("", None) => Auth::None,
            (token, None) => Auth::Token(decode(token)),
            (user, Some(pw)) => Auth::UserPassword(decode(user), decode(pw)),
        };
        // The client is handed the address only: credentials go through the options, so
        // no client text can carry them.
        let server = format!(
            "nats://{}:{}",
            u.host_str().unwrap_or_default(),
            u.port().unwrap_or(4222)
        );
        Ok(NatsSink {
            scrub: Scrub::of(&opts.url),
            opts,
            server,
            auth,
            js: Mutex::new(None),
            gate: std::sync::Mutex::new(Gate::new(
                Duration::from_millis(100),
                Duration::from_secs(5),
            )),
        })
    }

    /// A sink for the server at `url` (see [`NatsOptions::from_url`]).
    ///
    /// # Errors
    ///
    /// As [`NatsOptions::from_url`].
    pub fn from_url(url: impl Into<SinkUrl>) -> Result<NatsSink> {
        NatsSink::new(NatsOptions::from_url(url)?)
    }

    /// The options.
    pub fn options(&self) -> &NatsOptions {
        &self.opts
    }

    fn unavailable(&self, what: impl fmt::Display, hint: &str) -> SinkError {
        SinkError::Unavailable(format!(
            "nats {}: {}: {hint}",
            self.server.trim_start_matches("nats://"),
            self.scrub.clean(what)
        ))
    }

    async fn context(&self) -> std::result::Result<async_nats::jetstream::Context, SinkError> {
        let mut slot = self.js.lock().await;
        if let Some(js) = slot.as_ref() {
            return Ok(js.clone());
        }
        if let Err(wait) = self.gate.lock().unwrap_or_else(|p| p.into_inner()).check() {
            return Err(self.unavailable(
                "not connected",
                &format!(
                    "start the server or fix the url; next connect attempt in {}",
                    show(wait)
                ),
            ));
        }
        let mut options = async_nats::ConnectOptions::new()
            .name(&self.opts.name)
            .connection_timeout(self.opts.connect_timeout)
            .max_reconnects(None);
        options = match &self.auth {
            Auth::None => options,
            Auth::UserPassword(u, p) => options.user_and_password(u.clone(), p.clone()),
            Auth::Token(t) => options.token(t.clone()),
        };
        let connected = tokio::time::timeout(
            self.opts.connect_timeout + Duration::from_millis(500),
            options.connect(self.server.as_str()),
        )
        .await;
        let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        match connected {
            Ok(Ok(client)) => {
                gate.succeeded();
                let mut js = async_nats::jetstream::new(client);
                js.set_timeout(self.opts.timeout);
                *slot = Some(js.clone());
                Ok(js)
            }
            Ok(Err(e)) => {
                gate.failed();
                let hint = match e.kind() {
                    ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                        "fix the credentials in the sink url"
                    }
                    _ => "start the server or fix the url; publishing resumes when it answers",
                };
                Err(self.unavailable(error_chain(&e), hint))
            }
            Err(_) => {
                gate.failed();
                Err(self.unavailable(
                    format!("no connection within {}", show(self.opts.connect_timeout)),
                    "start the server or fix the url",
                ))
            }
        }
    }

    fn headers(&self, m: &Outgoing<'_>) -> std::result::Result<HeaderMap, SinkError> {
        let mut h = HeaderMap::new();
        for (name, value) in m.headers {
            // `Nats-…` headers steer JetStream (expected sequence, TTL, rollups): a
            // message header must not forge them.
            let reserved = name
                .get(..5)
                .is_some_and(|p| p.eq_ignore_ascii_case("nats-"));
            if !is_token(name) || reserved {
                return Err(SinkError::Poison(format!(
                    "header `{}` cannot be a nats header: use letters, digits and `-._~` \
                     only, and no `Nats-` prefix",
                    larder_core::error::quote(name)
                )));
            }
            if !is_plain_value(value) {
                return Err(SinkError::Poison(format!(
                    "header `{}` has a line break in its value: nats headers cannot carry it",
                    larder_core::error::quote(name)
                )));
            }
            let n = HeaderName::from_str(name).map_err(|e| {
                SinkError::Poison(format!(
                    "header `{}` cannot be a nats header ({e}): rename it",
                    larder_core::error::quote(name)
                ))
            })?;
            h.insert(n, HeaderValue::from(value.as_str()));
        }
        if let Some(k) = m.key {
            h.insert(KEY_HEADER, k);
        }
        Ok(h)
    }
}

/// A subject NATS can publish to: non-empty dot-separated tokens without whitespace or
/// wildcards.
fn check_subject(subject: &str) -> std::result::Result<(), SinkError> {
    let ok = !subject.is_empty()
        && subject
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.chars().any(char::is_whitespace));
    if ok {
        Ok(())
    } else {
        Err(SinkError::Poison(format!(
            "`{}` is not a nats subject: use dot-separated tokens without spaces or \
             wildcards, such as `orders.placed`",
            larder_core::error::quote(subject)
        )))
    }
}

/// The error and its sources on one line (async-nats keeps the detail in the source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

impl Sink for NatsSink {
    fn system(&self) -> &'static str {
        "nats"
    }

    fn publish<'a>(&'a self, m: Outgoing<'a>) -> BoxFuture<'a, std::result::Result<(), SinkError>> {
        Box::pin(async move {
            let subject = prefixed(&self.opts.prefix, m.topic);
            check_subject(&subject)?;
            let headers = self.headers(&m)?;
            let js = self.context().await?;
            let publish = PublishMessage::build()
                .headers(headers)
                .message_id(m.id.to_string())
                .payload(bytes::Bytes::copy_from_slice(m.payload));
            let sent = js.send_publish(subject.into_owned(), publish).await;
            let acked = match sent {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match acked {
                Ok(_ack) => Ok(()),
                Err(e) => Err(match e.kind() {
                    PublishErrorKind::StreamNotFound => self.unavailable(
                        "no responders for the subject",
                        "create a stream that captures it (or check that jetstream is \
                         enabled); the messages wait until then",
                    ),
                    PublishErrorKind::TimedOut => self.unavailable(
                        format!("no puback within {}", show(self.opts.timeout)),
                        "check the server and its jetstream; publishing resumes when it acks",
                    ),
                    PublishErrorKind::BrokenPipe => self.unavailable(
                        "the connection broke before the puback",
                        "publishing resumes after the reconnect",
                    ),
                    PublishErrorKind::MaxAckPending => self.unavailable(
                        "too many acknowledgements pending",
                        "lower the relay's batch size or wait",
                    ),
                    PublishErrorKind::MaxPayloadExceeded => SinkError::Poison(format!(
                        "the message is larger than the server's max_payload ({}): raise \
                         max_payload or send smaller messages",
                        self.scrub.clean(error_chain(&e))
                    )),
                    _ => {
                        let api = e
                            .source()
                            .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>());
                        match api {
                            Some(api) => SinkError::Failed(format!(
                                "the stream refused the message (jetstream error {}): {}",
                                api.error_code().0,
                                self.scrub.clean(api)
                            )),
                            None => self.unavailable(
                                error_chain(&e),
                                "publishing resumes when the client is connected",
                            ),
                        }
                    }
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_nats_cannot_carry_are_poison() {
        for s in ["orders.placed", "a", "a.b-c_d"] {
            assert!(check_subject(s).is_ok(), "{s}");
        }
        for s in ["", "a..b", ".a", "a.", "a.*", "a.>", "a b"] {
            assert!(matches!(check_subject(s), Err(SinkError::Poison(_))), "{s}");
        }
    }
}
