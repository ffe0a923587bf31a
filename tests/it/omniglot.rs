//! The Omniglot loader on the real release zips, the PNG conversion shared
//! with serving, and the episode sampler.

use crate::common;

use std::io::Read;
use std::sync::{Arc, OnceLock};

use candle_core::Device;
use metasgd::images::{png_to_ink, rotate, PIXELS};
use metasgd::tasks::omniglot::{Omniglot, OmniglotTasks, Split};
use metasgd::tasks::TaskFamily;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn data(split: Split) -> Option<Arc<Omniglot>> {
    static BG: OnceLock<Option<Arc<Omniglot>>> = OnceLock::new();
    static EV: OnceLock<Option<Arc<Omniglot>>> = OnceLock::new();
    let cell = if split == Split::Background { &BG } else { &EV };
    cell.get_or_init(|| {
        let dir = common::shared_dir("data/omniglot")?;
        Some(Arc::new(Omniglot::load(&dir, split).unwrap()))
    })
    .clone()
}

#[test]
fn loader_counts_alphabets_characters_and_drawings() {
    for (split, alphabets, characters) in [(Split::Background, 30, 964), (Split::Evaluation, 20, 659)] {
        let Some(d) = data(split) else { return };
        assert_eq!(d.alphabets(), alphabets, "{split:?}");
        assert_eq!(d.characters.len(), characters, "{split:?}");
        assert!(
            d.characters.iter().all(|c| c.count == 20),
            "every character has 20 drawings"
        );
        assert_eq!(d.files.len(), characters * 20);
        assert_eq!(d.images.len(), characters * 20 * PIXELS);
        assert!(d.images.iter().all(|v| (0.0..=1.0).contains(v)));
        // Ink is sparse: a drawing is mostly paper.
        let mean = d.images.iter().sum::<f32>() / d.images.len() as f32;
        assert!(mean > 0.02 && mean < 0.3, "mean ink {mean}");
    }
}

#[test]
fn a_png_from_the_zip_decodes_to_exactly_the_training_tensor() {
    let Some(d) = data(Split::Evaluation) else { return };
    let zip_path = common::shared_dir("data/omniglot")
        .unwrap()
        .join("images_evaluation.zip");
    let mut zip = zip::ZipArchive::new(std::fs::File::open(zip_path).unwrap()).unwrap();
    for i in [0, 777, d.files.len() - 1] {
        let name = format!("images_evaluation/{}", d.files[i]);
        let mut bytes = Vec::new();
        zip.by_name(&name).unwrap().read_to_end(&mut bytes).unwrap();
        // The server's path: PNG bytes as a client would upload them.
        let served = png_to_ink(&bytes, 1024).unwrap();
        assert_eq!(served.as_slice(), d.image(i), "{name}");
    }
}

#[test]
fn episodes_have_disjoint_support_and_query_permuted_labels_and_per_class_rotations() {
    let Some(d) = data(Split::Background) else { return };
    let fam = OmniglotTasks {
        data: d.clone(),
        n_way: 5,
        rotations: true,
    };
    let mut first_labels = std::collections::HashSet::new();
    let mut turns_seen = std::collections::HashSet::new();
    for seed in 0..40 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let drawn = fam.draw(&mut rng, 2, 3);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ep = fam.sample(&mut rng, 1, 2, 3, &Device::Cpu).unwrap();
        assert_eq!(ep.support_x.dims(), &[1, 10, PIXELS]);
        assert_eq!(ep.query_x.dims(), &[1, 15, PIXELS]);
        let classes: std::collections::HashSet<_> =
            drawn.iter().map(|(c, _, _)| (c.character, c.quarter_turns)).collect();
        assert_eq!(classes.len(), 5, "classes in a task are distinct");
        first_labels.insert(drawn[0].0.character);
        let sx = ep.support_x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let sy = ep
            .support_t
            .tensor()
            .argmax(2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        for (label, (class, support, query)) in drawn.iter().enumerate() {
            turns_seen.insert(class.quarter_turns);
            let ch = &d.characters[class.character];
            for i in support.iter().chain(query) {
                assert!(
                    (ch.first..ch.first + ch.count).contains(i),
                    "drawings come from the class's character"
                );
            }
            assert!(
                support.iter().all(|i| !query.contains(i)),
                "support and query are disjoint"
            );
            for (j, &i) in support.iter().enumerate() {
                let row = label * 2 + j;
                assert_eq!(sy[row], label as u32);
                // The class's rotation is applied to every one of its drawings.
                assert_eq!(
                    &sx[row * PIXELS..(row + 1) * PIXELS],
                    rotate(d.image(i), class.quarter_turns).as_slice()
                );
            }
        }
    }
    assert!(
        first_labels.len() > 30,
        "label 0 is a different class from task to task"
    );
    assert_eq!(turns_seen.len(), 4, "all four rotations occur");
}

/// Lake et al.'s conditions: one alphabet per task, the support drawn by K
/// drawers and every query by other drawers, the same drawers for every
/// character; each query drawer gives one drawing of each character.
#[test]
fn within_alphabet_tasks_keep_one_alphabet_and_separate_drawers() {
    use metasgd::tasks::within_alphabet::WithinAlphabet;
    let Some(ev) = data(Split::Evaluation) else { return };
    let fam = WithinAlphabet::new(ev.clone(), 20, false).unwrap();
    let drawer = |i: usize| ev.files[i].rsplit_once('_').unwrap().1.to_string();
    let owner = |i: usize| {
        ev.characters
            .iter()
            .position(|c| (c.first..c.first + c.count).contains(&i))
            .unwrap()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut alphabets = std::collections::HashSet::new();
    for _ in 0..50 {
        let (k, q) = (2, 3);
        let task = fam.draw(&mut rng, k, q).unwrap();
        assert_eq!(task.len(), 20);
        let chars: Vec<usize> = task.iter().map(|p| owner(p[0])).collect();
        let alphabet = &ev.characters[chars[0]].alphabet;
        alphabets.insert(alphabet.clone());
        let mut distinct = chars.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 20, "20 distinct characters");
        let drawers: Vec<String> = task[0].iter().map(|&i| drawer(i)).collect();
        let mut d = drawers.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), k + q, "support and query drawers are distinct: {drawers:?}");
        for (picks, &c) in task.iter().zip(&chars) {
            assert_eq!(picks.len(), k + q);
            assert_eq!(&ev.characters[c].alphabet, alphabet, "one alphabet per task");
            for (j, &i) in picks.iter().enumerate() {
                assert_eq!(owner(i), c, "a class's drawings are of its character");
                assert_eq!(drawer(i), drawers[j], "the same drawers for every character");
            }
        }
    }
    assert!(alphabets.len() > 5, "tasks come from many alphabets: {alphabets:?}");
    // The episode tensors have the task's shape.
    let ep = fam.sample(&mut rng, 2, 1, 1, &Device::Cpu).unwrap();
    assert_eq!(ep.support_x.dims(), [2, 20, PIXELS]);
    assert_eq!(ep.query_x.dims(), [2, 20, PIXELS]);
    // An alphabet needs n_way characters: no evaluation alphabet has 48.
    assert!(WithinAlphabet::new(ev, 48, false).is_err());
}

/// Meta-training's within-alphabet tasks (background alphabets) turn every
/// drawing of a task by the same quarter turns, and all four turns occur.
#[test]
fn within_alphabet_training_tasks_turn_each_task_alike() {
    use metasgd::tasks::within_alphabet::WithinAlphabet;
    let Some(bg) = data(Split::Background) else { return };
    let fam = WithinAlphabet::new(bg.clone(), 5, true).unwrap();
    let mut turns_seen = std::collections::HashSet::new();
    for seed in 0..12 {
        // The same stream draws the same picks; the turns come after them.
        let picks = fam.draw(&mut ChaCha8Rng::seed_from_u64(seed), 1, 1).unwrap();
        let ep = fam
            .sample(&mut ChaCha8Rng::seed_from_u64(seed), 1, 1, 1, &Device::Cpu)
            .unwrap();
        let support = ep.support_x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let turns: Vec<usize> = picks
            .iter()
            .enumerate()
            .map(|(label, p)| {
                let row = &support[label * PIXELS..(label + 1) * PIXELS];
                (0..4)
                    .find(|&t| rotate(bg.image(p[0]), t) == row)
                    .expect("each support drawing is its pick, turned")
            })
            .collect();
        assert!(turns.iter().all(|&t| t == turns[0]), "one turn a task: {turns:?}");
        turns_seen.insert(turns[0]);
    }
    assert_eq!(turns_seen.len(), 4, "all four turns occur: {turns_seen:?}");
}

/// Regression: `eval` of a shift-ensemble model at 20-way 5-shot adapted 20
/// tasks at once and held 18 GB before the kernel stopped it. Its chunk now
/// shrinks by the nine copies, and the smaller chunks draw the same tasks.
#[test]
fn shift_ensemble_eval_ran_out_of_memory_now_chunks_by_copies() {
    use metasgd::eval::{chunk, over_episodes, EvalSpec};
    use metasgd::model::Architecture;
    let Some(ev) = data(Split::Evaluation) else { return };
    let fam = OmniglotTasks {
        data: ev,
        n_way: 20,
        rotations: false,
    };
    let conv4 = |shift_radius| Architecture::Conv4 {
        channels: 1,
        side: 28,
        hidden: 64,
        proto_start: false,
        shift_radius,
    };
    assert_eq!(chunk(&fam, &conv4(0)), 20);
    assert_eq!(chunk(&fam, &conv4(1)), 2, "20 tasks / 9 copies");
    let spec = EvalSpec {
        shots: 5,
        steps: 1,
        tasks: 5,
        queries: 1,
        seed: 7,
    };
    let draw = |n| {
        over_episodes(&fam, spec, n, &Device::Cpu, |ep| {
            let (t, s, d) = ep.support_x.dims3()?;
            let x = ep.support_x.reshape((t, s * d))?.to_vec2::<f32>()?;
            Ok(x)
        })
        .unwrap()
    };
    let (whole, chunked) = (draw(20), draw(2));
    assert_eq!(whole.len(), 5);
    assert!(whole == chunked, "chunks of 2 draw the tasks one chunk of 5 draws");
}
