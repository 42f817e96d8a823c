//! Cross-entropy losses, taken in f64 as the seeds do: a grokked train loss reaches ~1e-7, which f32
//! log-softmax rounds to 0.

use candle_core::{DType, Tensor, D};

use crate::error::Result;

/// Which predictions the loss reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// Mean −log p(label) at the last position (the grokking tasks).
    LastPosition,
    /// Each position i ≥ 1 predicts token i−1 (seed 003's previous-token task).
    PreviousToken,
}

/// Mean −log p(label) of `logits [n, vocab]` against `labels [n]` (u32), in f64, differentiable.
pub fn cross_entropy_f64(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F64)?;
    let lse = logits.log_sum_exp(D::Minus1)?;
    let picked = logits.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    Ok((lse - picked)?.mean_all()?)
}

/// The loss of `logits [batch, pos, vocab]` for `kind`; `labels [batch]` is read by `LastPosition`.
pub fn loss(kind: LossKind, logits: &Tensor, tokens: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    match kind {
        LossKind::LastPosition => {
            cross_entropy_f64(&logits.narrow(1, t - 1, 1)?.reshape((b, v))?, labels)
        }
        LossKind::PreviousToken => {
            let l = logits.narrow(1, 1, t - 1)?.reshape((b * (t - 1), v))?;
            let y = tokens
                .narrow(1, 0, t - 1)?
                .contiguous()?
                .reshape(b * (t - 1))?;
            cross_entropy_f64(&l, &y)
        }
    }
}
