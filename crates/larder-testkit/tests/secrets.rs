//! H3 secrets: a canary password in a DSN (userinfo, `?password=`, percent-encoded, URLs of
//! unusual shapes, key=value strings, unknown parameters) never appears in `Debug`,
//! `Display`, errors or TRACE logs. Its own test binary, because it
//! installs a TRACE subscriber for the whole session.

use std::io::Write;
use std::sync::{Arc, Mutex};

use larder::{Settings, Spec};
use larder_testkit::backends;
use larder_testkit::entities::Item;

const CANARY: &str = "Canary-Pa55w0rd-7f3e";

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Captures every event and span of this thread at TRACE level (the tests run on tokio's
/// current-thread runtime, so the driver's logs land here too).
fn trace_capture() -> (Buf, tracing::subscriber::DefaultGuard) {
    let buf = Buf::default();
    let b2 = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || b2.clone())
        .with_ansi(false)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

/// H3: the canary password appears nowhere: not in settings, stores, errors (bad URLs,
/// refused connections) or TRACE logs of a whole session.
#[tokio::test]
async fn canary_password_never_appears_in_output_errors_or_logs() {
    let (buf, _guard) = trace_capture();

    let encoded = CANARY.replace('-', "%2D");
    let mut printed = Vec::new();
    let urls = [
        format!("postgres://app:{CANARY}@127.0.0.1:1/db"),
        format!("postgres://app@127.0.0.1:1/db?password={CANARY}"),
        format!("postgres://app:{encoded}@127.0.0.1:1/db"),
        format!("postgres://app:{CANARY}@127.0.0.1:notaport/db"),
        format!("postgresql://app:{CANARY}@[::1/db"),
        format!("sqlite://app:{CANARY}@/nonexistent/dir/x.db"),
        format!("mysql://root:{CANARY}@127.0.0.1/db"),
    ];
    for url in &urls {
        let mut s = Settings::from_url(url.clone());
        s.acquire_timeout = std::time::Duration::from_millis(300);
        printed.push(format!("{s:?} {} {:?}", s.database_url, s.database_url));
        match larder::connect(&s).await {
            Ok(store) => printed.push(format!("{store:?}")),
            Err(e) => printed.push(format!(
                "{e} {e:?} {:?}",
                std::error::Error::source(&e).map(ToString::to_string)
            )),
        }
    }
    // A successful connection with the password in the URL (the test server uses trust
    // authentication, so any password is accepted), and a session of work on it.
    if let Some(url) = backends::postgres_url() {
        let with_password = url.replacen(
            "postgres://postgres@",
            &format!("postgres://postgres:{CANARY}@"),
            1,
        );
        assert_ne!(
            with_password, url,
            "expected a postgres://postgres@… test url"
        );
        let store = larder::open(&with_password).await.unwrap();
        printed.push(format!("{store:?}"));
        let mut uow = store.read().await.unwrap();
        let e = uow.repo::<Item>().count(&Spec::all()).await;
        printed.push(format!("{e:?}"));
        drop(uow);
        store.close().await;
    }
    // Some work on the always-available memory backend, so the capture sees spans even
    // without a PostgreSQL server.
    let mem = larder::open("memory://").await.unwrap();
    mem.register::<Item>().await.unwrap();
    let mut uow = mem.begin().await.unwrap();
    uow.repo::<Item>()
        .insert(&Item::new("a", "x", 1))
        .await
        .unwrap();
    uow.commit().await.unwrap();
    let logs = buf.text();
    for text in printed.iter().chain([&logs]) {
        assert!(!text.contains(CANARY), "canary leaked: {text}");
        assert!(!text.contains(&encoded), "encoded canary leaked: {text}");
        assert!(!text.contains("Pa55w0rd"), "partial canary leaked: {text}");
    }
    assert!(
        logs.contains("larder.repository.insert") && logs.contains("larder.uow.commit"),
        "the log capture is blind: {logs}"
    );
}

fn pg_with(path_and_query: &str) -> Option<String> {
    // `postgres://postgres@127.0.0.1:5432/test` → scheme, authority and the rest.
    let url = backends::postgres_url()?;
    let rest = url.strip_prefix("postgres://")?;
    let authority = rest.split('/').next()?;
    Some(format!("postgres://{authority}{path_and_query}"))
}

/// D10: URLs of unusual shapes (one slash or none after the scheme, key=value connection
/// strings, an `@` after the host) and passwords in parameters the driver does not know
/// (`?PASSWORD=`, `?sslpassword=`) never print: not in `Settings`/`DatabaseUrl` `Debug` or
/// `Display`, not in the error of the failed connect, and not in any log line at TRACE —
/// sqlx's PostgreSQL driver logs unknown parameters with their values at WARN, so they must
/// be refused (a typed `Configuration` error naming the parameter) before it sees them.
#[tokio::test]
async fn secrets_in_unusual_urls_and_unknown_parameters_never_print() {
    let (buf, _guard) = trace_capture();
    // The capture sees the driver: an unknown parameter handed to sqlx directly is logged
    // with its value (what larder must prevent).
    let _ = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(
        "postgres://h/db?larder_capture_probe=visible-value",
    );
    assert!(
        buf.text().contains("visible-value"),
        "the log capture does not see sqlx's warnings: {}",
        buf.text()
    );

    let encoded = CANARY.replace('-', "%2D");
    // (url, the unknown parameter the error must name, if refused for that)
    let mut cases: Vec<(String, Option<&str>)> = vec![
        (format!("postgres:/app:{CANARY}@127.0.0.1:1/db"), None),
        (format!("postgres:app:{CANARY}@127.0.0.1:1/db"), None),
        (format!("postgresql:app:{CANARY}@127.0.0.1:1/db"), None),
        (
            format!("host=127.0.0.1 port=1 user=app password={CANARY} dbname=db"),
            None,
        ),
        (format!("postgres:host=127.0.0.1 password={CANARY}"), None),
        (format!("postgres://app:1/{CANARY}@127.0.0.1/db"), None),
        (
            format!("postgres://app@127.0.0.1:1/db?PASSWORD={CANARY}"),
            Some("PASSWORD"),
        ),
        (
            format!("postgres://app@127.0.0.1:1/db?sslmode=disable&sslpassword={CANARY}"),
            Some("sslpassword"),
        ),
        (
            format!("postgres://app@127.0.0.1:1/db?Password={encoded}"),
            Some("Password"),
        ),
        (
            format!("postgres://app@127.0.0.1:1/db?token={CANARY}"),
            Some("token"),
        ),
        (format!("sqlite:x.db?PASSWORD={CANARY}"), Some("PASSWORD")),
        (format!("sqlite://app:{CANARY}@h/x.db"), None),
    ];
    // Against the real server: every one of these reached it (or its error messages)
    // before the fix — the one-slash URL as a database name in "database … does not exist".
    if let Some(u) = pg_with(&format!("/test?PASSWORD={CANARY}")) {
        cases.push((u, Some("PASSWORD")));
    }
    if let Some(u) = pg_with(&format!("/test?sslmode=disable&sslpassword={CANARY}")) {
        cases.push((u, Some("sslpassword")));
    }
    if let Some(u) = pg_with("/test") {
        let authority = u
            .trim_start_matches("postgres://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let (user, host) = authority.split_once('@').unwrap();
        cases.push((format!("postgres:/{user}:{CANARY}@{host}/test"), None));
        cases.push((format!("postgres:{user}:{CANARY}@{host}/test"), None));
        // A connection that reaches the server and fails there: unknown database.
        cases.push((
            format!("postgres://{user}:{CANARY}@{host}/larder_no_such_database"),
            None,
        ));
    }

    let mut printed = Vec::new();
    let mut untyped = Vec::new();
    for (url, unknown) in &cases {
        let mut s = Settings::from_url(url.clone());
        s.acquire_timeout = std::time::Duration::from_millis(300);
        printed.push(format!(
            "{s:?} {} {:?} {}",
            s.database_url,
            s.database_url,
            s.database_url.redacted()
        ));
        match larder::connect(&s).await {
            Ok(store) => {
                untyped.push(format!("{}: connected", s.database_url));
                store.close().await;
            }
            Err(e) => {
                let text = format!(
                    "{e} {e:?} {:?}",
                    std::error::Error::source(&e).map(ToString::to_string)
                );
                if let Some(name) = unknown
                    && (!matches!(e, larder::Error::Configuration(_))
                        || !text.contains(&format!("`{name}`")))
                {
                    untyped.push(format!(
                        "expected a configuration error naming `{name}`, got {text}"
                    ));
                }
                printed.push(text);
            }
        }
    }
    let logs = buf.text();
    for text in printed.iter().chain([&logs]) {
        assert!(!text.contains(CANARY), "canary leaked: {text}");
        assert!(!text.contains(&encoded), "encoded canary leaked: {text}");
        assert!(!text.contains("Pa55w0rd"), "partial canary leaked: {text}");
    }
    assert!(untyped.is_empty(), "{untyped:#?}");
}
