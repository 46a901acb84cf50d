//! The RabbitMQ sink against a real broker: messages read back by a consumer on a
//! temporary queue, unroutable and misrouted messages, the exchange and routing key from
//! the URL, and an outage (a TCP proxy in front of the broker is cut and restored: a
//! private RabbitMQ node is too heavy to start per test).

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{
    Msg, Proxy, assert_unavailable_within, backend, batch, publish_all, publish_until_ok, unique,
};
use futures_util::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use larder_core::outbox::{Sink, SinkError};
use larder_relay::{AmqpOptions, AmqpSink};

const URL_ENV: &str = "LARDER_TEST_AMQP_URL";
const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A channel and a fresh exclusive queue named `queue`, consumed.
async fn queue(url: &str, queue: &str) -> Result<(Connection, Channel, lapin::Consumer), String> {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("amqp connect: {e}"))?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let consumer = ch
        .basic_consume(
            queue.into(),
            "larder-test".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok((conn, ch, consumer))
}

async fn receive(consumer: &mut lapin::Consumer, n: usize) -> Vec<Delivery> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
            Ok(Some(Ok(d))) => out.push(d),
            Ok(Some(Err(e))) => panic!("consume: {e}"),
            Ok(None) => panic!("the consumer ended after {} messages", out.len()),
            Err(_) => panic!("only {} of {n} messages arrived", out.len()),
        }
    }
    out
}

fn headers(d: &Delivery) -> BTreeMap<String, String> {
    d.properties
        .headers()
        .as_ref()
        .map(|t| {
            t.inner()
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        AMQPValue::LongString(s) => {
                            String::from_utf8_lossy(s.as_bytes()).into_owned()
                        }
                        other => format!("{other:?}"),
                    };
                    (k.as_str().to_owned(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn published_messages_arrive_with_their_properties_in_order() {
    let test = "published_messages_arrive_with_their_properties_in_order";
    let url = or_skip!(test, backend(URL_ENV, DEFAULT_URL).await);
    let q = unique("larder-test-q");
    let (_conn, _ch, mut consumer) = or_skip!(test, queue(&url, &q).await);
    let sink = AmqpSink::from_url(url.as_str()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sink.system(), "rabbitmq");
    // Default exchange, routing key = topic = the queue's name.
    let mut msgs = batch(&q, "customer-7", 20);
    msgs[0] = msgs[0].clone().header("content-type", "application/json");
    publish_all(&sink, &msgs).await;

    let got = receive(&mut consumer, msgs.len()).await;
    for (m, d) in msgs.iter().zip(&got) {
        assert_eq!(d.data, m.payload);
        assert_eq!(d.routing_key.as_str(), q);
        assert_eq!(
            d.properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_owned()),
            Some(m.id.to_string())
        );
        assert_eq!(*d.properties.delivery_mode(), Some(2));
        assert_eq!(*d.properties.timestamp(), Some(1_700_000_000));
        let h = headers(d);
        for (k, v) in &m.headers {
            assert_eq!(h.get(k), Some(v), "header {k}");
        }
        assert_eq!(
            h.get(larder_relay::amqp::KEY_HEADER).map(String::as_str),
            Some("customer-7")
        );
        assert_eq!(h.get(larder_relay::amqp::TOPIC_HEADER), Some(&q));
    }
    assert_eq!(
        got[0]
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str()),
        Some("application/json")
    );
}

#[tokio::test]
async fn an_unroutable_mandatory_message_is_failed() {
    let test = "an_unroutable_mandatory_message_is_failed";
    let url = or_skip!(test, backend(URL_ENV, DEFAULT_URL).await);
    let sink = AmqpSink::from_url(url.as_str()).unwrap_or_else(|e| panic!("{e}"));
    let topic = unique("larder-test-nobody");
    match sink
        .publish(Msg::new(&topic, None, b"x".to_vec()).out())
        .await
    {
        Err(SinkError::Failed(e)) => assert!(e.contains("unroutable") && e.contains("312"), "{e}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    // Without `mandatory`, the broker drops it and confirms.
    let sink =
        AmqpSink::from_url(format!("{url}?mandatory=false")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        sink.publish(Msg::new(&topic, None, b"x".to_vec()).out())
            .await,
        Ok(())
    );
}

#[tokio::test]
async fn the_exchange_and_routing_key_come_from_the_url() {
    let test = "the_exchange_and_routing_key_come_from_the_url";
    let url = or_skip!(test, backend(URL_ENV, DEFAULT_URL).await);
    let q = unique("larder-test-q");
    let (_conn, ch, mut consumer) = or_skip!(test, queue(&url, &q).await);
    let exchange = unique("larder-test-x");
    let key = unique("customer");
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    ch.queue_bind(
        q.as_str().into(),
        exchange.as_str().into(),
        key.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    let sink = AmqpSink::from_url(format!(
        "{url}?exchange={exchange}&routing_key={{key}}&persistent=false"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sink.options().exchange(), exchange);
    let msgs = batch("orders.placed", &key, 5);
    publish_all(&sink, &msgs).await;
    let got = receive(&mut consumer, msgs.len()).await;
    for (m, d) in msgs.iter().zip(&got) {
        assert_eq!(d.data, m.payload);
        assert_eq!(d.exchange.as_str(), exchange);
        assert_eq!(d.routing_key.as_str(), key);
        assert_eq!(*d.properties.delivery_mode(), Some(1));
        assert_eq!(
            headers(d)
                .get(larder_relay::amqp::TOPIC_HEADER)
                .map(String::as_str),
            Some("orders.placed")
        );
    }
    let _ = ch
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
}

#[tokio::test]
async fn a_missing_exchange_is_unavailable_and_names_the_fix() {
    let test = "a_missing_exchange_is_unavailable_and_names_the_fix";
    let url = or_skip!(test, backend(URL_ENV, DEFAULT_URL).await);
    let sink =
        AmqpSink::new(AmqpOptions::new(url.as_str()).with_exchange(unique("larder-test-missing")))
            .unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..2 {
        let start = Instant::now();
        let e = assert_unavailable_within(
            sink.publish(Msg::new("t", None, b"x".to_vec()).out()).await,
            start,
            Duration::from_secs(5),
        );
        assert!(
            e.contains("NOT_FOUND") || e.contains("not connected"),
            "{e}"
        );
        // Past the reconnect backoff.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test]
async fn an_outage_is_unavailable_and_the_same_sink_reconnects_after_the_broker_returns() {
    let test = "an_outage_is_unavailable_and_the_same_sink_reconnects_after_the_broker_returns";
    let url = or_skip!(test, backend(URL_ENV, DEFAULT_URL).await);
    let u = url::Url::parse(&url).unwrap_or_else(|e| panic!("{e}"));
    let upstream = format!(
        "{}:{}",
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(5672)
    );
    let proxy = or_skip!(test, Proxy::start(&upstream).await);
    let mut through = u.clone();
    let _ = through.set_port(Some(proxy.port));
    through.set_query(Some("timeout_ms=2000&connect_timeout_ms=1000"));

    let q = unique("larder-test-q");
    let (_conn, _ch, mut consumer) = or_skip!(test, queue(&url, &q).await);
    let sink = AmqpSink::from_url(through.as_str()).unwrap_or_else(|e| panic!("{e}"));
    let before = batch(&q, "k", 3);
    publish_all(&sink, &before).await;

    proxy.cut().await;
    let m = Msg::new(&q, Some("k"), b"during the outage".to_vec());
    for _ in 0..2 {
        let start = Instant::now();
        assert_unavailable_within(sink.publish(m.out()).await, start, Duration::from_secs(4));
    }

    or_skip!(test, proxy.resume().await);
    publish_until_ok(&sink, &m, Duration::from_secs(15)).await;
    let got = receive(&mut consumer, before.len() + 1).await;
    let ids: Vec<String> = got
        .iter()
        .map(|d| {
            d.properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default()
        })
        .collect();
    let want: Vec<String> = before
        .iter()
        .chain([&m])
        .map(|m| m.id.to_string())
        .collect();
    assert_eq!(ids, want);
}

#[tokio::test]
async fn errors_and_debug_never_show_the_password() {
    let test = "errors_and_debug_never_show_the_password";
    let url = or_skip!(test, backend(URL_ENV, DEFAULT_URL).await);
    let mut u = url::Url::parse(&url).unwrap_or_else(|e| panic!("{e}"));
    let _ = u.set_password(Some("hunter2secret"));
    u.set_query(Some("connect_timeout_ms=3000"));
    let sink = AmqpSink::from_url(u.as_str()).unwrap_or_else(|e| panic!("{e}"));
    assert!(!format!("{sink:?}").contains("hunter2secret"));
    match sink.publish(Msg::new("t", None, b"x".to_vec()).out()).await {
        Err(SinkError::Unavailable(e)) => assert!(!e.contains("hunter2secret"), "{e}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
