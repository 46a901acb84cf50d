//! The RabbitMQ sink: publisher confirms, mandatory routing and larder's own reconnect.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use larder_core::backend::BoxFuture;
use larder_core::error::quote;
use larder_core::outbox::{Outgoing, Sink, SinkError};
use larder_core::{Error, Result};
use tokio::sync::Mutex;

use crate::url::SinkUrl;
use crate::util::{Gate, Params, Scrub, content_type, show};

const PARAMS: &[&str] = &[
    "exchange",
    "routing_key",
    "mandatory",
    "persistent",
    "timeout_ms",
    "connect_timeout_ms",
    "heartbeat",
    "channel_max",
    "frame_max",
    "connection_timeout",
    "auth_mechanism",
];

/// The AMQP header carrying the message's ordering key.
pub const KEY_HEADER: &str = "larder-key";
/// The AMQP header carrying the message's topic (useful when the routing key is not the
/// topic).
pub const TOPIC_HEADER: &str = "larder-topic";

/// Which routing key a message is published with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RoutingKey {
    /// The message's topic (the default; with the default exchange, the queue named by
    /// the topic). URL: `routing_key={topic}` or absent.
    #[default]
    Topic,
    /// The message's ordering key, or its topic when it has none. URL:
    /// `routing_key={key}`.
    Key,
    /// The same routing key for every message. URL: `routing_key=<text>`.
    Fixed(String),
}

/// Options of an [`AmqpSink`].
#[derive(Debug, Clone)]
pub struct AmqpOptions {
    url: SinkUrl,
    exchange: String,
    routing_key: RoutingKey,
    mandatory: bool,
    persistent: bool,
    timeout: Duration,
    connect_timeout: Duration,
}

impl AmqpOptions {
    /// Options for the broker at `url` (`amqp://user:password@host[:port][/vhost]`), with
    /// the defaults: the default exchange `""`, the topic as routing key, `mandatory`
    /// and persistent messages, a 10 s confirm timeout and a 5 s connect timeout.
    pub fn new(url: impl Into<SinkUrl>) -> AmqpOptions {
        AmqpOptions {
            url: url.into(),
            exchange: String::new(),
            routing_key: RoutingKey::Topic,
            mandatory: true,
            persistent: true,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// Options from a URL whose query may set them: `exchange`, `routing_key` (`{topic}`,
    /// `{key}` or a fixed text), `mandatory`, `persistent`, `timeout_ms` (confirm wait),
    /// `connect_timeout_ms`; `heartbeat`, `channel_max`, `frame_max`,
    /// `connection_timeout` and `auth_mechanism` are left to the client.
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] for a URL that is not `amqp://host…`, an unknown
    /// parameter or a malformed value.
    pub fn from_url(url: impl Into<SinkUrl>) -> Result<AmqpOptions> {
        let url = url.into();
        let u = url.parse_as("amqp")?;
        let mut p = Params::new("amqp", &u);
        let mut o = AmqpOptions::new(url.clone());
        if let Some(x) = p.take("exchange") {
            o.exchange = x;
        }
        if let Some(rk) = p.take("routing_key") {
            o.routing_key = match rk.as_str() {
                "{topic}" => RoutingKey::Topic,
                "{key}" => RoutingKey::Key,
                _ => RoutingKey::Fixed(rk),
            };
        }
        if let Some(b) = p.take_bool("mandatory")? {
            o.mandatory = b;
        }
        if let Some(b) = p.take_bool("persistent")? {
            o.persistent = b;
        }
        if let Some(t) = p.take_millis("timeout_ms")? {
            o.timeout = t;
        }
        if let Some(t) = p.take_millis("connect_timeout_ms")? {
            o.connect_timeout = t;
        }
        for k in [
            "heartbeat",
            "channel_max",
            "frame_max",
            "connection_timeout",
            "auth_mechanism",
        ] {
            p.take(k);
        }
        p.finish(PARAMS)?;
        Ok(o)
    }

    /// The exchange to publish to (default `""`, the default exchange). It must exist:
    /// publishing to a missing exchange closes the channel.
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// The routing key (default: the topic).
    pub fn with_routing_key(mut self, rk: RoutingKey) -> Self {
        self.routing_key = rk;
        self
    }

    /// Whether the broker must route each message to a queue (default `true`): an
    /// unroutable message then comes back and the publish fails, instead of vanishing.
    pub fn with_mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// Whether messages are persistent (delivery mode 2, default `true`).
    pub fn with_persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    /// How long a publish waits for the publisher confirm (default 10 s); on expiry it
    /// reports an outage and the next publish reconnects.
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// How long connecting (and opening the channel) may take (default 5 s).
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The exchange.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key rule.
    pub fn routing_key(&self) -> &RoutingKey {
        &self.routing_key
    }

    /// The broker URL (redacted when shown).
    pub fn url(&self) -> &SinkUrl {
        &self.url
    }
}

/// One connection and its confirm-mode channel.
struct Live {
    generation: u64,
    conn: Connection,
    channel: Channel,
}

/// Publishes each message to RabbitMQ on a channel in confirm mode and waits for the
/// broker's confirm.
///
/// Properties: `message_id` = the message id, `content_type` from the `content-type`
/// header, `timestamp` = enqueue time (seconds), delivery mode 2 unless
/// [`AmqpOptions::with_persistent`] is off; the message headers go as AMQP headers
/// (long strings), plus [`KEY_HEADER`] and [`TOPIC_HEADER`].
///
/// One connection with one channel is shared; publishes on a channel are delivered in
/// order, so one key's messages (published one after the other) keep their order.
/// larder reconnects itself rather than relying on lapin's automatic recovery: a
/// connection or channel error makes that publish (and those in flight with it) report
/// an outage and drops the connection; the next publish opens a new one, paced by a
/// backoff (100 ms doubling to 5 s) while the broker stays down.
///
/// # Errors
///
/// - [`SinkError::Unavailable`]: no connection, a connection or channel error (also a
///   missing exchange, which RabbitMQ answers by closing the channel: declare it), or no
///   confirm within the timeout.
/// - [`SinkError::Failed`]: a nack, or a `mandatory` message returned unroutable (no
///   queue is bound for its routing key). Both are retried with backoff rather than
///   dead-lettered at once: a binding or queue added by a deploy makes the retry succeed.
pub struct AmqpSink {
    opts: AmqpOptions,
    uri: AMQPUri,
    target: String,
    scrub: Scrub,
    state: Mutex<Option<Arc<Live>>>,
    gate: std::sync::Mutex<Gate>,
    generations: AtomicU64,
}

impl fmt::Debug for AmqpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSink")
            .field("opts", &self.opts)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl AmqpSink {
    /// A sink with `opts`; it connects on its first publish.
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] when the URL is not a valid AMQP URI.
    pub fn new(opts: AmqpOptions) -> Result<AmqpSink> {
        let u = opts.url.parse_as("amqp")?;
        let scrub = Scrub::of(&opts.url);
        let rest = {
            let mut p = Params::new("amqp", &u);
            for k in [
                "exchange",
                "routing_key",
                "mandatory",
                "persistent",
                "timeout_ms",
                "connect_timeout_ms",
            ] {
                p.take(k);
            }
            p.rest()
        };
        let mut client_url = u.clone();
        if rest.is_empty() {
            client_url.set_query(None);
        } else {
            client_url.query_pairs_mut().clear().extend_pairs(rest);
        }
        let uri = AMQPUri::from_str(client_url.as_str()).map_err(|e| {
            Error::Configuration(format!(
                "the amqp sink url `{}` is refused by the client ({}): fix it",
                quote(&opts.url.redacted()),
                scrub.clean(e)
            ))
        })?;
        let target = format!(
            "rabbitmq {}:{}",
            u.host_str().unwrap_or_default(),
            u.port().unwrap_or(5672)
        );
        Ok(AmqpSink {
            opts,
            uri,
            target,
            scrub,
            state: Mutex::new(None),
            gate: std::sync::Mutex::new(Gate::new(
                Duration::from_millis(100),
                Duration::from_secs(5),
            )),
            generations: AtomicU64::new(0),
        })
    }

    /// A sink for the broker at `url` (see [`AmqpOptions::from_url`]).
    ///
    /// # Errors
    ///
    /// As [`AmqpOptions::from_url`] and [`AmqpSink::new`].
    pub fn from_url(url: impl Into<SinkUrl>) -> Result<AmqpSink> {
        AmqpSink::new(AmqpOptions::from_url(url)?)
    }

    /// The options.
    pub fn options(&self) -> &AmqpOptions {
        &self.opts
    }

    fn unavailable(&self, what: impl fmt::Display, hint: &str) -> SinkError {
        SinkError::Unavailable(format!(
            "{}: {}: {hint}",
            self.target,
            self.scrub.clean(what)
        ))
    }

    /// The live channel, connecting when there is none.
    async fn live(&self) -> std::result::Result<Arc<Live>, SinkError> {
        let mut slot = self.state.lock().await;
        if let Some(live) = slot.as_ref() {
            if live.conn.status().connected() && live.channel.status().connected() {
                return Ok(live.clone());
            }
            let dead = slot.take();
            close(dead);
        }
        if let Err(wait) = self.gate.lock().unwrap_or_else(|p| p.into_inner()).check() {
            return Err(self.unavailable(
                "not connected",
                &format!(
                    "start the broker or fix the url; next connect attempt in {}",
                    show(wait)
                ),
            ));
        }
        let connect = async {
            let props = ConnectionProperties::default().with_connection_name("larder-relay".into());
            let conn = Connection::connect_uri(self.uri.clone(), props).await?;
            let channel = conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>((conn, channel))
        };
        let r = tokio::time::timeout(self.opts.connect_timeout, connect).await;
        let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        match r {
            Ok(Ok((conn, channel))) => {
                gate.succeeded();
                let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(target: "larder_relay", broker = %self.target, generation, "amqp connected");
                let live = Arc::new(Live {
                    generation,
                    conn,
                    channel,
                });
                *slot = Some(live.clone());
                Ok(live)
            }
            Ok(Err(e)) => {
                gate.failed();
                let auth = matches!(e.kind(), lapin::ErrorKind::AuthProviderError(_))
                    || e.to_string().contains("ACCESS_REFUSED");
                Err(self.unavailable(
                    &e,
                    if auth {
                        "fix the user, password or vhost in the sink url"
                    } else {
                        "start the broker or fix the url; publishing resumes when it answers"
                    },
                ))
            }
            Err(_) => {
                gate.failed();
                Err(self.unavailable(
                    format!("no connection within {}", show(self.opts.connect_timeout)),
                    "start the broker or fix the url",
                ))
            }
        }
    }

    /// Drops the connection of `generation` (if it is still the current one) so that the
    /// next publish reconnects.
    async fn invalidate(&self, generation: u64) {
        let mut slot = self.state.lock().await;
        if slot.as_ref().is_some_and(|l| l.generation == generation) {
            let dead = slot.take();
            close(dead);
        }
    }

    fn properties(&self, m: &Outgoing<'_>) -> BasicProperties {
        let mut headers = FieldTable::default();
        for (k, v) in m.headers {
            headers.insert(
                ShortString::from(k.as_str()),
                AMQPValue::LongString(LongString::from(v.as_str())),
            );
        }
        if let Some(k) = m.key {
            headers.insert(
                ShortString::from(KEY_HEADER),
                AMQPValue::LongString(LongString::from(k)),
            );
        }
        headers.insert(
            ShortString::from(TOPIC_HEADER),
            AMQPValue::LongString(LongString::from(m.topic)),
        );
        let mut props = BasicProperties::default()
            .with_message_id(ShortString::from(m.id.to_string()))
            .with_headers(headers)
            .with_delivery_mode(if self.opts.persistent { 2 } else { 1 });
        if let Ok(secs) = u64::try_from(m.enqueued_at_micros / 1_000_000) {
            props = props.with_timestamp(secs);
        }
        if let Some(ct) = content_type(m.headers) {
            props = props.with_content_type(ShortString::from(ct));
        }
        props
    }

    fn routing_key<'m>(&'m self, m: &Outgoing<'m>) -> &'m str {
        match &self.opts.routing_key {
            RoutingKey::Topic => m.topic,
            RoutingKey::Key => m.key.unwrap_or(m.topic),
            RoutingKey::Fixed(rk) => rk,
        }
    }
}

/// Closes a dropped connection in the background (politely, so the broker does not log
/// an abrupt disconnect; an error just means it was already gone).
fn close(live: Option<Arc<Live>>) {
    if let Some(live) = live {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                live.conn
                    .close(200, ShortString::from("larder-relay reconnects")),
            )
            .await;
        });
    }
}

impl Sink for AmqpSink {
    fn system(&self) -> &'static str {
        "rabbitmq"
    }

    fn publish<'a>(&'a self, m: Outgoing<'a>) -> BoxFuture<'a, std::result::Result<(), SinkError>> {
        Box::pin(async move {
            let live = self.live().await?;
            let routing_key = self.routing_key(&m);
            let sent = live
                .channel
                .basic_publish(
                    ShortString::from(self.opts.exchange.as_str()),
                    ShortString::from(routing_key),
                    BasicPublishOptions {
                        mandatory: self.opts.mandatory,
                        immediate: false,
                    },
                    m.payload,
                    self.properties(&m),
                )
                .await;
            let confirm = match sent {
                Ok(c) => c,
                Err(e) => {
                    self.invalidate(live.generation).await;
                    return Err(self.unavailable(&e, "the next publish reconnects"));
                }
            };
            match tokio::time::timeout(self.opts.timeout, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => Ok(()),
                Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(SinkError::Failed(format!(
                    "{} returned the message as unroutable ({} {}): bind a queue to exchange \
                     `{}` for routing key `{}`",
                    self.target,
                    returned.reply_code,
                    self.scrub.clean(returned.reply_text.as_str()),
                    quote(&self.opts.exchange),
                    quote(routing_key)
                ))),
                Ok(Ok(Confirmation::Nack(_))) => Err(SinkError::Failed(format!(
                    "{} nacked the message (it could not store it): check the queue's limits \
                     and the broker's disk and memory alarms",
                    self.target
                ))),
                Ok(Ok(Confirmation::NotRequested)) => {
                    // The channel is in confirm mode, so this cannot be an acknowledgement.
                    self.invalidate(live.generation).await;
                    Err(self.unavailable(
                        "the channel lost confirm mode",
                        "the next publish reconnects",
                    ))
                }
                Ok(Err(e)) => {
                    self.invalidate(live.generation).await;
                    let hint = if e.to_string().contains("NOT_FOUND") {
                        "declare the exchange (the channel was closed for it); the next \
                         publish reconnects"
                    } else {
                        "the next publish reconnects"
                    };
                    Err(self.unavailable(&e, hint))
                }
                Err(_) => {
                    self.invalidate(live.generation).await;
                    Err(self.unavailable(
                        format!("no publisher confirm within {}", show(self.opts.timeout)),
                        "the next publish reconnects",
                    ))
                }
            }
        })
    }
}
