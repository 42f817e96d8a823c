//! Hook points: every named intermediate value of the forward pass passes through a [`Hooks`] object,
//! which may record it or return a replacement. Hooks are an argument of the forward call, so nothing
//! stays attached after it returns.

use candle_core::Tensor;

use crate::error::Result;

/// The attention hook points of a block, in forward order (`hook_result` is computed only when a
/// hook asks for it), shared by every family with attention.
pub const ATTN_HOOKS: [&str; 7] = [
    "hook_q",
    "hook_k",
    "hook_v",
    "hook_attn_scores",
    "hook_pattern",
    "hook_z",
    "hook_result",
];

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
