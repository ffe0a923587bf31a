//! The conv4 network of MAML and Meta-SGD for Omniglot, as tensor functions.
//!
//! Four blocks of 3×3 convolution (64 filters, padding 1), ReLU and 2×2 max
//! pooling, then a linear head. Activations are laid out `[T, C, N, H, W]`
//! (task, channel, sample, row, column), so a convolution is one batched
//! matmul per task over an im2col matrix, whether θ is shared or per task.
//!
//! Pooling is a reshape and two `max` reductions, not candle's `max_pool2d`,
//! whose backward pass is wrong in candle 0.11.1 (too small by k²);
//! `tests/gradcheck.rs` checks this network's gradients against finite
//! differences.
//!
//! [`features`] is what the head sees: the body's features at a fixed
//! length, or with a shift ensemble, their mean over small translations of
//! each image.
//!
//! There is no normalization layer at serve or meta-train time, so one
//! input's prediction never depends on the others in its request. Batch norm
//! is used only in supervised pre-training and is then folded into each
//! convolution's weight and bias (fixed statistics; see `metasgd::pretrain`).

use candle_core::{DType, Result, Tensor};

/// 3×3 convolution with padding 1. `h` is `[T, C, N, H, W]`; `w` is
/// `[O, C, 3, 3]` (shared) or `[T, O, C, 3, 3]` (per task); `b` is `[O]` or `[T, O]`.
/// Returns `[T, O, N, H, W]`.
pub fn conv3x3(h: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (t, c, n, hh, ww) = h.dims5()?;
    // [T, C·9, N·H·W]: row c·9 + kh·3 + kw, matching w's layout.
    let cols = if h.device().is_cpu() && matches!(h.dtype(), DType::F32 | DType::F64) {
        super::im2col::im2col(h)?
    } else {
        let p = h.pad_with_zeros(3, 1, 1)?.pad_with_zeros(4, 1, 1)?;
        let mut cols = Vec::with_capacity(9);
        for kh in 0..3 {
            for kw in 0..3 {
                cols.push(p.narrow(3, kh, hh)?.narrow(4, kw, ww)?);
            }
        }
        Tensor::stack(&cols, 2)?.reshape((t, c * 9, n * hh * ww))?
    };
    let o = w.dim(w.rank() - 4)?;
    let (wm, bm) = if w.rank() == 4 {
        (w.reshape((o, c * 9))?, b.reshape((1, o, 1))?)
    } else {
        (w.reshape((t, o, c * 9))?, b.reshape((t, o, 1))?)
    };
    let y = wm.broadcast_matmul(&cols)?.broadcast_add(&bm)?;
    y.reshape((t, o, n, hh, ww))
}

/// 2×2 max pooling with stride 2 (an odd last row or column is dropped, as
/// in torch's floor mode). `[T, C, N, H, W]` → `[T, C, N, H/2, W/2]`.
///
/// On the CPU this is the custom op of [`super::pool`]. On other devices it
/// is [`max_pool2_windows`], which gives the same values and the same
/// gradient: each window's gradient goes to its first maximum only.
pub fn max_pool2(h: &Tensor) -> Result<Tensor> {
    if h.device().is_cpu() && matches!(h.dtype(), DType::F32 | DType::F64) && !GENERIC_POOL.with(|g| g.get()) {
        return super::pool::max_pool2(h);
    }
    max_pool2_windows(h)
}

thread_local! {
    static GENERIC_POOL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with [`max_pool2_windows`] in place of the CPU custom op, on
/// this thread: how the CPU tests check the pooling other devices run.
pub fn with_window_pooling<T>(f: impl FnOnce() -> T) -> T {
    let before = GENERIC_POOL.with(|g| g.replace(true));
    let out = f();
    GENERIC_POOL.with(|g| g.set(before));
    out
}

/// Device-independent 2×2 max pooling from elementwise ops. Each window's
/// four values (row-major, as the CPU op scans them) are weighted by a
/// constant one-hot mask of its *first* maximum, `x·mask` summed. The value
/// is the maximum exactly (one term is `x·1`, the rest `x·0`), and since the
/// mask is a constant the gradient goes to that element alone. A reshape
/// and `max` would send it to every tied element: ties are common in the
/// blank regions of Omniglot drawings.
pub fn max_pool2_windows(h: &Tensor) -> Result<Tensor> {
    let (t, c, n, hh, ww) = h.dims5()?;
    let (ho, wo) = (hh / 2, ww / 2);
    let h = if hh % 2 == 1 || ww % 2 == 1 {
        h.narrow(3, 0, 2 * ho)?.narrow(4, 0, 2 * wo)?
    } else {
        h.clone()
    };
    // [T, C, N, Ho, 2, Wo, 2] → [T·C·N·Ho·Wo, 4], each row one window.
    let win = h
        .contiguous()?
        .reshape(vec![t * c * n * ho, 2, wo, 2])?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((t * c * n * ho * wo, 4))?;
    let x = win.detach();
    let m = x.max_keepdim(1)?;
    let eq = x.broadcast_eq(&m)?.to_dtype(x.dtype())?;
    // first[k] = eq[k] · Π_{j<k} (1 − eq[j])
    let cols: Vec<Tensor> = (0..4).map(|k| eq.narrow(1, k, 1)).collect::<Result<_>>()?;
    let mut none_before = cols[0].ones_like()?;
    let mut first = Vec::with_capacity(4);
    for col in &cols {
        first.push((col * &none_before)?);
        none_before = (&none_before * col.affine(-1.0, 1.0)?)?;
    }
    let mask = Tensor::cat(&first, 1)?;
    (win * mask)?.sum(1)?.reshape((t, c, n, ho, wo))
}

/// Side of the feature map after four poolings.
pub fn feature_side(side: usize) -> usize {
    (0..4).fold(side, |s, _| s / 2)
}

/// `[T, N, C·side·side]` inputs to `[T, C, N, side, side]`.
pub fn to_images(x: &Tensor, channels: usize, side: usize) -> Result<Tensor> {
    let (t, n, _) = x.dims3()?;
    x.reshape((t, n, channels, side, side))?.transpose(1, 2)?.contiguous()
}

/// `[T, C, N, s, s]` feature maps to `[T, N, C·s·s]` feature vectors.
pub fn to_features(h: &Tensor) -> Result<Tensor> {
    let (t, c, n, s1, s2) = h.dims5()?;
    h.transpose(1, 2)?.contiguous()?.reshape((t, n, c * s1 * s2))
}

/// The four conv blocks. `params` holds `c1.weight, c1.bias, ..., c4.bias`.
pub fn body(params: &[Tensor], x: &Tensor, channels: usize, side: usize) -> Result<Tensor> {
    to_features(&blocks(params, to_images(x, channels, side)?)?)
}

fn blocks(params: &[Tensor], mut h: Tensor) -> Result<Tensor> {
    for l in 0..4 {
        h = max_pool2(&conv3x3(&h, &params[2 * l], &params[2 * l + 1])?)?.relu()?;
    }
    Ok(h)
}

/// What the head sees, `[T, N, F]`: the body's features scaled to length
/// [`FEATURE_NORM`]. With `shift_radius` r > 0, a shift ensemble: each
/// image is also translated by every (dy, dx) with |dy|, |dx| ≤ r pixels
/// (zero fill), the (2r+1)² copies go through the body, and the mean of
/// their unit features is normalized again. Test-time augmentation inside
/// the model, per image, so a support drawing's prototype and a query's
/// feature are both averaged over small shifts of the pen.
pub fn features(params: &[Tensor], x: &Tensor, channels: usize, side: usize, shift_radius: usize) -> Result<Tensor> {
    if shift_radius == 0 {
        return l2_normalize(&body(params, x, channels, side)?);
    }
    let h = to_images(x, channels, side)?;
    let (t, _, n, _, _) = h.dims5()?;
    let copies = shifted_copies(&h, shift_radius)?;
    let s = copies.dim(2)? / n;
    let f = to_features(&blocks(params, copies)?)?; // [T, S·N, F]
    let f = super::layers::unit_rows(&f.reshape((t, s, n, ()))?)?;
    l2_normalize(&f.mean(1)?)
}

/// `[T, C, N, H, W]` images and their translations by every (dy, dx) in
/// [−r, r]² (zero fill; content moves down and right for positive shifts),
/// stacked along the sample dimension: `[T, C, (2r+1)²·N, H, W]`, the
/// unshifted copy first.
pub fn shifted_copies(h: &Tensor, r: usize) -> Result<Tensor> {
    let (_, _, _, hh, ww) = h.dims5()?;
    let p = h.pad_with_zeros(3, r, r)?.pad_with_zeros(4, r, r)?;
    let ri = r as isize;
    let mut shifts = vec![(0isize, 0isize)];
    for dy in -ri..=ri {
        for dx in -ri..=ri {
            if (dy, dx) != (0, 0) {
                shifts.push((dy, dx));
            }
        }
    }
    let copies = shifts
        .iter()
        .map(|&(dy, dx)| p.narrow(3, (ri - dy) as usize, hh)?.narrow(4, (ri - dx) as usize, ww))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&copies, 2)
}

/// Copies of each image a shift ensemble of radius `r` runs through the body.
pub fn shift_copies(r: usize) -> usize {
    (2 * r + 1).pow(2)
}

/// Scales each feature vector (last dim) to unit length. Per sample, so a
/// prediction never depends on the other inputs. With unit features, the
/// first adaptation step from the class-shared head gives each class a row
/// proportional to its centred mean feature: a cosine prototype classifier
/// whose per-dimension metric is the head's meta-learned α.
///
/// The unit vectors are then scaled to length [`FEATURE_NORM`], so that the
/// head's step sizes are of order 1 rather than 100 (Adam moves α by about
/// its learning rate per iteration, whatever α's scale).
pub fn l2_normalize(f: &Tensor) -> Result<Tensor> {
    super::layers::unit_rows(f)?.affine(FEATURE_NORM, 0.0)
}

/// Length of the feature vector the head sees.
pub const FEATURE_NORM: f64 = 8.0;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn conv_matches_candles_conv2d() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 2, 6, 5), &dev).unwrap(); // N, C, H, W
        let w = Tensor::randn(0f32, 1.0, (4, 2, 3, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 4, &dev).unwrap();
        let want = x
            .conv2d(&w, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
            .unwrap();
        let h = x.transpose(0, 1).unwrap().unsqueeze(0).unwrap().contiguous().unwrap();
        let got = conv3x3(&h, &w, &b)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .transpose(0, 1)
            .unwrap();
        let d = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-4, "{d}");
    }

    /// The pooling other devices run gives the CPU op's values and gradient,
    /// ties included (a window of equal values sends its gradient to its
    /// first element only).
    #[test]
    fn window_pooling_matches_the_cpu_op_with_ties() {
        let dev = Device::Cpu;
        let mut v: Vec<f64> = (0..2 * 3 * 7 * 6).map(|i| ((i * 7) % 5) as f64).collect();
        v[..12].iter_mut().for_each(|x| *x = 0.0); // blank paper: all tied
        let x = candle_core::Var::from_vec(v, (1, 2, 3, 7, 6), &dev).unwrap();
        let g = Tensor::rand(0f64, 1.0, (1, 2, 3, 3, 3), &dev).unwrap();
        let (a, b) = (
            super::super::pool::max_pool2(&x).unwrap(),
            max_pool2_windows(&x).unwrap(),
        );
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f64>().unwrap()
        );
        let ga = (a * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gb) = (ga.get(&x).unwrap(), gb.get(&x).unwrap());
        assert_eq!(
            ga.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            gb.flatten_all().unwrap().to_vec1::<f64>().unwrap()
        );
        let routed = gb.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert!(
            routed[1] == 0.0 && routed[6] == 0.0,
            "a tied window's gradient goes to its first element only"
        );
    }

    /// A shifted copy moves the content by (dy, dx) and fills with zeros.
    #[test]
    fn shifted_copies_move_the_ink_and_fill_with_paper() {
        let dev = Device::Cpu;
        let mut v = vec![0f32; 25];
        v[2 * 5 + 2] = 1.0; // the centre of a 5×5 image
        v[0] = 0.5; // a corner that a shift pushes off the image
        let h = Tensor::from_vec(v, (1, 1, 1, 5, 5), &dev).unwrap();
        let c = shifted_copies(&h, 1).unwrap();
        assert_eq!(c.dims(), &[1, 1, 9, 5, 5]);
        let c = c.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Copy 0 is the image; copy 1 is (dy, dx) = (−1, −1): up and left.
        assert_eq!(&c[..25], h.flatten_all().unwrap().to_vec1::<f32>().unwrap().as_slice());
        assert_eq!(c[25 + 5 + 1], 1.0);
        assert_eq!(c[25..50].iter().sum::<f32>(), 1.0, "the corner left the image");
        // The last copy is (1, 1): down and right, the corner kept.
        assert_eq!(c[8 * 25 + 3 * 5 + 3], 1.0);
        assert_eq!(c[8 * 25 + 5 + 1], 0.5);
        assert_eq!(shift_copies(1), 9);
    }

    /// The ensemble is the renormalized mean of the copies' unit features,
    /// and radius 0 is the plain normalized body.
    #[test]
    fn a_shift_ensemble_averages_the_unit_features_of_the_copies() {
        let dev = Device::Cpu;
        let params: Vec<Tensor> = (0..4)
            .flat_map(|l| {
                let cin = if l == 0 { 1 } else { 4 };
                [
                    Tensor::randn(0f64, 0.5, (4, cin, 3, 3), &dev).unwrap(),
                    Tensor::randn(0f64, 0.1, 4, &dev).unwrap(),
                ]
            })
            .collect();
        let x = Tensor::rand(0f64, 1.0, (2, 3, 16 * 16), &dev).unwrap();
        let plain = features(&params, &x, 1, 16, 0).unwrap();
        let want0 = l2_normalize(&body(&params, &x, 1, 16).unwrap()).unwrap();
        assert_eq!(plain.to_vec3::<f64>().unwrap(), want0.to_vec3::<f64>().unwrap());
        let got = features(&params, &x, 1, 16, 1).unwrap().to_vec3::<f64>().unwrap();
        let imgs = shifted_copies(&to_images(&x, 1, 16).unwrap(), 1).unwrap();
        let f = to_features(&blocks(&params, imgs).unwrap())
            .unwrap()
            .to_vec3::<f64>()
            .unwrap();
        for t in 0..2 {
            for n in 0..3 {
                let mut mean = [0f64; 4];
                for s in 0..9 {
                    let row = &f[t][s * 3 + n];
                    let len = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-300);
                    mean.iter_mut().zip(row).for_each(|(m, v)| *m += v / len / 9.0);
                }
                let len = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
                for j in 0..4 {
                    let want = FEATURE_NORM * mean[j] / len;
                    assert!(
                        (got[t][n][j] - want).abs() < 1e-9,
                        "{t} {n} {j}: {} vs {want}",
                        got[t][n][j]
                    );
                }
            }
        }
    }

    #[test]
    fn pool_takes_the_max_of_each_2x2_block_and_drops_an_odd_edge() {
        let dev = Device::Cpu;
        let v: Vec<f32> = (0..25).map(|i| ((i * 7) % 11) as f32).collect();
        let h = Tensor::from_vec(v.clone(), (1, 1, 1, 5, 5), &dev).unwrap();
        let p = max_pool2(&h).unwrap();
        assert_eq!(p.dims(), &[1, 1, 1, 2, 2]);
        let got = p.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, g) in got.iter().enumerate() {
            let (r, c) = (2 * (i / 2), 2 * (i % 2));
            let m = [
                v[r * 5 + c],
                v[r * 5 + c + 1],
                v[(r + 1) * 5 + c],
                v[(r + 1) * 5 + c + 1],
            ]
            .into_iter()
            .fold(f32::MIN, f32::max);
            assert_eq!(*g, m);
        }
        assert_eq!(feature_side(28), 1);
    }
}
