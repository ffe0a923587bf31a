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

    /// An `n`-way classification episode from each task's picks: per label,
    /// the indices of its K support examples then its queries; `row(i)` is
    /// example `i`'s input of `dim` values. Rows group by label.
    pub fn from_picks<'a>(
        tasks: &[Vec<Vec<usize>>],
        n: usize,
        k_support: usize,
        dim: usize,
        row: impl Fn(usize) -> &'a [f32],
        device: &candle_core::Device,
    ) -> candle_core::Result<Episode> {
        let (mut sx, mut sy, mut qx, mut qy) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for task in tasks {
            for (label, picks) in task.iter().enumerate() {
                for (j, &i) in picks.iter().enumerate() {
                    let (x, y) = if j < k_support {
                        (&mut sx, &mut sy)
                    } else {
                        (&mut qx, &mut qy)
                    };
                    x.extend_from_slice(row(i));
                    y.extend((0..n).map(|c| if c == label { 1f32 } else { 0.0 }));
                }
            }
        }
        Self::classification(tasks.len(), n, dim, (sx, sy), (qx, qy), device)
    }
}
