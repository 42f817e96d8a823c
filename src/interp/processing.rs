//! TransformerLens's weight processing (`load_and_process_state_dict`), in its order: fold LayerNorm
//! weights into the following matrices (LN becomes LNPre), centre the weights that write to the residual
//! stream, centre the unembedding, and fold value biases into the output bias. Logits are unchanged
//! (up to softmax-invariant shifts).

use crate::error::{GrokError, Result};
use crate::model::{ModelConfig, Normalization, Param, Params};

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
    cfg: &ModelConfig,
    params: &Params,
    opts: ProcessOptions,
) -> Result<(ModelConfig, Params)> {
    let mut sd: Vec<Param> = params.iter().cloned().collect();
    let mut cfg = cfg.clone();
    let (dm, nh, dh) = (cfg.d_model, cfg.n_heads, cfg.d_head);
    if opts.fold_ln && cfg.normalization_type == Some(Normalization::LN) {
        for l in 0..cfg.n_layers {
            let (w, b) = (
                take(&mut sd, &format!("blocks.{l}.ln1.w"))?,
                take(&mut sd, &format!("blocks.{l}.ln1.b"))?,
            );
            for m in ["Q", "K", "V"] {
                let wname = format!("blocks.{l}.attn.W_{m}");
                let w_orig = get(&sd, &wname)?.data.clone();
                let bq = get_mut(&mut sd, &format!("blocks.{l}.attn.b_{m}"))?;
                for h in 0..nh {
                    for e in 0..dh {
                        bq.data[h * dh + e] += (0..dm)
                            .map(|r| w_orig[(h * dm + r) * dh + e] * b[r])
                            .sum::<f32>();
                    }
                }
                let wq = get_mut(&mut sd, &wname)?;
                for h in 0..nh {
                    for (r, &scale) in w.iter().enumerate() {
                        wq.data[(h * dm + r) * dh..(h * dm + r + 1) * dh]
                            .iter_mut()
                            .for_each(|x| *x *= scale);
                    }
                }
                center_rows(&mut wq.data, nh, dm, dh);
            }
            if !cfg.attn_only {
                let (w, b) = (
                    take(&mut sd, &format!("blocks.{l}.ln2.w"))?,
                    take(&mut sd, &format!("blocks.{l}.ln2.b"))?,
                );
                fold_into_matrix(
                    &mut sd,
                    &format!("blocks.{l}.mlp.W_in"),
                    &format!("blocks.{l}.mlp.b_in"),
                    &w,
                    &b,
                )?;
            }
        }
        let (w, b) = (take(&mut sd, "ln_final.w")?, take(&mut sd, "ln_final.b")?);
        fold_into_matrix(&mut sd, "unembed.W_U", "unembed.b_U", &w, &b)?;
        cfg.normalization_type = Some(Normalization::LNPre);
    }
    if opts.center_writing_weights && cfg.normalization_type.is_some() {
        let mut names = vec!["embed.W_E".to_string(), "pos_embed.W_pos".to_string()];
        for l in 0..cfg.n_layers {
            names.push(format!("blocks.{l}.attn.W_O"));
            names.push(format!("blocks.{l}.attn.b_O"));
            if !cfg.attn_only {
                names.push(format!("blocks.{l}.mlp.W_out"));
                names.push(format!("blocks.{l}.mlp.b_out"));
            }
        }
        for n in names {
            center_last_axis(&mut get_mut(&mut sd, &n)?.data, dm);
        }
    }
    if opts.center_unembed {
        let vo = cfg.d_vocab_out;
        center_last_axis(&mut get_mut(&mut sd, "unembed.W_U")?.data, vo);
        center_last_axis(&mut get_mut(&mut sd, "unembed.b_U")?.data, vo);
    }
    if opts.fold_value_biases {
        for l in 0..cfg.n_layers {
            let bv = std::mem::take(&mut get_mut(&mut sd, &format!("blocks.{l}.attn.b_V"))?.data);
            let wo = get(&sd, &format!("blocks.{l}.attn.W_O"))?.data.clone();
            let bo = get_mut(&mut sd, &format!("blocks.{l}.attn.b_O"))?;
            for (i, &v) in bv.iter().enumerate() {
                bo.data
                    .iter_mut()
                    .zip(&wo[i * dm..(i + 1) * dm])
                    .for_each(|(o, w)| *o += v * w);
            }
            get_mut(&mut sd, &format!("blocks.{l}.attn.b_V"))?.data = vec![0.0; bv.len()];
        }
    }
    let specs = cfg.param_specs();
    let out = Params::from_tensor_map_owned(&cfg, sd, &specs)?;
    Ok((cfg, out))
}

fn get<'a>(sd: &'a [Param], name: &str) -> Result<&'a Param> {
    sd.iter()
        .find(|p| p.name == name)
        .ok_or_else(|| GrokError::tensor(name, "missing; cannot process weights"))
}

fn get_mut<'a>(sd: &'a mut [Param], name: &str) -> Result<&'a mut Param> {
    sd.iter_mut()
        .find(|p| p.name == name)
        .ok_or_else(|| GrokError::tensor(name, "missing; cannot process weights"))
}

fn take(sd: &mut Vec<Param>, name: &str) -> Result<Vec<f32>> {
    let i = sd
        .iter()
        .position(|p| p.name == name)
        .ok_or_else(|| GrokError::tensor(name, "missing; cannot fold LayerNorm"))?;
    Ok(sd.remove(i).data)
}

/// `b += Σ_r W[r, :]·ln_b[r]`, `W[r, :] *= ln_w[r]`, then centre W over its input rows.
fn fold_into_matrix(
    sd: &mut [Param],
    w_name: &str,
    b_name: &str,
    ln_w: &[f32],
    ln_b: &[f32],
) -> Result<()> {
    let w = get(sd, w_name)?.data.clone();
    let n = w.len() / ln_w.len();
    let bias = get_mut(sd, b_name)?;
    for (r, &lb) in ln_b.iter().enumerate() {
        bias.data
            .iter_mut()
            .zip(&w[r * n..(r + 1) * n])
            .for_each(|(o, x)| *o += x * lb);
    }
    let wm = get_mut(sd, w_name)?;
    for (r, &lw) in ln_w.iter().enumerate() {
        wm.data[r * n..(r + 1) * n]
            .iter_mut()
            .for_each(|x| *x *= lw);
    }
    center_rows(&mut wm.data, 1, ln_w.len(), n);
    Ok(())
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
