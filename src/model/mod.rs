//! Models as pure functions of named parameter tensors.
//!
//! An [`Architecture`] names its parameters and their shapes, and `forward`
//! maps a batch of tasks' inputs to outputs. Parameters may be shared by all
//! tasks (a weight of shape `[out, in]`) or carry a leading task dimension
//! (`[T, out, in]`), which is what adaptation produces: one θ' per task.

pub mod adapt;
pub mod batch;
pub mod conv;
mod cpu_op;
pub mod encoder_spec;
pub mod im2col;
pub mod layers;
pub mod loss;
pub mod manifest;
pub mod pool;
pub mod proto;
pub mod rule;
pub mod rule_names;
pub mod store;

use candle_core::{Result, Tensor, D};
use serde::{Deserialize, Serialize};

use layers::{linear, per_task_rows, unit_rows};

pub use loss::{log_softmax, loss_per_task, loss_sum, InnerLoss};
pub use manifest::{InputKind, InputSpec, Manifest, ModelLimits, TaskKind};
pub use store::{load_model, save_model, LoadedModel, ModelError};

/// The network that maps inputs to outputs. Weights use torch's `Linear`
/// layout, `[out, in]`, with `y = x·Wᵀ + b`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Architecture {
    /// A multi-layer perceptron with ReLU between layers (none after the last).
    Mlp { sizes: Vec<usize> },
    /// The conv4 network (see [`conv`]) on `channels × side × side` images,
    /// with a class-shared head: θ holds one head row (`head.weight` `[1, hidden·s²]`,
    /// `head.bias` `[1]`) that every class starts from, so one model serves any
    /// number of classes. [`Architecture::for_classes`] expands it to N rows.
    /// With `proto_start`, each task's rows start at its class prototypes
    /// ([`proto`]).
    Conv4 {
        channels: usize,
        side: usize,
        hidden: usize,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        proto_start: bool,
        /// With r > 0 the head sees a shift ensemble of each image: the
        /// mean feature of its (2r+1)² translations by up to r pixels
        /// ([`conv::features`]), at (2r+1)² times the body's cost.
        #[serde(default, skip_serializing_if = "is_zero")]
        shift_radius: usize,
    },
    /// A class-shared head (as in `Conv4`) on feature vectors such as
    /// sentence embeddings. In order:
    /// - with `center`, a meta-learned vector `center` `[dim]` is subtracted
    ///   and the result L2-normalized (SimpleShot's "CL2N"); with
    ///   `task_center` too, adaptation starts each task's center at θ's plus
    ///   the mean of its support inputs ([`Architecture::start_params`]), so
    ///   a domain no training task came from is centered on itself;
    /// - an optional MLP body of `hidden` layers (`l1.weight`, ...), ReLU
    ///   between them, or with `linear_body`, none (a learned linear map of
    ///   the embedding, which training starts at the identity);
    /// - the head: `scale · w_c·h + b_c`, or with `cosine`,
    ///   `scale · cos(w_c, h) + b_c`. `scale` is the logits' temperature: it
    ///   lets α live near 1, where Adam's absolute step sizes suit it.
    ///
    /// With no hidden layers, one step from the shared row is a prototype
    /// classifier whose per-dimension metric is the meta-learned α; the
    /// cosine head makes that step's classifier independent of the class count.
    /// With `proto_start`, each task's rows start at its class prototypes
    /// instead ([`proto`]).
    ///
    /// With `lexical` > 0 the input is the embedding (`dim` values) followed
    /// by that many token buckets (`crate::encoder::lexical`); the buckets
    /// bypass the center and the body, and the head row holds one weight per
    /// bucket after the body's: class c scores
    /// `scale · cos(w_c, h) + v_c·t + b_c` (`scale · (w_c·h + v_c·t) + b_c`
    /// without `cosine`), so each step
    /// moves a class's bucket weights by α∘(its support's buckets − the
    /// others'): which words tell two intents apart, learned per task at
    /// meta-learned per-bucket rates.
    Features {
        dim: usize,
        #[serde(default)]
        hidden: Vec<usize>,
        #[serde(default = "one")]
        scale: f64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        center: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cosine: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        linear_body: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        task_center: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        proto_start: bool,
        #[serde(default, skip_serializing_if = "is_zero")]
        lexical: usize,
    },
}

/// The largest conv4 shift ensemble: 25 copies of each image.
pub const MAX_SHIFT_RADIUS: usize = 2;

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn one() -> f64 {
    1.0
}

/// A parameter's name and shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl Architecture {
    /// The parameters in their canonical order: `l1.weight`, `l1.bias`, `l2.weight`, ...
    pub fn params(&self) -> Vec<ParamSpec> {
        match self {
            Architecture::Conv4 {
                channels, side, hidden, ..
            } => {
                let mut v = Vec::new();
                for l in 1..=4 {
                    let cin = if l == 1 { *channels } else { *hidden };
                    v.push(ParamSpec {
                        name: format!("c{l}.weight"),
                        shape: vec![*hidden, cin, 3, 3],
                    });
                    v.push(ParamSpec {
                        name: format!("c{l}.bias"),
                        shape: vec![*hidden],
                    });
                }
                let s = conv::feature_side(*side);
                v.push(ParamSpec {
                    name: "head.weight".into(),
                    shape: vec![1, hidden * s * s],
                });
                v.push(ParamSpec {
                    name: "head.bias".into(),
                    shape: vec![1],
                });
                v
            }
            Architecture::Features {
                dim,
                hidden,
                center,
                lexical,
                ..
            } => {
                let mut sizes = vec![*dim];
                sizes.extend(hidden);
                let mut v = Vec::new();
                if *center {
                    v.push(ParamSpec {
                        name: "center".into(),
                        shape: vec![*dim],
                    });
                }
                v.extend(Architecture::Mlp { sizes: sizes.clone() }.params());
                v.push(ParamSpec {
                    name: "head.weight".into(),
                    shape: vec![1, *sizes.last().unwrap_or(dim) + lexical],
                });
                v.push(ParamSpec {
                    name: "head.bias".into(),
                    shape: vec![1],
                });
                v
            }
            Architecture::Mlp { sizes } if sizes.len() < 2 => Vec::new(),
            Architecture::Mlp { sizes } => sizes
                .windows(2)
                .enumerate()
                .flat_map(|(i, w)| {
                    [
                        ParamSpec {
                            name: format!("l{}.weight", i + 1),
                            shape: vec![w[1], w[0]],
                        },
                        ParamSpec {
                            name: format!("l{}.bias", i + 1),
                            shape: vec![w[1]],
                        },
                    ]
                })
                .collect(),
        }
    }

    /// Number of scalar parameters in θ.
    pub fn num_params(&self) -> usize {
        self.params().iter().map(|p| p.shape.iter().product::<usize>()).sum()
    }

    /// Flattened input size.
    pub fn input_dim(&self) -> usize {
        match self {
            Architecture::Mlp { sizes } => sizes[0],
            Architecture::Conv4 { channels, side, .. } => channels * side * side,
            Architecture::Features { dim, lexical, .. } => dim + lexical,
        }
    }

    /// Number of outputs (for a class-shared head: any number; this returns `usize::MAX`).
    pub fn output_dim(&self) -> usize {
        match self {
            Architecture::Mlp { sizes } => *sizes.last().unwrap_or(&0),
            Architecture::Conv4 { .. } | Architecture::Features { .. } => usize::MAX,
        }
    }

    /// True when the head is one shared row that [`Architecture::for_classes`] expands.
    pub fn shared_head(&self) -> bool {
        matches!(self, Architecture::Conv4 { .. } | Architecture::Features { .. })
    }

    /// θ (or α) for an `n`-class task: a class-shared head row is repeated
    /// `n` times (a broadcast, so meta-gradients sum over the rows); other
    /// tensors, and scalar α, pass through. Works on shared and per-task tensors.
    pub fn for_classes(&self, params: &[Tensor], n: usize) -> Result<Vec<Tensor>> {
        if !self.shared_head() {
            return Ok(params.to_vec());
        }
        let k = params.len();
        params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if i + 2 < k || p.rank() == 0 {
                    return Ok(p.clone());
                }
                let shared_rank = if i + 2 == k { 2 } else { 1 };
                let mut dims = p.dims().to_vec();
                let row = p.rank() - shared_rank; // the class dimension
                if dims[row] == n {
                    return Ok(p.clone());
                }
                dims[row] = n;
                p.broadcast_as(dims)
            })
            .collect()
    }

    /// Checks the architecture itself is well formed.
    pub fn validate(&self) -> std::result::Result<(), String> {
        match self {
            Architecture::Conv4 {
                channels,
                side,
                hidden,
                shift_radius,
                ..
            } => {
                if *channels == 0 || *hidden == 0 || conv::feature_side(*side) == 0 {
                    return Err(format!(
                        "conv4 needs channels and hidden > 0 and side >= 16, got {channels}, {hidden}, {side}"
                    ));
                }
                if *shift_radius > MAX_SHIFT_RADIUS {
                    return Err(format!(
                        "conv4's shift_radius is at most {MAX_SHIFT_RADIUS} ({} copies of each image), got {shift_radius}",
                        conv::shift_copies(MAX_SHIFT_RADIUS)
                    ));
                }
            }
            Architecture::Features {
                dim,
                hidden,
                scale,
                center,
                task_center,
                ..
            } => {
                if *dim == 0 || hidden.contains(&0) || !(scale.is_finite() && *scale > 0.0) {
                    return Err(format!(
                        "features needs dim > 0, non-zero hidden sizes and a positive scale, got {dim}, {hidden:?}, {scale}"
                    ));
                }
                if *task_center && !*center {
                    return Err("features' task_center needs center".into());
                }
            }
            Architecture::Mlp { sizes } => {
                if sizes.len() < 2 || sizes.contains(&0) {
                    return Err(format!(
                        "mlp sizes must have at least 2 non-zero entries, got {sizes:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The vectors a nearest-centroid baseline compares: the conv4's
    /// normalized body features (what its head sees, under θ), else the
    /// inputs themselves (the intents head's input is the encoder's
    /// embedding). `x` is `[T, N, in]`.
    pub fn centroid_features(&self, params: &[Tensor], x: &Tensor) -> Result<Tensor> {
        match self {
            Architecture::Conv4 { .. } => self.embed(params, x),
            _ => Ok(x.clone()),
        }
    }

    /// Per-task θ (leading dim `T`) as adaptation starts from it on the
    /// support inputs `x` `[T, N, in]`: the parameters themselves, except
    /// that with `task_center` the center becomes θ's plus each task's mean
    /// support input, and with `proto_start` the head's rows start at the
    /// task's class prototypes ([`proto`]; `onehot` `[T, N, C]` names each
    /// row's class, and its features are computed `rows` at a time, with
    /// `check` before each chunk).
    /// `weights` `[T, N]` weigh the rows in those means (padded rows 0; they
    /// are normalized per task or class); `None`: every row alike.
    pub fn start_params(
        &self,
        mut params: Vec<Tensor>,
        x: &Tensor,
        onehot: Option<&Tensor>,
        weights: Option<&Tensor>,
        rows: usize,
        check: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Vec<Tensor>> {
        if let Architecture::Features {
            task_center: true, dim, ..
        } = self
        {
            let x = x.narrow(2, 0, *dim)?;
            let x = &x;
            let mean = match weights {
                None => x.mean(1)?,
                Some(w) => x
                    .broadcast_mul(&w.unsqueeze(2)?)?
                    .sum(1)?
                    .broadcast_div(&w.sum_keepdim(1)?)?,
            };
            params[0] = params[0].broadcast_add(&mean)?.contiguous()?;
        }
        if self.proto_start() {
            let onehot =
                onehot.ok_or_else(|| candle_core::Error::Msg("a prototype start needs class labels".into()))?;
            let k = params.len();
            let body = &params[..k - 2];
            let h = layers::in_row_chunks(x, rows, check, &|c| self.embed(body, c))?;
            let kind = match self {
                Architecture::Features { scale, cosine, .. } => proto::HeadKind {
                    scale: *scale,
                    cosine: *cosine,
                },
                _ => proto::HeadKind {
                    scale: 1.0,
                    cosine: false,
                },
            };
            // The embedding's part starts at the prototypes; any token
            // buckets' weights at the shared row, as without the start.
            let lexical = self.lexical();
            let f = h.dim(2)? - lexical;
            let w0 = &params[k - 2];
            let (mut w, b) = proto::start(
                &w0.narrow(D::Minus1, 0, f)?,
                &params[k - 1],
                &h.narrow(2, 0, f)?,
                onehot,
                weights,
                kind,
            )?;
            if lexical > 0 {
                let (t, c, _) = w.dims3()?;
                let v = w0.narrow(D::Minus1, f, lexical)?.broadcast_as((t, c, lexical))?;
                w = Tensor::cat(&[&w, &v], 2)?;
            }
            params[k - 2] = w;
            params[k - 1] = b;
        }
        Ok(params)
    }

    /// Token buckets after a feature model's embedding (0: none).
    pub fn lexical(&self) -> usize {
        match self {
            Architecture::Features { lexical, .. } => *lexical,
            _ => 0,
        }
    }

    /// Body passes each input costs: a conv4 shift ensemble's copies, else 1.
    pub fn passes_per_input(&self) -> usize {
        match self {
            Architecture::Conv4 { shift_radius, .. } => conv::shift_copies(*shift_radius),
            _ => 1,
        }
    }

    /// True when adaptation starts the head at the class prototypes.
    pub fn proto_start(&self) -> bool {
        matches!(
            self,
            Architecture::Conv4 { proto_start: true, .. } | Architecture::Features { proto_start: true, .. }
        )
    }

    /// What the head sees, `[T, N, F]`: the conv4's normalized features, or
    /// a feature model's centered, normalized and body-mapped vector (for a
    /// cosine head, before its own normalization), then any token buckets. `params` are the body's
    /// (the head's two tensors may follow; they are not read).
    pub fn embed(&self, params: &[Tensor], x: &Tensor) -> Result<Tensor> {
        match self {
            Architecture::Conv4 {
                channels,
                side,
                shift_radius,
                ..
            } => conv::features(&params[..8], x, *channels, *side, *shift_radius),
            Architecture::Features {
                dim,
                hidden,
                center,
                linear_body,
                lexical,
                ..
            } => {
                let (x, tokens) = match lexical {
                    0 => (x.clone(), None),
                    _ => (x.narrow(2, 0, *dim)?, Some(x.narrow(2, *dim, *lexical)?)),
                };
                let (mut h, params) = if *center {
                    (unit_rows(&x.broadcast_sub(&per_task_rows(&params[0])?)?)?, &params[1..])
                } else {
                    (x.clone(), params)
                };
                for i in 0..hidden.len() {
                    h = linear(&h, &params[2 * i], &params[2 * i + 1])?;
                    if !linear_body {
                        h = h.relu()?;
                    }
                }
                match tokens {
                    None => Ok(h),
                    Some(t) => Tensor::cat(&[&h, &t], 2),
                }
            }
            Architecture::Mlp { .. } => Ok(x.clone()),
        }
    }

    /// The head's logits from what it sees: `scale · h·w_c + b_c`, or with
    /// `cosine`, `scale · cos(w_c, h) + b_c` (conv4: scale 1, no cosine);
    /// token buckets add `v_c·t` (the cosine head) or are scaled with `h`.
    pub fn head(&self, h: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        match self {
            Architecture::Features {
                scale,
                cosine: true,
                lexical,
                ..
            } if *lexical > 0 => {
                let f = h.dim(2)? - lexical;
                let wf = w.dim(D::Minus1)? - lexical;
                // scale · cos(w_c, h) + v_c·t + b_c: one matmul over the
                // scaled, normalized embedding part and the buckets side by side.
                let hw = Tensor::cat(
                    &[
                        &unit_rows(&h.narrow(2, 0, f)?)?.affine(*scale, 0.0)?,
                        &h.narrow(2, f, *lexical)?,
                    ],
                    2,
                )?;
                let ww = Tensor::cat(
                    &[
                        &unit_rows(&w.narrow(D::Minus1, 0, wf)?)?,
                        &w.narrow(D::Minus1, wf, *lexical)?,
                    ],
                    w.rank() - 1,
                )?;
                linear(&hw, &ww, b)
            }
            Architecture::Features { scale, cosine, .. } => {
                let (h, w) = if *cosine {
                    (unit_rows(h)?, unit_rows(w)?)
                } else {
                    (h.clone(), w.clone())
                };
                linear(&h.affine(*scale, 0.0)?, &w, b)
            }
            _ => linear(h, w, b),
        }
    }

    /// Forward pass. `x` is `[T, N, in]`; each parameter is either shared
    /// (its spec's shape) or per task (a leading `T`). Returns `[T, N, out]`.
    pub fn forward(&self, params: &[Tensor], x: &Tensor) -> Result<Tensor> {
        match self {
            Architecture::Conv4 { .. } | Architecture::Features { .. } => {
                let k = params.len();
                self.head(&self.embed(&params[..k - 2], x)?, &params[k - 2], &params[k - 1])
            }
            Architecture::Mlp { sizes } => {
                let layers = sizes.len() - 1;
                let mut h = x.clone();
                for l in 0..layers {
                    h = linear(&h, &params[2 * l], &params[2 * l + 1])?;
                    if l + 1 < layers {
                        h = h.relu()?;
                    }
                }
                Ok(h)
            }
        }
    }
}

/// What a loss compares predictions with.
#[derive(Clone, Debug)]
pub enum Target {
    /// Regression targets, `[T, N, out]`.
    Values(Tensor),
    /// Classification targets as one-hot rows, `[T, N, C]`.
    OneHot(Tensor),
}

impl Target {
    /// The same target on another device (or just cloned).
    pub fn tensor(&self) -> &Tensor {
        match self {
            Target::Values(t) | Target::OneHot(t) => t,
        }
    }

    /// The one-hot rows of a classification target.
    pub fn onehot(&self) -> Option<&Tensor> {
        match self {
            Target::OneHot(t) => Some(t),
            Target::Values(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn mlp() -> Architecture {
        Architecture::Mlp { sizes: vec![3, 4, 2] }
    }

    #[test]
    fn params_are_named_in_torch_layout() {
        let names: Vec<_> = mlp().params().into_iter().map(|p| (p.name, p.shape)).collect();
        assert_eq!(
            names,
            vec![
                ("l1.weight".to_string(), vec![4, 3]),
                ("l1.bias".to_string(), vec![4]),
                ("l2.weight".to_string(), vec![2, 4]),
                ("l2.bias".to_string(), vec![2])
            ]
        );
        assert_eq!(mlp().num_params(), 12 + 4 + 8 + 2);
    }

    #[test]
    fn shared_and_per_task_parameters_give_the_same_forward() {
        let dev = Device::Cpu;
        let arch = mlp();
        let theta: Vec<Tensor> = arch
            .params()
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Tensor::arange(0f32, p.shape.iter().product::<usize>() as f32, &dev)
                    .unwrap()
                    .affine(0.1, i as f64 * -0.2)
                    .unwrap()
                    .reshape(p.shape.as_slice())
                    .unwrap()
            })
            .collect();
        let x = Tensor::new(
            &[
                [[1f32, -2.0, 0.5], [0.0, 1.0, -1.0]],
                [[2f32, 2.0, 2.0], [-1.0, 0.0, 0.0]],
            ],
            &dev,
        )
        .unwrap();
        let shared = arch.forward(&theta, &x).unwrap();
        let per_task: Vec<Tensor> = theta
            .iter()
            .map(|t| t.broadcast_left(2).unwrap().contiguous().unwrap())
            .collect();
        let batched = arch.forward(&per_task, &x).unwrap();
        assert_eq!(shared.dims(), &[2, 2, 2]);
        assert_eq!(shared.to_vec3::<f32>().unwrap(), batched.to_vec3::<f32>().unwrap());
        // Hand check of one output: relu(W1 x + b1) then W2 h + b2.
        let w1 = theta[0].to_vec2::<f32>().unwrap();
        let b1 = theta[1].to_vec1::<f32>().unwrap();
        let w2 = theta[2].to_vec2::<f32>().unwrap();
        let b2 = theta[3].to_vec1::<f32>().unwrap();
        let xin = [1f32, -2.0, 0.5];
        let h: Vec<f32> = (0..4)
            .map(|j| (0..3).map(|i| w1[j][i] * xin[i]).sum::<f32>() + b1[j])
            .map(|v| v.max(0.0))
            .collect();
        let y0 = (0..4).map(|j| w2[0][j] * h[j]).sum::<f32>() + b2[0];
        assert!((shared.to_vec3::<f32>().unwrap()[0][0][0] - y0).abs() < 1e-5);
    }

    /// The buckets bypass the center and the body: the cosine head scores
    /// `scale · cos(w_c, h) + v_c·t + b_c`.
    #[test]
    fn token_buckets_add_a_dot_product_to_the_cosine_head() {
        let dev = Device::Cpu;
        let arch = Architecture::Features {
            dim: 2,
            hidden: vec![],
            scale: 10.0,
            center: true,
            cosine: true,
            linear_body: false,
            task_center: false,
            proto_start: false,
            lexical: 3,
        };
        assert_eq!(arch.input_dim(), 5);
        let center = Tensor::new(&[1f32, 0.0], &dev).unwrap();
        // Two classes' rows: the embedding's weights, then the buckets'.
        let w = Tensor::new(&[[[0f32, 2.0, 0.5, -1.0, 0.0], [3.0, 0.0, 0.0, 2.0, 7.0]]], &dev).unwrap();
        let b = Tensor::new(&[[0.25f32, -0.5]], &dev).unwrap();
        let x = Tensor::new(&[[[1f32, 3.0, 1.0, 1.0, 0.0]]], &dev).unwrap();
        let y = arch.forward(&[center, w, b], &x).unwrap().to_vec3::<f32>().unwrap();
        // x − center = (0, 3), unit (0, 1): cos with (0, 2) is 1, with (3, 0) is 0.
        let want = [10.0 + 0.5 - 1.0 + 0.25, 0.0 + 2.0 - 0.5];
        for (got, want) in y[0][0].iter().zip(want) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
    }

    #[test]
    fn cross_entropy_masks_unused_outputs() {
        let dev = Device::Cpu;
        // 3 outputs, 2 classes used: the third logit must not matter.
        let logits = Tensor::new(&[[[1f32, 2.0, 100.0]]], &dev).unwrap();
        let onehot = Target::OneHot(Tensor::new(&[[[0f32, 1.0]]], &dev).unwrap());
        let l = loss_per_task(TaskKind::Classification, &logits, &onehot)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        let want = -(2f32.exp() / (1f32.exp() + 2f32.exp())).ln();
        assert!((l - want).abs() < 1e-6, "{l} vs {want}");
    }
}
