//! Issue 9: an unreachable database is its own, retryable error, reported promptly — not a
//! "pool timed out" after the 5 s acquire timeout.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use larder::{Error, Settings};
use larder_testkit::backends;

/// A port on 127.0.0.1 that nothing listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

/// Connecting to a PostgreSQL URL whose port is closed fails in well under a second with
/// `Unavailable` naming the refusal; it is retryable. No server needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_unavailable_at_once() {
    let url = format!(
        "postgres://postgres:hunter2@127.0.0.1:{}/test",
        closed_port()
    );
    let started = Instant::now();
    let e = larder::connect(&Settings::from_url(url)).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
    assert!(e.is_transient());
    let msg = e.to_string();
    assert!(msg.contains("refused"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(took < Duration::from_millis(1_000), "took {took:?}");
}

/// A store whose server goes away (a TCP proxy in front of the test server is shut down):
/// the next `begin` fails promptly with `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_goes_away_is_unavailable_at_once() {
    let Some(url) = backends::postgres_url() else {
        backends::skip(
            "unavailable::server_goes_away",
            "LARDER_TEST_POSTGRES_URL is not set",
        );
        return;
    };
    let target = {
        let u = url::Url::parse(&url).unwrap();
        format!(
            "{}:{}",
            u.host_str().unwrap_or("127.0.0.1"),
            u.port().unwrap_or(5432)
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => {
                    let Ok((mut inbound, _)) = accepted else { break };
                    let target = target.clone();
                    conns.spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            }
        }
        // Every proxied connection is closed before the proxy reports itself gone (an
        // abort alone left them open until the runtime next polled them: on a loaded
        // machine the client then waited 5 s on a half-open socket).
        conns.shutdown().await;
        drop(listener);
    });
    let mut via = url::Url::parse(&url).unwrap();
    via.set_port(Some(port)).unwrap();
    let mut settings = Settings::from_url(via.to_string());
    settings.max_connections = Some(2);
    let store = larder::connect(&settings).await.unwrap();
    let uow = store.read().await.unwrap();
    uow.commit().await.unwrap();
    // The server goes away: the proxy and every connection through it.
    let _ = stop.send(());
    proxy.await.unwrap();
    let started = Instant::now();
    let e = store.read().await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
    assert!(e.is_transient());
    assert!(took < Duration::from_millis(1_500), "took {took:?}");
    store.close().await;
}
