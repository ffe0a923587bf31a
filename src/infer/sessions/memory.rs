//! The in-process session store: an LRU map of records and their support
//! blobs, with per-owner counts and the bytes held. Expired records go
//! lazily on access and in the periodic sweep.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use lru::LruCache;
use parking_lot::Mutex;

use super::store::{largest_owner, stored_bytes, Record, Removed, SessionStore, StoreError, StoreLimits};

struct Entry {
    rec: Record,
    support: Arc<[u8]>,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    lru: Option<LruCache<String, Entry>>,
    per_owner: HashMap<String, usize>,
    bytes: usize,
}

impl Inner {
    fn lru(&mut self) -> &mut LruCache<String, Entry> {
        self.lru.get_or_insert_with(LruCache::unbounded)
    }

    fn pop(&mut self, id: &str) -> Option<Entry> {
        let e = self.lru().pop(id)?;
        self.bytes -= e.bytes;
        if let Some(n) = self.per_owner.get_mut(&e.rec.owner) {
            *n -= 1;
            if *n == 0 {
                self.per_owner.remove(&e.rec.owner);
            }
        }
        Some(e)
    }

    fn purge(&mut self) -> Removed {
        let now = Utc::now();
        let dead: Vec<String> = self
            .lru()
            .iter()
            .filter(|(_, e)| e.rec.expired(now))
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

    /// The least recently used session of the largest owner.
    fn victim(&mut self, inserting: &str) -> Option<String> {
        let owner = largest_owner(self.per_owner.iter(), inserting)?;
        self.lru()
            .iter()
            .rev()
            .find(|(_, e)| e.rec.owner == owner)
            .map(|(k, _)| k.clone())
    }
}

/// Sessions in this process's memory.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store; its bounds come with each insert ([`StoreLimits`]).
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait::async_trait]
impl SessionStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn insert(&self, rec: &Record, support: &[u8], limits: StoreLimits) -> Result<Removed, StoreError> {
        let json = serde_json::to_vec(rec)
            .map_err(|e| StoreError::backend("memory", e))?
            .len();
        let bytes = stored_bytes(json, support.len());
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
        limits.check_size(bytes)?;
        while g.lru().len() >= limits.max_sessions.max(1) || g.bytes + bytes > limits.max_bytes {
            let Some(id) = g.victim(&rec.owner) else { break };
            let Some(old) = g.pop(&id) else { break };
            if old.rec.expired(Utc::now()) {
                removed.expired += 1;
            } else {
                removed.evicted += 1;
            }
        }
        *g.per_owner.entry(rec.owner.clone()).or_default() += 1;
        g.bytes += bytes;
        g.lru().put(
            rec.id.clone(),
            Entry {
                rec: rec.clone(),
                support: support.into(),
                bytes,
            },
        );
        Ok(removed)
    }

    async fn replace(&self, rec: &Record) -> Result<(), StoreError> {
        let mut g = self.inner.lock();
        if let Some(e) = g.lru().peek_mut(&rec.id) {
            e.rec = rec.clone();
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let mut g = self.inner.lock();
        match g.lru().get(id) {
            Some(e) if e.rec.expired(Utc::now()) => {
                g.pop(id);
                Ok(None)
            }
            Some(e) => Ok(Some(e.rec.clone())),
            None => Ok(None),
        }
    }

    async fn support(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut g = self.inner.lock();
        let now = Utc::now();
        Ok(g.lru()
            .peek(id)
            .filter(|e| !e.rec.expired(now))
            .map(|e| e.support.to_vec()))
    }

    async fn owned(&self, owner: &str) -> Result<usize, StoreError> {
        Ok(self.inner.lock().per_owner.get(owner).copied().unwrap_or(0))
    }

    async fn remove(&self, rec: &Record) -> Result<bool, StoreError> {
        Ok(self.inner.lock().pop(&rec.id).is_some())
    }

    async fn purge_expired(&self) -> Result<Removed, StoreError> {
        Ok(self.inner.lock().purge())
    }

    async fn count(&self) -> Result<usize, StoreError> {
        Ok(self.inner.lock().lru().len())
    }

    async fn bytes(&self) -> Result<usize, StoreError> {
        Ok(self.inner.lock().bytes)
    }
}
