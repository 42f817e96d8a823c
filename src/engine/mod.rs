//! Forward/backward engines. The trainer asks an [`Engine`] for loss, accuracy and gradients of a
//! model; [`select`] picks one. The candle engine is the general reference (any family, any config);
//! the fast engine is the hand-written hot path for the configurations it covers.

pub mod candle;
pub mod fast;
pub mod loss;

use serde::{Deserialize, Serialize};

use crate::error::{GrokError, Result};
use crate::model::ModelConfig;
use crate::model::Params;
use crate::tasks::{Dataset, Target};
pub use loss::LossKind;

pub use candle::CandleEngine;
pub use fast::{FastEngine, FastMlpEngine};

/// Which implementation computes forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// The fast hand-written path when the model and loss allow it, candle otherwise.
    #[default]
    Auto,
    /// The hand-written CPU path (errors if the model is outside what it supports).
    Fast,
    /// candle autodiff: general, slower.
    Candle,
}

/// Rows of a task: tokens `[rows, seq_len]`, and one label per row when the target is the last
/// position's.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// Row-major token ids.
    pub tokens: &'a [u32],
    /// Labels (empty when the targets are the tokens themselves).
    pub labels: &'a [u32],
    /// Tokens per row.
    pub seq_len: usize,
    /// What the loss reads.
    pub target: Target,
    /// How a prediction is scored (cross-entropy unless a run trains with StableMax).
    pub loss: LossKind,
}

impl<'a> Batch<'a> {
    /// Rows of `seq_len` `tokens` (with `labels` where `target` reads them), scored by cross-entropy.
    pub fn new(tokens: &'a [u32], labels: &'a [u32], seq_len: usize, target: Target) -> Self {
        Batch {
            tokens,
            labels,
            seq_len,
            target,
            loss: LossKind::CrossEntropy,
        }
    }

    /// The rows of `data` scored for `target`.
    pub fn of(data: &'a Dataset, target: Target) -> Self {
        Self::new(&data.tokens, &data.labels, data.seq_len, target)
    }

    /// The same rows scored by `loss`.
    pub fn with_loss(self, loss: LossKind) -> Self {
        Batch { loss, ..self }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.tokens.len() / self.seq_len.max(1)
    }

    /// Number of predictions the loss averages over.
    pub fn predictions(&self) -> usize {
        self.target.predictions(self.rows(), self.seq_len)
    }
}

/// Loss and accuracy of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BatchStats {
    /// Mean −log p(target) over the scored predictions, in f64.
    pub loss: f64,
    /// Predictions whose arg-max logit is the target.
    pub correct: usize,
    /// Predictions scored: one per row, or one per position after the first.
    pub predictions: usize,
}

impl BatchStats {
    /// Fraction of predictions that are right.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.predictions.max(1) as f64
    }

    /// The statistics of `self`'s and `other`'s predictions together.
    pub fn merged(self, other: BatchStats) -> BatchStats {
        let n = self.predictions + other.predictions;
        let mean = |a: f64, b: f64| {
            (a * self.predictions as f64 + b * other.predictions as f64) / n.max(1) as f64
        };
        BatchStats {
            loss: mean(self.loss, other.loss),
            correct: self.correct + other.correct,
            predictions: n,
        }
    }
}

/// Computes the loss, accuracy and gradients of a model on a batch.
pub trait Engine: Send {
    /// Short name for logs and benchmarks.
    fn name(&self) -> &'static str;

    /// Loss and accuracy of `batch`, and d(mean loss)/d(param) written into `grads` for every
    /// parameter whose `trainable` flag is set (others are left untouched).
    fn loss_and_grads(
        &mut self,
        params: &Params,
        trainable: &[bool],
        batch: Batch,
        grads: &mut Params,
    ) -> Result<BatchStats>;

    /// Loss and accuracy of `batch` without gradients.
    fn evaluate(&mut self, params: &Params, batch: Batch) -> Result<BatchStats>;

    /// Last-position logits `[rows, d_vocab_out]` of `tokens` (rows of `seq` tokens): what the
    /// analysis scores checkpoints with.
    fn logits(&mut self, params: &Params, tokens: &[u32], seq: usize) -> Result<Vec<f32>>;
}

/// The engine `kind` asks for, for models of `cfg` scored on `target`, with `threads` worker threads
/// (0 = one per core).
pub fn select(
    cfg: &ModelConfig,
    target: Target,
    kind: EngineKind,
    threads: usize,
) -> Result<Box<dyn Engine>> {
    match (kind, fast::plan(cfg, target)) {
        (EngineKind::Candle, _) | (EngineKind::Auto, Err(_)) => {
            Ok(Box::new(CandleEngine::new(cfg)))
        }
        (EngineKind::Fast, Err(why)) => Err(GrokError::config(
            "train.engine",
            "fast",
            format!(
                "this model is not supported by the fast engine: {why}; use \"auto\" or \"candle\""
            ),
        )),
        (_, Ok(plan)) => plan.build(thread_count(threads)),
    }
}

/// Threads to use: `requested`, or one per core when 0. The cores are counted once per process:
/// `available_parallelism` reads the cgroup's CPU quota and the affinity mask (about 20 system
/// calls, 27 µs on a 2-core KVM guest), which the trainer asks for at every step, and seed 002's
/// steps are 0.7 ms.
pub fn thread_count(requested: usize) -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    if requested > 0 {
        requested
    } else {
        *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}
