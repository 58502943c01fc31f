//! Fused tensor operations that make CPU training faster than composing candle's primitives.
//!
//! - [`silu`]: SiLU(x) = x sigmoid(x) (Elfwing et al. 2018), the MLP's activation. candle
//!   builds its backward pass from about nine elementwise passes (neg, exp, add, recip, ...);
//!   here the forward is one pass and the backward one pass computing
//!   d SiLU / dx = s (1 + x (1 - s)), s = sigmoid(x), times the incoming gradient.
//! - [`add_bias`]: y = x + b with b broadcast over rows. candle's backward sums the gradient
//!   over the batch with a strided reduction that costs as much as the layer's matmul; here the
//!   bias gradient is a row-by-row accumulation. [`add_sample_bias`]: the same with one bias
//!   per sample (the U-Net's conditioning added to every pixel).
//! - [`gelu`], [`group_norm`] (optionally followed by SiLU), [`softmax_last_dim`], [`rms_norm`]: the same idea for the other
//!   activations and normalisations of the U-Net, the DiT and the VAE.
//! - [`RowGather`]: out[m] = x[index[m]] (or a zero row), the "im2col" gather of the
//!   convolutions, with its inverse index. candle's index_select and its backward, index_add,
//!   copy one row at a time on one thread; here patches are copied by runs of consecutive rows,
//!   and the scatter-add runs over the source rows through the inverse index (each source row
//!   has one writer: no atomics, and the same sums in the same order on every run).
//! - [`linear`]: the dense layer x W^T + b as one node (bias folded into the product);
//!   [`linear_act`]: the same followed by SiLU or GELU, still one node; [`mlp_stack`]: a whole
//!   MLP of such layers as one node, each thread carrying a tile of rows through every layer.
//! - [`norm_modulate`], [`gated_residual`]: the DiT's RMSNorm with per-sample shift and scale,
//!   and its gate, read from the stacked modulation vectors.
//! - [`attention`]: multi-head self-attention from the fused QKV projection, one node (candle
//!   runs its batched products one (sample, head) pair at a time on one thread).
//! - [`conv_rows`]: a convolution as that gather and a matrix product with bias, one graph node
//!   computed in tiles of rows, so the whole patch matrix is never built.
//!
//! The fused paths serve f32 tensors on the CPU; any other tensor goes through candle's own
//! operations, so CUDA works unchanged. Each op decides by [`fused_for`], and [`composed`] runs
//! a computation on the CPU through those same fallbacks, the code CUDA runs: a test compares
//! every architecture's outputs and gradients both ways (`nn::fallback`).

use std::cell::Cell;

use candle_core::{backend::BackendStorage, CpuStorage, DType, Layout, Result, Tensor};

mod attention;
mod bias;
mod conv;
mod gather;
mod gemm;
mod group_norm;
mod linear;
mod mlp;
mod modulate;
pub mod par;
mod pointwise;
mod rows;

pub use attention::attention;
pub use bias::{add_bias, add_sample_bias};
pub use conv::conv_rows;
pub use gather::RowGather;
pub use group_norm::{group_norm, AfterNorm};
pub use linear::{linear, linear_act, Activated};
pub use mlp::mlp_stack;
pub use modulate::{gated_residual, norm_modulate};
pub use pointwise::{gelu, silu};
pub use rows::{rms_norm, softmax_last_dim};

thread_local! {
    /// Set inside [`composed`]: the fused ops step aside on this thread.
    static COMPOSED: Cell<bool> = const { Cell::new(false) };
}

/// Whether the fused CPU kernels serve `t`: an f32 tensor on the CPU, outside [`composed`].
/// Every fused op (and the in-place AdamW step) asks this before taking its own path.
pub fn fused_for(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && !COMPOSED.with(Cell::get)
}

/// Runs `f` with every fused op on this thread replaced by candle's own operations: on the CPU,
/// the code path that CUDA (and any dtype but f32) takes. For tests and for checking a
/// suspected kernel; the backward of a graph follows the path its forward took.
pub fn composed<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            COMPOSED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(COMPOSED.with(|c| c.replace(true)));
    f()
}

/// Elements per parallel chunk of a loop over rows.
const CHUNK: usize = 1 << 14;

/// 1 / (1 + e^-x) with [`exp`].
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// e^x for f32 in plain arithmetic that the compiler vectorises (libm's `expf` is a call per
/// value, a quarter of a training step). e^x = 2^n e^r with n = round(x / ln 2) and
/// |r| <= ln 2 / 2, e^r by its Taylor polynomial of degree 7 (remainder < r^8 / 8! ~ 5e-8);
/// ln 2 split in two parts so that r is exact. Relative error below 3e-7 over the f32 range;
/// inputs are clamped to [-87, 88] (results below 1.7e-38 are flushed towards 0). NaN gives
/// NaN (the clamp alone would turn it into e^-87).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let y = exp_clamped(x);
    // A select, which vectorises like the rest.
    if x.is_nan() {
        x
    } else {
        y
    }
}

#[inline(always)]
fn exp_clamped(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer, which lands in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    #[allow(clippy::manual_clamp)] // max/min vectorise; clamp's NaN check does not
    let x = x.max(-87.0).min(88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    // 2^n from the integer in t's low bits: (n + 127) into the exponent field (integer
    // arithmetic on the bits, which vectorises where a float-to-int cast does not).
    p * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

/// Independent partial results of the reductions below. A sum or maximum carried in one
/// variable fixes the order of its operations, so the compiler keeps it scalar (measured: the
/// softmax rows of the DiT's attention were a quarter of its training step); eight partial
/// results fill one 256-bit register and are combined at the end, the same order on every run.
const LANES: usize = 8;

/// f folded over x from `init`, in [`LANES`] interleaved partial results.
#[inline(always)]
fn fold_lanes(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = f(*a, v);
        }
    }
    let tail = chunks.remainder().iter().fold(init, |a, &v| f(a, v));
    acc.iter().fold(tail, |a, &v| f(a, v))
}

/// The sum of x.
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    fold_lanes(x, 0.0, |a, v| a + v)
}

/// The largest value of x (NaNs ignored, as `f32::max` does; -inf for an empty slice).
#[inline(always)]
fn max(x: &[f32]) -> f32 {
    fold_lanes(x, f32::NEG_INFINITY, f32::max)
}

/// The dot product of a and b (over the shorter).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().fold(tail, |s, &v| s + v)
}

/// A row's softmax in place, of the scores scaled by s: row_i <- e^(s (row_i - max)) / sum_j
/// e^(s (row_j - max)) (s > 0, so the largest scaled score is s max).
#[inline(always)]
fn softmax_row(row: &mut [f32], s: f32) {
    let m = max(row);
    row.iter_mut().for_each(|v| *v = exp(s * (*v - m)));
    let inv = 1.0 / sum(row);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// f applied to every value, in parallel chunks for long slices, with no pass that zeroes the
/// output first. Indexed loops over preallocated slices vectorise; `collect` does not.
fn map1(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    par::fill(x.len(), par::FILL_CHUNK, |i, y| {
        for (y, &x) in y.iter_mut().zip(par::chunk(x, par::FILL_CHUNK, i)) {
            y.write(f(x));
        }
    })
}

/// f applied to every pair (x_i, g_i), as [`map1`].
fn map2(x: &[f32], g: &[f32], op: &str, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Vec<f32>> {
    if x.len() != g.len() {
        candle_core::bail!("{op}: {} values against {}", x.len(), g.len());
    }
    Ok(par::fill(x.len(), par::FILL_CHUNK, |i, out| {
        let (x, g) = (
            par::chunk(x, par::FILL_CHUNK, i),
            par::chunk(g, par::FILL_CHUNK, i),
        );
        for ((o, &x), &g) in out.iter_mut().zip(x).zip(g) {
            o.write(f(x, g));
        }
    }))
}

/// erf(x) by Abramowitz & Stegun 7.1.26, 1 - t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) e^(-x^2)
/// with t = 1 / (1 + p |x|), odd in x: absolute error below 2e-7 (1.5e-7 for the formula, plus
/// f32 rounding), and branch-free so that it vectorises, where libm's `erff` is a call per value.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - poly * exp(-a * a)).copysign(x)
}

/// Phi(x), the standard normal distribution function.
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `f(out_row, in_row)` over the rows of length `d` of `x`, in parallel blocks of rows.
fn map_rows(x: &[f32], d: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) -> Vec<f32> {
    let mut y = par::zeros(x.len());
    if d > 0 {
        let block = d * (CHUNK / d).max(1);
        par::chunks_mut(&mut y, block, |i, y| {
            let x = par::chunk(x, block, i);
            y.chunks_mut(d).zip(x.chunks(d)).for_each(|(y, x)| f(y, x))
        });
    }
    y
}

/// `f(out_row, a_row, b_row)` over the rows of length `d` of `a` and `b`, as [`map_rows`].
fn map_rows2(
    a: &[f32],
    b: &[f32],
    d: usize,
    op: &str,
    f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync,
) -> Result<Vec<f32>> {
    if a.len() != b.len() {
        candle_core::bail!("{op}: {} values against {}", a.len(), b.len());
    }
    let mut y = par::zeros(a.len());
    if d > 0 {
        let block = d * (CHUNK / d).max(1);
        par::chunks_mut(&mut y, block, |i, y| {
            let (a, b) = (par::chunk(a, block, i), par::chunk(b, block, i));
            for ((y, a), b) in y.chunks_mut(d).zip(a.chunks(d)).zip(b.chunks(d)) {
                f(y, a, b)
            }
        });
    }
    Ok(y)
}

/// The length of the last dimension of a layout.
fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1)
}

/// The f32 slice a contiguous CPU storage holds.
pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{op}: needs a contiguous f32 tensor, got {:?}", s.dtype()),
    }
}

/// The same, mutable, for ops that update a tensor in place.
pub(crate) fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> Result<&'a mut [f32]> {
    let dtype = s.dtype();
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("{op}: needs a contiguous f32 tensor, got {dtype:?}"),
    }
}

/// Test inputs shared by the fused ops' tests.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Device, Tensor, Var};

    /// A variable of standard normal values from stream (`seed`, `index`).
    pub fn var(seed: u64, index: u64, shape: &[usize]) -> Var {
        let n = shape.iter().product();
        let v = crate::rng::normal_rows(seed, crate::rng::Purpose::Misc, index, 1, n);
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    /// Every value of a tensor, flattened.
    pub fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The gradients of sum(y * probe).
    pub fn probe_grads(y: &Tensor, probe: &Var) -> candle_core::backprop::GradStore {
        (y * probe.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }

    /// `ours` and `theirs` agree in value (to `tol`) and in the gradients of sum(y * probe)
    /// with respect to each of `vars` (to `grad_tol`).
    pub fn assert_same_op(
        ours: &Tensor,
        theirs: &Tensor,
        probe: &Var,
        vars: &[&Var],
        (tol, grad_tol): (f32, f32),
    ) {
        assert_eq!(ours.dims(), theirs.dims());
        for (a, b) in values(ours).iter().zip(values(theirs)) {
            assert!((a - b).abs() < tol, "{a} vs {b}");
        }
        let (ga, gb) = (probe_grads(ours, probe), probe_grads(theirs, probe));
        for var in vars {
            let (a, b) = (
                ga.get(var.as_tensor()).unwrap(),
                gb.get(var.as_tensor()).unwrap(),
            );
            assert_eq!(a.elem_count(), b.elem_count());
            for (p, q) in values(a).iter().zip(values(b)) {
                assert!((p - q).abs() < grad_tol, "gradient {p} vs {q}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate_to_a_few_ulp() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-200.0) < 1e-37 && exp(200.0).is_finite());
    }

    #[test]
    fn lane_reductions_cover_every_value_at_every_length() {
        // Lengths around multiples of the lanes, so the tail and the lanes both count.
        for n in 0..=2 * LANES + 3 {
            let a: Vec<f32> = (0..n).map(|i| (i * 7 % 11) as f32 - 4.0).collect();
            let b: Vec<f32> = (0..n).map(|i| (i % 3) as f32 + 0.5).collect();
            assert_eq!(
                sum(&a),
                a.iter().map(|&v| v as f64).sum::<f64>() as f32,
                "n = {n}"
            );
            let d: f64 = a.iter().zip(&b).map(|(&x, &y)| (x * y) as f64).sum();
            assert_eq!(dot(&a, &b), d as f32, "n = {n}");
            let m = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&a), m, "n = {n}");
        }
        // The largest value last, in the tail, and alone in a lane.
        let mut x = vec![0f32; 2 * LANES + 1];
        x[2 * LANES] = 5.0;
        assert_eq!(max(&x), 5.0);
        x[3] = 6.0;
        assert_eq!(max(&x), 6.0);
    }

    #[test]
    fn softmax_row_sums_to_one_and_matches_the_formula() {
        let mut row = [1.0f32, 3.0, -2.0, 0.5, 7.0, 2.0, 2.0, -1.0, 4.0, 0.0];
        let s = 0.5f32;
        let z: f64 = row.iter().map(|&v| ((s * v) as f64).exp()).sum();
        let want: Vec<f64> = row.iter().map(|&v| ((s * v) as f64).exp() / z).collect();
        softmax_row(&mut row, s);
        for (got, want) in row.iter().zip(&want) {
            assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert!((row.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn nan_propagates_through_exp_erf_and_softmax() {
        assert!(exp(f32::NAN).is_nan() && erf(f32::NAN).is_nan() && sigmoid(f32::NAN).is_nan());
        let dev = candle_core::Device::Cpu;
        let x = candle_core::Tensor::new(&[[0f32, f32::NAN, 1.0], [0.0, 1.0, 2.0]], &dev).unwrap();
        let y = softmax_last_dim(&x)
            .unwrap()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!(y[0].iter().all(|v| v.is_nan()), "{y:?}");
        let sum: f32 = y[1].iter().sum();
        assert!(y[1].iter().all(|v| v.is_finite()) && (sum - 1.0).abs() < 1e-6);
        for f in [silu, gelu] {
            let v = f(&x).unwrap().to_vec2::<f32>().unwrap();
            assert!(
                v[0][1].is_nan() && v[1].iter().all(|v| v.is_finite()),
                "{v:?}"
            );
        }
        let v = rms_norm(&x, 1e-6)
            .unwrap()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!(v[0].iter().all(|v| v.is_nan()), "{v:?}");
        let qkv =
            candle_core::Tensor::new(&[[[f32::NAN, 0.0, 0.0], [0.0, 0.0, 1.0]]], &dev).unwrap();
        let a = attention(&qkv, 1)
            .unwrap()
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        assert!(a[0][0][0].is_nan(), "{a:?}");
    }

    /// Every fused op takes a batch of no rows: an empty result of the right shape, and an
    /// empty gradient.
    #[test]
    fn empty_tensors_pass_through_every_fused_op() {
        use candle_core::{Tensor, Var};
        let dev = candle_core::Device::Cpu;
        let var = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|i| 0.1 * i as f32 - 0.2).collect();
            Var::from_tensor(&Tensor::from_vec(v, shape, &dev).unwrap()).unwrap()
        };
        let check = |name: &str, y: Tensor, want: &[usize], x: &Var| {
            assert_eq!(y.dims(), want, "{name}");
            let grads = y.sum_all().unwrap().backward().unwrap();
            if let Some(g) = grads.get(x.as_tensor()) {
                assert_eq!(g.dims(), x.dims(), "{name} gradient");
            }
        };
        let x = var(&[0, 4]);
        let (w, b) = (var(&[3, 4]), var(&[3]));
        check("silu", silu(&x).unwrap(), &[0, 4], &x);
        check("gelu", gelu(&x).unwrap(), &[0, 4], &x);
        check("add_bias", add_bias(&x, &var(&[4])).unwrap(), &[0, 4], &x);
        let y = softmax_last_dim(&x).unwrap().unwrap();
        check("softmax", y, &[0, 4], &x);
        check(
            "rms_norm",
            rms_norm(&x, 1e-6).unwrap().unwrap(),
            &[0, 4],
            &x,
        );
        check("linear", linear(&x, &w, &b).unwrap().unwrap(), &[0, 3], &x);
        for act in [Activated::Silu, Activated::Gelu] {
            let y = linear_act(&x, &w, &b, act).unwrap().unwrap();
            check("linear_act", y, &[0, 3], &x);
        }
        let (w2, b2) = (var(&[2, 3]), var(&[2]));
        let layers = [
            (w.as_tensor(), b.as_tensor()),
            (w2.as_tensor(), b2.as_tensor()),
        ];
        let y = mlp_stack(&x, &layers, Activated::Silu).unwrap().unwrap();
        check("mlp_stack", y, &[0, 2], &x);
        let img = var(&[0, 2, 2, 4]);
        let (gamma, beta) = (var(&[4]), var(&[4]));
        for after in [AfterNorm::Identity, AfterNorm::Silu] {
            let y = group_norm(&img, &gamma, &beta, 2, 1e-5, after)
                .unwrap()
                .unwrap();
            check("group_norm", y, &[0, 2, 2, 4], &img);
        }
        let y = add_sample_bias(&img, &var(&[0, 4])).unwrap();
        check("add_sample_bias", y, &[0, 2, 2, 4], &img);
        let tokens = var(&[0, 3, 4]);
        let m = var(&[0, 12]);
        let y = norm_modulate(&tokens, &m, 0, 1e-6).unwrap();
        check("norm_modulate", y, &[0, 3, 4], &tokens);
        let y = gated_residual(&tokens, &tokens, &m, 2).unwrap();
        check("gated_residual", y, &[0, 3, 4], &tokens);
        let qkv = var(&[0, 3, 6]);
        let y = attention(&qkv, 2).unwrap().unwrap();
        check("attention", y, &[0, 3, 2], &qkv);
        let rows = var(&[0, 2]);
        let gather = std::sync::Arc::new(RowGather::new(Vec::new(), 0));
        let y = conv_rows(&rows, &var(&[2, 3]), &var(&[3]), &gather).unwrap();
        check("conv_rows", y, &[0, 3], &rows);
    }
}
