//! Residual-stream tools on an [`ActivationCache`], as TransformerLens's `ActivationCache` methods:
//! the accumulated and the decomposed residual stream, per-head results, `apply_ln_to_stack`, and direct
//! logit attribution (seed 003's "how different bits of the model directly contribute to the logits").
//!
//! A stack is `[components, batch, pos, d_model]` with one label per component.

use candle_core::{Tensor, D};

use crate::error::{GrokError, Result};
use crate::interp::cache::ActivationCache;
use crate::model::transformer::forward::head_results;
use crate::model::{HookedTransformer, Normalization, PositionalEmbedding};

/// Residual-stream components stacked on a new leading axis, with their labels.
#[derive(Debug, Clone)]
pub struct ResidualStack {
    /// One label per component (`"embed"`, `"0_attn_out"`, `"L0H3"`, `"final_post"`, …).
    pub labels: Vec<String>,
    /// `[components, batch, pos, d_model]`.
    pub stack: Tensor,
}

impl ResidualStack {
    fn new(parts: Vec<(String, Tensor)>) -> Result<Self> {
        let (labels, tensors): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
        Ok(ResidualStack {
            labels,
            stack: Tensor::stack(&tensors, 0)?,
        })
    }

    /// The component called `label`, `[batch, pos, d_model]`.
    pub fn component(&self, label: &str) -> Result<Tensor> {
        let i = self.labels.iter().position(|l| l == label).ok_or_else(|| {
            GrokError::tensor(
                label,
                format!(
                    "is not a component of this stack; it holds {}",
                    self.labels.join(", ")
                ),
            )
        })?;
        Ok(self.stack.get(i)?)
    }
}

impl ActivationCache {
    /// The residual stream as it stands before each block up to `layer` (`"{l}_pre"`, plus `"{l}_mid"`
    /// between attention and MLP when `incl_mid`), and after the last block (`"final_post"`) when `layer`
    /// is `None` or `n_layers`. TransformerLens's `accumulated_resid`.
    pub fn accumulated_resid(
        &self,
        model: &HookedTransformer,
        layer: Option<usize>,
        incl_mid: bool,
    ) -> Result<ResidualStack> {
        let n = model.cfg.n_layers;
        let layer = check_layer("layer", layer, n)?;
        let h = &model.hook_tree;
        let mut parts = Vec::new();
        for l in 0..=layer {
            if l == n {
                let post = h.last_block().resid_post;
                parts.push(("final_post".to_string(), self.at(h, post)?.clone()));
                break;
            }
            let b = &h.blocks[l];
            parts.push((format!("{l}_pre"), self.at(h, b.resid_pre)?.clone()));
            if incl_mid && l < layer && !model.cfg.attn_only {
                parts.push((format!("{l}_mid"), self.at(h, b.resid_mid)?.clone()));
            }
        }
        ResidualStack::new(parts)
    }

    /// The residual stream at the input of block `layer` (`None`: the final residual stream) split into
    /// the outputs that sum to it: `"embed"`, `"pos_embed"` (models with positional embeddings), then
    /// `"{l}_attn_out"` and `"{l}_mlp_out"` per earlier block. With `mlp_input`, the stream read by block
    /// `layer`'s MLP, so its attention output is included too. TransformerLens's `decompose_resid`.
    pub fn decompose_resid(
        &self,
        model: &HookedTransformer,
        layer: Option<usize>,
        mlp_input: bool,
        incl_embeds: bool,
    ) -> Result<ResidualStack> {
        let cfg = &model.cfg;
        let layer = check_layer("layer", layer, cfg.n_layers)?;
        let h = &model.hook_tree;
        let mut parts = Vec::new();
        if incl_embeds {
            parts.push(("embed".to_string(), self.at(h, Some(h.embed))?.clone()));
            if cfg.positional_embedding_type == PositionalEmbedding::Standard {
                parts.push(("pos_embed".to_string(), self.at(h, h.pos_embed)?.clone()));
            }
        }
        for (l, b) in h.blocks.iter().enumerate().take(layer) {
            parts.push((format!("{l}_attn_out"), self.at(h, b.attn_out)?.clone()));
            if !cfg.attn_only {
                parts.push((format!("{l}_mlp_out"), self.at(h, b.mlp_out)?.clone()));
            }
        }
        if mlp_input && layer < cfg.n_layers {
            let attn = self.at(h, h.blocks[layer].attn_out)?;
            parts.push((format!("{layer}_attn_out"), attn.clone()));
        }
        if parts.is_empty() {
            return Err(GrokError::config(
                "incl_embeds",
                false,
                "with layer 0 and no embeddings the decomposition is empty; include the embeddings",
            ));
        }
        ResidualStack::new(parts)
    }

    /// Each head's write into the residual stream, for every head of the blocks before `layer` (`None`:
    /// all blocks), labelled `"L{l}H{h}"`; with `incl_remainder`, a last `"remainder"` component holding
    /// everything else in the residual stream at that point. Uses cached `attn.hook_result` when
    /// present, else computes it from `attn.hook_z` and `W_O`. TransformerLens's `stack_head_results`.
    pub fn stack_head_results(
        &self,
        model: &HookedTransformer,
        layer: Option<usize>,
        incl_remainder: bool,
    ) -> Result<ResidualStack> {
        let cfg = &model.cfg;
        let layer = check_layer("layer", layer, cfg.n_layers)?;
        let mut parts = Vec::new();
        for l in 0..layer {
            let result = self.head_results(model, l)?;
            for h in 0..cfg.n_heads {
                parts.push((format!("L{l}H{h}"), result.narrow(2, h, 1)?.squeeze(2)?));
            }
        }
        if incl_remainder {
            let h = &model.hook_tree;
            let total = if layer == cfg.n_layers {
                self.at(h, h.last_block().resid_post)?.clone()
            } else {
                self.at(h, h.blocks[layer].resid_pre)?.clone()
            };
            let mut rest = total;
            for (_, t) in &parts {
                rest = (rest - t)?;
            }
            parts.push(("remainder".to_string(), rest));
        }
        if parts.is_empty() {
            return Err(GrokError::config(
                "layer",
                0,
                "no block comes before layer 0; pass a later layer or incl_remainder",
            ));
        }
        ResidualStack::new(parts)
    }

    /// `[batch, pos, n_heads, d_model]` per-head outputs of block `layer` (without `b_O`).
    fn head_results(&self, model: &HookedTransformer, layer: usize) -> Result<Tensor> {
        let h = &model.hook_tree;
        let attn = h.blocks[layer].attn;
        if let Ok(r) = self.at(h, attn.map(|a| a.result)) {
            return Ok(r.clone());
        }
        let z = self.at(h, attn.map(|a| a.z))?;
        head_results(z, model.w(model.tree.blocks[layer].attn.w_o))
    }

    /// Applies the LayerNorm that reads the residual stream at `layer` (`None`: `ln_final`; with
    /// `mlp_input`, block `layer`'s `ln2`, else its `ln1`) to every component of `stack`: centre each
    /// vector and divide by the *cached* scale of the full stream, so the components still sum to the
    /// normalised stream. The LN weight and bias are not applied (fold them, or see
    /// [`ActivationCache::component_logits`]). Identity for models without normalization.
    pub fn apply_ln_to_stack(
        &self,
        model: &HookedTransformer,
        stack: &ResidualStack,
        layer: Option<usize>,
        mlp_input: bool,
    ) -> Result<ResidualStack> {
        let n = model.cfg.n_layers;
        let layer = check_layer("layer", layer, n)?;
        if model.cfg.normalization_type.is_none() {
            return Ok(stack.clone());
        }
        let h = &model.hook_tree;
        let norm = match (layer == n, mlp_input) {
            (true, _) => h.ln_final,
            (false, true) => h.blocks[layer].ln2,
            (false, false) => h.blocks[layer].ln1,
        };
        let scale_hook = norm.map(|n| n.scale);
        let scale_name = scale_hook.map_or("hook_scale", |s| h.name(s)).to_string();
        let scale = self.at(h, scale_hook)?;
        let x = &stack.stack;
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let scaled = centred.broadcast_div(&scale.unsqueeze(0)?).map_err(|_| {
            GrokError::tensor(
                &scale_name,
                format!(
                    "cached scale {:?} does not fit the stack's [batch, pos] {:?}",
                    scale.dims(),
                    &x.dims()[1..]
                ),
            )
        })?;
        Ok(ResidualStack {
            labels: stack.labels.clone(),
            stack: scaled,
        })
    }

    /// Each component's direct contribution to every logit, `[components, batch, pos, d_vocab_out]`:
    /// the final LayerNorm applied with the cached scale ([`Self::apply_ln_to_stack`]) and its weight,
    /// then `W_U`. Without LN bias and `b_U`, so over a full decomposition the components sum to
    /// `logits − b_ln·W_U − b_U`. Seed 003 plots these, centred over the vocabulary.
    pub fn component_logits(
        &self,
        model: &HookedTransformer,
        stack: &ResidualStack,
    ) -> Result<Tensor> {
        let scaled = self.apply_ln_to_stack(model, stack, None, false)?.stack;
        let (c, b, p, d) = scaled.dims4()?;
        let w_u = self.folded_unembed(model)?;
        let logits = scaled.reshape((c * b * p, d))?.matmul(&w_u)?;
        Ok(logits.reshape((c, b, p, model.cfg.d_vocab_out))?)
    }

    /// Direct logit attribution: each component's contribution to the logit of `tokens[batch, pos]`
    /// (u32), minus its contribution to `incorrect[batch, pos]` when given (a logit difference).
    /// `[components, batch, pos]`. TransformerLens's `logit_attrs`, with the final LN weight folded
    /// into `W_U` as seed 003 does (identical to TransformerLens on a processed model).
    pub fn logit_attrs(
        &self,
        model: &HookedTransformer,
        stack: &ResidualStack,
        tokens: &Tensor,
        incorrect: Option<&Tensor>,
    ) -> Result<Tensor> {
        let scaled = self.apply_ln_to_stack(model, stack, None, false)?.stack;
        let (_, b, p, d) = scaled.dims4()?;
        let mut directions = self.token_directions(model, tokens, (b, p))?;
        if let Some(wrong) = incorrect {
            directions = (directions - self.token_directions(model, wrong, (b, p))?)?;
        }
        let directions = directions.reshape((1, b, p, d))?;
        Ok(scaled.broadcast_mul(&directions)?.sum(D::Minus1)?)
    }

    /// `[batch, pos, d_model]` unembedding directions (LN weight folded in) of the given tokens.
    fn token_directions(
        &self,
        model: &HookedTransformer,
        tokens: &Tensor,
        (b, p): (usize, usize),
    ) -> Result<Tensor> {
        if tokens.dims() != [b, p] {
            return Err(GrokError::tensor(
                "tokens",
                format!(
                    "logit attribution needs one token per [batch, pos] = [{b}, {p}]; got {:?}",
                    tokens.dims()
                ),
            ));
        }
        let ids = tokens.flatten_all()?.to_vec1::<u32>()?;
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= model.cfg.d_vocab_out) {
            return Err(GrokError::tensor(
                "tokens",
                format!(
                    "token {bad} is outside the output vocabulary (d_vocab_out = {})",
                    model.cfg.d_vocab_out
                ),
            ));
        }
        let w_u_t = self.folded_unembed(model)?.t()?.contiguous()?;
        Ok(w_u_t
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((b, p, model.cfg.d_model))?)
    }

    /// `diag(ln_final.w) · W_U` for LN models, `W_U` otherwise.
    fn folded_unembed(&self, model: &HookedTransformer) -> Result<Tensor> {
        let w_u = model.w(model.tree.unembed_w);
        match (model.cfg.normalization_type, model.tree.ln_final) {
            (Some(Normalization::LN), Some(ln)) => {
                Ok(w_u.broadcast_mul(&model.w(ln.w).unsqueeze(1)?)?)
            }
            _ => Ok(w_u.clone()),
        }
    }
}

/// `layer` as an index in `0..=n_layers`, `None` meaning `n_layers` (the end of the model).
fn check_layer(field: &str, layer: Option<usize>, n_layers: usize) -> Result<usize> {
    match layer {
        None => Ok(n_layers),
        Some(l) if l <= n_layers => Ok(l),
        Some(l) => Err(GrokError::config(
            field,
            l,
            format!("must be at most n_layers = {n_layers} (None means the end of the model)"),
        )),
    }
}
