//! `larder events` and `larder projections`, tested by running the real binary, on SQLite
//! and PostgreSQL. Events are appended (and projection checkpoints written) through the
//! library, on the same database.
//!
//! PostgreSQL cases use `LARDER_TEST_POSTGRES_URL` with a schema per test (through the
//! URL's `options=-c search_path=…`), and skip without it unless
//! `LARDER_REQUIRE_BACKENDS=1`.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::Duration;

use larder::events::{Checkpoint, EventData, EventStore, ExpectedVersion, Metadata};

fn larder(url: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_larder"));
    c.env_remove("LARDER_DATABASE_URL")
        .env_remove("LARDER_CONFIG")
        .args(["--database-url", url])
        .stdin(Stdio::null());
    c
}

fn run(url: &str, args: &[&str]) -> Output {
    larder(url).args(args).output().expect("run larder")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", text(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
fn ok_json(o: &Output) -> serde_json::Value {
    let out = ok(o);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Asserts a failure with exit code 1 and a one-line message on stderr containing `what`.
#[track_caller]
fn fails(o: &Output, what: &str) {
    assert_eq!(o.status.code(), Some(1), "{}", text(o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(what), "{what} missing from: {err}");
}

struct Db {
    url: String,
    backend: &'static str,
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn pg_url() -> Option<String> {
    let url = std::env::var("LARDER_TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.is_empty());
    if url.is_none() {
        assert!(
            std::env::var("LARDER_REQUIRE_BACKENDS").as_deref() != Ok("1"),
            "LARDER_TEST_POSTGRES_URL is not set and LARDER_REQUIRE_BACKENDS=1 forbids skipping"
        );
        eprintln!("skipping the PostgreSQL half: LARDER_TEST_POSTGRES_URL is not set");
    }
    url
}

/// A fresh SQLite database and, when configured, a fresh PostgreSQL schema.
fn databases(name: &str) -> Vec<Db> {
    let mut out = Vec::new();
    let dir = std::env::temp_dir().join(format!("larder-events-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    out.push(Db {
        url: format!("sqlite://{}", dir.join("db.sqlite").display()),
        backend: "sqlite",
    });
    if let Some(base) = pg_url() {
        let schema = format!("le_{name}");
        rt().block_on(async {
            let pool = sqlx::PgPool::connect(&base).await.unwrap();
            for s in [
                format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
                format!("CREATE SCHEMA {schema}"),
            ] {
                sqlx::query(sqlx::AssertSqlSafe(s))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            pool.close().await;
        });
        let sep = if base.contains('?') { '&' } else { '?' };
        out.push(Db {
            url: format!("{base}{sep}options=-c%20search_path%3D{schema}"),
            backend: "postgresql",
        });
    }
    out
}

/// Appends events of the given types (payload `{"n": i}`) to `stream`; returns the last
/// event's checkpoint.
fn append(db: &Db, stream: &str, types: &[&str]) -> Checkpoint {
    rt().block_on(async {
        let store = larder::open(&db.url).await.unwrap();
        let es = EventStore::open(&store).await.unwrap();
        let mut uow = store.begin().await.unwrap();
        let events: Vec<EventData> = types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                EventData::new(*t, &serde_json::json!({ "n": i }))
                    .unwrap()
                    .with_metadata(Metadata {
                        actor: Some("tester".into()),
                        ..Metadata::default()
                    })
            })
            .collect();
        let r = es
            .append(&mut uow, stream, ExpectedVersion::Any, events)
            .await
            .unwrap();
        uow.commit().await.unwrap();
        store.close().await;
        r.checkpoint
    })
}

/// `Checkpoint` as the CLI prints it for people.
fn human_of(cp: Checkpoint) -> String {
    if cp.tx() == 0 {
        format!("{} (position {})", cp.token(), cp.position())
    } else {
        format!(
            "{} (tx {}, position {})",
            cp.token(),
            cp.tx(),
            cp.position()
        )
    }
}

fn save_checkpoint(db: &Db, name: &str, cp: Checkpoint) {
    rt().block_on(async {
        let store = larder::open(&db.url).await.unwrap();
        let es = EventStore::open(&store).await.unwrap();
        let mut uow = store.begin().await.unwrap();
        es.save_checkpoint(&mut uow, name, cp).await.unwrap();
        uow.commit().await.unwrap();
        store.close().await;
    });
}

fn load_checkpoint(db: &Db, name: &str) -> Option<Checkpoint> {
    rt().block_on(async {
        let store = larder::open(&db.url).await.unwrap();
        let es = EventStore::open(&store).await.unwrap();
        let mut uow = store.read().await.unwrap();
        let cp = es.load_checkpoint(&mut uow, name).await.unwrap();
        uow.commit().await.unwrap();
        store.close().await;
        cp
    })
}

/// A running `larder` whose stdout and stderr lines arrive on channels, killed on drop.
struct Running {
    child: Child,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
}

impl Running {
    fn spawn(url: &str, args: &[&str]) -> Running {
        let mut child = larder(url)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn larder");
        fn lines(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        }
        let out = lines(child.stdout.take().unwrap());
        let err = lines(child.stderr.take().unwrap());
        Running { child, out, err }
    }

    #[track_caller]
    fn line(rx: &mpsc::Receiver<String>, what: &str) -> String {
        rx.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("no {what} line from larder within 30 s: {e}"))
    }

    #[track_caller]
    fn stdout_line(&self) -> String {
        Running::line(&self.out, "stdout")
    }

    #[track_caller]
    fn stderr_line(&self) -> String {
        Running::line(&self.err, "stderr")
    }

    /// Waits (at most 30 s) for the exit; returns whether it succeeded and the remaining
    /// stdout and stderr.
    #[track_caller]
    fn finish(mut self) -> (bool, String) {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader threads end at end of file: collect everything.
                let mut rest = Vec::new();
                for rx in [&self.out, &self.err] {
                    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
                        rest.push(line);
                    }
                }
                return (status.success(), rest.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("larder did not exit within 30 s");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Initialises the store as a service does (`EventStore::open` applies larder's module);
/// the CLI's read-only commands refuse a store that is not initialised.
fn init(db: &Db) {
    rt().block_on(async {
        let store = larder::open(&db.url).await.unwrap();
        EventStore::open(&store).await.unwrap();
        store.close().await;
    });
}

#[test]
fn stats_counts_events_streams_head_and_consumers() {
    for db in databases("stats") {
        init(&db);
        let empty = ok_json(&run(&db.url, &["events", "stats", "--json"]));
        assert_eq!(empty["events"], 0, "{}", db.backend);
        assert_eq!(empty["checkpoints"], serde_json::json!([]));

        append(&db, "order-1", &["OrderPlaced", "OrderPaid"]);
        let second = append(&db, "order-2", &["OrderPlaced"]);
        let last = append(&db, "customer-1", &["CustomerJoined"]);
        save_checkpoint(&db, "order_totals", second);

        let v = ok_json(&run(&db.url, &["events", "stats", "--json"]));
        assert_eq!(v["ok"], true);
        assert_eq!(v["events"], 4, "{} {v}", db.backend);
        assert_eq!(v["streams"], 3, "{v}");
        assert_eq!(v["head"], last.token(), "{v}");
        let cps = v["checkpoints"].as_array().unwrap();
        assert_eq!(cps.len(), 1, "{v}");
        assert_eq!(cps[0]["name"], "order_totals");
        assert_eq!(cps[0]["checkpoint"], second.token());
        assert_eq!(cps[0]["lag"], 1, "{v}");

        let out = ok(&run(&db.url, &["events", "stats"]));
        assert!(out.contains("events    4"), "{out}");
        assert!(out.contains("streams   3"), "{out}");
        // The token to copy, and its parts for people.
        let human = human_of(last);
        assert!(out.contains(&format!("head      {human}")), "{out}");
        assert!(
            out.contains(&format!("order_totals  {}", human_of(second))),
            "{out}"
        );
        assert!(out.contains("order_totals"), "{out}");
    }
}

#[test]
fn read_prints_a_stream_in_order() {
    for db in databases("read") {
        append(&db, "order-1", &["OrderPlaced", "LineAdded"]);
        append(&db, "order-2", &["OrderPlaced"]);
        append(&db, "order-1", &["OrderPaid"]);

        let v = ok_json(&run(&db.url, &["events", "read", "order-1", "--json"]));
        let evs = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
        let summary: Vec<(u64, &str)> = evs
            .iter()
            .map(|e| (e["version"].as_u64().unwrap(), e["type"].as_str().unwrap()))
            .collect();
        assert_eq!(
            summary,
            [(1, "OrderPlaced"), (2, "LineAdded"), (3, "OrderPaid")],
            "{}",
            db.backend
        );
        assert_eq!(evs[2]["payload"], serde_json::json!({"n": 0}));
        assert_eq!(evs[0]["metadata"]["actor"], "tester");
        assert_eq!(evs[0]["schema_version"], 1);
        assert_eq!(evs[0]["stream"], "order-1");
        assert!(evs[0]["recorded_at"].as_str().unwrap().ends_with('Z'));
        let cps: Vec<Checkpoint> = evs
            .iter()
            .map(|e| Checkpoint::from_token(e["checkpoint"].as_str().unwrap()).unwrap())
            .collect();
        assert!(cps.windows(2).all(|w| w[0] < w[1]), "{cps:?}");

        let v = ok_json(&run(
            &db.url,
            &[
                "events",
                "read",
                "order-1",
                "--backward",
                "--limit",
                "2",
                "--json",
            ],
        ));
        let versions: Vec<u64> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["version"].as_u64().unwrap())
            .collect();
        assert_eq!(versions, [3, 2]);
        let v = ok_json(&run(
            &db.url,
            &["events", "read", "order-1", "--from", "2", "--json"],
        ));
        assert_eq!(v.as_array().unwrap().len(), 2);
        assert_eq!(v[0]["version"], 2);

        let out = ok(&run(&db.url, &["events", "read", "order-1"]));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        for (line, (version, ty)) in lines.iter().zip(summary) {
            assert!(line.trim_start().starts_with(&version.to_string()), "{out}");
            assert!(line.contains(ty), "{out}");
            assert!(line.contains("{\"n\":"), "{out}");
        }

        let none = ok_json(&run(&db.url, &["events", "read", "nothing-here", "--json"]));
        assert_eq!(none, serde_json::json!([]));
    }
}

#[test]
fn tail_prints_the_backlog_then_follows_live() {
    for db in databases("tail") {
        append(&db, "order-1", &["OrderPlaced", "OrderPaid"]);
        append(&db, "customer-1", &["CustomerJoined"]);

        let tail = Running::spawn(
            &db.url,
            &[
                "events",
                "tail",
                "--from-start",
                "--category",
                "order",
                "--limit",
                "4",
                "--json",
            ],
        );
        let mut got: Vec<serde_json::Value> = (0..2)
            .map(|_| serde_json::from_str(&tail.stdout_line()).unwrap())
            .collect();
        // Appended after the backlog was printed: followed live (the customer event is
        // filtered out).
        append(&db, "customer-2", &["CustomerJoined"]);
        append(&db, "order-2", &["OrderPlaced", "OrderShipped"]);
        got.extend((0..2).map(|_| serde_json::from_str(&tail.stdout_line()).unwrap()));
        let (success, rest) = tail.finish();
        assert!(success, "{} {rest}", db.backend);
        let seen: Vec<String> = got
            .iter()
            .map(|e| format!("{}@{} {}", e["stream"], e["version"], e["type"]).replace('"', ""))
            .collect();
        assert_eq!(
            seen,
            [
                "order-1@1 OrderPlaced",
                "order-1@2 OrderPaid",
                "order-2@1 OrderPlaced",
                "order-2@2 OrderShipped"
            ],
            "{}",
            db.backend
        );

        // Without --from it starts at the end of the log; the start is announced on stderr.
        let tail = Running::spawn(
            &db.url,
            &["events", "tail", "--type", "Late", "--limit", "1"],
        );
        let announced = tail.stderr_line();
        assert!(announced.contains("following the log after"), "{announced}");
        append(&db, "order-3", &["OrderPlaced", "Late"]);
        let line = tail.stdout_line();
        assert!(line.starts_with("order-3@2 "), "{line}");
        assert!(line.contains("Late v1"), "{line}");
        let (success, rest) = tail.finish();
        assert!(success, "{rest}");

        // From a checkpoint token: only what follows it.
        let v = ok_json(&run(&db.url, &["events", "read", "order-2", "--json"]));
        let from = v[1]["checkpoint"].as_str().unwrap().to_owned();
        let out = ok(&run(
            &db.url,
            &["events", "tail", "--from", &from, "--limit", "2"],
        ));
        let streams: Vec<&str> = out
            .lines()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(streams, ["order-3@1", "order-3@2"], "{out}");
    }
}

#[test]
fn projections_status_and_rebuild() {
    for db in databases("projections") {
        append(
            &db,
            "order-1",
            &["OrderPlaced", "OrderPaid", "OrderShipped"],
        );
        let head = append(&db, "order-2", &["OrderPlaced"]);
        save_checkpoint(&db, "order_totals", head);

        let v = ok_json(&run(&db.url, &["projections", "status", "--json"]));
        assert_eq!(v["head"], head.token());
        let p = &v["projections"][0];
        assert_eq!(p["name"], "order_totals", "{v}");
        assert_eq!(p["checkpoint"], head.token());
        assert_eq!(p["lag"], 0);
        let out = ok(&run(&db.url, &["projections", "status"]));
        assert!(out.contains("order_totals"), "{out}");

        // Unknown names are refused, naming the known ones; nothing changes.
        let o = run(&db.url, &["projections", "rebuild", "nope", "--yes"]);
        fails(&o, "unknown projection `nope`");
        assert!(text(&o).contains("known: order_totals"), "{}", text(&o));
        let o = run(
            &db.url,
            &["projections", "rebuild", "nope", "--yes", "--json"],
        );
        assert!(!o.status.success());
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["ok"], false);
        assert!(v["error"].as_str().unwrap().contains("unknown projection"));
        // Without --yes and no terminal to ask on: refused.
        fails(
            &run(&db.url, &["projections", "rebuild", "order_totals"]),
            "pass --yes",
        );
        assert_eq!(load_checkpoint(&db, "order_totals"), Some(head));

        let out = ok(&run(
            &db.url,
            &["projections", "rebuild", "order_totals", "--yes"],
        ));
        assert!(out.contains("reset projection `order_totals`"), "{out}");
        assert!(out.contains("4 event(s) to replay"), "{out}");
        assert_eq!(
            load_checkpoint(&db, "order_totals"),
            Some(Checkpoint::START)
        );
        let v = ok_json(&run(&db.url, &["projections", "status", "--json"]));
        assert_eq!(v["projections"][0]["lag"], 4, "{v}");

        // --wait follows the replay, done here by hand as a ProjectionRunner would.
        save_checkpoint(&db, "order_totals", head);
        let wait = Running::spawn(
            &db.url,
            &[
                "projections",
                "rebuild",
                "order_totals",
                "--yes",
                "--wait",
                "--timeout",
                "60",
            ],
        );
        let first = wait.stdout_line();
        assert!(first.contains("reset projection"), "{first}");
        assert_eq!(
            load_checkpoint(&db, "order_totals"),
            Some(Checkpoint::START)
        );
        save_checkpoint(&db, "order_totals", head);
        let (success, rest) = wait.finish();
        assert!(success, "{} {rest}", db.backend);
        assert!(rest.contains("caught up"), "{rest}");

        // Nobody replays: --wait gives up at the timeout.
        let o = run(
            &db.url,
            &[
                "projections",
                "rebuild",
                "order_totals",
                "--yes",
                "--wait",
                "--timeout",
                "1",
                "--json",
            ],
        );
        assert!(!o.status.success());
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
        assert!(
            v["error"].as_str().unwrap().contains("did not catch up"),
            "{v}"
        );
    }
}

#[test]
fn bad_input_fails_with_a_clear_message() {
    for db in databases("bad_input") {
        append(&db, "order-1", &["OrderPlaced"]);
        for token in ["c1.x.y", "42", "c1.1", "c1.99999999999999999999999.1"] {
            let o = run(
                &db.url,
                &["events", "tail", "--from", token, "--limit", "1"],
            );
            fails(&o, "invalid checkpoint");
            assert!(text(&o).contains("c1.0.42"), "{}", text(&o));
            let o = run(
                &db.url,
                &["events", "tail", "--from", token, "--limit", "1", "--json"],
            );
            assert_eq!(o.status.code(), Some(1));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["ok"], false);
            assert!(
                v["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("invalid checkpoint")
            );
        }
        fails(&run(&db.url, &["events", "read", ""]), "stream id is empty");
        fails(
            &run(&db.url, &["events", "read", "bad\u{7}stream"]),
            "control characters",
        );
        fails(
            &run(&db.url, &["events", "tail", "--category", "order-1"]),
            "contains `-`",
        );
        fails(
            &run(&db.url, &["events", "read", "order-1", "--limit", "0"]),
            "--limit must be at least 1",
        );
    }
}

#[test]
fn help_documents_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["projections", "rebuild", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("ProjectionRunner::rebuild"), "{help}");
    assert!(help.contains("read model is not cleared"), "{help}");
    let out = Command::new(env!("CARGO_BIN_EXE_larder"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("events") && help.contains("projections"),
        "{help}"
    );
}

/// Runs `f` every 100 ms until it returns `Some` (at most `secs` seconds).
#[track_caller]
fn until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = std::time::Instant::now();
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "gave up waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn doctor_and_projections_status_name_the_session_holding_the_log_back() {
    const APP: &str = "larder_cli_log_holder";
    for db in databases("horizon") {
        init(&db);
        save_checkpoint(&db, "order_totals", Checkpoint::START);
        let lines = |args: &[&str]| {
            ok(&run(&db.url, args))
                .lines()
                .find(|l| l.starts_with("log horizon: "))
                .unwrap_or_else(|| panic!("no log horizon line from {args:?}"))
                .to_owned()
        };
        if db.backend == "sqlite" {
            for args in [&["doctor"][..], &["projections", "status"]] {
                assert_eq!(lines(args), "log horizon: not held back");
                let mut json = args.to_vec();
                json.push("--json");
                let v = ok_json(&run(&db.url, &json));
                assert_eq!(v["log_horizon"]["held_back"], false, "{v}");
                assert!(v["log_horizon"]["holder"].is_null(), "{v}");
            }
            continue;
        }
        // A session in ANOTHER database of the cluster whose transaction has an id and
        // stays idle. It stalls every event-store test on the server: it is rolled back
        // below whatever the checks do, and the server ends it after 10 s regardless.
        let rt = rt();
        let (mut holder, pid) = rt.block_on(async {
            use sqlx::Connection;
            let opts = sqlx::postgres::PgConnectOptions::from_str(&pg_url().unwrap())
                .unwrap()
                .database("postgres")
                .application_name(APP);
            let mut c = sqlx::PgConnection::connect_with(&opts).await.unwrap();
            sqlx::query("SET idle_in_transaction_session_timeout = '10s'")
                .execute(&mut c)
                .await
                .unwrap();
            sqlx::query("BEGIN").execute(&mut c).await.unwrap();
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid() FROM pg_current_xact_id()")
                .fetch_one(&mut c)
                .await
                .unwrap();
            (c, pid)
        });
        let checks = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            append(&db, "order-1", &["OrderPlaced"]);
            // Other tests' transactions may be older for a moment: ask until it is ours.
            let prefix = format!(
                "log horizon: held back by pid {pid} (database postgres, application {APP}, \
                 idle in transaction for "
            );
            for args in [&["doctor"][..], &["projections", "status"]] {
                let line = until(5, "the holder in the text", || {
                    Some(lines(args)).filter(|l| l.starts_with(&prefix))
                });
                assert!(line.contains(" committed event"), "{line}");
                assert!(line.ends_with("not yet readable"), "{line}");
                let mut json = args.to_vec();
                json.push("--json");
                let v = until(5, "the holder in the JSON", || {
                    Some(ok_json(&run(&db.url, &json)))
                        .filter(|v| v["log_horizon"]["holder"]["pid"] == pid)
                });
                let h = &v["log_horizon"];
                assert_eq!(h["held_back"], true, "{v}");
                assert!(h["held_events"].as_u64().unwrap() >= 1, "{v}");
                assert_eq!(h["holder"]["database"], "postgres", "{v}");
                assert_eq!(h["holder"]["application_name"], APP, "{v}");
                assert_eq!(h["holder"]["state"], "idle in transaction", "{v}");
                assert!(h["holder"]["transaction_age_s"].is_f64(), "{v}");
                if args[0] == "projections" {
                    assert!(v["projections"][0]["lag"].as_u64().unwrap() >= 1, "{v}");
                }
            }
        }));
        // Always released, whatever the checks did.
        rt.block_on(async {
            use sqlx::Connection;
            let _ = sqlx::query("ROLLBACK").execute(&mut holder).await;
            let _ = holder.close().await;
        });
        if let Err(panic) = checks {
            std::panic::resume_unwind(panic);
        }
        let gone = format!("held back by pid {pid} ");
        until(10, "the ended session to disappear", || {
            Some(()).filter(|()| !lines(&["doctor"]).contains(&gone))
        });
    }
}
