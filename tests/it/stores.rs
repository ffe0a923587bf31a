//! The session stores against one contract: memory, redb (a real file,
//! reopened) and Redis (a real redis-server, two clients as two replicas).

use crate::common;

use std::sync::Arc;

use chrono::Utc;
use metasgd::infer::sessions::{self, Record, Removed, SessionStore, StoreError, StoreLimits};

const ROOMY: StoreLimits = StoreLimits {
    max_sessions: 1000,
    max_bytes: 1 << 30,
    max_per_owner: 1000,
};

/// A support blob of `n` bytes whose content names the session.
fn blob(id: &str, n: usize) -> Vec<u8> {
    id.bytes().cycle().take(n).collect()
}

fn record(id: &str, owner: &str, ttl_ms: i64) -> Record {
    let now = Utc::now();
    Record {
        id: id.into(),
        owner: owner.into(),
        model: "sinusoid".into(),
        model_version: "v1".into(),
        steps: 3,
        rows: 64,
        support_size: 2,
        padded: true,
        classes: Some(vec![serde_json::json!("a"), serde_json::json!(7)]),
        created_at: now,
        expires_at: now + chrono::Duration::milliseconds(ttl_ms),
    }
}

/// The behaviour every backend must have; `store` starts empty.
async fn contract(store: Arc<dyn SessionStore>) {
    let a = record("a", "k1", 60_000);
    assert_eq!(
        store.insert(&a, &blob("a", 100), ROOMY).await.unwrap(),
        Removed::default()
    );
    assert_eq!(
        store.get("a").await.unwrap().as_ref(),
        Some(&a),
        "a record round-trips exactly"
    );
    assert_eq!(
        store.support("a").await.unwrap(),
        Some(blob("a", 100)),
        "and its support blob"
    );
    assert!(store.get("nope").await.unwrap().is_none());
    assert!(store.support("nope").await.unwrap().is_none());
    assert_eq!(store.owned("k1").await.unwrap(), 1);

    // Per-owner limit: refused, and other owners are unaffected.
    let two = StoreLimits {
        max_per_owner: 2,
        ..ROOMY
    };
    store
        .insert(&record("b", "k1", 60_000), &blob("b", 100), two)
        .await
        .unwrap();
    assert_eq!(store.owned("k1").await.unwrap(), 2);
    match store.insert(&record("c", "k1", 60_000), &blob("c", 100), two).await {
        Err(StoreError::OwnerFull(2)) => {}
        other => panic!("expected OwnerFull(2), got {other:?}"),
    }
    assert!(store.get("c").await.unwrap().is_none());
    store
        .insert(&record("d", "k2", 60_000), &blob("d", 100), two)
        .await
        .unwrap();

    // Replace keeps the id and changes the content.
    let mut a2 = a.clone();
    a2.model_version = "v2".into();
    store.replace(&a2).await.unwrap();
    assert_eq!(store.get("a").await.unwrap().unwrap().model_version, "v2");
    assert_eq!(
        store.support("a").await.unwrap(),
        Some(blob("a", 100)),
        "replace keeps the support"
    );

    // Remove: once.
    assert!(store.remove(&a2).await.unwrap());
    assert!(!store.remove(&a2).await.unwrap());
    assert!(store.get("a").await.unwrap().is_none());
    assert!(store.support("a").await.unwrap().is_none());
    assert_eq!(store.count().await.unwrap(), 2);

    // Expiry: never returned after it, and swept.
    store
        .insert(&record("short", "k3", 300), &blob("s", 100), ROOMY)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(store.get("short").await.unwrap().is_none());
    store.purge_expired().await.unwrap();
    assert_eq!(store.count().await.unwrap(), 2);

    // A full store makes room from the owner holding the most sessions,
    // the inserting owner on a tie: a burst evicts its own, not others'.
    let three = StoreLimits {
        max_sessions: 3,
        ..ROOMY
    };
    store
        .insert(&record("e", "k4", 90_000), &blob("e", 100), three)
        .await
        .unwrap();
    let r = store
        .insert(&record("f", "k4", 120_000), &blob("f", 100), three)
        .await
        .unwrap();
    assert_eq!(r.evicted, 1, "{r:?}");
    assert_eq!(store.count().await.unwrap(), 3);
    assert!(
        store.get("e").await.unwrap().is_none(),
        "k4 tied for most and was inserting: its own e left"
    );
    for kept in ["b", "d", "f"] {
        assert!(store.get(kept).await.unwrap().is_some(), "{kept} is kept");
    }
    for i in 0..5 {
        store
            .insert(&record(&format!("burst{i}"), "k4", 100_000 + i), &blob("x", 100), three)
            .await
            .unwrap();
    }
    assert!(
        store.get("b").await.unwrap().is_some() && store.get("d").await.unwrap().is_some(),
        "a burst of five from k4 left the other keys' sessions alone"
    );
    assert_eq!(store.owned("k4").await.unwrap(), 1);

    // Bounded in bytes too: room is made by bytes, and a session larger
    // than the whole store is refused.
    let before = store.bytes().await.unwrap();
    assert!(before > 300, "{before}");
    let tight = StoreLimits {
        max_bytes: before + 150,
        ..ROOMY
    };
    let r = store
        .insert(&record("big", "k1", 60_000), &blob("g", 400), tight)
        .await
        .unwrap();
    assert!(r.evicted >= 1, "{r:?}");
    assert!(store.bytes().await.unwrap() <= before + 150);
    assert!(store.get("big").await.unwrap().is_some());
    match store
        .insert(&record("huge", "k1", 60_000), &blob("h", 10_000), tight)
        .await
    {
        Err(StoreError::TooLarge { .. }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    contract(sessions::open("memory").unwrap()).await;
}

#[tokio::test]
async fn redb_store_keeps_the_contract_and_its_records_across_reopen() {
    let path = common::temp_dir("redb").join("sessions.redb");
    let spec = format!("redb:{}", path.display());
    let first = sessions::open(&spec).unwrap();
    contract(first.clone()).await;
    let (count, bytes) = (first.count().await.unwrap(), first.bytes().await.unwrap());
    drop(first);
    // Reopen the file: the records, their supports, the per-owner counts and the bytes are back.
    let store = sessions::open(&spec).unwrap();
    assert_eq!(store.count().await.unwrap(), count);
    assert_eq!(store.bytes().await.unwrap(), bytes);
    assert_eq!(store.get("big").await.unwrap().unwrap().owner, "k1");
    assert_eq!(store.support("big").await.unwrap(), Some(blob("g", 400)));
    let one = StoreLimits {
        max_per_owner: 1,
        ..ROOMY
    };
    assert!(matches!(
        store.insert(&record("g", "k1", 60_000), &blob("g", 10), one).await,
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
    one.insert(&r, &blob("shared", 64), ROOMY).await.unwrap();
    assert_eq!(two.get("shared").await.unwrap(), Some(r.clone()));
    assert_eq!(two.support("shared").await.unwrap(), Some(blob("shared", 64)));
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
        max_per_owner: 10,
        ..ROOMY
    };
    let mut tasks = Vec::new();
    for i in 0..60 {
        let s = stores[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            s.insert(&record(&format!("r{i}"), "racer", 60_000), &blob("r", 32), limits)
                .await
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
