//! The MiniLM encoder (int8 ONNX through ort, fetched from PyPI) against
//! sentence-transformers' fp32 reference: token ids and embeddings.
//!
//! The fixture was written once by `scripts/reference-embeddings.py`.

use std::sync::OnceLock;

use metasgd::encoder::{minilm, Encoder, EncoderOptions};
use serde_json::Value;

fn encoder() -> &'static Encoder {
    static E: OnceLock<Encoder> = OnceLock::new();
    E.get_or_init(|| {
        let opts = EncoderOptions {
            threads: 2,
            ..Default::default()
        };
        Encoder::load(&minilm::spec(), std::path::Path::new("."), &opts).expect("load the MiniLM encoder")
    })
}

struct Item {
    text: String,
    ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn reference() -> Vec<Item> {
    let raw = include_str!("../fixtures/minilm_reference.json");
    let v: Value = serde_json::from_str(raw).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| Item {
            text: it["text"].as_str().unwrap().to_string(),
            ids: it["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect(),
            embedding: it["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect(),
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn token_ids_match_the_python_tokenizer_for_unicode_empty_and_long_texts() {
    let items = reference();
    let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
    let tokens = encoder().tokenize(&texts).unwrap();
    for (it, t) in items.iter().zip(&tokens) {
        assert_eq!(t.ids, it.ids, "token ids of {:?}", it.text);
        assert!(t.mask.iter().all(|&m| m == 1));
    }
    // The empty and blank texts are [CLS] [SEP]; the long one is cut to 256 tokens.
    assert_eq!(tokens[7].ids, vec![101, 102]);
    assert_eq!(tokens[8].ids, vec![101, 102]);
    assert_eq!(tokens[9].ids.len(), 256);
    assert_eq!(*tokens[9].ids.last().unwrap(), 102);
}

#[test]
fn int8_embeddings_match_sentence_transformers_fp32() {
    let items = reference();
    let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
    let got = encoder().embed(&texts).unwrap();
    assert_eq!(got.len(), items.len() * 384);
    let mut cos = Vec::new();
    for (it, row) in items.iter().zip(got.chunks(384)) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{:?}: norm {norm}", it.text);
        let c = cosine(row, &it.embedding);
        assert!(c > 0.99, "{:?}: cosine {c} with the fp32 reference", it.text);
        cos.push(c);
    }
    let mean = cos.iter().sum::<f32>() / cos.len() as f32;
    eprintln!("cosine with fp32 sentence-transformers: mean {mean:.5}, per text {cos:?}");
    assert!(mean > 0.998, "mean cosine {mean}");
    // Nearest reference for each embedding is its own text.
    for (i, row) in got.chunks(384).enumerate() {
        let best = (0..items.len())
            .filter(|&j| j != 8) // "   " and "" are the same text to the model
            .max_by(|&a, &b| cosine(row, &items[a].embedding).total_cmp(&cosine(row, &items[b].embedding)))
            .unwrap();
        assert!(
            best == i || (i == 8 && best == 7),
            "text {i} is nearest to reference {best}"
        );
    }
}

#[test]
fn a_text_embeds_the_same_alone_and_padded_in_a_batch() {
    let texts = ["short", "a much longer sentence that forces padding of the short one"];
    let batch = encoder().embed(&texts).unwrap();
    let alone = encoder().embed(&texts[..1]).unwrap();
    let diff = batch[..384]
        .iter()
        .zip(&alone)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "padding changed the embedding by {diff}");
}

/// The embedding cache gives the bits a fresh batch would: MiniLM int8
/// embeds a text to the same bits alone and padded beside longer ones, so
/// the encoder turns its cache on; repeated and new texts mixed in one call
/// equal an uncached encoder's output, and each distinct text is kept once.
#[test]
fn cached_embeddings_are_the_bits_a_fresh_batch_gives() {
    let opts = EncoderOptions {
        threads: 2,
        cache_bytes: 1 << 20,
        ..Default::default()
    };
    let enc = Encoder::load(&minilm::spec(), std::path::Path::new("."), &opts).unwrap();
    assert!(
        enc.cache_usage().is_some(),
        "the cache is on for a batch-independent encoder"
    );
    assert!(encoder().cache_usage().is_none(), "and off without cache bytes");
    let first = enc.embed(&["book a flight to rome", "play some jazz"]).unwrap();
    assert_eq!(enc.cache_usage().unwrap().0, 2);
    let texts = [
        "play some jazz",
        "a sentence not seen before, rather longer than the other ones here",
        "book a flight to rome",
        "play some jazz",
    ];
    let mixed = enc.embed(&texts).unwrap();
    assert_eq!(
        mixed,
        encoder().embed(&texts).unwrap(),
        "cached rows are bit-identical to fresh ones"
    );
    assert_eq!(mixed[2 * 384..3 * 384], first[..384]);
    assert_eq!(enc.cache_usage().unwrap().0, 3);
}

/// An encoder with token buckets (`lexical`) gives the embedding, then the
/// buckets of the text's own word-pieces: the rows training and `eval`
/// build from the embedding cache and the token ids
/// (`IntentData::with_lexical`), bit for bit, cached or not. "on" and "off"
/// embed close together, and their buckets tell them apart.
#[test]
fn token_buckets_follow_the_embedding_as_training_builds_them() {
    let mut spec = minilm::spec();
    spec.lexical = 64;
    let opts = EncoderOptions {
        threads: 2,
        cache_bytes: 1 << 20,
        ..Default::default()
    };
    let enc = Encoder::load(&spec, std::path::Path::new("."), &opts).unwrap();
    let texts = ["turn the lights on", "turn the lights off", "turn the lights on"];
    let got = enc.embed(&texts).unwrap();
    assert_eq!(got.len(), 3 * (384 + 64));
    let data = metasgd::tasks::clinc::IntentData {
        dim: 384,
        intents: vec!["x".into()],
        rows: vec![vec![0, 1, 2]],
        embeddings: encoder().embed(&texts).unwrap(),
        tokens: encoder().content_ids(&texts).unwrap(),
    }
    .with_lexical(64);
    assert_eq!(got, data.embeddings);
    let buckets = |i: usize| -> Vec<usize> { (0..64).filter(|&j| got[i * 448 + 384 + j] == 1.0).collect() };
    // [CLS] turn the lights on [SEP]: four word-pieces, no special token.
    let ids = encoder().content_ids(&texts[..1]).unwrap().remove(0);
    assert_eq!(ids.len(), 4);
    assert!(!ids.contains(&101) && !ids.contains(&102));
    assert_ne!(buckets(0), buckets(1), "on and off land in different buckets");
    assert!(cosine(&got[..384], &got[448..448 + 384]) > 0.8);
    assert_eq!(
        enc.embed(&texts[2..]).unwrap(),
        got[..448],
        "cached rows are the same bits"
    );
}
