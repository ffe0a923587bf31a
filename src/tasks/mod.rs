//! Task families: episode samplers that meta-training and evaluation draw from.

pub mod sinusoid;

use candle_core::{Device, Result};
use rand_chacha::ChaCha8Rng;

use crate::metasgd::Episode;
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
}

/// Looks a family up by name.
pub fn family(name: &str) -> Option<Box<dyn TaskFamily>> {
    match name {
        "sinusoid" => Some(Box::new(sinusoid::Sinusoid)),
        _ => None,
    }
}
