//! `larder outbox`, tested by running the real binary on SQLite and PostgreSQL: messages
//! are enqueued through the library; the CLI reports them, relays them to a JSON-lines
//! file, and replays, skips and purges dead letters.

use std::process::{Command, Output, Stdio};

use larder::outbox::{Message, MessageId, Outbox, Relay, SinkError};

fn larder(url: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_larder"));
    c.env_remove("LARDER_DATABASE_URL")
        .env_remove("LARDER_CONFIG")
        .env_remove("LARDER_OUTBOX_SINK")
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
fn ok_json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o));
    let out = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[track_caller]
fn fails(o: &Output, what: &str) {
    assert_eq!(o.status.code(), Some(1), "{}", text(o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: ") && err.contains(what),
        "{what} missing from: {err}"
    );
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn urls(name: &str) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("larder-outbox-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut out = vec![format!("sqlite://{}", dir.join("db.sqlite").display())];
    match std::env::var("LARDER_TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.is_empty())
    {
        Some(base) => {
            let schema = format!("lo_{name}");
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
            out.push(format!("{base}{sep}options=-c%20search_path%3D{schema}"));
        }
        None => {
            assert!(
                std::env::var("LARDER_REQUIRE_BACKENDS").as_deref() != Ok("1"),
                "LARDER_TEST_POSTGRES_URL is not set and LARDER_REQUIRE_BACKENDS=1 forbids skipping"
            );
            eprintln!("skipping the PostgreSQL half: LARDER_TEST_POSTGRES_URL is not set");
        }
    }
    out
}

/// Enqueues `ok-0..n` on key `k` and one poison message (`bad`, key `p`, followed by
/// `after` on `p`), then dead-letters `bad` through a library relay whose broker refuses it.
fn seed(url: &str, n: usize) -> MessageId {
    rt().block_on(async {
        let store = larder::open(url).await.unwrap();
        let ob = Outbox::open(&store).await.unwrap();
        let mut uow = store.begin().await.unwrap();
        let mut msgs: Vec<Message> = (0..n)
            .map(|i| Message::new("cli", format!("ok-{i}")).with_key("k"))
            .collect();
        msgs.push(Message::new("cli", "bad").with_key("p"));
        msgs.push(Message::new("cli", "after").with_key("p"));
        let ids = ob.enqueue_all(&mut uow, msgs).await.unwrap();
        uow.commit().await.unwrap();
        let sink = larder::outbox::MemorySink::failing_with(|m| {
            (m.payload != b"bad")
                .then(|| SinkError::Unavailable("not now".into()))
                .or_else(|| Some(SinkError::Poison("refused".into())))
        });
        let r = Relay::builder(&store)
            .name("seed")
            .sink(sink)
            .build()
            .await
            .unwrap();
        r.run_once().await.unwrap();
        r.release().await.unwrap();
        store.close().await;
        ids[n]
    })
}

#[test]
fn outbox_status_relay_dead_replay_skip_purge() {
    for url in urls("flow") {
        let out = ok_json(&run(&url, &["migrate", "up", "--json"]));
        assert_eq!(out["ok"], true, "{out}");
        let bad = seed(&url, 5);
        let s = ok_json(&run(&url, &["--json", "outbox", "status"]));
        assert_eq!(
            (
                s["pending"].as_u64(),
                s["dead"].as_u64(),
                s["parked"].as_u64()
            ),
            (Some(5), Some(1), Some(1)),
            "{s}"
        );
        let human = run(&url, &["outbox", "status"]);
        assert!(
            String::from_utf8_lossy(&human.stdout).contains("parked     1"),
            "{}",
            text(&human)
        );

        let dead = ok_json(&run(&url, &["--json", "outbox", "dead"]));
        assert_eq!(dead[0]["id"], bad.to_string(), "{dead}");
        assert!(
            dead[0]["last_error"].as_str().unwrap().contains("refused"),
            "{dead}"
        );

        let file =
            std::env::temp_dir().join(format!("larder-cli-relay-{}.jsonl", uuid::Uuid::now_v7()));
        let sink = format!("file:{}", file.display());
        let o = run(
            &url,
            &[
                "outbox", "relay", "--once", "--sink", &sink, "--name", "cli",
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
        let lines = std::fs::read_to_string(&file).unwrap();
        let bodies: Vec<String> = lines
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["payload"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            bodies,
            ["ok-0", "ok-1", "ok-2", "ok-3", "ok-4"],
            "the parked key waits"
        );

        let r = ok_json(&run(
            &url,
            &["--json", "outbox", "replay", &bad.to_string()],
        ));
        assert_eq!(r["action"], "replayed");
        let o = run(
            &url,
            &[
                "outbox", "relay", "--once", "--sink", &sink, "--name", "cli",
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
        let lines = std::fs::read_to_string(&file).unwrap();
        assert!(
            lines.contains("\"bad\"") && lines.contains("\"after\""),
            "{lines}"
        );
        let s = ok_json(&run(&url, &["--json", "outbox", "status"]));
        assert_eq!(
            (
                s["pending"].as_u64(),
                s["dead"].as_u64(),
                s["delivered"].as_u64()
            ),
            (Some(0), Some(0), Some(7)),
            "{s}"
        );

        fails(
            &run(&url, &["outbox", "skip", &bad.to_string()]),
            "no dead message",
        );
        fails(
            &run(&url, &["outbox", "replay", "not-a-uuid"]),
            "not a message id",
        );
        fails(
            &run(
                &url,
                &["outbox", "relay", "--once", "--sink", "kafka://x:9092"],
            ),
            "kafka",
        );
        let p = ok_json(&run(
            &url,
            &["--json", "outbox", "purge", "--older-than", "0s"],
        ));
        assert_eq!(p["purged"], 7, "{p}");
        let o = run(&url, &["outbox", "purge", "--older-than", "7w"]);
        assert!(
            !o.status.success() && text(&o).contains("the unit must be d, h, m or s"),
            "{}",
            text(&o)
        );
        let _ = std::fs::remove_file(&file);
    }
}

#[test]
fn relay_sink_urls_never_print_passwords() {
    let url = urls("secret").remove(0);
    ok_json(&run(&url, &["migrate", "up", "--json"]));
    let o = run(
        &url,
        &[
            "outbox",
            "relay",
            "--once",
            "--sink",
            "amqp://guest:hunter2@127.0.0.1:1/%2f?exchange=nope",
        ],
    );
    let all = text(&o);
    assert!(!all.contains("hunter2"), "{all}");
}
