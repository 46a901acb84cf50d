//! The MQTT sink against a real broker: QoS 1 messages read back by a subscriber, the
//! JSON envelope, topics MQTT cannot publish to, and an outage of a private `mosquitto`.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{
    Msg, Server, assert_unavailable_within, backend, batch, publish_all, publish_until_ok, unique,
};
use larder_core::outbox::{Sink, SinkError};
use larder_relay::{Envelope, MqttOptions, MqttSink};
use rumqttc::{AsyncClient, Event, Packet, Publish, QoS};
use tokio::sync::mpsc;

const URL_ENV: &str = "LARDER_TEST_MQTT_URL";
const DEFAULT_URL: &str = "mqtt://127.0.0.1:1883";

/// A subscriber to `filter` (QoS 1), subscribed when this returns.
async fn subscribe(
    url: &str,
    filter: &str,
) -> Result<(AsyncClient, mpsc::UnboundedReceiver<Publish>), String> {
    let u = url::Url::parse(url).map_err(|e| e.to_string())?;
    let mut o = rumqttc::MqttOptions::new(
        unique("larder-test-sub"),
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(1883),
    );
    o.set_max_packet_size(1 << 20, 1 << 20)
        .set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(o, 100);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        while let Ok(ev) = eventloop.poll().await {
            match ev {
                Event::Incoming(Packet::SubAck(_)) => {
                    let _ = subscribed_tx.take().map(|t| t.send(()));
                }
                // (The task ends with the test's runtime.)
                Event::Incoming(Packet::Publish(p)) => {
                    let _ = tx.send(p);
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(5), subscribed)
        .await
        .map_err(|_| format!("no SUBACK from {url} within 5 s"))?
        .map_err(|_| format!("the subscriber's connection to {url} failed"))?;
    Ok((client, rx))
}

async fn receive(rx: &mut mpsc::UnboundedReceiver<Publish>, n: usize) -> Vec<Publish> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(p)) => out.push(p),
            Ok(None) => panic!("the subscriber ended after {} messages", out.len()),
            Err(_) => panic!("only {} of {n} messages arrived", out.len()),
        }
    }
    out
}

#[tokio::test]
async fn qos1_messages_arrive_in_order_with_their_payloads() {
    let test = "qos1_messages_arrive_in_order_with_their_payloads";
    let url = or_skip!(test, backend(URL_ENV, DEFAULT_URL).await);
    let base = unique("larder-test");
    let (_sub, mut rx) = or_skip!(test, subscribe(&url, &format!("{base}/#")).await);
    let sink = MqttSink::from_url(url.as_str()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sink.system(), "mqtt");
    let topic = format!("{base}/orders");
    let msgs = batch(&topic, "customer-7", 30);
    publish_all(&sink, &msgs).await;
    let got = receive(&mut rx, msgs.len()).await;
    for (m, p) in msgs.iter().zip(&got) {
        assert_eq!(p.topic, topic);
        assert_eq!(&p.payload[..], &m.payload[..]);
        assert_eq!(p.qos, QoS::AtLeastOnce);
        assert!(!p.retain);
    }

    // Different keys concurrently, as the relay publishes them: every publish is
    // acknowledged, each key's messages stay in order.
    let per_key = |k: &str| -> Vec<Msg> {
        (0..10)
            .map(|i| Msg::new(&topic, Some(k), format!("{k}{i}").into_bytes()))
            .collect()
    };
    let (a, b) = (per_key("a"), per_key("b"));
    tokio::join!(publish_all(&sink, &a), publish_all(&sink, &b));
    let got = receive(&mut rx, 20).await;
    for (k, sent) in [("a", &a), ("b", &b)] {
        let arrived: Vec<&[u8]> = got
            .iter()
            .map(|p| &p.payload[..])
            .filter(|p| p.starts_with(k.as_bytes()))
            .collect();
        let want: Vec<&[u8]> = sent.iter().map(|m| &m.payload[..]).collect();
        assert_eq!(arrived, want, "key {k}");
    }
}

#[tokio::test]
async fn the_json_envelope_carries_id_key_and_headers() {
    let test = "the_json_envelope_carries_id_key_and_headers";
    let url = or_skip!(test, backend(URL_ENV, DEFAULT_URL).await);
    let base = unique("larder-test");
    let (_sub, mut rx) = or_skip!(test, subscribe(&url, &format!("{base}/#")).await);
    let sink = MqttSink::new(
        MqttOptions::from_url(format!("{url}?envelope=json"))
            .unwrap_or_else(|e| panic!("{e}"))
            .with_prefix(format!("{base}/")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sink.options().envelope(), Envelope::Json);
    let text = Msg::new("orders", Some("customer-7"), b"{\"total\":3}".to_vec()).header("seq", "1");
    let binary = Msg::new("orders", None, vec![0u8, 0xff, 0x10]);
    publish_all(&sink, &[text.clone(), binary.clone()]).await;
    let got = receive(&mut rx, 2).await;
    let json: Vec<serde_json::Value> = got
        .iter()
        .map(|p| serde_json::from_slice(&p.payload).unwrap_or_else(|e| panic!("not json: {e}")))
        .collect();
    assert_eq!(got[0].topic, format!("{base}/orders"));
    assert_eq!(json[0]["id"], text.id.to_string());
    assert_eq!(json[0]["topic"], "orders");
    assert_eq!(json[0]["key"], "customer-7");
    assert_eq!(json[0]["headers"]["seq"], "1");
    assert_eq!(json[0]["payload"], "{\"total\":3}");
    assert_eq!(json[1]["id"], binary.id.to_string());
    assert_eq!(json[1]["key"], serde_json::Value::Null);
    assert_eq!(json[1]["payload_base64"], "AP8Q");
}

#[tokio::test]
async fn topics_mqtt_cannot_publish_to_and_oversized_messages_are_poison() {
    let sink = MqttSink::new(MqttOptions::new("mqtt://127.0.0.1:1").with_max_packet_bytes(1024))
        .unwrap_or_else(|e| panic!("{e}"));
    // Refused before any connection is attempted.
    for m in [
        Msg::new("a/+/b", None, b"x".to_vec()),
        Msg::new("a/#", None, b"x".to_vec()),
        Msg::new("$SYS/x", None, b"x".to_vec()),
        Msg::new("big", None, vec![7u8; 2000]),
    ] {
        let r = sink.publish(m.out()).await;
        assert!(matches!(r, Err(SinkError::Poison(_))), "{}: {r:?}", m.topic);
    }
}

#[tokio::test]
async fn an_outage_is_unavailable_and_the_same_sink_reconnects_after_a_restart() {
    let test = "an_outage_is_unavailable_and_the_same_sink_reconnects_after_a_restart";
    let mut server = or_skip!(
        test,
        Server::start("mosquitto", |port, _dir| vec![
            "-p".into(),
            port.to_string()
        ])
    );
    let url = server.url("mqtt");
    let sink = MqttSink::from_url(format!("{url}?timeout_ms=2000&connect_timeout_ms=1000"))
        .unwrap_or_else(|e| panic!("{e}"));
    let topic = unique("larder-test");
    publish_all(&sink, &batch(&topic, "k", 3)).await;

    server.kill();
    let m = Msg::new(&topic, Some("k"), b"during the outage".to_vec());
    for _ in 0..2 {
        let start = Instant::now();
        assert_unavailable_within(sink.publish(m.out()).await, start, Duration::from_secs(4));
    }

    or_skip!(test, server.restart());
    let (_sub, mut rx) = or_skip!(test, subscribe(&url, &topic).await);
    publish_until_ok(&sink, &m, Duration::from_secs(15)).await;
    let got = receive(&mut rx, 1).await;
    assert_eq!(&got[0].payload[..], b"during the outage");
}

#[tokio::test]
async fn errors_and_debug_never_show_the_password() {
    let port = common::free_port();
    let sink = MqttSink::from_url(format!(
        "mqtt://app:hunter2secret@127.0.0.1:{port}?connect_timeout_ms=500"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!format!("{sink:?}").contains("hunter2secret"));
    match sink.publish(Msg::new("t", None, b"x".to_vec()).out()).await {
        Err(SinkError::Unavailable(e)) => assert!(!e.contains("hunter2secret"), "{e}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
