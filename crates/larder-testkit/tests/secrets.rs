//! H3 secrets: a canary password in a DSN (userinfo, `?password=`, percent-encoded) never
//! appears in `Debug`, `Display`, errors or TRACE logs. Its own test binary, because it
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

/// H3: the canary password appears nowhere: not in settings, stores, errors (bad URLs,
/// refused connections) or TRACE logs of a whole session.
#[tokio::test]
async fn canary_password_never_appears_in_output_errors_or_logs() {
    let buf = Buf::default();
    let b2 = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || b2.clone())
        .with_ansi(false)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

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
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
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
