//! Adam (Kingma & Ba), the outer optimizer, with its state kept per
//! variable and saved by name (`adam.m.<name>`, `adam.v.<name>`).

use std::collections::HashMap;

use anyhow::Context;
use candle_core::{Result, Tensor, Var};

/// One variable and Adam's moments for it.
struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    /// This variable's factor on the learning rate.
    scale: f64,
}

/// Adam over named variables.
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub step: u64,
    slots: Vec<Slot>,
}

impl Adam {
    pub fn new(named: Vec<(String, Var)>, lr: f64) -> Result<Self> {
        Self::with_scales(named, lr, |_| 1.0)
    }

    /// Adam whose step for the variable `name` is `lr · scale(name)`.
    pub fn with_scales(named: Vec<(String, Var)>, lr: f64, scale: impl Fn(&str) -> f64) -> Result<Self> {
        let slots = named
            .into_iter()
            .map(|(name, var)| {
                let z = var.as_tensor().zeros_like()?;
                Ok(Slot {
                    scale: scale(&name),
                    name,
                    var,
                    m: z.clone(),
                    v: z,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            slots,
        })
    }

    /// The variables, in the order they were given.
    pub fn vars(&self) -> Vec<Var> {
        self.slots.iter().map(|s| s.var.clone()).collect()
    }

    /// The variables' current values with their names.
    pub fn values(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), s.var.as_tensor().clone()))
            .collect()
    }

    /// The moments, named `adam.m.<name>` and `adam.v.<name>`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .flat_map(|s| {
                [
                    (format!("adam.m.{}", s.name), s.m.clone()),
                    (format!("adam.v.{}", s.name), s.v.clone()),
                ]
            })
            .collect()
    }

    /// Restores values and moments saved by [`Adam::values`] and [`Adam::state`].
    pub fn restore(&mut self, map: &HashMap<String, Tensor>, step: u64) -> anyhow::Result<()> {
        let get = |k: String| map.get(&k).cloned().with_context(|| format!("checkpoint has no {k}"));
        for s in &mut self.slots {
            s.var.set(&get(s.name.clone())?)?;
            s.m = get(format!("adam.m.{}", s.name))?;
            s.v = get(format!("adam.v.{}", s.name))?;
        }
        self.step = step;
        Ok(())
    }

    /// One update with the given gradients (in the variables' order).
    pub fn update(&mut self, grads: &[Tensor]) -> Result<()> {
        if grads.len() != self.slots.len() {
            candle_core::bail!("{} gradients for {} variables", grads.len(), self.slots.len());
        }
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.beta2.powi(self.step as i32);
        for (s, g) in self.slots.iter_mut().zip(grads) {
            let g = g.detach();
            s.m = (s.m.affine(self.beta1, 0.0)? + g.affine(1.0 - self.beta1, 0.0)?)?.detach();
            s.v = (s.v.affine(self.beta2, 0.0)? + g.sqr()?.affine(1.0 - self.beta2, 0.0)?)?.detach();
            let mhat = s.m.affine(1.0 / bc1, 0.0)?;
            let denom = s.v.affine(1.0 / bc2, 0.0)?.sqrt()?.affine(1.0, self.eps)?;
            let upd = mhat.div(&denom)?.affine(self.lr * s.scale, 0.0)?;
            s.var.set(&s.var.as_tensor().sub(&upd)?.detach())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn first_step_moves_each_variable_by_the_learning_rate_against_its_gradient_sign() {
        let a = Var::new(&[1.0f32, 1.0], &Device::Cpu).unwrap();
        let b = Var::new(&[0.0f32], &Device::Cpu).unwrap();
        let mut adam = Adam::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())], 0.1).unwrap();
        let ga = Tensor::new(&[2.0f32, -3.0], &Device::Cpu).unwrap();
        let gb = Tensor::new(&[0.5f32], &Device::Cpu).unwrap();
        adam.update(&[ga, gb]).unwrap();
        let av = a.as_tensor().to_vec1::<f32>().unwrap();
        assert!((av[0] - 0.9).abs() < 1e-5 && (av[1] - 1.1).abs() < 1e-5, "{av:?}");
        assert!((b.as_tensor().to_vec1::<f32>().unwrap()[0] + 0.1).abs() < 1e-5);
        let names: Vec<String> = adam.state().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["adam.m.a", "adam.v.a", "adam.m.b", "adam.v.b"]);
    }

    #[test]
    fn a_scaled_variable_moves_by_its_share_of_the_learning_rate() {
        let a = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let b = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let named = vec![("a".into(), a.clone()), ("b".into(), b.clone())];
        let mut adam = Adam::with_scales(named, 0.1, |n| if n == "b" { 0.01 } else { 1.0 }).unwrap();
        let g = Tensor::new(&[1.0f32], &Device::Cpu).unwrap();
        adam.update(&[g.clone(), g]).unwrap();
        assert!((a.as_tensor().to_vec1::<f32>().unwrap()[0] - 0.9).abs() < 1e-6);
        assert!((b.as_tensor().to_vec1::<f32>().unwrap()[0] - 0.999).abs() < 1e-6);
    }
}
