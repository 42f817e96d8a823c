//! Running a model on every input (a, b) ∈ Z_p² (row a·p + b) and reading off what the analysis
//! needs: last-position logits, the last block's neurons, and attention from the last position.

use candle_core::Tensor;

use crate::engine::Engine;
use crate::error::{GrokError, Result};
use crate::interp::{Interp, Names};
use crate::linalg::Matrix;
use crate::model::{ModelConfig, Params};
use crate::tasks::ModularTask;

/// Activations of a model over the whole input grid, all at the last position.
pub struct GridActivations {
    /// Last-position logits, `p² × d_vocab_out`.
    pub logits: Matrix,
    /// The last block's MLP activations (`hook_post`), `p² × d_mlp`; `None` for attention-only models.
    pub neurons: Option<Matrix>,
    /// Per layer, attention from the last position: `[p², n_heads, n_ctx]` row-major.
    pub patterns: Vec<Vec<f32>>,
}

/// Inputs per forward pass, so the activations of every position are never held for the whole grid.
pub const CHUNK_ROWS: usize = 8192;

/// Runs `params` on every grid input of `task` with the candle model, in chunks, keeping only what
/// [`GridActivations`] holds. Logits keep the p answer columns (the MLP of seed 002 also scores its
/// `+` and `=` tokens).
pub fn grid_activations(
    task: &ModularTask,
    cfg: &ModelConfig,
    params: &Params,
) -> Result<GridActivations> {
    let model = cfg.build(params)?;
    let seq = task.layout.len();
    let tokens = task.grid_tokens();
    let rows = tokens.len() / seq;
    let layers = cfg.attention_layers();
    let neuron_hook = cfg.neuron_hook();
    let mut names = cfg.pattern_hooks();
    names.extend(neuron_hook.clone());
    let names = Names::List(names);
    // The last position of `[rows, pos, d]`; `[rows, d]` (the MLP) is already per row.
    let last = |x: &Tensor| -> Result<Vec<f32>> {
        let x = match x.rank() {
            3 => x.narrow(1, x.dim(1)? - 1, 1)?,
            _ => x.clone(),
        };
        Ok(x.flatten_all()?.to_vec1::<f32>()?)
    };
    let mut logits = Vec::with_capacity(rows * cfg.d_vocab_out());
    let mut neurons = Vec::new();
    let mut patterns = vec![Vec::new(); layers];
    for chunk in tokens.chunks(CHUNK_ROWS * seq) {
        let t = model.tokens_tensor(chunk, chunk.len() / seq)?;
        let (chunk_logits, cache) = model.run_with_cache(&t, &names)?;
        logits.extend(last(&chunk_logits)?);
        if let Some(hook) = &neuron_hook {
            neurons.extend(last(cache.get(hook.as_str())?)?);
        }
        for (l, out) in patterns.iter_mut().enumerate() {
            // [rows, heads, q, k] → the last query: [rows, heads, k].
            let pat = cache.get(("pattern", l as i64))?;
            let q = pat.dim(2)?;
            out.extend(pat.narrow(2, q - 1, 1)?.flatten_all()?.to_vec1::<f32>()?);
        }
    }
    let width = neurons.len() / rows;
    Ok(GridActivations {
        logits: Matrix::new(rows, cfg.d_vocab_out(), logits)?.first_cols(task.p),
        neurons: match neuron_hook {
            Some(_) => Some(Matrix::new(rows, width, neurons)?),
            None => None,
        },
        patterns,
    })
}

/// Last-position logits of `tokens` (rows of `seq`; the grid from [`ModularTask::grid_tokens`]) in
/// the first `answers` columns, `rows × answers`, computed by `engine` (the fast one where the model
/// allows: what makes scoring hundreds of checkpoints quick).
pub fn grid_logits(
    tokens: &[u32],
    seq: usize,
    (d_vocab_out, answers): (usize, usize),
    params: &Params,
    engine: &mut dyn Engine,
) -> Result<Matrix> {
    let rows = tokens.len() / seq.max(1);
    Ok(Matrix::new(rows, d_vocab_out, engine.logits(params, tokens, seq)?)?.first_cols(answers))
}

/// Attention from the last position, summarised per head.
#[derive(Debug, Clone)]
pub struct AttentionSummary {
    /// Mean over all inputs of the attention from the last position, `n_heads × n_ctx`.
    pub mean_from_last: Matrix,
    /// Per head, attention from the last position to operand a as a `p × p` map (rows a, columns b).
    pub to_a: Vec<Matrix>,
    /// The same for operand b.
    pub to_b: Vec<Matrix>,
}

/// Summarises one layer's `pattern` (`[p², n_heads, n_ctx]`, from [`GridActivations::patterns`]).
pub fn attention_summary(
    task: &ModularTask,
    n_heads: usize,
    pattern: &[f32],
) -> Result<AttentionSummary> {
    let p = task.p;
    let n_ctx = task.layout.len();
    if pattern.len() != p * p * n_heads * n_ctx {
        return Err(GrokError::tensor(
            "hook_pattern",
            format!(
                "{} values do not form [p²={}, n_heads={n_heads}, n_ctx={n_ctx}]",
                pattern.len(),
                p * p
            ),
        ));
    }
    let at = |row: usize, h: usize, k: usize| pattern[(row * n_heads + h) * n_ctx + k];
    let mean = (0..n_heads)
        .flat_map(|h| (0..n_ctx).map(move |k| (h, k)))
        .map(|(h, k)| (0..p * p).map(|r| at(r, h, k) as f64).sum::<f64>() / (p * p) as f64)
        .map(|v| v as f32)
        .collect();
    let (pa, pb) = task.layout.operand_positions();
    let map = |h: usize, k: usize| {
        Matrix::new(p, p, (0..p * p).map(|r| at(r, h, k)).collect()).expect("p × p")
    };
    Ok(AttentionSummary {
        mean_from_last: Matrix::new(n_heads, n_ctx, mean)?,
        to_a: (0..n_heads).map(|h| map(h, pa)).collect(),
        to_b: (0..n_heads).map(|h| map(h, pb)).collect(),
    })
}
