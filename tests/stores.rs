//! The session stores against one contract: memory, redb (a real file,
//! reopened) and Redis (a real redis-server, two clients as two replicas).

mod common;

use std::sync::Arc;

use chrono::Utc;
use metasgd::server::api::SupportSet;
use metasgd::server::sessions::{self, Record, Removed, SessionStore, StoreError, StoreLimits};

const ROOMY: StoreLimits = StoreLimits {
    max_sessions: 1000,
    max_per_owner: 1000,
};

fn record(id: &str, owner: &str, ttl_ms: i64) -> Record {
    let now = Utc::now();
    Record {
        id: id.into(),
        owner: owner.into(),
        model: "sinusoid".into(),
        model_version: "v1".into(),
        support: SupportSet {
            inputs: vec![serde_json::json!([0.5]), serde_json::json!([-1.25])],
            labels: vec![serde_json::json!(0.1), serde_json::json!("x")],
        },
        steps: 3,
        classes: Some(vec![serde_json::json!("a"), serde_json::json!(7)]),
        created_at: now,
        expires_at: now + chrono::Duration::milliseconds(ttl_ms),
    }
}

/// The behaviour every backend must have; `store` starts empty.
async fn contract(store: Arc<dyn SessionStore>) {
    let a = record("a", "k1", 60_000);
    assert_eq!(store.insert(&a, ROOMY).await.unwrap(), Removed::default());
    assert_eq!(
        store.get("a").await.unwrap().as_ref(),
        Some(&a),
        "a record round-trips exactly"
    );
    assert!(store.get("nope").await.unwrap().is_none());

    // Per-owner limit: refused, and other owners are unaffected.
    let two = StoreLimits {
        max_sessions: 1000,
        max_per_owner: 2,
    };
    store.insert(&record("b", "k1", 60_000), two).await.unwrap();
    match store.insert(&record("c", "k1", 60_000), two).await {
        Err(StoreError::OwnerFull(2)) => {}
        other => panic!("expected OwnerFull(2), got {other:?}"),
    }
    assert!(store.get("c").await.unwrap().is_none());
    store.insert(&record("d", "k2", 60_000), two).await.unwrap();

    // Replace keeps the id and changes the content.
    let mut a2 = a.clone();
    a2.model_version = "v2".into();
    store.replace(&a2).await.unwrap();
    assert_eq!(store.get("a").await.unwrap().unwrap().model_version, "v2");

    // Remove: once.
    assert!(store.remove(&a2).await.unwrap());
    assert!(!store.remove(&a2).await.unwrap());
    assert!(store.get("a").await.unwrap().is_none());
    assert_eq!(store.count().await.unwrap(), 2);

    // Expiry: never returned after it, and swept.
    store.insert(&record("short", "k3", 300), ROOMY).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(store.get("short").await.unwrap().is_none());
    store.purge_expired().await.unwrap();
    assert_eq!(store.count().await.unwrap(), 2);

    // A full store makes room: the oldest / soonest-expiring leaves.
    let three = StoreLimits {
        max_sessions: 3,
        max_per_owner: 1000,
    };
    store.insert(&record("e", "k4", 90_000), three).await.unwrap();
    let r = store.insert(&record("f", "k4", 120_000), three).await.unwrap();
    assert_eq!(r.evicted, 1, "{r:?}");
    assert_eq!(store.count().await.unwrap(), 3);
    assert!(
        store.get("b").await.unwrap().is_none(),
        "b was both the oldest and the soonest to expire"
    );
    assert!(store.get("f").await.unwrap().is_some());
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    contract(sessions::open("memory").unwrap()).await;
}

#[tokio::test]
async fn redb_store_keeps_the_contract_and_its_records_across_reopen() {
    let path = common::temp_dir("redb").join("sessions.redb");
    let spec = format!("redb:{}", path.display());
    contract(sessions::open(&spec).unwrap()).await;
    // Reopen the file: the records and the per-owner counts are back.
    let store = sessions::open(&spec).unwrap();
    assert_eq!(store.count().await.unwrap(), 3);
    assert_eq!(store.get("d").await.unwrap().unwrap().owner, "k2");
    let one = StoreLimits {
        max_sessions: 1000,
        max_per_owner: 1,
    };
    assert!(matches!(
        store.insert(&record("g", "k2", 60_000), one).await,
        Err(StoreError::OwnerFull(1))
    ));
}

#[tokio::test]
async fn redis_store_keeps_the_contract_across_two_clients() {
    let Some(redis) = common::RedisServer::start() else {
        return;
    };
    contract(sessions::open(&redis.url()).unwrap()).await;
    // A second client (another replica) sees the first one's records.
    let (one, two) = (
        sessions::open(&redis.url()).unwrap(),
        sessions::open(&redis.url()).unwrap(),
    );
    let r = record("shared", "k9", 60_000);
    one.insert(&r, ROOMY).await.unwrap();
    assert_eq!(two.get("shared").await.unwrap(), Some(r.clone()));
    assert!(two.remove(&r).await.unwrap());
    assert!(one.get("shared").await.unwrap().is_none());
}

#[tokio::test]
async fn redis_per_owner_limit_holds_under_racing_replicas() {
    let Some(redis) = common::RedisServer::start() else {
        return;
    };
    let stores: Vec<_> = (0..3).map(|_| sessions::open(&redis.url()).unwrap()).collect();
    let limits = StoreLimits {
        max_sessions: 1000,
        max_per_owner: 10,
    };
    let mut tasks = Vec::new();
    for i in 0..60 {
        let s = stores[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            s.insert(&record(&format!("r{i}"), "racer", 60_000), limits).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::OwnerFull(10)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 10, "exactly the limit got in");
}

#[tokio::test]
async fn redis_unreachable_is_a_start_up_error_naming_the_url() {
    let port = common::free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let e = sessions::open(&url).err().unwrap().to_string();
    assert!(e.contains(&url) && e.contains("cannot reach Redis"), "{e}");
}
