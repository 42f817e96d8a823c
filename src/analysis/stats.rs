//! Small statistics the analysis relies on: the Gini coefficient, the largest-ratio-gap cut used to
//! pick key frequencies, PCA, and a Gaussian control matrix.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::error::Result;
use crate::linalg::Matrix;

/// Gini coefficient of non-negative values: 0 when all are equal, → 1 when one holds everything.
/// `G = Σᵢ (2i − n − 1)·x₍ᵢ₎ / (n·Σx)` over the values sorted ascending (i = 1..n); 0 for an empty or
/// all-zero input.
pub fn gini(values: &[f32]) -> f64 {
    let mut x: Vec<f64> = values.iter().map(|v| v.abs() as f64).collect();
    x.sort_by(f64::total_cmp);
    let n = x.len() as f64;
    let total: f64 = x.iter().sum();
    if x.is_empty() || total == 0.0 {
        return 0.0;
    }
    let weighted: f64 = x
        .iter()
        .enumerate()
        .map(|(i, v)| (2.0 * (i as f64 + 1.0) - n - 1.0) * v)
        .sum();
    weighted / (n * total)
}

/// Indices of the few values that stand out: sort descending, cut where the ratio between
/// consecutive values is largest, looking at most `max_keep` values deep. Returns the indices above
/// the cut, ascending. Scale-free, so it works on norms of any magnitude.
pub fn standout_indices(values: &[f32], max_keep: usize) -> Vec<usize> {
    if values.len() < 2 {
        return (0..values.len()).collect();
    }
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let depth = max_keep.clamp(1, values.len() - 1);
    let ratio = |m: usize| {
        let (hi, lo) = (values[order[m - 1]] as f64, values[order[m]] as f64);
        hi / lo.max(f64::MIN_POSITIVE)
    };
    let keep = (1..=depth)
        .max_by(|&a, &b| ratio(a).total_cmp(&ratio(b)))
        .unwrap_or(1);
    let mut picked = order[..keep].to_vec();
    picked.sort_unstable();
    picked
}

/// Principal components of the rows of `x` (`n × d`).
#[derive(Debug, Clone)]
pub struct Pca {
    /// Coordinates of each row on the first `k` components, `n × k`.
    pub coords: Matrix,
    /// Fraction of the total variance each of those components explains.
    pub explained: Vec<f32>,
}

/// PCA of the rows of `x` onto `k` components (rows centred first).
pub fn pca(x: &Matrix, k: usize) -> Result<Pca> {
    let mut centred = x.clone();
    for j in 0..x.cols {
        let mean = (0..x.rows).map(|i| x.at(i, j) as f64).sum::<f64>() / x.rows.max(1) as f64;
        for i in 0..x.rows {
            centred.data[i * x.cols + j] -= mean as f32;
        }
    }
    let svd = centred.svd()?;
    let k = k.min(svd.s.len());
    let total: f64 = svd.s.iter().map(|s| (*s as f64).powi(2)).sum();
    let explained = svd.s[..k]
        .iter()
        .map(|s| ((*s as f64).powi(2) / total.max(f64::MIN_POSITIVE)) as f32)
        .collect();
    let coords = Matrix::new(
        x.rows,
        k,
        (0..x.rows)
            .flat_map(|i| (0..k).map(move |j| (i, j)))
            .map(|(i, j)| svd.u.at(i, j) * svd.s[j])
            .collect(),
    )?;
    Ok(Pca { coords, explained })
}

/// A seeded Gaussian matrix with the same shape and entry standard deviation as `like` (seed 000's
/// `torch.randn_like` control, rescaled so singular values are comparable).
pub fn gaussian_like(like: &Matrix, seed: u64) -> Matrix {
    let n = like.data.len().max(1) as f64;
    let mean = like.data.iter().map(|v| *v as f64).sum::<f64>() / n;
    let var = like
        .data
        .iter()
        .map(|v| (*v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let normal = Normal::new(0.0, var.sqrt().max(1e-12)).expect("finite std");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Matrix {
        rows: like.rows,
        cols: like.cols,
        data: (0..like.data.len())
            .map(|_| normal.sample(&mut rng) as f32)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gini_of_known_distributions() {
        assert_eq!(gini(&[1.0; 10]), 0.0);
        let mut one_hot = vec![0.0; 10];
        one_hot[3] = 5.0;
        assert!(
            (gini(&one_hot) - 0.9).abs() < 1e-12,
            "(n-1)/n for one non-zero"
        );
        assert!((gini(&[1.0, 2.0, 3.0, 4.0]) - 0.25).abs() < 1e-12);
        assert_eq!(gini(&[]), 0.0);
    }

    #[test]
    fn standout_indices_cut_at_the_largest_gap() {
        let v = [1.0, 9.0, 1.2, 8.0, 0.9, 7.5, 1.1, 1.0];
        assert_eq!(standout_indices(&v, 4), [1, 3, 5]);
        // A single dominant value among equals.
        assert_eq!(standout_indices(&[1.0, 1.0, 50.0, 1.0], 2), [2]);
        // The depth limit keeps a smooth tail from being taken whole.
        assert_eq!(standout_indices(&[4.0, 3.0, 2.0, 1.0, 0.01], 2).len(), 2);
    }

    #[test]
    fn pca_recovers_a_circle() {
        // Points on a circle in the plane spanned by two orthonormal directions of R^4.
        let n = 12;
        let data = (0..n)
            .flat_map(|i| {
                let t = 2.0 * std::f32::consts::PI * i as f32 / n as f32;
                let (c, s) = (3.0 * t.cos(), 3.0 * t.sin());
                [c * 0.6, s, c * 0.8, 2.0]
            })
            .collect();
        let pca = pca(&Matrix::new(n, 4, data).unwrap(), 2).unwrap();
        assert!((pca.explained.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        for i in 0..n {
            let r = (pca.coords.at(i, 0).powi(2) + pca.coords.at(i, 1).powi(2)).sqrt();
            assert!((r - 3.0).abs() < 1e-4, "radius {r}");
        }
    }

    #[test]
    fn gaussian_control_matches_scale() {
        let like = Matrix::new(
            50,
            40,
            (0..2000).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect(),
        )
        .unwrap();
        let g = gaussian_like(&like, 1);
        let var = |m: &Matrix| m.data.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / 2000.0;
        assert!((var(&g) / var(&like) - 1.0).abs() < 0.1);
        assert_eq!(gaussian_like(&like, 1), g, "seeded");
    }
}
