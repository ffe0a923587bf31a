//! `metasgd fetch`: download everything the models in a folder need (their
//! encoders' files and the ONNX Runtime library) into the cache, so a
//! container image or an offline machine starts without the network.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::runtime;
use crate::model::Manifest;

/// Fetches (or finds in `cache`) the files of every text model under
/// `models`; returns the local paths.
pub fn prefetch(models: &Path, cache: &Path, ort_lib: Option<&Path>) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(models)
        .with_context(|| format!("cannot read the models folder {}", models.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("manifest.json").is_file())
        .collect();
    dirs.sort();
    let mut out = Vec::new();
    for d in dirs {
        let path = d.join("manifest.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let m: Manifest =
            serde_json::from_str(&text).with_context(|| format!("{} is not a manifest", path.display()))?;
        if let Some(spec) = &m.encoder {
            out.push(super::resolve(&spec.model, &d, cache, "ONNX model")?);
            out.push(super::resolve(&spec.tokenizer, &d, cache, "tokenizer")?);
        }
    }
    if !out.is_empty() {
        out.push(runtime::library_path(ort_lib, cache)?);
    }
    Ok(out)
}
