//! An exponential moving average of the weights, the usual way to sample from a trained
//! diffusion or flow model (Song & Ermon 2020; Karras et al. 2022).
//!
//! After every optimiser step: ema <- decay * ema + (1 - decay) * theta, starting from the
//! initial weights. A decay of 0.999 averages over roughly the last 1000 steps. The average is
//! saved beside the raw weights as `ema.<name>` (see [`crate::nn::init::EMA_PREFIX`]); loaders
//! use it by default ([`crate::nn::Weights::Auto`]).

use anyhow::anyhow;
use candle_core::Tensor;
use std::collections::HashMap;

use crate::nn::init::EMA_PREFIX;
use crate::nn::Params;
use crate::Result;

/// The moving average of every parameter, in name order.
pub struct Ema {
    pub decay: f64,
    shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// An average that starts at the current weights.
    pub fn new(params: &Params, decay: f64) -> Result<Ema> {
        Ok(Ema {
            decay,
            shadow: params.snapshot()?,
        })
    }

    /// Folds the current weights into the average.
    pub fn update(&mut self, params: &Params) -> candle_core::Result<()> {
        let d = self.decay;
        for ((_, avg), (_, var)) in self.shadow.iter_mut().zip(params.vars()) {
            let theta = var.as_tensor().detach();
            *avg = ((&*avg * d)? + (theta * (1.0 - d))?)?;
        }
        Ok(())
    }

    /// The averages, named `ema.<param>`.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.shadow
            .iter()
            .map(|(n, t)| (format!("{EMA_PREFIX}{n}"), t.clone()))
            .collect()
    }

    /// Restores the averages from `tensors` (a checkpoint named `name`).
    pub fn restore(&mut self, tensors: &HashMap<String, Tensor>, name: &str) -> Result<()> {
        for (n, avg) in &mut self.shadow {
            let key = format!("{EMA_PREFIX}{n}");
            let t = tensors
                .get(&key)
                .ok_or_else(|| anyhow!("{name}: the checkpoint has no tensor '{key}'"))?;
            *avg = t.to_device(avg.device())?.detach();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Init;
    use candle_core::Device;

    #[test]
    fn average_follows_the_recursion() {
        let p = Params::new(0, &Device::Cpu);
        let w = p.var("w", &[2], Init::Const(1.0)).unwrap();
        let mut ema = Ema::new(&p, 0.9).unwrap();
        p.vars()[0]
            .1
            .set(&Tensor::new(&[3f32, -1.0], &Device::Cpu).unwrap())
            .unwrap();
        ema.update(&p).unwrap();
        ema.update(&p).unwrap();
        // 1 -> 0.9 + 0.3 = 1.2 -> 1.08 + 0.3 = 1.38; 1 -> 0.8 -> 0.62
        let got: Vec<f32> = ema.tensors()[0].1.to_vec1().unwrap();
        assert!(
            (got[0] - 1.38).abs() < 1e-6 && (got[1] - 0.62).abs() < 1e-6,
            "{got:?}"
        );
        assert_eq!(ema.tensors()[0].0, "ema.w");
        assert_eq!(w.to_vec1::<f32>().unwrap(), vec![3.0, -1.0]);
    }
}
