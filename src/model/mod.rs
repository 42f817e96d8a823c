//! Model families: each a config, a typed parameter tree built from it, and a forward pass with hook
//! points. Today: the transformer (TransformerLens's `HookedTransformer`).

pub mod hooks;
pub mod params;
pub mod transformer;

pub use hooks::{Hooks, NoHooks, Recorder};
pub use params::{Init, Param, ParamList, ParamSpec, Params, Scope, Slot};
pub use transformer::config::{ActFn, ModelConfig, Normalization, PositionalEmbedding};
pub use transformer::forward::{HookedTransformer, LogitPositions};
