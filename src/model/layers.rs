//! Tensor functions the architectures share: a linear layer whose
//! parameters are shared by all tasks or per task, and row normalization.

use candle_core::{Result, Tensor, D};

/// A vector parameter `[d]` (shared) or `[T, d]` (per task), shaped to
/// broadcast against `[T, N, d]` activations (`[T, 1, d]` when per task).
pub fn per_task_rows(v: &Tensor) -> Result<Tensor> {
    if v.rank() == 2 {
        v.unsqueeze(1)
    } else {
        Ok(v.clone())
    }
}

/// `y = f·Wᵀ + b` with `f` `[T, N, F]`, `W` `[n, F]` or `[T, n, F]`, `b` `[n]` or `[T, n]`.
pub fn linear(f: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    f.broadcast_matmul(&w.t()?)?.broadcast_add(&per_task_rows(b)?)
}

/// Each row (last dimension) divided by its L2 norm.
pub fn unit_rows(v: &Tensor) -> Result<Tensor> {
    v.broadcast_div(&v.sqr()?.sum_keepdim(D::Minus1)?.affine(1.0, 1e-12)?.sqrt()?)
}
