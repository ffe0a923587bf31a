//! What a session store is: the record it keeps, the bounds it enforces,
//! the eviction rule, and the trait every backend implements.

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A session's metadata, as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub id: String,
    /// The key id of the API key that created it ("" when auth is off).
    pub owner: String,
    pub model: String,
    /// The model version the session was adapted with.
    pub model_version: String,
    pub steps: usize,
    /// Examples per forward/backward chunk when it was adapted; replay uses
    /// the same, so its float operations are the same.
    pub rows: usize,
    pub support_size: usize,
    /// Adapted by the batcher, padded to its bucket (`model::batch`); a
    /// replay pads the same way. Absent in records of earlier versions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub padded: bool,
    pub classes: Option<Vec<Value>>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Record {
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        now >= self.expires_at
    }
}

/// A new 128-bit random session id, as 32 hex digits.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Sessions that left a store, by reason.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub evicted: usize,
    pub expired: usize,
}

impl Removed {
    pub fn add(&mut self, o: Removed) {
        self.evicted += o.evicted;
        self.expired += o.expired;
    }
}

/// The bounds a store enforces on insert.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// Most sessions held in all; beyond it one is dropped to make room.
    pub max_sessions: usize,
    /// Most bytes held in all (records and support blobs); beyond it
    /// sessions are dropped to make room.
    pub max_bytes: usize,
    /// Most live sessions of one owner; beyond it an insert is refused.
    pub max_per_owner: usize,
}

impl StoreLimits {
    /// Refuses a session larger than the whole store.
    pub fn check_size(&self, bytes: usize) -> Result<(), StoreError> {
        if bytes > self.max_bytes {
            return Err(StoreError::TooLarge {
                bytes,
                limit: self.max_bytes,
            });
        }
        Ok(())
    }
}

/// The owner whose session leaves to make room: the one holding the most
/// sessions, `inserting` on a tie (so a burst evicts its own first).
pub fn largest_owner<'a>(counts: impl Iterator<Item = (&'a String, &'a usize)>, inserting: &str) -> Option<String> {
    let mut best: Option<(&String, usize)> = None;
    for (o, &n) in counts {
        let better = match best {
            None => true,
            Some((b, m)) => n > m || (n == m && o == inserting && b != inserting),
        };
        if better {
            best = Some((o, n));
        }
    }
    best.map(|(o, _)| o.clone())
}

/// Bytes a session takes in a store: its record's JSON and its support blob.
pub fn stored_bytes(record_json: usize, support: usize) -> usize {
    record_json + support
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the owner already holds {0} sessions, the limit")]
    OwnerFull(usize),
    #[error("a session of {bytes} bytes is larger than the whole store ({limit} bytes)")]
    TooLarge { bytes: usize, limit: usize },
    #[error("session store ({backend}): {message}")]
    Backend { backend: &'static str, message: String },
}

impl StoreError {
    pub fn backend(backend: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Backend {
            backend,
            message: e.to_string(),
        }
    }
}

/// Where session records live. Every method is safe to call from many
/// tasks at once; an expired record is never returned.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync {
    /// `memory`, `redb` or `redis`, for metrics and logs.
    fn backend(&self) -> &'static str;
    /// Stores a new record and its support blob; returns what had to leave to make room.
    async fn insert(&self, rec: &Record, support: &[u8], limits: StoreLimits) -> Result<Removed, StoreError>;
    /// Overwrites an existing record (a re-adaptation), keeping its expiry and support.
    async fn replace(&self, rec: &Record) -> Result<(), StoreError>;
    /// A live record, or `None` (without its support blob).
    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError>;
    /// The support blob of a live record, or `None`.
    async fn support(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Live sessions of `owner`.
    async fn owned(&self, owner: &str) -> Result<usize, StoreError>;
    /// Deletes a record; `true` when it existed.
    async fn remove(&self, rec: &Record) -> Result<bool, StoreError>;
    /// Drops expired records.
    async fn purge_expired(&self) -> Result<Removed, StoreError>;
    /// Records held (for Redis: by every replica).
    async fn count(&self) -> Result<usize, StoreError>;
    /// Bytes held (records and support blobs).
    async fn bytes(&self) -> Result<usize, StoreError>;
}
