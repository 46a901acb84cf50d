//! The blob reference primitives on any SQL dialect, written once (`$n` placeholders,
//! upserts with `ON CONFLICT … DO UPDATE … WHERE` and `RETURNING`, which PostgreSQL and
//! SQLite ≥ 3.35 both run the same way).

use larder_core::backend::BoxFuture;
use larder_core::blob::{BlobRef, BlobRefTransaction, decode_metadata, encode_metadata};
use larder_core::{Error, Result};
use sea_query::Value as V;

use crate::compile::Built;
use crate::dialect::{LogDialect, RowOf, SqlRow};
use crate::events::req_int;
use crate::tx::{Kind, SqlTx};

const REF_COLUMNS: &str = "key, object, size, sha256, content_type, metadata, created_at";

/// How many times `put_ref` retries when a concurrent writer of the same key commits
/// between its delete and its insert.
const PUT_ATTEMPTS: usize = 8;

fn built(sql: &str, values: Vec<V>) -> Built {
    Built {
        sql: sql.into(),
        values,
    }
}

fn text(s: &str) -> V {
    V::String(Some(s.to_owned()))
}

fn int(v: i64) -> V {
    V::BigInt(Some(v))
}

fn size_of(v: u64) -> V {
    int(i64::try_from(v).unwrap_or(i64::MAX))
}

/// `key >= prefix AND` the first characters of the key are the prefix (index-friendly
/// lower bound, exact test).
const PREFIX: &str = "key >= $1 AND substr(key, 1, CAST($2 AS INTEGER)) = $1";

fn prefix_values(prefix: &str) -> Vec<V> {
    vec![
        text(prefix),
        int(i64::try_from(prefix.chars().count()).unwrap_or(i64::MAX)),
    ]
}

fn decode<D: LogDialect>(r: &RowOf<D>, op: &'static str) -> Result<BlobRef> {
    let m = |e| D::map(e, op);
    let need = |v: Option<String>, what: &str| {
        v.ok_or_else(|| {
            Error::backend(
                D::BACKEND,
                format!("unexpected NULL {what} in _larder_blob_refs"),
            )
        })
    };
    let meta = larder_core::blob::BlobMeta::default_for("");
    let mut b = BlobRef::new(
        &need(r.text(0).map_err(m)?, "key")?,
        &need(r.text(1).map_err(m)?, "object")?,
        &meta,
    );
    b.size = u64::try_from(req_int::<D>(r, 2, op, "size")?).unwrap_or(0);
    b.sha256 = need(r.text(3).map_err(m)?, "sha256")?;
    b.content_type = r.text(4).map_err(m)?;
    b.metadata = decode_metadata(r.text_ref(5).map_err(m)?)?;
    b.created_micros = req_int::<D>(r, 6, op, "created_at")?;
    Ok(b)
}

impl<D: LogDialect> SqlTx<D> {
    async fn first_text(
        &mut self,
        b: Built,
        op: &'static str,
        kind: Kind,
    ) -> Result<Option<String>> {
        let rows = self.fetch(b, op, kind).await?;
        match rows.first() {
            None => Ok(None),
            Some(r) => r.text(0).map_err(|e| D::map(e, op)),
        }
    }
}

impl<D: LogDialect> BlobRefTransaction for SqlTx<D> {
    fn acquire<'a>(
        &'a mut self,
        object: &'a str,
        create: Option<(u64, i64)>,
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        Box::pin(async move {
            let op = "blob.acquire";
            let b = match create {
                Some((_, now)) => built(
                    "INSERT INTO _larder_blob_objects (object, refs, claimed, created_at) \
                     VALUES ($1, 1, 0, $2) ON CONFLICT (object) DO UPDATE SET refs = \
                     _larder_blob_objects.refs + 1 WHERE _larder_blob_objects.claimed = 0 \
                     RETURNING refs",
                    vec![text(object), int(now)],
                ),
                None => built(
                    "UPDATE _larder_blob_objects SET refs = refs + 1 WHERE object = $1 AND \
                     claimed = 0 RETURNING refs",
                    vec![text(object)],
                ),
            };
            let n = self.fetch_int(b, op, Kind::Write).await?;
            Ok(n.map(|n| u64::try_from(n).unwrap_or(0)))
        })
    }

    fn release<'a>(&'a mut self, object: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let b = built(
                "UPDATE _larder_blob_objects SET refs = refs - 1 WHERE object = $1 AND refs > 0",
                vec![text(object)],
            );
            self.execute(b, "blob.release", Kind::Write).await?;
            Ok(())
        })
    }

    fn claim<'a>(&'a mut self, object: &'a str, now_micros: i64) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            // PostgreSQL: a concurrent transaction that inserted or holds the row is waited
            // for; the condition is checked on the row it committed.
            let b = built(
                "INSERT INTO _larder_blob_objects (object, refs, claimed, created_at) VALUES \
                 ($1, 0, 1, $2) ON CONFLICT (object) DO UPDATE SET claimed = 1 WHERE \
                 _larder_blob_objects.refs = 0 RETURNING object",
                vec![text(object), int(now_micros)],
            );
            Ok(self
                .first_text(b, "blob.claim", Kind::Write)
                .await?
                .is_some())
        })
    }

    fn forget<'a>(&'a mut self, object: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let b = built(
                "DELETE FROM _larder_blob_objects WHERE object = $1 AND claimed = 1",
                vec![text(object)],
            );
            self.execute(b, "blob.forget", Kind::Write).await?;
            Ok(())
        })
    }

    fn unreferenced<'a>(
        &'a mut self,
        before_micros: i64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            let op = "blob.unreferenced";
            let b = built(
                "SELECT object FROM _larder_blob_objects WHERE refs = 0 AND created_at < $1 \
                 ORDER BY object LIMIT $2",
                vec![int(before_micros), int(i64::from(limit))],
            );
            let rows = self.fetch(b, op, Kind::Read).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                if let Some(o) = r.text(0).map_err(|e| D::map(e, op))? {
                    out.push(o);
                }
            }
            Ok(out)
        })
    }

    fn put_ref<'a>(
        &'a mut self,
        r: &'a BlobRef,
        replace: bool,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let op = "blob.put_ref";
            let insert = || {
                built(
                    "INSERT INTO _larder_blob_refs (key, object, size, sha256, content_type, \
                     metadata, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT \
                     (key) DO NOTHING RETURNING key",
                    vec![
                        text(&r.key),
                        text(&r.object),
                        size_of(r.size),
                        text(&r.sha256),
                        V::String(r.content_type.clone()),
                        V::String(encode_metadata(&r.metadata)),
                        int(r.created_micros),
                    ],
                )
            };
            if !replace {
                return match self.first_text(insert(), op, Kind::Write).await? {
                    Some(_) => Ok(None),
                    None => Err(Error::AlreadyExists {
                        entity: "blob",
                        id: r.key.clone(),
                    }),
                };
            }
            // Delete, then insert: the delete waits for a concurrent writer of the key
            // and returns the object it committed; an insert that still finds a row (a
            // writer that inserted the key meanwhile) starts over, seeing it now.
            let mut before = None;
            for _ in 0..PUT_ATTEMPTS {
                let del = built(
                    "DELETE FROM _larder_blob_refs WHERE key = $1 RETURNING object",
                    vec![text(&r.key)],
                );
                if let Some(o) = self.first_text(del, op, Kind::Write).await? {
                    // Two deletes can only both return something when the first object
                    // was ours to release and the second a concurrent writer's.
                    if let Some(prev) = before.replace(o) {
                        self.release(&prev).await?;
                    }
                }
                if self.first_text(insert(), op, Kind::Write).await?.is_some() {
                    return Ok(before);
                }
            }
            Err(Error::Transient {
                kind: larder_core::TransientKind::Serialization,
            })
        })
    }

    fn delete_ref<'a>(&'a mut self, key: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let b = built(
                "DELETE FROM _larder_blob_refs WHERE key = $1 RETURNING object",
                vec![text(key)],
            );
            self.first_text(b, "blob.delete_ref", Kind::Write).await
        })
    }

    fn get_ref<'a>(&'a mut self, key: &'a str) -> BoxFuture<'a, Result<Option<BlobRef>>> {
        Box::pin(async move {
            let op = "blob.get_ref";
            let sql = format!("SELECT {REF_COLUMNS} FROM _larder_blob_refs WHERE key = $1");
            let rows = self
                .fetch(built(&sql, vec![text(key)]), op, Kind::Read)
                .await?;
            rows.first().map(|r| decode::<D>(r, op)).transpose()
        })
    }

    fn list_refs<'a>(
        &'a mut self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<BlobRef>>> {
        Box::pin(async move {
            let op = "blob.list_refs";
            let mut values = prefix_values(prefix);
            let after_sql = match after {
                Some(a) => {
                    values.push(text(a));
                    " AND key > $4"
                }
                None => "",
            };
            values.insert(2, int(i64::from(limit)));
            let sql = format!(
                "SELECT {REF_COLUMNS} FROM _larder_blob_refs WHERE {PREFIX}{after_sql} \
                 ORDER BY key LIMIT $3"
            );
            let rows = self.fetch(built(&sql, values), op, Kind::Read).await?;
            rows.iter().map(|r| decode::<D>(r, op)).collect()
        })
    }

    fn usage<'a>(&'a mut self, prefix: &'a str) -> BoxFuture<'a, Result<(u64, u64)>> {
        Box::pin(async move {
            let op = "blob.usage";
            let sql = format!(
                "SELECT count(*), CAST(COALESCE(sum(size), 0) AS BIGINT) FROM \
                 _larder_blob_refs WHERE {PREFIX}"
            );
            let rows = self
                .fetch(built(&sql, prefix_values(prefix)), op, Kind::Read)
                .await?;
            let Some(r) = rows.first() else {
                return Ok((0, 0));
            };
            let n = req_int::<D>(r, 0, op, "count")?;
            let bytes = req_int::<D>(r, 1, op, "sum")?;
            Ok((
                u64::try_from(n).unwrap_or(0),
                u64::try_from(bytes).unwrap_or(0),
            ))
        })
    }
}
