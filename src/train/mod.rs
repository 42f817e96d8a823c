//! Training: the loop of epochs, evaluation, stop rules, checkpoints and resume.

pub mod interrupt;
pub mod shuffle;
pub mod trainer;

pub use trainer::{Outcome, SampleTiming, Trainer};
