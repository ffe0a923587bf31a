//! Few-shot intent classification episodes over embedded utterances
//! (CLINC150, and HWU64 in the `intents-hwu64` protocol).

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Result};
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;

use super::clinc::{self, IntentData};
use super::episode::Episode;
use super::family::TaskFamily;
use crate::encoder::{minilm, Encoder, EncoderOptions};
use crate::model::{Architecture, InputKind, InputSpec, Manifest, TaskKind};

/// Embeddings (unit length) are scaled to this length before the head.
pub const FEATURE_SCALE: f64 = 10.0;

/// The most intents one session of the shipped model may use.
pub const MAX_WAY: usize = 100;

/// N-way K-shot episodes: N distinct intents in random order (labels are a
/// random permutation), then K + Q distinct utterances of each; the first K
/// are the support set, the other Q the query set.
pub struct IntentTasks {
    pub data: Arc<IntentData>,
    pub n_way: usize,
    /// The protocol's name (`intents` or `intents-hwu64`), as in `--task`
    /// and the manifest's `family`, so `eval` finds its held-out set.
    pub family: &'static str,
}

/// The embedded utterances of each CLINC150 set, with the shipped encoder.
pub fn load(data: &Path, sets: &[clinc::Set]) -> anyhow::Result<Vec<Arc<IntentData>>> {
    embed_sets(clinc::utterances(data, sets)?)
}

/// Each set of `(text, intent)` utterances embedded with the shipped
/// encoder (loaded once; embeddings cached).
pub fn embed_sets(sets: Vec<Vec<(String, String)>>) -> anyhow::Result<Vec<Arc<IntentData>>> {
    let opts = EncoderOptions {
        threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        ..Default::default()
    };
    let encoder = Encoder::load(&minilm::spec(), Path::new("."), &opts)?;
    sets.into_iter()
        .map(|utt| Ok(Arc::new(clinc::embed(utt, &encoder, &opts.cache)?)))
        .collect()
}

impl TaskFamily for IntentTasks {
    fn name(&self) -> &'static str {
        self.family
    }

    fn sample(
        &self,
        rng: &mut ChaCha8Rng,
        tasks: usize,
        k_support: usize,
        k_query: usize,
        device: &Device,
    ) -> Result<Episode> {
        let (n, d) = (self.n_way, self.data.dim);
        let mut all = Vec::with_capacity(tasks);
        for _ in 0..tasks {
            let intents = sample(rng, self.data.intents.len(), n).into_vec();
            let mut picks = Vec::with_capacity(n);
            for &i in &intents {
                let rows = &self.data.rows[i];
                if rows.len() < k_support + k_query {
                    candle_core::bail!(
                        "intent {} has {} utterances, fewer than {k_support} + {k_query}",
                        self.data.intents[i],
                        rows.len()
                    );
                }
                let p: Vec<usize> = sample(rng, rows.len(), k_support + k_query)
                    .into_iter()
                    .map(|j| rows[j])
                    .collect();
                picks.push(p);
            }
            all.push(picks);
        }
        Episode::from_picks(&all, n, k_support, d, |i| self.data.embedding(i), device)
    }

    fn eval_chunk(&self) -> usize {
        100
    }

    fn n_way(&self) -> Option<usize> {
        Some(self.n_way)
    }

    fn with_n_way(&self, n: usize) -> Option<Box<dyn TaskFamily>> {
        Some(Box::new(IntentTasks {
            data: self.data.clone(),
            n_way: n,
            family: self.family,
        }))
    }

    fn with_lexical(&self, buckets: usize) -> Option<Box<dyn TaskFamily>> {
        Some(Box::new(IntentTasks {
            data: Arc::new(self.data.with_lexical(buckets)),
            n_way: self.n_way,
            family: self.family,
        }))
    }

    fn manifest(&self, name: &str) -> Manifest {
        let spec = minilm::spec();
        Manifest {
            inner_loss: Default::default(),
            update_rule: Default::default(),
            inner_grad_clip: None,
            name: name.to_string(),
            task: TaskKind::Classification,
            input: InputSpec {
                kind: InputKind::Text,
                shape: vec![spec.dim],
            },
            architecture: Architecture::Features {
                dim: spec.dim,
                hidden: Vec::new(),
                scale: FEATURE_SCALE,
                center: false,
                cosine: false,
                linear_body: false,
                task_center: false,
                proto_start: false,
                lexical: 0,
            },
            n_way: Some(MAX_WAY),
            default_steps: 1,
            max_steps: 20,
            weights: "model.safetensors".into(),
            family: Some(self.family.into()),
            encoder: Some(spec),
            limits: Default::default(),
            description: "Few-shot text intent classification: a Meta-SGD head on all-MiniLM-L6-v2 sentence embeddings; any number of intents up to n_way (one shared, meta-learned head row per intent).".into(),
        }
    }
}
