//! The HWU64 protocol's scenario sets on the real data: disjoint, and with
//! enough intents and utterances for the evaluated cells.

use std::collections::BTreeSet;

use crate::common;
use metasgd::tasks::hwu64::{utterances, PREFIX, TEST, TRAINING, VALIDATION};

fn intents(utts: &[(String, String)]) -> BTreeSet<String> {
    utts.iter().map(|(_, i)| i.clone()).collect()
}

#[test]
fn hwu64_scenarios_split_the_64_intents_without_overlap() {
    let Some(dir) = common::shared_dir("data/hwu64") else {
        return;
    };
    let (tr, va, te) = (
        utterances(&dir, &TRAINING).unwrap(),
        utterances(&dir, &VALIDATION).unwrap(),
        utterances(&dir, &TEST).unwrap(),
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
