//! TransformerLens's LayerNorm on rows of a matrix, forward and backward, for the fast engine:
//! `y = (x − mean)/√(var + eps) · w + b` (`LN`), or without the affine map (`LNPre`).

use crate::linalg::kernels::COLUMN_BLOCK;
use crate::linalg::transpose::{self, columns16};

/// What the forward pass keeps for the backward pass: the normalized rows x̂ and each row's
/// 1/√(var + eps).
#[derive(Default)]
pub struct NormCache {
    /// `[rows, d]`: (x − mean)·rstd.
    pub xhat: Vec<f32>,
    /// `[rows]`.
    pub rstd: Vec<f32>,
    /// `[rows, d]`: the output x̂·w + b (x̂ itself without an affine map).
    pub y: Vec<f32>,
    /// `[d, GROUP]`: a group of rows turned column-major, for the row sums.
    columns: Vec<f32>,
}

/// `w` and `b` of an affine LayerNorm.
pub type Affine<'a> = Option<(&'a [f32], &'a [f32])>;

/// Rows whose serial sums the passes below run side by side. Each row's sums run in the same order
/// as a row-by-row loop would run them (so the bits are the same), but on the group turned
/// column-major ([`columns16`]), so that entry `j` of every row's chain is one vector operation: one
/// AVX-512 register, two of AVX, four of SSE. Interleaving scalar chains instead (loading entry `j`
/// of each row in turn) cost ~3.5 cycles per entry on a Zen 4, ~7 % of seed 003's training samples.
const GROUP: usize = transpose::ROWS;

crate::linalg::kernels::simd_dispatch! {
    /// Normalizes the rows of `x` (`d` wide) into `c`. Compiled on its own for each build, as is
    /// the backward pass: inlined into the engine's large per-build passes, they ran slower.
    pub fn forward / forward_avx2 / forward_avx512 => forward_body(
        x: &[f32],
        d: usize,
        eps: f32,
        affine: Affine,
        c: &mut NormCache,
    )
}

/// [`forward`]'s work, for the build it is compiled into.
#[inline(always)]
fn forward_body(x: &[f32], d: usize, eps: f32, affine: Affine, c: &mut NormCache) {
    let rows = x.len() / d;
    c.xhat.resize(rows * d, 0.0);
    c.rstd.resize(rows, 0.0);
    c.y.resize(rows * d, 0.0);
    c.columns.resize(GROUP * d, 0.0);
    let groups = x
        .chunks(GROUP * d)
        .zip(c.xhat.chunks_mut(GROUP * d))
        .zip(c.rstd.chunks_mut(GROUP))
        .zip(c.y.chunks_mut(GROUP * d));
    for (((x, xhat), rstd), y) in groups {
        if rstd.len() == GROUP {
            let (mean, var) = moments::<GROUP>(columns16(x, d, &mut c.columns), d);
            normalize_rows(x, d, eps, affine, &mean, &var, xhat, rstd, y);
        } else {
            for (((x, xhat), rstd), y) in x
                .chunks_exact(d)
                .zip(xhat.chunks_exact_mut(d))
                .zip(rstd.chunks_exact_mut(1))
                .zip(y.chunks_exact_mut(d))
            {
                let (mean, var) = moments::<1>(x, d);
                normalize_rows(x, d, eps, affine, &mean, &var, xhat, rstd, y);
            }
        }
    }
}

/// Each of `G` rows' mean and sum of squared deviations from it, over a
/// column-major group `t` ([`columns16`]; one row as it is), every sum a serial chain over `j`.
#[inline(always)]
fn moments<const G: usize>(t: &[f32], d: usize) -> ([f32; G], [f32; G]) {
    let mut mean = [-0.0f32; G];
    for tj in t.chunks_exact(G) {
        for r in 0..G {
            mean[r] += tj[r];
        }
    }
    mean.iter_mut().for_each(|m| *m /= d as f32);
    let mut var = [-0.0f32; G];
    for tj in t.chunks_exact(G) {
        for r in 0..G {
            let c = tj[r] - mean[r];
            var[r] += c * c;
        }
    }
    (mean, var)
}

/// [`forward`]'s outputs for rows whose mean and summed squared deviations are known.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn normalize_rows(
    x: &[f32],
    d: usize,
    eps: f32,
    affine: Affine,
    mean: &[f32],
    var: &[f32],
    xhat: &mut [f32],
    rstd: &mut [f32],
    y: &mut [f32],
) {
    for (r, (&m, &var)) in mean.iter().zip(var).enumerate() {
        let k = 1.0 / (var / d as f32 + eps).sqrt();
        rstd[r] = k;
        let xr = &x[r * d..(r + 1) * d];
        let xh = &mut xhat[r * d..(r + 1) * d];
        let yr = &mut y[r * d..(r + 1) * d];
        // x̂ and y in one pass, y from the x̂ still in a register rather than read back.
        let out = xh.iter_mut().zip(yr.iter_mut()).zip(xr);
        match affine {
            Some((w, b)) => out.zip(w.iter().zip(b)).for_each(|((o, &v), (&w, &b))| {
                let h = (v - m) * k;
                (*o.0, *o.1) = (h, h * w + b);
            }),
            None => out.for_each(|(o, &v)| {
                let h = (v - m) * k;
                (*o.0, *o.1) = (h, h);
            }),
        }
    }
}

/// What [`backward`] adds d(loss)/dx to before it stores the sum in `dx`.
#[derive(Debug, Clone, Copy)]
pub enum DxBase<'a> {
    /// What `dx` holds (the gradient flowing into x from elsewhere).
    Dx,
    /// Zero: `dx` is overwritten, with the bits zeroing it and adding would give (`0 + v`, so a −0
    /// turns to +0 as before), without the pass that zeroes it.
    Zero,
    /// Another buffer of `dx`'s shape (a residual's gradient): `dx = base + v`, the bits of copying
    /// `base` into `dx` and adding, without the copy.
    Onto(&'a [f32]),
}

crate::linalg::kernels::simd_dispatch! {
    /// Given d(loss)/dy in `dy`, stores `base` + d(loss)/dx in `dx` ([`DxBase`]) and, for an affine
    /// norm, adds Σ dy·x̂ and Σ dy to `grads = (dw, db)`. With u = dy·w: d(loss)/dx =
    /// rstd·(u − mean(u) − x̂·mean(u·x̂)).
    pub fn backward / backward_avx2 / backward_avx512 => backward_body(
        dy: &[f32],
        c: &NormCache,
        d: usize,
        w: Option<&[f32]>,
        grads: Option<(&mut [f32], &mut [f32])>,
        base: DxBase,
        dx: &mut [f32],
    )
}

/// [`backward`]'s work, for the build it is compiled into.
#[inline(always)]
fn backward_body(
    dy: &[f32],
    c: &NormCache,
    d: usize,
    w: Option<&[f32]>,
    grads: Option<(&mut [f32], &mut [f32])>,
    base: DxBase,
    dx: &mut [f32],
) {
    if let DxBase::Onto(base) = base {
        assert_eq!(
            base.len(),
            dx.len(),
            "norm::backward: base and dx differ in length"
        );
    }
    if let Some((dw, db)) = grads {
        affine_grads(dy, &c.xhat, d, dw, db);
    }
    let mut t = vec![0.0f32; 2 * GROUP * d];
    let (t_dy, t_xhat) = t.split_at_mut(GROUP * d);
    let groups = dy
        .chunks(GROUP * d)
        .zip(c.xhat.chunks(GROUP * d))
        .zip(c.rstd.chunks(GROUP))
        .zip(dx.chunks_mut(GROUP * d));
    for (g, (((dy, xhat), rstd), dx)) in groups.enumerate() {
        let base = base.rows(g * GROUP * d, dx.len());
        if rstd.len() == GROUP {
            let (t_dy, t_xhat) = (columns16(dy, d, t_dy), columns16(xhat, d, t_xhat));
            let (mean_u, mean_ux) = u_means::<GROUP>(t_dy, t_xhat, d, w);
            backward_rows(dy, xhat, rstd, d, w, &mean_u, &mean_ux, base, dx);
        } else {
            for (r, (((dy, xhat), rstd), dx)) in dy
                .chunks_exact(d)
                .zip(xhat.chunks_exact(d))
                .zip(rstd.chunks_exact(1))
                .zip(dx.chunks_exact_mut(d))
                .enumerate()
            {
                let (mean_u, mean_ux) = u_means::<1>(dy, xhat, d, w);
                let base = base.rows(r * d, d);
                backward_rows(dy, xhat, rstd, d, w, &mean_u, &mean_ux, base, dx);
            }
        }
    }
}

/// `dw += Σ_rows dy·x̂` and `db += Σ_rows dy`, each column's sums in row order, [`COLUMN_BLOCK`]
/// columns at a time kept in registers across the rows.
#[inline(always)]
fn affine_grads(dy: &[f32], xhat: &[f32], d: usize, dw: &mut [f32], db: &mut [f32]) {
    const B: usize = COLUMN_BLOCK;
    let rows = || dy.chunks_exact(d).zip(xhat.chunks_exact(d));
    for (c0, (dw, db)) in (0..d)
        .step_by(B)
        .zip(dw.chunks_mut(B).zip(db.chunks_mut(B)))
    {
        if let (Ok(dw), Ok(db)) = (
            <&mut [f32; B]>::try_from(&mut *dw),
            <&mut [f32; B]>::try_from(&mut *db),
        ) {
            let (mut gw, mut gb) = (*dw, *db);
            for (dyr, xh) in rows() {
                let g: &[f32; B] = dyr[c0..][..B].try_into().unwrap();
                let v: &[f32; B] = xh[c0..][..B].try_into().unwrap();
                for j in 0..B {
                    gw[j] += g[j] * v[j];
                    gb[j] += g[j];
                }
            }
            (*dw, *db) = (gw, gb);
        } else {
            for (dyr, xh) in rows() {
                let cols = dw.iter_mut().zip(db.iter_mut());
                for ((gw, gb), (&g, &v)) in cols.zip(dyr[c0..].iter().zip(&xh[c0..])) {
                    *gw += g * v;
                    *gb += g;
                }
            }
        }
    }
}

/// Each of `G` rows' mean(u) and mean(u·x̂), u = dy·w, from column-major groups of dy and x̂
/// ([`columns16`]; one row as it is), every sum a serial chain over `j`.
#[inline(always)]
fn u_means<const G: usize>(
    t_dy: &[f32],
    t_xhat: &[f32],
    d: usize,
    w: Option<&[f32]>,
) -> ([f32; G], [f32; G]) {
    let (mut mean_u, mut mean_ux) = ([-0.0f32; G], [-0.0f32; G]);
    for (j, (gj, xj)) in t_dy.chunks_exact(G).zip(t_xhat.chunks_exact(G)).enumerate() {
        let wj = w.map(|w| w[j]);
        for r in 0..G {
            let u = wj.map_or(gj[r], |wj| gj[r] * wj);
            mean_u[r] += u;
            mean_ux[r] += u * xj[r];
        }
    }
    for (mu, mux) in mean_u.iter_mut().zip(&mut mean_ux) {
        *mu /= d as f32;
        *mux /= d as f32;
    }
    (mean_u, mean_ux)
}

impl<'a> DxBase<'a> {
    /// The base of `len` entries of `dx` from entry `start` on.
    #[inline(always)]
    fn rows(self, start: usize, len: usize) -> DxBase<'a> {
        match self {
            DxBase::Onto(b) => DxBase::Onto(&b[start..start + len]),
            other => other,
        }
    }
}

/// [`backward`]'s `dx` on rows whose mean(u) and mean(u·x̂) are known.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_rows(
    dy: &[f32],
    xhat: &[f32],
    rstd: &[f32],
    d: usize,
    w: Option<&[f32]>,
    mean_u: &[f32],
    mean_ux: &[f32],
    base: DxBase,
    dx: &mut [f32],
) {
    for (r, ((&mu, &mux), &k)) in mean_u.iter().zip(mean_ux).zip(rstd).enumerate() {
        let span = r * d..(r + 1) * d;
        let (dyr, xh) = (&dy[span.clone()], &xhat[span.clone()]);
        let rows = dyr.iter().zip(xh);
        let (out, base) = (&mut dx[span], base.rows(r * d, d));
        match w {
            Some(w) => store(
                out,
                base,
                rows.zip(w).map(|((&g, &v), &w)| k * (g * w - mu - v * mux)),
            ),
            None => store(out, base, rows.map(|(&g, &v)| k * (g - mu - v * mux))),
        }
    }
}

/// `out = base + v` for the values `v` ([`DxBase`]).
#[inline(always)]
fn store(out: &mut [f32], base: DxBase, v: impl Iterator<Item = f32>) {
    match base {
        DxBase::Dx => out.iter_mut().zip(v).for_each(|(o, v)| *o += v),
        DxBase::Zero => out.iter_mut().zip(v).for_each(|(o, v)| *o = 0.0 + v),
        DxBase::Onto(b) => out
            .iter_mut()
            .zip(b)
            .zip(v)
            .for_each(|((o, &b), v)| *o = b + v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(x: &[f32], d: usize, w: &[f32], b: &[f32], probe: &[f32]) -> f64 {
        let mut c = NormCache::default();
        forward(x, d, 1e-5, Some((w, b)), &mut c);
        c.y.iter().zip(probe).map(|(&y, &p)| (y * p) as f64).sum()
    }

    #[test]
    fn backward_matches_finite_differences() {
        let d = 5;
        let x: Vec<f32> = (0..2 * d)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let w: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 * 0.2).collect();
        let b: Vec<f32> = (0..d).map(|i| i as f32 * 0.1).collect();
        let probe: Vec<f32> = (0..2 * d)
            .map(|i| ((i * 3 % 7) as f32 - 3.0) * 0.5)
            .collect();
        let mut c = NormCache::default();
        forward(&x, d, 1e-5, Some((&w, &b)), &mut c);
        let mut dx = vec![0.0; x.len()];
        let (mut dw, mut db) = (vec![0.0; d], vec![0.0; d]);
        backward(
            &probe,
            &c,
            d,
            Some(&w),
            Some((&mut dw, &mut db)),
            DxBase::Dx,
            &mut dx,
        );
        let h = 1e-2f32;
        for i in 0..x.len() {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += h;
            down[i] -= h;
            let num =
                (loss(&up, d, &w, &b, &probe) - loss(&down, d, &w, &b, &probe)) / (2.0 * h as f64);
            assert!(
                (num - dx[i] as f64).abs() < 2e-3,
                "dx[{i}]: {num} vs {}",
                dx[i]
            );
        }
        for i in 0..d {
            let (mut up, mut down) = (w.clone(), w.clone());
            up[i] += h;
            down[i] -= h;
            let num =
                (loss(&x, d, &up, &b, &probe) - loss(&x, d, &down, &b, &probe)) / (2.0 * h as f64);
            assert!((num - dw[i] as f64).abs() < 2e-3, "dw[{i}]");
            let want_db: f32 = (0..2).map(|r| probe[r * d + i]).sum();
            assert!((db[i] - want_db).abs() < 1e-6);
        }
    }

    /// Rows taken sixteen at a time give the bits rows taken one at a time give (19 rows: a group
    /// of 16 and 3 on their own), forward and backward.
    #[test]
    fn grouped_rows_give_the_bits_of_one_row_at_a_time() {
        let (d, rows) = (13, 19);
        let x: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.031)
            .collect();
        let dy: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 17 % 29) as f32 - 14.0) * 0.07)
            .collect();
        let w: Vec<f32> = (0..d).map(|i| 0.7 + i as f32 * 0.05).collect();
        let b: Vec<f32> = (0..d).map(|i| i as f32 * -0.02).collect();
        let mut all = NormCache::default();
        forward(&x, d, 1e-5, Some((&w, &b)), &mut all);
        let mut dx_all = vec![0.5; rows * d];
        backward(&dy, &all, d, Some(&w), None, DxBase::Dx, &mut dx_all);
        for r in 0..rows {
            let span = r * d..(r + 1) * d;
            let mut one = NormCache::default();
            forward(&x[span.clone()], d, 1e-5, Some((&w, &b)), &mut one);
            assert_eq!(one.y, all.y[span.clone()], "row {r}");
            assert_eq!(one.xhat, all.xhat[span.clone()], "row {r}");
            assert_eq!(one.rstd[0].to_bits(), all.rstd[r].to_bits(), "row {r}");
            let mut dx = vec![0.5; d];
            backward(
                &dy[span.clone()],
                &one,
                d,
                Some(&w),
                None,
                DxBase::Dx,
                &mut dx,
            );
            assert_eq!(dx, dx_all[span], "row {r}");
        }
    }

    /// Storing onto a base or onto zero gives the bits of copying the base (or zeros) into `dx`
    /// and adding, group of sixteen rows and rows on their own alike (19 rows).
    #[test]
    fn a_base_gives_the_bits_of_copying_it_in_and_adding() {
        let (d, rows) = (13, 19);
        let gen = |n: usize, a: usize, m: usize, s: f32| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * a % m) as f32 - m as f32 / 2.0) * s)
                .collect()
        };
        let (x, dy, base) = (
            gen(rows * d, 37, 101, 0.031),
            gen(rows * d, 17, 29, 0.07),
            gen(rows * d, 11, 23, 0.05),
        );
        let w: Vec<f32> = (0..d).map(|i| 0.7 + i as f32 * 0.05).collect();
        for w in [Some(&w[..]), None] {
            let mut c = NormCache::default();
            forward(&x, d, 1e-5, w.map(|w| (w, w)), &mut c);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            let (mut want, mut got) = (base.clone(), vec![7.0; rows * d]);
            backward(&dy, &c, d, w, None, DxBase::Dx, &mut want);
            backward(&dy, &c, d, w, None, DxBase::Onto(&base), &mut got);
            assert_eq!(bits(&got), bits(&want), "onto a base");
            let (mut want, mut got) = (vec![0.0; rows * d], vec![7.0; rows * d]);
            backward(&dy, &c, d, w, None, DxBase::Dx, &mut want);
            backward(&dy, &c, d, w, None, DxBase::Zero, &mut got);
            assert_eq!(bits(&got), bits(&want), "onto zero");
        }
    }

    /// dw and db sum each column down the rows in row order (the bits of the plain loop), for
    /// widths below, at and past [`COLUMN_BLOCK`], with and without a tail.
    #[test]
    fn affine_gradients_keep_the_row_order() {
        for d in [13, COLUMN_BLOCK, COLUMN_BLOCK + 13, 2 * COLUMN_BLOCK] {
            let rows = 21;
            let x: Vec<f32> = (0..rows * d)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.031)
                .collect();
            let dy: Vec<f32> = (0..rows * d)
                .map(|i| ((i * 17 % 29) as f32 - 14.0) * 0.07)
                .collect();
            let mut c = NormCache::default();
            forward(&x, d, 1e-5, None, &mut c);
            let (mut want_w, mut want_b) = (vec![0.25f32; d], vec![-0.5f32; d]);
            for (g, v) in dy.chunks_exact(d).zip(c.xhat.chunks_exact(d)) {
                for j in 0..d {
                    want_w[j] += g[j] * v[j];
                    want_b[j] += g[j];
                }
            }
            let (mut dw, mut db) = (vec![0.25f32; d], vec![-0.5f32; d]);
            let mut dx = vec![0.0; rows * d];
            backward(
                &dy,
                &c,
                d,
                None,
                Some((&mut dw, &mut db)),
                DxBase::Dx,
                &mut dx,
            );
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&dw), bits(&want_w), "d = {d}");
            assert_eq!(bits(&db), bits(&want_b), "d = {d}");
        }
    }
}
