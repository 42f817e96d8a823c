//! Seed 002's MLP, forward and backward written by hand on `gemm`: the hot path of a run of 15
//! minibatches of 512 rows per epoch, where a framework's per-call overheads would dominate.
//!
//! Weights stay in the PyTorch layout of the [`Params`] store (`nn.Linear.weight` is `[out, in]`, so
//! `y = x·Wᵀ + b`); gradients come out in the same layout. Rows are split into one chunk per thread,
//! and the chunks' gradients are summed in chunk order, so results are deterministic for a given
//! thread count.
//!
//! The first hidden layer reads the concatenation of `n_ctx` embeddings, so its pre-activation is
//! `b + Σ_pos E[token_pos]·W_posᵀ` with `W_pos` the columns of W that read position `pos`. When the
//! vocabulary is smaller than the batch, the engine computes the tables `T[t, pos] = E[t]·W_posᵀ` once
//! per step — one product `E·W'ᵀ`, with `W'` the blocks `W_pos` stacked `[n_ctx·d_hidden, d_embed]` —
//! and adds rows of them instead of multiplying every row (seed 002: one 99 × 128 by 128 × 512
//! product instead of a 512 × 512 by 512 × 128 product per minibatch); the backward pass mirrors it by
//! summing each row's gradient into its tokens' rows of `G` (laid out like `T`) and forming
//! `dW_pos = G_posᵀ·E` and `dE = G·W'` (one product over every position) once. Exact up to float
//! rounding.

use rayon::prelude::*;

use crate::engine::fast::ops::{
    activation_backward, activation_forward, mm_nn, mm_nt, mm_tn, FastAct,
};
use crate::engine::fast::{
    loss_and_dlogits, parallel_chunks, sized, totals, ChunkStats, Workspaces,
};
use crate::engine::loss::LossKind;
use crate::engine::{Batch, BatchStats, Engine};
use crate::error::{GrokError, Result};
use crate::linalg::kernels::matmul_strided;
use crate::linalg::kernels::{add_bias, add_column_sums};
use crate::model::mlp::{LinearSlots, MlpConfig, MlpTree};
use crate::model::Params;
use crate::tasks::Target;

/// Buffers one chunk reuses from step to step.
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
    /// Per token and position, the summed gradient of the first hidden layer's pre-activation,
    /// `[d_vocab, n_ctx, d_hidden]` like the tables (lookup path only).
    g_tables: Vec<f32>,
    /// Gradients of the last backward pass, in the store's layout.
    grads: Option<Params>,
}

/// Per-step buffers of the lookup path, kept between steps so a step allocates nothing.
#[derive(Default)]
struct Scratch {
    /// `W'`, `[n_ctx, d_hidden, d_embed]`: the first hidden layer's weight split by the position it
    /// reads (copied: `gemm` packs a contiguous block far faster than columns `n_ctx·d_embed` apart).
    w_blocks: Vec<f32>,
    /// `[d_vocab, n_ctx, d_hidden]`: `T = E·W'ᵀ`, row `t` holding `E[t]·W_posᵀ` for every position.
    tables: Vec<f32>,
}

/// The hand-written MLP engine.
pub struct FastMlpEngine {
    cfg: MlpConfig,
    tree: MlpTree,
    /// Worker threads.
    threads: usize,
    /// One workspace per chunk, for training and for evaluation.
    train_ws: Vec<MlpWorkspace>,
    eval_ws: Vec<MlpWorkspace>,
    scratch: Scratch,
}

impl FastMlpEngine {
    /// An engine for `cfg` on `threads` threads; exact GELU is refused (the candle engine runs it).
    pub fn new(cfg: &MlpConfig, threads: usize) -> Result<Self> {
        if FastAct::of(cfg.act_fn).is_none() {
            return Err(GrokError::config(
                "model.act_fn",
                "gelu",
                "the fast MLP engine runs relu and gelu_new; exact gelu runs on the candle engine",
            ));
        }
        Ok(FastMlpEngine {
            tree: cfg.tree(),
            cfg: cfg.clone(),
            threads: threads.max(1),
            train_ws: Vec::new(),
            eval_ws: Vec::new(),
            scratch: Scratch::default(),
        })
    }

    fn check(&self, params: &Params, batch: &Batch) -> Result<()> {
        super::check_target(batch, false)?;
        self.cfg.check_tokens(batch.tokens, batch.rows())?;
        if !params.matches(&self.tree.specs) {
            return Err(GrokError::tensor(
                "params",
                "do not hold this MLP's parameters (names or shapes differ from its config)",
            ));
        }
        Ok(())
    }

    /// Runs `job` on every chunk of `batch` with the evaluation workspaces (no gradients).
    fn map_eval<R: Send>(
        &mut self,
        params: &Params,
        batch: Batch,
        job: impl Fn(&Pass, &mut MlpWorkspace, &[u32], &[u32]) -> R + Sync,
    ) -> Result<Vec<R>> {
        self.check(params, &batch)?;
        let threads = self.threads;
        let scratch = std::mem::take(&mut self.scratch);
        let pass = Pass::new(
            &self.cfg,
            &self.tree,
            params,
            batch.rows(),
            threads,
            scratch,
        );
        let out = parallel_chunks(
            &mut self.eval_ws,
            threads,
            Workspaces::PerThread,
            batch,
            |ws, t, l| job(&pass, ws, t, l),
        );
        self.scratch = pass.scratch;
        Ok(out)
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
        let threads = self.threads;
        let scratch = std::mem::take(&mut self.scratch);
        let mut pass = Pass::new(&self.cfg, &self.tree, params, n_total, threads, scratch);
        let stats = parallel_chunks(
            &mut self.train_ws,
            threads,
            Workspaces::PerChunk,
            batch,
            |ws, t, l| pass.run(ws, t, l, Some(n_total), batch.loss),
        );
        let chunks = &mut self.train_ws[..stats.len()];
        // The chunks' gradients summed in chunk order straight into `grads`; with the lookup path
        // the embedding's and first layer's come from the summed table gradients instead (the
        // chunks never write them).
        let tables = pass
            .use_tables
            .then(|| (self.tree.embed, self.tree.hidden[0].weight));
        let from_tables = |i: usize| tables.is_some_and(|(e, w)| i == e.index() || i == w.index());
        for (i, (out, &train)) in grads.iter_mut().zip(trainable).enumerate() {
            if !train || from_tables(i) {
                continue;
            }
            out.data.copy_from_slice(chunk_grad(&chunks[0], i));
            for ws in &chunks[1..] {
                let g = chunk_grad(ws, i);
                out.data.iter_mut().zip(g).for_each(|(x, y)| *x += y);
            }
        }
        if let Some((embed, weight)) = tables {
            let (first, rest) = chunks.split_at_mut(1);
            let g_tables = &mut first[0].g_tables;
            for ws in rest.iter() {
                g_tables
                    .iter_mut()
                    .zip(&ws.g_tables)
                    .for_each(|(x, y)| *x += y);
            }
            let train = (trainable[embed.index()], trainable[weight.index()]);
            pass.table_grads(g_tables, grads, train, threads);
        }
        self.scratch = pass.scratch;
        Ok(totals(&stats, n_total))
    }

    fn evaluate(&mut self, params: &Params, batch: Batch) -> Result<BatchStats> {
        let loss = batch.loss;
        let stats = self.map_eval(params, batch, |pass, ws, t, l| {
            pass.run(ws, t, l, None, loss)
        })?;
        Ok(totals(&stats, batch.rows()))
    }

    fn logits(&mut self, params: &Params, tokens: &[u32], seq: usize) -> Result<Vec<f32>> {
        let labels = vec![0; tokens.len() / seq.max(1)];
        let batch = Batch::new(tokens, &labels, seq, Target::LastPosition);
        let vo = self.cfg.d_vocab_out;
        let chunks = self.map_eval(params, batch, |pass, ws, t, l| {
            pass.logits(ws, t, l.len());
            ws.logits[..l.len() * vo].to_vec()
        })?;
        Ok(chunks.concat())
    }
}

/// The `i`-th gradient tensor a chunk's backward pass left in its workspace.
fn chunk_grad(ws: &MlpWorkspace, i: usize) -> &[f32] {
    let grads = ws.grads.as_ref().expect("every chunk ran backward");
    &grads
        .iter()
        .nth(i)
        .expect("the chunks hold every parameter")
        .data
}

/// One step's forward (and backward) passes over chunks, with fixed weights.
struct Pass<'a> {
    cfg: &'a MlpConfig,
    tree: &'a MlpTree,
    act: FastAct,
    params: &'a Params,
    /// Whether the first hidden layer runs from the lookup tables in `scratch`.
    use_tables: bool,
    scratch: Scratch,
}

impl<'a> Pass<'a> {
    /// Prepares a step over `rows` rows: the lookup tables when there is a hidden layer and the
    /// vocabulary is smaller than the batch.
    fn new(
        cfg: &'a MlpConfig,
        tree: &'a MlpTree,
        params: &'a Params,
        rows: usize,
        threads: usize,
        scratch: Scratch,
    ) -> Self {
        let mut pass = Pass {
            cfg,
            tree,
            act: FastAct::of(cfg.act_fn).expect("FastMlpEngine::new refuses exact GELU"),
            params,
            use_tables: false,
            scratch,
        };
        let Some(first) = tree.hidden.first() else {
            return pass;
        };
        if cfg.d_vocab >= rows {
            return pass;
        }
        let (de, dh, nv) = (cfg.d_embed, cfg.d_hidden, cfg.d_vocab);
        let w = &params[first.weight];
        let d_in = cfg.d_input();
        let Scratch {
            w_blocks, tables, ..
        } = &mut pass.scratch;
        w_blocks.clear();
        for pos in 0..cfg.n_ctx {
            for h in 0..dh {
                w_blocks.extend_from_slice(&w[h * d_in + pos * de..h * d_in + (pos + 1) * de]);
            }
        }
        let width = cfg.n_ctx * dh;
        let tables = sized(tables, nv * width);
        let w_e = &params[tree.embed];
        let groups: Vec<_> = row_groups(tables, width, threads).collect();
        groups.into_par_iter().for_each(|(t0, out)| {
            let n = out.len() / width;
            mm_nt(out, &w_e[t0 * de..(t0 + n) * de], w_blocks, n, width, de);
        });
        pass.use_tables = true;
        pass
    }

    /// The embedding's and the first layer's gradients (each where `train` says it is trained) from
    /// the summed table gradients `g_tables`: `dW_pos = G_posᵀ·E`, written straight into its block of
    /// columns of dW, and `dE = G·W'`, one product over every position. One parallel section: dW
    /// and dE each split by rows into `threads` jobs.
    fn table_grads(
        &mut self,
        g_tables: &[f32],
        g: &mut Params,
        (train_embed, train_weight): (bool, bool),
        threads: usize,
    ) {
        let (c, tree) = (self.cfg, self.tree);
        let (de, dh, nv, n_ctx, d_in) = (c.d_embed, c.d_hidden, c.d_vocab, c.n_ctx, c.d_input());
        let width = n_ctx * dh;
        let (w_e, w_blocks) = (&self.params[tree.embed], &self.scratch.w_blocks);
        enum Job<'o> {
            /// Rows `h0..` of dW (every position's block of columns).
            Weight(usize, &'o mut [f32]),
            /// Rows `t0..` of dE.
            Embed(usize, &'o mut [f32]),
        }
        let (gw, ge) = g.pair_mut(tree.hidden[0].weight, tree.embed);
        let mut jobs = Vec::new();
        if train_weight {
            jobs.extend(row_groups(gw, d_in, threads).map(|(h0, o)| Job::Weight(h0, o)));
        }
        if train_embed {
            jobs.extend(row_groups(ge, de, threads).map(|(t0, o)| Job::Embed(t0, o)));
        }
        jobs.into_par_iter().for_each(|job| match job {
            Job::Weight(h0, rows) => {
                let n_rows = rows.len() / d_in;
                for pos in 0..n_ctx {
                    // (h, e) of dW_pos = Σ_t G[t, pos, h]·E[t, e], into columns pos·de.. of row h.
                    let g_pos = &g_tables[pos * dh + h0..];
                    let out = &mut rows[pos * de..];
                    matmul_strided(
                        out,
                        d_in,
                        g_pos,
                        (1, width),
                        w_e,
                        (de, 1),
                        (n_rows, de, nv),
                        false,
                    );
                }
            }
            Job::Embed(t0, out) => {
                let n = out.len() / de;
                mm_nn(
                    out,
                    &g_tables[t0 * width..(t0 + n) * width],
                    w_blocks,
                    n,
                    de,
                    width,
                );
            }
        });
    }

    crate::linalg::kernels::simd_dispatch! {
        /// Forward, loss, and (with `n_total`, the batch size the loss is averaged over) backward into
        /// `ws.grads`.
        fn run / run_avx2 / run_avx512 => run_body(
            &self,
            ws: &mut MlpWorkspace,
            tokens: &[u32],
            labels: &[u32],
            n_total: Option<usize>,
            loss: LossKind,
        ) -> ChunkStats
    }

    crate::linalg::kernels::simd_dispatch! {
        /// Logits of `rows` rows into the workspace (the forward pass alone), on this CPU's best
        /// build.
        fn logits / forward_avx2 / forward_avx512 => forward(
            &self,
            ws: &mut MlpWorkspace,
            tokens: &[u32],
            rows: usize,
        )
    }

    #[inline(always)]
    fn run_body(
        &self,
        ws: &mut MlpWorkspace,
        tokens: &[u32],
        labels: &[u32],
        n_total: Option<usize>,
        loss: LossKind,
    ) -> ChunkStats {
        let rows = labels.len();
        self.forward(ws, tokens, rows);
        let vo = self.cfg.d_vocab_out;
        let (loss_sum, correct) =
            loss_and_dlogits(&mut ws.logits[..rows * vo], labels, n_total, loss);
        if n_total.is_some() {
            self.backward(ws, tokens, rows);
        }
        ChunkStats { loss_sum, correct }
    }

    /// Embeddings, hidden layers and logits of `rows` rows into the workspace.
    #[inline(always)]
    fn forward(&self, ws: &mut MlpWorkspace, tokens: &[u32], rows: usize) {
        let (c, p) = (self.cfg, self.params);
        let (de, dh) = (c.d_embed, c.d_hidden);
        ws.pre.resize_with(c.n_hidden, Vec::new);
        ws.post.resize_with(c.n_hidden, Vec::new);
        if !self.use_tables {
            let x0 = sized(&mut ws.x0, rows * c.d_input());
            let w_e = &p[self.tree.embed];
            for (dst, &t) in x0.chunks_exact_mut(de).zip(tokens) {
                dst.copy_from_slice(&w_e[t as usize * de..(t as usize + 1) * de]);
            }
        }
        let mut d_in = c.d_input();
        for (i, layer) in self.tree.hidden.iter().enumerate() {
            let (before, this) = ws.post.split_at_mut(i);
            let pre = sized(&mut ws.pre[i], rows * dh);
            match (self.use_tables, i) {
                (true, 0) => {
                    let tables = &self.scratch.tables;
                    for (dst, row) in pre.chunks_exact_mut(dh).zip(tokens.chunks_exact(c.n_ctx)) {
                        dst.copy_from_slice(&p[layer.bias]);
                        for (pos, &t) in row.iter().enumerate() {
                            let at = (t as usize * c.n_ctx + pos) * dh;
                            dst.iter_mut()
                                .zip(&tables[at..at + dh])
                                .for_each(|(o, v)| *o += v);
                        }
                    }
                }
                _ => {
                    let x = if i == 0 { &ws.x0 } else { &before[i - 1] };
                    self.linear(pre, x, layer, rows, d_in, dh);
                }
            }
            let post = sized(&mut this[0], rows * dh);
            activation_forward(self.act, pre, post);
            d_in = dh;
        }
        let x = ws.post.last().unwrap_or(&ws.x0);
        let logits = sized(&mut ws.logits, rows * c.d_vocab_out);
        self.linear(logits, x, &self.tree.out, rows, d_in, c.d_vocab_out);
    }

    /// `out[rows, d_out] = x[rows, d_in]·Wᵀ + b`.
    #[inline(always)]
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
        mm_nt(out, x, &p[l.weight], rows, d_out, d_in);
        add_bias(out, &p[l.bias]);
    }

    /// Backward from `ws.logits` (holding d loss / d logits) into `ws.grads`.
    #[inline(always)]
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
        mm_tn(&mut g[tree.out.weight], dlogits, x_last, vo, d_last, rows);
        g[tree.out.bias].fill(0.0);
        add_column_sums(&mut g[tree.out.bias], dlogits);
        let dx = sized(&mut ws.dx, rows * d_last);
        mm_nn(dx, dlogits, &p[tree.out.weight], rows, d_last, vo);
        // Hidden layers, last to first.
        for i in (0..n).rev() {
            let layer = &tree.hidden[i];
            let d_in = if i == 0 { c.d_input() } else { dh };
            let dpre = sized(&mut ws.dpre, rows * dh);
            dpre.copy_from_slice(&ws.dx[..rows * dh]);
            activation_backward(self.act, &ws.pre[i], &ws.post[i], dpre);
            if i == 0 && self.use_tables {
                // Sum each row's gradient into its tokens' table rows; `table_grads` finishes.
                let gt = sized(&mut ws.g_tables, c.d_vocab * c.n_ctx * dh);
                gt.fill(0.0);
                for (src, row) in dpre.chunks_exact(dh).zip(tokens.chunks_exact(c.n_ctx)) {
                    for (pos, &t) in row.iter().enumerate() {
                        let at = (t as usize * c.n_ctx + pos) * dh;
                        gt[at..at + dh]
                            .iter_mut()
                            .zip(src)
                            .for_each(|(o, v)| *o += v);
                    }
                }
                g[layer.bias].fill(0.0);
                add_column_sums(&mut g[layer.bias], dpre);
                return;
            }
            let x = if i == 0 { &ws.x0 } else { &ws.post[i - 1] };
            mm_tn(&mut g[layer.weight], dpre, x, dh, d_in, rows);
            g[layer.bias].fill(0.0);
            add_column_sums(&mut g[layer.bias], dpre);
            let dx = sized(&mut ws.dx, rows * d_in);
            mm_nn(dx, dpre, &p[layer.weight], rows, d_in, dh);
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

/// The `len`-wide rows of `out` in `threads` contiguous groups (one job each), each with the index of
/// its first row.
fn row_groups(
    out: &mut [f32],
    len: usize,
    threads: usize,
) -> impl Iterator<Item = (usize, &mut [f32])> {
    let per = (out.len() / len).div_ceil(threads.max(1)).max(1);
    out.chunks_mut(per * len)
        .enumerate()
        .map(move |(g, rows)| (g * per, rows))
}
