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

mod blob;
pub mod cache;
mod memory;
mod redb;
mod redis;
pub mod service;
mod store;

use std::sync::Arc;

pub use self::blob::{BlobInputs, BlobLabels, SupportBlob};
pub use self::memory::MemoryStore;
pub use self::redb::RedbStore;
pub use self::redis::RedisStore;
pub use self::store::{largest_owner, new_id, stored_bytes, Record, Removed, SessionStore, StoreError, StoreLimits};

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
    use crate::infer::input::{Inputs, ValidLabels, ValidSupport};
    use serde_json::Value;

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
