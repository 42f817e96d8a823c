//! Losses, taken in f64 as the seeds do (a grokked train loss reaches ~1e-7, which f32 log-softmax
//! rounds to 0): cross-entropy, and StableMax cross-entropy (Prieto et al. 2025).

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::tasks::Target;

/// Mean −log p(label) of `logits [n, vocab]` against `labels [n]` (u32), in f64, differentiable.
pub fn cross_entropy_f64(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F64)?;
    let lse = logits.log_sum_exp(D::Minus1)?;
    let picked = logits.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    Ok((lse - picked)?.mean_all()?)
}

/// How predictions are turned into probabilities for the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Softmax cross-entropy.
    #[default]
    CrossEntropy,
    /// StableMax cross-entropy (Prieto et al. 2025): s(x) = x + 1 for x ≥ 0, 1/(1 − x) for x < 0,
    /// p_i = s(x_i)/Σ_j s(x_j); no exponential, so no softmax collapse. Accuracy is still by arg-max.
    #[serde(rename = "stablemax")]
    StableMax,
}

/// StableMax's s(x) and its derivative s'(x): (x + 1, 1) for x ≥ 0, (1/(1 − x), 1/(1 − x)²) below.
pub fn stablemax_s(x: f64) -> (f64, f64) {
    if x >= 0.0 {
        (x + 1.0, 1.0)
    } else {
        let r = 1.0 / (1.0 - x);
        (r, r * r)
    }
}

/// Mean −log p(label) under StableMax of `logits [n, vocab]` against `labels [n]`, in f64,
/// differentiable.
pub fn stablemax_f64(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let x = logits.to_dtype(DType::F64)?;
    let positive = x.ge(0.0)?;
    let one = Tensor::ones_like(&x)?;
    // 1/(1 − min(x, 0)) keeps the unused branch finite where x is large.
    let below = (&one / (&one - x.minimum(0.0)?)?)?;
    let s = positive.where_cond(&(&x + 1.0)?, &below)?;
    let picked = s.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    Ok((s.sum(D::Minus1)?.log()? - picked.log()?)?.mean_all()?)
}

/// Mean loss of `predictions [n, vocab]` against `targets [n]` under `kind`, in f64, differentiable.
pub fn scored_loss(kind: LossKind, predictions: &Tensor, targets: &Tensor) -> Result<Tensor> {
    match kind {
        LossKind::CrossEntropy => cross_entropy_f64(predictions, targets),
        LossKind::StableMax => stablemax_f64(predictions, targets),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn stablemax_is_its_published_formula() {
        // s(1) = 2, s(−1) = 1/2, s(0) = 1: p(label 0) = 2/3.5; s(3) = 4, s(−3) = 1/4.
        let logits =
            Tensor::from_slice(&[1.0f32, -1.0, 0.0, 3.0, -3.0, 0.0], (2, 3), &Device::Cpu).unwrap();
        let labels = Tensor::from_slice(&[0u32, 1], 2, &Device::Cpu).unwrap();
        let got = stablemax_f64(&logits, &labels)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let want = ((3.5f64 / 2.0).ln() + (5.25f64 / 0.25).ln()) / 2.0;
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        assert_eq!(stablemax_s(-1.0), (0.5, 0.25));
        assert_eq!(stablemax_s(2.0), (3.0, 1.0));
    }
}
