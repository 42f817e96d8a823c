//! The BitNet forward pass on candle tensors, computed as the seed's `BitNetTransformer`, with
//! TransformerLens-named hook points. Each BitLinear uses its quantized weight ([`quant`]) with a
//! straight-through gradient: the value is exactly the quantized weight, the gradient reaches the
//! latent weight through its centring (so d/dW = g − mean(g)).

use candle_core::{Tensor, Var, D};

use crate::error::Result;
use crate::model::bitnet::{quant, BitBlockSlots, BitNetConfig, BitNetTree, Residual};
use crate::model::candle::{CandleModel, HasTree};
use crate::model::hooks::{AttnHooks, Hook, HookTree, Hooks};
use crate::model::params::{ParamSpec, Params, Slot};
use crate::model::transformer::forward::{apply_causal_mask, head_results, softmax_last};
use crate::model::{HookedModel, LogitPositions};

/// A BitNet transformer whose weights are candle tensors copied from a [`Params`] store, with every
/// BitLinear's quantized weight formed once at construction (per slot; `None` for the full-precision
/// parameters).
pub type BitNetModel = CandleModel<BitNetConfig, Vec<Option<Tensor>>>;

impl HasTree for BitNetConfig {
    type Tree = BitNetTree;

    fn param_tree(&self) -> BitNetTree {
        self.tree()
    }

    fn specs(tree: &BitNetTree) -> &[ParamSpec] {
        &tree.specs
    }
}

impl BitNetModel {
    /// Wraps `params` as constant tensors.
    pub fn new(cfg: &BitNetConfig, params: &Params) -> Result<Self> {
        Ok(Self::with_vars(cfg, params, |_| false)?.0)
    }

    /// Wraps `params`, making the slots `trainable` accepts into [`Var`]s.
    pub fn with_vars(
        cfg: &BitNetConfig,
        params: &Params,
        trainable: impl Fn(Slot) -> bool,
    ) -> Result<(Self, Vec<(Slot, Var)>)> {
        Self::build(cfg, params, trainable, |cfg, tree, device| {
            let mut quantized = vec![None; tree.specs.len()];
            for (_, _, slot) in tree.bit_linears() {
                let q = quant::effective(&params[slot], cfg.quant, cfg.weight_scale);
                let shape = tree.specs[slot.index()].shape.as_slice();
                quantized[slot.index()] = Some(Tensor::from_vec(q, shape, device)?);
            }
            Ok(quantized)
        })
    }

    /// The weight the BitLinear in `slot` uses, `[out, in]`: the quantized value, with the
    /// straight-through gradient to the latent weight.
    pub fn bit_weight(&self, slot: Slot) -> Result<Tensor> {
        let w = self.w(slot);
        let q = self.extra[slot.index()]
            .as_ref()
            .expect("bit_weight is asked only for BitLinear slots");
        Ok(q.add(&straight_through(&w.broadcast_sub(&w.mean_all()?)?)?)?)
    }

    /// The BitLinear in `slot` on `x [.., in]`: its input quantized per token when `act_bits` asks
    /// for it, then `x · Wᵀ`.
    fn bit_linear(&self, x: &Tensor, slot: Slot) -> Result<Tensor> {
        self.project(&self.quantize_input(x)?, slot)
    }

    /// `x · Wᵀ` with the quantized weight in `slot`, for `x [.., in]`.
    fn project(&self, x: &Tensor, slot: Slot) -> Result<Tensor> {
        let w = self.bit_weight(slot)?;
        let dims = x.dims().to_vec();
        let d_in = *dims.last().expect("inputs have a feature dimension");
        let rows = x.elem_count() / d_in;
        let y = x.reshape((rows, d_in))?.matmul(&w.t()?)?;
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty") = w.dim(0)?;
        Ok(y.reshape(out_dims)?)
    }

    /// BitNet b1.58's per-token activation quantizer (straight-through), or `x` when it is off.
    fn quantize_input(&self, x: &Tensor) -> Result<Tensor> {
        if self.cfg.act_bits == 0 {
            return Ok(x.clone());
        }
        let width = x.dim(D::Minus1)?;
        let mut values = x.flatten_all()?.to_vec1::<f32>()?;
        quant::quantize_activations(&mut values, width, self.cfg.act_bits);
        let q = Tensor::from_vec(values, x.shape(), self.device())?;
        Ok(q.add(&straight_through(x)?)?)
    }

    fn attention(
        &self,
        slots: &BitBlockSlots,
        at: &AttnHooks,
        x: &Tensor,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let h = &self.hook_tree;
        let (batch, pos, d_model) = x.dims3()?;
        let (nh, dh) = (self.cfg.n_heads, self.cfg.d_head());
        let x_in = self.quantize_input(x)?;
        let mut heads = Vec::with_capacity(3);
        for (&slot, hook) in slots.qkv.iter().zip([at.q, at.k, at.v]) {
            let y = self.project(&x_in, slot)?.reshape((batch, pos, nh, dh))?;
            heads.push(h.apply(hooks, hook, y)?);
        }
        let q = heads[0].permute((0, 2, 1, 3))?.contiguous()?;
        let k = heads[1].permute((0, 2, 3, 1))?.contiguous()?;
        let v = heads[2].permute((0, 2, 1, 3))?.contiguous()?;
        let mut scores = (q.matmul(&k)? * self.cfg.score_scale())?;
        if self.cfg.causal {
            scores = apply_causal_mask(&scores)?;
        }
        let scores = h.apply(hooks, at.attn_scores, scores)?;
        let pattern = softmax_last(&scores)?;
        let pattern = h.apply(hooks, at.pattern, pattern)?;
        let z = pattern.matmul(&v)?.permute((0, 2, 1, 3))?.contiguous()?;
        let z = h.apply(hooks, at.z, z)?;
        let z_in = self.quantize_input(&z.reshape((batch, pos, nh * dh))?)?;
        if h.wanted(hooks, at.result) {
            let w_o = self
                .bit_weight(slots.out)?
                .t()?
                .reshape((nh, dh, d_model))?;
            let z_in = z_in.reshape((batch, pos, nh, dh))?;
            let result = h.apply(hooks, at.result, head_results(&z_in, &w_o)?)?;
            return Ok(result.sum(2)?);
        }
        self.project(&z_in, slots.out)
    }

    /// The residual stream after every block, `[batch, pos or 1, d_model]`.
    fn residual(
        &self,
        tokens: &Tensor,
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
        let mut resid = embed.clone();
        // Every point a BitNet block has (declared by `BitNetConfig::hooks`).
        let point = |p: Option<Hook>| p.expect("a BitNet block's hook point");
        for (l, (slots, bh)) in self.tree.blocks.iter().zip(&h.blocks).enumerate() {
            let resid_pre = h.apply(hooks, point(bh.resid_pre), resid)?;
            let attn_hooks = bh.attn.expect("a BitNet block has attention");
            let attn_out = self.attention(slots, &attn_hooks, &resid_pre, hooks)?;
            let mut attn_out = h.apply(hooks, point(bh.attn_out), attn_out)?;
            let mut skip = match self.cfg.residual {
                Residual::Embed => embed.clone(),
                Residual::Stream => resid_pre,
            };
            if at == LogitPositions::Last && l + 1 == self.cfg.n_layers {
                let last = |t: &Tensor| t.narrow(1, pos - 1, 1);
                (attn_out, skip) = (last(&attn_out)?, last(&skip)?);
            }
            let resid_mid = h.apply(hooks, point(bh.resid_mid), (attn_out + skip)?)?;
            let mlp = bh.mlp.expect("a BitNet block has an MLP");
            let pre = self.bit_linear(&resid_mid, slots.ff_in)?;
            let pre = h.apply(hooks, mlp.pre, pre)?;
            let post = h.apply(hooks, mlp.post, crate::model::relu(&pre)?)?;
            let mlp_out = self.bit_linear(&post, slots.ff_out)?;
            let mlp_out = h.apply(hooks, point(bh.mlp_out), mlp_out)?;
            resid = h.apply(hooks, point(bh.resid_post), (resid_mid + mlp_out)?)?;
        }
        Ok(resid)
    }
}

/// `x − x.detach()`: zero in value, the identity in gradient. Added to a constant it makes the
/// straight-through estimator with the constant's exact value.
fn straight_through(x: &Tensor) -> Result<Tensor> {
    Ok(x.sub(&x.detach())?)
}

impl HookedModel for BitNetModel {
    fn hook_tree(&self) -> &HookTree {
        &self.hook_tree
    }

    fn n_layers(&self) -> usize {
        self.cfg.n_layers
    }

    fn tokens_tensor(&self, tokens: &[u32], batch: usize) -> Result<Tensor> {
        CandleModel::tokens_tensor(self, tokens, batch)
    }

    /// Logits `[batch, pos, d_vocab_out]` (`pos` = 1 for [`LogitPositions::Last`], where the last
    /// block's feed-forward and the unembedding run at the last position only).
    fn forward(
        &self,
        tokens: &Tensor,
        at: LogitPositions,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let x = self.residual(tokens, at, hooks)?;
        let (b, t, d) = x.dims3()?;
        let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
        let h = &self.hook_tree;
        let ln = h.ln_final.expect("BitNet's final RMSNorm has hook points");
        let scale = h.apply(hooks, ln.scale, (norm / (d as f64).sqrt())?)?;
        let normalized = h.apply(hooks, ln.normalized, x.broadcast_div(&scale)?)?;
        let logits = normalized
            .broadcast_mul(self.w(self.tree.gamma))?
            .reshape((b * t, d))?
            .matmul(&self.w(self.tree.unembed).t()?)?;
        Ok(logits.reshape((b, t, self.cfg.d_vocab_out))?)
    }
}
