//! Symmetric eigendecomposition by the cyclic Jacobi method (Jacobi 1846; Golub & Van Loan,
//! "Matrix Computations", section 8.5), in f64, for the matrix square roots of the Frechet
//! distance.
//!
//! Each rotation J(p, q, phi) zeroes the off-diagonal entry a_pq of A <- J^T A J: with
//! theta = (a_qq - a_pp) / (2 a_pq), t = tan phi is the smaller root of t^2 + 2 t theta - 1 = 0,
//! t = sign(theta) / (|theta| + sqrt(theta^2 + 1)), c = 1 / sqrt(t^2 + 1), s = t c. Sweeping every
//! pair (p, q) in turn converges quadratically; the product of the rotations holds the
//! eigenvectors. O(n^3) per sweep, fine for the 128 x 128 covariances of classifier features.

use ndarray::Array2;

/// Eigenvalues and eigenvectors of a symmetric `a` (n, n): `(lambda (n,), V (n, n))` with
/// A = V diag(lambda) V^T, eigenvector i in column i. The upper triangle is used as given; a
/// slightly asymmetric input (rounding) is symmetrised first.
pub fn symmetric_eigen(a: &Array2<f64>) -> (Vec<f64>, Array2<f64>) {
    let n = a.nrows();
    assert_eq!(n, a.ncols(), "eigen: the matrix must be square");
    // Row-major working copies: m (the rotated matrix) and v (the rotations' product).
    let mut m: Vec<f64> = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            m[i * n + j] = 0.5 * (a[[i, j]] + a[[j, i]]);
        }
    }
    let mut v = vec![0.0; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    let total: f64 = m.iter().map(|x| x * x).sum();
    for _sweep in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j] * m[i * n + j])
            .sum();
        if off <= 1e-30 * total || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (kp, kq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * kp - s * kq;
                    m[k * n + q] = s * kp + c * kq;
                }
                for k in 0..n {
                    let (pk, qk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * pk - s * qk;
                    m[q * n + k] = s * pk + c * qk;
                }
                for k in 0..n {
                    let (kp, kq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * kp - s * kq;
                    v[k * n + q] = s * kp + c * kq;
                }
            }
        }
    }
    let values = (0..n).map(|i| m[i * n + i]).collect();
    (
        values,
        Array2::from_shape_vec((n, n), v).expect("n x n values"),
    )
}

/// The symmetric positive semi-definite square root V diag(sqrt(max(lambda, 0))) V^T of a
/// symmetric `a` (n, n) (negative eigenvalues from rounding are clipped to 0).
pub fn sqrt_psd(a: &Array2<f64>) -> Array2<f64> {
    let (values, v) = symmetric_eigen(a);
    let mut scaled = v.clone();
    for (mut col, &l) in scaled.columns_mut().into_iter().zip(&values) {
        col *= l.max(0.0).sqrt();
    }
    scaled.dot(&v.t())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{self, Purpose};

    fn random_spd(n: usize, seed: u64) -> Array2<f64> {
        let g: Vec<f64> = rng::normal_rows(seed, Purpose::Misc, 0, n, n)
            .into_iter()
            .map(f64::from)
            .collect();
        let g = Array2::from_shape_vec((n, n), g).unwrap();
        g.dot(&g.t()) / n as f64
    }

    fn max_abs(a: &Array2<f64>) -> f64 {
        a.iter().fold(0.0, |m, v| m.max(v.abs()))
    }

    #[test]
    fn eigen_reconstructs_the_matrix_with_orthonormal_vectors() {
        let a = random_spd(40, 1);
        let (l, v) = symmetric_eigen(&a);
        let mut vl = v.clone();
        for (mut c, &x) in vl.columns_mut().into_iter().zip(&l) {
            c *= x;
        }
        assert!(max_abs(&(vl.dot(&v.t()) - &a)) < 1e-10);
        assert!(max_abs(&(v.t().dot(&v) - Array2::<f64>::eye(40))) < 1e-10);
        // The trace is the sum of the eigenvalues.
        let tr: f64 = a.diag().sum();
        assert!((l.iter().sum::<f64>() - tr).abs() < 1e-10);
    }

    #[test]
    fn square_root_squares_back_and_knows_closed_forms() {
        let a = random_spd(30, 2);
        let s = sqrt_psd(&a);
        assert!(max_abs(&(s.dot(&s) - &a)) < 1e-9);
        let d = Array2::from_diag(&ndarray::arr1(&[4.0, 9.0, 0.25]));
        let want = Array2::from_diag(&ndarray::arr1(&[2.0, 3.0, 0.5]));
        assert!(max_abs(&(sqrt_psd(&d) - want)) < 1e-12);
        // [[2, 1], [1, 2]] has eigenvalues 1 and 3.
        let (mut l, _) = symmetric_eigen(&ndarray::arr2(&[[2.0, 1.0], [1.0, 2.0]]));
        l.sort_by(f64::total_cmp);
        assert!((l[0] - 1.0).abs() < 1e-12 && (l[1] - 3.0).abs() < 1e-12);
    }
}
