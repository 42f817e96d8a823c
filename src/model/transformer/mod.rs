//! The transformer family: TransformerLens's `HookedTransformer`, its config, parameter tree and
//! forward pass.

pub mod config;
pub mod family;
pub mod forward;
pub mod tree;

pub use config::TransformerConfig;
pub use forward::{HookedTransformer, LogitPositions};
pub use tree::{AttnSlots, BlockSlots, MlpSlots, NormSlots, TransformerTree};
