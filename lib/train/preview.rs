//! A grid of samples drawn during training, so a person can watch an image model learn.
//!
//! At each checkpoint the trainer writes a PNG: the model as it stands (its EMA weights when
//! kept, as sampling uses) integrated with a few Euler steps (notes Algorithm 1) of the learned
//! velocity from the same fixed noise every time, one row per class (a conditional model,
//! labels 0..K-1 without guidance) or four rows (an unconditional one). The noise comes from
//! (seed, Misc, i), so the grids of one run differ only by what the model learned. Cheap: a
//! few dozen samples and steps, next to hundreds of training steps between checkpoints.

use anyhow::bail;
use candle_core::{Device, Tensor};
use ndarray::{ArrayD, IxDyn};
use serde_json::Value;

use super::checkpoint::TrainState;
use crate::fields::LabelledVelocity;
use crate::io::model;
use crate::io::npy::shape_str;
use crate::nn::{Learned, Weights};
use crate::render::{self, GridOptions, ValueRange};
use crate::rng::{self, Purpose};
use crate::solvers;
use crate::Result;

/// Where and how the grid is drawn.
pub struct Preview {
    /// The PNG written at each checkpoint (replaced each time).
    pub path: String,
    /// Samples per row.
    pub cols: usize,
    /// Euler steps from t = 0 to 1.
    pub steps: usize,
    pub seed: u64,
}

impl Preview {
    /// Checks that samples of `shape` can be drawn as images: [C, H, W] with C = 1 or 3.
    pub fn check_shape(&self, shape: &[usize], data: &str) -> Result<()> {
        if !matches!(shape, [1 | 3, _, _]) {
            let mut full = vec![0];
            full.extend_from_slice(shape);
            bail!(
                "--sample-grid draws images (N, 1 or 3, H, W), but {data} holds samples {}",
                shape_str(&full).replacen('0', "N", 1)
            );
        }
        Ok(())
    }

    /// Draws the grid of the model `config` with the weights in `state` and writes the PNG.
    pub fn write(&self, config: &Value, state: &TrainState) -> Result<()> {
        let x = self.sample(config, state)?;
        let opts = GridOptions {
            cols: Some(self.cols),
            range: ValueRange::Auto,
            upscale: 2,
            ..GridOptions::default()
        };
        render::write_png(&self.path, &render::image_grid(&x, &opts)?)
    }

    /// The samples (rows * cols, C, H, W), row-major.
    pub fn sample(&self, config: &Value, state: &TrainState) -> Result<ArrayD<f32>> {
        let device = state.params.device().clone();
        // The model file's bytes and loader, so sampling sees exactly what a saved model gives.
        let bytes = model::encode(config, &state.model_tensors())?;
        let m = model::decode(&bytes, &self.path, &device)?;
        let learned = Learned::load(&m, Weights::Auto, &device)?;
        let classes = learned.num_classes();
        let rows = if classes > 0 { classes } else { 4 };
        let n = rows * self.cols;
        let mut shape = vec![n];
        shape.extend_from_slice(&learned.data_shape);
        let dim: usize = learned.data_shape.iter().product();
        // From the path's p_init: N(0, 50^2 I) for VE.
        let sd = learned.init_std() as f32;
        let mut noise = rng::normal_rows(self.seed, Purpose::Misc, 0, n, dim);
        noise.iter_mut().for_each(|v| *v *= sd);
        let mut x = Tensor::from_vec(noise, shape.as_slice(), &device)?;
        let y = match classes {
            0 => None,
            _ => {
                let y: Vec<u32> = (0..n).map(|i| (i / self.cols) as u32).collect();
                Some(Tensor::from_vec(y, n, &device)?)
            }
        };
        let field = LabelledVelocity {
            model: &learned,
            labels: y.as_ref(),
            scale: 1.0,
        };
        let h = 1.0 / self.steps as f64;
        for k in 0..self.steps {
            x = solvers::euler_step(&field, &x, k as f64 * h, h)?;
        }
        let values = x.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
        Ok(ArrayD::from_shape_vec(IxDyn(&shape), values)?)
    }
}
