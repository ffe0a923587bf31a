//! Tensor functions the architectures share: a linear layer whose
//! parameters are shared by all tasks or per task, row normalization, and
//! a row-wise function run over chunks of rows.

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

/// `f` over `x` (`[T, N, …]`) in chunks of at most `rows` rows along dim 1,
/// with `check` before each chunk (a cancellation stops it there); the
/// outputs are concatenated. For functions that treat rows independently.
pub fn in_row_chunks(
    x: &Tensor,
    rows: usize,
    check: &mut dyn FnMut() -> Result<()>,
    f: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let n = x.dim(1)?;
    let rows = rows.max(1);
    if n <= rows {
        check()?;
        return f(x);
    }
    let mut outs = Vec::with_capacity(n.div_ceil(rows));
    for start in (0..n).step_by(rows) {
        check()?;
        outs.push(f(&x.narrow(1, start, rows.min(n - start))?)?);
    }
    Tensor::cat(&outs, 1)
}
