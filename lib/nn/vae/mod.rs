//! The variational autoencoder of latent diffusion (notes section 6, Algorithm 6; Kingma &
//! Welling 2014; Rombach et al. 2022): an encoder q_phi(z | x) = N(mu_phi(x), diag sigma_phi^2(x))
//! and a decoder p_theta(x | z) = N(D_theta(z), sigma_dec^2 I), trained on the negative ELBO
//!
//!   L(x) = E_{z ~ q(z|x)} [ -log p_theta(x | z) ] + beta KL(q_phi(z | x) || N(0, I)),
//!   -log p(x | z) = sum_i [ (x_i - D(z)_i)^2 / (2 sigma_dec^2) + log sigma_dec + log(2 pi) / 2 ],
//!   KL = sum_j [ mu_j^2 + sigma_j^2 - 1 - log sigma_j^2 ] / 2,
//!
//! with z = mu + sigma eps, eps ~ N(0, I) (the reparametrisation trick). sigma_dec is learned
//! (a scalar log-variance) or fixed; the encoder's log-variance is per element (a conv head) or
//! one learned scalar (the lab's). Flow models are then trained on latents scaled to unit
//! variance, z_s = scale_factor mu(x) with scale_factor = 1 / std of the latent means over the
//! training set (as Stable Diffusion's 0.18215), stored in the model file; decoding divides by it.
//!
//! ```text
//! encoder: x -> conv3x3 (C -> c0) -> level l = 0..L-1: B residual blocks at c_l, then (l < L-1)
//!          conv3x3 stride 2 (c_l -> c_{l+1}) -> mid: res, [attention], res -> GN, SiLU
//!          -> conv3x3 mean head (c_{L-1} -> k), conv3x3 log-variance head (or a scalar)
//! decoder: z -> conv3x3 (k -> c_{L-1}) -> mid: res, [attention], res -> level l = L-1..0:
//!          B residual blocks at c_l, then (l > 0) nearest upsample x2 + conv3x3 (c_l -> c_{l-1})
//!          cropped to the encoder's size there -> GN, SiLU -> conv3x3 (c0 -> C)
//! residual block: x + conv(SiLU(GN(conv(SiLU(GN(x)))))), the last conv zero-initialised (so
//!          each block starts as the identity); attention: x + proj(attn(GN(x))) over the
//!          pixels as tokens, proj zero-initialised.
//! ```
//! Downsampling rounds up (28 -> 14 -> 7), so 28x28 images need no padding: three levels map
//! 1x28x28 to k x 7 x 7 and 1x32x32 to k x 8 x 8. The pipelines pad Fashion-MNIST to 32 (the
//! lab's way) for the 4 x 8 x 8 latents a patch-1 DiT handles well.

mod batched;
mod blocks;
mod config;
mod model;

pub use batched::{
    decode_all, encode_all, expect_batch_of, interpolate_pairs, latent_std, open, open_with_batch,
    posterior_noise, recon_stats, Encoding, ReconStats, Side,
};
pub use config::{default_groups, DecoderVariance, LogvarMode, VaeConfig};
pub use model::{gaussian_nll, Posterior, Vae};

/// Small configurations for the tests of every part.
#[cfg(test)]
mod testing {
    use super::{default_groups, VaeConfig};

    pub(super) fn tiny(data_shape: [usize; 3], channels: &[usize], k: usize) -> VaeConfig {
        VaeConfig {
            channels: channels.to_vec(),
            latent_channels: k,
            groups: default_groups(channels),
            ..VaeConfig::default_for(data_shape)
        }
    }
}
