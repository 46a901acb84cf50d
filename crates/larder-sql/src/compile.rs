//! Compiling resolved plans to parameter-bound SQL (through sea-query).
//!
//! Only registry identifiers ([`EntityDef`] table and column names, validated by
//! [`EntityDef::validate`]) and constant fragments written in this file appear in SQL text.
//! Values, patterns, limits and offsets are always bound parameters.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use larder_core::entity::{BODY_COLUMN, EntityDef, FieldRef, Record, VERSION_COLUMN};
use larder_core::query::{OrderKey, Select};
use larder_core::spec::{CmpOp, Pred};
use larder_core::{Error, FieldType, Result, Storage, Value};
use sea_query::{
    Expr, ExprTrait, NullOrdering, OnConflict, Order, PostgresQueryBuilder, Query,
    QueryStatementWriter, SqliteQueryBuilder,
};

/// The SQL dialect to compile for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// PostgreSQL (13+).
    Postgres,
    /// SQLite (3.38+, as bundled by sqlx).
    Sqlite,
}

impl Dialect {
    /// The backend name used in errors.
    pub fn backend_name(self) -> &'static str {
        match self {
            Dialect::Postgres => "postgresql",
            Dialect::Sqlite => "sqlite",
        }
    }

    /// How many dialects there are (see [`Dialect::index`]).
    pub const COUNT: usize = 2;

    /// A dense index of this dialect (`0..COUNT`), for per-dialect caches.
    pub const fn index(self) -> usize {
        match self {
            Dialect::Postgres => 0,
            Dialect::Sqlite => 1,
        }
    }
}

/// SQL text and its bound values, in placeholder order.
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    /// The statement (shared: the text of per-entity statements is cached).
    pub sql: Arc<str>,
    /// The parameters.
    pub values: Vec<sea_query::Value>,
}

fn build(stmt: &impl QueryStatementWriter, d: Dialect) -> Built {
    let (sql, values) = match d {
        Dialect::Postgres => stmt.build(PostgresQueryBuilder),
        Dialect::Sqlite => stmt.build(SqliteQueryBuilder),
    };
    Built {
        sql: sql.into(),
        values: values.0,
    }
}

/// The statements whose text depends only on the entity and the dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Insert,
    Update,
    Delete,
    GetOne,
    VersionOf,
}

type Cache = HashMap<(usize, Kind, Dialect), (EntityDef, Arc<str>)>;

/// Statement texts per (entity definition, kind, dialect): the hot single-row paths skip
/// building a sea-query AST and rendering it on every call. The definition is compared on
/// every hit, so a definition dropped and replaced at the same address cannot match.
static CACHE: LazyLock<RwLock<Cache>> = LazyLock::new(RwLock::default);

/// The cached statement text, or the text of `build()` (cached for next time). `values`
/// are the parameters in placeholder order, computed without sea-query on a hit; the
/// unit tests check they are exactly what sea-query binds.
fn cached(
    def: &EntityDef,
    kind: Kind,
    d: Dialect,
    values: Vec<sea_query::Value>,
    build: impl FnOnce() -> Built,
) -> Built {
    let key = (std::ptr::from_ref(def) as usize, kind, d);
    if let Ok(cache) = CACHE.read()
        && let Some((cached_def, sql)) = cache.get(&key)
        && cached_def == def
    {
        return Built {
            sql: sql.clone(),
            values,
        };
    }
    let built = build();
    if let Ok(mut cache) = CACHE.write() {
        cache.insert(key, (def.clone(), built.sql.clone()));
    }
    built
}

/// Converts a larder value of a field type to a sea-query value for a dialect. `Null`
/// becomes a typed null, so PostgreSQL knows the parameter's type.
pub fn sql_value(v: &Value, ty: FieldType, d: Dialect) -> sea_query::Value {
    use sea_query::Value as S;
    let pg = d == Dialect::Postgres;
    match (v, ty) {
        (Value::Null, FieldType::Bool) => S::Bool(None),
        (Value::Null, FieldType::Int) => S::BigInt(None),
        (Value::Null, FieldType::Float) => S::Double(None),
        (Value::Null, FieldType::Uuid) if pg => S::Uuid(None),
        (Value::Null, FieldType::Json) if pg => S::Json(None),
        (Value::Null, _) => S::String(None),
        (Value::Bool(b), _) => S::Bool(Some(*b)),
        (Value::Int(i), FieldType::Float) =>
        {
            #[allow(clippy::cast_precision_loss)]
            S::Double(Some(*i as f64))
        }
        (Value::Int(i), _) => S::BigInt(Some(*i)),
        (Value::Float(f), _) => S::Double(Some(*f)),
        (Value::Text(s), _) => S::String(Some(s.clone())),
        (Value::Uuid(u), _) if pg => S::Uuid(Some(*u)),
        (Value::Uuid(u), _) => S::String(Some(u.hyphenated().to_string())),
        (Value::Json(j), _) if pg => S::Json(Some(Box::new(j.clone()))),
        (Value::Json(j), _) => S::String(Some(j.to_string())),
        (other, _) => S::String(Some(other.to_string())),
    }
}

fn column(def: &EntityDef, f: FieldRef) -> &'static str {
    def.field_def(f).column
}

fn col(def: &EntityDef, f: FieldRef) -> Expr {
    Expr::col(column(def, f))
}

fn val(def: &EntityDef, f: FieldRef, v: &Value, d: Dialect) -> Expr {
    Expr::val(sql_value(v, def.field_def(f).ty, d))
}

fn constant(b: bool) -> Expr {
    Expr::cust(if b { "1 = 1" } else { "1 = 0" })
}

/// Compiles a predicate to a boolean SQL expression.
pub fn predicate(def: &EntityDef, p: &Pred, d: Dialect) -> Result<Expr> {
    let pg = d == Dialect::Postgres;
    Ok(match p {
        Pred::True => constant(true),
        Pred::And(v) => match v.as_slice() {
            [] => constant(true),
            [one] => predicate(def, one, d)?,
            many => {
                let mut it = many.iter();
                let mut e = predicate(def, it.next().unwrap_or(&Pred::True), d)?;
                for p in it {
                    e = e.and(predicate(def, p, d)?);
                }
                Expr::cust_with_exprs(if pg { "($1)" } else { "(?)" }, [e])
            }
        },
        Pred::Or(v) => match v.as_slice() {
            [] => constant(false),
            [one] => predicate(def, one, d)?,
            many => {
                let mut it = many.iter();
                let mut e = predicate(def, it.next().unwrap_or(&Pred::True), d)?;
                for p in it {
                    e = e.or(predicate(def, p, d)?);
                }
                Expr::cust_with_exprs(if pg { "($1)" } else { "(?)" }, [e])
            }
        },
        Pred::Not(inner) => Expr::cust_with_exprs(
            if pg { "NOT ($1)" } else { "NOT (?)" },
            [predicate(def, inner, d)?],
        ),
        Pred::Cmp { field, op, value } => {
            let (c, v) = (col(def, *field), val(def, *field, value, d));
            match op {
                CmpOp::Eq => c.eq(v),
                CmpOp::Ne => c.ne(v),
                CmpOp::Lt => c.lt(v),
                CmpOp::Le => c.lte(v),
                CmpOp::Gt => c.gt(v),
                CmpOp::Ge => c.gte(v),
            }
        }
        Pred::In {
            field,
            values,
            negated,
        } => {
            if values.is_empty() {
                constant(*negated)
            } else {
                let vals: Vec<Expr> = values.iter().map(|v| val(def, *field, v, d)).collect();
                if *negated {
                    col(def, *field).is_not_in(vals)
                } else {
                    col(def, *field).is_in(vals)
                }
            }
        }
        Pred::Between {
            field,
            low,
            high,
            negated,
        } => {
            let (lo, hi) = (val(def, *field, low, d), val(def, *field, high, d));
            if *negated {
                col(def, *field).not_between(lo, hi)
            } else {
                col(def, *field).between(lo, hi)
            }
        }
        Pred::Like {
            field,
            pattern,
            case_insensitive,
        } => {
            let c = col(def, *field);
            match (d, case_insensitive) {
                // PostgreSQL's default LIKE escape character is the backslash; columns are
                // created COLLATE "C", so ILIKE folds ASCII only, like SQLite's LIKE.
                (Dialect::Postgres, false) => {
                    Expr::cust_with_exprs("$1 LIKE $2", [c, Expr::val(pattern.as_str())])
                }
                (Dialect::Postgres, true) => {
                    Expr::cust_with_exprs("$1 ILIKE $2", [c, Expr::val(pattern.as_str())])
                }
                // SQLite's LIKE ignores ASCII case, so case-sensitive LIKE becomes GLOB.
                (Dialect::Sqlite, ci) => {
                    let like = if *ci {
                        Expr::cust_with_exprs(
                            "? LIKE ? ESCAPE '\\'",
                            [c, Expr::val(pattern.as_str())],
                        )
                    } else {
                        Expr::cust_with_exprs("? GLOB ?", [c, Expr::val(like_to_glob(pattern))])
                    };
                    if pattern.chars().any(sqlite_like_folds) {
                        // SQLite's LIKE and GLOB read U+FFFE and U+FFFF as U+FFFD, so a
                        // pattern holding one of the three also matches the others. The
                        // exact test (a superset filter stays first, so an index still
                        // helps) is the same pattern as a Rust regex.
                        Expr::cust_with_exprs(
                            "(? AND ? REGEXP ?)",
                            [
                                like,
                                col(def, *field),
                                Expr::val(like_to_regex(pattern, *case_insensitive)),
                            ],
                        )
                    } else {
                        like
                    }
                }
            }
        }
        Pred::IsNull { field } => col(def, *field).is_null(),
        Pred::IsEmpty { field, json } => {
            let c = col(def, *field);
            match (json, d) {
                (false, _) => c.eq(""),
                (true, Dialect::Postgres) => {
                    Expr::cust_with_exprs("$1 IN ('[]'::jsonb, '{}'::jsonb)", [c])
                }
                (true, Dialect::Sqlite) => Expr::cust_with_exprs("? IN ('[]', '{}')", [c]),
            }
        }
        // The pattern was parsed and checked in core (larder's regex dialect) and is bound
        // as rendered for this engine, so every backend runs the same expression.
        Pred::Regex { field, pattern } => {
            let c = col(def, *field);
            match d {
                Dialect::Postgres => {
                    Expr::cust_with_exprs("$1 ~ $2", [c, Expr::val(pattern.postgres())])
                }
                // REGEXP is provided by sqlx's `regexp` feature: Rust's `regex`, as memory.
                Dialect::Sqlite => {
                    Expr::cust_with_exprs("? REGEXP ?", [c, Expr::val(pattern.rust())])
                }
            }
        }
        Pred::JsonContains { field, value } => match d {
            Dialect::Postgres => Expr::cust_with_exprs(
                "$1 @> $2",
                [
                    col(def, *field),
                    Expr::val(sea_query::Value::Json(Some(Box::new(value.clone())))),
                ],
            ),
            Dialect::Sqlite => {
                return Err(Error::Unsupported {
                    operation: "json_contains",
                    backend: "sqlite",
                });
            }
        },
        Pred::JsonHasKey { field, key } => match d {
            Dialect::Postgres => Expr::cust_with_exprs(
                "jsonb_exists($1, $2)",
                [col(def, *field), Expr::val(key.as_str())],
            ),
            // NULL stays unknown (as jsonb_exists is strict); objects match a key, arrays a
            // string element and a string scalar itself, like PostgreSQL's `?`.
            Dialect::Sqlite => Expr::cust_with_exprs(
                "CASE WHEN ? IS NULL THEN NULL ELSE EXISTS (SELECT 1 FROM json_each(?) AS je \
                 WHERE (json_type(?) = 'object' AND je.key = ?) \
                 OR (json_type(?) IN ('array', 'text') AND je.type = 'text' AND je.value = ?)) END",
                [
                    col(def, *field),
                    col(def, *field),
                    col(def, *field),
                    Expr::val(key.as_str()),
                    col(def, *field),
                    Expr::val(key.as_str()),
                ],
            ),
        },
    })
}

/// The characters SQLite's `LIKE`/`GLOB` do not compare exactly (it reads U+FFFE and U+FFFF
/// as U+FFFD, in patterns and in text).
fn sqlite_like_folds(c: char) -> bool {
    matches!(c, '\u{FFFD}' | '\u{FFFE}' | '\u{FFFF}')
}

/// Translates a LIKE pattern (`%`, `_`, `\` escapes; `ci`: ASCII letters fold) to an
/// anchored Rust regex with the same meaning, compared character by character.
pub fn like_to_regex(pattern: &str, ci: bool) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    out.push('^');
    let mut it = pattern.chars();
    while let Some(c) = it.next() {
        let lit = match c {
            '%' => {
                out.push_str("(?s:.*)");
                continue;
            }
            '_' => {
                out.push_str("(?s:.)");
                continue;
            }
            '\\' => it.next().unwrap_or('\\'),
            c => c,
        };
        if ci && lit.is_ascii_alphabetic() {
            out.push('[');
            out.push(lit.to_ascii_lowercase());
            out.push(lit.to_ascii_uppercase());
            out.push(']');
        } else if lit.is_ascii_control() {
            out.push_str(&format!("\\x{{{:x}}}", u32::from(lit)));
        } else {
            if regex_syntax_meta(lit) {
                out.push('\\');
            }
            out.push(lit);
        }
    }
    out.push('$');
    out
}

/// Rust regex metacharacters (escaped with `\` to match literally).
fn regex_syntax_meta(c: char) -> bool {
    matches!(
        c,
        '\\' | '.'
            | '+'
            | '*'
            | '?'
            | '('
            | ')'
            | '|'
            | '['
            | ']'
            | '{'
            | '}'
            | '^'
            | '$'
            | '#'
            | '&'
            | '-'
            | '~'
    )
}

/// Translates a LIKE pattern (`%`, `_`, `\` escapes) to an equivalent GLOB pattern.
pub fn like_to_glob(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut it = pattern.chars();
    while let Some(c) = it.next() {
        match c {
            '%' => out.push('*'),
            '_' => out.push('?'),
            '\\' => match it.next() {
                Some(lit) => push_glob_literal(&mut out, lit),
                None => push_glob_literal(&mut out, '\\'),
            },
            c => push_glob_literal(&mut out, c),
        }
    }
    out
}

fn push_glob_literal(out: &mut String, c: char) {
    match c {
        '*' | '?' | '[' => {
            out.push('[');
            out.push(c);
            out.push(']');
        }
        c => out.push(c),
    }
}

/// Which columns a read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// id, version, body (documents), then every registered field.
    Full,
    /// id, version and body only: enough to decode a document entity. Streams of documents
    /// use it, so the field columns are neither sent nor decoded per row.
    Body,
}

impl Shape {
    /// The shape to stream an entity with.
    pub fn for_stream(def: &EntityDef) -> Shape {
        if def.storage == Storage::Document {
            Shape::Body
        } else {
            Shape::Full
        }
    }
}

/// The columns every read selects, in the order [`Record`] decoding expects:
/// id, version, body (documents), then the registered fields.
fn select_columns(q: &mut sea_query::SelectStatement, def: &EntityDef, d: Dialect) {
    select_shape(q, def, d, Shape::Full);
}

fn select_shape(q: &mut sea_query::SelectStatement, def: &EntityDef, d: Dialect, shape: Shape) {
    q.column(def.id.column).column(VERSION_COLUMN);
    if def.storage == Storage::Document {
        match d {
            Dialect::Postgres => {
                q.expr(Expr::col(BODY_COLUMN).cast_as("text"));
            }
            Dialect::Sqlite => {
                q.column(BODY_COLUMN);
            }
        }
    }
    if shape == Shape::Full || def.storage != Storage::Document {
        for f in &def.fields {
            q.column(f.column);
        }
    }
}

/// The keyset condition "sorts strictly after `after`" for an ordering.
fn keyset(def: &EntityDef, order: &[OrderKey], after: &[Value], d: Dialect) -> Expr {
    // Fast path: same direction, no nullable keys, so a row-value comparison works and can
    // use a composite index.
    let uniform = order
        .iter()
        .all(|k| !k.nullable && k.descending == order[0].descending);
    if uniform && order.len() > 1 {
        let cols = Expr::tuple(order.iter().map(|k| col(def, k.field)));
        let vals = Expr::tuple(
            order
                .iter()
                .zip(after)
                .map(|(k, v)| val(def, k.field, v, d)),
        );
        return if order[0].descending {
            cols.lt(vals)
        } else {
            cols.gt(vals)
        };
    }
    let mut any: Option<Expr> = None;
    for i in 0..order.len() {
        let mut all: Option<Expr> = None;
        for (k, v) in order[..i].iter().zip(after) {
            let eq = if v.is_null() {
                col(def, k.field).is_null()
            } else {
                col(def, k.field).eq(val(def, k.field, v, d))
            };
            all = Some(match all {
                Some(a) => a.and(eq),
                None => eq,
            });
        }
        let k = &order[i];
        let v = &after[i];
        let step = if v.is_null() {
            if k.nulls_first {
                col(def, k.field).is_not_null()
            } else {
                constant(false)
            }
        } else {
            let c = col(def, k.field);
            let beyond = if k.descending {
                c.lt(val(def, k.field, v, d))
            } else {
                c.gt(val(def, k.field, v, d))
            };
            if k.nullable && !k.nulls_first {
                beyond.or(col(def, k.field).is_null())
            } else {
                beyond
            }
        };
        let step = Expr::cust_with_exprs(
            if d == Dialect::Postgres {
                "($1)"
            } else {
                "(?)"
            },
            [step],
        );
        let term = match all {
            Some(a) => a.and(step),
            None => step,
        };
        any = Some(match any {
            Some(x) => x.or(term),
            None => term,
        });
    }
    any.unwrap_or_else(|| constant(false))
}

/// `SELECT … WHERE filter [AND keyset] ORDER BY … LIMIT … OFFSET …`.
pub fn select(def: &EntityDef, plan: &Select, d: Dialect) -> Result<Built> {
    select_shaped(def, plan, d, Shape::Full)
}

/// [`select`] returning the columns of `shape`.
pub fn select_shaped(def: &EntityDef, plan: &Select, d: Dialect, shape: Shape) -> Result<Built> {
    let mut q = Query::select();
    select_shape(&mut q, def, d, shape);
    q.from(def.table);
    if plan.filter != Pred::True {
        q.and_where(predicate(def, &plan.filter, d)?);
    }
    if let Some(after) = &plan.after {
        q.and_where(keyset(def, &plan.order, after, d));
    }
    for k in &plan.order {
        let dir = if k.descending {
            Order::Desc
        } else {
            Order::Asc
        };
        let c = column(def, k.field);
        if k.nullable {
            let nulls = if k.nulls_first {
                NullOrdering::First
            } else {
                NullOrdering::Last
            };
            q.order_by_with_nulls(c, dir, nulls);
        } else {
            q.order_by(c, dir);
        }
    }
    match (plan.limit, plan.offset) {
        (Some(l), o) => {
            q.limit(l);
            if let Some(o) = o {
                q.offset(o);
            }
        }
        (None, Some(o)) => {
            // SQLite has no OFFSET without LIMIT.
            q.limit(i64::MAX.unsigned_abs());
            q.offset(o);
        }
        (None, None) => {}
    }
    Ok(build(&q, d))
}

/// `SELECT COUNT(*) … WHERE filter`.
pub fn count(def: &EntityDef, filter: &Pred, d: Dialect) -> Result<Built> {
    let mut q = Query::select();
    q.expr(Expr::cust("COUNT(*)")).from(def.table);
    if *filter != Pred::True {
        q.and_where(predicate(def, filter, d)?);
    }
    Ok(build(&q, d))
}

/// Reads rows by id.
pub fn get_many(def: &EntityDef, ids: &[Value], d: Dialect) -> Built {
    let id_ty = def.id.ty;
    let build = || {
        let mut q = Query::select();
        select_columns(&mut q, def, d);
        q.from(def.table);
        match ids {
            [one] => {
                q.and_where(Expr::col(def.id.column).eq(Expr::val(sql_value(one, id_ty, d))));
            }
            many => {
                q.and_where(
                    Expr::col(def.id.column)
                        .is_in(many.iter().map(|v| Expr::val(sql_value(v, id_ty, d)))),
                );
            }
        }
        build(&q, d)
    };
    match ids {
        [one] => cached(def, Kind::GetOne, d, vec![sql_value(one, id_ty, d)], build),
        _ => build(),
    }
}

fn body_expr(body: &str, d: Dialect) -> Expr {
    match d {
        // Bound as text and cast server-side: no JSON re-parse on the client.
        Dialect::Postgres => Expr::val(body).cast_as("jsonb"),
        Dialect::Sqlite => Expr::val(body),
    }
}

fn field_values(def: &EntityDef, rec: &Record, d: Dialect) -> Vec<Expr> {
    field_params(def, rec, d).map(Expr::val).collect()
}

fn version_value(v: u64) -> Expr {
    Expr::val(i64::try_from(v).unwrap_or(i64::MAX))
}

fn body_value(body: &str) -> sea_query::Value {
    sea_query::Value::String(Some(body.to_owned()))
}

fn version_param(v: u64) -> sea_query::Value {
    sea_query::Value::BigInt(Some(i64::try_from(v).unwrap_or(i64::MAX)))
}

fn field_params(
    def: &EntityDef,
    rec: &Record,
    d: Dialect,
) -> impl Iterator<Item = sea_query::Value> {
    def.fields
        .iter()
        .zip(&rec.values)
        .map(move |(f, v)| sql_value(v, f.ty, d))
}

/// `INSERT … ON CONFLICT (id) DO NOTHING`: zero rows affected means the id exists (and the
/// transaction stays usable, unlike a unique violation on PostgreSQL).
pub fn insert(def: &EntityDef, rec: &Record, d: Dialect) -> Built {
    let mut values = vec![sql_value(&rec.id, def.id.ty, d), version_param(rec.version)];
    values.extend(rec.body.as_deref().map(body_value));
    values.extend(field_params(def, rec, d));
    cached(def, Kind::Insert, d, values, || {
        let mut q = Query::insert();
        q.into_table(def.table);
        let mut cols = vec![def.id.column, VERSION_COLUMN];
        let mut vals = vec![
            Expr::val(sql_value(&rec.id, def.id.ty, d)),
            version_value(rec.version),
        ];
        if let Some(body) = &rec.body {
            cols.push(BODY_COLUMN);
            vals.push(body_expr(body, d));
        }
        cols.extend(def.fields.iter().map(|f| f.column));
        vals.extend(field_values(def, rec, d));
        q.columns(cols);
        q.values_panic(vals);
        q.on_conflict(OnConflict::column(def.id.column).do_nothing().to_owned());
        build(&q, d)
    })
}

/// `UPDATE … SET … WHERE id = ? AND version = ?`.
pub fn update(def: &EntityDef, rec: &Record, expected: u64, d: Dialect) -> Built {
    let mut values = vec![version_param(rec.version)];
    values.extend(rec.body.as_deref().map(body_value));
    values.extend(field_params(def, rec, d));
    values.push(sql_value(&rec.id, def.id.ty, d));
    values.push(version_param(expected));
    cached(def, Kind::Update, d, values, || {
        let mut q = Query::update();
        q.table(def.table);
        let mut sets: Vec<(&'static str, Expr)> =
            vec![(VERSION_COLUMN, version_value(rec.version))];
        if let Some(body) = &rec.body {
            sets.push((BODY_COLUMN, body_expr(body, d)));
        }
        for (f, e) in def.fields.iter().zip(field_values(def, rec, d)) {
            sets.push((f.column, e));
        }
        q.values(sets);
        q.and_where(Expr::col(def.id.column).eq(Expr::val(sql_value(&rec.id, def.id.ty, d))));
        q.and_where(Expr::col(VERSION_COLUMN).eq(version_value(expected)));
        build(&q, d)
    })
}

/// `DELETE … WHERE id = ? AND version = ?`.
pub fn delete(def: &EntityDef, id: &Value, expected: u64, d: Dialect) -> Built {
    let values = vec![sql_value(id, def.id.ty, d), version_param(expected)];
    cached(def, Kind::Delete, d, values, || {
        let mut q = Query::delete();
        q.from_table(def.table);
        q.and_where(Expr::col(def.id.column).eq(Expr::val(sql_value(id, def.id.ty, d))));
        q.and_where(Expr::col(VERSION_COLUMN).eq(version_value(expected)));
        build(&q, d)
    })
}

/// `SELECT version … WHERE id = ?` (to tell `Conflict` from `NotFound`).
pub fn version_of(def: &EntityDef, id: &Value, d: Dialect) -> Built {
    cached(
        def,
        Kind::VersionOf,
        d,
        vec![sql_value(id, def.id.ty, d)],
        || {
            let mut q = Query::select();
            q.column(VERSION_COLUMN).from(def.table);
            q.and_where(Expr::col(def.id.column).eq(Expr::val(sql_value(id, def.id.ty, d))));
            build(&q, d)
        },
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn like_to_regex_means_what_like_means() {
        assert_eq!(like_to_regex("a%b_", false), "^a(?s:.*)b(?s:.)$");
        assert_eq!(like_to_regex("a\\%.", true), "^[aA]%\\.$");
        assert_eq!(
            like_to_regex("%\u{FFFF}\n", false),
            "^(?s:.*)\u{FFFF}\\x{a}$"
        );
    }
    use super::*;
    use larder_core::spec::{Limits, field};
    use larder_core::{FieldDef, Order as LOrder, Query as LQuery};

    fn def() -> EntityDef {
        EntityDef {
            indexes: Vec::new(),
            name: "order",
            table: "orders",
            storage: Storage::Document,
            id: FieldDef::new("id", FieldType::Text),
            fields: vec![
                FieldDef::new("status", FieldType::Text),
                FieldDef::new("total", FieldType::Int).with_nullable(true),
                FieldDef::new("meta", FieldType::Json).with_nullable(true),
            ],
        }
    }

    fn sql(spec: larder_core::Spec, d: Dialect) -> Built {
        let plan = LQuery::new(spec)
            .plan(&def(), &Limits::default(), true)
            .unwrap();
        select(&def(), &plan, d).unwrap()
    }

    #[test]
    fn values_are_bound_never_inlined() {
        for d in [Dialect::Postgres, Dialect::Sqlite] {
            let a = sql(field("status").eq("x'; drop table orders; --"), d);
            let b = sql(field("status").eq("open"), d);
            assert_eq!(a.sql, b.sql, "literal values must not change the SQL text");
            assert!(!a.sql.contains("drop table"));
        }
    }

    #[test]
    fn postgres_select_reads_like_sql() {
        let b = sql(
            field("status").eq("open").and(field("total").gt(10)),
            Dialect::Postgres,
        );
        assert_eq!(
            &*b.sql,
            r#"SELECT "id", "version", CAST("body" AS text), "status", "total", "meta" FROM "orders" WHERE ("status" = $1 AND "total" > $2) ORDER BY "id" ASC LIMIT $3"#
        );
    }

    #[test]
    fn keyset_on_nullable_keys_handles_nulls() {
        let d = def();
        let q = LQuery::all().order_by(LOrder::asc("total"));
        let mut plan = q.plan(&d, &Limits::default(), true).unwrap();
        plan.after = Some(vec![Value::Null, Value::Text("a".into())]);
        let b = select(&d, &plan, Dialect::Sqlite).unwrap();
        assert!(b.sql.contains("NULLS LAST"), "{}", b.sql);
    }

    #[test]
    fn cached_statements_bind_exactly_what_sea_query_binds() {
        let doc = def();
        let mut cols = def();
        cols.storage = Storage::Columns;
        for d in [&doc, &cols] {
            let rec = Record {
                id: Value::Text("o-1".into()),
                version: 3,
                values: vec![
                    Value::Text("open".into()),
                    Value::Null,
                    Value::Json(serde_json::json!({"a": 1})),
                ],
                body: (d.storage == Storage::Document).then(|| "{}".to_owned()),
            };
            for dialect in [Dialect::Postgres, Dialect::Sqlite] {
                // Twice: the first call fills the cache from sea-query, the second is a hit.
                CACHE.write().unwrap().clear();
                let runs: Vec<[Built; 5]> = (0..2)
                    .map(|_| {
                        [
                            insert(d, &rec, dialect),
                            update(d, &rec, 2, dialect),
                            delete(d, &rec.id, 2, dialect),
                            get_many(d, std::slice::from_ref(&rec.id), dialect),
                            version_of(d, &rec.id, dialect),
                        ]
                    })
                    .collect();
                assert_eq!(runs[0], runs[1], "{dialect:?} {:?}", d.storage);
            }
        }
    }

    #[test]
    fn like_patterns_translate_to_glob() {
        assert_eq!(like_to_glob("a%b_c"), "a*b?c");
        assert_eq!(like_to_glob("50\\%*?["), "50%[*][?][[]");
    }
}
