//! The `eval` command: model folders (and their baselines) evaluated on the
//! same seeded held-out tasks, at each step count and shot count, printed
//! as a markdown table and optionally saved as JSON.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;

use super::{evaluate, model_and_baselines, EvalResult, EvalSpec};
use crate::model::rule::Rule;
use crate::model::{LoadedModel, TaskKind};
use crate::tasks::held_out;

/// The `eval` command's arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct EvalArgs {
    /// Model folders, comma separated or repeated; each with its baselines/.
    #[arg(long, value_delimiter = ',', required = true)]
    pub model: Vec<PathBuf>,
    /// Shot counts K, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "5,10,20")]
    pub shots: Vec<usize>,
    /// Adaptation step counts, comma separated (default: each model's own
    /// `default_steps`).
    #[arg(long, value_delimiter = ',')]
    pub steps: Vec<usize>,
    #[arg(long, default_value_t = 1000)]
    pub tasks: usize,
    #[arg(long, default_value_t = 100)]
    pub queries: usize,
    /// Seed of the evaluation tasks (training uses other streams).
    #[arg(long, default_value_t = 20_171_002)]
    pub seed: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Dataset folder, for families that read one (omniglot).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Classification: classes per task, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "5")]
    pub ways: Vec<usize>,
    /// Also evaluate each model without adaptation (0 steps).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub zero_steps: bool,
    /// Classification: also evaluate nearest-centroid, on the first model's
    /// body features (conv4) or on its input vectors (the intents head's
    /// input: the encoder's embeddings), paired with every model.
    #[arg(long)]
    pub centroid: bool,
    /// Held-out tasks of this family instead of the manifest's
    /// (`omniglot-within-alphabet`: Lake et al.'s runs, one alphabet per
    /// task, support and queries by different drawers).
    #[arg(long)]
    pub held_out: Option<String>,
    /// A Meta-SGD weights file (`theta.*`, `alpha.*`) of the first model's
    /// architecture, evaluated beside it as `reference` (for example
    /// `../shared/reference/sinusoid_torch_metasgd.safetensors`).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    #[arg(long, env = "METASGD_THREADS", default_value_t = 2)]
    pub threads: usize,
}

/// Each model's label, with its folder added where two models share a
/// name (rows and paired rows are keyed by label, so a shared one merged
/// two models' rows in the table).
fn unique_labels(models: &[(String, &std::path::Path)]) -> Vec<String> {
    models
        .iter()
        .map(|(label, dir)| {
            if models.iter().filter(|(l, _)| l == label).count() > 1 {
                format!("{label} ({})", dir.display())
            } else {
                label.clone()
            }
        })
        .collect()
}

/// The labelled models of `args`: each folder's model and baselines, then the reference.
fn models(args: &EvalArgs, device: &Device) -> anyhow::Result<Vec<(String, LoadedModel)>> {
    let mut all = Vec::new();
    for dir in &args.model {
        all.extend(model_and_baselines(dir, device)?);
    }
    let unique = {
        let labels: Vec<(String, &std::path::Path)> = all.iter().map(|(l, m)| (l.clone(), m.dir.as_path())).collect();
        unique_labels(&labels)
    };
    for ((label, _), u) in all.iter_mut().zip(unique) {
        *label = u;
    }
    if let Some(path) = &args.reference {
        let first = &all.first().context("no model")?.1;
        let arch = first.architecture();
        let mut ts = crate::model::store::load_params(path, arch, &["theta", "alpha"], device)
            .with_context(|| format!("loading --reference {}", path.display()))?;
        let alpha = ts.pop().unwrap_or_default();
        let theta = ts.pop().unwrap_or_default();
        let mut manifest = first.manifest.clone();
        manifest.update_rule = Default::default();
        manifest.inner_grad_clip = None;
        manifest.default_steps = 1;
        let rule = Rule::metasgd(&alpha);
        let version = crate::model::store::digest(&manifest, &theta, &rule)?;
        all.push((
            "reference".into(),
            LoadedModel {
                manifest,
                theta,
                rule,
                version,
                dir: path.clone(),
            },
        ));
    }
    Ok(all)
}

/// Runs the `eval` command.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    crate::device::set_threads(args.threads);
    let device = Device::Cpu;
    let models = models(&args, &device)?;
    let first = &models[0].1.manifest;
    let fam_name = match &args.held_out {
        Some(f) => f.clone(),
        None => first.family.clone().context("the manifest names no task family")?,
    };
    let classification = first.task == TaskKind::Classification;
    let ways = if classification { args.ways.clone() } else { vec![0] };
    let base = EvalSpec {
        shots: 0,
        steps: 0,
        tasks: args.tasks,
        queries: args.queries,
        seed: args.seed,
    };
    let mut all: Vec<EvalResult> = Vec::new();
    for fam in held_out(&fam_name, args.data.as_deref(), &ways)? {
        let centroid_rows = if args.centroid && classification {
            // On the first model's features (the conv4's body), else its inputs.
            super::evaluate_centroid(fam.as_ref(), Some(&models[0].1), &args.shots, base, &device)?
        } else {
            Vec::new()
        };
        all.extend(centroid_rows.iter().map(|(r, _)| r.clone()));
        // The first model's per-episode accuracies, per step count and shot
        // count, to pair each baseline with.
        let mut first_accs: Vec<Vec<(String, Vec<f64>)>> = Vec::new();
        for (i, (label, m)) in models.iter().enumerate() {
            // The same episodes, with the inputs this model takes.
            let widened = super::inputs_for(fam.as_ref(), &m.manifest)?;
            let own: &dyn crate::tasks::TaskFamily = widened.as_deref().unwrap_or(fam.as_ref());
            let steps = if args.steps.is_empty() {
                vec![m.manifest.default_steps]
            } else {
                args.steps.clone()
            };
            for (j, &st) in steps.iter().enumerate() {
                let spec = EvalSpec { steps: st, ..base };
                let name = if steps.len() > 1 || !args.steps.is_empty() {
                    format!("{label} · {st} step{}", if st == 1 { "" } else { "s" })
                } else {
                    label.clone()
                };
                let rows = evaluate(m, &name, own, &args.shots, spec, &device)?;
                if i == 0 {
                    // The model's own accuracies against the centroid's, same episodes.
                    for ((r, accs), (_, c)) in rows.iter().zip(&centroid_rows) {
                        let at = EvalSpec { shots: r.shots, ..spec };
                        let accs = accs.as_deref().context("a classification model has accuracies")?;
                        all.push(super::paired_row(&name, "nearest-centroid", fam.as_ref(), at, accs, c));
                    }
                    if classification {
                        first_accs.push(
                            rows.iter()
                                .filter_map(|(_, a)| Some((name.clone(), a.clone()?)))
                                .collect(),
                        );
                    }
                } else if let Some(firsts) = first_accs.get(j) {
                    // The first model against this baseline, same episodes and step slot.
                    for ((r, accs), (first_name, f)) in rows.iter().zip(firsts) {
                        let Some(accs) = accs else { continue };
                        let at = EvalSpec { shots: r.shots, ..spec };
                        all.push(super::paired_row(first_name, &name, fam.as_ref(), at, f, accs));
                    }
                }
                all.extend(rows.into_iter().map(|(r, _)| r));
            }
            if args.zero_steps {
                let spec = EvalSpec { steps: 0, ..base };
                let rows = evaluate(m, &format!("{label} (0 steps)"), own, &args.shots, spec, &device)?;
                all.extend(rows.into_iter().map(|(r, _)| r));
            }
        }
    }
    if classification {
        print_accuracy_table(&all, args.tasks, args.queries);
    } else {
        print_loss_table(&all, &args.shots, args.tasks, args.queries);
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&all)? + "\n")?;
    }
    Ok(())
}

fn labels(all: &[EvalResult]) -> Vec<&str> {
    let mut labels: Vec<&str> = Vec::new();
    for r in all {
        if !labels.contains(&r.model.as_str()) {
            labels.push(&r.model);
        }
    }
    labels
}

/// Mean query loss ± 95% CI, one row per model and step count, one column per K.
fn print_loss_table(all: &[EvalResult], shots: &[usize], tasks: usize, queries: usize) {
    println!("{tasks} tasks, {queries} query points; mean query loss ± 95% CI");
    println!(
        "| model | {} |",
        shots.iter().map(|k| format!("K={k}")).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}", "---|".repeat(shots.len()));
    for l in labels(all) {
        let cells: Vec<String> = all
            .iter()
            .filter(|r| r.model == l)
            .map(|r| format!("{:.3} ± {:.3}", r.mean, r.ci95))
            .collect();
        println!("| {l} | {} |", cells.join(" | "));
    }
}

/// Accuracy ± 95% CI, one row per model, one column per (ways, shots).
fn print_accuracy_table(all: &[EvalResult], tasks: usize, queries: usize) {
    println!("{tasks} episodes, {queries} queries per class; query accuracy % ± 95% CI");
    let mut cols: Vec<(Option<usize>, usize)> = all.iter().map(|r| (r.ways, r.shots)).collect();
    cols.sort();
    cols.dedup();
    let head: Vec<String> = cols
        .iter()
        .map(|(w, k)| format!("{}-way {k}-shot", w.unwrap_or(0)))
        .collect();
    println!("| model | {} |", head.join(" | "));
    println!("|---|{}", "---|".repeat(cols.len()));
    for l in labels(all) {
        let cells: Vec<String> = cols
            .iter()
            .map(|c| {
                all.iter()
                    .find(|r| r.model == l && (r.ways, r.shots) == *c)
                    .map(|r| {
                        format!(
                            "{:.2} ± {:.2}",
                            100.0 * r.accuracy.unwrap_or(f64::NAN),
                            100.0 * r.accuracy_ci95.unwrap_or(f64::NAN)
                        )
                    })
                    .unwrap_or_default()
            })
            .collect();
        println!("| {l} | {} |", cells.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn models_of_one_name_get_their_folders_in_the_label() {
        let models = [
            ("omniglot".to_string(), Path::new("runs/a")),
            ("maml".to_string(), Path::new("runs/a/baselines/maml")),
            ("omniglot".to_string(), Path::new("models/omniglot")),
        ];
        assert_eq!(
            unique_labels(&models),
            ["omniglot (runs/a)", "maml", "omniglot (models/omniglot)"]
        );
    }
}
