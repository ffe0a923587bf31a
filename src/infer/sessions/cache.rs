//! This replica's cache of adapted parameters, by session id, bounded by
//! the bytes the tensors hold (`--model-cache-mb`). The least recently used
//! entry leaves first; a miss is answered by replaying the adaptation.

use std::sync::Arc;

use candle_core::Tensor;
use lru::LruCache;
use parking_lot::Mutex;

/// Adapted parameters (leading task dim of 1) and their size in bytes.
pub struct Adapted {
    pub params: Vec<Tensor>,
    pub bytes: usize,
}

impl Adapted {
    pub fn new(params: Vec<Tensor>) -> Self {
        let bytes = params.iter().map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum();
        Self { params, bytes }
    }
}

struct Inner {
    lru: LruCache<String, Arc<Adapted>>,
    bytes: usize,
}

pub struct AdaptedCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl AdaptedCache {
    /// A cache holding at most `capacity` bytes of parameters (0: none).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            capacity,
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Adapted>> {
        self.inner.lock().lru.get(id).cloned()
    }

    /// Keeps `a` under `id`, evicting the least recently used entries to
    /// stay within capacity; returns how many left. An entry larger than
    /// the whole capacity is not kept.
    pub fn insert(&self, id: &str, a: Arc<Adapted>) -> usize {
        if a.bytes > self.capacity {
            return 0;
        }
        let mut g = self.inner.lock();
        if let Some(old) = g.lru.put(id.to_owned(), a.clone()) {
            g.bytes -= old.bytes;
        }
        g.bytes += a.bytes;
        let mut evicted = 0;
        while g.bytes > self.capacity {
            let Some((_, old)) = g.lru.pop_lru() else { break };
            g.bytes -= old.bytes;
            evicted += 1;
        }
        evicted
    }

    pub fn remove(&self, id: &str) {
        let mut g = self.inner.lock();
        if let Some(old) = g.lru.pop(id) {
            g.bytes -= old.bytes;
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
    use candle_core::Device;

    fn adapted(floats: usize) -> Arc<Adapted> {
        Arc::new(Adapted::new(vec![Tensor::zeros(
            floats,
            candle_core::DType::F32,
            &Device::Cpu,
        )
        .unwrap()]))
    }

    #[test]
    fn stays_within_its_bytes_evicting_the_least_recently_used() {
        let c = AdaptedCache::new(1000);
        assert_eq!(c.insert("a", adapted(100)), 0); // 400 bytes
        assert_eq!(c.insert("b", adapted(100)), 0);
        assert!(c.get("a").is_some()); // a is now the most recent
        assert_eq!(c.insert("c", adapted(100)), 1);
        assert!(c.get("b").is_none());
        assert!(c.get("a").is_some() && c.get("c").is_some());
        assert_eq!(c.usage(), (2, 800));
        c.remove("a");
        assert_eq!(c.usage(), (1, 400));
    }

    #[test]
    fn an_entry_larger_than_the_cache_is_not_kept() {
        let c = AdaptedCache::new(100);
        c.insert("big", adapted(1000));
        assert_eq!(c.usage(), (0, 0));
        let none = AdaptedCache::new(0);
        none.insert("x", adapted(1));
        assert!(none.get("x").is_none());
    }
}
