//! The ONNX Runtime library: found (`--ort-lib` / `ORT_DYLIB_PATH`) or
//! fetched from PyPI's pinned `onnxruntime` wheel, then loaded once per process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;

use crate::fetch::{self, WheelFile};

/// The ONNX Runtime version `ort` 2.0.0-rc.15 is built for.
pub const ORT_VERSION: &str = "1.31.1";

/// `libonnxruntime.so` inside PyPI's `onnxruntime==1.31.1` wheel for Linux x86_64.
pub fn pinned_library() -> (WheelFile, &'static str) {
    (
        WheelFile {
            url: "https://files.pythonhosted.org/packages/b4/1d/0f85ee31a3d93f2243a5cc29252becf858f53ac5cfa6c9c15d9ffe107eea/onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl".into(),
            wheel_sha256: "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f".into(),
            member: "onnxruntime/capi/libonnxruntime.so.1.31.1".into(),
        },
        "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3",
    )
}

/// The library to load: `explicit`, else `$ORT_DYLIB_PATH`, else the pinned
/// wheel's copy in `cache` (downloaded when missing; Linux x86_64 only).
pub fn library_path(explicit: Option<&Path>, cache: &Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        anyhow::bail!(
            "no ONNX Runtime library: set ORT_DYLIB_PATH (or --ort-lib) to an onnxruntime {ORT_VERSION} \
             shared library; only the Linux x86_64 one is fetched automatically"
        );
    }
    let (file, sha) = pinned_library();
    fetch::ensure(cache, &file, sha)
}

static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime from `lib` and creates the process's environment.
/// Later calls return the first call's environment (one per process).
pub fn init(lib: &Path) -> anyhow::Result<ort::environment::Environment> {
    ENV.get_or_init(|| {
        let builder = ort::init_from(lib).map_err(|e| {
            format!(
                "cannot load ONNX Runtime from {}: {e}. It must be onnxruntime {ORT_VERSION} \
                 (PyPI's onnxruntime wheel has it as onnxruntime/capi/libonnxruntime.so.*)",
                lib.display()
            )
        })?;
        builder
            .with_name("metasgd")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
    .with_context(|| format!("ONNX Runtime ({})", lib.display()))
}
