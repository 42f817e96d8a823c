//! QK/OV circuits and residual-stream attribution, checked against what the forward pass computes.

mod common;

use candle_core::{Tensor, D};
use common::*;
use groklens::interp::{Interp, Names};
use groklens::linalg::Matrix;
use groklens::model::HookedTransformer;

fn values_u32(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<u32>().unwrap()
}

fn matrix(t: &Tensor) -> Matrix {
    let (r, c) = t.dims2().unwrap();
    Matrix::new(r, c, values(t)).unwrap()
}

/// The 1-layer grokking fixture with positional embeddings and attention biases zeroed, so the full
/// circuits through W_E describe the head exactly.
fn token_only_model() -> (HookedTransformer, Tensor, Vec<u32>) {
    let f = fixture("tl_grok_1l.safetensors");
    let cfg = fixture_config(&f);
    let mut params = fixture_params(&f, "param.");
    for name in [
        "pos_embed.W_pos",
        "blocks.0.attn.b_Q",
        "blocks.0.attn.b_K",
        "blocks.0.attn.b_V",
    ] {
        params.get_mut(name).unwrap().data.fill(0.0);
    }
    let model = HookedTransformer::new(&cfg, &params).unwrap();
    let (tokens, batch) = fixture_tokens(&f);
    let t = model.tokens_tensor(&tokens, batch).unwrap();
    (model, t, tokens)
}

#[test]
fn full_circuits_reproduce_attention_scores_and_head_outputs() {
    let (model, tokens_t, tokens) = token_only_model();
    let names = Names::List(vec![
        "blocks.0.attn.hook_attn_scores".into(),
        "blocks.0.attn.hook_pattern".into(),
        "blocks.0.attn.hook_result".into(),
        "blocks.0.mlp.hook_pre".into(),
    ]);
    let (_, cache) = model.run_with_cache(&tokens_t, &names).unwrap();
    let scores = cache.get(("attn_scores", 0)).unwrap();
    let pattern = cache.get(("pattern", 0)).unwrap();
    let result = cache.get(("result", 0)).unwrap();
    let (batch, pos) = tokens_t.dims2().unwrap();
    let cfg = &model.cfg;
    let w_e = matrix(model.weight("embed.W_E").unwrap());
    let w_u = matrix(model.weight("unembed.W_U").unwrap());
    let w_in = matrix(model.weight("blocks.0.mlp.W_in").unwrap());
    let sqrt_dh = (cfg.d_head as f32).sqrt();
    let tok = |b: usize, p: usize| tokens[b * pos + p] as usize;

    for h in 0..cfg.n_heads {
        let qk = model.full_qk_circuit(0, h).unwrap();
        assert_eq!(qk.shape(), (cfg.d_vocab, cfg.d_vocab));
        assert_eq!(qk.inner_dim(), cfg.d_head, "kept factored at rank d_head");
        let qk = qk.ab();
        let ov_resid = model.ov_circuit(0, h).unwrap().rmatmul(&w_e).unwrap().ab();
        let full_ov = model.full_ov_circuit(0, h).unwrap();
        assert_eq!(full_ov.shape(), (cfg.d_vocab, cfg.d_vocab_out));
        let full_ov = full_ov.ab();
        let to_neurons = model.ov_to_neurons(0, h, 0).unwrap().ab();
        assert_eq!((to_neurons.rows, to_neurons.cols), (cfg.d_vocab, cfg.d_mlp));

        let (mut worst_score, mut worst_out) = (0f32, 0f32);
        for b in 0..batch {
            let q = pos - 1;
            let pat = values(&pattern.get(b).unwrap().get(h).unwrap().get(q).unwrap());
            let res = values(&result.get(b).unwrap().get(q).unwrap().get(h).unwrap());
            for k in 0..=q {
                let s = scores.get(b).unwrap().get(h).unwrap().get(q).unwrap();
                let got = s.get(k).unwrap().to_scalar::<f32>().unwrap();
                worst_score = worst_score.max((qk.at(tok(b, q), tok(b, k)) / sqrt_dh - got).abs());
            }
            // The head's write, then read through W_U and W_in, from the circuits alone.
            let mix = |m: &Matrix, j: usize| -> f32 {
                (0..=q).map(|k| pat[k] * m.at(tok(b, k), j)).sum()
            };
            let res_m = Matrix::new(1, cfg.d_model, res.clone()).unwrap();
            let via_u = res_m.matmul(&w_u).unwrap();
            let via_in = res_m.matmul(&w_in).unwrap();
            for (j, r) in res.iter().enumerate() {
                worst_out = worst_out.max((mix(&ov_resid, j) - r).abs());
            }
            for j in 0..cfg.d_vocab_out {
                worst_out = worst_out.max((mix(&full_ov, j) - via_u.data[j]).abs());
            }
            for j in 0..cfg.d_mlp {
                worst_out = worst_out.max((mix(&to_neurons, j) - via_in.data[j]).abs());
            }
        }
        assert!(
            worst_score < 1e-4,
            "head {h}: QK circuit off by {worst_score}"
        );
        assert!(worst_out < 1e-4, "head {h}: OV circuit off by {worst_out}");
    }
}

#[test]
fn circuits_reject_out_of_range_heads_and_layers() {
    let (_, model, _) = load_model("tl_ln_2l.safetensors");
    let err = model.qk_circuit(0, 2).unwrap_err().to_string();
    assert!(err.contains("head") && err.contains("n_heads = 2"), "{err}");
    let err = model.ov_circuit(2, 0).unwrap_err().to_string();
    assert!(
        err.contains("layer") && err.contains("n_layers = 2"),
        "{err}"
    );
    let err = model.ov_to_neurons(0, 0, 5).unwrap_err().to_string();
    assert!(err.contains("n_layers"), "{err}");
    // Eigenvalues of an OV circuit: at most d_head of them, from the small side.
    assert_eq!(
        model.ov_circuit(1, 1).unwrap().eigenvalues().unwrap().len(),
        16
    );
}

#[test]
fn residual_stack_tools_add_up_on_a_layernorm_model() {
    let (_, model, tokens) = load_model("tl_ln_2l.safetensors");
    let (logits, cache) = model.run_with_cache(&tokens, &Names::All).unwrap();
    let final_resid = cache.get("blocks.1.hook_resid_post").unwrap();

    let acc = cache.accumulated_resid(&model, None, true).unwrap();
    assert_eq!(
        acc.labels,
        ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    );
    assert_eq!(
        tensor_diff(&acc.component("final_post").unwrap(), final_resid),
        0.0
    );
    let acc1 = cache.accumulated_resid(&model, Some(1), false).unwrap();
    assert_eq!(acc1.labels, ["0_pre", "1_pre"]);

    let parts = cache.decompose_resid(&model, None, false, true).unwrap();
    assert_eq!(
        parts.labels,
        [
            "embed",
            "pos_embed",
            "0_attn_out",
            "0_mlp_out",
            "1_attn_out",
            "1_mlp_out"
        ]
    );
    assert!(tensor_diff(&parts.stack.sum(0).unwrap(), final_resid) < 1e-5);
    let mid = cache.decompose_resid(&model, Some(1), true, true).unwrap();
    assert_eq!(mid.labels.last().unwrap(), "1_attn_out");
    let want = cache.get("blocks.1.hook_resid_mid").unwrap();
    assert!(tensor_diff(&mid.stack.sum(0).unwrap(), want) < 1e-5);

    // The final LN applied to the whole stream, then its affine map, is ln_final.hook_normalized.
    let scaled = cache.apply_ln_to_stack(&model, &acc, None, false).unwrap();
    let normalized = scaled
        .component("final_post")
        .unwrap()
        .broadcast_mul(model.weight("ln_final.w").unwrap())
        .unwrap()
        .broadcast_add(model.weight("ln_final.b").unwrap())
        .unwrap();
    let want = cache.get("ln_final.hook_normalized").unwrap();
    assert!(tensor_diff(&normalized, want) < 1e-5);
    // Block 1's ln2 sees the stream at its MLP input.
    let ln2 = cache
        .apply_ln_to_stack(&model, &mid, Some(1), true)
        .unwrap();
    let normalized = ln2
        .stack
        .sum(0)
        .unwrap()
        .broadcast_mul(model.weight("blocks.1.ln2.w").unwrap())
        .unwrap()
        .broadcast_add(model.weight("blocks.1.ln2.b").unwrap())
        .unwrap();
    assert!(
        tensor_diff(
            &normalized,
            cache.get("blocks.1.ln2.hook_normalized").unwrap()
        ) < 1e-5
    );

    // Direct logit attribution over a full decomposition adds up to the logits minus the biases.
    let per_component = cache.component_logits(&model, &parts).unwrap();
    let bias = model
        .weight("ln_final.b")
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .matmul(model.weight("unembed.W_U").unwrap())
        .unwrap()
        .broadcast_add(model.weight("unembed.b_U").unwrap())
        .unwrap();
    let total = per_component.sum(0).unwrap().broadcast_add(&bias).unwrap();
    assert!(tensor_diff(&total, &logits) < 1e-4);

    // logit_attrs picks each position's token out of component_logits; a difference subtracts.
    let (batch, pos) = tokens.dims2().unwrap();
    let n_out = model.cfg.d_vocab_out as u32;
    let wrong: Vec<u32> = values_u32(&tokens)
        .iter()
        .map(|t| (t + 1) % n_out)
        .collect();
    let wrong = Tensor::from_slice(&wrong, (batch, pos), tokens.device()).unwrap();
    let attrs = cache.logit_attrs(&model, &parts, &tokens, None).unwrap();
    let diffs = cache
        .logit_attrs(&model, &parts, &tokens, Some(&wrong))
        .unwrap();
    assert_eq!(attrs.dims(), [parts.labels.len(), batch, pos]);
    let pick = |t: &Tensor| {
        let idx = t.unsqueeze(0).unwrap().unsqueeze(3).unwrap();
        let idx = idx
            .broadcast_as((parts.labels.len(), batch, pos, 1))
            .unwrap()
            .contiguous()
            .unwrap();
        per_component
            .gather(&idx, D::Minus1)
            .unwrap()
            .squeeze(3)
            .unwrap()
    };
    assert!(tensor_diff(&attrs, &pick(&tokens)) < 1e-5);
    let want = (pick(&tokens) - pick(&wrong)).unwrap();
    assert!(tensor_diff(&diffs, &want) < 1e-5);

    let err = cache
        .logit_attrs(&model, &parts, &tokens.narrow(1, 0, 2).unwrap(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("one token per [batch, pos]"), "{err}");
    let err = cache
        .accumulated_resid(&model, Some(3), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("n_layers = 2"), "{err}");
    let err = parts.component("2_attn_out").unwrap_err().to_string();
    assert!(err.contains("0_attn_out"), "lists the labels held: {err}");
}

#[test]
fn head_results_stack_from_z_or_from_cached_results() {
    let (_, model, tokens) = load_model("tl_ln_2l.safetensors");
    let (_, cache) = model.run_with_cache(&tokens, &Names::All).unwrap();
    let heads = cache.stack_head_results(&model, None, true).unwrap();
    assert_eq!(heads.labels, ["L0H0", "L0H1", "L1H0", "L1H1", "remainder"]);
    // Heads of a block plus b_O are that block's attention output.
    let block0 = (heads.component("L0H0").unwrap() + heads.component("L0H1").unwrap())
        .unwrap()
        .broadcast_add(model.weight("blocks.0.attn.b_O").unwrap())
        .unwrap();
    assert!(tensor_diff(&block0, cache.get(("attn_out", 0)).unwrap()) < 1e-5);

    // The same stack from cached hook_result values.
    let all = Names::Filter(Box::new(|_: &str| true));
    let (_, with_results) = model.run_with_cache(&tokens, &all).unwrap();
    let again = with_results
        .stack_head_results(&model, Some(1), false)
        .unwrap();
    assert_eq!(again.labels, ["L0H0", "L0H1"]);
    assert!(tensor_diff(&again.stack, &heads.stack.narrow(0, 0, 2).unwrap()) < 1e-5);

    // Logit attribution per head on the norm-free grokking model adds up to logits − b_U − the rest.
    let (_, model, tokens) = load_model("tl_grok_1l.safetensors");
    let (logits, cache) = model.run_with_cache(&tokens, &Names::All).unwrap();
    let heads = cache.stack_head_results(&model, None, true).unwrap();
    let total = cache
        .component_logits(&model, &heads)
        .unwrap()
        .sum(0)
        .unwrap()
        .broadcast_add(model.weight("unembed.b_U").unwrap())
        .unwrap();
    assert!(tensor_diff(&total, &logits) < 1e-4);
}
