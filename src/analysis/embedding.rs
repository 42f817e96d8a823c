//! The embedding in the Fourier basis (seed 000, "Analyse the Embedding"): per-component and
//! per-frequency norms, key frequencies, dot products of the key components, constructive interference,
//! and the SVD of W_E against a random control.

use crate::analysis::fourier::{freq_norms, row_norms, FourierBasis};
use crate::analysis::stats::{gaussian_like, standout_indices};
use crate::error::Result;
use crate::linalg::Matrix;

/// W_E's number-token rows seen in the Fourier basis.
#[derive(Debug, Clone)]
pub struct EmbeddingFourier {
    /// `B · W_E[:p]`, `p × d_model`: one row per Fourier component.
    pub fourier: Matrix,
    /// Norm of each component's row (p values, seed 000's "Norms of Embedding in Fourier Basis").
    pub component_norms: Vec<f32>,
    /// Per-frequency norms √(‖sin k‖² + ‖cos k‖²), entry k−1 for k = 1..=p/2.
    pub freq_norms: Vec<f32>,
    /// Frequencies that stand out ([`key_frequencies`]), ascending.
    pub key_freqs: Vec<usize>,
}

/// Transforms the first `p` rows of `w_e` (`d_vocab × d_model`; the rows of the number tokens).
pub fn embedding_fourier(basis: &FourierBasis, w_e: &Matrix) -> EmbeddingFourier {
    let p = basis.p();
    let numbers = w_e.select_rows(&(0..p).collect::<Vec<_>>());
    let fourier = basis.transform(&numbers);
    let component_norms = row_norms(&fourier);
    let freq_norms = freq_norms(basis, &component_norms);
    let key_freqs = key_frequencies(&freq_norms);
    EmbeddingFourier {
        fourier,
        component_norms,
        freq_norms,
        key_freqs,
    }
}

/// Key frequencies from per-frequency norms (entry k−1 for frequency k): sort the norms descending and
/// keep those above the largest ratio between consecutive norms, looking at most a quarter of the
/// frequencies deep ([`standout_indices`]). A grokked model concentrates W_E on a handful of
/// frequencies, whose norms sit an order of magnitude above the rest.
pub fn key_frequencies(freq_norms: &[f32]) -> Vec<usize> {
    standout_indices(freq_norms, freq_norms.len().div_ceil(4))
        .into_iter()
        .map(|i| i + 1)
        .collect()
}

/// The key frequencies' components (sin and cos of each) and their embedding rows' dot products:
/// `(component names, K × K Gram matrix)`. Near-diagonal when the key directions are orthogonal.
pub fn key_component_dots(basis: &FourierBasis, embed: &EmbeddingFourier) -> (Vec<String>, Matrix) {
    let idx: Vec<usize> = embed
        .key_freqs
        .iter()
        .flat_map(|&k| basis.components(k))
        .collect();
    let rows = embed.fourier.select_rows(&idx);
    let gram = rows.matmul(&rows.t()).expect("same width");
    let names = idx.iter().map(|&i| basis.names()[i].clone()).collect();
    (names, gram)
}

/// Seed 000's "Constructive Interference": the mean over key frequencies of `Cos k` as a function of
/// x ∈ Z_p. It peaks at x = 0 and is small elsewhere, so a sum of key-frequency cosines of (a+b−c)
/// singles out c = a+b.
pub fn constructive_interference(basis: &FourierBasis, key_freqs: &[usize]) -> Vec<f32> {
    let p = basis.p();
    let n = key_freqs.len().max(1) as f32;
    (0..p)
        .map(|x| {
            key_freqs
                .iter()
                .map(|&k| basis.row(basis.cos_index(k))[x])
                .sum::<f32>()
                / n
        })
        .collect()
}

/// Coordinates of each number's embedding (`numbers` = `W_E[:p]`, `p × d_model`) along the embedding's
/// `Cos k` and `Sin k` directions (unit vectors of those rows of `B · W_E`), `p × 2`. For a key
/// frequency the points lie on a circle, number x at angle 2πkx/p.
pub fn key_plane(
    basis: &FourierBasis,
    embed: &EmbeddingFourier,
    numbers: &Matrix,
    k: usize,
) -> Matrix {
    let comps = basis.components(k);
    let dirs: Vec<Vec<f32>> = [basis.cos_index(k), comps[0]]
        .iter()
        .map(|&i| {
            let row = &embed.fourier.data[i * embed.fourier.cols..(i + 1) * embed.fourier.cols];
            let norm = row
                .iter()
                .map(|v| v * v)
                .sum::<f32>()
                .sqrt()
                .max(f32::MIN_POSITIVE);
            row.iter().map(|v| v / norm).collect()
        })
        .collect();
    let data = (0..numbers.rows)
        .flat_map(|x| {
            let e = &numbers.data[x * numbers.cols..(x + 1) * numbers.cols];
            dirs.iter()
                .map(|d| d.iter().zip(e).map(|(a, b)| a * b).sum::<f32>())
                .collect::<Vec<_>>()
        })
        .collect();
    Matrix::new(numbers.rows, 2, data).expect("p × 2")
}

/// Singular values and leading left singular vectors of W_E's number rows, next to those of a Gaussian
/// matrix of the same shape and scale (seed 000's "Singular Value Decomposition" and its control).
#[derive(Debug, Clone)]
pub struct EmbeddingSvd {
    /// Singular values of `W_E[:p]`, descending.
    pub singular_values: Vec<f32>,
    /// Singular values of the Gaussian control, descending.
    pub control_singular_values: Vec<f32>,
    /// The first (up to 8) left singular vectors of `W_E[:p]` as rows, `k × p` (functions of the input).
    pub top_components: Matrix,
    /// The same for the control.
    pub control_top_components: Matrix,
}

/// SVD of the first `p` rows of `w_e` and of a seeded Gaussian control.
pub fn embedding_svd(p: usize, w_e: &Matrix, seed: u64) -> Result<EmbeddingSvd> {
    let numbers = w_e.select_rows(&(0..p).collect::<Vec<_>>());
    let control = gaussian_like(&numbers, seed);
    let top = |m: &Matrix| -> Result<(Vec<f32>, Matrix)> {
        let svd = m.svd()?;
        let k = svd.s.len().min(8);
        let u_t = svd.u.t();
        Ok((svd.s, u_t.select_rows(&(0..k).collect::<Vec<_>>())))
    };
    let (singular_values, top_components) = top(&numbers)?;
    let (control_singular_values, control_top_components) = top(&control)?;
    Ok(EmbeddingSvd {
        singular_values,
        control_singular_values,
        top_components,
        control_top_components,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An embedding of p = 31 numbers into 12 dimensions that uses frequencies 4, 9 and 13 (plus noise).
    fn planted(p: usize, freqs: &[usize]) -> Matrix {
        let d = 12;
        let mut data = vec![0.0f32; (p + 1) * d];
        for x in 0..p {
            for (j, &k) in freqs.iter().enumerate() {
                let t = 2.0 * std::f32::consts::PI * (k * x) as f32 / p as f32;
                data[x * d + 2 * j] = 2.0 * t.cos();
                data[x * d + 2 * j + 1] = 2.0 * t.sin();
            }
            for c in 2 * freqs.len()..d {
                data[x * d + c] = 0.01 * (((x * 31 + c * 17) % 23) as f32 - 11.0) / 11.0;
            }
        }
        Matrix::new(p + 1, d, data).unwrap()
    }

    #[test]
    fn finds_planted_key_frequencies() {
        let p = 31;
        let basis = FourierBasis::new(p);
        let e = embedding_fourier(&basis, &planted(p, &[4, 9, 13]));
        assert_eq!(e.key_freqs, [4, 9, 13]);
        assert_eq!(e.freq_norms.len(), 15);
        let (names, gram) = key_component_dots(&basis, &e);
        assert_eq!(
            names,
            ["Sin 4", "Cos 4", "Sin 9", "Cos 9", "Sin 13", "Cos 13"]
        );
        // Orthogonal key directions: the Gram matrix is diagonal.
        for i in 0..6 {
            for j in 0..6 {
                let v = gram.at(i, j).abs();
                assert!(if i == j { v > 1.0 } else { v < 1e-3 }, "({i},{j}) = {v}");
            }
        }
        let ci = constructive_interference(&basis, &e.key_freqs);
        let max_at = (0..p).max_by(|&a, &b| ci[a].total_cmp(&ci[b])).unwrap();
        assert_eq!(max_at, 0, "key cosines add up at x = 0");
    }

    #[test]
    fn key_plane_puts_numbers_on_a_circle() {
        let p = 31;
        let basis = FourierBasis::new(p);
        let w_e = planted(p, &[4, 9, 13]);
        let e = embedding_fourier(&basis, &w_e);
        let numbers = w_e.select_rows(&(0..p).collect::<Vec<_>>());
        let pts = key_plane(&basis, &e, &numbers, 9);
        let radius = |x: usize| (pts.at(x, 0).powi(2) + pts.at(x, 1).powi(2)).sqrt();
        for x in 0..p {
            assert!(
                (radius(x) - radius(0)).abs() < 0.02,
                "x={x}: {} vs {}",
                radius(x),
                radius(0)
            );
            let angle = pts.at(x, 1).atan2(pts.at(x, 0));
            let want = 2.0 * std::f32::consts::PI * ((9 * x) % p) as f32 / p as f32;
            let d = (angle - want).rem_euclid(2.0 * std::f32::consts::PI);
            assert!(
                d.min(2.0 * std::f32::consts::PI - d) < 0.02,
                "x={x}: angle {angle} vs {want}"
            );
        }
    }

    #[test]
    fn svd_separates_structure_from_the_control() {
        let p = 31;
        let svd = embedding_svd(p, &planted(p, &[4, 9, 13]), 0).unwrap();
        // Six strong directions, then noise; the Gaussian control decays smoothly.
        let s = &svd.singular_values;
        assert!(s[5] / s[6] > 50.0, "{s:?}");
        let c = &svd.control_singular_values;
        assert!(c[5] / c[6] < 2.0, "{c:?}");
        assert_eq!((svd.top_components.rows, svd.top_components.cols), (8, p));
    }
}
