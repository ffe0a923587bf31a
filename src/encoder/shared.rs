//! ONNX Runtime calls shared across requests: texts that several requests
//! need encoded at the same time run in the same batches.
//!
//! Flat combining, with no thread of its own: a caller queues its texts; if
//! fewer than `lanes` (the encoder's sessions) batches are running, it takes
//! whole requests from the front of the queue, up to `batch` texts (at least
//! one request), encodes them in one call and hands every request its rows;
//! otherwise it waits for a runner to hand it its own. A request is never
//! split across calls, and is taken in arrival order.
//!
//! Used only for encoders that embed a text to the same bits whatever its
//! batch (`Encoder::batch_independent`), so a request's vectors do not
//! depend on its company, and replays stay bit-exact.

use std::collections::{HashMap, VecDeque};

use parking_lot::{Condvar, Mutex};

type Answer = Result<Vec<f32>, String>;

struct Request {
    id: u64,
    texts: Vec<String>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Request>,
    answers: HashMap<u64, Answer>,
    running: usize,
    next_id: u64,
}

pub struct Shared {
    state: Mutex<State>,
    answered: Condvar,
    batch: usize,
    lanes: usize,
}

/// Hands out an error to every request taken if the run never answered
/// (a panic in the encoder), and frees the lane.
struct Taken<'a> {
    shared: &'a Shared,
    ids: Vec<u64>,
    answered: bool,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let mut s = self.shared.state.lock();
        if !self.answered {
            for id in &self.ids {
                s.answers
                    .insert(*id, Err("the encoder batch running this request failed".into()));
            }
        }
        s.running -= 1;
        drop(s);
        self.shared.answered.notify_all();
    }
}

impl Shared {
    pub fn new(batch: usize, lanes: usize) -> Self {
        Shared {
            state: Mutex::new(State::default()),
            answered: Condvar::new(),
            batch: batch.max(1),
            lanes: lanes.max(1),
        }
    }

    /// `texts`' vectors, row-major, encoded by `run` (which gets the texts
    /// of one shared call) alone or beside other requests' texts.
    pub fn embed(
        &self,
        texts: &[&str],
        dim: usize,
        run: &dyn Fn(&[&str]) -> anyhow::Result<Vec<f32>>,
    ) -> anyhow::Result<Vec<f32>> {
        let mut s = self.state.lock();
        let id = s.next_id;
        s.next_id += 1;
        s.queue.push_back(Request {
            id,
            texts: texts.iter().map(|t| t.to_string()).collect(),
        });
        loop {
            if let Some(a) = s.answers.remove(&id) {
                return a.map_err(anyhow::Error::msg);
            }
            if s.running >= self.lanes || s.queue.is_empty() {
                self.answered.wait(&mut s);
                continue;
            }
            let mut taken = Vec::new();
            let mut total = 0;
            while let Some(r) = s.queue.front() {
                if !taken.is_empty() && total + r.texts.len() > self.batch {
                    break;
                }
                total += r.texts.len();
                taken.extend(s.queue.pop_front());
            }
            s.running += 1;
            let mut guard = Taken {
                shared: self,
                ids: taken.iter().map(|r| r.id).collect(),
                answered: false,
            };
            drop(s);
            metrics::histogram!("metasgd_encoder_shared_requests").record(taken.len() as f64);
            let all: Vec<&str> = taken.iter().flat_map(|r| r.texts.iter().map(String::as_str)).collect();
            let out = run(&all);
            s = self.state.lock();
            match out {
                Ok(v) if v.len() == all.len() * dim => {
                    let mut at = 0;
                    for r in &taken {
                        let n = r.texts.len() * dim;
                        s.answers.insert(r.id, Ok(v[at..at + n].to_vec()));
                        at += n;
                    }
                }
                Ok(v) => {
                    let e = format!("the encoder gave {} values for {} texts of {dim}", v.len(), all.len());
                    for r in &taken {
                        s.answers.insert(r.id, Err(e.clone()));
                    }
                }
                Err(e) => {
                    for r in &taken {
                        s.answers.insert(r.id, Err(format!("{e:#}")));
                    }
                }
            }
            guard.answered = true;
            drop(s);
            drop(guard);
            s = self.state.lock();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A fake encoder: each text's vector is its length and its call's size.
    fn fake(calls: &AtomicUsize) -> impl Fn(&[&str]) -> anyhow::Result<Vec<f32>> + '_ {
        move |texts: &[&str]| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(20));
            Ok(texts
                .iter()
                .flat_map(|t| [t.len() as f32, texts.len() as f32])
                .collect())
        }
    }

    #[test]
    fn concurrent_requests_share_calls_and_each_gets_its_own_rows() {
        let shared = Arc::new(Shared::new(8, 1));
        let calls = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let (shared, calls) = (shared.clone(), calls.clone());
                std::thread::spawn(move || {
                    let texts: Vec<String> = (0..2).map(|j| "x".repeat(1 + i * 2 + j)).collect();
                    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                    let v = shared.embed(&refs, 2, &fake(&calls)).unwrap();
                    (i, v)
                })
            })
            .collect();
        for h in handles {
            let (i, v) = h.join().unwrap();
            assert_eq!(v[0], (1 + i * 2) as f32);
            assert_eq!(v[2], (2 + i * 2) as f32);
            assert!(v[1] <= 8.0, "a call held more than the batch");
        }
        assert!(calls.load(Ordering::SeqCst) < 6, "no call was shared");
    }

    #[test]
    fn a_failed_call_fails_its_requests_and_the_next_ones_run() {
        let shared = Shared::new(8, 1);
        let bad = |_: &[&str]| -> anyhow::Result<Vec<f32>> { anyhow::bail!("boom") };
        assert!(shared.embed(&["a"], 2, &bad).unwrap_err().to_string().contains("boom"));
        let calls = AtomicUsize::new(0);
        assert_eq!(shared.embed(&["abc"], 2, &fake(&calls)).unwrap(), vec![3.0, 1.0]);
    }

    #[test]
    fn a_panicking_call_fails_its_requests_without_wedging_the_queue() {
        let shared = Shared::new(8, 1);
        let panics = |_: &[&str]| -> anyhow::Result<Vec<f32>> { panic!("encoder panic") };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shared.embed(&["a"], 2, &panics)));
        assert!(r.is_err());
        let calls = AtomicUsize::new(0);
        assert_eq!(shared.embed(&["ab"], 2, &fake(&calls)).unwrap(), vec![2.0, 1.0]);
    }
}
