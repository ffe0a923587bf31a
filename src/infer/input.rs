//! Decoding: a request's JSON into checked domain types, before any tensor
//! is made.
//!
//! Two stages, so that admission can price a request before any of its
//! inputs is decoded:
//! - [`check_counts`] and [`labels`] read only the counts and the labels
//!   (cheap, on the async runtime);
//! - [`decode_inputs`] parses each input (numbers, base64 PNGs, texts) on
//!   the compute pool, after admission, checking for cancellation between
//!   inputs.
//!
//! Everything a client can get wrong is answered with an `Invalid` error
//! that says what is wrong and how to fix it.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::error::{InferError, Result};
use super::pool::Cancel;
use crate::model::{InputKind, Manifest, TaskKind};

/// Inputs as sent: each one's JSON text, not yet parsed.
pub type RawInputs = Vec<Box<RawValue>>;

/// A few-shot support set as sent: `inputs[i]` is labelled `labels[i]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupportSet {
    pub inputs: RawInputs,
    pub labels: Vec<Value>,
}

/// Limits on request sizes, from the server's flags.
#[derive(Clone, Debug)]
pub struct InputLimits {
    pub max_support: usize,
    pub max_inputs: usize,
    pub max_image_side: u32,
    pub max_text_bytes: usize,
    pub max_ttl_seconds: u64,
}

/// Validated inputs: numbers for the architecture, or texts for the model's encoder.
#[derive(Clone, Debug)]
pub enum Inputs {
    /// Row-major `[N, in]`.
    Values(Vec<f32>),
    /// One text per input (non-empty, within `--max-text-bytes`).
    Texts(Vec<String>),
}

/// A support set that passed validation.
#[derive(Clone, Debug)]
pub struct ValidSupport {
    pub inputs: Inputs,
    pub n: usize,
    pub labels: ValidLabels,
}

#[derive(Clone, Debug)]
pub enum ValidLabels {
    Values(Vec<f32>),
    /// Class index per example, and the label value of each class in output order.
    Classes {
        index: Vec<u32>,
        classes: Vec<Value>,
    },
}

/// Checks an input list's count: not empty, at most `max`.
pub fn check_count(n: usize, field: &str, max: usize) -> Result<()> {
    if n == 0 {
        return Err(InferError::invalid(
            "empty_inputs",
            format!("`{field}` is empty: send at least one input"),
        ));
    }
    if n > max {
        return Err(InferError::invalid(
            "too_many_inputs",
            format!("`{field}` has {n} items; the limit is {max}"),
        ));
    }
    Ok(())
}

/// Parses inputs of the model's kind and shape: texts, or numbers in a
/// row-major `[N, in]` buffer. Runs on the compute pool.
pub fn decode_inputs(
    m: &Manifest,
    raw: &[Box<RawValue>],
    field: &str,
    limits: &InputLimits,
    cancel: &Cancel,
) -> Result<Inputs> {
    // The body's syntax was checked when it was read; what can still fail
    // here is a number beyond the range of a 64-bit float.
    let parse = |i: usize, r: &RawValue| -> Result<Value> {
        serde_json::from_str(r.get()).map_err(|e| {
            InferError::invalid(
                "non_finite_input",
                format!("{field}[{i}] holds a number that is not a finite 64-bit float: {e}"),
            )
        })
    };
    if m.input.kind == InputKind::Text {
        let mut out = Vec::with_capacity(raw.len());
        for (i, r) in raw.iter().enumerate() {
            cancel.check()?;
            out.push(text(&parse(i, r)?, limits.max_text_bytes, &format!("{field}[{i}]"))?);
        }
        return Ok(Inputs::Texts(out));
    }
    let dim: usize = m.input.shape.iter().product();
    let mut out = Vec::with_capacity(raw.len() * dim);
    for (i, r) in raw.iter().enumerate() {
        cancel.check()?;
        if m.input.kind == InputKind::Vector && fast_vector(r, dim, &mut out) {
            continue;
        }
        let v = parse(i, r)?;
        match m.input.kind {
            InputKind::Vector => vector(&v, dim, &format!("{field}[{i}]"), &mut out)?,
            InputKind::Image => image(
                &v,
                &m.input.shape,
                limits.max_image_side,
                &format!("{field}[{i}]"),
                &mut out,
            )?,
            InputKind::Text => unreachable!("texts return above"),
        }
    }
    Ok(Inputs::Values(out))
}

/// A text input: a non-empty string of at most `max_bytes` bytes. Longer
/// texts are refused rather than cut, so a client never gets a prediction
/// for a text it did not send; within the limit, the encoder reads the
/// first `max_tokens` tokens (256 for MiniLM), as sentence-transformers does.
fn text(v: &Value, max_bytes: usize, at: &str) -> Result<String> {
    let s = v.as_str().ok_or_else(|| {
        InferError::invalid(
            "invalid_input",
            format!("{at} must be a string (this model takes text), got {}", kind_of(v)),
        )
    })?;
    if s.trim().is_empty() {
        return Err(InferError::invalid(
            "empty_text",
            format!("{at} is empty or only whitespace: send some text"),
        ));
    }
    if s.len() > max_bytes {
        return Err(InferError::invalid(
            "text_too_long",
            format!(
                "{at} is {} bytes; the limit is {max_bytes} (--max-text-bytes). The encoder reads only \
                 its first 256 tokens (about 1,000 characters of English) anyway",
                s.len()
            ),
        ));
    }
    Ok(s.to_string())
}

/// A well-formed vector read straight into `out`, without a `Value` (the
/// common case, and most of a small request's decoding cost). `false`
/// leaves `out` as it was, for [`vector`] to name what is wrong.
fn fast_vector(r: &RawValue, dim: usize, out: &mut Vec<f32>) -> bool {
    match serde_json::from_str::<Vec<f64>>(r.get()) {
        Ok(v) if v.len() == dim && v.iter().all(|x| (*x as f32).is_finite()) => {
            out.extend(v.iter().map(|x| *x as f32));
            true
        }
        _ => false,
    }
}

fn vector(v: &Value, dim: usize, at: &str, out: &mut Vec<f32>) -> Result<()> {
    let arr = v.as_array().ok_or_else(|| {
        InferError::invalid(
            "invalid_input",
            format!("{at} must be an array of {dim} numbers, got {}", kind_of(v)),
        )
    })?;
    if arr.len() != dim {
        return Err(InferError::invalid(
            "wrong_dimensions",
            format!(
                "{at} has {} values; this model takes inputs of exactly {dim}",
                arr.len()
            ),
        ));
    }
    for (j, x) in arr.iter().enumerate() {
        out.push(finite(x, &format!("{at}[{j}]"))?);
    }
    Ok(())
}

/// An image input: `{"png_base64": "..."}`, converted exactly as in training
/// (see `crate::images`), or a `side × side` array (optionally inside one
/// channel: `[1][side][side]`) of ink values in [0, 1].
fn image(v: &Value, shape: &[usize], max_side: u32, at: &str, out: &mut Vec<f32>) -> Result<()> {
    use base64::Engine;
    let side = shape[shape.len() - 1];
    if let Some(obj) = v.as_object() {
        if let Some(k) = obj.keys().find(|k| *k != "png_base64") {
            return Err(InferError::invalid(
                "invalid_input",
                format!("{at} has an unknown field `{k}`: an image object has only `png_base64`"),
            ));
        }
        let b64 = obj.get("png_base64").and_then(Value::as_str).ok_or_else(|| {
            InferError::invalid(
                "invalid_input",
                format!(
                    "{at} must be {{\"png_base64\": \"<base64 PNG>\"}} or a {side}x{side} array of numbers in [0, 1]"
                ),
            )
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| InferError::invalid("invalid_base64", format!("{at}.png_base64 is not valid base64: {e}")))?;
        let ink = crate::images::png_to_ink(&bytes, max_side)
            .map_err(|e| InferError::invalid("invalid_image", format!("{at}.png_base64: {e}")))?;
        if ink.len() != side * side {
            return Err(InferError::invalid(
                "invalid_image",
                format!("{at}: this model takes {side}x{side} images"),
            ));
        }
        out.extend(ink);
        return Ok(());
    }
    let rows = match v.as_array() {
        Some(a) if a.len() == 1 && a[0].is_array() && side != 1 => a[0].as_array().unwrap_or(a),
        Some(a) => a,
        None => {
            return Err(InferError::invalid(
                "invalid_input",
                format!(
                    "{at} must be {{\"png_base64\": ...}} or a {side}x{side} array, got {}",
                    kind_of(v)
                ),
            ))
        }
    };
    let wrong = || {
        InferError::invalid(
            "wrong_dimensions",
            format!("{at} must be {side} rows of {side} numbers (a {side}x{side} image)"),
        )
    };
    if rows.len() != side {
        return Err(wrong());
    }
    for (r, row) in rows.iter().enumerate() {
        let row = row.as_array().filter(|a| a.len() == side).ok_or_else(wrong)?;
        for (c, x) in row.iter().enumerate() {
            let f = finite(x, &format!("{at}[{r}][{c}]"))?;
            if !(0.0..=1.0).contains(&f) {
                return Err(InferError::invalid(
                    "out_of_range",
                    format!("{at}[{r}][{c}] = {f}: image values are ink in [0, 1] (0 = paper, 1 = ink)"),
                ));
            }
            out.push(f);
        }
    }
    Ok(())
}

fn finite(x: &Value, at: &str) -> Result<f32> {
    let f = x
        .as_f64()
        .ok_or_else(|| InferError::invalid("invalid_input", format!("{at} must be a number, got {}", kind_of(x))))?;
    let f32v = f as f32;
    if !f32v.is_finite() {
        return Err(InferError::invalid(
            "non_finite_input",
            format!("{at} = {f} is not a finite 32-bit float"),
        ));
    }
    Ok(f32v)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks a support set's counts, before anything in it is decoded.
pub fn check_support_counts(s: &SupportSet, limits: &InputLimits) -> Result<()> {
    if s.inputs.is_empty() {
        return Err(InferError::invalid(
            "empty_support",
            "the support set is empty: send at least one labelled example",
        ));
    }
    if s.inputs.len() != s.labels.len() {
        return Err(InferError::invalid(
            "label_mismatch",
            format!(
                "support has {} inputs but {} labels: send one label per input",
                s.inputs.len(),
                s.labels.len()
            ),
        ));
    }
    if s.inputs.len() > limits.max_support {
        return Err(InferError::invalid(
            "support_too_large",
            format!(
                "the support set has {} examples; the limit is {} (--max-support)",
                s.inputs.len(),
                limits.max_support
            ),
        ));
    }
    Ok(())
}

/// The support set's labels, checked against the model: finite numbers
/// (regression), or two to `n_way` distinct strings or integers (classification).
pub fn labels(m: &Manifest, labels: &[Value]) -> Result<ValidLabels> {
    match m.task {
        TaskKind::Regression => Ok(ValidLabels::Values(
            labels
                .iter()
                .enumerate()
                .map(|(i, v)| finite(v, &format!("support.labels[{i}]")))
                .collect::<Result<_>>()?,
        )),
        TaskKind::Classification => classes(labels, m.n_way.unwrap_or(0)),
    }
}

impl ValidLabels {
    /// Distinct classes (classification), else 1.
    pub fn outputs(&self) -> usize {
        match self {
            ValidLabels::Values(_) => 1,
            ValidLabels::Classes { classes, .. } => classes.len(),
        }
    }

    /// The distinct classes in output order (classification), else `None`.
    pub fn classes(&self) -> Option<&[Value]> {
        match self {
            ValidLabels::Values(_) => None,
            ValidLabels::Classes { classes, .. } => Some(classes),
        }
    }
}

fn classes(labels: &[Value], n_way: usize) -> Result<ValidLabels> {
    let mut classes: Vec<Value> = Vec::new();
    let mut index = Vec::with_capacity(labels.len());
    for (i, v) in labels.iter().enumerate() {
        let ok = v.is_string() || v.is_i64() || v.is_u64();
        if !ok {
            return Err(InferError::invalid(
                "invalid_label",
                format!("support.labels[{i}] must be a string or an integer, got {}", kind_of(v)),
            ));
        }
        let k = match classes.iter().position(|c| c == v) {
            Some(k) => k,
            None => {
                classes.push(v.clone());
                classes.len() - 1
            }
        };
        index.push(k as u32);
    }
    if classes.len() > n_way {
        return Err(InferError::invalid(
            "too_many_classes",
            format!(
                "the support set has {} distinct labels; this model handles at most {n_way}",
                classes.len()
            ),
        ));
    }
    if classes.len() < 2 {
        return Err(InferError::invalid(
            "too_few_classes",
            format!(
                "the support set has {} distinct label(s); a classifier needs at least 2 classes to tell apart",
                classes.len()
            ),
        ));
    }
    Ok(ValidLabels::Classes { index, classes })
}

/// `steps` defaults to the model's and must lie in `1..=max_steps`.
pub fn steps(m: &Manifest, steps: Option<i64>) -> Result<usize> {
    match steps {
        None => Ok(m.default_steps),
        Some(s) if s >= 1 && s as u64 <= m.max_steps as u64 => Ok(s as usize),
        Some(s) => Err(InferError::invalid(
            "invalid_steps",
            format!(
                "steps = {s} is out of range: use 1 to {} (default {})",
                m.max_steps, m.default_steps
            ),
        )),
    }
}

/// `ttl_seconds` defaults to the server's and must lie in `1..=max`.
pub fn ttl(ttl: Option<i64>, default: u64, max: u64) -> Result<u64> {
    match ttl {
        None => Ok(default.min(max)),
        Some(t) if t >= 1 && t as u64 <= max => Ok(t as u64),
        Some(t) => Err(InferError::invalid(
            "invalid_ttl",
            format!("ttl_seconds = {t} is out of range: use 1 to {max}"),
        )),
    }
}

/// Checks that a decoded (stored) support set still fits `m`: input size,
/// classes and steps. Replay runs it before adapting.
pub fn fits(m: &Manifest, s: &ValidSupport, n_steps: usize) -> Result<()> {
    let dim: usize = m.input.shape.iter().product();
    match (&s.inputs, m.input.kind) {
        (Inputs::Texts(t), InputKind::Text) if t.len() == s.n => {}
        (Inputs::Values(v), k) if k != InputKind::Text && v.len() == s.n * dim => {}
        _ => {
            return Err(InferError::invalid(
                "wrong_dimensions",
                format!(
                    "its inputs are not {:?} inputs of shape {:?}",
                    m.input.kind, m.input.shape
                ),
            ))
        }
    }
    match (&s.labels, m.n_way) {
        (ValidLabels::Classes { classes, .. }, Some(n)) if classes.len() <= n => {}
        (ValidLabels::Values(_), None) => {}
        _ => {
            return Err(InferError::invalid(
                "too_many_classes",
                "its labels do not fit the model's task",
            ))
        }
    }
    steps(m, Some(n_steps as i64)).map(|_| ())
}
