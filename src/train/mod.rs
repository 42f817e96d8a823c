//! Training: loss, AdamW, schedules and the training loop.

pub mod loss;
