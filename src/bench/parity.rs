//! `metasgd parity`: the same adaptations and predictions on the CPU and on
//! another device (CUDA), for every served model, at several step counts;
//! prints the largest difference and fails past a tolerance. What
//! `scripts/gpu-check.sh` runs on a GPU machine.

use serde_json::json;

use crate::infer::engine;
use crate::infer::input::{Inputs, ValidLabels, ValidSupport};
use crate::infer::pool::Cancel;
use crate::infer::registry::{Registry, ServedModel};
use crate::model::{InputKind, TaskKind};
use crate::server::ServeConfig;

/// A fixed support set and queries for `m`: 10 points of a sine, 5-way
/// 1-shot ink patterns, or 5 short texts in 5 intents.
fn task(m: &ServedModel) -> (ValidSupport, Inputs, usize) {
    let man = &m.model.manifest;
    let dim: usize = man.input.shape.iter().product();
    let n = if man.task == TaskKind::Regression { 10 } else { 5 };
    let inputs = |k: usize, seed: usize| -> Inputs {
        match man.input.kind {
            InputKind::Text => Inputs::Texts(
                (0..k)
                    .map(|i| {
                        format!(
                            "please {} number {}",
                            ["book", "play", "call", "find", "stop"][i % 5],
                            i + seed
                        )
                    })
                    .collect(),
            ),
            _ => Inputs::Values(
                (0..k * dim)
                    .map(|i| {
                        if (i + seed) % 7 < 3 {
                            0.0
                        } else {
                            ((i * 13 + seed) % 11) as f32 / 10.0
                        }
                    })
                    .collect(),
            ),
        }
    };
    let labels = match man.task {
        TaskKind::Regression => ValidLabels::Values((0..n).map(|i| (i as f32 * 0.7).sin() * 2.0).collect()),
        TaskKind::Classification => ValidLabels::Classes {
            index: (0..n as u32).collect(),
            classes: (0..n).map(|c| json!(c)).collect(),
        },
    };
    (
        ValidSupport {
            inputs: inputs(n, 0),
            n,
            labels,
        },
        inputs(8, 3),
        8,
    )
}

/// Largest |a − b| between the two devices' outputs.
fn outputs(m: &ServedModel, steps: usize) -> anyhow::Result<Vec<f32>> {
    let (support, queries, q) = task(m);
    let cancel = Cancel::default();
    let a = engine::adapt_support(m, &support, steps, usize::MAX, &cancel)?;
    let classes = match &support.labels {
        ValidLabels::Classes { classes, .. } => Some(classes.clone()),
        ValidLabels::Values(_) => None,
    };
    let (pred, probs) = engine::predict(m, &a.params, classes.as_deref(), &queries, q, usize::MAX, &cancel)?;
    let mut out = vec![a.loss_after];
    match probs {
        Some(p) => out.extend(p.into_iter().flatten()),
        None => out.extend(pred.iter().map(|v| v.as_f64().unwrap_or(f64::NAN) as f32)),
    }
    Ok(out)
}

/// Compares every model on `device` with the CPU at each of `steps`.
pub fn run(cfg: &ServeConfig, device: &str, steps: &[usize], tolerance: f32) -> anyhow::Result<()> {
    let load = |dev: &str| -> anyhow::Result<Registry> {
        let mut c = cfg.clone();
        c.device = dev.to_string();
        let state = crate::server::build_state(&c)?;
        let core = std::sync::Arc::try_unwrap(state.core).map_err(|_| anyhow::anyhow!("the core is shared"))?;
        Ok(core.registry)
    };
    let (cpu, other) = (load("cpu")?, load(device)?);
    println!("| model | device | steps | max abs diff (loss, outputs) |\n|---|---|---|---|");
    let mut worst = 0f32;
    for (name, m) in cpu.iter() {
        let o = other.get(name)?;
        for &s in steps {
            let (a, b) = (outputs(m, s)?, outputs(&o, s)?);
            let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            println!("| {name} | {} | {s} | {d:.3e} |", o.info.device);
            worst = worst.max(if d.is_nan() { f32::INFINITY } else { d });
        }
    }
    anyhow::ensure!(
        worst <= tolerance,
        "largest difference {worst:e} is over the tolerance {tolerance:e}"
    );
    Ok(())
}
