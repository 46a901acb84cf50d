//! The SQL side of blobs coordinated with the unit of work: the primitives a backend
//! implements on two tables of larder's built-in module; policy lives in
//! [`Attachments`](super::Attachments).
//!
//! - `_larder_blob_refs`: one row per live key — the blob object it points at, its size,
//!   SHA-256, content type, metadata. Written in the caller's transaction, so a reference
//!   commits and rolls back with the business rows.
//! - `_larder_blob_objects`: one row per stored object — how many references hold it and
//!   whether the sweep has claimed it. Taking a reference locks the row (PostgreSQL: the
//!   row lock of an upsert; SQLite: the one writer), and the sweep only claims a row with no
//!   reference, so an object is never deleted while a committed (or committing) reference
//!   points at it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::BlobMeta;
use crate::backend::BoxFuture;
use crate::error::Result;

/// A committed key → object reference, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BlobRef {
    /// The key callers use.
    pub key: String,
    /// The stored object it points at (`.larder-objects/…` or `.larder-cas/…`).
    pub object: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    /// Content type.
    pub content_type: Option<String>,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// When the reference was staged (microseconds since the Unix epoch).
    pub created_micros: i64,
}

impl BlobRef {
    /// A reference of `key` to `object` described by `meta`.
    pub fn new(key: &str, object: &str, meta: &BlobMeta) -> BlobRef {
        BlobRef {
            key: key.to_owned(),
            object: object.to_owned(),
            size: meta.size,
            sha256: meta.sha256.clone(),
            content_type: meta.content_type.clone(),
            metadata: meta.metadata.clone(),
            created_micros: meta.created_micros,
        }
    }

    /// The record callers see (the key's, not the object's).
    pub fn meta(&self) -> BlobMeta {
        BlobMeta {
            key: self.key.clone(),
            size: self.size,
            sha256: self.sha256.clone(),
            content_type: self.content_type.clone(),
            metadata: self.metadata.clone(),
            created_micros: self.created_micros,
        }
    }
}

/// `metadata` as stored (a JSON object; `None` when empty).
pub fn encode_metadata(m: &BTreeMap<String, String>) -> Option<String> {
    if m.is_empty() {
        None
    } else {
        serde_json::to_string(m).ok()
    }
}

/// The stored form back ([`encode_metadata`]).
pub fn decode_metadata(s: Option<&str>) -> Result<BTreeMap<String, String>> {
    match s {
        None | Some("") => Ok(BTreeMap::new()),
        Some(s) => serde_json::from_str(s).map_err(|e| {
            crate::Error::backend("blob", format!("stored blob metadata is not JSON: {e}"))
        }),
    }
}

/// Blob reference primitives inside one backend transaction.
///
/// # Contract
///
/// - `acquire` takes one reference on `object`: with `create = Some((size, now))` it
///   inserts the object row (one reference) when there is none; it increments the count of
///   an existing row unless the sweep claimed it. It returns the new count, or `None` when
///   the row is claimed (or absent and `create` is `None`), and then changes nothing. A
///   concurrent transaction that holds the row is waited for (never a lost update).
/// - `release` drops one reference (never below zero).
/// - `claim` marks `object` as being swept when no reference holds it (inserting the row
///   when there is none) and returns whether it is claimed now; a claimed object is never
///   referenced again. `forget` deletes a claimed object's row.
/// - `unreferenced` lists objects with no reference created before `before_micros`, in
///   name order, at most `limit`.
/// - `put_ref` stores the reference of its key and returns the object the key pointed at
///   before (a concurrent writer of the same key is waited for, and its object returned);
///   with `replace` off an existing reference fails with
///   [`Error::AlreadyExists`](crate::Error::AlreadyExists) (entity `blob`) and nothing
///   changes, and the transaction stays usable;
///   `delete_ref` deletes it and returns the object.
/// - `list_refs` returns references whose key starts with `prefix`, after `after`
///   (exclusive), in byte order of the key, at most `limit`.
/// - Values are bound, never interpolated.
pub trait BlobRefTransaction: Send {
    /// See the contract.
    fn acquire<'a>(
        &'a mut self,
        object: &'a str,
        create: Option<(u64, i64)>,
    ) -> BoxFuture<'a, Result<Option<u64>>>;

    /// See the contract.
    fn release<'a>(&'a mut self, object: &'a str) -> BoxFuture<'a, Result<()>>;

    /// See the contract.
    fn claim<'a>(&'a mut self, object: &'a str, now_micros: i64) -> BoxFuture<'a, Result<bool>>;

    /// See the contract.
    fn forget<'a>(&'a mut self, object: &'a str) -> BoxFuture<'a, Result<()>>;

    /// See the contract.
    fn unreferenced<'a>(
        &'a mut self,
        before_micros: i64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<String>>>;

    /// See the contract.
    fn put_ref<'a>(
        &'a mut self,
        r: &'a BlobRef,
        replace: bool,
    ) -> BoxFuture<'a, Result<Option<String>>>;

    /// See the contract.
    fn delete_ref<'a>(&'a mut self, key: &'a str) -> BoxFuture<'a, Result<Option<String>>>;

    /// The reference of `key`.
    fn get_ref<'a>(&'a mut self, key: &'a str) -> BoxFuture<'a, Result<Option<BlobRef>>>;

    /// See the contract.
    fn list_refs<'a>(
        &'a mut self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<BlobRef>>>;

    /// How many references there are and their total size, for keys starting with `prefix`.
    fn usage<'a>(&'a mut self, prefix: &'a str) -> BoxFuture<'a, Result<(u64, u64)>>;
}
