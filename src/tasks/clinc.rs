//! CLINC150 (`data_full.json`, `domains.json`): intent-labelled utterances,
//! embedded once by the frozen encoder and cached.
//!
//! The 150 intents fall in 10 domains of 15. Meta-training uses the intents
//! of 7 domains; validation and test use the intents of the other 3
//! ([`HELD_OUT_DOMAINS`]), which training never sees. Out-of-scope
//! utterances are not used.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use crate::encoder::{Encoder, EncoderSpec};

/// The domains held out for validation and test.
pub const HELD_OUT_DOMAINS: [&str; 3] = ["travel", "utility", "work"];

/// Embedded utterances of some intents, grouped by intent.
pub struct IntentData {
    pub dim: usize,
    /// Intent names, sorted.
    pub intents: Vec<String>,
    /// Per intent: its utterances' rows in `embeddings`.
    pub rows: Vec<Vec<usize>>,
    /// Row-major `[texts, dim]`.
    pub embeddings: Vec<f32>,
    /// Per text: its word-piece ids, special tokens left out (for token buckets).
    pub tokens: Vec<Vec<u32>>,
}

impl IntentData {
    pub fn embedding(&self, row: usize) -> &[f32] {
        &self.embeddings[row * self.dim..(row + 1) * self.dim]
    }

    /// The same utterances with `buckets` token buckets after each
    /// embedding, as an encoder with `lexical: buckets` gives them.
    pub fn with_lexical(&self, buckets: usize) -> IntentData {
        let ids = self.tokens.iter().map(|t| t.iter().copied());
        IntentData {
            dim: self.dim + buckets,
            intents: self.intents.clone(),
            rows: self.rows.clone(),
            embeddings: crate::encoder::lexical::widen(&self.embeddings, self.dim, buckets, ids),
            tokens: self.tokens.clone(),
        }
    }
}

/// Which intents: those of the held-out domains, of all the others, or of
/// all ten (the `intents-hwu64` protocol, which holds out HWU64 scenarios).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domains {
    Training,
    HeldOut,
    All,
}

impl Domains {
    fn includes(self, domain: &str) -> bool {
        let held_out = HELD_OUT_DOMAINS.contains(&domain);
        match self {
            Domains::Training => !held_out,
            Domains::HeldOut => held_out,
            Domains::All => true,
        }
    }
}

/// One set of utterances: the intents of some domains, in some splits of
/// `data_full.json` (`train`, `val`, `test`).
pub type Set<'a> = (Domains, &'a [&'a str]);

/// The utterances of each set, as `(text, intent)`, reading the files once.
pub fn utterances(dir: &Path, sets: &[Set]) -> anyhow::Result<Vec<Vec<(String, String)>>> {
    let read = |name: &str| -> anyhow::Result<serde_json::Value> {
        let p = dir.join(name);
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "cannot read {} (CLINC150: data_full.json and domains.json from github.com/clinc/oos-eval)",
                p.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", p.display()))
    };
    let doms: BTreeMap<String, Vec<String>> =
        serde_json::from_value(read("domains.json")?).context("domains.json: expected {domain: [intent, ...]}")?;
    for d in HELD_OUT_DOMAINS {
        anyhow::ensure!(doms.contains_key(d), "domains.json has no domain {d:?}");
    }
    let full: HashMap<String, Vec<(String, String)>> = serde_json::from_value(read("data_full.json")?)
        .context("data_full.json: expected {split: [[text, intent], ...]}")?;
    sets.iter()
        .map(|&(domains, splits)| {
            let keep: Vec<&String> = doms
                .iter()
                .filter(|(d, _)| domains.includes(d))
                .flat_map(|(_, intents)| intents)
                .collect();
            let mut out = Vec::new();
            for s in splits {
                let rows = full
                    .get(*s)
                    .with_context(|| format!("data_full.json has no split {s:?}"))?;
                out.extend(rows.iter().filter(|(_, i)| keep.contains(&i)).cloned());
            }
            anyhow::ensure!(!out.is_empty(), "no utterances for {domains:?} in {splits:?}");
            Ok(out)
        })
        .collect()
}

/// Embeds `utterances` with `encoder`, reading and writing a cache file
/// keyed by the encoder and the texts under `cache/embeddings`.
pub fn embed(utterances: Vec<(String, String)>, encoder: &Encoder, cache: &Path) -> anyhow::Result<IntentData> {
    let dim = encoder.spec.dim;
    let path = cache_file(cache, &encoder.spec, &utterances);
    let texts: Vec<String> = utterances.iter().map(|(t, _)| t.clone()).collect();
    let embeddings = match read_cache(&path, texts.len(), dim) {
        Some(e) => e,
        None => {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let bar = indicatif::ProgressBar::new(refs.len() as u64).with_message("embedding");
            let mut e = Vec::with_capacity(refs.len() * dim);
            for chunk in refs.chunks(256) {
                e.extend(encoder.embed(chunk)?);
                bar.inc(chunk.len() as u64);
            }
            bar.finish_and_clear();
            write_cache(&path, &e, texts.len(), dim)?;
            e
        }
    };
    let mut by_intent: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, (_, intent)) in utterances.iter().enumerate() {
        by_intent.entry(intent.clone()).or_default().push(i);
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    Ok(IntentData {
        dim,
        intents: by_intent.keys().cloned().collect(),
        rows: by_intent.into_values().collect(),
        embeddings,
        tokens: encoder.content_ids(&refs)?,
    })
}

fn cache_file(cache: &Path, spec: &EncoderSpec, utterances: &[(String, String)]) -> PathBuf {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(spec).unwrap_or_default());
    for (t, _) in utterances {
        h.update(t.as_bytes());
        h.update([0u8]);
    }
    cache
        .join("embeddings")
        .join(format!("{}.safetensors", hex::encode(h.finalize())))
}

fn read_cache(path: &Path, n: usize, dim: usize) -> Option<Vec<f32>> {
    let t = candle_core::safetensors::load(path, &Device::Cpu)
        .ok()?
        .remove("embeddings")?;
    if t.dims() != [n, dim] {
        return None;
    }
    t.flatten_all().ok()?.to_vec1::<f32>().ok()
}

fn write_cache(path: &Path, e: &[f32], n: usize, dim: usize) -> anyhow::Result<()> {
    let t = Tensor::from_slice(e, (n, dim), &Device::Cpu)?;
    let dir = path.parent().context("cache path")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = crate::fetch::temp_path(path);
    candle_core::safetensors::save(&HashMap::from([("embeddings".to_string(), t)]), &tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
