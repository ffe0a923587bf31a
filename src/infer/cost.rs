//! Cost admission: what a request will cost, priced from the model's
//! architecture and the request's counts before any input is decoded, and
//! the limits it must fit.
//!
//! The estimate is deliberately simple and on the safe side:
//! - compute: an adaptation step is a forward and a backward pass, about
//!   three forwards; the loss after the last step is one more forward;
//!   queries are one forward each; a text costs the encoder's FLOPs per
//!   token for at most `max_tokens` tokens (a token is at least one byte).
//! - memory: the decoded inputs, the parameters (θ, α, gradients, a copy per
//!   class for a class-shared head) and one chunk of activations. Forward
//!   and backward run in chunks of `rows` examples (`model::adapt`), chosen
//!   so a chunk's activations stay under `--max-activation-mb`.
//!
//! Per-example activation bytes are counted layer by layer (the conv's
//! im2col matrix, its output, the pooled and rectified maps, each once for
//! the forward and once for its gradient); `benches`/`docs/benchmarks.md`
//! compare them with measured peak RSS.

use crate::model::rule::UpdateRule;
use crate::model::{conv, Architecture, InputKind, Manifest};

use super::error::{InferError, Result};

/// What a request asks for, known before decoding.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Support examples (0 for a prediction on an adapted session).
    pub support: usize,
    /// Outputs per example: classes in the support set (1 for regression).
    pub classes: usize,
    pub steps: usize,
    /// Query inputs to predict.
    pub queries: usize,
    /// For text models: the JSON bytes of all texts (an upper bound on tokens).
    pub text_bytes: usize,
}

/// The priced request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub flops: f64,
    pub peak_bytes: u64,
    /// Examples per forward/backward chunk.
    pub rows: usize,
}

/// Effective per-request limits for one model: the manifest's, else the
/// architecture's defaults, each capped by the server's flags.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct CostLimits {
    pub max_support: usize,
    pub max_inputs: usize,
    pub max_gflop: f64,
    pub max_memory_mb: u64,
}

/// The server's caps on any one request (flags).
#[derive(Clone, Copy, Debug)]
pub struct ServerCaps {
    pub max_support: usize,
    pub max_inputs: usize,
    pub max_gflop: f64,
    pub max_memory_mb: u64,
    /// The activation memory one chunk may use.
    pub max_activation_bytes: u64,
}

/// FLOPs per token of the encoder in front of a text model (MiniLM-L6:
/// 6 layers of 384 wide with 1,536-wide feed-forward, about 2·11M
/// multiply-adds a token, plus attention at 256 tokens).
pub const ENCODER_FLOPS_PER_TOKEN: f64 = 2.5e7;

const F32: u64 = 4;

/// What candle holds beyond the layer-by-layer count on conv4 (contiguous
/// copies of transposed maps, gradients accumulated per op): a 127-image
/// chunk raised peak RSS by 431 MiB, 1.7× the count; 2× is the bound used.
const CONV_OVERHEAD: u64 = 2;

/// Per-example figures of an architecture.
struct Profile {
    /// One forward pass, one example, excluding the head's per-class part.
    fwd_flops: f64,
    /// The head's forward FLOPs per class.
    head_flops_per_class: f64,
    /// Activation bytes one example holds during a forward and backward pass.
    act_bytes: u64,
}

fn profile(arch: &Architecture) -> Profile {
    match arch {
        Architecture::Mlp { sizes } => {
            let fwd: usize = sizes.windows(2).map(|w| 2 * w[0] * w[1]).sum();
            let acts: usize = sizes.iter().sum();
            Profile {
                fwd_flops: fwd as f64,
                head_flops_per_class: 0.0,
                act_bytes: 4 * F32 * acts as u64,
            }
        }
        Architecture::Conv4 {
            channels, side, hidden, ..
        } => {
            let (mut s, mut cin) = (*side, *channels);
            let (mut fwd, mut acts) = (0usize, 0usize);
            for _ in 0..4 {
                let px = s * s;
                fwd += 2 * hidden * cin * 9 * px;
                // im2col, conv out, pooled, rectified; each with its gradient.
                acts += 2 * (cin * 9 * px + hidden * px + hidden * px / 2);
                s /= 2;
                cin = *hidden;
            }
            let feat = hidden * conv::feature_side(*side).pow(2);
            // A shift ensemble runs every copy through the body.
            let copies = arch.passes_per_input();
            Profile {
                fwd_flops: (copies * fwd) as f64,
                head_flops_per_class: 2.0 * feat as f64,
                act_bytes: CONV_OVERHEAD * F32 * (copies * (acts + 4 * feat) + channels * side * side * copies) as u64,
            }
        }
        Architecture::Features {
            dim, hidden, lexical, ..
        } => {
            let mut sizes = vec![*dim];
            sizes.extend(hidden);
            let fwd: usize = sizes.windows(2).map(|w| 2 * w[0] * w[1]).sum::<usize>() + 4 * dim;
            // The head reads the body's output and any token buckets beside it.
            let head = sizes.last().unwrap_or(dim) + lexical;
            Profile {
                fwd_flops: fwd as f64,
                head_flops_per_class: 2.0 * head as f64,
                act_bytes: 6 * F32 * (sizes.iter().sum::<usize>() + 2 * lexical) as u64,
            }
        }
    }
}

/// One example's forward FLOPs on `arch` (one class for a shared head).
pub fn forward_flops(arch: &Architecture) -> f64 {
    let p = profile(arch);
    p.fwd_flops + p.head_flops_per_class
}

/// The limits that apply to `m`'s requests.
pub fn limits(m: &Manifest, caps: &ServerCaps) -> CostLimits {
    let l = &m.limits;
    let (support, gflop, mem) = match m.architecture {
        // A conv4 step costs about 60 MFLOP an example: 1,000 examples
        // is a few seconds on 2 cores.
        Architecture::Conv4 { .. } => (1_000, 200.0, 1024),
        Architecture::Features { .. } => (2_000, 200.0, 1024),
        Architecture::Mlp { .. } => (10_000, 200.0, 1024),
    };
    CostLimits {
        max_support: l.max_support.unwrap_or(support).min(caps.max_support),
        max_inputs: l.max_inputs.unwrap_or(caps.max_inputs).min(caps.max_inputs),
        max_gflop: l.max_gflop.unwrap_or(gflop).min(caps.max_gflop),
        max_memory_mb: l.max_memory_mb.unwrap_or(mem).min(caps.max_memory_mb),
    }
}

/// Examples per chunk so that one chunk's activations fit in `max_bytes`.
pub fn chunk_rows(arch: &Architecture, classes: usize, max_bytes: u64) -> usize {
    let p = profile(arch);
    let per = p.act_bytes + F32 * 4 * classes as u64;
    ((max_bytes / per.max(1)) as usize).max(1)
}

/// Prices a request on `m`, with forward/backward chunks of `rows` examples.
pub fn estimate(m: &Manifest, c: &Counts, rows: usize) -> Estimate {
    let p = profile(&m.architecture);
    let classes = c.classes.max(1) as f64;
    let fwd = p.fwd_flops + p.head_flops_per_class * classes;
    let n = c.support as f64;
    let mut flops = c.steps as f64 * 3.0 * fwd * n + if c.support > 0 { fwd * n } else { 0.0 };
    // A prototype start runs the support set through the body once more.
    if m.architecture.proto_start() {
        flops += p.fwd_flops * n;
    }
    flops += fwd * c.queries as f64;
    let in_dim: usize = m.input.shape.iter().product();
    let mut bytes = F32 * in_dim as u64 * (c.support + c.queries) as u64;
    if m.input.kind == InputKind::Text {
        if let Some(e) = &m.encoder {
            let texts = c.support + c.queries;
            let tokens = c.text_bytes.min(texts * e.max_tokens);
            flops += ENCODER_FLOPS_PER_TOKEN * tokens as f64;
            // One encoder batch of 32 texts at most: token states of every layer.
            let batch = texts.min(32) as u64;
            bytes += batch * e.max_tokens as u64 * e.dim as u64 * F32 * 16 + c.text_bytes as u64;
        }
    }
    let params = m.architecture.num_params() as u64;
    // θ, α, a copy being updated and its gradient; a shared head per class.
    bytes += 4 * F32 * params;
    // What the rule carries between steps and its elementwise work per step:
    // momentum's velocity; the LSTM's two gates and their inputs.
    let (state, ops) = match m.update_rule {
        UpdateRule::Metasgd | UpdateRule::PerStep => (0, 0),
        UpdateRule::Momentum => (1, 4),
        UpdateRule::Lstm => (4, 40),
    };
    bytes += state * F32 * params;
    flops += (c.steps as u64 * ops * params) as f64;
    if m.architecture.shared_head() {
        bytes += 4 * F32 * (p.head_flops_per_class as u64 / 2) * c.classes as u64;
    }
    let busy = rows.min(c.support.max(c.queries)).max(1) as u64;
    bytes += busy * (p.act_bytes + F32 * 4 * c.classes as u64);
    Estimate {
        flops,
        peak_bytes: bytes,
        rows,
    }
}

/// Refuses a request whose estimate passes `model`'s limits, naming the
/// limit, its value and what was asked.
pub fn admit(model: &str, l: &CostLimits, c: &Counts, e: &Estimate) -> Result<()> {
    let what = || {
        format!(
            "{} support example(s) × {} step(s), {} class(es), {} query input(s)",
            c.support, c.steps, c.classes, c.queries
        )
    };
    let gflop = e.flops / 1e9;
    if gflop > l.max_gflop {
        super::metrics::too_costly(model, "max_gflop");
        return Err(InferError::too_large(
            "request_too_costly",
            format!(
                "this request would take an estimated {gflop:.1} GFLOP ({}); model {model:?} allows {} GFLOP \
                 a request (its manifest's limits.max_gflop, capped by --max-request-gflop): send fewer examples, \
                 steps or queries",
                what(),
                l.max_gflop
            ),
        ));
    }
    let mb = e.peak_bytes.div_ceil(1 << 20);
    if mb > l.max_memory_mb {
        super::metrics::too_costly(model, "max_memory_mb");
        return Err(InferError::too_large(
            "request_too_large",
            format!(
                "this request would need an estimated {mb} MiB ({}); model {model:?} allows {} MiB a request \
                 (its manifest's limits.max_memory_mb, capped by --max-request-memory-mb)",
                what(),
                l.max_memory_mb
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped Omniglot manifest without its shift ensemble: one body
    /// pass an image.
    fn omniglot() -> Manifest {
        let mut m: Manifest = serde_json::from_str(include_str!("../../models/omniglot/manifest.json")).unwrap();
        if let Architecture::Conv4 { shift_radius, .. } = &mut m.architecture {
            *shift_radius = 0;
        }
        m
    }

    fn caps() -> ServerCaps {
        ServerCaps {
            max_support: 10_000,
            max_inputs: 10_000,
            max_gflop: 1e9,
            max_memory_mb: 1 << 20,
            max_activation_bytes: 256 << 20,
        }
    }

    #[test]
    fn conv4_costs_about_20_mflop_an_example_forward() {
        let m = omniglot();
        let p = profile(&m.architecture);
        assert!((15e6..25e6).contains(&p.fwd_flops), "{}", p.fwd_flops);
        let one = estimate(
            &m,
            &Counts {
                support: 1,
                classes: 1,
                steps: 1,
                ..Default::default()
            },
            1000,
        );
        assert!((60e6..110e6).contains(&one.flops), "{}", one.flops);
    }

    /// A shift ensemble of radius 1 runs nine copies of every image through
    /// the body, forward and backward, and holds their activations: the
    /// estimate and the chunks follow.
    #[test]
    fn a_shift_ensemble_costs_nine_body_passes_an_image() {
        let plain = omniglot();
        let mut shifted = plain.clone();
        if let Architecture::Conv4 { shift_radius, .. } = &mut shifted.architecture {
            *shift_radius = 1;
        }
        let (p, s) = (profile(&plain.architecture), profile(&shifted.architecture));
        assert_eq!(s.fwd_flops, 9.0 * p.fwd_flops);
        assert!(s.act_bytes >= 9 * p.act_bytes, "{} vs {}", s.act_bytes, p.act_bytes);
        let c = Counts {
            support: 20,
            classes: 20,
            steps: 1,
            queries: 100,
            ..Default::default()
        };
        let ratio = estimate(&shifted, &c, 1000).flops / estimate(&plain, &c, 1000).flops;
        assert!((8.5..9.0).contains(&ratio), "{ratio}");
        assert!(chunk_rows(&shifted.architecture, 20, 256 << 20) * 9 <= chunk_rows(&plain.architecture, 20, 256 << 20));
    }

    /// The prototype start runs the support set through the body once more
    /// (`model::proto`), and is priced so.
    #[test]
    fn a_prototype_start_costs_one_more_forward_of_the_support_set() {
        let mut m = omniglot();
        let c = Counts {
            support: 100,
            classes: 20,
            steps: 2,
            ..Default::default()
        };
        let mut with = |on: bool| {
            if let Architecture::Conv4 { proto_start, .. } = &mut m.architecture {
                *proto_start = on;
            }
            estimate(&m, &c, 1000).flops
        };
        let (off, on) = (with(false), with(true));
        let body = profile(&omniglot().architecture).fwd_flops;
        assert!((on - off - 100.0 * body).abs() < 1.0, "{on} - {off}");
    }

    /// Token buckets widen every class's head row and each example's
    /// activations, and are priced so: the estimate once priced the head
    /// at the body's 384 values, not 384 + 1,024.
    #[test]
    fn token_buckets_are_priced_in_the_head_and_the_activations() {
        let shipped: Manifest = serde_json::from_str(include_str!("../../models/intents/manifest.json")).unwrap();
        let mut plain = shipped.clone();
        if let Architecture::Features { lexical, .. } = &mut plain.architecture {
            assert_eq!(*lexical, 1024, "the shipped intents model has token buckets");
            *lexical = 0;
        }
        let (with, without) = (profile(&shipped.architecture), profile(&plain.architecture));
        assert_eq!(with.head_flops_per_class, 2.0 * (384.0 + 1024.0));
        assert_eq!(without.head_flops_per_class, 2.0 * 384.0);
        assert!(with.act_bytes > without.act_bytes);
        assert_eq!(with.fwd_flops, without.fwd_flops, "the buckets bypass the body");
    }

    #[test]
    fn ten_thousand_images_are_refused_and_five_way_one_shot_is_not() {
        let m = omniglot();
        let l = limits(&m, &caps());
        let c = Counts {
            support: 10_000,
            classes: 5,
            steps: 1,
            queries: 0,
            text_bytes: 0,
        };
        let rows = chunk_rows(&m.architecture, 5, 256 << 20);
        let e = estimate(&m, &c, rows);
        let err = admit("omniglot", &l, &c, &e).unwrap_err();
        assert_eq!(err.code, "request_too_costly");
        assert!(
            err.message.contains("GFLOP") && err.message.contains("10000 support"),
            "{}",
            err.message
        );
        let c = Counts {
            support: 5,
            classes: 5,
            steps: 10,
            queries: 100,
            text_bytes: 0,
        };
        admit("omniglot", &l, &c, &estimate(&m, &c, rows)).unwrap();
    }

    #[test]
    fn chunks_keep_activations_under_the_bound() {
        let m = omniglot();
        let rows = chunk_rows(&m.architecture, 20, 64 << 20);
        let p = profile(&m.architecture);
        assert!(rows as u64 * p.act_bytes <= 64 << 20);
        assert!(rows >= 8, "{rows}");
        let small = estimate(
            &m,
            &Counts {
                support: 5000,
                classes: 20,
                steps: 1,
                ..Default::default()
            },
            rows,
        );
        let big = estimate(
            &m,
            &Counts {
                support: 5000,
                classes: 20,
                steps: 1,
                ..Default::default()
            },
            5000,
        );
        assert!(small.peak_bytes < big.peak_bytes / 10);
    }
}
