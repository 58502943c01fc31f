//! A whole MLP (dense layers with one pointwise activation between them, none after the last)
//! as one graph node, forward and backward, computed in tiles of rows that each thread carries
//! through every layer.
//!
//! Layer by layer (one node per layer, [`super::linear_act`]) each layer is a parallel loop of
//! its own with a wait for the slowest thread, and candle's backward builds every activation's
//! gradient as zeros plus the layer's result: a memset and an add over the batch per layer. Here
//! a tile of rows goes through all the layers on one thread while its activations are in cache,
//! the backward walks the layers of each tile back the same way (dz_l = da_l f'(z_l),
//! da_{l-1} = dz_l W_l, dW_l = dz_l^T a_{l-1}, db_l = the column sums of dz_l), and the tiles'
//! parameter gradients are added in tile order. The tile size is fixed, so the result does not
//! depend on the number of threads.

use std::marker::PhantomData;
use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};

use super::gemm::{matmul, matmul_add, Mat};
use super::pointwise::{GeluFn, Pointwise, SiluFn};
use super::{par, slice, Activated};

/// Rows per tile: one tile per thread at the lab's batch of 1024 on two threads; a tile's
/// activations (512 x 256 values per layer) stay in the core's cache.
const TILE_ROWS: usize = 512;

/// f(... f(x W_0^T + b_0) ...) W_L^T + b_L for `layers` [(W_l (O_l, K_l), b_l (O_l,))] (PyTorch's
/// layout), the activation f after every layer but the last, as one fused op for f32 on the
/// CPU; None where it does not apply (the caller composes the layers).
pub fn mlp_stack(
    x: &Tensor,
    layers: &[(&Tensor, &Tensor)],
    act: Activated,
) -> Result<Option<Tensor>> {
    let Some(widths) = widths(x, layers)? else {
        return Ok(None);
    };
    // The parameters as one flat tensor: [W_0, b_0, W_1, b_1, ...] (a copy of the small weights;
    // its backward hands each parameter its slice of the one gradient).
    let mut parts = Vec::with_capacity(2 * layers.len());
    for (w, b) in layers {
        parts.push(w.flatten_all()?);
        parts.push((*b).clone());
    }
    let packed = Tensor::cat(&parts, 0)?;
    let x = x.contiguous()?;
    let train = x.track_op() || packed.track_op();
    let y = match act {
        Activated::Silu => run::<SiluFn>(&x, &packed, widths, train)?,
        Activated::Gelu => run::<GeluFn>(&x, &packed, widths, train)?,
    };
    Ok(Some(y))
}

fn run<P: Pointwise>(
    x: &Tensor,
    packed: &Tensor,
    widths: Vec<usize>,
    train: bool,
) -> Result<Tensor> {
    let op = MlpStack::<P> {
        widths,
        kept: OnceLock::new(),
        keep: train,
        act: PhantomData,
    };
    match train {
        true => x.apply_op2(packed, op),
        false => x.apply_op2_no_bwd(packed, &op),
    }
}

/// [K_0, O_0, ..., O_L] when the fused op serves x and `layers`: f32 on the CPU, x (M, K_0),
/// each W_l (O_l, K_l) with K_l = O_(l-1), b_l (O_l,).
fn widths(x: &Tensor, layers: &[(&Tensor, &Tensor)]) -> Result<Option<Vec<usize>>> {
    let f32_cpu = |t: &Tensor| super::fused_for(t);
    if layers.is_empty() || !f32_cpu(x) || x.rank() != 2 {
        return Ok(None);
    }
    let mut widths = vec![x.dim(1)?];
    for (w, b) in layers {
        let fits = f32_cpu(w)
            && f32_cpu(b)
            && w.rank() == 2
            && w.dim(1)? == *widths.last().expect("one width")
            && b.dims() == [w.dim(0)?];
        if !fits {
            return Ok(None);
        }
        widths.push(w.dim(0)?);
    }
    Ok(Some(widths))
}

/// What the forward keeps of one tile for the backward: z_l, the pre-activation, and a_l =
/// f(z_l) of every hidden layer.
struct Kept {
    z: Vec<Vec<f32>>,
    a: Vec<Vec<f32>>,
}

struct MlpStack<P> {
    widths: Vec<usize>,
    /// Per tile, set by the forward of a node that trains.
    kept: OnceLock<Vec<Kept>>,
    keep: bool,
    act: PhantomData<P>,
}

impl<P> MlpStack<P> {
    fn layers(&self) -> usize {
        self.widths.len() - 1
    }

    /// Where layer l's parameters start in the packed ones (W_l (O_l, K_l), then b_l).
    fn offset(&self, l: usize) -> usize {
        (0..l)
            .map(|j| (self.widths[j] + 1) * self.widths[j + 1])
            .sum()
    }

    /// (W_l, b_l) of layer l in the packed parameters.
    fn params<'a>(&self, packed: &'a [f32], l: usize) -> (&'a [f32], &'a [f32]) {
        let (offset, k, o) = (self.offset(l), self.widths[l], self.widths[l + 1]);
        let w = &packed[offset..offset + o * k];
        (w, &packed[offset + o * k..offset + o * k + o])
    }

    fn packed_len(&self) -> usize {
        self.offset(self.layers())
    }
}

/// x (rows, K) W^T + b for W (O, K): (rows, O), rows starting as the bias.
fn dense(x: &[f32], rows: usize, (w, b): (&[f32], &[f32])) -> Vec<f32> {
    let (o, k) = (b.len(), w.len() / b.len().max(1));
    let mut z: Vec<f32> = b.iter().copied().cycle().take(rows * o).collect();
    matmul_add(&mut z, Mat::row_major(x, rows, k), Mat::transposed(w, o, k));
    z
}

impl<P: Pointwise> MlpStack<P> {
    /// One tile of rows of x through every layer: its output rows and what the backward needs.
    fn forward_tile(&self, x: &[f32], packed: &[f32]) -> (Vec<f32>, Kept) {
        let rows = x.len() / self.widths[0];
        let hidden = self.layers() - 1;
        let mut kept = Kept {
            z: Vec::with_capacity(hidden),
            a: Vec::with_capacity(hidden),
        };
        for l in 0..hidden {
            let input = kept.a.last().map_or(x, |a| &a[..]);
            let z = dense(input, rows, self.params(packed, l));
            let a: Vec<f32> = z.iter().map(|&v| P::f(v)).collect();
            kept.z.push(z);
            kept.a.push(a);
        }
        let input = kept.a.last().map_or(x, |a| &a[..]);
        let y = dense(input, rows, self.params(packed, hidden));
        (y, kept)
    }

    /// One tile's backward from dy (its rows of the output's gradient): the packed parameter
    /// gradient of this tile's rows, and dx when `input_grad`.
    fn backward_tile(
        &self,
        x: &[f32],
        packed: &[f32],
        kept: &Kept,
        dy: &[f32],
        input_grad: bool,
    ) -> (Vec<f32>, Option<Vec<f32>>) {
        let rows = x.len() / self.widths[0];
        let mut grads = vec![0f32; self.packed_len()];
        let mut dz = dy.to_vec();
        for l in (0..self.layers()).rev() {
            let (k, o) = (self.widths[l], self.widths[l + 1]);
            let (w, _) = self.params(packed, l);
            let input = if l == 0 { x } else { &kept.a[l - 1][..] };
            let (dw, rest) = grads[self.offset(l)..].split_at_mut(o * k);
            matmul_add(
                dw,
                Mat::transposed(&dz, rows, o),
                Mat::row_major(input, rows, k),
            );
            let db = &mut rest[..o];
            for row in dz.chunks(o) {
                for (s, &v) in db.iter_mut().zip(row) {
                    *s += v;
                }
            }
            if l == 0 && !input_grad {
                return (grads, None);
            }
            let mut da = matmul(Mat::row_major(&dz, rows, o), Mat::row_major(w, o, k));
            if l == 0 {
                return (grads, Some(da));
            }
            for (d, &z) in da.iter_mut().zip(&kept.z[l - 1]) {
                *d *= P::df(z);
            }
            dz = da;
        }
        (grads, None)
    }
}

/// The CPU storage under a tensor's storage.
fn cpu(s: &candle_core::Storage) -> Result<&CpuStorage> {
    match s {
        candle_core::Storage::Cpu(c) => Ok(c),
        _ => candle_core::bail!("mlp stack: CPU tensors only"),
    }
}

impl<P: Pointwise> CustomOp2 for MlpStack<P> {
    fn name(&self) -> &'static str {
        "flowpipe-mlp-stack"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, packed) = (slice(s1, l1, "mlp stack")?, slice(s2, l2, "mlp stack")?);
        let (m, k) = l1.shape().dims2()?;
        if k != self.widths[0] || packed.len() != self.packed_len() {
            candle_core::bail!(
                "mlp stack: input ({m}, {k}) and {} parameters for widths {:?}",
                packed.len(),
                self.widths
            );
        }
        let tiles = m.div_ceil(TILE_ROWS);
        let results = par::map(tiles, |t| {
            let rows = TILE_ROWS.min(m - t * TILE_ROWS);
            let first = t * TILE_ROWS;
            self.forward_tile(&x[first * k..(first + rows) * k], packed)
        });
        let o = *self.widths.last().expect("one width");
        let mut y = Vec::with_capacity(m * o);
        let mut kept = Vec::with_capacity(tiles);
        for (tile_y, tile_kept) in results {
            y.extend_from_slice(&tile_y);
            kept.push(tile_kept);
        }
        if self.keep {
            // Set once: a node's forward runs once.
            let _ = self.kept.set(kept);
        }
        Ok((CpuStorage::F32(y), Shape::from((m, o))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Some(kept) = self.kept.get() else {
            candle_core::bail!("mlp stack: backward before forward")
        };
        let grad = grad.detach().contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ps, pl) = packed.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (xv, pv) = (
            slice(cpu(&xs)?, xl, "mlp stack")?,
            slice(cpu(&ps)?, pl, "mlp stack")?,
        );
        let g = slice(cpu(&gs)?, gl, "mlp stack")?;
        let (m, k) = x.dims2()?;
        let o = *self.widths.last().expect("one width");
        let input_grad = x.track_op();
        if m == 0 {
            // No rows, no tiles: zero gradients of the right shapes.
            let dp = Tensor::zeros(pv.len(), DType::F32, &Device::Cpu)?;
            let dx = input_grad.then(|| Tensor::zeros((0, k), DType::F32, &Device::Cpu));
            return Ok((dx.transpose()?, Some(dp)));
        }
        let results = par::map(kept.len(), |t| {
            let first = t * TILE_ROWS;
            let rows = TILE_ROWS.min(m - first);
            let dy = &g[first * o..(first + rows) * o];
            self.backward_tile(
                &xv[first * k..(first + rows) * k],
                pv,
                &kept[t],
                dy,
                input_grad,
            )
        });
        let mut tiles = results.into_iter();
        let (mut dp, first_dx) = tiles.next().expect("at least one tile");
        let mut dx = first_dx.map(|d| {
            let mut all = Vec::with_capacity(m * k);
            all.extend_from_slice(&d);
            all
        });
        for (part, part_dx) in tiles {
            for (s, v) in dp.iter_mut().zip(part) {
                *s += v;
            }
            if let (Some(all), Some(d)) = (dx.as_mut(), part_dx) {
                all.extend_from_slice(&d);
            }
        }
        let len = dp.len();
        let dp = Tensor::from_vec(dp, len, &Device::Cpu)?;
        let dx = dx
            .map(|d| Tensor::from_vec(d, (m, k), &Device::Cpu))
            .transpose()?;
        Ok((dx, Some(dp)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_same_op, var};
    use super::*;

    /// The fused stack against the same layers composed of candle ops, values and the gradients
    /// of the input and of every weight and bias, over more than one tile and a short last tile.
    #[test]
    fn fused_stack_matches_the_composed_layers() {
        let (m, widths) = (TILE_ROWS + 37, [3, 16, 16, 2]);
        let x = var(0, 1, &[m, widths[0]]);
        let params: Vec<(candle_core::Var, candle_core::Var)> = (0..widths.len() - 1)
            .map(|l| {
                let w = var(0, 10 + l as u64, &[widths[l + 1], widths[l]]);
                let b = var(0, 20 + l as u64, &[widths[l + 1]]);
                (w, b)
            })
            .collect();
        let layers: Vec<(&Tensor, &Tensor)> = params
            .iter()
            .map(|(w, b)| (w.as_tensor(), b.as_tensor()))
            .collect();
        let probe = var(0, 30, &[m, widths[widths.len() - 1]]);
        let mut vars = vec![&x];
        for (w, b) in &params {
            vars.push(w);
            vars.push(b);
        }
        for act in [Activated::Silu, Activated::Gelu] {
            let ours = mlp_stack(x.as_tensor(), &layers, act).unwrap().unwrap();
            let mut h = x.as_tensor().clone();
            for (l, (w, b)) in layers.iter().enumerate() {
                h = h.matmul(&w.t().unwrap()).unwrap().broadcast_add(b).unwrap();
                if l + 1 < layers.len() {
                    h = match act {
                        Activated::Silu => h.silu().unwrap(),
                        Activated::Gelu => h.gelu_erf().unwrap(),
                    };
                }
            }
            assert_same_op(&ours, &h, &probe, &vars, (1e-4, 1e-3));
        }
    }

    /// Layers that do not chain, or another dtype, are not served.
    #[test]
    fn shapes_that_do_not_chain_are_left_to_the_caller() {
        let x = var(0, 1, &[4, 3]);
        let (w, b) = (var(0, 2, &[5, 4]), var(0, 3, &[5]));
        let layers = [(w.as_tensor(), b.as_tensor())];
        assert!(mlp_stack(x.as_tensor(), &layers, Activated::Silu)
            .unwrap()
            .is_none());
        let x64 = x.as_tensor().to_dtype(DType::F64).unwrap();
        assert!(mlp_stack(&x64, &layers, Activated::Silu).unwrap().is_none());
    }
}
