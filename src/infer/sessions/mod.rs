//! Sessions: records, the stores that keep them, this replica's cache of
//! adapted models, and the service that ties them to the engine.
//!
//! A session is stored in two parts:
//! - its [`Record`]: owner, model name and version, steps, chunk rows,
//!   class labels, times. Small JSON, read on every request;
//! - its support set, decoded ([`SupportBlob`]: f32 inputs, or texts, and
//!   the labels), in a compact binary blob read only to replay.
//!
//! Replaying the recipe reproduces the adapted parameters bit for bit on
//! the same device, so a store keeps no tensors; each replica keeps its
//! own bounded cache of adapted parameters ([`cache`]).
//!
//! Backends, picked by `--sessions`:
//! - `memory`: this process only;
//! - `redb:PATH`: an embedded file that survives restarts (one process);
//! - `redis://…`: shared by every replica.
//!
//! Limits are the same everywhere: an owner (API key) at its session limit
//! is refused; a store full by count or by bytes makes room by dropping a
//! session of the owner that holds the most (the inserting owner on a tie):
//! its least recently used (memory) or soonest to expire (redb, Redis). So
//! one key's burst evicts that key's own sessions, not other keys' live ones.

pub mod cache;
mod memory;
mod redb;
mod redis;
pub mod service;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use self::memory::MemoryStore;
pub use self::redb::RedbStore;
pub use self::redis::RedisStore;

use super::input::{Inputs, ValidLabels, ValidSupport};

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
    pub classes: Option<Vec<Value>>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A decoded support set, as stored: inputs and labels, without the class
/// values (they are in the [`Record`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum BlobInputs {
    Values(Vec<f32>),
    Texts(Vec<String>),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum BlobLabels {
    Values(Vec<f32>),
    Classes(Vec<u32>),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SupportBlob {
    pub inputs: BlobInputs,
    pub labels: BlobLabels,
}

impl SupportBlob {
    /// The compact bytes of a decoded support set (postcard: f32 as 4 bytes).
    pub fn encode(s: &ValidSupport) -> Vec<u8> {
        let blob = SupportBlob {
            inputs: match &s.inputs {
                Inputs::Values(v) => BlobInputs::Values(v.clone()),
                Inputs::Texts(t) => BlobInputs::Texts(t.clone()),
            },
            labels: match &s.labels {
                ValidLabels::Values(v) => BlobLabels::Values(v.clone()),
                ValidLabels::Classes { index, .. } => BlobLabels::Classes(index.clone()),
            },
        };
        postcard::to_stdvec(&blob).expect("a support blob always serializes")
    }

    /// The support set back, with the record's classes.
    pub fn decode(bytes: &[u8], classes: Option<&[Value]>) -> Result<ValidSupport, String> {
        let b: SupportBlob = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
        let labels = match (b.labels, classes) {
            (BlobLabels::Values(v), None) => ValidLabels::Values(v),
            (BlobLabels::Classes(index), Some(c)) if index.iter().all(|&k| (k as usize) < c.len()) => {
                ValidLabels::Classes {
                    index,
                    classes: c.to_vec(),
                }
            }
            _ => return Err("the stored labels do not match the record's classes".into()),
        };
        let n = match &labels {
            ValidLabels::Values(v) => v.len(),
            ValidLabels::Classes { index, .. } => index.len(),
        };
        let inputs = match b.inputs {
            BlobInputs::Values(v) => Inputs::Values(v),
            BlobInputs::Texts(t) => Inputs::Texts(t),
        };
        Ok(ValidSupport { inputs, n, labels })
    }
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

/// Opens the store that `spec` names: `memory`, `redb:PATH` or `redis://…`.
pub fn open(spec: &str) -> anyhow::Result<Arc<dyn SessionStore>> {
    if spec == "memory" {
        Ok(Arc::new(MemoryStore::new()))
    } else if let Some(path) = spec.strip_prefix("redb:") {
        Ok(Arc::new(RedbStore::open(std::path::Path::new(path))?))
    } else if spec.starts_with("redis://") || spec.starts_with("rediss://") || spec.starts_with("redis+unix://") {
        Ok(Arc::new(RedisStore::connect(spec)?))
    } else {
        anyhow::bail!("--sessions {spec:?}: expected memory, redb:PATH or redis://HOST:PORT[/DB]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_128_bit_hex_and_distinct() {
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn the_largest_owner_pays_and_the_inserting_owner_wins_ties() {
        let counts: std::collections::HashMap<String, usize> =
            [("a".to_string(), 3), ("b".to_string(), 5), ("c".to_string(), 5)].into();
        assert_eq!(largest_owner(counts.iter(), "c").as_deref(), Some("c"));
        assert_eq!(
            largest_owner(counts.iter(), "a").as_deref().map(|o| o != "a"),
            Some(true)
        );
        assert_eq!(largest_owner(std::iter::empty(), "a"), None);
    }

    #[test]
    fn a_support_blob_round_trips_and_is_compact() {
        let s = ValidSupport {
            inputs: Inputs::Values((0..784 * 3).map(|i| i as f32 / 7.0).collect()),
            n: 3,
            labels: ValidLabels::Classes {
                index: vec![0, 1, 0],
                classes: vec![Value::from("a"), Value::from(7)],
            },
        };
        let bytes = SupportBlob::encode(&s);
        assert!(bytes.len() < 784 * 3 * 4 + 64, "{}", bytes.len());
        let back = SupportBlob::decode(&bytes, Some(&[Value::from("a"), Value::from(7)])).unwrap();
        match (back.inputs, s.inputs) {
            (Inputs::Values(a), Inputs::Values(b)) => assert_eq!(a, b),
            _ => panic!("inputs changed kind"),
        }
        assert_eq!(back.n, 3);
        assert!(SupportBlob::decode(&bytes, None).is_err());
        assert!(SupportBlob::decode(&bytes, Some(&[Value::from("a")])).is_err());
    }

    #[test]
    fn unknown_backends_are_refused_with_the_choices() {
        let e = open("postgres://x").err().unwrap().to_string();
        assert!(e.contains("memory, redb:PATH or redis://"), "{e}");
    }
}
