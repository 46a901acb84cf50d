//! B1: blob put and get through larder's `Blobs` against raw `object_store` on the same
//! storage, in the same run: the local filesystem (larder's `FsBlobs` vs `object_store`'s
//! `LocalFileSystem`, each in its own folder of the same file system). Objects of 1 KiB
//! (ops/s) and 64 MiB (MB/s); the two sides alternate in blocks. larder computes the
//! SHA-256 of every put and fsyncs the file and its folder; `LocalFileSystem` does
//! neither, so the put lines compare durable against non-durable writes (stated in the
//! output). Runs once per `--backend all` (with the SQLite target); no database involved.

use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use larder::blob::{Attachments, BlobKey, Blobs, PutOptions};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use super::Ctx;
use crate::backends::Kind;
use crate::measure::{Metric, Side, interleaved, rss};

const SMALL: usize = 1024;
const SMALL_OPS: usize = 400;
const LARGE: usize = 64 << 20;
const LARGE_OPS: usize = 4;

struct Sides {
    larder: Blobs,
    raw: Arc<LocalFileSystem>,
    raw_root: std::path::PathBuf,
    _dir: larder_testkit::blob::TempRoot,
}

async fn sides() -> Result<Sides> {
    let dir = larder_testkit::blob::TempRoot::new("bench");
    let larder = Blobs::filesystem(dir.path().join("larder")).await?;
    let raw_root = dir.path().join("raw");
    std::fs::create_dir_all(&raw_root)?;
    let raw = Arc::new(LocalFileSystem::new_with_prefix(&raw_root)?);
    Ok(Sides {
        larder,
        raw,
        raw_root,
        _dir: dir,
    })
}

fn mb_per_s(m: &mut Metric) {
    // `record` stores objects per second; a 64 MiB object is 67.1 MB.
    #[allow(clippy::cast_precision_loss)]
    let mb = LARGE as f64 / 1e6;
    for v in m.larder.iter_mut().chain(m.raw.iter_mut()) {
        *v *= mb;
    }
}

/// The unit-of-work-staged put (upload, reference in SQLite, commit) against a plain put on
/// the same filesystem store: the overhead of coordinating with the unit of work.
async fn staged(cx: &Ctx<'_>) -> Result<Metric> {
    let mut m = Metric::new(
        "B1 staged put 1 KiB in a unit of work (SQLite) vs plain put",
        "ops/s",
        0.0,
    );
    let content = Bytes::from(vec![7u8; SMALL]);
    for run in 0..cx.runs {
        let s = sides().await?;
        let db = cx.target.fresh().await?;
        let att = Attachments::open(&db.store, s.larder.clone()).await?;
        let items: Vec<usize> = (0..SMALL_OPS).collect();
        let spent = interleaved(run, &items, 25, async |side, i| {
            let key = BlobKey::new(format!("b1s/{run}/{i}"))?;
            match side {
                Side::Larder => {
                    let mut uow = db.store.begin().await?;
                    att.stage(&mut uow, &key, content.clone(), PutOptions::new())
                        .await?;
                    uow.commit().await?;
                }
                Side::Raw => {
                    s.larder
                        .put(&key, content.clone(), PutOptions::new())
                        .await?;
                }
            }
            Ok(())
        })
        .await?;
        m.record(SMALL_OPS, &spent);
        db.close().await;
    }
    m.note = Some(
        "B1 staged: larder = Attachments::stage + commit (upload, reference and object rows in \
         SQLite, commit with synchronous=FULL), raw = Blobs::put on the same filesystem store; \
         the ratio is what coordinating with the unit of work costs (no target)."
            .into(),
    );
    Ok(m)
}

pub(crate) async fn b1(cx: &Ctx<'_>) -> Result<Vec<Metric>> {
    if cx.target.kind != Kind::Sqlite {
        println!("  B1 runs with the SQLite target only (no database involved): skipped");
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (label, size, ops, unit) in [
        ("1 KiB", SMALL, SMALL_OPS, "ops/s"),
        ("64 MiB", LARGE, LARGE_OPS, "MB/s"),
    ] {
        let mut put = Metric::new(format!("B1 put {label} (filesystem)"), unit, 0.9);
        let mut durable = Metric::new(
            format!("B1 put {label} (filesystem, raw also hashes and fsyncs)"),
            unit,
            0.9,
        );
        let mut get = Metric::new(format!("B1 get {label} (filesystem)"), unit, 0.9);
        let content = Bytes::from(
            (0..size)
                .map(|i| u8::try_from(i % 251).unwrap_or(0))
                .collect::<Vec<u8>>(),
        );
        let can_rss = rss::reset_peak();
        for run in 0..cx.runs {
            let s = sides().await?;
            let items: Vec<usize> = (0..ops).collect();
            let block = if size == LARGE { 1 } else { 25 };
            let spent = interleaved(run, &items, block, async |side, i| {
                let name = format!("b1/{run}/{i}");
                match side {
                    Side::Larder => {
                        s.larder
                            .put(&BlobKey::new(name)?, content.clone(), PutOptions::new())
                            .await?;
                    }
                    Side::Raw => {
                        s.raw
                            .put(&Path::from(name), PutPayload::from(content.clone()))
                            .await?;
                    }
                }
                Ok(())
            })
            .await?;
            put.record(ops, &spent);
            // The same work on the raw side: hash the content, put it, fsync the file and
            // its folder.
            let spent = interleaved(run, &items, block, async |side, i| {
                let name = format!("b1d/{run}/{i}");
                match side {
                    Side::Larder => {
                        s.larder
                            .put(&BlobKey::new(name)?, content.clone(), PutOptions::new())
                            .await?;
                    }
                    Side::Raw => {
                        let sha = larder::blob::sha256_hex(&content);
                        anyhow::ensure!(sha.len() == 64, "hash");
                        s.raw
                            .put(&Path::from(name.clone()), PutPayload::from(content.clone()))
                            .await?;
                        let file = s.raw_root.join(&name);
                        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                            std::fs::File::open(&file)?.sync_all()?;
                            if let Some(dir) = file.parent() {
                                std::fs::File::open(dir)?.sync_all()?;
                            }
                            Ok(())
                        })
                        .await??;
                    }
                }
                Ok(())
            })
            .await?;
            durable.record(ops, &spent);
            let spent = interleaved(run, &items, block, async |side, i| {
                let name = format!("b1/{run}/{i}");
                let n = match side {
                    Side::Larder => s.larder.get(&BlobKey::new(name)?).await?.content.len(),
                    Side::Raw => s.raw.get(&Path::from(name)).await?.bytes().await?.len(),
                };
                anyhow::ensure!(n == size, "read {n} bytes of {size}");
                Ok(())
            })
            .await?;
            get.record(ops, &spent);
        }
        if size == LARGE {
            mb_per_s(&mut put);
            mb_per_s(&mut durable);
            mb_per_s(&mut get);
            if can_rss && let Some(peak) = rss::peak_mib() {
                get.push_rss(Side::Larder, peak);
            }
        }
        out.push(put);
        out.push(durable);
        out.push(get);
    }
    out.push(staged(cx).await?);
    if let Some(first) = out.first_mut() {
        first.note = Some(format!(
            "B1: {SMALL_OPS} objects of 1 KiB and {LARGE_OPS} of 64 MiB per run, put then get, \
             sides alternating in blocks; larder = `Blobs::filesystem` (SHA-256 of the content, \
             temp file + fsync + rename + fsync of the folder, the record in the file), raw = \
             `object_store::local::LocalFileSystem` (temp file + rename, no fsync, no hash). \
             Peak RSS (64 MiB line) is the whole process, both sides."
        ));
    }
    Ok(out)
}

/// A moto S3 server on a free port, stopped on drop.
struct Moto(std::process::Child, u16);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> Result<Option<Moto>> {
    let tools = std::env::var_os("LARDER_TOOLS_DIR").map_or_else(
        || {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/larder")
        },
        std::path::PathBuf::from,
    );
    let bin = tools.join("moto/bin/moto_server");
    if !bin.exists() {
        return Ok(None);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = std::process::Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let moto = Moto(child, port);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(Some(moto));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    anyhow::bail!("moto_server did not start on port {port}")
}

fn create_bucket(port: u16, bucket: &str) -> Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    anyhow::ensure!(buf.starts_with("HTTP/1.1 200"), "create bucket: {buf}");
    Ok(())
}

/// B2: the same object store client (S3 on a local moto server) used through larder's
/// `Blobs` and directly: larder adds the SHA-256, the record as metadata headers, and a
/// HEAD before ranged reads (none here). 1 KiB (ops/s) and 64 MiB (MB/s) objects.
pub(crate) async fn b2(cx: &Ctx<'_>) -> Result<Vec<Metric>> {
    use object_store::aws::AmazonS3Builder;
    if cx.target.kind != Kind::Sqlite {
        println!("  B2 runs with the SQLite target only (no database involved): skipped");
        return Ok(Vec::new());
    }
    let Some(moto) = start_moto()? else {
        println!("  B2 needs moto_server (.ci/run installs it in ~/.cache/larder): skipped");
        return Ok(Vec::new());
    };
    let endpoint = format!("http://127.0.0.1:{}", moto.1);
    // Installs the TLS crypto provider object_store's HTTP client needs (larder does it
    // when it builds a store from a URL).
    let _ = larder::blob::blobs_from_url(&format!(
        "s3://warmup?region=us-east-1&endpoint={endpoint}&access_key_id=t&secret_access_key=t"
    ))
    .await?;
    const MID: usize = 64 << 20;
    let mut out = Vec::new();
    for (label, size, ops, unit) in [
        ("1 KiB", SMALL, 200usize, "ops/s"),
        ("64 MiB", MID, 3, "MB/s"),
    ] {
        let mut put = Metric::new(format!("B2 put {label} (S3 on moto)"), unit, 0.9);
        let mut get = Metric::new(format!("B2 get {label} (S3 on moto)"), unit, 0.9);
        let content = Bytes::from(
            (0..size)
                .map(|i| u8::try_from(i % 251).unwrap_or(0))
                .collect::<Vec<u8>>(),
        );
        for run in 0..cx.runs {
            let bucket = format!("b2-{run}-{}", size);
            create_bucket(moto.1, &bucket)?;
            let raw: Arc<dyn object_store::ObjectStore> = Arc::new(
                AmazonS3Builder::new()
                    .with_bucket_name(&bucket)
                    .with_region("us-east-1")
                    .with_endpoint(&endpoint)
                    .with_allow_http(true)
                    .with_access_key_id("test")
                    .with_secret_access_key("test")
                    .build()?,
            );
            let larder = Blobs::new(larder::blob::ObjectStoreBlobs::new(raw.clone(), "s3"));
            let items: Vec<usize> = (0..ops).collect();
            let block = if size == MID { 1 } else { 25 };
            let spent = interleaved(run, &items, block, async |side, i| {
                let name = format!("b2/{i}");
                match side {
                    Side::Larder => {
                        larder
                            .put(&BlobKey::new(name)?, content.clone(), PutOptions::new())
                            .await?;
                    }
                    Side::Raw => {
                        raw.put(
                            &Path::from(format!("raw/{name}")),
                            PutPayload::from(content.clone()),
                        )
                        .await?;
                    }
                }
                Ok(())
            })
            .await?;
            put.record(ops, &spent);
            let spent = interleaved(run, &items, block, async |side, i| {
                let name = format!("b2/{i}");
                let n = match side {
                    Side::Larder => larder.get(&BlobKey::new(name)?).await?.content.len(),
                    Side::Raw => raw
                        .get(&Path::from(format!("raw/{name}")))
                        .await?
                        .bytes()
                        .await?
                        .len(),
                };
                anyhow::ensure!(n == size, "read {n} bytes of {size}");
                Ok(())
            })
            .await?;
            get.record(ops, &spent);
        }
        if size == MID {
            #[allow(clippy::cast_precision_loss)]
            let mb = MID as f64 / 1e6;
            for m in [&mut put, &mut get] {
                for v in m.larder.iter_mut().chain(m.raw.iter_mut()) {
                    *v *= mb;
                }
            }
        }
        out.push(put);
        out.push(get);
    }
    if let Some(first) = out.first_mut() {
        first.note = Some(
            "B2: one object_store S3 client on a local moto server, used through \
             larder::blob::ObjectStoreBlobs (SHA-256 of the content, the record as x-amz-meta \
             headers) and directly (plain PUT/GET), sides alternating in blocks."
                .into(),
        );
    }
    drop(moto);
    Ok(out)
}
