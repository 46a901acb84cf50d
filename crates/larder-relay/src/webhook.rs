//! The HTTP webhook sink: one `POST` per message, with an idempotency key.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use larder_core::backend::BoxFuture;
use larder_core::error::quote;
use larder_core::outbox::{Outgoing, Sink, SinkError};
use larder_core::{Error, Result};

use crate::url::SinkUrl;
use crate::util::{Params, Scrub, content_type, show};

/// Headers larder sets on every request.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The message id (as [`IDEMPOTENCY_KEY`]).
pub const MESSAGE_ID_HEADER: &str = "x-larder-message-id";
/// The message's ordering key, when it has one.
pub const KEY_HEADER: &str = "x-larder-key";
/// The message's topic.
pub const TOPIC_HEADER: &str = "x-larder-topic";

/// Message header names a webhook request cannot take from a message: HTTP framing and
/// hop-by-hop headers, and larder's own.
const RESERVED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    IDEMPOTENCY_KEY,
    MESSAGE_ID_HEADER,
    KEY_HEADER,
    TOPIC_HEADER,
];

#[cfg(feature = "https")]
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
#[cfg(not(feature = "https"))]
type Connector = HttpConnector;

/// Options of an [`HttpSink`].
#[derive(Clone)]
pub struct HttpOptions {
    url: SinkUrl,
    topic_path: bool,
    timeout: Duration,
    connect_timeout: Duration,
    headers: Vec<(String, String)>,
}

impl fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Static headers often carry a token: names only.
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("HttpOptions")
            .field("url", &self.url)
            .field("topic_path", &self.topic_path)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("headers", &names)
            .finish()
    }
}

impl HttpOptions {
    /// Options for the webhook at `url` (`http://…` or, with the `https` feature,
    /// `https://…`), with the defaults: the URL as it is (no topic segment), a 10 s request
    /// timeout and a 3 s connect timeout. A `user:password@` in the URL becomes a
    /// `Basic` authorization header.
    pub fn new(url: impl Into<SinkUrl>) -> HttpOptions {
        HttpOptions {
            url: url.into(),
            topic_path: false,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            headers: Vec::new(),
        }
    }

    /// Options from a URL whose query may set them: `topic_path` (append the topic as a
    /// path segment), `timeout_ms`, `connect_timeout_ms`. Every other query parameter
    /// stays in the URL that is called.
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] for a URL that is not `http(s)://host…` or a malformed
    /// value.
    pub fn from_url(url: impl Into<SinkUrl>) -> Result<HttpOptions> {
        let url = url.into();
        let u = url.parse_as("http")?;
        let mut p = Params::new("http", &u);
        let mut o = HttpOptions::new(url.clone());
        if let Some(b) = p.take_bool("topic_path")? {
            o.topic_path = b;
        }
        if let Some(t) = p.take_millis("timeout_ms")? {
            o.timeout = t;
        }
        if let Some(t) = p.take_millis("connect_timeout_ms")? {
            o.connect_timeout = t;
        }
        Ok(o)
    }

    /// Appends the topic to the URL's path as one (percent-encoded) segment: `…/hooks` +
    /// `orders.placed` = `…/hooks/orders.placed` (default `false`).
    pub fn with_topic_path(mut self, on: bool) -> Self {
        self.topic_path = on;
        self
    }

    /// How long one request may take, response body included (default 10 s). On
    /// expiry the publish fails and is retried with backoff.
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// How long connecting may take (default 3 s); on expiry the webhook counts as
    /// unavailable.
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Adds a header to every request, e.g. `authorization: Bearer …` (its value is never
    /// shown by `Debug`).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The webhook URL (redacted when shown).
    pub fn url(&self) -> &SinkUrl {
        &self.url
    }
}

/// POSTs each message's payload to a webhook, with headers `Idempotency-Key` and
/// `X-Larder-Message-Id` (the message id), `X-Larder-Key` (when the message has a key),
/// `X-Larder-Topic`, `Content-Type` (the message's `content-type` header, else
/// `application/octet-stream`) and every message header.
///
/// Connections are pooled and reused (HTTP/1.1 keep-alive); one key's messages are
/// posted one after the other, each after the previous one's response.
///
/// # Errors
///
/// - `2xx`: `Ok`.
/// - [`SinkError::Failed`] (retried with backoff): `408`, `429`, `5xx`, a redirect (not
///   followed: configure the final URL), a request that timed out or a connection that
///   broke after the request was sent.
/// - [`SinkError::Poison`] (dead-lettered at once): any other `4xx`, and a message header
///   that HTTP cannot carry or that would override framing or larder's own headers.
/// - [`SinkError::Unavailable`]: the connection could not be made (refused, DNS,
///   connect timeout, TLS handshake).
pub struct HttpSink {
    opts: HttpOptions,
    base: url::Url,
    fixed: HeaderMap,
    client: Client<Connector, Full<Bytes>>,
    scrub: Scrub,
    target: String,
}

impl fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSink")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

impl HttpSink {
    /// A sink with `opts`.
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] for a URL that is not `http(s)://host…` (`https` needs
    /// the `https` feature), an invalid static header, or, with `https`, when the
    /// system's root certificates cannot be loaded.
    pub fn new(opts: HttpOptions) -> Result<HttpSink> {
        let u = opts.url.parse_as("http")?;
        let scrub = Scrub::of(&opts.url);
        match u.scheme() {
            "http" => {}
            #[cfg(feature = "https")]
            "https" => {}
            #[cfg(not(feature = "https"))]
            "https" => {
                return Err(Error::Configuration(
                    "`https://` webhooks are not compiled in: enable the `https` feature of \
                     larder-relay"
                        .into(),
                ));
            }
            other => {
                return Err(Error::Configuration(format!(
                    "the webhook url must be http:// or https://, not `{}`",
                    quote(other)
                )));
            }
        }
        let mut fixed = HeaderMap::new();
        if !u.username().is_empty() || u.password().is_some() {
            use base64::Engine as _;
            let user = decode(u.username());
            let pw = u.password().map(decode).unwrap_or_default();
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
            let mut v = HeaderValue::from_str(&format!("Basic {token}")).map_err(|_| {
                Error::Configuration("the webhook url's user or password cannot be sent".into())
            })?;
            v.set_sensitive(true);
            fixed.insert(hyper::header::AUTHORIZATION, v);
        }
        for (k, v) in &opts.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                Error::Configuration(format!(
                    "`{}` is not a valid http header name: use letters, digits and `-`",
                    quote(k)
                ))
            })?;
            let mut value = HeaderValue::from_str(v).map_err(|_| {
                Error::Configuration(format!(
                    "the value of header `{}` is not valid in http: remove line breaks",
                    quote(k)
                ))
            })?;
            value.set_sensitive(true);
            fixed.append(name, value);
        }
        // The URL that is called: without larder's parameters and without the userinfo.
        let mut base = u.clone();
        let rest = {
            let mut p = Params::new("http", &u);
            for k in ["topic_path", "timeout_ms", "connect_timeout_ms"] {
                p.take(k);
            }
            p.rest()
        };
        if rest.is_empty() {
            base.set_query(None);
        } else {
            base.query_pairs_mut().clear().extend_pairs(rest);
        }
        let _ = base.set_username("");
        let _ = base.set_password(None);
        base.set_fragment(None);

        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(opts.connect_timeout));
        http.set_nodelay(true);
        #[cfg(feature = "https")]
        let connector = {
            http.enforce_http(false);
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
                .map_err(|e| {
                    Error::Configuration(format!(
                        "cannot load the system's root certificates for https webhooks ({e}): \
                         install ca-certificates"
                    ))
                })?
                .https_or_http()
                .enable_http1()
                .wrap_connector(http)
        };
        #[cfg(not(feature = "https"))]
        let connector = http;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let target = format!(
            "webhook {}",
            crate::url::SinkUrl::new(base.as_str()).redacted()
        );
        Ok(HttpSink {
            opts,
            base,
            fixed,
            client,
            scrub,
            target,
        })
    }

    /// A sink for the webhook at `url` (see [`HttpOptions::from_url`]).
    ///
    /// # Errors
    ///
    /// As [`HttpOptions::from_url`] and [`HttpSink::new`].
    pub fn from_url(url: impl Into<SinkUrl>) -> Result<HttpSink> {
        HttpSink::new(HttpOptions::from_url(url)?)
    }

    /// The options.
    pub fn options(&self) -> &HttpOptions {
        &self.opts
    }

    fn request(&self, m: &Outgoing<'_>) -> std::result::Result<Request<Full<Bytes>>, SinkError> {
        let mut url = self.base.clone();
        if self.opts.topic_path
            && let Ok(mut segs) = url.path_segments_mut()
        {
            segs.pop_if_empty().push(m.topic);
        }
        let uri: Uri = url.as_str().parse().map_err(|e| {
            SinkError::Poison(format!(
                "topic `{}` does not make a valid url ({e}): rename the topic or turn \
                 topic_path off",
                quote(m.topic)
            ))
        })?;
        let mut req = Request::builder().method(Method::POST).uri(uri);
        let Some(h) = req.headers_mut() else {
            return Err(SinkError::Poison(
                "the webhook request could not be built".into(),
            ));
        };
        h.extend(self.fixed.clone());
        let poison = |name: &str, why: &str| {
            SinkError::Poison(format!(
                "header `{}` {why}: rename the header or fix its value",
                quote(name)
            ))
        };
        let ct = content_type(m.headers).unwrap_or("application/octet-stream");
        h.insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_bytes(ct.as_bytes())
                .map_err(|_| poison("content-type", "is not a valid http header value"))?,
        );
        for (k, v) in m.headers {
            if k.eq_ignore_ascii_case("content-type") {
                continue;
            }
            if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(k)) {
                return Err(poison(
                    k,
                    "is set by http or by larder and cannot come from a message",
                ));
            }
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| poison(k, "is not a valid http header name"))?;
            // Bytes, not `from_str`: UTF-8 values (an actor's name) go as they are
            // (RFC 9110 obs-text); only control characters are refused.
            let value = HeaderValue::from_bytes(v.as_bytes())
                .map_err(|_| poison(k, "has a value http cannot carry"))?;
            h.append(name, value);
        }
        let id = m.id.to_string();
        let id_value = HeaderValue::from_str(&id)
            .map_err(|_| poison(IDEMPOTENCY_KEY, "is not a valid http header value"))?;
        h.insert(IDEMPOTENCY_KEY, id_value.clone());
        h.insert(MESSAGE_ID_HEADER, id_value);
        if let Some(k) = m.key {
            h.insert(
                KEY_HEADER,
                HeaderValue::from_bytes(k.as_bytes())
                    .map_err(|_| poison(KEY_HEADER, "cannot carry the message key"))?,
            );
        }
        h.insert(
            TOPIC_HEADER,
            HeaderValue::from_bytes(m.topic.as_bytes())
                .map_err(|_| poison(TOPIC_HEADER, "cannot carry the topic"))?,
        );
        req.body(Full::new(Bytes::copy_from_slice(m.payload)))
            .map_err(|e| SinkError::Poison(format!("the webhook request could not be built: {e}")))
    }

    fn transport_error(&self, e: &hyper_util::client::legacy::Error) -> SinkError {
        let mut what = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            what.push_str(": ");
            what.push_str(&s.to_string());
            src = s.source();
        }
        let what = self.scrub.clean(what);
        if e.is_connect() {
            SinkError::Unavailable(format!(
                "{}: cannot connect ({what}): start the server or fix the url; publishing \
                 resumes when it answers",
                self.target
            ))
        } else {
            SinkError::Failed(format!(
                "{}: the request failed after it was sent ({what}): it is retried with backoff",
                self.target
            ))
        }
    }
}

/// The start of a response body, for error messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(" ({})", larder_core::error::one_line(text))
    }
}

impl Sink for HttpSink {
    fn system(&self) -> &'static str {
        "http"
    }

    fn publish<'a>(&'a self, m: Outgoing<'a>) -> BoxFuture<'a, std::result::Result<(), SinkError>> {
        Box::pin(async move {
            let req = self.request(&m)?;
            let exchange = async {
                let resp = self
                    .client
                    .request(req)
                    .await
                    .map_err(|e| self.transport_error(&e))?;
                let status = resp.status();
                let location = resp
                    .headers()
                    .get(hyper::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                // Read the body (bounded) so the connection can be reused, and for the
                // error message.
                let body = Limited::new(resp.into_body(), 64 * 1024)
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                Ok::<_, SinkError>((status, location, body))
            };
            let (status, location, body) =
                match tokio::time::timeout(self.opts.timeout, exchange).await {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(SinkError::Failed(format!(
                            "{}: no response within {}: it is retried with backoff; raise \
                             timeout_ms if the webhook is slow",
                            self.target,
                            show(self.opts.timeout)
                        )));
                    }
                };
            classify(
                &self.target,
                status,
                location.as_deref(),
                &body,
                &self.scrub,
            )
        })
    }
}

fn classify(
    target: &str,
    status: StatusCode,
    location: Option<&str>,
    body: &[u8],
    scrub: &Scrub,
) -> std::result::Result<(), SinkError> {
    let code = status.as_u16();
    let detail = scrub.clean(snippet(body));
    if status.is_success() {
        Ok(())
    } else if code == 408 || code == 429 || status.is_server_error() {
        Err(SinkError::Failed(format!(
            "{target} answered {status}{detail}: it is retried with backoff"
        )))
    } else if status.is_redirection() {
        Err(SinkError::Failed(format!(
            "{target} answered {status} (to `{}`): redirects are not followed; configure the \
             final url",
            quote(&scrub.clean(location.unwrap_or("?")))
        )))
    } else if status.is_client_error() {
        Err(SinkError::Poison(format!(
            "{target} refused the message with {status}{detail}: fix the message or the \
             webhook, then replay the dead letter"
        )))
    } else {
        Err(SinkError::Failed(format!(
            "{target} answered {status}{detail}: it is retried with backoff"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_outcomes() {
        let s = Scrub::default();
        let c = |code: u16| {
            classify(
                "webhook x",
                StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT),
                None,
                b"",
                &s,
            )
        };
        for ok in [200, 201, 202, 204] {
            assert!(c(ok).is_ok(), "{ok}");
        }
        for failed in [408, 429, 500, 502, 503, 504, 301, 302] {
            assert!(matches!(c(failed), Err(SinkError::Failed(_))), "{failed}");
        }
        for poison in [400, 401, 403, 404, 409, 410, 413, 422] {
            assert!(matches!(c(poison), Err(SinkError::Poison(_))), "{poison}");
        }
    }
}
