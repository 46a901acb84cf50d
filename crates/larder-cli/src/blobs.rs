//! `larder blobs …`: list, copy in and out, delete, and usage of the blob store that the
//! settings name (`[blob] url`, `LARDER_BLOB_URL`, or `--url`); with `--attached`, of the
//! blobs recorded in the database (`Attachments`: staged in units of work); `sweep`
//! deletes the uploads no committed reference holds.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use larder::Settings;
use larder::blob::{Attachments, BlobKey, BlobMeta, Blobs, PutOptions, SweepOptions};
use larder::settings::DEFAULT_BLOB_URL;

use crate::events::rfc3339;

/// `larder blobs …`
#[derive(Debug, Args)]
#[command(
    after_help = "Stores (--url or LARDER_BLOB_URL): a folder path or file:///PATH, \
s3://BUCKET?region=…&endpoint=…, azure://CONTAINER?account=…&access_key=…, memory:.\n\
With --attached the commands act on the blobs recorded in the database \
(--database-url): `put` stages in a unit of work, `rm` deletes the reference and then the object.\n\
Examples:\n  larder blobs ls invoices/\n  larder blobs put invoices/1.pdf ./1.pdf \
--content-type application/pdf\n  larder blobs get invoices/1.pdf ./copy.pdf\n  larder blobs du --json\n  \
larder blobs --attached ls invoices/\n  larder blobs sweep --dry-run --grace 10m"
)]
pub(crate) struct BlobsArgs {
    /// The blob store [default: blob.url of the settings, else the folder `larder-blobs`]
    #[arg(long, global = true)]
    url: Option<String>,
    /// Act on the blobs recorded in the database (staged in units of work), not on the
    /// store's raw keys
    #[arg(long, global = true)]
    attached: bool,
    #[command(subcommand)]
    command: BlobsCommand,
}

#[derive(Debug, Subcommand)]
enum BlobsCommand {
    /// List blobs whose key starts with PREFIX: key, size, content type, stored at
    Ls {
        /// Key prefix (a plain string prefix: `inv` matches `invoices/…`)
        #[arg(default_value = "")]
        prefix: String,
        /// Print at most this many
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Store FILE under KEY (replacing a blob there, atomically, unless --if-absent)
    Put {
        /// The key (`/`-separated segments; `..`, absolute paths and the like are refused)
        key: String,
        /// The file to read
        file: PathBuf,
        /// Content type to record
        #[arg(long)]
        content_type: Option<String>,
        /// Fail if a blob has the key
        #[arg(long)]
        if_absent: bool,
    },
    /// Write the blob KEY to FILE (or to stdout)
    Get {
        /// The key
        key: String,
        /// Where to write [default: stdout]
        file: Option<PathBuf>,
    },
    /// Delete the blob KEY
    Rm {
        /// The key
        key: String,
    },
    /// Storage usage by first key segment under PREFIX: blobs and bytes
    Du {
        /// Key prefix
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Delete uploads that no committed reference in the database holds (older than the
    /// grace period): what crashes and rolled-back units of work left behind
    Sweep {
        /// Report what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
        /// Leave objects younger than this alone (`90s`, `10m`, `1h`, `2d`)
        #[arg(long, default_value = "1h", value_parser = parse_grace)]
        grace: std::time::Duration,
    },
}

fn parse_grace(s: &str) -> std::result::Result<std::time::Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}`: a number and a unit (s, m, h, d), e.g. `10m`"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("`{s}`: the unit is one of s, m, h, d")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

/// Bytes per chunk when streaming a file in or out.
const CHUNK: usize = 1 << 20;
/// Transfers at least this big show a progress bar (on a terminal, without `--json`).
const BAR_FROM: u64 = 8 << 20;

fn bar(len: u64, json: bool, what: String) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal as _;
    (!json && len >= BAR_FROM && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(len);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(what);
        b
    })
}

/// `path` as a stream of chunks (constant memory), advancing a progress bar for big files.
async fn file_stream(
    path: &std::path::Path,
    json: bool,
) -> Result<impl futures_util::Stream<Item = larder::Result<bytes::Bytes>> + Send + use<>> {
    use tokio::io::AsyncReadExt as _;
    let f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    let len = f.metadata().await?.len();
    let bar = bar(len, json, format!("{}", path.display()));
    let shown = path.display().to_string();
    Ok(futures_util::stream::try_unfold(
        (f, bar, shown),
        |(mut f, bar, shown)| async move {
            let mut buf = vec![0u8; CHUNK];
            let n = f.read(&mut buf).await.map_err(|e| {
                larder::Error::backend("filesystem", format!("reading {shown}: {e}"))
            })?;
            if n == 0 {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                return Ok(None);
            }
            buf.truncate(n);
            if let Some(b) = &bar {
                b.inc(n as u64);
            }
            Ok(Some((bytes::Bytes::from(buf), (f, bar, shown))))
        },
    ))
}

/// Writes a streamed blob to `file`, or to stdout; returns the bytes written.
async fn write_out(
    mut s: larder::blob::ByteStream,
    size: u64,
    file: Option<&std::path::Path>,
    json: bool,
) -> Result<u64> {
    use futures_util::StreamExt as _;
    use tokio::io::AsyncWriteExt as _;
    let bar = bar(
        size,
        json,
        file.map_or_else(|| "stdout".into(), |f| f.display().to_string()),
    );
    let mut out = match file {
        Some(f) => Some(
            tokio::fs::File::create(f)
                .await
                .with_context(|| format!("writing {}", f.display()))?,
        ),
        None => None,
    };
    let mut n = 0u64;
    while let Some(chunk) = s.next().await {
        let chunk = chunk?;
        match (&mut out, file) {
            (Some(o), Some(f)) => o
                .write_all(&chunk)
                .await
                .with_context(|| format!("writing {}", f.display()))?,
            _ => std::io::stdout().lock().write_all(&chunk)?,
        }
        n += chunk.len() as u64;
        if let Some(b) = &bar {
            b.inc(chunk.len() as u64);
        }
    }
    if let (Some(mut o), Some(f)) = (out, file) {
        o.flush()
            .await
            .with_context(|| format!("writing {}", f.display()))?;
        o.sync_all()
            .await
            .with_context(|| format!("writing {}", f.display()))?;
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    Ok(n)
}

fn key(s: &str) -> Result<BlobKey> {
    Ok(BlobKey::new(s)?)
}

fn meta_json(m: &BlobMeta) -> serde_json::Value {
    serde_json::json!({
        "key": m.key,
        "size": m.size,
        "sha256": m.sha256,
        "content_type": m.content_type,
        "metadata": m.metadata,
        "created": rfc3339(m.created_micros),
    })
}

/// Every record under `prefix`, page by page, at most `limit`.
async fn all(blobs: &Blobs, prefix: &str, limit: usize) -> Result<Vec<BlobMeta>> {
    let mut out = Vec::new();
    let mut after = None;
    while out.len() < limit {
        let page = blobs
            .list(prefix, after.as_ref(), (limit - out.len()).min(1000))
            .await?;
        out.extend(page.blobs);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Ok(out)
}

pub(crate) async fn run(args: &BlobsArgs, settings: &Settings, json: bool) -> Result<()> {
    let url = args.url.clone().unwrap_or_else(|| {
        settings
            .blob_url
            .as_ref()
            .map_or_else(|| DEFAULT_BLOB_URL.to_owned(), |u| u.expose().to_owned())
    });
    let blobs = larder::blob::blobs_from_url(&url)
        .await
        .with_context(|| format!("opening the blob store {}", larder::blob::redact(&url)))?;
    if args.attached || matches!(args.command, BlobsCommand::Sweep { .. }) {
        let store = crate::store::open_existing(settings).await?;
        let att = Attachments::builder(&store, blobs)
            .prepare(false)
            .open()
            .await?;
        let r = attached(args, &att, json).await;
        store.close().await;
        return r;
    }
    match &args.command {
        BlobsCommand::Ls { prefix, limit } => {
            print_list(&all(&blobs, prefix, *limit).await?, json);
        }
        BlobsCommand::Put {
            key: k,
            file,
            content_type,
            if_absent,
        } => {
            let k = key(k)?;
            let mut opts = PutOptions::new();
            if let Some(t) = content_type {
                opts = opts.content_type(t.clone());
            }
            if *if_absent {
                opts = opts.if_absent();
            }
            // Streamed (constant memory); object stores cannot make a multipart upload
            // conditional, so `--if-absent` sends the file whole there.
            let m = if *if_absent && blobs.backend().system() != "filesystem" {
                let content = tokio::fs::read(file)
                    .await
                    .with_context(|| format!("reading {}", file.display()))?;
                blobs.put(&k, content, opts).await?
            } else {
                blobs
                    .put_stream(&k, file_stream(file, json).await?, opts)
                    .await?
            };
            if json {
                println!("{}", meta_json(&m));
            } else {
                println!("stored {} ({} bytes, sha256 {})", m.key, m.size, m.sha256);
            }
        }
        BlobsCommand::Get { key: k, file } => {
            if json && file.is_none() {
                bail!("--json with `get` needs a FILE: the content goes there");
            }
            let (meta, s) = blobs.get_stream(&key(k)?, None).await?;
            got(meta, s, file.as_deref(), json).await?;
        }
        BlobsCommand::Sweep { .. } => unreachable!("sweep runs on the attached blobs"),
        BlobsCommand::Rm { key: k } => {
            let existed = blobs.delete(&key(k)?).await?;
            if json {
                println!("{}", serde_json::json!({ "key": k, "deleted": existed }));
            } else if existed {
                println!("deleted {k}");
            } else {
                println!("no blob {k}");
            }
        }
        BlobsCommand::Du { prefix } => {
            let list = all(&blobs, prefix, usize::MAX).await?;
            print_usage(&list, json);
        }
    }
    Ok(())
}

/// Writes a blob read as a stream to `file` (or stdout) and reports it.
async fn got(
    meta: BlobMeta,
    s: larder::blob::ByteStream,
    file: Option<&std::path::Path>,
    json: bool,
) -> Result<()> {
    let n = write_out(s, meta.size, file, json).await?;
    if let Some(f) = file {
        if json {
            println!("{}", meta_json(&meta));
        } else {
            eprintln!("wrote {n} bytes to {}", f.display());
        }
    }
    Ok(())
}

/// Blobs and bytes by first key segment, and the total.
fn print_usage(list: &[BlobMeta], json: bool) {
    let mut by: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for m in list {
        let top = m.key.split('/').next().unwrap_or_default().to_owned();
        let e = by.entry(top).or_default();
        e.0 += 1;
        e.1 += m.size;
    }
    let total = (list.len() as u64, list.iter().map(|m| m.size).sum::<u64>());
    if json {
        let rows: Vec<_> = by
            .iter()
            .map(|(k, (n, b))| serde_json::json!({"prefix": k, "blobs": n, "bytes": b}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"by_prefix": rows, "blobs": total.0, "bytes": total.1})
        );
    } else {
        for (k, (n, b)) in &by {
            println!("{k}\t{n}\t{b}");
        }
        println!("total\t{}\t{}", total.0, total.1);
    }
}

/// Every reference under `prefix`, page by page, at most `limit`.
async fn all_attached(att: &Attachments, prefix: &str, limit: usize) -> Result<Vec<BlobMeta>> {
    let mut uow = att.store().read().await?;
    let mut out = Vec::new();
    let mut after = None;
    while out.len() < limit {
        let page = att
            .list(
                &mut uow,
                prefix,
                after.as_ref(),
                (limit - out.len()).min(1000),
            )
            .await?;
        out.extend(page.blobs);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Ok(out)
}

fn print_list(list: &[BlobMeta], json: bool) {
    if json {
        let v: Vec<_> = list.iter().map(meta_json).collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        for m in list {
            println!(
                "{}\t{}\t{}\t{}",
                m.key,
                m.size,
                m.content_type.as_deref().unwrap_or("-"),
                rfc3339(m.created_micros)
            );
        }
        eprintln!("{} blob(s)", list.len());
    }
}

/// The commands on the blobs recorded in the database.
async fn attached(args: &BlobsArgs, att: &Attachments, json: bool) -> Result<()> {
    let store = att.store();
    match &args.command {
        BlobsCommand::Ls { prefix, limit } => {
            print_list(&all_attached(att, prefix, *limit).await?, json);
        }
        BlobsCommand::Put {
            key: k,
            file,
            content_type,
            if_absent,
        } => {
            let k = key(k)?;
            let content = file_stream(file, json).await?;
            let mut opts = PutOptions::new();
            if let Some(t) = content_type {
                opts = opts.content_type(t.clone());
            }
            if *if_absent {
                opts = opts.if_absent();
            }
            // Uploaded (streamed) before the unit of work opens (SQLite has one writer),
            // recorded in it.
            let staged = att.upload_stream(&k, content, opts).await?;
            let mut uow = store.begin().await?;
            let m = if *if_absent {
                att.attach_new(&mut uow, staged).await?
            } else {
                att.attach(&mut uow, staged).await?
            };
            uow.commit().await?;
            att.settled().await;
            if json {
                println!("{}", meta_json(&m));
            } else {
                println!("stored {} ({} bytes, sha256 {})", m.key, m.size, m.sha256);
            }
        }
        BlobsCommand::Get { key: k, file } => {
            if json && file.is_none() {
                bail!("--json with `get` needs a FILE: the content goes there");
            }
            let mut uow = store.read().await?;
            let (meta, s) = att.get_stream(&mut uow, &key(k)?, None).await?;
            drop(uow);
            got(meta, s, file.as_deref(), json).await?;
        }
        BlobsCommand::Rm { key: k } => {
            let mut uow = store.begin().await?;
            let existed = att.delete(&mut uow, &key(k)?).await?;
            uow.commit().await?;
            att.settled().await;
            if json {
                println!("{}", serde_json::json!({ "key": k, "deleted": existed }));
            } else if existed {
                println!("deleted {k}");
            } else {
                println!("no blob {k}");
            }
        }
        BlobsCommand::Du { prefix } => {
            print_usage(&all_attached(att, prefix, usize::MAX).await?, json);
        }
        BlobsCommand::Sweep { dry_run, grace } => {
            let r = att
                .sweep(SweepOptions::default().grace(*grace).dry_run(*dry_run))
                .await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "scanned": r.scanned,
                        "swept": r.swept,
                        "bytes": r.bytes,
                        "kept": r.kept,
                        "stale_records": r.stale_records,
                        "dry_run": r.dry_run,
                    })
                );
            } else {
                let verb = if r.dry_run { "would delete" } else { "deleted" };
                println!(
                    "{verb} {} unreferenced object(s), {} bytes; kept {} of {} scanned; {} stale record(s)",
                    r.swept, r.bytes, r.kept, r.scanned, r.stale_records
                );
            }
        }
    }
    Ok(())
}
