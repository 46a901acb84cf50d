//! Helpers shared by the sink tests: the skip policy, messages, private server instances
//! and a TCP proxy that can be cut.
// Each test binary uses some of these.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use larder_core::outbox::{MessageId, Outgoing, Sink, SinkError};

/// Whether an unreachable backend fails the test (CI) instead of skipping it.
pub(crate) fn required() -> bool {
    std::env::var("LARDER_REQUIRE_BACKENDS").is_ok_and(|v| v == "1")
}

/// Reports a test that cannot run: a failure under `LARDER_REQUIRE_BACKENDS=1`, else a
/// line on standard error (written directly, so the test harness's capture cannot hide
/// it).
pub(crate) fn skip(test: &str, reason: &str) {
    if required() {
        panic!("{test}: LARDER_REQUIRE_BACKENDS=1 but {reason}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED (did not run) {test}: {reason}");
}

/// `Ok(v)` goes on; `Err(reason)` skips (or fails) the test and returns from it.
macro_rules! or_skip {
    ($test:expr, $r:expr) => {
        match $r {
            Ok(v) => v,
            Err(reason) => {
                $crate::common::skip($test, &reason);
                return;
            }
        }
    };
}

/// The backend URL from `env`, or `default`, once a TCP connection to it succeeds.
pub(crate) async fn backend(env: &str, default: &str) -> Result<String, String> {
    let url = std::env::var(env).unwrap_or_else(|_| default.to_owned());
    let u = url::Url::parse(&url).map_err(|e| format!("{env} does not parse: {e}"))?;
    let host = u.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = u.port_or_known_default().unwrap_or(0);
    match tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(url),
        Ok(Err(e)) => Err(format!("{host}:{port} is unreachable ({e}); set {env}")),
        Err(_) => Err(format!("{host}:{port} does not answer; set {env}")),
    }
}

/// A unique name for this test's streams, queues and topics.
pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// An owned message, lent to a sink as [`Outgoing`].
#[derive(Debug, Clone)]
pub(crate) struct Msg {
    pub(crate) id: MessageId,
    pub(crate) topic: String,
    pub(crate) key: Option<String>,
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: BTreeMap<String, String>,
}

impl Msg {
    pub(crate) fn new(topic: &str, key: Option<&str>, payload: impl Into<Vec<u8>>) -> Msg {
        Msg {
            id: MessageId::new(),
            topic: topic.to_owned(),
            key: key.map(str::to_owned),
            payload: payload.into(),
            headers: BTreeMap::new(),
        }
    }

    pub(crate) fn header(mut self, k: &str, v: &str) -> Msg {
        self.headers.insert(k.to_owned(), v.to_owned());
        self
    }

    pub(crate) fn out(&self) -> Outgoing<'_> {
        Outgoing {
            id: self.id,
            topic: &self.topic,
            key: self.key.as_deref(),
            payload: &self.payload,
            headers: &self.headers,
            attempt: 0,
            enqueued_at_micros: 1_700_000_000_000_000,
        }
    }
}

/// `n` messages of one key on `topic`, with binary payloads and two headers each.
pub(crate) fn batch(topic: &str, key: &str, n: usize) -> Vec<Msg> {
    (0..n)
        .map(|i| {
            let mut payload = format!("message {i} ").into_bytes();
            payload.extend_from_slice(&[0, 0xff, 0xfe, u8::try_from(i % 256).unwrap_or(0)]);
            Msg::new(topic, Some(key), payload)
                .header("larder-correlation-id", &format!("corr-{i}"))
                .header("seq", &i.to_string())
        })
        .collect()
}

/// Publishes `msgs` one after the other (as the relay does within one key).
pub(crate) async fn publish_all(sink: &dyn Sink, msgs: &[Msg]) {
    for m in msgs {
        if let Err(e) = sink.publish(m.out()).await {
            panic!("publishing {} failed: {e:?}", m.id);
        }
    }
}

/// Publishes `m` until it succeeds, for at most `within`; the error of each failed try
/// must be `Unavailable`.
pub(crate) async fn publish_until_ok(sink: &dyn Sink, m: &Msg, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        match sink.publish(m.out()).await {
            Ok(()) => return start.elapsed(),
            Err(SinkError::Unavailable(e)) => {
                assert!(
                    start.elapsed() < within,
                    "still unavailable after {within:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("expected Ok or Unavailable while reconnecting, got {e:?}"),
        }
    }
}

/// A port nothing listens on (bound and released).
pub(crate) fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A private server instance on a free port (redis-server, nats-server, mosquitto),
/// killed when dropped.
pub(crate) struct Server {
    program: String,
    args: Vec<String>,
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// Starts `program` with the arguments `args(port, dir)` and waits for its port.
    pub(crate) fn start(
        program: &str,
        args: impl Fn(u16, &std::path::Path) -> Vec<String>,
    ) -> Result<Server, String> {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique(&format!("larder-relay-{program}")));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut s = Server {
            program: program.to_owned(),
            args: args(port, &dir),
            port,
            dir,
            child: None,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {} ({e}); install it or put it in PATH",
                    self.program
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !port_open(self.port) {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!("{} exited at start: {status}", self.program));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not listen on {} within 10 s",
                    self.program, self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown) and waits until its port
    /// refuses connections.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while port_open(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the server again on the same port (and data directory).
    pub(crate) fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn()
    }

    pub(crate) fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy on a free port in front of a real server: [`Proxy::cut`] drops every
/// connection and stops listening (an outage as the client sees it), [`Proxy::resume`]
/// listens again on the same port. For servers too heavy to start privately (RabbitMQ).
pub(crate) struct Proxy {
    pub(crate) port: u16,
    upstream: String,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    pub(crate) async fn start(upstream: &str) -> Result<Proxy, String> {
        let mut p = Proxy {
            port: 0,
            upstream: upstream.to_owned(),
            tasks: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot bind a proxy port: {e}"))?;
        p.port = listener.local_addr().map_err(|e| e.to_string())?.port();
        p.serve(listener);
        Ok(p)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let upstream = self.upstream.clone();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(upstream.as_str()).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(accept);
    }

    /// Drops every proxied connection and the listener.
    pub(crate) async fn cut(&self) {
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listens again on the same port.
    pub(crate) async fn resume(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => {
                    self.serve(l);
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("cannot listen on {} again: {e}", self.port));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

/// Asserts that an error is `Unavailable` and returned within `limit` of `start`.
pub(crate) fn assert_unavailable_within(
    r: Result<(), SinkError>,
    start: Instant,
    limit: Duration,
) -> String {
    let took = start.elapsed();
    match r {
        Err(SinkError::Unavailable(e)) => {
            assert!(
                took < limit,
                "Unavailable took {took:?} (limit {limit:?}): {e}"
            );
            e
        }
        other => panic!("expected Unavailable, got {other:?} after {took:?}"),
    }
}
