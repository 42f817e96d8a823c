//! Looking inside a model: activation caches, hooks, ablations, circuits and
//! residual-stream attribution (TransformerLens's vocabulary).

pub mod ablation;
pub mod cache;
pub mod circuits;
pub mod factored;
pub mod hooks;
pub mod names;
pub mod processing;
pub mod residual;

pub use ablation::{mean_ablation_sweep, AblationRow};
pub use cache::{ActivationCache, Interp, Names};
pub use hooks::{HookFn, HookSet};
pub use names::ActKey;
pub use residual::ResidualStack;
