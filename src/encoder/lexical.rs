//! Token buckets: which word-pieces a text contains, as fixed-size 0/1
//! values appended to its embedding. A sentence embedding blurs the one
//! word that separates some intents ("turn the lights *on*" / "*off*");
//! the buckets keep it, for a head that learns per task which ones matter.

/// `out[id % out.len()] = 1` for each token id (the text's word-pieces,
/// special tokens already left out); other values are left as they are.
pub fn mark(ids: impl IntoIterator<Item = u32>, out: &mut [f32]) {
    let h = out.len();
    if h == 0 {
        return;
    }
    for id in ids {
        out[id as usize % h] = 1.0;
    }
}

/// Rows of `dim + buckets` values: each text's `dim` values from `dense`
/// (row-major `[texts, dim]`), then its buckets marked from its ids. The one
/// place both the encoder and the training data build a row.
pub fn widen<I: IntoIterator<Item = u32>>(
    dense: &[f32],
    dim: usize,
    buckets: usize,
    ids: impl IntoIterator<Item = I>,
) -> Vec<f32> {
    let w = dim + buckets;
    let mut out = vec![0f32; dense.len() / dim.max(1) * w];
    for ((row, v), ids) in out.chunks_mut(w).zip(dense.chunks(dim.max(1))).zip(ids) {
        row[..dim].copy_from_slice(v);
        mark(ids, &mut row[dim..]);
    }
    out
}

/// The ids of a tokenized text that are its own word-pieces: not special
/// (`[CLS]`, `[SEP]`) and not padding.
pub fn content_ids<'a>(ids: &'a [u32], special: &'a [u32], mask: &'a [u32]) -> impl Iterator<Item = u32> + 'a {
    ids.iter()
        .zip(special)
        .zip(mask)
        .filter(|((_, &s), &m)| s == 0 && m == 1)
        .map(|((&id, _), _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_mark_word_pieces_modulo_the_count_and_skip_special_and_padding() {
        // [CLS] turn on [SEP] [PAD]
        let ids = [101, 2735, 2006, 102, 0];
        let special = [1, 0, 0, 1, 0];
        let mask = [1, 1, 1, 1, 0];
        let mut out = vec![0f32; 1000];
        mark(content_ids(&ids, &special, &mask), &mut out);
        let on: Vec<usize> = (0..1000).filter(|&i| out[i] == 1.0).collect();
        assert_eq!(on, vec![6, 735]);
        // Two ids in one bucket mark it once.
        let mut out = vec![0f32; 4];
        mark([1, 5, 2], &mut out);
        assert_eq!(out, vec![0.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn widened_rows_are_the_embedding_then_its_own_buckets() {
        let dense = [0.5f32, -0.5, 1.0, 2.0];
        let rows = widen(&dense, 2, 3, [vec![4u32], vec![0, 2]]);
        assert_eq!(rows, vec![0.5, -0.5, 0.0, 1.0, 0.0, 1.0, 2.0, 1.0, 0.0, 1.0]);
    }
}
