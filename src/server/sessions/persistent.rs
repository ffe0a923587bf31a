//! The embedded persistent store: session records in a redb file, so they
//! survive a restart (or a crash: every write is committed durably before
//! the client hears of it). One process owns the file.
//!
//! An index of (id, owner, expiry) lives in memory, rebuilt from the file at
//! open, so limits and sweeps never scan the table.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use parking_lot::Mutex;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Record, Removed, SessionStore, StoreError, StoreLimits};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const BACKEND: &str = "redb";

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend(BACKEND, e)
}

#[derive(Default)]
struct Index {
    /// id → (owner, expiry in ms since the epoch)
    by_id: HashMap<String, (String, i64)>,
    by_expiry: BTreeSet<(i64, String)>,
    per_owner: HashMap<String, usize>,
}

impl Index {
    fn add(&mut self, rec: &Record) {
        let exp = rec.expires_at.timestamp_millis();
        self.by_id.insert(rec.id.clone(), (rec.owner.clone(), exp));
        self.by_expiry.insert((exp, rec.id.clone()));
        *self.per_owner.entry(rec.owner.clone()).or_default() += 1;
    }

    fn drop_id(&mut self, id: &str) -> bool {
        let Some((owner, exp)) = self.by_id.remove(id) else {
            return false;
        };
        self.by_expiry.remove(&(exp, id.to_owned()));
        if let Some(n) = self.per_owner.get_mut(&owner) {
            *n -= 1;
            if *n == 0 {
                self.per_owner.remove(&owner);
            }
        }
        true
    }

    fn expired(&self, now_ms: i64) -> Vec<String> {
        self.by_expiry
            .iter()
            .take_while(|(e, _)| *e <= now_ms)
            .map(|(_, id)| id.clone())
            .collect()
    }
}

struct Inner {
    db: Database,
    index: Mutex<Index>,
}

impl Inner {
    fn delete(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut t = tx.open_table(TABLE).map_err(err)?;
            for id in ids {
                t.remove(id.as_str()).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    fn purge(&self, index: &mut Index) -> Result<Removed, StoreError> {
        let dead = index.expired(Utc::now().timestamp_millis());
        self.delete(&dead)?;
        for id in &dead {
            index.drop_id(id);
        }
        Ok(Removed {
            expired: dead.len(),
            evicted: 0,
        })
    }

    fn insert(&self, rec: &Record, limits: StoreLimits) -> Result<Removed, StoreError> {
        let mut index = self.index.lock();
        let mut removed = Removed::default();
        if index.per_owner.get(&rec.owner).copied().unwrap_or(0) >= limits.max_per_owner {
            removed.add(self.purge(&mut index)?);
            let owned = index.per_owner.get(&rec.owner).copied().unwrap_or(0);
            if owned >= limits.max_per_owner {
                return Err(StoreError::OwnerFull(owned));
            }
        }
        let now = Utc::now().timestamp_millis();
        let excess = (index.by_id.len() + 1).saturating_sub(limits.max_sessions.max(1));
        let victims: Vec<(i64, String)> = index.by_expiry.iter().take(excess).cloned().collect();
        let bytes = serde_json::to_vec(rec).map_err(err)?;
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut t = tx.open_table(TABLE).map_err(err)?;
            for (_, id) in &victims {
                t.remove(id.as_str()).map_err(err)?;
            }
            t.insert(rec.id.as_str(), bytes.as_slice()).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        for (exp, id) in &victims {
            index.drop_id(id);
            if *exp <= now {
                removed.expired += 1;
            } else {
                removed.evicted += 1;
            }
        }
        index.add(rec);
        Ok(removed)
    }

    fn replace(&self, rec: &Record) -> Result<(), StoreError> {
        let index = self.index.lock();
        if !index.by_id.contains_key(&rec.id) {
            return Ok(());
        }
        let bytes = serde_json::to_vec(rec).map_err(err)?;
        let tx = self.db.begin_write().map_err(err)?;
        tx.open_table(TABLE)
            .map_err(err)?
            .insert(rec.id.as_str(), bytes.as_slice())
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(TABLE).map_err(err)?;
        let Some(v) = t.get(id).map_err(err)? else {
            return Ok(None);
        };
        let rec: Record = serde_json::from_slice(v.value()).map_err(err)?;
        Ok((!rec.expired(Utc::now())).then_some(rec))
    }

    fn remove(&self, id: &str) -> Result<bool, StoreError> {
        let mut index = self.index.lock();
        if !index.by_id.contains_key(id) {
            return Ok(false);
        }
        self.delete(&[id.to_owned()])?;
        Ok(index.drop_id(id))
    }
}

/// Session records in a redb file (`--sessions redb:PATH`).
pub struct RedbStore {
    inner: Arc<Inner>,
}

impl RedbStore {
    /// Opens (or creates) the file and indexes the records in it. Records
    /// that no longer decode are dropped with a warning.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let db =
            Database::create(path).with_context(|| format!("opening the session file {} (redb)", path.display()))?;
        let mut index = Index::default();
        let mut bad = Vec::new();
        let tx = db.begin_write()?;
        {
            let t = tx.open_table(TABLE)?;
            for entry in t.iter()? {
                let (k, v) = entry?;
                match serde_json::from_slice::<Record>(v.value()) {
                    Ok(rec) => index.add(&rec),
                    Err(e) => {
                        tracing::warn!(session = k.value(), error = %e, "dropping an unreadable session record");
                        bad.push(k.value().to_owned());
                    }
                }
            }
        }
        tx.commit()?;
        let inner = Inner {
            db,
            index: Mutex::new(index),
        };
        inner.delete(&bad)?;
        tracing::info!(path = %path.display(), sessions = inner.index.lock().by_id.len(), "session file opened");
        Ok(Self { inner: Arc::new(inner) })
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner)).await.map_err(err)?
    }
}

#[async_trait::async_trait]
impl SessionStore for RedbStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn insert(&self, rec: &Record, limits: StoreLimits) -> Result<Removed, StoreError> {
        let rec = rec.clone();
        self.blocking(move |i| i.insert(&rec, limits)).await
    }

    async fn replace(&self, rec: &Record) -> Result<(), StoreError> {
        let rec = rec.clone();
        self.blocking(move |i| i.replace(&rec)).await
    }

    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let id = id.to_owned();
        self.blocking(move |i| i.get(&id)).await
    }

    async fn remove(&self, rec: &Record) -> Result<bool, StoreError> {
        let id = rec.id.clone();
        self.blocking(move |i| i.remove(&id)).await
    }

    async fn purge_expired(&self) -> Result<Removed, StoreError> {
        self.blocking(|i| {
            let mut index = i.index.lock();
            i.purge(&mut index)
        })
        .await
    }

    async fn count(&self) -> Result<usize, StoreError> {
        Ok(self.inner.index.lock().by_id.len())
    }
}
