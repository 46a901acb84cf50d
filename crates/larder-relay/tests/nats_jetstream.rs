//! The NATS JetStream sink against a real server: messages read back with a JetStream
//! consumer, de-duplication by `Nats-Msg-Id`, a subject no stream captures, headers NATS
//! cannot carry, and an outage of a private `nats-server -js`.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use common::{
    Msg, Server, assert_unavailable_within, backend, batch, publish_all, publish_until_ok, unique,
};
use futures_util::StreamExt as _;
use larder_core::outbox::{Sink, SinkError};
use larder_relay::NatsSink;

const URL_ENV: &str = "LARDER_TEST_NATS_URL";
const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// A JetStream context and a fresh stream capturing `<subject>.>`.
async fn stream_for(
    url: &str,
    subject: &str,
) -> Result<(jetstream::Context, stream::Stream), String> {
    let client = async_nats::connect(url)
        .await
        .map_err(|e| format!("nats connect: {e}"))?;
    let js = jetstream::new(client);
    let s = js
        .create_stream(stream::Config {
            name: subject.replace('.', "_"),
            subjects: vec![format!("{subject}.>")],
            ..Default::default()
        })
        .await
        .map_err(|e| format!("jetstream is not enabled on {url}? create_stream: {e}"))?;
    Ok((js, s))
}

async fn read_all(s: &stream::Stream, n: usize) -> Vec<jetstream::Message> {
    let c = s
        .create_consumer(consumer::pull::Config::default())
        .await
        .unwrap_or_else(|e| panic!("consumer: {e}"));
    let mut out = Vec::new();
    let mut batch = c
        .fetch()
        .max_messages(n + 1)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap_or_else(|e| panic!("fetch: {e}"));
    while let Some(m) = batch.next().await {
        let m = m.unwrap_or_else(|e| panic!("message: {e}"));
        let _ = m.ack().await;
        out.push(m);
    }
    out
}

async fn message_count(s: &mut stream::Stream) -> u64 {
    s.info()
        .await
        .map(|i| i.state.messages)
        .unwrap_or_else(|e| panic!("info: {e}"))
}

#[tokio::test]
async fn published_messages_are_acked_and_read_back_with_headers_in_order() {
    let test = "published_messages_are_acked_and_read_back_with_headers_in_order";
    let url = or_skip!(test, backend(URL_ENV, DEFAULT_URL).await);
    let subject = unique("larder-test").replace('-', "_");
    let (js, s) = or_skip!(test, stream_for(&url, &subject).await);
    let sink = NatsSink::from_url(url.as_str()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sink.system(), "nats");
    let topic = format!("{subject}.orders");
    let msgs = batch(&topic, "customer-7", 20);
    publish_all(&sink, &msgs).await;

    let got = read_all(&s, msgs.len()).await;
    assert_eq!(got.len(), msgs.len());
    for (m, g) in msgs.iter().zip(&got) {
        assert_eq!(g.subject.as_str(), topic);
        assert_eq!(&g.payload[..], &m.payload[..]);
        let h = g.headers.as_ref().unwrap_or_else(|| panic!("no headers"));
        assert_eq!(
            h.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some(m.id.to_string().as_str())
        );
        assert_eq!(
            h.get(larder_relay::nats::KEY_HEADER).map(|v| v.as_str()),
            Some("customer-7")
        );
        for (k, v) in &m.headers {
            assert_eq!(
                h.get(k.as_str()).map(|x| x.as_str()),
                Some(v.as_str()),
                "header {k}"
            );
        }
    }
    let _ = js.delete_stream(s.cached_info().config.name.as_str()).await;
}

#[tokio::test]
async fn the_same_message_id_is_stored_once() {
    let test = "the_same_message_id_is_stored_once";
    let url = or_skip!(test, backend(URL_ENV, DEFAULT_URL).await);
    let subject = unique("larder-test").replace('-', "_");
    let (js, mut s) = or_skip!(test, stream_for(&url, &subject).await);
    let sink = NatsSink::from_url(url.as_str()).unwrap_or_else(|e| panic!("{e}"));
    let m = Msg::new(&format!("{subject}.dedupe"), Some("k"), b"once".to_vec());
    // A relay that died after publishing publishes again: both are acknowledged…
    publish_all(&sink, &[m.clone(), m.clone()]).await;
    let other = Msg::new(&format!("{subject}.dedupe"), Some("k"), b"twice".to_vec());
    publish_all(&sink, std::slice::from_ref(&other)).await;
    // …and the stream kept one copy.
    assert_eq!(message_count(&mut s).await, 2);
    let got = read_all(&s, 3).await;
    assert_eq!(got.len(), 2);
    assert_eq!(&got[0].payload[..], b"once");
    assert_eq!(&got[1].payload[..], b"twice");
    let _ = js.delete_stream(s.cached_info().config.name.as_str()).await;
}

#[tokio::test]
async fn a_subject_no_stream_captures_is_unavailable() {
    let test = "a_subject_no_stream_captures_is_unavailable";
    let url = or_skip!(test, backend(URL_ENV, DEFAULT_URL).await);
    let sink = NatsSink::from_url(url.as_str()).unwrap_or_else(|e| panic!("{e}"));
    let subject = unique("larder-test-nostream").replace('-', "_");
    let start = Instant::now();
    let e = assert_unavailable_within(
        sink.publish(Msg::new(&subject, None, b"x".to_vec()).out())
            .await,
        start,
        Duration::from_secs(3),
    );
    assert!(e.contains("no responders"), "{e}");
}

#[tokio::test]
async fn headers_and_subjects_nats_cannot_carry_are_poison() {
    let test = "headers_and_subjects_nats_cannot_carry_are_poison";
    let url = or_skip!(test, backend(URL_ENV, DEFAULT_URL).await);
    let sink = NatsSink::from_url(url.as_str()).unwrap_or_else(|e| panic!("{e}"));
    for m in [
        Msg::new("larder.test", None, b"x".to_vec()).header("bad name", "v"),
        Msg::new("larder.test", None, b"x".to_vec()).header("Nats-Expected-Stream", "other"),
        Msg::new("larder.test.*", None, b"x".to_vec()),
        Msg::new("larder test", None, b"x".to_vec()),
    ] {
        let r = sink.publish(m.out()).await;
        assert!(matches!(r, Err(SinkError::Poison(_))), "{m:?}: {r:?}");
    }
}

#[tokio::test]
async fn an_outage_is_unavailable_and_the_same_sink_reconnects_after_a_restart() {
    let test = "an_outage_is_unavailable_and_the_same_sink_reconnects_after_a_restart";
    let mut server = or_skip!(
        test,
        Server::start("nats-server", |port, dir| {
            vec![
                "-js".into(),
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-sd".into(),
                dir.display().to_string(),
            ]
        })
    );
    let url = server.url("nats");
    let subject = unique("larder-test").replace('-', "_");
    let (_js, mut s) = or_skip!(test, stream_for(&url, &subject).await);
    let sink = NatsSink::from_url(format!("{url}?timeout_ms=1000&connect_timeout_ms=500"))
        .unwrap_or_else(|e| panic!("{e}"));
    let topic = format!("{subject}.outage");
    publish_all(&sink, &batch(&topic, "k", 3)).await;

    server.kill();
    let m = Msg::new(&topic, Some("k"), b"during the outage".to_vec());
    for _ in 0..2 {
        let start = Instant::now();
        assert_unavailable_within(sink.publish(m.out()).await, start, Duration::from_secs(4));
    }

    or_skip!(test, server.restart());
    publish_until_ok(&sink, &m, Duration::from_secs(15)).await;
    // The stream is on disk: the three before, and the one after (stored once, however
    // many tries reached the server).
    // (The test's own client reconnects by itself, too: give it a moment.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.info().await {
            Ok(i) => {
                assert_eq!(i.state.messages, 4);
                break;
            }
            Err(e) if Instant::now() > deadline => panic!("stream info: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test]
async fn errors_and_debug_never_show_the_password() {
    let port = common::free_port();
    let sink = NatsSink::from_url(format!(
        "nats://app:hunter2secret@127.0.0.1:{port}?connect_timeout_ms=300"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!format!("{sink:?}").contains("hunter2secret"));
    let r = sink
        .publish(Msg::new("larder.test", None, b"x".to_vec()).out())
        .await;
    match r {
        Err(SinkError::Unavailable(e)) => assert!(!e.contains("hunter2secret"), "{e}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
