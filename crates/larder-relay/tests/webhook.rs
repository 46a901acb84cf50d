//! The HTTP webhook sink against a real HTTP server started in the test (hyper, on
//! 127.0.0.1 and a random port): the recorded requests, status codes, timeouts, headers
//! HTTP cannot carry, and a webhook that is down.

#[macro_use]
mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Msg, assert_unavailable_within, batch, publish_all, publish_until_ok};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use larder_core::outbox::{Sink, SinkError};
use larder_relay::{HttpOptions, HttpSink};

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    query: Option<String>,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

/// A webhook server: `/status/<code>` answers `<code>`, `/slow` answers after 3 s, any
/// other path `200`.
struct Hook {
    port: u16,
    seen: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Hook {
    async fn start() -> Result<Hook, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot bind: {e}"))?;
        Hook::serve(listener)
    }

    async fn start_on(port: u16) -> Result<Hook, String> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| format!("cannot bind {port}: {e}"))?;
        Hook::serve(listener)
    }

    fn serve(listener: tokio::net::TcpListener) -> Result<Hook, String> {
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let state = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(req, state).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Hook { port, seen, task })
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(req: Request<Incoming>, seen: Arc<Mutex<Vec<Recorded>>>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Recorded {
            method: parts.method.to_string(),
            path: path.clone(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            body,
        });
    let status = if let Some(code) = path.strip_prefix("/status/") {
        code.parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::OK)
    } else if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(3)).await;
        StatusCode::OK
    } else {
        StatusCode::OK
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(b"recorded")));
    *resp.status_mut() = status;
    resp
}

fn header<'a>(r: &'a Recorded, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn the_webhook_receives_payloads_with_idempotency_and_larder_headers_in_order() {
    let test = "the_webhook_receives_payloads_with_idempotency_and_larder_headers_in_order";
    let hook = or_skip!(test, Hook::start().await);
    let sink = HttpSink::from_url(hook.url("/hooks?topic_path=true&code=abc"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sink.system(), "http");
    let mut msgs = batch("orders placed/v1", "customer-7", 15);
    msgs[0] = msgs[0]
        .clone()
        .header("content-type", "application/json")
        .header("larder-actor", "Zoë");
    publish_all(&sink, &msgs).await;
    let keyless = Msg::new("orders", None, b"no key".to_vec());
    publish_all(&sink, std::slice::from_ref(&keyless)).await;

    let seen = hook.seen();
    assert_eq!(seen.len(), msgs.len() + 1);
    for (m, r) in msgs.iter().zip(&seen) {
        assert_eq!(r.method, "POST");
        // The topic is one percent-encoded path segment; larder's parameter is gone,
        // the webhook's own stays.
        assert_eq!(r.path, "/hooks/orders%20placed%2Fv1");
        assert_eq!(r.query.as_deref(), Some("code=abc"));
        assert_eq!(r.body, m.payload);
        let id = m.id.to_string();
        assert_eq!(header(r, "idempotency-key"), Some(id.as_str()));
        assert_eq!(header(r, "x-larder-message-id"), Some(id.as_str()));
        assert_eq!(header(r, "x-larder-key"), Some("customer-7"));
        assert_eq!(header(r, "x-larder-topic"), Some("orders placed/v1"));
        for (k, v) in &m.headers {
            if k == "larder-actor" {
                continue;
            }
            assert_eq!(header(r, k), Some(v.as_str()), "header {k}");
        }
    }
    assert_eq!(header(&seen[0], "content-type"), Some("application/json"));
    assert_eq!(
        seen[0].headers.get("larder-actor").map(|v| v.as_bytes()),
        Some("Zoë".as_bytes())
    );
    assert_eq!(
        header(&seen[1], "content-type"),
        Some("application/octet-stream")
    );
    let last = &seen[msgs.len()];
    assert_eq!(last.path, "/hooks/orders");
    assert_eq!(header(last, "x-larder-key"), None);
}

#[tokio::test]
async fn status_codes_decide_ok_failed_and_poison() {
    let test = "status_codes_decide_ok_failed_and_poison";
    let hook = or_skip!(test, Hook::start().await);
    let m = Msg::new("t", Some("k"), b"x".to_vec());
    for code in [
        200u16, 201, 202, 204, 408, 429, 500, 502, 503, 400, 401, 404, 409, 422,
    ] {
        let sink = HttpSink::from_url(hook.url(&format!("/status/{code}")))
            .unwrap_or_else(|e| panic!("{e}"));
        let r = sink.publish(m.out()).await;
        match code {
            200..=299 => assert_eq!(r, Ok(()), "{code}"),
            408 | 429 | 500..=599 => {
                assert!(matches!(r, Err(SinkError::Failed(_))), "{code}: {r:?}")
            }
            _ => assert!(matches!(r, Err(SinkError::Poison(_))), "{code}: {r:?}"),
        }
    }
    assert_eq!(hook.seen().len(), 14);
}

#[tokio::test]
async fn a_slow_webhook_times_out_as_failed() {
    let test = "a_slow_webhook_times_out_as_failed";
    let hook = or_skip!(test, Hook::start().await);
    let sink =
        HttpSink::new(HttpOptions::new(hook.url("/slow")).with_timeout(Duration::from_millis(300)))
            .unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    let r = sink.publish(Msg::new("t", None, b"x".to_vec()).out()).await;
    assert!(
        matches!(r, Err(SinkError::Failed(ref e)) if e.contains("no response within")),
        "{r:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn headers_http_cannot_carry_are_poison_and_nothing_is_sent() {
    let test = "headers_http_cannot_carry_are_poison_and_nothing_is_sent";
    let hook = or_skip!(test, Hook::start().await);
    let sink = HttpSink::from_url(hook.url("/hooks")).unwrap_or_else(|e| panic!("{e}"));
    for m in [
        Msg::new("t", None, b"x".to_vec()).header("bad name", "v"),
        Msg::new("t", None, b"x".to_vec()).header("a:b", "v"),
        Msg::new("t", None, b"x".to_vec()).header("content-length", "1"),
        Msg::new("t", None, b"x".to_vec()).header("x-larder-key", "forged"),
        Msg::new("t", None, b"x".to_vec()).header("x-ok", "line\r\nbreak"),
    ] {
        let r = sink.publish(m.out()).await;
        assert!(
            matches!(r, Err(SinkError::Poison(_))),
            "{:?}: {r:?}",
            m.headers
        );
    }
    assert!(hook.seen().is_empty());
}

#[tokio::test]
async fn a_webhook_that_is_down_is_unavailable_and_publishing_resumes_when_it_is_back() {
    let test = "a_webhook_that_is_down_is_unavailable_and_publishing_resumes_when_it_is_back";
    let port = common::free_port();
    let sink = HttpSink::from_url(format!("http://127.0.0.1:{port}/hooks"))
        .unwrap_or_else(|e| panic!("{e}"));
    let m = Msg::new("t", Some("k"), b"x".to_vec());
    let start = Instant::now();
    let e = assert_unavailable_within(sink.publish(m.out()).await, start, Duration::from_secs(4));
    assert!(e.contains("cannot connect"), "{e}");

    let hook = or_skip!(test, Hook::start_on(port).await);
    publish_until_ok(&sink, &m, Duration::from_secs(10)).await;
    assert_eq!(hook.seen().len(), 1);
}

#[tokio::test]
async fn url_credentials_become_basic_auth_and_never_show() {
    let test = "url_credentials_become_basic_auth_and_never_show";
    let hook = or_skip!(test, Hook::start().await);
    let url = hook
        .url("/hooks")
        .replace("http://", "http://app:hunter2secret@");
    let sink = HttpSink::new(
        HttpOptions::from_url(url)
            .unwrap_or_else(|e| panic!("{e}"))
            .with_header("x-api-key", "k3y-secret"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let debug = format!("{sink:?}");
    assert!(
        !debug.contains("hunter2secret") && !debug.contains("k3y-secret"),
        "{debug}"
    );
    publish_all(&sink, &[Msg::new("t", None, b"x".to_vec())]).await;
    let seen = hook.seen();
    // base64("app:hunter2secret")
    assert_eq!(
        header(&seen[0], "authorization"),
        Some("Basic YXBwOmh1bnRlcjJzZWNyZXQ=")
    );
    assert_eq!(header(&seen[0], "x-api-key"), Some("k3y-secret"));
}
