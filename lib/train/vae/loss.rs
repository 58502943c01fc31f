//! The loss of `fit-vae` (notes section 6, Algorithm 6).
//!
//! Step s draws a minibatch x_1..x_B uniformly with replacement (stream (seed, Shuffle, s)) and
//! the reparametrisation noise eps (stream (seed, Noise, s)), and minimises the negative ELBO of
//! [`crate::nn::vae`] averaged over the batch,
//!
//!   L_s = mean_b [ -log p_theta(x_b | mu_b + sigma_b eps_b) + beta_s KL(q(z | x_b) || N(0, I)) ],
//!
//! with the KL warm-up beta_s = beta min(1, (s + 1) / kl_warmup) (Bowman et al. 2016; Sonderby
//! et al. 2016), which lets the decoder learn to use z before the KL term pulls the posterior to
//! the prior. The loss is in nats per image. Every draw is keyed by the step, so a resumed run
//! ends bit-identical to an uninterrupted one.

use candle_core::{Device, Tensor};
use rand::Rng;

use crate::nn::vae::Vae;
use crate::rng::{self, Purpose};
use crate::train::losses::Dataset;

/// The negative ELBO with KL warm-up over a data set of images.
pub struct ElboLoss {
    pub data: Dataset,
    pub batch: usize,
    pub seed: u64,
    pub beta: f64,
    pub kl_warmup: u64,
    pub device: Device,
}

impl ElboLoss {
    /// beta_s = beta min(1, (s + 1) / kl_warmup); beta when there is no warm-up.
    pub fn beta_at(&self, step: u64) -> f64 {
        match self.kl_warmup {
            0 => self.beta,
            w => self.beta * ((step + 1) as f64 / w as f64).min(1.0),
        }
    }

    /// The loss of step `step` (nats per image), see the module docs.
    pub fn loss(&self, vae: &Vae, step: u64) -> candle_core::Result<Tensor> {
        let b = self.batch;
        let mut shuffle = rng::stream(self.seed, Purpose::Shuffle, step);
        let idx: Vec<usize> = (0..b)
            .map(|_| shuffle.random_range(0..self.data.n as u64) as usize)
            .collect();
        let mut shape = vec![b];
        shape.extend_from_slice(&self.data.shape);
        let x = Tensor::from_vec(self.data.gather(&idx), shape.as_slice(), &self.device)?;
        let post = vae.encode(&x)?;
        let [k, h, w] = vae.config.latent_shape();
        let mut eps = vec![0f32; b * k * h * w];
        rng::fill_normal(&mut rng::stream(self.seed, Purpose::Noise, step), &mut eps);
        let eps = Tensor::from_vec(eps, (b, k, h, w), &self.device)?;
        let recon = vae.decode(&post.sample(&eps)?)?;
        let nll = vae.nll(&x, &recon)?.mean_all()?;
        let kl = post.kl()?.mean_all()?;
        nll + (kl * self.beta_at(step))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::npy;

    #[test]
    fn kl_weight_warms_up_linearly() {
        let arr = npy::from_vec(&[1, 1, 2, 2], vec![0.0; 4]).unwrap();
        let mut loss = ElboLoss {
            data: Dataset::new(arr, "x").unwrap(),
            batch: 1,
            seed: 0,
            beta: 0.5,
            kl_warmup: 4,
            device: Device::Cpu,
        };
        let b: Vec<f64> = (0..6).map(|s| loss.beta_at(s)).collect();
        assert_eq!(b, [0.125, 0.25, 0.375, 0.5, 0.5, 0.5]);
        loss.kl_warmup = 0;
        assert_eq!(loss.beta_at(0), 0.5);
    }
}
