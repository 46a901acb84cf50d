//! In-memory evaluation of resolved predicates and orderings: the reference semantics that
//! the SQL backends are differential-tested against.

use std::cmp::Ordering;

use crate::entity::Record;
use crate::query::OrderKey;
use crate::spec::{CmpOp, Pred};
use crate::value::Value;

/// Evaluates a predicate with SQL three-valued logic: `Some(true)`, `Some(false)` or `None`
/// (unknown). A row matches only on `Some(true)`.
pub fn eval(p: &Pred, r: &Record) -> Option<bool> {
    match p {
        Pred::True => Some(true),
        Pred::And(v) => {
            let mut acc = Some(true);
            for p in v {
                match eval(p, r) {
                    Some(false) => return Some(false),
                    None => acc = None,
                    Some(true) => {}
                }
            }
            acc
        }
        Pred::Or(v) => {
            let mut acc = Some(false);
            for p in v {
                match eval(p, r) {
                    Some(true) => return Some(true),
                    None => acc = None,
                    Some(false) => {}
                }
            }
            acc
        }
        Pred::Not(p) => eval(p, r).map(|b| !b),
        Pred::Cmp { field, op, value } => {
            let o = r.get(*field).sql_cmp(value)?;
            Some(match op {
                CmpOp::Eq => o == Ordering::Equal,
                CmpOp::Ne => o != Ordering::Equal,
                CmpOp::Lt => o == Ordering::Less,
                CmpOp::Le => o != Ordering::Greater,
                CmpOp::Gt => o == Ordering::Greater,
                CmpOp::Ge => o != Ordering::Less,
            })
        }
        Pred::In {
            field,
            values,
            negated,
        } => {
            // Empty lists are decided without looking at the value (even NULL).
            if values.is_empty() {
                return Some(*negated);
            }
            let v = r.get(*field);
            if v.is_null() {
                return None;
            }
            let found = values.iter().any(|x| v.sql_cmp(x) == Some(Ordering::Equal));
            Some(found != *negated)
        }
        Pred::Between {
            field,
            low,
            high,
            negated,
        } => {
            let v = r.get(*field);
            let lo = v.sql_cmp(low)?;
            let hi = v.sql_cmp(high)?;
            let inside = lo != Ordering::Less && hi != Ordering::Greater;
            Some(inside != *negated)
        }
        Pred::Like {
            field,
            pattern,
            case_insensitive,
        } => match r.get(*field) {
            Value::Text(s) => Some(like_match(s, pattern, *case_insensitive)),
            _ => None,
        },
        Pred::IsNull { field } => Some(r.get(*field).is_null()),
        Pred::IsEmpty { field, .. } => match r.get(*field) {
            Value::Null => None,
            Value::Text(s) => Some(s.is_empty()),
            Value::Json(serde_json::Value::Array(a)) => Some(a.is_empty()),
            Value::Json(serde_json::Value::Object(o)) => Some(o.is_empty()),
            _ => Some(false),
        },
        Pred::Regex { field, pattern } => match r.get(*field) {
            Value::Text(s) => Some(pattern.is_match(s)),
            _ => None,
        },
        Pred::JsonContains { field, value } => match r.get(*field) {
            Value::Json(j) => Some(json_contains(j, value, true)),
            _ => None,
        },
        Pred::JsonHasKey { field, key } => match r.get(*field) {
            Value::Json(serde_json::Value::Object(o)) => Some(o.contains_key(key)),
            Value::Json(serde_json::Value::Array(a)) => {
                Some(a.iter().any(|e| e.as_str() == Some(key.as_str())))
            }
            Value::Json(serde_json::Value::String(s)) => Some(s == key),
            Value::Json(_) => Some(false),
            _ => None,
        },
    }
}

/// SQL `LIKE` with `%`, `_` and `\` as escape; `ci` folds ASCII letters only.
pub fn like_match(s: &str, pattern: &str, ci: bool) -> bool {
    #[derive(Clone, Copy)]
    enum Tok {
        Any,
        One,
        Lit(char),
    }
    let mut toks = Vec::new();
    let mut it = pattern.chars();
    while let Some(c) = it.next() {
        toks.push(match c {
            '%' => Tok::Any,
            '_' => Tok::One,
            '\\' => Tok::Lit(it.next().unwrap_or('\\')),
            c => Tok::Lit(c),
        });
    }
    let s: Vec<char> = s.chars().collect();
    let eq = |a: char, b: char| {
        if ci {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    // Iterative wildcard matching with backtracking to the last `%`: O(len(s) * len(p)).
    let (mut si, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match toks.get(pi) {
            Some(Tok::Any) => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(Tok::One) => {
                si += 1;
                pi += 1;
            }
            Some(Tok::Lit(c)) if eq(*c, s[si]) => {
                si += 1;
                pi += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    toks[pi..].iter().all(|t| matches!(t, Tok::Any))
}

/// PostgreSQL `jsonb @>`: objects contain sub-objects, arrays contain elements in any order
/// (and a top-level array contains a bare scalar).
pub fn json_contains(a: &serde_json::Value, b: &serde_json::Value, top: bool) -> bool {
    use serde_json::Value as J;
    match (a, b) {
        (J::Object(x), J::Object(y)) => y
            .iter()
            .all(|(k, v)| x.get(k).is_some_and(|xv| json_contains(xv, v, false))),
        (J::Array(x), J::Array(y)) => y.iter().all(|v| {
            x.iter().any(|xv| {
                // Nested scalars inside arrays must match arrays' elements exactly.
                json_contains(xv, v, false)
            })
        }),
        (J::Array(x), scalar) if top && !scalar.is_array() && !scalar.is_object() => {
            x.iter().any(|xv| json_scalar_eq(xv, scalar))
        }
        (x, y) if !x.is_array() && !x.is_object() => json_scalar_eq(x, y),
        _ => false,
    }
}

fn json_scalar_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a, b) {
        (serde_json::Value::Number(x), serde_json::Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Compares two values under one ordering key (direction and null placement).
fn key_cmp(x: &Value, y: &Value, k: &OrderKey) -> Ordering {
    match (x.is_null(), y.is_null()) {
        (true, true) => Ordering::Equal,
        (true, false) if k.nulls_first => Ordering::Less,
        (true, false) => Ordering::Greater,
        (false, true) if k.nulls_first => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) if k.descending => x.total_cmp(y).reverse(),
        (false, false) => x.total_cmp(y),
    }
}

/// Compares two records by an ordering (the last key is always the id).
pub fn compare(a: &Record, b: &Record, order: &[OrderKey]) -> Ordering {
    order
        .iter()
        .map(|k| key_cmp(a.get(k.field), b.get(k.field), k))
        .find(|o| *o != Ordering::Equal)
        .unwrap_or(Ordering::Equal)
}

/// Whether a record sorts strictly after the cursor position `after` (values of the order
/// keys of the last row of the previous page).
pub fn is_after(r: &Record, after: &[Value], order: &[OrderKey]) -> bool {
    order
        .iter()
        .zip(after)
        .map(|(k, c)| key_cmp(r.get(k.field), c, k))
        .find(|o| *o != Ordering::Equal)
        == Some(Ordering::Greater)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn like_handles_wildcards_escapes_and_case() {
        assert!(like_match("hello", "h%o", false));
        assert!(like_match("hello", "h_llo", false));
        assert!(!like_match("hello", "H%", false));
        assert!(like_match("hello", "H%", true));
        assert!(like_match("50%", "50\\%", false));
        assert!(!like_match("500", "50\\%", false));
        assert!(like_match("", "%", false));
        assert!(like_match("aaab", "%a%b", false));
        assert!(!like_match("Émile", "émile", true), "only ASCII folds");
        assert!(like_match("ü", "_", false), "one character, not one byte");
    }

    #[test]
    fn json_containment_follows_postgres() {
        assert!(json_contains(
            &json!({"a":1,"b":[1,2]}),
            &json!({"b":[2]}),
            true
        ));
        assert!(json_contains(&json!([1, 2, 3]), &json!([3, 1]), true));
        assert!(json_contains(&json!(["a", "b"]), &json!("a"), true));
        assert!(!json_contains(&json!({"a":1}), &json!({"a":2}), true));
        assert!(!json_contains(&json!([[1, 2]]), &json!([1]), true));
    }
}
