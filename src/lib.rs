//! groklens: train small transformers on algorithmic tasks until they grok, then take them apart.
//!
//! Dependencies point one way: `cli` → `report` → `analysis` → `interp` / `train` → `model` →
//! `tensor_io`; `tasks` and `config` describe what to train, `run` is the on-disk layout of a run, and
//! `fast` is the hand-written training engine.

pub mod analysis;
pub mod bench;
pub mod config;
pub mod error;
pub mod fast;
pub mod interp;
pub mod model;
pub mod presets;
pub mod report;
pub mod run;
pub mod tasks;
pub mod tensor_io;
pub mod train;

pub use config::RunConfig;
pub use error::{GrokError, Result};
