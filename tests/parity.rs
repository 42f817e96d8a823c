//! Parity with TransformerLens 2.18: logits, every cached activation, and gradients.

mod common;

use candle_core::Tensor;
use common::*;
use groklens::engine::loss::loss;
use groklens::model::{HookedTransformer, LogitPositions, Recorder};
use groklens::tasks::Target;

fn check_forward(file: &str) {
    let f = fixture(file);
    let cfg = fixture_config(&f);
    let params = fixture_params(&f, "param.");
    let model = HookedTransformer::new(&cfg, &params).unwrap();
    let (tokens, batch) = fixture_tokens(&f);
    let tokens = model.tokens_tensor(&tokens, batch).unwrap();
    let mut rec = Recorder::new(|_: &str| true);
    let logits = model
        .forward(&tokens, LogitPositions::All, &mut rec)
        .unwrap();
    let want = f.get("logits").unwrap().to_f32("logits").unwrap();
    let got = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(
        max_abs_diff(&got, &want) < 1e-5,
        "{file}: logits differ by {}",
        max_abs_diff(&got, &want)
    );
    let mut checked = 0;
    for (name, t) in f.tensors.iter().filter(|(n, _)| n.starts_with("cache.")) {
        let hook = &name["cache.".len()..];
        let (_, got) = rec
            .values
            .iter()
            .find(|(n, _)| n == hook)
            .unwrap_or_else(|| panic!("{file}: no hook point {hook}"));
        assert_eq!(got.dims(), t.shape.as_slice(), "{file}: shape of {hook}");
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = t.to_f32(name).unwrap();
        // -inf entries of masked scores compare equal; everything else to 1e-5.
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| if a == b { 0.0 } else { (a - b).abs() })
            .fold(0.0, f32::max);
        assert!(diff < 1e-5, "{file}: {hook} differs by {diff}");
        checked += 1;
    }
    assert!(
        checked >= 15,
        "{file}: only {checked} cache tensors checked"
    );
}

#[test]
fn grok_1l_forward_and_cache_match_transformer_lens() {
    check_forward("tl_grok_1l.safetensors");
}

#[test]
fn ln_2l_forward_and_cache_match_transformer_lens() {
    check_forward("tl_ln_2l.safetensors");
}

fn check_grads(file: &str, kind: Target) {
    let f = fixture(file);
    let cfg = fixture_config(&f);
    let params = fixture_params(&f, "param.");
    let specs = cfg.param_specs();
    let (model, vars) = HookedTransformer::with_vars(&cfg, &params, |s| {
        f.get(&format!("grad.{}", specs[s.index()].name)).is_some()
    })
    .unwrap();
    let (tokens, batch) = fixture_tokens(&f);
    let tokens = model.tokens_tensor(&tokens, batch).unwrap();
    let labels = fixture_labels(&f);
    let labels = Tensor::from_slice(&labels, labels.len(), &candle_core::Device::Cpu).unwrap();
    let logits = model
        .forward(&tokens, LogitPositions::All, &mut groklens::model::NoHooks)
        .unwrap();
    let l = loss(kind, &logits, &tokens, &labels).unwrap();
    let want_loss = f.get("loss").unwrap().to_f64("loss").unwrap()[0];
    let got_loss = l.to_scalar::<f64>().unwrap();
    assert!(
        (got_loss - want_loss).abs() < 1e-5,
        "{file}: loss {got_loss} vs {want_loss}"
    );
    let grads = l.backward().unwrap();
    for (slot, var) in &vars {
        let name = &specs[slot.index()].name;
        let g = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = f
            .get(&format!("grad.{name}"))
            .unwrap()
            .to_f32(name)
            .unwrap();
        let d = max_abs_diff(&g, &want);
        assert!(d < 1e-5, "{file}: grad of {name} differs by {d}");
    }
}

#[test]
fn grok_1l_gradients_match_torch() {
    check_grads("tl_grok_1l.safetensors", Target::LastPosition);
}

#[test]
fn ln_2l_gradients_match_torch() {
    check_grads("tl_ln_2l.safetensors", Target::PreviousToken);
}
