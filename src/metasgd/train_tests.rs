//! `train`: resume is bit-exact for every rule, MAML and Reptile keep α
//! fixed, Reptile moves θ toward the adapted parameters, the summary names
//! the body.

use super::*;
use std::path::Path;

use crate::metasgd::run::RunArgs;

fn cfg(out: &Path, iters: u64) -> TrainConfig {
    TrainConfig {
        task: "sinusoid".into(),
        data: None,
        n_way: 5,
        n_way_max: None,
        inner_loss: Default::default(),
        init: None,
        init_alpha: false,
        init_alpha_later: 1.0,
        hidden: Vec::new(),
        center: false,
        cosine: false,
        linear_body: false,
        task_center: false,
        proto_start: None,
        shift_radius: 0,
        lexical: 0,
        alpha_lexical: None,
        alpha_body: None,
        body_lr: 1.0,
        out: out.to_path_buf(),
        name: Some("t".into()),
        method: Method::Metasgd,
        rule: UpdateRule::Metasgd,
        order: Order::First,
        run: RunArgs {
            iters,
            meta_lr: 1e-3,
            lr_min: Some(1e-4),
            clip: None,
            val_every: 10,
            ckpt_every: 10,
            stop_at: None,
            resume: true,
        },
        meta_batch: 4,
        k_support: 5,
        k_support_max: None,
        k_query: 5,
        inner_steps: 1,
        alpha_lo: 0.005,
        alpha_hi: 0.1,
        alpha_head: None,
        per_tensor: false,
        inner_grad_clip: None,
        beta_init: 0.5,
        lstm_bf: 6.0,
        maml_alpha: 0.01,
        seed: 3,
        val_tasks: 20,
    }
}

fn weights(dir: &Path) -> Vec<Vec<f32>> {
    let m = crate::model::load_model(dir, &Device::Cpu).unwrap();
    m.theta
        .iter()
        .chain(&m.rule.tensors())
        .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn resumed_training_equals_uninterrupted_training_for_every_rule() {
    let base = std::env::temp_dir().join(format!("metasgd-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    for rule in [
        UpdateRule::Metasgd,
        UpdateRule::PerStep,
        UpdateRule::Momentum,
        UpdateRule::Lstm,
    ] {
        let (a, b) = (
            base.join(format!("{rule:?}-straight")),
            base.join(format!("{rule:?}-resumed")),
        );
        let c = |out: &Path| TrainConfig {
            rule,
            inner_steps: 2,
            k_support_max: Some(8),
            ..cfg(out, 30)
        };
        train(c(&a), &Device::Cpu).unwrap();
        let mut stopped = c(&b);
        stopped.run.stop_at = Some(20);
        train(stopped, &Device::Cpu).unwrap();
        assert!(
            !b.join("model.safetensors").exists(),
            "an interrupted run writes no model"
        );
        train(c(&b), &Device::Cpu).unwrap();
        let m = crate::model::load_model(&b, &Device::Cpu).unwrap();
        assert_eq!(m.manifest.update_rule, rule);
        assert_eq!(
            max_diff(&weights(&a), &weights(&b)),
            0.0,
            "{rule:?}: resuming from a checkpoint must reproduce the same run"
        );
        let log = std::fs::read_to_string(b.join("train.log")).unwrap();
        assert!(log.contains("resumed at iteration 20"), "{log}");
        assert!(b.join("train.png").exists(), "the curves are drawn beside the log");
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn maml_and_reptile_keep_alpha_fixed() {
    for method in [Method::Maml, Method::Reptile] {
        let out = std::env::temp_dir().join(format!("metasgd-{method:?}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let mut c = cfg(&out, 10);
        c.method = method;
        c.run.resume = false;
        train(c, &Device::Cpu).unwrap();
        let m = crate::model::load_model(&out, &Device::Cpu).unwrap();
        for a in &m.rule.tensors() {
            assert_eq!(a.dims(), &[] as &[usize]);
            assert_eq!(a.to_scalar::<f32>().unwrap(), 0.01);
        }
        let _ = std::fs::remove_dir_all(&out);
    }
}

#[test]
fn reptile_moves_theta_toward_the_adapted_parameters() {
    let out = std::env::temp_dir().join(format!("metasgd-reptile-theta-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut c = cfg(&out, 1);
    c.method = Method::Reptile;
    c.run.lr_min = None;
    c.run.resume = false;
    // With Adam's first step every element moves by the learning rate, in
    // the sign of θ′ − θ: check against one adaptation done here.
    let (fam, _) = families("sinusoid", None, 5).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(c.seed);
    let arch = fam.manifest("t").architecture;
    let theta0 = init_theta(&arch, &mut rng, &Device::Cpu).unwrap();
    train(c.clone(), &Device::Cpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(c.seed);
    rng.set_stream(1);
    let ep = fam
        .sample(&mut rng, c.meta_batch, c.k_support, c.k_query, &Device::Cpu)
        .unwrap();
    let rule = Rule::MetaSgd {
        alpha: arch
            .params()
            .iter()
            .map(|_| Tensor::new(0.01f32, &Device::Cpu).unwrap())
            .collect(),
    };
    let s = Support {
        x: ep.support_x,
        target: ep.support_t,
    };
    let a = crate::model::adapt::adapt(&arch, TaskKind::Regression, &theta0, &rule, &s, 1).unwrap();
    let m = crate::model::load_model(&out, &Device::Cpu).unwrap();
    for ((t0, p), t1) in theta0.iter().zip(&a.params).zip(&m.theta) {
        let toward = p
            .mean(0)
            .unwrap()
            .sub(t0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let moved = t1.sub(t0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (d, m) in toward.iter().zip(&moved) {
            if d.abs() > 1e-6 {
                assert!(d.signum() == m.signum() && (m.abs() - 1e-3).abs() < 1e-4, "{d} {m}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// A model's description says what it was trained with, body, centering and
/// classes per task included: a shipped intents manifest once called a
/// 384 × 384 linear body "a Meta-SGD head", and never named its 10-way tasks.
#[test]
fn the_summary_names_the_body_and_task_centering() {
    let mut c = cfg(Path::new("unused"), 1);
    assert!(
        !summary(&c, TaskKind::Regression).contains("body"),
        "{}",
        summary(&c, TaskKind::Regression)
    );
    c.hidden = vec![384];
    c.linear_body = true;
    c.alpha_body = Some(0.0);
    c.body_lr = 0.01;
    c.task_center = true;
    let s = summary(&c, TaskKind::Regression);
    assert!(
        s.ends_with(
            "; a body of 384 units (linear, started at the identity, alpha starting at 0, Adam rate ×0.01); each task centered on its support mean"
        ),
        "{s}"
    );
    c.hidden = vec![256, 128];
    c.linear_body = false;
    assert!(
        !summary(&c, TaskKind::Regression).contains("-way"),
        "a regression model has no classes: {}",
        summary(&c, TaskKind::Regression)
    );
    let class = |c: &TrainConfig| summary(c, TaskKind::Classification);
    c.n_way = 10;
    assert!(class(&c).contains("first order, 10-way, "), "{}", class(&c));
    c.n_way_max = Some(20);
    assert!(class(&c).contains("first order, 10..20-way, "), "{}", class(&c));
    assert!(
        summary(&c, TaskKind::Regression).contains("; a body of 2 layers of 256, 128 units (ReLU"),
        "{}",
        summary(&c, TaskKind::Regression)
    );
}
