//! The bias add of every dense and convolution layer, with a row-by-row bias gradient.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::slice;

/// x + b, b: (C,) broadcast over the leading dimensions of x (..., C).
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let fused = x.device().is_cpu()
        && x.dtype() == DType::F32
        && b.dtype() == DType::F32
        && b.rank() == 1
        && x.rank() >= 1
        && x.dims()[x.rank() - 1] == b.dim(0)?;
    if fused {
        x.contiguous()?.apply_op2(&b.contiguous()?, AddBias)
    } else {
        x.broadcast_add(b)
    }
}

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "flowpipe-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (slice(s1, l1, "add bias")?, slice(s2, l2, "add bias")?);
        let mut y = x.to_vec();
        for row in y.chunks_mut(b.len()) {
            for (y, &b) in row.iter_mut().zip(b) {
                *y += b;
            }
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let db = grad.apply_op1_no_bwd(&ColumnSum(b.dim(0)?))?;
        Ok((Some(grad), Some(db)))
    }
}

/// Sums a contiguous (..., C) tensor over everything but its last dimension: (C,).
struct ColumnSum(usize);

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "flowpipe-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = slice(s, l, "column sum")?;
        let mut acc = vec![0f32; self.0];
        for row in g.chunks(self.0) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
        Ok((CpuStorage::F32(acc), Shape::from(self.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_bias_add_matches_candle_forward_and_backward() {
        let x = Var::from_tensor(
            &Tensor::from_vec(
                crate::rng::normal_rows(1, crate::rng::Purpose::Misc, 0, 1, 600),
                (2, 100, 3),
                &Device::Cpu,
            )
            .unwrap(),
        )
        .unwrap();
        let b =
            Var::from_tensor(&Tensor::new(&[0.5f32, -1.0, 2.0], &Device::Cpu).unwrap()).unwrap();
        let w = Tensor::from_vec(
            crate::rng::normal_rows(2, crate::rng::Purpose::Misc, 0, 1, 600),
            (2, 100, 3),
            &Device::Cpu,
        )
        .unwrap();
        let ours = add_bias(x.as_tensor(), b.as_tensor()).unwrap();
        let theirs = x.as_tensor().broadcast_add(b.as_tensor()).unwrap();
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(&ours), v(&theirs));
        let g1 = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&theirs * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for var in [&x, &b] {
            let (a, c) = (
                v(g1.get(var.as_tensor()).unwrap()),
                v(g2.get(var.as_tensor()).unwrap()),
            );
            for (a, c) in a.iter().zip(&c) {
                assert!((a - c).abs() < 1e-4, "{a} vs {c}");
            }
        }
    }
}
