//! HWU64 (`{train,valid,test}/{label,seq.in}`, line-aligned): 64 intents in
//! 18 scenarios, labelled `scenario_intent`. The `intents-hwu64` protocol
//! meta-trains on all of CLINC150 and on the [`TRAINING`] scenarios,
//! validates on the [`VALIDATION`] scenarios and evaluates on the [`TEST`]
//! scenarios; no scenario is in two sets, and each set uses every utterance
//! of its scenarios (all three files). The `intents-hwu64-wide` protocol
//! also meta-trains on the validation scenarios' `train` utterances and
//! validates on their `valid` and `test` utterances (seen intents, unseen
//! sentences); its held-out set is the same [`TEST`] scenarios.

use std::path::Path;

use anyhow::Context;

/// Scenarios meta-training sees (27 intents).
pub const TRAINING: [&str; 8] = [
    "alarm", "audio", "cooking", "general", "music", "news", "play", "weather",
];
/// Scenarios for validation during training (12 intents).
pub const VALIDATION: [&str; 5] = ["calendar", "datetime", "recommendation", "social", "takeaway"];
/// Scenarios held out for evaluation (25 intents).
pub const TEST: [&str; 5] = ["email", "iot", "lists", "qa", "transport"];

/// Intent names carry this prefix, so they never collide with CLINC150's.
pub const PREFIX: &str = "hwu64/";

/// Every file of the release.
pub const ALL_SPLITS: [&str; 3] = ["train", "valid", "test"];
/// `intents-hwu64-wide`: the validation scenarios' files it meta-trains on
/// and those it validates on.
pub const WIDE_TRAIN_SPLITS: [&str; 1] = ["train"];
pub const WIDE_VALIDATION_SPLITS: [&str; 2] = ["valid", "test"];

/// The utterances of the intents of `scenarios` in the `splits` files, as
/// `(text, intent)`.
pub fn utterances(dir: &Path, scenarios: &[&str], splits: &[&str]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for &split in splits {
        let read = |name: &str| -> anyhow::Result<String> {
            let p = dir.join(split).join(name);
            std::fs::read_to_string(&p).with_context(|| {
                format!(
                    "cannot read {} (HWU64: {{train,valid,test}}/{{label,seq.in}})",
                    p.display()
                )
            })
        };
        let (labels, texts) = (read("label")?, read("seq.in")?);
        let (labels, texts): (Vec<&str>, Vec<&str>) = (labels.lines().collect(), texts.lines().collect());
        anyhow::ensure!(
            labels.len() == texts.len(),
            "HWU64 {split}: {} labels but {} utterances",
            labels.len(),
            texts.len()
        );
        for (label, text) in labels.iter().zip(&texts) {
            let scenario = label.split('_').next().unwrap_or_default();
            if scenarios.contains(&scenario) {
                out.push((text.trim().to_string(), format!("{PREFIX}{}", label.trim())));
            }
        }
    }
    anyhow::ensure!(
        !out.is_empty(),
        "HWU64 in {} has no utterances of {scenarios:?} in {splits:?}",
        dir.display()
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_sets_are_disjoint() {
        for s in TRAINING {
            assert!(!VALIDATION.contains(&s) && !TEST.contains(&s), "{s}");
        }
        for s in VALIDATION {
            assert!(!TEST.contains(&s), "{s}");
        }
    }
}
