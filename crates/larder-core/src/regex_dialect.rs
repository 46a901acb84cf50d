//! larder's portable regular-expression dialect: the patterns of [`Spec::Regex`].
//!
//! A pattern is parsed once, in core, with `regex-syntax` (Rust `regex` syntax), checked
//! against the subset below, and rendered explicitly for each engine: a Rust `regex` pattern
//! for the memory backend and SQLite's `REGEXP` function, a PostgreSQL ARE for `~`. Every
//! construct is spelled out (literals escaped, classes as explicit code-point ranges, no
//! engine flags), so all backends answer the same for every accepted pattern. Anything else
//! is rejected with [`Error::InvalidQuery`] naming the construct, before any SQL is built.
//!
//! # The dialect
//!
//! | Construct | Meaning |
//! |---|---|
//! | `a`, `é`, `\.`, `\\`, `\*`, … | a literal character (punctuation escaped with `\`) |
//! | `\t` `\n` `\r` `\f` `\v` `\a` | tab, newline, carriage return, form feed, vertical tab, bell |
//! | `.` | any character except newline (`\n`); any character at all under `(?s)` |
//! | `[abc]` `[a-z]` `[^…]` | a set of characters, with ranges (by code point) and negation |
//! | `\d` `\w` `\s` | ASCII only: `[0-9]`, `[0-9A-Za-z_]`, `[\t\n\v\f\r ]` (also inside `[…]`) |
//! | `\D` `\W` `\S` | their complements (outside `[…]` only) |
//! | `^` `$` | start and end of the whole text (there is no multi-line mode) |
//! | `(…)` `(?:…)` | grouping (capture groups only group: the operator returns a boolean) |
//! | `a\|b` | alternation |
//! | `*` `+` `?` `{n}` `{n,}` `{m,n}` | repetition, counts at most 255; lazy forms (`*?`) accepted |
//! | `(?i)` `(?s)` `(?i:…)` `(?-i)` | flags: `i` folds **ASCII letters only** (as `ilike` does: `(?i)é` does not match `É`), `s` lets `.` match newline |
//!
//! Rejected, with the reason in the error: Unicode classes (`\pL`, `\p{L}`), POSIX classes
//! (`[[:alpha:]]`), nested classes and class set operations (`&&`, `--`, `~~`), hex, octal
//! and Unicode escapes (`\x41`, `\x{41}`, `\u0041`: write the character itself), word
//! boundaries (`\b`, `\B`, `\<`, `\>`), the text anchors `\A` and `\z` (use `^` and `$`),
//! named groups (`(?P<x>…)`), flags other than `i` and `s` (`m`, `x`, `u`, `U`, `R`), a
//! repetition applied directly to a repetition (`a**`: group it, `(?:a*)*`), a repetition of
//! an anchor or of nothing (`^*`), counts above 255 (`a{256}`), NUL characters, and patterns
//! whose expansion is too large (pattern size times nested repetition counts over 10,000,
//! see [`MAX_EXPANDED_SIZE`]).
//!
//! [`Spec::Regex`]: crate::spec::Spec::Regex

use std::fmt::Write as _;
use std::sync::Arc;

use regex_syntax::ast::{self, Ast};

use crate::error::{Error, Result, shown};

/// Largest repetition count (PostgreSQL's `RE_DUPMAX`).
pub const MAX_REPEAT: u32 = 255;
/// Largest expanded size of a pattern (each literal and anchor counts one, a class one per
/// range, multiplied by the counts of the repetitions around it). Keeps every engine's
/// compiled form small: PostgreSQL refuses "too complex" patterns at a few times this.
pub const MAX_EXPANDED_SIZE: u64 = 10_000;
/// Deepest nesting of groups and repetitions.
const NEST_LIMIT: u32 = 64;

/// A validated pattern of larder's regex dialect (see the [module docs](self)), with its
/// rendering for each engine.
#[derive(Clone)]
pub struct RegexPattern {
    source: String,
    rust: String,
    postgres: String,
    compiled: Arc<regex::Regex>,
}

impl std::fmt::Debug for RegexPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegexPattern")
            .field("source", &self.source)
            .field("rust", &self.rust)
            .field("postgres", &self.postgres)
            .finish_non_exhaustive()
    }
}

impl PartialEq for RegexPattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl RegexPattern {
    /// Parses and checks a pattern; `field` names the field in error messages.
    ///
    /// ```
    /// use larder_core::regex_dialect::RegexPattern;
    /// let p = RegexPattern::parse("name", "(?i)^a.c$").unwrap();
    /// assert!(p.is_match("AbC"));
    /// assert!(!p.is_match("a\nc"));
    /// assert_eq!(p.postgres(), "^[Aa][^\\u000a][Cc]$");
    /// assert!(RegexPattern::parse("name", r"\p{L}").is_err());
    /// assert!(RegexPattern::parse("name", "a{256}").is_err());
    /// ```
    pub fn parse(field: &str, pattern: &str) -> Result<RegexPattern> {
        let invalid =
            |what: String| Error::InvalidQuery(format!("regex for `{}`: {what}", shown(field)));
        if let Some(at) = pattern.find('\0') {
            return Err(invalid(format!(
                "NUL character (U+0000) at byte {at} is not supported; remove it"
            )));
        }
        let ast = ast::parse::ParserBuilder::new()
            .nest_limit(NEST_LIMIT)
            .build()
            .parse(pattern)
            .map_err(|e| {
                invalid(format!(
                    "{} at byte {}",
                    one_line(&e.kind().to_string()),
                    e.span().start.offset
                ))
            })?;
        let mut flags = Flags::default();
        let node = lower(&ast, &mut flags).map_err(|r| {
            invalid(format!(
                "{} at byte {} is not supported; {}",
                r.construct, r.at, r.hint
            ))
        })?;
        let size = node.size();
        if size > MAX_EXPANDED_SIZE {
            return Err(invalid(format!(
                "pattern is too complex (expanded size {size}, limit {MAX_EXPANDED_SIZE}); use smaller repetition counts"
            )));
        }
        let mut rust = String::new();
        node.render(&mut rust, Engine::Rust);
        let mut postgres = String::new();
        node.render(&mut postgres, Engine::Postgres);
        let compiled = regex::Regex::new(&rust).map_err(|_| {
            invalid("pattern is too complex to compile; use smaller repetition counts".into())
        })?;
        Ok(RegexPattern {
            source: pattern.to_owned(),
            rust,
            postgres,
            compiled: Arc::new(compiled),
        })
    }

    /// The pattern as the caller wrote it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The pattern in Rust `regex` syntax (default flags), as run by the memory backend and
    /// by SQLite's `REGEXP`.
    pub fn rust(&self) -> &str {
        &self.rust
    }

    /// The pattern as a PostgreSQL advanced regular expression, for `~`.
    pub fn postgres(&self) -> &str {
        &self.postgres
    }

    /// Whether `text` matches (the memory backend's evaluation).
    pub fn is_match(&self, text: &str) -> bool {
        self.compiled.is_match(text)
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Why a construct is rejected.
struct Rejected {
    construct: &'static str,
    at: usize,
    hint: &'static str,
}

fn reject<T>(
    span: &ast::Span,
    construct: &'static str,
    hint: &'static str,
) -> std::result::Result<T, Rejected> {
    Err(Rejected {
        construct,
        at: span.start.offset,
        hint,
    })
}

#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    case_insensitive: bool,
    dot_all: bool,
}

impl Flags {
    fn apply(&mut self, f: &ast::Flags) -> std::result::Result<(), Rejected> {
        let mut on = true;
        for item in &f.items {
            match &item.kind {
                ast::FlagsItemKind::Negation => on = false,
                ast::FlagsItemKind::Flag(ast::Flag::CaseInsensitive) => self.case_insensitive = on,
                ast::FlagsItemKind::Flag(ast::Flag::DotMatchesNewLine) => self.dot_all = on,
                ast::FlagsItemKind::Flag(_) => {
                    return reject(
                        &item.span,
                        "this flag",
                        "only the flags `i` and `s` are portable",
                    );
                }
            }
        }
        Ok(())
    }
}

/// The checked pattern: everything explicit, no flags left.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Empty,
    Literal(char),
    /// Sorted, merged code-point ranges.
    Class {
        ranges: Vec<(char, char)>,
        negated: bool,
    },
    /// Any character (`(?s).`).
    Any,
    Start,
    End,
    Concat(Vec<Node>),
    Alternation(Vec<Node>),
    Group(Box<Node>),
    Repeat {
        node: Box<Node>,
        min: u32,
        max: Option<u32>,
    },
}

const DIGIT: &[(char, char)] = &[('0', '9')];
const WORD: &[(char, char)] = &[('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')];
const SPACE: &[(char, char)] = &[('\t', '\r'), (' ', ' ')];

fn perl(kind: &ast::ClassPerlKind) -> &'static [(char, char)] {
    match kind {
        ast::ClassPerlKind::Digit => DIGIT,
        ast::ClassPerlKind::Word => WORD,
        ast::ClassPerlKind::Space => SPACE,
    }
}

fn literal(l: &ast::Literal) -> std::result::Result<char, Rejected> {
    match l.kind {
        ast::LiteralKind::Verbatim
        | ast::LiteralKind::Meta
        | ast::LiteralKind::Superfluous
        | ast::LiteralKind::Special(_) => Ok(l.c),
        ast::LiteralKind::Octal | ast::LiteralKind::HexFixed(_) | ast::LiteralKind::HexBrace(_) => {
            reject(
                &l.span,
                "a hex, octal or unicode escape",
                "write the character itself",
            )
        }
    }
}

/// Adds the other ASCII case of every ASCII letter in the ranges.
fn fold_ascii(ranges: &mut Vec<(char, char)>) {
    let mut extra = Vec::new();
    for &(lo, hi) in ranges.iter() {
        for (a, z) in [('a', 'z'), ('A', 'Z')] {
            let (s, e) = (lo.max(a), hi.min(z));
            if s <= e {
                // ASCII letters: the other case differs in bit 0x20.
                let other = |c: char| u8::try_from(c).map_or(c, |b| char::from(b ^ 0x20));
                extra.push((other(s), other(e)));
            }
        }
    }
    ranges.extend(extra);
}

fn canonical(mut ranges: Vec<(char, char)>) -> Vec<(char, char)> {
    ranges.sort_unstable();
    let mut out: Vec<(char, char)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        if let Some(last) = out.last_mut()
            && u32::from(lo) <= u32::from(last.1).saturating_add(1)
        {
            last.1 = last.1.max(hi);
            continue;
        }
        out.push((lo, hi));
    }
    out
}

fn class(mut ranges: Vec<(char, char)>, negated: bool, flags: Flags) -> Node {
    if flags.case_insensitive {
        fold_ascii(&mut ranges);
    }
    Node::Class {
        ranges: canonical(ranges),
        negated,
    }
}

fn class_items(
    item: &ast::ClassSetItem,
    out: &mut Vec<(char, char)>,
) -> std::result::Result<(), Rejected> {
    match item {
        ast::ClassSetItem::Empty(_) => Ok(()),
        ast::ClassSetItem::Literal(l) => {
            let c = literal(l)?;
            out.push((c, c));
            Ok(())
        }
        ast::ClassSetItem::Range(r) => {
            out.push((literal(&r.start)?, literal(&r.end)?));
            Ok(())
        }
        ast::ClassSetItem::Ascii(a) => reject(
            &a.span,
            "a POSIX class",
            "list the characters or ranges, e.g. `[a-zA-Z]`",
        ),
        ast::ClassSetItem::Unicode(u) => reject(
            &u.span,
            "a unicode class",
            "list the characters or ranges, e.g. `[a-zA-Zà-ÿ]`",
        ),
        ast::ClassSetItem::Perl(p) if p.negated => reject(
            &p.span,
            "a negated class (`\\D`, `\\W`, `\\S`) inside `[…]`",
            "use it outside brackets or negate the whole class",
        ),
        ast::ClassSetItem::Perl(p) => {
            out.extend_from_slice(perl(&p.kind));
            Ok(())
        }
        ast::ClassSetItem::Bracketed(b) => reject(
            &b.span,
            "a nested class",
            "write one flat class, e.g. `[a-cx]`",
        ),
        ast::ClassSetItem::Union(u) => {
            for i in &u.items {
                class_items(i, out)?;
            }
            Ok(())
        }
    }
}

fn lower(a: &Ast, flags: &mut Flags) -> std::result::Result<Node, Rejected> {
    Ok(match a {
        Ast::Empty(_) => Node::Empty,
        Ast::Flags(f) => {
            flags.apply(&f.flags)?;
            Node::Empty
        }
        Ast::Literal(l) => {
            let c = literal(l)?;
            if flags.case_insensitive && c.is_ascii_alphabetic() {
                class(vec![(c, c)], false, *flags)
            } else {
                Node::Literal(c)
            }
        }
        Ast::Dot(_) if flags.dot_all => Node::Any,
        Ast::Dot(_) => Node::Class {
            ranges: vec![('\n', '\n')],
            negated: true,
        },
        Ast::Assertion(x) => match x.kind {
            ast::AssertionKind::StartLine => Node::Start,
            ast::AssertionKind::EndLine => Node::End,
            ast::AssertionKind::StartText | ast::AssertionKind::EndText => {
                return reject(&x.span, "`\\A` / `\\z`", "use `^` and `$`");
            }
            _ => {
                return reject(
                    &x.span,
                    "a word boundary",
                    "spell the boundary out, e.g. `(^|[^0-9A-Za-z_])word([^0-9A-Za-z_]|$)`",
                );
            }
        },
        Ast::ClassUnicode(u) => {
            return reject(
                &u.span,
                "a unicode class",
                "list the characters or ranges, e.g. `[a-zA-Zà-ÿ]`",
            );
        }
        Ast::ClassPerl(p) => class(perl(&p.kind).to_vec(), p.negated, *flags),
        Ast::ClassBracketed(b) => {
            let ast::ClassSet::Item(item) = &b.kind else {
                return reject(
                    &b.span,
                    "a class set operation (`&&`, `--`, `~~`)",
                    "write the resulting characters as one class",
                );
            };
            let mut ranges = Vec::new();
            class_items(item, &mut ranges)?;
            if ranges.is_empty() {
                return reject(&b.span, "an empty class", "list at least one character");
            }
            class(ranges, b.negated, *flags)
        }
        Ast::Repetition(r) => {
            if matches!(*r.ast, Ast::Repetition(_)) {
                return reject(
                    &r.op.span,
                    "a repetition of a repetition",
                    "group the inner one, e.g. `(?:a*)*`",
                );
            }
            let node = lower(&r.ast, flags)?;
            if !node.consumes() {
                return reject(
                    &r.op.span,
                    "a repetition of an anchor or of nothing",
                    "repeat something that matches characters",
                );
            }
            let (min, max) = match &r.op.kind {
                ast::RepetitionKind::ZeroOrOne => (0, Some(1)),
                ast::RepetitionKind::ZeroOrMore => (0, None),
                ast::RepetitionKind::OneOrMore => (1, None),
                ast::RepetitionKind::Range(ast::RepetitionRange::Exactly(n)) => (*n, Some(*n)),
                ast::RepetitionKind::Range(ast::RepetitionRange::AtLeast(n)) => (*n, None),
                ast::RepetitionKind::Range(ast::RepetitionRange::Bounded(m, n)) => (*m, Some(*n)),
            };
            if min.max(max.unwrap_or(0)) > MAX_REPEAT {
                return reject(
                    &r.op.span,
                    "a repetition count over 255",
                    "use counts of at most 255",
                );
            }
            Node::Repeat {
                node: Box::new(node),
                min,
                max,
            }
        }
        Ast::Group(g) => {
            let mut inner = *flags;
            match &g.kind {
                ast::GroupKind::CaptureIndex(_) => {}
                ast::GroupKind::CaptureName { .. } => {
                    return reject(&g.span, "a named group", "use `(…)` or `(?:…)`");
                }
                ast::GroupKind::NonCapturing(f) => inner.apply(f)?,
            }
            Node::Group(Box::new(lower(&g.ast, &mut inner)?))
        }
        // Flags set inside a group apply to the rest of the group, later alternatives
        // included (as in Rust's `regex`): `flags` is threaded through in order.
        Ast::Alternation(x) => Node::Alternation(
            x.asts
                .iter()
                .map(|a| lower(a, flags))
                .collect::<std::result::Result<_, _>>()?,
        ),
        Ast::Concat(x) => Node::Concat(
            x.asts
                .iter()
                .map(|a| lower(a, flags))
                .collect::<std::result::Result<_, _>>()?,
        ),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    Rust,
    Postgres,
}

impl Node {
    /// Whether the node can match at least one character.
    fn consumes(&self) -> bool {
        match self {
            Node::Empty | Node::Start | Node::End => false,
            Node::Literal(_) | Node::Class { .. } | Node::Any => true,
            Node::Concat(v) | Node::Alternation(v) => v.iter().any(Node::consumes),
            Node::Group(n) | Node::Repeat { node: n, .. } => n.consumes(),
        }
    }

    /// The expanded size (see [`MAX_EXPANDED_SIZE`]).
    fn size(&self) -> u64 {
        match self {
            Node::Empty | Node::Literal(_) | Node::Any | Node::Start | Node::End => 1,
            Node::Class { ranges, .. } => u64::try_from(ranges.len()).unwrap_or(u64::MAX).max(1),
            Node::Concat(v) => v.iter().map(Node::size).fold(0, u64::saturating_add),
            Node::Alternation(v) => v.iter().map(Node::size).fold(1, u64::saturating_add),
            Node::Group(n) => n.size(),
            Node::Repeat { node, min, max } => {
                let copies = max.map_or(u64::from(*min) + 1, u64::from).max(1);
                node.size().saturating_mul(copies)
            }
        }
    }

    fn is_atom(&self) -> bool {
        matches!(
            self,
            Node::Literal(_) | Node::Class { .. } | Node::Any | Node::Group(_)
        )
    }

    fn render(&self, out: &mut String, e: Engine) {
        match self {
            Node::Empty => out.push_str("(?:)"),
            Node::Literal(c) => push_char(out, *c, e),
            Node::Class { ranges, negated } => {
                out.push('[');
                if *negated {
                    out.push('^');
                }
                for &(lo, hi) in ranges {
                    push_char(out, lo, e);
                    if hi != lo {
                        out.push('-');
                        push_char(out, hi, e);
                    }
                }
                out.push(']');
            }
            Node::Any => out.push_str(match e {
                Engine::Rust => "(?s:.)",
                // Outside newline-sensitive mode (never enabled) `.` matches newline.
                Engine::Postgres => ".",
            }),
            Node::Start => out.push('^'),
            Node::End => out.push('$'),
            Node::Concat(v) => {
                // Flag settings lowered to `Empty` contribute nothing.
                let items: Vec<&Node> = v.iter().filter(|n| **n != Node::Empty).collect();
                if items.is_empty() {
                    out.push_str("(?:)");
                }
                for n in items {
                    if matches!(n, Node::Alternation(_)) {
                        out.push_str("(?:");
                        n.render(out, e);
                        out.push(')');
                    } else {
                        n.render(out, e);
                    }
                }
            }
            Node::Alternation(v) => {
                for (i, n) in v.iter().enumerate() {
                    if i > 0 {
                        out.push('|');
                    }
                    n.render(out, e);
                }
            }
            Node::Group(n) => {
                out.push_str("(?:");
                n.render(out, e);
                out.push(')');
            }
            Node::Repeat { node, min, max } => {
                if node.is_atom() {
                    node.render(out, e);
                } else {
                    out.push_str("(?:");
                    node.render(out, e);
                    out.push(')');
                }
                match (min, max) {
                    (0, None) => out.push('*'),
                    (1, None) => out.push('+'),
                    (0, Some(1)) => out.push('?'),
                    (m, None) => {
                        let _ = write!(out, "{{{m},}}");
                    }
                    (m, Some(n)) if m == n => {
                        let _ = write!(out, "{{{m}}}");
                    }
                    (m, Some(n)) => {
                        let _ = write!(out, "{{{m},{n}}}");
                    }
                }
            }
        }
    }
}

/// Writes one character so that the engine reads it literally, inside or outside `[…]`.
fn push_char(out: &mut String, c: char, e: Engine) {
    let code = u32::from(c);
    match e {
        Engine::Rust => {
            if c.is_ascii_control() {
                let _ = write!(out, "\\x{{{code:x}}}");
            } else if regex_syntax::is_meta_character(c) {
                out.push('\\');
                out.push(c);
            } else {
                out.push(c);
            }
        }
        Engine::Postgres => {
            if c.is_ascii_control() {
                let _ = write!(out, "\\u{code:04x}");
            } else if c.is_ascii() && !c.is_ascii_alphanumeric() {
                // In an ARE, `\` followed by a non-alphanumeric character is that
                // character, inside brackets too.
                out.push('\\');
                out.push(c);
            } else {
                out.push(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(p: &str) -> (String, String) {
        let r = RegexPattern::parse("f", p).unwrap();
        (r.rust().to_owned(), r.postgres().to_owned())
    }

    #[test]
    fn renders_explicitly() {
        assert_eq!(both("a.b"), ("a[^\\x{a}]b".into(), "a[^\\u000a]b".into()));
        assert_eq!(both("(?s)a.b"), ("a(?s:.)b".into(), "a.b".into()));
        assert_eq!(both(r"^\d+$"), ("^[0-9]+$".into(), "^[0-9]+$".into()));
        assert_eq!(
            both(r"\w"),
            ("[0-9A-Z_a-z]".into(), "[0-9A-Z\\_a-z]".into())
        );
        assert_eq!(
            both(r"\S"),
            ("[^\\x{9}-\\x{d} ]".into(), "[^\\u0009-\\u000d\\ ]".into())
        );
        assert_eq!(both("(?i)é[a-c]"), ("é[A-Ca-c]".into(), "é[A-Ca-c]".into()));
        assert_eq!(both("(a|b)*?c"), ("(?:a|b)*c".into(), "(?:a|b)*c".into()));
        assert_eq!(
            both("x{2,}y{3}z{1,4}"),
            ("x{2,}y{3}z{1,4}".into(), "x{2,}y{3}z{1,4}".into())
        );
        assert_eq!(both(r"\.\*\\"), (r"\.\*\\".into(), r"\.\*\\".into()));
        assert_eq!(both("a|"), ("a|(?:)".into(), "a|(?:)".into()));
    }

    #[test]
    fn flags_follow_rust_scoping() {
        // `(?i)` applies to the rest of the group, later alternatives included.
        assert_eq!(both("a(?i)b|c").0, "a[Bb]|[Cc]");
        assert_eq!(both("(?i:a)b").0, "(?:[Aa])b");
        assert_eq!(both("(?i)a(?-i)b").0, "[Aa]b");
    }

    #[test]
    fn matches_with_the_documented_semantics() {
        let m = |p: &str, s: &str| RegexPattern::parse("f", p).unwrap().is_match(s);
        assert!(!m("^.$", "\n"));
        assert!(m("(?s)^.$", "\n"));
        assert!(!m("a.*b", "a\nb"));
        assert!(m("(?i)^é$", "é") && !m("(?i)^é$", "É"));
        assert!(m("(?i)^straße$", "STRAße"));
        assert!(!m(r"^\d$", "٣"), "ASCII digits only");
        assert!(!m(r"^\w$", "é"), "ASCII word characters only");
        assert!(!m(r"\s", "\u{a0}"), "ASCII space only");
        assert!(
            m("a$", "a") && !m("a$", "a\n"),
            "`$` is the end of the text"
        );
    }

    #[test]
    fn rejects_what_is_not_portable() {
        for p in [
            r"\p{L}",
            r"\pL",
            "a{256}",
            "(?P<x>a)",
            "(?<x>a)",
            "a**",
            r"\z",
            r"\A",
            r"\x{41}",
            r"\x41",
            r"\u0041",
            r"\b",
            r"\B",
            "[[:alpha:]]",
            "[a&&b]",
            "[a[b]]",
            r"[\D]",
            "(?m)^a",
            "(?x)a",
            "(?u)a",
            "(?U)a*",
            "^*",
            "(?:a{255}){255}",
            "a\0b",
            "(",
            "[z-a]",
        ] {
            let e = RegexPattern::parse("f", p).unwrap_err();
            assert!(matches!(e, Error::InvalidQuery(_)), "{p}: {e:?}");
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{p}: one line: {msg}");
        }
    }

    #[test]
    fn the_largest_accepted_patterns_compile() {
        for p in [
            "(?:[^a]{100}){100}",
            "(?:(?:a|b|c){255}){9}",
            r"(?:\w{255}){9}",
            "(?s).{255}",
        ] {
            RegexPattern::parse("f", p).unwrap();
        }
    }
}
