//! Training: loss, AdamW, schedules, engines and the training loop.

pub mod adamw;
pub mod config;
pub mod engine;
pub mod loss;
pub mod trainer;

pub use config::{EngineKind, TrainConfig};
pub use engine::{Batch, BatchStats, CandleEngine, Engine};
pub use trainer::{grokking_epoch, Outcome, Trainer};
