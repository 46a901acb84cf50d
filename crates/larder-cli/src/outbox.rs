//! `larder outbox …`: the outbox's counters and dead letters, operator actions (replay,
//! skip, purge), and a relay process.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use larder::Settings;
use larder::outbox::{MessageId, Outbox, Relay, Sink, StoredMessage};

use crate::events::rfc3339;
use crate::store;

/// `larder outbox …`
#[derive(Debug, Args)]
#[command(
    after_help = "Sinks (--sink or LARDER_OUTBOX_SINK): stdout, file:PATH, \
redis://HOST:PORT, nats://HOST:PORT, amqp://USER:PASS@HOST:PORT/VHOST, mqtt://HOST:PORT, \
http(s)://HOST/PATH.\nExamples:\n  larder outbox status\n  larder outbox relay --sink stdout\n  \
larder outbox dead --json\n  larder outbox replay 01939a5e-8c4b-7f2e-9a41-3b1f1d2c0e11"
)]
pub(crate) struct OutboxArgs {
    #[command(subcommand)]
    command: OutboxCommand,
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Pending, parked, dead, delivered and skipped messages; the oldest pending one; who
    /// holds the partitions
    Status,
    /// List dead letters in log order: id, topic, key, attempts, last error
    Dead {
        /// Print at most this many
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Make a dead letter pending again: the relay publishes it, then its key's parked
    /// messages in order
    Replay {
        /// The message id (a UUID, from `larder outbox dead`)
        id: String,
    },
    /// Give up on a dead letter: never published; its key's parked messages flow again
    Skip {
        /// The message id (a UUID, from `larder outbox dead`)
        id: String,
    },
    /// Delete delivered and skipped messages older than --older-than (the relay's
    /// retention does this too)
    Purge {
        /// Age: e.g. `7d`, `12h`, `30m`, `90s`, `0s`
        #[arg(long, default_value = "7d", value_parser = parse_age)]
        older_than: Duration,
        /// Delete at most this many
        #[arg(long, default_value_t = 100_000)]
        limit: u64,
    },
    /// Run a relay: publish committed messages to the sink until Ctrl-C (graceful: the
    /// batch in flight is finished and the leases released). Counters go to stderr every
    /// --report seconds.
    Relay {
        /// Where to publish (see below) [default: outbox.sink of the settings
        /// (LARDER_OUTBOX_SINK, the TOML file), else stdout]
        #[arg(long)]
        sink: Option<String>,
        /// This relay's name in the lease table [default: host, pid and a random suffix]
        #[arg(long)]
        name: Option<String>,
        /// Messages per batch [default: outbox.batch_size, 512]
        #[arg(long)]
        batch_size: Option<u32>,
        /// Failed attempts before a message is dead-lettered [default: outbox.max_attempts, 10]
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Partition lease, seconds [default: outbox.lease_ms, 10 s]
        #[arg(long)]
        lease_secs: Option<u64>,
        /// Publish one batch and exit
        #[arg(long)]
        once: bool,
        /// Seconds between counter reports on stderr (0: none)
        #[arg(long, default_value_t = 10)]
        report: u64,
    },
}

fn parse_age(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not an age such as 7d, 12h, 30m or 90s"))?;
    let secs = match unit {
        "d" => n * 86_400,
        "h" => n * 3_600,
        "m" => n * 60,
        "s" | "" => n,
        _ => return Err(format!("`{s}`: the unit must be d, h, m or s")),
    };
    Ok(Duration::from_secs(secs))
}

fn parse_id(s: &str) -> Result<MessageId> {
    Ok(s.parse::<MessageId>()?)
}

/// The sink of a `--sink` value.
pub(crate) fn sink_for(spec: &str) -> Result<Arc<dyn Sink>> {
    larder_relay::sink_from_url(spec).map_err(Into::into)
}

fn message_json(m: &StoredMessage) -> serde_json::Value {
    serde_json::json!({
        "id": m.id.to_string(),
        "topic": m.topic,
        "key": m.key,
        "state": m.state.as_str(),
        "attempts": m.attempts,
        "last_error": m.last_error,
        "enqueued_at": rfc3339(m.enqueued_at_micros),
        "done_at": m.done_at_micros.map(rfc3339),
        "payload_bytes": m.payload.len(),
        "headers": m.headers,
    })
}

pub(crate) async fn run(args: &OutboxArgs, settings: &Settings, json: bool) -> Result<ExitCode> {
    let store = store::open_existing(settings).await?;
    let r = command(args, &store, settings, json).await;
    store.close().await;
    r
}

async fn command(
    args: &OutboxArgs,
    store: &larder::Store,
    settings: &Settings,
    json: bool,
) -> Result<ExitCode> {
    let ob = Outbox::builder(store).prepare(false).open().await?;
    match &args.command {
        OutboxCommand::Status => {
            let mut uow = store.read().await?;
            let c = ob.status(&mut uow).await?;
            uow.commit().await?;
            let now = larder::events::now_micros();
            let age = c
                .oldest_pending_micros
                .map(|t| Duration::from_micros(u64::try_from(now - t).unwrap_or(0)));
            let leases = leases(store).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "pending": c.pending,
                        "parked": c.parked,
                        "dead": c.dead,
                        "delivered": c.delivered,
                        "skipped": c.skipped,
                        "oldest_pending_age_ms": age.map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
                        "max_attempts_pending": c.max_attempts_pending,
                        "partitions": leases.iter().map(|(p, o, until)| serde_json::json!({
                            "partition": p,
                            "owner": o,
                            "lease_ms_left": (until - now).max(0) / 1000,
                        })).collect::<Vec<_>>(),
                    })
                );
            } else {
                match age {
                    Some(a) => println!(
                        "pending    {} (oldest {:.1} s ago, most attempts {})",
                        c.pending,
                        a.as_secs_f64(),
                        c.max_attempts_pending
                    ),
                    None => println!("pending    0"),
                }
                println!(
                    "parked     {} (behind a dead letter of their key)",
                    c.parked
                );
                println!("dead       {}", c.dead);
                println!("delivered  {} (kept until retention)", c.delivered);
                println!("skipped    {}", c.skipped);
                let held: Vec<String> = leases
                    .iter()
                    .filter(|(_, o, until)| o.is_some() && *until > now)
                    .map(|(p, o, _)| format!("{p}:{}", o.as_deref().unwrap_or("")))
                    .collect();
                println!(
                    "partitions {} of {} held{}{}",
                    held.len(),
                    leases.len(),
                    if held.is_empty() { "" } else { ": " },
                    held.join(", ")
                );
            }
        }
        OutboxCommand::Dead { limit } => {
            let mut uow = store.read().await?;
            let dead = ob.dead_letters(&mut uow, None, *limit).await?;
            uow.commit().await?;
            if json {
                let v: Vec<_> = dead.iter().map(message_json).collect();
                println!("{}", serde_json::Value::from(v));
            } else if dead.is_empty() {
                println!("no dead letters");
            } else {
                for m in &dead {
                    println!(
                        "{}  {}  key={}  attempts={}  dead since {}  {}",
                        m.id,
                        m.topic,
                        m.key.as_deref().unwrap_or("-"),
                        m.attempts,
                        m.done_at_micros.map(rfc3339).unwrap_or_default(),
                        m.last_error.as_deref().unwrap_or("")
                    );
                }
            }
        }
        OutboxCommand::Replay { id } | OutboxCommand::Skip { id } => {
            let id = parse_id(id)?;
            let replay = matches!(args.command, OutboxCommand::Replay { .. });
            let mut uow = store.begin().await?;
            if replay {
                ob.replay(&mut uow, id).await?;
            } else {
                ob.skip(&mut uow, id).await?;
            }
            uow.commit().await?;
            let what = if replay { "replayed" } else { "skipped" };
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": true, "id": id.to_string(), "action": what })
                );
            } else {
                println!("{what} {id}");
            }
        }
        OutboxCommand::Purge { older_than, limit } => {
            let mut total = 0u64;
            while total < *limit {
                let batch = u32::try_from((*limit - total).min(1_000)).unwrap_or(1_000);
                let mut uow = store.begin().await?;
                let n = ob.purge(&mut uow, *older_than, batch).await?;
                uow.commit().await?;
                total += n;
                if n < u64::from(batch) {
                    break;
                }
            }
            if json {
                println!("{}", serde_json::json!({ "ok": true, "purged": total }));
            } else {
                println!("purged {total} delivered or skipped message(s)");
            }
        }
        OutboxCommand::Relay {
            sink,
            name,
            batch_size,
            max_attempts,
            lease_secs,
            once,
            report,
        } => {
            let spec = match (sink, &settings.outbox.sink) {
                (Some(s), _) => s.clone(),
                (None, Some(u)) => u.expose().to_owned(),
                (None, None) => "stdout".to_owned(),
            };
            let sink = sink_for(&spec)?;
            let mut b = Relay::builder(store)
                .sink_arc(sink)
                .settings(&settings.outbox);
            if let Some(n) = batch_size {
                b = b.batch_size(*n);
            }
            if let Some(n) = max_attempts {
                b = b.max_attempts(*n);
            }
            if let Some(s) = lease_secs {
                b = b.lease(Duration::from_secs(*s));
            }
            if let Some(n) = name {
                b = b.name(n.clone());
            }
            let relay = b.build().await.context("cannot start the relay")?;
            if *once {
                let r = relay.run_once().await?;
                relay.release().await?;
                let line = serde_json::json!({
                    "fetched": r.fetched, "delivered": r.delivered, "failed": r.failed,
                    "dead": r.dead, "outage": r.outage,
                });
                eprintln!("{line}");
                return Ok(ExitCode::SUCCESS);
            }
            let stats = relay.stats();
            let reporter = (*report > 0).then(|| {
                let every = Duration::from_secs(*report);
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(every).await;
                        let s = stats.snapshot();
                        if json {
                            eprintln!(
                                "{}",
                                serde_json::json!({
                                    "published": s.published, "failed_attempts": s.failed_attempts,
                                    "dead_lettered": s.dead_lettered, "outages": s.outages,
                                    "partitions": s.partitions, "mean_latency_us": s.mean_latency_us,
                                    "max_latency_us": s.max_latency_us,
                                })
                            );
                        } else {
                            eprintln!(
                                "relay: published {}, failed attempts {}, dead-lettered {}, outages {}, partitions {}, latency mean {:.1} ms max {:.1} ms",
                                s.published, s.failed_attempts, s.dead_lettered, s.outages, s.partitions,
                                s.mean_latency_us as f64 / 1e3, s.max_latency_us as f64 / 1e3
                            );
                        }
                    }
                })
            });
            eprintln!("relay {} running; Ctrl-C stops it", relay.name());
            relay
                .run(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
            if let Some(r) = reporter {
                r.abort();
            }
            let s = relay.stats().snapshot();
            eprintln!("relay stopped: published {}", s.published);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every partition: (partition, owner, lease until µs).
async fn leases(store: &larder::Store) -> Result<Vec<(i64, Option<String>, i64)>> {
    let mut uow = store.begin().await?;
    let tx = uow
        .backend_transaction()
        .and_then(|t| t.outbox())
        .context("this backend has no outbox")?;
    let l = tx.leases().await?;
    uow.rollback().await?;
    Ok(l.into_iter()
        .map(|l| (i64::from(l.partition), l.owner, l.until_micros))
        .collect())
}
