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

/// Forward FLOPs per example from which `--device auto` puts a model on
/// the GPU. Below it a forward is a few kernel launches of tiny work, and
/// the launches (about 5–10 µs each) cost more than the CPU's arithmetic:
/// the sinusoid MLP (3 kFLOP an example) and the intents head (a few kFLOP)
/// stay on the CPU, the conv4 image model (20 MFLOP) goes to the GPU.
pub const GPU_MIN_FLOPS_PER_EXAMPLE: f64 = 1e6;

/// The device a served model runs on: `spec` as [`select`] parses it,
/// except that `auto` keeps a model whose forward pass costs less than
/// [`GPU_MIN_FLOPS_PER_EXAMPLE`] an example on the CPU.
pub fn for_model(spec: &str, forward_flops: f64) -> anyhow::Result<Device> {
    if spec.trim().eq_ignore_ascii_case("auto") && forward_flops < GPU_MIN_FLOPS_PER_EXAMPLE {
        return Ok(Device::Cpu);
    }
    select(spec)
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

/// [`set_threads`] for serving (`serve`, `bench`), where the parallelism is
/// across requests (`--threads` pool workers and batching threads), and
/// candle's intra-op barrier pool (elementwise ops over 64 Ki elements,
/// `CANDLE_NUM_THREADS`, spinning workers) is turned off unless set. With it
/// on, batched sinusoid predictions spent 11% of the server's CPU spinning
/// in its barrier, and both Omniglot paths ran 15–40% slower
/// (docs/benchmarks.md).
pub fn set_serving_threads(n: usize) {
    set_threads(n);
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
