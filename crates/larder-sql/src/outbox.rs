//! The outbox and inbox primitives on any SQL dialect, written once: the statements use
//! `$n` placeholders (both drivers accept them) and differ only by the dialect's no-skip
//! condition ([`LogDialect::OUTBOX_HORIZON`]) and partition count.

use larder_core::backend::BoxFuture;
use larder_core::events::Checkpoint;
use larder_core::outbox::{
    Failure, MessageId, MessageState, NewMessage, OutboxCounts, OutboxTransaction, PartitionLease,
    StoredMessage, decode_headers,
};
use larder_core::{Error, Result};
use sea_query::Value as V;
use uuid::Uuid;

use crate::compile::Built;
use crate::dialect::{LogDialect, RowOf, SqlDialect, SqlRow};
use crate::events::{req_int, u64_of};
use crate::tx::{Kind, SqlTx};

/// Rows per multi-row statement (8 values per row stays far below every driver's limit).
const CHUNK: usize = 500;

const COLUMNS: &str = "o.id, o.topic, o.key, o.partition, o.payload, o.headers, o.tx, \
     o.position, o.state, o.attempts, o.last_error, o.enqueued_at, o.due_at, o.done_at";

fn int(v: i64) -> V {
    V::BigInt(Some(v))
}

fn text(s: &str) -> V {
    V::String(Some(s.to_owned()))
}

fn uuid(u: Uuid) -> V {
    V::Uuid(Some(u))
}

fn built(sql: String, values: Vec<V>) -> Built {
    Built {
        sql: sql.into(),
        values,
    }
}

/// `$from, $from+1, …` for `n` values.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn decode<D: SqlDialect>(r: &RowOf<D>, op: &'static str) -> Result<StoredMessage> {
    let m = |e| D::map(e, op);
    let b = D::BACKEND;
    fn need<T>(v: Option<T>, what: &str, b: &'static str) -> Result<T> {
        v.ok_or_else(|| Error::backend(b, format!("unexpected NULL {what} in _larder_outbox")))
    }
    let id = r
        .uuid(0)
        .map_err(|e| Error::backend(b, format!("stored message id is not a uuid: {e}")))?;
    let partition = req_int::<D>(r, 3, op, "partition")?;
    Ok(StoredMessage {
        id: MessageId(need(id, "id", b)?),
        topic: need(r.text(1).map_err(m)?, "topic", b)?,
        key: r.text(2).map_err(m)?,
        partition: u32::try_from(partition).map_err(|_| Error::backend(b, "negative partition"))?,
        payload: need(r.bytes_ref(4).map_err(m)?, "payload", b)?.to_vec(),
        headers: decode_headers(r.text_ref(5).map_err(m)?)?,
        seq: Checkpoint::new(
            u64_of::<D>(req_int::<D>(r, 6, op, "tx")?, "tx")?,
            u64_of::<D>(req_int::<D>(r, 7, op, "position")?, "position")?,
        ),
        state: MessageState::from_code(req_int::<D>(r, 8, op, "state")?)?,
        attempts: u32::try_from(req_int::<D>(r, 9, op, "attempts")?).unwrap_or(0),
        last_error: r.text(10).map_err(m)?,
        enqueued_at_micros: req_int::<D>(r, 11, op, "enqueued_at")?,
        due_at_micros: req_int::<D>(r, 12, op, "due_at")?,
        done_at_micros: r.int(13).map_err(m)?,
    })
}

impl<D: LogDialect> SqlTx<D> {
    async fn ob_rows(
        &mut self,
        b: Built,
        op: &'static str,
        kind: Kind,
    ) -> Result<Vec<StoredMessage>> {
        let rows = self.fetch(b, op, kind).await?;
        rows.iter().map(|r| decode::<D>(r, op)).collect()
    }
}

impl<D: LogDialect> OutboxTransaction for SqlTx<D> {
    fn partitions(&self) -> u32 {
        D::OUTBOX_PARTITIONS
    }

    fn enqueue<'a>(&'a mut self, messages: &'a [NewMessage]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let op = "outbox.enqueue";
            for chunk in messages.chunks(CHUNK) {
                let mut sql = String::from(
                    "INSERT INTO _larder_outbox (id, topic, key, partition, payload, headers, \
                     enqueued_at, due_at) VALUES ",
                );
                let mut values = Vec::with_capacity(chunk.len() * 8);
                for (i, m) in chunk.iter().enumerate() {
                    if i > 0 {
                        sql.push_str(", ");
                    }
                    sql.push('(');
                    sql.push_str(&placeholders(i * 8 + 1, 8));
                    sql.push(')');
                    values.extend([
                        uuid(m.id),
                        text(&m.topic),
                        V::String(m.key.clone()),
                        int(i64::from(m.partition)),
                        V::Bytes(Some(m.payload.clone())),
                        V::String(m.headers.clone()),
                        int(m.enqueued_at_micros),
                        // Due at once, whatever the producer's clock says: a message
                        // that was never attempted must not wait for the relay's clock
                        // to catch up (a later message of its key would overtake it).
                        int(0),
                    ]);
                }
                // A stored id is skipped (no error, so the transaction stays usable) and
                // detected by what came back; the rest of the statement is undone.
                sql.push_str(" ON CONFLICT (id) DO NOTHING RETURNING id");
                let rows = self.fetch(built(sql, values), op, Kind::Event).await?;
                if rows.len() == chunk.len() {
                    continue;
                }
                let mut stored = Vec::with_capacity(rows.len());
                for r in &rows {
                    if let Some(id) = r
                        .uuid(0)
                        .map_err(|e| Error::backend(D::BACKEND, e.to_string()))?
                    {
                        stored.push(id);
                    }
                }
                let dup = chunk
                    .iter()
                    .find(|m| !stored.contains(&m.id))
                    .map_or_else(String::new, |m| m.id.to_string());
                if !stored.is_empty() {
                    let sql = format!(
                        "DELETE FROM _larder_outbox WHERE id IN ({})",
                        placeholders(1, stored.len())
                    );
                    let values = stored.iter().map(|u| uuid(*u)).collect();
                    self.execute(built(sql, values), op, Kind::Event).await?;
                }
                return Err(Error::AlreadyExists {
                    entity: "message",
                    id: dup,
                });
            }
            Ok(())
        })
    }

    fn fetch_ready<'a>(
        &'a mut self,
        partitions: &'a [u32],
        now_micros: i64,
        limit: u32,
        exclude: &'a [Uuid],
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>>> {
        Box::pin(async move {
            // The blocking condition is written as the partial index's own predicate
            // (`state = 2 OR (state = 0 AND attempts > 0)`) AND the rest, so that SQLite's
            // planner uses `_larder_outbox_blocking_idx` (it does not prove the implication
            // from the equivalent `state = 2 OR (state = 0 AND attempts > 0 AND due_at > $1)`
            // and scanned every pending row per candidate: 0.7 s per fetch at 20,000 pending).
            // The excluded ids are left out in the statement (not after it), so a half in
            // flight costs an index probe per row instead of its payload's transfer.
            let excluded = if exclude.is_empty() {
                String::new()
            } else {
                format!(
                    " AND o.id NOT IN ({})",
                    placeholders(3 + partitions.len(), exclude.len())
                )
            };
            let sql = format!(
                "SELECT {COLUMNS} FROM _larder_outbox o WHERE o.state = 0 AND o.due_at <= $1 \
                 AND o.partition IN ({}){}{excluded} AND (o.key IS NULL OR NOT EXISTS (SELECT 1 FROM \
                 _larder_outbox b WHERE b.key = o.key AND (b.state = 2 OR (b.state = 0 AND \
                 b.attempts > 0)) AND (b.state = 2 OR b.due_at > $1) AND (b.tx, b.position) \
                 < (o.tx, o.position))) ORDER BY o.tx, o.position LIMIT $2",
                placeholders(3, partitions.len()),
                D::OUTBOX_HORIZON,
            );
            let mut values = vec![int(now_micros), int(i64::from(limit))];
            values.extend(partitions.iter().map(|p| int(i64::from(*p))));
            values.extend(exclude.iter().map(|u| uuid(*u)));
            if let Some(setup) = D::OUTBOX_FETCH_PLAN {
                self.execute(built(setup.into(), vec![]), "outbox.fetch", Kind::EventRead)
                    .await?;
            }
            self.ob_rows(built(sql, values), "outbox.fetch", Kind::EventRead)
                .await
        })
    }

    fn mark_delivered<'a>(
        &'a mut self,
        ids: &'a [Uuid],
        now_micros: i64,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let mut n = 0;
            for chunk in ids.chunks(CHUNK) {
                let sql = format!(
                    // `state + 0`: not the pending index's predicate, so the planner looks
                    // the rows up by id even without statistics (it otherwise scans every
                    // pending row through that index and filters the ids: 10 ms at
                    // 20,000 pending instead of 3 ms).
                    "UPDATE _larder_outbox SET state = 1, done_at = $1 WHERE state + 0 = 0 AND \
                     id IN ({})",
                    placeholders(2, chunk.len())
                );
                let mut values = vec![int(now_micros)];
                values.extend(chunk.iter().map(|u| uuid(*u)));
                n += self
                    .execute(built(sql, values), "outbox.mark", Kind::Event)
                    .await?;
            }
            Ok(n)
        })
    }

    fn delete_delivered<'a>(&'a mut self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let mut n = 0;
            for chunk in ids.chunks(CHUNK) {
                // `state + 0`: looked up by id, as in `mark_delivered`.
                let sql = format!(
                    "DELETE FROM _larder_outbox WHERE state + 0 = 0 AND id IN ({})",
                    placeholders(1, chunk.len())
                );
                let values = chunk.iter().map(|u| uuid(*u)).collect();
                n += self
                    .execute(built(sql, values), "outbox.mark", Kind::Event)
                    .await?;
            }
            Ok(n)
        })
    }

    fn mark_failed<'a>(
        &'a mut self,
        failures: &'a [Failure],
        now_micros: i64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            for f in failures {
                let sql = "UPDATE _larder_outbox SET attempts = attempts + $2, last_error = $3, \
                           due_at = $4, state = $5, done_at = $6 WHERE id = $1 AND state = 0";
                let state = if f.dead {
                    MessageState::Dead
                } else {
                    MessageState::Pending
                };
                let values = vec![
                    uuid(f.id),
                    int(i64::from(f.count_attempt)),
                    text(&f.error),
                    int(f.due_at_micros),
                    int(state.code()),
                    V::BigInt(f.dead.then_some(now_micros)),
                ];
                self.execute(built(sql.into(), values), "outbox.mark", Kind::Event)
                    .await?;
            }
            Ok(())
        })
    }

    fn relax_durability(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if let Some(sql) = D::RELAXED_COMMIT {
                self.execute(built(sql.into(), vec![]), "outbox.mark", Kind::Event)
                    .await?;
            }
            Ok(())
        })
    }

    fn heartbeat<'a>(
        &'a mut self,
        relay: &'a str,
        now_micros: i64,
        live_after_micros: i64,
    ) -> BoxFuture<'a, Result<u32>> {
        Box::pin(async move {
            let op = "outbox.lease";
            self.execute(
                built(
                    "DELETE FROM _larder_outbox_relays WHERE seen_at < $1 AND name <> $2".into(),
                    vec![int(live_after_micros), text(relay)],
                ),
                op,
                Kind::Event,
            )
            .await?;
            self.execute(
                built(
                    "INSERT INTO _larder_outbox_relays (name, seen_at) VALUES ($1, $2) ON \
                     CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at"
                        .into(),
                    vec![text(relay), int(now_micros)],
                ),
                op,
                Kind::Event,
            )
            .await?;
            let n = self
                .fetch_int(
                    built("SELECT count(*) FROM _larder_outbox_relays".into(), vec![]),
                    op,
                    Kind::Event,
                )
                .await?
                .unwrap_or(1);
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
    }

    fn leases(&mut self) -> BoxFuture<'_, Result<Vec<PartitionLease>>> {
        Box::pin(async move {
            let op = "outbox.lease";
            let rows = self
                .fetch(
                    built(
                        "SELECT partition, owner, lease_until FROM _larder_outbox_partitions \
                         ORDER BY partition"
                            .into(),
                        vec![],
                    ),
                    op,
                    Kind::Event,
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(PartitionLease {
                        partition: u32::try_from(req_int::<D>(r, 0, op, "partition")?).unwrap_or(0),
                        owner: r.text(1).map_err(|e| D::map(e, op))?,
                        until_micros: req_int::<D>(r, 2, op, "lease_until")?,
                    })
                })
                .collect()
        })
    }

    fn take_partitions<'a>(
        &'a mut self,
        relay: &'a str,
        partitions: &'a [u32],
        now_micros: i64,
        until_micros: i64,
    ) -> BoxFuture<'a, Result<Vec<u32>>> {
        Box::pin(async move {
            if partitions.is_empty() {
                return Ok(Vec::new());
            }
            let op = "outbox.lease";
            // Conditional: a concurrent taker of the same partition waits for this row and
            // re-checks the condition against the committed lease (PostgreSQL), or is
            // serialized (SQLite).
            let sql = format!(
                "UPDATE _larder_outbox_partitions SET owner = $1, lease_until = $3 WHERE \
                 partition IN ({}) AND (owner = $1 OR lease_until < $2) RETURNING partition",
                placeholders(4, partitions.len())
            );
            let mut values = vec![text(relay), int(now_micros), int(until_micros)];
            values.extend(partitions.iter().map(|p| int(i64::from(*p))));
            let rows = self.fetch(built(sql, values), op, Kind::Event).await?;
            rows.iter()
                .map(|r| Ok(u32::try_from(req_int::<D>(r, 0, op, "partition")?).unwrap_or(0)))
                .collect()
        })
    }

    fn release_partitions<'a>(
        &'a mut self,
        relay: &'a str,
        partitions: Option<&'a [u32]>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let op = "outbox.lease";
            let mut sql = String::from(
                "UPDATE _larder_outbox_partitions SET owner = NULL, lease_until = 0 WHERE \
                 owner = $1",
            );
            let mut values = vec![text(relay)];
            if let Some(ps) = partitions {
                if ps.is_empty() {
                    return Ok(());
                }
                sql.push_str(&format!(
                    " AND partition IN ({})",
                    placeholders(2, ps.len())
                ));
                values.extend(ps.iter().map(|p| int(i64::from(*p))));
            }
            self.execute(built(sql, values), op, Kind::Event).await?;
            if partitions.is_none() {
                self.execute(
                    built(
                        "DELETE FROM _larder_outbox_relays WHERE name = $1".into(),
                        vec![text(relay)],
                    ),
                    op,
                    Kind::Event,
                )
                .await?;
            }
            Ok(())
        })
    }

    fn counts(&mut self) -> BoxFuture<'_, Result<OutboxCounts>> {
        Box::pin(async move {
            let op = "outbox.status";
            let sql = "SELECT o.state, count(*), min(o.enqueued_at), max(o.attempts), \
                       sum(CASE WHEN o.state = 0 AND o.key IS NOT NULL AND EXISTS (SELECT 1 \
                       FROM _larder_outbox d WHERE d.state = 2 AND d.key = o.key AND (d.tx, \
                       d.position) < (o.tx, o.position)) THEN 1 ELSE 0 END) FROM \
                       _larder_outbox o GROUP BY o.state";
            let rows = self
                .fetch(built(sql.into(), vec![]), op, Kind::EventRead)
                .await?;
            let mut c = OutboxCounts::default();
            for r in &rows {
                let n = u64_of::<D>(req_int::<D>(r, 1, op, "count")?, "count")?;
                match MessageState::from_code(req_int::<D>(r, 0, op, "state")?)? {
                    MessageState::Pending => {
                        let parked = r
                            .int(4)
                            .map_err(|e| D::map(e, op))?
                            .map_or(Ok(0), |p| u64_of::<D>(p, "count"))?;
                        c.parked = parked;
                        c.pending = n - parked.min(n);
                        c.oldest_pending_micros = r.int(2).map_err(|e| D::map(e, op))?;
                        c.max_attempts_pending = r
                            .int(3)
                            .map_err(|e| D::map(e, op))?
                            .map_or(0, |a| u32::try_from(a).unwrap_or(0));
                    }
                    MessageState::Delivered => c.delivered = n,
                    MessageState::Dead => c.dead = n,
                    MessageState::Skipped => c.skipped = n,
                    _ => {}
                }
            }
            Ok(c)
        })
    }

    fn list<'a>(
        &'a mut self,
        state: MessageState,
        after: Option<Uuid>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>>> {
        Box::pin(async move {
            let mut values = vec![int(state.code()), int(i64::from(limit))];
            let after_sql = match after {
                Some(a) => {
                    values.push(uuid(a));
                    " AND (o.tx, o.position) > (SELECT a.tx, a.position FROM _larder_outbox a \
                     WHERE a.id = $3)"
                }
                None => "",
            };
            let sql = format!(
                "SELECT {COLUMNS} FROM _larder_outbox o WHERE o.state = $1{after_sql} ORDER BY \
                 o.tx, o.position LIMIT $2"
            );
            self.ob_rows(built(sql, values), "outbox.list", Kind::EventRead)
                .await
        })
    }

    fn get<'a>(&'a mut self, id: Uuid) -> BoxFuture<'a, Result<Option<StoredMessage>>> {
        Box::pin(async move {
            let sql = format!("SELECT {COLUMNS} FROM _larder_outbox o WHERE o.id = $1");
            let mut rows = self
                .ob_rows(built(sql, vec![uuid(id)]), "outbox.get", Kind::EventRead)
                .await?;
            Ok(rows.pop())
        })
    }

    fn set_state<'a>(
        &'a mut self,
        id: Uuid,
        from: MessageState,
        to: MessageState,
        now_micros: i64,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let sql = if to == MessageState::Pending {
                "UPDATE _larder_outbox SET state = $3, attempts = 0, due_at = 0, done_at = \
                 NULL WHERE id = $1 AND state = $2"
            } else {
                "UPDATE _larder_outbox SET state = $3, done_at = $4 WHERE id = $1 AND state = $2"
            };
            let op = if to == MessageState::Skipped {
                "outbox.skip"
            } else {
                "outbox.replay"
            };
            let mut values = vec![uuid(id), int(from.code()), int(to.code())];
            if to != MessageState::Pending {
                values.push(int(now_micros));
            }
            let n = self
                .execute(built(sql.into(), values), op, Kind::Event)
                .await?;
            Ok(n > 0)
        })
    }

    fn purge<'a>(&'a mut self, before_micros: i64, limit: u32) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let sql = "DELETE FROM _larder_outbox WHERE position IN (SELECT position FROM \
                       _larder_outbox WHERE state IN (1, 3) AND done_at < $1 ORDER BY done_at \
                       LIMIT $2)";
            self.execute(
                built(sql.into(), vec![int(before_micros), int(i64::from(limit))]),
                "outbox.purge",
                Kind::Event,
            )
            .await
        })
    }

    fn inbox_record<'a>(
        &'a mut self,
        consumer: &'a str,
        message: Uuid,
        now_micros: i64,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let sql = "INSERT INTO _larder_inbox (consumer, message_id, processed_at) VALUES \
                       ($1, $2, $3) ON CONFLICT DO NOTHING";
            let n = self
                .execute(
                    built(
                        sql.into(),
                        vec![text(consumer), uuid(message), int(now_micros)],
                    ),
                    "inbox.record",
                    Kind::Event,
                )
                .await?;
            Ok(n > 0)
        })
    }

    fn inbox_purge<'a>(&'a mut self, before_micros: i64, limit: u32) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let sql = "DELETE FROM _larder_inbox WHERE (consumer, message_id) IN (SELECT \
                       consumer, message_id FROM _larder_inbox WHERE processed_at < $1 LIMIT $2)";
            self.execute(
                built(sql.into(), vec![int(before_micros), int(i64::from(limit))]),
                "inbox.purge",
                Kind::Event,
            )
            .await
        })
    }
}
