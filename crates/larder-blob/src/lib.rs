//! Object-store backends for larder's blobs, built on
//! [`object_store`](https://docs.rs/object_store) (apache/arrow-rs-object-store): S3 and
//! S3-compatible servers (feature `s3`), Azure Blob (feature `azure`). No request signing
//! or authentication is written here.
//!
//! [`ObjectStoreBlobs`] adapts any `object_store::ObjectStore` to
//! [`BlobBackend`]: the record (SHA-256, creation time, content type, user metadata)
//! travels as the object's attributes (`x-amz-meta-larder_sha256`, `x-ms-meta-…`), so a
//! blob and its record are written by one atomic `PUT`; "only if absent" is a conditional
//! `PUT` (`If-None-Match: *`). [`blobs_from_url`] builds a [`Blobs`] from
//! `file:///…`, `memory:`, `s3://bucket?…` or `azure://container?…`;
//! [`redact`] shows such a URL without its secrets.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use larder_core::backend::BoxFuture;
use larder_core::blob::{
    Blob, BlobBackend, BlobKey, BlobMeta, BlobWriter, Blobs, ByteStream, RESERVED_PREFIX,
    check_range,
};
use larder_core::{Error, Result};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, GetRange, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, WriteMultipart,
};

// Record names as read back (after `-` → `_`). Written with `_` where names must be
// identifiers (Azure) and with `-` elsewhere: S3 lowercases names, and servers behind WSGI
// or proxies turn `_` in header names into `-` or drop them. larder's user metadata names
// have no `-`, so the mapping back is exact.
const SHA: &str = "larder_sha256";
const CREATED: &str = "larder_created";
/// The content type as given (services answer a default one when none was set).
const TYPE: &str = "larder_type";
/// User metadata names are stored with this prefix.
const USER: &str = "u_";

/// Blobs in an `object_store` (S3, Azure, or any other implementation).
#[derive(Debug, Clone)]
pub struct ObjectStoreBlobs {
    store: Arc<dyn ObjectStore>,
    system: &'static str,
    /// Write metadata names with `-` instead of `_` (everything but Azure).
    dashes: bool,
}

impl ObjectStoreBlobs {
    /// Wraps `store`; `system` names it in spans (`s3`, `azure`, …).
    pub fn new(store: Arc<dyn ObjectStore>, system: &'static str) -> ObjectStoreBlobs {
        ObjectStoreBlobs {
            store,
            system,
            dashes: system != "azure",
        }
    }

    /// The object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn err(&self, what: &str, e: object_store::Error) -> Error {
        Error::backend(self.system, format!("{what}: {e}"))
    }
}

fn path(key: &BlobKey) -> Path {
    // `BlobKey` is stricter than `Path::parse` (no control characters, no `.`/`..`, no
    // empty segments), so the object's name is the key itself, unencoded.
    Path::parse(key.as_str()).unwrap_or_else(|_| Path::from(key.as_str()))
}

fn attributes(meta: &BlobMeta, dashes: bool) -> Attributes {
    let name = |n: &str| -> Cow<'static, str> {
        Cow::Owned(if dashes {
            n.replace('_', "-")
        } else {
            n.to_owned()
        })
    };
    let mut a = Attributes::new();
    if let Some(t) = &meta.content_type {
        a.insert(Attribute::ContentType, AttributeValue::from(t.clone()));
        a.insert(
            Attribute::Metadata(name(TYPE)),
            AttributeValue::from(t.clone()),
        );
    }
    a.insert(
        Attribute::Metadata(name(SHA)),
        AttributeValue::from(meta.sha256.clone()),
    );
    a.insert(
        Attribute::Metadata(name(CREATED)),
        AttributeValue::from(meta.created_micros.to_string()),
    );
    for (k, v) in &meta.metadata {
        a.insert(
            Attribute::Metadata(name(&format!("{USER}{k}"))),
            AttributeValue::from(v.clone()),
        );
    }
    a
}

fn record(system: &'static str, key: &str, size: u64, a: &Attributes) -> Result<BlobMeta> {
    let mut sha = None;
    let mut created = 0;
    let mut content_type = None;
    let mut metadata = BTreeMap::new();
    for (k, v) in a {
        let Attribute::Metadata(name) = k else {
            continue;
        };
        let name = name.to_ascii_lowercase().replace('-', "_");
        if name == SHA {
            sha = Some(v.as_ref().to_owned());
        } else if name == TYPE {
            content_type = Some(v.as_ref().to_owned());
        } else if name == CREATED {
            created = v.as_ref().parse().unwrap_or(0);
        } else if let Some(user) = name.strip_prefix(USER) {
            metadata.insert(user.to_owned(), v.as_ref().to_owned());
        }
    }
    let sha256 = sha.ok_or_else(|| {
        Error::backend(
            system,
            format!("object `{key}` has no larder record (was it written by another tool?)"),
        )
    })?;
    let mut meta = BlobMeta::default_for(key);
    meta.size = size;
    meta.sha256 = sha256;
    meta.content_type = content_type;
    meta.metadata = metadata;
    meta.created_micros = created;
    Ok(meta)
}

impl ObjectStoreBlobs {
    async fn head_of(&self, key: &BlobKey) -> Result<Option<BlobMeta>> {
        let opts = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match self.store.get_opts(&path(key), opts).await {
            Ok(r) => Ok(Some(record(
                self.system,
                key.as_str(),
                r.meta.size,
                &r.attributes,
            )?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("head", e)),
        }
    }
}

/// Parts of a streamed upload: S3's minimum part is 5 MiB; 8 MiB keeps the part count of
/// a 64 GiB object under S3's 10,000.
const PART: usize = 8 * 1024 * 1024;
/// Parts uploaded at once.
const PARTS_IN_FLIGHT: usize = 2;

/// A streamed upload: a multipart upload, completed (and visible) at `finish`.
struct MultipartWriter {
    w: WriteMultipart,
    system: &'static str,
}

impl BlobWriter for MultipartWriter {
    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.w
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(|e| Error::backend(self.system, format!("put: {e}")))?;
            self.w.put(chunk);
            Ok(())
        })
    }

    fn finish<'a>(self: Box<Self>, _meta: &'a BlobMeta) -> BoxFuture<'a, Result<()>>
    where
        Self: 'a,
    {
        let system = self.system;
        Box::pin(async move {
            self.w
                .finish()
                .await
                .map(|_| ())
                .map_err(|e| Error::backend(system, format!("put: {e}")))
        })
    }

    fn abort<'a>(self: Box<Self>) -> BoxFuture<'a, Result<()>>
    where
        Self: 'a,
    {
        let system = self.system;
        Box::pin(async move {
            self.w
                .abort()
                .await
                .map_err(|e| Error::backend(system, format!("abort: {e}")))
        })
    }
}

impl BlobBackend for ObjectStoreBlobs {
    fn system(&self) -> &'static str {
        self.system
    }

    fn streams(&self) -> bool {
        true
    }

    fn put_writer<'a>(
        &'a self,
        key: &'a BlobKey,
        meta: &'a BlobMeta,
        if_absent: bool,
    ) -> BoxFuture<'a, Result<Box<dyn BlobWriter + 'a>>> {
        Box::pin(async move {
            if if_absent {
                return Err(Error::Unsupported {
                    operation: "a streamed put only if absent (multipart uploads cannot be \
                                conditional); put the content whole",
                    backend: self.system,
                });
            }
            // The hash is known only after the last part; the metadata goes first.
            let mut m = meta.clone();
            m.sha256 = String::new();
            let opts = PutMultipartOptions {
                attributes: attributes(&m, self.dashes),
                ..PutMultipartOptions::default()
            };
            let upload = self
                .store
                .put_multipart_opts(&path(key), opts)
                .await
                .map_err(|e| self.err("put", e))?;
            let w: Box<dyn BlobWriter + 'a> = Box::new(MultipartWriter {
                w: WriteMultipart::new_with_chunk_size(upload, PART),
                system: self.system,
            });
            Ok(w)
        })
    }

    fn get_stream<'a>(
        &'a self,
        key: &'a BlobKey,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'a, Result<Option<(BlobMeta, ByteStream)>>> {
        Box::pin(async move {
            if let Some(r) = &range {
                let Some(meta) = self.head_of(key).await? else {
                    return Ok(None);
                };
                check_range(r, meta.size)?;
                if r.start == r.end {
                    let empty: ByteStream = Box::pin(futures_util::stream::empty());
                    return Ok(Some((meta, empty)));
                }
            }
            let opts = GetOptions {
                range: range.clone().map(GetRange::Bounded),
                ..GetOptions::default()
            };
            let r = match self.store.get_opts(&path(key), opts).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(self.err("get", e)),
            };
            let meta = record(self.system, key.as_str(), r.meta.size, &r.attributes)?;
            let system = self.system;
            let s: ByteStream = Box::pin(
                r.into_stream()
                    .map(move |c| c.map_err(|e| Error::backend(system, format!("get: {e}")))),
            );
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
        Box::pin(async move {
            let opts = PutOptions {
                mode: if if_absent {
                    PutMode::Create
                } else {
                    PutMode::Overwrite
                },
                attributes: attributes(meta, self.dashes),
                ..PutOptions::default()
            };
            match self
                .store
                .put_opts(&path(key), PutPayload::from(content), opts)
                .await
            {
                Ok(_) => Ok(()),
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) if if_absent => Err(Error::AlreadyExists {
                    entity: "blob",
                    id: key.as_str().to_owned(),
                }),
                Err(e) => Err(self.err("put", e)),
            }
        })
    }

    fn get<'a>(
        &'a self,
        key: &'a BlobKey,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'a, Result<Option<Blob>>> {
        Box::pin(async move {
            if let Some(r) = &range {
                // object_store refuses empty ranges and clamps ranges past the end; larder
                // returns the empty range and refuses the rest, as every backend does.
                let Some(meta) = self.head_of(key).await? else {
                    return Ok(None);
                };
                check_range(r, meta.size)?;
                if r.start == r.end {
                    return Ok(Some(Blob::new(meta, Bytes::new())));
                }
            }
            let opts = GetOptions {
                range: range.clone().map(GetRange::Bounded),
                ..GetOptions::default()
            };
            let r = match self.store.get_opts(&path(key), opts).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(self.err("get", e)),
            };
            let meta = record(self.system, key.as_str(), r.meta.size, &r.attributes)?;
            let content = r.bytes().await.map_err(|e| self.err("get", e))?;
            Ok(Some(Blob::new(meta, content)))
        })
    }

    fn head<'a>(&'a self, key: &'a BlobKey) -> BoxFuture<'a, Result<Option<BlobMeta>>> {
        Box::pin(self.head_of(key))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a BlobKey>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<BlobMeta>>> {
        Box::pin(async move {
            // object_store lists by whole segments: list the folder that holds the prefix
            // and keep the keys that start with it.
            let folder = prefix
                .rfind('/')
                .map(|i| Path::from_iter(prefix[..i].split('/')));
            let mut stream = match after {
                Some(a) => self.store.list_with_offset(folder.as_ref(), &path(a)),
                None => self.store.list(folder.as_ref()),
            };
            let mut out = Vec::new();
            while let Some(item) = stream.next().await {
                let m = item.map_err(|e| self.err("list", e))?;
                let name = m.location.as_ref();
                let hidden =
                    name.starts_with(RESERVED_PREFIX) && !prefix.starts_with(RESERVED_PREFIX);
                if !name.starts_with(prefix) || hidden {
                    continue;
                }
                if after.is_some_and(|a| name <= a.as_str()) {
                    continue;
                }
                let Ok(key) = BlobKey::new(name).or_else(|_| BlobKey::managed(name)) else {
                    continue;
                };
                // The listing carries no user metadata: one HEAD per listed blob.
                if let Some(meta) = self.head_of(&key).await? {
                    out.push(meta);
                }
                if out.len() == limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn delete<'a>(&'a self, key: &'a BlobKey) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            // Object stores answer a delete of a missing object with success: ask first.
            if self.head_of(key).await?.is_none() {
                return Ok(false);
            }
            match object_store::ObjectStoreExt::delete(&*self.store, &path(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
                Err(e) => Err(self.err("delete", e)),
            }
        })
    }
}

/// `url` with its password and every query value that is not known to be harmless
/// (`region`, `endpoint`, `account`, …) replaced by `***`, failing closed — the same
/// redaction as the database URL (`larder_core::settings::redact_url`).
pub fn redact(url: &str) -> String {
    larder_core::settings::redact_url(url)
}

fn config(msg: impl Into<String>) -> Error {
    Error::Configuration(msg.into())
}

/// Builds a blob store from a URL:
/// - `file:///var/lib/app/blobs` or a plain folder path — the local filesystem (the
///   embedded default);
/// - `memory:` — in memory (tests);
/// - `s3://bucket?region=…&endpoint=http://127.0.0.1:9000&access_key_id=…&secret_access_key=…`
///   (feature `s3`; anything not given comes from the `AWS_*` environment variables, as
///   `object_store` reads them; an `http://` endpoint allows plain HTTP);
/// - `azure://container?account=…&access_key=…&endpoint=…` or `azure://container?emulator=true`
///   (feature `azure`; Azurite's well-known development account unless given).
///
/// Errors name the URL with its secrets redacted.
pub async fn blobs_from_url(url: &str) -> Result<Blobs> {
    let shown = redact(url);
    let u = match url::Url::parse(url) {
        Ok(u) if u.scheme().len() > 1 => u,
        // A plain folder path (`larder-blobs`, `./var/blobs`, `C:\blobs`).
        Ok(_) | Err(url::ParseError::RelativeUrlWithoutBase) => {
            return Blobs::filesystem(url).await;
        }
        Err(e) => return Err(config(format!("blob URL `{shown}` is not a URL: {e}"))),
    };
    let q: BTreeMap<String, String> = u
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    match u.scheme() {
        "file" => {
            let p = u
                .to_file_path()
                .map_err(|()| config(format!("blob URL `{shown}`: not a local path")))?;
            Blobs::filesystem(p).await
        }
        "memory" => Ok(Blobs::memory()),
        "s3" => s3(&u, &q, &shown),
        "azure" => azure(&u, &q, &shown),
        other => Err(config(format!(
            "blob URL `{shown}`: unknown scheme `{other}`; use file://, s3://, azure:// or memory:"
        ))),
    }
}

#[cfg(feature = "cloud")]
fn install_crypto() {
    // reqwest is built without a rustls provider (no aws-lc-rs build): use ring, which is
    // already in the tree. Installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(feature = "s3")]
fn s3(u: &url::Url, q: &BTreeMap<String, String>, shown: &str) -> Result<Blobs> {
    use object_store::aws::AmazonS3Builder;
    install_crypto();
    let bucket = u
        .host_str()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| config(format!("blob URL `{shown}`: name the bucket (s3://bucket)")))?;
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    for (k, v) in q {
        b = match k.as_str() {
            "region" => b.with_region(v),
            "endpoint" => b.with_endpoint(v).with_allow_http(v.starts_with("http://")),
            "access_key_id" => b.with_access_key_id(v),
            "secret_access_key" => b.with_secret_access_key(v),
            "token" => b.with_token(v),
            other => {
                return Err(config(format!(
                    "blob URL `{shown}`: unknown parameter `{other}` (region, endpoint, \
                     access_key_id, secret_access_key, token)"
                )));
            }
        };
    }
    let store = b
        .build()
        .map_err(|e| config(format!("blob URL `{shown}`: {e}")))?;
    Ok(Blobs::new(ObjectStoreBlobs::new(Arc::new(store), "s3")))
}

#[cfg(not(feature = "s3"))]
fn s3(_: &url::Url, _: &BTreeMap<String, String>, shown: &str) -> Result<Blobs> {
    Err(config(format!(
        "blob URL `{shown}`: S3 support is not compiled in; enable larder-blob's `s3` feature"
    )))
}

#[cfg(feature = "azure")]
fn azure(u: &url::Url, q: &BTreeMap<String, String>, shown: &str) -> Result<Blobs> {
    use object_store::azure::MicrosoftAzureBuilder;
    install_crypto();
    let container = u.host_str().filter(|c| !c.is_empty()).ok_or_else(|| {
        config(format!(
            "blob URL `{shown}`: name the container (azure://container)"
        ))
    })?;
    let mut b = MicrosoftAzureBuilder::from_env().with_container_name(container);
    for (k, v) in q {
        b = match k.as_str() {
            "account" => b.with_account(v),
            "access_key" => b.with_access_key(v),
            "endpoint" => b
                .with_endpoint(v.clone())
                .with_allow_http(v.starts_with("http://")),
            "emulator" => b.with_use_emulator(v == "true"),
            other => {
                return Err(config(format!(
                    "blob URL `{shown}`: unknown parameter `{other}` (account, access_key, \
                     endpoint, emulator)"
                )));
            }
        };
    }
    let store = b
        .build()
        .map_err(|e| config(format!("blob URL `{shown}`: {e}")))?;
    Ok(Blobs::new(ObjectStoreBlobs::new(Arc::new(store), "azure")))
}

#[cfg(not(feature = "azure"))]
fn azure(_: &url::Url, _: &BTreeMap<String, String>, shown: &str) -> Result<Blobs> {
    Err(config(format!(
        "blob URL `{shown}`: Azure support is not compiled in; enable larder-blob's `azure` \
         feature"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show() {
        let r = redact("s3://b?region=x&access_key_id=AKIA&secret_access_key=SEKRIT&token=T");
        assert!(
            !r.contains("SEKRIT") && !r.contains("=T") && !r.contains("AKIA"),
            "{r}"
        );
        assert!(r.contains("region=x"), "{r}");
        let r = redact("azure://c?account=dev&access_key=Zm9v");
        assert!(!r.contains("Zm9v"), "{r}");
    }
}
