//! Task families: episode samplers that meta-training and evaluation draw from.

pub mod augment;
pub mod clinc;
mod episode;
mod family;
pub mod hwu64;
pub mod intents;
pub mod omniglot;
pub mod sinusoid;
pub mod within_alphabet;

use std::path::Path;
use std::sync::Arc;

pub use episode::Episode;
pub use family::TaskFamily;

/// Looks a family that needs no data up by name.
pub fn family(name: &str) -> Option<Box<dyn TaskFamily>> {
    match name {
        "sinusoid" => Some(Box::new(sinusoid::Sinusoid)),
        _ => None,
    }
}

/// The meta-training family and the held-out (evaluation) family for `name`.
///
/// `data` is the dataset folder, for families that read one (Omniglot: the
/// folder with the release's zips; `intents`: CLINC150's folder;
/// `intents-hwu64` and `intents-hwu64-wide`: the folder holding `clinc150/`
/// and `hwu64/`; see `hwu64` for the two protocols); `n_way`
/// is the classes per task. `omniglot-within-alphabet` meta-trains on tasks
/// within one background alphabet and validates within one evaluation alphabet.
pub fn families(
    name: &str,
    data: Option<&Path>,
    n_way: usize,
) -> anyhow::Result<(Box<dyn TaskFamily>, Box<dyn TaskFamily>)> {
    let train: Box<dyn TaskFamily> = match name {
        "sinusoid" => Box::new(sinusoid::Sinusoid),
        "omniglot" => Box::new(omniglot::OmniglotTasks {
            data: omniglot_split(data, omniglot::Split::Background)?,
            n_way,
            rotations: true,
        }),
        "omniglot-within-alphabet" => Box::new(within_alphabet::WithinAlphabet::new(
            omniglot_split(data, omniglot::Split::Background)?,
            n_way,
            true,
        )?),
        "intents" => {
            // Validation: the held-out domains' `val` utterances (`eval` uses their `test`).
            let sets = intents::load(
                intents_data(data)?,
                &[
                    (clinc::Domains::Training, &["train", "val", "test"]),
                    (clinc::Domains::HeldOut, &["val"]),
                ],
            )?;
            return intent_pair(sets, n_way, "intents");
        }
        "intents-hwu64" | "intents-hwu64-wide" => {
            // Training: all of CLINC150 and HWU64's training scenarios; validation: its validation scenarios.
            let (clinc_dir, hwu_dir) = hwu64_dirs(data)?;
            let mut train =
                clinc::utterances(&clinc_dir, &[(clinc::Domains::All, &["train", "val", "test"])])?.remove(0);
            train.extend(hwu64::utterances(&hwu_dir, &hwu64::TRAINING, &hwu64::ALL_SPLITS)?);
            let val = if name == "intents-hwu64-wide" {
                // The wide protocol also trains on the validation scenarios' `train`
                // utterances and validates on their `valid` and `test` utterances.
                train.extend(hwu64::utterances(
                    &hwu_dir,
                    &hwu64::VALIDATION,
                    &hwu64::WIDE_TRAIN_SPLITS,
                )?);
                hwu64::utterances(&hwu_dir, &hwu64::VALIDATION, &hwu64::WIDE_VALIDATION_SPLITS)?
            } else {
                hwu64::utterances(&hwu_dir, &hwu64::VALIDATION, &hwu64::ALL_SPLITS)?
            };
            return intent_pair(intents::embed_sets(vec![train, val])?, n_way, "intents-hwu64");
        }
        _ => anyhow::bail!("unknown task family {name:?} (known: {KNOWN})"),
    };
    let held_out = held_out(name, data, &[n_way])?.remove(0);
    Ok((train, held_out))
}

/// The held-out (evaluation) family of `name` for each class count in
/// `ways`, reading the data once.
pub fn held_out(name: &str, data: Option<&Path>, ways: &[usize]) -> anyhow::Result<Vec<Box<dyn TaskFamily>>> {
    match name {
        "sinusoid" => Ok(ways
            .iter()
            .map(|_| Box::new(sinusoid::Sinusoid) as Box<dyn TaskFamily>)
            .collect()),
        "omniglot" => {
            let ev = omniglot_split(data, omniglot::Split::Evaluation)?;
            Ok(ways
                .iter()
                .map(|&n_way| {
                    Box::new(omniglot::OmniglotTasks {
                        data: ev.clone(),
                        n_way,
                        rotations: false,
                    }) as Box<dyn TaskFamily>
                })
                .collect())
        }
        "omniglot-within-alphabet" => {
            let ev = omniglot_split(data, omniglot::Split::Evaluation)?;
            ways.iter()
                .map(|&n_way| {
                    Ok(
                        Box::new(within_alphabet::WithinAlphabet::new(ev.clone(), n_way, false)?)
                            as Box<dyn TaskFamily>,
                    )
                })
                .collect()
        }
        "intents" => {
            let test = intents::load(intents_data(data)?, &[(clinc::Domains::HeldOut, &["test"])])?.remove(0);
            Ok(intent_families(test, ways, "intents"))
        }
        "intents-hwu64" | "intents-hwu64-wide" => {
            let (_, hwu_dir) = hwu64_dirs(data)?;
            let test =
                intents::embed_sets(vec![hwu64::utterances(&hwu_dir, &hwu64::TEST, &hwu64::ALL_SPLITS)?])?.remove(0);
            Ok(intent_families(test, ways, "intents-hwu64"))
        }
        _ => anyhow::bail!("unknown task family {name:?} (known: {KNOWN})"),
    }
}

const KNOWN: &str = "sinusoid, omniglot, omniglot-within-alphabet, intents, intents-hwu64, intents-hwu64-wide";

/// One intents family over `data` for each class count in `ways`.
fn intent_families(data: Arc<clinc::IntentData>, ways: &[usize], family: &'static str) -> Vec<Box<dyn TaskFamily>> {
    ways.iter()
        .map(|&n_way| {
            Box::new(intents::IntentTasks {
                data: data.clone(),
                n_way,
                family,
            }) as Box<dyn TaskFamily>
        })
        .collect()
}

/// A training and a validation family over two embedded sets.
fn intent_pair(
    sets: Vec<Arc<clinc::IntentData>>,
    n_way: usize,
    family: &'static str,
) -> anyhow::Result<(Box<dyn TaskFamily>, Box<dyn TaskFamily>)> {
    let [train, val] = <[_; 2]>::try_from(sets).map_err(|_| anyhow::anyhow!("two sets were asked for"))?;
    let fam = |data| Box::new(intents::IntentTasks { data, n_way, family }) as Box<dyn TaskFamily>;
    Ok((fam(train), fam(val)))
}

/// The `clinc150/` and `hwu64/` folders under the `intents-hwu64` data folder.
fn hwu64_dirs(data: Option<&Path>) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let data = data
        .ok_or_else(|| anyhow::anyhow!("the intents-hwu64 family needs --data <folder with clinc150/ and hwu64/>"))?;
    Ok((data.join("clinc150"), data.join("hwu64")))
}

fn intents_data(data: Option<&Path>) -> anyhow::Result<&Path> {
    data.ok_or_else(|| anyhow::anyhow!("the intents family needs --data <folder with CLINC150's data_full.json>"))
}

fn omniglot_split(data: Option<&Path>, split: omniglot::Split) -> anyhow::Result<Arc<omniglot::Omniglot>> {
    let data =
        data.ok_or_else(|| anyhow::anyhow!("the omniglot family needs --data <folder with images_background.zip>"))?;
    Ok(Arc::new(omniglot::Omniglot::load(data, split)?))
}
