//! The regression losses of flow matching and score matching, and the minibatches they draw.
//!
//! Both regress a network onto a conditional target that is cheap to sample (notes section 3.2
//! and 4.1): with z ~ p_data, eps ~ N(0, I), t ~ U[0, 1) and x_t = alpha_t z + beta_t eps,
//! - conditional flow matching (notes eq. 26 and 31, Algorithm 3):
//!   L = E || u_theta(x_t, t) - (d_alpha_t z + d_beta_t eps) ||^2;
//! - denoising score matching (notes Theorem 22):
//!   L = E || s_theta(x_t, t) + eps / beta_t ||^2,
//!   or in the noise-prediction (DDPM) form, the same loss weighted by beta_t^2 and
//!   reparametrised as s = -eps_theta / beta: L = E || eps_theta(x_t, t) - eps ||^2.
//!
//! For the linear interpolant from a source data set: x_t = (1 - t) x_0 + t z with x_0 and z
//! drawn independently, target z - x_0; with the stochastic interpolant's noise term
//! ([`crate::paths::LinearInterpolant::sample_noisy_at`], `--interpolant-noise a`),
//! x_t = (1 - t) x_0 + t z + gamma_t xi and target z - x_0 + gamma'_t xi, xi ~ N(0, I) from
//! (seed, Noise, s), the stream a data source leaves unused. `||.||^2` sums over a sample's coordinates and the
//! expectation is the mean over the batch, as in the notes. The score target divides by beta
//! (clamped, see [`crate::paths::MIN_DIVISOR`]): its variance grows without bound as t -> 1,
//! which is why the noise form trains more steadily.
//!
//! **Draws of step s** come from streams keyed by the step, so a resumed run draws exactly what
//! an uninterrupted one would, and nothing but the step count needs saving:
//! data (and source) indices, uniform with replacement, from (seed, Shuffle, s); times from
//! (seed, Time, s); noise from (seed, Noise, s).
//!
//! **Class labels** (classifier-free guidance, notes section 5.1 and Algorithm 5): a labelled
//! data set gives each sample its label y (the rows drawn for the batch, no extra draw), and
//! each label is replaced by the null label ∅ = num_classes with probability eta, from one
//! uniform per batch row of (seed, LabelDropout, s). The network then learns u(x | y) and
//! u(x | ∅) at once: L = E || u_theta(x_t, t, y~) - u_t(x_t | z) ||^2.
//!
//! **Coupling** ([`super::coupling`]): with `Coupling::Ot` the batch's x_0 rows are reordered to
//! pair with its data rows by minibatch optimal transport before x_t and the target are formed
//! (fit-velocity `--coupling ot`); labels stay with their data rows. Sinkhorn's draws, for
//! large batches, come from (seed, Coupling, s).

use anyhow::bail;
use candle_core::{Device, Tensor};
use ndarray::ArrayD;
use rand::Rng;

use super::coupling::Coupling;
use crate::io::npy::{expect_finite, shape_str};
use crate::nn::FieldNet;
use crate::paths::{LinearInterpolant, Param, Path, TimeDensity};
use crate::rng::{self, Purpose};
use crate::Result;

/// A training set held in host memory: n samples of `shape`, row-major.
pub struct Dataset {
    values: Vec<f32>,
    pub n: usize,
    /// The shape of one sample, e.g. [2].
    pub shape: Vec<usize>,
    /// The file, for messages.
    pub name: String,
}

impl Dataset {
    /// A data set of (N, ...) samples from an array read from `name`; needs N >= 1 and finite
    /// values.
    pub fn new(arr: ArrayD<f32>, name: &str) -> Result<Dataset> {
        if arr.ndim() < 2 || arr.shape()[0] == 0 || arr.shape().contains(&0) {
            bail!(
                "expected a non-empty data set (N, ...), got {} in {name}",
                shape_str(arr.shape())
            );
        }
        expect_finite(&arr, name)?;
        let shape = arr.shape()[1..].to_vec();
        let n = arr.shape()[0];
        let values = arr.as_standard_layout().iter().copied().collect();
        Ok(Dataset {
            values,
            n,
            shape,
            name: name.to_string(),
        })
    }

    /// Values per sample.
    pub fn dim(&self) -> usize {
        self.shape.iter().product()
    }

    /// The samples at `idx`, row-major (idx.len() * dim values).
    pub fn gather(&self, idx: &[usize]) -> Vec<f32> {
        let d = self.dim();
        let mut out = Vec::with_capacity(idx.len() * d);
        for &i in idx {
            out.extend_from_slice(&self.values[i * d..(i + 1) * d]);
        }
        out
    }

    /// A 64-bit fingerprint of the shape and values (hex), to notice a resumed run on other data.
    pub fn fingerprint(&self) -> String {
        let mut h = rng::mix64(self.n as u64);
        for &d in &self.shape {
            h = rng::mix64(h ^ d as u64);
        }
        for v in &self.values {
            h = rng::mix64(h ^ v.to_bits() as u64);
        }
        format!("{h:016x}")
    }
}

/// Class labels of a data set, one per sample.
pub struct Labels {
    /// u32 in 0..num_classes.
    pub values: Vec<u32>,
    /// Classes 0..num_classes; the null label is num_classes.
    pub num_classes: usize,
    /// The file, for messages.
    pub name: String,
}

impl Labels {
    /// Labels from an (N,) int64 array read from `name`, checked against `n` samples of the data
    /// set `data` and `num_classes` (default: the largest label + 1).
    pub fn new(
        arr: &ndarray::ArrayD<i64>,
        name: &str,
        n: usize,
        data: &str,
        num_classes: Option<usize>,
    ) -> Result<Labels> {
        crate::io::npy::expect_shape(arr.shape(), "N", "labels", name)?;
        if arr.len() != n {
            bail!(
                "expected {n} labels, one per sample of {data}, got {} in {name}",
                arr.len()
            );
        }
        let max = arr.iter().copied().max().unwrap_or(0);
        if let Some(bad) = arr.iter().find(|&&y| y < 0) {
            bail!("labels must be >= 0, found {bad} in {name}");
        }
        super::check_num_classes("--num-classes", num_classes)?;
        super::check_labels(arr.iter(), name)?;
        let num_classes = match num_classes {
            Some(k) if max >= k as i64 => bail!(
                "label {max} in {name} is out of range for --num-classes {k} (labels 0..{})",
                k.saturating_sub(1)
            ),
            Some(k) => k,
            None => max as usize + 1,
        };
        Ok(Labels {
            values: arr.iter().map(|&y| y as u32).collect(),
            num_classes,
            name: name.to_string(),
        })
    }

    /// A 64-bit fingerprint of the labels (hex), to notice a resumed run on other labels.
    pub fn fingerprint(&self) -> String {
        let mut h = rng::mix64(self.num_classes as u64);
        for &y in &self.values {
            h = rng::mix64(h ^ y as u64);
        }
        format!("{h:016x}")
    }
}

/// Where x_0 comes from: N(0, I), or a data set (for the linear interpolant).
pub enum Source {
    Gaussian,
    Data(Dataset),
}

/// One minibatch: the network's inputs and its regression target.
pub struct Batch {
    /// x_t: (B, ...shape)
    pub x: Tensor,
    /// t: (B, 1)
    pub t: Tensor,
    /// (B, ...shape)
    pub target: Tensor,
    /// (B,) u32 labels after dropout (the null label is num_classes); `None` unconditional.
    pub y: Option<Tensor>,
}

/// The conditional regression loss of flow matching or (denoising) score matching.
pub struct ConditionalLoss {
    pub path: Path,
    /// What the network predicts: velocity (flow matching), score or noise (score matching).
    pub target: Param,
    pub data: Dataset,
    pub source: Source,
    pub batch: usize,
    pub seed: u64,
    pub device: Device,
    /// Class labels of the data, for a conditional network; `None`: unconditional.
    pub labels: Option<Labels>,
    /// eta, the probability that a label is replaced by the null label.
    pub label_dropout: f64,
    /// The density of the training times.
    pub time: TimeDensity,
    /// How x_0 is paired with z within a batch.
    pub coupling: Coupling,
    /// The stochastic interpolant's noise scale a (gamma_t = a t (1 - t)); 0: none.
    pub interpolant_noise: f64,
}

impl ConditionalLoss {
    /// Checks that the path, target and source go together.
    pub fn validate(&self) -> Result<()> {
        match (&self.path, &self.source) {
            (Path::Gaussian(_), Source::Data(_)) => {
                bail!("a Gaussian path starts from Gaussian noise: a source data set needs the linear interpolant")
            }
            (Path::LinearInterpolant, _) if self.target != Param::Velocity => bail!(
                "the linear interpolant has a velocity target only, not {}",
                self.target.name()
            ),
            (Path::Gaussian(_), _)
                if self.coupling != Coupling::Independent && self.target != Param::Velocity =>
            {
                bail!(
                    "--coupling {} pairs eps with z: denoising score matching needs them independent",
                    self.coupling.name()
                )
            }
            _ if !(self.interpolant_noise >= 0.0 && self.interpolant_noise.is_finite()) => bail!(
                "the interpolant noise must be a finite number >= 0, got {}",
                self.interpolant_noise
            ),
            (Path::Gaussian(_), _) | (_, Source::Gaussian) if self.interpolant_noise > 0.0 => {
                bail!(
                    "the stochastic interpolant's noise is for the linear interpolant from a \
                     source data set (--source); from N(0, I) it would only change the Gaussian \
                     path's noise schedule, which --path chooses"
                )
            }
            (_, Source::Data(s)) if s.shape != self.data.shape => bail!(
                "the source samples {} differ in shape from the data's {}",
                shape_str(&s.shape),
                shape_str(&self.data.shape)
            ),
            _ => Ok(()),
        }
    }

    /// The minibatch of step `step`.
    pub fn batch(&self, step: u64) -> candle_core::Result<Batch> {
        let mut t32 = vec![0f32; self.batch];
        self.time
            .fill(&mut rng::stream(self.seed, Purpose::Time, step), &mut t32);
        let ts: Vec<f64> = t32.iter().map(|&t| t as f64).collect();
        self.batch_at(step, &ts)
    }

    /// The minibatch of step `step` at the given times, one per row (B of them), for
    /// objectives that choose their own times (the shortcut model's grid, `train::shortcut`):
    /// the same data, source, noise, labels and pairing as [`Self::batch`].
    pub fn batch_at(&self, step: u64, ts: &[f64]) -> candle_core::Result<Batch> {
        let b = self.batch;
        if ts.len() != b {
            candle_core::bail!("batch_at: {} times for a batch of {b}", ts.len());
        }
        let mut shape = vec![b];
        shape.extend_from_slice(&self.data.shape);
        let mut shuffle = rng::stream(self.seed, Purpose::Shuffle, step);
        let mut indices = |n: usize| -> Vec<usize> {
            (0..b)
                .map(|_| shuffle.random_range(0..n as u64) as usize)
                .collect()
        };
        let rows = indices(self.data.n);
        let z = self.data.gather(&rows);
        let y = match &self.labels {
            Some(l) => Some(self.dropped_labels(l, &rows, step)?),
            None => None,
        };
        let x0 = match &self.source {
            Source::Data(s) => s.gather(&indices(s.n)),
            Source::Gaussian => {
                let mut eps = vec![0f32; b * self.data.dim()];
                rng::fill_normal(&mut rng::stream(self.seed, Purpose::Noise, step), &mut eps);
                eps
            }
        };
        let x0 = self.coupling.pair(
            &z,
            x0,
            self.data.dim(),
            &mut rng::stream(self.seed, Purpose::Coupling, step),
        );
        let z = Tensor::from_vec(z, shape.as_slice(), &self.device)?;
        let x0 = Tensor::from_vec(x0, shape.as_slice(), &self.device)?;
        let t32: Vec<f32> = ts.iter().map(|&t| t as f32).collect();
        let ts: Vec<f64> = t32.iter().map(|&t| t as f64).collect();
        let t = Tensor::from_vec(t32, (b, 1), &self.device)?;
        let (x, target) = match &self.path {
            Path::Gaussian(g) => (
                g.sample_xt_at(&z, &x0, &ts)?,
                g.target_at(self.target, &z, &x0, &ts)?,
            ),
            Path::LinearInterpolant if self.interpolant_noise > 0.0 => {
                // xi from the Noise stream, which a data source leaves unused.
                let mut xi = vec![0f32; b * self.data.dim()];
                rng::fill_normal(&mut rng::stream(self.seed, Purpose::Noise, step), &mut xi);
                let xi = Tensor::from_vec(xi, shape.as_slice(), &self.device)?;
                LinearInterpolant.sample_noisy_at(&x0, &z, &xi, &ts, self.interpolant_noise)?
            }
            Path::LinearInterpolant => (
                LinearInterpolant.sample_xt_at(&x0, &z, &ts)?,
                LinearInterpolant.conditional_velocity(&x0, &z)?,
            ),
        };
        Ok(Batch { x, t, target, y })
    }

    /// The labels of `rows` with each replaced by the null label with probability eta
    /// (Algorithm 5), from the step's LabelDropout stream: (B,) u32.
    fn dropped_labels(&self, l: &Labels, rows: &[usize], step: u64) -> candle_core::Result<Tensor> {
        let mut u = vec![0f32; rows.len()];
        let mut s = rng::stream(self.seed, Purpose::LabelDropout, step);
        rng::fill_uniform(&mut s, &mut u, 0.0, 1.0);
        let null = l.num_classes as u32;
        let y: Vec<u32> = rows
            .iter()
            .zip(&u)
            .map(|(&i, &u)| {
                if (u as f64) < self.label_dropout {
                    null
                } else {
                    l.values[i]
                }
            })
            .collect();
        Tensor::from_vec(y, rows.len(), &self.device)
    }

    /// The loss of step `step`: mean over the batch of || net(x_t, t) - target ||^2.
    pub fn loss(&self, net: &dyn FieldNet, step: u64) -> candle_core::Result<Tensor> {
        let batch = self.batch(step)?;
        let pred = net.forward(&batch.x, &batch.t, batch.y.as_ref())?;
        (pred - batch.target)?
            .sqr()?
            .sum_all()?
            .affine(1.0 / self.batch as f64, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::GaussianPath;

    fn data(n: usize) -> Dataset {
        let v: Vec<f32> = (0..2 * n).map(|i| i as f32).collect();
        Dataset::new(
            ArrayD::from_shape_vec(ndarray::IxDyn(&[n, 2]), v).unwrap(),
            "d.npy",
        )
        .unwrap()
    }

    fn loss(path: Path, target: Param, source: Source) -> ConditionalLoss {
        ConditionalLoss {
            path,
            target,
            data: data(10),
            source,
            batch: 6,
            seed: 3,
            device: Device::Cpu,
            labels: None,
            label_dropout: 0.0,
            time: TimeDensity::Uniform,
            coupling: Coupling::Independent,
            interpolant_noise: 0.0,
        }
    }

    #[test]
    fn batches_depend_on_the_step_only_and_have_the_path_targets() {
        let l = loss(
            Path::Gaussian(GaussianPath::COSINE),
            Param::Noise,
            Source::Gaussian,
        );
        let (a, b, c) = (
            l.batch(4).unwrap(),
            l.batch(4).unwrap(),
            l.batch(5).unwrap(),
        );
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(&a.x), v(&b.x));
        assert_ne!(v(&a.x), v(&c.x));
        assert_eq!(a.t.dims(), &[6, 1]);
        // Noise target: z = (x_t - beta eps) / alpha must be a data row (2k, 2k + 1).
        let (x, t, eps) = (v(&a.x), v(&a.t), v(&a.target));
        for (i, &ti) in t.iter().enumerate() {
            let k = GaussianPath::COSINE.coefs(ti as f64);
            let z = |j: usize| (x[j] as f64 - k.beta * eps[j] as f64) / k.alpha;
            let (z0, z1) = (z(2 * i), z(2 * i + 1));
            let tol = 1e-4 / k.alpha;
            assert!(
                (z0 - z0.round()).abs() < tol && z0.round() % 2.0 == 0.0,
                "{z0}"
            );
            assert!((z1 - z0 - 1.0).abs() < 2.0 * tol, "{z0} {z1}");
        }
    }

    #[test]
    fn interpolant_target_is_data_minus_source() {
        let mut l = loss(Path::LinearInterpolant, Param::Velocity, Source::Gaussian);
        l.source = Source::Data(data(7));
        l.validate().unwrap();
        let b = l.batch(0).unwrap();
        let target: Vec<f32> = b.target.flatten_all().unwrap().to_vec1().unwrap();
        // Every data row is (2i, 2i + 1), so z - x0 is (2k, 2k) for an integer k.
        for pair in target.chunks(2) {
            assert_eq!(pair[0], pair[1]);
            assert_eq!(pair[0] % 2.0, 0.0);
        }
    }

    #[test]
    fn the_stochastic_interpolant_adds_the_same_noise_to_x_t_and_its_target() {
        // Source rows all 0 and data rows all 1 (per coordinate): x_t = t + gamma_t xi and
        // u = 1 + gamma'_t xi, so both give back the same xi, which must be N(0, 1).
        let constant = |v: f32, n: usize| {
            let a = ArrayD::from_elem(ndarray::IxDyn(&[n, 2]), v);
            Dataset::new(a, "c.npy").unwrap()
        };
        let mut l = loss(Path::LinearInterpolant, Param::Velocity, Source::Gaussian);
        l.data = constant(1.0, 5);
        l.source = Source::Data(constant(0.0, 4));
        l.batch = 4000;
        l.interpolant_noise = 2.0;
        l.validate().unwrap();
        let b = l.batch(1).unwrap();
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (x, t, u) = (v(&b.x), v(&b.t), v(&b.target));
        let mut xis = Vec::new();
        for (i, &ti) in t.iter().enumerate() {
            let ti = ti as f64;
            let (g, dg) = (2.0 * ti * (1.0 - ti), 2.0 * (1.0 - 2.0 * ti));
            for j in 0..2 {
                let (xj, uj) = (x[2 * i + j] as f64, u[2 * i + j] as f64);
                if g > 0.05 && dg.abs() > 0.05 {
                    let (from_x, from_u) = ((xj - ti) / g, (uj - 1.0) / dg);
                    assert!(
                        (from_x - from_u).abs() < 1e-3,
                        "{from_x} vs {from_u} at t {ti}"
                    );
                    xis.push(from_x);
                }
            }
        }
        let n = xis.len() as f64;
        let mean = xis.iter().sum::<f64>() / n;
        let var = xis.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / n;
        assert!(
            n > 5000.0 && mean.abs() < 0.05 && (var - 1.0).abs() < 0.06,
            "{n} {mean} {var}"
        );
        // From N(0, I) the noise term is refused.
        l.source = Source::Gaussian;
        assert!(l.validate().is_err());
    }

    #[test]
    fn ot_coupling_permutes_x0_into_shorter_pairs_and_keeps_z() {
        let mut l = loss(Path::LinearInterpolant, Param::Velocity, Source::Gaussian);
        l.batch = 64;
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // x = (1 - t) x0 + t z and u = z - x0 give z = x + (1 - t) u, x0 = z - u.
        let pairs = |l: &ConditionalLoss| -> (Vec<[f32; 2]>, Vec<[f32; 2]>, f64) {
            let b = l.batch(3).unwrap();
            let (x, t, u) = (v(&b.x), v(&b.t), v(&b.target));
            let (mut zs, mut x0s, mut len) = (vec![], vec![], 0.0);
            for (i, &ti) in t.iter().enumerate() {
                let z = [0, 1].map(|k| x[2 * i + k] + (1.0 - ti) * u[2 * i + k]);
                zs.push(z.map(|c| c.round()));
                x0s.push([0, 1].map(|k| z[k] - u[2 * i + k]));
                len += (u[2 * i] as f64).powi(2) + (u[2 * i + 1] as f64).powi(2);
            }
            (zs, x0s, len / t.len() as f64)
        };
        let (z_ind, mut x0_ind, len_ind) = pairs(&l);
        l.coupling = Coupling::Ot;
        let (z_ot, mut x0_ot, len_ot) = pairs(&l);
        assert_eq!(z_ind, z_ot, "the data rows stay in place");
        let key = |a: &[f32; 2], b: &[f32; 2]| a.partial_cmp(b).unwrap();
        x0_ind.sort_by(key);
        x0_ot.sort_by(key);
        for (a, b) in x0_ind.iter().zip(&x0_ot) {
            assert!(
                (a[0] - b[0]).abs() < 1e-3 && (a[1] - b[1]).abs() < 1e-3,
                "{a:?} {b:?}"
            );
        }
        // Data rows (2i, 2i + 1), i < 10, against N(0, I): E ||z - x0||^2 = 135 + 2 independently.
        // OT can only lower the cross term -2 <z, x0>; by about 2 * 2 * sd(z) E|x0|, ~18.
        assert!(len_ot < len_ind - 8.0, "OT {len_ot}, independent {len_ind}");
        // Score matching cannot take coupled pairs.
        l.path = Path::Gaussian(GaussianPath::CONDOT);
        l.target = Param::Noise;
        assert!(l.validate().is_err());
    }

    #[test]
    fn mismatched_settings_are_refused() {
        let mut l = loss(
            Path::Gaussian(GaussianPath::CONDOT),
            Param::Velocity,
            Source::Data(data(3)),
        );
        assert!(l.validate().is_err());
        l.path = Path::LinearInterpolant;
        l.target = Param::Score;
        assert!(l.validate().is_err());
        let empty = ArrayD::<f32>::zeros(ndarray::IxDyn(&[0, 2]));
        let err = Dataset::new(empty, "e.npy").err().unwrap().to_string();
        assert_eq!(
            err,
            "expected a non-empty data set (N, ...), got (0, 2) in e.npy"
        );
    }

    #[test]
    fn labels_follow_their_rows_and_drop_out_at_rate_eta() {
        let mut l = loss(
            Path::Gaussian(GaussianPath::CONDOT),
            Param::Velocity,
            Source::Gaussian,
        );
        // Data row i is (2i, 2i + 1); its label is i % 3.
        let arr = ndarray::Array1::from_iter((0..10).map(|i| (i % 3) as i64)).into_dyn();
        l.labels = Some(Labels::new(&arr, "y.npy", 10, "d.npy", None).unwrap());
        l.batch = 2000;
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let check = |eta: f64, l: &ConditionalLoss| -> usize {
            let b = l.batch(7).unwrap();
            let y: Vec<u32> = b.y.unwrap().to_vec1().unwrap();
            // At t = 1 - beta the data row is recoverable: z = (x - beta eps) / alpha; instead
            // check through the target u = z - eps: z = u + eps with eps = (x - t z)/(1 - t).
            let (x, t, u) = (v(&b.x), v(&b.t), v(&b.target));
            let mut nulls = 0;
            for (i, &yi) in y.iter().enumerate() {
                let ti = t[i] as f64;
                // x = t z + (1 - t) eps and u = z - eps, so z = x + (1 - t) u.
                let z0 = x[2 * i] as f64 + (1.0 - ti) * u[2 * i] as f64;
                let row = (z0 / 2.0).round() as u32;
                if yi == 3 {
                    nulls += 1;
                } else {
                    assert_eq!(yi, row % 3, "label of row {row}");
                }
            }
            let rate = nulls as f64 / y.len() as f64;
            let se = (eta * (1.0 - eta) / y.len() as f64).sqrt();
            assert!((rate - eta).abs() <= 4.0 * se + 1e-12, "eta {eta}: {rate}");
            nulls
        };
        check(0.0, &l);
        l.label_dropout = 0.25;
        let a = check(0.25, &l);
        assert_eq!(a, check(0.25, &l), "the same step drops the same labels");
        let err = Labels::new(&arr, "y.npy", 9, "d.npy", None).err().unwrap();
        assert_eq!(
            err.to_string(),
            "expected 9 labels, one per sample of d.npy, got 10 in y.npy"
        );
        assert!(Labels::new(&arr, "y.npy", 10, "d.npy", Some(2)).is_err());
    }
}
