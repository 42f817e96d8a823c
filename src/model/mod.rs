//! Model families, each a config, a typed parameter tree built from it (its external names declared in
//! one place), and a forward pass with hook points: the transformer (TransformerLens's
//! `HookedTransformer`), seed 002's MLP and seed 004's BitNet. [`ModelConfig`] and [`HookedModel`]
//! are what the layers above take.

pub mod bitnet;
pub mod config;
pub mod hooks;
pub mod mlp;
pub mod params;
pub mod transformer;

pub use bitnet::{BitNetConfig, BitNetModel, Quant};
pub use config::{HookedModel, ModelConfig};
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
