//! The MLP's forward pass on candle tensors, computed as seed 002's `nn.Sequential`, with hook points.

use candle_core::Tensor;

use crate::error::{GrokError, Result};
use crate::model::candle::{CandleModel, HasTree};
use crate::model::hooks::{HookTree, Hooks};
use crate::model::mlp::{LinearSlots, MlpConfig, MlpTree};
use crate::model::params::ParamSpec;
use crate::model::transformer::config::ActFn;
use crate::model::transformer::forward::LogitPositions;
use crate::model::HookedModel;

/// An MLP whose weights are candle tensors copied from a [`Params`] store.
pub type MlpModel = CandleModel<MlpConfig>;

impl HasTree for MlpConfig {
    type Tree = MlpTree;

    fn param_tree(&self) -> MlpTree {
        self.tree()
    }

    fn specs(tree: &MlpTree) -> &[ParamSpec] {
        &tree.specs
    }
}

impl MlpModel {
    /// `x·Wᵀ + b` (PyTorch `nn.Linear`).
    fn linear(&self, x: &Tensor, l: &LinearSlots) -> Result<Tensor> {
        Ok(x.matmul(&self.w(l.weight).t()?)?
            .broadcast_add(self.w(l.bias))?)
    }
}

impl HookedModel for MlpModel {
    fn hook_tree(&self) -> &HookTree {
        &self.hook_tree
    }

    fn n_layers(&self) -> usize {
        self.cfg.n_hidden
    }

    fn tokens_tensor(&self, tokens: &[u32], batch: usize) -> Result<Tensor> {
        CandleModel::tokens_tensor(self, tokens, batch)
    }

    /// Logits `[batch, 1, d_vocab_out]`: the MLP has one output per row, read like a transformer's
    /// last position (so `at` changes nothing).
    fn forward(
        &self,
        tokens: &Tensor,
        _at: LogitPositions,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let (batch, pos) = tokens.dims2()?;
        if pos != self.cfg.n_ctx {
            return Err(GrokError::tensor(
                "tokens",
                format!(
                    "has {pos} positions; the MLP reads exactly n_ctx = {}",
                    self.cfg.n_ctx
                ),
            ));
        }
        let embed = self
            .w(self.tree.embed)
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((batch, self.cfg.d_input()))?;
        let h = &self.hook_tree;
        let mut x = h.apply(hooks, h.embed, embed)?;
        for (layer, block) in self.tree.hidden.iter().zip(&h.blocks) {
            let at = block
                .mlp
                .expect("every hidden layer has its MLP hook points");
            let pre = h.apply(hooks, at.pre, self.linear(&x, layer)?)?;
            let post = match self.cfg.act_fn {
                ActFn::Relu => crate::model::relu(&pre)?,
                ActFn::Gelu => pre.gelu_erf()?,
                ActFn::GeluNew => pre.gelu()?,
            };
            x = h.apply(hooks, at.post, post)?;
        }
        let logits = self.linear(&x, &self.tree.out)?;
        Ok(logits.reshape((batch, 1, self.cfg.d_vocab_out))?)
    }
}
