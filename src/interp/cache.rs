//! `run_with_cache`: every (or a chosen set of) hook point's activation, addressed by TransformerLens
//! names or shorthands; optionally with gradients of a scalar with respect to each.

use crate::model::hooks::{Hook, HookTree};
use candle_core::{Tensor, Var};

use crate::error::{GrokError, Result};
use crate::interp::hooks::HookSet;
use crate::interp::names::{close_matches, ActKey};
use crate::model::{HookedModel, HookedTransformer, Hooks, LogitPositions, Recorder};
use crate::tensor_io::HostTensor;

/// A predicate over full hook names.
type NameFilter<'a> = Box<dyn Fn(&str) -> bool + 'a>;

/// Which hook points to record.
pub enum Names {
    /// Every hook point except `attn.hook_result` (as TransformerLens without `use_attn_result`).
    All,
    /// These names or shorthands (`"blocks.0.attn.hook_pattern"`, `"post0"`, …).
    List(Vec<String>),
    /// Those a predicate accepts (given full names).
    Filter(Box<dyn Fn(&str) -> bool>),
}

impl Names {
    /// One name or shorthand.
    pub fn exact(name: &str) -> Self {
        Names::List(vec![name.to_string()])
    }

    /// A predicate over full names, with unknown shorthands in a list reported as errors.
    fn resolve<M: HookedModel + ?Sized>(&self, model: &M) -> Result<NameFilter<'_>> {
        match self {
            Names::All => {
                let optional: Vec<String> = model
                    .hook_tree()
                    .points()
                    .iter()
                    .filter(|p| p.optional)
                    .map(|p| p.name.clone())
                    .collect();
                Ok(Box::new(move |n: &str| !optional.iter().any(|o| o == n)))
            }
            Names::Filter(f) => Ok(Box::new(move |n: &str| f(n))),
            Names::List(list) => {
                let known = model.hook_names();
                let mut full = Vec::new();
                for key in list {
                    full.push(resolve_known(
                        &ActKey::from(key.as_str()),
                        model.n_layers(),
                        &known,
                    )?);
                }
                Ok(Box::new(move |n: &str| full.iter().any(|f| f == n)))
            }
        }
    }
}

/// Resolves `key` to a full hook name of this model, or an error listing close matches.
pub fn resolve_known(key: &ActKey, n_layers: usize, known: &[String]) -> Result<String> {
    let full = key.resolve(n_layers);
    if known.contains(&full) {
        return Ok(full);
    }
    let close = close_matches(&full, known.iter().map(String::as_str));
    Err(GrokError::tensor(
        &full,
        format!(
            "is not a hook point of this model; did you mean {}?",
            close.join(", ")
        ),
    ))
}

/// Activations by hook name, in forward order.
pub struct ActivationCache {
    n_layers: usize,
    entries: Vec<(String, Tensor)>,
}

impl ActivationCache {
    /// A cache of `entries` for a model with `n_layers` blocks.
    pub fn new(n_layers: usize, entries: Vec<(String, Tensor)>) -> Self {
        ActivationCache { n_layers, entries }
    }

    /// The activation at hook point `hook` of `tree` (`None`: a point the model does not have),
    /// or an error naming the point.
    pub fn at(&self, tree: &HookTree, hook: Option<Hook>) -> Result<&Tensor> {
        let hook = hook
            .ok_or_else(|| GrokError::tensor("hook point", "this model has no such hook point"))?;
        self.get(tree.name(hook))
    }

    /// The activation for a full name or shorthand: `"blocks.0.attn.hook_pattern"`, `("pattern", 0)`,
    /// `("post", -1, "mlp")`, `"resid_pre1"`, `"scale"` (→ `ln_final.hook_scale`).
    pub fn get(&self, key: impl Into<ActKey>) -> Result<&Tensor> {
        let key = key.into();
        let full = key.resolve(self.n_layers);
        self.entries
            .iter()
            .find(|(n, _)| *n == full)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                let close = close_matches(&full, self.names());
                GrokError::tensor(
                    &full,
                    format!("is not in this cache; did you mean {}?", close.join(", ")),
                )
            })
    }

    /// Hook names held, in forward order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// `(name, activation)` pairs in forward order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// Number of activations held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The activations as f32 host tensors named `{prefix}{hook name}` (the fixtures use `cache.`).
    pub fn to_host_tensors(&self, prefix: &str) -> Result<Vec<(String, HostTensor)>> {
        self.entries
            .iter()
            .map(|(n, t)| {
                Ok((
                    format!("{prefix}{n}"),
                    HostTensor::f32(t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?),
                ))
            })
            .collect()
    }
}

/// Adds a zero [`Var`] at each recorded hook point, so d(scalar)/d(activation) can be read off it
/// without cutting the graph upstream.
struct GradTaps<F: Fn(&str) -> bool> {
    keep: F,
    taps: Vec<(String, Tensor, Var)>,
}

impl<F: Fn(&str) -> bool> Hooks for GradTaps<F> {
    fn hook(&mut self, name: &str, value: Tensor) -> Result<Tensor> {
        if !(self.keep)(name) {
            return Ok(value);
        }
        let tap = Var::zeros(value.shape(), value.dtype(), value.device())?;
        let out = (&value + tap.as_tensor())?;
        self.taps.push((name.to_string(), value, tap));
        Ok(out)
    }

    fn wants(&self, name: &str) -> bool {
        (self.keep)(name)
    }
}

/// TransformerLens's `run_with_cache` and `run_with_hooks` on every model family.
pub trait Interp: HookedModel {
    /// Logits `[batch, pos, d_vocab_out]` and the activations of the hook points `names` selects; only
    /// those are kept in memory.
    fn run_with_cache(&self, tokens: &Tensor, names: &Names) -> Result<(Tensor, ActivationCache)> {
        let keep = names.resolve(self)?;
        let mut rec = Recorder::new(keep);
        let logits = self.forward(tokens, LogitPositions::All, &mut rec)?;
        Ok((logits, ActivationCache::new(self.n_layers(), rec.values)))
    }

    /// Like [`Interp::run_with_cache`], plus a second cache holding d(scalar)/d(activation)
    /// for the same hook points (TransformerLens's `incl_bwd`), where `scalar` maps the logits to the
    /// quantity to differentiate (a loss, a logit difference).
    fn run_with_cache_and_grads(
        &self,
        tokens: &Tensor,
        names: &Names,
        scalar: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, ActivationCache, ActivationCache)> {
        let keep = names.resolve(self)?;
        let mut taps = GradTaps {
            keep,
            taps: Vec::new(),
        };
        let logits = self.forward(tokens, LogitPositions::All, &mut taps)?;
        let value = scalar(&logits)?;
        if value.elem_count() != 1 {
            return Err(GrokError::tensor(
                "scalar",
                format!("must have one element, has shape {:?}", value.dims()),
            ));
        }
        let grads = value.sum_all()?.backward()?;
        let mut fwd = Vec::new();
        let mut bwd = Vec::new();
        for (name, act, tap) in taps.taps {
            let g = match grads.get(tap.as_tensor()) {
                Some(g) => g.clone(),
                None => act.zeros_like()?,
            };
            fwd.push((name.clone(), act.detach()));
            bwd.push((name, g));
        }
        Ok((
            logits.detach(),
            ActivationCache::new(self.n_layers(), fwd),
            ActivationCache::new(self.n_layers(), bwd),
        ))
    }

    /// Logits of `tokens` with the hooks of `hooks` applied (TransformerLens's `run_with_hooks`).
    fn run_with_hooks(&self, tokens: &Tensor, hooks: &mut HookSet) -> Result<Tensor> {
        self.forward(tokens, LogitPositions::All, hooks)
    }
}

impl<M: HookedModel + ?Sized> Interp for M {}

impl HookedTransformer {
    /// The residual stream after the first `n_blocks` blocks plus the activations recorded on the way.
    pub fn run_with_cache_to_layer(
        &self,
        tokens: &Tensor,
        names: &Names,
        n_blocks: usize,
    ) -> Result<(Tensor, ActivationCache)> {
        let keep = names.resolve(self)?;
        let mut rec = Recorder::new(keep);
        let resid = self.forward_to_layer(tokens, n_blocks, &mut rec)?;
        Ok((resid, ActivationCache::new(self.cfg.n_layers, rec.values)))
    }
}
