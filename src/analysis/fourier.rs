//! The Fourier basis over Z_p used throughout the grokking analysis (seed 000's `fourier_basis`).
//!
//! Component order, as in the seeds: index 0 is `"Constant"`; for each frequency k = 1..=p/2, index
//! 2k−1 is `"Sin k"` (x ↦ sin(2πkx/p)) and index 2k is `"Cos k"` (x ↦ cos(2πkx/p)). Every row is
//! normalised to unit length, so the basis is orthonormal. For an odd p that is exactly p components;
//! for an even p, `Sin p/2` is identically zero and is left out, so the last component is `Cos p/2`.

use crate::linalg::Matrix;

/// An orthonormal Fourier basis of functions on Z_p, one component per row.
#[derive(Debug, Clone)]
pub struct FourierBasis {
    p: usize,
    /// `p × p`, row `i` = component `i` evaluated at x = 0..p.
    basis: Matrix,
    names: Vec<String>,
    freqs: Vec<usize>,
}

impl FourierBasis {
    /// The basis for modulus `p` (p ≥ 2).
    pub fn new(p: usize) -> Self {
        let mut rows: Vec<Vec<f64>> = vec![vec![1.0; p]];
        let mut names = vec!["Constant".to_string()];
        let mut freqs = vec![0];
        for k in 1..=p / 2 {
            let angle = |x: usize| 2.0 * std::f64::consts::PI * (k * x) as f64 / p as f64;
            if 2 * k != p {
                rows.push((0..p).map(|x| angle(x).sin()).collect());
                names.push(format!("Sin {k}"));
                freqs.push(k);
            }
            rows.push((0..p).map(|x| angle(x).cos()).collect());
            names.push(format!("Cos {k}"));
            freqs.push(k);
        }
        let data = rows
            .iter()
            .flat_map(|r| {
                let norm = r.iter().map(|v| v * v).sum::<f64>().sqrt();
                r.iter().map(move |v| (v / norm) as f32)
            })
            .collect();
        FourierBasis {
            p,
            basis: Matrix::new(p, p, data).expect("p rows of p values"),
            names,
            freqs,
        }
    }

    /// The modulus.
    pub fn p(&self) -> usize {
        self.p
    }

    /// Number of frequencies, p / 2 (frequency k = 1..=p/2).
    pub fn n_freqs(&self) -> usize {
        self.p / 2
    }

    /// The basis as a `p × p` matrix (component rows).
    pub fn matrix(&self) -> &Matrix {
        &self.basis
    }

    /// Component names in order: `"Constant"`, `"Sin 1"`, `"Cos 1"`, ….
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The frequency of each component (0 for the constant).
    pub fn freqs(&self) -> &[usize] {
        &self.freqs
    }

    /// Indices of the components of frequency `k` (sin then cos; only cos for k = p/2 with p even).
    pub fn components(&self, k: usize) -> Vec<usize> {
        (0..self.p).filter(|&i| self.freqs[i] == k).collect()
    }

    /// Index of `Cos k`.
    pub fn cos_index(&self, k: usize) -> usize {
        *self.components(k).last().expect("1 <= k <= p/2")
    }

    /// Component `i` as a vector over x = 0..p.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.basis.data[i * self.p..(i + 1) * self.p]
    }

    /// Coefficients of the columns of `x` (`p × n`, one function of the input per column):
    /// `B · x`, `p × n`, one component per row.
    pub fn transform(&self, x: &Matrix) -> Matrix {
        self.basis.matmul(x).expect("x must have p rows")
    }

    /// Coefficients of the rows of `x` (`n × p`, one function of the input per row): `x · Bᵀ`.
    pub fn transform_rows(&self, x: &Matrix) -> Matrix {
        x.matmul(&self.basis.t()).expect("x must have p columns")
    }

    /// 2-D transform of a function of (a, b) given as a `p × p` matrix (rows a, columns b): `B · m · Bᵀ`.
    pub fn transform_2d(&self, m: &Matrix) -> Matrix {
        self.transform_rows(&self.transform(m))
    }

    /// `x` (`p × n` coefficients, component rows) back to input space: `Bᵀ · x`.
    pub fn inverse(&self, coeffs: &Matrix) -> Matrix {
        self.basis
            .t()
            .matmul(coeffs)
            .expect("coeffs must have p rows")
    }
}

/// Euclidean norm of each row of `m`.
pub fn row_norms(m: &Matrix) -> Vec<f32> {
    m.data
        .chunks_exact(m.cols)
        .map(|r| r.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt() as f32)
        .collect()
}

/// Euclidean norm of each column of `m`.
pub fn col_norms(m: &Matrix) -> Vec<f32> {
    row_norms(&m.t())
}

/// Per-frequency norms from per-component norms: entry k−1 is √(Σ norm² over frequency k's
/// components), for k = 1..=p/2 (the constant is left out).
pub fn freq_norms(basis: &FourierBasis, component_norms: &[f32]) -> Vec<f32> {
    (1..=basis.n_freqs())
        .map(|k| {
            basis
                .components(k)
                .iter()
                .map(|&i| (component_norms[i] as f64).powi(2))
                .sum::<f64>()
                .sqrt() as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basis_is_orthonormal_and_named_in_the_seed_order() {
        for p in [7, 8, 113] {
            let b = FourierBasis::new(p);
            let gram = b.matrix().matmul(&b.matrix().t()).unwrap();
            for i in 0..p {
                for j in 0..p {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((gram.at(i, j) - want).abs() < 1e-5, "p={p} ({i},{j})");
                }
            }
            assert_eq!(b.names().len(), p);
        }
        let b = FourierBasis::new(7);
        assert_eq!(
            b.names(),
            ["Constant", "Sin 1", "Cos 1", "Sin 2", "Cos 2", "Sin 3", "Cos 3"]
        );
        assert_eq!(b.components(2), [3, 4]);
        assert_eq!(FourierBasis::new(8).components(4), [7]);
        let x = 3;
        assert!(
            (b.row(4)[x] - (2.0 * std::f32::consts::PI * 6.0 / 7.0).cos() / 3.5f32.sqrt()).abs()
                < 1e-6
        );
    }

    #[test]
    fn transforms_find_a_known_frequency_and_invert() {
        let p = 11;
        let b = FourierBasis::new(p);
        // f(x) = 3 cos(2π·4x/p) + 1: all weight on Cos 4 and Constant.
        let f: Vec<f32> = (0..p)
            .map(|x| 3.0 * (2.0 * std::f32::consts::PI * 4.0 * x as f32 / p as f32).cos() + 1.0)
            .collect();
        let coeffs = b.transform(&Matrix::new(p, 1, f.clone()).unwrap());
        for i in 0..p {
            let nonzero = coeffs.data[i].abs() > 1e-4;
            assert_eq!(
                nonzero,
                i == 0 || i == b.cos_index(4),
                "component {}",
                b.names()[i]
            );
        }
        assert!((coeffs.data[b.cos_index(4)] - 3.0 * (p as f32 / 2.0).sqrt()).abs() < 1e-4);
        let back = b.inverse(&coeffs);
        assert!(back.data.iter().zip(&f).all(|(a, b)| (a - b).abs() < 1e-4));
        let norms = freq_norms(&b, &row_norms(&coeffs));
        assert_eq!(norms.len(), 5);
        assert!(norms[3] > 1.0 && norms.iter().enumerate().all(|(k, n)| k == 3 || *n < 1e-4));

        // 2-D: g(a, b) = cos(2π·2a/p)·sin(2π·5b/p) lives on (Cos 2, Sin 5) only.
        let g: Vec<f32> = (0..p * p)
            .map(|i| {
                let (a, c) = ((i / p) as f32, (i % p) as f32);
                let w = 2.0 * std::f32::consts::PI / p as f32;
                (w * 2.0 * a).cos() * (w * 5.0 * c).sin()
            })
            .collect();
        let g2 = b.transform_2d(&Matrix::new(p, p, g).unwrap());
        let (ri, ci) = (b.cos_index(2), b.components(5)[0]);
        for i in 0..p {
            for j in 0..p {
                assert_eq!(g2.at(i, j).abs() > 1e-3, (i, j) == (ri, ci), "({i},{j})");
            }
        }
    }
}
