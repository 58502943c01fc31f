//! A convolution as one graph node that never builds the whole patch matrix: im2col in tiles of
//! output rows, each tile's patches multiplied while they are in the core's cache.
//!
//! With P the patch matrix (M rows of taps x C values, [`RowGather`]), W (taps C, O) and b (O,):
//! forward y = P W + b; backward dW = P^T dy and db = the column sums of dy, both summed tile by
//! tile, and dx per tile of input rows: where each input row has at most one reader per tap
//! (stride 1, no upsampling), as the patches of dy by the adjoint gather times the flipped
//! weights, one product; else as scatter(dy W^T) from the output rows that read them. Building
//! P whole costs a write and a read of the largest tensor of the layer
//! (9 x the input for a 3 x 3 kernel) and, past the allocator's mapping threshold, fresh pages
//! (page faults and zeroing) at every call; the tiles cost none of that.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::Arc;

use super::gemm::{biased_rows, matmul, matmul_add, matmul_into, Mat};
use super::{par, slice, RowGather};

/// Output rows per tile: a tile's patches (rows x taps C values) stay in the core's cache.
const TILE_ROWS: usize = 256;

/// Parts of the weight-gradient sum, each summed on one thread and then added in order: a fixed
/// number, so that the result does not depend on the thread count.
const WEIGHT_PARTS: usize = 16;

/// The convolution of the rows `x` (R, C) by the weights `w` (taps C, O) and bias `b` over the
/// patches of `gather`: (M, O). `b` is (O,), or (N, O) for one bias per sample of the output's N
/// equal blocks of rows (the U-Net's conditioning, added without a pass of its own). f32 on the
/// CPU (the caller checks).
pub fn conv_rows(x: &Tensor, w: &Tensor, b: &Tensor, gather: &Arc<RowGather>) -> Result<Tensor> {
    let (r, c) = x.dims2()?;
    let (kc, o) = w.dims2()?;
    if r != gather.source_rows()
        || c == 0
        || !kc.is_multiple_of(c)
        || !gather.len().is_multiple_of(kc / c)
    {
        candle_core::bail!(
            "conv rows: input ({r}, {c}) and weights ({kc}, {o}) do not fit a gather of {} rows \
             from {}",
            gather.len(),
            gather.source_rows()
        );
    }
    let m = gather.len() / (kc / c);
    let fits = match *b.dims() {
        [bo] => bo == o,
        [n, bo] => bo == o && n > 0 && m.is_multiple_of(n),
        _ => false,
    };
    if !fits {
        candle_core::bail!(
            "conv rows: bias of shape {:?} for {m} output rows of {o}",
            b.dims()
        );
    }
    let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
    let op = ConvRows(gather.clone());
    if x.track_op() || w.track_op() || b.track_op() {
        x.apply_op3(&w, &b, op)
    } else {
        // Sampling: no graph node.
        x.apply_op3_no_bwd(&w, &b, &op)
    }
}

struct ConvRows(Arc<RowGather>);

impl CustomOp3 for ConvRows {
    fn name(&self) -> &'static str {
        "flowpipe-conv-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = "conv rows";
        let (x, w, b) = (
            slice(s1, l1, name)?,
            slice(s2, l2, name)?,
            slice(s3, l3, name)?,
        );
        let c = l1.dims()[1];
        let (kc, o) = l2.shape().dims2()?;
        let gather = &self.0;
        let taps = kc / c;
        let m = gather.len() / taps;
        let y = biased_rows(m, o, b, TILE_ROWS, |first, dst| {
            let rows = dst.len() / o;
            let patches = gather.patches(x, c, first * taps, rows * taps);
            let patches = Mat::row_major(&patches, rows, kc);
            matmul_add(dst, patches, Mat::row_major(w, kc, o));
        });
        Ok((CpuStorage::F32(y), Shape::from((m, o))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.detach().contiguous()?;
        let biases = b.elem_count() / w.dim(1)?;
        let needs_dx = x.track_op();
        let (x, w) = (x.detach(), w.detach());
        let (c, kc) = (x.dim(1)?, w.dim(0)?);
        let grads = Grads {
            gather: self.0.clone(),
            c,
            taps: kc / c,
            biases,
        };
        // No input gradient where the input needs none (the network's first layer).
        let dx = match needs_dx {
            true => Some(g.apply_op2_no_bwd(&w, &ConvInputGrad(grads.clone()))?),
            false => None,
        };
        let dwb = x.apply_op2_no_bwd(&g, &ConvParamGrad(grads))?;
        let db = dwb.narrow(0, kc, biases)?.reshape(b.shape())?;
        Ok((dx, Some(dwb.narrow(0, 0, kc)?), Some(db)))
    }
}

/// What the backward ops of [`conv_rows`] need: the gather, C, the taps per output row and the
/// number of biases (1, or one per sample).
#[derive(Clone)]
struct Grads {
    gather: Arc<RowGather>,
    c: usize,
    taps: usize,
    biases: usize,
}

/// dx of [`conv_rows`] from dy (M, O) and W (taps C, O): (R, C). Tiles of input rows; each tile
/// multiplies the output rows that read it (a range, by the ascending inverse index) by W^T
/// and adds each reader's part into its rows. Neighbouring tiles share a few output rows, whose
/// product both compute: each input row has one writer.
struct ConvInputGrad(Grads);

impl CustomOp2 for ConvInputGrad {
    fn name(&self) -> &'static str {
        "flowpipe-conv-rows-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, w) = (
            slice(s1, l1, "conv rows grad")?,
            slice(s2, l2, "conv rows grad")?,
        );
        let (m, o) = l1.shape().dims2()?;
        let Grads {
            gather, c, taps, ..
        } = &self.0;
        let (c, taps, kc) = (*c, *taps, c * taps);
        let r = gather.source_rows();
        if let Some(adjoint) = gather.adjoint(taps) {
            let flipped = flipped_weights(w, taps, c, o);
            let flipped = Mat::row_major(&flipped, taps * o, c);
            let dx = par::fill(r * c, TILE_ROWS * c, |t, dst| {
                let rows = dst.len() / c;
                let patches = adjoint.patches(g, o, t * TILE_ROWS * taps, rows * taps);
                matmul_into(dst, Mat::row_major(&patches, rows, taps * o), flipped);
            });
            return Ok((CpuStorage::F32(dx), Shape::from((r, c))));
        }
        let per_tile = (TILE_ROWS * r / m.max(1)).clamp(8, r.max(8));
        let mut dx = par::zeros(r * c);
        if c > 0 {
            par::chunks_mut(&mut dx, per_tile * c, |t, dst| {
                let first = t * per_tile;
                let Some((lo, hi)) = gather.reader_span(first, dst.len() / c) else {
                    return;
                };
                let (lo, hi) = (lo / taps, hi / taps + 1);
                let g_rows = Mat::row_major(&g[lo * o..hi * o], hi - lo, o);
                let dp = matmul(g_rows, Mat::transposed(w, kc, o));
                for (k, row) in dst.chunks_mut(c).enumerate() {
                    for q in gather.readers_of(first + k) {
                        let (mi, tap) = (q / taps - lo, q % taps);
                        let part = &dp[mi * kc + tap * c..mi * kc + (tap + 1) * c];
                        for (d, &v) in row.iter_mut().zip(part) {
                            *d += v;
                        }
                    }
                }
            });
        }
        Ok((CpuStorage::F32(dx), Shape::from((r, c))))
    }
}

/// W (taps C, O) as the weights of the convolution that [`RowGather::adjoint`]'s patches
/// feed: (taps O, C), row s O + o, column ch holding W[(taps - 1 - s) C + ch, o].
fn flipped_weights(w: &[f32], taps: usize, c: usize, o: usize) -> Vec<f32> {
    let mut out = vec![0f32; taps * o * c];
    for s in 0..taps {
        let tap = taps - 1 - s;
        for ch in 0..c {
            for oo in 0..o {
                out[(s * o + oo) * c + ch] = w[(tap * c + ch) * o + oo];
            }
        }
    }
    out
}

/// (dW; db) of [`conv_rows`] from x (R, C) and dy (M, O): a (taps C + 1, O) tensor, dW = P^T dy
/// over the tiles of P, db the column sums of dy.
struct ConvParamGrad(Grads);

impl CustomOp2 for ConvParamGrad {
    fn name(&self) -> &'static str {
        "flowpipe-conv-rows-param-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (
            slice(s1, l1, "conv rows grad")?,
            slice(s2, l2, "conv rows grad")?,
        );
        let (m, o) = l2.shape().dims2()?;
        let Grads {
            gather,
            c,
            taps,
            biases,
        } = &self.0;
        let (c, taps, kc, biases) = (*c, *taps, c * taps, *biases);
        let rows_per_bias = m.div_ceil(biases).max(1);
        let tiles = m.div_ceil(TILE_ROWS);
        let per_part = tiles.div_ceil(WEIGHT_PARTS).max(1);
        let partials = par::map(tiles.div_ceil(per_part), |part| {
            let mut acc = vec![0f32; (kc + biases) * o];
            let (dw, db) = acc.split_at_mut(kc * o);
            for t in part * per_part..((part + 1) * per_part).min(tiles) {
                let first = t * TILE_ROWS;
                let rows = TILE_ROWS.min(m - first);
                let patches = gather.patches(x, c, first * taps, rows * taps);
                let g_tile = &g[first * o..(first + rows) * o];
                let patches_t = Mat::transposed(&patches, rows, kc);
                matmul_add(dw, patches_t, Mat::row_major(g_tile, rows, o));
                for (r, row) in g_tile.chunks(o).enumerate() {
                    let group = (first + r) / rows_per_bias;
                    for (s, &v) in db[group * o..(group + 1) * o].iter_mut().zip(row) {
                        *s += v;
                    }
                }
            }
            acc
        });
        let mut out = vec![0f32; (kc + biases) * o];
        for p in &partials {
            for (s, &v) in out.iter_mut().zip(p) {
                *s += v;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((kc + biases, o))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn values(n: usize, k: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * k).sin()).collect()
    }

    /// Against the same convolution composed of candle ops (explicit patches, matmul, bias),
    /// over more than one tile and weight part, with zero rows and rows read many times.
    #[test]
    fn tiled_convolution_and_gradients_match_the_explicit_patch_product() {
        let (r, c, taps, o) = (301, 3, 4, 5);
        let m = 1100;
        let index: Vec<u32> = (0..m * taps)
            .map(|q| ((q * 7919 + q / 5) % (r + 40)) as u32)
            .collect();
        let gather = Arc::new(RowGather::new(index.clone(), r));
        let dev = &Device::Cpu;
        let x = Var::from_vec(values(r * c, 0.37), (r, c), dev).unwrap();
        let w = Var::from_vec(values(taps * c * o, 0.91), (taps * c, o), dev).unwrap();
        let b = Var::from_vec(values(o, 1.7), o, dev).unwrap();
        let ours = conv_rows(x.as_tensor(), w.as_tensor(), b.as_tensor(), &gather).unwrap();

        let zero = Tensor::zeros((1, c), candle_core::DType::F32, dev).unwrap();
        // Every index past the source reads the appended zero row.
        let zero_row: Vec<u32> = index.iter().map(|&i| i.min(r as u32)).collect();
        let ids = Tensor::new(zero_row.as_slice(), dev).unwrap();
        let patches = Tensor::cat(&[x.as_tensor(), &zero], 0)
            .unwrap()
            .index_select(&ids, 0)
            .unwrap()
            .reshape((m, taps * c))
            .unwrap();
        let theirs = patches
            .matmul(w.as_tensor())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        let diff = |a: &Tensor, b: &Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(diff(&ours, &theirs) < 1e-5);
        let probe = Tensor::from_vec(values(m * o, 0.13), (m, o), dev).unwrap();
        let ga = (&ours * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gb = (&theirs * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &w, &b] {
            let (p, q) = (
                ga.get(v.as_tensor()).unwrap(),
                gb.get(v.as_tensor()).unwrap(),
            );
            assert_eq!(p.dims(), q.dims());
            assert!(diff(p, q) < 1e-3, "gradient differs by {}", diff(p, q));
        }
    }

    /// One bias per sample ((N, O), rows split in N equal blocks that tiles straddle) against
    /// the product plus the bias broadcast over each block: values and the gradients of x, W
    /// and the biases.
    #[test]
    fn per_sample_bias_matches_a_broadcast_add() {
        let (r, c, taps, o, n) = (120, 3, 4, 5, 4);
        let m = 1100;
        let index: Vec<u32> = (0..m * taps).map(|q| ((q * 31) % r) as u32).collect();
        let gather = Arc::new(RowGather::new(index.clone(), r));
        let dev = &Device::Cpu;
        let x = Var::from_vec(values(r * c, 0.37), (r, c), dev).unwrap();
        let w = Var::from_vec(values(taps * c * o, 0.91), (taps * c, o), dev).unwrap();
        let b = Var::from_vec(values(n * o, 1.7), (n, o), dev).unwrap();
        let ours = conv_rows(x.as_tensor(), w.as_tensor(), b.as_tensor(), &gather).unwrap();
        let ids = Tensor::new(index.as_slice(), dev).unwrap();
        let patches = x.as_tensor().index_select(&ids, 0).unwrap();
        let theirs = patches
            .reshape((m, taps * c))
            .unwrap()
            .matmul(w.as_tensor())
            .unwrap()
            .reshape((n, m / n, o))
            .unwrap()
            .broadcast_add(&b.as_tensor().unsqueeze(1).unwrap())
            .unwrap()
            .reshape((m, o))
            .unwrap();
        let probe = Tensor::from_vec(values(m * o, 0.13), (m, o), dev).unwrap();
        let grads = |y: &Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gb) = (grads(&ours), grads(&theirs));
        let diff = |a: &Tensor, b: &Tensor| {
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            d.to_scalar::<f32>().unwrap()
        };
        assert!(diff(&ours, &theirs) < 1e-5);
        for v in [&x, &w, &b] {
            let (p, q) = (ga.get(v).unwrap(), gb.get(v).unwrap());
            assert_eq!(p.dims(), q.dims());
            assert!(diff(p, q) < 1e-3, "gradient differs by {}", diff(p, q));
        }
        let wrong = Tensor::zeros((3, o), candle_core::DType::F32, dev).unwrap();
        assert!(conv_rows(x.as_tensor(), w.as_tensor(), &wrong, &gather).is_err());
    }
}
