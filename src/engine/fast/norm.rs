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

/// Normalizes the rows of `x` (`d` wide) into `c`.
#[inline(always)]
pub fn forward(x: &[f32], d: usize, eps: f32, affine: Affine, c: &mut NormCache) {
    let rows = x.len() / d;
    c.xhat.resize(rows * d, 0.0);
    c.rstd.resize(rows, 0.0);
    c.y.resize(rows * d, 0.0);
    for (r, xr) in x.chunks_exact(d).enumerate() {
        let mean = xr.iter().sum::<f32>() / d as f32;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        c.rstd[r] = rstd;
        let xh = &mut c.xhat[r * d..(r + 1) * d];
        xh.iter_mut()
            .zip(xr)
            .for_each(|(o, &v)| *o = (v - mean) * rstd);
        let y = &mut c.y[r * d..(r + 1) * d];
        match affine {
            Some((w, b)) => y
                .iter_mut()
                .zip(xh.iter().zip(w.iter().zip(b)))
                .for_each(|(o, (&v, (&w, &b)))| *o = v * w + b),
            None => y.copy_from_slice(xh),
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
    let mut u = vec![0.0f32; d];
    for (r, (dyr, dxr)) in dy.chunks_exact(d).zip(dx.chunks_exact_mut(d)).enumerate() {
        match w {
            Some(w) => u
                .iter_mut()
                .zip(dyr.iter().zip(w))
                .for_each(|(o, (&g, &w))| *o = g * w),
            None => u.copy_from_slice(dyr),
        }
        let xh = &c.xhat[r * d..(r + 1) * d];
        let mean_u = u.iter().sum::<f32>() / d as f32;
        let mean_ux = u.iter().zip(xh).map(|(a, b)| a * b).sum::<f32>() / d as f32;
        let rstd = c.rstd[r];
        for ((o, &uv), &v) in dxr.iter_mut().zip(&u).zip(xh) {
            *o += rstd * (uv - mean_u - v * mean_ux);
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
}
