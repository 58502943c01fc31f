//! Couplings of the training pairs (x_0, z): independent, or minibatch optimal transport.
//!
//! Flow matching needs any coupling q(x_0, z) whose marginals are p_init and p_data: the
//! marginal velocity of x_t = (1 - t) x_0 + t z (or alpha_t z + beta_t x_0) still carries p_init
//! to p_data (notes section 3.2; the marginalisation trick holds for any such coupling).
//! `independent` draws x_0 and z apart, q = p_init x p_data (the notes' choice). `ot` pairs the
//! B draws of a minibatch by optimal transport (Tong et al. 2023, "Improving and generalizing
//! flow-based generative models with minibatch optimal transport"; Pooladian et al. 2023,
//! "Multisample flow matching"): with C_jk = || z_j - x0_k ||^2 over all coordinates of a
//! sample, it finds
//!
//!   pi* = argmin_{pi in Pi(1/B, 1/B)} sum_jk pi_jk C_jk,
//!
//! whose minimisers include a permutation sigma (Birkhoff): sum_j || z_j - x0_sigma(j) ||^2 is
//! least. The pairs then cross less, the marginal paths are straighter and few ODE steps
//! sample well. Only x_0 is reordered: each z keeps its row (and label).
//!
//! - B <= [`EXACT_MAX`]: the exact assignment, by shortest augmenting paths with dual
//!   potentials (the Hungarian method in the Jonker-Volgenant form, O(B^3)), [`assign`].
//! - Larger B: Sinkhorn's entropic plan (Cuturi 2013, "Sinkhorn distances"),
//!   pi_eps = argmin <pi, C> - eps H(pi) = diag(a) K diag(b) with K = exp(-C / eps), by
//!   alternately scaling its rows and columns to 1/B ([`sinkhorn`]); eps = [`SINKHORN_REG`]
//!   times the spread of the costs that the plan sees ([`cost_scale`]: the root mean square of
//!   -2 <z_j - mean z, x0_k - mean x0>), so the plan depends neither on the data's scale nor on
//!   how far the data lie from the source (the largest cost would blur a far cloud's plan to
//!   the independent one). Each data row j
//!   then draws its x_0 from row j of the plan, pi_jk / sum_k pi_jk, with one uniform from the
//!   step's stream (seed, Coupling, step) ([`draw_from_plan`]). Drawing (as Tong et al. do),
//!   rather than taking the row's argmax, keeps the x_0 marginal close to p_init: the argmax
//!   of a blurred plan sends many rows to the same central x_0.
//!
//! Costs are in f64; ties go to the lowest index, so the pairing is a deterministic function
//! of the batch and the step's stream.

use rand::Rng;

/// The largest minibatch paired exactly; above it, Sinkhorn.
pub const EXACT_MAX: usize = 256;
/// Sinkhorn's eps as a fraction of the batch's [`cost_scale`].
pub const SINKHORN_REG: f64 = 0.02;
/// Sinkhorn stops when every row sum is within this relative error of 1/B ...
pub const SINKHORN_TOL: f64 = 1e-3;
/// ... or after this many row-and-column scalings.
pub const SINKHORN_ITERS: usize = 500;

/// How the x_0 of a minibatch are paired with its data rows z.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Coupling {
    /// x_0 and z drawn independently (the notes' coupling)
    #[default]
    Independent,
    /// minibatch optimal transport: x_0 reordered to minimise sum_j ||z_j - x0_j||^2
    Ot,
}

impl Coupling {
    pub fn name(self) -> &'static str {
        match self {
            Coupling::Independent => "independent",
            Coupling::Ot => "ot",
        }
    }

    pub fn parse(s: &str) -> Option<Coupling> {
        match s {
            "independent" => Some(Coupling::Independent),
            "ot" => Some(Coupling::Ot),
            _ => None,
        }
    }

    /// The x_0 rows (B rows of `dim` values, row-major) paired with the data rows `z` (same
    /// layout): unchanged when independent; for OT, row j of the result is the x_0 paired with
    /// z_j. `rng` is drawn from only by Sinkhorn (B > [`EXACT_MAX`]).
    pub fn pair(self, z: &[f32], x0: Vec<f32>, dim: usize, rng: &mut impl Rng) -> Vec<f32> {
        if self == Coupling::Independent || dim == 0 {
            return x0;
        }
        let n = z.len() / dim;
        let cost = sq_dists(z, &x0, dim);
        let pick = if n <= EXACT_MAX {
            assign(&cost, n)
        } else {
            draw_from_plan(&sinkhorn(&cost, n, SINKHORN_REG, SINKHORN_ITERS), n, rng)
        };
        let mut out = Vec::with_capacity(x0.len());
        for &k in &pick {
            out.extend_from_slice(&x0[k * dim..(k + 1) * dim]);
        }
        out
    }
}

impl crate::train::checkpoint::FlagValue for Coupling {
    fn flag_text(&self) -> String {
        self.name().to_string()
    }
}

/// C_jk = || z_j - x0_k ||^2: (B, B) row-major, rows the data, columns the x_0.
pub fn sq_dists(z: &[f32], x0: &[f32], dim: usize) -> Vec<f64> {
    let n = z.len() / dim;
    let m = x0.len() / dim;
    let mut c = Vec::with_capacity(n * m);
    for zj in z.chunks_exact(dim) {
        for xk in x0.chunks_exact(dim) {
            let d: f64 = zj
                .iter()
                .zip(xk)
                .map(|(&a, &b)| {
                    let d = a as f64 - b as f64;
                    d * d
                })
                .sum();
            c.push(d);
        }
    }
    c
}

/// The minimum-cost assignment of the n x n `cost` (row-major): `col[j]` is row j's column,
/// a permutation minimising sum_j cost[j, col[j]].
///
/// Rows are added one at a time; each finds a shortest augmenting path (Dijkstra on reduced
/// costs c_jk - u_j - v_k >= 0) from itself to a free column and flips it, then the potentials
/// u, v are updated so that reduced costs stay non-negative and vanish on matched pairs (LP
/// duality: the final matching is optimal). O(n^3).
pub fn assign(cost: &[f64], n: usize) -> Vec<usize> {
    // 1-based internally: column 0 is a virtual column holding the row being added.
    let mut u = vec![0f64; n + 1];
    let mut v = vec![0f64; n + 1];
    let mut row_of = vec![0usize; n + 1];
    let mut prev = vec![0usize; n + 1];
    let mut dist = vec![0f64; n + 1];
    let mut done = vec![false; n + 1];
    for r in 1..=n {
        row_of[0] = r;
        let mut col = 0usize;
        dist.fill(f64::INFINITY);
        done.fill(false);
        loop {
            done[col] = true;
            let i = row_of[col];
            let (mut delta, mut next) = (f64::INFINITY, 0usize);
            let (row, ui) = (&cost[(i - 1) * n..i * n], u[i]);
            for k in 1..=n {
                if done[k] {
                    continue;
                }
                let reduced = row[k - 1] - ui - v[k];
                if reduced < dist[k] {
                    dist[k] = reduced;
                    prev[k] = col;
                }
                if dist[k] < delta {
                    delta = dist[k];
                    next = k;
                }
            }
            for k in 0..=n {
                if done[k] {
                    u[row_of[k]] += delta;
                    v[k] -= delta;
                } else {
                    dist[k] -= delta;
                }
            }
            col = next;
            if col == 0 || row_of[col] == 0 {
                break;
            }
        }
        // Flip the path back to the virtual column.
        while col != 0 {
            let p = prev[col];
            row_of[col] = row_of[p];
            col = p;
        }
    }
    let mut out = vec![0usize; n];
    for k in 1..=n {
        if row_of[k] > 0 {
            out[row_of[k] - 1] = k - 1;
        }
    }
    out
}

/// Sinkhorn's entropic plan for the n x n `cost` with uniform marginals 1/n: (n, n) row-major,
/// pi = diag(a) K diag(b), K = exp(-cost / eps), eps = `reg` * [`cost_scale`]; at most `iters`
/// scalings (fewer when the rows are within [`SINKHORN_TOL`]; the columns are always exact).
/// Each row of K is divided by its largest entry (a row constant, which the plan absorbs), so
/// that small eps neither overflows nor empties a row.
pub fn sinkhorn(cost: &[f64], n: usize, reg: f64, iters: usize) -> Vec<f64> {
    let target = 1.0 / n as f64;
    let scale = cost_scale(cost, n);
    if scale <= 0.0 {
        return vec![target / n as f64; n * n];
    }
    let eps = reg * scale;
    let mut k = Vec::with_capacity(n * n);
    for row in cost.chunks_exact(n) {
        let min = row.iter().copied().fold(f64::INFINITY, f64::min);
        k.extend(row.iter().map(|&c| (-(c - min) / eps).exp()));
    }
    let (mut a, mut b) = (vec![1f64; n], vec![1f64; n]);
    let mut kb = vec![0f64; n];
    for _ in 0..iters {
        // Rows: a_j = (1/n) / (K b)_j.
        for j in 0..n {
            kb[j] = dot(&k[j * n..(j + 1) * n], &b);
            a[j] = target / kb[j].max(f64::MIN_POSITIVE);
        }
        // Columns: b_l = (1/n) / (K^T a)_l.
        let mut kta = vec![0f64; n];
        for j in 0..n {
            for (s, &kjl) in kta.iter_mut().zip(&k[j * n..(j + 1) * n]) {
                *s += a[j] * kjl;
            }
        }
        for (bl, s) in b.iter_mut().zip(&kta) {
            *bl = target / s.max(f64::MIN_POSITIVE);
        }
        // After the column step the columns are exact; stop when the rows are too.
        let worst = (0..n)
            .map(|j| (a[j] * dot(&k[j * n..(j + 1) * n], &b) / target - 1.0).abs())
            .fold(0f64, f64::max);
        if worst < SINKHORN_TOL {
            break;
        }
    }
    let mut plan = k;
    for j in 0..n {
        for (p, &bl) in plan[j * n..(j + 1) * n].iter_mut().zip(&b) {
            *p *= a[j] * bl;
        }
    }
    plan
}

/// The scale of the part of the (n, n) `cost` that a plan with fixed marginals sees: the root
/// mean square of C_jk - mean_k C_jk - mean_j C_jk + mean C, which for squared distances is
/// -2 <z_j - mean z, x0_k - mean x0> (adding a constant to a row or a column moves every
/// coupling's cost alike). Unlike max C it ignores how far apart the two clouds are.
pub fn cost_scale(cost: &[f64], n: usize) -> f64 {
    let rows: Vec<f64> = cost
        .chunks_exact(n)
        .map(|r| r.iter().sum::<f64>() / n as f64)
        .collect();
    let mut cols = vec![0f64; n];
    for r in cost.chunks_exact(n) {
        for (c, &x) in cols.iter_mut().zip(r) {
            *c += x / n as f64;
        }
    }
    let all = rows.iter().sum::<f64>() / n as f64;
    let mut sq = 0.0;
    for (r, row) in rows.iter().zip(cost.chunks_exact(n)) {
        for (c, &x) in cols.iter().zip(row) {
            sq += (x - r - c + all).powi(2);
        }
    }
    (sq / (n * n) as f64).sqrt()
}

fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// One column per row of the (n, n) `plan`, drawn with probability pi_jk / sum_k pi_jk from one
/// uniform of `rng` per row (rows in order). Columns may repeat.
pub fn draw_from_plan(plan: &[f64], n: usize, rng: &mut impl Rng) -> Vec<usize> {
    plan.chunks_exact(n)
        .map(|row| {
            let total: f64 = row.iter().sum();
            let mut left = rng.random::<f64>() * total;
            for (k, &p) in row.iter().enumerate() {
                left -= p;
                if left < 0.0 {
                    return k;
                }
            }
            // Rounding: the last column with mass.
            row.iter().rposition(|&p| p > 0.0).unwrap_or(0)
        })
        .collect()
}

/// The transport cost of an assignment: sum_j cost[j, col[j]].
pub fn assignment_cost(cost: &[f64], n: usize, col: &[usize]) -> f64 {
    col.iter().enumerate().map(|(j, &k)| cost[j * n + k]).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{self, Purpose};

    fn random_cost(n: usize, seed: u64) -> Vec<f64> {
        let mut c = vec![0f32; n * n];
        rng::fill_uniform(
            &mut rng::stream(seed, Purpose::Misc, n as u64),
            &mut c,
            0.0,
            10.0,
        );
        c.into_iter().map(f64::from).collect()
    }

    /// The least cost over all n! permutations (Heap's algorithm).
    fn brute_force(cost: &[f64], n: usize) -> f64 {
        let mut perm: Vec<usize> = (0..n).collect();
        let mut best = assignment_cost(cost, n, &perm);
        let mut c = vec![0usize; n];
        let mut i = 0;
        while i < n {
            if c[i] < i {
                perm.swap(if i % 2 == 0 { 0 } else { c[i] }, i);
                best = best.min(assignment_cost(cost, n, &perm));
                c[i] += 1;
                i = 0;
            } else {
                c[i] = 0;
                i += 1;
            }
        }
        best
    }

    #[test]
    fn the_exact_assignment_costs_the_brute_force_minimum() {
        for n in 1..=7 {
            for seed in 0..12 {
                let cost = random_cost(n, seed);
                let col = assign(&cost, n);
                let mut seen = col.clone();
                seen.sort();
                assert_eq!(seen, (0..n).collect::<Vec<_>>(), "a permutation");
                let (got, want) = (assignment_cost(&cost, n, &col), brute_force(&cost, n));
                assert!(
                    (got - want).abs() < 1e-9,
                    "n {n} seed {seed}: {got} vs {want}"
                );
            }
        }
        // Ties (all costs equal) and integer costs with many optima.
        assert_eq!(assign(&[1.0; 9], 3), vec![0, 1, 2]);
        let int: Vec<f64> = random_cost(6, 99).iter().map(|c| c.floor()).collect();
        let got = assignment_cost(&int, 6, &assign(&int, 6));
        assert_eq!(got, brute_force(&int, 6));
    }

    #[test]
    fn sinkhorn_has_uniform_marginals_and_tends_to_the_exact_cost() {
        let n = 6;
        let cost = random_cost(n, 5);
        let exact = brute_force(&cost, n) / n as f64;
        let mut last_gap = f64::INFINITY;
        for reg in [0.3, 0.1, 0.03, 0.01] {
            let plan = sinkhorn(&cost, n, reg, 100_000);
            for j in 0..n {
                let row: f64 = plan[j * n..(j + 1) * n].iter().sum();
                let col: f64 = (0..n).map(|i| plan[i * n + j]).sum();
                assert!(
                    (row * n as f64 - 1.0).abs() < 2.0 * SINKHORN_TOL,
                    "reg {reg}: row {row}"
                );
                assert!(
                    (col * n as f64 - 1.0).abs() < 1e-9,
                    "reg {reg}: column {col}"
                );
            }
            let cost_eps: f64 = plan.iter().zip(&cost).map(|(p, c)| p * c).sum();
            let gap = cost_eps - exact;
            // The entropic plan is feasible, so it costs at least the optimum (up to the
            // marginal tolerance), and its excess shrinks with eps.
            assert!(
                gap > -1e-2 * exact,
                "reg {reg}: {cost_eps} below the optimum {exact}"
            );
            assert!(gap < last_gap, "reg {reg}: gap {gap} after {last_gap}");
            last_gap = gap;
        }
        assert!(
            last_gap < 0.02 * exact,
            "reg 0.01: gap {last_gap} of {exact}"
        );
    }

    #[test]
    fn draws_follow_the_plan_rows() {
        // Row 0 puts 3/4 of its mass on column 1; row 1 all of it on column 0.
        let plan = [0.25, 0.75, 1.0, 0.0];
        let mut s = rng::stream(1, Purpose::Coupling, 0);
        let mut ones = 0;
        for _ in 0..4000 {
            let pick = draw_from_plan(&plan, 2, &mut s);
            assert_eq!(pick[1], 0);
            ones += pick[0];
        }
        let rate = ones as f64 / 4000.0;
        assert!(
            (rate - 0.75).abs() < 4.0 * (0.75f64 * 0.25 / 4000.0).sqrt(),
            "{rate}"
        );
    }

    /// N(m, s^2 I) data far from the N(0, I) source: OT pairs are much shorter than independent
    /// ones (E ||z - x0||^2 = ||m||^2 + d (1 + s^2) independently; OT removes most of the
    /// d (1 + s^2) part, which is the spread the pairing can match).
    fn pair_lengths(b: usize, dim: usize) -> (f64, f64) {
        let mut z = vec![0f32; b * dim];
        rng::fill_normal(&mut rng::stream(2, Purpose::Data, 0), &mut z);
        for v in z.iter_mut() {
            *v = 6.0 + 0.5 * *v;
        }
        let mut x0 = vec![0f32; b * dim];
        rng::fill_normal(&mut rng::stream(2, Purpose::Noise, 0), &mut x0);
        let mean_len = |x: &[f32]| {
            let c = sq_dists(&z, x, dim);
            (0..b).map(|j| c[j * b + j]).sum::<f64>() / b as f64
        };
        let mut s = rng::stream(2, Purpose::Coupling, 0);
        let paired = Coupling::Ot.pair(&z, x0.clone(), dim, &mut s);
        let mut sorted_in = x0.chunks(dim).map(|r| r.to_vec()).collect::<Vec<_>>();
        let mut sorted_out = paired.chunks(dim).map(|r| r.to_vec()).collect::<Vec<_>>();
        if b <= EXACT_MAX {
            let key = |a: &Vec<f32>, b: &Vec<f32>| a.partial_cmp(b).unwrap();
            sorted_in.sort_by(key);
            sorted_out.sort_by(key);
            assert_eq!(sorted_in, sorted_out, "the exact coupling permutes x_0");
        }
        (mean_len(&x0), mean_len(&paired))
    }

    #[test]
    fn ot_pairs_of_a_far_gaussian_are_shorter() {
        for (b, dim) in [(256, 2), (64, 16), (EXACT_MAX + 88, 2)] {
            let (indep, ot) = pair_lengths(b, dim);
            // ||z - x0||^2 = ||m + w||^2 with w ~ N(0, 1.25 I): mean ||m||^2 + 1.25 D,
            // variance 4 * 1.25 ||m||^2 + 2 * 1.25^2 D.
            let (m2, spread) = (36.0 * dim as f64, 1.25 * dim as f64);
            let se = ((5.0 * m2 + 2.0 * 1.25 * spread) / b as f64).sqrt();
            assert!((indep - m2 - spread).abs() < 5.0 * se, "B {b}: {indep}");
            // Only the cross term -2 sum_j <z_j, x0_sigma(j)> depends on the pairing; the
            // continuum optimum x0 -> m + x0 / 2 would save D (1.25 - 0.25) = 0.8 * spread.
            assert!(
                ot < indep - 0.3 * spread,
                "B {b}, D {dim}: OT {ot}, independent {indep}"
            );
        }
        // Independent leaves x_0 as it is.
        let x0 = vec![1.0f32, 2.0, 3.0, 4.0];
        let mut s = rng::stream(0, Purpose::Coupling, 0);
        assert_eq!(
            Coupling::Independent.pair(&[0.0; 4], x0.clone(), 2, &mut s),
            x0
        );
    }
}
