//! groklens's torch generator against values written by torch 2.15 itself
//! (`bench/reference/torch_rng_vectors.py` → `tests/fixtures/torch_rng.safetensors`): every value
//! bit for bit.

use std::path::Path;

use groklens::rng::TorchGenerator;
use groklens::tasks::Target;
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

mod seeds {
    use super::*;
    use groklens::engine::{self, Batch, EngineKind};
    use groklens::model::Params;
    use groklens::presets::preset;
    use groklens::rng::RngKind;
    use groklens::train::shuffle::Shuffle;

    #[test]
    fn the_transformer_lens_demo_has_the_notebooks_split_init_and_first_loss() {
        let f = vectors();
        let cfg = preset("tl-grokking-demo").unwrap();
        assert_eq!(cfg.rng, RngKind::Torch);
        let split = cfg.task.split(cfg.rng);
        let data = cfg.task.modular().unwrap().dataset();
        let pair = |i: usize| [data.tokens[i * 3], data.tokens[i * 3 + 1]];
        let first_train: Vec<[u32; 2]> = split.train[..5].iter().map(|&i| pair(i)).collect();
        let first_test: Vec<[u32; 2]> = split.test[..5].iter().map(|&i| pair(i)).collect();
        // Seed 004's printout.
        assert_eq!(
            first_train,
            [[21, 31], [30, 98], [47, 10], [86, 21], [99, 83]]
        );
        assert_eq!(
            first_test,
            [[43, 40], [31, 42], [39, 63], [35, 61], [112, 102]]
        );
        assert_eq!(split.train.len(), 3830);

        // TransformerLens's init after seed 999, every parameter bit for bit.
        let params = Params::init(&cfg.model, cfg.rng);
        for p in params.iter() {
            let name = format!("tl_demo999.{}", p.name);
            assert!(
                f.get(&format!("{name}.head")).is_some(),
                "{name} not in the fixture"
            );
            assert_long_f32(&f, &name, &p.data);
        }

        // The epoch-0 train loss TransformerLens computes (f64 cross-entropy of f32 logits).
        let train = data.select(&split.train);
        let mut e = engine::select(&cfg.model, Target::LastPosition, EngineKind::Auto, 2).unwrap();
        let batch = Batch::new(&train.tokens, &train.labels, 3, Target::LastPosition);
        let loss = e.evaluate(&params, batch).unwrap().loss;
        let theirs = f
            .get("tl_demo999.epoch0_train_loss")
            .unwrap()
            .to_f64("loss")
            .unwrap()[0];
        assert!(
            (loss - theirs).abs() < 1e-6,
            "{loss} vs TransformerLens {theirs}"
        );
        assert!((loss - 4.7358857555).abs() < 1e-6, "{loss}");
    }

    #[test]
    fn seed_002_split_minibatch_order_and_init_are_torchs() {
        let f = vectors();
        let cfg = preset("seed-002").unwrap();
        let split = cfg.task.split(cfg.rng);
        assert_eq!((split.train.len(), split.test.len()), (7528, 1881));
        assert_long_ints(&f, "seed002.train", &split.train);
        assert_long_ints(&f, "seed002.val", &split.test);

        // Three epochs of DataLoader order, from the start and replayed for a resume at epoch 2.
        let (n_train, n_test) = (split.train.len(), split.test.len());
        let mut shuffle = Shuffle::new(&cfg, n_train, n_test, 0);
        let rows =
            |order: Vec<usize>| -> Vec<usize> { order.iter().map(|&i| split.train[i]).collect() };
        for epoch in 0..3 {
            let name = format!("seed002.epoch{epoch}.train_order");
            assert_long_ints(&f, &name, &rows(shuffle.order(epoch, n_train)));
        }
        let mut resumed = Shuffle::new(&cfg, n_train, n_test, 2);
        assert_long_ints(
            &f,
            "seed002.epoch2.train_order",
            &rows(resumed.order(2, n_train)),
        );

        // The MLP's init after manual_seed(0): embedding, Linear construction draws, kaiming_normal_.
        let mut mlp = cfg.model.clone();
        if let groklens::model::ModelConfig::Mlp(m) = &mut mlp {
            m.seed = 0;
        }
        let params = Params::init(&mlp, RngKind::Torch);
        for p in params.iter() {
            let name = p.name.trim_start_matches("net.");
            assert_long_f32(&f, &format!("seed002_mlp0.{name}"), &p.data);
        }
    }
}
