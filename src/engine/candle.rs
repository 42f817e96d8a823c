//! The reference engine: the hooked candle forward and candle's autodiff.

use candle_core::{DType, Device, Tensor, D};

use crate::engine::loss::{scored, scored_loss};
use crate::engine::{Batch, BatchStats, Engine};
use crate::error::{GrokError, Result};
use crate::model::{HookedModel, LogitPositions, ModelConfig, NoHooks, Params};
use crate::tasks::Target;

/// The reference engine: the hooked candle forward and candle's autodiff.
pub struct CandleEngine {
    cfg: ModelConfig,
}

impl CandleEngine {
    /// An engine for models of `cfg`.
    pub fn new(cfg: &ModelConfig) -> Self {
        CandleEngine { cfg: cfg.clone() }
    }

    /// The mean loss (differentiable) and the number of right predictions of `batch`.
    fn loss_tensor(&self, model: &dyn HookedModel, batch: Batch) -> Result<(Tensor, usize)> {
        let rows = batch.rows();
        let tokens = model.tokens_tensor(batch.tokens, rows)?;
        let at = match batch.target {
            Target::LastPosition => LogitPositions::Last,
            Target::PreviousToken => LogitPositions::All,
        };
        let logits = model.forward(&tokens, at, &mut NoHooks)?;
        if batch.target == Target::LastPosition && batch.labels.len() != rows {
            return Err(GrokError::tensor(
                "labels",
                format!("{} labels for {rows} rows", batch.labels.len()),
            ));
        }
        let labels = Tensor::from_slice(batch.labels, batch.labels.len(), &Device::Cpu)?;
        let (predictions, targets) = scored(batch.target, &logits, &tokens, &labels)?;
        let correct = predictions
            .argmax(D::Minus1)?
            .eq(&targets.to_dtype(DType::U32)?)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()?;
        Ok((
            scored_loss(batch.loss, &predictions, &targets)?,
            correct as usize,
        ))
    }
}

impl Engine for CandleEngine {
    fn name(&self) -> &'static str {
        "candle"
    }

    fn loss_and_grads(
        &mut self,
        params: &Params,
        trainable: &[bool],
        batch: Batch,
        grads: &mut Params,
    ) -> Result<BatchStats> {
        let (model, vars) = self.cfg.build_with_vars(params, |s| trainable[s.index()])?;
        let (loss, correct) = self.loss_tensor(model.as_ref(), batch)?;
        let store = loss.backward()?;
        for (slot, var) in vars {
            let g = match store.get(var.as_tensor()) {
                Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
                None => vec![0.0; var.elem_count()],
            };
            grads[slot].copy_from_slice(&g);
        }
        Ok(BatchStats {
            loss: loss.to_scalar::<f64>()?,
            correct,
            predictions: batch.predictions(),
        })
    }

    fn evaluate(&mut self, params: &Params, batch: Batch) -> Result<BatchStats> {
        let model = self.cfg.build(params)?;
        let (loss, correct) = self.loss_tensor(model.as_ref(), batch)?;
        Ok(BatchStats {
            loss: loss.to_scalar::<f64>()?,
            correct,
            predictions: batch.predictions(),
        })
    }

    fn logits(&mut self, params: &Params, tokens: &[u32], seq: usize) -> Result<Vec<f32>> {
        let model = self.cfg.build(params)?;
        let t = model.tokens_tensor(tokens, tokens.len() / seq.max(1))?;
        let logits = model.forward(&t, LogitPositions::Last, &mut NoHooks)?;
        Ok(logits.flatten_all()?.to_vec1::<f32>()?)
    }
}
