//! Property tests of the parsers that read what users hand the tools: the `.npy` header and
//! body reader, the safetensors header check of model files, and the field-spec parser.
//! Random and mutated inputs must give an error or a value, never a panic, and never an
//! allocation larger than the input can justify (measured by the test allocator's record of
//! the largest request, [`crate::memory`]).

use proptest::prelude::*;
use std::io::Cursor;

use super::{model, npy};

/// What any input may cost regardless of its size: the first read of a body of unknown length
/// (8 MiB) and small buffers.
const SLACK: usize = 16 << 20;

/// Runs `f` and returns the largest single allocation it made on this thread.
fn largest_during(f: impl FnOnce()) -> usize {
    crate::memory::largest::reset();
    f();
    crate::memory::largest::get()
}

/// A `.npy` file with a header built from the parts, then `body` bytes.
fn npy_from(descr: &str, fortran: bool, shape: &[u64], body: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let order = if fortran { "True" } else { "False" };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}\n");
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// Every reader of `.npy` bytes; returns the largest allocation.
fn read_all_ways(bytes: &[u8]) -> usize {
    largest_during(|| {
        let _ = npy::parse_header(bytes, "x.npy");
        let _ = npy::decode_f32(bytes, "x.npy");
        let _ = npy::decode_i64(bytes, "x.npy");
        let _ = npy::decode_u8(bytes, "x.npy");
        let _ = npy::read_f32_from(Cursor::new(bytes), "-");
    })
}

/// Applies `(position, byte)` replacements and a truncation to `bytes`.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], keep: usize) -> Vec<u8> {
    if !bytes.is_empty() {
        for &(i, b) in edits {
            let n = bytes.len();
            bytes[i % n] = b;
        }
    }
    bytes.truncate(keep.max(1));
    bytes
}

fn descr() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("<f4".to_string()),
        Just(">f4".to_string()),
        Just("<f8".to_string()),
        Just("<i8".to_string()),
        Just("<i4".to_string()),
        Just("|u1".to_string()),
        Just("|b1".to_string()),
        "[<>|=]?[a-zA-Z][0-9]{0,20}",
    ]
}

fn dim() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..5, any::<u64>(), Just(u64::MAX), Just(1 << 32)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(tail in prop::collection::vec(any::<u8>(), 0..120), npy_magic in any::<bool>()) {
        let mut bytes = if npy_magic { b"\x93NUMPY".to_vec() } else { Vec::new() };
        bytes.extend(tail);
        let largest = read_all_ways(&bytes);
        prop_assert!(largest <= SLACK + 8 * bytes.len(), "allocated {largest}");
    }

    #[test]
    fn forged_headers_never_panic_nor_overallocate(
        descr in descr(),
        fortran in any::<bool>(),
        shape in prop::collection::vec(dim(), 0..5),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let bytes = npy_from(&descr, fortran, &shape, &body);
        let largest = read_all_ways(&bytes);
        prop_assert!(largest <= SLACK + 8 * bytes.len(), "allocated {largest} for {} bytes", bytes.len());
    }

    #[test]
    fn mutated_arrays_never_panic(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        keep in any::<usize>(),
        version in 1u8..4,
    ) {
        let a = npy::from_vec(&[3, 2], (0..6).map(|v| v as f32).collect()).unwrap();
        let mut bytes = npy::encode(&a).unwrap();
        bytes[6] = version;
        let keep = keep % (bytes.len() + 1);
        let bytes = mutate(bytes, &edits, keep);
        let largest = read_all_ways(&bytes);
        prop_assert!(largest <= SLACK + 8 * bytes.len(), "allocated {largest}");
    }

    #[test]
    fn mutated_model_files_never_panic(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        header_len in prop::option::of(any::<u64>()),
        keep in any::<usize>(),
    ) {
        let t = candle_core::Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &candle_core::Device::Cpu).unwrap();
        let config = serde_json::json!({"kind": "velocity", "hidden": [2]});
        let mut bytes = model::encode(&config, &[("w".into(), t)]).unwrap();
        if let Some(n) = header_len {
            bytes[..8].copy_from_slice(&n.to_le_bytes());
        }
        // Edits inside the header (the first 8 bytes and the JSON) are the interesting ones.
        let hlen = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()).min(bytes.len() as u64) as usize;
        let edits: Vec<(usize, u8)> = edits.iter().map(|&(i, b)| (i % hlen.max(1), b)).collect();
        let keep = keep % (bytes.len() + 1);
        let bytes = mutate(bytes, &edits, keep);
        let largest = largest_during(|| {
            let _ = super::sniff(&bytes);
            let _ = model::decode(&bytes, "m.safetensors", &candle_core::Device::Cpu);
        });
        prop_assert!(largest <= SLACK + 8 * bytes.len(), "allocated {largest}");
    }

    #[test]
    fn field_specs_never_panic(
        spec in prop_oneof![
            "[a-z_0-9:=,;.{}\"\\[\\] -]{0,40}",
            (
                prop::sample::select(vec![
                    "ou:theta=0.5,sigma=0.8",
                    "langevin:sigma=0.6,density=random_2d:nmodes=5,std=0.75,scale=15,seed=3",
                    "langevin:sigma=0.6,density=gaussian:mean=0;0",
                    "{\"field\": \"ou\", \"theta\": 0.25}",
                    "brownian:sigma=1",
                ]),
                any::<usize>(),
                "[0-9a-z=,;:{}.-]{0,4}",
                any::<usize>(),
            )
                .prop_map(|(s, at, insert, cut)| {
                    let mut s = s.to_string();
                    let at = at % (s.len() + 1);
                    s.insert_str(at, &insert);
                    s.truncate(cut % (s.len() + 1));
                    s
                }),
        ],
    ) {
        let largest = largest_during(|| {
            let _ = crate::fields::from_spec(&spec, &candle_core::Device::Cpu);
        });
        prop_assert!(largest <= SLACK, "{spec}: allocated {largest}");
    }
}
