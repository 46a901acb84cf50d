//! Splitting a migration script into statements, so a failure can name the statement (and
//! its line) that failed.
//!
//! Written by hand: the SQL parser crates that could do this pull in a full grammar per
//! dialect, while a migration only needs statement boundaries. Understood: `'…'` strings
//! (with `''`, and backslash escapes in `E'…'`), `"…"` identifiers, `--` and nested
//! `/* */` comments, PostgreSQL `$tag$…$tag$` bodies, and `BEGIN … END` / `CASE … END`
//! blocks inside `CREATE TRIGGER`/`FUNCTION`/`PROCEDURE` statements (SQLite trigger
//! bodies, PostgreSQL `BEGIN ATOMIC`).

/// One statement of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement text, without the terminating `;`.
    pub sql: String,
    /// The 1-based line it starts on.
    pub line: usize,
}

/// Splits a script into statements; empty statements and comment-only tails are dropped.
pub fn split(script: &str) -> Vec<Statement> {
    let b = script.as_bytes();
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut i = 0usize;
    let mut depth = 0i32; // BEGIN/CASE … END nesting, counted only in block statements
    let mut block: Option<bool> = None; // decided from the statement's first words
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                let escapes = i > 0 && (b[i - 1] == b'E' || b[i - 1] == b'e') && !is_word(b, i - 1);
                i = skip_quoted(b, i, b'\'', escapes);
                continue;
            }
            b'"' => {
                i = skip_quoted(b, i, b'"', false);
                continue;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = skip_block_comment(b, i);
                continue;
            }
            b'$' => {
                if let Some(end) = skip_dollar(b, i) {
                    i = end;
                    continue;
                }
            }
            b';' => {
                if block.is_none() {
                    block = Some(false);
                }
                if depth <= 0 {
                    push(&mut out, script, start, i);
                    start = i + 1;
                    depth = 0;
                    block = None;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let s = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let word = &script[s..i];
                if block.is_none() {
                    block = Some(starts_block_statement(&script[start..i]));
                }
                if block == Some(true) {
                    if word.eq_ignore_ascii_case("BEGIN") || word.eq_ignore_ascii_case("CASE") {
                        depth += 1;
                    } else if word.eq_ignore_ascii_case("END") {
                        depth -= 1;
                    }
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    push(&mut out, script, start, b.len());
    out
}

fn is_word(b: &[u8], i: usize) -> bool {
    // Whether the byte before `i` continues a word (so `xE'…'` is not an E-string).
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

fn skip_quoted(b: &[u8], mut i: usize, q: u8, backslash: bool) -> usize {
    i += 1;
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    i
}

fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut nest = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            nest += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            nest -= 1;
            i += 2;
            if nest == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// `$tag$ … $tag$` (tag empty or an identifier); `None` if `$` does not open one (e.g. `$1`).
fn skip_dollar(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        j += 1;
    }
    if b.get(j) != Some(&b'$') || b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let tag = &b[i..=j];
    let mut k = j + 1;
    while k + tag.len() <= b.len() {
        if &b[k..k + tag.len()] == tag {
            return Some(k + tag.len());
        }
        k += 1;
    }
    Some(b.len())
}

/// Whether the statement (decided at its first word) may contain `BEGIN … END` blocks:
/// `CREATE TRIGGER/FUNCTION/PROCEDURE …`. Every `CREATE` counts blocks; in other `CREATE`
/// statements `CASE … END` pairs balance out.
fn starts_block_statement(first_word: &str) -> bool {
    strip_comments(first_word)
        .split_ascii_whitespace()
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case("CREATE"))
}

fn strip_comments(s: &str) -> String {
    s.lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ")
}

fn push(out: &mut Vec<Statement>, script: &str, start: usize, end: usize) {
    let text = &script[start..end];
    let meaningful = strip_comments(text).replace("/*", " ");
    if meaningful.trim().is_empty() || only_comments(text) {
        return;
    }
    let lead = text.len() - text.trim_start().len();
    let line = script[..start + lead].matches('\n').count() + 1;
    out.push(Statement {
        sql: text.trim().to_owned(),
        line,
    });
}

fn only_comments(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i),
            c if c.is_ascii_whitespace() => i += 1,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqls(s: &str) -> Vec<String> {
        split(s).into_iter().map(|s| s.sql).collect()
    }

    #[test]
    fn splits_plain_statements_and_keeps_lines() {
        let st = split(
            "CREATE TABLE a (x INT);\n\n-- comment; with semicolon\nINSERT INTO a VALUES (1);\n",
        );
        assert_eq!(st.len(), 2);
        assert_eq!(st[1].line, 3);
        assert!(st[1].sql.ends_with("VALUES (1)"));
    }

    #[test]
    fn semicolons_inside_strings_comments_and_dollar_bodies_do_not_split() {
        let s = "INSERT INTO t VALUES ('a;b', 'it''s;', E'x\\';y');\n\
                 /* a; /* nested; */ b; */ SELECT \"we;ird\";\n\
                 CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END; $body$ LANGUAGE plpgsql;\n\
                 DO $$ BEGIN PERFORM 1; END $$;";
        assert_eq!(sqls(s).len(), 4, "{:#?}", sqls(s));
    }

    #[test]
    fn sqlite_trigger_bodies_stay_whole() {
        let s = "CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  UPDATE c SET n = CASE WHEN n > 0 THEN n + 1 ELSE 1 END;\n  DELETE FROM q;\nEND;\nSELECT 1;";
        let v = sqls(s);
        assert_eq!(v.len(), 2, "{v:#?}");
        assert!(v[0].ends_with("END"));
    }

    #[test]
    fn comment_only_scripts_have_no_statements() {
        assert!(split("-- larder:no-transaction\n/* nothing */\n").is_empty());
        assert_eq!(sqls("SELECT 1"), ["SELECT 1"]);
    }
}
