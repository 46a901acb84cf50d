//! `larder events …` and `larder projections …`: inspect the event store's global log,
//! follow it live, and manage projection checkpoints.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use larder::Store;
use larder::events::{
    Checkpoint, EventFilter, EventStore, HorizonHolder, ReadDirection, RecordedEvent,
    StoredCheckpoint,
};

/// Lag counts are capped here (the same cap `ProjectionRunner::status` uses).
const LAG_CAP: u64 = u64::MAX >> 1;

/// Events read per page by `events read`.
const PAGE: u32 = 1_000;

/// `larder events …`
#[derive(Debug, Args)]
#[command(
    after_help = "Checkpoints are opaque tokens such as `c1.0.42`: copy them from \
`events stats`, `events read` or `events tail`.\n\
Examples:\n  larder events stats\n  larder events read order-42 --json\n  \
larder events tail --from-start --category order --limit 10"
)]
pub(crate) struct EventsArgs {
    #[command(subcommand)]
    command: EventsCommand,
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Events, streams, the readable head checkpoint, and every consumer checkpoint with
    /// its lag (events after it)
    Stats,
    /// Print one stream's events: version, checkpoint, type, schema version, recorded at,
    /// payload and metadata (`--json`: a JSON array)
    Read {
        /// The stream id, e.g. `order-42`
        stream: String,
        /// First version to print (forward: default 1; with --backward: default the last)
        #[arg(long)]
        from: Option<u64>,
        /// Print at most this many events [default: all]
        #[arg(long)]
        limit: Option<u64>,
        /// Newest first
        #[arg(long)]
        backward: bool,
    },
    /// Follow the global log live, one line per event (`--json`: one JSON object per
    /// line), until Ctrl-C or until --limit events were printed. Without --from or
    /// --from-start it starts at the current end of the log.
    Tail {
        /// Start after this checkpoint token (e.g. `c1.0.42`)
        #[arg(long, conflicts_with = "from_start")]
        from: Option<String>,
        /// Start at the beginning of the log (print the whole backlog first)
        #[arg(long)]
        from_start: bool,
        /// Only streams of this category (the stream id before its first `-`); repeatable
        #[arg(long = "category", value_name = "CATEGORY")]
        categories: Vec<String>,
        /// Only events of this type; repeatable
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
        /// Stop after printing this many events
        #[arg(long)]
        limit: Option<u64>,
    },
}

/// `larder projections …`
#[derive(Debug, Args)]
#[command(
    after_help = "The CLI cannot run your projection code: `rebuild` only resets the \
stored checkpoint to the start of the log, and the service's running ProjectionRunner replays \
the log into the read model. Unlike the in-process `ProjectionRunner::rebuild`, it does NOT \
clear the read model (the projection's `reset`): make sure the projection's handlers are \
idempotent, or clear the read model yourself first.\n\
Examples:\n  larder projections status\n  larder projections rebuild order_totals --yes --wait"
)]
pub(crate) struct ProjectionsArgs {
    #[command(subcommand)]
    command: ProjectionsCommand,
}

#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// Every stored projection (consumer) checkpoint with its lag (events after it)
    Status,
    /// Reset a projection's checkpoint to the start of the log, so the running service's
    /// ProjectionRunner replays the whole log into it. Only the checkpoint is reset: unlike
    /// the in-process `ProjectionRunner::rebuild`, the read model is not cleared.
    Rebuild {
        /// The projection's name, as listed by `projections status`
        name: String,
        /// Do not ask for confirmation (required when stdin is not a terminal)
        #[arg(long, short = 'y')]
        yes: bool,
        /// Then wait until the projection has caught up (lag 0), showing progress
        #[arg(long)]
        wait: bool,
        /// With --wait: give up (exit code 1) after this many seconds
        #[arg(long, requires = "wait", value_name = "SECONDS")]
        timeout: Option<u64>,
    },
}

/// Opens an initialised store's event store without applying migrations: these commands
/// never create tables (see `crate::store`).
async fn open(settings: &larder::Settings) -> Result<(Store, EventStore)> {
    let store = crate::store::open_existing(settings).await?;
    match EventStore::builder(&store).prepare(false).open().await {
        Ok(es) => Ok((store, es)),
        Err(e) => {
            store.close().await;
            Err(e).context("cannot open the event store")
        }
    }
}

/// A checkpoint for people: the token to copy, then its parts, e.g.
/// `c1.123.45 (tx 123, position 45)`; `(position 45)` where the backend orders by position
/// alone (transaction part 0), `(start of the log)` for the start.
pub(crate) fn human(cp: Checkpoint) -> String {
    if cp == Checkpoint::START {
        format!("{} (start of the log)", cp.token())
    } else if cp.tx() == 0 {
        format!("{} (position {})", cp.token(), cp.position())
    } else {
        format!(
            "{} (tx {}, position {})",
            cp.token(),
            cp.tx(),
            cp.position()
        )
    }
}

fn parse_checkpoint(token: &str) -> Result<Checkpoint> {
    Checkpoint::from_token(token).map_err(|e| {
        anyhow!(
            "{e} (a checkpoint token looks like `c1.0.42`: copy one from `larder events stats`)"
        )
    })
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC) from microseconds since the Unix epoch (outside
/// jiff's years -9999 to 9999: the microseconds, `<n>us`).
pub(crate) fn rfc3339(micros: i64) -> String {
    let Ok(ts) = jiff::Timestamp::from_microsecond(micros) else {
        return format!("{micros}us");
    };
    let t = jiff::tz::Offset::UTC.to_datetime(ts);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.subsec_nanosecond() / 1_000
    )
}

/// Parsed JSON when the text is JSON, else the text as a JSON string.
fn json_text(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::from(s))
}

fn event_json(e: &RecordedEvent) -> serde_json::Value {
    serde_json::json!({
        "stream": e.stream_id,
        "version": e.stream_version,
        "checkpoint": e.checkpoint.token(),
        "position": e.position(),
        "event_id": e.event_id.to_string(),
        "type": e.event_type,
        "schema_version": e.schema_version,
        "recorded_at": rfc3339(e.recorded_at_micros),
        "recorded_at_micros": e.recorded_at_micros,
        "payload": json_text(&e.payload),
        "metadata": e.metadata.as_deref().map(json_text),
    })
}

fn event_line(e: &RecordedEvent, with_stream: bool) -> String {
    let mut line = String::new();
    if with_stream {
        line.push_str(&format!("{}@{}", e.stream_id, e.stream_version));
    } else {
        line.push_str(&format!("{:>6}", e.stream_version));
    }
    line.push_str(&format!(
        "  {}  {} v{}  {}  {}",
        human(e.checkpoint),
        e.event_type,
        e.schema_version,
        rfc3339(e.recorded_at_micros),
        e.payload
    ));
    if let Some(m) = &e.metadata {
        line.push_str("  meta=");
        line.push_str(m);
    }
    line
}

/// Who holds the log's horizon back, read in a unit of work of its own (PostgreSQL reads
/// its session list once per transaction).
pub(crate) async fn horizon_holder(
    store: &Store,
    es: &EventStore,
) -> Result<Option<HorizonHolder>> {
    let mut uow = store.read().await?;
    let h = es.horizon_holder(&mut uow).await?;
    uow.commit().await?;
    Ok(h)
}

/// The `log horizon: …` line of `doctor` and `projections status`.
pub(crate) fn horizon_line(h: Option<&HorizonHolder>) -> String {
    match h {
        Some(h) => format!("log horizon: {h}"),
        None => "log horizon: not held back".to_owned(),
    }
}

/// The `log_horizon` object of `doctor --json` and `projections status --json`.
pub(crate) fn horizon_json(h: Option<&HorizonHolder>) -> serde_json::Value {
    let holder = h.map(|h| {
        serde_json::json!({
            "pid": h.pid,
            "prepared_gid": h.prepared_gid,
            "database": h.database,
            "user": h.user,
            "application_name": h.application_name,
            "state": h.state,
            "transaction_age_s": h.transaction_age.map(|d| d.as_secs_f64()),
            "backend_xid": h.backend_xid,
            "held_events": h.held_events,
            "text": h.to_string(),
        })
    });
    serde_json::json!({
        "held_back": h.is_some(),
        "held_events": h.map_or(0, |h| h.held_events),
        "holder": holder,
    })
}

struct ConsumerLag {
    stored: StoredCheckpoint,
    lag: u64,
}

/// Every stored checkpoint and its lag, in one read-only unit of work.
async fn consumer_lags(es: &EventStore, uow: &mut larder::Uow) -> Result<Vec<ConsumerLag>> {
    let mut out = Vec::new();
    for stored in es.list_checkpoints(uow).await? {
        let lag = es.count_after(uow, stored.checkpoint, LAG_CAP).await?;
        out.push(ConsumerLag { stored, lag });
    }
    out.sort_by(|a, b| a.stored.name.cmp(&b.stored.name));
    Ok(out)
}

fn lags_json(lags: &[ConsumerLag]) -> serde_json::Value {
    lags.iter()
        .map(|c| {
            serde_json::json!({
                "name": c.stored.name,
                "checkpoint": c.stored.checkpoint.token(),
                "lag": c.lag,
                "updated_at": rfc3339(c.stored.updated_at_micros),
            })
        })
        .collect()
}

fn print_lags(lags: &[ConsumerLag]) {
    if lags.is_empty() {
        println!("no consumer checkpoints");
        return;
    }
    let w = lags
        .iter()
        .map(|c| c.stored.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let cw = lags
        .iter()
        .map(|c| human(c.stored.checkpoint).len())
        .max()
        .unwrap_or(0)
        .max(10);
    println!(
        "{:<w$}  {:<cw$}  {:>10}  updated at",
        "name", "checkpoint", "lag"
    );
    for c in lags {
        println!(
            "{:<w$}  {:<cw$}  {:>10}  {}",
            c.stored.name,
            human(c.stored.checkpoint),
            c.lag,
            rfc3339(c.stored.updated_at_micros)
        );
    }
}

/// Runs `larder events …`.
pub(crate) async fn run_events(
    args: &EventsArgs,
    settings: &larder::Settings,
    json: bool,
) -> Result<ExitCode> {
    // Check the command line before touching the database.
    let start = match &args.command {
        EventsCommand::Read { stream, limit, .. } => {
            if stream.is_empty() {
                bail!("the stream id is empty");
            }
            if *limit == Some(0) {
                bail!("--limit must be at least 1");
            }
            None
        }
        EventsCommand::Tail {
            from,
            from_start,
            limit,
            ..
        } => {
            if *limit == Some(0) {
                bail!("--limit must be at least 1");
            }
            match from {
                Some(token) => Some(parse_checkpoint(token)?),
                None if *from_start => Some(Checkpoint::START),
                None => None,
            }
        }
        EventsCommand::Stats => None,
    };
    let (store, es) = open(settings).await?;
    let r = match &args.command {
        EventsCommand::Stats => stats(&store, &es, json).await,
        EventsCommand::Read {
            stream,
            from,
            limit,
            backward,
        } => read(&store, &es, stream, *from, *limit, *backward, json).await,
        EventsCommand::Tail {
            categories,
            types,
            limit,
            ..
        } => {
            let filter = EventFilter {
                categories: categories.clone(),
                event_types: types.clone(),
            };
            tail(&store, &es, start, filter, *limit, json).await
        }
    };
    store.close().await;
    r.map(|()| ExitCode::SUCCESS)
}

async fn stats(store: &Store, es: &EventStore, json: bool) -> Result<()> {
    let mut uow = store.read().await?;
    let s = es.stats(&mut uow).await?;
    let lags = consumer_lags(es, &mut uow).await?;
    uow.commit().await?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "ok": true,
                "events": s.events,
                "streams": s.streams,
                "head": s.head.token(),
                "checkpoints": lags_json(&lags),
            })
        );
    } else {
        println!("events    {}", s.events);
        println!("streams   {}", s.streams);
        println!("head      {}", human(s.head));
        println!();
        print_lags(&lags);
    }
    Ok(())
}

async fn read(
    store: &Store,
    es: &EventStore,
    stream: &str,
    from: Option<u64>,
    limit: Option<u64>,
    backward: bool,
    json: bool,
) -> Result<()> {
    let direction = if backward {
        ReadDirection::Backward
    } else {
        ReadDirection::Forward
    };
    let mut next = from.unwrap_or(if backward { u64::MAX } else { 1 });
    let mut remaining = limit.unwrap_or(u64::MAX);
    let mut events = Vec::new();
    let mut uow = store.read().await?;
    while remaining > 0 {
        let page = u32::try_from(remaining.min(u64::from(PAGE))).unwrap_or(PAGE);
        let batch = es
            .read_stream(&mut uow, stream, next, page, direction)
            .await?;
        let n = batch.len();
        if let Some(last) = batch.last() {
            next = if backward {
                last.stream_version.saturating_sub(1)
            } else {
                last.stream_version + 1
            };
        }
        remaining -= n as u64;
        events.extend(batch);
        if n < page as usize || (backward && next == 0) {
            break;
        }
    }
    uow.commit().await?;
    if json {
        let arr: Vec<serde_json::Value> = events.iter().map(event_json).collect();
        println!("{}", serde_json::Value::from(arr));
    } else if events.is_empty() {
        println!("stream `{stream}`: no events");
    } else {
        for e in &events {
            println!("{}", event_line(e, false));
        }
    }
    Ok(())
}

async fn tail(
    store: &Store,
    es: &EventStore,
    start: Option<Checkpoint>,
    filter: EventFilter,
    limit: Option<u64>,
    json: bool,
) -> Result<()> {
    let mut uow = store.read().await?;
    let start = match start {
        Some(cp) => cp,
        None => es.stats(&mut uow).await?.head,
    };
    // One small read checks the filter (categories, types, limits) before following.
    es.read_all(&mut uow, start, 1, &filter).await?;
    uow.commit().await?;
    if !json {
        eprintln!(
            "following the log after {}{} (Ctrl-C to stop)",
            human(start),
            limit.map_or(String::new(), |n| format!(", {n} event(s)"))
        );
    }
    let mut sub = es.subscribe(start, filter);
    let mut printed = 0u64;
    let mut failures = 0u32;
    let mut out = std::io::stdout().lock();
    while limit.is_none_or(|n| printed < n) {
        let Some(item) = sub.next().await else {
            bail!("the subscription ended unexpectedly");
        };
        match item {
            Ok(e) => {
                failures = 0;
                if json {
                    writeln!(out, "{}", event_json(&e))?;
                } else {
                    writeln!(out, "{}", event_line(&e, true))?;
                }
                out.flush()?;
                printed += 1;
            }
            Err(e) => {
                failures += 1;
                if failures >= 10 {
                    return Err(e).context("reading the log failed 10 times in a row");
                }
                eprintln!("warning: reading the log failed (retrying): {e}");
            }
        }
    }
    Ok(())
}

/// Runs `larder projections …`.
pub(crate) async fn run_projections(
    args: &ProjectionsArgs,
    settings: &larder::Settings,
    json: bool,
) -> Result<ExitCode> {
    if let ProjectionsCommand::Rebuild { name, .. } = &args.command
        && name.is_empty()
    {
        bail!("the projection name is empty");
    }
    let (store, es) = open(settings).await?;
    let r = match &args.command {
        ProjectionsCommand::Status => status(&store, &es, json).await,
        ProjectionsCommand::Rebuild {
            name,
            yes,
            wait,
            timeout,
        } => {
            rebuild(
                &store,
                &es,
                name,
                *yes,
                wait.then(|| timeout.map(Duration::from_secs)),
                json,
            )
            .await
        }
    };
    store.close().await;
    r.map(|()| ExitCode::SUCCESS)
}

async fn status(store: &Store, es: &EventStore, json: bool) -> Result<()> {
    let holder = horizon_holder(store, es).await?;
    let mut uow = store.read().await?;
    let head = es.stats(&mut uow).await?.head;
    let lags = consumer_lags(es, &mut uow).await?;
    uow.commit().await?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "ok": true,
                "head": head.token(),
                "log_horizon": horizon_json(holder.as_ref()),
                "projections": lags_json(&lags),
            })
        );
    } else {
        println!("log head  {}", human(head));
        println!("{}", horizon_line(holder.as_ref()));
        println!();
        print_lags(&lags);
    }
    Ok(())
}

fn confirm(name: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("resetting projection `{name}` needs confirmation: pass --yes");
    }
    eprint!(
        "Reset projection `{name}` to the start of the log (its read model is NOT cleared)? [y/N] "
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        bail!("not confirmed: projection `{name}` left unchanged");
    }
    Ok(())
}

/// `wait`: `None` = do not wait; `Some(None)` = wait without a time limit.
async fn rebuild(
    store: &Store,
    es: &EventStore,
    name: &str,
    yes: bool,
    wait: Option<Option<Duration>>,
    json: bool,
) -> Result<()> {
    // Refuse unknown names before asking anything.
    let mut uow = store.read().await?;
    let known = es.list_checkpoints(&mut uow).await?;
    uow.commit().await?;
    if !known.iter().any(|c| c.name == name) {
        let mut names: Vec<&str> = known.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        let list = if names.is_empty() {
            "there are no stored projection checkpoints".to_owned()
        } else {
            format!("known: {}", names.join(", "))
        };
        bail!("unknown projection `{name}`: no stored checkpoint has this name ({list})");
    }
    if !yes {
        confirm(name)?;
    }
    // Claiming locks the checkpoint row, so a running batch of the projection finishes
    // first and the reset is not overwritten by it.
    let mut uow = store.begin().await?;
    let previous = es
        .load_checkpoint(&mut uow, name)
        .await?
        .ok_or_else(|| anyhow!("projection `{name}` was deleted meanwhile"))?;
    es.claim_checkpoint(&mut uow, name).await?;
    es.save_checkpoint(&mut uow, name, Checkpoint::START)
        .await?;
    let total = es.count_after(&mut uow, Checkpoint::START, LAG_CAP).await?;
    uow.commit().await?;
    if !json {
        println!(
            "reset projection `{name}` from {} to the start of the log ({total} event(s) to replay)",
            human(previous)
        );
        println!(
            "the service's running ProjectionRunner replays them; the read model was not cleared"
        );
    }
    let caught_up = match wait {
        None => None,
        Some(timeout) => Some(wait_caught_up(store, es, name, total, timeout, json).await?),
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "ok": true,
                "projection": name,
                "previous": previous.token(),
                "checkpoint": Checkpoint::START.token(),
                "to_replay": total,
                "caught_up": caught_up,
            })
        );
    }
    Ok(())
}

/// Polls the checkpoint until its lag is 0; a progress bar on a terminal, plain lines
/// otherwise. Returns `true` (or an error at the timeout).
async fn wait_caught_up(
    store: &Store,
    es: &EventStore,
    name: &str,
    total: u64,
    timeout: Option<Duration>,
    json: bool,
) -> Result<bool> {
    let started = Instant::now();
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(format!("replayed by `{name}`"));
        b
    });
    if bar.is_none() && !json {
        println!("waiting for `{name}` to catch up (a running ProjectionRunner replays the log)");
    }
    let mut last_line: Option<(u64, Instant)> = None;
    let result = loop {
        let lag = async {
            let mut uow = store.read().await?;
            let cp = es
                .load_checkpoint(&mut uow, name)
                .await?
                .ok_or_else(|| anyhow!("the checkpoint of `{name}` was deleted while waiting"))?;
            let lag = es.count_after(&mut uow, cp, LAG_CAP).await?;
            uow.commit().await?;
            Ok::<u64, anyhow::Error>(lag)
        }
        .await;
        let lag = match lag {
            Ok(l) => l,
            Err(e) => break Err(e),
        };
        // New events may arrive while replaying: the total grows with them.
        let done = total.saturating_sub(lag);
        let len = total.max(done + lag);
        if let Some(b) = &bar {
            b.set_length(len);
            b.set_position(done);
        } else if !json
            && lag > 0
            && last_line.is_none_or(|(d, at)| d != done && at.elapsed() >= Duration::from_secs(1))
        {
            println!("`{name}`: {done}/{len} events replayed, {lag} behind");
            last_line = Some((done, Instant::now()));
        }
        if lag == 0 {
            break Ok(true);
        }
        if let Some(t) = timeout
            && started.elapsed() >= t
        {
            break Err(anyhow!(
                "projection `{name}` did not catch up within {} s ({lag} event(s) behind); \
                 is a ProjectionRunner running for it?",
                t.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if result.is_ok() && !json {
        println!(
            "projection `{name}` caught up in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    result
}

#[cfg(test)]
mod tests {
    use super::{Checkpoint, human, rfc3339};

    #[test]
    fn checkpoints_print_their_parts_next_to_the_token() {
        assert_eq!(
            human(Checkpoint::new(123, 45)),
            "c1.123.45 (tx 123, position 45)"
        );
        assert_eq!(human(Checkpoint::new(0, 7)), "c1.0.7 (position 7)");
        assert_eq!(human(Checkpoint::START), "c1.0.0 (start of the log)");
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(1_709_210_096_123_456),
            "2024-02-29T12:34:56.123456Z"
        );
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(rfc3339(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(
            rfc3339(4_107_542_399_999_999),
            "2100-02-28T23:59:59.999999Z"
        );
        assert_eq!(rfc3339(i64::MAX), format!("{}us", i64::MAX));
    }
}
