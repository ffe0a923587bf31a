//! The shared store: session records in Redis, so every replica behind a
//! load balancer serves every session.
//!
//! Keys (one Redis, not a cluster: the scripts touch keys they compute):
//! - `metasgd:s:{id}`: the record as JSON, expiring with the session;
//! - `metasgd:b:{id}`: its support blob, expiring with it;
//! - `metasgd:exp`: sorted set of ids by expiry (limits, sweeps);
//! - `metasgd:own`: hash of id → owner; `metasgd:sz`: hash of id → bytes;
//! - `metasgd:bytes`: the bytes held in all;
//! - `metasgd:owners`: sorted set of owners by their session count;
//! - `metasgd:o:{owner}`: sorted set of the owner's ids by expiry.
//!
//! Inserts and deletes run as Lua scripts, so the limits hold across replicas.

use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{AsyncCommands, Script};
use chrono::Utc;
use tokio::sync::OnceCell;

use super::store::{stored_bytes, Record, Removed, SessionStore, StoreError, StoreLimits};

const BACKEND: &str = "redis";
const PREFIX: &str = "metasgd:";

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend(BACKEND, e)
}

/// Drops one id from every structure; shared by the scripts.
const DROP: &str = r#"
local prefix = ARGV[1]
local function drop(v)
  local o = redis.call('HGET', prefix .. 'own', v)
  if o then
    redis.call('ZREM', prefix .. 'o:' .. o, v)
    if tonumber(redis.call('ZINCRBY', prefix .. 'owners', -1, o)) <= 0 then redis.call('ZREM', prefix .. 'owners', o) end
  end
  local sz = redis.call('HGET', prefix .. 'sz', v)
  if sz then redis.call('DECRBY', prefix .. 'bytes', sz) end
  redis.call('HDEL', prefix .. 'own', v)
  redis.call('HDEL', prefix .. 'sz', v)
  redis.call('ZREM', prefix .. 'exp', v)
  redis.call('DEL', prefix .. 'b:' .. v)
  return redis.call('DEL', prefix .. 's:' .. v)
end
local function purge(now)
  local dead = redis.call('ZRANGEBYSCORE', prefix .. 'exp', '-inf', now, 'LIMIT', 0, 1000)
  for _, v in ipairs(dead) do drop(v) end
  return #dead
end
"#;

/// ARGV: prefix, now_ms, id, owner, expiry_ms, record, max_sessions,
/// max_per_owner, support, bytes, max_bytes.
/// Returns {0, expired, evicted}, or {-1, owned} when the owner is full.
/// The session that leaves to make room is the soonest to expire of the
/// owner holding the most sessions (the inserting owner on a tie).
const INSERT: &str = r#"
local now, id, owner, exp, rec = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local max_total, max_owner = tonumber(ARGV[7]), tonumber(ARGV[8])
local support, size, max_bytes = ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11])
local okey = prefix .. 'o:' .. owner
local expired = 0
if redis.call('ZCOUNT', okey, '(' .. now, '+inf') >= max_owner then
  return {-1, redis.call('ZCOUNT', okey, '(' .. now, '+inf')}
end
expired = purge(now)
local evicted = 0
local function held() return tonumber(redis.call('GET', prefix .. 'bytes') or '0') end
while redis.call('ZCARD', prefix .. 'exp') >= max_total or held() + size > max_bytes do
  local top = redis.call('ZREVRANGE', prefix .. 'owners', 0, 0, 'WITHSCORES')
  if not top[1] then break end
  local victim_owner = top[1]
  local mine = redis.call('ZSCORE', prefix .. 'owners', owner)
  if mine and tonumber(mine) >= tonumber(top[2]) then victim_owner = owner end
  local v = redis.call('ZRANGE', prefix .. 'o:' .. victim_owner, 0, 0)[1]
  if not v then break end
  drop(v)
  evicted = evicted + 1
end
redis.call('SET', prefix .. 's:' .. id, rec, 'PXAT', exp)
redis.call('SET', prefix .. 'b:' .. id, support, 'PXAT', exp)
redis.call('ZADD', prefix .. 'exp', exp, id)
redis.call('ZADD', okey, exp, id)
redis.call('HSET', prefix .. 'own', id, owner)
redis.call('HSET', prefix .. 'sz', id, size)
redis.call('INCRBY', prefix .. 'bytes', size)
redis.call('ZINCRBY', prefix .. 'owners', 1, owner)
return {0, expired, evicted}
"#;

/// ARGV: prefix, id. Returns 1 when the record existed.
const REMOVE: &str = "return drop(ARGV[2])";

/// ARGV: prefix, now_ms. Returns how many expired ids were dropped.
const PURGE: &str = "return purge(ARGV[2])";

/// Session records in Redis (`--sessions redis://HOST:PORT[/DB]`).
pub struct RedisStore {
    client: ::redis::Client,
    conn: OnceCell<ConnectionManager>,
    insert: Script,
    remove: Script,
    purge: Script,
}

impl RedisStore {
    /// Checks that Redis answers (so a wrong URL fails at start), and
    /// connects lazily, with reconnection, on first use.
    pub fn connect(url: &str) -> anyhow::Result<Self> {
        let client = ::redis::Client::open(url).map_err(|e| anyhow::anyhow!("--sessions {url}: {e}"))?;
        let mut c = client
            .get_connection_with_timeout(Duration::from_secs(3))
            .map_err(|e| anyhow::anyhow!("--sessions {url}: cannot reach Redis: {e}"))?;
        ::redis::cmd("PING")
            .query::<String>(&mut c)
            .map_err(|e| anyhow::anyhow!("--sessions {url}: Redis does not answer PING: {e}"))?;
        Ok(Self {
            client,
            conn: OnceCell::new(),
            insert: Script::new(&format!("{DROP}{INSERT}")),
            remove: Script::new(&format!("{DROP}{REMOVE}")),
            purge: Script::new(&format!("{DROP}{PURGE}")),
        })
    }

    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        self.conn
            .get_or_try_init(|| async {
                let cfg = ::redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(2);
                self.client.get_connection_manager_with_config(cfg).await
            })
            .await
            .cloned()
            .map_err(err)
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

#[async_trait::async_trait]
impl SessionStore for RedisStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn insert(&self, rec: &Record, support: &[u8], limits: StoreLimits) -> Result<Removed, StoreError> {
        let json = serde_json::to_string(rec).map_err(err)?;
        let size = stored_bytes(json.len(), support.len());
        limits.check_size(size)?;
        let mut c = self.conn().await?;
        let out: Vec<i64> = self
            .insert
            .arg(PREFIX)
            .arg(now_ms())
            .arg(&rec.id)
            .arg(&rec.owner)
            .arg(rec.expires_at.timestamp_millis())
            .arg(json)
            .arg(limits.max_sessions.max(1))
            .arg(limits.max_per_owner.min(i64::MAX as usize))
            .arg(support)
            .arg(size)
            .arg(limits.max_bytes.min(i64::MAX as usize))
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        match out.as_slice() {
            [0, expired, evicted] => Ok(Removed {
                expired: *expired as usize,
                evicted: *evicted as usize,
            }),
            [-1, owned] => Err(StoreError::OwnerFull(*owned as usize)),
            other => Err(err(format!("unexpected insert reply {other:?}"))),
        }
    }

    async fn replace(&self, rec: &Record) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec).map_err(err)?;
        let mut c = self.conn().await?;
        ::redis::cmd("SET")
            .arg(format!("{PREFIX}s:{}", rec.id))
            .arg(json)
            .arg("PXAT")
            .arg(rec.expires_at.timestamp_millis())
            .arg("XX")
            .query_async::<()>(&mut c)
            .await
            .map_err(err)
    }

    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let mut c = self.conn().await?;
        let v: Option<Vec<u8>> = c.get(format!("{PREFIX}s:{id}")).await.map_err(err)?;
        let Some(v) = v else { return Ok(None) };
        let rec: Record = serde_json::from_slice(&v).map_err(err)?;
        Ok((!rec.expired(Utc::now())).then_some(rec))
    }

    async fn support(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut c = self.conn().await?;
        c.get(format!("{PREFIX}b:{id}")).await.map_err(err)
    }

    async fn owned(&self, owner: &str) -> Result<usize, StoreError> {
        let mut c = self.conn().await?;
        c.zcount(format!("{PREFIX}o:{owner}"), format!("({}", now_ms()), "+inf")
            .await
            .map_err(err)
    }

    async fn remove(&self, rec: &Record) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let n: i64 = self
            .remove
            .arg(PREFIX)
            .arg(&rec.id)
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(n > 0)
    }

    async fn purge_expired(&self) -> Result<Removed, StoreError> {
        let mut c = self.conn().await?;
        let n: i64 = self
            .purge
            .arg(PREFIX)
            .arg(now_ms())
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(Removed {
            expired: n as usize,
            evicted: 0,
        })
    }

    async fn count(&self) -> Result<usize, StoreError> {
        let mut c = self.conn().await?;
        c.zcard(format!("{PREFIX}exp")).await.map_err(err)
    }

    async fn bytes(&self) -> Result<usize, StoreError> {
        let mut c = self.conn().await?;
        let n: Option<i64> = c.get(format!("{PREFIX}bytes")).await.map_err(err)?;
        Ok(n.unwrap_or(0).max(0) as usize)
    }
}
