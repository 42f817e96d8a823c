//! The transformer: config, parameters, hook points and the forward pass.

pub mod config;
pub mod forward;
pub mod hooks;
pub mod params;

pub use config::{ActFn, ModelConfig, Normalization, PositionalEmbedding};
pub use forward::{HookedTransformer, LogitPositions};
pub use hooks::{Hooks, NoHooks, Recorder};
pub use params::{Param, Params};
