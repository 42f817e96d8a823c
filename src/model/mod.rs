//! Model families, each a config, a typed parameter tree built from it (its external names declared in
//! one place), and a forward pass with hook points: the transformer (TransformerLens's
//! `HookedTransformer`) and seed 002's MLP. [`ModelConfig`] and [`HookedModel`] are what the layers
//! above take.

pub mod config;
pub mod hooks;
pub mod mlp;
pub mod params;
pub mod transformer;

pub use config::{HookedModel, ModelConfig};
pub use hooks::{Hooks, NoHooks, Recorder};
pub use mlp::{MlpConfig, MlpModel};
pub use params::{Init, Param, ParamList, ParamSpec, Params, Scope, Slot};
pub use transformer::config::{ActFn, Normalization, PositionalEmbedding, TransformerConfig};
pub use transformer::forward::{HookedTransformer, LogitPositions};
