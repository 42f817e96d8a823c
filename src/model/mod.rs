//! Model families, each a config, a typed parameter tree built from it (its external names declared in
//! one place), and a forward pass with hook points: the transformer (TransformerLens's
//! `HookedTransformer`), seed 002's MLP and seed 004's BitNet. [`ModelConfig`] and [`HookedModel`]
//! are what the layers above take.

pub mod bitnet;
pub mod candle;
pub mod config;
pub mod family;
pub mod hooks;
pub mod mlp;
pub mod params;
pub mod transformer;

pub use bitnet::{BitNetConfig, BitNetModel, Quant};
pub use config::{HookedModel, ModelConfig};
pub use family::{Family, ModelWithVars};
pub use hooks::{Hooks, NoHooks, Recorder};
pub use mlp::{MlpConfig, MlpModel};
pub use params::{Init, Param, ParamList, ParamSpec, Params, Scope, Slot};
pub use transformer::config::{ActFn, Normalization, PositionalEmbedding, TransformerConfig};
pub use transformer::forward::{HookedTransformer, LogitPositions};

/// ReLU with torch's gradient: candle's `relu` passes gradient at exactly 0 (`x >= 0`), torch's
/// does not (`x > 0`), and a pre-activation of exactly 0.0 does occur in f32 training. The value is
/// the same.
pub fn relu(x: &candle_core::Tensor) -> crate::error::Result<candle_core::Tensor> {
    let positive = x.gt(0.0)?.to_dtype(x.dtype())?;
    Ok(x.mul(&positive)?)
}

/// Checks that every `(field, value)` of a config is at least 1.
pub(crate) fn check_positive(fields: &[(&str, usize)]) -> crate::error::Result<()> {
    match fields.iter().find(|(_, v)| *v == 0) {
        Some(&(field, v)) => Err(crate::error::GrokError::config(
            field,
            v,
            "must be at least 1",
        )),
        None => Ok(()),
    }
}

/// Checks that every `(field, value, max)` of a config is at most `max`.
pub(crate) fn check_at_most(fields: &[(&str, usize, usize)]) -> crate::error::Result<()> {
    match fields.iter().find(|(_, v, max)| v > max) {
        Some(&(field, v, max)) => Err(crate::error::GrokError::config(
            field,
            v,
            format!("must be at most {max}"),
        )),
        None => Ok(()),
    }
}

/// Checks `tokens` as `[batch, pos]` rows with 1 ≤ pos ≤ `n_ctx` and ids below `d_vocab` (the
/// families that read any prefix of their context); returns `pos`.
pub fn check_rows(
    tokens: &[u32],
    batch: usize,
    n_ctx: usize,
    d_vocab: usize,
) -> crate::error::Result<usize> {
    if batch == 0 || !tokens.len().is_multiple_of(batch) {
        return Err(crate::error::GrokError::tensor(
            "tokens",
            format!("{} ids do not form {batch} rows", tokens.len()),
        ));
    }
    let pos = tokens.len() / batch;
    if pos == 0 || pos > n_ctx {
        return Err(crate::error::GrokError::tensor(
            "tokens",
            format!("rows of {pos} tokens; this model reads 1 to n_ctx = {n_ctx}"),
        ));
    }
    check_vocab(tokens, d_vocab)?;
    Ok(pos)
}

/// Checks that every token id is below `d_vocab` (every family's input check).
pub fn check_vocab(tokens: &[u32], d_vocab: usize) -> crate::error::Result<()> {
    match tokens.iter().find(|&&t| t as usize >= d_vocab) {
        Some(&bad) => Err(crate::error::GrokError::tensor(
            "tokens",
            format!("id {bad} is outside the vocabulary [0, {d_vocab})"),
        )),
        None => Ok(()),
    }
}
