//! The analysis of a compound-expression run `( a * b + c ) ^ d =` (seed 000): the embedding's
//! Fourier norms (one table serves all four operands), and per operand the Fourier spectrum of the
//! neurons' response to that operand's value with the others held at random contexts, its key
//! frequencies, the attention the last position pays to it, and test accuracy by exponent. The
//! two-operand sections of the modular report (p × p maps, the a + b circuit) do not apply.

use std::path::Path;

use candle_core::{Device, Tensor, D};

use crate::analysis::embedding::{embedding_fourier, key_frequencies, EmbeddingFourier};
use crate::analysis::fourier::{freq_norms, row_norms, FourierBasis};
use crate::analysis::{analysed_model, checked_split, AnalysedModel};
use crate::error::{GrokError, Result};
use crate::interp::{Interp, Names};
use crate::linalg::Matrix;
use crate::model::HookedModel;
use crate::rng::TorchGenerator;
use crate::run::{grokking_epoch, metrics, MetricsRow, RunDir, GROKKED_ACCURACY};
use crate::tasks::compound::CompoundTask;
use crate::RunConfig;

/// Operand names in row order.
pub const OPERANDS: [&str; 4] = ["a", "b", "c", "d"];

/// Random contexts (values of the other three operands) each operand value is averaged over.
pub const CONTEXTS: usize = 32;

/// Test rows scored for the accuracy by exponent (the shuffled test set's first rows).
pub const SCORED_TEST_ROWS: usize = 20_000;

/// Rows per forward pass.
const CHUNK_ROWS: usize = 2048;

/// Seed of the contexts' generator (fixed, so a report is reproducible).
const CONTEXT_SEED: u64 = 0;

/// One operand seen through the model.
#[derive(Debug, Clone)]
pub struct OperandFourier {
    /// `"a"`, `"b"`, `"c"` or `"d"`.
    pub name: &'static str,
    /// Its position in the row.
    pub position: usize,
    /// Per-frequency norms (entry k−1 for k = 1..=p/2) of the response to the operand's value, as a
    /// share of the response's total non-constant norm².
    pub freq_share: Vec<f32>,
    /// Frequencies that stand out, ascending.
    pub key_freqs: Vec<usize>,
    /// Share of the response's variance over values the key frequencies explain.
    pub key_share: f32,
    /// Per attention layer and head: mean attention from the last position to this operand.
    pub attention: Vec<f32>,
}

/// Everything the compound report draws.
pub struct CompoundAnalysis {
    /// The run's config.
    pub cfg: RunConfig,
    /// The task.
    pub task: CompoundTask,
    /// Every evaluation.
    pub metrics: Vec<MetricsRow>,
    /// Epoch of the model analysed.
    pub final_epoch: usize,
    /// What the reader must know about the run.
    pub notes: Vec<String>,
    /// First evaluated epoch with test accuracy ≥ 99 %.
    pub grokking_epoch: Option<usize>,
    /// The number tokens' embedding in the Fourier basis (shared by all operands).
    pub embed: EmbeddingFourier,
    /// The hook whose response the operand spectra read.
    pub response_hook: String,
    /// a, b, c, d in order.
    pub operands: Vec<OperandFourier>,
    /// `"L{l}H{h}"` per attention head.
    pub heads: Vec<String>,
    /// Mean attention from the last position, `[head, position]`.
    pub attention_from_last: Matrix,
    /// Test accuracy by exponent d (index d), on the scored test rows.
    pub accuracy_by_exponent: Vec<f32>,
    /// Test rows scored.
    pub scored_rows: usize,
}

/// Analyses the compound-expression run in `dir` (its final model, or newest loadable checkpoint).
pub fn analyze_compound_run(dir: &Path) -> Result<CompoundAnalysis> {
    let run = RunDir::new(dir);
    let cfg = run.load_config()?;
    let Some(task) = cfg.task.compound().cloned() else {
        return Err(GrokError::config(
            "task.kind",
            cfg.task.kind(),
            "the compound report needs a compound task",
        ));
    };
    let metrics = metrics::read(&run.metrics_path())?;
    let epochs = crate::run::checkpoint::list_epochs(&run.checkpoint_dir());
    let AnalysedModel {
        epoch: final_epoch,
        params,
        notes,
        ..
    } = analysed_model(&run, &cfg, &epochs, &metrics)?;
    let model = cfg.model.build(&params)?;
    let p = task.p;
    let basis = FourierBasis::new(p);
    let embed = embedding_fourier(&basis, &cfg.model.embedding(&params));
    let layers = cfg.model.attention_layers();
    let n_heads = cfg.model.n_heads();
    let hooks = cfg.model.hooks();
    let response_hook = cfg.model.neuron_hook().unwrap_or_else(|| {
        let post = hooks.last_block().resid_post;
        post.map_or("hook_embed", |h| hooks.name(h)).to_string()
    });
    let mut names = vec![response_hook.clone()];
    names.extend(cfg.model.pattern_hooks());
    let names = Names::List(names);

    // Per operand: p values × CONTEXTS random contexts, the operand substituted.
    let mut gen = TorchGenerator::new(CONTEXT_SEED);
    let n_ctx = CompoundTask::LEN;
    let mut operands = Vec::new();
    let mut attention_sum = vec![0.0f64; layers * n_heads * n_ctx];
    let mut attention_rows = 0usize;
    for (k, (&name, &position)) in OPERANDS
        .iter()
        .zip(&CompoundTask::OPERAND_POSITIONS)
        .enumerate()
    {
        let contexts = gen.randint(CONTEXTS * 4, 0, p as u32);
        let mut tokens = Vec::with_capacity(p * CONTEXTS * n_ctx);
        for v in 0..p {
            for c in contexts.chunks_exact(4) {
                let mut ops = [c[0], c[1], c[2], c[3]].map(|x| x as usize);
                ops[k] = v;
                task.write(task.index(ops), &mut tokens);
            }
        }
        let out = forward_last(model.as_ref(), &tokens, &names, layers)?;
        // Mean response per value, then its Fourier spectrum over the value.
        let width = out.response.len() / (p * CONTEXTS);
        let mut mean = vec![0.0f32; p * width];
        for (r, row) in out.response.chunks_exact(width).enumerate() {
            let v = r / CONTEXTS;
            for (m, &x) in mean[v * width..(v + 1) * width].iter_mut().zip(row) {
                *m += x / CONTEXTS as f32;
            }
        }
        let fourier = basis.transform(&Matrix::new(p, width, mean)?);
        let norms = freq_norms(&basis, &row_norms(&fourier));
        let total: f32 = norms.iter().map(|x| x * x).sum::<f32>().max(1e-30);
        let freq_share: Vec<f32> = norms.iter().map(|x| x * x / total).collect();
        let key_freqs = key_frequencies(&norms);
        let key_share = key_freqs.iter().map(|&f| freq_share[f - 1]).sum();
        let attention = (0..layers * n_heads)
            .map(|lh| out.attention[lh * n_ctx + position] as f32 / out.rows as f32)
            .collect();
        for (s, a) in attention_sum.iter_mut().zip(&out.attention) {
            *s += a;
        }
        attention_rows += out.rows;
        operands.push(OperandFourier {
            name,
            position,
            freq_share,
            key_freqs,
            key_share,
            attention,
        });
    }
    let attention_from_last = Matrix::new(
        layers * n_heads,
        n_ctx,
        attention_sum
            .iter()
            .map(|s| (s / attention_rows.max(1) as f64) as f32)
            .collect(),
    )?;
    let heads = (0..layers)
        .flat_map(|l| (0..n_heads).map(move |h| format!("L{l}H{h}")))
        .collect();

    let test = checked_split(&run, &cfg, task.rows())?.test;
    let (accuracy_by_exponent, scored_rows) = accuracy_by_exponent(&test, &task, model.as_ref())?;
    Ok(CompoundAnalysis {
        grokking_epoch: grokking_epoch(&metrics, GROKKED_ACCURACY),
        cfg,
        task,
        metrics,
        final_epoch,
        notes,
        embed,
        response_hook,
        operands,
        heads,
        attention_from_last,
        accuracy_by_exponent,
        scored_rows,
    })
}

/// What one pass over rows leaves: the response hook at the last position, attention from it.
struct LastPosition {
    rows: usize,
    /// `[rows, width]`, flattened.
    response: Vec<f32>,
    /// `[layer·head, key]` summed over rows.
    attention: Vec<f64>,
}

/// Runs `model` over `tokens` in chunks, keeping the response hook and the attention from the last
/// position.
fn forward_last(
    model: &dyn HookedModel,
    tokens: &[u32],
    names: &Names,
    layers: usize,
) -> Result<LastPosition> {
    let n_ctx = CompoundTask::LEN;
    let rows = tokens.len() / n_ctx;
    let mut out = LastPosition {
        rows,
        response: Vec::new(),
        attention: Vec::new(),
    };
    let Names::List(list) = names else {
        unreachable!("built as a list above")
    };
    for chunk in tokens.chunks(CHUNK_ROWS * n_ctx) {
        let b = chunk.len() / n_ctx;
        let t = Tensor::from_slice(chunk, (b, n_ctx), &Device::Cpu)?;
        let (_, cache) = model.run_with_cache(&t, names)?;
        let resp = cache.get(list[0].as_str())?;
        out.response.extend(
            resp.narrow(1, n_ctx - 1, 1)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
        for l in 0..layers {
            // [batch, head, query, key] → the last query, summed over the batch: [head, key].
            let pattern = cache.get(list[1 + l].as_str())?;
            let last = pattern
                .narrow(2, n_ctx - 1, 1)?
                .sum(0)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            if out.attention.len() < (l + 1) * last.len() {
                out.attention.resize((l + 1) * last.len(), 0.0);
            }
            for (s, &x) in out.attention[l * last.len()..].iter_mut().zip(&last) {
                *s += x as f64;
            }
        }
    }
    Ok(out)
}

/// Accuracy on the first [`SCORED_TEST_ROWS`] rows of the run's (shuffled) test split `test`, by
/// exponent d.
fn accuracy_by_exponent(
    test: &[usize],
    task: &CompoundTask,
    model: &dyn HookedModel,
) -> Result<(Vec<f32>, usize)> {
    let rows = &test[..test.len().min(SCORED_TEST_ROWS)];
    let n_ctx = CompoundTask::LEN;
    let (mut right, mut seen) = (vec![0usize; task.p], vec![0usize; task.p]);
    let mut tokens = Vec::new();
    for chunk in rows.chunks(CHUNK_ROWS) {
        tokens.clear();
        let labels: Vec<u32> = chunk.iter().map(|&i| task.write(i, &mut tokens)).collect();
        let t = Tensor::from_slice(&tokens, (chunk.len(), n_ctx), &Device::Cpu)?;
        let (logits, _) = model.run_with_cache(&t, &Names::List(Vec::new()))?;
        let predicted: Vec<u32> = logits
            .narrow(1, n_ctx - 1, 1)?
            .squeeze(1)?
            .argmax(D::Minus1)?
            .to_vec1()?;
        for ((&i, &y), &yhat) in chunk.iter().zip(&labels).zip(&predicted) {
            let d = task.operands(i)[3];
            seen[d] += 1;
            right[d] += usize::from(y == yhat);
        }
    }
    let acc = right
        .iter()
        .zip(&seen)
        .map(|(&r, &s)| r as f32 / s.max(1) as f32)
        .collect();
    Ok((acc, rows.len()))
}

impl CompoundAnalysis {
    /// What the analysis says in words: each operand's key frequencies and attention, and where the
    /// exponent's accuracy is lowest.
    pub fn findings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for o in &self.operands {
            let attention: f32 = o.attention.iter().sum::<f32>() / o.attention.len().max(1) as f32;
            out.push(format!(
                "Operand {}: key frequencies {:?} carry {:.0}% of the response's variance over its values; the last position gives it {:.0}% of its attention (mean over heads).",
                o.name,
                o.key_freqs,
                100.0 * o.key_share,
                100.0 * attention
            ));
        }
        let shared: Vec<usize> = self.operands[..3]
            .iter()
            .map(|o| o.key_freqs.clone())
            .reduce(|a, b| a.into_iter().filter(|f| b.contains(f)).collect())
            .unwrap_or_default();
        if !shared.is_empty() {
            out.push(format!(
                "a, b and c share the key frequencies {shared:?}: the same Fourier features serve the operands of a·b + c."
            ));
        }
        if let Some((d, acc)) = self
            .accuracy_by_exponent
            .iter()
            .enumerate()
            .min_by(|x, y| x.1.total_cmp(y.1))
        {
            out.push(format!(
                "Test accuracy is lowest at exponent d = {d} ({:.1}%); at d = 0 (always 1) it is {:.1}%.",
                100.0 * acc,
                100.0 * self.accuracy_by_exponent[0]
            ));
        }
        out
    }
}
