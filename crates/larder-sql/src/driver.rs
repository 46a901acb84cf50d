//! The storage primitives every SQL backend shares, written once.
//!
//! A backend implements [`SqlDriver`] — run a statement, fetch records, fetch one integer,
//! stream records, savepoints, commit, rollback — and wraps it in [`SqlTransaction`], which
//! implements larder's [`Transaction`] contract on top: which SQL to run for each
//! repository operation and how to turn "0 rows affected" into `AlreadyExists`, `Conflict`
//! or `NotFound`.

use std::any::Any;

use futures_util::StreamExt;
use larder_core::backend::{BoxFuture, BoxStream, Transaction};
use larder_core::entity::mapping_error;
use larder_core::events::EventTransaction;
use larder_core::query::Select;
use larder_core::spec::Pred;
use larder_core::{Deadline, EntityDef, Error, FieldType, Record, Result, Storage, Value};

use crate::compile::{self, Built, Dialect, Shape};

/// A SQL connection inside an open transaction, as a backend provides it.
///
/// # Contract
///
/// - Every statement honours the deadline last given to [`SqlDriver::set_deadline`],
///   cancelling the work in the database and failing with `DeadlineExceeded`.
/// - Errors are classified into larder's [`Error`] (transient, deadline, …).
/// - Rows are decoded in the column order of [`compile`] (see [`decode_record`]).
pub trait SqlDriver: Send + 'static {
    /// The dialect to compile for.
    const DIALECT: Dialect;

    /// The deadline of the statements that follow.
    fn set_deadline(&mut self, deadline: Option<Deadline>);

    /// Runs a statement; returns the number of rows affected.
    fn execute<'a>(&'a mut self, b: Built, op: &'static str) -> BoxFuture<'a, Result<u64>>;

    /// Runs a query and decodes its rows as records of `def`.
    fn fetch_records<'a>(
        &'a mut self,
        def: &'a EntityDef,
        b: Built,
        op: &'static str,
    ) -> BoxFuture<'a, Result<Vec<Record>>>;

    /// Runs a query whose first column of the first row is an integer (`None`: no row).
    fn fetch_i64<'a>(
        &'a mut self,
        b: Built,
        op: &'static str,
    ) -> BoxFuture<'a, Result<Option<i64>>>;

    /// Runs a query and streams its rows as records of `shape` (see [`decode_record`]),
    /// fetched as the stream is polled.
    fn stream_records<'a>(
        &'a mut self,
        def: &'a EntityDef,
        b: Built,
        shape: Shape,
    ) -> BoxStream<'a, Result<Record>>;

    /// `SAVEPOINT name`.
    fn savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>>;

    /// `RELEASE SAVEPOINT name`.
    fn release_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>>;

    /// `ROLLBACK TO SAVEPOINT name`.
    fn rollback_to_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Commits.
    fn commit(self) -> BoxFuture<'static, Result<()>>;

    /// Rolls back.
    fn rollback(self) -> BoxFuture<'static, Result<()>>;

    /// Whether a failed statement of this driver (its error, as this driver mapped it)
    /// says that the table, or a column, it names does not exist (SQLite `no such
    /// table`, PostgreSQL `42P01`). The repository primitives turn that into
    /// [`Error::NotRegistered`] / [`Error::SchemaMismatch`] naming the entity, instead of
    /// checking the catalog before every call. Default: never.
    fn missing(e: &Error) -> Option<Missing>
    where
        Self: Sized,
    {
        let _ = e;
        None
    }

    /// The event-log primitives of this transaction (`None`: not implemented).
    fn events(&mut self) -> Option<&mut dyn EventTransaction> {
        None
    }
}

/// What a failed repository statement found missing (see [`SqlDriver::missing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Missing {
    /// The entity's table does not exist: the entity was not registered.
    Table,
    /// A column the statement names does not exist; the database's words.
    Column(String),
}

/// Maps the error of a repository statement on `def`'s table (see [`SqlDriver::missing`]).
fn on_entity<D: SqlDriver>(def: &EntityDef, e: Error) -> Error {
    match D::missing(&e) {
        Some(Missing::Table) => Error::NotRegistered {
            entity: def.name,
            table: def.table.to_owned(),
        },
        Some(Missing::Column(said)) => Error::SchemaMismatch {
            entity: def.name,
            table: def.table.to_owned(),
            differences: format!(
                "a column the entity uses is missing ({said}); `store.register::<T>()` lists every difference"
            ),
        },
        None => e,
    }
}

/// Adapts a [`SqlDriver`] to larder's [`Transaction`]. `as_any_mut` exposes the driver
/// itself, so backend extension traits downcast to their driver type.
#[derive(Debug)]
pub struct SqlTransaction<D>(pub D);

impl<D: SqlDriver> SqlTransaction<D> {
    /// After a versioned write touched no row: `NotFound`, or `Conflict` naming the
    /// version actually stored.
    async fn write_failed(
        &mut self,
        def: &EntityDef,
        id: &Value,
        expected: u64,
        op: &'static str,
    ) -> Error {
        match self
            .0
            .fetch_i64(compile::version_of(def, id, D::DIALECT), op)
            .await
        {
            Err(e) => on_entity::<D>(def, e),
            Ok(actual) => def.stale_write(id, expected, actual.and_then(|v| u64::try_from(v).ok())),
        }
    }
}

impl<D: SqlDriver> Transaction for SqlTransaction<D> {
    fn set_deadline(&mut self, deadline: Option<Deadline>) {
        self.0.set_deadline(deadline);
    }

    fn insert<'a>(
        &'a mut self,
        def: &'a EntityDef,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let b = compile::insert(def, record, D::DIALECT);
            let n = self.0.execute(b, "repository.insert").await;
            if n.map_err(|e| on_entity::<D>(def, e))? == 0 {
                return Err(Error::AlreadyExists {
                    entity: def.name,
                    id: record.id.display_id(),
                });
            }
            Ok(())
        })
    }

    fn update<'a>(
        &'a mut self,
        def: &'a EntityDef,
        record: &'a Record,
        expected: u64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let b = compile::update(def, record, expected, D::DIALECT);
            let n = self.0.execute(b, "repository.update").await;
            if n.map_err(|e| on_entity::<D>(def, e))? == 0 {
                return Err(self
                    .write_failed(def, &record.id, expected, "repository.update")
                    .await);
            }
            Ok(())
        })
    }

    fn delete<'a>(
        &'a mut self,
        def: &'a EntityDef,
        id: &'a Value,
        expected: u64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let b = compile::delete(def, id, expected, D::DIALECT);
            let n = self.0.execute(b, "repository.delete").await;
            if n.map_err(|e| on_entity::<D>(def, e))? == 0 {
                return Err(self
                    .write_failed(def, id, expected, "repository.delete")
                    .await);
            }
            Ok(())
        })
    }

    fn get_many<'a>(
        &'a mut self,
        def: &'a EntityDef,
        ids: &'a [Value],
    ) -> BoxFuture<'a, Result<Vec<Record>>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let b = compile::get_many(def, ids, D::DIALECT);
            let rows = self.0.fetch_records(def, b, "repository.get").await;
            rows.map_err(|e| on_entity::<D>(def, e))
        })
    }

    fn count<'a>(&'a mut self, def: &'a EntityDef, filter: &'a Pred) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let b = compile::count(def, filter, D::DIALECT)?;
            let n = self.0.fetch_i64(b, "repository.count").await;
            let n = n.map_err(|e| on_entity::<D>(def, e))?;
            Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
        })
    }

    fn select<'a>(
        &'a mut self,
        def: &'a EntityDef,
        plan: &'a Select,
    ) -> BoxFuture<'a, Result<Vec<Record>>> {
        Box::pin(async move {
            let b = compile::select(def, plan, D::DIALECT)?;
            let rows = self.0.fetch_records(def, b, "repository.find").await;
            rows.map_err(|e| on_entity::<D>(def, e))
        })
    }

    fn stream<'a>(&'a mut self, def: &'a EntityDef, plan: Select) -> BoxStream<'a, Result<Record>> {
        let shape = Shape::for_stream(def);
        match compile::select_shaped(def, &plan, D::DIALECT, shape) {
            Ok(b) => self
                .0
                .stream_records(def, b, shape)
                .map(move |r| r.map_err(|e| on_entity::<D>(def, e)))
                .boxed(),
            Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
        }
    }

    fn savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        self.0.savepoint(name)
    }

    fn release_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        self.0.release_savepoint(name)
    }

    fn rollback_to_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        self.0.rollback_to_savepoint(name)
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        self.0.commit()
    }

    fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        self.0.rollback()
    }

    fn events(&mut self) -> Option<&mut dyn EventTransaction> {
        self.0.events()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        &mut self.0
    }
}

/// Decodes a row selected by [`compile`] (id, version, body for documents, then the
/// registered fields unless `shape` is [`Shape::Body`], in which case `values` is left
/// empty). `get(row, i, ty)` reads column `i` as a value of type `ty`.
pub fn decode_record<R>(
    def: &EntityDef,
    row: &R,
    shape: Shape,
    get: impl Fn(&R, usize, FieldType) -> Result<Value>,
) -> Result<Record> {
    let bad = |what: &str| mapping_error(def.name, "decode", format!("unexpected {what} column"));
    let id = get(row, 0, def.id.ty)?;
    let version = match get(row, 1, FieldType::Int)? {
        Value::Int(v) => u64::try_from(v).map_err(|_| bad("version"))?,
        _ => return Err(bad("version")),
    };
    let (body, first) = if def.storage == Storage::Document {
        match get(row, 2, FieldType::Text)? {
            Value::Text(s) => (Some(s), 3),
            _ => return Err(bad("body")),
        }
    } else {
        (None, 2)
    };
    let values = if shape == Shape::Body && def.storage == Storage::Document {
        Vec::new()
    } else {
        def.fields
            .iter()
            .enumerate()
            .map(|(i, f)| get(row, first + i, f.ty))
            .collect::<Result<Vec<_>>>()?
    };
    Ok(Record {
        id,
        version,
        values,
        body,
    })
}
