//! The hand-written fast engine against torch's gradients and against the general candle path.

mod common;

use common::*;
use groklens::engine::FastEngine;
use groklens::engine::{Batch, CandleEngine, Engine, LossKind};
use groklens::model::transformer::config::Normalization;
use groklens::model::{ActFn, ModelConfig, Params, PositionalEmbedding, TransformerConfig};
use groklens::rng::RngKind;
use groklens::tasks::Target;

#[test]
fn fast_gradients_match_torch_on_the_grokking_fixture() {
    let f = fixture("tl_grok_1l.safetensors");
    let cfg = fixture_config(&f);
    let params = fixture_params(&f, "param.");
    let (tokens, _) = fixture_tokens(&f);
    let labels = fixture_labels(&f);
    let trainable: Vec<bool> = params
        .iter()
        .map(|p| f.get(&format!("grad.{}", p.name)).is_some())
        .collect();
    for threads in [1, 2, 3] {
        let mut grads = params.zeros_like();
        let mut engine = FastEngine::new(&cfg, threads);
        let batch = Batch::new(&tokens, &labels, 3, Target::LastPosition);
        let stats = engine
            .loss_and_grads(&params, &trainable, batch, &mut grads)
            .unwrap();
        let want_loss = f.get("loss").unwrap().to_f64("loss").unwrap()[0];
        assert!(
            (stats.loss - want_loss).abs() < 1e-6,
            "loss {} vs {want_loss}",
            stats.loss
        );
        for p in params
            .iter()
            .filter(|p| f.get(&format!("grad.{}", p.name)).is_some())
        {
            let want = f
                .get(&format!("grad.{}", p.name))
                .unwrap()
                .to_f32(&p.name)
                .unwrap();
            let d = max_abs_diff(&grads.get(&p.name).unwrap().data, &want);
            assert!(
                d < 1e-5,
                "threads {threads}: grad of {} differs by {d}",
                p.name
            );
        }
    }
}

fn random_batch(
    cfg: &TransformerConfig,
    rows: usize,
    seq: usize,
    seed: u32,
) -> (Vec<u32>, Vec<u32>) {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(12345);
    let mut next = |m: usize| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x % m as u32
    };
    let tokens = (0..rows * seq).map(|_| next(cfg.d_vocab)).collect();
    let labels = (0..rows).map(|_| next(cfg.d_vocab_out)).collect();
    (tokens, labels)
}

/// Params with every parameter (biases too) random, so every gradient path is exercised.
fn random_params(cfg: &TransformerConfig) -> Params {
    let mut p = Params::init(&ModelConfig::Transformer(cfg.clone()), RngKind::Chacha);
    let mut k = 0u32;
    for param in p.iter_mut() {
        if cfg.positional_embedding_type == PositionalEmbedding::None
            && param.name == "pos_embed.W_pos"
        {
            continue;
        }
        for v in param.data.iter_mut() {
            k += 1;
            *v += 0.05 * ((k as f32) * 0.73).sin();
        }
    }
    p
}

fn compare(cfg: TransformerConfig, seq: usize) {
    compare_on(cfg, seq, Target::LastPosition)
}

fn compare_on(cfg: TransformerConfig, seq: usize, target: Target) {
    compare_scored(cfg, seq, target, LossKind::CrossEntropy)
}

fn compare_scored(cfg: TransformerConfig, seq: usize, target: Target, loss: LossKind) {
    let params = random_params(&cfg);
    // As the trainer does: W_pos without positional embeddings is fixed at zero, never trained.
    let trainable: Vec<bool> = params
        .iter()
        .map(|p| {
            !(cfg.positional_embedding_type == PositionalEmbedding::None
                && p.name == "pos_embed.W_pos")
        })
        .collect();
    let (tokens, mut labels) = random_batch(&cfg, 37, seq, cfg.n_layers as u32 + seq as u32);
    if target == Target::PreviousToken {
        labels.clear();
    }
    let batch = Batch::new(&tokens, &labels, seq, target).with_loss(loss);
    let mut g_fast = params.zeros_like();
    let mut g_ref = params.zeros_like();
    let fast = FastEngine::new(&cfg, 2)
        .loss_and_grads(&params, &trainable, batch, &mut g_fast)
        .unwrap();
    let reference = CandleEngine::new(&ModelConfig::Transformer(cfg.clone()))
        .loss_and_grads(&params, &trainable, batch, &mut g_ref)
        .unwrap();
    assert!(
        (fast.loss - reference.loss).abs() < 1e-5,
        "{cfg:?}: loss {} vs {}",
        fast.loss,
        reference.loss
    );
    assert_eq!(fast.correct, reference.correct);
    for p in params
        .iter()
        .zip(&trainable)
        .filter(|(_, &t)| t)
        .map(|(p, _)| p)
    {
        let d = max_abs_diff(
            &g_fast.get(&p.name).unwrap().data,
            &g_ref.get(&p.name).unwrap().data,
        );
        let scale = g_ref
            .get(&p.name)
            .unwrap()
            .data
            .iter()
            .fold(0.0f32, |m, x| m.max(x.abs()))
            .max(1e-3);
        assert!(
            d < 1e-5 || d / scale < 1e-4,
            "{cfg:?}: grad of {} differs by {d} (scale {scale})",
            p.name
        );
    }
    let eval_fast = FastEngine::new(&cfg, 3).evaluate(&params, batch).unwrap();
    let eval_ref = CandleEngine::new(&ModelConfig::Transformer(cfg.clone()))
        .evaluate(&params, batch)
        .unwrap();
    assert!((eval_fast.loss - eval_ref.loss).abs() < 1e-5 && eval_fast.correct == eval_ref.correct);
}

fn small() -> TransformerConfig {
    TransformerConfig {
        n_layers: 1,
        d_model: 24,
        n_heads: 3,
        d_head: 8,
        d_mlp: 40,
        d_vocab: 17,
        d_vocab_out: 13,
        n_ctx: 5,
        seed: 3,
        ..TransformerConfig::grokking_demo()
    }
}

#[test]
fn fast_matches_candle_one_layer_relu() {
    compare(small(), 5);
}

/// StableMax cross-entropy: the fast engine's hand-written gradient equals candle's autodiff of the
/// loss formula, at the last position and at every position.
#[test]
fn fast_matches_candle_under_stablemax() {
    compare_scored(small(), 3, Target::LastPosition, LossKind::StableMax);
    compare_scored(
        previous_token_model(Some(Normalization::LN)),
        5,
        Target::PreviousToken,
        LossKind::StableMax,
    );
}

#[test]
fn fast_matches_candle_with_shorter_sequences_than_n_ctx() {
    compare(small(), 3);
}

#[test]
fn fast_matches_candle_two_layers_gelu_new() {
    compare(
        TransformerConfig {
            n_layers: 2,
            act_fn: ActFn::GeluNew,
            ..small()
        },
        4,
    );
}

#[test]
fn fast_matches_candle_three_layers_attention_only_without_positions() {
    compare(
        TransformerConfig {
            n_layers: 3,
            attn_only: true,
            positional_embedding_type: PositionalEmbedding::None,
            ..small()
        },
        5,
    );
}

/// A LayerNorm model scored at every position on its previous token (seed 003's shape, small).
fn previous_token_model(normalization: Option<Normalization>) -> TransformerConfig {
    TransformerConfig {
        n_layers: 2,
        n_heads: 1,
        d_head: 24,
        normalization_type: normalization,
        positional_embedding_type: PositionalEmbedding::None,
        d_vocab_out: 17,
        ..small()
    }
}

#[test]
fn fast_matches_candle_on_the_previous_token_loss_with_layernorm() {
    compare_on(
        previous_token_model(Some(Normalization::LN)),
        5,
        Target::PreviousToken,
    );
    compare_on(
        previous_token_model(Some(Normalization::LN)),
        3,
        Target::PreviousToken,
    );
}

#[test]
fn fast_matches_candle_with_layernorm_and_lnpre() {
    compare(
        TransformerConfig {
            normalization_type: Some(Normalization::LN),
            ..small()
        },
        5,
    );
    compare_on(
        previous_token_model(Some(Normalization::LNPre)),
        5,
        Target::PreviousToken,
    );
    compare_on(previous_token_model(None), 4, Target::PreviousToken);
}

/// Block 0's Q/K/V are looked up, attended over and folded back a few rows at a time (as many as
/// fill 64 KB): wide heads make those blocks 3 rows of a 37-row batch here, through both attention
/// paths (one query per row, and nine per row as matrix products).
#[test]
fn fast_matches_candle_when_block_zero_runs_in_blocks_of_rows() {
    let wide = |normalization| TransformerConfig {
        n_heads: 2,
        d_head: 96,
        n_ctx: 9,
        ..previous_token_model(normalization)
    };
    compare_on(wide(Some(Normalization::LN)), 9, Target::PreviousToken);
    compare(
        TransformerConfig {
            n_heads: 4,
            d_head: 96,
            ..small()
        },
        5,
    );
}

/// Evaluation reuses one workspace per thread across chunks of different sizes: the logits and the
/// scores are the same bits on any thread count (so whichever chunks share a workspace).
#[test]
fn evaluation_gives_the_same_bits_whichever_chunks_share_a_workspace() {
    let f = fixture("tl_ln_2l.safetensors");
    let cfg = TransformerConfig {
        act_fn: ActFn::GeluNew,
        ..fixture_config(&f)
    };
    let params = random_params(&cfg);
    let seq = cfg.n_ctx;
    // 1 990 rows of 8 scored positions: 117 chunks of 17 rows and a last one of 1.
    let (tokens, _) = random_batch(&cfg, 1990, seq, 7);
    let run = |threads: usize| {
        let mut engine = FastEngine::new(&cfg, threads);
        let logits = engine.logits(&params, &tokens, seq).unwrap();
        let batch = Batch::new(&tokens, &[], seq, Target::PreviousToken);
        let stats = engine.evaluate(&params, batch).unwrap();
        let bits: Vec<u32> = logits.iter().map(|x| x.to_bits()).collect();
        (bits, stats.loss.to_bits(), stats.correct)
    };
    let one = run(1);
    for threads in [2, 3, 16] {
        assert!(run(threads) == one, "{threads} threads differ from one");
    }
}

/// Training chunks take their activations' workspaces from a pool shared by every batch: an engine
/// that has just trained on a batch cut into chunks of other sizes gives a batch the same gradient
/// bits as a new engine, so nothing a chunk reads is left over from the chunk before it.
#[test]
fn training_gives_the_same_bits_in_workspaces_other_chunks_used() {
    let cfg = previous_token_model(Some(Normalization::LN));
    let params = random_params(&cfg);
    let trainable: Vec<bool> = params.iter().map(|p| p.name != "pos_embed.W_pos").collect();
    // 300 rows × 5 positions: 11 chunks of 28 rows and one of 20; the other batch, 77 rows × 4: two
    // chunks of 39 and 38 rows, so the workspaces hold longer buffers of other shapes.
    let (tokens, _) = random_batch(&cfg, 300, 5, 21);
    let (other, _) = random_batch(&cfg, 77, 4, 22);
    let batch = Batch::new(&tokens, &[], 5, Target::PreviousToken);
    let grads = |engine: &mut FastEngine, batch: Batch| -> Vec<u32> {
        let mut g = params.zeros_like();
        engine
            .loss_and_grads(&params, &trainable, batch, &mut g)
            .unwrap();
        g.iter()
            .flat_map(|p| p.data.iter().map(|x| x.to_bits()))
            .collect()
    };
    for threads in [1, 2] {
        let fresh = grads(&mut FastEngine::new(&cfg, threads), batch);
        let mut engine = FastEngine::new(&cfg, threads);
        grads(
            &mut engine,
            Batch::new(&other, &[], 4, Target::PreviousToken),
        );
        assert!(grads(&mut engine, batch) == fresh, "{threads} thread(s)");
    }
}

/// A model scored at every position is cut into chunks of few rows (about 128 predictions each):
/// its training gradients are the same bits on any thread count, and match candle's.
#[test]
fn per_position_training_gives_the_same_bits_on_any_thread_count() {
    let cfg = previous_token_model(Some(Normalization::LN));
    let params = random_params(&cfg);
    let trainable: Vec<bool> = params.iter().map(|p| p.name != "pos_embed.W_pos").collect();
    // 300 rows × 5 positions: 11 chunks of 28 rows and a last one of 20.
    let (tokens, _) = random_batch(&cfg, 300, 5, 11);
    let batch = Batch::new(&tokens, &[], 5, Target::PreviousToken);
    let run = |threads: usize| {
        let mut g = params.zeros_like();
        let stats = FastEngine::new(&cfg, threads)
            .loss_and_grads(&params, &trainable, batch, &mut g)
            .unwrap();
        let bits: Vec<u32> = g
            .iter()
            .flat_map(|p| p.data.iter().map(|x| x.to_bits()))
            .collect();
        (bits, stats.loss.to_bits(), stats.correct, g)
    };
    let one = run(1);
    for threads in [2, 3] {
        let other = run(threads);
        assert!(
            (&other.0, other.1, other.2) == (&one.0, one.1, one.2),
            "{threads} threads differ from one"
        );
    }
    let mut g_ref = params.zeros_like();
    CandleEngine::new(&ModelConfig::Transformer(cfg.clone()))
        .loss_and_grads(&params, &trainable, batch, &mut g_ref)
        .unwrap();
    for (a, r) in one.3.iter().zip(g_ref.iter()) {
        let scale = r.data.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
        let d = max_abs_diff(&a.data, &r.data);
        assert!(d / scale < 1e-4, "grad of {} differs by {d}", a.name);
    }
}
