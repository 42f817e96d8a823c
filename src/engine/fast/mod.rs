//! The hand-written CPU engine for the training hot path.
//!
//! It computes exactly what the candle path computes — the last-position and previous-token losses,
//! cross-entropy or StableMax — for transformers with or without LayerNorm and with ReLU or
//! `gelu_new` MLPs (every grokking preset and seed 003), seed 002's MLP and seed 004's BitNet
//! (without activation quantization); the batch is split into
//! chunks decided by its size alone ([`chunk_ranges`]), the threads share them out, and the chunks'
//! sums are reduced in chunk order, so results are bit-identical on any number of threads. Other
//! models use the candle engine.
//!
//! The build targets baseline x86-64; each chunk's pass has two more builds, AVX2 + FMA and AVX-512,
//! chosen at run time ([`crate::linalg::kernels::simd_build`]): the entry points (`run`, `logits`,
//! `forward`) dispatch, and everything they call is `#[inline(always)]` so it is compiled into all
//! three. They give bit-identical results.

pub mod bitnet;
pub mod flops;
pub mod mlp;
pub mod norm;
pub mod ops;
pub mod transformer;

pub use mlp::FastMlpEngine;

use crate::engine::loss::{stablemax_s, LossKind};
use crate::engine::{Batch, BatchStats, Engine};
use crate::error::{GrokError, Result};
use crate::linalg::kernels::exp_slice;
use crate::linalg::team::{with_team, Item, Pool, Team, ITEM_VALUES};
use crate::linalg::transpose::{self, columns16};
use crate::model::bitnet::{BitNetConfig, BitNetTree, Residual};
use crate::model::transformer::TransformerTree;
use crate::model::{ActFn, MlpConfig, ModelConfig, Params, TransformerConfig};
use crate::tasks::Target;

use transformer::{Dims, Prepared, Scoring, Weights, Workspace};

/// What the fast engines run for a model: the one place that decides whether a hand-written pass
/// covers a config (and [`FastPlan::build`] the one place that builds it).
pub enum FastPlan<'a> {
    /// The transformer passes on a TransformerLens model.
    Transformer(&'a TransformerConfig),
    /// The MLP passes.
    Mlp(&'a MlpConfig),
    /// The transformer passes on BitNet's quantized weights.
    BitNet(&'a BitNetConfig),
}

/// The fast plan for `cfg` scored on `target`, or why none covers it.
pub fn plan(cfg: &ModelConfig, target: Target) -> std::result::Result<FastPlan<'_>, String> {
    if target != Target::LastPosition && cfg.transformer().is_none() {
        return Err(format!(
            "its {} passes score the last position only (per-position targets run on candle)",
            cfg.family_name()
        ));
    }
    let exact_gelu =
        || "act_fn must be relu or gelu_new (exact gelu runs on the candle engine)".to_string();
    match cfg {
        ModelConfig::Transformer(c) if c.act_fn == ActFn::Gelu => Err(exact_gelu()),
        ModelConfig::Transformer(c) => Ok(FastPlan::Transformer(c)),
        ModelConfig::Mlp(c) if c.act_fn == ActFn::Gelu => Err(exact_gelu()),
        ModelConfig::Mlp(c) => Ok(FastPlan::Mlp(c)),
        ModelConfig::BitNet(c) if c.act_bits > 0 => {
            Err("act_bits must be 0 (activation quantization runs on candle)".into())
        }
        ModelConfig::BitNet(c) if c.residual == Residual::Embed && c.n_layers > 1 => {
            Err("residual = \"embed\" with more than one layer runs on candle".into())
        }
        ModelConfig::BitNet(c) => Ok(FastPlan::BitNet(c)),
        #[allow(unreachable_patterns)] // a family without hand-written passes runs on candle
        _ => Err(format!(
            "the {} family has no fast passes",
            cfg.family_name()
        )),
    }
}

/// Why the fast engines cannot run `cfg` scored on `target`, or `None` when one can.
pub fn unsupported_reason(cfg: &ModelConfig, target: Target) -> Option<String> {
    plan(cfg, target).err()
}

impl FastPlan<'_> {
    /// The engine, with `threads` worker threads.
    pub fn build(self, threads: usize) -> Result<Box<dyn Engine>> {
        Ok(match self {
            FastPlan::Transformer(c) => Box::new(FastEngine::new(c, threads)),
            FastPlan::Mlp(c) => Box::new(FastMlpEngine::new(c, threads)?),
            FastPlan::BitNet(c) => Box::new(FastEngine::bitnet(c, threads)),
        })
    }
}

/// The families the hand-written transformer passes run, with their parameter trees (built once,
/// not per step).
enum Family {
    Transformer(TransformerConfig, TransformerTree),
    BitNet(BitNetConfig, BitNetTree),
}

impl Family {
    fn dims(&self) -> Dims {
        match self {
            Family::Transformer(c, _) => Dims::new(c),
            Family::BitNet(c, _) => Dims::bitnet(c),
        }
    }

    fn weights(&self, params: &Params) -> Weights {
        match self {
            Family::Transformer(c, t) => Weights::from_params(c, t, params),
            Family::BitNet(c, t) => Weights::from_bitnet(c, t, params),
        }
    }

    fn write_grads(&self, g: &Weights, out: &mut Params, trainable: &[bool]) {
        match self {
            Family::Transformer(c, t) => g.write_params(c, t, out, trainable),
            Family::BitNet(c, t) => g.write_bitnet(c, t, out, trainable),
        }
    }

    /// Whether the passes can score every position (TransformerLens models).
    fn per_position(&self) -> bool {
        matches!(self, Family::Transformer(..))
    }

    fn check_tokens(&self, tokens: &[u32], rows: usize) -> Result<usize> {
        match self {
            Family::Transformer(c, _) => c.check_tokens(tokens, rows),
            Family::BitNet(c, _) => c.check_tokens(tokens, rows),
        }
    }
}

/// Hand-written forward/backward on `gemm`, parallel over batch chunks: TransformerLens models
/// without normalization, and BitNet models (their quantized weights, with straight-through
/// gradients to the latent ones).
pub struct FastEngine {
    family: Family,
    /// Worker threads.
    threads: usize,
    /// Training chunks' activations: a pool of workspaces handed from chunk to chunk, one per chunk
    /// running at the time, so memory does not grow with the chunk count.
    train_ws: Vec<Workspace>,
    /// Each training chunk's gradients, kept until they are summed.
    train_grads: Vec<Option<Weights>>,
    /// One workspace per thread for evaluation, so buffer sizes stay put.
    eval_ws: Vec<Workspace>,
}

impl FastEngine {
    /// An engine for `cfg` (from [`plan`]) using `threads` threads.
    pub fn new(cfg: &TransformerConfig, threads: usize) -> Self {
        Self::with_family(Family::Transformer(cfg.clone(), cfg.tree()), threads)
    }

    /// An engine for the BitNet model `cfg` (from [`plan`]).
    pub fn bitnet(cfg: &BitNetConfig, threads: usize) -> Self {
        Self::with_family(Family::BitNet(cfg.clone(), cfg.tree()), threads)
    }

    fn with_family(family: Family, threads: usize) -> Self {
        FastEngine {
            family,
            threads: threads.max(1),
            train_ws: Vec::new(),
            train_grads: Vec::new(),
            eval_ws: Vec::new(),
        }
    }

    /// Runs every chunk of `batch` on the engine's threads; returns per-chunk stats in chunk order (with
    /// gradients left in the training workspaces when `grads` is set).
    fn run_chunks(
        &mut self,
        team: &Team,
        params: &Params,
        batch: Batch,
        grads: bool,
    ) -> Result<Vec<ChunkStats>> {
        let n_total = grads.then_some(batch.predictions());
        let scoring = Scoring {
            seq: batch.seq_len,
            per_position: batch.target == Target::PreviousToken,
            loss: batch.loss,
        };
        self.map_chunks(team, params, batch, grads, |p, ws, t, l| {
            p.run(ws, t, l, scoring, n_total)
        })
    }

    /// Runs `job` on every chunk of `batch` with its own workspace (the training ones when `train`);
    /// results in chunk order.
    fn map_chunks<R: Send>(
        &mut self,
        team: &Team,
        params: &Params,
        batch: Batch,
        train: bool,
        job: impl Fn(&Prepared, &mut Workspace, &[u32], &[u32]) -> R + Sync,
    ) -> Result<Vec<R>> {
        check_target(&batch, self.family.per_position())?;
        if self.family.check_tokens(batch.tokens, batch.rows())? != batch.seq_len {
            return Err(GrokError::tensor(
                "tokens",
                format!("rows are not {} tokens long", batch.seq_len),
            ));
        }
        let w = self.family.weights(params);
        let prepared = Prepared::new(self.family.dims(), &w, train);
        let prepared = &prepared;
        if !train {
            let workspaces = &mut self.eval_ws;
            let job = |ws: &mut Workspace, t: &[u32], l: &[u32]| job(prepared, ws, t, l);
            return Ok(chunks_on(
                team,
                self.threads,
                workspaces,
                Workspaces::PerThread,
                batch,
                job,
            ));
        }
        // Each chunk keeps its gradients; its activations go in whichever workspace is free.
        let pool = Pool::new(std::mem::take(&mut self.train_ws));
        let results = chunks_on(
            team,
            self.threads,
            &mut self.train_grads,
            Workspaces::PerChunk,
            batch,
            |grads, t, l| {
                pool.with(|ws| {
                    ws.grads = grads.take();
                    let result = job(prepared, ws, t, l);
                    *grads = ws.grads.take();
                    result
                })
            },
        );
        self.train_ws = pool.into_inner();
        Ok(results)
    }
}

/// Chunks never shrink below this many predictions (smaller ones would run the kernels
/// inefficiently)...
const MIN_CHUNK_PREDICTIONS: usize = 128;
/// ...a training batch is split into at most this many, so up to this many threads share one batch
/// (each chunk keeps its own gradients until they are summed)...
pub const MAX_CHUNKS: usize = 16;
/// ...and an evaluation batch into at most this many: its chunks share one workspace per thread, so
/// more, smaller chunks cost no memory and keep a chunk's activations in cache between its passes
/// (seed 003's test set of 4 000 × 50 predictions runs in chunks of 16 rows, not 250).
const MAX_EVAL_CHUNKS: usize = 256;

/// The row ranges a batch of `rows` rows holding `predictions` scored positions is split into (at
/// most `most`): chunks of about [`MIN_CHUNK_PREDICTIONS`] predictions, so a model scored at every
/// position (seed 003's 50 per row) gets chunks of few rows whose activations stay in cache. They
/// depend on the batch alone, never on the thread count: each chunk's sums run in the same order
/// whichever thread computes it, and the chunks are reduced in chunk order, so a run gives
/// bit-identical numbers on any number of threads.
pub(crate) fn chunk_ranges(
    rows: usize,
    predictions: usize,
    most: usize,
) -> Vec<std::ops::Range<usize>> {
    let chunks = (predictions / MIN_CHUNK_PREDICTIONS)
        .clamp(1, most)
        .min(rows.max(1));
    let len = rows.div_ceil(chunks).max(1);
    (0..rows)
        .step_by(len)
        .map(|start| start..(start + len).min(rows))
        .collect()
}

/// Which workspace each chunk of [`chunks_on`] runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workspaces {
    /// Its own, kept after the call (a training pass: the caller then reduces each chunk's gradients).
    PerChunk,
    /// The one of the thread that runs it, reused chunk after chunk (an evaluation pass, whose results
    /// are returned by value): memory for a thread's chunk, not for the whole batch at once.
    PerThread,
}

/// One chunk's tokens and labels.
type ChunkInput<'b> = (&'b [u32], &'b [u32]);

/// One phase of `team` running `job(workspace, tokens, labels)` on every chunk of `batch`
/// ([`chunk_ranges`]), each chunk in the workspace `mode` gives it (`workspaces` grows to what that
/// needs: one per chunk, or one per group of contiguous chunks, `threads` groups); results in chunk
/// order. A chunk's result does not depend on which workspace or thread ran it: every pass
/// overwrites what it reads.
pub(crate) fn chunks_on<'b, W: Send + Default, R: Send>(
    team: &Team,
    threads: usize,
    workspaces: &mut Vec<W>,
    mode: Workspaces,
    batch: Batch<'b>,
    job: impl Fn(&mut W, &'b [u32], &'b [u32]) -> R + Sync,
) -> Vec<R> {
    let most = match mode {
        Workspaces::PerChunk => MAX_CHUNKS,
        Workspaces::PerThread => MAX_EVAL_CHUNKS,
    };
    let ranges = chunk_ranges(batch.rows(), batch.predictions(), most);
    let seq = batch.seq_len;
    let inputs: Vec<ChunkInput<'b>> = ranges
        .into_iter()
        .map(|r| {
            (
                &batch.tokens[r.start * seq..r.end * seq],
                // Per-position targets are the tokens themselves: no labels.
                batch.labels.get(r).unwrap_or(&[]),
            )
        })
        .collect();
    // A training chunk is an item of its own (claimed by whichever thread is free); evaluation
    // chunks go in `threads` contiguous groups, one workspace each.
    let per_item = match mode {
        Workspaces::PerChunk => 1,
        Workspaces::PerThread => inputs.len().div_ceil(threads.max(1)).max(1),
    };
    let groups: Vec<&[ChunkInput<'b>]> = inputs.chunks(per_item).collect();
    let needed = match mode {
        Workspaces::PerChunk => inputs.len(),
        Workspaces::PerThread => groups.len(),
    };
    if workspaces.len() < needed {
        workspaces.resize_with(needed, W::default);
    }
    let mut results: Vec<Vec<R>> = groups.iter().map(|_| Vec::new()).collect();
    let job = &job;
    let items: Vec<Item> = groups
        .into_iter()
        .zip(workspaces.iter_mut())
        .zip(results.iter_mut())
        .map(|((group, ws), out)| {
            Box::new(move || out.extend(group.iter().map(|&(t, l)| job(ws, t, l)))) as Item
        })
        .collect();
    team.phase(items);
    results.into_iter().flatten().collect()
}

/// A chunk's copy of a buffer as [`sum_items`] adds it: read as it is (`&[f32]`), or [`Drained`].
pub(crate) trait Addend: Send + Sized {
    /// The first `n` values, leaving the rest in `self`.
    fn split_front(&mut self, n: usize) -> Self;
    /// `out = self` (`overwrite`) or `out += self`, element by element.
    fn add_to(&mut self, out: &mut [f32], overwrite: bool);
}

impl Addend for &[f32] {
    fn split_front(&mut self, n: usize) -> Self {
        let (head, tail) = self.split_at(n);
        *self = tail;
        head
    }

    #[inline(always)]
    fn add_to(&mut self, out: &mut [f32], overwrite: bool) {
        if overwrite {
            out.copy_from_slice(self);
        } else {
            out.iter_mut().zip(self.iter()).for_each(|(o, v)| *o += v);
        }
    }
}

/// A chunk's buffer that is cleared as it is added (cache-hot, by the thread adding it), so that
/// chunk's next backward pass starts from zeros without a pass of its own.
pub(crate) struct Drained<'a>(pub &'a mut [f32]);

impl Addend for Drained<'_> {
    fn split_front(&mut self, n: usize) -> Self {
        let (head, tail) = std::mem::take(&mut self.0).split_at_mut(n);
        self.0 = tail;
        Drained(head)
    }

    #[inline(always)]
    fn add_to(&mut self, out: &mut [f32], overwrite: bool) {
        out.iter_mut().zip(self.0.iter_mut()).for_each(|(o, v)| {
            *o = if overwrite { *v } else { *o + *v };
            *v = 0.0;
        });
    }
}

/// One range of a buffer and the same range of each chunk's copy of it, in chunk order.
struct SumPiece<'a, A> {
    out: &'a mut [f32],
    add: Vec<A>,
    /// Whether `out` starts as the first chunk's values rather than adding them.
    overwrite: bool,
}

impl<A: Addend> SumPiece<'_, A> {
    crate::linalg::kernels::simd_dispatch! {
        /// `out += add[0]` (or `out = add[0]`), then `+= add[1]`, …
        fn run / run_avx2 / run_avx512 => run_body(&mut self)
    }

    #[inline(always)]
    fn run_body(&mut self) {
        for (c, a) in self.add.iter_mut().enumerate() {
            a.add_to(self.out, self.overwrite && c == 0);
        }
    }
}

/// Items for one phase that sum the chunks' copies of some buffers: `outs[i] (+)= adds[0][i] +
/// adds[1][i] + …`, added in that order element by element (the chunks' gradients reduced in chunk
/// order, as a serial loop would), where `overwrite` says whether `outs` start from `adds[0]` or add
/// to what they hold. Every buffer goes in ranges of at most [`ITEM_VALUES`] values.
pub(crate) fn sum_items<'a, A: Addend + 'a>(
    outs: Vec<&'a mut [f32]>,
    mut adds: Vec<Vec<A>>,
    overwrite: bool,
) -> Vec<Item<'a>> {
    let mut items: Vec<Item> = Vec::new();
    for (i, out) in outs.into_iter().enumerate() {
        for out in out.chunks_mut(ITEM_VALUES) {
            let add = adds
                .iter_mut()
                .map(|bufs| bufs[i].split_front(out.len()))
                .collect();
            let mut piece = SumPiece {
                out,
                add,
                overwrite,
            };
            items.push(Box::new(move || piece.run()));
        }
    }
    items
}

/// Loss and accuracy of a batch from its chunks' sums.
pub(crate) fn totals(results: &[ChunkStats], rows: usize) -> BatchStats {
    let loss_sum: f64 = results.iter().map(|r| r.loss_sum).sum();
    BatchStats {
        loss: loss_sum / rows as f64,
        correct: results.iter().map(|r| r.correct).sum(),
        predictions: rows,
    }
}

/// Refuses a batch whose loss reads more than the last position where `per_position` is not
/// supported, and a last-position batch without one label per row.
pub(crate) fn check_target(batch: &Batch, per_position: bool) -> Result<()> {
    match batch.target {
        Target::PreviousToken if per_position => return Ok(()),
        Target::PreviousToken => {
            return Err(GrokError::config(
                "train.engine",
                "fast",
                "this family's fast engine scores the last position only; per-position targets run on \"candle\" (or \"auto\")",
            ))
        }
        Target::LastPosition => {}
    }
    if batch.labels.len() != batch.rows() {
        return Err(GrokError::tensor(
            "labels",
            format!("{} labels for {} rows", batch.labels.len(), batch.rows()),
        ));
    }
    Ok(())
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
        // One team for the chunks and the sum of their gradients (summed into the first chunk's).
        let results = with_team(self.threads, |team| {
            let results = self.run_chunks(team, params, batch, true)?;
            let (first, rest) = self.train_grads[..results.len()].split_at_mut(1);
            let ran = "every chunk ran a backward pass";
            let rest: Vec<_> = rest
                .iter_mut()
                .map(|g| g.as_mut().expect(ran).buffers_mut())
                .collect();
            let adds: Vec<Vec<&[f32]>> = rest
                .iter()
                .map(|bufs| bufs.iter().map(|b| b.as_slice()).collect())
                .collect();
            let outs = first[0].as_mut().expect(ran).buffers_mut();
            let outs = outs.into_iter().map(|b| b.as_mut_slice()).collect();
            team.phase(sum_items(outs, adds, false));
            Ok::<_, GrokError>(results)
        })?;
        let total = self.train_grads[0].as_ref().expect("the first chunk ran");
        self.family.write_grads(total, grads, trainable);
        Ok(totals(&results, batch.predictions()))
    }

    fn evaluate(&mut self, params: &Params, batch: Batch) -> Result<BatchStats> {
        let results = with_team(self.threads, |team| {
            self.run_chunks(team, params, batch, false)
        })?;
        Ok(totals(&results, batch.predictions()))
    }

    fn logits(&mut self, params: &Params, tokens: &[u32], seq: usize) -> Result<Vec<f32>> {
        if seq == 0 || !tokens.len().is_multiple_of(seq) {
            return Err(GrokError::tensor(
                "tokens",
                format!("{} ids do not form rows of {seq} tokens", tokens.len()),
            ));
        }
        let labels = vec![0; tokens.len() / seq];
        let batch = Batch::new(tokens, &labels, seq, Target::LastPosition);
        let chunks = with_team(self.threads, |team| {
            self.map_chunks(team, params, batch, false, |p, ws, t, _| {
                p.logits(ws, t, seq).to_vec()
            })
        })?;
        Ok(chunks.concat())
    }
}

/// Loss sum and arg-max hits of one chunk.
pub struct ChunkStats {
    /// Σ −log p(label) over the chunk's rows, in f64.
    pub loss_sum: f64,
    /// Rows whose arg-max logit is the label.
    pub correct: usize,
}

/// `v` resized to `n` elements; existing contents are kept and must be overwritten by the caller.
pub(crate) fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.resize(n, 0.0);
    &mut v[..]
}

/// `v` resized to `n` zeros.
pub(crate) fn zeroed(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.resize(n, 0.0);
    v.fill(0.0);
    &mut v[..]
}

/// Σ −log softmax(logits)[label] in f64 and the arg-max hit count; when `n_total` is given, turns
/// `logits` into d(mean loss)/d(logits) in place ([`score_rows`] with one label per row).
#[inline(always)]
pub(crate) fn loss_and_dlogits(
    logits: &mut [f32],
    labels: &[u32],
    n_total: Option<usize>,
    loss_kind: LossKind,
) -> (f64, usize) {
    let vo = logits.len() / labels.len().max(1);
    let inv = n_total.map(|n| 1.0 / n as f32);
    let mut sums = (0.0, 0);
    score_rows(
        logits,
        vo,
        0,
        Targets::Labels(labels),
        (inv, loss_kind),
        &mut sums,
    );
    sums
}

/// What each scored row predicts.
#[derive(Clone, Copy)]
pub(crate) enum Targets<'t> {
    /// Row i's label (a last-position loss: one scored row per sequence).
    Labels(&'t [u32]),
    /// Every position of rows of `seq` tokens predicts the token before it; position 0 has none.
    PreviousToken { tokens: &'t [u32], seq: usize },
}

impl Targets<'_> {
    /// Scored row `i`'s target, `None` for a row without one.
    #[inline(always)]
    fn of(self, i: usize) -> Option<u32> {
        match self {
            Targets::Labels(labels) => Some(labels[i]),
            Targets::PreviousToken { seq, .. } if i.is_multiple_of(seq) => None,
            Targets::PreviousToken { tokens, .. } => Some(tokens[i - 1]),
        }
    }
}

/// Rows whose serial chains (the sum of exponentials) [`score_rows`] interleaves: two groups of
/// [`columns16`]'s rows, turned column-major so that step `j` of sixteen rows' chains is one vector
/// addition and the two groups' chains run side by side. The arg-max scan runs across lanes within
/// a row ([`first_max`]).
const ROW_GROUP: usize = 2 * transpose::ROWS;

crate::linalg::kernels::simd_dispatch! {
    /// Adds the loss (f64, row by row) and the arg-max hits of `logits` (rows of `vo`) to `sums`,
    /// the first row being scored row `first_row` of `targets`: per row −log softmax(row)[y], or
    /// under StableMax −log s(row_y)/Σ s; with `inv` = 1/n, each row becomes d(mean loss)/d(row) in
    /// place (a row without a target gets zeros and no loss).
    ///
    /// Each row's loss is `(max − logit[y]) + ln(1 + S)` with `S = Σ_{j≠argmax} exp(logit[j] −
    /// max)`: the exponentials are f32 (relative error ~1e-7 each) and `ln_1p` is f64, so a grokked
    /// loss of 1e-7 keeps its digits instead of rounding to 0. Every row's operations run in one
    /// fixed order; rows are taken [`ROW_GROUP`] at a time so that their serial sums overlap instead
    /// of waiting on each other. Compiled on its own for each build (see [`exp_slice`]).
    pub(crate) fn score_rows / score_rows_avx2 / score_rows_avx512 => score_rows_body(
        logits: &mut [f32],
        vo: usize,
        first_row: usize,
        targets: Targets,
        scoring: (Option<f32>, LossKind),
        sums: &mut (f64, usize),
    )
}

/// [`score_rows`]'s work, for the build it is compiled into.
#[inline(always)]
fn score_rows_body(
    logits: &mut [f32],
    vo: usize,
    first_row: usize,
    targets: Targets,
    (inv, loss_kind): (Option<f32>, LossKind),
    (loss, correct): &mut (f64, usize),
) {
    let mut i = first_row;
    let mut columns = Vec::new();
    for rows in logits.chunks_mut(ROW_GROUP * vo) {
        let n = rows.len() / vo;
        let mut ys = [None; ROW_GROUP];
        for (r, y) in ys[..n].iter_mut().enumerate() {
            *y = targets.of(i + r);
        }
        if loss_kind == LossKind::StableMax {
            for (row, y) in rows.chunks_exact_mut(vo).zip(ys) {
                match y {
                    Some(y) => {
                        let (l, hit) = stablemax_row_loss(row, y, inv);
                        *loss += l;
                        *correct += usize::from(hit);
                    }
                    None => row.fill(0.0),
                }
            }
        } else if n == ROW_GROUP {
            cross_entropy_rows::<ROW_GROUP>(rows, vo, &ys, inv, (loss, correct), &mut columns);
        } else {
            for (row, y) in rows.chunks_exact_mut(vo).zip(&ys) {
                cross_entropy_rows::<1>(row, vo, &[*y], inv, (loss, correct), &mut columns);
            }
        }
        i += n;
    }
}

/// Cross-entropy on `G` rows at once (see [`score_rows`]): the loss of each row with a target added
/// to `loss` in row order, its arg-max hit counted; `columns` is scratch for [`exp_sums`].
#[inline(always)]
fn cross_entropy_rows<const G: usize>(
    rows: &mut [f32],
    vo: usize,
    ys: &[Option<u32>; G],
    inv: Option<f32>,
    (loss, correct): (&mut f64, &mut usize),
    columns: &mut Vec<f32>,
) {
    let (mut best, mut max) = ([0usize; G], [f32::NEG_INFINITY; G]);
    for (r, row) in rows.chunks_exact(vo).enumerate() {
        (best[r], max[r]) = first_max(row);
    }
    let mut gap = [0.0f32; G];
    for r in 0..G {
        let row = &mut rows[r * vo..(r + 1) * vo];
        gap[r] = max[r] - ys[r].map_or(max[r], |y| row[y as usize]);
        // exp(v − max) for every output (a vectorised loop), then the sum of all but the arg-max,
        // whose term is exactly 1 and is kept out so ln(1 + rest) keeps a tiny `rest`'s digits.
        let m = max[r];
        row.iter_mut().for_each(|v| *v -= m);
        exp_slice(row);
        row[best[r]] = 0.0;
    }
    let rest = exp_sums::<G>(rows, vo, columns);
    for r in 0..G {
        let row = &mut rows[r * vo..(r + 1) * vo];
        row[best[r]] = 1.0;
        let Some(y) = ys[r] else {
            row.fill(0.0);
            continue;
        };
        *correct += usize::from(best[r] == y as usize);
        *loss += gap[r] as f64 + (rest[r] as f64).ln_1p();
        if let Some(inv) = inv {
            let scale = inv / (1.0 + rest[r]);
            row.iter_mut().for_each(|v| *v *= scale);
            row[y as usize] -= inv;
        }
    }
}

/// Each of the `G` rows' serial sum `((−0 + row[0]) + row[1]) + …`: for a whole [`ROW_GROUP`],
/// over its two halves turned column-major (into `t`), step by step side by side.
#[inline(always)]
fn exp_sums<const G: usize>(rows: &[f32], vo: usize, t: &mut Vec<f32>) -> [f32; G] {
    let mut rest = [-0.0f32; G];
    if G != ROW_GROUP {
        for (r, row) in rows.chunks_exact(vo).enumerate() {
            rest[r] = row.iter().fold(-0.0, |s, &v| s + v);
        }
        return rest;
    }
    const H: usize = transpose::ROWS;
    t.resize(2 * H * vo, 0.0);
    let (ta, tb) = t.split_at_mut(H * vo);
    let (ta, tb) = (columns16(rows, vo, ta), columns16(&rows[H * vo..], vo, tb));
    let (mut a, mut b) = ([-0.0f32; H], [-0.0f32; H]);
    for (aj, bj) in ta.chunks_exact(H).zip(tb.chunks_exact(H)) {
        for r in 0..H {
            a[r] += aj[r];
            b[r] += bj[r];
        }
    }
    rest[..H].copy_from_slice(&a);
    rest[H..].copy_from_slice(&b);
    rest
}

/// Lanes [`first_max`] scans side by side.
const MAX_LANES: usize = 8;

/// The index of `row`'s first largest value and that value, as the scan `if v > max { max = v;
/// best = j }` from `(0, −∞)` gives them (NaN never wins; a row of −∞ and NaN gives `(0, −∞)`), found
/// [`MAX_LANES`] columns at a time: each lane keeps its own first maximum, and the first index among
/// the lanes (and the tail past the last whole group) holding the largest value is the row's.
#[inline(always)]
fn first_max(row: &[f32]) -> (usize, f32) {
    let groups = row.chunks_exact(MAX_LANES);
    let tail = groups.remainder();
    let whole = row.len() - tail.len();
    let (mut lane_max, mut lane_at) = ([f32::NEG_INFINITY; MAX_LANES], [0u32; MAX_LANES]);
    for (g, x) in groups.enumerate() {
        for l in 0..MAX_LANES {
            let better = x[l] > lane_max[l];
            lane_max[l] = if better { x[l] } else { lane_max[l] };
            lane_at[l] = if better { g as u32 } else { lane_at[l] };
        }
    }
    let lanes =
        (0..MAX_LANES.min(whole)).map(|l| (lane_at[l] as usize * MAX_LANES + l, lane_max[l]));
    let tail = tail.iter().enumerate().map(|(t, &v)| (whole + t, v));
    let (mut best, mut max) = (usize::MAX, f32::NEG_INFINITY);
    for (j, v) in lanes.chain(tail) {
        if v > max || (v == max && j < best) {
            (best, max) = (j, v);
        }
    }
    (if best == usize::MAX { 0 } else { best }, max)
}

/// One row's loss under StableMax, in f64: loss = ln Σ s(x_j) − ln s(x_y), and
/// d/dx_i = s'(x_i)/Σ s − [i = y]·s'(x_y)/s(x_y).
#[inline(always)]
fn stablemax_row_loss(row: &mut [f32], y: u32, inv: Option<f32>) -> (f64, bool) {
    let y = y as usize;
    let best = first_max(row).0;
    let total: f64 = row.iter().map(|&v| stablemax_s(v as f64).0).sum();
    let (s_y, ds_y) = stablemax_s(row[y] as f64);
    let loss = total.ln() - s_y.ln();
    if let Some(inv) = inv {
        let inv = inv as f64;
        for v in row.iter_mut() {
            *v = (inv * stablemax_s(*v as f64).1 / total) as f32;
        }
        row[y] -= (inv * ds_y / s_y) as f32;
    }
    (loss, best == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks are cut by predictions: a last-position batch keeps chunks of ≥ 128 rows (at most 16
    /// when training), a batch scored at every position gets chunks of a few rows, evaluation may cut
    /// more of them, and the ranges always tile the batch in order.
    #[test]
    fn chunks_follow_the_predictions_and_tile_the_batch() {
        let lens = |rows, predictions, most| -> Vec<usize> {
            let ranges = chunk_ranges(rows, predictions, most);
            let mut next = 0;
            for r in &ranges {
                assert_eq!(r.start, next, "{ranges:?}");
                assert!(r.end > r.start, "{ranges:?}");
                next = r.end;
            }
            assert_eq!(next, rows, "{ranges:?}");
            ranges.iter().map(|r| r.len()).collect()
        };
        // The default preset's 3 830 training rows: 16 chunks of 240 (the last 230).
        let train = lens(3830, 3830, MAX_CHUNKS);
        assert_eq!((train.len(), train[0], train[15]), (16, 240, 230));
        // Its 8 939 test rows: 69 chunks of ≥ 128 rows.
        let test = lens(8939, 8939, MAX_EVAL_CHUNKS);
        assert_eq!((test.len(), test[0]), (69, 130));
        // Seed 003: 256 rows × 50 predictions train in 16 chunks of 16 rows; its 4 000 test rows
        // in 250 chunks of 16.
        assert_eq!(lens(256, 256 * 50, MAX_CHUNKS), vec![16; 16]);
        assert_eq!(lens(4000, 4000 * 50, MAX_EVAL_CHUNKS), vec![16; 250]);
        // Never more chunks than rows, never fewer than one.
        assert_eq!(lens(3, 3 * 1000, MAX_CHUNKS), vec![1; 3]);
        assert_eq!(lens(5, 5, MAX_CHUNKS), vec![5]);
        assert_eq!(lens(0, 0, MAX_CHUNKS), Vec::<usize>::new());
    }

    /// [`first_max`] gives the index and the bits of a left-to-right scan, ties and signed zeros
    /// included, whichever lane or the tail holds them.
    #[test]
    fn lane_maximum_finds_the_first_maximum_of_a_scan() {
        let scan = |row: &[f32]| {
            let (mut best, mut max) = (0, f32::NEG_INFINITY);
            for (j, &v) in row.iter().enumerate() {
                if v > max {
                    (best, max) = (j, v);
                }
            }
            (best, max)
        };
        let (inf, nan) = (f32::INFINITY, f32::NAN);
        let mut rows: Vec<Vec<f32>> = vec![
            vec![],
            vec![nan],
            vec![-inf, nan, -inf],
            vec![nan; 19],
            vec![-inf; 17],
            vec![2.0; 21],
            vec![1.0, 3.0, 3.0, -1.0],
            // ±0 at index 5 (lane 5) before ∓0 at index 10 (lane 2): the first of the equal ones.
            (0..19)
                .map(|j| [-1.0, 0.0, -0.0][usize::from(j == 5) + 2 * usize::from(j == 10)])
                .collect(),
            (0..19)
                .map(|j| [-1.0, -0.0, 0.0][usize::from(j == 5) + 2 * usize::from(j == 10)])
                .collect(),
            vec![nan, 1.0, inf, 0.0, inf, 2.0, 7.0, 1.0, 3.0, inf, nan],
        ];
        // Ties across lanes, inside a lane and in the tail, at every length up to three groups.
        for len in 1..3 * MAX_LANES + 3 {
            for (a, b) in [(0, len - 1), (len / 2, len / 3), (len - 1, len / 2)] {
                let mut row: Vec<f32> = (0..len).map(|j| ((j * 7) % 5) as f32).collect();
                row[a] = 9.0;
                row[b] = 9.0;
                rows.push(row);
            }
        }
        for row in &rows {
            let (want, got) = (scan(row), first_max(row));
            assert_eq!(want.0, got.0, "{row:?}");
            assert_eq!(want.1.to_bits(), got.1.to_bits(), "{row:?}");
        }
    }

    /// [`score_rows`] takes rows [`ROW_GROUP`] at a time; the loss, the hits and every gradient entry
    /// are the bits scoring each row on its own gives (two groups and 3 rows alone; rows of 23 and
    /// of 37 outputs, so the column-major sums have tails past whole vectors), for both losses and
    /// for rows without a target.
    #[test]
    fn grouped_rows_score_with_the_bits_of_one_row_at_a_time() {
        for vo in [23, 37] {
            grouped_rows_score_like_single_rows(vo);
        }
    }

    fn grouped_rows_score_like_single_rows(vo: usize) {
        let (rows, seq) = (2 * ROW_GROUP + 3, 5);
        let logits: Vec<f32> = (0..rows * vo)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.11)
            .collect();
        let tokens: Vec<u32> = (0..rows).map(|i| (i * 7 % vo) as u32).collect();
        for kind in [LossKind::CrossEntropy, LossKind::StableMax] {
            for targets in [
                Targets::Labels(&tokens),
                Targets::PreviousToken {
                    tokens: &tokens,
                    seq,
                },
            ] {
                let scoring = (Some(1.0 / rows as f32), kind);
                let mut all = logits.clone();
                let mut sums = (0.0, 0);
                score_rows(&mut all, vo, 0, targets, scoring, &mut sums);
                let mut one_by_one = (0.0, 0);
                for (r, row) in logits.chunks_exact(vo).enumerate() {
                    let mut row = row.to_vec();
                    score_rows(&mut row, vo, r, targets, scoring, &mut one_by_one);
                    assert_eq!(row, all[r * vo..(r + 1) * vo], "{kind:?} row {r}");
                }
                assert_eq!(sums.0.to_bits(), one_by_one.0.to_bits(), "{kind:?}");
                assert_eq!(sums.1, one_by_one.1);
                assert!(sums.0 > 0.0);
            }
        }
        // A row without a target (position 0 of a sequence) has no loss and a zero gradient.
        let mut row = logits[..vo].to_vec();
        let mut sums = (0.0, 0);
        let targets = Targets::PreviousToken {
            tokens: &tokens,
            seq,
        };
        score_rows(
            &mut row,
            vo,
            0,
            targets,
            (Some(1.0), LossKind::CrossEntropy),
            &mut sums,
        );
        assert_eq!(sums, (0.0, 0));
        assert!(row.iter().all(|&v| v == 0.0));
    }
}
