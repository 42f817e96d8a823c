//! groklens's torch generator against values written by torch 2.15 itself
//! (`bench/reference/torch_rng_vectors.py` → `tests/fixtures/torch_rng.safetensors`): every value
//! bit for bit.

use std::path::Path;

use groklens::rng::TorchGenerator;
use groklens::tensor_io::{self, TensorFile};

fn vectors() -> TensorFile {
    tensor_io::read(Path::new("tests/fixtures/torch_rng.safetensors")).unwrap()
}

fn ints(f: &TensorFile, name: &str) -> Vec<i64> {
    f.get(name)
        .unwrap_or_else(|| panic!("{name}"))
        .to_i64(name)
        .unwrap()
}

fn floats(f: &TensorFile, name: &str) -> Vec<f32> {
    f.get(name)
        .unwrap_or_else(|| panic!("{name}"))
        .to_f32(name)
        .unwrap()
}

/// The fixture's checksum: Σ (bits(x_i) + 1)·(i + 1), wrapping in u64.
fn checksum(bits: impl Iterator<Item = u64>) -> i64 {
    bits.enumerate().fold(0u64, |s, (i, b)| {
        s.wrapping_add(b.wrapping_add(1).wrapping_mul(i as u64 + 1))
    }) as i64
}

/// Compares a long tensor with its stored head and checksum.
fn assert_long_f32(f: &TensorFile, name: &str, ours: &[f32]) {
    assert_eq!(
        ints(f, &format!("{name}.numel"))[0] as usize,
        ours.len(),
        "{name}"
    );
    let head = floats(f, &format!("{name}.head"));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&ours[..head.len()]),
        bits(&head),
        "{name}: first values"
    );
    let sum = checksum(ours.iter().map(|x| x.to_bits() as u64));
    assert_eq!(
        sum,
        ints(f, &format!("{name}.checksum"))[0],
        "{name}: checksum"
    );
}

fn assert_long_ints(f: &TensorFile, name: &str, ours: &[usize]) {
    assert_eq!(
        ints(f, &format!("{name}.numel"))[0] as usize,
        ours.len(),
        "{name}"
    );
    let head: Vec<usize> = ints(f, &format!("{name}.head"))
        .iter()
        .map(|&x| x as usize)
        .collect();
    assert_eq!(&ours[..head.len()], &head[..], "{name}: first values");
    let sum = checksum(ours.iter().map(|&x| x as u64));
    assert_eq!(
        sum,
        ints(f, &format!("{name}.checksum"))[0],
        "{name}: checksum"
    );
}

fn assert_exact(f: &TensorFile, name: &str, ours: &[f32]) {
    let theirs = floats(f, name);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(ours),
        bits(&theirs),
        "{name}: ours {ours:?} torch {theirs:?}"
    );
}

#[test]
fn randperm_and_the_state_after_it() {
    let f = vectors();
    for (seed, n) in [
        (598, 12769),
        (598, 9409),
        (0, 9409),
        (21, 961),
        (7, 1),
        (7, 2),
    ] {
        let mut g = TorchGenerator::new(seed);
        let name = format!("randperm.{seed}.{n}");
        assert_long_ints(&f, &name, &g.randperm(n));
        assert_exact(&f, &format!("{name}.then_randn32"), &g.normal(32, 0.0, 1.0));
    }
}

#[test]
fn randn_of_every_small_size_and_sizes_not_divisible_by_16() {
    let f = vectors();
    let mut g = TorchGenerator::new(1234);
    for n in (1..18).chain([31, 33, 100, 1000]) {
        assert_exact(&f, &format!("randn.seq1234.{n}"), &g.normal(n, 0.0, 1.0));
    }
    let mut g = TorchGenerator::new(5);
    for (n, mean, std) in [(64, 0.5, 2.0), (37, -1.25, 0.3), (5, 3.0, 0.7)] {
        assert_exact(&f, &format!("normal.seq5.{n}"), &g.normal(n, mean, std));
    }
}

#[test]
fn uniform_kaiming_and_module_defaults() {
    let f = vectors();
    let mut g = TorchGenerator::new(3);
    assert_long_f32(&f, "uniform.seq3.1000", &g.uniform(1000, -0.3, 0.3));
    assert_exact(&f, "uniform.seq3.77", &g.uniform(77, 0.0, 1.0));
    let mut g = TorchGenerator::new(11);
    assert_long_f32(
        &f,
        "kaiming_normal_relu.seq11.256x128",
        &g.kaiming_normal_relu(256, 128),
    );
    // nn.Embedding(99, 128), nn.Linear(512, 128), nn.Linear(128, 99), nn.Linear(3, 2) in order.
    let mut g = TorchGenerator::new(42);
    assert_long_f32(&f, "modules42.embedding", &g.normal(99 * 128, 0.0, 1.0));
    for (name, fan_in, fan_out) in [("linear1", 512, 128), ("linear2", 128, 99)] {
        let (w, b) = g.linear(fan_in, fan_out);
        assert_long_f32(&f, &format!("modules42.{name}.weight"), &w);
        assert_exact(&f, &format!("modules42.{name}.bias"), &b);
    }
    let (w, b) = g.linear(3, 2);
    assert_exact(&f, "modules42.small.weight", &w);
    assert_exact(&f, "modules42.small.bias", &b);
}
