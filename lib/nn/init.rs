//! Named parameters and their seeded initialisation, shared by every network.
//!
//! A network is built from a [`Params`]: a handle on a `candle_nn::VarMap` with a dotted name
//! prefix (`params.pp("layers").pp("0")` names `layers.0.weight`). Asking for a parameter either
//! - draws it from our own stream `rng::stream(seed, Purpose::Init, rng::name_hash(full_name))`
//!   (never candle's RNG, which cannot be seeded on CPU), so the same seed gives the same weights
//!   and adding a layer never moves the others' weights, since each is keyed by its own name; or
//! - when the `Params` was opened on a model file, takes the stored tensor of that name (with
//!   the same shape check), so one constructor serves training, resuming and loading.
//!
//! Initialisations ([`Init`]): PyTorch's `nn.Linear` default U(-1/sqrt(fan_in), 1/sqrt(fan_in))
//! for weights and biases ([`Init::fan_in_uniform`]); He/Kaiming uniform U(+-sqrt(6/fan_in)) and
//! normal N(0, 2/fan_in) (He et al. 2015, gain sqrt 2 for ReLU-like activations); constants.

use anyhow::{anyhow, bail};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use std::collections::HashMap;
use std::sync::Arc;

use super::ops::Activated;
use crate::io::model::ModelFile;
use crate::io::npy::shape_str;
use crate::rng::{self, Purpose};
use crate::Result;

/// The prefix of exponential-moving-average weights in a model file: `ema.<name>`.
pub const EMA_PREFIX: &str = "ema.";

/// The prefixes of a checkpoint's AdamW moments, `adam.m.<name>` and `adam.v.<name>`
/// (lib/train/optim.rs): tensors of a model file that are not weights.
pub const M_PREFIX: &str = "adam.m.";
pub const V_PREFIX: &str = "adam.v.";
const OPTIMISER_PREFIXES: [&str; 2] = [M_PREFIX, V_PREFIX];

/// How a parameter's initial values are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    Const(f32),
    /// U(-bound, bound)
    Uniform {
        bound: f32,
    },
    /// N(0, std^2)
    Normal {
        std: f32,
    },
}

impl Init {
    /// U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for linear and conv layers.
    pub fn fan_in_uniform(fan_in: usize) -> Init {
        Init::Uniform {
            bound: 1.0 / (fan_in.max(1) as f32).sqrt(),
        }
    }

    /// He/Kaiming uniform: U(-sqrt(6/fan_in), sqrt(6/fan_in)).
    pub fn kaiming_uniform(fan_in: usize) -> Init {
        Init::Uniform {
            bound: (6.0 / fan_in.max(1) as f32).sqrt(),
        }
    }

    /// He/Kaiming normal: N(0, 2/fan_in).
    pub fn kaiming_normal(fan_in: usize) -> Init {
        Init::Normal {
            std: (2.0 / fan_in.max(1) as f32).sqrt(),
        }
    }

    /// `n` initial values for the parameter `full_name`, from stream (seed, Init, hash(name)).
    pub fn draw(&self, seed: u64, full_name: &str, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n];
        let stream = || rng::stream(seed, Purpose::Init, rng::name_hash(full_name));
        match *self {
            Init::Zeros => {}
            Init::Ones => out.fill(1.0),
            Init::Const(c) => out.fill(c),
            Init::Uniform { bound } => rng::fill_uniform(&mut stream(), &mut out, -bound, bound),
            Init::Normal { std } => {
                rng::fill_normal(&mut stream(), &mut out);
                out.iter_mut().for_each(|v| *v *= std);
            }
        }
        out
    }
}

/// Which weights of a model file to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Weights {
    /// The EMA weights (`ema.<name>`) when the file has them, else the raw ones.
    #[default]
    Auto,
    /// The raw trained weights (`<name>`).
    Raw,
    /// The EMA weights; an error when the file has none.
    Ema,
}

/// Stored tensors a `Params` reads instead of initialising.
struct Stored {
    tensors: HashMap<String, Tensor>,
    /// Key prefix in `tensors` (`ema.` for EMA weights).
    prefix: String,
    /// The file, for error messages.
    name: String,
}

/// A handle on a network's named parameters (cheap to clone; clones share the variables).
#[derive(Clone)]
pub struct Params {
    vars: VarMap,
    prefix: String,
    seed: u64,
    device: Device,
    stored: Option<Arc<Stored>>,
    /// Hand out the weights as constants (see [`Params::frozen`]).
    frozen: bool,
}

impl Params {
    /// Fresh parameters, initialised from `seed`'s Init streams on first use.
    pub fn new(seed: u64, device: &Device) -> Params {
        Params {
            vars: VarMap::new(),
            prefix: String::new(),
            seed,
            device: device.clone(),
            stored: None,
            frozen: false,
        }
    }

    /// The same parameters handed out as constants, not variables: a network built on them
    /// records no graph for its weights, so a gradient with respect to its input (a likelihood's
    /// divergence, a classifier's guidance) costs no weight gradients, and sampling keeps no
    /// graph at all. For loaded models that are only evaluated, never trained.
    pub fn frozen(self) -> Params {
        Params {
            frozen: true,
            ..self
        }
    }

    /// The variable's value as this network uses it: the variable itself, or a constant sharing
    /// its storage when frozen.
    fn hand_out(&self, var: &Var) -> Tensor {
        if self.frozen {
            var.as_tensor().detach()
        } else {
            var.as_tensor().clone()
        }
    }

    /// Parameters read from `tensors[prefix + name]` (a loaded file named `name` in errors).
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        prefix: &str,
        name: &str,
        device: &Device,
    ) -> Params {
        Params {
            stored: Some(Arc::new(Stored {
                tensors,
                prefix: prefix.to_string(),
                name: name.to_string(),
            })),
            ..Params::new(0, device)
        }
    }

    /// Parameters read from a model file: its raw weights or its EMA weights.
    pub fn from_model(model: &ModelFile, weights: Weights, device: &Device) -> Result<Params> {
        let has_ema = model.tensors.keys().any(|k| k.starts_with(EMA_PREFIX));
        let prefix = match weights {
            Weights::Raw => "",
            Weights::Auto if !has_ema => "",
            Weights::Auto => EMA_PREFIX,
            Weights::Ema if has_ema => EMA_PREFIX,
            Weights::Ema => bail!("{}: the model file has no EMA weights", model.name),
        };
        let tensors = model
            .tensors
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.to_device(device)?)))
            .collect::<Result<_>>()?;
        Ok(Params::from_tensors(tensors, prefix, &model.name, device))
    }

    /// The same parameters under the sub-name `name` (`layers` then `0` gives `layers.0.`).
    pub fn pp(&self, name: impl AsRef<str>) -> Params {
        Params {
            prefix: self.full_name(name.as_ref()),
            ..self.clone()
        }
    }

    /// The dotted name of `name` under this prefix.
    pub fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The parameter `name` of `shape`: created with `init` (or read from the stored tensors)
    /// the first time, the same variable afterwards.
    pub fn var(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let full = self.full_name(name);
        let mut data = self.vars.data().lock().unwrap();
        if let Some(v) = data.get(&full) {
            if v.dims() != shape {
                bail!(
                    "parameter {full} asked for as {} but exists as {}",
                    shape_str(shape),
                    shape_str(v.dims())
                );
            }
            return Ok(self.hand_out(v));
        }
        let value = match &self.stored {
            Some(s) => {
                let key = format!("{}{full}", s.prefix);
                let t = s.tensors.get(&key).ok_or_else(|| {
                    anyhow!(
                        "{}: the model file has no tensor '{key}' (expected shape {})",
                        s.name,
                        shape_str(shape)
                    )
                })?;
                if t.dims() != shape {
                    bail!(
                        "{}: tensor '{key}' has shape {} but the model's config needs {}",
                        s.name,
                        shape_str(t.dims()),
                        shape_str(shape)
                    );
                }
                t.to_dtype(DType::F32)?.to_device(&self.device)?
            }
            None => {
                let n = shape.iter().product();
                Tensor::from_vec(init.draw(self.seed, &full, n), shape, &self.device)?
            }
        };
        let var = Var::from_tensor(&value)?;
        let tensor = self.hand_out(&var);
        data.insert(full, var);
        Ok(tensor)
    }

    /// Fails, naming them, when the stored tensors hold weights that the network built on these
    /// parameters never asked for: a misspelt name, or a config that describes another network
    /// than the tensors do (a `num_classes` left out beside a label embedding, say), must not
    /// load with part of the file ignored. Both the raw and the `ema.` copy of every weight are
    /// checked; a checkpoint's optimiser moments are not weights. Call it once the whole network
    /// is built. Fresh parameters always pass.
    pub fn ensure_all_used(&self) -> Result<()> {
        let Some(s) = &self.stored else {
            return Ok(());
        };
        let data = self.vars.data().lock().unwrap();
        let mut unused: Vec<&str> = s
            .tensors
            .keys()
            .filter(|k| !OPTIMISER_PREFIXES.iter().any(|p| k.starts_with(p)))
            .filter(|k| !data.contains_key(k.strip_prefix(EMA_PREFIX).unwrap_or(k)))
            .map(String::as_str)
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort_unstable();
        let n = unused.len();
        let mut list = unused
            .iter()
            .take(6)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        if n > 6 {
            list += &format!(" and {} more", n - 6);
        }
        bail!(
            "{}: {n} tensor{} that the model's config does not use: {list} (a misspelt name, or \
             a config that describes another network than its tensors)",
            s.name,
            if n == 1 { "" } else { "s" }
        )
    }

    /// The underlying variable store (shared by every `pp` of these parameters).
    pub fn varmap(&self) -> &VarMap {
        &self.vars
    }

    /// Every variable with its full name, sorted by name (a stable order for optimisers).
    pub fn vars(&self) -> Vec<(String, Var)> {
        let data = self.vars.data().lock().unwrap();
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Every parameter's current value, by name (sharing storage with the live variables: save
    /// or copy them before the next optimiser step).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_detached_tensor()))
            .collect()
    }

    /// Independent copies of every parameter's current value, by name.
    pub fn snapshot(&self) -> Result<Vec<(String, Tensor)>> {
        self.vars()
            .into_iter()
            .map(|(k, v)| Ok((k, v.as_tensor().copy()?.detach())))
            .collect()
    }

    /// The number of scalar parameters.
    pub fn count(&self) -> usize {
        self.vars().iter().map(|(_, v)| v.elem_count()).sum()
    }
}

/// A fully connected layer y = x W^T + b, W: (out, in), b: (out,) (PyTorch's layout).
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

/// A linear layer `name` with weights and bias drawn U(+-1/sqrt(in)) (PyTorch's default).
pub fn linear(params: &Params, name: &str, d_in: usize, d_out: usize) -> Result<Linear> {
    let p = params.pp(name);
    let init = Init::fan_in_uniform(d_in);
    Ok(Linear {
        weight: p.var("weight", &[d_out, d_in], init)?,
        bias: Some(p.var("bias", &[d_out], init)?),
    })
}

/// A linear layer `name` without bias.
pub fn linear_no_bias(params: &Params, name: &str, d_in: usize, d_out: usize) -> Result<Linear> {
    let p = params.pp(name);
    Ok(Linear {
        weight: p.var("weight", &[d_out, d_in], Init::fan_in_uniform(d_in))?,
        bias: None,
    })
}

impl Linear {
    /// x: (N, in) or (B, N, in) -> (N, out) or (B, N, out).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(y) = self.fused(x, super::ops::linear)? {
            return Ok(y);
        }
        let y = match *x.dims() {
            [b, n, k] => x
                .reshape((b * n, k))?
                .matmul(&self.weight.t()?)?
                .reshape((b, n, ()))?,
            _ => x.matmul(&self.weight.t()?)?,
        };
        match &self.bias {
            Some(b) => super::ops::add_bias(&y, b),
            None => Ok(y),
        }
    }

    /// act(x W^T + b), the layer and its activation as one fused op where one serves
    /// ([`super::ops::linear_act`]), else composed.
    pub fn forward_act(&self, x: &Tensor, act: Activated) -> candle_core::Result<Tensor> {
        if let Some(y) = self.fused(x, |rows, w, b| super::ops::linear_act(rows, w, b, act))? {
            return Ok(y);
        }
        let z = self.forward(x)?;
        match act {
            Activated::Silu => super::ops::silu(&z),
            Activated::Gelu => super::ops::gelu(&z),
        }
    }

    /// `op(rows, W, b)` on x flattened to rows (N, in), reshaped back; None where the layer
    /// has no bias or `op` does not apply.
    fn fused(
        &self,
        x: &Tensor,
        op: impl Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Option<Tensor>>,
    ) -> candle_core::Result<Option<Tensor>> {
        let (Some(b), [.., k]) = (&self.bias, x.dims()) else {
            return Ok(None);
        };
        let Some(y) = op(&x.reshape(((), *k))?, &self.weight, b)? else {
            return Ok(None);
        };
        let mut shape = x.dims().to_vec();
        *shape.last_mut().unwrap() = y.dim(1)?;
        Ok(Some(y.reshape(shape)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn same_seed_same_weights_other_seed_other_weights() {
        let a = linear(&Params::new(3, &Device::Cpu), "l", 4, 5).unwrap();
        let b = linear(&Params::new(3, &Device::Cpu), "l", 4, 5).unwrap();
        let c = linear(&Params::new(4, &Device::Cpu), "l", 4, 5).unwrap();
        assert_eq!(values(&a.weight), values(&b.weight));
        assert_ne!(values(&a.weight), values(&c.weight));
        assert_ne!(
            values(&a.weight)[..4],
            values(a.bias.as_ref().unwrap())[..4]
        );
        let bound = 0.5; // 1/sqrt(4)
        assert!(values(&a.weight).iter().all(|v| v.abs() <= bound));
    }

    #[test]
    fn weights_are_keyed_by_name_not_by_creation_order() {
        let p = Params::new(9, &Device::Cpu);
        let first = linear(&p.pp("net"), "b", 3, 3).unwrap();
        let q = Params::new(9, &Device::Cpu);
        linear(&q.pp("net"), "a", 3, 3).unwrap(); // an extra layer created before
        let second = linear(&q.pp("net"), "b", 3, 3).unwrap();
        assert_eq!(values(&first.weight), values(&second.weight));
        let names: Vec<String> = q.vars().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["net.a.bias", "net.a.weight", "net.b.bias", "net.b.weight"]
        );
    }

    #[test]
    fn init_distributions_have_their_moments() {
        let n = 40_000;
        let v = Init::kaiming_normal(8).draw(1, "w", n);
        let var = v.iter().map(|x| x * x).sum::<f32>() / n as f32;
        // Var estimate has relative standard error sqrt(2/n) ~ 0.7%.
        assert!((var - 0.25).abs() < 0.01, "var {var}");
        let u = Init::kaiming_uniform(6).draw(1, "w", n);
        assert!(u.iter().all(|x| x.abs() <= 1.0));
        let var = u.iter().map(|x| x * x).sum::<f32>() / n as f32;
        assert!((var - 1.0 / 3.0).abs() < 0.01, "var {var}");
        assert_eq!(Init::Const(2.5).draw(0, "c", 3), vec![2.5; 3]);
    }

    #[test]
    fn stored_tensors_replace_initialisation_and_are_checked() {
        let w = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
        let map: HashMap<String, Tensor> = [("ema.l.weight".to_string(), w)].into();
        let p = Params::from_tensors(map, EMA_PREFIX, "m.safetensors", &Device::Cpu);
        let l = linear_no_bias(&p, "l", 2, 2).unwrap();
        assert_eq!(values(&l.weight), vec![1., 2., 3., 4.]);
        let err = linear(&p, "k", 2, 2).unwrap_err().to_string();
        assert!(
            err.contains("m.safetensors") && err.contains("ema.k.weight"),
            "{err}"
        );
        let err = linear_no_bias(&p, "l", 3, 2).unwrap_err().to_string();
        assert!(err.contains("(2, 3)"), "{err}");
    }

    #[test]
    fn tensors_the_network_does_not_ask_for_are_refused_by_name() {
        let w = || Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
        let file = |names: &[&str]| -> HashMap<String, Tensor> {
            names.iter().map(|n| (n.to_string(), w())).collect()
        };
        // Raw, EMA and optimiser copies of the one weight that is used: accepted.
        let ok = file(&[
            "l.weight",
            "ema.l.weight",
            "adam.m.l.weight",
            "adam.v.l.weight",
        ]);
        for prefix in ["", EMA_PREFIX] {
            let p = Params::from_tensors(ok.clone(), prefix, "m.safetensors", &Device::Cpu);
            linear_no_bias(&p, "l", 2, 2).unwrap();
            p.ensure_all_used().unwrap();
        }
        // A misspelt raw weight is refused even when the EMA weights are the ones loaded.
        let typo = file(&["l.weight", "ema.l.weight", "l.wieght", "ema.extra"]);
        let p = Params::from_tensors(typo, EMA_PREFIX, "m.safetensors", &Device::Cpu);
        linear_no_bias(&p, "l", 2, 2).unwrap();
        let err = p.ensure_all_used().unwrap_err().to_string();
        assert_eq!(
            err,
            "m.safetensors: 2 tensors that the model's config does not use: ema.extra, \
             l.wieght (a misspelt name, or a config that describes another network than its \
             tensors)"
        );
        // Fresh parameters have nothing stored.
        Params::new(1, &Device::Cpu).ensure_all_used().unwrap();
    }

    #[test]
    fn linear_computes_x_wt_plus_b() {
        let p = Params::new(0, &Device::Cpu);
        let l = linear(&p, "l", 2, 3).unwrap();
        let x = Tensor::new(&[[1f32, -2.]], &Device::Cpu).unwrap();
        let y = values(&l.forward(&x).unwrap());
        let (w, b) = (values(&l.weight), values(l.bias.as_ref().unwrap()));
        for o in 0..3 {
            let want = w[2 * o] - 2.0 * w[2 * o + 1] + b[o];
            assert!((y[o] - want).abs() < 1e-6);
        }
    }
}
