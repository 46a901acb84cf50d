//! Specifications: a filter AST over an entity's registered fields.
//!
//! Build one with [`field`] and combinators, or accept one as JSON from an HTTP API:
//!
//! ```
//! use larder_core::spec::{field, Spec};
//!
//! let open_big = field("status").eq("open").and(field("total").ge(10_000));
//! let json = serde_json::to_string(&open_big).unwrap();
//! assert_eq!(
//!     json,
//!     r#"{"op":"and","of":[{"op":"eq","field":"status","value":"open"},{"op":"ge","field":"total","value":10000}]}"#
//! );
//! let back: Spec = serde_json::from_str(&json).unwrap();
//! assert_eq!(back, open_big);
//! ```
//!
//! A specification names fields by their registered name; [`Spec::resolve`] checks it against
//! the entity's [`EntityDef`] (unknown fields, wrong types, limits) and produces a [`Pred`],
//! the only form backends see. Field names never reach SQL text: backends look columns up in
//! the registry by [`FieldRef`]. Values are always bound parameters.
//!
//! # Semantics
//!
//! SQL three-valued logic everywhere (the memory backend reproduces it): a comparison with a
//! `NULL` field is *unknown*, so neither `eq` nor `ne` matches a `NULL`; use `is_null`.
//! `in` with an empty list matches nothing, `not_in` with an empty list matches everything
//! (including `NULL`s). Text compares byte-wise. `ilike` and `icontains` fold ASCII letters
//! only (as PostgreSQL does under `COLLATE "C"` and SQLite's `LIKE`). In `like` patterns `%`
//! matches any run of characters, `_` exactly one, and `\` escapes the next character.
//! `regex` patterns are in larder's portable dialect ([`regex_dialect`](crate::regex_dialect)),
//! which every backend runs identically. Text operands cannot contain NUL (U+0000), which no
//! backend stores: [`Error::InvalidQuery`].

use serde::{Deserialize, Serialize};

use crate::entity::{EntityDef, FieldRef};
use crate::error::{Error, Result, shown};
use crate::regex_dialect::RegexPattern;
use crate::value::{FieldType, Value, json_nul, text_nul};

/// A filter over an entity's registered fields. See the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Spec {
    /// Matches everything.
    #[default]
    All,
    /// All of the inner specifications (an empty list matches everything).
    And {
        /// The conjuncts.
        of: Vec<Spec>,
    },
    /// Any of the inner specifications (an empty list matches nothing).
    Or {
        /// The disjuncts.
        of: Vec<Spec>,
    },
    /// Negation (`NOT`, with SQL's unknown staying unknown).
    Not {
        /// The negated specification.
        spec: Box<Spec>,
    },
    /// `field = value`.
    Eq {
        /// The field.
        field: String,
        /// The value.
        value: Value,
    },
    /// `field <> value`.
    Ne {
        /// The field.
        field: String,
        /// The value.
        value: Value,
    },
    /// `field < value`.
    Lt {
        /// The field.
        field: String,
        /// The value.
        value: Value,
    },
    /// `field <= value`.
    Le {
        /// The field.
        field: String,
        /// The value.
        value: Value,
    },
    /// `field > value`.
    Gt {
        /// The field.
        field: String,
        /// The value.
        value: Value,
    },
    /// `field >= value`.
    Ge {
        /// The field.
        field: String,
        /// The value.
        value: Value,
    },
    /// `field IN (values…)`.
    In {
        /// The field.
        field: String,
        /// The candidates (non-null).
        values: Vec<Value>,
    },
    /// `field NOT IN (values…)`.
    NotIn {
        /// The field.
        field: String,
        /// The excluded values (non-null).
        values: Vec<Value>,
    },
    /// `field BETWEEN low AND high` (inclusive).
    Between {
        /// The field.
        field: String,
        /// Lower bound.
        low: Value,
        /// Upper bound.
        high: Value,
    },
    /// `field NOT BETWEEN low AND high`.
    NotBetween {
        /// The field.
        field: String,
        /// Lower bound.
        low: Value,
        /// Upper bound.
        high: Value,
    },
    /// `field LIKE pattern` (case-sensitive).
    Like {
        /// The field.
        field: String,
        /// The pattern (`%`, `_`, `\` escapes).
        pattern: String,
    },
    /// `field ILIKE pattern` (ASCII case-insensitive).
    Ilike {
        /// The field.
        field: String,
        /// The pattern.
        pattern: String,
    },
    /// The field contains `value` as a substring.
    Contains {
        /// The field.
        field: String,
        /// The substring (taken literally).
        value: String,
    },
    /// Like [`Spec::Contains`], ASCII case-insensitive.
    Icontains {
        /// The field.
        field: String,
        /// The substring (taken literally).
        value: String,
    },
    /// The field starts with `value`.
    StartsWith {
        /// The field.
        field: String,
        /// The prefix (taken literally).
        value: String,
    },
    /// The field ends with `value`.
    EndsWith {
        /// The field.
        field: String,
        /// The suffix (taken literally).
        value: String,
    },
    /// `field IS NULL`.
    IsNull {
        /// The field.
        field: String,
    },
    /// The text is empty, or the JSON is an empty array or object.
    IsEmpty {
        /// The field.
        field: String,
    },
    /// The text matches a regular expression (backend capability `regex`).
    Regex {
        /// The field.
        field: String,
        /// The pattern, in larder's portable dialect (see
        /// [`regex_dialect`](crate::regex_dialect)).
        pattern: String,
    },
    /// The JSON field contains `value` (PostgreSQL `@>` semantics; capability
    /// `json_contains`).
    JsonContains {
        /// The field.
        field: String,
        /// The contained JSON.
        value: serde_json::Value,
    },
    /// The JSON object has the top-level key, the JSON array has the string element, or the
    /// JSON string equals the key (PostgreSQL `?` semantics).
    JsonHasKey {
        /// The field.
        field: String,
        /// The key.
        key: String,
    },
}

/// Starts a predicate on a registered field: `field("total").gt(100)`.
pub fn field(name: impl Into<String>) -> FieldExpr {
    FieldExpr(name.into())
}

/// A field name waiting for its operator. Created by [`field`].
#[derive(Debug, Clone)]
pub struct FieldExpr(String);

macro_rules! cmp_methods {
    ($($(#[$m:meta])* $fn:ident => $v:ident),* $(,)?) => {$(
        $(#[$m])*
        pub fn $fn(self, value: impl Into<Value>) -> Spec {
            Spec::$v { field: self.0, value: value.into() }
        }
    )*};
}

macro_rules! text_methods {
    ($($(#[$m:meta])* $fn:ident => $v:ident . $arg:ident),* $(,)?) => {$(
        $(#[$m])*
        pub fn $fn(self, $arg: impl Into<String>) -> Spec {
            Spec::$v { field: self.0, $arg: $arg.into() }
        }
    )*};
}

impl FieldExpr {
    cmp_methods! {
        /// `= value`.
        eq => Eq,
        /// `<> value`.
        ne => Ne,
        /// `< value`.
        lt => Lt,
        /// `<= value`.
        le => Le,
        /// `> value`.
        gt => Gt,
        /// `>= value`.
        ge => Ge,
    }
    text_methods! {
        /// `LIKE pattern`.
        like => Like.pattern,
        /// `ILIKE pattern` (ASCII case folding).
        ilike => Ilike.pattern,
        /// Contains the literal substring.
        contains => Contains.value,
        /// Contains the literal substring, ASCII case-insensitive.
        icontains => Icontains.value,
        /// Starts with the literal prefix.
        starts_with => StartsWith.value,
        /// Ends with the literal suffix.
        ends_with => EndsWith.value,
        /// Matches the regular expression, in larder's portable dialect: a subset of Rust
        /// `regex` syntax that every backend runs identically (literals, `.`, `[…]` with
        /// ranges and negation, ASCII-only `\d \w \s`, `^ $` for the whole text, groups,
        /// `|`, `* + ? {m,n}` with counts ≤ 255, flags `(?i)` — ASCII letters only — and
        /// `(?s)`). Anything else (`\p{L}`, `\b`, `\z`, `\x{41}`, named groups, `a**`,
        /// …) is rejected with [`Error::InvalidQuery`] before any SQL is built. The full
        /// table is in [`regex_dialect`](crate::regex_dialect).
        regex => Regex.pattern,
        /// JSON has the key (or array string element).
        json_has_key => JsonHasKey.key,
    }

    /// `IN (values…)`.
    pub fn is_in<V: Into<Value>>(self, values: impl IntoIterator<Item = V>) -> Spec {
        Spec::In {
            field: self.0,
            values: values.into_iter().map(Into::into).collect(),
        }
    }

    /// `NOT IN (values…)`.
    pub fn not_in<V: Into<Value>>(self, values: impl IntoIterator<Item = V>) -> Spec {
        Spec::NotIn {
            field: self.0,
            values: values.into_iter().map(Into::into).collect(),
        }
    }

    /// `BETWEEN low AND high`.
    pub fn between(self, low: impl Into<Value>, high: impl Into<Value>) -> Spec {
        Spec::Between {
            field: self.0,
            low: low.into(),
            high: high.into(),
        }
    }

    /// `NOT BETWEEN low AND high`.
    pub fn not_between(self, low: impl Into<Value>, high: impl Into<Value>) -> Spec {
        Spec::NotBetween {
            field: self.0,
            low: low.into(),
            high: high.into(),
        }
    }

    /// `IS NULL`.
    pub fn is_null(self) -> Spec {
        Spec::IsNull { field: self.0 }
    }

    /// `IS NOT NULL`.
    pub fn is_not_null(self) -> Spec {
        Spec::IsNull { field: self.0 }.not()
    }

    /// Empty text, or empty JSON array/object.
    pub fn is_empty(self) -> Spec {
        Spec::IsEmpty { field: self.0 }
    }

    /// JSON containment (`@>`).
    pub fn json_contains(self, value: serde_json::Value) -> Spec {
        Spec::JsonContains {
            field: self.0,
            value,
        }
    }
}

impl Spec {
    /// Parses the JSON form (see the [module docs](self)); errors are
    /// [`Error::InvalidQuery`].
    pub fn from_json(json: &str) -> Result<Spec> {
        serde_json::from_str(json)
            .map_err(|e| Error::InvalidQuery(format!("malformed specification: {e}")))
    }

    /// Matches everything.
    pub fn all() -> Spec {
        Spec::All
    }

    /// `self AND other` (flattening nested `and`s).
    #[must_use]
    pub fn and(self, other: Spec) -> Spec {
        match (self, other) {
            (Spec::All, s) | (s, Spec::All) => s,
            (Spec::And { mut of }, Spec::And { of: more }) => {
                of.extend(more);
                Spec::And { of }
            }
            (Spec::And { mut of }, s) => {
                of.push(s);
                Spec::And { of }
            }
            (s, o) => Spec::And { of: vec![s, o] },
        }
    }

    /// `self OR other` (flattening nested `or`s).
    #[must_use]
    pub fn or(self, other: Spec) -> Spec {
        match (self, other) {
            (Spec::Or { mut of }, Spec::Or { of: more }) => {
                of.extend(more);
                Spec::Or { of }
            }
            (Spec::Or { mut of }, s) => {
                of.push(s);
                Spec::Or { of }
            }
            (s, o) => Spec::Or { of: vec![s, o] },
        }
    }

    /// `NOT self`.
    #[allow(clippy::should_implement_trait)]
    #[must_use]
    pub fn not(self) -> Spec {
        Spec::Not {
            spec: Box::new(self),
        }
    }

    /// Checks the specification against an entity's registry and the limits, converting
    /// values to the fields' types. Nothing is sent to a database before this succeeds.
    pub fn resolve(&self, def: &EntityDef, limits: &Limits) -> Result<Pred> {
        let mut budget = limits.max_spec_nodes;
        let pred = resolve(self, def, limits, 0, &mut budget)?;
        let bound = pred.bound_values();
        if bound > MAX_BOUND_VALUES {
            return Err(Error::LimitExceeded {
                what: "values bound by one query (every backend binds each value as a parameter)",
                limit: MAX_BOUND_VALUES as u64,
                actual: bound as u64,
            });
        }
        Ok(pred)
    }
}

impl std::ops::Not for Spec {
    type Output = Spec;
    fn not(self) -> Spec {
        Spec::not(self)
    }
}

/// The most values one statement may bind, on every backend: each `in`-list element, id of
/// a `get_many` and operand is one bind parameter, and SQLite allows 32,766 per statement
/// (PostgreSQL 65,535). A query or `get_many` over this fails with
/// [`Error::LimitExceeded`] before any SQL, whatever [`Limits`] allow, so a raised
/// [`Limits::max_in_list`] or [`Limits::max_batch`] can never reach a backend's own limit.
pub const MAX_BOUND_VALUES: usize = 30_000;

/// Hard limits on caller input, enforced before any SQL is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Default page size when a query does not set one.
    pub default_page_size: u32,
    /// Largest page size a query may ask for.
    pub max_page_size: u32,
    /// Deepest nesting of `and`/`or`/`not`.
    pub max_spec_depth: usize,
    /// Most nodes in one specification.
    pub max_spec_nodes: usize,
    /// Longest `in`/`not_in` list. Whatever it is set to, a query binds at most
    /// [`MAX_BOUND_VALUES`] values.
    pub max_in_list: usize,
    /// Longest text operand or pattern, in bytes.
    pub max_text_len: usize,
    /// Most ordering keys.
    pub max_order_keys: usize,
    /// Most ids in one `get_many` (at most [`MAX_BOUND_VALUES`], whatever it is set to).
    pub max_batch: usize,
    /// Largest encoded entity (document body or sum of column texts), in bytes.
    pub max_record_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            default_page_size: 50,
            max_page_size: 1_000,
            max_spec_depth: 16,
            max_spec_nodes: 256,
            max_in_list: 1_000,
            max_text_len: 4_096,
            max_order_keys: 8,
            max_batch: 1_000,
            max_record_bytes: 4 * 1024 * 1024,
        }
    }
}

/// A comparison operator of a resolved predicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A checked predicate: fields resolved to the registry, values typed, patterns normalized.
/// This is what backends compile or evaluate.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Pred {
    True,
    And(Vec<Pred>),
    Or(Vec<Pred>),
    Not(Box<Pred>),
    Cmp {
        field: FieldRef,
        op: CmpOp,
        value: Value,
    },
    In {
        field: FieldRef,
        values: Vec<Value>,
        negated: bool,
    },
    Between {
        field: FieldRef,
        low: Value,
        high: Value,
        negated: bool,
    },
    /// A LIKE pattern (`%`, `_`, `\` escape), already validated.
    Like {
        field: FieldRef,
        pattern: String,
        case_insensitive: bool,
    },
    IsNull {
        field: FieldRef,
    },
    IsEmpty {
        field: FieldRef,
        json: bool,
    },
    /// A pattern of larder's regex dialect, parsed and rendered per engine.
    Regex {
        field: FieldRef,
        pattern: RegexPattern,
    },
    JsonContains {
        field: FieldRef,
        value: serde_json::Value,
    },
    JsonHasKey {
        field: FieldRef,
        key: String,
    },
}

impl Pred {
    /// An upper bound of the values a backend binds to run this predicate (each `in`
    /// element is one; other leaves count two, which covers every backend's rendering).
    pub fn bound_values(&self) -> usize {
        match self {
            Pred::True | Pred::IsNull { .. } => 0,
            Pred::And(ps) | Pred::Or(ps) => ps.iter().map(Pred::bound_values).sum(),
            Pred::Not(p) => p.bound_values(),
            Pred::In { values, .. } => values.len(),
            _ => 2,
        }
    }

    /// The operator names used in this predicate that need a backend capability
    /// (`regex`, `json_contains`).
    pub fn required_capabilities(&self, out: &mut Vec<&'static str>) {
        match self {
            Pred::And(v) | Pred::Or(v) => v.iter().for_each(|p| p.required_capabilities(out)),
            Pred::Not(p) => p.required_capabilities(out),
            Pred::Regex { .. } => out.push("regex"),
            Pred::JsonContains { .. } => out.push("json_contains"),
            _ => {}
        }
    }
}

/// Escapes `%`, `_` and `\` so that `s` matches literally inside a LIKE pattern.
pub fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn resolve(
    s: &Spec,
    def: &EntityDef,
    limits: &Limits,
    depth: usize,
    budget: &mut usize,
) -> Result<Pred> {
    if *budget == 0 {
        return Err(Error::LimitExceeded {
            what: "specification size (nodes)",
            limit: limits.max_spec_nodes as u64,
            actual: limits.max_spec_nodes as u64 + 1,
        });
    }
    *budget -= 1;
    if depth > limits.max_spec_depth {
        return Err(Error::LimitExceeded {
            what: "specification depth",
            limit: limits.max_spec_depth as u64,
            actual: depth as u64,
        });
    }
    let lookup = |name: &str| -> Result<(FieldRef, FieldType)> {
        let f = def.field(name).ok_or_else(|| Error::UnknownField {
            entity: def.name,
            field: shown(name),
        })?;
        Ok((f, def.field_def(f).ty))
    };
    let text = |v: &str, what: &'static str| -> Result<()> {
        if v.len() > limits.max_text_len {
            return Err(Error::LimitExceeded {
                what,
                limit: limits.max_text_len as u64,
                actual: v.len() as u64,
            });
        }
        Ok(())
    };
    // No backend stores NUL (U+0000) in text (it is rejected on write), and PostgreSQL
    // cannot even receive it: an operand holding one is refused on every backend alike.
    let no_nul = |v: &str, name: &str, op: &str| -> Result<()> {
        match text_nul(v) {
            Some(at) => Err(Error::InvalidQuery(format!(
                "`{op}` operand for `{}` contains a NUL character (U+0000) at byte {at}; text cannot contain NUL",
                shown(name)
            ))),
            None => Ok(()),
        }
    };
    let operand = |name: &str, ty: FieldType, v: &Value, op: &str| -> Result<Value> {
        if v.is_null() {
            return Err(Error::InvalidQuery(format!(
                "`{op}` on `{}` needs a value, not null (use is_null)",
                shown(name)
            )));
        }
        if let Value::Text(t) = v {
            text(t, "text operand length")?;
            no_nul(t, name, op)?;
        }
        v.clone().coerce(name, ty)
    };
    let orderable = |name: &str, ty: FieldType, op: &str| -> Result<()> {
        if ty == FieldType::Json {
            return Err(Error::InvalidQuery(format!(
                "`{op}` is not defined on json field `{}`; use is_null, is_empty, json_contains or json_has_key",
                shown(name)
            )));
        }
        Ok(())
    };
    let textual = |name: &str, ty: FieldType, op: &str| -> Result<()> {
        if ty != FieldType::Text {
            return Err(Error::InvalidQuery(format!(
                "`{op}` needs a text field, `{}` is {}",
                shown(name),
                ty.name()
            )));
        }
        Ok(())
    };
    let like = |field: &str, pattern: String, ci: bool, op: &str| -> Result<Pred> {
        let (f, ty) = lookup(field)?;
        textual(field, ty, op)?;
        text(&pattern, "pattern length")?;
        no_nul(&pattern, field, op)?;
        if pattern.chars().rev().take_while(|c| *c == '\\').count() % 2 == 1 {
            return Err(Error::InvalidQuery(format!(
                "`{op}` pattern on `{}` ends with a lone escape character",
                shown(field)
            )));
        }
        Ok(Pred::Like {
            field: f,
            pattern,
            case_insensitive: ci,
        })
    };
    let cmp = |field: &str, op: CmpOp, v: &Value, name: &str| -> Result<Pred> {
        let (f, ty) = lookup(field)?;
        orderable(field, ty, name)?;
        Ok(Pred::Cmp {
            field: f,
            op,
            value: operand(field, ty, v, name)?,
        })
    };
    Ok(match s {
        Spec::All => Pred::True,
        Spec::And { of } | Spec::Or { of } => {
            let v = of
                .iter()
                .map(|s| resolve(s, def, limits, depth + 1, budget))
                .collect::<Result<Vec<_>>>()?;
            if matches!(s, Spec::And { .. }) {
                Pred::And(v)
            } else {
                Pred::Or(v)
            }
        }
        Spec::Not { spec } => Pred::Not(Box::new(resolve(spec, def, limits, depth + 1, budget)?)),
        Spec::Eq { field, value } => cmp(field, CmpOp::Eq, value, "eq")?,
        Spec::Ne { field, value } => cmp(field, CmpOp::Ne, value, "ne")?,
        Spec::Lt { field, value } => cmp(field, CmpOp::Lt, value, "lt")?,
        Spec::Le { field, value } => cmp(field, CmpOp::Le, value, "le")?,
        Spec::Gt { field, value } => cmp(field, CmpOp::Gt, value, "gt")?,
        Spec::Ge { field, value } => cmp(field, CmpOp::Ge, value, "ge")?,
        Spec::In { field, values } | Spec::NotIn { field, values } => {
            let negated = matches!(s, Spec::NotIn { .. });
            let op = if negated { "not_in" } else { "in" };
            let (f, ty) = lookup(field)?;
            orderable(field, ty, op)?;
            if values.len() > limits.max_in_list {
                return Err(Error::LimitExceeded {
                    what: "in-list length",
                    limit: limits.max_in_list as u64,
                    actual: values.len() as u64,
                });
            }
            let values = values
                .iter()
                .map(|v| operand(field, ty, v, op))
                .collect::<Result<Vec<_>>>()?;
            Pred::In {
                field: f,
                values,
                negated,
            }
        }
        Spec::Between { field, low, high } | Spec::NotBetween { field, low, high } => {
            let negated = matches!(s, Spec::NotBetween { .. });
            let op = if negated { "not_between" } else { "between" };
            let (f, ty) = lookup(field)?;
            orderable(field, ty, op)?;
            Pred::Between {
                field: f,
                low: operand(field, ty, low, op)?,
                high: operand(field, ty, high, op)?,
                negated,
            }
        }
        Spec::Like { field, pattern } => like(field, pattern.clone(), false, "like")?,
        Spec::Ilike { field, pattern } => like(field, pattern.clone(), true, "ilike")?,
        Spec::Contains { field, value } => like(
            field,
            format!("%{}%", escape_like(value)),
            false,
            "contains",
        )?,
        Spec::Icontains { field, value } => like(
            field,
            format!("%{}%", escape_like(value)),
            true,
            "icontains",
        )?,
        Spec::StartsWith { field, value } => like(
            field,
            format!("{}%", escape_like(value)),
            false,
            "starts_with",
        )?,
        Spec::EndsWith { field, value } => like(
            field,
            format!("%{}", escape_like(value)),
            false,
            "ends_with",
        )?,
        Spec::IsNull { field } => Pred::IsNull {
            field: lookup(field)?.0,
        },
        Spec::IsEmpty { field } => {
            let (f, ty) = lookup(field)?;
            match ty {
                FieldType::Text => Pred::IsEmpty {
                    field: f,
                    json: false,
                },
                FieldType::Json => Pred::IsEmpty {
                    field: f,
                    json: true,
                },
                other => {
                    return Err(Error::InvalidQuery(format!(
                        "`is_empty` needs a text or json field, `{}` is {}",
                        shown(field),
                        other.name()
                    )));
                }
            }
        }
        Spec::Regex { field, pattern } => {
            let (f, ty) = lookup(field)?;
            textual(field, ty, "regex")?;
            text(pattern, "pattern length")?;
            Pred::Regex {
                field: f,
                pattern: RegexPattern::parse(field, pattern)?,
            }
        }
        Spec::JsonContains { field, value } => {
            let (f, ty) = lookup(field)?;
            if ty != FieldType::Json {
                return Err(Error::InvalidQuery(format!(
                    "`json_contains` needs a json field, `{}` is {}",
                    shown(field),
                    ty.name()
                )));
            }
            text(&value.to_string(), "json operand length")?;
            if json_nul(value) {
                return Err(Error::InvalidQuery(format!(
                    "`json_contains` operand for `{}` contains a NUL character (U+0000) in a string; text cannot contain NUL",
                    shown(field)
                )));
            }
            Pred::JsonContains {
                field: f,
                value: value.clone(),
            }
        }
        Spec::JsonHasKey { field, key } => {
            let (f, ty) = lookup(field)?;
            if ty != FieldType::Json {
                return Err(Error::InvalidQuery(format!(
                    "`json_has_key` needs a json field, `{}` is {}",
                    shown(field),
                    ty.name()
                )));
            }
            text(key, "json key length")?;
            no_nul(key, field, "json_has_key")?;
            Pred::JsonHasKey {
                field: f,
                key: key.clone(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::{FieldDef, Storage};

    fn def() -> EntityDef {
        EntityDef {
            indexes: Vec::new(),
            name: "item",
            table: "items",
            storage: Storage::Columns,
            id: FieldDef::new("id", FieldType::Int),
            fields: vec![
                FieldDef::new("name", FieldType::Text),
                FieldDef::new("tags", FieldType::Json),
            ],
        }
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_typed_errors() {
        let l = Limits::default();
        assert!(matches!(
            field("nope").eq(1).resolve(&def(), &l),
            Err(Error::UnknownField { .. })
        ));
        assert!(matches!(
            field("id").eq("x").resolve(&def(), &l),
            Err(Error::TypeMismatch { .. })
        ));
        assert!(matches!(
            field("tags").gt(1).resolve(&def(), &l),
            Err(Error::InvalidQuery(_))
        ));
        assert!(matches!(
            field("name").like("ab\\").resolve(&def(), &l),
            Err(Error::InvalidQuery(_))
        ));
    }

    #[test]
    fn limits_are_enforced() {
        let l = Limits::default();
        let big = field("id").is_in(0..2_000i64);
        assert!(matches!(
            big.resolve(&def(), &l),
            Err(Error::LimitExceeded { .. })
        ));
        let mut deep = field("id").eq(1);
        for _ in 0..40 {
            deep = deep.not();
        }
        assert!(matches!(
            deep.resolve(&def(), &l),
            Err(Error::LimitExceeded { .. })
        ));
    }

    #[test]
    fn contains_escapes_wildcards() {
        let p = field("name")
            .contains("50%_\\")
            .resolve(&def(), &Limits::default())
            .unwrap();
        assert_eq!(
            p,
            Pred::Like {
                field: FieldRef::Field(0),
                pattern: "%50\\%\\_\\\\%".into(),
                case_insensitive: false
            }
        );
    }

    #[test]
    fn nul_in_operands_is_invalid_query() {
        let l = Limits::default();
        for s in [
            field("name").eq("a\0b"),
            field("name").is_in(["x", "\0"]),
            field("name").between("a", "b\0"),
            field("name").contains("a\0b"),
            field("name").like("%\0"),
            field("name").regex("a\0"),
            field("tags").json_has_key("k\0"),
            field("tags").json_contains(serde_json::json!({"k": ["\0"]})),
            Spec::from_json(r#"{"op":"starts_with","field":"name","value":"a\u0000"}"#).unwrap(),
        ] {
            let e = s.resolve(&def(), &l).unwrap_err();
            assert!(matches!(e, Error::InvalidQuery(_)), "{s:?}: {e:?}");
            assert!(e.to_string().contains("U+0000"), "{e}");
        }
    }

    #[test]
    fn json_form_rejects_unknown_operators() {
        assert!(serde_json::from_str::<Spec>(r#"{"op":"drop","field":"x"}"#).is_err());
        assert!(
            serde_json::from_str::<Spec>(r#"{"op":"eq","field":"x","value":1,"sql":"1=1"}"#)
                .is_err()
        );
    }
}
