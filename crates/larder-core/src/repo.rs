//! The generic repository.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use crate::backend::BoxStream;
use crate::deadline::{CLIENT_GRACE, Deadline};
use crate::entity::{Entity, EntityDef, Record, Storage, Versioned};
use crate::error::{Error, Result};
use crate::query::{Page, Query, encode_cursor};
use crate::spec::{Pred, Spec};
use crate::uow::Uow;
use crate::value::{FieldValue, Value};

/// A repository of `T`, borrowed from a [`Uow`]: every call runs in that unit of work's
/// transaction.
///
/// Every write is checked by version (optimistic concurrency): `insert` creates version 1,
/// `update` and `delete` take the version the caller read and fail with
/// [`Error::Conflict`] if storage has moved on. Every call is bounded by the unit of work's
/// deadline (and [`Repo::with_deadline`]), is recorded as a `larder.repository.<op>` span,
/// and produces one audit record.
pub struct Repo<'u, T> {
    uow: &'u mut Uow,
    deadline: Option<Deadline>,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Repo<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("entity", &std::any::type_name::<T>())
            .field("deadline", &self.deadline)
            .finish()
    }
}

macro_rules! op_span {
    ($self:ident, $name:literal, $op:literal) => {
        crate::uow::storage_span!(&*$self.uow, $name, $op, T::def().table, None::<&str>)
    };
}

/// Runs one backend call through [`Uow::call`] (deadline, backstop timer, span) and records
/// its outcome with [`Uow::finish_op`] (span fields, audit). A macro only so that call sites
/// read as one line; the ceremony itself lives in `Uow`.
macro_rules! run {
    ($self:ident, $span:expr, $op:literal, $id:expr, $rows:expr, |$tx:ident| $call:expr) => {{
        let span = $span;
        let deadline = $self.effective_deadline();
        let result = match $id.map_or(Ok(()), |id| T::def().check_id(id)) {
            Ok(()) => $self.uow.call($op, deadline, &span, |$tx| $call).await,
            Err(e) => Err(e),
        };
        $self.after(&span, $op, $id, &result, $rows);
        result
    }};
}

impl<'u, T: Entity> Repo<'u, T> {
    pub(crate) fn new(uow: &'u mut Uow) -> Self {
        Repo {
            uow,
            deadline: None,
            _t: PhantomData,
        }
    }

    /// Bounds the calls made through this repository handle (the unit of work's own
    /// deadline still applies; the earlier wins).
    #[must_use]
    pub fn with_deadline(mut self, deadline: Deadline) -> Self {
        self.deadline = Some(deadline);
        self
    }

    fn effective_deadline(&self) -> Option<Deadline> {
        Deadline::earliest(self.uow.deadline(), self.deadline)
    }

    fn check_write(&self, operation: &'static str) -> Result<()> {
        if self.uow.is_read_only() {
            return Err(Error::ReadOnly { operation });
        }
        Ok(())
    }

    fn encode(&self, entity: &T, version: u64) -> Result<Record> {
        let def = T::def();
        let mut rec = entity.to_record()?;
        rec.version = version;
        if rec.values.len() != def.fields.len()
            || rec.body.is_some() != (def.storage == Storage::Document)
        {
            return Err(crate::entity::mapping_error(
                def.name,
                "encode",
                "to_record does not match the entity definition",
            ));
        }
        rec.check_storable(def)?;
        rec.prepare_for_write(def)?;
        let limit = self.uow.limits().max_record_bytes;
        let size = rec.body.as_ref().map_or(0, String::len)
            + rec
                .values
                .iter()
                .map(|v| match v {
                    Value::Text(s) => s.len(),
                    Value::Json(_) => 0,
                    _ => 8,
                })
                .sum::<usize>();
        if size > limit {
            return Err(Error::LimitExceeded {
                what: "encoded entity size (bytes)",
                limit: limit as u64,
                actual: size as u64,
            });
        }
        Ok(rec)
    }

    fn after<R>(
        &self,
        span: &tracing::Span,
        operation: &'static str,
        entity_id: Option<&Value>,
        result: &Result<R>,
        rows: impl Fn(&R) -> u64,
    ) {
        self.uow.finish_op(
            span,
            operation,
            Some(T::def().name),
            entity_id,
            result,
            rows,
        );
    }

    /// Inserts a new entity as version 1. A duplicate id fails with
    /// [`Error::AlreadyExists`] and leaves the unit of work usable.
    pub async fn insert(&mut self, entity: &T) -> Result<Versioned<()>> {
        let span = op_span!(self, "larder.repository.insert", "insert");
        let prep = self
            .check_write("repository.insert")
            .and_then(|()| self.encode(entity, 1));
        let rec = match prep {
            Ok(r) => r,
            Err(e) => {
                let id = entity.id().to_value();
                return Err(self.fail(span, "repository.insert", Some(&id), e));
            }
        };
        run!(
            self,
            span,
            "repository.insert",
            Some(&rec.id),
            |_| 1,
            |tx| tx.insert(T::def(), &rec)
        )?;
        Ok(Versioned {
            value: (),
            version: 1,
        })
    }

    /// Replaces the stored entity if its version is still `expected_version`; returns the
    /// new version. Fails with [`Error::Conflict`] (naming both versions) if someone else
    /// wrote first, and with [`Error::NotFound`] if it does not exist.
    pub async fn update(&mut self, entity: &T, expected_version: u64) -> Result<u64> {
        let span = op_span!(self, "larder.repository.update", "update");
        let new_version = expected_version.saturating_add(1);
        let prep = self
            .check_write("repository.update")
            .and_then(|()| self.encode(entity, new_version));
        let rec = match prep {
            Ok(r) => r,
            Err(e) => {
                let id = entity.id().to_value();
                return Err(self.fail(span, "repository.update", Some(&id), e));
            }
        };
        run!(
            self,
            span,
            "repository.update",
            Some(&rec.id),
            |_| 1,
            |tx| tx.update(T::def(), &rec, expected_version)
        )?;
        Ok(new_version)
    }

    /// [`Repo::update`] with the version carried by a [`Versioned`] entity; on success the
    /// entity's version is bumped so it can be saved again.
    pub async fn save(&mut self, entity: &mut Versioned<T>) -> Result<u64> {
        let v = self.update(&entity.value, entity.version).await?;
        entity.version = v;
        Ok(v)
    }

    /// Deletes the entity if its version is still `expected_version`.
    pub async fn delete(&mut self, id: &T::Id, expected_version: u64) -> Result<()> {
        let span = op_span!(self, "larder.repository.delete", "delete");
        let id_value = id.to_value();
        if let Err(e) = self.check_write("repository.delete") {
            return Err(self.fail(span, "repository.delete", Some(&id_value), e));
        }
        run!(
            self,
            span,
            "repository.delete",
            Some(&id_value),
            |_| 1,
            |tx| tx.delete(T::def(), &id_value, expected_version)
        )
    }

    /// Reads one entity, or `None`.
    pub async fn get(&mut self, id: &T::Id) -> Result<Option<Versioned<T>>> {
        let span = op_span!(self, "larder.repository.get", "get");
        let ids = [id.to_value()];
        let mut rows = run!(
            self,
            span,
            "repository.get",
            Some(&ids[0]),
            |v: &Vec<Record>| v.len() as u64,
            |tx| tx.get_many(T::def(), &ids)
        )?;
        rows.pop().map(decode::<T>).transpose()
    }

    /// Reads one entity or fails with [`Error::NotFound`].
    pub async fn require(&mut self, id: &T::Id) -> Result<Versioned<T>> {
        match self.get(id).await? {
            Some(v) => Ok(v),
            None => Err(Error::NotFound {
                entity: T::def().name,
                id: id.to_value().display_id(),
            }),
        }
    }

    /// Reads the entities with these ids, in the order of `ids`; missing ids are skipped.
    pub async fn get_many(&mut self, ids: &[T::Id]) -> Result<Vec<Versioned<T>>> {
        let span = op_span!(self, "larder.repository.get_many", "get_many");
        let max = self
            .uow
            .limits()
            .max_batch
            .min(crate::spec::MAX_BOUND_VALUES);
        if ids.len() > max {
            let e = Error::LimitExceeded {
                what: "ids per get_many",
                limit: max as u64,
                actual: ids.len() as u64,
            };
            return Err(self.fail(span, "repository.get_many", None, e));
        }
        let values: Vec<Value> = ids.iter().map(FieldValue::to_value).collect();
        if let Some(e) = values.iter().find_map(|v| T::def().check_id(v).err()) {
            return Err(self.fail(span, "repository.get_many", None, e));
        }
        let rows = run!(
            self,
            span,
            "repository.get_many",
            None,
            |v: &Vec<Record>| v.len() as u64,
            |tx| tx.get_many(T::def(), &values)
        )?;
        let mut out: Vec<Option<Record>> = Vec::with_capacity(values.len());
        let mut rows: Vec<Option<Record>> = rows.into_iter().map(Some).collect();
        for v in &values {
            let hit = rows
                .iter_mut()
                .find(|r| {
                    r.as_ref()
                        .is_some_and(|r| r.id.sql_cmp(v) == Some(std::cmp::Ordering::Equal))
                })
                .and_then(Option::take);
            out.push(hit);
        }
        out.into_iter().flatten().map(decode::<T>).collect()
    }

    /// Whether an entity with this id exists.
    pub async fn exists(&mut self, id: &T::Id) -> Result<bool> {
        let span = op_span!(self, "larder.repository.exists", "exists");
        let id_value = id.to_value();
        let spec = Pred::Cmp {
            field: crate::entity::FieldRef::Id,
            op: crate::spec::CmpOp::Eq,
            value: id_value.clone(),
        };
        let n = run!(
            self,
            span,
            "repository.exists",
            Some(&id_value),
            |n: &u64| *n,
            |tx| tx.count(T::def(), &spec)
        )?;
        Ok(n > 0)
    }

    /// Counts the entities matching a specification.
    pub async fn count(&mut self, spec: &Spec) -> Result<u64> {
        let span = op_span!(self, "larder.repository.count", "count");
        let pred = match self.resolve(spec) {
            Ok(p) => p,
            Err(e) => return Err(self.fail(span, "repository.count", None, e)),
        };
        run!(self, span, "repository.count", None, |n: &u64| *n, |tx| tx
            .count(T::def(), &pred))
    }

    /// Runs a query and returns one page with a cursor for the next.
    pub async fn find(&mut self, query: &Query) -> Result<Page<T>> {
        let span = op_span!(self, "larder.repository.find", "find");
        let def = T::def();
        let mut plan = match self.plan(query, true) {
            Ok(p) => p,
            Err(e) => return Err(self.fail(span, "repository.find", None, e)),
        };
        let page_size = plan.limit.unwrap_or(u64::MAX);
        // One extra row tells whether another page follows.
        plan.limit = Some(page_size.saturating_add(1));
        let mut rows = run!(
            self,
            span,
            "repository.find",
            None,
            |v: &Vec<Record>| v.len() as u64,
            |tx| tx.select(def, &plan)
        )?;
        let more = rows.len() as u64 > page_size;
        if more {
            rows.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
        }
        let next = if more {
            rows.last().map(|r| encode_cursor(def, &plan.order, r))
        } else {
            None
        };
        let items = rows.into_iter().map(decode::<T>).collect::<Result<_>>()?;
        Ok(Page { items, next })
    }

    /// Streams every entity matching the query, in order, in constant memory (rows are
    /// fetched from the database as the stream is polled). `query.limit` caps the number of
    /// rows; `query.after` starts after a cursor.
    pub fn stream(self, query: &Query) -> BoxStream<'u, Result<Versioned<T>>> {
        let span = op_span!(self, "larder.repository.stream", "stream");
        let deadline = self.effective_deadline();
        let plan = match self.plan(query, false) {
            Ok(p) => p,
            Err(e) => {
                span.record("error.type", e.kind());
                self.uow.audit_full(
                    "repository.stream",
                    Some(T::def().name),
                    None,
                    0,
                    Err(e.kind()),
                );
                return Box::pin(futures_util::stream::once(async move { Err(e) }));
            }
        };
        self.uow
            .audit_full("repository.stream", Some(T::def().name), None, 0, Ok(()));
        let tx = match self.uow.tx_mut() {
            Ok(tx) => tx,
            Err(e) => return Box::pin(futures_util::stream::once(async move { Err(e) })),
        };
        tx.set_deadline(deadline);
        let inner = {
            let _g = span.enter();
            tx.stream(T::def(), plan)
        };
        Box::pin(DecodeStream::<T> {
            inner,
            sleep: deadline.map(|d| Box::pin(tokio::time::sleep_until(d.instant() + CLIENT_GRACE))),
            done: false,
            span,
            rows: 0,
            _t: PhantomData,
        })
    }

    fn resolve(&self, spec: &Spec) -> Result<Pred> {
        let pred = spec.resolve(T::def(), self.uow.limits())?;
        self.check_caps(&pred)?;
        Ok(pred)
    }

    fn plan(&self, q: &Query, paged: bool) -> Result<crate::query::Select> {
        let plan = q.plan(T::def(), self.uow.limits(), paged)?;
        self.check_caps(&plan.filter)?;
        Ok(plan)
    }

    fn check_caps(&self, pred: &Pred) -> Result<()> {
        let mut needed = Vec::new();
        pred.required_capabilities(&mut needed);
        let caps = self.uow.store().capabilities();
        for op in needed {
            if !caps.supports(op) {
                return Err(Error::Unsupported {
                    operation: op,
                    backend: self.uow.store().backend_name(),
                });
            }
        }
        Ok(())
    }

    fn fail(
        &self,
        span: tracing::Span,
        operation: &'static str,
        entity_id: Option<&Value>,
        e: Error,
    ) -> Error {
        self.uow
            .record_failure(&span, operation, Some(T::def().name), entity_id, &e);
        e
    }
}

fn decode<T: Entity>(r: Record) -> Result<Versioned<T>> {
    let version = r.version;
    Ok(Versioned {
        value: T::from_record(r)?,
        version,
    })
}

struct DecodeStream<'u, T> {
    inner: BoxStream<'u, Result<Record>>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
    span: tracing::Span,
    rows: u64,
    _t: PhantomData<fn() -> T>,
}

impl<T: Entity> Stream for DecodeStream<'_, T> {
    type Item = Result<Versioned<T>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let _g = this.span.enter();
        if let Some(s) = this.sleep.as_mut()
            && s.as_mut().poll(cx).is_ready()
        {
            this.done = true;
            this.span.record("error.type", "deadline_exceeded");
            return Poll::Ready(Some(Err(Error::DeadlineExceeded {
                operation: "repository.stream",
            })));
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(r))) => {
                this.rows += 1;
                Poll::Ready(Some(decode::<T>(r)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                this.span.record("error.type", e.kind());
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.done = true;
                this.span.record("db.response.returned_rows", this.rows);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Used by the derive macro and hand-written entities: the record's JSON body decoded as
/// `T` (document storage).
pub fn decode_body<T: serde::de::DeserializeOwned>(def: &EntityDef, record: &Record) -> Result<T> {
    let body = record
        .body
        .as_deref()
        .ok_or_else(|| crate::entity::mapping_error(def.name, "decode", "missing body"))?;
    serde_json::from_str(body).map_err(|e| crate::entity::mapping_error(def.name, "decode", e))
}
