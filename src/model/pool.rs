//! 2×2 max pooling (stride 2, floor mode) as candle custom ops with a CPU
//! kernel, because candle 0.11.1's `max_pool2d` backward is wrong and the
//! reshape-and-max formulation is slow to differentiate.
//!
//! Three ops over planes of `H × W` (all leading dims flattened):
//! `pool` (forward), `route` (sends each window's gradient to its first
//! maximal element: pool's backward) and `select` (reads each window's
//! maximal element of another tensor: route's backward). Each is the
//! other's adjoint for a fixed input, and the argmax is piecewise constant,
//! so first and second-order gradients are exact.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};

use super::cpu_op::dispatch;
use rayon::prelude::*;

/// Planes, height, width of the input and the pooled shape.
fn geometry(dims: &[usize]) -> (usize, usize, usize, Vec<usize>) {
    let r = dims.len();
    let (h, w) = (dims[r - 2], dims[r - 1]);
    let planes = dims[..r - 2].iter().product();
    let mut out = dims.to_vec();
    out[r - 2] = h / 2;
    out[r - 1] = w / 2;
    (planes, h, w, out)
}

/// Offset (within a plane) of the first maximum of window (i, j).
#[inline]
fn argmax<T: WithDType>(x: &[T], w: usize, i: usize, j: usize) -> usize {
    let a = 2 * i * w + 2 * j;
    let mut best = a;
    for o in [a + 1, a + w, a + w + 1] {
        if x[o] > x[best] {
            best = o;
        }
    }
    best
}

fn route_kernel<T: WithDType>(dims: &[usize], x: &[T], g: &[T]) -> Vec<T> {
    let (_, h, w, _) = geometry(dims);
    let (ho, wo) = (h / 2, w / 2);
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(h * w).enumerate().for_each(|(p, o)| {
        let plane = &x[p * h * w..(p + 1) * h * w];
        for i in 0..ho {
            for j in 0..wo {
                o[argmax(plane, w, i, j)] = g[p * ho * wo + i * wo + j];
            }
        }
    });
    out
}

fn select_kernel<T: WithDType>(dims: &[usize], x: &[T], v: &[T]) -> Vec<T> {
    let (_, h, w, out_dims) = geometry(dims);
    let (ho, wo) = (h / 2, w / 2);
    let mut out = vec![T::zero(); out_dims.iter().product()];
    out.par_chunks_mut((ho * wo).max(1)).enumerate().for_each(|(p, o)| {
        let plane = &x[p * h * w..(p + 1) * h * w];
        for i in 0..ho {
            for j in 0..wo {
                o[i * wo + j] = v[p * h * w + argmax(plane, w, i, j)];
            }
        }
    });
    out
}

struct Pool(Vec<usize>);
struct Route(Vec<usize>);
struct Select(Vec<usize>);

impl CustomOp1 for Pool {
    fn name(&self) -> &'static str {
        "maxpool2"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        // Pooling is selecting each window's maximum from the input itself.
        let out = dispatch!("max pooling", select_kernel, &self.0, (s, l), (s, l));
        Ok((out, Shape::from(geometry(&self.0).3)))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2(&grad.contiguous()?, Route(self.0.clone()))?))
    }
}

impl CustomOp2 for Route {
    fn name(&self) -> &'static str {
        "maxpool2_route"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = dispatch!("max pooling", route_kernel, &self.0, (s1, l1), (s2, l2));
        Ok((out, Shape::from(self.0.clone())))
    }
    fn bwd(&self, x: &Tensor, _g: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let sel = x.apply_op2(&grad.contiguous()?, Select(self.0.clone()))?;
        Ok((None, Some(sel)))
    }
}

impl CustomOp2 for Select {
    fn name(&self) -> &'static str {
        "maxpool2_select"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = dispatch!("max pooling", select_kernel, &self.0, (s1, l1), (s2, l2));
        Ok((out, Shape::from(geometry(&self.0).3)))
    }
    fn bwd(&self, x: &Tensor, _v: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let routed = x.apply_op2(&grad.contiguous()?, Route(self.0.clone()))?;
        Ok((None, Some(routed)))
    }
}

/// 2×2 max pooling of an f32 or f64 CPU tensor over its last two dims.
pub fn max_pool2(x: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    x.apply_op1(Pool(x.dims().to_vec()))
}
