//! Compute device selection: `auto`, `cpu`, `cuda` or `cuda:N`.

use candle_core::Device;

/// Parses a `--device` value and opens the device.
pub fn select(spec: &str) -> anyhow::Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    match spec.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if candle_core::utils::cuda_is_available() {
            Device::new_cuda(0).unwrap_or(Device::Cpu)
        } else {
            Device::Cpu
        }),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("invalid device {s:?}: expected cuda:N"))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                anyhow::bail!(
                    "--device {s}: this binary was built without CUDA support; rebuild with `cargo build --release --features cuda`, or use --device cpu"
                );
            }
            Device::new_cuda(ordinal)
                .map_err(|e| anyhow::anyhow!("--device {s}: cannot open CUDA device {ordinal}: {e}"))
        }
        other => anyhow::bail!("invalid device {other:?}: expected auto, cpu, cuda or cuda:N"),
    }
}

/// A short name for logs and the model info.
pub fn name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

/// Sets the compute thread count for candle's CPU kernels (rayon and gemm).
/// Must run before the first tensor operation.
pub fn set_threads(n: usize) {
    let n = n.max(1);
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
}
