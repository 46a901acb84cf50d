//! The blob conformance suite against real object stores on 127.0.0.1: S3 on moto
//! (`moto_server`, from PyPI) and Azure Blob on Azurite (from npm), each started by the
//! test on a free port. `.ci/run` installs both; elsewhere a missing server skips with a
//! printed reason (CI fails instead: `LARDER_REQUIRE_BACKENDS=1`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use larder_testkit::backends::skip;
use larder_testkit::blob::{BlobTarget, TempRoot, all_rules};

/// A server process, killed when dropped (also when a rule panics).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(port: u16, what: &str) {
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{what} did not start on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An executable from `env` (a path), else the first candidate that exists.
fn find(env: &str, candidates: &[PathBuf]) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(PathBuf::from(p));
    }
    candidates.iter().find(|p| p.exists()).cloned()
}

fn cache() -> PathBuf {
    std::env::var_os("LARDER_TOOLS_DIR").map_or_else(
        || {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/larder")
        },
        PathBuf::from,
    )
}

/// One raw HTTP/1.1 request; returns the status code.
fn http(port: u16, request: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_on_moto_passes_the_blob_conformance_suite() {
    let Some(moto) = find(
        "LARDER_MOTO_SERVER",
        &[cache().join("moto/bin/moto_server")],
    ) else {
        skip(
            "s3_on_moto_passes_the_blob_conformance_suite",
            "moto_server not found (pip install 'moto[server]', or set LARDER_MOTO_SERVER)",
        );
        return;
    };
    let port = free_port();
    let _server = Server(
        Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server"),
    );
    wait_for(port, "moto_server");
    all_rules(|| async move {
        let bucket = format!("b{}", uuid::Uuid::new_v4().simple());
        // moto creates buckets without a signature; object_store cannot create buckets.
        let status = http(
            port,
            &format!(
                "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n"
            ),
        );
        assert_eq!(status, 200, "create bucket");
        let blobs = larder_blob::blobs_from_url(&format!(
            "s3://{bucket}?region=us-east-1&endpoint=http://127.0.0.1:{port}\
             &access_key_id=test&secret_access_key=test"
        ))
        .await
        .expect("s3 blobs");
        BlobTarget::over(blobs)
    })
    .await;
}

/// Azurite's well-known development account.
const AZ_ACCOUNT: &str = "devstoreaccount1";
const AZ_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_on_azurite_passes_the_blob_conformance_suite() {
    let Some(azurite) = find(
        "LARDER_AZURITE",
        &[cache().join("azurite/node_modules/.bin/azurite-blob")],
    ) else {
        skip(
            "azure_on_azurite_passes_the_blob_conformance_suite",
            "azurite-blob not found (npm install azurite, or set LARDER_AZURITE)",
        );
        return;
    };
    let dir = TempRoot::new("azurite");
    let port = free_port();
    let _server = Server(
        Command::new(&azurite)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--location",
            ])
            .arg(dir.path())
            .args(["--silent", "--skipApiVersionCheck"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite-blob"),
    );
    wait_for(port, "azurite-blob");
    all_rules(|| async move {
        let container = format!("c{}", uuid::Uuid::new_v4().simple());
        let status = http(port, &azure_create_container(port, &container));
        assert_eq!(status, 201, "create container");
        let blobs = larder_blob::blobs_from_url(&format!(
            "azure://{container}?account={AZ_ACCOUNT}&access_key={}&endpoint=http://127.0.0.1:{port}/{AZ_ACCOUNT}",
            url_escape(AZ_KEY)
        ))
        .await
        .expect("azure blobs");
        BlobTarget::over(blobs)
    })
    .await;
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A `Create Container` request signed with Shared Key (object_store cannot create
/// containers; the signature is the documented HMAC-SHA256 over the canonical request).
fn azure_create_container(port: u16, container: &str) -> String {
    use base64::Engine as _;
    let date = httpdate_now();
    let version = "2021-08-06";
    let canonical = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZ_ACCOUNT}/{AZ_ACCOUNT}/{container}\nrestype:container"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(AZ_KEY)
        .unwrap();
    let sig =
        base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, canonical.as_bytes()));
    format!(
        "PUT /{AZ_ACCOUNT}/{container}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         x-ms-date: {date}\r\nx-ms-version: {version}\r\n\
         Authorization: SharedKey {AZ_ACCOUNT}:{sig}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// RFC 1123 date of now (`Tue, 01 Dec 2026 22:43:27 GMT`).
fn httpdate_now() -> String {
    jiff::Timestamp::now()
        .strftime("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}
