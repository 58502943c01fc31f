//! Students start from their teacher's weights (see the module docs of [`crate::distill`]):
//! the EMA weights when the teacher has them, padded with a zero slice where the student's input
//! is one channel wider (the flow map's second time).

use anyhow::anyhow;
use candle_core::Tensor;
use std::collections::HashMap;

use crate::io::model::ModelFile;
use crate::nn::init::EMA_PREFIX;
use crate::Result;

/// A teacher's weights for a student to start from: the EMA weights when the file has them,
/// else the raw ones, by parameter name.
pub fn teacher_weights(model: &ModelFile) -> HashMap<String, Tensor> {
    let has_ema = model.tensors.keys().any(|k| k.starts_with(EMA_PREFIX));
    model
        .tensors
        .iter()
        .filter_map(|(k, v)| match (has_ema, k.strip_prefix(EMA_PREFIX)) {
            (true, Some(name)) => Some((name.to_string(), v.clone())),
            (false, None) => Some((k.clone(), v.clone())),
            _ => None,
        })
        .filter(|(k, _)| !k.starts_with("adam."))
        .collect()
}

/// The teacher's weights reshaped for a student whose parameters have `shapes` (from a fresh
/// build): equal shapes are copied; an axis one longer than the teacher's (the flow map's extra
/// input channel, appended after the `channels` data channels) gets a zero slice inserted at
/// index `channels`, so the extra input starts with no effect. A parameter that fits neither
/// way keeps its fresh initialisation and is listed in the second value.
pub fn init_from_teacher(
    teacher: &HashMap<String, Tensor>,
    shapes: &[(String, Vec<usize>)],
    fresh: &HashMap<String, Tensor>,
    channels: usize,
) -> Result<(HashMap<String, Tensor>, Vec<String>)> {
    let mut out = HashMap::new();
    let mut fresh_names = Vec::new();
    for (name, shape) in shapes {
        let fresh_t = fresh
            .get(name)
            .ok_or_else(|| anyhow!("no fresh value for {name}"))?;
        let Some(t) = teacher.get(name) else {
            fresh_names.push(name.clone());
            out.insert(name.clone(), fresh_t.clone());
            continue;
        };
        match pad_to(t, shape, channels)? {
            Some(p) => {
                out.insert(name.clone(), p);
            }
            None => {
                fresh_names.push(name.clone());
                out.insert(name.clone(), fresh_t.clone());
            }
        }
    }
    Ok((out, fresh_names))
}

/// `t` grown to `shape` by inserting a zero slice at index `at` of every axis that is one
/// longer; `None` when the shapes differ otherwise.
fn pad_to(t: &Tensor, shape: &[usize], at: usize) -> Result<Option<Tensor>> {
    if t.dims() == shape {
        return Ok(Some(t.clone()));
    }
    if t.rank() != shape.len() {
        return Ok(None);
    }
    let mut t = t.clone();
    for (axis, &want) in shape.iter().enumerate() {
        let have = t.dim(axis)?;
        if have == want {
            continue;
        }
        if want != have + 1 || at > have {
            return Ok(None);
        }
        let mut zshape = t.dims().to_vec();
        zshape[axis] = 1;
        let zeros = Tensor::zeros(zshape, t.dtype(), t.device())?;
        let head = t.narrow(axis, 0, at)?;
        let tail = t.narrow(axis, at, have - at)?;
        t = Tensor::cat(&[&head, &zeros, &tail], axis)?;
    }
    Ok(Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn padding_inserts_a_zero_slice_at_the_data_channels() {
        let t = Tensor::new(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]], &Device::Cpu).unwrap();
        let p = pad_to(&t, &[3, 4], 2).unwrap().unwrap();
        assert_eq!(
            p.to_vec2::<f32>().unwrap(),
            vec![
                vec![1.0, 2.0, 0.0, 3.0],
                vec![4.0, 5.0, 0.0, 6.0],
                vec![0.0, 0.0, 0.0, 0.0]
            ]
        );
        assert!(pad_to(&t, &[2, 5], 2).unwrap().is_none());
    }
}
