//! The in-process session store: an LRU map of records with per-owner
//! counts. Expired records go lazily on access and in the periodic sweep.

use std::collections::HashMap;

use chrono::Utc;
use lru::LruCache;
use parking_lot::Mutex;

use super::{Record, Removed, SessionStore, StoreError, StoreLimits};

struct Inner {
    lru: LruCache<String, Record>,
    per_owner: HashMap<String, usize>,
}

impl Inner {
    fn forget(&mut self, rec: &Record) {
        if let Some(n) = self.per_owner.get_mut(&rec.owner) {
            *n -= 1;
            if *n == 0 {
                self.per_owner.remove(&rec.owner);
            }
        }
    }

    fn pop(&mut self, id: &str) -> Option<Record> {
        let rec = self.lru.pop(id)?;
        self.forget(&rec);
        Some(rec)
    }

    fn purge(&mut self) -> Removed {
        let now = Utc::now();
        let dead: Vec<String> = self
            .lru
            .iter()
            .filter(|(_, r)| r.expired(now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &dead {
            self.pop(k);
        }
        Removed {
            expired: dead.len(),
            evicted: 0,
        }
    }
}

/// Sessions in this process's memory; a full store drops its least
/// recently used record.
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store; its bounds come with each insert ([`StoreLimits`]).
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                per_owner: HashMap::new(),
            }),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl SessionStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn insert(&self, rec: &Record, limits: StoreLimits) -> Result<Removed, StoreError> {
        let mut g = self.inner.lock();
        let mut removed = Removed::default();
        let owned = g.per_owner.get(&rec.owner).copied().unwrap_or(0);
        if owned >= limits.max_per_owner {
            removed.add(g.purge());
            let owned = g.per_owner.get(&rec.owner).copied().unwrap_or(0);
            if owned >= limits.max_per_owner {
                return Err(StoreError::OwnerFull(owned));
            }
        }
        while g.lru.len() >= limits.max_sessions.max(1) {
            let Some((_, old)) = g.lru.pop_lru() else { break };
            g.forget(&old);
            if old.expired(Utc::now()) {
                removed.expired += 1;
            } else {
                removed.evicted += 1;
            }
        }
        *g.per_owner.entry(rec.owner.clone()).or_default() += 1;
        g.lru.put(rec.id.clone(), rec.clone());
        Ok(removed)
    }

    async fn replace(&self, rec: &Record) -> Result<(), StoreError> {
        let mut g = self.inner.lock();
        if let Some(r) = g.lru.peek_mut(&rec.id) {
            *r = rec.clone();
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let mut g = self.inner.lock();
        match g.lru.get(id) {
            Some(r) if r.expired(Utc::now()) => {
                g.pop(id);
                Ok(None)
            }
            Some(r) => Ok(Some(r.clone())),
            None => Ok(None),
        }
    }

    async fn remove(&self, rec: &Record) -> Result<bool, StoreError> {
        Ok(self.inner.lock().pop(&rec.id).is_some())
    }

    async fn purge_expired(&self) -> Result<Removed, StoreError> {
        Ok(self.inner.lock().purge())
    }

    async fn count(&self) -> Result<usize, StoreError> {
        Ok(self.inner.lock().lru.len())
    }
}
