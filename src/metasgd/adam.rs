//! Adam (Kingma & Ba) over a list of candle variables: the outer optimizer.

use candle_core::{Result, Tensor, Var};

/// Adam state; `m`, `v` and `step` are saved in checkpoints.
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub step: u64,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

impl Adam {
    pub fn new(vars: &[Var], lr: f64) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        Ok(Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            m: vars.iter().map(zeros).collect::<Result<_>>()?,
            v: vars.iter().map(zeros).collect::<Result<_>>()?,
        })
    }

    /// One update with the given gradients (same order as the variables).
    pub fn update(&mut self, vars: &[Var], grads: &[Tensor]) -> Result<()> {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.beta2.powi(self.step as i32);
        for (i, (var, g)) in vars.iter().zip(grads).enumerate() {
            let g = g.detach();
            self.m[i] = ((self.m[i].affine(self.beta1, 0.0)? + g.affine(1.0 - self.beta1, 0.0)?)?).detach();
            self.v[i] = ((self.v[i].affine(self.beta2, 0.0)? + g.sqr()?.affine(1.0 - self.beta2, 0.0)?)?).detach();
            let mhat = self.m[i].affine(1.0 / bc1, 0.0)?;
            let denom = self.v[i].affine(1.0 / bc2, 0.0)?.sqrt()?.affine(1.0, self.eps)?;
            let upd = mhat.div(&denom)?.affine(self.lr, 0.0)?;
            var.set(&var.as_tensor().sub(&upd)?.detach())?;
        }
        Ok(())
    }
}
