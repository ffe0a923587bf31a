//! How an update rule's tensors are named in a weights file, and reading
//! them back with every shape checked.
//!
//! | rule       | tensors                                                     |
//! |------------|-------------------------------------------------------------|
//! | `metasgd`  | `alpha.<param>`                                             |
//! | `per_step` | `alpha.<k>.<param>` for k = 0, 1, … (steps trained)         |
//! | `momentum` | `alpha.<param>`, `beta.<param>`                             |
//! | `lstm`     | `lstm.wf`, `lstm.wi` (`[6]`), `lstm.bf`, `lstm.bi` (`[1]`)  |
//!
//! A θ-shaped tensor has its parameter's shape (per element) or is a
//! scalar (per tensor, as MAML and MAML++ use).

use std::collections::HashMap;

use candle_core::{DType, Tensor};

use super::rule::{Rule, UpdateRule, LSTM_INPUTS};
use super::Architecture;

/// The rule's tensors with their names, in [`Rule::tensors`]' order.
pub fn named(rule: &Rule, arch: &Architecture) -> Vec<(String, Tensor)> {
    let specs = arch.params();
    let group = |prefix: &str, ts: &[Tensor]| -> Vec<(String, Tensor)> {
        specs
            .iter()
            .zip(ts)
            .map(|(s, t)| (format!("{prefix}.{}", s.name), t.clone()))
            .collect()
    };
    match rule {
        Rule::Clipped { inner, .. } => named(inner, arch),
        Rule::MetaSgd { alpha } => group("alpha", alpha),
        Rule::PerStep { alpha } => alpha
            .iter()
            .enumerate()
            .flat_map(|(k, a)| group(&format!("alpha.{k}"), a))
            .collect(),
        Rule::Momentum { alpha, beta } => {
            let mut v = group("alpha", alpha);
            v.extend(group("beta", beta));
            v
        }
        Rule::Lstm { wf, bf, wi, bi } => vec![
            ("lstm.wf".into(), wf.clone()),
            ("lstm.bf".into(), bf.clone()),
            ("lstm.wi".into(), wi.clone()),
            ("lstm.bi".into(), bi.clone()),
        ],
    }
}

/// Takes the tensors of a `kind` rule out of `map` (converted to f32),
/// checking names, shapes and values. The error says what is wrong.
pub fn take(kind: UpdateRule, arch: &Architecture, map: &mut HashMap<String, Tensor>) -> Result<Rule, String> {
    let specs = arch.params();
    let group = |map: &mut HashMap<String, Tensor>, prefix: &str| -> Result<Vec<Tensor>, String> {
        specs
            .iter()
            .map(|s| param_shaped(map, kind, &format!("{prefix}.{}", s.name), &s.shape))
            .collect()
    };
    Ok(match kind {
        UpdateRule::Metasgd => Rule::MetaSgd {
            alpha: group(map, "alpha")?,
        },
        UpdateRule::Momentum => Rule::Momentum {
            alpha: group(map, "alpha")?,
            beta: group(map, "beta")?,
        },
        UpdateRule::PerStep => {
            let first = specs.first().map(|s| s.name.clone()).unwrap_or_default();
            let steps = (0..)
                .take_while(|k| map.contains_key(&format!("alpha.{k}.{first}")))
                .count();
            if steps == 0 {
                return Err(format!(
                    "missing tensor alpha.0.{first} (the manifest's update_rule is per_step: alpha.<step>.<param>)"
                ));
            }
            let alpha = (0..steps)
                .map(|k| group(map, &format!("alpha.{k}")))
                .collect::<Result<_, _>>()?;
            Rule::PerStep { alpha }
        }
        UpdateRule::Lstm => Rule::Lstm {
            wf: exact(map, kind, "lstm.wf", &[LSTM_INPUTS])?,
            bf: exact(map, kind, "lstm.bf", &[1])?,
            wi: exact(map, kind, "lstm.wi", &[LSTM_INPUTS])?,
            bi: exact(map, kind, "lstm.bi", &[1])?,
        },
    })
}

fn missing(kind: UpdateRule, name: &str) -> String {
    format!(
        "missing tensor {name} (the manifest's update_rule is {})",
        kind.as_str()
    )
}

/// A tensor of `shape` or a scalar (returned with no dims).
fn param_shaped(
    map: &mut HashMap<String, Tensor>,
    kind: UpdateRule,
    name: &str,
    shape: &[usize],
) -> Result<Tensor, String> {
    let t = map.remove(name).ok_or_else(|| missing(kind, name))?;
    let t = match t.dims() {
        [] => t,
        [1] if shape != [1] => t.reshape(()).map_err(|e| e.to_string())?,
        d if d == shape => t,
        d => return Err(format!("{name} has shape {d:?}: it must be {shape:?} or a scalar")),
    };
    finite(name, t)
}

/// A tensor of exactly `shape` (a scalar is taken as `[1]`).
fn exact(map: &mut HashMap<String, Tensor>, kind: UpdateRule, name: &str, shape: &[usize]) -> Result<Tensor, String> {
    let t = map.remove(name).ok_or_else(|| missing(kind, name))?;
    let t = if t.dims().is_empty() && shape == [1] {
        t.reshape(1).map_err(|e| e.to_string())?
    } else {
        t
    };
    if t.dims() != shape {
        return Err(format!("{name} has shape {:?}: it must be {shape:?}", t.dims()));
    }
    finite(name, t)
}

/// `t` as f32, or an error naming `name` when it holds NaN or ±∞.
pub fn finite(name: &str, t: Tensor) -> Result<Tensor, String> {
    let t = t.to_dtype(DType::F32).map_err(|e| e.to_string())?;
    let v = t
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| e.to_string())?;
    if v.iter().any(|x| !x.is_finite()) {
        return Err(format!("{name} holds NaN or infinite values"));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn arch() -> Architecture {
        Architecture::Mlp { sizes: vec![1, 3, 1] }
    }

    fn ones(arch: &Architecture) -> Vec<Tensor> {
        arch.params()
            .iter()
            .map(|p| Tensor::ones(p.shape.as_slice(), DType::F32, &Device::Cpu).unwrap())
            .collect()
    }

    fn round_trip(rule: &Rule) -> Rule {
        let mut map: HashMap<String, Tensor> = named(rule, &arch()).into_iter().collect();
        let back = take(rule.kind(), &arch(), &mut map).unwrap();
        assert!(map.is_empty(), "left over: {:?}", map.keys());
        back
    }

    #[test]
    fn every_rule_survives_naming_and_reading_back() {
        let a = arch();
        let lstm = Rule::Lstm {
            wf: Tensor::zeros(LSTM_INPUTS, DType::F32, &Device::Cpu).unwrap(),
            bf: Tensor::ones(1, DType::F32, &Device::Cpu).unwrap(),
            wi: Tensor::zeros(LSTM_INPUTS, DType::F32, &Device::Cpu).unwrap(),
            bi: Tensor::ones(1, DType::F32, &Device::Cpu).unwrap(),
        };
        for rule in [
            Rule::MetaSgd { alpha: ones(&a) },
            Rule::PerStep {
                alpha: vec![ones(&a), ones(&a), ones(&a)],
            },
            Rule::Momentum {
                alpha: ones(&a),
                beta: ones(&a),
            },
            lstm,
        ] {
            let back = round_trip(&rule);
            assert_eq!(back.kind(), rule.kind());
            assert_eq!(back.tensors().len(), rule.tensors().len());
        }
    }

    #[test]
    fn a_per_step_folder_read_as_metasgd_names_the_missing_tensor() {
        let a = arch();
        let rule = Rule::PerStep { alpha: vec![ones(&a)] };
        let mut map: HashMap<String, Tensor> = named(&rule, &a).into_iter().collect();
        let err = take(UpdateRule::Metasgd, &a, &mut map).unwrap_err();
        assert!(err.contains("missing tensor alpha.l1.weight"), "{err}");
    }

    #[test]
    fn a_wrong_shape_is_named_with_the_shape_it_must_have() {
        let a = arch();
        let mut map: HashMap<String, Tensor> = named(&Rule::MetaSgd { alpha: ones(&a) }, &a).into_iter().collect();
        map.insert(
            "alpha.l1.weight".into(),
            Tensor::ones((2, 2), DType::F32, &Device::Cpu).unwrap(),
        );
        let err = take(UpdateRule::Metasgd, &a, &mut map).unwrap_err();
        assert!(
            err.contains("alpha.l1.weight has shape [2, 2]: it must be [3, 1]"),
            "{err}"
        );
    }
}
