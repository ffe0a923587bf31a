//! The prototype start of a class-shared head (Proto-MAML's, Triantafillou
//! et al. 2020, with a meta-learned metric).
//!
//! Without it every class's row starts at θ's shared row, so one step makes
//! the model a prototype classifier, and the steps after it refine that. With
//! `proto_start`, each task's rows start *at* a prototype classifier, and
//! every step refines it:
//!
//! - `m_c`, the mean over class c's support rows of what the head sees
//!   (`Architecture::embed`; for a cosine head, unit vectors);
//! - `w_c = w₀ ∘ m_c`, with the shared row `w₀` read as a per-dimension
//!   metric (meta-learned, started at a constant);
//! - for a dot-product head, `b_c = b₀ − (σ/2)·Σ_j w₀_j m_cj²`, so that
//!   `σ·h·w_c + b_c = −(σ/2)·Σ_j w₀_j (h_j − m_cj)² + (terms equal for every
//!   class)`: nearest-centroid under the squared distance weighted by `w₀`,
//!   σ the head's scale; for a cosine head, `b_c = b₀` and the start scores
//!   `cos(w₀ ∘ m_c, h)`.
//!
//! The start is a differentiable function of θ (the body through `m_c`, and
//! `w₀`), so meta-gradients reach them through it, first order included.

use candle_core::{Result, Tensor, D};

use super::layers::unit_rows;

/// How the head compares: its scale σ, and whether it is a cosine head.
#[derive(Clone, Copy, Debug)]
pub struct HeadKind {
    pub scale: f64,
    pub cosine: bool,
}

/// The head's rows `(w, b)` (per task, expanded to `C` classes: `[T, C, F]`,
/// `[T, C]`) replaced by the prototype start of the support rows whose head
/// inputs are `h` `[T, N, F]`, labelled by `onehot` `[T, N, C]`. Rows of
/// weight 0 in `weights` `[T, N]` (padding) count in no mean; a class without
/// rows (a padded class) gets `w = 0` and keeps `b = b₀`.
pub fn start(
    w0: &Tensor,
    b0: &Tensor,
    h: &Tensor,
    onehot: &Tensor,
    weights: Option<&Tensor>,
    kind: HeadKind,
) -> Result<(Tensor, Tensor)> {
    let h = if kind.cosine { unit_rows(h)? } else { h.clone() };
    let member = match weights {
        None => onehot.clone(),
        Some(w) => onehot.broadcast_mul(&w.gt(0.0)?.to_dtype(onehot.dtype())?.unsqueeze(2)?)?,
    };
    let counts = member.sum(1)?.clamp(1.0, f64::INFINITY)?; // [T, C]
    let means = member
        .transpose(1, 2)?
        .contiguous()?
        .matmul(&h.contiguous()?)?
        .broadcast_div(&counts.unsqueeze(2)?)?; // [T, C, F]
    let w = w0.broadcast_mul(&means)?.contiguous()?;
    let b = if kind.cosine {
        b0.clone()
    } else {
        let norm = w0.broadcast_mul(&means.sqr()?)?.sum(D::Minus1)?; // [T, C]
        b0.broadcast_sub(&norm.affine(kind.scale / 2.0, 0.0)?)?.contiguous()?
    };
    Ok((w, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The start's logits are nearest-centroid's: `−(σ/2)·Σ w₀ (h − m_c)²`
    /// up to a shift that is the same for every class of a row.
    #[test]
    fn a_dot_product_start_scores_the_weighted_squared_distance() {
        let dev = Device::Cpu;
        let h = Tensor::new(
            &[[[1f64, 0.0, 2.0], [3.0, 1.0, 0.0], [0.0, -1.0, 1.0], [2.0, 2.0, 2.0]]],
            &dev,
        )
        .unwrap();
        let onehot = Tensor::new(&[[[1f64, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]], &dev).unwrap();
        let w0 = Tensor::new(&[[[0.5f64, 1.0, 2.0], [0.5, 1.0, 2.0]]], &dev).unwrap();
        let b0 = Tensor::new(&[[0.3f64, 0.3]], &dev).unwrap();
        let kind = HeadKind {
            scale: 2.0,
            cosine: false,
        };
        let (w, b) = start(&w0, &b0, &h, &onehot, None, kind).unwrap();
        let q = Tensor::new(&[[[0.5f64, 0.5, -1.0], [4.0, 0.0, 1.0]]], &dev).unwrap();
        let logits = super::super::layers::linear(&q.affine(2.0, 0.0).unwrap(), &w, &b).unwrap();
        let logits = logits.to_vec3::<f64>().unwrap()[0].clone();
        let m: [[f64; 3]; 2] = [[2.0, 0.5, 1.0], [1.0, 0.5, 1.5]];
        let metric: [f64; 3] = [0.5, 1.0, 2.0];
        let qs: [[f64; 3]; 2] = [[0.5, 0.5, -1.0], [4.0, 0.0, 1.0]];
        for (r, qr) in qs.iter().enumerate() {
            let d: Vec<f64> = m
                .iter()
                .map(|mc| -(0..3).map(|j| metric[j] * (qr[j] - mc[j]).powi(2)).sum::<f64>())
                .collect();
            let got = logits[r][0] - logits[r][1];
            assert!((got - (d[0] - d[1])).abs() < 1e-12, "row {r}: {got} vs {}", d[0] - d[1]);
        }
    }

    /// Padded rows and classes count in nothing; a cosine start is the
    /// metric times the mean of unit vectors, and keeps the bias.
    #[test]
    fn padding_leaves_the_start_alone_and_a_cosine_start_keeps_the_bias() {
        let dev = Device::Cpu;
        let h = Tensor::new(&[[[3f64, 4.0], [0.0, 2.0], [1.0, 0.0], [9.0, 9.0]]], &dev).unwrap();
        let hot = Tensor::new(
            &[[[1f64, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]],
            &dev,
        )
        .unwrap();
        let weights = Tensor::new(&[[0.25f64, 0.25, 0.25, 0.0]], &dev).unwrap();
        let w0 = Tensor::new(&[[[2f64, 1.0], [2.0, 1.0], [2.0, 1.0]]], &dev).unwrap();
        let b0 = Tensor::new(&[[0.5f64, 0.5, 0.5]], &dev).unwrap();
        let kind = HeadKind {
            scale: 10.0,
            cosine: true,
        };
        let (w, b) = start(&w0, &b0, &h, &hot, Some(&weights), kind).unwrap();
        // Class 0: the mean of (0.6, 0.8) and (0, 1), the padded row left out.
        let want = [[[0.6, 0.9], [2.0, 0.0], [0.0, 0.0]]];
        let got = w.to_vec3::<f64>().unwrap();
        for (g, e) in got[0].iter().flatten().zip(want[0].iter().flatten()) {
            assert!((g - e).abs() < 1e-9, "{got:?}");
        }
        assert_eq!(b.to_vec2::<f64>().unwrap(), vec![vec![0.5, 0.5, 0.5]]);
    }
}
