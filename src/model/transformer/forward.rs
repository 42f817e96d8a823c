//! The `HookedTransformer` forward pass on candle tensors, computed exactly as TransformerLens 2.18 does.
//! Each TransformerLens hook point is a named step that passes through [`Hooks`].

use candle_core::{DType, Device, Tensor, Var, D};

use crate::error::{GrokError, Result};
use crate::model::hooks::Hooks;
use crate::model::params::{CandleWeights, Params, Slot};
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

/// A transformer whose weights are candle tensors borrowed from a [`Params`] store.
pub struct HookedTransformer {
    /// Architecture.
    pub cfg: TransformerConfig,
    /// Where each parameter sits.
    pub tree: TransformerTree,
    weights: Vec<Tensor>,
    device: Device,
}

impl HookedTransformer {
    /// Wraps `params` as constant tensors (no gradients).
    pub fn new(cfg: &TransformerConfig, params: &Params) -> Result<Self> {
        Ok(Self::with_vars(cfg, params, |_| false)?.0)
    }

    /// Wraps `params`, making the slots `trainable` accepts into [`Var`]s whose gradients `backward`
    /// keeps.
    pub fn with_vars(
        cfg: &TransformerConfig,
        params: &Params,
        trainable: impl Fn(Slot) -> bool,
    ) -> Result<(Self, Vec<(Slot, Var)>)> {
        let tree = cfg.tree();
        let device = Device::Cpu;
        let CandleWeights { tensors, vars } =
            CandleWeights::new(&tree.specs, params, &device, trainable)?;
        let model = HookedTransformer {
            cfg: cfg.clone(),
            tree,
            weights: tensors,
            device,
        };
        Ok((model, vars))
    }

    /// The tensor in `slot`.
    pub fn w(&self, slot: Slot) -> &Tensor {
        &self.weights[slot.index()]
    }

    /// The weight called `name` (a TransformerLens state_dict name).
    pub fn weight(&self, name: &str) -> Result<&Tensor> {
        self.tree
            .specs
            .iter()
            .position(|s| s.name == name)
            .map(|i| &self.weights[i])
            .ok_or_else(|| GrokError::tensor(name, "no such parameter in this model"))
    }

    /// Token ids `[batch, pos]` as a candle tensor, checked against the vocabulary and context length.
    pub fn tokens_tensor(&self, tokens: &[u32], batch: usize) -> Result<Tensor> {
        let pos = self.cfg.check_tokens(tokens, batch)?;
        Ok(Tensor::from_slice(tokens, (batch, pos), &self.device)?)
    }

    /// Runs the model on `tokens [batch, pos]` (u32) and returns logits.
    pub fn forward(
        &self,
        tokens: &Tensor,
        at: LogitPositions,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let resid = self.residual(tokens, self.cfg.n_layers, at, hooks)?;
        let x = self.norm(self.tree.ln_final.as_ref(), "ln_final", resid, hooks)?;
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
        let embed = hooks.hook("hook_embed", embed)?;
        let pos_embed = match self.cfg.positional_embedding_type {
            PositionalEmbedding::Standard => self.w(self.tree.pos).narrow(0, 0, pos)?,
            PositionalEmbedding::None => Tensor::zeros((pos, d_model), DType::F32, &self.device)?,
        };
        let pos_embed = pos_embed
            .unsqueeze(0)?
            .broadcast_as((batch, pos, d_model))?
            .contiguous()?;
        let pos_embed = hooks.hook("hook_pos_embed", pos_embed)?;
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
        let b = format!("blocks.{layer}");
        let slots = self.tree.blocks[layer];
        let resid_pre = hooks.hook(&format!("{b}.hook_resid_pre"), resid_pre)?;
        let x = self.norm(
            slots.ln1.as_ref(),
            &format!("{b}.ln1"),
            resid_pre.clone(),
            hooks,
        )?;
        let attn_out = self.attention(&slots.attn, &b, &x, hooks)?;
        let attn_out = hooks.hook(&format!("{b}.hook_attn_out"), attn_out)?;
        let (resid, attn_out) = if only_last {
            let t = resid_pre.dim(1)?;
            (
                resid_pre.narrow(1, t - 1, 1)?,
                attn_out.narrow(1, t - 1, 1)?,
            )
        } else {
            (resid_pre, attn_out)
        };
        let Some(mlp) = slots.mlp else {
            return hooks.hook(&format!("{b}.hook_resid_post"), (resid + attn_out)?);
        };
        let resid_mid = hooks.hook(&format!("{b}.hook_resid_mid"), (resid + attn_out)?)?;
        let x = self.norm(
            slots.ln2.as_ref(),
            &format!("{b}.ln2"),
            resid_mid.clone(),
            hooks,
        )?;
        let mlp_out = self.mlp(&mlp, &b, &x, hooks)?;
        let mlp_out = hooks.hook(&format!("{b}.hook_mlp_out"), mlp_out)?;
        hooks.hook(&format!("{b}.hook_resid_post"), (resid_mid + mlp_out)?)
    }

    /// LayerNorm / LNPre as TransformerLens computes it; identity without normalization.
    fn norm(
        &self,
        slots: Option<&NormSlots>,
        prefix: &str,
        x: Tensor,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let Some(kind) = self.cfg.normalization_type else {
            return Ok(x);
        };
        let x = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let scale = (x.sqr()?.mean_keepdim(D::Minus1)? + self.cfg.eps)?.sqrt()?;
        let scale = hooks.hook(&format!("{prefix}.hook_scale"), scale)?;
        let mut x = x.broadcast_div(&scale)?;
        if let (Normalization::LN, Some(ln)) = (kind, slots) {
            x = x.broadcast_mul(self.w(ln.w))?.broadcast_add(self.w(ln.b))?;
        }
        hooks.hook(&format!("{prefix}.hook_normalized"), x)
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
        block: &str,
        x: &Tensor,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let a = format!("{block}.attn");
        let [q, k, v] = slots.qkv();
        let (batch, pos, d_model) = x.dims3()?;
        let (nh, dh) = (self.cfg.n_heads, self.cfg.d_head);
        let q = hooks.hook(&format!("{a}.hook_q"), self.head_projection(x, q)?)?;
        let k = hooks.hook(&format!("{a}.hook_k"), self.head_projection(x, k)?)?;
        let v = hooks.hook(&format!("{a}.hook_v"), self.head_projection(x, v)?)?;
        let q = q.permute((0, 2, 1, 3))?.contiguous()?;
        let k = k.permute((0, 2, 3, 1))?.contiguous()?;
        let v = v.permute((0, 2, 1, 3))?.contiguous()?;
        let scores = (q.matmul(&k)? / (dh as f64).sqrt())?;
        let scores = hooks.hook(
            &format!("{a}.hook_attn_scores"),
            apply_causal_mask(&scores)?,
        )?;
        let pattern = hooks.hook(&format!("{a}.hook_pattern"), softmax_last(&scores)?)?;
        let z = pattern.matmul(&v)?.permute((0, 2, 1, 3))?.contiguous()?;
        let z = hooks.hook(&format!("{a}.hook_z"), z)?;
        let (w_o, b_o) = (self.w(slots.w_o), self.w(slots.b_o));
        let result_name = format!("{a}.hook_result");
        if hooks.wants(&result_name) {
            let result = hooks.hook(&result_name, head_results(&z, w_o)?)?;
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
        block: &str,
        x: &Tensor,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let m = format!("{block}.mlp");
        let (batch, pos, d_model) = x.dims3()?;
        let d_mlp = self.cfg.d_mlp;
        let pre = x
            .reshape((batch * pos, d_model))?
            .matmul(self.w(slots.w_in))?;
        let pre = pre
            .broadcast_add(self.w(slots.b_in))?
            .reshape((batch, pos, d_mlp))?;
        let pre = hooks.hook(&format!("{m}.hook_pre"), pre)?;
        let post = match self.cfg.act_fn {
            ActFn::Relu => crate::model::relu(&pre)?,
            ActFn::Gelu => pre.gelu_erf()?,
            ActFn::GeluNew => pre.gelu()?,
        };
        let post = hooks.hook(&format!("{m}.hook_post"), post)?;
        let out = post
            .reshape((batch * pos, d_mlp))?
            .matmul(self.w(slots.w_out))?;
        Ok(out
            .broadcast_add(self.w(slots.b_out))?
            .reshape((batch, pos, d_model))?)
    }
}

impl HookedModel for HookedTransformer {
    fn hook_names(&self) -> Vec<String> {
        self.cfg.hook_names()
    }

    fn n_layers(&self) -> usize {
        self.cfg.n_layers
    }

    fn tokens_tensor(&self, tokens: &[u32], batch: usize) -> Result<Tensor> {
        HookedTransformer::tokens_tensor(self, tokens, batch)
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
