//! groklens: train small transformers on algorithmic tasks until they grok, then take them apart.

pub mod error;
pub mod model;
pub mod train;
pub mod tensor_io;

pub use error::{GrokError, Result};
