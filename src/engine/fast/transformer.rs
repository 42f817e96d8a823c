//! Forward and backward passes of a transformer on one chunk of rows, written by hand:
//! TransformerLens's models (without normalization, or with `LN`/`LNPre` before attention, MLP and
//! unembedding) and seed 004's BitNet (its quantized weights, attention over all positions scaled by
//! 1/√d_model, a final RMSNorm with γ).
//!
//! Two savings over the general path, both exact:
//! - a last-position loss reads only the last position, so the last block's attention queries, MLP
//!   and the unembedding run at that position alone (a per-position loss runs them everywhere);
//! - without normalization, block 0's input is `W_E[token] + W_pos[pos]`, so its Q/K/V are looked up
//!   from `W_E·W_QKV` and `W_pos·W_QKV` instead of multiplied per row (the backward pass mirrors it);
//!   with a LayerNorm but no positional embedding (seed 003: `W_pos` fixed at zero), block 0's
//!   LayerNorm reads the token's embedding alone, so `LN(W_E)·W_QKV` is looked up per token and the
//!   LayerNorm's backward runs once per vocabulary entry instead of once per position.

use crate::engine::fast::norm::{self, DxBase, NormCache};
use crate::engine::fast::ops::{
    activation_backward, attention_backward, attention_forward, dot, embed_backward, embed_forward,
    hidden_activation, mm_nn, mm_nn_acc, mm_nt_with_t, mm_tn, mm_tn_acc, AttnShape, FastAct,
};
use crate::engine::fast::{score_rows, sized, zeroed, ChunkStats, Targets};
use crate::engine::loss::LossKind;
use crate::linalg::kernels::{add_bias, add_column_sums};
use crate::model::bitnet::BitNetConfig;
use crate::model::transformer::config::{Normalization, PositionalEmbedding};
use crate::model::transformer::{MlpSlots, NormSlots, TransformerTree};
use crate::model::{Params, Slot, TransformerConfig};

/// Weights of one block in the layouts the kernels want.
#[derive(Clone)]
pub struct BlockWeights {
    /// `[d_model, 3·n_heads·d_head]`, columns Q | K | V, each head-major.
    pub w_qkv: Vec<f32>,
    /// `[3·n_heads·d_head]`.
    pub b_qkv: Vec<f32>,
    /// `[n_heads·d_head, d_model]` (TransformerLens `W_O` flattened).
    pub w_o: Vec<f32>,
    /// `[d_model]`.
    pub b_o: Vec<f32>,
    /// `[d_model, d_mlp]` (empty when attention-only).
    pub w_in: Vec<f32>,
    /// `[d_mlp]`.
    pub b_in: Vec<f32>,
    /// `[d_mlp, d_model]`.
    pub w_out: Vec<f32>,
    /// `[d_model]`.
    pub b_out: Vec<f32>,
    /// `ln1.w`, `ln1.b`, `ln2.w`, `ln2.b` `[d_model]` each (empty without an affine LayerNorm).
    pub ln: [Vec<f32>; 4],
}

/// All weights (or gradients) of a model in kernel layout.
#[derive(Clone)]
pub struct Weights {
    /// `[d_vocab, d_model]`.
    pub w_e: Vec<f32>,
    /// `[n_ctx, d_model]`.
    pub w_pos: Vec<f32>,
    /// One entry per block.
    pub blocks: Vec<BlockWeights>,
    /// `[d_model, d_vocab_out]`.
    pub w_u: Vec<f32>,
    /// `[d_vocab_out]`.
    pub b_u: Vec<f32>,
    /// `[d_model]`: the final RMSNorm's γ (empty without one).
    pub gamma: Vec<f32>,
    /// `ln_final.w`, `ln_final.b` (empty without an affine LayerNorm).
    pub ln_final: [Vec<f32>; 2],
}

/// Block 0's Q/K/V per token and per position: `W_E·W_QKV` and `W_pos·W_QKV + b_QKV`, or with a
/// LayerNorm (and `W_pos` ≡ 0) `LN(W_E)·W_QKV` and `b_QKV` at every position.
pub struct Lookup {
    per_token: Vec<f32>,
    per_position: Vec<f32>,
    /// Block 0's LayerNorm on every token's embedding, for the backward pass (with a LayerNorm).
    ln: Option<NormCache>,
}

impl Lookup {
    /// The Q/K/V of the rows of `tokens` (`seq` each), `[rows·seq, n3]`, looked up into `out`.
    #[inline(always)]
    fn qkv<'o>(&self, out: &'o mut Vec<f32>, tokens: &[u32], seq: usize, n3: usize) -> &'o [f32] {
        let qkv = sized(out, tokens.len() * n3);
        embed_forward(qkv, n3, tokens, seq, &self.per_token, &self.per_position);
        qkv
    }
}

/// Shapes and the architecture switches the passes follow.
#[derive(Clone, Copy)]
pub struct Dims {
    d_model: usize,
    n_heads: usize,
    d_head: usize,
    d_mlp: usize,
    d_vocab: usize,
    d_vocab_out: usize,
    n_ctx: usize,
    act: FastAct,
    attn_only: bool,
    /// Factor on the attention scores.
    scale: f32,
    /// Queries see only keys at or before their position.
    causal: bool,
    /// An RMSNorm x/max(‖x‖, 1e-12)·√d_model·γ before the unembedding (BitNet's `to_logits.0`).
    final_rms: bool,
    /// LayerNorm before attention, MLP and unembedding.
    norm: Option<Normalization>,
    /// Its epsilon.
    eps: f32,
    /// `W_pos` is a fixed (untrained) parameter: a model without positional embeddings.
    fixed_pos: bool,
}

impl Dims {
    /// A TransformerLens model's shapes: causal attention scaled by 1/√d_head, no final norm.
    pub fn new(cfg: &TransformerConfig) -> Self {
        Dims {
            d_model: cfg.d_model,
            n_heads: cfg.n_heads,
            d_head: cfg.d_head,
            d_mlp: if cfg.attn_only { 0 } else { cfg.d_mlp },
            d_vocab: cfg.d_vocab,
            d_vocab_out: cfg.d_vocab_out,
            n_ctx: cfg.n_ctx,
            act: FastAct::of(cfg.act_fn).expect("fast::plan refuses exact GELU"),
            attn_only: cfg.attn_only,
            scale: 1.0 / (cfg.d_head as f32).sqrt(),
            causal: true,
            final_rms: false,
            norm: cfg.normalization_type,
            eps: cfg.eps as f32,
            fixed_pos: cfg.positional_embedding_type == PositionalEmbedding::None,
        }
    }

    /// A BitNet model's shapes and switches.
    pub fn bitnet(cfg: &BitNetConfig) -> Self {
        Dims {
            d_model: cfg.d_model,
            n_heads: cfg.n_heads,
            d_head: cfg.d_head(),
            d_mlp: cfg.d_mlp,
            d_vocab: cfg.d_vocab,
            d_vocab_out: cfg.d_vocab_out,
            n_ctx: cfg.n_ctx,
            act: FastAct::Relu,
            attn_only: false,
            scale: cfg.score_scale() as f32,
            causal: cfg.causal,
            final_rms: true,
            norm: None,
            eps: 0.0,
            fixed_pos: false,
        }
    }

    /// The attention op's shape for a chunk of `rows` rows of `seq` tokens with `tq` queries.
    fn attn(&self, rows: usize, seq: usize, tq: usize) -> AttnShape {
        AttnShape {
            rows,
            seq,
            tq,
            n_heads: self.n_heads,
            d_head: self.d_head,
            scale: self.scale,
            causal: self.causal,
        }
    }

    fn hd(&self) -> usize {
        self.n_heads * self.d_head
    }

    /// Whether the architecture lets block 0's Q/K/V be looked up per token (and position): always
    /// without normalization (block 0's input is then linear in the two embeddings), and with a
    /// LayerNorm when no position is embedded (`W_pos` fixed at zero), so that the LayerNorm reads
    /// the token's embedding alone.
    pub fn block0_lookup(&self) -> bool {
        self.norm.is_none() || self.fixed_pos
    }

    /// [`Dims::block0_lookup`] for weights `w`: a fixed `W_pos` must also be all zeros to be ignored.
    fn lookup(&self, w: &Weights) -> bool {
        self.block0_lookup() && (self.norm.is_none() || w.w_pos.iter().all(|&v| v == 0.0))
    }
}

/// An affine LayerNorm's weight, `None` when absent (`LNPre`).
fn weight(ln: &[Vec<f32>]) -> Option<&[f32]> {
    Some(&ln[0][..]).filter(|w| !w.is_empty())
}

/// Gradient buffers of an affine LayerNorm's `w` and `b`, `None` when absent.
fn grads<'a>(w: &'a mut [f32], b: &'a mut [f32]) -> Option<(&'a mut [f32], &'a mut [f32])> {
    (!w.is_empty()).then_some((w, b))
}

/// An affine LayerNorm's `[w, b]` as stored, or two empty vectors.
fn norm_params(slots: Option<NormSlots>, params: &Params) -> [Vec<f32>; 2] {
    slots.map_or([Vec::new(), Vec::new()], |n| {
        [params[n.w].to_vec(), params[n.b].to_vec()]
    })
}

/// `(w, b)` of an affine LayerNorm, `None` for an empty (absent or `LNPre`) one.
fn affine<'a>(w: &'a [f32], b: &'a [f32]) -> Option<(&'a [f32], &'a [f32])> {
    (!w.is_empty()).then_some((w, b))
}

impl Weights {
    /// Gathers `params` (TransformerLens layout) into kernel layout.
    pub fn from_params(cfg: &TransformerConfig, tree: &TransformerTree, params: &Params) -> Self {
        let d = Dims::new(cfg);
        let (dm, hd, dh) = (d.d_model, d.hd(), d.d_head);
        let blocks = tree
            .blocks
            .iter()
            .map(|slots| {
                let mut w_qkv = vec![0.0; dm * 3 * hd];
                let mut b_qkv = vec![0.0; 3 * hd];
                for (which, (w, b)) in slots.attn.qkv().into_iter().enumerate() {
                    let w = &params[w];
                    for h in 0..d.n_heads {
                        for r in 0..dm {
                            let src = &w[(h * dm + r) * dh..(h * dm + r + 1) * dh];
                            let at = r * 3 * hd + which * hd + h * dh;
                            w_qkv[at..at + dh].copy_from_slice(src);
                        }
                    }
                    b_qkv[which * hd..(which + 1) * hd].copy_from_slice(&params[b]);
                }
                let mlp = |pick: fn(&MlpSlots) -> Slot| {
                    slots.mlp.map_or(Vec::new(), |m| params[pick(&m)].to_vec())
                };
                let [ln1_w, ln1_b] = norm_params(slots.ln1, params);
                let [ln2_w, ln2_b] = norm_params(slots.ln2, params);
                BlockWeights {
                    w_qkv,
                    b_qkv,
                    w_o: params[slots.attn.w_o].to_vec(),
                    b_o: params[slots.attn.b_o].to_vec(),
                    w_in: mlp(|m| m.w_in),
                    b_in: mlp(|m| m.b_in),
                    w_out: mlp(|m| m.w_out),
                    b_out: mlp(|m| m.b_out),
                    ln: [ln1_w, ln1_b, ln2_w, ln2_b],
                }
            })
            .collect();
        Weights {
            w_e: params[tree.embed].to_vec(),
            w_pos: params[tree.pos].to_vec(),
            blocks,
            w_u: params[tree.unembed_w].to_vec(),
            b_u: params[tree.unembed_b].to_vec(),
            gamma: Vec::new(),
            ln_final: norm_params(tree.ln_final, params),
        }
    }

    /// Zeros in the same layout (a gradient accumulator).
    pub fn zeros_like(&self) -> Self {
        let z = |v: &Vec<f32>| vec![0.0; v.len()];
        Weights {
            w_e: z(&self.w_e),
            w_pos: z(&self.w_pos),
            blocks: self
                .blocks
                .iter()
                .map(|b| BlockWeights {
                    w_qkv: z(&b.w_qkv),
                    b_qkv: z(&b.b_qkv),
                    w_o: z(&b.w_o),
                    b_o: z(&b.b_o),
                    w_in: z(&b.w_in),
                    b_in: z(&b.b_in),
                    w_out: z(&b.w_out),
                    b_out: z(&b.b_out),
                    ln: b.ln.clone().map(|v| z(&v)),
                })
                .collect(),
            w_u: z(&self.w_u),
            b_u: z(&self.b_u),
            gamma: z(&self.gamma),
            ln_final: self.ln_final.clone().map(|v| z(&v)),
        }
    }

    /// Sets to zero, as gradients about to be summed into, every buffer but the blocks' weight
    /// matrices, which the backward pass overwrites (each block's `W_QKV`, `W_O`, `W_in`, `W_out`
    /// gradient is one product written whole).
    fn zero_sums(&mut self) {
        let top = [
            &mut self.w_e,
            &mut self.w_pos,
            &mut self.w_u,
            &mut self.b_u,
            &mut self.gamma,
        ];
        let blocks = self.blocks.iter_mut().flat_map(|b| {
            let biases = [&mut b.b_qkv, &mut b.b_o, &mut b.b_in, &mut b.b_out];
            b.ln.iter_mut().chain(biases)
        });
        (top.into_iter().chain(&mut self.ln_final).chain(blocks)).for_each(|v| v.fill(0.0));
    }

    /// Every buffer, in one fixed order (the chunks' gradients are summed buffer by buffer).
    pub(crate) fn buffers_mut(&mut self) -> Vec<&mut Vec<f32>> {
        let mut v = vec![
            &mut self.w_e,
            &mut self.w_pos,
            &mut self.w_u,
            &mut self.b_u,
            &mut self.gamma,
        ];
        v.extend(self.ln_final.iter_mut());
        for b in &mut self.blocks {
            v.extend(b.ln.iter_mut());
            v.extend([
                &mut b.w_qkv,
                &mut b.b_qkv,
                &mut b.w_o,
                &mut b.b_o,
                &mut b.w_in,
                &mut b.b_in,
                &mut b.w_out,
                &mut b.b_out,
            ]);
        }
        v
    }

    /// Writes these values (gradients) into `out` in TransformerLens layout, for trainable entries.
    pub fn write_params(
        &self,
        cfg: &TransformerConfig,
        tree: &TransformerTree,
        out: &mut Params,
        trainable: &[bool],
    ) {
        let d = Dims::new(cfg);
        let (dm, hd, dh) = (d.d_model, d.hd(), d.d_head);
        let put = |out: &mut Params, slot: Slot, src: &[f32]| {
            if trainable[slot.index()] {
                out[slot].copy_from_slice(src);
            }
        };
        put(out, tree.embed, &self.w_e);
        put(out, tree.pos, &self.w_pos);
        put(out, tree.unembed_w, &self.w_u);
        put(out, tree.unembed_b, &self.b_u);
        let put_norm = |out: &mut Params, slots: Option<NormSlots>, [w, b]: [&Vec<f32>; 2]| {
            if let Some(n) = slots {
                put(out, n.w, w);
                put(out, n.b, b);
            }
        };
        put_norm(out, tree.ln_final, [&self.ln_final[0], &self.ln_final[1]]);
        for (slots, b) in tree.blocks.iter().zip(&self.blocks) {
            put_norm(out, slots.ln1, [&b.ln[0], &b.ln[1]]);
            put_norm(out, slots.ln2, [&b.ln[2], &b.ln[3]]);
            let a = &slots.attn;
            put(out, a.w_o, &b.w_o);
            put(out, a.b_o, &b.b_o);
            if let Some(m) = &slots.mlp {
                put(out, m.w_in, &b.w_in);
                put(out, m.b_in, &b.b_in);
                put(out, m.w_out, &b.w_out);
                put(out, m.b_out, &b.b_out);
            }
            for (which, (w, bias)) in a.qkv().into_iter().enumerate() {
                put(out, bias, &b.b_qkv[which * hd..(which + 1) * hd]);
                if !trainable[w.index()] {
                    continue;
                }
                let dst = &mut out[w];
                for h in 0..d.n_heads {
                    for r in 0..dm {
                        let at = r * 3 * hd + which * hd + h * dh;
                        dst[(h * dm + r) * dh..(h * dm + r + 1) * dh]
                            .copy_from_slice(&b.w_qkv[at..at + dh]);
                    }
                }
            }
        }
    }

    /// Block 0's per-token and per-position Q/K/V tables (see [`Lookup`]).
    pub fn lookup(&self, d: &Dims) -> Lookup {
        let (dm, n3) = (d.d_model, 3 * d.hd());
        let b0 = &self.blocks[0];
        let ln = d.norm.map(|_| {
            let [w, b, ..] = &b0.ln;
            let mut c = NormCache::default();
            norm::forward(&self.w_e, dm, d.eps, affine(w, b), &mut c);
            c
        });
        let input = ln.as_ref().map_or(&self.w_e, |c| &c.y);
        let mut per_token = vec![0.0; d.d_vocab * n3];
        mm_nn(&mut per_token, input, &b0.w_qkv, d.d_vocab, n3, dm);
        let mut per_position = vec![0.0; d.n_ctx * n3];
        if ln.is_none() {
            mm_nn(&mut per_position, &self.w_pos, &b0.w_qkv, d.n_ctx, n3, dm);
        }
        add_bias(&mut per_position, &b0.b_qkv);
        Lookup {
            per_token,
            per_position,
            ln,
        }
    }
}

/// What the forward pass of one block keeps for the backward pass.
#[derive(Default)]
struct BlockCache {
    /// Block input at every position `[rows·seq, d_model]` (unused for block 0, which is looked up).
    x: Vec<f32>,
    /// `[rows·seq, 3·hd]`; for block 0 looked up, only the rows of the last block of rows the
    /// attention read ([`lookup_blocks`]).
    qkv: Vec<f32>,
    /// `[rows, tq, n_heads, seq]`, or key-major `[rows, n_heads, seq, tq]` where the queries are
    /// many ([`crate::engine::fast::ops::BATCHED_QUERIES`]); masked entries are never read.
    pattern: Vec<f32>,
    /// `[rows·tq, hd]`.
    z: Vec<f32>,
    /// resid_mid at query positions `[rows·tq, d_model]`, kept only where the backward pass reads
    /// it (an MLP without a LayerNorm before it); else empty, built in the block's output.
    mid: Vec<f32>,
    /// `[rows·tq, d_mlp]` (empty under ReLU, see [`hidden_activation`]).
    pre: Vec<f32>,
    /// `[rows·tq, d_mlp]`.
    post: Vec<f32>,
    /// LayerNorm before attention (every position) and before the MLP (query positions).
    ln1: NormCache,
    ln2: NormCache,
}

/// Buffers one thread reuses from step to step, so the hot loop allocates nothing.
#[derive(Default)]
pub struct Workspace {
    blocks: Vec<BlockCache>,
    /// resid_post of the last block at the last position `[rows, d_model]`.
    last: Vec<f32>,
    /// With a final RMSNorm: `last` normalized (x·√d/‖x‖, before γ) and each row's ‖x‖ (clamped).
    normed: Vec<f32>,
    norms: Vec<f32>,
    /// What the unembedding reads: `last`, or `normed · γ`.
    unembed_in: Vec<f32>,
    logits: Vec<f32>,
    dout: Vec<f32>,
    dpre: Vec<f32>,
    dz: Vec<f32>,
    dqkv: Vec<f32>,
    /// Block 0's Q/K/V of a few rows, looked up again for the backward pass.
    qkv: Vec<f32>,
    dx: Vec<f32>,
    g_tok: Vec<f32>,
    g_pos: Vec<f32>,
    /// The final LayerNorm.
    ln_final: NormCache,
    /// d(loss)/d(a LayerNorm's output).
    dnorm: Vec<f32>,
    /// Gradients of the last backward pass.
    pub grads: Option<Weights>,
}

/// How a chunk's predictions are scored.
#[derive(Debug, Clone, Copy)]
pub struct Scoring {
    /// Tokens per row.
    pub seq: usize,
    /// Every position predicts its previous token (else `labels` at the last position).
    pub per_position: bool,
    /// The loss.
    pub loss: LossKind,
}

/// A model prepared for one optimizer step: weights in kernel layout plus block 0's lookup tables.
pub struct Prepared<'a> {
    w: &'a Weights,
    /// Block 0's tables, where [`Dims::lookup`] allows them.
    lookup: Option<Lookup>,
    /// The weights' transposes, for a pass with a backward.
    t: Option<Transposed>,
    d: Dims,
}

/// The weights the backward pass multiplies by on their other side, stored transposed once a step:
/// `gemm` reads a row-major `W` as `Wᵀ` only by gathering it, column by column, into its packed
/// layout, and it did so again in every chunk's every product. Same values, same products, same sums.
struct Transposed {
    /// Per block: `W_QKVᵀ` `[3·hd, d_model]`, `W_Oᵀ` `[d_model, hd]`, `W_inᵀ` `[d_mlp, d_model]`,
    /// `W_outᵀ` `[d_model, d_mlp]`.
    blocks: Vec<[Vec<f32>; 4]>,
    /// `W_Uᵀ` `[d_vocab_out, d_model]`.
    w_u: Vec<f32>,
}

impl Transposed {
    fn new(d: &Dims, w: &Weights) -> Self {
        let (dm, hd) = (d.d_model, d.hd());
        let blocks = w
            .blocks
            .iter()
            .map(|b| {
                [
                    transpose(&b.w_qkv, dm, 3 * hd),
                    transpose(&b.w_o, hd, dm),
                    transpose(&b.w_in, dm, b.w_in.len() / dm),
                    transpose(&b.w_out, b.w_out.len() / dm, dm),
                ]
            })
            .collect();
        Transposed {
            blocks,
            w_u: transpose(&w.w_u, dm, d.d_vocab_out),
        }
    }
}

impl<'a> Prepared<'a> {
    /// Prepares `w` (laid out for `d`) for passes over batches, with a backward pass if `train`.
    pub fn new(d: Dims, w: &'a Weights, train: bool) -> Self {
        let lookup = d.lookup(w).then(|| w.lookup(&d));
        let t = train.then(|| Transposed::new(&d, w));
        Prepared { lookup, t, w, d }
    }

    /// The weights' transposes ([`Prepared::new`] made them for a pass with a backward).
    fn t(&self) -> &Transposed {
        self.t
            .as_ref()
            .expect("a backward pass needs Prepared::new(.., train: true)")
    }

    crate::linalg::kernels::simd_dispatch! {
        /// Forward (and, if `n_total` is given, backward for a mean over `n_total` predictions,
        /// leaving the gradients in `ws.grads`) on the chunk's rows of `scoring.seq` tokens, scored as
        /// `scoring` says.
        pub fn run / run_avx2 / run_avx512 => run_body(
            &self,
            ws: &mut Workspace,
            tokens: &[u32],
            labels: &[u32],
            scoring: Scoring,
            n_total: Option<usize>,
        ) -> ChunkStats
    }

    #[inline(always)]
    fn run_body(
        &self,
        ws: &mut Workspace,
        tokens: &[u32],
        labels: &[u32],
        scoring: Scoring,
        n_total: Option<usize>,
    ) -> ChunkStats {
        let Scoring {
            seq,
            per_position,
            loss,
        } = scoring;
        let rows = tokens.len() / seq;
        let d = &self.d;
        let n_layers = self.w.blocks.len();
        let out_positions = if per_position { seq } else { 1 };
        self.forward_blocks(ws, tokens, rows, seq, out_positions);
        let rows_out = rows * out_positions;
        let mut g = n_total.map(|_| {
            let mut g = ws.grads.take().unwrap_or_else(|| self.w.zeros_like());
            g.zero_sums();
            g
        });
        let targets = if per_position {
            Targets::PreviousToken { tokens, seq }
        } else {
            Targets::Labels(labels)
        };
        let inv = n_total.map(|n| 1.0 / n as f32);
        let (loss_sum, correct) =
            self.unembed_and_score(ws, rows_out, targets, (inv, loss), g.as_mut());
        let Some(mut g) = g else {
            return ChunkStats { loss_sum, correct };
        };
        if d.final_rms {
            self.final_norm_backward(ws, rows, &mut g);
        }
        if d.norm.is_some() {
            // ws.dout holds d(loss)/d(ln_final output); move it aside and write d(resid) there.
            std::mem::swap(&mut ws.dout, &mut ws.dnorm);
            let dout = sized(&mut ws.dout, rows_out * d.d_model);
            let dnorm = &ws.dnorm[..rows_out * d.d_model];
            let [w, b] = &mut g.ln_final;
            norm::backward(
                dnorm,
                &ws.ln_final,
                d.d_model,
                weight(&self.w.ln_final),
                grads(w, b),
                DxBase::Zero,
                dout,
            );
        }
        for l in (0..n_layers).rev() {
            let tq = if l + 1 == n_layers {
                out_positions
            } else {
                seq
            };
            self.block_backward(l, ws, tokens, rows, seq, tq, &mut g);
            if l > 0 {
                std::mem::swap(&mut ws.dout, &mut ws.dx);
            }
        }
        ws.grads = Some(g);
        ChunkStats { loss_sum, correct }
    }

    /// The unembedding of `ws.unembed_in`'s first `rows_out` rows and their loss against `targets`
    /// ([`score_rows`] with `(inv, loss)`), a tile of [`SCORE_TILE`] rows at a time so the logits stay
    /// in cache instead of being written out for the whole chunk; with `g` (training, `inv` = 1/n),
    /// each tile's d(loss)/d(logits) goes straight into dW_U, db_U and `ws.dout` =
    /// d(loss)/d(unembed_in). Returns the loss sum and the arg-max hits.
    #[inline(always)]
    fn unembed_and_score(
        &self,
        ws: &mut Workspace,
        rows_out: usize,
        targets: Targets,
        scoring: (Option<f32>, LossKind),
        mut g: Option<&mut Weights>,
    ) -> (f64, usize) {
        let (dm, vo) = (self.d.d_model, self.d.d_vocab_out);
        if g.is_some() {
            sized(&mut ws.dout, rows_out * dm);
        }
        let mut sums = (0.0f64, 0);
        for start in (0..rows_out).step_by(SCORE_TILE) {
            let n = SCORE_TILE.min(rows_out - start);
            let input = &ws.unembed_in[start * dm..(start + n) * dm];
            let logits = sized(&mut ws.logits, n * vo);
            self.unembed(input, logits);
            score_rows(logits, vo, start, targets, scoring, &mut sums);
            if let Some(g) = g.as_deref_mut() {
                mm_tn_acc(&mut g.w_u, input, logits, dm, vo, n);
                add_column_sums(&mut g.b_u, logits);
                let dout = &mut ws.dout[start * dm..(start + n) * dm];
                mm_nt_with_t(
                    dout,
                    logits,
                    (&self.w.w_u, &self.t().w_u),
                    (n, dm, vo),
                    false,
                );
            }
        }
        sums
    }

    /// Logits at the last position, `[rows, d_vocab_out]`, for the chunk's `tokens`.
    pub fn logits<'w>(&self, ws: &'w mut Workspace, tokens: &[u32], seq: usize) -> &'w [f32] {
        let rows = tokens.len() / seq;
        self.dispatch_last_logits(ws, tokens, rows, seq);
        &ws.logits[..rows * self.d.d_vocab_out]
    }

    crate::linalg::kernels::simd_dispatch! {
        /// [`Prepared::last_logits`] on this CPU's best build.
        fn dispatch_last_logits / last_logits_avx2 / last_logits_avx512 => last_logits(
            &self,
            ws: &mut Workspace,
            tokens: &[u32],
            rows: usize,
            seq: usize,
        )
    }

    /// The forward pass to the logits at the last position, into `ws.logits`.
    #[inline(always)]
    fn last_logits(&self, ws: &mut Workspace, tokens: &[u32], rows: usize, seq: usize) {
        self.forward_blocks(ws, tokens, rows, seq, 1);
        let logits = sized(&mut ws.logits, rows * self.d.d_vocab_out);
        self.unembed(&ws.unembed_in[..rows * self.d.d_model], logits);
    }

    /// `logits = input·W_U + b_U` for the rows of `input` (`d_model` wide).
    #[inline(always)]
    fn unembed(&self, input: &[f32], logits: &mut [f32]) {
        let (dm, vo) = (self.d.d_model, self.d.d_vocab_out);
        mm_nn(logits, input, &self.w.w_u, input.len() / dm, vo, dm);
        add_bias(logits, &self.w.b_u);
    }

    /// Every block and the final norm: what the unembedding reads at the last `out_positions`
    /// positions into `ws.unembed_in`.
    #[inline(always)]
    fn forward_blocks(
        &self,
        ws: &mut Workspace,
        tokens: &[u32],
        rows: usize,
        seq: usize,
        out_positions: usize,
    ) {
        let d = &self.d;
        let n_layers = self.w.blocks.len();
        ws.blocks.resize_with(n_layers, BlockCache::default);
        for l in 0..n_layers {
            let tq = if l + 1 == n_layers {
                out_positions
            } else {
                seq
            };
            let (current, after) = ws.blocks[l..].split_at_mut(1);
            let out = match after.first_mut() {
                Some(next) => &mut next.x,
                None => &mut ws.last,
            };
            self.block_forward(l, &mut current[0], out, tokens, rows, seq, tq);
        }
        let dm = d.d_model;
        let rows = rows * out_positions;
        if d.norm.is_some() {
            let [w, b] = &self.w.ln_final;
            norm::forward(
                &ws.last[..rows * dm],
                dm,
                d.eps,
                affine(w, b),
                &mut ws.ln_final,
            );
            // The output is what the unembedding reads (the backward pass needs only x̂ and rstd).
            std::mem::swap(&mut ws.unembed_in, &mut ws.ln_final.y);
            return;
        }
        let unembed_in = sized(&mut ws.unembed_in, rows * dm);
        if d.final_rms {
            let normed = sized(&mut ws.normed, rows * dm);
            let norms = sized(&mut ws.norms, rows);
            let root_d = (dm as f32).sqrt();
            for (r, x) in ws.last[..rows * dm].chunks_exact(dm).enumerate() {
                norms[r] = dot(x, x).sqrt().max(RMS_MIN_NORM);
                let k = root_d / norms[r];
                let y = &mut normed[r * dm..(r + 1) * dm];
                y.iter_mut().zip(x).for_each(|(o, &v)| *o = v * k);
                let u = &mut unembed_in[r * dm..(r + 1) * dm];
                u.iter_mut()
                    .zip(y.iter().zip(&self.w.gamma))
                    .for_each(|(o, (&v, &g))| *o = v * g);
            }
        } else {
            unembed_in.copy_from_slice(&ws.last[..rows * dm]);
        }
    }

    /// Backward through the final RMSNorm: `ws.dout` holds d(loss)/d(normed·γ) on entry and
    /// d(loss)/d(resid_post) on exit; dγ accumulates into `g`. With x̂ = x·√d/n and u = dout ⊙ γ:
    /// dx = (√d/n)·(u − x̂·(x̂·u)/d) (the projection term vanishes where n was clamped).
    #[inline(always)]
    fn final_norm_backward(&self, ws: &mut Workspace, rows: usize, g: &mut Weights) {
        let dm = self.d.d_model;
        let root_d = (dm as f32).sqrt();
        let mut u = vec![0.0f32; dm];
        for r in 0..rows {
            let y = &ws.normed[r * dm..(r + 1) * dm];
            let dout = &mut ws.dout[r * dm..(r + 1) * dm];
            for ((gg, &dy), &yv) in g.gamma.iter_mut().zip(dout.iter()).zip(y) {
                *gg += dy * yv;
            }
            u.iter_mut()
                .zip(dout.iter().zip(&self.w.gamma))
                .for_each(|(o, (&dy, &gm))| *o = dy * gm);
            let k = root_d / ws.norms[r];
            let proj = if ws.norms[r] > RMS_MIN_NORM {
                dot(y, &u) / dm as f32
            } else {
                0.0
            };
            for ((o, &uv), &yv) in dout.iter_mut().zip(&u).zip(y) {
                *o = k * (uv - yv * proj);
            }
        }
    }

    /// Runs block `l` on its input `c.x` (written by the previous block; block 0 looks its input up)
    /// and writes resid_post at the `tq` query positions (`tq` = 1: the last position only) into `out`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn block_forward(
        &self,
        l: usize,
        c: &mut BlockCache,
        out: &mut Vec<f32>,
        tokens: &[u32],
        rows: usize,
        seq: usize,
        tq: usize,
    ) {
        let d = &self.d;
        let b = &self.w.blocks[l];
        let (dm, hd, nh) = (d.d_model, d.hd(), d.n_heads);
        let n3 = 3 * hd;
        let lookup = self.lookup.as_ref().filter(|_| l == 0);
        if l == 0 && lookup.is_none() {
            // The embedding, materialised: a LayerNorm reads it.
            let x = sized(&mut c.x, rows * seq * dm);
            embed_forward(x, dm, tokens, seq, &self.w.w_e, &self.w.w_pos);
        }
        // Block 0's Q/K/V are looked up where the attention reads them, below.
        if lookup.is_none() {
            let qkv = sized(&mut c.qkv, rows * seq * n3);
            let input = if d.norm.is_some() {
                let [w, bias, ..] = &b.ln;
                norm::forward(
                    &c.x[..rows * seq * dm],
                    dm,
                    d.eps,
                    affine(w, bias),
                    &mut c.ln1,
                );
                &c.ln1.y
            } else {
                &c.x
            };
            mm_nn(qkv, input, &b.w_qkv, rows * seq, n3, dm);
            add_bias(qkv, &b.b_qkv);
        }
        // Residual stream at the query positions. The backward pass reads resid_mid only as the
        // MLP's input where no LayerNorm comes before it; otherwise resid_mid is built in `out`
        // itself, which the MLP then adds to (resid_post = resid_mid + MLP), without a copy.
        let first_q = seq - tq;
        let n_out = rows * tq * dm;
        let out = sized(out, n_out);
        let keep_mid = !d.attn_only && d.norm.is_none();
        let mid = if keep_mid {
            sized(&mut c.mid, n_out)
        } else {
            &mut out[..]
        };
        for r in 0..rows {
            for qi in 0..tq {
                let t = first_q + qi;
                let dst = &mut mid[(r * tq + qi) * dm..(r * tq + qi + 1) * dm];
                if lookup.is_some() {
                    let tok = tokens[r * seq + t] as usize;
                    let e = &self.w.w_e[tok * dm..(tok + 1) * dm];
                    let p = &self.w.w_pos[t * dm..(t + 1) * dm];
                    dst.iter_mut()
                        .zip(e.iter().zip(p))
                        .for_each(|(o, (a, b))| *o = a + b);
                } else {
                    dst.copy_from_slice(&c.x[(r * seq + t) * dm..(r * seq + t + 1) * dm]);
                }
            }
        }
        let pattern = sized(&mut c.pattern, rows * tq * nh * seq);
        let z = sized(&mut c.z, rows * tq * hd);
        match lookup {
            None => {
                let qkv = &c.qkv[..rows * seq * n3];
                attention_forward(d.attn(rows, seq, tq), qkv, pattern, z)
            }
            // A few rows at a time, their Q/K/V looked up into cache-sized scratch (the backward
            // pass looks them up again): never written out for the whole chunk.
            Some(lookup) => {
                for (r0, n) in lookup_blocks(rows, seq * n3) {
                    let qkv = lookup.qkv(&mut c.qkv, &tokens[r0 * seq..(r0 + n) * seq], seq, n3);
                    let pattern = &mut pattern[r0 * tq * nh * seq..(r0 + n) * tq * nh * seq];
                    let z = &mut z[r0 * tq * hd..(r0 + n) * tq * hd];
                    attention_forward(d.attn(n, seq, tq), qkv, pattern, z);
                }
            }
        }
        mm_nn_acc(mid, z, &b.w_o, rows * tq, dm, hd);
        add_bias(mid, &b.b_o);
        if keep_mid {
            out.copy_from_slice(&c.mid[..n_out]);
        }
        if d.attn_only {
            return;
        }
        let m = d.d_mlp;
        let input = if d.norm.is_some() {
            let [.., w, bias] = &b.ln;
            norm::forward(out, dm, d.eps, affine(w, bias), &mut c.ln2);
            &c.ln2.y
        } else {
            &c.mid[..n_out]
        };
        let (pre, post) = (&mut c.pre, &mut c.post);
        hidden_activation(d.act, &b.b_in, rows * tq * m, pre, post, |h| {
            mm_nn(h, input, &b.w_in, rows * tq, m, dm)
        });
        mm_nn_acc(out, post, &b.w_out, rows * tq, dm, m);
        add_bias(out, &b.b_out);
    }

    /// Backward through block `l` given d(loss)/d(resid_post) at its query positions in `ws.dout`;
    /// accumulates parameter gradients into `g` and leaves d(loss)/d(block input) at every position in
    /// `ws.dx` (block 0 folds it into the embedding gradients instead).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn block_backward(
        &self,
        l: usize,
        ws: &mut Workspace,
        tokens: &[u32],
        rows: usize,
        seq: usize,
        tq: usize,
        g: &mut Weights,
    ) {
        let d = &self.d;
        let b = &self.w.blocks[l];
        let c = &ws.blocks[l];
        let gb = &mut g.blocks[l];
        // Each weight with its transpose, for `mm_nt_with_t`.
        let [t_qkv, t_o, t_in, t_out] = &self.t().blocks[l];
        let (w_qkv, w_o) = ((&b.w_qkv[..], &t_qkv[..]), (&b.w_o[..], &t_o[..]));
        let (w_in, w_out) = ((&b.w_in[..], &t_in[..]), (&b.w_out[..], &t_out[..]));
        let (dm, hd) = (d.d_model, d.hd());
        let n3 = 3 * hd;
        let nq = rows * tq;
        let dmid = &mut ws.dout[..nq * dm];
        if !d.attn_only {
            let m = d.d_mlp;
            mm_tn(&mut gb.w_out, &c.post, dmid, m, dm, nq);
            add_column_sums(&mut gb.b_out, dmid);
            let dpre = sized(&mut ws.dpre, nq * m);
            mm_nt_with_t(dpre, dmid, w_out, (nq, m, dm), false);
            activation_backward(d.act, &c.pre, &c.post, dpre);
            let input = if d.norm.is_some() { &c.ln2.y } else { &c.mid };
            mm_tn(&mut gb.w_in, input, dpre, dm, m, nq);
            add_column_sums(&mut gb.b_in, dpre);
            if d.norm.is_some() {
                let dn = sized(&mut ws.dnorm, nq * dm);
                mm_nt_with_t(dn, dpre, w_in, (nq, dm, m), false);
                let [.., w, bias] = &mut gb.ln;
                let (w, bias) = (weight(&b.ln[2..]), grads(w, bias));
                norm::backward(dn, &c.ln2, dm, w, bias, DxBase::Dx, dmid);
            } else {
                mm_nt_with_t(dmid, dpre, w_in, (nq, dm, m), true);
            }
        }
        let dmid = &ws.dout[..nq * dm];
        mm_tn(&mut gb.w_o, &c.z, dmid, hd, dm, nq);
        add_column_sums(&mut gb.b_o, dmid);
        let dz = sized(&mut ws.dz, nq * hd);
        mm_nt_with_t(dz, dmid, w_o, (nq, hd, dm), false);
        let lookup = self.lookup.as_ref().filter(|_| l == 0);
        let Some(lookup) = lookup else {
            let dqkv = zeroed(&mut ws.dqkv, rows * seq * n3);
            attention_backward(d.attn(rows, seq, tq), &c.qkv, &c.pattern, dz, dqkv);
            // d(block input): the residual path plus the Q/K/V projections (every position is
            // written below when every position is a query). With a LayerNorm and every position
            // a query, the LayerNorm's backward stores its gradient onto the residual's instead.
            let onto_residual = d.norm.is_some() && tq == seq;
            let dx = if tq == seq {
                sized(&mut ws.dx, rows * seq * dm)
            } else {
                zeroed(&mut ws.dx, rows * seq * dm)
            };
            let first_q = seq - tq;
            if !onto_residual {
                for r in 0..rows {
                    for qi in 0..tq {
                        let t = first_q + qi;
                        dx[(r * seq + t) * dm..(r * seq + t + 1) * dm]
                            .copy_from_slice(&dmid[(r * tq + qi) * dm..(r * tq + qi + 1) * dm]);
                    }
                }
            }
            add_column_sums(&mut gb.b_qkv, dqkv);
            let input = if d.norm.is_some() { &c.ln1.y } else { &c.x };
            let n = rows * seq;
            mm_tn(&mut gb.w_qkv, input, dqkv, dm, n3, n);
            if d.norm.is_some() {
                let dn = sized(&mut ws.dnorm, n * dm);
                mm_nt_with_t(dn, dqkv, w_qkv, (n, dm, n3), false);
                let [w, bias, ..] = &mut gb.ln;
                let (w, bias) = (weight(&b.ln), grads(w, bias));
                let base = if onto_residual {
                    DxBase::Onto(dmid)
                } else {
                    DxBase::Dx
                };
                norm::backward(dn, &c.ln1, dm, w, bias, base, dx);
            } else {
                mm_nt_with_t(dx, dqkv, w_qkv, (n, dm, n3), true);
            }
            if l == 0 {
                embed_backward(dx, dm, tokens, (seq, seq), &mut g.w_e, &mut g.w_pos);
            }
            return;
        };
        // Block 0, a few rows at a time as in the forward pass: their Q/K/V looked up again, and
        // their gradients folded per token and per position (mirroring the lookup) and into db_QKV
        // while in cache; the same sums in the same order as over the whole chunk at once.
        let (dv, nctx, nh) = (d.d_vocab, d.n_ctx, d.n_heads);
        let g_tok = zeroed(&mut ws.g_tok, dv * n3);
        let g_pos = zeroed(&mut ws.g_pos, nctx * n3);
        for (r0, n) in lookup_blocks(rows, seq * n3) {
            let dqkv = zeroed(&mut ws.dqkv, n * seq * n3);
            let qkv = lookup.qkv(&mut ws.qkv, &tokens[r0 * seq..(r0 + n) * seq], seq, n3);
            let pattern = &c.pattern[r0 * tq * nh * seq..(r0 + n) * tq * nh * seq];
            let dz = &dz[r0 * tq * hd..(r0 + n) * tq * hd];
            attention_backward(d.attn(n, seq, tq), qkv, pattern, dz, dqkv);
            add_column_sums(&mut gb.b_qkv, dqkv);
            let tokens = &tokens[r0 * seq..(r0 + n) * seq];
            embed_backward(dqkv, n3, tokens, (seq, seq), g_tok, g_pos);
        }
        match &lookup.ln {
            None => {
                mm_tn(&mut gb.w_qkv, &self.w.w_e, g_tok, dm, n3, dv);
                mm_tn_acc(&mut gb.w_qkv, &self.w.w_pos, g_pos, dm, n3, nctx);
                mm_nt_with_t(&mut g.w_e, g_tok, w_qkv, (dv, dm, n3), true);
                mm_nt_with_t(&mut g.w_pos, g_pos, w_qkv, (nctx, dm, n3), true);
            }
            // The LayerNorm per token: its backward is linear in d(output), so the per-token sums
            // of the positions' gradients go through it once each (the fixed W_pos gets none).
            Some(ln) => {
                mm_tn(&mut gb.w_qkv, &ln.y, g_tok, dm, n3, dv);
                let dn = sized(&mut ws.dnorm, dv * dm);
                mm_nt_with_t(dn, g_tok, w_qkv, (dv, dm, n3), false);
                let [w, bias, ..] = &mut gb.ln;
                let (w, bias) = (weight(&b.ln), grads(w, bias));
                norm::backward(dn, ln, dm, w, bias, DxBase::Dx, &mut g.w_e);
            }
        }
        // The residual path: d(resid_post) at the query positions goes straight to the embeddings.
        embed_backward(dmid, dm, tokens, (seq, tq), &mut g.w_e, &mut g.w_pos);
    }
}

/// Block 0's Q/K/V values (and as many gradients) its passes look up and use at a time: 64 KB,
/// which stay in a core's L2 cache from the lookup through the attention to the fold.
const LOOKUP_BLOCK_VALUES: usize = 16 * 1024;

/// The blocks of whole rows, `(first row, rows)`, that block 0's passes take at a time from a
/// chunk of `rows` rows of `per_row` Q/K/V values ([`LOOKUP_BLOCK_VALUES`]).
#[inline(always)]
fn lookup_blocks(rows: usize, per_row: usize) -> impl Iterator<Item = (usize, usize)> {
    let block = (LOOKUP_BLOCK_VALUES / per_row.max(1)).max(1);
    (0..rows)
        .step_by(block)
        .map(move |r0| (r0, block.min(rows - r0)))
}

/// Rows of logits [`Prepared::unembed_and_score`] computes, scores and back-propagates at a time:
/// 256 rows of a 300-token vocabulary are 300 KB, well inside a core's L2 cache.
const SCORE_TILE: usize = 256;

/// The floor on ‖x‖ in BitNet's final RMSNorm (`F.normalize`'s eps).
const RMS_MIN_NORM: f32 = 1e-12;

/// The transpose of a row-major `rows × cols` matrix.
pub(super) fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; m.len()];
    crate::linalg::transpose::transpose(m, rows, cols, &mut t);
    t
}
