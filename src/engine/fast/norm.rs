//! TransformerLens's LayerNorm on rows of a matrix, forward and backward, for the fast engine:
//! `y = (x − mean)/√(var + eps) · w + b` (`LN`), or without the affine map (`LNPre`).

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
}

/// `w` and `b` of an affine LayerNorm.
pub type Affine<'a> = Option<(&'a [f32], &'a [f32])>;

/// Rows whose serial sums the passes below interleave: each row's sums run in the same order as a
/// row-by-row loop would run them (so the bits are the same), but `GROUP` rows' chains overlap
/// instead of each waiting on the last.
const GROUP: usize = 8;

/// Normalizes the rows of `x` (`d` wide) into `c`.
#[inline(always)]
pub fn forward(x: &[f32], d: usize, eps: f32, affine: Affine, c: &mut NormCache) {
    let rows = x.len() / d;
    c.xhat.resize(rows * d, 0.0);
    c.rstd.resize(rows, 0.0);
    c.y.resize(rows * d, 0.0);
    let groups = x
        .chunks(GROUP * d)
        .zip(c.xhat.chunks_mut(GROUP * d))
        .zip(c.rstd.chunks_mut(GROUP))
        .zip(c.y.chunks_mut(GROUP * d));
    for (((x, xhat), rstd), y) in groups {
        if rstd.len() == GROUP {
            forward_rows::<GROUP>(x, d, eps, affine, xhat, rstd, y);
        } else {
            for (((x, xhat), rstd), y) in x
                .chunks_exact(d)
                .zip(xhat.chunks_exact_mut(d))
                .zip(rstd.chunks_exact_mut(1))
                .zip(y.chunks_exact_mut(d))
            {
                forward_rows::<1>(x, d, eps, affine, xhat, rstd, y);
            }
        }
    }
}

/// [`forward`] on `G` rows.
#[inline(always)]
fn forward_rows<const G: usize>(
    x: &[f32],
    d: usize,
    eps: f32,
    affine: Affine,
    xhat: &mut [f32],
    rstd: &mut [f32],
    y: &mut [f32],
) {
    let mut mean = [-0.0f32; G];
    for j in 0..d {
        for r in 0..G {
            mean[r] += x[r * d + j];
        }
    }
    mean.iter_mut().for_each(|m| *m /= d as f32);
    let mut var = [-0.0f32; G];
    for j in 0..d {
        for r in 0..G {
            let c = x[r * d + j] - mean[r];
            var[r] += c * c;
        }
    }
    for r in 0..G {
        let k = 1.0 / (var[r] / d as f32 + eps).sqrt();
        rstd[r] = k;
        let (xr, m) = (&x[r * d..(r + 1) * d], mean[r]);
        let xh = &mut xhat[r * d..(r + 1) * d];
        xh.iter_mut().zip(xr).for_each(|(o, &v)| *o = (v - m) * k);
        let yr = &mut y[r * d..(r + 1) * d];
        match affine {
            Some((w, b)) => yr
                .iter_mut()
                .zip(xh.iter().zip(w.iter().zip(b)))
                .for_each(|(o, (&v, (&w, &b)))| *o = v * w + b),
            None => yr.copy_from_slice(xh),
        }
    }
}

/// Given d(loss)/dy in `dy`, adds d(loss)/dx to `dx` and, for an affine norm, Σ dy·x̂ and Σ dy to
/// `grads = (dw, db)`. With u = dy·w: dx = rstd·(u − mean(u) − x̂·mean(u·x̂)).
#[inline(always)]
pub fn backward(
    dy: &[f32],
    c: &NormCache,
    d: usize,
    w: Option<&[f32]>,
    grads: Option<(&mut [f32], &mut [f32])>,
    dx: &mut [f32],
) {
    if let Some((dw, db)) = grads {
        for (dyr, xh) in dy.chunks_exact(d).zip(c.xhat.chunks_exact(d)) {
            for ((gw, gb), (&g, &v)) in dw.iter_mut().zip(db.iter_mut()).zip(dyr.iter().zip(xh)) {
                *gw += g * v;
                *gb += g;
            }
        }
    }
    let mut u = vec![0.0f32; GROUP * d];
    let groups = dy
        .chunks(GROUP * d)
        .zip(c.xhat.chunks(GROUP * d))
        .zip(c.rstd.chunks(GROUP))
        .zip(dx.chunks_mut(GROUP * d));
    for (((dy, xhat), rstd), dx) in groups {
        if rstd.len() == GROUP {
            backward_rows::<GROUP>(dy, xhat, rstd, d, w, &mut u, dx);
        } else {
            for (((dy, xhat), rstd), dx) in dy
                .chunks_exact(d)
                .zip(xhat.chunks_exact(d))
                .zip(rstd.chunks_exact(1))
                .zip(dx.chunks_exact_mut(d))
            {
                backward_rows::<1>(dy, xhat, rstd, d, w, &mut u, dx);
            }
        }
    }
}

/// [`backward`]'s d(loss)/dx on `G` rows (`u` is scratch of at least `G·d`).
#[inline(always)]
fn backward_rows<const G: usize>(
    dy: &[f32],
    xhat: &[f32],
    rstd: &[f32],
    d: usize,
    w: Option<&[f32]>,
    u: &mut [f32],
    dx: &mut [f32],
) {
    let u = &mut u[..G * d];
    match w {
        Some(w) => {
            for (ur, dyr) in u.chunks_exact_mut(d).zip(dy.chunks_exact(d)) {
                ur.iter_mut()
                    .zip(dyr.iter().zip(w))
                    .for_each(|(o, (&g, &w))| *o = g * w);
            }
        }
        None => u.copy_from_slice(dy),
    }
    let (mut mean_u, mut mean_ux) = ([-0.0f32; G], [-0.0f32; G]);
    for j in 0..d {
        for r in 0..G {
            mean_u[r] += u[r * d + j];
        }
    }
    for j in 0..d {
        for r in 0..G {
            mean_ux[r] += u[r * d + j] * xhat[r * d + j];
        }
    }
    for r in 0..G {
        let (mu, mux, k) = (mean_u[r] / d as f32, mean_ux[r] / d as f32, rstd[r]);
        let (ur, xh) = (&u[r * d..(r + 1) * d], &xhat[r * d..(r + 1) * d]);
        for ((o, &uv), &v) in dx[r * d..(r + 1) * d].iter_mut().zip(ur).zip(xh) {
            *o += k * (uv - mu - v * mux);
        }
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
        backward(&probe, &c, d, Some(&w), Some((&mut dw, &mut db)), &mut dx);
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

    /// Rows taken eight at a time give the bits rows taken one at a time give (11 rows: a group
    /// of 8 and 3 on their own), forward and backward.
    #[test]
    fn grouped_rows_give_the_bits_of_one_row_at_a_time() {
        let (d, rows) = (13, 11);
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
        backward(&dy, &all, d, Some(&w), None, &mut dx_all);
        for r in 0..rows {
            let span = r * d..(r + 1) * d;
            let mut one = NormCache::default();
            forward(&x[span.clone()], d, 1e-5, Some((&w, &b)), &mut one);
            assert_eq!(one.y, all.y[span.clone()], "row {r}");
            assert_eq!(one.xhat, all.xhat[span.clone()], "row {r}");
            assert_eq!(one.rstd[0].to_bits(), all.rstd[r].to_bits(), "row {r}");
            let mut dx = vec![0.5; d];
            backward(&dy[span.clone()], &one, d, Some(&w), None, &mut dx);
            assert_eq!(dx, dx_all[span], "row {r}");
        }
    }
}
