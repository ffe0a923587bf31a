//! Omniglot: the loader for the official release, and the N-way K-shot episode sampler.
//!
//! The release is two zips (or the folders they extract to):
//! `images_background` (30 alphabets, 964 characters) for meta-training and
//! `images_evaluation` (20 alphabets, 659 characters) for meta-testing, each
//! as `<split>/<alphabet>/<character>/<drawer>.png`, 20 drawings of 105×105
//! per character. Every PNG goes through [`crate::images::ink_image`], the same
//! conversion the server applies to uploads.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use candle_core::{Device, Result};
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;

use super::episode::Episode;
use super::family::TaskFamily;
use crate::images::{ink_image, rotate, PIXELS, SIDE};
use crate::model::{Architecture, InputKind, InputSpec, Manifest, TaskKind};

/// The two halves of the release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// `images_background`: meta-training.
    Background,
    /// `images_evaluation`: meta-testing, alphabets never seen in training.
    Evaluation,
}

impl Split {
    pub fn folder(self) -> &'static str {
        match self {
            Split::Background => "images_background",
            Split::Evaluation => "images_evaluation",
        }
    }
}

/// One character: its alphabet, its folder name, and where its drawings are.
#[derive(Clone, Debug)]
pub struct Character {
    pub alphabet: String,
    pub name: String,
    /// Index of its first drawing in [`Omniglot::images`] (drawings are contiguous).
    pub first: usize,
    pub count: usize,
}

/// One split in memory: every drawing as 28×28 ink values.
pub struct Omniglot {
    pub split: Split,
    pub characters: Vec<Character>,
    /// `[drawings × 784]`, row-major.
    pub images: Vec<f32>,
    /// The source file of each drawing, relative to the split folder.
    pub files: Vec<String>,
}

impl Omniglot {
    /// Reads `<root>/<split>.zip`, or the extracted `<root>/<split>/` folder.
    pub fn load(root: &Path, split: Split) -> anyhow::Result<Self> {
        let zip = root.join(format!("{}.zip", split.folder()));
        let dir = root.join(split.folder());
        let mut files: Vec<(String, Vec<u8>)> = if zip.is_file() {
            read_zip(&zip)?
        } else if dir.is_dir() {
            read_dir(&dir)?
        } else {
            bail!(
                "no Omniglot {} under {}: expected {} or {}/ (the official release, https://github.com/brendenlake/omniglot)",
                split.folder(),
                root.display(),
                zip.display(),
                dir.display()
            );
        };
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut characters: Vec<Character> = Vec::new();
        let mut images = Vec::with_capacity(files.len() * PIXELS);
        let mut names = Vec::with_capacity(files.len());
        for (i, (path, bytes)) in files.iter().enumerate() {
            let parts: Vec<&str> = path.split('/').collect();
            let [alphabet, character, _file] = parts[..] else {
                bail!("unexpected path {path} in {}", split.folder());
            };
            let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
                .with_context(|| format!("decoding {path}"))?;
            images.extend(ink_image(&img));
            names.push(path.clone());
            match characters.last_mut() {
                Some(c) if c.alphabet == alphabet && c.name == character => c.count += 1,
                _ => characters.push(Character {
                    alphabet: alphabet.to_string(),
                    name: character.to_string(),
                    first: i,
                    count: 1,
                }),
            }
        }
        if characters.is_empty() {
            bail!("no drawings found in {}", split.folder());
        }
        Ok(Self {
            split,
            characters,
            images,
            files: names,
        })
    }

    /// Number of distinct alphabets.
    pub fn alphabets(&self) -> usize {
        let mut a: Vec<&str> = self.characters.iter().map(|c| c.alphabet.as_str()).collect();
        a.dedup();
        a.len()
    }

    /// Drawing `i` as 784 ink values.
    pub fn image(&self, i: usize) -> &[f32] {
        &self.images[i * PIXELS..(i + 1) * PIXELS]
    }
}

/// `(path relative to the split folder, bytes)` of every PNG in the zip.
fn read_zip(path: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut zip =
        zip::ZipArchive::new(std::io::BufReader::new(file)).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i)?;
        let name = f.name()?.to_string();
        if !name.ends_with(".png") {
            continue;
        }
        let mut bytes = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut bytes)
            .with_context(|| format!("{name} in {}", path.display()))?;
        // Strip the split folder: "images_background/Alphabet/character01/x.png".
        let rel = name.split_once('/').map(|(_, r)| r.to_string()).unwrap_or(name);
        out.push((rel, bytes));
    }
    Ok(out)
}

fn read_dir(dir: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "png") {
                let rel = p.strip_prefix(dir)?.to_string_lossy().replace('\\', "/");
                out.push((rel, std::fs::read(&p)?));
            }
        }
    }
    Ok(out)
}

/// N-way K-shot classification episodes over one split.
///
/// With `rotations`, each character at 0°, 90°, 180° and 270° is its own
/// class (964 × 4 = 3,856 background classes), as MAML and Meta-SGD train.
/// A task draws N distinct classes in random order (so labels are a random
/// permutation), then K + Q distinct drawings of each: the first K are the
/// support set, the other Q the query set.
pub struct OmniglotTasks {
    pub data: Arc<Omniglot>,
    pub n_way: usize,
    pub rotations: bool,
}

/// One drawn class: a character and a rotation in quarter turns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassRef {
    pub character: usize,
    pub quarter_turns: usize,
}

impl OmniglotTasks {
    pub fn classes(&self) -> usize {
        self.data.characters.len() * if self.rotations { 4 } else { 1 }
    }

    /// The classes and drawing indices of one task: `(class, support, query)` per label.
    pub fn draw(&self, rng: &mut ChaCha8Rng, k: usize, q: usize) -> Vec<(ClassRef, Vec<usize>, Vec<usize>)> {
        let turns = if self.rotations { 4 } else { 1 };
        sample(rng, self.classes(), self.n_way)
            .into_iter()
            .map(|c| {
                let class = ClassRef {
                    character: c / turns,
                    quarter_turns: c % turns,
                };
                let ch = &self.data.characters[class.character];
                let picks: Vec<usize> = sample(rng, ch.count, k + q).into_iter().map(|i| ch.first + i).collect();
                (class, picks[..k].to_vec(), picks[k..].to_vec())
            })
            .collect()
    }
}

/// Stacks the drawings of one set as `[N, 784]` values and one-hot targets `[N, n_way]`.
fn stack(
    data: &Omniglot,
    task: &[(ClassRef, Vec<usize>, Vec<usize>)],
    support: bool,
    xs: &mut Vec<f32>,
    ys: &mut Vec<f32>,
) {
    let n = task.len();
    for (label, (class, s, q)) in task.iter().enumerate() {
        for &i in if support { s } else { q } {
            xs.extend(rotate(data.image(i), class.quarter_turns));
            ys.extend((0..n).map(|j| if j == label { 1.0 } else { 0.0 }));
        }
    }
}

impl TaskFamily for OmniglotTasks {
    fn name(&self) -> &'static str {
        "omniglot"
    }

    fn sample(
        &self,
        rng: &mut ChaCha8Rng,
        tasks: usize,
        k_support: usize,
        k_query: usize,
        device: &Device,
    ) -> Result<Episode> {
        let (mut sx, mut sy, mut qx, mut qy) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..tasks {
            let task = self.draw(rng, k_support, k_query);
            stack(&self.data, &task, true, &mut sx, &mut sy);
            stack(&self.data, &task, false, &mut qx, &mut qy);
        }
        Episode::classification(tasks, self.n_way, PIXELS, (sx, sy), (qx, qy), device)
    }

    fn eval_chunk(&self) -> usize {
        20
    }

    fn n_way(&self) -> Option<usize> {
        Some(self.n_way)
    }

    fn with_n_way(&self, n: usize) -> Option<Box<dyn TaskFamily>> {
        Some(Box::new(OmniglotTasks {
            data: self.data.clone(),
            n_way: n,
            rotations: self.rotations,
        }))
    }

    fn manifest(&self, name: &str) -> Manifest {
        Manifest {
            inner_loss: Default::default(),
            update_rule: Default::default(),
            inner_grad_clip: None,
            name: name.to_string(),
            task: TaskKind::Classification,
            input: InputSpec {
                kind: InputKind::Image,
                shape: vec![1, SIDE, SIDE],
            },
            architecture: Architecture::Conv4 {
                channels: 1,
                side: SIDE,
                hidden: 64,
                proto_start: false,
                shift_radius: 0,
            },
            n_way: Some(MAX_WAY),
            default_steps: 1,
            max_steps: 10,
            weights: "model.safetensors".into(),
            family: Some("omniglot".into()),
            encoder: None,
            limits: Default::default(),
            description: "Omniglot few-shot character classification: 28x28 ink images, any number of classes up to n_way (one shared, meta-learned head row per class).".into(),
        }
    }
}

/// The most classes one Omniglot session may use.
pub const MAX_WAY: usize = 50;
