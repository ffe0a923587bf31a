//! Micro-benchmark of the conv4 pieces on a 128-image batch (forward and
//! backward), used to pick the im2col and max-pool implementations:
//! `RAYON_NUM_THREADS=2 cargo run --release --example convbench`.

use candle_core::{DType, Device, Tensor, Var};
use metasgd::model::conv::*;
use std::time::Instant;
fn t<F: FnMut() -> candle_core::Result<()>>(name: &str, mut f: F) {
    f().unwrap();
    let s = Instant::now();
    for _ in 0..3 {
        f().unwrap();
    }
    println!("{name}: {:.1} ms", s.elapsed().as_secs_f64() * 1000.0 / 3.0);
}
fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let n = 128;
    let h = Tensor::randn(0f32, 1.0, (1, 64, n, 14, 14), &dev)?;
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.05, (64, 64, 3, 3), &dev)?)?;
    let b = Var::from_tensor(&Tensor::zeros(64, DType::F32, &dev)?)?;
    t("pad", || {
        let _ = h.pad_with_zeros(3, 1, 1)?.pad_with_zeros(4, 1, 1)?;
        Ok(())
    });
    t("conv fwd", || {
        let _ = conv3x3(&h, &w, &b)?;
        Ok(())
    });
    t("conv fwd+bwd", || {
        let y = conv3x3(&h, &w, &b)?;
        let _ = y.sum_all()?.backward()?;
        Ok(())
    });
    let y = conv3x3(&h, &w, &b)?;
    t("pool fwd", || {
        let _ = max_pool2(&y)?;
        Ok(())
    });
    let yv = Var::from_tensor(&y)?;
    t("pool fwd+bwd", || {
        let _ = max_pool2(yv.as_tensor())?.sum_all()?.backward()?;
        Ok(())
    });
    let x4 = h.squeeze(0)?.transpose(0, 1)?.contiguous()?;
    t("candle conv2d fwd", || {
        let _ = x4.conv2d(w.as_tensor(), 1, 1, 1, 1)?;
        Ok(())
    });
    let xv = Var::from_tensor(&x4)?;
    t("candle conv2d fwd+bwd", || {
        let _ = xv
            .as_tensor()
            .conv2d(w.as_tensor(), 1, 1, 1, 1)?
            .sum_all()?
            .backward()?;
        Ok(())
    });
    let p = h.pad_with_zeros(3, 1, 1)?.pad_with_zeros(4, 1, 1)?;
    t("im2col stack", || {
        let mut c = vec![];
        for kh in 0..3 {
            for kw in 0..3 {
                c.push(p.narrow(3, kh, 14)?.narrow(4, kw, 14)?);
            }
        }
        let _ = Tensor::stack(&c, 2)?.reshape((1, 576, n * 196))?;
        Ok(())
    });
    let cols = Tensor::randn(0f32, 1.0, (576, n * 196), &dev)?;
    let wm = Tensor::randn(0f32, 1.0, (64, 576), &dev)?;
    t("matmul", || {
        let _ = wm.matmul(&cols)?;
        Ok(())
    });
    let x = Tensor::randn(0f32, 1.0, (1, n, 784), &dev)?;
    let ps: Vec<Var> = metasgd::model::Architecture::Conv4 {
        channels: 1,
        side: 28,
        hidden: 64,
        proto_start: false,
        shift_radius: 0,
    }
    .params()
    .iter()
    .map(|s| Var::from_tensor(&Tensor::randn(0f32, 0.05, s.shape.as_slice(), &dev).unwrap()).unwrap())
    .collect();
    let pt: Vec<Tensor> = ps.iter().map(|v| v.as_tensor().clone()).collect();
    let x1 = to_images(&x, 1, 28)?;
    t("L1 conv fwd+bwd", || {
        let _ = conv3x3(&x1, &pt[0], &pt[1])?.sum_all()?.backward()?;
        Ok(())
    });
    let y1 = Var::from_tensor(&conv3x3(&x1, &pt[0], &pt[1])?)?;
    t("L1 pool fwd+bwd", || {
        let _ = max_pool2(y1.as_tensor())?.relu()?.sum_all()?.backward()?;
        Ok(())
    });
    t("L1 pool fwd", || {
        let _ = max_pool2(y1.as_tensor())?.relu()?;
        Ok(())
    });
    t("L1 contig", || {
        let _ = y1.as_tensor().reshape(vec![1, 64, 128, 14, 2, 14, 2])?.max(6)?;
        Ok(())
    });
    t("body fwd", || {
        let _ = body(&pt[..8], &x, 1, 28)?;
        Ok(())
    });
    t("body fwd+bwd", || {
        let _ = body(&pt[..8], &x, 1, 28)?.sum_all()?.backward()?;
        Ok(())
    });
    Ok(())
}
