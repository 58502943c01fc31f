//! AdamW with a learning-rate schedule, whose state can be saved and restored exactly.
//!
//! Adam (Kingma & Ba 2015) with decoupled weight decay (Loshchilov & Hutter 2019), as PyTorch's
//! `torch.optim.AdamW`. At step k = 1, 2, ... with gradient g and learning rate lr_k:
//!
//!   m <- beta1 m + (1 - beta1) g,          v <- beta2 v + (1 - beta2) g^2
//!   m^ = m / (1 - beta1^k),                v^ = v / (1 - beta2^k)
//!   theta <- theta (1 - lr_k wd) - lr_k m^ / (sqrt(v^) + eps)
//!
//! On the CPU the moments and the parameter are updated in place (three passes, no new buffer).
//! `wd = 0` is plain Adam. Parameters without a gradient in a step are left alone (their
//! moments too), as PyTorch does.
//!
//! **Schedule** ([`Schedule::lr_at`]): linear warm-up from lr / warmup to lr over the first
//! `warmup` steps (step s, counted from 0, uses lr (s + 1) / warmup), then either constant or a
//! cosine decay from lr to 0 at the last step: lr (1 + cos(pi (s - warmup) / (total - warmup))) / 2.
//!
//! **State**: the step count and, per parameter, the moments m and v. [`AdamW::state_tensors`]
//! names them `adam.m.<param>` and `adam.v.<param>`; with the step count (a JSON number in the
//! checkpoint's config) they restore the optimiser bit for bit.

use anyhow::{anyhow, bail};
use candle_core::{backprop::GradStore, CpuStorage, InplaceOp2, InplaceOp3, Layout};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::io::npy::shape_str;
use crate::nn::ops::{par, slice, slice_mut};
use crate::nn::Params;
use crate::Result;

/// Tensor name prefixes of the moments in a checkpoint (defined beside the EMA's, so that a
/// model file's loader knows them as not weights).
pub use crate::nn::init::{M_PREFIX, V_PREFIX};

/// How the learning rate changes after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    Constant,
    Cosine,
}

/// The learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub lr: f64,
    /// Steps of linear warm-up (0: none).
    pub warmup: u64,
    pub decay: Decay,
    /// The total number of steps (where a cosine decay reaches 0).
    pub total: u64,
}

impl Schedule {
    /// The learning rate of step `step` (counted from 0).
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        match self.decay {
            Decay::Constant => self.lr,
            Decay::Cosine => {
                let span = self.total.saturating_sub(self.warmup).max(1) as f64;
                let frac = ((step - self.warmup) as f64 / span).min(1.0);
                0.5 * self.lr * (1.0 + (std::f64::consts::PI * frac).cos())
            }
        }
    }
}

/// AdamW's constants and schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub schedule: Schedule,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (0: Adam).
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// PyTorch's defaults (betas 0.9, 0.999, eps 1e-8) with the given schedule and decay.
    pub fn new(schedule: Schedule, weight_decay: f64) -> Self {
        AdamWConfig {
            schedule,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }
}

/// One parameter with its moments.
struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
}

/// The AdamW optimiser over a network's parameters.
pub struct AdamW {
    pub config: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl AdamW {
    /// An optimiser over every parameter in `params` (in name order), moments zero, step 0.
    pub fn new(params: &Params, config: AdamWConfig) -> Result<AdamW> {
        let slots = params
            .vars()
            .into_iter()
            .map(|(name, var)| {
                // Separate buffers: the CPU step updates them in place.
                let m = var.as_tensor().zeros_like()?.detach();
                let v = var.as_tensor().zeros_like()?.detach();
                Ok(Slot { name, var, m, v })
            })
            .collect::<Result<_>>()?;
        Ok(AdamW {
            config,
            slots,
            step: 0,
        })
    }

    /// The number of steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The learning rate the next step will use.
    pub fn next_lr(&self) -> f64 {
        self.config.schedule.lr_at(self.step)
    }

    /// Takes one step with the gradients of `grads`; returns the learning rate used.
    pub fn step(&mut self, grads: &GradStore) -> candle_core::Result<f64> {
        let lr = self.next_lr();
        self.step += 1;
        let c = &self.config;
        let k = self.step.min(i32::MAX as u64) as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(k), 1.0 - c.beta2.powi(k));
        let h = Update {
            step_size: (lr / bc1) as f32,
            inv_bc2: (1.0 / bc2) as f32,
            eps: c.eps as f32,
            decay: (1.0 - lr * c.weight_decay) as f32,
        };
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            if crate::nn::ops::fused_for(slot.var.as_tensor()) {
                let g = g.contiguous()?;
                slot.m.inplace_op2(&g, &Moment::new(c.beta1, false))?;
                slot.v.inplace_op2(&g, &Moment::new(c.beta2, true))?;
                slot.var.inplace_op3(&slot.m, &slot.v, &h)?;
                continue;
            }
            let theta = slot.var.as_tensor().detach();
            let m = ((&slot.m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&slot.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((&v * (1.0 / bc2))?.sqrt()? + c.eps)?;
            let update = (&m * (lr / bc1))?.div(&denom)?;
            let decayed = if c.weight_decay != 0.0 {
                (&theta * (1.0 - lr * c.weight_decay))?
            } else {
                theta
            };
            slot.var.set(&(decayed - update)?)?;
            slot.m = m;
            slot.v = v;
        }
        Ok(lr)
    }

    /// The moments, named `adam.m.<param>` and `adam.v.<param>`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .flat_map(|s| {
                [
                    (format!("{M_PREFIX}{}", s.name), s.m.clone()),
                    (format!("{V_PREFIX}{}", s.name), s.v.clone()),
                ]
            })
            .collect()
    }

    /// Restores the moments from `tensors` (a checkpoint named `name`) and the step count.
    pub fn restore(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        step: u64,
        name: &str,
    ) -> Result<()> {
        for slot in &mut self.slots {
            for (prefix, target) in [(M_PREFIX, &mut slot.m), (V_PREFIX, &mut slot.v)] {
                let key = format!("{prefix}{}", slot.name);
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| anyhow!("{name}: the checkpoint has no tensor '{key}'"))?;
                if t.dims() != target.dims() {
                    bail!(
                        "{name}: '{key}' has shape {}, the parameter {}",
                        shape_str(t.dims()),
                        shape_str(target.dims())
                    );
                }
                // A copy of its own: the CPU step updates it in place.
                *target = t.to_device(target.device())?.copy()?.detach();
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The constants of one parameter update, in f32 as the tensor path computes them.
struct Update {
    /// lr / (1 - beta1^k).
    step_size: f32,
    /// 1 / (1 - beta2^k).
    inv_bc2: f32,
    eps: f32,
    /// 1 - lr wd.
    decay: f32,
}

/// Values per parallel chunk of the in-place updates.
const UPDATE_CHUNK: usize = 1 << 15;

/// A moment updated in place from the gradient g: m <- beta m + (1 - beta) g, or with
/// `square`, v <- beta v + (1 - beta) g^2. One pass and no new buffer, where the tensor path
/// allocates one per operation.
#[derive(Clone, Copy)]
struct Moment {
    beta: f32,
    /// 1 - beta, rounded once from f64 as the tensor path does.
    rest: f32,
    square: bool,
}

impl Moment {
    fn new(beta: f64, square: bool) -> Moment {
        Moment {
            beta: beta as f32,
            rest: (1.0 - beta) as f32,
            square,
        }
    }
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "flowpipe-adamw-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (m, g) = (slice_mut(s1, l1, "adamw")?, slice(s2, l2, "adamw")?);
        if m.len() != g.len() {
            candle_core::bail!("adamw: {} moments for {} gradients", m.len(), g.len());
        }
        let Moment { beta, rest, square } = *self;
        par::chunks_mut(m, UPDATE_CHUNK, |i, m| {
            for (m, &g) in m.iter_mut().zip(par::chunk(g, UPDATE_CHUNK, i)) {
                let g = if square { g * g } else { g };
                *m = *m * beta + g * rest;
            }
        });
        Ok(())
    }
}

/// The parameter updated in place from its moments:
/// theta <- theta (1 - lr wd) - (lr / bc1) m / (sqrt(v / bc2) + eps).
impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "flowpipe-adamw-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let theta = slice_mut(s1, l1, "adamw")?;
        let (m, v) = (slice(s2, l2, "adamw")?, slice(s3, l3, "adamw")?);
        if theta.len() != m.len() || theta.len() != v.len() {
            candle_core::bail!(
                "adamw: {} values, {} and {} moments",
                theta.len(),
                m.len(),
                v.len()
            );
        }
        par::chunks_mut(theta, UPDATE_CHUNK, |i, theta| {
            let (m, v) = (
                par::chunk(m, UPDATE_CHUNK, i),
                par::chunk(v, UPDATE_CHUNK, i),
            );
            for ((t, &m), &v) in theta.iter_mut().zip(m).zip(v) {
                let update = (m * self.step_size) / ((v * self.inv_bc2).sqrt() + self.eps);
                *t = *t * self.decay - update;
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Init;
    use candle_core::Device;

    fn constant(lr: f64, total: u64) -> Schedule {
        Schedule {
            lr,
            warmup: 0,
            decay: Decay::Constant,
            total,
        }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn one_step_equals_the_hand_computed_update() {
        let p = Params::new(0, &Device::Cpu);
        let w = p.var("w", &[3], Init::Const(1.0)).unwrap();
        let config = AdamWConfig::new(constant(0.1, 10), 0.5);
        let mut opt = AdamW::new(&p, config).unwrap();
        // loss = sum(c * w) -> gradient c.
        let c = Tensor::new(&[2f32, -0.5, 0.0], &Device::Cpu).unwrap();
        let loss = (&w * &c).unwrap().sum_all().unwrap();
        assert_eq!(opt.step(&loss.backward().unwrap()).unwrap(), 0.1);
        // Step 1: m^ = g, v^ = g^2, so the update is lr g / (|g| + eps) = lr sign(g) for g != 0;
        // decay multiplies w by 1 - lr wd = 0.95 first.
        let want = [0.95 - 0.1, 0.95 + 0.1, 0.95];
        for (a, b) in values(&w).iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        // Step 2 with gradient 2g: m = 0.9 (0.1 g) + 0.1 (2g) = 0.29 g, m^ = 0.29 g / 0.19;
        // v = 0.999 (0.001 g^2) + 0.001 (4 g^2) = 0.004999 g^2, v^ = v / (1 - 0.999^2).
        let loss = (&w * (&c * 2.0).unwrap()).unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        let ratio = (0.29 / 0.19) / (0.004999f64 / (1.0 - 0.999f64.powi(2))).sqrt();
        for (i, g) in [2.0f64, -0.5, 0.0].into_iter().enumerate() {
            let prev = want[i] as f64;
            let expect = prev * 0.95 - 0.1 * ratio * g.signum() * (g != 0.0) as u8 as f64;
            assert!((values(&w)[i] as f64 - expect).abs() < 1e-5);
        }
        assert_eq!(opt.step_count(), 2);
    }

    #[test]
    fn saved_state_restores_the_same_trajectory() {
        let run = |split: Option<usize>| -> Vec<f32> {
            let p = Params::new(1, &Device::Cpu);
            let w = p.var("w", &[4], Init::Normal { std: 1.0 }).unwrap();
            let cfg = AdamWConfig::new(constant(0.05, 6), 0.01);
            let mut opt = AdamW::new(&p, cfg.clone()).unwrap();
            for k in 0..6 {
                if split == Some(k) {
                    // Rebuild everything from saved tensors, as a resumed run does.
                    let state: HashMap<String, Tensor> = opt
                        .state_tensors()
                        .into_iter()
                        .map(|(n, t)| (n, t.copy().unwrap()))
                        .collect();
                    let weights = p.snapshot().unwrap().into_iter().collect();
                    let q = Params::from_tensors(weights, "", "ckpt", &Device::Cpu);
                    let w2 = q.var("w", &[4], Init::Zeros).unwrap();
                    let mut opt2 = AdamW::new(&q, cfg.clone()).unwrap();
                    opt2.restore(&state, opt.step_count(), "ckpt").unwrap();
                    for _ in k..6 {
                        let loss = w2.sqr().unwrap().sum_all().unwrap().sin().unwrap();
                        opt2.step(&loss.backward().unwrap()).unwrap();
                    }
                    return values(&w2);
                }
                let loss = w.sqr().unwrap().sum_all().unwrap().sin().unwrap();
                opt.step(&loss.backward().unwrap()).unwrap();
            }
            values(&w)
        };
        let whole = run(None);
        for split in [0, 3, 5] {
            assert_eq!(run(Some(split)), whole, "resumed after {split} steps");
        }
    }

    #[test]
    fn restore_names_missing_state() {
        let p = Params::new(0, &Device::Cpu);
        p.var("w", &[2], Init::Zeros).unwrap();
        let mut opt = AdamW::new(&p, AdamWConfig::new(constant(0.1, 1), 0.0)).unwrap();
        let err = opt
            .restore(&HashMap::new(), 3, "c.safetensors")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "c.safetensors: the checkpoint has no tensor 'adam.m.w'"
        );
    }

    #[test]
    fn warmup_then_cosine_decay() {
        let s = Schedule {
            lr: 1.0,
            warmup: 4,
            decay: Decay::Cosine,
            total: 14,
        };
        assert_eq!(s.lr_at(0), 0.25);
        assert_eq!(s.lr_at(3), 1.0);
        assert_eq!(s.lr_at(4), 1.0);
        assert!((s.lr_at(9) - 0.5).abs() < 1e-12);
        assert!(s.lr_at(13) < 0.03 && s.lr_at(13) > 0.0);
        let c = Schedule {
            decay: Decay::Constant,
            ..s
        };
        assert_eq!(c.lr_at(13), 1.0);
    }
}
