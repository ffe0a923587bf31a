//! The HTTP-free core: the registry of served models, decoding of inputs,
//! cost admission, the compute pool, the engine and the sessions service.
//!
//! Every compute request goes the same way:
//! 1. counts and labels are checked, and the request is priced
//!    ([`cost`]) before anything in it is decoded; over a limit it is refused;
//! 2. it is admitted to the [`pool`] (bounded in all and per key);
//! 3. on a worker it decodes its inputs ([`input`]: numbers, PNGs, texts),
//!    adapts and predicts in chunks ([`engine`]), checking for cancellation
//!    between inputs, steps and chunks.
//!
//! Errors are [`InferError`]s; `server::error` maps them to HTTP once.

pub mod batch;
pub mod cost;
pub mod engine;
pub mod error;
pub mod input;
pub mod metrics;
pub mod pool;
pub mod registry;
pub mod sessions;

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use serde_json::Value;

pub use error::{InferError, Kind, Result};

use cost::{Counts, ServerCaps};
use engine::{AdaptedModel, Predicted};
use input::{InputLimits, RawInputs, SupportSet, ValidLabels, ValidSupport};
use pool::Pool;
use registry::{Registry, ServedModel};
use sessions::service::Sessions;
use sessions::{new_id, Record, SupportBlob};

/// The core's state, shared by every request.
pub struct Core {
    pub registry: Registry,
    pub pool: Pool,
    pub batcher: batch::Batcher,
    pub sessions: Sessions,
    pub inputs: InputLimits,
    pub caps: ServerCaps,
    pub default_ttl_seconds: u64,
}

/// A new session, as created.
pub struct Created {
    pub record: Record,
    pub loss_before: f32,
    pub loss_after: f32,
}

/// A request priced and admitted by cost, not yet run.
struct Priced {
    served: Arc<ServedModel>,
    steps: usize,
    labels: ValidLabels,
    rows: usize,
    /// The estimate's peak memory, in bytes.
    peak: u64,
}

fn text_bytes(m: &crate::model::Manifest, raw: &[Box<serde_json::value::RawValue>]) -> usize {
    if m.input.kind == crate::model::InputKind::Text {
        raw.iter().map(|r| r.get().len()).sum()
    } else {
        0
    }
}

impl Core {
    /// Checks and prices an adaptation on `model` (and `queries` predictions
    /// after it), refusing it over a limit. Decodes nothing but the labels.
    /// `queries` is `None` for a session's creation (nothing to predict).
    fn price(
        &self,
        model: &str,
        support: &SupportSet,
        steps: Option<i64>,
        queries: Option<&RawInputs>,
    ) -> Result<Priced> {
        let served = self.registry.get(model)?;
        let m = &served.model.manifest;
        let steps = input::steps(m, steps)?;
        let limits = InputLimits {
            max_support: served.limits.max_support,
            ..self.inputs.clone()
        };
        input::check_support_counts(support, &limits)?;
        if let Some(q) = queries {
            input::check_count(q.len(), "inputs", served.limits.max_inputs)?;
        }
        let no_queries = RawInputs::new();
        let queries = queries.unwrap_or(&no_queries);
        let labels = input::labels(m, &support.labels)?;
        let counts = Counts {
            support: support.inputs.len(),
            classes: labels.outputs(),
            steps,
            queries: queries.len(),
            text_bytes: text_bytes(m, &support.inputs) + text_bytes(m, queries),
        };
        let rows = cost::chunk_rows(&m.architecture, counts.classes, self.caps.max_activation_bytes);
        let estimate = cost::estimate(m, &counts, rows);
        cost::admit(model, &served.limits, &counts, &estimate)?;
        Ok(Priced {
            served,
            steps,
            labels,
            rows,
            peak: estimate.peak_bytes,
        })
    }

    /// Submits a job to the batcher under `owner`'s admission and awaits
    /// its answer, a `T`.
    async fn batched<T: 'static>(
        &self,
        owner: &str,
        job: impl FnOnce(pool::Cancel, batch::Reply) -> batch::Job,
    ) -> Result<T> {
        let out = self
            .pool
            .admitted(owner, |cancel| {
                let (reply, answer) = tokio::sync::oneshot::channel();
                self.batcher.submit(job(cancel, reply));
                async move { answer.await.map_err(|_| batch::lost())? }
            })
            .await?;
        out.downcast::<T>()
            .map(|b| *b)
            .map_err(|_| InferError::internal("internal_error", "a batch answered with the wrong type"))
    }

    /// A batch job adapting on `support`, then going on with `then`.
    fn adapt_job(
        &self,
        p: Priced,
        support: SupportSet,
        then: batch::Then,
    ) -> impl FnOnce(pool::Cancel, batch::Reply) -> batch::Job {
        let limits = self.inputs.clone();
        move |cancel, reply| batch::Job {
            served: p.served,
            rows: p.rows,
            peak_bytes: p.peak,
            limits,
            cancel,
            work: batch::Work::Adapt {
                support,
                labels: p.labels,
                steps: p.steps,
                then,
            },
            reply,
        }
    }

    /// Decodes the support set and adapts, on the pool or (numeric inputs
    /// in one chunk, batching on) in a batch with other requests; then
    /// `after` runs on the same thread with the decoded set and the adapted
    /// model. Also says whether the adaptation was padded (batched).
    async fn adapt_then<T, F>(&self, owner: &str, p: Priced, support: SupportSet, after: F) -> Result<(T, bool)>
    where
        T: Send + 'static,
        F: FnOnce(&Arc<ServedModel>, ValidSupport, AdaptedModel, &pool::Cancel) -> Result<T> + Send + 'static,
    {
        if self.batcher.takes(&p.served, support.inputs.len(), p.rows) {
            let after: batch::After =
                Box::new(move |served, valid, a, cancel| Ok(Box::new(after(served, valid, a, cancel)?)));
            let out = self
                .batched(owner, self.adapt_job(p, support, batch::Then::After(after)))
                .await?;
            return Ok((out, true));
        }
        let limits = self.inputs.clone();
        let start = Instant::now();
        let (name, peak, pinned) = (p.served.info.name.clone(), p.peak, p.served.pinned());
        let out = self
            .pool
            .run_on(owner, peak, pinned, move |cancel| {
                let Priced {
                    served,
                    steps,
                    labels,
                    rows,
                    ..
                } = p;
                let m = &served.model.manifest;
                let n = support.inputs.len();
                let inputs = input::decode_inputs(m, &support.inputs, "support.inputs", &limits, cancel)?;
                drop(support);
                let valid = ValidSupport { inputs, n, labels };
                let a = engine::adapt_support(&served, &valid, steps, rows, cancel)?;
                engine::check_converged(&a, steps, m.default_steps)?;
                after(&served, valid, a, cancel)
            })
            .await?;
        metrics::adaptation(&name, start.elapsed().as_secs_f64());
        Ok((out, false))
    }

    /// Adapts on the support set and predicts `inputs`, keeping nothing.
    /// Batched, the predictions share forwards with the batch's others.
    pub async fn stateless(
        &self,
        owner: &str,
        model: &str,
        support: SupportSet,
        steps: Option<i64>,
        inputs: RawInputs,
    ) -> Result<Predicted> {
        let p = self.price(model, &support, steps, Some(&inputs))?;
        let n = inputs.len();
        let out = if self.batcher.takes(&p.served, support.inputs.len(), p.rows) {
            let job = self.adapt_job(p, support, batch::Then::Predict(inputs));
            self.batched::<Predicted>(owner, job).await?
        } else {
            let (limits, rows) = (self.inputs.clone(), p.rows);
            let after =
                move |served: &Arc<ServedModel>, valid: ValidSupport, a: AdaptedModel, cancel: &pool::Cancel| {
                    let q = input::decode_inputs(&served.model.manifest, &inputs, "inputs", &limits, cancel)?;
                    engine::predict(served, &a.params, valid.labels.classes(), &q, n, rows, cancel)
                };
            self.adapt_then(owner, p, support, after).await?.0
        };
        metrics::predictions(model, n);
        Ok(out)
    }

    /// Adapts on the support set and stores the session.
    pub async fn create_session(
        &self,
        owner: &str,
        model: &str,
        support: SupportSet,
        steps: Option<i64>,
        ttl_seconds: Option<i64>,
    ) -> Result<Created> {
        let ttl = input::ttl(ttl_seconds, self.default_ttl_seconds, self.inputs.max_ttl_seconds)?;
        let p = self.price(model, &support, steps, None)?;
        self.sessions.check_room(owner).await?;
        let (served, steps, rows) = (p.served.clone(), p.steps, p.rows);
        let ((valid, blob, a), padded) = self
            .adapt_then(owner, p, support, |_, valid, a, _| {
                let blob = SupportBlob::encode(&valid);
                Ok((valid, blob, a))
            })
            .await?;
        let now = Utc::now();
        let record = Record {
            id: new_id(),
            owner: owner.to_owned(),
            model: model.to_owned(),
            model_version: served.model.version.clone(),
            steps,
            rows,
            support_size: valid.n,
            padded,
            classes: valid.labels.classes().map(<[Value]>::to_vec),
            created_at: now,
            expires_at: now + chrono::Duration::seconds(ttl as i64),
        };
        drop(valid);
        self.sessions.insert(&record, &blob, a.params).await?;
        Ok(Created {
            record,
            loss_before: a.loss_before,
            loss_after: a.loss_after,
        })
    }

    pub async fn session(&self, owner: &str, id: &str) -> Result<Record> {
        self.sessions.find(owner, id).await
    }

    pub async fn delete_session(&self, owner: &str, id: &str) -> Result<()> {
        self.sessions.delete(owner, id).await
    }

    /// Predicts `inputs` with a session's adapted model (replayed on a miss).
    pub async fn predict_session(&self, owner: &str, id: &str, inputs: RawInputs) -> Result<(Record, Predicted)> {
        let rec = self.sessions.find(owner, id).await?;
        let served = self.sessions.served(&self.registry, &rec)?;
        let m = &served.model.manifest;
        input::check_count(inputs.len(), "inputs", served.limits.max_inputs)?;
        let classes = rec.classes.as_ref().map_or(1, Vec::len);
        let counts = Counts {
            classes,
            queries: inputs.len(),
            text_bytes: text_bytes(m, &inputs),
            ..Counts::default()
        };
        let rows = cost::chunk_rows(&m.architecture, classes, self.caps.max_activation_bytes);
        let estimate = cost::estimate(m, &counts, rows);
        cost::admit(&rec.model, &served.limits, &counts, &estimate)?;
        let adapted = self.sessions.adapted(&self.pool, &rec, &served).await?;
        let (limits, n, cls) = (self.inputs.clone(), inputs.len(), rec.classes.clone());
        let out = if self.batcher.takes(&served, n, rows) {
            let job = move |cancel, reply| batch::Job {
                served,
                rows,
                peak_bytes: estimate.peak_bytes,
                limits,
                cancel,
                work: batch::Work::Predict {
                    params: adapted.params.clone(),
                    queries: inputs,
                    classes: cls,
                },
                reply,
            };
            self.batched::<Predicted>(owner, job).await?
        } else {
            self.pool
                .run_on(owner, estimate.peak_bytes, served.pinned(), move |cancel| {
                    let q = input::decode_inputs(&served.model.manifest, &inputs, "inputs", &limits, cancel)?;
                    engine::predict(&served, &adapted.params, cls.as_deref(), &q, n, rows, cancel)
                })
                .await?
        };
        metrics::predictions(&rec.model, n);
        Ok((rec, out))
    }

    /// Runs one adaptation and one prediction per model (two classes for a classifier).
    pub async fn warm_up(&self) -> anyhow::Result<()> {
        for (name, served) in self.registry.iter() {
            let m = &served.model.manifest;
            let dim: usize = m.input.shape.iter().product();
            let (inputs, labels) = match (m.input.kind, m.task) {
                (crate::model::InputKind::Text, _) => (
                    vec![r#""warm-up""#, r#""another one""#],
                    vec![Value::from(0), Value::from(1)],
                ),
                (_, crate::model::TaskKind::Classification) => (vec!["Z", "Z"], vec![Value::from(0), Value::from(1)]),
                _ => (vec!["Z"], vec![Value::from(0.0)]),
            };
            let zeros = serde_json::to_string(&vec![0.0f32; dim])?;
            let zeros = if m.input.kind == crate::model::InputKind::Image {
                let side = m.input.shape[m.input.shape.len() - 1];
                serde_json::to_string(&vec![vec![0.0f32; side]; side])?
            } else {
                zeros
            };
            let raw =
                |s: &str| serde_json::value::RawValue::from_string(if s == "Z" { zeros.clone() } else { s.to_owned() });
            let support = SupportSet {
                inputs: inputs.iter().map(|s| raw(s)).collect::<std::result::Result<_, _>>()?,
                labels,
            };
            let queries: RawInputs = vec![raw(inputs[0])?];
            self.stateless("", name, support, Some(1), queries)
                .await
                .map_err(|e| anyhow::anyhow!("warm-up of model {name} failed: {e}"))?;
        }
        Ok(())
    }
}
