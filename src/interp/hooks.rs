//! `run_with_hooks`: functions keyed by hook name or predicate that see an activation and may replace
//! it. Hooks live in a [`HookSet`] passed to one call, so nothing stays attached after it returns.

use candle_core::{DType, Tensor};

use crate::error::{GrokError, Result};
use crate::interp::cache::{resolve_known, ActivationCache};
use crate::interp::names::ActKey;
use crate::model::{HookedModel, Hooks};

/// A hook: sees the activation and its full hook name; returns a replacement or `None` to keep it.
pub type HookFn<'a> = Box<dyn FnMut(&Tensor, &str) -> Result<Option<Tensor>> + 'a>;

enum Matcher<'a> {
    Name(String),
    Filter(Box<dyn Fn(&str) -> bool + 'a>),
}

/// Hooks for one forward pass, applied in the order they were added.
pub struct HookSet<'a> {
    known: Vec<String>,
    n_layers: usize,
    hooks: Vec<(Matcher<'a>, HookFn<'a>)>,
}

impl<'a> HookSet<'a> {
    /// An empty set for `model`'s hook points.
    pub fn new<M: HookedModel + ?Sized>(model: &M) -> Self {
        HookSet {
            known: model.hook_names(),
            n_layers: model.n_layers(),
            hooks: Vec::new(),
        }
    }

    /// Adds `f` at the hook point `key` (full name or shorthand); an unknown name is an error.
    pub fn add(mut self, key: impl Into<ActKey>, f: HookFn<'a>) -> Result<Self> {
        let name = resolve_known(&key.into(), self.n_layers, &self.known)?;
        self.hooks.push((Matcher::Name(name), f));
        Ok(self)
    }

    /// Adds `f` at every hook point whose full name `filter` accepts.
    pub fn add_filter(mut self, filter: impl Fn(&str) -> bool + 'a, f: HookFn<'a>) -> Self {
        self.hooks.push((Matcher::Filter(Box::new(filter)), f));
        self
    }
}

impl Hooks for HookSet<'_> {
    fn hook(&mut self, name: &str, mut value: Tensor) -> Result<Tensor> {
        for (m, f) in &mut self.hooks {
            let hit = match m {
                Matcher::Name(n) => n == name,
                Matcher::Filter(p) => p(name),
            };
            if !hit {
                continue;
            }
            if let Some(new) = f(&value, name)? {
                if new.dims() != value.dims() {
                    return Err(GrokError::tensor(
                        name,
                        format!(
                            "hook returned shape {:?}; the activation has shape {:?}",
                            new.dims(),
                            value.dims()
                        ),
                    ));
                }
                value = new.to_dtype(DType::F32)?;
            }
        }
        Ok(value)
    }

    fn wants(&self, name: &str) -> bool {
        self.hooks.iter().any(|(m, _)| match m {
            Matcher::Name(n) => n == name,
            Matcher::Filter(p) => p(name),
        })
    }
}

/// The axis of the head index in a hook's activation, if it has one.
pub fn head_axis(name: &str) -> Option<usize> {
    if name.ends_with("hook_pattern") || name.ends_with("hook_attn_scores") {
        Some(1) // [batch, head, query, key]
    } else if ["hook_q", "hook_k", "hook_v", "hook_z", "hook_result"]
        .iter()
        .any(|h| name.ends_with(h))
    {
        Some(2) // [batch, pos, head, ...]
    } else {
        None
    }
}

/// The axis of the (query) position in a hook's activation.
pub fn position_axis(name: &str) -> usize {
    if name.ends_with("hook_pattern") || name.ends_with("hook_attn_scores") {
        2
    } else {
        1
    }
}

/// `value` with index `index` along `axis` replaced by the same slice of `source`.
fn replace_slice(
    value: &Tensor,
    source: &Tensor,
    axis: usize,
    index: usize,
    name: &str,
) -> Result<Tensor> {
    let n = value.dim(axis)?;
    if index >= n {
        return Err(GrokError::tensor(
            name,
            format!("index {index} is out of range for axis {axis} of size {n}"),
        ));
    }
    let mut shape = vec![1; value.rank()];
    shape[axis] = n;
    let mask: Vec<u8> = (0..n).map(|i| u8::from(i == index)).collect();
    let mask =
        Tensor::from_slice(&mask, shape.as_slice(), value.device())?.broadcast_as(value.shape())?;
    Ok(mask.where_cond(&source.broadcast_as(value.shape())?, value)?)
}

/// Replaces the activation by zeros.
pub fn zero_ablate<'a>() -> HookFn<'a> {
    Box::new(|t, _| Ok(Some(t.zeros_like()?)))
}

/// Replaces the activation by `mean` (e.g. [`batch_mean`] of another run) broadcast over the batch.
pub fn mean_ablate<'a>(mean: Tensor) -> HookFn<'a> {
    Box::new(move |t, _| Ok(Some(mean.broadcast_as(t.shape())?.contiguous()?)))
}

/// Replaces the activation by `source` (the same hook point in another run, same shape).
pub fn patch<'a>(source: Tensor) -> HookFn<'a> {
    Box::new(move |_, _| Ok(Some(source.clone())))
}

/// Zeroes one head of an activation that has a head axis (`q`, `k`, `v`, `z`, `result`, `pattern`, `attn_scores`).
pub fn zero_ablate_head<'a>(head: usize) -> HookFn<'a> {
    Box::new(move |t, name| {
        let axis = head_axis(name).ok_or_else(|| GrokError::tensor(name, "has no head axis"))?;
        Ok(Some(replace_slice(t, &t.zeros_like()?, axis, head, name)?))
    })
}

/// Patches one head from `source` (same hook point of another run).
pub fn patch_head<'a>(source: Tensor, head: usize) -> HookFn<'a> {
    Box::new(move |t, name| {
        let axis = head_axis(name).ok_or_else(|| GrokError::tensor(name, "has no head axis"))?;
        Ok(Some(replace_slice(t, &source, axis, head, name)?))
    })
}

/// Patches one (query) position from `source`.
pub fn patch_position<'a>(source: Tensor, position: usize) -> HookFn<'a> {
    Box::new(move |t, name| {
        Ok(Some(replace_slice(
            t,
            &source,
            position_axis(name),
            position,
            name,
        )?))
    })
}

/// The mean over the batch (axis 0) of a cached activation, keeping the axis.
pub fn batch_mean(cache: &ActivationCache, key: impl Into<ActKey>) -> Result<Tensor> {
    Ok(cache.get(key)?.mean_keepdim(0)?)
}
