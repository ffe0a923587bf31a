//! What the CPU custom ops (`im2col`, `pool`) share: reading a storage as a
//! contiguous slice, and running a kernel generic over f32 and f64.

use candle_core::{CpuStorage, Layout, Result, WithDType};

/// The contiguous slice of `s` that `l` describes; `op` names the op in the error.
pub(super) fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op} needs a contiguous tensor")))?;
    Ok(&s.as_slice::<T>()?[a..b])
}

/// `dispatch!(op, kernel, dims, (storage, layout), ...)` runs
/// `kernel(dims, slice, ...)` on f32 or f64 storage (the first storage's
/// dtype decides) and wraps the result as that storage type.
macro_rules! dispatch {
    ($op:expr, $kernel:ident, $dims:expr, $(($s:expr, $l:expr)),+) => {{
        use candle_core::backend::BackendStorage;
        match [$($s.dtype()),+][0] {
            candle_core::DType::F32 => candle_core::CpuStorage::F32($kernel(
                $dims,
                $($crate::model::cpu_op::contiguous::<f32>($s, $l, $op)?),+
            )),
            candle_core::DType::F64 => candle_core::CpuStorage::F64($kernel(
                $dims,
                $($crate::model::cpu_op::contiguous::<f64>($s, $l, $op)?),+
            )),
            d => return Err(candle_core::Error::Msg(format!("{}: unsupported dtype {d:?}", $op))),
        }
    }};
}
pub(super) use dispatch;
