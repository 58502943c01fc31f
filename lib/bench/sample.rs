//! The sampling figure: 100 Euler steps of the classifier-free guided field
//! u~ = (1 - w) u(x | null) + w u(x | y) (notes section 5.1), both branches in one forward call
//! on [x; x] with labels [y; null].

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::harness::{line, median, normal, time_runs};
use super::train::unet_config;
use super::Settings;
use crate::nn::{FieldNet, Params, UNet};
use crate::Result;

/// Sampling throughput: 100 Euler steps of the guided U-Net (w = 3) from N(0, I), both branches
/// in one call; images per second.
pub fn sample_cfg(s: Settings, device: &Device) -> Result<Value> {
    let cfg = unet_config(s.tiny);
    let (batch, steps) = if s.tiny { (1, 2) } else { (8, 100) };
    let w = 3.0;
    let params = Params::new(0, device);
    let net = UNet::new(&cfg, &params)?;
    let mut shape = vec![batch];
    shape.extend(cfg.data_shape);
    let x0 = normal(&shape, 3, device)?;
    let mut labels: Vec<u32> = (0..batch).map(|i| (i % 10) as u32).collect();
    labels.extend(std::iter::repeat_n(10u32, batch));
    let y = Tensor::from_vec(labels, 2 * batch, device)?;
    let dt = 1.0 / steps as f64;
    let times = time_runs(
        if s.tiny { 0 } else { 1 },
        s.runs.unwrap_or(3).min(if s.tiny { 1 } else { 99 }),
        || {
            let mut x = x0.clone();
            for k in 0..steps {
                let t = Tensor::full((k as f64 * dt) as f32, (2 * batch, 1), device)?;
                let both = net.forward(&Tensor::cat(&[&x, &x], 0)?, &t, Some(&y))?;
                let (cond, null) = (both.narrow(0, 0, batch)?, both.narrow(0, batch, batch)?);
                let guided = ((cond * w)? + (null * (1.0 - w))?)?;
                // Detached: otherwise each step's graph (the weights are variables) is kept.
                x = (x + (guided * dt)?)?.detach();
            }
            x.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            Ok(())
        },
    )?;
    let mut config = cfg.to_json();
    config.as_object_mut().unwrap().extend([
        ("batch".to_string(), json!(batch)),
        ("steps".to_string(), json!(steps)),
        ("guidance".to_string(), json!(w)),
    ]);
    let mut v = line("sample_cfg_unet", config, usize::from(!s.tiny), &times);
    v["images_per_s"] = json!(batch as f64 / (median(&times) / 1000.0));
    Ok(v)
}
