//! The prototype start of a class-shared head (Proto-MAML's, Triantafillou
//! et al. 2020, with a meta-learned metric).
//!
//! Without it every class's row starts at θ's shared row, so one step makes
//! the model a prototype classifier, and the steps after it refine that. With
//! `proto_start`, each task's rows start *at* a prototype classifier, and
//! every step refines it:
//!
//! - `m_c`, the mean over class c's support rows of what the head sees
//!   ([`Architecture::embed`]; for a cosine head, unit vectors);
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
use super::Architecture;

/// `params` (per task, the head expanded to `C` rows: `[T, C, F]`, `[T, C]`)
/// with the head's rows replaced by the prototype start of the support set
/// `x` `[T, N, in]` labelled by `onehot` `[T, N, C]`. Rows of weight 0 in
/// `weights` `[T, N]` (padding) count in no mean; a class without rows
/// (a padded class) keeps `w = 0` and `b = b₀`. What the head sees is
/// computed `rows` support rows at a time.
pub fn start(
    arch: &Architecture,
    mut params: Vec<Tensor>,
    x: &Tensor,
    onehot: &Tensor,
    weights: Option<&Tensor>,
    rows: usize,
) -> Result<Vec<Tensor>> {
    let k = params.len();
    let body = &params[..k - 2];
    let n = x.dim(1)?;
    let rows = rows.max(1);
    let mut h = if n <= rows {
        arch.embed(body, x)?
    } else {
        let parts = (0..n)
            .step_by(rows)
            .map(|s| arch.embed(body, &x.narrow(1, s, rows.min(n - s))?))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 1)?
    };
    let (cosine, scale) = match arch {
        Architecture::Features { cosine, scale, .. } => (*cosine, *scale),
        _ => (false, 1.0),
    };
    if cosine {
        h = unit_rows(&h)?;
    }
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
    let w0 = &params[k - 2];
    let w = w0.broadcast_mul(&means)?;
    if !cosine {
        let norm = w0.broadcast_mul(&means.sqr()?)?.sum(D::Minus1)?; // [T, C]
        params[k - 1] = params[k - 1]
            .broadcast_sub(&norm.affine(scale / 2.0, 0.0)?)?
            .contiguous()?;
    }
    params[k - 2] = w.contiguous()?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The start's logits are nearest-centroid's: `−(σ/2)·Σ w₀ (h − m_c)²`
    /// up to a shift that is the same for every class of a row.
    #[test]
    fn a_dot_product_start_scores_the_weighted_squared_distance() {
        let dev = Device::Cpu;
        let arch = Architecture::Features {
            dim: 3,
            hidden: vec![],
            scale: 2.0,
            center: false,
            cosine: false,
            linear_body: false,
            task_center: false,
            proto_start: true,
        };
        let x = Tensor::new(
            &[[[1f64, 0.0, 2.0], [3.0, 1.0, 0.0], [0.0, -1.0, 1.0], [2.0, 2.0, 2.0]]],
            &dev,
        )
        .unwrap();
        let onehot = Tensor::new(&[[[1f64, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]], &dev).unwrap();
        let w0 = Tensor::new(&[[[0.5f64, 1.0, 2.0], [0.5, 1.0, 2.0]]], &dev).unwrap();
        let b0 = Tensor::new(&[[0.3f64, 0.3]], &dev).unwrap();
        let p = start(&arch, vec![w0, b0], &x, &onehot, None, usize::MAX).unwrap();
        let q = Tensor::new(&[[[0.5f64, 0.5, -1.0], [4.0, 0.0, 1.0]]], &dev).unwrap();
        let logits = arch.forward(&p, &q).unwrap().to_vec3::<f64>().unwrap()[0].clone();
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

    /// Chunked features give the same start; padded rows and classes count in
    /// nothing.
    #[test]
    fn chunks_and_padding_leave_the_start_alone() {
        let dev = Device::Cpu;
        let arch = Architecture::Conv4 {
            channels: 1,
            side: 16,
            hidden: 3,
            proto_start: true,
        };
        let theta: Vec<Tensor> = arch
            .params()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let n: usize = s.shape.iter().product();
                Tensor::arange(0f64, n as f64, &dev)
                    .unwrap()
                    .affine(0.37, i as f64)
                    .unwrap()
                    .sin()
                    .unwrap()
                    .reshape(s.shape.as_slice())
                    .unwrap()
            })
            .collect();
        let per_task = |c: usize| -> Vec<Tensor> {
            arch.for_classes(&theta, c)
                .unwrap()
                .iter()
                .map(|p| p.broadcast_left(1).unwrap().contiguous().unwrap())
                .collect()
        };
        let x = Tensor::randn(0f64, 1.0, (1, 5, 256), &dev).unwrap();
        let labels = [0usize, 1, 0, 1, 1];
        let hot = |c: usize, rows: usize| {
            let mut v = vec![0f64; rows * c];
            for (r, &l) in labels.iter().enumerate() {
                v[r * c + l] = 1.0;
            }
            Tensor::from_vec(v, (1, rows, c), &dev).unwrap()
        };
        let whole = start(&arch, per_task(2), &x, &hot(2, 5), None, usize::MAX).unwrap();
        let chunked = start(&arch, per_task(2), &x, &hot(2, 5), None, 2).unwrap();
        let padded_x = Tensor::cat(&[&x, &Tensor::ones((1, 1, 256), DType::F64, &dev).unwrap()], 1).unwrap();
        let weights = Tensor::new(&[[0.2f64, 0.2, 0.2, 0.2, 0.2, 0.0]], &dev).unwrap();
        let mut padded_hot = hot(4, 5).to_vec3::<f64>().unwrap();
        padded_hot[0].push(vec![1.0, 0.0, 0.0, 0.0]); // a padded row, labelled as class 0
        let padded_hot = Tensor::new(padded_hot, &dev).unwrap();
        let padded = start(&arch, per_task(4), &padded_x, &padded_hot, Some(&weights), usize::MAX).unwrap();
        for i in 8..10 {
            let a = whole[i].flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let b = chunked[i].flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let c = padded[i]
                .narrow(1, 0, 2)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            for ((a, b), c) in a.iter().zip(&b).zip(&c) {
                assert!((a - b).abs() < 1e-12 && (a - c).abs() < 1e-12, "{a} {b} {c}");
            }
        }
        // The padded classes keep w = 0 and θ's bias.
        let w = padded[8].narrow(1, 2, 2).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(w.to_scalar::<f64>().unwrap(), 0.0);
        let b = padded[9]
            .narrow(1, 2, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let b0 = theta[9].to_vec1::<f64>().unwrap()[0];
        assert!(b.iter().all(|v| *v == b0));
    }
}
