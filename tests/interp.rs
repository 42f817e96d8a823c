//! The interpretability API: caches, shorthands, hooks, gradients, stop_at_layer, ablations.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use groklens::engine::loss::loss;
use groklens::interp::hooks::{patch, patch_position, zero_ablate, zero_ablate_head};
use groklens::interp::{mean_ablation_sweep, HookSet, Interp, Names};
use groklens::model::{HookedTransformer, LogitPositions, NoHooks};
use groklens::tasks::Target;

#[test]
fn cache_matches_fixture_and_resolves_shorthands() {
    let (f, model, tokens) = load_model("tl_ln_2l.safetensors");
    let (logits, cache) = model.run_with_cache(&tokens, &Names::All).unwrap();
    assert!(
        max_abs_diff(
            &values(&logits),
            &f.get("logits").unwrap().to_f32("l").unwrap()
        ) < 1e-5
    );
    let n_fixture = f.tensors.keys().filter(|k| k.starts_with("cache.")).count();
    assert_eq!(
        cache.len(),
        n_fixture,
        "every TransformerLens hook point, nothing more"
    );
    for (name, t) in cache.iter() {
        let want = f
            .get(&format!("cache.{name}"))
            .unwrap()
            .to_f32(name)
            .unwrap();
        let got = values(t);
        let d = got
            .iter()
            .zip(&want)
            .map(|(a, b)| if a == b { 0.0 } else { (a - b).abs() })
            .fold(0.0, f32::max);
        assert!(d < 1e-5, "{name}: {d}");
    }
    let same = |a: &str, t: &Tensor| assert_eq!(values(cache.get(a).unwrap()), values(t), "{a}");
    same(
        "blocks.0.attn.hook_pattern",
        cache.get(("pattern", 0)).unwrap(),
    );
    same(
        "blocks.1.attn.hook_pattern",
        cache.get(("attn", -1)).unwrap(),
    );
    same("blocks.1.hook_resid_pre", cache.get("resid_pre1").unwrap());
    same(
        "blocks.0.mlp.hook_post",
        cache.get(("post", 0, "mlp")).unwrap(),
    );
    same("ln_final.hook_scale", cache.get("scale").unwrap());
    same(
        "blocks.0.ln1.hook_scale",
        cache.get(("scale", 0, "ln1")).unwrap(),
    );
    let e = cache
        .get("blocks.0.attn.hook_patern")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("did you mean") && e.contains("blocks.0.attn.hook_pattern"),
        "{e}"
    );
}

#[test]
fn names_filter_keeps_only_what_was_asked() {
    let (_, model, tokens) = load_model("tl_grok_1l.safetensors");
    let (_, cache) = model
        .run_with_cache(
            &tokens,
            &Names::List(vec!["pattern0".into(), "hook_embed".into()]),
        )
        .unwrap();
    assert_eq!(
        cache.names().collect::<Vec<_>>(),
        ["hook_embed", "blocks.0.attn.hook_pattern"]
    );
    let (_, cache) = model
        .run_with_cache(&tokens, &Names::Filter(Box::new(|n| n.ends_with("hook_z"))))
        .unwrap();
    assert_eq!(cache.len(), 1);
    let e = model
        .run_with_cache(&tokens, &Names::exact("hook_embd"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("hook_embed"), "{e}");
}

#[test]
fn hook_result_sums_to_attn_out() {
    let (_, model, tokens) = load_model("tl_ln_2l.safetensors");
    let names = Names::List(vec![
        "blocks.1.attn.hook_result".into(),
        "blocks.1.hook_attn_out".into(),
    ]);
    let (_, cache) = model.run_with_cache(&tokens, &names).unwrap();
    let result = cache.get(("result", 1)).unwrap();
    assert_eq!(result.dims(), &[16, 8, 2, 32]);
    let summed = result
        .sum(2)
        .unwrap()
        .broadcast_add(model.weight("blocks.1.attn.b_O").unwrap())
        .unwrap();
    assert!(tensor_diff(&summed, cache.get(("attn_out", 1)).unwrap()) < 1e-5);
}

#[test]
fn activation_gradients_add_up_to_parameter_gradients() {
    let (f, model, tokens) = load_model("tl_grok_1l.safetensors");
    let labels = fixture_labels(&f);
    let labels = Tensor::from_slice(&labels, labels.len(), &Device::Cpu).unwrap();
    let names = Names::List(vec![
        "hook_embed".into(),
        "hook_pos_embed".into(),
        "blocks.0.hook_resid_pre".into(),
    ]);
    let (_, _, grads) = model
        .run_with_cache_and_grads(&tokens, &names, |l| {
            loss(Target::LastPosition, l, &tokens, &labels)
        })
        .unwrap();
    // d loss / d W_pos = Σ_batch d loss / d hook_pos_embed.
    let d_pos = grads.get("hook_pos_embed").unwrap().sum(0).unwrap();
    let want = f.get("grad.pos_embed.W_pos").unwrap().to_f32("g").unwrap();
    assert!(max_abs_diff(&values(&d_pos), &want) < 1e-5);
    // resid_pre = embed + pos_embed, so their gradients are equal (the graph is not cut at either).
    assert!(
        tensor_diff(
            grads.get("hook_embed").unwrap(),
            grads.get("resid_pre0").unwrap()
        ) < 1e-7
    );
}

#[test]
fn stop_at_layer_returns_the_residual_stream() {
    let (_, model, tokens) = load_model("tl_ln_2l.safetensors");
    let (_, cache) = model.run_with_cache(&tokens, &Names::All).unwrap();
    let (resid, partial) = model
        .run_with_cache_to_layer(&tokens, &Names::All, 1)
        .unwrap();
    assert!(tensor_diff(&resid, cache.get("blocks.0.hook_resid_post").unwrap()) < 1e-6);
    assert!(partial.get("resid_pre1").is_err());
    assert!(model.forward_to_layer(&tokens, 3, &mut NoHooks).is_err());
}

#[test]
fn hooks_replace_check_shapes_and_do_not_persist() {
    let (_, model, tokens) = load_model("tl_grok_1l.safetensors");
    let (clean, cache) = model.run_with_cache(&tokens, &Names::All).unwrap();
    // Zero-ablating the MLP output leaves logits = resid_mid · W_U.
    let mut hooks = HookSet::new(&model)
        .add(("mlp_out", 0), zero_ablate())
        .unwrap();
    let ablated = model.run_with_hooks(&tokens, &mut hooks).unwrap();
    let mid = cache
        .get("resid_mid0")
        .unwrap()
        .reshape((64 * 3, 128))
        .unwrap();
    let want = mid
        .matmul(model.weight("unembed.W_U").unwrap())
        .unwrap()
        .reshape((64, 3, 113))
        .unwrap();
    assert!(tensor_diff(&ablated, &want) < 1e-5);
    // A wrong-shaped replacement is an error naming the hook point.
    let bad: groklens::interp::HookFn = Box::new(|_, _| {
        Ok(Some(Tensor::zeros(
            (2, 2),
            candle_core::DType::F32,
            &Device::Cpu,
        )?))
    });
    let mut hooks = HookSet::new(&model)
        .add("blocks.0.hook_attn_out", bad)
        .unwrap();
    let e = model
        .run_with_hooks(&tokens, &mut hooks)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blocks.0.hook_attn_out") && e.contains("[2, 2]"),
        "{e}"
    );
    drop(hooks);
    let again = model
        .forward(&tokens, LogitPositions::All, &mut NoHooks)
        .unwrap();
    assert_eq!(values(&again), values(&clean));
    // Unknown hook names are rejected when the hook is added.
    assert!(HookSet::new(&model)
        .add("blocks.0.mlp.hook_mid", zero_ablate())
        .is_err());
}

#[test]
fn patching_and_per_head_ablation() {
    let (_, model, tokens) = load_model("tl_ln_2l.safetensors");
    let other = tokens.flip(&[0]).unwrap_or_else(|_| tokens.clone());
    let other = Tensor::cat(
        &[
            other.narrow(0, 8, 8).unwrap(),
            other.narrow(0, 0, 8).unwrap(),
        ],
        0,
    )
    .unwrap();
    let (logits_a, cache_a) = model.run_with_cache(&tokens, &Names::All).unwrap();
    // Patching the last residual stream of run A into run B reproduces A's logits.
    let mut hooks = HookSet::new(&model)
        .add(
            "blocks.1.hook_resid_post",
            patch(cache_a.get("resid_post1").unwrap().clone()),
        )
        .unwrap();
    assert!(
        tensor_diff(
            &model.run_with_hooks(&other, &mut hooks).unwrap(),
            &logits_a
        ) < 1e-5
    );
    // Patching position 5 of the embeddings changes nothing before position 5 (causal attention).
    let (logits_b, _) = model
        .run_with_cache(&other, &Names::exact("hook_embed"))
        .unwrap();
    let mut hooks = HookSet::new(&model)
        .add(
            "hook_embed",
            patch_position(cache_a.get("embed").unwrap().clone(), 5),
        )
        .unwrap();
    let patched = model.run_with_hooks(&other, &mut hooks).unwrap();
    assert!(
        tensor_diff(
            &patched.narrow(1, 0, 5).unwrap(),
            &logits_b.narrow(1, 0, 5).unwrap()
        ) < 1e-6
    );
    assert!(
        tensor_diff(
            &patched.narrow(1, 5, 1).unwrap(),
            &logits_b.narrow(1, 5, 1).unwrap()
        ) > 1e-4
    );
    // Zero-ablating head 1's pattern zeroes exactly that head.
    let mut hooks = HookSet::new(&model)
        .add(("pattern", 0), zero_ablate_head(1))
        .unwrap();
    let mut rec = groklens::model::Recorder::new(|n: &str| n == "blocks.0.attn.hook_z");
    model
        .forward(
            &tokens,
            LogitPositions::All,
            &mut Chain(&mut hooks, &mut rec),
        )
        .unwrap();
    let z = &rec.values[0].1;
    assert_eq!(
        z.narrow(2, 1, 1)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    assert!(
        z.narrow(2, 0, 1)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );
}

/// Applies two hook objects in turn.
struct Chain<'a, 'b>(
    &'a mut dyn groklens::model::Hooks,
    &'b mut dyn groklens::model::Hooks,
);

impl groklens::model::Hooks for Chain<'_, '_> {
    fn hook(&mut self, name: &str, value: Tensor) -> groklens::Result<Tensor> {
        let v = self.0.hook(name, value)?;
        self.1.hook(name, v)
    }
    fn wants(&self, name: &str) -> bool {
        self.0.wants(name) || self.1.wants(name)
    }
}

#[test]
fn mean_ablation_sweep_covers_every_hook_point() {
    let (_, model, tokens) = load_model("tl_ln_2l.safetensors");
    let (a, b) = (
        tokens.narrow(0, 0, 8).unwrap(),
        tokens.narrow(0, 8, 8).unwrap(),
    );
    let prev_loss = |logits: &Tensor| -> groklens::Result<f64> {
        let t = &b;
        let dummy = Tensor::zeros(t.dim(0)?, candle_core::DType::U32, &Device::Cpu)?;
        Ok(loss(Target::PreviousToken, logits, t, &dummy)?.to_scalar::<f64>()?)
    };
    let rows = mean_ablation_sweep(&model, &a, &b, &prev_loss).unwrap();
    let expected = model
        .cfg
        .hooks()
        .points()
        .iter()
        .filter(|p| p.name != "hook_pos_embed" && !p.optional)
        .count();
    assert_eq!(rows.len(), 1 + expected);
    assert_eq!(rows[0].hook, "baseline");
    assert!(rows.iter().all(|r| r.loss.is_finite()));
    let embed = rows.iter().find(|r| r.hook == "hook_embed").unwrap();
    assert!(
        embed.loss > rows[0].loss,
        "removing token identity must hurt"
    );
}

#[test]
fn weight_processing_matches_transformer_lens() {
    use groklens::interp::processing::{process_weights, ProcessOptions};
    let f = fixture("tl_ln_2l.safetensors");
    let cfg = fixture_config(&f);
    let (pcfg, processed) = process_weights(
        &cfg,
        &fixture_params(&f, "param."),
        ProcessOptions::default(),
    )
    .unwrap();
    assert_eq!(
        pcfg.normalization_type,
        Some(groklens::model::Normalization::LNPre)
    );
    let mut checked = 0;
    for p in processed.iter() {
        let want = f
            .get(&format!("processed.{}", p.name))
            .unwrap_or_else(|| panic!("fixture lacks processed.{}", p.name));
        let d = max_abs_diff(&p.data, &want.to_f32(&p.name).unwrap());
        assert!(d < 1e-5, "processed {} differs by {d}", p.name);
        checked += 1;
    }
    let fixture_count = f
        .tensors
        .keys()
        .filter(|k| k.starts_with("processed.") && *k != "processed.logits")
        .count();
    assert_eq!(checked, fixture_count);
    let model = HookedTransformer::new(&pcfg, &processed).unwrap();
    let (tokens, batch) = fixture_tokens(&f);
    let logits = model
        .forward(
            &model.tokens_tensor(&tokens, batch).unwrap(),
            LogitPositions::All,
            &mut NoHooks,
        )
        .unwrap();
    let want = f.get("processed.logits").unwrap().to_f32("logits").unwrap();
    assert!(max_abs_diff(&values(&logits), &want) < 1e-5);
}

/// Every family's hook tree is what its forward pass runs through: the cache of a plain run holds
/// exactly the tree's points (but the on-request `hook_result`), in the tree's order, each with as
/// many axes as its activation has dimensions.
#[test]
fn each_familys_hook_tree_is_its_forward_pass() {
    use groklens::model::Params;
    use groklens::rng::RngKind;
    for name in [
        "quick",
        "quick-mlp",
        "quick-bitnet-binary",
        "quick-prev-token",
    ] {
        let cfg = groklens::presets::preset(name).unwrap();
        let params = Params::init(&cfg.model, RngKind::Chacha);
        let model = cfg.model.build(&params).unwrap();
        let rows = 3;
        let n_ctx = cfg.task.seq_len();
        let tokens: Vec<u32> = (0..rows * n_ctx).map(|i| (i % 5) as u32).collect();
        let t = model.tokens_tensor(&tokens, rows).unwrap();
        let (_, cache) = model.run_with_cache(&t, &Names::All).unwrap();
        let tree = model.hook_tree();
        let wanted: Vec<&str> = tree
            .points()
            .iter()
            .filter(|p| !p.optional)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(cache.names().collect::<Vec<_>>(), wanted, "{name}");
        for p in tree.points().iter().filter(|p| !p.optional) {
            let act = cache.get(p.name.as_str()).unwrap();
            assert_eq!(
                act.rank(),
                p.axes.len(),
                "{name}: {} is {:?}",
                p.name,
                act.dims()
            );
        }
    }
}
