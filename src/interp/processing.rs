//! TransformerLens's weight processing (`load_and_process_state_dict`), in its order: fold LayerNorm
//! weights into the following matrices (LN becomes LNPre), centre the weights that write to the residual
//! stream, centre the unembedding, and fold value biases into the output bias. Logits are unchanged
//! (up to softmax-invariant shifts).

use crate::error::{GrokError, Result};
use crate::model::transformer::NormSlots;
use crate::model::{Normalization, Params, Slot, TransformerConfig};

/// Which processing steps to apply (TransformerLens's defaults: all true).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessOptions {
    /// Fold `ln*.w`/`ln*.b` into `W_Q/W_K/W_V`, `W_in`, `W_U` and their biases.
    pub fold_ln: bool,
    /// Subtract the d_model-mean from `W_E`, `W_pos`, `W_O`, `b_O`, `W_out`, `b_out`.
    pub center_writing_weights: bool,
    /// Subtract the vocabulary-mean from `W_U` and `b_U`.
    pub center_unembed: bool,
    /// Move `b_V` through `W_O` into `b_O`.
    pub fold_value_biases: bool,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        ProcessOptions {
            fold_ln: true,
            center_writing_weights: true,
            center_unembed: true,
            fold_value_biases: true,
        }
    }
}

/// Returns the processed config and parameters. Folding LN needs LayerNorm; centring writing weights
/// needs LN or LNPre (otherwise the step is skipped, as TransformerLens does).
pub fn process_weights(
    cfg: &TransformerConfig,
    params: &Params,
    opts: ProcessOptions,
) -> Result<(TransformerConfig, Params)> {
    let tree = cfg.tree();
    if !params.matches(&tree.specs) {
        return Err(GrokError::tensor(
            "params",
            "do not match the model config; cannot process weights",
        ));
    }
    let mut sd = params.clone();
    let mut cfg = cfg.clone();
    let (dm, nh, dh) = (cfg.d_model, cfg.n_heads, cfg.d_head);
    if opts.fold_ln && cfg.normalization_type == Some(Normalization::LN) {
        for block in &tree.blocks {
            if let Some(ln1) = block.ln1 {
                let (w, b) = (sd[ln1.w].to_vec(), sd[ln1.b].to_vec());
                for (w_slot, b_slot) in block.attn.qkv() {
                    let w_orig = sd[w_slot].to_vec();
                    let bq = &mut sd[b_slot];
                    for h in 0..nh {
                        for e in 0..dh {
                            bq[h * dh + e] += (0..dm)
                                .map(|r| w_orig[(h * dm + r) * dh + e] * b[r])
                                .sum::<f32>();
                        }
                    }
                    let wq = &mut sd[w_slot];
                    for h in 0..nh {
                        for (r, &scale) in w.iter().enumerate() {
                            wq[(h * dm + r) * dh..(h * dm + r + 1) * dh]
                                .iter_mut()
                                .for_each(|x| *x *= scale);
                        }
                    }
                    center_rows(wq, nh, dm, dh);
                }
            }
            if let (Some(ln2), Some(mlp)) = (block.ln2, block.mlp) {
                fold_into_matrix(&mut sd, ln2, mlp.w_in, mlp.b_in);
            }
        }
        if let Some(ln) = tree.ln_final {
            fold_into_matrix(&mut sd, ln, tree.unembed_w, tree.unembed_b);
        }
        cfg.normalization_type = Some(Normalization::LNPre);
    }
    if opts.center_writing_weights && cfg.normalization_type.is_some() {
        let mut writers = vec![tree.embed, tree.pos];
        for block in &tree.blocks {
            writers.extend([block.attn.w_o, block.attn.b_o]);
            if let Some(mlp) = block.mlp {
                writers.extend([mlp.w_out, mlp.b_out]);
            }
        }
        for slot in writers {
            center_last_axis(&mut sd[slot], dm);
        }
    }
    if opts.center_unembed {
        let vo = cfg.d_vocab_out;
        center_last_axis(&mut sd[tree.unembed_w], vo);
        center_last_axis(&mut sd[tree.unembed_b], vo);
    }
    if opts.fold_value_biases {
        for block in &tree.blocks {
            let a = &block.attn;
            let bv = sd[a.b_v].to_vec();
            sd[a.b_v].fill(0.0);
            let wo = sd[a.w_o].to_vec();
            let bo = &mut sd[a.b_o];
            for (i, &v) in bv.iter().enumerate() {
                bo.iter_mut()
                    .zip(&wo[i * dm..(i + 1) * dm])
                    .for_each(|(o, w)| *o += v * w);
            }
        }
    }
    // The processed config may have fewer parameters (LN weights folded away): keep those it names.
    let out = Params::from_tensor_map_owned(sd.iter().cloned().collect(), &cfg.param_specs())?;
    Ok((cfg, out))
}

/// Folds LayerNorm `ln` into the matrix it feeds: `b += Σ_r W[r, :]·ln_b[r]`, `W[r, :] *= ln_w[r]`,
/// then centres W over its input rows.
fn fold_into_matrix(sd: &mut Params, ln: NormSlots, w_slot: Slot, b_slot: Slot) {
    let (ln_w, ln_b) = (sd[ln.w].to_vec(), sd[ln.b].to_vec());
    let w = sd[w_slot].to_vec();
    let n = w.len() / ln_w.len();
    let bias = &mut sd[b_slot];
    for (r, &lb) in ln_b.iter().enumerate() {
        bias.iter_mut()
            .zip(&w[r * n..(r + 1) * n])
            .for_each(|(o, x)| *o += x * lb);
    }
    let wm = &mut sd[w_slot];
    for (r, &lw) in ln_w.iter().enumerate() {
        wm[r * n..(r + 1) * n].iter_mut().for_each(|x| *x *= lw);
    }
    center_rows(wm, 1, ln_w.len(), n);
}

/// For `[groups, rows, cols]`, subtracts each column's mean over `rows` (TransformerLens centres the
/// folded reading weights along d_model).
fn center_rows(data: &mut [f32], groups: usize, rows: usize, cols: usize) {
    for g in 0..groups {
        let block = &mut data[g * rows * cols..(g + 1) * rows * cols];
        for c in 0..cols {
            let mean = (0..rows).map(|r| block[r * cols + c]).sum::<f32>() / rows as f32;
            (0..rows).for_each(|r| block[r * cols + c] -= mean);
        }
    }
}

/// Subtracts from every length-`n` run along the last axis its mean.
fn center_last_axis(data: &mut [f32], n: usize) {
    for row in data.chunks_exact_mut(n) {
        let mean = row.iter().sum::<f32>() / n as f32;
        row.iter_mut().for_each(|x| *x -= mean);
    }
}
