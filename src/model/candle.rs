//! The one wrapper every family's candle forward pass lives in: a config, its parameter and hook
//! trees, and its weights as candle tensors (some of them trainable [`Var`]s). A family adds its
//! forward pass as an inherent `impl` on its instance (`HookedTransformer`, `MlpModel`,
//! `BitNetModel` are aliases of it); building, weight access and token checks are written once here.

use candle_core::{Device, Tensor, Var};

use crate::error::Result;
use crate::model::family::Family;
use crate::model::hooks::HookTree;
use crate::model::params::{CandleWeights, ParamSpec, Params, Slot};

/// A family config that builds a typed parameter tree.
pub trait HasTree: Family + Clone {
    /// The family's parameter tree.
    type Tree;

    /// The tree of this config.
    fn param_tree(&self) -> Self::Tree;

    /// Its specs, in slot order.
    fn specs(tree: &Self::Tree) -> &[ParamSpec];
}

/// A model of family `C` on candle tensors; `X` is what a family keeps beside its weights (BitNet's
/// quantized weights; nothing for the others).
pub struct CandleModel<C: HasTree, X = ()> {
    /// Architecture.
    pub cfg: C,
    /// Where each parameter sits.
    pub tree: C::Tree,
    /// Every hook point, with its axes.
    pub hook_tree: HookTree,
    weights: Vec<Tensor>,
    device: Device,
    /// The family's own state (see the type's docs).
    pub(crate) extra: X,
}

impl<C: HasTree, X> CandleModel<C, X> {
    /// Wraps `params`, making the slots `trainable` accepts into [`Var`]s whose gradients
    /// `backward` keeps; `extra` builds the family's own state from the config, tree and params.
    pub(crate) fn build(
        cfg: &C,
        params: &Params,
        trainable: impl Fn(Slot) -> bool,
        extra: impl FnOnce(&C, &C::Tree, &Device) -> Result<X>,
    ) -> Result<(Self, Vec<(Slot, Var)>)> {
        let tree = cfg.param_tree();
        let device = Device::Cpu;
        let CandleWeights { tensors, vars } =
            CandleWeights::new(C::specs(&tree), params, &device, trainable)?;
        let extra = extra(cfg, &tree, &device)?;
        let model = CandleModel {
            cfg: cfg.clone(),
            hook_tree: cfg.hooks(),
            tree,
            weights: tensors,
            device,
            extra,
        };
        Ok((model, vars))
    }

    /// The tensor in `slot`.
    pub fn w(&self, slot: Slot) -> &Tensor {
        &self.weights[slot.index()]
    }

    /// The tensor in slot `i` (by index, for lookups by name).
    pub(crate) fn weight_at(&self, i: usize) -> &Tensor {
        &self.weights[i]
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Token ids `[batch, pos]` as a candle tensor, checked against the vocabulary and context.
    pub fn tokens_tensor(&self, tokens: &[u32], batch: usize) -> Result<Tensor> {
        let pos = self.cfg.check_tokens(tokens, batch)?;
        Ok(Tensor::from_slice(tokens, (batch, pos), &self.device)?)
    }
}

impl<C: HasTree> CandleModel<C, ()> {
    /// Wraps `params` as constant tensors (no gradients).
    pub fn new(cfg: &C, params: &Params) -> Result<Self> {
        Ok(Self::with_vars(cfg, params, |_| false)?.0)
    }

    /// Wraps `params`, making the slots `trainable` accepts into [`Var`]s.
    pub fn with_vars(
        cfg: &C,
        params: &Params,
        trainable: impl Fn(Slot) -> bool,
    ) -> Result<(Self, Vec<(Slot, Var)>)> {
        Self::build(cfg, params, trainable, |_, _, _| Ok(()))
    }
}
