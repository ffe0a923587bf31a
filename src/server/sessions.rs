//! Sessions: the adapted models clients predict with, behind a store trait.
//!
//! A [`Session`] keeps what reproduces its adapted model (model name and
//! version, support set, steps) next to the adapted parameters, so that a
//! persistent or shared backend can store the recipe and replay it. The
//! in-memory store bounds the count with LRU eviction and drops expired
//! sessions lazily on access and in a periodic sweep.

use std::num::NonZeroUsize;
use std::sync::Arc;

use candle_core::Tensor;
use chrono::{DateTime, Utc};
use lru::LruCache;
use parking_lot::Mutex;
use rand::RngCore;
use serde_json::Value;

use super::api::SupportSet;

/// One adapted model and the recipe that produced it.
pub struct Session {
    pub id: String,
    pub model: String,
    pub model_version: String,
    pub support: SupportSet,
    pub steps: usize,
    pub classes: Option<Vec<Value>>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The adapted θ' (leading task dim of 1).
    pub params: Vec<Tensor>,
}

impl Session {
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

/// Why sessions left the store.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub evicted: usize,
    pub expired: usize,
}

/// Where sessions live. Implementations must be safe to share across threads.
pub trait SessionStore: Send + Sync {
    /// Stores a session; returns what had to leave to make room.
    fn insert(&self, session: Session) -> Removed;
    /// A live session, or `None` when unknown or expired (an expired one is dropped).
    fn get(&self, id: &str) -> (Option<Arc<Session>>, Removed);
    /// Deletes a session; `true` when it existed and was live.
    fn remove(&self, id: &str) -> bool;
    /// Drops every expired session.
    fn purge_expired(&self) -> Removed;
    /// Number of sessions held (expired ones not yet swept included).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sessions in this process's memory, LRU-bounded.
pub struct MemoryStore {
    inner: Mutex<LruCache<String, Arc<Session>>>,
}

impl MemoryStore {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(LruCache::new(NonZeroUsize::new(capacity.max(1)).unwrap())),
        }
    }
}

impl SessionStore for MemoryStore {
    fn insert(&self, session: Session) -> Removed {
        let mut lru = self.inner.lock();
        let mut removed = Removed::default();
        if lru.len() == lru.cap().get() && !lru.contains(&session.id) {
            if let Some((_, old)) = lru.pop_lru() {
                if old.expired(Utc::now()) {
                    removed.expired += 1;
                } else {
                    removed.evicted += 1;
                }
            }
        }
        lru.put(session.id.clone(), Arc::new(session));
        removed
    }

    fn get(&self, id: &str) -> (Option<Arc<Session>>, Removed) {
        let mut lru = self.inner.lock();
        match lru.get(id) {
            Some(s) if s.expired(Utc::now()) => {
                lru.pop(id);
                (None, Removed { expired: 1, evicted: 0 })
            }
            Some(s) => (Some(s.clone()), Removed::default()),
            None => (None, Removed::default()),
        }
    }

    fn remove(&self, id: &str) -> bool {
        matches!(self.inner.lock().pop(id), Some(s) if !s.expired(Utc::now()))
    }

    fn purge_expired(&self) -> Removed {
        let now = Utc::now();
        let mut lru = self.inner.lock();
        let dead: Vec<String> = lru
            .iter()
            .filter(|(_, s)| s.expired(now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &dead {
            lru.pop(k);
        }
        Removed {
            expired: dead.len(),
            evicted: 0,
        }
    }

    fn len(&self) -> usize {
        self.inner.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, ttl_ms: i64) -> Session {
        let now = Utc::now();
        Session {
            id: id.into(),
            model: "m".into(),
            model_version: "v".into(),
            support: SupportSet {
                inputs: vec![],
                labels: vec![],
            },
            steps: 1,
            classes: None,
            created_at: now,
            expires_at: now + chrono::Duration::milliseconds(ttl_ms),
            params: vec![],
        }
    }

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let s = MemoryStore::new(2);
        s.insert(session("a", 60_000));
        s.insert(session("b", 60_000));
        assert!(s.get("a").0.is_some()); // a is now the most recent
        let r = s.insert(session("c", 60_000));
        assert_eq!(r, Removed { evicted: 1, expired: 0 });
        assert!(s.get("b").0.is_none());
        assert!(s.get("a").0.is_some() && s.get("c").0.is_some());
    }

    #[test]
    fn expired_sessions_are_gone() {
        let s = MemoryStore::new(10);
        s.insert(session("old", -1));
        s.insert(session("new", 60_000));
        let (got, removed) = s.get("old");
        assert!(got.is_none());
        assert_eq!(removed.expired, 1);
        s.insert(session("old2", -1));
        assert_eq!(s.purge_expired().expired, 1);
        assert_eq!(s.len(), 1);
        assert!(!s.remove("old2"));
        assert!(s.remove("new"));
    }

    #[test]
    fn ids_are_128_bit_hex_and_distinct() {
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
