//! The MQTT sink: QoS 1 publishes, each `Ok` only after the PUBACK of its own packet.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use larder_core::backend::BoxFuture;
use larder_core::error::quote;
use larder_core::outbox::{Outgoing, Sink, SinkError, json_line};
use larder_core::{Error, Result};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Packet, QoS};
use tokio::sync::oneshot;

use crate::url::SinkUrl;
use crate::util::{Gate, Params, Scrub, prefixed, show};

const PARAMS: &[&str] = &[
    "prefix",
    "envelope",
    "client_id",
    "retain",
    "keep_alive_ms",
    "timeout_ms",
    "connect_timeout_ms",
    "max_packet_bytes",
];

/// How a message becomes an MQTT payload. MQTT 3.1.1 has no headers and no message id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Envelope {
    /// The payload as it is; the id, key and headers are dropped (the default). URL:
    /// `envelope=none`.
    #[default]
    None,
    /// A JSON object with `id`, `topic`, `key`, `headers` and `payload` (text when the
    /// payload is UTF-8, else `payload_base64`): the line format of
    /// [`json_line`]. URL: `envelope=json`.
    Json,
}

/// Options of an [`MqttSink`].
#[derive(Debug, Clone)]
pub struct MqttOptions {
    url: SinkUrl,
    prefix: String,
    envelope: Envelope,
    client_id: Option<String>,
    retain: bool,
    keep_alive: Duration,
    timeout: Duration,
    connect_timeout: Duration,
    max_packet_bytes: usize,
}

impl MqttOptions {
    /// Options for the broker at `url` (`mqtt://[user:password@]host[:port]`), with the
    /// defaults: no topic prefix, no envelope, a random client id (`larder-relay-…`), no
    /// retain flag, a 30 s keep-alive, a 10 s PUBACK timeout, a 5 s connect timeout and
    /// packets up to 16 MiB.
    pub fn new(url: impl Into<SinkUrl>) -> MqttOptions {
        MqttOptions {
            url: url.into(),
            prefix: String::new(),
            envelope: Envelope::None,
            client_id: None,
            retain: false,
            keep_alive: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_packet_bytes: 16 << 20,
        }
    }

    /// Options from a URL whose query may set them: `prefix` (topic prefix), `envelope`
    /// (`none` or `json`), `client_id`, `retain`, `keep_alive_ms` (at least 1000),
    /// `timeout_ms` (PUBACK wait), `connect_timeout_ms`, `max_packet_bytes`.
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] for a URL that is not `mqtt://host…`, an unknown
    /// parameter or a malformed value.
    pub fn from_url(url: impl Into<SinkUrl>) -> Result<MqttOptions> {
        let url = url.into();
        let u = url.parse_as("mqtt")?;
        let mut p = Params::new("mqtt", &u);
        let mut o = MqttOptions::new(url.clone());
        if let Some(prefix) = p.take("prefix") {
            o.prefix = prefix;
        }
        match p.take("envelope").as_deref() {
            None | Some("none") => {}
            Some("json") => o.envelope = Envelope::Json,
            Some(v) => {
                return Err(Error::Configuration(format!(
                    "the mqtt sink url has `envelope={}`: give `none` or `json`",
                    quote(v)
                )));
            }
        }
        if let Some(id) = p.take("client_id") {
            o.client_id = Some(id);
        }
        if let Some(b) = p.take_bool("retain")? {
            o.retain = b;
        }
        if let Some(t) = p.take_millis("keep_alive_ms")? {
            if t < Duration::from_secs(1) {
                return Err(Error::Configuration(
                    "the mqtt sink url has `keep_alive_ms` below 1000: give at least 1000".into(),
                ));
            }
            o.keep_alive = t;
        }
        if let Some(t) = p.take_millis("timeout_ms")? {
            o.timeout = t;
        }
        if let Some(t) = p.take_millis("connect_timeout_ms")? {
            o.connect_timeout = t;
        }
        if let Some(n) = p.take_u64("max_packet_bytes")? {
            o.max_packet_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        p.finish(PARAMS)?;
        Ok(o)
    }

    /// Prepends `prefix` to every topic (default: none).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How the payload is built (default [`Envelope::None`]).
    pub fn with_envelope(mut self, envelope: Envelope) -> Self {
        self.envelope = envelope;
        self
    }

    /// The client id (default: `larder-relay-` and a random suffix). Two connections with
    /// one id take the broker's session from each other: give each relay its own.
    pub fn with_client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// Whether messages are published with the retain flag (default `false`).
    pub fn with_retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// The keep-alive interval (default 30 s; at least 1 s): a broker that stops
    /// answering is noticed within about 1.5 times this.
    pub fn with_keep_alive(mut self, d: Duration) -> Self {
        self.keep_alive = d.max(Duration::from_secs(1));
        self
    }

    /// How long a publish waits for its PUBACK (default 10 s); on expiry it reports an
    /// outage.
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// How long connecting may take (default 5 s, rounded up to whole seconds).
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The largest packet sent (default 16 MiB); a larger message is refused as poison.
    pub fn with_max_packet_bytes(mut self, n: usize) -> Self {
        self.max_packet_bytes = n;
        self
    }

    /// The envelope.
    pub fn envelope(&self) -> Envelope {
        self.envelope
    }

    /// The broker URL (redacted when shown).
    pub fn url(&self) -> &SinkUrl {
        &self.url
    }
}

type Waiter = oneshot::Sender<std::result::Result<(), SinkError>>;

/// What one connection's driver and its publishers share.
#[derive(Default)]
struct Book {
    /// Why the connection ended; no publish may join it then.
    dead: Option<String>,
    /// Publishes handed to the client, not yet written (no packet id yet), in the order
    /// they were handed over: the event loop writes them in that order.
    queued: VecDeque<Waiter>,
    /// Written publishes by packet id (a queue, in case a packet id collides and the
    /// event loop resends a held publish under the same id).
    inflight: HashMap<u16, VecDeque<Waiter>>,
}

/// One MQTT connection: a client and the task driving its event loop. A session never
/// reconnects: when its connection ends, every waiting publish reports an outage and the
/// next publish starts a new session. So no publish is ever resent by the event loop
/// behind the relay's back, and packet ids always match the publishes they were given
/// to.
struct Session {
    client: AsyncClient,
    book: Arc<Mutex<Book>>,
}

/// Publishes each message to the MQTT topic named by its topic (after an optional
/// prefix) with QoS 1, and returns `Ok` only after the broker's PUBACK for that packet.
///
/// MQTT 3.1.1 carries no headers and no message id: with the default
/// [`Envelope::None`] the payload goes as it is and the id, key and headers are dropped;
/// [`Envelope::Json`] wraps them with the payload in a JSON object, so consumers can
/// de-duplicate by id. One connection is shared and publishes go out in the order they
/// were made, so one key's messages keep their order.
///
/// A broker denying a publish by ACL still acknowledges it in MQTT 3.1.1 (Mosquitto
/// does): check the ACLs of the relay's user.
///
/// # Errors
///
/// - [`SinkError::Unavailable`]: no connection (refused, reset, credentials refused), no
///   PUBACK within the timeout, or the connection ended before the PUBACK. The next
///   publish reconnects, paced by a backoff (100 ms doubling to 5 s) while the broker
///   stays down.
/// - [`SinkError::Poison`]: a topic MQTT cannot publish to (empty, wildcards `+`/`#`, a
///   NUL, a `$` prefix) or a message larger than the packet limit.
pub struct MqttSink {
    opts: MqttOptions,
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
    client_id: String,
    scrub: Arc<Scrub>,
    session: Mutex<Option<Arc<Session>>>,
    gate: Arc<Mutex<Gate>>,
}

impl fmt::Debug for MqttSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttSink")
            .field("opts", &self.opts)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MqttSink {
    /// A sink with `opts`; it connects on its first publish.
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] for a URL that is not `mqtt://host…`.
    pub fn new(opts: MqttOptions) -> Result<MqttSink> {
        let u = opts.url.parse_as("mqtt")?;
        let credentials = match (u.username(), u.password()) {
            ("", None) => None,
            (user, pw) => Some((decode(user), pw.map(decode).unwrap_or_default())),
        };
        let client_id = opts.client_id.clone().unwrap_or_else(|| {
            let id = uuid::Uuid::new_v4().simple().to_string();
            format!("larder-relay-{}", &id[..12])
        });
        Ok(MqttSink {
            host: u
                .host_str()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_owned(),
            port: u.port().unwrap_or(1883),
            credentials,
            client_id,
            scrub: Arc::new(Scrub::of(&opts.url)),
            opts,
            session: Mutex::new(None),
            gate: Arc::new(Mutex::new(Gate::new(
                Duration::from_millis(100),
                Duration::from_secs(5),
            ))),
        })
    }

    /// A sink for the broker at `url` (see [`MqttOptions::from_url`]).
    ///
    /// # Errors
    ///
    /// As [`MqttOptions::from_url`].
    pub fn from_url(url: impl Into<SinkUrl>) -> Result<MqttSink> {
        MqttSink::new(MqttOptions::from_url(url)?)
    }

    /// The options.
    pub fn options(&self) -> &MqttOptions {
        &self.opts
    }

    fn target(&self) -> String {
        format!("mqtt {}:{}", self.host, self.port)
    }

    /// The live session, or a new one (its driver connects on its first poll).
    fn session(&self) -> std::result::Result<Arc<Session>, SinkError> {
        let mut slot = lock(&self.session);
        if let Some(s) = slot.as_ref()
            && lock(&s.book).dead.is_none()
        {
            return Ok(s.clone());
        }
        if let Err(wait) = lock(&self.gate).check() {
            let why = slot
                .as_ref()
                .and_then(|s| lock(&s.book).dead.clone())
                .unwrap_or_else(|| "not connected".into());
            return Err(SinkError::Unavailable(format!(
                "{}: {why}: start the broker or fix the url; next connect attempt in {}",
                self.target(),
                show(wait)
            )));
        }
        let mut o = rumqttc::MqttOptions::new(self.client_id.clone(), self.host.clone(), self.port);
        o.set_keep_alive(self.opts.keep_alive.max(Duration::from_secs(1)))
            .set_clean_session(true)
            .set_inflight(100)
            .set_max_packet_size(1 << 20, self.opts.max_packet_bytes);
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u.clone(), p.clone());
        }
        let (client, mut eventloop) = AsyncClient::new(o, 1024);
        let secs = self.opts.connect_timeout.as_millis().div_ceil(1000).max(1);
        eventloop
            .network_options
            .set_connection_timeout(u64::try_from(secs).unwrap_or(u64::MAX));
        let book = Arc::new(Mutex::new(Book::default()));
        tokio::spawn(drive(
            eventloop,
            book.clone(),
            self.gate.clone(),
            self.target(),
            self.scrub.clone(),
        ));
        let s = Arc::new(Session { client, book });
        *slot = Some(s.clone());
        Ok(s)
    }
}

/// Drives one session's event loop: assigns packet ids to the waiting publishes in the
/// order the client wrote them, completes them on their PUBACK, and ends the session on
/// the first connection error.
async fn drive(
    mut eventloop: EventLoop,
    book: Arc<Mutex<Book>>,
    gate: Arc<Mutex<Gate>>,
    target: String,
    scrub: Arc<Scrub>,
) {
    let mut connected = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connected = true;
                lock(&gate).succeeded();
                tracing::debug!(target: "larder_relay", broker = %target, "mqtt connected");
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                let mut b = lock(&book);
                if let Some(w) = b.queued.pop_front() {
                    b.inflight.entry(pkid).or_default().push_back(w);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let mut b = lock(&book);
                if let Some(q) = b.inflight.get_mut(&ack.pkid) {
                    if let Some(w) = q.pop_front() {
                        let _ = w.send(Ok(()));
                    }
                    if q.is_empty() {
                        b.inflight.remove(&ack.pkid);
                    }
                }
            }
            Ok(_) => {}
            Err(ConnectionError::RequestsDone) => {
                // The sink (and with it the client) is gone.
                lock(&book).dead = Some("the sink was dropped".into());
                return;
            }
            Err(e) => {
                if !connected {
                    lock(&gate).failed();
                }
                let hint = match &e {
                    ConnectionError::ConnectionRefused(_) => {
                        "the broker refused the connection: fix the credentials or client id"
                    }
                    _ if connected => "the connection was lost: the next publish reconnects",
                    _ => "start the broker or fix the url; publishing resumes when it answers",
                };
                let why = scrub.clean(&e);
                let mut b = lock(&book);
                b.dead = Some(why.clone());
                let message = format!("{target}: {why}: {hint}");
                for w in b.queued.drain(..) {
                    let _ = w.send(Err(SinkError::Unavailable(message.clone())));
                }
                for (_, q) in b.inflight.drain() {
                    for w in q {
                        let _ = w.send(Err(SinkError::Unavailable(message.clone())));
                    }
                }
                tracing::debug!(target: "larder_relay", broker = %target, error = %why, "mqtt session ended");
                return;
            }
        }
    }
}

/// A topic MQTT can publish to.
fn check_topic(topic: &str) -> std::result::Result<(), SinkError> {
    let bad = topic.is_empty()
        || topic.contains(['+', '#', '\0'])
        || topic.starts_with('$')
        || topic.len() > usize::from(u16::MAX);
    if bad {
        Err(SinkError::Poison(format!(
            "`{}` is not an mqtt topic to publish to: use a non-empty name without `+`, `#` \
             or a leading `$`, such as `orders/placed`",
            quote(topic)
        )))
    } else {
        Ok(())
    }
}

impl Sink for MqttSink {
    fn system(&self) -> &'static str {
        "mqtt"
    }

    fn publish<'a>(&'a self, m: Outgoing<'a>) -> BoxFuture<'a, std::result::Result<(), SinkError>> {
        Box::pin(async move {
            let topic = prefixed(&self.opts.prefix, m.topic);
            check_topic(&topic)?;
            let payload: Vec<u8> = match self.opts.envelope {
                Envelope::None => m.payload.to_vec(),
                Envelope::Json => json_line(&m).into_bytes(),
            };
            // Fixed header (5) + topic length (2) + topic + packet id (2) + payload.
            let size = 9 + topic.len() + payload.len();
            if size > self.opts.max_packet_bytes {
                return Err(SinkError::Poison(format!(
                    "the message needs a {size}-byte packet, above the limit of {}: raise \
                     `max_packet_bytes` (and the broker's message_size_limit) or send \
                     smaller messages",
                    self.opts.max_packet_bytes
                )));
            }
            let rx = {
                let session = self.session()?;
                let mut b = lock(&session.book);
                if let Some(why) = &b.dead {
                    return Err(SinkError::Unavailable(format!(
                        "{}: {why}: the next publish reconnects",
                        self.target()
                    )));
                }
                let (tx, rx) = oneshot::channel();
                // Handed over under the book's lock, so the order of `queued` is the
                // order of the client's channel, which the event loop writes in.
                b.queued.push_back(tx);
                if let Err(e) = session.client.try_publish(
                    topic.into_owned(),
                    QoS::AtLeastOnce,
                    self.opts.retain,
                    payload,
                ) {
                    b.queued.pop_back();
                    return Err(SinkError::Unavailable(format!(
                        "{}: {}: too many publishes waiting for the connection; publishing \
                         resumes when it drains",
                        self.target(),
                        self.scrub.clean(e)
                    )));
                }
                rx
            };
            match tokio::time::timeout(self.opts.timeout, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(SinkError::Unavailable(format!(
                    "{}: the connection ended before the puback: the next publish reconnects",
                    self.target()
                ))),
                Err(_) => Err(SinkError::Unavailable(format!(
                    "{}: no puback within {}: check the broker; publishing resumes when it \
                     answers",
                    self.target(),
                    show(self.opts.timeout)
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_mqtt_cannot_publish_to_are_poison() {
        for t in ["orders/placed", "a", "a.b c"] {
            assert!(check_topic(t).is_ok(), "{t}");
        }
        for t in ["", "a/+", "a/#", "$SYS/x", "a\0b"] {
            assert!(matches!(check_topic(t), Err(SinkError::Poison(_))), "{t}");
        }
    }
}
