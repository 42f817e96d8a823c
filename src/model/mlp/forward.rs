//! The MLP's forward pass on candle tensors, computed as seed 002's `nn.Sequential`, with hook points.

use candle_core::{Device, Tensor, Var};

use crate::error::{GrokError, Result};
use crate::model::hooks::{HookTree, Hooks};
use crate::model::mlp::{LinearSlots, MlpConfig, MlpTree};
use crate::model::params::{CandleWeights, Params, Slot};
use crate::model::transformer::config::ActFn;
use crate::model::transformer::forward::LogitPositions;
use crate::model::HookedModel;

/// An MLP whose weights are candle tensors copied from a [`Params`] store.
pub struct MlpModel {
    /// Architecture.
    pub cfg: MlpConfig,
    /// Where each parameter sits.
    pub tree: MlpTree,
    /// Every hook point, with its axes.
    pub hook_tree: HookTree,
    weights: Vec<Tensor>,
    device: Device,
}

impl MlpModel {
    /// Wraps `params` as constant tensors.
    pub fn new(cfg: &MlpConfig, params: &Params) -> Result<Self> {
        Ok(Self::with_vars(cfg, params, |_| false)?.0)
    }

    /// Wraps `params`, making the slots `trainable` accepts into [`Var`]s.
    pub fn with_vars(
        cfg: &MlpConfig,
        params: &Params,
        trainable: impl Fn(Slot) -> bool,
    ) -> Result<(Self, Vec<(Slot, Var)>)> {
        let tree = cfg.tree();
        let device = Device::Cpu;
        let CandleWeights { tensors, vars } =
            CandleWeights::new(&tree.specs, params, &device, trainable)?;
        let model = MlpModel {
            cfg: cfg.clone(),
            tree,
            hook_tree: cfg.hooks(),
            weights: tensors,
            device,
        };
        Ok((model, vars))
    }

    /// The tensor in `slot`.
    pub fn w(&self, slot: Slot) -> &Tensor {
        &self.weights[slot.index()]
    }

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
        let pos = self.cfg.check_tokens(tokens, batch)?;
        Ok(Tensor::from_slice(tokens, (batch, pos), &self.device)?)
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
