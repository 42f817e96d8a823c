//! Looking inside a model: activation caches, hooks, ablations (TransformerLens's vocabulary).

pub mod ablation;
pub mod cache;
pub mod factored;
pub mod hooks;
pub mod names;
pub mod processing;

pub use ablation::{mean_ablation_sweep, AblationRow};
pub use cache::{ActivationCache, Names};
pub use hooks::{HookFn, HookSet};
pub use names::{hook_names, ActKey};
