#![doc = include_str!("lib.md")]
#![forbid(unsafe_code)]
#![deny(rustdoc::broken_intra_doc_links)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "mqtt")]
mod mqtt;
#[cfg(feature = "nats")]
mod nats_jetstream;
#[cfg(feature = "amqp")]
mod rabbitmq;
#[cfg(feature = "redis")]
mod redis_streams;
mod url;
mod util;
#[cfg(feature = "http")]
mod webhook;

pub use larder_core::outbox::{Outgoing, Sink, SinkError};
pub use url::{SinkUrl, sink_from_url};

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis_streams::{RedisOptions, RedisSink};

/// NATS header names used by [`NatsSink`].
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats {
    pub use crate::nats_jetstream::KEY_HEADER;
}
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub use nats_jetstream::{NatsOptions, NatsSink};

/// AMQP header names used by [`AmqpSink`].
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub mod amqp {
    pub use crate::rabbitmq::{KEY_HEADER, TOPIC_HEADER};
}
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub use rabbitmq::{AmqpOptions, AmqpSink, RoutingKey};

#[cfg(feature = "mqtt")]
#[cfg_attr(docsrs, doc(cfg(feature = "mqtt")))]
pub use mqtt::{Envelope, MqttOptions, MqttSink};

/// HTTP header names used by [`HttpSink`].
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http {
    pub use crate::webhook::{IDEMPOTENCY_KEY, KEY_HEADER, MESSAGE_ID_HEADER, TOPIC_HEADER};
}
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use webhook::{HttpOptions, HttpSink};
