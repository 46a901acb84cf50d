//! The in-memory blob backend: the reference model of the conformance suite.

use std::collections::BTreeMap;
use std::future::ready;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{Blob, BlobBackend, BlobKey, BlobMeta, slice};
use crate::backend::BoxFuture;
use crate::error::{Error, Result};

/// Blobs in a map (clones share it).
#[derive(Debug, Clone, Default)]
pub struct MemoryBlobs {
    map: Arc<Mutex<BTreeMap<String, (BlobMeta, Bytes)>>>,
}

impl MemoryBlobs {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, (BlobMeta, Bytes)>) -> T) -> T {
        let mut g = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }
}

impl BlobBackend for MemoryBlobs {
    fn system(&self) -> &'static str {
        "memory"
    }

    fn put<'a>(
        &'a self,
        key: &'a BlobKey,
        content: Bytes,
        meta: &'a BlobMeta,
        if_absent: bool,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(ready(self.with(|m| {
            if if_absent && m.contains_key(key.as_str()) {
                return Err(Error::AlreadyExists {
                    entity: "blob",
                    id: key.as_str().to_owned(),
                });
            }
            m.insert(key.as_str().to_owned(), (meta.clone(), content));
            Ok(())
        })))
    }

    fn get<'a>(
        &'a self,
        key: &'a BlobKey,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'a, Result<Option<Blob>>> {
        Box::pin(ready(self.with(|m| match m.get(key.as_str()) {
            None => Ok(None),
            Some((meta, content)) => Ok(Some(Blob {
                meta: meta.clone(),
                content: slice(content, range)?,
            })),
        })))
    }

    fn head<'a>(&'a self, key: &'a BlobKey) -> BoxFuture<'a, Result<Option<BlobMeta>>> {
        Box::pin(ready(Ok(
            self.with(|m| m.get(key.as_str()).map(|(meta, _)| meta.clone()))
        )))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a BlobKey>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<BlobMeta>>> {
        Box::pin(ready(Ok(self.with(|m| {
            m.range::<str, _>((
                after.map_or(std::ops::Bound::Included(prefix), |a| {
                    std::ops::Bound::Excluded(a.as_str())
                }),
                std::ops::Bound::Unbounded,
            ))
            .skip_while(|(k, _)| !k.starts_with(prefix) && k.as_str() < prefix)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| {
                !k.starts_with(super::RESERVED_PREFIX) || prefix.starts_with(super::RESERVED_PREFIX)
            })
            .take(limit)
            .map(|(_, (meta, _))| meta.clone())
            .collect()
        }))))
    }

    fn delete<'a>(&'a self, key: &'a BlobKey) -> BoxFuture<'a, Result<bool>> {
        Box::pin(ready(Ok(self.with(|m| m.remove(key.as_str()).is_some()))))
    }
}
