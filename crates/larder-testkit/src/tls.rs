//! A PostgreSQL server with TLS for the tests, configured by the tests themselves.
//!
//! [`server`] makes sure the server at `LARDER_TEST_POSTGRES_URL` speaks TLS with a
//! certificate whose CA the tests know, so `sslmode=verify-full` can be tested against a
//! real handshake. It needs a superuser URL, a server on this machine (it writes files the
//! server reads) and the `openssl` command; the tests run as root.
//!
//! # What it changes on the shared server, and why that is harmless
//!
//! Once per machine (idempotent, serialized across processes by an advisory lock):
//!
//! - [`DIR`] (`/var/lib/postgresql/larder-test-tls/`, owned by the server's OS user) gets a
//!   test CA (`ca.crt`, its key `ca.key`), a server certificate for `localhost`,
//!   `127.0.0.1` and `::1` signed by it (`server.crt`, `server.key`, mode 0600), and a
//!   second, unrelated CA (`other-ca.crt`) for "wrong CA" tests. Valid for ten years;
//!   regenerated only when missing or expiring within a day, never while valid, so
//!   concurrent test processes all trust the same CA.
//! - If the server does not already use them: `ALTER SYSTEM SET ssl_cert_file`,
//!   `ssl_key_file`, `ssl = on` and `SELECT pg_reload_conf()`. Then it waits until a
//!   `verify-full` connection with the test CA succeeds.
//!
//! TLS stays optional for clients (`pg_hba.conf` is not touched, so plain connections keep
//! working): clients with `sslmode=prefer` and no TLS support connect as before, clients
//! with TLS that do not verify (`prefer`, `require`) just see another certificate. The
//! setting persists in `postgresql.auto.conf`; if the directory is ever removed, undo it
//! before restarting the server (which refuses to start with `ssl = on` and no
//! certificate):
//!
//! ```sql
//! ALTER SYSTEM RESET ssl_cert_file; ALTER SYSTEM RESET ssl_key_file;
//! SELECT pg_reload_conf();
//! ```

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};

/// Where the certificates live (readable by the server's OS user).
pub const DIR: &str = "/var/lib/postgresql/larder-test-tls";

/// The TLS test server: the base URL and the certificate files a client needs.
#[derive(Debug, Clone)]
pub struct TlsServer {
    /// `LARDER_TEST_POSTGRES_URL` (a superuser; without TLS parameters).
    pub url: String,
    /// The CA that signed the server certificate (for `sslrootcert`).
    pub ca_cert: PathBuf,
    /// A CA that did not sign it: `verify-ca`/`verify-full` with it must fail.
    pub other_ca_cert: PathBuf,
}

impl TlsServer {
    /// The base URL with `sslmode` (and `sslrootcert`, if given) appended.
    pub fn url_with(&self, mode: &str, root_cert: Option<&Path>) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        let mut url = format!("{}{sep}sslmode={mode}", self.url);
        if let Some(p) = root_cert {
            url.push_str("&sslrootcert=");
            url.push_str(&p.display().to_string());
        }
        url
    }
}

static SERVER: tokio::sync::OnceCell<Option<TlsServer>> = tokio::sync::OnceCell::const_new();

/// The TLS-enabled test server, set up on first use (see the module docs); `None` (skipped,
/// printed) when `LARDER_TEST_POSTGRES_URL` is unset and backends are not required.
///
/// # Panics
///
/// When the server cannot be configured (not a superuser, not on this machine, no
/// `openssl`): the message says which.
pub async fn server(test: &str) -> Option<TlsServer> {
    let Some(url) = crate::backends::postgres_url() else {
        crate::backends::skip(test, "LARDER_TEST_POSTGRES_URL is not set");
        return None;
    };
    SERVER
        .get_or_init(|| async move { Some(configure(url).await) })
        .await
        .clone()
}

async fn configure(url: String) -> TlsServer {
    let base = PgConnectOptions::from_str(&url).expect("LARDER_TEST_POSTGRES_URL");
    let mut admin = PgConnection::connect_with(&base.clone().ssl_mode(PgSslMode::Disable))
        .await
        .unwrap_or_else(|e| panic!("tls setup: cannot connect to LARDER_TEST_POSTGRES_URL: {e}"));
    // Session-level lock, no transaction held: other test processes wait here, and
    // nothing sits idle in a transaction.
    sqlx::query("SELECT pg_advisory_lock(hashtext('larder.test.tls'))")
        .execute(&mut admin)
        .await
        .expect("tls setup: advisory lock");
    let dir = Path::new(DIR);
    let server = TlsServer {
        url,
        ca_cert: dir.join("ca.crt"),
        other_ca_cert: dir.join("other-ca.crt"),
    };
    let generated = ensure_files(&mut admin, dir).await;
    let show = |name: &'static str| sqlx::query_scalar::<_, String>(name);
    let cert_file = show("SELECT current_setting('ssl_cert_file')")
        .fetch_one(&mut admin)
        .await
        .expect("tls setup: read ssl_cert_file");
    let key_file = show("SELECT current_setting('ssl_key_file')")
        .fetch_one(&mut admin)
        .await
        .expect("tls setup: read ssl_key_file");
    let ssl = show("SELECT current_setting('ssl')")
        .fetch_one(&mut admin)
        .await
        .expect("tls setup: read ssl");
    let (crt, key) = (dir.join("server.crt"), dir.join("server.key"));
    let configured = Path::new(&cert_file) == crt && Path::new(&key_file) == key && ssl == "on";
    if generated || !configured {
        for (name, value) in [
            ("ssl_cert_file", crt.display().to_string()),
            ("ssl_key_file", key.display().to_string()),
            ("ssl", "on".to_owned()),
        ] {
            // ALTER SYSTEM takes no bind parameters; the values are this module's constant
            // paths, checked to need no quoting.
            assert!(
                value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)),
                "tls setup: unexpected path {value}"
            );
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER SYSTEM SET {name} = '{value}'"
            )))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "tls setup: ALTER SYSTEM SET {name} failed (is the test user a superuser?): {e}"
                )
            });
        }
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&mut admin)
            .await
            .expect("tls setup: pg_reload_conf");
    }
    // The reload is asynchronous, and a certificate the server cannot load leaves the old
    // one in place: wait for a handshake that verifies against the test CA.
    let verify = base
        .clone()
        .ssl_mode(PgSslMode::VerifyFull)
        .ssl_root_cert(&server.ca_cert);
    let started = Instant::now();
    loop {
        match PgConnection::connect_with(&verify).await {
            Ok(c) => {
                let _ = c.close().await;
                break;
            }
            Err(e) if started.elapsed() > Duration::from_secs(15) => panic!(
                "tls setup: the server does not present the test certificate after a reload \
                 (see the server log): {e}"
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    sqlx::query("SELECT pg_advisory_unlock(hashtext('larder.test.tls'))")
        .execute(&mut admin)
        .await
        .expect("tls setup: advisory unlock");
    let _ = admin.close().await;
    server
}

/// Makes the certificate files if they are missing or expire within a day; `true` when it
/// made them (the server must reload).
async fn ensure_files(admin: &mut PgConnection, dir: &Path) -> bool {
    let names = ["ca.crt", "other-ca.crt", "server.crt", "server.key"];
    let fresh = names.iter().all(|n| dir.join(n).is_file())
        && ["ca.crt", "server.crt"].iter().all(|n| {
            openssl(&[
                "x509",
                "-checkend",
                "86400",
                "-noout",
                "-in",
                &dir.join(n).display().to_string(),
            ])
            .is_ok()
        });
    if fresh {
        return false;
    }
    // The server's OS user owns its data directory; the files must be its own.
    let data_dir: String = sqlx::query_scalar("SELECT current_setting('data_directory')")
        .fetch_one(&mut *admin)
        .await
        .expect("tls setup: read data_directory");
    let owner = std::fs::metadata(&data_dir).unwrap_or_else(|e| {
        panic!("tls setup: the server's data directory {data_dir} is not on this machine: {e}")
    });
    let tmp = dir.with_file_name(format!("larder-test-tls.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("tls setup: create the certificate directory");
    let p = |n: &str| tmp.join(n).display().to_string();
    std::fs::write(
        tmp.join("server.ext"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1\n\
         basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature, keyEncipherment\n\
         extendedKeyUsage = serverAuth\n",
    )
    .expect("tls setup: write server.ext");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca_ext = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ];
    for (ca, subject) in [
        ("ca", "/CN=larder test ca"),
        ("other-ca", "/CN=larder other ca"),
    ] {
        let (key, crt) = (p(&format!("{ca}.key")), p(&format!("{ca}.crt")));
        let mut args = vec!["req", "-x509", "-days", "3650", "-subj", subject];
        args.extend(ec);
        args.extend(ca_ext);
        args.extend(["-keyout", &key, "-out", &crt]);
        openssl(&args).unwrap_or_else(|e| panic!("tls setup: {e}"));
    }
    let (key, csr, crt) = (p("server.key"), p("server.csr"), p("server.crt"));
    let mut args = vec![
        "req",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &key,
        "-out",
        &csr,
    ];
    args.extend(ec);
    openssl(&args).unwrap_or_else(|e| panic!("tls setup: {e}"));
    let (ca_crt, ca_key, ext, srl) = (p("ca.crt"), p("ca.key"), p("server.ext"), p("ca.srl"));
    openssl(&[
        "x509",
        "-req",
        "-days",
        "3650",
        "-in",
        &csr,
        "-CA",
        &ca_crt,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-CAserial",
        &srl,
        "-extfile",
        &ext,
        "-out",
        &crt,
    ])
    .unwrap_or_else(|e| panic!("tls setup: {e}"));
    for f in std::fs::read_dir(&tmp).expect("tls setup: list").flatten() {
        let mode = if f.file_name().to_string_lossy().ends_with(".key") {
            0o600
        } else {
            0o644
        };
        set_owner_and_mode(&f.path(), &owner, mode);
    }
    set_owner_and_mode(&tmp, &owner, 0o755);
    // Replace the directory whole: a reader sees the old set or the new one.
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).expect("tls setup: move the certificates in place");
    true
}

fn set_owner_and_mode(path: &Path, owner: &std::fs::Metadata, mode: u32) {
    std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid())).unwrap_or_else(|e| {
        panic!(
            "tls setup: chown {} to the server's user failed (run the tests as root): {e}",
            path.display()
        )
    });
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("tls setup: chmod {}: {e}", path.display()));
}

fn openssl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `openssl` (install it): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`openssl {}` failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
