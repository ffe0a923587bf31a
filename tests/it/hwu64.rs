//! The HWU64 protocol's scenario sets on the real data: disjoint, and with
//! enough intents and utterances for the evaluated cells.

use std::collections::BTreeSet;

use crate::common;
use metasgd::tasks::hwu64::{
    utterances, ALL_SPLITS, PREFIX, TEST, TRAINING, VALIDATION, WIDE_TRAIN_SPLITS, WIDE_VALIDATION_SPLITS,
};

fn intents(utts: &[(String, String)]) -> BTreeSet<String> {
    utts.iter().map(|(_, i)| i.clone()).collect()
}

#[test]
fn hwu64_scenarios_split_the_64_intents_without_overlap() {
    let Some(dir) = common::shared_dir("data/hwu64") else {
        return;
    };
    let (tr, va, te) = (
        utterances(&dir, &TRAINING, &ALL_SPLITS).unwrap(),
        utterances(&dir, &VALIDATION, &ALL_SPLITS).unwrap(),
        utterances(&dir, &TEST, &ALL_SPLITS).unwrap(),
    );
    let (a, b, c) = (intents(&tr), intents(&va), intents(&te));
    assert_eq!(
        a.len() + b.len() + c.len(),
        64,
        "{} + {} + {}",
        a.len(),
        b.len(),
        c.len()
    );
    assert!(a.is_disjoint(&c) && b.is_disjoint(&c) && a.is_disjoint(&b));
    // The held-out set serves 20-way tasks, each intent K + Q = 10 utterances.
    assert!(c.len() >= 20, "{} held-out intents", c.len());
    for i in &c {
        assert!(i.starts_with(PREFIX));
        let n = te.iter().filter(|(_, j)| j == i).count();
        assert!(n >= 10, "{i} has {n} utterances");
    }
    // Every line of the three files is in exactly one set.
    let lines: usize = ["train", "valid", "test"]
        .iter()
        .map(|s| {
            std::fs::read_to_string(dir.join(s).join("label"))
                .unwrap()
                .lines()
                .count()
        })
        .sum();
    assert_eq!(tr.len() + va.len() + te.len(), lines);
    assert!(te.iter().all(|(t, _)| !t.is_empty()));
}

/// `intents-hwu64-wide` trains on the validation scenarios' `train` file and
/// validates on their `valid` and `test` files: the two share the intents and
/// no line, and each intent keeps enough unseen sentences for K + Q = 10.
#[test]
fn hwu64_wide_protocol_validates_on_unseen_sentences_of_seen_intents() {
    let Some(dir) = common::shared_dir("data/hwu64") else {
        return;
    };
    let seen = utterances(&dir, &VALIDATION, &WIDE_TRAIN_SPLITS).unwrap();
    let val = utterances(&dir, &VALIDATION, &WIDE_VALIDATION_SPLITS).unwrap();
    let all = utterances(&dir, &VALIDATION, &ALL_SPLITS).unwrap();
    assert_eq!(seen.len() + val.len(), all.len());
    assert_eq!(intents(&seen), intents(&val));
    assert!(intents(&val).len() >= 10, "{} validation intents", intents(&val).len());
    for i in intents(&val) {
        let n = val.iter().filter(|(_, j)| *j == i).count();
        assert!(n >= 10, "{i} has {n} valid/test utterances");
    }
    assert!(
        utterances(&dir, &VALIDATION, &[]).is_err(),
        "no files: an error, not an empty set"
    );
}
