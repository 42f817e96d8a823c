//! AdamW against two steps of `torch.optim.AdamW` recorded in the fixtures.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use groklens::engine::loss::loss;
use groklens::model::{HookedTransformer, LogitPositions, NoHooks, Params};
use groklens::optim::{AdamW, AdamWConfig};
use groklens::tasks::Target;

fn grads(file: &str, params: &Params, trainable: &[bool], kind: Target) -> Params {
    let f = fixture(file);
    let cfg = fixture_config(&f);
    let (model, vars) =
        HookedTransformer::with_vars(&cfg, params, |s| trainable[s.index()]).unwrap();
    let (tokens, batch) = fixture_tokens(&f);
    let tokens = model.tokens_tensor(&tokens, batch).unwrap();
    let labels = fixture_labels(&f);
    let labels = Tensor::from_slice(&labels, labels.len(), &Device::Cpu).unwrap();
    let logits = model
        .forward(&tokens, LogitPositions::All, &mut NoHooks)
        .unwrap();
    let store = loss(kind, &logits, &tokens, &labels)
        .unwrap()
        .backward()
        .unwrap();
    let mut g = params.zeros_like();
    for (slot, var) in vars {
        g[slot].copy_from_slice(
            &store
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
    }
    g
}

fn check(file: &str, kind: Target) {
    let f = fixture(file);
    let adam: serde_json::Value = serde_json::from_str(&f.metadata["adam"]).unwrap();
    let lr = adam["lr"].as_f64().unwrap();
    let cfg = AdamWConfig {
        weight_decay: adam["weight_decay"].as_f64().unwrap(),
        betas: (
            adam["betas"][0].as_f64().unwrap(),
            adam["betas"][1].as_f64().unwrap(),
        ),
        eps: 1e-8,
    };
    let mut params = fixture_params(&f, "param.");
    let trainable: Vec<bool> = params
        .iter()
        .map(|p| f.get(&format!("grad.{}", p.name)).is_some())
        .collect();
    let mut opt = AdamW::new(cfg, &params);
    for step in ["step1.", "step2."] {
        // Step 1 uses torch's recorded gradients, so the optimizer alone is compared; step 2 uses ours.
        let g = if step == "step1." {
            let mut g = params.zeros_like();
            for p in params
                .iter()
                .filter(|p| f.get(&format!("grad.{}", p.name)).is_some())
            {
                g.get_mut(&p.name).unwrap().data.copy_from_slice(
                    &f.get(&format!("grad.{}", p.name))
                        .unwrap()
                        .to_f32(&p.name)
                        .unwrap(),
                );
            }
            g
        } else {
            grads(file, &params, &trainable, kind)
        };
        opt.step(&mut params, &g, &trainable, lr);
        // b_K's true gradient is identically zero (it shifts every score of a row equally), so both
        // frameworks' values are float noise that Adam's m/√v turns into ±lr; after step 1 it is not comparable.
        for p in params
            .iter()
            .filter(|p| step == "step1." || !p.name.ends_with("attn.b_K"))
        {
            let want = f
                .get(&format!("{step}{}", p.name))
                .unwrap()
                .to_f32(&p.name)
                .unwrap();
            let d = max_abs_diff(&p.data, &want);
            assert!(d < 1e-5, "{file} {step}{}: differs by {d}", p.name);
        }
    }
}

#[test]
fn adamw_matches_torch_with_frozen_biases() {
    check("tl_grok_1l.safetensors", Target::LastPosition);
}

#[test]
fn adamw_matches_torch_on_the_layernorm_model() {
    check("tl_ln_2l.safetensors", Target::PreviousToken);
}
