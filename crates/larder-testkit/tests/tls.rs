//! TLS to PostgreSQL through larder's `tls-rustls` feature, against the test server that
//! [`larder_testkit::tls::server`] configures with a test CA (see its docs for what that
//! changes on the server).

use larder::Error;
use larder::postgres::PgBackend;
use larder::settings::{Settings, SslMode};
use larder_testkit::tls::{self, TlsServer};

/// Whether this backend's own connection is encrypted, as the server sees it.
async fn encrypted(b: &PgBackend) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(b.pool())
        .await
        .expect("read pg_stat_ssl")
}

async fn connect(settings: Settings) -> larder::Result<PgBackend> {
    let mut settings = settings;
    settings.max_connections = Some(1);
    settings.acquire_timeout = std::time::Duration::from_secs(5);
    PgBackend::connect(&settings).await
}

async fn server(test: &str) -> Option<TlsServer> {
    tls::server(test).await
}

#[tokio::test]
async fn sslmode_require_connects_encrypted() {
    let Some(s) = server("sslmode_require_connects_encrypted").await else {
        return;
    };
    let b = connect(Settings::from_url(s.url_with("require", None)))
        .await
        .expect("sslmode=require connects");
    assert!(encrypted(&b).await, "sslmode=require must encrypt");
    b.pool().close().await;
    // The control: the same server without TLS is plain, so the check above has teeth.
    let plain = connect(Settings::from_url(s.url_with("disable", None)))
        .await
        .expect("sslmode=disable connects");
    assert!(!encrypted(&plain).await, "sslmode=disable must not encrypt");
    plain.pool().close().await;
}

#[tokio::test]
async fn verify_full_with_the_test_ca_connects_by_name_and_by_address() {
    let Some(s) = server("verify_full_with_the_test_ca_connects").await else {
        return;
    };
    for host in ["127.0.0.1", "localhost"] {
        let url = s
            .url_with("verify-full", Some(&s.ca_cert))
            .replacen("127.0.0.1", host, 1);
        let b = connect(Settings::from_url(url))
            .await
            .unwrap_or_else(|e| panic!("verify-full to {host} with the test ca: {e}"));
        assert!(encrypted(&b).await);
        b.pool().close().await;
    }
}

#[tokio::test]
async fn verify_full_from_settings_connects() {
    let Some(s) = server("verify_full_from_settings_connects").await else {
        return;
    };
    let mut settings = Settings::from_url(s.url.clone());
    settings
        .apply_env(|k| match k {
            "LARDER_POSTGRES_SSL_MODE" => Some("verify-full".into()),
            "LARDER_POSTGRES_SSL_ROOT_CERT" => Some(s.ca_cert.display().to_string()),
            _ => None,
        })
        .unwrap();
    assert_eq!(settings.postgres.ssl_mode, Some(SslMode::VerifyFull));
    let b = connect(settings.clone())
        .await
        .expect("verify-full from the settings");
    assert!(encrypted(&b).await);
    b.pool().close().await;
    // The settings are applied, not ignored: with the other CA the same settings fail.
    settings.postgres.ssl_root_cert = Some(s.other_ca_cert.clone());
    assert!(connect(settings).await.is_err());
}

#[tokio::test]
async fn verify_full_with_a_wrong_ca_is_a_typed_error_without_secrets() {
    let Some(s) = server("verify_full_with_a_wrong_ca_is_a_typed_error").await else {
        return;
    };
    const CANARY: &str = "c4n4ry-pw";
    let url = s.url_with("verify-full", Some(&s.other_ca_cert)).replacen(
        "postgres@",
        &format!("postgres:{CANARY}@"),
        1,
    );
    assert!(url.contains(CANARY), "{url}");
    let started = std::time::Instant::now();
    let e = connect(Settings::from_url(url))
        .await
        .expect_err("verify-full must refuse a certificate of another ca");
    let text = e.to_string();
    assert!(matches!(e, Error::Configuration(_)), "{e:?}");
    assert!(text.contains("tls"), "{text}");
    assert!(
        text.contains("invalid peer certificate"),
        "names the cause: {text}"
    );
    assert!(text.contains("sslrootcert"), "says what to check: {text}");
    assert!(
        !text.contains(CANARY) && !format!("{e:?}").contains(CANARY),
        "{text}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "a certificate failure is reported at once, not after the pool timeout: {:?}",
        started.elapsed()
    );
    // verify-ca checks the chain too.
    let e = connect(Settings::from_url(
        s.url_with("verify-ca", Some(&s.other_ca_cert)),
    ))
    .await
    .expect_err("verify-ca must refuse a certificate of another ca");
    assert!(matches!(e, Error::Configuration(_)), "{e:?}");
}

#[tokio::test]
async fn settings_that_contradict_the_url_are_refused() {
    let Some(s) = server("settings_that_contradict_the_url_are_refused").await else {
        return;
    };
    let mut settings = Settings::from_url(s.url_with("disable", None));
    settings.postgres.ssl_mode = Some(SslMode::VerifyFull);
    let e = connect(settings).await.expect_err("a conflict");
    assert!(matches!(e, Error::Configuration(_)), "{e:?}");
    assert!(e.to_string().contains("sslmode"), "{e}");
    let mut settings = Settings::from_url(s.url_with("verify-full", Some(&s.ca_cert)));
    settings.postgres.ssl_root_cert = Some(s.other_ca_cert.clone());
    let e = connect(settings).await.expect_err("a conflict");
    assert!(e.to_string().contains("sslrootcert"), "{e}");
    // Agreeing values are fine.
    let mut settings = Settings::from_url(s.url_with("verify-full", Some(&s.ca_cert)));
    settings.postgres.ssl_mode = Some(SslMode::VerifyFull);
    settings.postgres.ssl_root_cert = Some(s.ca_cert.clone());
    connect(settings)
        .await
        .expect("agreeing settings")
        .pool()
        .close()
        .await;
}

#[tokio::test]
async fn the_facade_connects_with_tls_and_the_store_works() {
    let Some(s) = server("the_facade_connects_with_tls").await else {
        return;
    };
    let store = larder::open(&s.url_with("verify-full", Some(&s.ca_cert)))
        .await
        .expect("larder::open with verify-full");
    let b = store
        .backend()
        .as_any()
        .downcast_ref::<PgBackend>()
        .expect("a PostgreSQL backend");
    assert!(encrypted(b).await);
    store.close().await;
}
