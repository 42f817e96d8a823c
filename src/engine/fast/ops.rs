//! The fast engine's passes as ops, llm.c-style: each op's forward sits beside its backward, both on
//! plain row-major slices, each checked against finite differences below (LayerNorm's pair lives in
//! [`super::norm`], the losses in [`super`]). The block passes in [`super::transformer`] and
//! [`super::mlp`] are sequences of these calls. Everything is `#[inline(always)]` so the AVX2 build
//! of a pass compiles its ops into it.

use crate::linalg::kernels::{exp_f32, gelu_new, gelu_new_grad, matmul, matmul_strided};
use crate::model::ActFn;

/// `out[m×n] = a[m×k] · b[k×n]`.
#[inline(always)]
pub fn mm_nn(out: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize) {
    matmul(out, a, b, m, n, k, false, false, false);
}

/// `out[m×n] += a[m×k] · b[k×n]`.
#[inline(always)]
pub fn mm_nn_acc(out: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize) {
    matmul(out, a, b, m, n, k, false, false, true);
}

/// `out[m×n] = a[m×k] · bᵀ` with `b` stored `[n×k]`: a layer's input gradient from its output's.
#[inline(always)]
pub fn mm_nt(out: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize) {
    matmul(out, a, b, m, n, k, false, true, false);
}

/// `out[m×n] += a[m×k] · bᵀ` with `b` stored `[n×k]`.
#[inline(always)]
pub fn mm_nt_acc(out: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize) {
    matmul(out, a, b, m, n, k, false, true, true);
}

/// `out[m×n] = aᵀ · b` with `a` stored `[k×m]`: a weight's gradient from its input and its output's
/// gradient.
#[inline(always)]
pub fn mm_tn(out: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize) {
    matmul(out, a, b, m, n, k, true, false, false);
}

/// `out[m×n] += aᵀ · b` with `a` stored `[k×m]`.
#[inline(always)]
pub fn mm_tn_acc(out: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize) {
    matmul(out, a, b, m, n, k, true, false, true);
}

/// Embedding forward: row i of `out` (`width` wide) = row `tokens[i]` of `per_token` + row
/// `i % seq` of `per_position` (block 0's input, or its looked-up Q/K/V).
#[inline(always)]
pub fn embed_forward(
    out: &mut [f32],
    width: usize,
    tokens: &[u32],
    seq: usize,
    per_token: &[f32],
    per_position: &[f32],
) {
    for (i, row) in out.chunks_exact_mut(width).enumerate() {
        let (tok, t) = (tokens[i] as usize, i % seq);
        let a = &per_token[tok * width..(tok + 1) * width];
        let p = &per_position[t * width..(t + 1) * width];
        row.iter_mut()
            .zip(a.iter().zip(p))
            .for_each(|(o, (x, y))| *o = x + y);
    }
}

/// Embedding backward: adds each row of `d_out` (`width` wide) to the rows of `g_token` (by
/// token) and `g_position` (by position) [`embed_forward`] read it from.
#[inline(always)]
pub fn embed_backward(
    d_out: &[f32],
    width: usize,
    tokens: &[u32],
    seq: usize,
    g_token: &mut [f32],
    g_position: &mut [f32],
) {
    for (i, row) in d_out.chunks_exact(width).enumerate() {
        let (tok, t) = (tokens[i] as usize, i % seq);
        axpy(&mut g_token[tok * width..(tok + 1) * width], 1.0, row);
        axpy(&mut g_position[t * width..(t + 1) * width], 1.0, row);
    }
}

/// The shape of one attention op: `rows` rows of `seq` positions, the last `tq` of them queries,
/// `n_heads` heads of `d_head`, scores scaled by `scale`, causal or not.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    /// Rows of the chunk.
    pub rows: usize,
    /// Positions per row.
    pub seq: usize,
    /// Query positions: the last `tq` (1 for the last-position loss, `seq` otherwise).
    pub tq: usize,
    /// Heads.
    pub n_heads: usize,
    /// Width of one head.
    pub d_head: usize,
    /// Factor on q·k.
    pub scale: f32,
    /// Queries see keys up to themselves only.
    pub causal: bool,
}

impl AttnShape {
    /// `n_heads · d_head`.
    fn hd(&self) -> usize {
        self.n_heads * self.d_head
    }

    /// Keys query position `i` attends to.
    #[inline(always)]
    fn keys(&self, i: usize) -> usize {
        if self.causal {
            i + 1
        } else {
            self.seq
        }
    }
}

/// Attention forward, one (row, query, head) at a time (seq is tiny): from `qkv [rows·seq, 3·hd]`
/// (Q, K, V side by side) the softmax `pattern [rows, tq, n_heads, seq]` (entries past the keys are
/// left as they were and never read) and `z [rows·tq, hd]`.
#[inline(always)]
pub fn attention_forward(s: AttnShape, qkv: &[f32], pattern: &mut [f32], z: &mut [f32]) {
    if s.tq >= BATCHED_QUERIES {
        return attention_forward_batched(s, qkv, pattern, z);
    }
    attention_forward_per_query(s, qkv, pattern, z)
}

/// Queries per row from which attention runs as matrix products per (row, head) — scores, pattern·V
/// and the four products of the backward pass, read in place through strides — rather than as dot
/// products per query: every-position losses (seed 003) have `seq` queries, the last-position loss one.
pub const BATCHED_QUERIES: usize = 8;

/// [`attention_forward`] as a loop over queries (each query's scores, softmax and weighted values).
#[inline(always)]
pub fn attention_forward_per_query(s: AttnShape, qkv: &[f32], pattern: &mut [f32], z: &mut [f32]) {
    let (seq, tq, nh, dh, hd) = (s.seq, s.tq, s.n_heads, s.d_head, s.hd());
    let n3 = 3 * hd;
    let first_q = seq - tq;
    let mut sc = vec![0.0f32; seq];
    for r in 0..s.rows {
        for qi in 0..tq {
            let i = first_q + qi;
            let keys = s.keys(i);
            let q = &qkv[(r * seq + i) * n3..(r * seq + i) * n3 + hd];
            for h in 0..nh {
                let qh = &q[h * dh..(h + 1) * dh];
                let mut max = f32::NEG_INFINITY;
                for (j, sj) in sc.iter_mut().enumerate().take(keys) {
                    let k = &qkv[(r * seq + j) * n3 + hd + h * dh..][..dh];
                    *sj = dot(qh, k) * s.scale;
                    max = max.max(*sj);
                }
                let mut sum = 0.0;
                for sj in sc.iter_mut().take(keys) {
                    *sj = exp_f32(*sj - max);
                    sum += *sj;
                }
                let p = &mut pattern[((r * tq + qi) * nh + h) * seq..][..seq];
                let zh = &mut z[(r * tq + qi) * hd + h * dh..][..dh];
                zh.fill(0.0);
                for j in 0..keys {
                    p[j] = sc[j] / sum;
                    axpy(zh, p[j], &qkv[(r * seq + j) * n3 + 2 * hd + h * dh..][..dh]);
                }
            }
        }
    }
}

/// [`attention_forward`] as matrix products per (row, head): `S = Q·Kᵀ` into the pattern rows, the
/// softmax in place over the keys each query sees (the rest set to 0), then `Z = P·V`.
#[inline(always)]
pub fn attention_forward_batched(s: AttnShape, qkv: &[f32], pattern: &mut [f32], z: &mut [f32]) {
    let (seq, tq, nh, dh, hd) = (s.seq, s.tq, s.n_heads, s.d_head, s.hd());
    let (n3, first_q, p_rs) = (3 * hd, seq - tq, nh * seq);
    for r in 0..s.rows {
        let base = r * seq * n3;
        for h in 0..nh {
            let q = &qkv[base + first_q * n3 + h * dh..];
            let k = &qkv[base + hd + h * dh..];
            let v = &qkv[base + 2 * hd + h * dh..];
            let p = &mut pattern[(r * tq * nh + h) * seq..];
            matmul_strided(p, p_rs, q, (n3, 1), k, (1, n3), (tq, seq, dh), false);
            for first in (0..tq).step_by(SOFTMAX_GROUP) {
                if tq - first >= SOFTMAX_GROUP {
                    softmax_rows::<SOFTMAX_GROUP>(s, p, first, p_rs);
                } else {
                    (first..tq).for_each(|qi| softmax_rows::<1>(s, p, qi, p_rs));
                }
            }
            let p = &pattern[(r * tq * nh + h) * seq..];
            let zh = &mut z[r * tq * hd + h * dh..];
            matmul_strided(zh, hd, p, (p_rs, 1), v, (n3, 1), (tq, dh, seq), false);
        }
    }
}

/// Query rows whose softmax [`softmax_rows`] computes side by side.
const SOFTMAX_GROUP: usize = 8;

/// The softmax of `G` query rows of a head's scores (rows `first..first + G` of `p`, `p_rs` apart),
/// each over the keys its query sees, scaled by `s.scale`; the rest of each row set to 0. Per row the
/// operations are those of a row-by-row loop in the same order (the masked entries enter the max as
/// −∞ and the sum as +0, which change neither), but the `G` rows' serial max and sum chains overlap.
#[inline(always)]
fn softmax_rows<const G: usize>(s: AttnShape, p: &mut [f32], first: usize, p_rs: usize) {
    let first_q = s.seq - s.tq;
    let mut keys = [0usize; G];
    for (r, k) in keys.iter_mut().enumerate() {
        *k = s.keys(first_q + first + r);
        let row = &mut p[(first + r) * p_rs..][..s.seq];
        row[*k..].fill(f32::NEG_INFINITY);
        row.iter_mut().for_each(|x| *x *= s.scale);
    }
    let mut max = [f32::NEG_INFINITY; G];
    for j in 0..s.seq {
        for r in 0..G {
            max[r] = max[r].max(p[(first + r) * p_rs + j]);
        }
    }
    for (r, &m) in max.iter().enumerate() {
        let row = &mut p[(first + r) * p_rs..][..s.seq];
        row.iter_mut().for_each(|x| *x = exp_f32(*x - m));
    }
    let mut sum = [0.0f32; G];
    for j in 0..s.seq {
        for r in 0..G {
            sum[r] += p[(first + r) * p_rs + j];
        }
    }
    for r in 0..G {
        let row = &mut p[(first + r) * p_rs..][..s.seq];
        row[..keys[r]].iter_mut().for_each(|x| *x /= sum[r]);
        row[keys[r]..].fill(0.0);
    }
}

/// Attention backward: from `dz [rows·tq, hd]` and the forward's `qkv` and `pattern`, accumulates
/// d(loss)/d(qkv) into `dqkv [rows·seq, 3·hd]` (zeroed by the caller).
#[inline(always)]
pub fn attention_backward(
    s: AttnShape,
    qkv: &[f32],
    pattern: &[f32],
    dz: &[f32],
    dqkv: &mut [f32],
) {
    if s.tq >= BATCHED_QUERIES {
        return attention_backward_batched(s, qkv, pattern, dz, dqkv);
    }
    attention_backward_per_query(s, qkv, pattern, dz, dqkv)
}

/// [`attention_backward`] as matrix products per (row, head): `dP = dZ·Vᵀ`, `dV += Pᵀ·dZ`, the softmax
/// backward `dS = P∘(dP − Σ P∘dP)·scale` per query, `dQ += dS·K`, `dK += dSᵀ·Q`.
#[inline(always)]
pub fn attention_backward_batched(
    s: AttnShape,
    qkv: &[f32],
    pattern: &[f32],
    dz: &[f32],
    dqkv: &mut [f32],
) {
    let (seq, tq, nh, dh, hd) = (s.seq, s.tq, s.n_heads, s.d_head, s.hd());
    let (n3, first_q, p_rs) = (3 * hd, seq - tq, nh * seq);
    let mut ds = vec![0.0f32; tq * seq];
    for r in 0..s.rows {
        let base = r * seq * n3;
        for h in 0..nh {
            let p = &pattern[(r * tq * nh + h) * seq..];
            let dzh = &dz[r * tq * hd + h * dh..];
            let q = &qkv[base + first_q * n3 + h * dh..];
            let k = &qkv[base + hd + h * dh..];
            let v = &qkv[base + 2 * hd + h * dh..];
            matmul_strided(&mut ds, seq, dzh, (hd, 1), v, (1, n3), (tq, seq, dh), false);
            let dv = &mut dqkv[base + 2 * hd + h * dh..];
            matmul_strided(dv, n3, p, (1, p_rs), dzh, (hd, 1), (seq, dh, tq), true);
            for qi in 0..tq {
                let keys = s.keys(first_q + qi);
                let pr = &p[qi * p_rs..qi * p_rs + seq];
                let dr = &mut ds[qi * seq..(qi + 1) * seq];
                let weighted: f32 = (0..keys).map(|j| pr[j] * dr[j]).sum();
                for j in 0..keys {
                    dr[j] = pr[j] * (dr[j] - weighted) * s.scale;
                }
                dr[keys..].fill(0.0);
            }
            let dq = &mut dqkv[base + first_q * n3 + h * dh..];
            matmul_strided(dq, n3, &ds, (seq, 1), k, (n3, 1), (tq, dh, seq), true);
            let dk = &mut dqkv[base + hd + h * dh..];
            matmul_strided(dk, n3, &ds, (1, seq), q, (n3, 1), (seq, dh, tq), true);
        }
    }
}

/// [`attention_backward`] as a loop over queries.
#[inline(always)]
pub fn attention_backward_per_query(
    s: AttnShape,
    qkv: &[f32],
    pattern: &[f32],
    dz: &[f32],
    dqkv: &mut [f32],
) {
    let (seq, tq, nh, dh, hd) = (s.seq, s.tq, s.n_heads, s.d_head, s.hd());
    let n3 = 3 * hd;
    let first_q = seq - tq;
    let mut ds = vec![0.0f32; seq];
    let mut dq = vec![0.0f32; dh];
    for r in 0..s.rows {
        for qi in 0..tq {
            let i = first_q + qi;
            let keys = s.keys(i);
            for h in 0..nh {
                let p = &pattern[((r * tq + qi) * nh + h) * seq..][..seq];
                let dzh = &dz[(r * tq + qi) * hd + h * dh..][..dh];
                let mut weighted = 0.0;
                for j in 0..keys {
                    let v = &qkv[(r * seq + j) * n3 + 2 * hd + h * dh..][..dh];
                    ds[j] = dot(dzh, v);
                    weighted += p[j] * ds[j];
                    axpy(
                        &mut dqkv[(r * seq + j) * n3 + 2 * hd + h * dh..][..dh],
                        p[j],
                        dzh,
                    );
                }
                let q_at = (r * seq + i) * n3 + h * dh;
                let q = &qkv[q_at..q_at + dh];
                dq.fill(0.0);
                for j in 0..keys {
                    let dsj = p[j] * (ds[j] - weighted) * s.scale;
                    let k_at = (r * seq + j) * n3 + hd + h * dh;
                    axpy(&mut dq, dsj, &qkv[k_at..k_at + dh]);
                    axpy(&mut dqkv[k_at..k_at + dh], dsj, q);
                }
                axpy(&mut dqkv[q_at..q_at + dh], 1.0, &dq);
            }
        }
    }
}

/// The activations the fast passes compute (exact GELU runs on candle: [`super::plan`] refuses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastAct {
    /// `max(x, 0)`.
    Relu,
    /// TransformerLens's `gelu_new` (tanh approximation).
    GeluNew,
}

impl FastAct {
    /// The fast activation for `act`, if there is one.
    pub fn of(act: ActFn) -> Option<Self> {
        match act {
            ActFn::Relu => Some(FastAct::Relu),
            ActFn::GeluNew => Some(FastAct::GeluNew),
            ActFn::Gelu => None,
        }
    }
}

/// The MLP's activation forward, `post = act(pre)`.
#[inline(always)]
pub fn activation_forward(act: FastAct, pre: &[f32], post: &mut [f32]) {
    match act {
        FastAct::Relu => post.iter_mut().zip(pre).for_each(|(o, &v)| *o = v.max(0.0)),
        FastAct::GeluNew => post
            .iter_mut()
            .zip(pre)
            .for_each(|(o, &v)| *o = gelu_new(v)),
    }
}

/// The activation backward in place: `d` holds d(loss)/d(post) on entry and d(loss)/d(pre) on
/// exit (ReLU reads the forward's `post`, `gelu_new` its `pre`).
#[inline(always)]
pub fn activation_backward(act: FastAct, pre: &[f32], post: &[f32], d: &mut [f32]) {
    match act {
        FastAct::Relu => d.iter_mut().zip(post).for_each(|(g, &y)| {
            if y <= 0.0 {
                *g = 0.0
            }
        }),
        FastAct::GeluNew => d
            .iter_mut()
            .zip(pre)
            .for_each(|(g, &x)| *g *= gelu_new_grad(x)),
    }
}

/// Dot product with eight independent partial sums, so the compiler can vectorise it.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y += alpha · x`.
#[inline(always)]
pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(o, v)| *o += alpha * v);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Central difference of `f` at coordinate `i` of `x`, in f64 around f32 inputs.
    fn numeric(x: &[f32], i: usize, f: &dyn Fn(&[f32]) -> f64) -> f64 {
        let h = 1e-3f32;
        let (mut up, mut down) = (x.to_vec(), x.to_vec());
        up[i] += h;
        down[i] -= h;
        (f(&up) - f(&down)) / (2.0 * h as f64)
    }

    /// The attention backward is the gradient of its forward: for loss = Σ z ⊙ R, every entry of
    /// d(loss)/d(qkv) matches the finite difference, causal or not, one query or all.
    #[test]
    fn attention_backward_matches_finite_differences() {
        let batched = BATCHED_QUERIES + 1;
        for (seq, tq, causal) in [
            (4, 1, true),
            (4, 4, true),
            (4, 4, false),
            (batched, batched, true),
            (batched, batched, false),
        ] {
            let s = AttnShape {
                rows: 2,
                seq,
                tq,
                n_heads: 2,
                d_head: 3,
                scale: 0.5,
                causal,
            };
            let n_qkv = s.rows * s.seq * 3 * s.hd();
            let n_z = s.rows * tq * s.hd();
            let qkv = values(n_qkv, 1);
            let r = values(n_z, 2);
            let loss = |qkv: &[f32]| {
                let mut pattern = vec![0.0; s.rows * tq * s.n_heads * s.seq];
                let mut z = vec![0.0; n_z];
                attention_forward(s, qkv, &mut pattern, &mut z);
                z.iter().zip(&r).map(|(a, b)| (a * b) as f64).sum::<f64>()
            };
            let mut pattern = vec![0.0; s.rows * tq * s.n_heads * s.seq];
            let mut z = vec![0.0; n_z];
            attention_forward(s, &qkv, &mut pattern, &mut z);
            let mut dqkv = vec![0.0; n_qkv];
            attention_backward(s, &qkv, &pattern, &r, &mut dqkv);
            for (i, &got) in dqkv.iter().enumerate() {
                let want = numeric(&qkv, i, &loss);
                assert!(
                    (got as f64 - want).abs() < 2e-3,
                    "seq {seq}, tq {tq}, causal {causal}, qkv[{i}]: {got} vs {want}"
                );
            }
            // Each pattern row is a distribution over the keys the query may see.
            for row in pattern.chunks(s.seq) {
                let visible: f32 = row.iter().take(if causal { 1 } else { s.seq }).sum();
                assert!(visible > 0.0);
            }
        }
    }

    /// The matrix-product attention computes what the per-query loop computes, forward and backward,
    /// for several heads, causal or not, with fewer queries than positions.
    #[test]
    fn batched_attention_equals_the_per_query_loop() {
        for (tq, causal) in [(12, true), (12, false), (9, true)] {
            let s = AttnShape {
                rows: 3,
                seq: 12,
                tq,
                n_heads: 2,
                d_head: 5,
                scale: 0.4,
                causal,
            };
            let n_qkv = s.rows * s.seq * 3 * s.hd();
            let n_p = s.rows * tq * s.n_heads * s.seq;
            let n_z = s.rows * tq * s.hd();
            let qkv = values(n_qkv, 5);
            let dz = values(n_z, 6);
            let run = |batched: bool| {
                let (mut p, mut z, mut dqkv) = (vec![0.0; n_p], vec![0.0; n_z], vec![0.0; n_qkv]);
                if batched {
                    attention_forward_batched(s, &qkv, &mut p, &mut z);
                    attention_backward_batched(s, &qkv, &p, &dz, &mut dqkv);
                } else {
                    attention_forward_per_query(s, &qkv, &mut p, &mut z);
                    attention_backward_per_query(s, &qkv, &p, &dz, &mut dqkv);
                }
                (p, z, dqkv)
            };
            let (loop_p, loop_z, loop_d) = run(false);
            let (p, z, d) = run(true);
            let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
            // The loop leaves masked pattern entries untouched (0 here); the products write 0 there.
            assert!(close(&p, &loop_p), "pattern, tq {tq}, causal {causal}");
            assert!(close(&z, &loop_z), "z, tq {tq}, causal {causal}");
            assert!(close(&d, &loop_d), "dqkv, tq {tq}, causal {causal}");
        }
    }

    /// The softmax of eight query rows at once gives the bits of one row at a time, causal or not
    /// (12 queries: a group of 8 and 4 alone), masked entries 0.
    #[test]
    fn grouped_softmax_rows_give_the_bits_of_one_row_at_a_time() {
        for causal in [true, false] {
            let s = AttnShape {
                rows: 1,
                seq: 12,
                tq: 12,
                n_heads: 2,
                d_head: 5,
                scale: 0.4,
                causal,
            };
            let p_rs = s.n_heads * s.seq;
            let scores: Vec<f32> = values(s.tq * p_rs, 9).iter().map(|v| v * 6.0).collect();
            let (mut grouped, mut alone) = (scores.clone(), scores);
            softmax_rows::<SOFTMAX_GROUP>(s, &mut grouped, 0, p_rs);
            (SOFTMAX_GROUP..s.tq).for_each(|q| softmax_rows::<1>(s, &mut grouped, q, p_rs));
            (0..s.tq).for_each(|q| softmax_rows::<1>(s, &mut alone, q, p_rs));
            assert_eq!(grouped, alone, "causal {causal}");
            for q in 0..s.tq {
                let row = &grouped[q * p_rs..q * p_rs + s.seq];
                let keys = s.keys(q);
                assert!(row[keys..].iter().all(|&v| v == 0.0));
                assert!((row[..keys].iter().sum::<f32>() - 1.0).abs() < 1e-6);
            }
        }
    }

    /// The activation backward is the derivative of its forward (away from ReLU's kink).
    #[test]
    fn activation_backward_matches_finite_differences() {
        for act in [FastAct::Relu, FastAct::GeluNew] {
            let pre: Vec<f32> = values(16, 3)
                .into_iter()
                .map(|v| if v.abs() < 0.05 { 0.3 } else { 2.0 * v })
                .collect();
            let r = values(16, 4);
            let loss = |pre: &[f32]| {
                let mut post = vec![0.0; pre.len()];
                activation_forward(act, pre, &mut post);
                post.iter()
                    .zip(&r)
                    .map(|(a, b)| (a * b) as f64)
                    .sum::<f64>()
            };
            let mut post = vec![0.0; 16];
            activation_forward(act, &pre, &mut post);
            let mut d = r.clone();
            activation_backward(act, &pre, &post, &mut d);
            for i in 0..16 {
                let want = numeric(&pre, i, &loss);
                assert!(
                    (d[i] as f64 - want).abs() < 1e-3,
                    "{act:?} at {}: {} vs {want}",
                    pre[i],
                    d[i]
                );
            }
        }
    }

    /// The embedding backward adds each output row's gradient to the token and position rows read.
    #[test]
    fn embedding_backward_is_the_adjoint_of_its_forward() {
        let (width, seq, vocab) = (3, 2, 4);
        let tokens = [1u32, 3, 3, 0];
        let (per_token, per_position) = (values(vocab * width, 5), values(seq * width, 6));
        let r = values(tokens.len() * width, 7);
        let loss = |pt: &[f32], pp: &[f32]| {
            let mut out = vec![0.0; tokens.len() * width];
            embed_forward(&mut out, width, &tokens, seq, pt, pp);
            out.iter().zip(&r).map(|(a, b)| (a * b) as f64).sum::<f64>()
        };
        let (mut gt, mut gp) = (vec![0.0; vocab * width], vec![0.0; seq * width]);
        embed_backward(&r, width, &tokens, seq, &mut gt, &mut gp);
        for (i, &got) in gt.iter().enumerate() {
            let want = numeric(&per_token, i, &|pt| loss(pt, &per_position));
            assert!((got as f64 - want).abs() < 1e-3, "token grad {i}");
        }
        for (i, &got) in gp.iter().enumerate() {
            let want = numeric(&per_position, i, &|pp| loss(&per_token, pp));
            assert!((got as f64 - want).abs() < 1e-3, "position grad {i}");
        }
    }

    /// The named products are the four layouts of one product.
    #[test]
    fn named_products_agree_with_a_plain_triple_loop() {
        let (m, n, k) = (3, 4, 5);
        let (a, b) = (values(m * k, 8), values(k * n, 9));
        let want: Vec<f32> = (0..m * n)
            .map(|i| (0..k).map(|p| a[i / n * k + p] * b[p * n + i % n]).sum())
            .collect();
        let t = |x: &[f32], rows: usize, cols: usize| {
            let mut out = vec![0.0; x.len()];
            for (i, v) in x.iter().enumerate() {
                out[(i % cols) * rows + i / cols] = *v;
            }
            out
        };
        let close = |got: &[f32]| got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-5);
        let mut out = vec![0.0; m * n];
        mm_nn(&mut out, &a, &b, m, n, k);
        assert!(close(&out));
        mm_nt(&mut out, &a, &t(&b, k, n), m, n, k);
        assert!(close(&out));
        mm_tn(&mut out, &t(&a, m, k), &b, m, n, k);
        assert!(close(&out));
        let mut twice = out.clone();
        mm_nn_acc(&mut twice, &a, &b, m, n, k);
        assert!(twice
            .iter()
            .zip(&want)
            .all(|(g, w)| (g - 2.0 * w).abs() < 1e-5));
    }
}
