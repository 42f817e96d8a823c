//! The hand-written CPU engine for the training hot path.
//!
//! It computes exactly what the candle path computes for the last-position loss, for models without
//! normalization and with ReLU or `gelu_new` MLPs (every grokking preset); the batch is split into one
//! chunk per thread and the chunks' gradients are summed in a fixed order, so results are deterministic
//! for a given thread count. Other models use the candle engine.

pub mod transformer;

use crate::engine::{Batch, BatchStats, Engine};
use crate::error::{GrokError, Result};
use crate::model::{ActFn, ModelConfig, Params};

use transformer::{ChunkStats, Prepared, Weights, Workspace};

/// Why the fast engine cannot run `cfg`, or `None` when it can.
pub fn unsupported_reason(cfg: &ModelConfig) -> Option<String> {
    if cfg.normalization_type.is_some() {
        return Some("normalization_type must be none".into());
    }
    if cfg.act_fn == ActFn::Gelu {
        return Some(
            "act_fn must be relu or gelu_new (exact gelu runs on the candle engine)".into(),
        );
    }
    None
}

/// Hand-written forward/backward on `gemm`, parallel over batch chunks.
pub struct FastEngine {
    cfg: ModelConfig,
    threads: usize,
    /// One workspace per thread for training passes and one for evaluation, so buffer sizes stay put.
    train_ws: Vec<Workspace>,
    eval_ws: Vec<Workspace>,
}

impl FastEngine {
    /// An engine for `cfg` (which must pass [`unsupported_reason`]) using `threads` threads.
    pub fn new(cfg: &ModelConfig, threads: usize) -> Self {
        let threads = threads.max(1);
        let ws = || (0..threads).map(|_| Workspace::default()).collect();
        FastEngine {
            cfg: cfg.clone(),
            threads,
            train_ws: ws(),
            eval_ws: ws(),
        }
    }

    /// Last-position logits `[rows, d_vocab_out]` of `tokens` (rows of `seq` tokens), parallel over
    /// row chunks: the analysis's fast forward pass.
    pub fn last_logits(&mut self, params: &Params, tokens: &[u32], seq: usize) -> Result<Vec<f32>> {
        if seq == 0 || !tokens.len().is_multiple_of(seq) {
            return Err(GrokError::tensor(
                "tokens",
                format!("{} ids do not form rows of {seq} tokens", tokens.len()),
            ));
        }
        let labels = vec![0; tokens.len() / seq];
        let batch = Batch {
            tokens,
            labels: &labels,
            seq_len: seq,
        };
        let chunks = self.map_chunks(params, batch, false, |p, ws, t, _| {
            p.logits(ws, t, seq).to_vec()
        })?;
        Ok(chunks.concat())
    }

    /// Runs every chunk of `batch` on its own thread; returns per-chunk stats in chunk order (with
    /// gradients left in the training workspaces when `grads` is set).
    fn run_chunks(
        &mut self,
        params: &Params,
        batch: Batch,
        grads: bool,
    ) -> Result<Vec<ChunkStats>> {
        let n_total = grads.then_some(batch.rows());
        let seq = batch.seq_len;
        self.map_chunks(params, batch, grads, |p, ws, t, l| {
            p.run(ws, t, l, seq, n_total)
        })
    }

    /// Splits `batch` into one chunk per thread and runs `job` on each with its own workspace (the
    /// training ones when `train`); results in chunk order.
    fn map_chunks<R: Send>(
        &mut self,
        params: &Params,
        batch: Batch,
        train: bool,
        job: impl Fn(&Prepared, &mut Workspace, &[u32], &[u32]) -> R + Sync,
    ) -> Result<Vec<R>> {
        if self.cfg.check_tokens(batch.tokens, batch.rows())? != batch.seq_len {
            return Err(GrokError::tensor(
                "tokens",
                format!("rows are not {} tokens long", batch.seq_len),
            ));
        }
        let w = Weights::from_params(&self.cfg, params);
        let prepared = Prepared::new(&self.cfg, &w);
        let n = batch.rows();
        let chunk = n.div_ceil(self.threads).max(1);
        let seq = batch.seq_len;
        let workspaces = if train {
            &mut self.train_ws
        } else {
            &mut self.eval_ws
        };
        let mut jobs = workspaces
            .iter_mut()
            .zip((0..n).step_by(chunk))
            .map(|(ws, start)| {
                let end = (start + chunk).min(n);
                (
                    ws,
                    &batch.tokens[start * seq..end * seq],
                    &batch.labels[start..end],
                )
            });
        let (ws0, t0, l0) = jobs.next().expect("a batch has at least one row");
        let (prepared, job) = (&prepared, &job);
        Ok(std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .map(|(ws, t, l)| s.spawn(move || job(prepared, ws, t, l)))
                .collect();
            let mut out = vec![job(prepared, ws0, t0, l0)];
            out.extend(
                handles
                    .into_iter()
                    .map(|h| h.join().expect("fast engine worker panicked")),
            );
            out
        }))
    }
}

fn totals(results: &[ChunkStats], rows: usize) -> BatchStats {
    let loss_sum: f64 = results.iter().map(|r| r.loss_sum).sum();
    BatchStats {
        loss: loss_sum / rows as f64,
        correct: results.iter().map(|r| r.correct).sum(),
        rows,
    }
}

impl Engine for FastEngine {
    fn name(&self) -> &'static str {
        "fast"
    }

    fn loss_and_grads(
        &mut self,
        params: &Params,
        trainable: &[bool],
        batch: Batch,
        grads: &mut Params,
    ) -> Result<BatchStats> {
        let results = self.run_chunks(params, batch, true)?;
        let stats = totals(&results, batch.rows());
        let (first, rest) = self.train_ws[..results.len()].split_at_mut(1);
        let total = first[0]
            .grads
            .as_mut()
            .expect("the first chunk ran a backward pass");
        for ws in rest {
            total.add_assign(ws.grads.as_mut().expect("every chunk ran a backward pass"));
        }
        total.write_params(&self.cfg, grads, trainable);
        Ok(stats)
    }

    fn evaluate(&mut self, params: &Params, batch: Batch) -> Result<BatchStats> {
        let results = self.run_chunks(params, batch, false)?;
        Ok(totals(&results, batch.rows()))
    }
}
