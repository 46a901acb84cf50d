//! The local filesystem blob backend (the embedded default).
//!
//! A blob is one file at `root/<key>`: an 8-byte magic `LARDERB1`, the record's length
//! (u32, little endian), the record as JSON, then the content — one file, so replacing a
//! blob (content and record together) is one `rename`. Writes go to a temporary file in
//! `root/.larder-tmp/`, are fsynced, then renamed (or hard-linked, for "only if absent":
//! `link` fails on an existing name, atomically) into place, and the folder is fsynced.
//! Every path component below the root is checked with `symlink_metadata` before use: a
//! symbolic link inside the root is refused, never followed. (A link swapped in between the
//! check and the open is outside this backend's threat model: whoever can write the root
//! can write the blobs.)

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::{Blob, BlobBackend, BlobKey, BlobMeta, BlobWriter, ByteStream, RESERVED_PREFIX};
use crate::backend::BoxFuture;
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"LARDERB1";
const TMP: &str = ".larder-tmp";
/// The longest record a file may claim (keys, content type and metadata are bounded far
/// below this).
const MAX_RECORD: u32 = 64 * 1024;
/// The record room of a streamed blob, reserved before the content and filled (padded
/// with spaces, which JSON ignores) once size and hash are known.
const STREAM_RECORD: u32 = 16 * 1024;
/// Bytes per chunk of a streamed read.
const READ_CHUNK: u64 = 1024 * 1024;

/// Blobs in a folder.
#[derive(Debug, Clone)]
pub struct FsBlobs {
    root: Arc<PathBuf>,
}

fn io_err(what: &str, e: &io::Error) -> Error {
    Error::backend("filesystem", format!("{what}: {e}"))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::backend("filesystem", format!("blob worker thread failed: {e}")))?
}

fn sync_dir(dir: &Path) -> Result<()> {
    // Makes a rename or an unlink in `dir` durable (no-op where folders cannot be opened).
    match File::open(dir) {
        Ok(d) => d
            .sync_all()
            .map_err(|e| io_err("fsync of the blob folder", &e)),
        Err(_) => Ok(()),
    }
}

impl FsBlobs {
    /// Opens (creating it if missing) the store in `root`.
    pub async fn open(root: impl Into<PathBuf>) -> Result<FsBlobs> {
        let root = root.into();
        let root = blocking(move || {
            fs::create_dir_all(root.join(TMP))
                .map_err(|e| io_err(&format!("cannot create `{}`", root.display()), &e))?;
            root.canonicalize()
                .map_err(|e| io_err(&format!("cannot resolve `{}`", root.display()), &e))
        })
        .await?;
        Ok(FsBlobs {
            root: Arc::new(root),
        })
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The path of `key`, refusing symbolic links on the way (components that do not exist
/// yet are plain names).
fn resolve(root: &Path, key: &BlobKey) -> Result<PathBuf> {
    let mut p = root.to_path_buf();
    for seg in key.segments() {
        p.push(seg);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::backend(
                    "filesystem",
                    format!(
                        "refusing to follow the symbolic link at `{}` inside the blob root; \
                         remove it",
                        p.strip_prefix(root).unwrap_or(&p).display()
                    ),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Nothing further down exists; the remaining components are plain names.
                for rest in key
                    .segments()
                    .skip(p.components().count() - root.components().count())
                {
                    p.push(rest);
                }
                return Ok(p);
            }
            Err(e) => return Err(io_err("cannot inspect a blob path", &e)),
        }
    }
    Ok(p)
}

fn folder_clash(key: &BlobKey) -> Error {
    tracing::debug!(key = %key, "filesystem blob key clashes with a folder");
    Error::Unsupported {
        operation: "a blob key that is also a folder of other keys (or under a blob key)",
        backend: "filesystem",
    }
}

/// The record of the blob file `f` holding `key` (the key is where the file is, whatever
/// the record says: a file copied or renamed by hand is the blob of its new name).
fn read_record(f: &mut File, key: &BlobKey) -> Result<(BlobMeta, u64)> {
    let mut head = [0u8; 12];
    f.read_exact(&mut head)
        .map_err(|e| io_err("cannot read a blob's header", &e))?;
    if &head[..8] != MAGIC {
        return Err(Error::backend(
            "filesystem",
            "a file in the blob root is not a larder blob (bad magic)",
        ));
    }
    let n = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if n > MAX_RECORD {
        return Err(Error::backend("filesystem", "a blob's record is too long"));
    }
    let mut rec = vec![0u8; n as usize];
    f.read_exact(&mut rec)
        .map_err(|e| io_err("cannot read a blob's record", &e))?;
    let mut meta: BlobMeta = serde_json::from_slice(&rec)
        .map_err(|e| Error::backend("filesystem", format!("a blob's record is damaged: {e}")))?;
    key.as_str().clone_into(&mut meta.key);
    Ok((meta, 12 + u64::from(n)))
}

fn open_blob(root: &Path, key: &BlobKey) -> Result<Option<File>> {
    let p = resolve(root, key)?;
    match fs::symlink_metadata(&p) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("cannot inspect a blob", &e)),
    }
    match File::open(&p) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("cannot open a blob", &e)),
    }
}

/// Creates the folders of `key` one by one, refusing a blob where a folder must be.
fn make_folders(root: &Path, key: &BlobKey) -> Result<()> {
    let mut dir = root.to_path_buf();
    let segs: Vec<&str> = key.segments().collect();
    for seg in &segs[..segs.len() - 1] {
        dir.push(seg);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(folder_clash(key)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("cannot create a blob folder", &e)),
            },
            Err(e) => return Err(io_err("cannot inspect a blob folder", &e)),
        }
    }
    Ok(())
}

fn put_blocking(
    root: &Path,
    key: &BlobKey,
    content: &[u8],
    meta: &BlobMeta,
    if_absent: bool,
) -> Result<()> {
    let target = resolve(root, key)?;
    if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
        return Err(folder_clash(key));
    }
    let record =
        serde_json::to_vec(meta).map_err(|e| Error::backend("filesystem", e.to_string()))?;
    let len = u32::try_from(record.len())
        .ok()
        .filter(|n| *n <= MAX_RECORD)
        .ok_or_else(|| Error::backend("filesystem", "a blob's record is too long"))?;
    let tmp = root.join(TMP).join(format!("{}", uuid::Uuid::new_v4()));
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&len.to_le_bytes())?;
        f.write_all(&record)?;
        f.write_all(content)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("cannot write a blob", &e));
    }
    place(root, key, &target, &tmp, if_absent)
}

/// Moves the synced temporary file `tmp` to `target` (refusing an existing blob when
/// `if_absent`), then syncs the folder; the temporary file is gone afterwards.
fn place(root: &Path, key: &BlobKey, target: &Path, tmp: &Path, if_absent: bool) -> Result<()> {
    let parent = target.parent().unwrap_or(root).to_path_buf();
    // A concurrent delete of the folder's last blob removes the folder: make it again.
    let mut attempts = 0;
    let placed = loop {
        attempts += 1;
        if let Err(e) = make_folders(root, key) {
            let _ = fs::remove_file(tmp);
            return Err(e);
        }
        let r = if if_absent {
            // `link` refuses an existing name atomically.
            fs::hard_link(tmp, target)
        } else {
            fs::rename(tmp, target)
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 10 => continue,
            other => break other,
        }
    };
    let _ = fs::remove_file(tmp);
    if let Err(e) = &placed
        && if_absent
        && e.kind() == io::ErrorKind::AlreadyExists
    {
        return Err(Error::AlreadyExists {
            entity: "blob",
            id: key.as_str().to_owned(),
        });
    }
    placed.map_err(|e| io_err("cannot move a blob into place", &e))?;
    sync_dir(&parent)
}

fn get_blocking(root: &Path, key: &BlobKey, range: Option<Range<u64>>) -> Result<Option<Blob>> {
    let Some(mut f) = open_blob(root, key)? else {
        return Ok(None);
    };
    let (meta, offset) = read_record(&mut f, key)?;
    let (start, end) = match range {
        None => (0, meta.size),
        Some(r) => {
            super::check_range(&r, meta.size)?;
            (r.start, r.end)
        }
    };
    f.seek(SeekFrom::Start(offset + start))
        .map_err(|e| io_err("cannot read a blob", &e))?;
    let n = usize::try_from(end - start)
        .map_err(|_| Error::backend("filesystem", "blob range too large for memory"))?;
    let mut buf = vec![0u8; n];
    f.read_exact(&mut buf)
        .map_err(|e| io_err("a blob is shorter than its record says", &e))?;
    Ok(Some(Blob {
        meta,
        content: Bytes::from(buf),
    }))
}

/// Every key below `dir` (relative to `root`), unsorted; skips larder's folders.
fn walk(root: &Path, dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("cannot list a blob folder", &e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| io_err("cannot list a blob folder", &e))?;
        let ft = entry
            .file_type()
            .map_err(|e| io_err("cannot list a blob folder", &e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let rel = match dir.strip_prefix(root) {
            Ok(r) if r.as_os_str().is_empty() => name.clone(),
            Ok(r) => format!("{}/{name}", r.to_string_lossy()),
            Err(_) => continue,
        };
        // larder's folders are listed only when asked for by name (the sweep), and its
        // temporary files never.
        if dir == root
            && (name == TMP
                || (name.starts_with(RESERVED_PREFIX) && !prefix.starts_with(RESERVED_PREFIX)))
        {
            continue;
        }
        // Prune folders that cannot hold a key with the prefix.
        let could_match = |k: &str| k.starts_with(prefix) || prefix.starts_with(k);
        if ft.is_dir() {
            if could_match(&format!("{rel}/")) {
                walk(root, &entry.path(), prefix, out)?;
            }
        } else if ft.is_file() && rel.starts_with(prefix) {
            out.push(rel);
        }
    }
    Ok(())
}

/// A streamed upload: a temporary file with room for the record before the content.
struct FsWriter {
    root: Arc<PathBuf>,
    key: BlobKey,
    tmp: PathBuf,
    file: Option<File>,
    if_absent: bool,
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        // Not finished: the temporary file goes (finish takes `file` first).
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl BlobWriter for FsWriter {
    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut f = self.file.take().ok_or(Error::Closed("blob writer"))?;
            let (f, r) = tokio::task::spawn_blocking(move || {
                let r = f.write_all(&chunk);
                (f, r)
            })
            .await
            .map_err(|e| Error::backend("filesystem", format!("blob worker thread failed: {e}")))?;
            self.file = Some(f);
            r.map_err(|e| io_err("cannot write a blob", &e))
        })
    }

    fn finish<'a>(mut self: Box<Self>, meta: &'a BlobMeta) -> BoxFuture<'a, Result<()>>
    where
        Self: 'a,
    {
        Box::pin(async move {
            let mut f = self.file.take().ok_or(Error::Closed("blob writer"))?;
            let record = serde_json::to_vec(meta)
                .map_err(|e| Error::backend("filesystem", e.to_string()))?;
            if record.len() > STREAM_RECORD as usize {
                let _ = fs::remove_file(&self.tmp);
                return Err(Error::backend("filesystem", "a blob's record is too long"));
            }
            let (root, key, tmp, if_absent) = (
                self.root.clone(),
                self.key.clone(),
                self.tmp.clone(),
                self.if_absent,
            );
            blocking(move || {
                let done = (|| -> io::Result<()> {
                    f.seek(SeekFrom::Start(12))?;
                    f.write_all(&record)?;
                    f.sync_all()
                })();
                drop(f);
                if let Err(e) = done {
                    let _ = fs::remove_file(&tmp);
                    return Err(io_err("cannot write a blob", &e));
                }
                let target = resolve(&root, &key)?;
                if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                    let _ = fs::remove_file(&tmp);
                    return Err(folder_clash(&key));
                }
                place(&root, &key, &target, &tmp, if_absent)
            })
            .await
        })
    }

    fn abort<'a>(mut self: Box<Self>) -> BoxFuture<'a, Result<()>>
    where
        Self: 'a,
    {
        self.file = None;
        let tmp = self.tmp.clone();
        Box::pin(blocking(move || {
            let _ = fs::remove_file(&tmp);
            Ok(())
        }))
    }
}

impl BlobBackend for FsBlobs {
    fn system(&self) -> &'static str {
        "filesystem"
    }

    fn streams(&self) -> bool {
        true
    }

    fn put_writer<'a>(
        &'a self,
        key: &'a BlobKey,
        _meta: &'a BlobMeta,
        if_absent: bool,
    ) -> BoxFuture<'a, Result<Box<dyn BlobWriter + 'a>>> {
        let (root, key) = (self.root.clone(), key.clone());
        Box::pin(async move {
            let tmp = root.join(TMP).join(format!("{}", uuid::Uuid::new_v4()));
            let t = tmp.clone();
            let file = blocking(move || {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&t)
                    .map_err(|e| io_err("cannot write a blob", &e))?;
                let mut head = Vec::with_capacity(12 + STREAM_RECORD as usize);
                head.extend_from_slice(MAGIC);
                head.extend_from_slice(&STREAM_RECORD.to_le_bytes());
                head.resize(12 + STREAM_RECORD as usize, b' ');
                f.write_all(&head)
                    .map_err(|e| io_err("cannot write a blob", &e))?;
                Ok(f)
            })
            .await?;
            let w: Box<dyn BlobWriter + 'a> = Box::new(FsWriter {
                root,
                key,
                tmp,
                file: Some(file),
                if_absent,
            });
            Ok(w)
        })
    }

    fn get_stream<'a>(
        &'a self,
        key: &'a BlobKey,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'a, Result<Option<(BlobMeta, ByteStream)>>> {
        let (root, key) = (self.root.clone(), key.clone());
        Box::pin(async move {
            let opened = blocking(move || {
                let Some(mut f) = open_blob(&root, &key)? else {
                    return Ok(None);
                };
                let (meta, offset) = read_record(&mut f, &key)?;
                let (start, end) = match &range {
                    None => (0, meta.size),
                    Some(r) => {
                        super::check_range(r, meta.size)?;
                        (r.start, r.end)
                    }
                };
                f.seek(SeekFrom::Start(offset + start))
                    .map_err(|e| io_err("cannot read a blob", &e))?;
                Ok(Some((meta, f, end - start)))
            })
            .await?;
            let Some((meta, file, left)) = opened else {
                return Ok(None);
            };
            let chunks =
                futures_util::stream::try_unfold((file, left), |(mut f, left)| async move {
                    if left == 0 {
                        return Ok(None);
                    }
                    let n = left.min(READ_CHUNK);
                    let (f, buf) = blocking(move || {
                        let mut buf = vec![0u8; usize::try_from(n).unwrap_or(0)];
                        f.read_exact(&mut buf)
                            .map_err(|e| io_err("a blob is shorter than its record says", &e))?;
                        Ok((f, buf))
                    })
                    .await?;
                    Ok(Some((Bytes::from(buf), (f, left - n))))
                });
            let s: ByteStream = Box::pin(chunks);
            Ok(Some((meta, s)))
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a BlobKey,
        content: Bytes,
        meta: &'a BlobMeta,
        if_absent: bool,
    ) -> BoxFuture<'a, Result<()>> {
        let (root, key, meta) = (self.root.clone(), key.clone(), meta.clone());
        Box::pin(blocking(move || {
            put_blocking(&root, &key, &content, &meta, if_absent)
        }))
    }

    fn get<'a>(
        &'a self,
        key: &'a BlobKey,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'a, Result<Option<Blob>>> {
        let (root, key) = (self.root.clone(), key.clone());
        Box::pin(blocking(move || get_blocking(&root, &key, range)))
    }

    fn head<'a>(&'a self, key: &'a BlobKey) -> BoxFuture<'a, Result<Option<BlobMeta>>> {
        let (root, key) = (self.root.clone(), key.clone());
        Box::pin(blocking(move || {
            let Some(mut f) = open_blob(&root, &key)? else {
                return Ok(None);
            };
            Ok(Some(read_record(&mut f, &key)?.0))
        }))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a BlobKey>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<BlobMeta>>> {
        let (root, prefix, after) = (
            self.root.clone(),
            prefix.to_owned(),
            after.map(|a| a.as_str().to_owned()),
        );
        Box::pin(blocking(move || {
            let mut keys = Vec::new();
            walk(&root, &root, &prefix, &mut keys)?;
            keys.sort_unstable();
            let mut out = Vec::new();
            for k in keys {
                if after.as_deref().is_some_and(|a| k.as_str() <= a) {
                    continue;
                }
                let Ok(key) = BlobKey::new(k.clone()).or_else(|_| BlobKey::managed(k)) else {
                    // A file someone put there by hand under a name larder would refuse.
                    continue;
                };
                if let Some(mut f) = open_blob(&root, &key)? {
                    out.push(read_record(&mut f, &key)?.0);
                }
                if out.len() == limit {
                    break;
                }
            }
            Ok(out)
        }))
    }

    fn delete<'a>(&'a self, key: &'a BlobKey) -> BoxFuture<'a, Result<bool>> {
        let (root, key) = (self.root.clone(), key.clone());
        Box::pin(blocking(move || {
            let p = resolve(&root, &key)?;
            if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                return Ok(false);
            }
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(io_err("cannot delete a blob", &e)),
            }
            let parent = p.parent().unwrap_or(&root).to_path_buf();
            sync_dir(&parent)?;
            // Empty folders go with their last blob (object stores have no folders).
            let mut dir = parent;
            while dir != *root && fs::remove_dir(&dir).is_ok() {
                dir = dir.parent().unwrap_or(&root).to_path_buf();
            }
            Ok(true)
        }))
    }
}
