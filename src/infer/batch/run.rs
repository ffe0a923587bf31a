//! Running one batch (all its jobs share a key): adaptations padded to one
//! `[T, N, …]` batch, then their continuations, with the stateless requests'
//! predictions stacked into batched forwards; or sessions' predictions
//! stacked the same way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use serde_json::Value;

use super::job::{Job, Reply, Then, Work};
use crate::infer::engine::{self, Query};
use crate::infer::error::{InferError, Result};
use crate::infer::input::{self, InputLimits, Inputs, RawInputs, ValidSupport};
use crate::infer::metrics;
use crate::infer::pool::Cancel;
use crate::infer::registry::ServedModel;
use crate::model::batch::{row_bucket, stack_tasks};

pub(super) fn run_batch(batch: Vec<Job>) {
    let Some(first) = batch.first() else { return };
    let served = first.served.clone();
    match first.work {
        Work::Adapt { .. } => adapt(&served, batch),
        Work::Predict { .. } => predict(&served, batch),
    }
}

/// What every job carries to its end.
struct Common {
    rows: usize,
    limits: InputLimits,
    cancel: Cancel,
    reply: Reply,
}

impl Common {
    fn split(job: Job) -> (Common, Work) {
        let c = Common {
            rows: job.rows,
            limits: job.limits,
            cancel: job.cancel,
            reply: job.reply,
        };
        (c, job.work)
    }
}

/// A decoded adaptation job, still wanted.
struct Adapting {
    valid: ValidSupport,
    then: Then,
    c: Common,
}

fn decode(served: &ServedModel, raw: &RawInputs, field: &str, c: &Common) -> Result<Inputs> {
    c.cancel.check()?;
    input::decode_inputs(&served.model.manifest, raw, field, &c.limits, &c.cancel)
}

fn wrong_kind() -> InferError {
    InferError::internal("internal_error", "a batch mixed adaptations and predictions")
}

fn adapt(served: &Arc<ServedModel>, batch: Vec<Job>) {
    let mut steps = 0;
    let mut ready = Vec::with_capacity(batch.len());
    for job in batch {
        let (c, work) = Common::split(job);
        let Work::Adapt {
            support,
            labels,
            steps: s,
            then,
        } = work
        else {
            let _ = c.reply.send(Err(wrong_kind()));
            continue;
        };
        steps = s;
        match decode(served, &support.inputs, "support.inputs", &c) {
            Ok(inputs) => ready.push(Adapting {
                valid: ValidSupport {
                    inputs,
                    n: support.inputs.len(),
                    labels,
                },
                then,
                c,
            }),
            Err(e) => {
                let _ = c.reply.send(Err(e));
            }
        }
    }
    if ready.is_empty() {
        return;
    }
    let name = &served.info.name;
    metrics::batch(name, "adapt", ready.len());
    let start = Instant::now();
    let cancels: Vec<Cancel> = ready.iter().map(|r| r.c.cancel.clone()).collect();
    let all_cancelled = move || cancels.iter().all(Cancel::is_cancelled);
    let sets: Vec<&ValidSupport> = ready.iter().map(|r| &r.valid).collect();
    let adapted = engine::adapt_batch(served, &sets, steps, &all_cancelled);
    metrics::adaptation(name, start.elapsed().as_secs_f64());
    let models = match adapted {
        Ok(models) => models,
        Err(e) => {
            for r in ready {
                let _ = r.c.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    let default_steps = served.model.manifest.default_steps;
    let mut pending = Vec::new();
    for (r, a) in ready.into_iter().zip(models) {
        let ok =
            r.c.cancel
                .check()
                .and_then(|_| engine::check_converged(&a, steps, default_steps));
        match (ok, r.then) {
            (Err(e), _) => {
                let _ = r.c.reply.send(Err(e));
            }
            (Ok(()), Then::After(after)) => {
                let _ = r.c.reply.send(after(served, r.valid, a, &r.c.cancel));
            }
            (Ok(()), Then::Predict(queries)) => match decode(served, &queries, "inputs", &r.c) {
                Ok(inputs) => pending.push(Pending {
                    params: a.params,
                    inputs,
                    n: queries.len(),
                    classes: r.valid.labels.classes().map(<[Value]>::to_vec),
                    c: r.c,
                }),
                Err(e) => {
                    let _ = r.c.reply.send(Err(e));
                }
            },
        }
    }
    predict_pending(served, pending);
}

fn predict(served: &Arc<ServedModel>, batch: Vec<Job>) {
    let mut pending = Vec::with_capacity(batch.len());
    for job in batch {
        let (c, work) = Common::split(job);
        let Work::Predict {
            params,
            queries,
            classes,
        } = work
        else {
            let _ = c.reply.send(Err(wrong_kind()));
            continue;
        };
        match decode(served, &queries, "inputs", &c) {
            Ok(inputs) => pending.push(Pending {
                params,
                inputs,
                n: queries.len(),
                classes,
                c,
            }),
            Err(e) => {
                let _ = c.reply.send(Err(e));
            }
        }
    }
    predict_pending(served, pending);
}

/// A decoded query set with its task's adapted parameters (each `[1, …]`).
struct Pending {
    params: Vec<Tensor>,
    inputs: Inputs,
    n: usize,
    classes: Option<Vec<Value>>,
    c: Common,
}

/// Predicts every pending query set: those that fit one chunk stacked by
/// row bucket into one forward each (`engine::predict_batch`), the rest
/// alone in chunks. The same bits either way (`engine::predict`).
fn predict_pending(served: &ServedModel, pending: Vec<Pending>) {
    let mut groups: BTreeMap<usize, Vec<Pending>> = BTreeMap::new();
    for p in pending {
        let bucket = row_bucket(served.model.architecture(), p.n);
        if bucket > p.c.rows {
            let out = engine::predict(
                served,
                &p.params,
                p.classes.as_deref(),
                &p.inputs,
                p.n,
                p.c.rows,
                &p.c.cancel,
            );
            let _ = p.c.reply.send(out.map(|v| Box::new(v) as _));
        } else {
            groups.entry(bucket).or_default().push(p);
        }
    }
    for (bucket, group) in groups {
        let (live, gone): (Vec<_>, Vec<_>) = group.into_iter().partition(|p| !p.c.cancel.is_cancelled());
        for p in gone {
            let _ = p.c.reply.send(Err(InferError::cancelled()));
        }
        if live.is_empty() {
            continue;
        }
        metrics::batch(&served.info.name, "predict", live.len());
        let tasks: Vec<&[Tensor]> = live.iter().map(|p| &p.params[..]).collect();
        let queries: Vec<Query> = live
            .iter()
            .map(|p| Query {
                inputs: &p.inputs,
                n: p.n,
                classes: p.classes.as_deref(),
            })
            .collect();
        let out = stack_tasks(&tasks)
            .map_err(InferError::from)
            .and_then(|params| engine::predict_batch(served, &params, &queries, bucket));
        drop(queries);
        match out {
            Ok(answers) => {
                for (p, a) in live.into_iter().zip(answers) {
                    let _ = p.c.reply.send(a.map(|v| Box::new(v) as _));
                }
            }
            Err(e) => {
                for p in live {
                    let _ = p.c.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
