//! Alone and batched padded adaptation agree bit for bit, and padding does
//! not change the mathematics (it agrees with unpadded `adapt`).

use candle_core::{DType, Device, Tensor};

use super::*;
use crate::model::adapt::tests::max_abs_diff;
use crate::model::adapt::{adapt, select_task, Support};
use crate::model::Target;

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn random_params(arch: &Architecture, seed: u64) -> (Vec<Tensor>, Vec<Tensor>) {
    let dev = Device::Cpu;
    let mut r = lcg(seed);
    let mut make = |shape: &[usize], lo: f32, hi: f32| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * (r() + 1.0) / 2.0).collect();
        Tensor::from_vec(v, shape, &dev).unwrap()
    };
    let theta = arch.params().iter().map(|p| make(&p.shape, -0.5, 0.5)).collect();
    let alpha = arch.params().iter().map(|p| make(&p.shape, 0.01, 0.05)).collect();
    (theta, alpha)
}

/// Uniform numbers in [-1, 1) from a fixed seed.
fn lcg(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed;
    move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

struct Owned {
    x: Vec<f32>,
    n: usize,
    y: Vec<f32>,
    index: Vec<u32>,
    classes: usize,
}

fn tasks(dim: usize, sizes: &[(usize, usize)], regression: bool) -> Vec<Owned> {
    let mut r = lcg(12345);
    sizes
        .iter()
        .map(|&(n, c)| Owned {
            x: (0..n * dim).map(|_| r()).collect(),
            n,
            y: if regression {
                (0..n).map(|_| r()).collect()
            } else {
                vec![]
            },
            index: (0..n as u32).map(|i| i % c as u32).collect(),
            classes: c,
        })
        .collect()
}

fn sets(ts: &[Owned], regression: bool) -> Vec<TaskSet<'_>> {
    ts.iter()
        .map(|t| TaskSet {
            x: &t.x,
            n: t.n,
            labels: if regression {
                Labels::Values { y: &t.y, out: 1 }
            } else {
                Labels::Classes {
                    index: &t.index,
                    classes: t.classes,
                }
            },
        })
        .collect()
}

/// Each task of `ts` adapted alone and in one batch: same bits for the
/// parameters, the losses and the predictions; close to unpadded `adapt`.
fn check(arch: &Architecture, task: TaskKind, sizes: &[(usize, usize)], steps: usize) {
    let dev = Device::Cpu;
    let regression = task == TaskKind::Regression;
    let dim = arch.input_dim();
    let (theta, alpha) = random_params(arch, 7);
    let ts = tasks(dim, sizes, regression);
    let all = sets(&ts, regression);
    let rows = all.iter().map(|s| row_bucket(arch, s.n)).max().unwrap();
    let classes = if regression {
        1
    } else {
        ts.iter().map(|t| class_bucket(t.classes)).max().unwrap()
    };
    let batch = pad(&all, dim, rows, classes, InnerLoss::Mean, &dev).unwrap();
    let together = adapt_padded(
        arch,
        task,
        &theta,
        &Rule::metasgd(&alpha),
        &batch,
        steps,
        &mut || Ok(()),
    )
    .unwrap();
    let queries: Vec<(&[f32], usize)> = ts.iter().map(|t| (t.x.as_slice(), t.n)).collect();
    let qx = pad_inputs(&queries, dim, rows, &dev).unwrap();
    let out_together = arch.forward(&together.params, &qx).unwrap();
    for (i, s) in all.iter().enumerate() {
        assert_eq!(row_bucket(arch, s.n), rows, "the sizes of this test share one bucket");
        let one = pad(std::slice::from_ref(s), dim, rows, classes, InnerLoss::Mean, &dev).unwrap();
        let alone = adapt_padded(arch, task, &theta, &Rule::metasgd(&alpha), &one, steps, &mut || Ok(())).unwrap();
        let mine = select_task(&together.params, i).unwrap();
        for (p, q) in mine.iter().zip(&alone.params) {
            assert_eq!(
                bits(p),
                bits(q),
                "task {i}: parameters differ between alone and batched"
            );
        }
        assert_eq!(alone.loss_before[0].to_bits(), together.loss_before[i].to_bits());
        assert_eq!(alone.loss_after[0].to_bits(), together.loss_after[i].to_bits());
        let q1 = pad_inputs(&queries[i..i + 1], dim, rows, &dev).unwrap();
        let out_alone = arch.forward(&alone.params, &q1).unwrap();
        assert_eq!(
            bits(&out_alone),
            bits(&out_together.narrow(0, i, 1).unwrap()),
            "task {i}: predictions"
        );
        // Predictions from a batch of stacked per-task parameters, as
        // predictions for several sessions run.
        let stacked = stack_tasks(&[&alone.params, &mine]).unwrap();
        let out2 = arch.forward(&stacked, &Tensor::cat(&[&q1, &q1], 0).unwrap()).unwrap();
        assert_eq!(bits(&out2.narrow(0, 0, 1).unwrap()), bits(&out_alone));
        // Padding changes the arithmetic's shapes, not its mathematics.
        let x = Tensor::from_slice(&ts[i].x, (1, s.n, dim), &dev).unwrap();
        let target = if regression {
            Target::Values(Tensor::from_slice(&ts[i].y, (1, s.n, 1), &dev).unwrap())
        } else {
            let idx = Tensor::from_slice(&ts[i].index, s.n, &dev).unwrap();
            let eye = Tensor::eye(ts[i].classes, DType::F32, &dev).unwrap();
            Target::OneHot(eye.index_select(&idx, 0).unwrap().unsqueeze(0).unwrap())
        };
        let plain = adapt(
            arch,
            task,
            &theta,
            &Rule::metasgd(&alpha),
            &Support { x: x.clone(), target },
            steps,
        )
        .unwrap();
        let out_plain = arch.forward(&plain.params, &x).unwrap();
        let c = if regression { 1 } else { ts[i].classes };
        let padded_out = out_alone.narrow(1, 0, s.n).unwrap().narrow(2, 0, c).unwrap();
        let d = max_abs_diff(&out_plain.narrow(2, 0, c).unwrap(), &padded_out);
        assert!(d < 1e-4, "task {i}: padded vs unpadded outputs differ by {d}");
        assert!((plain.loss_after[0] - alone.loss_after[0]).abs() < 1e-4);
    }
}

#[test]
fn mlp_regression_alone_equals_batched_bit_for_bit() {
    let arch = Architecture::Mlp {
        sizes: vec![1, 40, 40, 1],
    };
    check(&arch, TaskKind::Regression, &[(10, 1), (11, 1), (9, 1), (12, 1)], 3);
    check(&arch, TaskKind::Regression, &[(5, 1), (6, 1)], 1);
}

#[test]
fn conv4_classification_alone_equals_batched_bit_for_bit() {
    let arch = Architecture::Conv4 {
        channels: 1,
        side: 16,
        hidden: 4,
        proto_start: false,
        shift_radius: 0,
    };
    // Images are not padded (`row_bucket`): one bucket is one size.
    check(&arch, TaskKind::Classification, &[(6, 5), (6, 3), (6, 6)], 3);
}

/// A shift ensemble's copies and their mean stay within each task.
#[test]
fn conv4_shift_ensemble_alone_equals_batched_bit_for_bit() {
    let arch = Architecture::Conv4 {
        channels: 1,
        side: 16,
        hidden: 4,
        proto_start: true,
        shift_radius: 1,
    };
    check(&arch, TaskKind::Classification, &[(6, 5), (6, 3)], 2);
}

#[test]
fn features_classification_alone_equals_batched_bit_for_bit() {
    let arch = Architecture::Features {
        dim: 12,
        hidden: vec![],
        scale: 10.0,
        center: true,
        cosine: true,
        linear_body: false,
        task_center: false,
        proto_start: false,
        lexical: 0,
    };
    check(&arch, TaskKind::Classification, &[(10, 2), (12, 4), (9, 3)], 2);
}

/// The task's own support mean as its center (padded rows weigh nothing in
/// it) and a linear body.
#[test]
fn task_centered_features_alone_equal_batched_and_unpadded() {
    check(
        &task_centered(false, 0),
        TaskKind::Classification,
        &[(10, 2), (12, 4), (9, 3)],
        2,
    );
}

/// Token buckets beside the embedding: the center's mean and the body read
/// the embedding's part of each padded row only.
#[test]
fn token_buckets_alone_equal_batched_and_unpadded() {
    check(
        &task_centered(false, 5),
        TaskKind::Classification,
        &[(10, 2), (12, 4), (9, 3)],
        2,
    );
}

/// The shipped intents design: task centering, a linear body, a cosine head
/// (with `lexical` token buckets beside the embedding).
fn task_centered(proto_start: bool, lexical: usize) -> Architecture {
    Architecture::Features {
        dim: 12,
        hidden: vec![12],
        scale: 10.0,
        center: true,
        cosine: true,
        linear_body: true,
        task_center: true,
        proto_start,
        lexical,
    }
}

/// The prototype start (`model::proto`): padded rows and classes count in
/// no class mean, on the conv4 and on the task-centered cosine head (with
/// and without token buckets).
#[test]
fn prototype_starts_alone_equal_batched_and_unpadded() {
    let conv = Architecture::Conv4 {
        channels: 1,
        side: 16,
        hidden: 4,
        proto_start: true,
        shift_radius: 0,
    };
    check(&conv, TaskKind::Classification, &[(6, 5), (6, 3), (6, 6)], 2);
    for lexical in [0, 5] {
        check(
            &task_centered(true, lexical),
            TaskKind::Classification,
            &[(10, 2), (12, 4), (9, 3)],
            2,
        );
    }
    let plain = Architecture::Features {
        dim: 12,
        hidden: vec![],
        scale: 2.0,
        center: false,
        cosine: false,
        linear_body: false,
        task_center: false,
        proto_start: true,
        lexical: 0,
    };
    check(&plain, TaskKind::Classification, &[(10, 2), (12, 4), (9, 3)], 0);
    check(&plain, TaskKind::Classification, &[(10, 2), (12, 4), (9, 3)], 2);
}

#[test]
fn buckets_depend_on_the_counts_alone() {
    let mlp = Architecture::Mlp { sizes: vec![1, 40, 1] };
    let conv = Architecture::Conv4 {
        channels: 1,
        side: 28,
        hidden: 64,
        proto_start: false,
        shift_radius: 0,
    };
    assert_eq!(
        [1, 4, 5, 10, 64, 65, 100].map(|n| row_bucket(&mlp, n)),
        [4, 4, 8, 12, 64, 80, 112]
    );
    assert_eq!([1, 5, 7, 20].map(|n| row_bucket(&conv, n)), [1, 5, 7, 20]);
    assert_eq!([1, 2, 5, 20].map(class_bucket), [4, 4, 8, 20]);
}

#[test]
fn a_task_that_does_not_fit_its_bucket_is_an_error() {
    let ts = tasks(1, &[(9, 1)], true);
    assert!(pad(&sets(&ts, true), 1, 8, 1, InnerLoss::Mean, &Device::Cpu).is_err());
}

/// Elements in a tensor's storage (all of it, whatever the layout shows).
fn storage_len(t: &Tensor) -> usize {
    let (s, _) = t.storage_and_layout();
    match &*s {
        candle_core::Storage::Cpu(c) => c.as_slice::<f32>().unwrap().len(),
        _ => unreachable!("a CPU test"),
    }
}

#[test]
fn a_task_split_from_a_batch_holds_only_its_own_parameters() {
    let batch = Tensor::arange(0f32, 24., &Device::Cpu)
        .unwrap()
        .reshape((3, 2, 4))
        .unwrap();
    for i in 0..3 {
        let p = task_params(std::slice::from_ref(&batch), i).unwrap().remove(0);
        assert_eq!(p.dims(), &[1, 2, 4]);
        assert_eq!(storage_len(&p), 8, "task {i} keeps the whole batch's storage");
        assert_eq!(bits(&p), bits(&batch.narrow(0, i, 1).unwrap()));
    }
}
