//! The one trait every task family implements.

use candle_core::{Device, Result};
use rand_chacha::ChaCha8Rng;

use super::episode::Episode;
use crate::model::Manifest;

/// A distribution over tasks that can be sampled in batches.
pub trait TaskFamily: Send + Sync {
    /// Short name, as in `--task` and the manifest's `family`.
    fn name(&self) -> &'static str;
    /// `tasks` tasks, each with `k_support` support and `k_query` query points.
    fn sample(
        &self,
        rng: &mut ChaCha8Rng,
        tasks: usize,
        k_support: usize,
        k_query: usize,
        device: &Device,
    ) -> Result<Episode>;
    /// The manifest a model of this family is served with.
    fn manifest(&self, name: &str) -> Manifest;
    /// How many tasks evaluation samples at a time (bounds its memory).
    fn eval_chunk(&self) -> usize {
        usize::MAX
    }
    /// Classes per task, for classification families.
    fn n_way(&self) -> Option<usize> {
        None
    }
    /// The same family with `n` classes per task (classification families).
    fn with_n_way(&self, _n: usize) -> Option<Box<dyn TaskFamily>> {
        None
    }
    /// The same tasks with `buckets` token buckets after each input (text
    /// families; the encoder's `lexical`).
    fn with_lexical(&self, _buckets: usize) -> Option<Box<dyn TaskFamily>> {
        None
    }
}
