//! The `HookedTransformer` forward pass on candle tensors, computed exactly as TransformerLens 2.18 does.
//! Each TransformerLens hook point is a named step that passes through [`Hooks`].

use candle_core::{DType, Tensor, D};

use crate::error::{GrokError, Result};
use crate::model::candle::{CandleModel, HasTree};
use crate::model::hooks::{AttnHooks, HookTree, Hooks, MlpHooks, NormHooks};
use crate::model::params::{ParamSpec, Slot};
use crate::model::transformer::config::{
    ActFn, Normalization, PositionalEmbedding, TransformerConfig,
};
use crate::model::transformer::tree::{AttnSlots, MlpSlots, NormSlots, TransformerTree};
use crate::model::HookedModel;

/// Which positions the last block's MLP and the unembedding run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogitPositions {
    /// Every position (TransformerLens's behaviour): logits `[batch, pos, d_vocab_out]`.
    #[default]
    All,
    /// Only the last position, the one the grokking loss reads: logits `[batch, 1, d_vocab_out]`.
    /// Hook points after the last attention layer then hold only that position.
    Last,
}

/// A transformer whose weights are candle tensors copied from a [`Params`] store.
pub type HookedTransformer = CandleModel<TransformerConfig>;

impl HasTree for TransformerConfig {
    type Tree = TransformerTree;

    fn param_tree(&self) -> TransformerTree {
        self.tree()
    }

    fn specs(tree: &TransformerTree) -> &[ParamSpec] {
        &tree.specs
    }
}

impl HookedTransformer {
    /// The weight called `name` (a TransformerLens state_dict name).
    pub fn weight(&self, name: &str) -> Result<&Tensor> {
        self.tree
            .specs
            .iter()
            .position(|s| s.name == name)
            .map(|i| self.weight_at(i))
            .ok_or_else(|| GrokError::tensor(name, "no such parameter in this model"))
    }

    /// Runs the model on `tokens [batch, pos]` (u32) and returns logits.
    pub fn forward(
        &self,
        tokens: &Tensor,
        at: LogitPositions,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let resid = self.residual(tokens, self.cfg.n_layers, at, hooks)?;
        let x = self.norm(
            self.tree.ln_final.as_ref(),
            self.hook_tree.ln_final.as_ref(),
            resid,
            hooks,
        )?;
        let (b, t, d_model) = x.dims3()?;
        let logits = x
            .reshape((b * t, d_model))?
            .matmul(self.w(self.tree.unembed_w))?;
        let logits = logits.broadcast_add(self.w(self.tree.unembed_b))?;
        Ok(logits.reshape((b, t, self.cfg.d_vocab_out))?)
    }

    /// The residual stream after the first `n_blocks` blocks, `[batch, pos, d_model]`
    /// (TransformerLens's `stop_at_layer`); 0 gives the embeddings.
    pub fn forward_to_layer(
        &self,
        tokens: &Tensor,
        n_blocks: usize,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        if n_blocks > self.cfg.n_layers {
            return Err(GrokError::config(
                "stop_at_layer",
                n_blocks,
                format!("must be at most n_layers = {}", self.cfg.n_layers),
            ));
        }
        self.residual(tokens, n_blocks, LogitPositions::All, hooks)
    }

    fn residual(
        &self,
        tokens: &Tensor,
        n_blocks: usize,
        at: LogitPositions,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let (batch, pos) = tokens.dims2()?;
        let d_model = self.cfg.d_model;
        let embed = self
            .w(self.tree.embed)
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((batch, pos, d_model))?;
        let h = &self.hook_tree;
        let embed = h.apply(hooks, h.embed, embed)?;
        let pos_embed = match self.cfg.positional_embedding_type {
            PositionalEmbedding::Standard => self.w(self.tree.pos).narrow(0, 0, pos)?,
            PositionalEmbedding::None => Tensor::zeros((pos, d_model), DType::F32, self.device())?,
        };
        let pos_embed = pos_embed
            .unsqueeze(0)?
            .broadcast_as((batch, pos, d_model))?
            .contiguous()?;
        let pos_embed = match h.pos_embed {
            Some(hook) => h.apply(hooks, hook, pos_embed)?,
            None => pos_embed,
        };
        let mut resid = (embed + pos_embed)?;
        for layer in 0..n_blocks {
            let last = layer + 1 == self.cfg.n_layers && at == LogitPositions::Last;
            resid = self.block(layer, resid, last, hooks)?;
        }
        Ok(resid)
    }

    fn block(
        &self,
        layer: usize,
        resid_pre: Tensor,
        only_last: bool,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let slots = self.tree.blocks[layer];
        let (h, at) = (&self.hook_tree, &self.hook_tree.blocks[layer]);
        // Every point a transformer block has (declared by `TransformerConfig::hooks`).
        let point =
            |p: Option<crate::model::hooks::Hook>| p.expect("a transformer block's hook point");
        let resid_pre = h.apply(hooks, point(at.resid_pre), resid_pre)?;
        let x = self.norm(
            slots.ln1.as_ref(),
            at.ln1.as_ref(),
            resid_pre.clone(),
            hooks,
        )?;
        let attn_hooks = at.attn.expect("a transformer block has attention");
        let attn_out = self.attention(&slots.attn, &attn_hooks, &x, hooks)?;
        let attn_out = h.apply(hooks, point(at.attn_out), attn_out)?;
        let (resid, attn_out) = if only_last {
            let t = resid_pre.dim(1)?;
            (
                resid_pre.narrow(1, t - 1, 1)?,
                attn_out.narrow(1, t - 1, 1)?,
            )
        } else {
            (resid_pre, attn_out)
        };
        let (Some(mlp), Some(mlp_hooks)) = (slots.mlp, at.mlp) else {
            return h.apply(hooks, point(at.resid_post), (resid + attn_out)?);
        };
        let resid_mid = h.apply(hooks, point(at.resid_mid), (resid + attn_out)?)?;
        let x = self.norm(
            slots.ln2.as_ref(),
            at.ln2.as_ref(),
            resid_mid.clone(),
            hooks,
        )?;
        let mlp_out = self.mlp(&mlp, &mlp_hooks, &x, hooks)?;
        let mlp_out = h.apply(hooks, point(at.mlp_out), mlp_out)?;
        h.apply(hooks, point(at.resid_post), (resid_mid + mlp_out)?)
    }

    /// LayerNorm / LNPre as TransformerLens computes it; identity without normalization.
    fn norm(
        &self,
        slots: Option<&NormSlots>,
        at: Option<&NormHooks>,
        x: Tensor,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let (Some(kind), Some(at)) = (self.cfg.normalization_type, at) else {
            return Ok(x);
        };
        let h = &self.hook_tree;
        let x = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let scale = (x.sqr()?.mean_keepdim(D::Minus1)? + self.cfg.eps)?.sqrt()?;
        let scale = h.apply(hooks, at.scale, scale)?;
        let mut x = x.broadcast_div(&scale)?;
        if let (Normalization::LN, Some(ln)) = (kind, slots) {
            x = x.broadcast_mul(self.w(ln.w))?.broadcast_add(self.w(ln.b))?;
        }
        h.apply(hooks, at.normalized, x)
    }

    /// `[batch, pos, d_model] @ W [n_heads, d_model, d_head] + b` → `[batch, pos, n_heads, d_head]`.
    fn head_projection(&self, x: &Tensor, (w, b): (Slot, Slot)) -> Result<Tensor> {
        let (batch, pos, d_model) = x.dims3()?;
        let (nh, dh) = (self.cfg.n_heads, self.cfg.d_head);
        let w = self.w(w).permute((1, 0, 2))?.reshape((d_model, nh * dh))?;
        let y = x.reshape((batch * pos, d_model))?.matmul(&w)?;
        let y = y.broadcast_add(&self.w(b).reshape(nh * dh)?)?;
        Ok(y.reshape((batch, pos, nh, dh))?)
    }

    fn attention(
        &self,
        slots: &AttnSlots,
        at: &AttnHooks,
        x: &Tensor,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let h = &self.hook_tree;
        let [q, k, v] = slots.qkv();
        let (batch, pos, d_model) = x.dims3()?;
        let (nh, dh) = (self.cfg.n_heads, self.cfg.d_head);
        let q = h.apply(hooks, at.q, self.head_projection(x, q)?)?;
        let k = h.apply(hooks, at.k, self.head_projection(x, k)?)?;
        let v = h.apply(hooks, at.v, self.head_projection(x, v)?)?;
        let q = q.permute((0, 2, 1, 3))?.contiguous()?;
        let k = k.permute((0, 2, 3, 1))?.contiguous()?;
        let v = v.permute((0, 2, 1, 3))?.contiguous()?;
        let scores = (q.matmul(&k)? / (dh as f64).sqrt())?;
        let scores = h.apply(hooks, at.attn_scores, apply_causal_mask(&scores)?)?;
        let pattern = h.apply(hooks, at.pattern, softmax_last(&scores)?)?;
        let z = pattern.matmul(&v)?.permute((0, 2, 1, 3))?.contiguous()?;
        let z = h.apply(hooks, at.z, z)?;
        let (w_o, b_o) = (self.w(slots.w_o), self.w(slots.b_o));
        if h.wanted(hooks, at.result) {
            let result = h.apply(hooks, at.result, head_results(&z, w_o)?)?;
            return Ok(result.sum(2)?.broadcast_add(b_o)?);
        }
        let out = z
            .reshape((batch * pos, nh * dh))?
            .matmul(&w_o.reshape((nh * dh, d_model))?)?;
        Ok(out.broadcast_add(b_o)?.reshape((batch, pos, d_model))?)
    }

    fn mlp(
        &self,
        slots: &MlpSlots,
        at: &MlpHooks,
        x: &Tensor,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let h = &self.hook_tree;
        let (batch, pos, d_model) = x.dims3()?;
        let d_mlp = self.cfg.d_mlp;
        let pre = x
            .reshape((batch * pos, d_model))?
            .matmul(self.w(slots.w_in))?;
        let pre = pre
            .broadcast_add(self.w(slots.b_in))?
            .reshape((batch, pos, d_mlp))?;
        let pre = h.apply(hooks, at.pre, pre)?;
        let post = match self.cfg.act_fn {
            ActFn::Relu => crate::model::relu(&pre)?,
            ActFn::Gelu => pre.gelu_erf()?,
            ActFn::GeluNew => pre.gelu()?,
        };
        let post = h.apply(hooks, at.post, post)?;
        let out = post
            .reshape((batch * pos, d_mlp))?
            .matmul(self.w(slots.w_out))?;
        Ok(out
            .broadcast_add(self.w(slots.b_out))?
            .reshape((batch, pos, d_model))?)
    }
}

impl HookedModel for HookedTransformer {
    fn hook_tree(&self) -> &HookTree {
        &self.hook_tree
    }

    fn n_layers(&self) -> usize {
        self.cfg.n_layers
    }

    fn tokens_tensor(&self, tokens: &[u32], batch: usize) -> Result<Tensor> {
        CandleModel::tokens_tensor(self, tokens, batch)
    }

    fn forward(
        &self,
        tokens: &Tensor,
        at: LogitPositions,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        HookedTransformer::forward(self, tokens, at, hooks)
    }
}

/// Each head's write into the residual stream, `result[b, p, h] = z[b, p, h] · W_O[h]` (without `b_O`):
/// `z [batch, pos, n_heads, d_head]` and `W_O [n_heads, d_head, d_model]` give
/// `[batch, pos, n_heads, d_model]` (TransformerLens's `hook_result`).
pub fn head_results(z: &Tensor, w_o: &Tensor) -> Result<Tensor> {
    let (batch, pos, nh, dh) = z.dims4()?;
    let d_model = w_o.dim(2)?;
    let zh = z.permute((2, 0, 1, 3))?.reshape((nh, batch * pos, dh))?;
    Ok(zh
        .matmul(w_o)?
        .reshape((nh, batch, pos, d_model))?
        .permute((1, 2, 0, 3))?
        .contiguous()?)
}

/// Softmax over the last dimension (max-subtracted), differentiable.
pub(crate) fn softmax_last(scores: &Tensor) -> Result<Tensor> {
    let max = scores.max_keepdim(D::Minus1)?;
    let e = scores.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Sets scores above the diagonal (future keys) to −inf, as TransformerLens's causal mask does.
pub(crate) fn apply_causal_mask(scores: &Tensor) -> Result<Tensor> {
    let t = scores.dim(D::Minus1)?;
    let q = scores.dim(D::Minus2)?;
    let allowed: Vec<u8> = (0..q)
        .flat_map(|i| (0..t).map(move |j| u8::from(j <= i + (t - q))))
        .collect();
    let mask =
        Tensor::from_slice(&allowed, (q, t), scores.device())?.broadcast_as(scores.shape())?;
    let neg_inf = Tensor::full(f32::NEG_INFINITY, scores.shape(), scores.device())?;
    Ok(mask.where_cond(scores, &neg_inf)?)
}
