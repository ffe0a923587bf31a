//! Cross-implementation check: an independent PyTorch Meta-SGD sinusoid
//! model, adapted by our engine, reproduces torch's adapted predictions.

use crate::common;

use candle_core::{Device, Tensor};
use metasgd::metasgd::{adapt, Support};
use metasgd::model::{store::load_params, Architecture, Target, TaskKind};
use serde_json::Value;

fn column(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_array().map(|a| &a[0]).unwrap_or(x).as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn torch_reference_adapted_predictions_match() {
    let Some(dir) = common::shared_dir("reference") else {
        return;
    };
    let arch = Architecture::Mlp {
        sizes: vec![1, 40, 40, 1],
    };
    let mut groups = load_params(
        &dir.join("sinusoid_torch_metasgd.safetensors"),
        &arch,
        &["theta", "alpha"],
        &Device::Cpu,
    )
    .unwrap();
    let alpha = groups.pop().unwrap();
    let theta = groups.pop().unwrap();
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sinusoid_torch_reference.json")).unwrap()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    let mut seen_steps = std::collections::BTreeSet::new();
    for (i, case) in cases.iter().enumerate() {
        let steps = case["steps"].as_u64().unwrap() as usize;
        seen_steps.insert(steps);
        let xs = column(&case["support"]["inputs"]);
        let ys = column(&case["support"]["labels"]);
        let qx = column(&case["query_inputs"]);
        let (k, q) = (xs.len(), qx.len());
        let support = Support {
            x: Tensor::from_vec(xs, (1, k, 1), &Device::Cpu).unwrap(),
            target: Target::Values(Tensor::from_vec(ys, (1, k, 1), &Device::Cpu).unwrap()),
        };
        let a = adapt(
            &arch,
            TaskKind::Regression,
            &theta,
            &metasgd::model::rule::Rule::metasgd(&alpha),
            &support,
            steps,
        )
        .unwrap();
        let pred = arch
            .forward(&a.params, &Tensor::from_vec(qx, (1, q, 1), &Device::Cpu).unwrap())
            .unwrap();
        let pred = pred.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let expected = column(&case["expected"]["predictions"]);
        let worst = pred
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "case {i} ({steps} steps): max |pred - torch| = {worst:e}");
        let lb = case["expected"]["loss_before"].as_f64().unwrap() as f32;
        let la = case["expected"]["loss_after"].as_f64().unwrap() as f32;
        assert!(
            (a.loss_before[0] - lb).abs() < 1e-4 * lb.max(1.0),
            "case {i}: loss_before {} vs torch {lb}",
            a.loss_before[0]
        );
        assert!(
            (a.loss_after[0] - la).abs() < 1e-4 * la.max(1.0),
            "case {i}: loss_after {} vs torch {la}",
            a.loss_after[0]
        );
    }
    assert_eq!(seen_steps.into_iter().collect::<Vec<_>>(), vec![0, 1, 3]);
}
