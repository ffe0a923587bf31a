//! The embedded persistent store: session records in a redb file, so they
//! survive a restart (or a crash: every write is committed durably before
//! the client hears of it). One process owns the file.
//!
//! Two tables: `sessions` (id → record JSON) and `supports` (id → support
//! blob), so a request whose adapted model is cached reads only the small
//! record. An index of (id, owner, expiry, bytes) lives in memory, rebuilt
//! from the file at open, so limits and sweeps never scan the tables.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use anyhow::Context;
use chrono::Utc;
use parking_lot::Mutex;

use super::store::{largest_owner, stored_bytes, Record, Removed, SessionStore, StoreError, StoreLimits};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const SUPPORTS: TableDefinition<&str, &[u8]> = TableDefinition::new("supports");
const BACKEND: &str = "redb";

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend(BACKEND, e)
}

#[derive(Default)]
struct Index {
    /// id → (owner, expiry in ms since the epoch, bytes)
    by_id: HashMap<String, (String, i64, usize)>,
    by_expiry: BTreeSet<(i64, String)>,
    per_owner: HashMap<String, usize>,
    bytes: usize,
}

impl Index {
    fn add(&mut self, rec: &Record, bytes: usize) {
        let exp = rec.expires_at.timestamp_millis();
        self.by_id.insert(rec.id.clone(), (rec.owner.clone(), exp, bytes));
        self.by_expiry.insert((exp, rec.id.clone()));
        *self.per_owner.entry(rec.owner.clone()).or_default() += 1;
        self.bytes += bytes;
    }

    /// The soonest-expiring session of the largest owner, skipping `taken`.
    fn victim(&self, inserting: &str, taken: &[(i64, String)]) -> Option<(i64, String)> {
        let mut counts = self.per_owner.clone();
        for (_, id) in taken {
            if let Some((o, _, _)) = self.by_id.get(id) {
                if let Some(n) = counts.get_mut(o) {
                    *n -= 1;
                }
            }
        }
        counts.retain(|_, n| *n > 0);
        let owner = largest_owner(counts.iter(), inserting)?;
        self.by_expiry
            .iter()
            .find(|(_, id)| {
                self.by_id.get(id).is_some_and(|(o, _, _)| *o == owner) && !taken.iter().any(|(_, t)| t == id)
            })
            .cloned()
    }

    fn drop_id(&mut self, id: &str) -> bool {
        let Some((owner, exp, bytes)) = self.by_id.remove(id) else {
            return false;
        };
        self.bytes -= bytes;
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
            let mut b = tx.open_table(SUPPORTS).map_err(err)?;
            for id in ids {
                t.remove(id.as_str()).map_err(err)?;
                b.remove(id.as_str()).map_err(err)?;
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

    fn insert(&self, rec: &Record, support: &[u8], limits: StoreLimits) -> Result<Removed, StoreError> {
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
        let json = serde_json::to_vec(rec).map_err(err)?;
        let size = stored_bytes(json.len(), support.len());
        limits.check_size(size)?;
        let mut victims: Vec<(i64, String)> = Vec::new();
        let (mut count, mut bytes) = (index.by_id.len(), index.bytes);
        while count >= limits.max_sessions.max(1) || bytes + size > limits.max_bytes {
            let Some(v) = index.victim(&rec.owner, &victims) else {
                break;
            };
            count -= 1;
            bytes -= index.by_id.get(&v.1).map_or(0, |e| e.2);
            victims.push(v);
        }
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut t = tx.open_table(TABLE).map_err(err)?;
            let mut b = tx.open_table(SUPPORTS).map_err(err)?;
            for (_, id) in &victims {
                t.remove(id.as_str()).map_err(err)?;
                b.remove(id.as_str()).map_err(err)?;
            }
            t.insert(rec.id.as_str(), json.as_slice()).map_err(err)?;
            b.insert(rec.id.as_str(), support).map_err(err)?;
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
        index.add(rec, size);
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

    fn support(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(SUPPORTS).map_err(err)?;
        Ok(t.get(id).map_err(err)?.map(|v| v.value().to_vec()))
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
            let b = tx.open_table(SUPPORTS)?;
            for entry in t.iter()? {
                let (k, v) = entry?;
                let blob = b.get(k.value())?.map(|s| s.value().len());
                match (serde_json::from_slice::<Record>(v.value()), blob) {
                    (Ok(rec), Some(blob)) => index.add(&rec, stored_bytes(v.value().len(), blob)),
                    (_, None) => {
                        tracing::warn!(session = k.value(), "dropping a session record without its support set");
                        bad.push(k.value().to_owned());
                    }
                    (Err(e), _) => {
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

    async fn insert(&self, rec: &Record, support: &[u8], limits: StoreLimits) -> Result<Removed, StoreError> {
        let (rec, support) = (rec.clone(), support.to_vec());
        self.blocking(move |i| i.insert(&rec, &support, limits)).await
    }

    async fn replace(&self, rec: &Record) -> Result<(), StoreError> {
        let rec = rec.clone();
        self.blocking(move |i| i.replace(&rec)).await
    }

    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let id = id.to_owned();
        self.blocking(move |i| i.get(&id)).await
    }

    async fn support(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let id = id.to_owned();
        self.blocking(move |i| i.support(&id)).await
    }

    async fn owned(&self, owner: &str) -> Result<usize, StoreError> {
        Ok(self.inner.index.lock().per_owner.get(owner).copied().unwrap_or(0))
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

    async fn bytes(&self) -> Result<usize, StoreError> {
        Ok(self.inner.index.lock().bytes)
    }
}
