//! Seed 003's analysis of a previous-token model, on its evaluation set: loss per position, attention
//! patterns, direct logit attribution of each component to the correct previous token, the folded
//! model's full QK and OV circuits, MLP activations by position, and the mean-ablation of every hook
//! point.

use std::path::Path;

use candle_core::{Device, Tensor, D};

use crate::analysis::{analysed_model, AnalysedModel};
use crate::engine::loss::loss;
use crate::error::{GrokError, Result};
use crate::interp::processing::{process_weights, ProcessOptions};
use crate::interp::{mean_ablation_sweep, AblationRow, Interp, Names};
use crate::linalg::Matrix;
use crate::model::HookedTransformer;
use crate::run::{metrics, MetricsRow, RunDir};
use crate::tasks::Target;
use crate::RunConfig;

/// Rows of the evaluation set the cached analyses read (seed 003 reads 4 000; the attention and DLA
/// means settle long before).
pub const ANALYSED_ROWS: usize = 1000;

/// Tokens of the vocabulary the circuit heatmaps show (the full 300 × 300 maps are unreadable).
pub const CIRCUIT_TOKENS: usize = 60;

/// Everything the sequence report draws.
pub struct SequenceAnalysis {
    /// The run's config.
    pub cfg: RunConfig,
    /// Every evaluation.
    pub metrics: Vec<MetricsRow>,
    /// The step of the model analysed.
    pub final_step: usize,
    /// What the reader must know about the run: unfinished, checkpoints skipped and why.
    pub notes: Vec<String>,
    /// Mean loss at positions 1..n_ctx (index 0 is position 1).
    pub loss_by_position: Vec<f32>,
    /// `"L{l}H{h}"` per head, in order.
    pub heads: Vec<String>,
    /// Per head: the mean attention pattern `[query, key]`.
    pub mean_patterns: Vec<Matrix>,
    /// Per head: the first evaluation row's pattern.
    pub example_patterns: Vec<Matrix>,
    /// Per head: mean attention from position i ≥ 1 to i − 1.
    pub previous_token_share: Vec<f32>,
    /// Per head: mean attention to BOS (position 0) by query position.
    pub bos_attention: Vec<Vec<f32>>,
    /// Component labels of the direct logit attribution.
    pub dla_labels: Vec<String>,
    /// `[components, positions 1..n_ctx]`: mean direct contribution to the correct previous token's
    /// logit (final LayerNorm scale applied, centred over the vocabulary as the seed plots it).
    pub dla: Matrix,
    /// Per head of the folded model: `W_E W_Q W_Kᵀ W_Eᵀ` on the first [`CIRCUIT_TOKENS`] tokens.
    pub full_qk: Vec<Matrix>,
    /// Per head of the folded model: `W_E W_V W_O W_U` on the first [`CIRCUIT_TOKENS`] tokens.
    pub full_ov: Vec<Matrix>,
    /// Per layer: mean MLP activation `[position, neuron]`.
    pub neuron_acts: Vec<Matrix>,
    /// Per layer: share of neurons active (post > 0) at each position.
    pub active_share: Vec<Vec<f32>>,
    /// The mean-ablation sweep; the first row is the clean loss.
    pub ablation: Vec<AblationRow>,
}

/// Analyses the previous-token run in `dir` (its final model, or newest checkpoint).
pub fn analyze_sequence_run(dir: &Path) -> Result<SequenceAnalysis> {
    let run = RunDir::new(dir);
    let cfg = run.load_config()?;
    let (Some(task), Some(model_cfg)) = (cfg.task.sequence(), cfg.model.transformer()) else {
        return Err(GrokError::config(
            "task.kind",
            cfg.task.kind(),
            "the sequence report needs a previous_token task on a transformer",
        ));
    };
    let metrics = metrics::read(&run.metrics_path())?;
    let epochs = crate::run::checkpoint::list_epochs(&run.checkpoint_dir());
    let AnalysedModel {
        epoch: final_step,
        params,
        notes,
        ..
    } = analysed_model(&run, &cfg, &epochs, &metrics)?;
    let model = HookedTransformer::new(model_cfg, &params)?;
    let eval = task.evaluation_set();
    let rows = eval.len().min(ANALYSED_ROWS);
    let n_ctx = task.n_ctx;
    let tokens = Tensor::from_slice(&eval.tokens[..rows * n_ctx], (rows, n_ctx), &Device::Cpu)?;
    let (logits, cache) = model.run_with_cache(&tokens, &Names::All)?;

    // Loss per position: −log p(token i−1) at position i.
    let lp = candle_nn::ops::log_softmax(&logits.to_dtype(candle_core::DType::F64)?, D::Minus1)?;
    let targets = tokens.narrow(1, 0, n_ctx - 1)?.contiguous()?;
    let picked = lp
        .narrow(1, 1, n_ctx - 1)?
        .contiguous()?
        .gather(&targets.unsqueeze(2)?, 2)?
        .squeeze(2)?;
    let loss_by_position: Vec<f32> = picked
        .neg()?
        .mean(0)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;

    // Attention.
    let (mut heads, mut mean_patterns, mut example_patterns) = (Vec::new(), Vec::new(), Vec::new());
    let (mut previous_token_share, mut bos_attention) = (Vec::new(), Vec::new());
    let hooks = model_cfg.hooks();
    for (l, b) in hooks.blocks.iter().enumerate() {
        let pattern = cache.at(&hooks, b.attn.map(|a| a.pattern))?;
        let mean = pattern.mean(0)?; // [head, q, k]
        for h in 0..model_cfg.n_heads {
            heads.push(format!("L{l}H{h}"));
            let m = Matrix::new(n_ctx, n_ctx, mean.get(h)?.flatten_all()?.to_vec1()?)?;
            previous_token_share
                .push((1..n_ctx).map(|q| m.at(q, q - 1)).sum::<f32>() / (n_ctx - 1) as f32);
            bos_attention.push((0..n_ctx).map(|q| m.at(q, 0)).collect());
            mean_patterns.push(m);
            let first = pattern.get(0)?.get(h)?.flatten_all()?.to_vec1()?;
            example_patterns.push(Matrix::new(n_ctx, n_ctx, first)?);
        }
    }

    // Direct logit attribution to the correct previous token, per position.
    let stack = cache.decompose_resid(&model, None, false, true)?;
    let dla_labels = stack.labels.clone();
    let component_logits = cache.component_logits(&model, &stack)?; // [c, b, p, v]
    let centred = component_logits.broadcast_sub(&component_logits.mean_keepdim(D::Minus1)?)?;
    let index = targets
        .unsqueeze(0)?
        .unsqueeze(3)?
        .broadcast_as((dla_labels.len(), rows, n_ctx - 1, 1))?
        .contiguous()?;
    let dla_t = centred
        .narrow(2, 1, n_ctx - 1)?
        .contiguous()?
        .gather(&index, 3)?
        .squeeze(3)?
        .mean(1)?;
    let dla = Matrix::new(dla_labels.len(), n_ctx - 1, dla_t.flatten_all()?.to_vec1()?)?;

    // Circuits of the folded model.
    let (folded_cfg, folded) = process_weights(model_cfg, &params, ProcessOptions::default())?;
    let folded_model = HookedTransformer::new(&folded_cfg, &folded)?;
    let (mut full_qk, mut full_ov) = (Vec::new(), Vec::new());
    for l in 0..model_cfg.n_layers {
        for h in 0..model_cfg.n_heads {
            full_qk.push(
                folded_model
                    .full_qk_circuit(l, h)?
                    .ab()
                    .corner(CIRCUIT_TOKENS, CIRCUIT_TOKENS),
            );
            full_ov.push(
                folded_model
                    .full_ov_circuit(l, h)?
                    .ab()
                    .corner(CIRCUIT_TOKENS, CIRCUIT_TOKENS),
            );
        }
    }

    // MLP activations by position.
    let (mut neuron_acts, mut active_share) = (Vec::new(), Vec::new());
    if !model_cfg.attn_only {
        for b in &hooks.blocks {
            let post = cache.at(&hooks, b.mlp.map(|m| m.post))?;
            let m = post.mean(0)?;
            neuron_acts.push(Matrix::new(
                n_ctx,
                model_cfg.d_mlp,
                m.flatten_all()?.to_vec1()?,
            )?);
            let active = post
                .gt(0.0)?
                .to_dtype(candle_core::DType::F32)?
                .mean(0)?
                .mean(1)?;
            active_share.push(active.to_vec1()?);
        }
    }
    drop(cache);

    // Mean-ablation: means over the analysed rows, loss on a fresh batch past the training stream.
    let fresh = task.unseen_batch(rows, final_step, cfg.train.batch_size);
    let fresh = Tensor::from_slice(&fresh.tokens, (rows, n_ctx), &Device::Cpu)?;
    let no_labels = Tensor::zeros(0, candle_core::DType::U32, &Device::Cpu)?;
    let score = |logits: &Tensor| -> Result<f64> {
        Ok(loss(Target::PreviousToken, logits, &fresh, &no_labels)?.to_scalar::<f64>()?)
    };
    let ablation = mean_ablation_sweep(&model, &tokens, &fresh, &score)?;

    Ok(SequenceAnalysis {
        cfg: cfg.clone(),
        metrics,
        final_step,
        notes,
        loss_by_position,
        heads,
        mean_patterns,
        example_patterns,
        previous_token_share,
        bos_attention,
        dla_labels,
        dla,
        full_qk,
        full_ov,
        neuron_acts,
        active_share,
        ablation,
    })
}

impl SequenceAnalysis {
    /// Ablation rows after the baseline, largest loss first.
    pub fn ablation_sorted(&self) -> Vec<&AblationRow> {
        let mut rows: Vec<&AblationRow> = self.ablation.iter().skip(1).collect();
        rows.sort_by(|a, b| b.loss.total_cmp(&a.loss));
        rows
    }

    /// What the analysis says in words: which heads attend to the previous token, and how the model
    /// can find positions without positional embeddings.
    pub fn findings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let n_ctx = self.loss_by_position.len() + 1;
        for (h, &share) in self.heads.iter().zip(&self.previous_token_share) {
            if share >= 0.5 {
                out.push(format!(
                    "{h} is a previous-token head: on average {:.0}% of each position's attention goes to the position before it.",
                    100.0 * share
                ));
            }
        }
        if out.is_empty() {
            let (best, share) = self
                .heads
                .iter()
                .zip(&self.previous_token_share)
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(h, s)| (h.clone(), *s))
                .unwrap_or_default();
            out.push(format!(
                "No head puts most of its attention on the previous token; the most is {best} with {:.0}%.",
                100.0 * share
            ));
        }
        // Positions from BOS dilution: a layer-0 head attending uniformly over the causal window puts
        // 1/(i+1) on BOS at position i, so its output carries the position.
        for (h, bos) in self
            .heads
            .iter()
            .zip(&self.bos_attention)
            .filter(|(h, _)| h.starts_with("L0"))
        {
            let uniform: Vec<f32> = (0..bos.len()).map(|i| 1.0 / (i as f32 + 1.0)).collect();
            let r = correlation(&bos[1..], &uniform[1..]);
            if r > 0.8 {
                out.push(format!(
                    "{h} attends to BOS with weight falling from {:.2} at position 1 to {:.3} at position {} (correlation {r:.2} with 1/(i+1), uniform causal attention): with W_pos at zero, how much of BOS's value reaches a position is what tells the model where it is.",
                    bos[1],
                    bos[n_ctx - 1],
                    n_ctx - 1
                ));
            }
        }
        out
    }
}

/// Pearson correlation of two equally long series.
fn correlation(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().max(1) as f32;
    let (ma, mb) = (a.iter().sum::<f32>() / n, b.iter().sum::<f32>() / n);
    let cov: f32 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f32 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f32 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt().max(1e-12)
}
