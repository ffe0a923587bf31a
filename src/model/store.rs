//! Loading and saving a model folder: `manifest.json` plus θ and the update
//! rule's tensors in safetensors.
//!
//! The weights file holds `theta.<param>` for every parameter of the
//! architecture and the tensors of the manifest's `update_rule`, named as
//! `model::rule_names` says (for `metasgd`, `alpha.<param>` with either the
//! parameter's shape or one scalar per tensor, as MAML has).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use super::rule::Rule;
use super::{rule_names, Architecture, InnerLoss, Manifest};

/// Why a model folder could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid manifest: {msg}")]
    Manifest { path: PathBuf, msg: String },
    #[error("{path}: invalid weights: {msg}")]
    Weights { path: PathBuf, msg: String },
}

/// A model ready to adapt: its manifest, θ in the architecture's order and
/// its update rule.
#[derive(Clone, Debug)]
pub struct LoadedModel {
    pub manifest: Manifest,
    pub theta: Vec<Tensor>,
    pub rule: Rule,
    /// Hex SHA-256 of the architecture, the encoder spec (with its files'
    /// pinned hashes), θ and the rule's tensors (names, shapes and f32 bytes).
    pub version: String,
    pub dir: PathBuf,
}

impl LoadedModel {
    pub fn architecture(&self) -> &Architecture {
        &self.manifest.architecture
    }

    /// The same model on another device.
    pub fn to_device(&self, device: &Device) -> candle_core::Result<Self> {
        let mv = |ts: &[Tensor]| {
            ts.iter()
                .map(|t| t.to_device(device))
                .collect::<candle_core::Result<Vec<_>>>()
        };
        Ok(Self {
            theta: mv(&self.theta)?,
            rule: self.rule.map_all(&|t| t.to_device(device))?,
            ..self.clone()
        })
    }
}

/// Loads and validates the model in `dir`.
pub fn load_model(dir: &Path, device: &Device) -> Result<LoadedModel, ModelError> {
    let manifest_path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).map_err(|source| ModelError::Io {
        path: manifest_path.clone(),
        source,
    })?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| ModelError::Manifest {
        path: manifest_path.clone(),
        msg: e.to_string(),
    })?;
    manifest.validate().map_err(|msg| ModelError::Manifest {
        path: manifest_path.clone(),
        msg,
    })?;

    let weights_path = dir.join(&manifest.weights);
    let bytes = std::fs::read(&weights_path).map_err(|source| ModelError::Io {
        path: weights_path.clone(),
        source,
    })?;
    let werr = |msg: String| ModelError::Weights {
        path: weights_path.clone(),
        msg,
    };
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| werr(e.to_string()))?;

    let mut theta = Vec::new();
    for spec in manifest.architecture.params() {
        let name = format!("theta.{}", spec.name);
        let t = tensors
            .remove(&name)
            .ok_or_else(|| werr(format!("missing tensor {name}")))?;
        if t.dims() != spec.shape.as_slice() {
            return Err(werr(format!(
                "{name} has shape {:?}, expected {:?}",
                t.dims(),
                spec.shape
            )));
        }
        theta.push(rule_names::finite(&name, t).map_err(werr)?);
    }
    let rule = rule_names::take(manifest.update_rule, &manifest.architecture, &mut tensors)
        .map_err(werr)?
        .clipped(manifest.inner_grad_clip);
    if let Some(extra) = tensors.keys().min() {
        return Err(werr(format!(
            "unexpected tensor {extra} (the manifest's update_rule is {})",
            manifest.update_rule.as_str()
        )));
    }
    let version = digest(&manifest, &theta, &rule).map_err(|e| werr(e.to_string()))?;
    let model = LoadedModel {
        manifest,
        theta,
        rule,
        version,
        dir: dir.to_path_buf(),
    };
    model
        .to_device(device)
        .map_err(|e| werr(format!("cannot move to {device:?}: {e}")))
}

/// Writes `manifest.json` and the weights file into `dir` (created if needed).
pub fn save_model(dir: &Path, manifest: &Manifest, theta: &[Tensor], rule: &Rule) -> anyhow::Result<()> {
    anyhow::ensure!(
        rule.kind() == manifest.update_rule,
        "a {} rule saved under a manifest that declares {}",
        rule.kind().as_str(),
        manifest.update_rule.as_str()
    );
    anyhow::ensure!(
        rule.clip() == manifest.inner_grad_clip,
        "the rule's gradient clipping {:?} differs from the manifest's inner_grad_clip {:?}",
        rule.clip(),
        manifest.inner_grad_clip
    );
    std::fs::create_dir_all(dir)?;
    let arch = &manifest.architecture;
    let mut named: Vec<(String, Tensor)> = arch
        .params()
        .into_iter()
        .zip(theta)
        .map(|(s, t)| (format!("theta.{}", s.name), t.clone()))
        .collect();
    named.extend(rule_names::named(rule, arch));
    save_named(&dir.join(&manifest.weights), &named)?;
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(manifest)? + "\n",
    )?;
    Ok(())
}

/// Saves named tensors (as f32, on the CPU) in one safetensors file,
/// atomically (written beside, then renamed).
pub fn save_named(path: &Path, named: &[(String, Tensor)]) -> anyhow::Result<()> {
    let mut map = HashMap::new();
    for (name, t) in named {
        map.insert(name.clone(), t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?);
    }
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(&map, &tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Saves groups of parameters as `<prefix>.<param>` in one safetensors file,
/// atomically (written beside, then renamed).
pub fn save_params(path: &Path, arch: &Architecture, groups: &[(&str, &[Tensor])]) -> anyhow::Result<()> {
    let specs = arch.params();
    let mut map = HashMap::new();
    for (prefix, ts) in groups {
        anyhow::ensure!(
            ts.len() == specs.len(),
            "{prefix}: {} tensors for {} parameters",
            ts.len(),
            specs.len()
        );
        for (spec, t) in specs.iter().zip(ts.iter()) {
            map.insert(
                format!("{prefix}.{}", spec.name),
                t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?,
            );
        }
    }
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(&map, &tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Loads `<prefix>.<param>` groups saved by [`save_params`].
pub fn load_params(
    path: &Path,
    arch: &Architecture,
    prefixes: &[&str],
    device: &Device,
) -> anyhow::Result<Vec<Vec<Tensor>>> {
    let mut map = candle_core::safetensors::load(path, device)?;
    prefixes
        .iter()
        .map(|p| {
            arch.params()
                .iter()
                .map(|s| {
                    map.remove(&format!("{p}.{}", s.name))
                        .ok_or_else(|| anyhow::anyhow!("{}: missing {p}.{}", path.display(), s.name))
                })
                .collect()
        })
        .collect()
}

/// Hex SHA-256 over names, shapes and f32 little-endian bytes of θ then the
/// rule's tensors (for `metasgd`, `alpha.*`: the digest models had before
/// rules were named).
pub fn digest(manifest: &Manifest, theta: &[Tensor], rule: &Rule) -> candle_core::Result<String> {
    let arch = &manifest.architecture;
    let mut h = Sha256::new();
    // What else decides predictions: the architecture's settings (a cosine
    // head has the same tensors as a plain one) and the encoder.
    h.update(serde_json::to_vec(arch).unwrap_or_default());
    if let Some(enc) = &manifest.encoder {
        h.update(serde_json::to_vec(enc).unwrap_or_default());
    }
    if let Some(c) = manifest.inner_grad_clip {
        h.update(format!("inner_grad_clip:{c};").as_bytes());
    }
    if manifest.inner_loss != InnerLoss::Mean {
        h.update(format!("inner_loss:{};", manifest.inner_loss.as_str()).as_bytes());
    }
    let theta = arch
        .params()
        .into_iter()
        .zip(theta)
        .map(|(s, t)| (format!("theta.{}", s.name), t.clone()));
    for (name, t) in theta.chain(rule_names::named(rule, arch)) {
        h.update(format!("{name}:{:?};", t.dims()).as_bytes());
        for v in t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()? {
            h.update(v.to_le_bytes());
        }
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn version_changes_with_the_head_kind_and_the_encoder_not_only_the_weights() {
        let mut m: Manifest = serde_json::from_str(include_str!("../../models/intents/manifest.json")).unwrap();
        let ps = m.architecture.params();
        let t: Vec<Tensor> = ps
            .iter()
            .map(|p| Tensor::ones(p.shape.as_slice(), DType::F32, &Device::Cpu).unwrap())
            .collect();
        let r = Rule::MetaSgd { alpha: t.clone() };
        let v0 = digest(&m, &t, &r).unwrap();
        assert_eq!(v0, digest(&m, &t, &r).unwrap());
        if let Architecture::Features { cosine, .. } = &mut m.architecture {
            *cosine = !*cosine;
        }
        let v1 = digest(&m, &t, &r).unwrap();
        assert_ne!(v0, v1);
        m.encoder.as_mut().unwrap().max_tokens = 128;
        assert_ne!(v1, digest(&m, &t, &r).unwrap());
    }
}
