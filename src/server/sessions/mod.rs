//! Session records and the stores that keep them.
//!
//! A [`Record`] is the recipe of an adapted model: owner, model name and
//! version, the support set as the client sent it, and the step count.
//! Replaying the recipe reproduces the adapted parameters bit for bit on
//! the same device, so a store keeps only records, and each replica keeps
//! its own bounded cache of adapted parameters (`server::cache`).
//!
//! Backends, picked by `--sessions`:
//! - `memory`: this process only, LRU-bounded;
//! - `redb:PATH`: an embedded file that survives restarts (one process);
//! - `redis://…`: shared by every replica.
//!
//! Limits are the same everywhere: an owner (API key) at its session limit
//! is refused; a full store makes room by dropping the least recently used
//! session (memory) or the one closest to expiry (redb, Redis).

mod memory;
mod persistent;
mod shared;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use memory::MemoryStore;
pub use persistent::RedbStore;
pub use shared::RedisStore;

use super::api::SupportSet;

/// What reproduces one adapted model, as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub id: String,
    /// The key id of the API key that created it ("" when auth is off).
    pub owner: String,
    pub model: String,
    /// The model version the session was adapted with.
    pub model_version: String,
    pub support: SupportSet,
    pub steps: usize,
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
    /// Most live sessions of one owner; beyond it an insert is refused.
    pub max_per_owner: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the owner already holds {0} sessions, the limit")]
    OwnerFull(usize),
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
    /// Stores a new record; returns what had to leave to make room.
    async fn insert(&self, rec: &Record, limits: StoreLimits) -> Result<Removed, StoreError>;
    /// Overwrites an existing record (a re-adaptation), keeping its expiry.
    async fn replace(&self, rec: &Record) -> Result<(), StoreError>;
    /// A live record, or `None`.
    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError>;
    /// Deletes a record; `true` when it existed.
    async fn remove(&self, rec: &Record) -> Result<bool, StoreError>;
    /// Drops expired records.
    async fn purge_expired(&self) -> Result<Removed, StoreError>;
    /// Records held (for Redis: by every replica).
    async fn count(&self) -> Result<usize, StoreError>;
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
    fn unknown_backends_are_refused_with_the_choices() {
        let e = open("postgres://x").err().unwrap().to_string();
        assert!(e.contains("memory, redb:PATH or redis://"), "{e}");
    }
}
