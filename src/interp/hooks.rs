//! `run_with_hooks`: functions keyed by hook name or predicate that see an activation and may replace
//! it. Hooks live in a [`HookSet`] passed to one call, so nothing stays attached after it returns.

use candle_core::{DType, Tensor};

use crate::error::{GrokError, Result};
use crate::interp::cache::{resolve_known, ActivationCache};
use crate::interp::names::ActKey;
use crate::model::hooks::{Axis, HookPoint};
use crate::model::{HookedModel, Hooks};

/// A hook: sees the activation and its hook point (full name and axes); returns a replacement or
/// `None` to keep it.
pub type HookFn<'a> = Box<dyn FnMut(&Tensor, &HookPoint) -> Result<Option<Tensor>> + 'a>;

enum Matcher<'a> {
    Name(String),
    Filter(Box<dyn Fn(&str) -> bool + 'a>),
}

/// Hooks for one forward pass, applied in the order they were added.
pub struct HookSet<'a> {
    points: Vec<HookPoint>,
    known: Vec<String>,
    n_layers: usize,
    hooks: Vec<(Matcher<'a>, HookFn<'a>)>,
}

impl<'a> HookSet<'a> {
    /// An empty set for `model`'s hook points.
    pub fn new<M: HookedModel + ?Sized>(model: &M) -> Self {
        HookSet {
            points: model.hook_tree().points().to_vec(),
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
        let Some(point) = self.points.iter().find(|p| p.name == name) else {
            return Err(GrokError::tensor(name, "is not a hook point of this model"));
        };
        for (m, f) in &mut self.hooks {
            let hit = match m {
                Matcher::Name(n) => n == name,
                Matcher::Filter(p) => p(name),
            };
            if !hit {
                continue;
            }
            if let Some(new) = f(&value, point)? {
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

/// Where position `position` sits in `point`'s activation: `(axis, first index, length)` — one index
/// of the (query) position axis, or for the MLP's flattened input the `width` columns of that
/// position's embedding.
fn position_range(point: &HookPoint, position: usize) -> Result<(usize, usize, usize)> {
    if let Some(axis) = point.axis(Axis::Pos).or(point.axis(Axis::QueryPos)) {
        return Ok((axis, position, 1));
    }
    for (axis, a) in point.axes.iter().enumerate() {
        if let Axis::PosFeatures(width) = *a {
            return Ok((axis, position * width, width));
        }
    }
    Err(GrokError::tensor(&point.name, "has no position axis"))
}

/// `value` with indices `start..start + len` along `axis` replaced by the same slice of `source`.
fn replace_range(
    value: &Tensor,
    source: &Tensor,
    (axis, start, len): (usize, usize, usize),
    name: &str,
) -> Result<Tensor> {
    let n = value.dim(axis)?;
    if start + len > n {
        return Err(GrokError::tensor(
            name,
            format!(
                "index {} is out of range for axis {axis} of size {}",
                start / len.max(1),
                n / len.max(1)
            ),
        ));
    }
    let mut shape = vec![1; value.rank()];
    shape[axis] = n;
    let mask: Vec<u8> = (0..n)
        .map(|i| u8::from((start..start + len).contains(&i)))
        .collect();
    let mask =
        Tensor::from_slice(&mask, shape.as_slice(), value.device())?.broadcast_as(value.shape())?;
    Ok(mask.where_cond(&source.broadcast_as(value.shape())?, value)?)
}

/// The head axis of `point`, or an error naming it.
fn head_axis(point: &HookPoint, head: usize) -> Result<(usize, usize, usize)> {
    let axis = point
        .axis(Axis::Head)
        .ok_or_else(|| GrokError::tensor(&point.name, "has no head axis"))?;
    Ok((axis, head, 1))
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
    Box::new(move |t, point| {
        let at = head_axis(point, head)?;
        Ok(Some(replace_range(t, &t.zeros_like()?, at, &point.name)?))
    })
}

/// Patches one head from `source` (same hook point of another run).
pub fn patch_head<'a>(source: Tensor, head: usize) -> HookFn<'a> {
    Box::new(move |t, point| {
        let at = head_axis(point, head)?;
        Ok(Some(replace_range(t, &source, at, &point.name)?))
    })
}

/// Patches one (query) position from `source`; at the MLP's flattened input, that position's
/// embedding columns.
pub fn patch_position<'a>(source: Tensor, position: usize) -> HookFn<'a> {
    Box::new(move |t, point| {
        let at = position_range(point, position)?;
        Ok(Some(replace_range(t, &source, at, &point.name)?))
    })
}

/// The mean over the batch (axis 0) of a cached activation, keeping the axis.
pub fn batch_mean(cache: &ActivationCache, key: impl Into<ActKey>) -> Result<Tensor> {
    Ok(cache.get(key)?.mean_keepdim(0)?)
}
