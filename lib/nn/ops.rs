//! Fused tensor operations that make CPU training faster than composing candle's primitives.
//!
//! [`silu`]: SiLU(x) = x sigmoid(x) (Elfwing et al. 2018), the MLP's activation. candle builds
//! its backward pass from about nine elementwise passes (neg, exp, add, recip, ...); here the
//! forward is one pass and the backward one pass computing
//!   d SiLU / dx = s (1 + x (1 - s)),  s = sigmoid(x),
//! times the incoming gradient. The fused path serves contiguous f32 tensors on the CPU; any
//! other tensor goes through candle's own `silu`, so CUDA works unchanged.

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp1, CustomOp2, DType, Layout};
use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per parallel chunk of an elementwise loop.
const CHUNK: usize = 1 << 14;

/// SiLU(x) = x sigmoid(x), with a fused backward pass on the CPU.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(Silu)
    } else {
        x.silu()
    }
}

/// Whether an elementwise loop over `n` values is worth splitting over the thread pool.
fn parallel(n: usize) -> bool {
    n >= 2 * CHUNK && rayon::current_num_threads() > 1
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The f32 slice a contiguous CPU storage holds.
fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{op}: needs a contiguous f32 tensor, got {:?}", s.dtype()),
    }
}

struct Silu;

impl CustomOp1 for Silu {
    fn name(&self) -> &'static str {
        "flowpipe-silu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "silu")?;
        let mut y = vec![0f32; x.len()];
        let kernel = |y: &mut [f32], x: &[f32]| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x * sigmoid(x);
            }
        };
        if parallel(x.len()) {
            y.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .for_each(|(y, x)| kernel(y, x));
        } else {
            kernel(&mut y, x);
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&grad, &SiluGrad)?))
    }
}

/// grad * d SiLU(x) / dx, from x and grad.
struct SiluGrad;

impl CustomOp2 for SiluGrad {
    fn name(&self) -> &'static str {
        "flowpipe-silu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (slice(s1, l1, "silu grad")?, slice(s2, l2, "silu grad")?);
        if x.len() != g.len() {
            candle_core::bail!("silu grad: {} values against {}", x.len(), g.len());
        }
        let mut out = vec![0f32; x.len()];
        let kernel = |o: &mut [f32], x: &[f32], g: &[f32]| {
            for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                let s = sigmoid(x);
                *o = g * s * (1.0 + x * (1.0 - s));
            }
        };
        if parallel(x.len()) {
            out.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                .for_each(|(o, (x, g))| kernel(o, x, g));
        } else {
            kernel(&mut out, x, g);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_silu_matches_candle_forward_and_backward() {
        let v: Vec<f32> = (0..3000).map(|i| (i as f32 - 1500.0) / 97.0).collect();
        let x = Var::from_tensor(&Tensor::from_vec(v, (30, 100), &Device::Cpu).unwrap()).unwrap();
        let w = Tensor::from_vec(
            crate::rng::normal_rows(0, crate::rng::Purpose::Misc, 0, 1, 3000),
            (30, 100),
            &Device::Cpu,
        )
        .unwrap();
        let ours = silu(x.as_tensor()).unwrap();
        let theirs = x.as_tensor().silu().unwrap();
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert!(diff(&ours, &theirs) < 1e-5);
        let g1 = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&theirs * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (g1, g2) = (
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        assert!(diff(g1, g2) < 1e-5, "{}", diff(g1, g2));
        // Non-contiguous input takes the same path after a copy.
        let t = silu(&x.as_tensor().t().unwrap()).unwrap();
        assert!(diff(&t, &theirs.t().unwrap()) < 1e-5);
    }
}
