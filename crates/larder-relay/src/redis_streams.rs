//! The Redis Streams sink: one `XADD` per message over a reconnecting multiplexed
//! connection.

use std::fmt;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{ErrorKind, RedisError, ServerErrorKind};
use larder_core::backend::BoxFuture;
use larder_core::error::quote;
use larder_core::outbox::{Outgoing, Sink, SinkError};
use larder_core::{Error, Result};
use tokio::sync::OnceCell;

use crate::url::SinkUrl;
use crate::util::{Params, Scrub, prefixed, show};

const PARAMS: &[&str] = &[
    "prefix",
    "maxlen",
    "timeout_ms",
    "connect_timeout_ms",
    "protocol",
];

/// Options of a [`RedisSink`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    url: SinkUrl,
    prefix: String,
    maxlen: Option<u64>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl RedisOptions {
    /// Options for the server at `url` (`redis://[user:password@]host[:port][/db]`), with
    /// the defaults: no stream prefix, no `MAXLEN`, a 5 s response timeout and a 3 s
    /// connect timeout.
    pub fn new(url: impl Into<SinkUrl>) -> RedisOptions {
        RedisOptions {
            url: url.into(),
            prefix: String::new(),
            maxlen: None,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
        }
    }

    /// Options from a URL whose query may set them: `prefix` (stream name prefix),
    /// `maxlen` (`XADD … MAXLEN ~ n`), `timeout_ms`, `connect_timeout_ms`; `protocol` is
    /// left to the client (`resp2`/`resp3`).
    ///
    /// ```
    /// # #[cfg(feature = "redis")] {
    /// let o = larder_relay::RedisOptions::from_url("redis://127.0.0.1/?maxlen=1000&prefix=app.").unwrap();
    /// assert_eq!(o.maxlen(), Some(1000));
    /// assert_eq!(o.prefix(), "app.");
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] for a URL that is not `redis://host…`, an unknown
    /// parameter or a malformed value.
    pub fn from_url(url: impl Into<SinkUrl>) -> Result<RedisOptions> {
        let url = url.into();
        let u = url.parse_as("redis")?;
        let mut p = Params::new("redis", &u);
        let mut o = RedisOptions::new(url.clone());
        if let Some(prefix) = p.take("prefix") {
            o.prefix = prefix;
        }
        o.maxlen = p.take_u64("maxlen")?;
        if let Some(t) = p.take_millis("timeout_ms")? {
            o.timeout = t;
        }
        if let Some(t) = p.take_millis("connect_timeout_ms")? {
            o.connect_timeout = t;
        }
        p.take("protocol");
        p.finish(PARAMS)?;
        Ok(o)
    }

    /// Prepends `prefix` to every topic to name the stream (default: none).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Caps each stream at about `n` entries (`MAXLEN ~ n`, trimmed by whole nodes, so
    /// cheaply) (default: no cap).
    pub fn with_maxlen(mut self, n: Option<u64>) -> Self {
        self.maxlen = n;
        self
    }

    /// How long a publish waits for the `XADD` reply (default 5 s); on expiry it reports
    /// an outage.
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// How long connecting may take (default 3 s).
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The stream name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The `MAXLEN ~` cap.
    pub fn maxlen(&self) -> Option<u64> {
        self.maxlen
    }

    /// The server URL (redacted when shown).
    pub fn url(&self) -> &SinkUrl {
        &self.url
    }
}

/// Publishes each message to the Redis stream named by its topic (after an optional
/// prefix) with
/// `XADD <stream> [MAXLEN ~ n] * id <uuid> key <key or empty> payload <bytes> h:<name> <value>…`.
///
/// The connection is multiplexed: concurrent publishes (different keys) are pipelined on
/// it, and Redis executes them in the order they were sent, so one key's messages, which
/// the relay publishes one after the other, keep their order. It is opened on the first
/// publish and re-opened in the background after an outage (`ConnectionManager`).
///
/// # Errors
///
/// - [`SinkError::Unavailable`]: connection refused, reset or timed out, or the server
///   cannot take writes now (`LOADING`, `BUSY`, `MASTERDOWN`, `READONLY`, `TRYAGAIN`,
///   `CLUSTERDOWN`, `OOM`), or authentication failed: none of these is the message's
///   fault.
/// - [`SinkError::Poison`]: `WRONGTYPE` (the stream's name holds another type of key) and
///   `NOPERM` (an ACL forbids the key): no retry can succeed until an operator steps in,
///   so the message is dead-lettered at once (and its key parked) to be replayed after
///   the fix.
/// - [`SinkError::Failed`]: any other error reply.
pub struct RedisSink {
    opts: RedisOptions,
    client: ::redis::Client,
    conn: OnceCell<ConnectionManager>,
    scrub: Scrub,
    target: String,
}

impl fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSink")
            .field("opts", &self.opts)
            .field("connected", &self.conn.initialized())
            .finish_non_exhaustive()
    }
}

impl RedisSink {
    /// A sink with `opts`; it connects on its first publish.
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] when the client refuses the URL.
    pub fn new(opts: RedisOptions) -> Result<RedisSink> {
        let u = opts.url.parse_as("redis")?;
        let scrub = Scrub::of(&opts.url);
        // The client reads `protocol` itself; larder's own parameters are removed.
        let mut client_url = u.clone();
        let rest: Vec<(String, String)> = {
            let mut p = Params::new("redis", &u);
            for k in ["prefix", "maxlen", "timeout_ms", "connect_timeout_ms"] {
                p.take(k);
            }
            p.rest()
        };
        if rest.is_empty() {
            client_url.set_query(None);
        } else {
            client_url.query_pairs_mut().clear().extend_pairs(rest);
        }
        let client = ::redis::Client::open(client_url).map_err(|e| {
            Error::Configuration(format!(
                "the redis sink url `{}` is refused by the client ({}): fix it",
                quote(&opts.url.redacted()),
                scrub.clean(&e)
            ))
        })?;
        let target = format!(
            "redis {}:{}",
            u.host_str().unwrap_or_default(),
            u.port().unwrap_or(6379)
        );
        Ok(RedisSink {
            opts,
            client,
            conn: OnceCell::new(),
            scrub,
            target,
        })
    }

    /// A sink for the server at `url` with default options (see [`RedisOptions::from_url`]).
    ///
    /// # Errors
    ///
    /// As [`RedisOptions::from_url`] and [`RedisSink::new`].
    pub fn from_url(url: impl Into<SinkUrl>) -> Result<RedisSink> {
        RedisSink::new(RedisOptions::from_url(url)?)
    }

    /// The options.
    pub fn options(&self) -> &RedisOptions {
        &self.opts
    }

    async fn connection(&self) -> std::result::Result<ConnectionManager, SinkError> {
        self.conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.opts.connect_timeout))
                    .set_response_timeout(Some(self.opts.timeout))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(100))
                    .set_max_delay(Duration::from_secs(1));
                // Lazy: the first command connects, and the manager reconnects after a
                // connection is lost; nothing here waits for the server.
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await
            .cloned()
            .map_err(|e| self.map_error(&e))
    }

    fn map_error(&self, e: &RedisError) -> SinkError {
        let what = self.scrub.clean(e);
        let target = &self.target;
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
        {
            return SinkError::Unavailable(format!(
                "{target}: {what}: start the server or fix the url; publishing resumes when \
                 it answers"
            ));
        }
        match e.kind() {
            ErrorKind::AuthenticationFailed => SinkError::Unavailable(format!(
                "{target}: authentication failed ({what}): fix the user or password in the \
                 sink url"
            )),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly,
            ) => SinkError::Unavailable(format!(
                "{target} cannot take writes now ({what}): point the url at the primary or \
                 wait; publishing resumes by itself"
            )),
            ErrorKind::Server(ServerErrorKind::NoPerm) => SinkError::Poison(format!(
                "{target} refuses the stream ({what}): grant the relay's user write access \
                 to it, then replay the dead letter"
            )),
            _ => match e.code() {
                Some("OOM") | Some("BUSY") => SinkError::Unavailable(format!(
                    "{target} is out of memory or busy ({what}): free memory, raise \
                     maxmemory or cap the streams with `maxlen`"
                )),
                Some("WRONGTYPE") => SinkError::Poison(format!(
                    "{target}: the stream name holds a key of another type ({what}): rename \
                     or delete that key (or set a `prefix`), then replay the dead letter"
                )),
                _ => SinkError::Failed(format!("{target} refused the XADD: {what}")),
            },
        }
    }
}

impl Sink for RedisSink {
    fn system(&self) -> &'static str {
        "redis"
    }

    fn publish<'a>(&'a self, m: Outgoing<'a>) -> BoxFuture<'a, std::result::Result<(), SinkError>> {
        Box::pin(async move {
            let stream = prefixed(&self.opts.prefix, m.topic);
            let mut cmd = ::redis::cmd("XADD");
            cmd.arg(stream.as_ref());
            if let Some(n) = self.opts.maxlen {
                cmd.arg("MAXLEN").arg("~").arg(n);
            }
            cmd.arg("*")
                .arg("id")
                .arg(m.id.to_string())
                .arg("key")
                .arg(m.key.unwrap_or(""))
                .arg("payload")
                .arg(m.payload);
            for (name, value) in m.headers {
                cmd.arg(format!("h:{name}")).arg(value.as_str());
            }
            let mut conn = self.connection().await?;
            // The response timeout bounds one command; this bounds the wait for a
            // reconnect too.
            let limit = self.opts.timeout + self.opts.connect_timeout;
            match tokio::time::timeout(limit, cmd.query_async::<::redis::Value>(&mut conn)).await {
                Ok(Ok(_entry_id)) => Ok(()),
                Ok(Err(e)) => Err(self.map_error(&e)),
                Err(_) => Err(SinkError::Unavailable(format!(
                    "{}: no reply to XADD within {}: check the server; publishing resumes \
                     when it answers",
                    self.target,
                    show(limit)
                ))),
            }
        })
    }
}
