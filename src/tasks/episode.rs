//! An episode: a batch of tasks' support and query sets, what every task
//! family samples and training and evaluation consume.

use candle_core::Tensor;

use crate::model::Target;

/// A batch of `T` tasks, each with a support and a query set (`[T, N, in]`).
#[derive(Clone, Debug)]
pub struct Episode {
    pub support_x: Tensor,
    pub support_t: Target,
    pub query_x: Tensor,
    pub query_t: Target,
}

impl Episode {
    /// An N-way classification episode from row-major buffers: `support`
    /// and `query` are (inputs, one-hot targets) of `tasks` tasks, each input
    /// `dim` values and each target `n_way`.
    pub fn classification(
        tasks: usize,
        n_way: usize,
        dim: usize,
        support: (Vec<f32>, Vec<f32>),
        query: (Vec<f32>, Vec<f32>),
        device: &candle_core::Device,
    ) -> candle_core::Result<Episode> {
        let (ns, nq) = (support.1.len() / (tasks * n_way), query.1.len() / (tasks * n_way));
        Ok(Episode {
            support_x: Tensor::from_vec(support.0, (tasks, ns, dim), device)?,
            support_t: Target::OneHot(Tensor::from_vec(support.1, (tasks, ns, n_way), device)?),
            query_x: Tensor::from_vec(query.0, (tasks, nq, dim), device)?,
            query_t: Target::OneHot(Tensor::from_vec(query.1, (tasks, nq, n_way), device)?),
        })
    }
}
