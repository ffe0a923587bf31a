//! Quality of the shipped models: the sinusoid model's default steps on 200
//! fresh 10-shot tasks bring the query MSE well below the unadapted model's.

use crate::common;

use candle_core::Device;
use metasgd::eval::{mean_ci95, task_losses, EvalSpec};
use metasgd::model::load_model;
use metasgd::tasks::family;

#[test]
fn shipped_sinusoid_model_adapts_well() {
    let model = load_model(&common::shipped_models().join("sinusoid"), &Device::Cpu).unwrap();
    let fam = family("sinusoid").unwrap();
    let seed = 4242; // not a training stream
    let spec = EvalSpec {
        shots: 10,
        steps: model.manifest.default_steps,
        tasks: 200,
        queries: 100,
        seed,
    };
    let adapted = task_losses(&model, fam.as_ref(), spec, &Device::Cpu).unwrap().0;
    let unadapted = task_losses(&model, fam.as_ref(), EvalSpec { steps: 0, ..spec }, &Device::Cpu)
        .unwrap()
        .0;
    let (a, a_ci) = mean_ci95(&adapted);
    let (u, _) = mean_ci95(&unadapted);
    eprintln!("10-shot, default steps, 200 tasks: MSE {a:.3} ± {a_ci:.3}; without adaptation {u:.3}");
    assert!(a < 0.1 * u, "adapted MSE {a} is not well below the unadapted {u}");
    // The target for 10 shots is 0.14 (the Meta-SGD paper reports 0.53).
    assert!(
        a < 0.14,
        "adapted MSE {a} is worse than the target for the shipped model"
    );
}

/// The shipped Omniglot model on 100 fresh 5-way 1-shot episodes from the
/// evaluation alphabets (never seen in training), 15 queries per class,
/// through its shift ensemble (98.1% over 300 episodes in the README).
#[test]
fn shipped_omniglot_model_classifies_unseen_alphabets() {
    use metasgd::tasks::omniglot::{Omniglot, OmniglotTasks, Split};
    let Some(dir) = common::shared_dir("data/omniglot") else {
        return;
    };
    let model = load_model(&common::shipped_models().join("omniglot"), &Device::Cpu).unwrap();
    let fam = OmniglotTasks {
        data: std::sync::Arc::new(Omniglot::load(&dir, Split::Evaluation).unwrap()),
        n_way: 5,
        rotations: false,
    };
    let spec = EvalSpec {
        shots: 1,
        steps: model.manifest.default_steps,
        tasks: 100,
        queries: 15,
        seed: 777, // not the seed of the published evaluation
    };
    let (_, acc) = task_losses(&model, &fam, spec, &Device::Cpu).unwrap();
    let (a, ci) = mean_ci95(&acc.unwrap());
    eprintln!(
        "omniglot 5-way 1-shot, 100 episodes: accuracy {:.2}% ± {:.2}",
        100.0 * a,
        100.0 * ci
    );
    assert!(
        a > 0.95,
        "5-way 1-shot accuracy {a} on unseen alphabets is below the shipped model's level"
    );
}

/// The shipped intents model on 300 fresh 10-way 1-shot episodes of the
/// held-out HWU64 scenarios (email, iot, lists, qa, transport: in no
/// training data), against nearest-centroid on the same embeddings and
/// episodes.
#[test]
fn shipped_intents_model_classifies_intents_of_held_out_scenarios() {
    use metasgd::eval::centroid_accuracies;
    use metasgd::tasks::held_out;
    let Some(dir) = common::shared_dir("data") else {
        return;
    };
    if common::shared_dir("data/hwu64").is_none() || common::shared_dir("data/clinc150").is_none() {
        return;
    }
    let model = load_model(&common::shipped_models().join("intents"), &Device::Cpu).unwrap();
    assert_eq!(model.manifest.family.as_deref(), Some("intents-hwu64"));
    let fam = held_out("intents-hwu64", Some(&dir), &[10]).unwrap().remove(0);
    let spec = EvalSpec {
        shots: 1,
        steps: model.manifest.default_steps,
        tasks: 300,
        queries: 5,
        seed: 777, // not the seed of the published evaluation
    };
    // The same episodes with the inputs the model takes (token buckets, if any).
    let own = metasgd::eval::inputs_for(fam.as_ref(), &model.manifest).unwrap();
    let (_, acc) = task_losses(&model, own.as_deref().unwrap_or(fam.as_ref()), spec, &Device::Cpu).unwrap();
    let acc = acc.unwrap();
    let centroid = centroid_accuracies(fam.as_ref(), None, spec, &Device::Cpu).unwrap();
    let (a, ci) = mean_ci95(&acc);
    let (c, _) = mean_ci95(&centroid);
    eprintln!(
        "intents 10-way 1-shot, held-out HWU64 scenarios, 300 episodes: Meta-SGD {:.2}% ± {:.2}, nearest-centroid {:.2}%",
        100.0 * a,
        100.0 * ci,
        100.0 * c
    );
    assert!(
        a > 0.75,
        "10-way 1-shot accuracy {a} on held-out scenarios is below the shipped model's level"
    );
    // Same episodes for both, so the paired difference is what to check: the
    // shipped model is +4.3 points ahead over 1,000 episodes (eval.md), the
    // head alone (baselines/head-only) +1.5.
    assert!(
        a > c + 0.02,
        "Meta-SGD {a} is not 2 points ahead of nearest-centroid {c} on the same episodes"
    );
}
