//! This encoder's cache of embeddings by text: least recently used first
//! out, bounded by the bytes it holds (`--embedding-cache-mb`). A replay, or
//! a support sentence sent again, is not encoded again.
//!
//! A cached vector must be the one the encoder would compute now, in
//! whatever batch, or replays would stop being bit-exact: the encoder turns
//! the cache off at load when padding in a batch changes an embedding's bits
//! (`Encoder::load`). One cache per encoder, so its key is the text alone.

use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

/// Bytes an entry is counted for beyond its text and vector (the map's own).
const OVERHEAD: usize = 64;

struct Inner {
    lru: LruCache<String, Arc<[f32]>>,
    bytes: usize,
}

pub struct EmbeddingCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

fn size(text: &str, v: &[f32]) -> usize {
    text.len() + 4 * v.len() + OVERHEAD
}

impl EmbeddingCache {
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            capacity: capacity_bytes,
        }
    }

    pub fn get(&self, text: &str) -> Option<Arc<[f32]>> {
        self.inner.lock().lru.get(text).cloned()
    }

    /// Keeps `v` for `text`, dropping the least recently used to stay in bounds.
    pub fn insert(&self, text: &str, v: &[f32]) {
        let n = size(text, v);
        if n > self.capacity {
            return;
        }
        let mut g = self.inner.lock();
        if let Some(old) = g.lru.put(text.to_owned(), v.into()) {
            g.bytes -= size(text, &old);
        }
        g.bytes += n;
        while g.bytes > self.capacity {
            let Some((t, old)) = g.lru.pop_lru() else { break };
            g.bytes -= size(&t, &old);
        }
    }

    /// (entries, bytes) held now.
    pub fn usage(&self) -> (usize, usize) {
        let g = self.inner.lock();
        (g.lru.len(), g.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_bytes_dropping_the_least_recently_used() {
        let c = EmbeddingCache::new(3 * size("aa", &[0.0; 8]));
        for t in ["aa", "bb", "cc"] {
            c.insert(t, &[1.0; 8]);
        }
        assert!(c.get("aa").is_some()); // now the most recent
        c.insert("dd", &[2.0; 8]);
        assert!(c.get("bb").is_none() && c.get("aa").is_some() && c.get("dd").is_some());
        assert_eq!(c.usage(), (3, 3 * size("aa", &[0.0; 8])));
        c.insert("huge", &[0.0; 1000]);
        assert!(c.get("huge").is_none(), "an entry larger than the cache is not kept");
    }
}
