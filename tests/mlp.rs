//! Seed 002's MLP against the fixture written by the seed's own PyTorch class: logits, activations,
//! f64 loss, gradients (candle and fast engines), two AdamW steps; checkpoint names; a quick run groks.

mod common;

use candle_core::{Device, Tensor};
use common::{
    family_params, fixture, fixture_labels, fixture_tokens, last_position_batch, max_abs_diff,
    values, want,
};
use groklens::engine::loss::cross_entropy_f64;
use groklens::engine::{Batch, CandleEngine, Engine, FastMlpEngine};
use groklens::interp::{HookSet, Interp, Names};
use groklens::model::{HookedModel, MlpConfig, MlpModel, ModelConfig, NoHooks, Params};
use groklens::optim::{AdamW, AdamWConfig};
use groklens::presets::preset;
use groklens::rng::RngKind;
use groklens::tensor_io::TensorFile;
use groklens::train::Trainer;

const FILE: &str = "seed002_mlp.safetensors";

fn config() -> MlpConfig {
    MlpConfig {
        d_vocab: 99,
        d_vocab_out: 99,
        n_ctx: 4,
        ..MlpConfig::seed_002()
    }
}

fn params(f: &TensorFile, prefix: &str) -> Params {
    family_params(&ModelConfig::Mlp(config()), f, prefix)
}

fn batch<'a>(tokens: &'a [u32], labels: &'a [u32]) -> Batch<'a> {
    last_position_batch(tokens, labels, 4)
}

#[test]
fn forward_and_activations_match_the_seed() {
    let f = fixture(FILE);
    let model = MlpModel::new(&config(), &params(&f, "param.")).unwrap();
    let (tokens, rows) = fixture_tokens(&f);
    let t = model.tokens_tensor(&tokens, rows).unwrap();
    let (logits, cache) = model.run_with_cache(&t, &Names::All).unwrap();
    assert_eq!(logits.dims(), &[64, 1, 99]);
    let d = max_abs_diff(&values(&logits), &want(&f, "logits"));
    assert!(d < 1e-5, "logits differ by {d}");
    for (hook, act) in [
        ("hook_embed", "act.embed"),
        ("blocks.0.mlp.hook_pre", "act.pre"),
        ("post0", "act.post"),
    ] {
        let d = max_abs_diff(&values(cache.get(hook).unwrap()), &want(&f, act));
        assert!(d < 1e-5, "{hook} differs from {act} by {d}");
    }
    assert_eq!(
        cache.names().collect::<Vec<_>>(),
        [
            "hook_embed",
            "blocks.0.mlp.hook_pre",
            "blocks.0.mlp.hook_post"
        ]
    );
}

#[test]
fn loss_and_gradients_match_on_both_engines() {
    let f = fixture(FILE);
    let p = params(&f, "param.");
    let (tokens, _) = fixture_tokens(&f);
    let labels = fixture_labels(&f);
    let want_loss = f.get("loss").unwrap().to_f64("loss").unwrap()[0];
    let trainable = vec![true; p.len()];
    let cfg = ModelConfig::Mlp(config());
    let mut engines: Vec<Box<dyn Engine>> = vec![
        Box::new(CandleEngine::new(&cfg)),
        Box::new(FastMlpEngine::new(&config(), 1).unwrap()),
        Box::new(FastMlpEngine::new(&config(), 3).unwrap()),
    ];
    for engine in &mut engines {
        let mut g = p.zeros_like();
        let stats = engine
            .loss_and_grads(&p, &trainable, batch(&tokens, &labels), &mut g)
            .unwrap();
        assert!(
            (stats.loss - want_loss).abs() < 1e-6,
            "{}: loss {} vs {want_loss}",
            engine.name(),
            stats.loss
        );
        for t in g.iter() {
            let d = max_abs_diff(&t.data, &want(&f, &format!("grad.{}", t.name)));
            assert!(
                d < 1e-5,
                "{}: grad of {} differs by {d}",
                engine.name(),
                t.name
            );
        }
        let eval = engine.evaluate(&p, batch(&tokens, &labels)).unwrap();
        assert!((eval.loss - want_loss).abs() < 1e-6);
        assert_eq!(eval.correct, stats.correct);
    }
    // The f64 loss on the candle path, computed as the seed computes it.
    let logits = Tensor::from_slice(&want(&f, "logits"), (64, 99), &Device::Cpu).unwrap();
    let y = Tensor::from_slice(&labels, 64, &Device::Cpu).unwrap();
    let l = cross_entropy_f64(&logits, &y)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!((l - want_loss).abs() < 1e-6);
}

#[test]
fn two_adamw_steps_match_torch() {
    let f = fixture(FILE);
    let mut p = params(&f, "param.");
    let (tokens, _) = fixture_tokens(&f);
    let labels = fixture_labels(&f);
    let trainable = vec![true; p.len()];
    let mut engine = FastMlpEngine::new(&config(), 2).unwrap();
    let mut opt = AdamW::new(
        AdamWConfig {
            weight_decay: 0.01,
            betas: (0.9, 0.98),
            eps: 1e-8,
        },
        &p,
    );
    let mut g = p.zeros_like();
    for step in ["step1", "step2"] {
        engine
            .loss_and_grads(&p, &trainable, batch(&tokens, &labels), &mut g)
            .unwrap();
        opt.step(&mut p, &g, &trainable, 1e-3);
        for t in p.iter() {
            let d = max_abs_diff(&t.data, &want(&f, &format!("{step}.{}", t.name)));
            assert!(d < 1e-5, "{step}: {} differs by {d}", t.name);
        }
    }
}

#[test]
fn checkpoints_carry_the_seed_state_dict_names_and_round_trip() {
    let cfg = ModelConfig::Mlp(config());
    let p = Params::init(&cfg, RngKind::Chacha);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    p.save(&path, Default::default()).unwrap();
    let file = groklens::tensor_io::read(&path).unwrap();
    let mut names: Vec<&str> = file.tensors.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "net.0.weight",
            "net.2.bias",
            "net.2.weight",
            "net.4.bias",
            "net.4.weight"
        ]
    );
    assert_eq!(Params::load(&path, &cfg).unwrap(), p);
    // A checkpoint of another shape is refused by name, not misread.
    let wider = ModelConfig::Mlp(MlpConfig {
        d_hidden: 64,
        ..config()
    });
    let e = Params::load(&path, &wider).unwrap_err().to_string();
    assert!(
        e.contains("net.2.weight") && e.contains("[128, 512]"),
        "{e}"
    );
    // A checkpoint of a deeper model is refused, listing what the config does not have.
    let deep = ModelConfig::Mlp(MlpConfig {
        n_hidden: 2,
        ..config()
    });
    let deep_path = dir.path().join("deep.safetensors");
    Params::init(&deep, RngKind::Chacha)
        .save(&deep_path, Default::default())
        .unwrap();
    let e = Params::load(&deep_path, &cfg).unwrap_err().to_string();
    assert!(e.contains("net.6.bias, net.6.weight"), "{e}");
    // Init: N(0, 1) embedding, kaiming-normal weights, zero biases.
    let std = |name: &str| {
        let x = &p.get(name).unwrap().data;
        (x.iter().map(|v| (v * v) as f64).sum::<f64>() / x.len() as f64).sqrt()
    };
    assert!((std("net.0.weight") - 1.0).abs() < 0.03);
    assert!((std("net.2.weight") - (2.0f64 / 512.0).sqrt()).abs() < 0.003);
    assert!(p.get("net.4.bias").unwrap().data.iter().all(|&v| v == 0.0));
}

#[test]
fn the_model_refuses_rows_of_the_wrong_length() {
    let model = MlpModel::new(
        &config(),
        &Params::init(&ModelConfig::Mlp(config()), RngKind::Chacha),
    )
    .unwrap();
    let t = Tensor::from_slice(&[1u32, 2, 3], (1, 3), &Device::Cpu).unwrap();
    let e = model
        .forward(&t, Default::default(), &mut NoHooks)
        .unwrap_err()
        .to_string();
    assert!(e.contains("n_ctx = 4"), "{e}");
}

#[test]
fn quick_mlp_groks() {
    let mut cfg = preset("quick-mlp").unwrap();
    cfg.train.threads = 2;
    let mut t = Trainer::new(cfg).unwrap();
    assert_eq!(t.engine_name(), "fast");
    let out = t.run(&mut |_| {}).unwrap();
    let last = out.last.unwrap();
    assert!(out.stopped_early && last.test_acc >= 0.999, "{last:?}");
    let memorised = t
        .history
        .iter()
        .find(|r| r.train_acc >= 0.99)
        .unwrap()
        .epoch;
    let generalised = t.history.iter().find(|r| r.test_acc >= 0.99).unwrap().epoch;
    assert!(
        generalised >= memorised + 50,
        "test accuracy should lag train accuracy (grokking): {memorised} vs {generalised}"
    );
}

#[test]
fn the_lookup_path_matches_candle_on_batches_larger_than_the_vocabulary() {
    // 300 rows > 99 tokens: the fast engine builds per-position tables instead of multiplying rows.
    let mut cfg = preset("seed-002").unwrap();
    cfg.model = ModelConfig::Mlp(MlpConfig {
        n_hidden: 2,
        d_hidden: 48,
        ..config()
    });
    let data = cfg.task.modular().unwrap().dataset();
    let rows: Vec<usize> = (0..300).map(|i| i * 31 % data.len()).collect();
    let data = data.select(&rows);
    let p = Params::init(&cfg.model, cfg.rng);
    let trainable = vec![true; p.len()];
    let b = batch(&data.tokens, &data.labels);
    let mlp = cfg.model.mlp().unwrap();
    let mut reference = p.zeros_like();
    let want = CandleEngine::new(&cfg.model)
        .loss_and_grads(&p, &trainable, b, &mut reference)
        .unwrap();
    // 1, 2 and 3 threads: the tables' rows split evenly, unevenly, or not at all.
    for threads in [1, 2, 3] {
        let mut engine = FastMlpEngine::new(mlp, threads).unwrap();
        let mut g = p.zeros_like();
        let got = engine.loss_and_grads(&p, &trainable, b, &mut g).unwrap();
        assert!(
            (got.loss - want.loss).abs() < 1e-5 * want.loss,
            "{got:?} vs {want:?}"
        );
        assert_eq!(got.correct, want.correct);
        for (a, r) in g.iter().zip(reference.iter()) {
            let scale = r.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = max_abs_diff(&a.data, &r.data);
            assert!(
                d <= 1e-5 * scale.max(1.0),
                "{threads} threads: {} differs by {d}",
                a.name
            );
        }
        let logits = engine.logits(&p, &data.tokens, 4).unwrap();
        let model = cfg.model.build(&p).unwrap();
        let t = model.tokens_tensor(&data.tokens, 300).unwrap();
        let want_logits = values(&model.forward(&t, Default::default(), &mut NoHooks).unwrap());
        assert!(max_abs_diff(&logits, &want_logits) < 1e-4);
    }
}

/// A step leaves nothing behind that changes the next: an engine whose workspaces ran a step on
/// other rows (the chunks' table gradients are cleared by the sum that reads them, not by the next
/// pass) gives a fresh engine's bits, on 1, 2 and 3 threads.
#[test]
fn a_reused_engine_gives_a_fresh_engines_gradients() {
    let cfg = preset("seed-002").unwrap();
    let data = cfg.task.modular().unwrap().dataset();
    let rows = |step: usize, n: usize| (0..n).map(|i| i * step % data.len()).collect::<Vec<_>>();
    let (first, second) = (data.select(&rows(17, 512)), data.select(&rows(31, 300)));
    let p = Params::init(&cfg.model, cfg.rng);
    let trainable = vec![true; p.len()];
    let mlp = cfg.model.mlp().unwrap();
    let bits = |g: &Params| -> Vec<u32> {
        g.iter()
            .flat_map(|t| t.data.iter().map(|v| v.to_bits()))
            .collect()
    };
    for threads in [1, 2, 3] {
        let step = |engine: &mut FastMlpEngine, d: &groklens::tasks::Dataset| {
            let mut g = p.zeros_like();
            let b = batch(&d.tokens, &d.labels);
            engine.loss_and_grads(&p, &trainable, b, &mut g).unwrap();
            bits(&g)
        };
        let fresh = step(&mut FastMlpEngine::new(mlp, threads).unwrap(), &second);
        let mut reused = FastMlpEngine::new(mlp, threads).unwrap();
        let other = step(&mut reused, &first);
        assert_ne!(other, fresh, "the two batches differ");
        for round in 0..2 {
            assert!(
                step(&mut reused, &second) == fresh,
                "{threads} threads, round {round}"
            );
        }
    }
}

/// The MLP's `hook_embed` is `[batch, n_ctx·d_embed]` with no position axis: patching position p
/// there replaces position p's whole embedding (its d_embed columns), so the patched run equals the
/// clean run on inputs whose token p is the other run's. The hook tree says so with its axes.
#[test]
fn patching_a_position_of_the_mlp_input_patches_that_tokens_embedding() {
    use groklens::interp::hooks::patch_position;
    use groklens::model::hooks::Axis;
    let f = fixture(FILE);
    let cfg = config();
    let model = MlpModel::new(&cfg, &params(&f, "param.")).unwrap();
    let embed = &model.hook_tree.points()[0];
    assert_eq!(embed.name, "hook_embed");
    assert_eq!(embed.axes, [Axis::Batch, Axis::PosFeatures(cfg.d_embed)]);
    let (a, b) = (vec![3u32, 97, 5, 98], vec![11u32, 97, 20, 98]);
    let ta = model.tokens_tensor(&a, 1).unwrap();
    let tb = model.tokens_tensor(&b, 1).unwrap();
    let (_, cache_b) = model.run_with_cache(&tb, &Names::All).unwrap();
    for position in [0, 2] {
        let mut mixed = a.clone();
        mixed[position] = b[position];
        let want = model
            .run_with_hooks(
                &model.tokens_tensor(&mixed, 1).unwrap(),
                &mut HookSet::new(&model),
            )
            .unwrap();
        let source = cache_b.get("hook_embed").unwrap().clone();
        let mut hooks = HookSet::new(&model)
            .add("hook_embed", patch_position(source, position))
            .unwrap();
        let got = model.run_with_hooks(&ta, &mut hooks).unwrap();
        let d = max_abs_diff(&values(&got), &values(&want));
        assert!(d < 1e-6, "position {position}: differs by {d}");
    }
    // Past the last position is an error naming the hook point, not a silent no-op.
    let source = cache_b.get("hook_embed").unwrap().clone();
    let mut hooks = HookSet::new(&model)
        .add("hook_embed", patch_position(source, 4))
        .unwrap();
    let e = model
        .run_with_hooks(&ta, &mut hooks)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("hook_embed") && e.contains("out of range"),
        "{e}"
    );
}
