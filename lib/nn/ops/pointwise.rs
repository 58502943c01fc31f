//! Pointwise activations as fused ops: SiLU and exact GELU, one pass forward and one pass
//! backward each (the [`Pointwise`] trait: f and f').

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::{exp, map1, map2, normal_cdf, sigmoid, slice};

/// SiLU(x) = x sigmoid(x), with a fused backward pass on the CPU.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if super::fused_for(x) {
        x.contiguous()?.apply_op1(Fused(SiluFn))
    } else {
        x.silu()
    }
}

/// Exact GELU, x Phi(x) = x (1 + erf(x / sqrt 2)) / 2 (Hendrycks & Gimpel 2016), with a fused
/// backward pass on the CPU: d GELU / dx = Phi(x) + x phi(x), phi the standard normal density.
/// candle's `gelu_erf` evaluates libm's erf per value and builds its backward from about ten
/// elementwise passes.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if super::fused_for(x) {
        x.contiguous()?.apply_op1(Fused(GeluFn))
    } else {
        x.gelu_erf()
    }
}

/// A pointwise activation f with its derivative, for a fused op with a one-pass backward.
/// Generic (not fn pointers) so that each kernel is inlined and vectorised.
pub(super) trait Pointwise: Copy + Default + Send + Sync + 'static {
    const NAME: &'static str;
    const GRAD_NAME: &'static str;
    fn f(x: f32) -> f32;
    fn df(x: f32) -> f32;
}

/// SiLU(x) = x sigmoid(x); d/dx = s (1 + x (1 - s)), s = sigmoid(x).
#[derive(Clone, Copy, Default)]
pub(super) struct SiluFn;

impl Pointwise for SiluFn {
    const NAME: &'static str = "flowpipe-silu";
    const GRAD_NAME: &'static str = "flowpipe-silu-grad";
    #[inline(always)]
    fn f(x: f32) -> f32 {
        x * sigmoid(x)
    }
    #[inline(always)]
    fn df(x: f32) -> f32 {
        let s = sigmoid(x);
        s * (1.0 + x * (1.0 - s))
    }
}

/// GELU(x) = x Phi(x); d/dx = Phi(x) + x phi(x), phi(x) = e^(-x^2 / 2) / sqrt(2 pi).
#[derive(Clone, Copy, Default)]
pub(super) struct GeluFn;

impl Pointwise for GeluFn {
    const NAME: &'static str = "flowpipe-gelu";
    const GRAD_NAME: &'static str = "flowpipe-gelu-grad";
    #[inline(always)]
    fn f(x: f32) -> f32 {
        x * normal_cdf(x)
    }
    #[inline(always)]
    fn df(x: f32) -> f32 {
        // 1 / sqrt(2 pi)
        const INV_SQRT_TAU: f32 = 0.398_942_3;
        normal_cdf(x) + x * INV_SQRT_TAU * exp(-0.5 * x * x)
    }
}

/// The fused op of a [`Pointwise`] activation: one pass forward, one pass backward.
struct Fused<P>(P);

impl<P: Pointwise> CustomOp1 for Fused<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = map1(slice(s, l, P::NAME)?, P::f);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&grad, &FusedGrad(self.0))?))
    }
}

/// grad * f'(x), from x and grad.
pub(super) struct FusedGrad<P>(pub(super) P);

impl<P: Pointwise> CustomOp2 for FusedGrad<P> {
    fn name(&self) -> &'static str {
        P::GRAD_NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (slice(s1, l1, P::GRAD_NAME)?, slice(s2, l2, P::GRAD_NAME)?);
        let out = map2(x, g, P::GRAD_NAME, |x, g| g * P::df(x))?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::erf;
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

    #[test]
    fn fast_erf_and_gelu_match_candle() {
        let xs: Vec<f32> = (0..=4000)
            .map(|i| -8.0 + 16.0 * i as f32 / 4000.0)
            .collect();
        let x = Var::from_vec(xs.clone(), xs.len(), &Device::Cpu).unwrap();
        let (ours, theirs) = (
            gelu(x.as_tensor()).unwrap(),
            x.as_tensor().gelu_erf().unwrap(),
        );
        let (a, b): (Vec<f32>, Vec<f32>) = (ours.to_vec1().unwrap(), theirs.to_vec1().unwrap());
        for ((&v, &p), &q) in xs.iter().zip(&a).zip(&b) {
            assert!(
                (p - q).abs() < 2e-6 * (1.0 + v.abs()),
                "gelu({v}): {p} vs {q}"
            );
        }
        let grad = |y: &Tensor| {
            let g = y.sum_all().unwrap().backward().unwrap();
            g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap()
        };
        let (ga, gb) = (grad(&ours), grad(&theirs));
        for ((&v, &p), &q) in xs.iter().zip(&ga).zip(&gb) {
            assert!(
                (p - q).abs() < 2e-6 * (1.0 + v.abs()),
                "gelu'({v}): {p} vs {q}"
            );
        }
        assert!(erf(0.0).abs() < 2e-7);
        assert!((erf(1.0) - 0.842_700_8).abs() < 2e-7 && (erf(-1.0) + 0.842_700_8).abs() < 2e-7);
    }
}
