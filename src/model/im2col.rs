//! im2col for 3×3 convolutions with padding 1, as a candle custom op with a
//! CPU kernel and an exact backward (col2im), so a convolution is one matmul.
//!
//! Layout: the input is `[T, C, N, H, W]`; the columns are `[T, C·9, N·H·W]`,
//! row `c·9 + kh·3 + kw` holding `x[t, c, n, y + kh − 1, x + kw − 1]` (zero
//! outside the image). col2im sums the columns back; each is the other's
//! adjoint, so second-order gradients work too. Other devices use the
//! equivalent narrow-and-stack formulation in `conv`.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};

use super::cpu_op::dispatch;
use rayon::prelude::*;

/// The dims of the image side: `[T, C, N, H, W]`.
#[derive(Clone, Copy, Debug)]
struct Dims {
    t: usize,
    c: usize,
    n: usize,
    h: usize,
    w: usize,
}

/// For tap offset `k` in 0..3 along a side of length `len`: the valid output
/// range `[lo, hi)` and the source shift (`src = dst + k − 1`).
fn span(k: usize, len: usize) -> (usize, usize) {
    (if k == 0 { 1 } else { 0 }, if k == 2 { len - 1 } else { len })
}

fn im2col_kernel<T: WithDType>(d: Dims, src: &[T]) -> Vec<T> {
    let Dims { t, c, n, h, w } = d;
    let plane = n * h * w;
    let mut out = vec![T::zero(); t * c * 9 * plane];
    out.par_chunks_mut(9 * plane).enumerate().for_each(|(tc, rows)| {
        let img = &src[tc * plane..(tc + 1) * plane];
        for kh in 0..3 {
            let (y0, y1) = span(kh, h);
            for kw in 0..3 {
                let (x0, x1) = span(kw, w);
                let row = &mut rows[(kh * 3 + kw) * plane..(kh * 3 + kw + 1) * plane];
                for s in 0..n {
                    for y in y0..y1 {
                        let d = s * h * w + y * w;
                        let sy = s * h * w + (y + kh - 1) * w;
                        row[d + x0..d + x1].copy_from_slice(&img[sy + x0 + kw - 1..sy + x1 + kw - 1]);
                    }
                }
            }
        }
    });
    out
}

fn col2im_kernel<T: WithDType>(d: Dims, src: &[T]) -> Vec<T> {
    let Dims { t, c, n, h, w } = d;
    let plane = n * h * w;
    let mut out = vec![T::zero(); t * c * plane];
    out.par_chunks_mut(plane).enumerate().for_each(|(tc, img)| {
        let rows = &src[tc * 9 * plane..(tc + 1) * 9 * plane];
        for kh in 0..3 {
            let (y0, y1) = span(kh, h);
            for kw in 0..3 {
                let (x0, x1) = span(kw, w);
                let row = &rows[(kh * 3 + kw) * plane..(kh * 3 + kw + 1) * plane];
                for s in 0..n {
                    for y in y0..y1 {
                        let d = s * h * w + y * w;
                        let sy = s * h * w + (y + kh - 1) * w;
                        let dst = &mut img[sy + x0 + kw - 1..sy + x1 + kw - 1];
                        for (o, v) in dst.iter_mut().zip(&row[d + x0..d + x1]) {
                            *o += *v;
                        }
                    }
                }
            }
        }
    });
    out
}

struct Im2Col(Dims);
struct Col2Im(Dims);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col3x3"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Dims { t, c, n, h, w } = self.0;
        let out = dispatch!("im2col", im2col_kernel, self.0, (s, l));
        Ok((out, Shape::from((t, c * 9, n * h * w))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(col2im(grad, self.0)?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im3x3"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Dims { t, c, n, h, w } = self.0;
        let out = dispatch!("col2im", col2im_kernel, self.0, (s, l));
        Ok((out, Shape::from((t, c, n, h, w))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(im2col_dims(grad, self.0)?))
    }
}

fn im2col_dims(x: &Tensor, d: Dims) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Im2Col(d))
}

fn col2im(cols: &Tensor, d: Dims) -> Result<Tensor> {
    cols.contiguous()?.apply_op1(Col2Im(d))
}

/// `[T, C, N, H, W]` (f32 or f64, CPU) → `[T, C·9, N·H·W]` columns.
pub fn im2col(x: &Tensor) -> Result<Tensor> {
    let (t, c, n, h, w) = x.dims5()?;
    im2col_dims(x, Dims { t, c, n, h, w })
}
