//! Normalisations over the last dimension as fused ops: softmax and RMSNorm.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::{dot, last_dim, map_rows, map_rows2, slice, softmax_row};

/// softmax over the last dimension, y_i = e^(x_i - max x) / sum_j e^(x_j - max x), fused on
/// the CPU with the backward dx = y (dy - sum_j dy_j y_j) in one pass (candle 0.11's own
/// `softmax_last_dim` has no backward at all). None off the CPU or for another dtype.
pub fn softmax_last_dim(x: &Tensor) -> Result<Option<Tensor>> {
    if !(super::fused_for(x)) {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op1(Softmax)?))
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "flowpipe-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = map_rows(slice(s, l, "softmax")?, last_dim(l), |y, x| {
            y.copy_from_slice(x);
            softmax_row(y, 1.0);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(res.detach().apply_op2_no_bwd(&grad, &SoftmaxGrad)?))
    }
}

/// y (dy - sum dy y) per row, from y and dy.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "flowpipe-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (
            slice(s1, l1, "softmax grad")?,
            slice(s2, l2, "softmax grad")?,
        );
        let out = map_rows2(y, g, last_dim(l1), "softmax grad", |o, y, g| {
            let yg = dot(y, g);
            for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                *o = y * (g - yg);
            }
        })?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// RMSNorm without a gain over the last dimension, y = x r with r = 1 / sqrt(mean(x^2) + eps)
/// (Zhang & Sennrich 2019), fused on the CPU with the backward dx = r (dy - y mean(dy y)).
/// None off the CPU or for another dtype.
pub fn rms_norm(x: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    if !(super::fused_for(x)) {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op1(RmsNormOp(eps as f32))?))
}

struct RmsNormOp(f32);

impl RmsNormOp {
    #[inline(always)]
    fn inv_rms(&self, x: &[f32]) -> f32 {
        inv_rms(x, self.0)
    }
}

/// 1 / sqrt(mean(x^2) + eps) of a row.
#[inline(always)]
pub(super) fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ms = dot(x, x) / x.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp1 for RmsNormOp {
    fn name(&self) -> &'static str {
        "flowpipe-rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = map_rows(slice(s, l, "rms norm")?, last_dim(l), |y, x| {
            let r = self.inv_rms(x);
            y.iter_mut().zip(x).for_each(|(y, &x)| *y = x * r);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(arg.detach().apply_op2_no_bwd(
            &grad,
            &RmsNormGrad(RmsNormOp(self.0)),
        )?))
    }
}

/// r (dy - y mean(dy y)) per row, from x and dy.
struct RmsNormGrad(RmsNormOp);

impl CustomOp2 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "flowpipe-rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (
            slice(s1, l1, "rms norm grad")?,
            slice(s2, l2, "rms norm grad")?,
        );
        let out = map_rows2(x, g, last_dim(l1), "rms norm grad", |o, x, g| {
            let r = self.0.inv_rms(x);
            let m = r * dot(x, g) / x.len() as f32;
            for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                *o = r * (g - x * r * m);
            }
        })?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
