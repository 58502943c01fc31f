//! Using a trained VAE: opening its model file and a tool's input, and encoding, decoding,
//! interpolating and measuring arrays of images (or latents) batch by batch, with per-image
//! noise so that results do not depend on the batch size.

use anyhow::bail;
use candle_core::Tensor;
use ndarray::ArrayD;

use super::{Vae, VaeConfig};
use crate::device::{from_tensor, to_tensor};
use crate::io::npy::shape_str;
use crate::nn::init::Params;
use crate::rng::{self, Purpose};
use crate::Result;

/// Opens a `vae` model file (EMA weights when it has them), naming the file in errors.
pub fn open(path: &str, device: &candle_core::Device) -> Result<Vae> {
    let model = crate::io::model::load_kind(path, &["vae"], device)?;
    let build = |c: &serde_json::Value, params: &Params| {
        let cfg = VaeConfig::from_json(c).map_err(anyhow::Error::msg)?;
        Vae::new(&cfg, params)
    };
    let vae = crate::nn::open_checked(
        &model,
        crate::nn::Weights::Auto,
        device,
        &model.config,
        build,
    )?;
    Ok(vae)
}

/// How `encode-vae` turns the posterior into latents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// The posterior mean mu(x): deterministic.
    Mean,
    /// mu + sigma eps, eps of image i from stream (seed, Latent, first + i): the images are
    /// rows first.. of a larger set (a shard, lib/io/shards.rs).
    Sample { seed: u64, first: u64 },
}

/// Standard normals for images first..first + n, each from its own stream (seed, Latent, i),
/// shaped (n, k, h, w): image i's draw does not depend on how the set is batched.
pub fn posterior_noise(
    seed: u64,
    first: u64,
    n: usize,
    latent: [usize; 3],
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let dim: usize = latent.iter().product();
    let v = rng::normal_rows(seed, Purpose::Latent, first, n, dim);
    Tensor::from_vec(v, (n, latent[0], latent[1], latent[2]), device)
}

/// Encodes images (N, C, H, W) to scaled latents (N, k, h, w), `batch` images at a time, so
/// the network's memory is bounded by the batch; the result does not depend on `batch`.
pub fn encode_all(
    vae: &Vae,
    images: &ArrayD<f32>,
    batch: usize,
    how: Encoding,
    device: &candle_core::Device,
) -> Result<ArrayD<f32>> {
    let n = images.shape()[0];
    let latent = vae.config.latent_shape();
    let mut out = Vec::with_capacity(n * latent.iter().product::<usize>());
    for first in (0..n).step_by(batch.max(1)) {
        let m = batch.min(n - first);
        let chunk = images.slice_axis(ndarray::Axis(0), (first..first + m).into());
        let x = to_tensor(&chunk.to_owned(), device)?;
        let post = vae.encode(&x)?;
        let z = match how {
            Encoding::Mean => post.mean,
            Encoding::Sample { seed, first: at } => post.sample(&posterior_noise(
                seed,
                at + first as u64,
                m,
                latent,
                device,
            )?)?,
        };
        let z = (z * vae.config.scale_factor)?;
        out.extend(from_tensor(&z)?.iter().copied());
    }
    let shape = [n, latent[0], latent[1], latent[2]];
    Ok(ArrayD::from_shape_vec(ndarray::IxDyn(&shape), out)?)
}

/// Decodes scaled latents (N, k, h, w) to images (N, C, H, W) (the decoder mean), in batches.
pub fn decode_all(
    vae: &Vae,
    latents: &ArrayD<f32>,
    batch: usize,
    device: &candle_core::Device,
) -> Result<ArrayD<f32>> {
    let n = latents.shape()[0];
    let [c, h, w] = vae.config.data_shape;
    let mut out = Vec::with_capacity(n * c * h * w);
    for first in (0..n).step_by(batch.max(1)) {
        let m = batch.min(n - first);
        let chunk = latents.slice_axis(ndarray::Axis(0), (first..first + m).into());
        let z = (to_tensor(&chunk.to_owned(), device)? / vae.config.scale_factor)?;
        out.extend(from_tensor(&vae.decode(&z)?)?.iter().copied());
    }
    Ok(ArrayD::from_shape_vec(ndarray::IxDyn(&[n, c, h, w]), out)?)
}

/// Decoded linear interpolations between the posterior means of image pairs:
/// for pair (a, b) and s_j = j / (steps - 1), D((1 - s_j) mu(x_a) + s_j mu(x_b)), j = 0..steps.
/// `images` (M, C, H, W); returns (pairs * steps, C, H, W), pair by pair.
pub fn interpolate_pairs(
    vae: &Vae,
    images: &ArrayD<f32>,
    pairs: &[(usize, usize)],
    steps: usize,
    device: &candle_core::Device,
) -> Result<ArrayD<f32>> {
    let m = images.shape()[0];
    if let Some(&(a, b)) = pairs.iter().find(|(a, b)| *a >= m || *b >= m) {
        bail!("pair {a}:{b} names an image past the {m} given");
    }
    let x = to_tensor(images, device)?;
    let mean = vae.encode(&x)?.mean;
    let mut rows = Vec::with_capacity(pairs.len() * steps);
    for &(a, b) in pairs {
        let (za, zb) = (mean.get(a)?, mean.get(b)?);
        for j in 0..steps {
            let s = if steps == 1 {
                0.0
            } else {
                j as f64 / (steps - 1) as f64
            };
            rows.push(((&za * (1.0 - s))? + (&zb * s)?)?);
        }
    }
    let z = Tensor::stack(&rows, 0)?;
    from_tensor(&vae.decode(&z)?)
}

/// What a VAE tool reads: images shaped as the VAE's data, or latents shaped as its latents.
#[derive(Clone, Copy, Debug)]
pub enum Side {
    Images,
    Latents,
}

/// The opening of every VAE tool: reads the .npy `input` (a path or `-`), opens the VAE at
/// `model_path` and checks the array is a finite batch (N, ...) of `side`'s shape. Returns the
/// model, the array and the input's display name for later messages.
pub fn open_with_batch(
    model_path: &str,
    input: &str,
    side: Side,
    device: &candle_core::Device,
) -> Result<(Vae, ArrayD<f32>, String)> {
    let x = crate::io::npy::read_f32(input)?;
    let name = crate::io::display_name(input);
    let model = open(model_path, device)?;
    let (want, what) = match side {
        Side::Images => (model.config.data_shape.to_vec(), "images"),
        Side::Latents => (model.config.latent_shape().to_vec(), "latents"),
    };
    expect_batch_of(x.shape(), &want, what, &name)?;
    crate::io::npy::expect_finite(&x, &name)?;
    Ok((model, x, name))
}

/// Fails unless `shape` is (N, ...want), naming `what`, the file, the expected and the found.
pub fn expect_batch_of(shape: &[usize], want: &[usize], what: &str, name: &str) -> Result<()> {
    if shape.len() != want.len() + 1 || shape[1..] != *want {
        let dims: Vec<String> = want.iter().map(|d| d.to_string()).collect();
        bail!(
            "expected {what} (N, {}), got {} in {name}",
            dims.join(", "),
            shape_str(shape)
        );
    }
    Ok(())
}

/// Reconstruction statistics of images `x` (N, C, H, W) through the posterior mean.
#[derive(Clone, Debug, PartialEq)]
pub struct ReconStats {
    /// mean over pixels and images of (x - D(mu(x)))^2
    pub recon_mse: f64,
    /// mean over pixels and images of (x - mean image)^2: the error of predicting the mean
    pub mean_image_mse: f64,
    /// mean KL(q(z | x) || N(0, I)) per image
    pub kl: f64,
    pub n: usize,
}

/// Reconstruction MSE, the mean-image baseline and the mean KL of `images`, in batches.
pub fn recon_stats(
    vae: &Vae,
    images: &ArrayD<f32>,
    batch: usize,
    device: &candle_core::Device,
) -> Result<ReconStats> {
    let n = images.shape()[0];
    let mean_image = images.mean_axis(ndarray::Axis(0)).expect("N >= 1");
    let mean_image_mse = images
        .outer_iter()
        .map(|img| (&img - &mean_image).mapv(|v| (v as f64).powi(2)).sum())
        .sum::<f64>()
        / images.len() as f64;
    let (mut sq, mut kl) = (0.0f64, 0.0f64);
    for first in (0..n).step_by(batch.max(1)) {
        let m = batch.min(n - first);
        let chunk = images.slice_axis(ndarray::Axis(0), (first..first + m).into());
        let x = to_tensor(&chunk.to_owned(), device)?;
        let post = vae.encode(&x)?;
        let rec = vae.decode(&post.mean)?;
        sq += (x - rec)?
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        kl += post
            .kl()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(ReconStats {
        recon_mse: sq / images.len() as f64,
        mean_image_mse,
        kl: kl / n as f64,
        n,
    })
}

/// The std of every element of the posterior means of `images` (unscaled): scale_factor is its
/// reciprocal.
pub fn latent_std(
    vae: &Vae,
    images: &ArrayD<f32>,
    batch: usize,
    device: &candle_core::Device,
) -> Result<f64> {
    let mut unscaled = vae.clone();
    unscaled.config.scale_factor = 1.0;
    let z = encode_all(&unscaled, images, batch, Encoding::Mean, device)?;
    let n = z.len() as f64;
    let mean = z.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    Ok(var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::layers::tests::wobbly;
    use crate::nn::vae::testing::tiny;
    use candle_core::Device;

    /// A hand-written file with several problems gets them all in one message: the config's
    /// missing `groups` and the misspelt tensor, named together with the file.
    #[test]
    fn open_reports_the_configs_and_the_tensors_problems_together() {
        let cfg = tiny([1, 8, 8], &[4, 8], 2);
        let params = Params::new(1, &Device::Cpu);
        Vae::new(&cfg, &params).unwrap();
        let mut config = cfg.to_json();
        config["kind"] = "vae".into();
        config.as_object_mut().unwrap().remove("groups");
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("v.safetensors").to_str().unwrap().to_string();
        // A tensor too many (a misspelt copy), then one renamed (so one is missing).
        let mut tensors = params.tensors();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let (name, t) = tensors[0].clone();
        assert_eq!(name, "decoder.conv_in.bias");
        tensors.push((name.clone(), t.clone()));
        let e = crate::io::model::save(&f, &config, &tensors).unwrap_err();
        assert!(e.to_string().contains("two tensors named"), "{e}");
        tensors.pop();
        let typo = name.replace("bias", "bais");
        tensors.push((typo.clone(), t));
        crate::io::model::save(&f, &config, &tensors).unwrap();
        let e = format!("{:#}", open(&f, &Device::Cpu).err().unwrap());
        assert!(
            e.contains("v.safetensors") && e.contains("no 'groups'"),
            "{e}"
        );
        assert!(e.contains(&typo) && e.lines().count() == 1, "{e}");
        tensors.swap_remove(0);
        crate::io::model::save(&f, &config, &tensors).unwrap();
        let e = format!("{:#}", open(&f, &Device::Cpu).err().unwrap());
        let missing = format!("no tensor '{name}'");
        assert!(e.contains("no 'groups'") && e.contains(&missing), "{e}");
    }

    #[test]
    fn posterior_noise_is_per_image() {
        let latent = [2, 3, 3];
        let whole = posterior_noise(5, 0, 6, latent, &Device::Cpu).unwrap();
        let part = posterior_noise(5, 4, 2, latent, &Device::Cpu).unwrap();
        let a: Vec<f32> = whole
            .narrow(0, 4, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = part.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn batched_encoding_does_not_depend_on_the_batch() {
        let cfg = tiny([1, 16, 16], &[8, 16], 2);
        let vae = Vae::new(&cfg, &Params::new(1, &Device::Cpu)).unwrap();
        let x = crate::device::from_tensor(&wobbly(&[7, 1, 16, 16], 4)).unwrap();
        for how in [Encoding::Mean, Encoding::Sample { seed: 2, first: 0 }] {
            let a = encode_all(&vae, &x, 7, how, &Device::Cpu).unwrap();
            let b = encode_all(&vae, &x, 3, how, &Device::Cpu).unwrap();
            assert_eq!(a, b, "{how:?}");
        }
        let z = encode_all(&vae, &x, 7, Encoding::Mean, &Device::Cpu).unwrap();
        let s = encode_all(
            &vae,
            &x,
            7,
            Encoding::Sample { seed: 2, first: 0 },
            &Device::Cpu,
        )
        .unwrap();
        assert_ne!(z, s);
        // Images 3..7 encoded as a shard with --first 3 are rows 3..7 of the whole run.
        let tail = x.slice_axis(ndarray::Axis(0), (3..7).into()).to_owned();
        let shard = encode_all(
            &vae,
            &tail,
            2,
            Encoding::Sample { seed: 2, first: 3 },
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(
            shard,
            s.slice_axis(ndarray::Axis(0), (3..7).into()).to_owned()
        );
        assert_eq!(
            decode_all(&vae, &z, 4, &Device::Cpu).unwrap().shape(),
            &[7, 1, 16, 16]
        );
    }
}
