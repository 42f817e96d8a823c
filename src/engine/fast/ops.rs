//! The fast engine's passes as ops, llm.c-style: each op's forward sits beside its backward, both on
//! plain row-major slices, each checked against finite differences below (LayerNorm's pair lives in
//! [`super::norm`], the losses in [`super`]). The block passes in [`super::transformer`] and
//! [`super::mlp`] are sequences of these calls. Everything is `#[inline(always)]` so the AVX2 build
//! of a pass compiles its ops into it.

use super::sized;
use crate::linalg::kernels::{
    add_bias, exp_f32, exp_slice, gelu_new, gelu_new_grad, general_path, matmul, matmul_strided,
};
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

/// `out[m×n] = a[m×k]·Wᵀ` (`acc`: `+=`) for `w` = (`W` `[n×k]`, its transpose `[k×n]`): from the
/// transpose, which `gemm` reads in place, on its general path ([`general_path`]); products it
/// takes down a path for small ones get `W` as always. So the bits are those `a·Wᵀ` always gave.
#[inline(always)]
pub fn mm_nt_with_t(
    out: &mut [f32],
    a: &[f32],
    (w, w_t): (&[f32], &[f32]),
    (m, n, k): (usize, usize, usize),
    acc: bool,
) {
    if mm_nt_with_t_applies(m, n, k) {
        matmul(out, a, w_t, m, n, k, false, false, acc);
    } else {
        matmul(out, a, w, m, n, k, false, true, acc);
    }
}

/// Whether [`mm_nt_with_t`] reads the transpose for an `m×n×k` product (else `W` itself).
#[inline(always)]
pub fn mm_nt_with_t_applies(m: usize, n: usize, k: usize) -> bool {
    general_path(m, n, k)
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
/// token) and `g_position` (by position) [`embed_forward`] read it from. `d_out` holds the last `tq`
/// of each row's `seq` positions (`tq` = `seq`: all of them); the rest add nothing.
#[inline(always)]
pub fn embed_backward(
    d_out: &[f32],
    width: usize,
    tokens: &[u32],
    (seq, tq): (usize, usize),
    g_token: &mut [f32],
    g_position: &mut [f32],
) {
    for (i, row) in d_out.chunks_exact(width).enumerate() {
        let t = seq - tq + i % tq;
        let tok = tokens[i / tq * seq + t] as usize;
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

crate::linalg::kernels::simd_dispatch! {
    /// Attention forward, one (row, query, head) at a time (seq is tiny): from `qkv [rows·seq,
    /// 3·hd]` (Q, K, V side by side) the softmax `pattern [rows, tq, n_heads, seq]` (entries past
    /// the keys are left as they were and never read) and `z [rows·tq, hd]`. Compiled on its own
    /// for each build, as is the backward pass.
    pub fn attention_forward / attention_forward_avx2 / attention_forward_avx512 => attention_forward_body(
        s: AttnShape,
        qkv: &[f32],
        pattern: &mut [f32],
        z: &mut [f32],
    )
}

/// [`attention_forward`]'s work, for the build it is compiled into.
#[inline(always)]
fn attention_forward_body(s: AttnShape, qkv: &[f32], pattern: &mut [f32], z: &mut [f32]) {
    if s.tq >= BATCHED_QUERIES {
        return attention_forward_batched(s, qkv, pattern, z);
    }
    attention_forward_per_query(s, qkv, pattern, z)
}

/// Queries per row from which attention runs as matrix products per (row, head) — scores, pattern·V
/// and the four products of the backward pass, read in place through strides — rather than as dot
/// products per query: every-position losses (seed 003) have `seq` queries, the last-position loss one.
/// That path keeps each (row, head)'s pattern key-major, `[rows, n_heads, seq, tq]`, so the softmax
/// and its backward run down contiguous query lanes; the per-query loop keeps `[rows, tq, n_heads,
/// seq]`. Forward and backward choose the same path, so each reads what the other wrote.
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

/// [`attention_forward`] as matrix products per (row, head), the pattern stored key-major
/// (`[rows, n_heads, seq, tq]`, see [`BATCHED_QUERIES`]): `Sᵀ = K·Qᵀ`, the softmax in place down each
/// query's column ([`softmax_columns`]), then `Z = P·V` reading `Pᵀ` through strides.
#[inline(always)]
pub fn attention_forward_batched(s: AttnShape, qkv: &[f32], pattern: &mut [f32], z: &mut [f32]) {
    let (seq, tq, nh, dh, hd) = (s.seq, s.tq, s.n_heads, s.d_head, s.hd());
    let (n3, first_q) = (3 * hd, seq - tq);
    let mut stats = vec![0.0f32; 2 * tq];
    let mut panel = Vec::new();
    let keys = |i0, n| 0..keys_of_queries(s, i0, n);
    for r in 0..s.rows {
        let base = r * seq * n3;
        for h in 0..nh {
            let q = &qkv[base + first_q * n3 + h * dh..];
            let k = &qkv[base + hd + h * dh..];
            let v = &qkv[base + 2 * hd + h * dh..];
            let p = &mut pattern[(r * nh + h) * seq * tq..][..seq * tq];
            matmul_strided(p, tq, k, (n3, 1), q, (1, n3), (seq, tq, dh), false);
            softmax_columns(s, p, &mut stats);
            let zh = &mut z[r * tq * hd + h * dh..];
            attn_mm(
                zh,
                hd,
                p,
                (1, tq),
                v,
                (n3, 1),
                (tq, dh, seq),
                false,
                keys,
                &mut panel,
            );
        }
    }
}

/// Keys that queries `i0..i0 + n` (of the last `tq`) see between them: the last one's.
#[inline(always)]
fn keys_of_queries(s: AttnShape, i0: usize, n: usize) -> usize {
    s.keys(s.seq - s.tq + i0 + n - 1)
}

/// The first query (column of a key-major pattern) that sees key `j`: queries before it are masked.
#[inline(always)]
fn first_seeing(s: AttnShape, j: usize) -> usize {
    if s.causal {
        (j + s.tq).saturating_sub(s.seq).min(s.tq)
    } else {
        0
    }
}

/// The softmax of one (row, head)'s key-major scores `p [seq, tq]` (`Sᵀ`), each query's column over
/// the keys it sees, scaled by `s.scale`, masked entries set to 0; `stats` is scratch of `2·tq`.
/// Every query gets the operations of a row-by-row softmax over the keys it sees, in the same order,
/// so the bits are those of one query at a time, while each step runs down `tq` contiguous lanes.
/// Masked entries are set to 0 and left out of the max and the sum, where a −∞ score would add
/// nothing (`max(m, −∞) = m`, `t + exp(−∞ − m) = t + 0`).
#[inline(always)]
fn softmax_columns(s: AttnShape, p: &mut [f32], stats: &mut [f32]) {
    let tq = s.tq;
    let (max, sum) = stats.split_at_mut(tq);
    max.fill(f32::NEG_INFINITY);
    sum.fill(0.0);
    for (j, row) in p.chunks_exact_mut(tq).enumerate() {
        let seen = first_seeing(s, j);
        row[..seen].fill(0.0);
        for (x, m) in row[seen..].iter_mut().zip(&mut max[seen..]) {
            *x *= s.scale;
            *m = m.max(*x);
        }
    }
    for (j, row) in p.chunks_exact_mut(tq).enumerate() {
        let seen = first_seeing(s, j);
        let row = &mut row[seen..];
        row.iter_mut().zip(&max[seen..]).for_each(|(x, &m)| *x -= m);
        exp_slice(row);
        sum[seen..]
            .iter_mut()
            .zip(&*row)
            .for_each(|(t, &x)| *t += x);
    }
    for (j, row) in p.chunks_exact_mut(tq).enumerate() {
        let seen = first_seeing(s, j);
        row[seen..]
            .iter_mut()
            .zip(&sum[seen..])
            .for_each(|(x, &t)| *x /= t);
    }
}

/// One small product of the batched attention: `c[i·c_rs + j] (+)= Σ_{p ∈ ks(i0, rows)} a(i, p)·b(p, j)`
/// for `i < m`, `j < n`, with `a(i, p) = a[i·a_rs + p·a_cs]`, `b(p, j) = b[p·b_rs + j·b_cs]`, and `ks`
/// the inner indices that can be nonzero for rows `i0..i0 + rows` (causal attention skips the keys a
/// query never sees). `b` is read in place when its rows are contiguous and whole tiles wide, else
/// copied into `panel` with `n` padded to whole tiles, so any layout works. Each output is one fused
/// multiply-add chain over `p` in ascending order on the CPU's widest [`FmaKernel`] (each step
/// rounded once, like `f32::mul_add`), so neither the tile sizes nor the kernel change the bits. These products are
/// ~50 × 50 × 64: small enough that a general `gemm` call's set-up and packing outweigh the arithmetic.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attn_mm(
    c: &mut [f32],
    c_rs: usize,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    (m, n, k): (usize, usize, usize),
    acc: bool,
    ks: impl Fn(usize, usize) -> std::ops::Range<usize>,
    panel: &mut Vec<f32>,
) {
    // Rows of `b` that are whole tiles already are read in place; any other layout is copied.
    let (panel, np): (&[f32], usize) = if b_cs == 1 && n % ATTN_NR == 0 {
        (b, b_rs)
    } else {
        let np = n.div_ceil(ATTN_NR) * ATTN_NR;
        panel.clear();
        panel.resize(k * np, 0.0);
        for (p, row) in panel.chunks_exact_mut(np).enumerate() {
            for (j, x) in row[..n].iter_mut().enumerate() {
                *x = b[p * b_rs + j * b_cs];
            }
        }
        (panel, np)
    };
    let kernel = FmaKernel::best();
    let full = m - m % ATTN_MR;
    for i0 in (0..full).step_by(ATTN_MR) {
        let ks = ks(i0, ATTN_MR);
        let at = (i0, n);
        attn_tile::<ATTN_MR>(c, c_rs, a, (a_rs, a_cs), panel, np, at, acc, ks, kernel);
    }
    for i0 in full..m {
        let ks = ks(i0, 1);
        attn_tile::<1>(
            c,
            c_rs,
            a,
            (a_rs, a_cs),
            panel,
            np,
            (i0, n),
            acc,
            ks,
            kernel,
        );
    }
}

/// Rows and columns of one register tile of [`attn_mm`] (AVX-512: 8 accumulators of 16 lanes).
const ATTN_MR: usize = 4;
const ATTN_NR: usize = 32;
// The AVX-512 kernel reads two registers of 16 lanes; the AVX2 kernel two halves of two of 8.
const _: () = assert!(ATTN_NR == 32);

/// Rows `i0..i0 + R` of [`attn_mm`], `ATTN_NR` columns of the panel at a time, on `kernel`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attn_tile<const R: usize>(
    c: &mut [f32],
    c_rs: usize,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    panel: &[f32],
    np: usize,
    (i0, n): (usize, usize),
    acc: bool,
    ks: std::ops::Range<usize>,
    kernel: FmaKernel,
) {
    let rows: [usize; R] = std::array::from_fn(|r| (i0 + r) * a_rs);
    for j0 in (0..n).step_by(ATTN_NR) {
        let tile = TileInput {
            a,
            rows,
            a_cs,
            panel,
            np,
            j0,
        };
        let t = tile.fma(kernel, ks.clone());
        let w = ATTN_NR.min(n - j0);
        for (r, tr) in t.iter().enumerate() {
            let out = &mut c[(i0 + r) * c_rs + j0..][..w];
            if acc {
                out.iter_mut().zip(tr).for_each(|(o, &x)| *o += x);
            } else {
                out.copy_from_slice(&tr[..w]);
            }
        }
    }
}

/// A fused multiply-add kernel for [`TileInput::fma`]; every one rounds each step once, so all give
/// the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FmaKernel {
    /// `f32::mul_add`, any CPU.
    Portable,
    /// AVX + FMA registers of 8 lanes.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512F registers of 16 lanes.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl FmaKernel {
    /// Every kernel, narrowest first.
    const ALL: &'static [FmaKernel] = &[
        FmaKernel::Portable,
        #[cfg(target_arch = "x86_64")]
        FmaKernel::Avx2,
        #[cfg(target_arch = "x86_64")]
        FmaKernel::Avx512,
    ];

    /// Whether this CPU runs the kernel.
    fn runs(self) -> bool {
        match self {
            FmaKernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            FmaKernel::Avx2 => is_x86_feature_detected!("avx") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            FmaKernel::Avx512 => is_x86_feature_detected!("avx512f"),
        }
    }

    /// The widest kernel this CPU runs.
    fn best() -> Self {
        let mut widest = Self::ALL.iter().rev().copied().filter(|k| k.runs());
        widest.next().unwrap_or(FmaKernel::Portable)
    }
}

/// One register tile's operands: `R` rows of `a` (each row's first entry at `rows[r]`, the inner
/// index `p` at stride `a_cs`) against the `ATTN_NR` columns `j0..` of `panel` (rows `np` apart).
#[derive(Clone, Copy)]
struct TileInput<'a, const R: usize> {
    a: &'a [f32],
    rows: [usize; R],
    a_cs: usize,
    panel: &'a [f32],
    np: usize,
    j0: usize,
}

impl<const R: usize> TileInput<'_, R> {
    /// `t[r][l] = fma(a[rows[r] + p·a_cs], panel[p·np + j0 + l], t[r][l])` from 0, for `p` in `ks` in
    /// order, on `kernel` (one this CPU [`FmaKernel::runs`]).
    #[inline(always)]
    fn fma(&self, kernel: FmaKernel, ks: std::ops::Range<usize>) -> [[f32; ATTN_NR]; R] {
        if let Some(p) = ks.clone().last() {
            // Bounds the kernels' unchecked reads: every row's last `a` entry and the panel's tile.
            let last_row = self.rows.iter().max().copied().unwrap_or(0);
            assert!(
                last_row + p * self.a_cs < self.a.len()
                    && p * self.np + self.j0 + ATTN_NR <= self.panel.len()
            );
        }
        match kernel {
            FmaKernel::Portable => self.portable(ks),
            // SAFETY: the kernel is one the CPU supports; the assert above bounds every read.
            #[cfg(target_arch = "x86_64")]
            FmaKernel::Avx2 => unsafe { self.avx2(ks) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            FmaKernel::Avx512 => unsafe { self.avx512(ks) },
        }
    }

    #[inline(always)]
    fn portable(&self, ks: std::ops::Range<usize>) -> [[f32; ATTN_NR]; R] {
        let mut t = [[0.0f32; ATTN_NR]; R];
        for p in ks {
            let bp = &self.panel[p * self.np + self.j0..][..ATTN_NR];
            for (tr, &row) in t.iter_mut().zip(&self.rows) {
                let av = self.a[row + p * self.a_cs];
                tr.iter_mut()
                    .zip(bp)
                    .for_each(|(x, &bv)| *x = av.mul_add(bv, *x));
            }
        }
        t
    }

    /// [`TileInput::portable`] with AVX-512 registers: two of 16 lanes per row.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, and `a`, `panel` must hold every index the loop reads.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(&self, ks: std::ops::Range<usize>) -> [[f32; ATTN_NR]; R] {
        use std::arch::x86_64::*;
        let mut v = [[_mm512_setzero_ps(); 2]; R];
        let (a, panel) = (self.a.as_ptr(), self.panel.as_ptr());
        for p in ks {
            let bp = panel.add(p * self.np + self.j0);
            let (b0, b1) = (_mm512_loadu_ps(bp), _mm512_loadu_ps(bp.add(16)));
            for (vr, &row) in v.iter_mut().zip(&self.rows) {
                let av = _mm512_set1_ps(*a.add(row + p * self.a_cs));
                vr[0] = _mm512_fmadd_ps(av, b0, vr[0]);
                vr[1] = _mm512_fmadd_ps(av, b1, vr[1]);
            }
        }
        let mut t = [[0.0f32; ATTN_NR]; R];
        for r in 0..R {
            _mm512_storeu_ps(t[r].as_mut_ptr(), v[r][0]);
            _mm512_storeu_ps(t[r].as_mut_ptr().add(16), v[r][1]);
        }
        t
    }

    /// [`TileInput::portable`] with AVX registers: the tile in two halves of 16 columns, each a pass
    /// over `ks` with two registers of 8 lanes per row. AVX has 16 registers: the whole tile's
    /// `4·R` accumulators plus its four panel loads do not fit, and the spilled accumulators made
    /// every step a load, a multiply-add and a store.
    ///
    /// # Safety
    /// The CPU must have AVX and FMA, and `a`, `panel` must hold every index the loop reads.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx,fma")]
    unsafe fn avx2(&self, ks: std::ops::Range<usize>) -> [[f32; ATTN_NR]; R] {
        use std::arch::x86_64::*;
        let mut t = [[0.0f32; ATTN_NR]; R];
        let (a, panel) = (self.a.as_ptr(), self.panel.as_ptr());
        for half in [0, ATTN_NR / 2] {
            let mut v = [[_mm256_setzero_ps(); 2]; R];
            for p in ks.clone() {
                let bp = panel.add(p * self.np + self.j0 + half);
                let b = [_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8))];
                for (vr, &row) in v.iter_mut().zip(&self.rows) {
                    let av = _mm256_set1_ps(*a.add(row + p * self.a_cs));
                    vr[0] = _mm256_fmadd_ps(av, b[0], vr[0]);
                    vr[1] = _mm256_fmadd_ps(av, b[1], vr[1]);
                }
            }
            for (tr, vr) in t.iter_mut().zip(&v) {
                _mm256_storeu_ps(tr.as_mut_ptr().add(half), vr[0]);
                _mm256_storeu_ps(tr.as_mut_ptr().add(half + 8), vr[1]);
            }
        }
        t
    }
}

crate::linalg::kernels::simd_dispatch! {
    /// Attention backward: from `dz [rows·tq, hd]` and the forward's `qkv` and `pattern`,
    /// accumulates d(loss)/d(qkv) into `dqkv [rows·seq, 3·hd]` (zeroed by the caller).
    pub fn attention_backward / attention_backward_avx2 / attention_backward_avx512 => attention_backward_body(
        s: AttnShape,
        qkv: &[f32],
        pattern: &[f32],
        dz: &[f32],
        dqkv: &mut [f32],
    )
}

/// [`attention_backward`]'s work, for the build it is compiled into.
#[inline(always)]
fn attention_backward_body(
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

/// [`attention_backward`] as matrix products per (row, head) on the key-major pattern: `dPᵀ = V·dZᵀ`,
/// `dV += Pᵀ·dZ`, the softmax backward `dS = P∘(dP − Σ P∘dP)·scale` per query (its column, the sum in
/// key order over the keys it sees), `dQ += dS·K`, `dK += dSᵀ·Q`.
#[inline(always)]
pub fn attention_backward_batched(
    s: AttnShape,
    qkv: &[f32],
    pattern: &[f32],
    dz: &[f32],
    dqkv: &mut [f32],
) {
    let (seq, tq, nh, dh, hd) = (s.seq, s.tq, s.n_heads, s.d_head, s.hd());
    let (n3, first_q) = (3 * hd, seq - tq);
    let mut ds = vec![0.0f32; seq * tq];
    let mut weighted = vec![0.0f32; tq];
    let mut panel = Vec::new();
    let keys = |i0, n| 0..keys_of_queries(s, i0, n);
    let queries = |j0, _| first_seeing(s, j0)..tq;
    for r in 0..s.rows {
        let base = r * seq * n3;
        for h in 0..nh {
            let p = &pattern[(r * nh + h) * seq * tq..][..seq * tq];
            let dzh = &dz[r * tq * hd + h * dh..];
            let q = &qkv[base + first_q * n3 + h * dh..];
            let k = &qkv[base + hd + h * dh..];
            let v = &qkv[base + 2 * hd + h * dh..];
            matmul_strided(&mut ds, tq, v, (n3, 1), dzh, (1, hd), (seq, tq, dh), false);
            let dv = &mut dqkv[base + 2 * hd + h * dh..];
            attn_mm(
                dv,
                n3,
                p,
                (tq, 1),
                dzh,
                (hd, 1),
                (seq, dh, tq),
                true,
                queries,
                &mut panel,
            );
            // Per query: Σ_j P·dP over the keys it sees, in key order (as `Iterator::sum`: from −0).
            weighted.fill(-0.0);
            for (j, (pr, dr)) in p.chunks_exact(tq).zip(ds.chunks_exact(tq)).enumerate() {
                let lo = first_seeing(s, j);
                for ((w, &pv), &dv) in weighted[lo..].iter_mut().zip(&pr[lo..]).zip(&dr[lo..]) {
                    *w += pv * dv;
                }
            }
            for (j, (pr, dr)) in p.chunks_exact(tq).zip(ds.chunks_exact_mut(tq)).enumerate() {
                let lo = first_seeing(s, j);
                dr[..lo].fill(0.0);
                for ((d, &pv), &w) in dr[lo..].iter_mut().zip(&pr[lo..]).zip(&weighted[lo..]) {
                    *d = pv * (*d - w) * s.scale;
                }
            }
            let dq = &mut dqkv[base + first_q * n3 + h * dh..];
            attn_mm(
                dq,
                n3,
                &ds,
                (1, tq),
                k,
                (n3, 1),
                (tq, dh, seq),
                true,
                keys,
                &mut panel,
            );
            let dk = &mut dqkv[base + hd + h * dh..];
            attn_mm(
                dk,
                n3,
                &ds,
                (tq, 1),
                q,
                (n3, 1),
                (seq, dh, tq),
                true,
                queries,
                &mut panel,
            );
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

/// A hidden layer's bias and activation after its product `h` (`rows × bias.len()`), leaving
/// what [`activation_backward`] reads: ReLU's backward reads only `post`, so under ReLU the product
/// is written into `post` and becomes `max(h + b, 0)` there in one pass, `pre` left empty (one
/// buffer and one pass over it fewer); `gelu_new`'s reads `pre = h + b`, so there `h` is written into
/// `pre`. `product` writes `h` into the slice it is given.
#[inline(always)]
pub fn hidden_activation(
    act: FastAct,
    bias: &[f32],
    len: usize,
    pre: &mut Vec<f32>,
    post: &mut Vec<f32>,
    product: impl FnOnce(&mut [f32]),
) {
    match act {
        FastAct::Relu => {
            pre.clear();
            let post = sized(post, len);
            product(post);
            for row in post.chunks_exact_mut(bias.len()) {
                row.iter_mut()
                    .zip(bias)
                    .for_each(|(v, &b)| *v = (*v + b).max(0.0));
            }
        }
        FastAct::GeluNew => {
            let pre = sized(pre, len);
            product(pre);
            add_bias(pre, bias);
            activation_forward(act, pre, sized(post, len));
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
            // Each query's weights (query-major, or key-major on the batched path) are a
            // distribution over the keys it may see.
            let at = |r: usize, h: usize, i: usize, j: usize| {
                if tq >= BATCHED_QUERIES {
                    pattern[((r * s.n_heads + h) * seq + j) * tq + i]
                } else {
                    pattern[((r * tq + i) * s.n_heads + h) * seq + j]
                }
            };
            for (r, h, i) in (0..s.rows)
                .flat_map(|r| (0..s.n_heads).flat_map(move |h| (0..tq).map(move |i| (r, h, i))))
            {
                let keys = s.keys(seq - tq + i);
                let weights: Vec<f32> = (0..seq).map(|j| at(r, h, i, j)).collect();
                assert!(
                    weights[keys..].iter().all(|&w| w == 0.0),
                    "masked keys weigh nothing"
                );
                assert!((weights.iter().sum::<f32>() - 1.0).abs() < 1e-5);
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
            // The products keep each (row, head)'s pattern key-major: transpose it back.
            let mut p_rows = vec![0.0; n_p];
            for (block, keys_major) in p.chunks_exact(s.seq * tq).enumerate() {
                let (r, h) = (block / s.n_heads, block % s.n_heads);
                for (j, i) in (0..s.seq).flat_map(|j| (0..tq).map(move |i| (j, i))) {
                    p_rows[((r * tq + i) * s.n_heads + h) * s.seq + j] = keys_major[j * tq + i];
                }
            }
            let p = p_rows;
            let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
            // The loop leaves masked pattern entries untouched (0 here); the products write 0 there.
            assert!(close(&p, &loop_p), "pattern, tq {tq}, causal {causal}");
            assert!(close(&z, &loop_z), "z, tq {tq}, causal {causal}");
            assert!(close(&d, &loop_d), "dqkv, tq {tq}, causal {causal}");
        }
    }

    /// The key-major softmax gives each query the bits of a plain row-by-row softmax over its keys
    /// (masked scores −∞ in the max, exp(−∞ − max) in the sum), causal or not, with fewer queries
    /// than keys; masked entries 0, each column a distribution.
    #[test]
    fn column_softmax_gives_the_bits_of_one_query_row_at_a_time() {
        for (tq, causal) in [(12, true), (12, false), (7, true)] {
            let s = AttnShape {
                rows: 1,
                seq: 12,
                tq,
                n_heads: 1,
                d_head: 5,
                scale: 0.4,
                causal,
            };
            let scores: Vec<f32> = values(s.seq * tq, 9).iter().map(|v| v * 6.0).collect();
            let mut columns = scores.clone();
            softmax_columns(s, &mut columns, &mut vec![0.0; 2 * tq]);
            for i in 0..tq {
                let keys = s.keys(s.seq - tq + i);
                let mut row: Vec<f32> = (0..s.seq).map(|j| scores[j * tq + i]).collect();
                row[keys..].fill(f32::NEG_INFINITY);
                row.iter_mut().for_each(|x| *x *= s.scale);
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                row.iter_mut().for_each(|x| *x = exp_f32(*x - max));
                let sum = row.iter().fold(0.0f32, |t, &x| t + x);
                row[..keys].iter_mut().for_each(|x| *x /= sum);
                row[keys..].fill(0.0);
                let column: Vec<f32> = (0..s.seq).map(|j| columns[j * tq + i]).collect();
                assert_eq!(column, row, "query {i}, tq {tq}, causal {causal}");
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            }
        }
    }

    /// The attention products' register tiles give the bits of one fused multiply-add chain per
    /// output, in order, on every kernel this CPU runs (portable, AVX2, AVX-512), and `attn_mm` with a
    /// key range gives a plain product over that range, a strided operand copied or read in place.
    #[test]
    fn attention_product_kernels_give_the_bits_of_one_fma_chain() {
        let (k, np, j0) = (7, 2 * ATTN_NR, ATTN_NR);
        let a = values(4 * 3 * k, 11);
        let panel = values(k * np, 12);
        let rows = [0, 3 * k, 6 * k, 9 * k];
        let want: Vec<[f32; ATTN_NR]> = (0..4)
            .map(|r| {
                std::array::from_fn(|l| {
                    (1..k).fold(0.0f32, |t, p| {
                        a[rows[r] + p * 3].mul_add(panel[p * np + j0 + l], t)
                    })
                })
            })
            .collect();
        let tile = TileInput {
            a: &a,
            rows,
            a_cs: 3,
            panel: &panel,
            np,
            j0,
        };
        for &kernel in FmaKernel::ALL.iter().filter(|k| k.runs()) {
            assert_eq!(tile.fma(kernel, 1..k).to_vec(), want, "{kernel:?}");
        }
        // m = 6 (a tile of 4 and two single rows), n = 40 (copied, padded) or 64 (read in place).
        for n in [40, 64] {
            let (m, k) = (6, 9);
            let (a, b) = (values(m * k, 13), values(k * n, 14));
            let ks = |i0: usize, rows: usize| i0.min(3)..(i0 + rows + 2).min(k);
            let mut c = values(m * n, 15);
            let before = c.clone();
            attn_mm(
                &mut c,
                n,
                &a,
                (1, m),
                &b,
                (n, 1),
                (m, n, k),
                true,
                ks,
                &mut Vec::new(),
            );
            for i in 0..m {
                let block = if i < m - m % ATTN_MR {
                    i - i % ATTN_MR
                } else {
                    i
                };
                let rows = if i < m - m % ATTN_MR { ATTN_MR } else { 1 };
                for j in 0..n {
                    let sum: f32 = ks(block, rows).map(|p| a[p * m + i] * b[p * n + j]).sum();
                    let got = c[i * n + j] - before[i * n + j];
                    assert!(
                        (got - sum).abs() < 1e-5,
                        "n {n}, c[{i}][{j}]: {got} vs {sum}"
                    );
                }
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

    /// `mm_nt_with_t` gives the bits of `a·Wᵀ` read from `W` on every kind of shape: the small
    /// products `gemm` sums in a stride-dependent order (few outputs, one row or column, k ≤ 2) and
    /// the large ones it reads from the transpose.
    #[test]
    fn products_with_the_transpose_keep_the_bits_of_a_times_w_transposed() {
        let shapes = [
            (1, 300, 64),
            (3, 64, 192),
            (5, 31, 64),
            (16, 16, 9),
            (4, 2, 64),
        ]
        .into_iter()
        .chain([
            (16, 17, 3),
            (99, 128, 2),
            (240, 128, 512),
            (800, 64, 192),
            (37, 300, 64),
        ]);
        for (m, n, k) in shapes {
            let (a, w) = (values(m * k, 1), values(n * k, 2));
            let mut w_t = vec![0.0; n * k];
            crate::linalg::transpose::transpose(&w, n, k, &mut w_t);
            for acc in [false, true] {
                let mut want = values(m * n, 3);
                let mut got = want.clone();
                matmul(&mut want, &a, &w, m, n, k, false, true, acc);
                mm_nt_with_t(&mut got, &a, (&w, &w_t), (m, n, k), acc);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{m}×{n}×{k}, acc {acc}");
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
        embed_backward(&r, width, &tokens, (seq, seq), &mut gt, &mut gp);
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
