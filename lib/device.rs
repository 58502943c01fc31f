//! Where tensors live, and the one place arrays cross between ndarray (the wire) and candle.
//!
//! `--device cpu` is the default. `--device cuda` needs the crate's `cuda` feature; without it
//! the tool says so instead of failing obscurely.

use anyhow::{anyhow, bail};
use candle_core::{DType, Device, Tensor};
use ndarray::{ArrayD, IxDyn};

use crate::Result;

/// The `--device` flag's values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    #[default]
    Cpu,
    Cuda,
}

impl DeviceArg {
    /// Opens the device (CUDA device 0 for `cuda`).
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceArg::Cpu => Ok(Device::Cpu),
            DeviceArg::Cuda => {
                if !cfg!(feature = "cuda") {
                    bail!("--device cuda needs flowpipe built with `--features cuda`");
                }
                Device::new_cuda(0).map_err(|e| anyhow!("cannot open CUDA device 0: {e}"))
            }
        }
    }
}

/// An f32 ndarray as a candle tensor on `device`.
pub fn to_tensor(arr: &ArrayD<f32>, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = arr.iter().copied().collect();
    Ok(Tensor::from_vec(data, arr.shape(), device)?)
}

/// An i64 ndarray (labels) as a candle u32 tensor on `device` (candle indexes with u32).
pub fn labels_to_tensor(arr: &ArrayD<i64>, device: &Device) -> Result<Tensor> {
    let data: Vec<u32> = arr
        .iter()
        .map(|&v| u32::try_from(v).map_err(|_| anyhow!("label {v} is negative or too large")))
        .collect::<Result<_>>()?;
    Ok(Tensor::from_vec(data, arr.shape(), device)?)
}

/// A candle tensor (any float dtype, any device) as an f32 ndarray.
pub fn from_tensor(t: &Tensor) -> Result<ArrayD<f32>> {
    let shape = t.dims().to_vec();
    let data = t
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1::<f32>()?;
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), data)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndarray_tensor_round_trip() {
        let a = ArrayD::from_shape_vec(IxDyn(&[2, 1, 2]), vec![1f32, 2., 3., 4.]).unwrap();
        let t = to_tensor(&a, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 1, 2]);
        assert_eq!(from_tensor(&t).unwrap(), a);
    }
}
