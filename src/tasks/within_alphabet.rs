//! Omniglot within one alphabet, the conditions of Lake et al.'s one-shot
//! runs: a task's N characters all come from one evaluation alphabet, the
//! support set is drawn by K drawers and the queries by Q others, the same
//! drawers for every character of the task. Each query drawer contributes
//! one drawing per character, so with Q = 1 a task is exactly one of
//! Lake's runs (20-way, one drawer as support, another as test).
//!
//! A drawing's drawer is the number after `_` in its file name
//! (`0965_07.png`: drawer 7 of that alphabet).
//!
//! Meta-training draws the same tasks from the background alphabets, each
//! task turned by a random number of quarter turns (every drawing of the
//! task alike), so that hard tasks, characters that look alike, are what
//! the body learns to tell apart.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{Device, Result};
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;

use super::episode::Episode;
use super::family::TaskFamily;
use super::omniglot::{Omniglot, OmniglotTasks};
use crate::images::{rotate, PIXELS};
use crate::model::Manifest;

/// N-way tasks within one alphabet of `data`, support and queries by different drawers.
pub struct WithinAlphabet {
    data: Arc<Omniglot>,
    n_way: usize,
    /// Turn each task by a random number of quarter turns (meta-training).
    rotations: bool,
    /// Per alphabet: its characters, each as drawer → drawing index.
    alphabets: Vec<Vec<BTreeMap<u32, usize>>>,
}

impl WithinAlphabet {
    /// Indexes `data`'s drawings by alphabet, character and drawer; with
    /// `rotations`, every task is turned by 0 to 3 quarter turns.
    pub fn new(data: Arc<Omniglot>, n_way: usize, rotations: bool) -> anyhow::Result<Self> {
        let mut by_alphabet: BTreeMap<&str, Vec<BTreeMap<u32, usize>>> = BTreeMap::new();
        for ch in &data.characters {
            let mut drawers = BTreeMap::new();
            for i in ch.first..ch.first + ch.count {
                let file = &data.files[i];
                let drawer = file
                    .rsplit_once('_')
                    .and_then(|(_, d)| d.strip_suffix(".png"))
                    .and_then(|d| d.parse::<u32>().ok())
                    .ok_or_else(|| anyhow::anyhow!("{file}: expected <character>_<drawer>.png"))?;
                drawers.insert(drawer, i);
            }
            by_alphabet.entry(&ch.alphabet).or_default().push(drawers);
        }
        let alphabets: Vec<_> = by_alphabet.into_values().filter(|a| a.len() >= n_way).collect();
        anyhow::ensure!(
            !alphabets.is_empty(),
            "no alphabet of {:?} has {n_way} characters",
            data.split
        );
        Ok(Self {
            data,
            n_way,
            rotations,
            alphabets,
        })
    }

    /// The drawing indices of one task: per label, K support then Q query drawings.
    pub fn draw(&self, rng: &mut ChaCha8Rng, k: usize, q: usize) -> Result<Vec<Vec<usize>>> {
        let alphabet = &self.alphabets[sample(rng, self.alphabets.len(), 1).index(0)];
        let chars: Vec<&BTreeMap<u32, usize>> = sample(rng, alphabet.len(), self.n_way)
            .into_iter()
            .map(|c| &alphabet[c])
            .collect();
        // Drawers who drew every chosen character.
        let common: Vec<u32> = chars[0]
            .keys()
            .copied()
            .filter(|d| chars.iter().all(|c| c.contains_key(d)))
            .collect();
        if common.len() < k + q {
            candle_core::bail!(
                "{} drawers drew all {} characters, fewer than {k} + {q}",
                common.len(),
                self.n_way
            );
        }
        let drawers: Vec<u32> = sample(rng, common.len(), k + q)
            .into_iter()
            .map(|i| common[i])
            .collect();
        Ok(chars.iter().map(|c| drawers.iter().map(|d| c[d]).collect()).collect())
    }
}

impl TaskFamily for WithinAlphabet {
    fn name(&self) -> &'static str {
        "omniglot-within-alphabet"
    }

    fn sample(
        &self,
        rng: &mut ChaCha8Rng,
        tasks: usize,
        k_support: usize,
        k_query: usize,
        device: &Device,
    ) -> Result<Episode> {
        let mut picks = (0..tasks)
            .map(|_| self.draw(rng, k_support, k_query))
            .collect::<Result<Vec<_>>>()?;
        if !self.rotations {
            return Episode::from_picks(&picks, self.n_way, k_support, PIXELS, |i| self.data.image(i), device);
        }
        // Each task's drawings, turned alike; the picks then index `turned`.
        let mut turned = Vec::new();
        for task in &mut picks {
            let turns = sample(rng, 4, 1).index(0);
            for i in task.iter_mut().flatten() {
                turned.push(rotate(self.data.image(*i), turns));
                *i = turned.len() - 1;
            }
        }
        Episode::from_picks(&picks, self.n_way, k_support, PIXELS, |i| &turned[i], device)
    }

    fn manifest(&self, name: &str) -> Manifest {
        OmniglotTasks {
            data: self.data.clone(),
            n_way: self.n_way,
            rotations: self.rotations,
        }
        .manifest(name)
    }

    fn eval_chunk(&self) -> usize {
        20
    }

    fn n_way(&self) -> Option<usize> {
        Some(self.n_way)
    }

    fn with_n_way(&self, n: usize) -> Option<Box<dyn TaskFamily>> {
        Self::new(self.data.clone(), n, self.rotations)
            .ok()
            .map(|f| Box::new(f) as Box<dyn TaskFamily>)
    }
}
