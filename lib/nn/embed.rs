//! Embeddings of the conditioning: the time t in [0, 1] and the class label y (notes section 5,
//! classifier-free guidance, Lab 3).
//!
//! - Random Fourier features (the 2025 lab's `FourierEncoder`): learned frequencies w ~ N(0, 1)
//!   (dim/2 of them), phi(t) = sqrt(2) [sin(2 pi w t), cos(2 pi w t)]; the sqrt(2) gives each
//!   coordinate mean square 1 (sin^2 + cos^2 = 1 per pair).
//! - Sinusoidal features (transformer style, used by DiT): omega_k = 10000^(-k / half),
//!   phi(t) = [cos(S t omega_k), sin(S t omega_k)]. The time scale S is 1000 by default, so that
//!   t in [0, 1] spans the range of the 1000 discrete steps these frequencies were designed for;
//!   a smaller S gives features that vary slowly in t (MeanFlow, whose target holds the
//!   network's own derivative in t, needs that: see [`crate::train::meanflow`]).
//! - [`TimeMlp`]: Linear -> SiLU -> Linear on top of fixed features.
//! - [`LabelEmbedding`]: a table of num_classes + 1 learned rows, N(0, 1) like `nn.Embedding`;
//!   the last row is the null label of classifier-free guidance (notes eq. on the guided vector
//!   field u~ = (1 - w) u(x | null) + w u(x | y)), trained by dropping labels to null.
//!
//! Labels are (N,) integers (u32, or i64 as on the wire) in 0..=num_classes, num_classes being
//! the null label; `None` stands for all-null. Unconditional networks have num_classes = 0 and
//! accept only `None` or the null label 0.

use candle_core::{DType, Tensor};

use super::init::{linear, Init, Linear, Params};
use crate::Result;

/// Learned random Fourier features of t: (N, 1) -> (N, dim).
#[derive(Clone)]
pub struct FourierFeatures {
    /// w: (1, dim / 2), initialised N(0, 1).
    pub weights: Tensor,
}

impl FourierFeatures {
    /// The parameter `name.weights`; `dim` must be even.
    pub fn new(params: &Params, name: &str, dim: usize) -> Result<FourierFeatures> {
        if dim == 0 || !dim.is_multiple_of(2) {
            anyhow::bail!("Fourier feature dimension must be even and positive, got {dim}");
        }
        Ok(FourierFeatures {
            weights: params
                .pp(name)
                .var("weights", &[1, dim / 2], Init::Normal { std: 1.0 })?,
        })
    }

    /// t: (N, 1) -> sqrt(2) [sin(2 pi w t), cos(2 pi w t)]: (N, dim).
    pub fn forward(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        let arg = (t.broadcast_mul(&self.weights)? * (2.0 * std::f64::consts::PI))?;
        Tensor::cat(&[arg.sin()?, arg.cos()?], 1)? * std::f64::consts::SQRT_2
    }
}

/// Fixed harmonics of t (the Lab 2 MLP's features): t (N, 1) -> [t, sin(2 pi k t), cos(2 pi k t)]
/// for k = 1..K, (N, 1 + 2K).
pub fn harmonics(t: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    if k == 0 {
        return Ok(t.clone());
    }
    let f: Vec<f32> = (1..=k)
        .map(|j| 2.0 * std::f32::consts::PI * j as f32)
        .collect();
    let arg = t.broadcast_mul(&Tensor::from_vec(f, (1, k), t.device())?.to_dtype(t.dtype())?)?;
    Tensor::cat(&[t, &arg.sin()?, &arg.cos()?], 1)
}

/// The time scale S of [`sinusoidal`] features unless a config names another.
pub const DEFAULT_TIME_SCALE: f64 = 1000.0;

/// Fixed sinusoidal features of t: (N, 1) -> (N, dim), [cos(S t omega), sin(S t omega)], S the
/// time `scale`.
pub fn sinusoidal(t: &Tensor, dim: usize, scale: f64) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|k| scale as f32 * (-(10000f32.ln()) * k as f32 / half as f32).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?.to_dtype(t.dtype())?;
    let arg = t.broadcast_mul(&freqs)?;
    let mut parts = vec![arg.cos()?, arg.sin()?];
    if dim % 2 == 1 {
        parts.push(t.zeros_like()?);
    }
    Tensor::cat(&parts, 1)
}

/// Sinusoidal features followed by Linear -> SiLU -> Linear: t (N, 1) -> (N, dim).
#[derive(Clone)]
pub struct TimeMlp {
    features: usize,
    scale: f64,
    l1: Linear,
    l2: Linear,
}

impl TimeMlp {
    /// Layers `name.0`, `name.1` on `features` sinusoidal features of time scale `scale`.
    pub fn new(
        params: &Params,
        name: &str,
        features: usize,
        scale: f64,
        dim: usize,
    ) -> Result<TimeMlp> {
        let p = params.pp(name);
        Ok(TimeMlp {
            features,
            scale,
            l1: linear(&p, "0", features, dim)?,
            l2: linear(&p, "1", dim, dim)?,
        })
    }

    pub fn forward(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        let h = sinusoidal(t, self.features, self.scale)?;
        self.l2
            .forward(&self.l1.forward_act(&h, super::ops::Activated::Silu)?)
    }
}

/// A learned embedding of the labels 0..num_classes, plus the null label num_classes.
#[derive(Clone)]
pub struct LabelEmbedding {
    /// (num_classes + 1, dim), N(0, 1).
    pub table: Tensor,
    pub num_classes: usize,
}

impl LabelEmbedding {
    /// The parameter `name.weight` (PyTorch's `nn.Embedding` name).
    pub fn new(params: &Params, name: &str, num_classes: usize, dim: usize) -> Result<Self> {
        Ok(LabelEmbedding {
            table: params.pp(name).var(
                "weight",
                &[num_classes + 1, dim],
                Init::Normal { std: 1.0 },
            )?,
            num_classes,
        })
    }

    /// y: (N,) labels or `None` (all null) -> (N, dim).
    pub fn forward(&self, y: Option<&Tensor>, n: usize) -> candle_core::Result<Tensor> {
        let ids = label_ids(y, n, self.num_classes, self.table.device())?;
        self.table.index_select(&ids, 0)
    }
}

/// Validated labels as a u32 (N,) tensor on `device`: `y` (N,) or (N, 1), u32/i64/u8, values in
/// 0..=num_classes; `None` gives N null labels (= num_classes).
pub fn label_ids(
    y: Option<&Tensor>,
    n: usize,
    num_classes: usize,
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let Some(y) = y else {
        return Tensor::full(num_classes as u32, n, device);
    };
    let flat = y.flatten_all()?;
    if flat.dim(0)? != n || y.rank() > 2 {
        candle_core::bail!(
            "expected {n} labels (one per sample), got shape {:?}",
            y.dims()
        );
    }
    let values: Vec<i64> = match flat.dtype() {
        DType::U32 | DType::U8 | DType::I64 => flat.to_dtype(DType::I64)?.to_vec1()?,
        other => candle_core::bail!("labels must be integers, got {other:?}"),
    };
    if let Some(bad) = values.iter().find(|&&v| v < 0 || v > num_classes as i64) {
        if num_classes == 0 {
            candle_core::bail!(
                "label {bad} given to an unconditional model (it takes only the null label 0)"
            );
        }
        candle_core::bail!(
            "label {bad} out of range: classes are 0..{}, {num_classes} is the null label",
            num_classes - 1
        );
    }
    flat.to_dtype(DType::U32)?.to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fourier_features_have_the_lab_form() {
        let p = Params::new(2, &Device::Cpu);
        let f = FourierFeatures::new(&p, "t", 6).unwrap();
        let w: Vec<f32> = f.weights.flatten_all().unwrap().to_vec1().unwrap();
        let t = Tensor::new(&[[0.3f32], [0.8]], &Device::Cpu).unwrap();
        let phi: Vec<Vec<f32>> = f.forward(&t).unwrap().to_vec2().unwrap();
        for (r, tv) in [0.3f32, 0.8].into_iter().enumerate() {
            for k in 0..3 {
                let a = 2.0 * std::f32::consts::PI * w[k] * tv;
                assert!((phi[r][k] - 2f32.sqrt() * a.sin()).abs() < 1e-5);
                assert!((phi[r][3 + k] - 2f32.sqrt() * a.cos()).abs() < 1e-5);
            }
        }
        assert!(FourierFeatures::new(&p, "odd", 5).is_err());
    }

    #[test]
    fn sinusoidal_features_start_at_cos_one_sin_zero() {
        let t = Tensor::new(&[[0f32], [0.5]], &Device::Cpu).unwrap();
        let phi: Vec<Vec<f32>> = sinusoidal(&t, 8, DEFAULT_TIME_SCALE)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(phi[0], vec![1., 1., 1., 1., 0., 0., 0., 0.]);
        // k = 0: omega = 1000, so the first feature of t = 0.5 is cos(500).
        assert!((phi[1][0] - 500f32.cos()).abs() < 1e-3);
        assert_eq!(
            sinusoidal(&t, 7, DEFAULT_TIME_SCALE).unwrap().dims(),
            &[2, 7]
        );
    }

    #[test]
    fn labels_index_the_table_and_none_is_the_null_row() {
        let p = Params::new(0, &Device::Cpu);
        let e = LabelEmbedding::new(&p, "y", 3, 4).unwrap();
        let table: Vec<Vec<f32>> = e.table.to_vec2().unwrap();
        let y = Tensor::new(&[2u32, 0, 3], &Device::Cpu).unwrap();
        let got: Vec<Vec<f32>> = e.forward(Some(&y), 3).unwrap().to_vec2().unwrap();
        assert_eq!(
            got,
            vec![table[2].clone(), table[0].clone(), table[3].clone()]
        );
        let null: Vec<Vec<f32>> = e.forward(None, 2).unwrap().to_vec2().unwrap();
        assert_eq!(null, vec![table[3].clone(), table[3].clone()]);
        let wire = Tensor::new(&[1i64, 2, 3], &Device::Cpu).unwrap();
        assert_eq!(e.forward(Some(&wire), 3).unwrap().dims(), &[3, 4]);
        let err = e
            .forward(Some(&Tensor::new(&[4u32, 0, 0], &Device::Cpu).unwrap()), 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("label 4 out of range"), "{err}");
        assert!(e.forward(Some(&y), 2).is_err());
        let err = label_ids(Some(&y), 3, 0, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unconditional"), "{err}");
        let zeros = Tensor::zeros(3, DType::U32, &Device::Cpu).unwrap();
        assert!(label_ids(Some(&zeros), 3, 0, &Device::Cpu).is_ok());
    }
}
