//! The bias add of every dense and convolution layer, with a row-by-row bias gradient, and
//! its per-sample form (the U-Net's time and label conditioning added to every pixel).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::{par, slice};

/// x + b, b: (C,) broadcast over the leading dimensions of x (..., C).
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let fused = super::fused_for(x)
        && x.dtype() == DType::F32
        && b.dtype() == DType::F32
        && b.rank() == 1
        && x.rank() >= 1
        && x.dims()[x.rank() - 1] == b.dim(0)?;
    if fused {
        x.contiguous()?
            .apply_op2(&b.contiguous()?, AddBias { per_sample: false })
    } else {
        x.broadcast_add(b)
    }
}

/// x + b[n] for each sample n: x (N, ..., C), b (N, C). candle's broadcast add takes the
/// gradient of b by a strided sum over the pixels, slower than the add itself; here it is a
/// row-by-row sum per sample, in parallel over samples.
pub fn add_sample_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (n, c) = b.dims2()?;
    let fused = super::fused_for(x)
        && x.dtype() == DType::F32
        && b.dtype() == DType::F32
        && x.rank() >= 2
        && x.dim(0)? == n
        && x.dims()[x.rank() - 1] == c;
    if fused {
        x.contiguous()?
            .apply_op2(&b.contiguous()?, AddBias { per_sample: true })
    } else {
        let mut shape = vec![1; x.rank()];
        (shape[0], shape[x.rank() - 1]) = (n, c);
        x.broadcast_add(&b.reshape(shape)?)
    }
}

/// x + b with b (C,) over all rows, or with `per_sample` b (N, C) over the rows of sample n.
struct AddBias {
    per_sample: bool,
}

impl AddBias {
    /// The values of x per sample, or all of them as one block without `per_sample`.
    fn block(&self, x: &Layout) -> usize {
        match self.per_sample {
            true => x.dims()[1..].iter().product::<usize>().max(1),
            false => x.shape().elem_count().max(1),
        }
    }
}

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
        let c = l1.dims()[l1.dims().len() - 1];
        let mut y = x.to_vec();
        if c > 0 {
            let block = self.block(l1);
            par::chunks_mut(&mut y, block, |i, y| {
                let b = if self.per_sample {
                    &b[i * c..(i + 1) * c]
                } else {
                    b
                };
                for row in y.chunks_mut(c) {
                    for (y, &b) in row.iter_mut().zip(b) {
                        *y += b;
                    }
                }
            });
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
        let c = b.dims()[b.rank() - 1];
        let db = grad.apply_op1_no_bwd(&ColumnSum(c, self.per_sample))?;
        Ok((Some(grad), Some(db)))
    }
}

/// Sums a contiguous (..., C) tensor over everything but its last dimension: (C,); with `.1`,
/// over everything but its first and last: (N, C).
struct ColumnSum(usize, bool);

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "flowpipe-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = slice(s, l, "column sum")?;
        let c = self.0;
        let sum = |block: &[f32]| {
            let mut acc = vec![0f32; c];
            for row in block.chunks(c) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            acc
        };
        if !self.1 {
            return Ok((CpuStorage::F32(sum(g)), Shape::from(c)));
        }
        let n = l.dims()[0];
        let block: usize = l.dims()[1..].iter().product();
        let block = block.max(1);
        let sums = par::map(g.len().div_ceil(block), |i| sum(par::chunk(g, block, i)));
        let mut acc: Vec<f32> = sums.concat();
        acc.resize(n * c, 0.0);
        Ok((CpuStorage::F32(acc), Shape::from((n, c))))
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

    #[test]
    fn per_sample_bias_add_matches_candle_forward_and_backward() {
        let normal = |i, shape: &[usize]| {
            let n = shape.iter().product();
            let v = crate::rng::normal_rows(3, crate::rng::Purpose::Misc, i, 1, n);
            Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
        };
        let (x, b, w) = (
            normal(0, &[3, 4, 5, 2]),
            normal(1, &[3, 2]),
            normal(2, &[3, 4, 5, 2]),
        );
        let ours = add_sample_bias(x.as_tensor(), b.as_tensor()).unwrap();
        let theirs = x
            .as_tensor()
            .broadcast_add(&b.as_tensor().reshape((3, 1, 1, 2)).unwrap())
            .unwrap();
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(&ours), v(&theirs));
        let grads = |y: &Tensor| (y * w.as_tensor()).unwrap().sum_all().unwrap().backward();
        let (g1, g2) = (grads(&ours).unwrap(), grads(&theirs).unwrap());
        for var in [&x, &b] {
            let (a, c) = (
                g1.get(var.as_tensor()).unwrap(),
                g2.get(var.as_tensor()).unwrap(),
            );
            assert_eq!(a.dims(), c.dims());
            for (a, c) in v(a).iter().zip(&v(c)) {
                assert!((a - c).abs() < 1e-4, "{a} vs {c}");
            }
        }
    }
}
