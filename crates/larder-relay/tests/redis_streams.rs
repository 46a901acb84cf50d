//! The Redis Streams sink against a real server: what XADD wrote (read back with XRANGE),
//! trimming, a key of the wrong type, and an outage of a private `redis-server`.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{
    Msg, Server, assert_unavailable_within, backend, batch, publish_all, publish_until_ok, unique,
};
use larder_core::outbox::{Sink, SinkError};
use larder_relay::{RedisOptions, RedisSink};

const URL_ENV: &str = "LARDER_TEST_REDIS_URL";
const DEFAULT_URL: &str = "redis://127.0.0.1:6379/";

type Entry = (String, Vec<Vec<u8>>);

async fn xrange(url: &str, stream: &str) -> Vec<Entry> {
    let client = redis::Client::open(url).unwrap_or_else(|e| panic!("client: {e}"));
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("xrange: {e}"))
}

async fn del(url: &str, key: &str) {
    if let Ok(client) = redis::Client::open(url)
        && let Ok(mut conn) = client.get_multiplexed_async_connection().await
    {
        let _: Result<i64, _> = redis::cmd("DEL").arg(key).query_async(&mut conn).await;
    }
}

fn field<'a>(fields: &'a [Vec<u8>], name: &str) -> Option<&'a [u8]> {
    fields
        .chunks(2)
        .find(|kv| kv[0] == name.as_bytes())
        .and_then(|kv| kv.get(1))
        .map(Vec::as_slice)
}

#[tokio::test]
async fn xadd_writes_ids_keys_payloads_and_headers_in_order() {
    let test = "xadd_writes_ids_keys_payloads_and_headers_in_order";
    let url = or_skip!(test, backend(URL_ENV, DEFAULT_URL).await);
    let topic = unique("orders");
    let sink = RedisSink::new(
        RedisOptions::from_url(url.as_str())
            .unwrap_or_else(|e| panic!("{e}"))
            .with_prefix("larder-test:"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sink.system(), "redis");
    let msgs = batch(&topic, "customer-7", 25);
    publish_all(&sink, &msgs).await;
    let keyless = Msg::new(&topic, None, b"no key".to_vec());
    publish_all(&sink, std::slice::from_ref(&keyless)).await;

    let stream = format!("larder-test:{topic}");
    let entries = xrange(&url, &stream).await;
    assert_eq!(entries.len(), msgs.len() + 1);
    for (m, (_entry_id, fields)) in msgs.iter().zip(&entries) {
        assert_eq!(field(fields, "id"), Some(m.id.to_string().as_bytes()));
        assert_eq!(field(fields, "key"), Some(b"customer-7".as_slice()));
        assert_eq!(field(fields, "payload"), Some(m.payload.as_slice()));
        for (k, v) in &m.headers {
            assert_eq!(
                field(fields, &format!("h:{k}")),
                Some(v.as_bytes()),
                "header {k}"
            );
        }
        // id, key, payload and the two headers: nothing else.
        assert_eq!(fields.len(), 2 * (3 + m.headers.len()));
    }
    let (_, last) = &entries[msgs.len()];
    assert_eq!(field(last, "key"), Some(b"".as_slice()));
    assert_eq!(field(last, "id"), Some(keyless.id.to_string().as_bytes()));
    del(&url, &stream).await;
}

#[tokio::test]
async fn maxlen_trims_the_stream_approximately() {
    let test = "maxlen_trims_the_stream_approximately";
    let url = or_skip!(test, backend(URL_ENV, DEFAULT_URL).await);
    let topic = unique("larder-test-trim");
    let sink = RedisSink::from_url(format!("{url}?maxlen=10")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sink.options().maxlen(), Some(10));
    // Concurrent publishes of different keys pipeline on the one connection.
    let msgs: Vec<Msg> = (0..400)
        .map(|i| Msg::new(&topic, Some(&format!("k{}", i % 8)), vec![1u8; 8]))
        .collect();
    let results = futures_util::future::join_all(msgs.iter().map(|m| sink.publish(m.out()))).await;
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    let len = xrange(&url, &topic).await.len();
    // `~` trims whole macro nodes (100 entries by default): well below 400, at least 10.
    assert!((10..400).contains(&len), "{len}");
    del(&url, &topic).await;
}

#[tokio::test]
async fn a_key_of_another_type_under_the_stream_name_is_poison() {
    let test = "a_key_of_another_type_under_the_stream_name_is_poison";
    let url = or_skip!(test, backend(URL_ENV, DEFAULT_URL).await);
    let topic = unique("larder-test-string");
    let client = redis::Client::open(url.as_str()).unwrap_or_else(|e| panic!("{e}"));
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let () = redis::cmd("SET")
        .arg(&topic)
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let sink = RedisSink::from_url(url.as_str()).unwrap_or_else(|e| panic!("{e}"));
    let r = sink
        .publish(Msg::new(&topic, None, b"x".to_vec()).out())
        .await;
    match r {
        Err(SinkError::Poison(e)) => {
            assert!(e.contains("WRONGTYPE") || e.contains("another type"), "{e}")
        }
        other => panic!("expected Poison, got {other:?}"),
    }
    del(&url, &topic).await;
}

#[tokio::test]
async fn an_outage_is_unavailable_and_the_same_sink_reconnects_after_a_restart() {
    let test = "an_outage_is_unavailable_and_the_same_sink_reconnects_after_a_restart";
    let mut server = or_skip!(
        test,
        Server::start("redis-server", |port, dir| {
            vec![
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--save".into(),
                String::new(),
                "--appendonly".into(),
                "no".into(),
                "--dir".into(),
                dir.display().to_string(),
            ]
        })
    );
    let url = format!(
        "{}/?timeout_ms=1000&connect_timeout_ms=500",
        server.url("redis")
    );
    let sink = RedisSink::from_url(url.as_str()).unwrap_or_else(|e| panic!("{e}"));
    let topic = unique("outage");
    publish_all(&sink, &batch(&topic, "k", 3)).await;

    server.kill();
    let m = Msg::new(&topic, Some("k"), b"during the outage".to_vec());
    let start = Instant::now();
    let e = assert_unavailable_within(sink.publish(m.out()).await, start, Duration::from_secs(5));
    assert!(!e.is_empty());
    // Still unavailable, and still quick, on the next try.
    let start = Instant::now();
    assert_unavailable_within(sink.publish(m.out()).await, start, Duration::from_secs(5));

    or_skip!(test, server.restart());
    let took = publish_until_ok(&sink, &m, Duration::from_secs(15)).await;
    assert!(took < Duration::from_secs(15));
    let base = server.url("redis");
    let entries = xrange(&base, &topic).await;
    // The restarted server kept nothing (no persistence): only the message sent after it
    // (twice at most, if a reply was lost: at least once).
    assert!(!entries.is_empty());
    for (_, fields) in &entries {
        assert_eq!(field(fields, "id"), Some(m.id.to_string().as_bytes()));
    }
}

#[tokio::test]
async fn errors_and_debug_never_show_the_password() {
    // Nothing listens on the port: the error comes from the client, scrubbed.
    let port = common::free_port();
    let sink = RedisSink::from_url(format!(
        "redis://:hunter2secret@127.0.0.1:{port}/?connect_timeout_ms=300&timeout_ms=300"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!format!("{sink:?}").contains("hunter2secret"));
    let r = sink.publish(Msg::new("t", None, b"x".to_vec()).out()).await;
    match r {
        Err(SinkError::Unavailable(e)) => assert!(!e.contains("hunter2secret"), "{e}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
