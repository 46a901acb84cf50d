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
use larder::blob::{BlobKey, Blobs, PutOptions};
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
            mb_per_s(&mut get);
            if can_rss && let Some(peak) = rss::peak_mib() {
                get.push_rss(Side::Larder, peak);
            }
        }
        out.push(put);
        out.push(get);
    }
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
