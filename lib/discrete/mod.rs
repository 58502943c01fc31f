//! Discrete diffusion and discrete flow matching (notes section 8, MIT 6.S184 2026; Gat et al.
//! 2024; Campbell et al. 2024; masked diffusion: Sahoo et al. 2024, Shi et al. 2024).
//!
//! Data are sequences of tokens from a finite vocabulary. Time runs from t = 0 (noise: every
//! token [MASK], or uniform) to t = 1 (data), as everywhere in flowpipe.
//! - [`ctmc`]: rate matrices Q (non-negative off-diagonal, rows summing to zero), exp(tQ), and
//!   the Euler and tau-leaping steps of a continuous-time Markov chain.
//! - [`schedule`]: kappa_t (linear, quadratic, cosine).
//! - [`paths`]: the factorised mixture path p_t(x^l | z) = kappa_t delta_z + (1 - kappa_t) p_init,
//!   its conditional rate kappa'/(1 - kappa) (delta_z - delta_x) and the marginal rate.
//! - [`objective`]: the per-position cross-entropy and the masked-diffusion ELBO.
//! - [`net`]: the token transformer p^theta_{1|t}(. | x_t, y).
//! - [`sample`]: simulating the learned CTMC from noise (with prompts for infilling).
//! - [`tokens`]: vocabularies, text <-> tokens; [`files`]: reading vocabularies, tokens,
//!   prompts and labels; [`pixels`]: binarised images.
//! - [`train`]: training and evaluating a denoiser (`evaluate --model`); [`driver`]: the
//!   `fit-denoiser` tool's order of work.

pub mod ctmc;
pub mod driver;
pub mod files;
pub mod net;
pub mod objective;
pub mod paths;
pub mod pixels;
pub mod sample;
pub mod schedule;
pub mod tokens;
pub mod train;

pub use ctmc::{RateMatrix, Solver};
pub use net::{Denoiser, DenoiserConfig};
pub use paths::{MixturePath, Noise};
pub use schedule::Kappa;
pub use tokens::{Unit, Vocab};
