//! Seed 002's MLP, forward and backward written by hand on `gemm`: the hot path of a run of 15
//! minibatches of 512 rows per epoch, where a framework's per-call overheads would dominate.
//!
//! Weights stay in the PyTorch layout of the [`Params`] store (`nn.Linear.weight` is `[out, in]`, so
//! `y = x·Wᵀ + b`); gradients come out in the same layout. Rows are split into chunks fixed by the
//! batch alone ([`super::chunk_ranges`]) and the chunks' gradients are summed in chunk order, so
//! results are bit-identical on any number of threads. A training step is one team of threads
//! ([`crate::linalg::team`]) going through its phases: the lookup tables, the chunks, the sums, the
//! table gradients.
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

use crate::engine::fast::ops::{
    activation_backward, activation_forward, hidden_activation, mm_nn, mm_nt, mm_nt_with_t, mm_tn,
    FastAct,
};
use crate::engine::fast::{
    chunks_on, loss_and_dlogits, sized, sum_items, totals, zeroed, ChunkStats, Drained, Workspaces,
};
use crate::engine::loss::LossKind;
use crate::engine::{Batch, BatchStats, Engine};
use crate::error::{GrokError, Result};
use crate::linalg::kernels::matmul_strided;
use crate::linalg::kernels::{add_bias, add_column_sums};
use crate::linalg::team::{with_team, Item, Team};
use crate::linalg::transpose::transpose;
use crate::model::mlp::{MlpConfig, MlpTree};
use crate::model::Params;
use crate::tasks::Target;

/// Buffers one chunk reuses from step to step.
#[derive(Default)]
pub struct MlpWorkspace {
    /// Concatenated embeddings `[rows, n_ctx·d_embed]`.
    x0: Vec<f32>,
    /// Per hidden layer, before and after the activation, `[rows, d_hidden]` (`pre` empty under
    /// ReLU, whose backward reads only `post`).
    pre: Vec<Vec<f32>>,
    post: Vec<Vec<f32>>,
    logits: Vec<f32>,
    dx: Vec<f32>,
    dpre: Vec<f32>,
    /// Per token and position, the summed gradient of the first hidden layer's pre-activation,
    /// `[d_vocab, n_ctx, d_hidden]` like the tables (lookup path only).
    g_tables: Vec<f32>,
    /// Whether `g_tables` holds only zeros (the step's sum cleared it as it read it), so the next
    /// backward pass need not clear it.
    g_tables_zero: bool,
    /// Gradients of the last backward pass, in the store's layout.
    grads: Option<Params>,
}

/// Per-step buffers of the lookup path, kept between steps so a step allocates nothing.
#[derive(Default)]
struct Scratch {
    /// `W'`, `[n_ctx, d_hidden, d_embed]`: the first hidden layer's weight split by the position it
    /// reads (copied: `gemm` packs a contiguous block far faster than columns `n_ctx·d_embed` apart).
    w_blocks: Vec<f32>,
    /// `Wᵀ` `[d_in, d_out]` of each layer the forward pass multiplies by (the hidden layers, then the
    /// output layer; empty for the first where the tables stand in for it): `gemm` reads a row-major
    /// `W` as `Wᵀ` only by gathering it into its packed layout, and did so again in every chunk.
    weights_t: Vec<Vec<f32>>,
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
        let mut pass = Pass::new(&self.cfg, &self.tree, params, batch.rows(), scratch);
        let eval_ws = &mut self.eval_ws;
        let out = with_team(threads, |team| {
            pass.prepare(team, threads);
            let pass = &pass;
            chunks_on(
                team,
                threads,
                eval_ws,
                Workspaces::PerThread,
                batch,
                |ws, t, l| job(pass, ws, t, l),
            )
        });
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
        let mut pass = Pass::new(&self.cfg, &self.tree, params, n_total, scratch);
        let (train_ws, tree) = (&mut self.train_ws, &self.tree);
        // One team for the whole step: the tables, the chunks, the sum of their gradients, and the
        // gradients the tables give.
        let stats = with_team(threads, |team| {
            pass.prepare(team, threads);
            let pass = &pass;
            let stats = chunks_on(
                team,
                threads,
                train_ws,
                Workspaces::PerChunk,
                batch,
                |ws, t, l| pass.run(ws, t, l, Some(n_total), batch.loss),
            );
            // The chunks' gradients summed in chunk order straight into `grads`; with the lookup
            // path the embedding's and first layer's come from the summed table gradients instead
            // (the chunks never write them), summed into the first chunk's.
            let tables = pass.use_tables.then(|| (tree.embed, tree.hidden[0].weight));
            let from_tables =
                |i: usize| tables.is_some_and(|(e, w)| i == e.index() || i == w.index());
            let summed = |i: usize| trainable[i] && !from_tables(i);
            let chunks = &mut train_ws[..stats.len()];
            let (first, rest) = chunks.split_at_mut(1);
            let MlpWorkspace {
                g_tables,
                grads: first_grads,
                ..
            } = &mut first[0];
            let mut adds = vec![chunk_grads(first_grads, summed)];
            let mut drained = Vec::new();
            for ws in rest.iter_mut() {
                adds.push(chunk_grads(&ws.grads, summed));
                drained.push((ws.g_tables.as_mut_slice(), &mut ws.g_tables_zero));
            }
            let outs = grads
                .iter_mut()
                .enumerate()
                .filter(|&(i, _)| summed(i))
                .map(|(_, p)| p.data.as_mut_slice())
                .collect();
            let mut items = sum_items(outs, adds, true);
            if tables.is_some() {
                // The other chunks' table gradients, added in chunk order and left zero.
                let others = drained.iter_mut().map(|(g, _)| vec![Drained(g)]);
                items.extend(sum_items(vec![g_tables], others.collect(), false));
            }
            team.phase(items);
            if tables.is_some() {
                drained.into_iter().for_each(|(_, zero)| *zero = true);
            }
            if let Some((embed, weight)) = tables {
                let train = (trainable[embed.index()], trainable[weight.index()]);
                pass.table_grads(team, g_tables, grads, train, threads);
            }
            stats
        });
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

/// The gradients a chunk's backward pass left, of the parameters `summed` picks, in slot order.
fn chunk_grads(g: &Option<Params>, summed: impl Fn(usize) -> bool) -> Vec<&[f32]> {
    let g = g.as_ref().expect("every chunk ran backward");
    g.iter()
        .enumerate()
        .filter(|&(i, _)| summed(i))
        .map(|(_, p)| p.data.as_slice())
        .collect()
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
    /// Prepares a step over `rows` rows: whether the first hidden layer runs from lookup tables
    /// (there is a hidden layer and the vocabulary is smaller than the batch); [`Pass::prepare`]
    /// builds them.
    fn new(
        cfg: &'a MlpConfig,
        tree: &'a MlpTree,
        params: &'a Params,
        rows: usize,
        scratch: Scratch,
    ) -> Self {
        Pass {
            cfg,
            tree,
            act: FastAct::of(cfg.act_fn).expect("FastMlpEngine::new refuses exact GELU"),
            params,
            use_tables: !tree.hidden.is_empty() && cfg.d_vocab < rows,
            scratch,
        }
    }

    /// What the step's passes read besides the parameters, in two phases of `team`: the transposes
    /// of the weights the forward pass multiplies by (each layer's but the first where the tables
    /// stand in for it) and, where it uses the lookup tables, `W'` copied block by block; then the
    /// tables `T = E·W'ᵀ` split by rows into `threads` items.
    fn prepare(&mut self, team: &Team, threads: usize) {
        let (c, p, tree) = (self.cfg, self.params, self.tree);
        let (de, dh, nv, d_in) = (c.d_embed, c.d_hidden, c.d_vocab, c.d_input());
        let Scratch {
            w_blocks,
            tables,
            weights_t,
        } = &mut self.scratch;
        let layers = tree.hidden.iter().chain([&tree.out]);
        weights_t.resize_with(tree.hidden.len() + 1, Vec::new);
        let mut items: Vec<Item> = Vec::new();
        for (i, (l, out)) in layers.zip(weights_t.iter_mut()).enumerate() {
            let (weight, d_in) = (&p[l.weight], if i == 0 { d_in } else { dh });
            if i == 0 && self.use_tables {
                out.clear();
                continue;
            }
            let out = sized(out, weight.len());
            items.push(Box::new(move || {
                transpose(weight, weight.len() / d_in, d_in, out)
            }));
        }
        if self.use_tables {
            let w = &p[tree.hidden[0].weight];
            let w_blocks = sized(w_blocks, c.n_ctx * dh * de);
            items.extend(
                w_blocks
                    .chunks_exact_mut(dh * de)
                    .enumerate()
                    .map(|(pos, block)| {
                        Box::new(move || {
                            for (h, dst) in block.chunks_exact_mut(de).enumerate() {
                                dst.copy_from_slice(
                                    &w[h * d_in + pos * de..h * d_in + (pos + 1) * de],
                                );
                            }
                        }) as Item
                    }),
            );
        }
        team.phase(items);
        if !self.use_tables {
            return;
        }
        let width = c.n_ctx * dh;
        let tables = sized(tables, nv * width);
        let (w_e, w_blocks) = (&p[tree.embed], &*w_blocks);
        let products: Vec<Item> = row_groups(tables, width, threads)
            .map(|(t0, out)| {
                Box::new(move || {
                    let n = out.len() / width;
                    mm_nt(out, &w_e[t0 * de..(t0 + n) * de], w_blocks, n, width, de);
                }) as Item
            })
            .collect();
        team.phase(products);
    }

    /// The embedding's and the first layer's gradients (each where `train` says it is trained) from
    /// the summed table gradients `g_tables`: `dW_pos = G_posᵀ·E`, written straight into its block of
    /// columns of dW, and `dE = G·W'`, one product over every position. One phase of `team`: dW
    /// and dE each split by rows into `threads` items.
    fn table_grads(
        &self,
        team: &Team,
        g_tables: &[f32],
        g: &mut Params,
        (train_embed, train_weight): (bool, bool),
        threads: usize,
    ) {
        let (c, tree) = (self.cfg, self.tree);
        let (de, dh, nv, n_ctx, d_in) = (c.d_embed, c.d_hidden, c.d_vocab, c.n_ctx, c.d_input());
        let width = n_ctx * dh;
        let (w_e, w_blocks) = (&self.params[tree.embed], &self.scratch.w_blocks);
        let (gw, ge) = g.pair_mut(tree.hidden[0].weight, tree.embed);
        let mut items: Vec<Item> = Vec::new();
        if train_weight {
            items.extend(row_groups(gw, d_in, threads).map(|(h0, rows)| {
                Box::new(move || {
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
                }) as Item
            }));
        }
        if train_embed {
            items.extend(row_groups(ge, de, threads).map(|(t0, out)| {
                Box::new(move || {
                    let n = out.len() / de;
                    let g_rows = &g_tables[t0 * width..(t0 + n) * width];
                    mm_nn(out, g_rows, w_blocks, n, de, width);
                }) as Item
            }));
        }
        team.phase(items);
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
            let (pre, post, bias) = (&mut ws.pre[i], &mut this[0], &p[layer.bias]);
            if self.use_tables && i == 0 {
                self.lookup(pre, post, bias, tokens, rows);
            } else {
                let x = if i == 0 { &ws.x0 } else { &before[i - 1] };
                let w = (&p[layer.weight][..], &self.scratch.weights_t[i][..]);
                hidden_activation(self.act, bias, rows * dh, pre, post, |h| {
                    mm_nt_with_t(h, x, w, (rows, dh, d_in), false)
                });
            }
            d_in = dh;
        }
        let x = ws.post.last().unwrap_or(&ws.x0);
        let logits = sized(&mut ws.logits, rows * c.d_vocab_out);
        let out = &self.tree.out;
        let w = (
            &p[out.weight][..],
            &self.scratch.weights_t[self.tree.hidden.len()][..],
        );
        mm_nt_with_t(logits, x, w, (rows, c.d_vocab_out, d_in), false);
        add_bias(logits, &p[out.bias]);
    }

    /// The first hidden layer from the tables: per row `b + T[t₀, 0] + T[t₁, 1] + …`, added in that
    /// order, then the activation. Under ReLU the activation is applied with the last addition and
    /// the sums go to `post` alone, `pre` left empty (what [`hidden_activation`] leaves).
    #[inline(always)]
    fn lookup(
        &self,
        pre: &mut Vec<f32>,
        post: &mut Vec<f32>,
        bias: &[f32],
        tokens: &[u32],
        rows: usize,
    ) {
        let (n_ctx, dh, len) = (self.cfg.n_ctx, self.cfg.d_hidden, rows * self.cfg.d_hidden);
        let relu = self.act == FastAct::Relu;
        let tables = &self.scratch.tables;
        let table = |pos: usize, t: u32| &tables[(t as usize * n_ctx + pos) * dh..][..dh];
        let sums = if relu {
            pre.clear();
            sized(post, len)
        } else {
            sized(pre, len)
        };
        for (dst, row) in sums.chunks_exact_mut(dh).zip(tokens.chunks_exact(n_ctx)) {
            let Some((&last, first)) = row.split_last() else {
                dst.copy_from_slice(bias);
                continue;
            };
            // The bias and the first table in one pass (no copy of the bias first).
            match first.first() {
                Some(&t) => dst
                    .iter_mut()
                    .zip(bias.iter().zip(table(0, t)))
                    .for_each(|(o, (b, v))| *o = b + v),
                None => dst.copy_from_slice(bias),
            }
            for (pos, &t) in first.iter().enumerate().skip(1) {
                dst.iter_mut().zip(table(pos, t)).for_each(|(o, v)| *o += v);
            }
            let add = dst.iter_mut().zip(table(n_ctx - 1, last));
            match relu {
                true => add.for_each(|(o, v)| *o = (*o + v).max(0.0)),
                false => add.for_each(|(o, v)| *o += v),
            }
        }
        if !relu {
            activation_forward(self.act, pre, sized(post, len));
        }
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
            // d post becomes d pre in place; `dx`'s old buffer takes the next layer's d x.
            std::mem::swap(&mut ws.dx, &mut ws.dpre);
            let dpre = &mut ws.dpre[..rows * dh];
            activation_backward(self.act, &ws.pre[i], &ws.post[i], dpre);
            if i == 0 && self.use_tables {
                // Sum each row's gradient into its tokens' table rows; `table_grads` finishes.
                let len = c.d_vocab * c.n_ctx * dh;
                let gt = match ws.g_tables_zero && ws.g_tables.len() == len {
                    true => &mut ws.g_tables[..],
                    false => zeroed(&mut ws.g_tables, len),
                };
                ws.g_tables_zero = false;
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
