//! Deterministic initial states X_0 (for plots of trajectories), built from a spec string.

use anyhow::{bail, Context};
use ndarray::{ArrayD, IxDyn};

use crate::spec::{self, Keys};
use crate::Result;

/// Deterministic initial states X_0 for plots, from a spec:
/// `zeros:n=N,dim=D` (N, D) of zeros; `const:n=N,dim=D,value=V`; `linspace:n=N,from=A,to=B`
/// (N, 1) evenly spaced, both ends included (the course's `torch.linspace(A, B, N)`).
pub fn initial_states(spec_text: &str) -> Result<ArrayD<f32>> {
    let built = spec::load_object(spec_text, "x0", None).and_then(|obj| {
        let kind = spec::kind(&obj, "x0")?;
        let mut k = Keys::new(&obj, format!("initial states {kind}"), "x0");
        let n = k.count("n", None, 1)? as usize;
        let arr = match kind {
            "zeros" | "const" => {
                let dim = k.count("dim", Some(1), 1)? as usize;
                crate::memory::check_fits(
                    format!("n={n}, dim={dim}"),
                    &[n as u128, dim as u128, 4],
                )?;
                let v = if kind == "const" {
                    k.num("value", None)?
                } else {
                    0.0
                };
                ArrayD::from_elem(IxDyn(&[n, dim]), v as f32)
            }
            "linspace" => {
                let (a, b) = (k.num("from", None)?, k.num("to", None)?);
                crate::memory::check_fits(format!("n={n}"), &[n as u128, 4])?;
                let v: Vec<f32> = (0..n)
                    .map(|i| {
                        let s = if n == 1 {
                            0.0
                        } else {
                            i as f64 / (n - 1) as f64
                        };
                        (a + (b - a) * s) as f32
                    })
                    .collect();
                ArrayD::from_shape_vec(IxDyn(&[n, 1]), v)?
            }
            other => bail!("unknown initial states '{other}' (known: zeros, const, linspace)"),
        };
        k.finish()?;
        Ok(arr)
    });
    spec::blame(spec_text, built).with_context(|| format!("initial states '{spec_text}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_state_specs() {
        let x = initial_states("linspace:n=5,from=-10,to=10").unwrap();
        assert_eq!(x.shape(), &[5, 1]);
        assert_eq!(x.as_slice().unwrap(), &[-10.0, -5.0, 0.0, 5.0, 10.0]);
        assert_eq!(initial_states("zeros:n=3,dim=2").unwrap().shape(), &[3, 2]);
        assert!(initial_states("const:n=3,dim=2,value=1.5")
            .unwrap()
            .iter()
            .all(|&v| v == 1.5));
        assert!(crate::error::is_usage(
            &initial_states("ones:n=3").unwrap_err()
        ));
    }
}
