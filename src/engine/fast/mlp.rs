//! Seed 002's MLP, forward and backward written by hand on `gemm`: the hot path of a run of 15
//! minibatches of 512 rows per epoch, where a framework's per-call overheads would dominate.
//!
//! Weights stay in the PyTorch layout of the [`Params`] store (`nn.Linear.weight` is `[out, in]`, so
//! `y = x·Wᵀ + b`); gradients come out in the same layout. Rows are split into one chunk per thread,
//! and the chunks' gradients are summed in chunk order, so results are deterministic for a given
//! thread count.

use crate::engine::fast::{loss_and_dlogits, parallel_chunks, sized, ChunkStats};
use crate::engine::{Batch, BatchStats, Engine};
use crate::error::{GrokError, Result};
use crate::linalg::kernels::{add_bias, add_column_sums, gelu_new, gelu_new_grad, matmul};
use crate::model::mlp::{LinearSlots, MlpConfig, MlpTree};
use crate::model::{ActFn, Params};

/// Buffers one thread reuses from step to step.
#[derive(Default)]
pub struct MlpWorkspace {
    /// Concatenated embeddings `[rows, n_ctx·d_embed]`.
    x0: Vec<f32>,
    /// Per hidden layer, before and after the activation, `[rows, d_hidden]`.
    pre: Vec<Vec<f32>>,
    post: Vec<Vec<f32>>,
    logits: Vec<f32>,
    dx: Vec<f32>,
    dpre: Vec<f32>,
    /// Gradients of the last backward pass, in the store's layout.
    grads: Option<Params>,
}

/// The hand-written MLP engine.
pub struct FastMlpEngine {
    cfg: MlpConfig,
    tree: MlpTree,
    train_ws: Vec<MlpWorkspace>,
    eval_ws: Vec<MlpWorkspace>,
}

impl FastMlpEngine {
    /// An engine for `cfg` on `threads` threads; exact GELU is refused (the candle engine runs it).
    pub fn new(cfg: &MlpConfig, threads: usize) -> Result<Self> {
        if cfg.act_fn == ActFn::Gelu {
            return Err(GrokError::config(
                "model.act_fn",
                "gelu",
                "the fast MLP engine runs relu and gelu_new; exact gelu runs on the candle engine",
            ));
        }
        let ws = || {
            (0..threads.max(1))
                .map(|_| MlpWorkspace::default())
                .collect()
        };
        Ok(FastMlpEngine {
            tree: cfg.tree(),
            cfg: cfg.clone(),
            train_ws: ws(),
            eval_ws: ws(),
        })
    }

    fn check(&self, params: &Params, batch: &Batch) -> Result<()> {
        self.cfg.check_tokens(batch.tokens, batch.rows())?;
        if !params.matches(&self.tree.specs) {
            return Err(GrokError::tensor(
                "params",
                "do not hold this MLP's parameters (names or shapes differ from its config)",
            ));
        }
        Ok(())
    }
}

impl Engine for FastMlpEngine {
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
        self.check(params, &batch)?;
        let n_total = batch.rows();
        let pass = Pass {
            cfg: &self.cfg,
            tree: &self.tree,
            params,
        };
        let stats = parallel_chunks(&mut self.train_ws, batch, |ws, t, l| {
            pass.run(ws, t, l, Some(n_total))
        });
        let chunks = stats.len();
        let (first, rest) = self.train_ws[..chunks].split_at_mut(1);
        let total = first[0]
            .grads
            .as_mut()
            .expect("the first chunk ran backward");
        for ws in rest {
            let g = ws.grads.as_ref().expect("every chunk ran backward");
            for (a, b) in total.iter_mut().zip(g.iter()) {
                a.data.iter_mut().zip(&b.data).for_each(|(x, y)| *x += y);
            }
        }
        for ((out, g), &train) in grads.iter_mut().zip(total.iter()).zip(trainable) {
            if train {
                out.data.copy_from_slice(&g.data);
            }
        }
        Ok(totals(&stats, n_total))
    }

    fn evaluate(&mut self, params: &Params, batch: Batch) -> Result<BatchStats> {
        self.check(params, &batch)?;
        let pass = Pass {
            cfg: &self.cfg,
            tree: &self.tree,
            params,
        };
        let stats = parallel_chunks(&mut self.eval_ws, batch, |ws, t, l| {
            pass.run(ws, t, l, None)
        });
        Ok(totals(&stats, batch.rows()))
    }

    fn logits(&mut self, params: &Params, tokens: &[u32], seq: usize) -> Result<Vec<f32>> {
        let labels = vec![0; tokens.len() / seq.max(1)];
        let batch = Batch {
            tokens,
            labels: &labels,
            seq_len: seq,
        };
        self.check(params, &batch)?;
        let pass = Pass {
            cfg: &self.cfg,
            tree: &self.tree,
            params,
        };
        let vo = self.cfg.d_vocab_out;
        let chunks = parallel_chunks(&mut self.eval_ws, batch, |ws, t, _| {
            let rows = t.len() / seq;
            pass.forward(ws, t, rows);
            ws.logits[..rows * vo].to_vec()
        });
        Ok(chunks.concat())
    }
}

fn totals(chunks: &[ChunkStats], rows: usize) -> BatchStats {
    BatchStats {
        loss: chunks.iter().map(|c| c.loss_sum).sum::<f64>() / rows as f64,
        correct: chunks.iter().map(|c| c.correct).sum(),
        rows,
    }
}

/// One forward (and backward) pass over a chunk with fixed weights.
struct Pass<'a> {
    cfg: &'a MlpConfig,
    tree: &'a MlpTree,
    params: &'a Params,
}

impl Pass<'_> {
    /// Forward, loss, and (with `n_total`, the batch size the loss is averaged over) backward into
    /// `ws.grads`.
    fn run(
        &self,
        ws: &mut MlpWorkspace,
        tokens: &[u32],
        labels: &[u32],
        n_total: Option<usize>,
    ) -> ChunkStats {
        let rows = labels.len();
        self.forward(ws, tokens, rows);
        let vo = self.cfg.d_vocab_out;
        let (loss_sum, correct) = loss_and_dlogits(&mut ws.logits[..rows * vo], labels, n_total);
        if n_total.is_some() {
            self.backward(ws, tokens, rows);
        }
        ChunkStats { loss_sum, correct }
    }

    /// Embeddings, hidden layers and logits of `rows` rows into the workspace.
    fn forward(&self, ws: &mut MlpWorkspace, tokens: &[u32], rows: usize) {
        let (c, p) = (self.cfg, self.params);
        let de = c.d_embed;
        let x0 = sized(&mut ws.x0, rows * c.d_input());
        let w_e = &p[self.tree.embed];
        for (dst, &t) in x0.chunks_exact_mut(de).zip(tokens) {
            dst.copy_from_slice(&w_e[t as usize * de..(t as usize + 1) * de]);
        }
        ws.pre.resize_with(c.n_hidden, Vec::new);
        ws.post.resize_with(c.n_hidden, Vec::new);
        let mut d_in = c.d_input();
        for (i, layer) in self.tree.hidden.iter().enumerate() {
            let (before, this) = ws.post.split_at_mut(i);
            let x = if i == 0 { &ws.x0 } else { &before[i - 1] };
            let pre = sized(&mut ws.pre[i], rows * c.d_hidden);
            self.linear(pre, x, layer, rows, d_in, c.d_hidden);
            let post = sized(&mut this[0], rows * c.d_hidden);
            match c.act_fn {
                ActFn::Relu => post
                    .iter_mut()
                    .zip(pre.iter())
                    .for_each(|(o, &v)| *o = v.max(0.0)),
                ActFn::GeluNew | ActFn::Gelu => post
                    .iter_mut()
                    .zip(pre.iter())
                    .for_each(|(o, &v)| *o = gelu_new(v)),
            }
            d_in = c.d_hidden;
        }
        let x = ws.post.last().unwrap_or(&ws.x0);
        let logits = sized(&mut ws.logits, rows * c.d_vocab_out);
        self.linear(logits, x, &self.tree.out, rows, d_in, c.d_vocab_out);
    }

    /// `out[rows, d_out] = x[rows, d_in]·Wᵀ + b`.
    fn linear(
        &self,
        out: &mut [f32],
        x: &[f32],
        l: &LinearSlots,
        rows: usize,
        d_in: usize,
        d_out: usize,
    ) {
        let p = self.params;
        matmul(out, x, &p[l.weight], rows, d_out, d_in, false, true, false);
        add_bias(out, &p[l.bias]);
    }

    /// Backward from `ws.logits` (holding d loss / d logits) into `ws.grads`.
    fn backward(&self, ws: &mut MlpWorkspace, tokens: &[u32], rows: usize) {
        let (c, p, tree) = (self.cfg, self.params, self.tree);
        let g = ws.grads.get_or_insert_with(|| p.zeros_like());
        let n = c.n_hidden;
        let dh = c.d_hidden;
        // Output layer.
        let x_last = if n == 0 { &ws.x0 } else { &ws.post[n - 1] };
        let d_last = if n == 0 { c.d_input() } else { dh };
        let vo = c.d_vocab_out;
        let dlogits = &ws.logits[..rows * vo];
        matmul(
            &mut g[tree.out.weight],
            dlogits,
            x_last,
            vo,
            d_last,
            rows,
            true,
            false,
            false,
        );
        g[tree.out.bias].fill(0.0);
        add_column_sums(&mut g[tree.out.bias], dlogits);
        let dx = sized(&mut ws.dx, rows * d_last);
        matmul(
            dx,
            dlogits,
            &p[tree.out.weight],
            rows,
            d_last,
            vo,
            false,
            false,
            false,
        );
        // Hidden layers, last to first.
        for i in (0..n).rev() {
            let layer = &tree.hidden[i];
            let d_in = if i == 0 { c.d_input() } else { dh };
            let dpre = sized(&mut ws.dpre, rows * dh);
            let pre = &ws.pre[i];
            match c.act_fn {
                ActFn::Relu => {
                    for ((o, &d), &v) in dpre.iter_mut().zip(ws.dx.iter()).zip(pre) {
                        *o = if v > 0.0 { d } else { 0.0 };
                    }
                }
                ActFn::GeluNew | ActFn::Gelu => {
                    for ((o, &d), &v) in dpre.iter_mut().zip(ws.dx.iter()).zip(pre) {
                        *o = d * gelu_new_grad(v);
                    }
                }
            }
            let x = if i == 0 { &ws.x0 } else { &ws.post[i - 1] };
            matmul(
                &mut g[layer.weight],
                dpre,
                x,
                dh,
                d_in,
                rows,
                true,
                false,
                false,
            );
            g[layer.bias].fill(0.0);
            add_column_sums(&mut g[layer.bias], dpre);
            let dx = sized(&mut ws.dx, rows * d_in);
            matmul(
                dx,
                dpre,
                &p[layer.weight],
                rows,
                d_in,
                dh,
                false,
                false,
                false,
            );
        }
        // Embedding: each position's slice of d x0 goes to its token's row.
        let de = c.d_embed;
        let g_e = &mut g[tree.embed];
        g_e.fill(0.0);
        for (src, &t) in ws.dx.chunks_exact(de).zip(tokens) {
            g_e[t as usize * de..(t as usize + 1) * de]
                .iter_mut()
                .zip(src)
                .for_each(|(o, v)| *o += v);
        }
    }
}
