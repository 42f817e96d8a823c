//! The transformer family: TransformerLens's `HookedTransformer`, its config and forward pass.

pub mod config;
pub mod forward;
pub mod tree;

pub use tree::{AttnSlots, BlockSlots, MlpSlots, NormSlots, TransformerTree};
