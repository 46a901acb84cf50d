//! D11: caller input never reaches error text raw. Every error that quotes what a caller
//! passed in (field names, sort keys, regex patterns, ids, cursor and checkpoint tokens,
//! stream ids, event types, checkpoint names, JSON specifications, settings, migration
//! module and file names)
//! escapes control characters and stays on one line, on every backend — error text goes to
//! logs and terminals, where `ESC [2J` clears the screen and a newline forges a log line.

use larder::events::{Checkpoint, EventData, EventStore, ExpectedVersion, ReadDirection};
use larder::query::{Order, Query};
use larder::spec::Spec;
use larder::{Error, Settings, field};
use larder_testkit::backends::{self, TestDb};
use larder_testkit::entities::{Account, Item};

/// Hostile strings: terminal escapes, newlines (a forged log line), NUL, DEL, C1 controls,
/// Unicode line separators and bidirectional overrides.
const HOSTILE: [&str; 8] = [
    "\u{1b}[2J\u{1b}[31mred",
    "name\nERROR forged log line",
    "a\r\nb\tc",
    "nul\u{0}byte",
    "del\u{7f}\u{9b}31m",
    "line\u{2028}separator",
    "bidi\u{202e}txt.exe",
    "(\u{1b}[2J",
];

/// The text fails if it holds a control character, a newline or an invisible format
/// character.
fn assert_one_clean_line(what: &str, input: &str, e: &dyn std::fmt::Display) {
    for text in [e.to_string(), format!("{e:#}")] {
        let bad: Vec<char> = text
            .chars()
            .filter(|c| {
                c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}')
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{what} with input {input:?}: error text holds {bad:?}: {text:?}"
        );
        assert!(!text.contains('\n'), "{what}: {text:?}");
    }
}

fn must_fail<T: std::fmt::Debug>(what: &str, input: &str, r: larder::Result<T>) -> Error {
    match r {
        Ok(v) => panic!("{what} with input {input:?} succeeded: {v:?}"),
        Err(e) => {
            assert_one_clean_line(what, input, &e);
            e
        }
    }
}

/// Inputs rejected before any storage is touched: specifications, their JSON form, sort
/// keys, cursors, checkpoint tokens, regexes, settings.
#[test]
fn hostile_input_in_specs_queries_tokens_and_settings_is_escaped_on_one_line() {
    let def = <Item as larder::Entity>::def();
    let limits = larder::Limits::default();
    for h in HOSTILE {
        let resolve = |s: Spec| s.resolve(def, &limits);
        must_fail("unknown field", h, resolve(field(h).eq(1)));
        must_fail(
            "regex pattern",
            h,
            resolve(field("name").regex(format!("{h}(["))),
        );
        must_fail(
            "regex pattern",
            h,
            resolve(field("name").regex(format!("a{{9999999}}{h}"))),
        );
        must_fail(
            "like with a lone escape",
            h,
            resolve(field("name").like(format!("{h}\\"))),
        );
        must_fail("type mismatch", h, resolve(field("qty").eq(h)));
        must_fail(
            "json spec",
            h,
            Spec::from_json(&serde_json::json!({ h: [] }).to_string()),
        );
        must_fail(
            "json spec field",
            h,
            Spec::from_json(&serde_json::json!({ "eq": { "field": h, "value": 1 } }).to_string())
                .and_then(resolve),
        );
        must_fail(
            "json query",
            h,
            Query::from_json(&serde_json::json!({ h: 1 }).to_string()),
        );
        must_fail("sort key", h, Order::parse(h));
        must_fail("sort key", h, Order::parse(&format!("name {h}")));
        must_fail(
            "ordering by an unknown field",
            h,
            Query::all()
                .order_by(Order::asc(h))
                .plan(def, &limits, true),
        );
        must_fail(
            "cursor token",
            h,
            Query::all().with_after(h).plan(def, &limits, true),
        );
        must_fail("checkpoint token", h, Checkpoint::from_token(h));
        must_fail(
            "checkpoint token",
            h,
            Checkpoint::from_token(&format!("c1.{h}.1")),
        );
        let mut s = Settings::default();
        must_fail(
            "settings number",
            h,
            s.apply_env(|k| (k == "LARDER_POOL_MAX_CONNECTIONS").then(|| h.to_owned())),
        );
        must_fail(
            "settings enum",
            h,
            s.apply_env(|k| (k == "LARDER_SQLITE_SYNCHRONOUS").then(|| h.to_owned())),
        );
        let key = serde_json::to_string(h).unwrap();
        must_fail(
            "settings file",
            h,
            s.apply_toml(&format!("[database]\n{key} = 1\n")),
        );
    }
    // Migration module and file names (from folders, or typed on the command line).
    for h in HOSTILE {
        let files = [(format!("1_{h}.sql"), "select 1".to_owned())];
        let e = larder::migrate::parse_module("app", &files, "migrations/app").unwrap_err();
        assert_one_clean_line("migration file name", h, &e);
        let files = [(format!("{h}_x.sql"), "select 1".to_owned())];
        let e = larder::migrate::parse_module("app", &files, "migrations/app").unwrap_err();
        assert_one_clean_line("migration version", h, &e);
        let e = larder::migrate::parse_module(h, &[], h).unwrap_err();
        assert_one_clean_line("migration module", h, &e);
    }
    // Text larder does not write itself (a driver's error, a callback's error) is
    // flattened and escaped by `Error`'s `Display`.
    for h in HOSTILE {
        assert_one_clean_line("backend error", h, &Error::backend("sqlite", h.to_owned()));
        assert_one_clean_line(
            "callback error",
            h,
            &Error::callback("pre-commit hook", h.to_owned()),
        );
    }
    // The regex crate's message spans several lines with a caret diagram: flattened.
    let e = must_fail(
        "regex",
        "a(",
        field("name").regex("a(").resolve(def, &limits),
    );
    assert!(e.to_string().contains("unclosed group"), "{e}");
}

/// Where hostile input may also be valid (a stream id with a bidi override is one), only
/// a failure is checked.
fn clean_if_err<T>(what: &str, input: &str, r: larder::Result<T>) {
    if let Err(e) = r {
        assert_one_clean_line(what, input, &e);
    }
}

/// Runs `$body` in a fresh unit of work that is rolled back afterwards, so a statement
/// that fails (and aborts a PostgreSQL transaction) cannot make the next check fail for
/// the wrong reason.
macro_rules! in_uow {
    ($store:expr, |$u:ident| $body:expr) => {{
        let mut $u = $store.begin().await.unwrap();
        let r = $body;
        $u.rollback().await.unwrap();
        r
    }};
}

async fn hostile_ids_and_names_on(db: TestDb) {
    let store = &db.store;
    let b = db.backend;
    store.register::<Item>().await.unwrap();
    store.register::<Account>().await.unwrap();
    let events = EventStore::open(store).await.unwrap();
    let ev = || [EventData::raw("t", "{}")];
    for h in HOSTILE {
        let id = h.to_owned();
        let r = in_uow!(store, |u| u.repo::<Item>().require(&id).await);
        must_fail(&format!("{b}: require"), h, r);
        let r = in_uow!(store, |u| u
            .repo::<Item>()
            .update(&Item::new(h, "x", 1), 1)
            .await);
        must_fail(&format!("{b}: update"), h, r);
        let r = in_uow!(store, |u| u.repo::<Item>().delete(&id, 1).await);
        must_fail(&format!("{b}: delete"), h, r);
        // A stored id comes back quoted in AlreadyExists and Conflict.
        let stored = Item::new(&format!("{h}-stored"), "x", 1);
        let (first, twice, stale) = in_uow!(store, |u| {
            let first = u.repo::<Item>().insert(&stored).await.map(|_| ());
            let (twice, stale) = if first.is_ok() {
                let twice = u.repo::<Item>().insert(&stored).await.map(|_| ());
                let stale = u.repo::<Item>().update(&stored, 7).await.map(|_| ());
                (twice, stale)
            } else {
                (Ok(()), Ok(()))
            };
            (first, twice, stale)
        });
        // A backend may refuse the id itself (NUL in text): that error is clean too.
        match first {
            Ok(()) => {
                must_fail(&format!("{b}: insert twice"), h, twice);
                must_fail(&format!("{b}: stale update"), h, stale);
            }
            Err(e) => assert_one_clean_line(&format!("{b}: insert"), h, &e),
        }
        let r = in_uow!(store, |u| u
            .repo::<Item>()
            .find(&Query::new(field(h).eq(1)))
            .await);
        must_fail(
            &format!("{b}: find with a hostile field"),
            h,
            r.map(|p| p.items.len()),
        );
        let r = in_uow!(store, |u| u
            .repo::<Item>()
            .find(&Query::all().with_after(h))
            .await);
        must_fail(
            &format!("{b}: find after a hostile cursor"),
            h,
            r.map(|p| p.items.len()),
        );
        // Invalid stream id, or a conflict that quotes it.
        let r = in_uow!(store, |u| events
            .append(&mut u, h, ExpectedVersion::Exact(9), ev())
            .await);
        must_fail(&format!("{b}: append to a hostile stream"), h, r);
        let r = in_uow!(store, |u| {
            events
                .append(
                    &mut u,
                    "s-1",
                    ExpectedVersion::Any,
                    [EventData::raw(h, "{}")],
                )
                .await
        });
        clean_if_err(&format!("{b}: hostile event type"), h, r);
        let r = in_uow!(store, |u| {
            events
                .read_stream(&mut u, h, 1, 10, ReadDirection::Forward)
                .await
        });
        clean_if_err(&format!("{b}: read a hostile stream"), h, r);
        let r = in_uow!(store, |u| events.load_checkpoint(&mut u, h).await);
        clean_if_err(&format!("{b}: hostile checkpoint name"), h, r);
        let r = in_uow!(store, |u| {
            events
                .save_checkpoint(&mut u, h, Checkpoint::new(0, 1))
                .await
        });
        clean_if_err(&format!("{b}: save a hostile checkpoint name"), h, r);
    }
    db.finish().await;
}

/// Ids, stream ids and names through every backend, including the errors backends build
/// themselves (`AlreadyExists`, `Conflict`).
#[tokio::test]
async fn hostile_ids_and_names_are_escaped_on_one_line_on_every_backend() {
    let test = "error_text_hostile_ids";
    hostile_ids_and_names_on(backends::memory(test).await.unwrap()).await;
    hostile_ids_and_names_on(backends::sqlite(test).await.unwrap()).await;
    match backends::postgres(test).await {
        Some(db) => hostile_ids_and_names_on(db).await,
        None => backends::skip(test, "LARDER_TEST_POSTGRES_URL is not set"),
    }
}
