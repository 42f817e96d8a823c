//! Hook points: every named intermediate value of the forward pass passes through a [`Hooks`] object,
//! which may record it or return a replacement. Hooks are an argument of the forward call, so nothing
//! stays attached after it returns.

use candle_core::Tensor;

use crate::error::Result;

/// What one axis of a hook point's activation indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// Inputs of the batch.
    Batch,
    /// Token positions.
    Pos,
    /// Query positions (attention scores and pattern).
    QueryPos,
    /// Key positions (attention scores and pattern).
    KeyPos,
    /// Attention heads.
    Head,
    /// The residual stream.
    DModel,
    /// One head's query, key, value or z.
    DHead,
    /// MLP neurons.
    DMlp,
    /// A norm's single scale per position.
    One,
    /// The MLP family's flattened input: every position's embedding side by side (position-major),
    /// each this many columns wide, so one position is a block of columns, not one index.
    PosFeatures(usize),
}

/// One hook point: its TransformerLens name and its axes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookPoint {
    /// Full name, e.g. `blocks.0.attn.hook_pattern`.
    pub name: String,
    /// The activation's axes, in order.
    pub axes: Vec<Axis>,
    /// Computed only when a hook asks for it (`attn.hook_result`, which costs extra work).
    pub optional: bool,
}

impl HookPoint {
    /// Where axis `axis` sits, if the activation has it.
    pub fn axis(&self, axis: Axis) -> Option<usize> {
        self.axes.iter().position(|&a| a == axis)
    }
}

/// A hook point of a [`HookTree`] (an index into its points).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook(usize);

impl crate::model::params::Scope<'_, HookPoint> {
    /// Declares hook point `name` in this scope with its axes.
    pub fn hook(&mut self, name: &str, axes: &[Axis]) -> Hook {
        self.point(name, axes, false)
    }

    /// Declares a hook point computed only on request.
    pub fn optional_hook(&mut self, name: &str, axes: &[Axis]) -> Hook {
        self.point(name, axes, true)
    }

    fn point(&mut self, name: &str, axes: &[Axis], optional: bool) -> Hook {
        let name = self.path(name);
        Hook(self.push_item(HookPoint {
            name,
            axes: axes.to_vec(),
            optional,
        }))
    }
}

/// A norm's hook points (`ln1`, `ln2`, `ln_final`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormHooks {
    /// `hook_scale [batch, pos, 1]`.
    pub scale: Hook,
    /// `hook_normalized [batch, pos, d_model]`.
    pub normalized: Hook,
}

/// An attention layer's hook points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnHooks {
    /// `hook_q [batch, pos, head, d_head]`.
    pub q: Hook,
    /// `hook_k`.
    pub k: Hook,
    /// `hook_v`.
    pub v: Hook,
    /// `hook_attn_scores [batch, head, query_pos, key_pos]` (masked entries −inf).
    pub attn_scores: Hook,
    /// `hook_pattern`, the softmax of the scores.
    pub pattern: Hook,
    /// `hook_z [batch, pos, head, d_head]`.
    pub z: Hook,
    /// `hook_result [batch, pos, head, d_model]`, on request only.
    pub result: Hook,
}

/// An MLP's hook points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlpHooks {
    /// `hook_pre [batch, (pos,) d_mlp]`, before the activation function.
    pub pre: Hook,
    /// `hook_post`, after it.
    pub post: Hook,
}

/// One block's hook points; a family has the ones its block computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockHooks {
    /// `hook_resid_pre`.
    pub resid_pre: Option<Hook>,
    /// Norm before attention.
    pub ln1: Option<NormHooks>,
    /// Attention.
    pub attn: Option<AttnHooks>,
    /// `hook_attn_out`.
    pub attn_out: Option<Hook>,
    /// `hook_resid_mid` (blocks with an MLP after attention).
    pub resid_mid: Option<Hook>,
    /// Norm before the MLP.
    pub ln2: Option<NormHooks>,
    /// MLP.
    pub mlp: Option<MlpHooks>,
    /// `hook_mlp_out`.
    pub mlp_out: Option<Hook>,
    /// `hook_resid_post`.
    pub resid_post: Option<Hook>,
}

/// Every hook point of a model, built from its config: the forward pass, the list of names, the
/// cache, patching and the readers all index this tree instead of formatting names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookTree {
    /// `hook_embed`.
    pub embed: Hook,
    /// `hook_pos_embed` (families with positional embeddings).
    pub pos_embed: Option<Hook>,
    /// The blocks in order.
    pub blocks: Vec<BlockHooks>,
    /// The final norm.
    pub ln_final: Option<NormHooks>,
    points: Vec<HookPoint>,
}

/// Builds a [`HookTree`]: `build(root scope)` declares the points in forward order and returns the
/// typed handles.
pub fn hook_tree(
    build: impl FnOnce(
        &mut crate::model::params::Scope<'_, HookPoint>,
    ) -> (Hook, Option<Hook>, Vec<BlockHooks>, Option<NormHooks>),
) -> HookTree {
    let mut points = Vec::new();
    let (embed, pos_embed, blocks, ln_final) =
        build(&mut crate::model::params::Scope::root(&mut points));
    HookTree {
        embed,
        pos_embed,
        blocks,
        ln_final,
        points,
    }
}

/// The axes of the common hook points.
pub mod axes {
    use super::Axis::{self, *};
    /// `[batch, pos, d_model]`.
    pub const RESID: &[Axis] = &[Batch, Pos, DModel];
    /// `[batch, pos, 1]`.
    pub const SCALE: &[Axis] = &[Batch, Pos, One];
    /// `[batch, pos, head, d_head]`.
    pub const HEAD_VECTORS: &[Axis] = &[Batch, Pos, Head, DHead];
    /// `[batch, head, query_pos, key_pos]`.
    pub const SCORES: &[Axis] = &[Batch, Head, QueryPos, KeyPos];
    /// `[batch, pos, head, d_model]`.
    pub const HEAD_RESULTS: &[Axis] = &[Batch, Pos, Head, DModel];
    /// `[batch, pos, d_mlp]`.
    pub const NEURONS: &[Axis] = &[Batch, Pos, DMlp];
}

impl HookTree {
    /// Every point, in forward order.
    pub fn points(&self) -> &[HookPoint] {
        &self.points
    }

    /// The point behind `hook`.
    pub fn point(&self, hook: Hook) -> &HookPoint {
        &self.points[hook.0]
    }

    /// The name of `hook`.
    pub fn name(&self, hook: Hook) -> &str {
        &self.points[hook.0].name
    }

    /// Every name, in forward order.
    pub fn names(&self) -> Vec<String> {
        self.points.iter().map(|p| p.name.clone()).collect()
    }

    /// The point named `name`, if the model has it.
    pub fn find(&self, name: &str) -> Option<&HookPoint> {
        self.points.iter().find(|p| p.name == name)
    }

    /// The last block (every model has at least one).
    pub fn last_block(&self) -> &BlockHooks {
        self.blocks
            .last()
            .expect("n_layers >= 1 (checked by the config)")
    }

    /// Passes `value` through `hooks` at `hook`.
    pub fn apply(&self, hooks: &mut dyn Hooks, hook: Hook, value: Tensor) -> Result<Tensor> {
        hooks.hook(self.name(hook), value)
    }

    /// Whether `hooks` asks for the optional point `hook`.
    pub fn wanted(&self, hooks: &dyn Hooks, hook: Hook) -> bool {
        hooks.wants(self.name(hook))
    }

    /// A norm's points (`hook_scale`, `hook_normalized`) in scope `s`.
    pub fn declare_norm(s: &mut crate::model::params::Scope<'_, HookPoint>) -> NormHooks {
        NormHooks {
            scale: s.hook("hook_scale", axes::SCALE),
            normalized: s.hook("hook_normalized", axes::RESID),
        }
    }

    /// An attention layer's points in scope `s` (`…attn`), in forward order.
    pub fn declare_attn(s: &mut crate::model::params::Scope<'_, HookPoint>) -> AttnHooks {
        AttnHooks {
            q: s.hook("hook_q", axes::HEAD_VECTORS),
            k: s.hook("hook_k", axes::HEAD_VECTORS),
            v: s.hook("hook_v", axes::HEAD_VECTORS),
            attn_scores: s.hook("hook_attn_scores", axes::SCORES),
            pattern: s.hook("hook_pattern", axes::SCORES),
            z: s.hook("hook_z", axes::HEAD_VECTORS),
            result: s.optional_hook("hook_result", axes::HEAD_RESULTS),
        }
    }

    /// An MLP's points in scope `s` (`…mlp`) with the given axes.
    pub fn declare_mlp(
        s: &mut crate::model::params::Scope<'_, HookPoint>,
        neurons: &[Axis],
    ) -> MlpHooks {
        MlpHooks {
            pre: s.hook("hook_pre", neurons),
            post: s.hook("hook_post", neurons),
        }
    }
}

/// Sees each hook point's value in forward order and returns the value the forward continues with.
pub trait Hooks {
    /// Called with the full TransformerLens hook name (e.g. `blocks.0.attn.hook_pattern`).
    fn hook(&mut self, name: &str, value: Tensor) -> Result<Tensor>;

    /// Whether an optional hook point (such as `attn.hook_result`, which costs extra work) should be
    /// computed at all.
    fn wants(&self, _name: &str) -> bool {
        false
    }
}

/// Passes every value through unchanged.
pub struct NoHooks;

impl Hooks for NoHooks {
    fn hook(&mut self, _name: &str, value: Tensor) -> Result<Tensor> {
        Ok(value)
    }
}

/// Records every hook point whose name `keep` accepts, in forward order.
pub struct Recorder<F: Fn(&str) -> bool> {
    keep: F,
    /// Recorded `(hook name, value)` pairs.
    pub values: Vec<(String, Tensor)>,
}

impl<F: Fn(&str) -> bool> Recorder<F> {
    /// A recorder keeping the hook points `keep` accepts.
    pub fn new(keep: F) -> Self {
        Recorder {
            keep,
            values: Vec::new(),
        }
    }
}

impl<F: Fn(&str) -> bool> Hooks for Recorder<F> {
    fn hook(&mut self, name: &str, value: Tensor) -> Result<Tensor> {
        if (self.keep)(name) {
            self.values.push((name.to_string(), value.clone()));
        }
        Ok(value)
    }

    fn wants(&self, name: &str) -> bool {
        (self.keep)(name)
    }
}
