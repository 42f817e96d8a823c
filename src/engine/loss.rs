//! Cross-entropy losses, taken in f64 as the seeds do: a grokked train loss reaches ~1e-7, which f32
//! log-softmax rounds to 0.

use candle_core::{DType, Tensor, D};

use crate::error::Result;
use crate::tasks::Target;

/// Mean −log p(label) of `logits [n, vocab]` against `labels [n]` (u32), in f64, differentiable.
pub fn cross_entropy_f64(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F64)?;
    let lse = logits.log_sum_exp(D::Minus1)?;
    let picked = logits.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    Ok((lse - picked)?.mean_all()?)
}

/// The loss of `logits [batch, pos, vocab]` for `kind`; `labels [batch]` is read by `LastPosition`,
/// `PreviousToken` reads `tokens [batch, pos]`.
pub fn loss(kind: Target, logits: &Tensor, tokens: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (predictions, targets) = scored(kind, logits, tokens, labels)?;
    cross_entropy_f64(&predictions, &targets)
}

/// The (predictions `[n, vocab]`, targets `[n]`) pairs the loss of `kind` scores in `logits [batch,
/// pos, vocab]`.
pub fn scored(
    kind: Target,
    logits: &Tensor,
    tokens: &Tensor,
    labels: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (b, t, v) = logits.dims3()?;
    Ok(match kind {
        Target::LastPosition => (logits.narrow(1, t - 1, 1)?.reshape((b, v))?, labels.clone()),
        Target::PreviousToken => (
            logits.narrow(1, 1, t - 1)?.reshape((b * (t - 1), v))?,
            tokens
                .narrow(1, 0, t - 1)?
                .contiguous()?
                .reshape(b * (t - 1))?,
        ),
    })
}
