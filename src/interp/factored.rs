//! `FactoredMatrix`: a product A·B kept as its factors, as TransformerLens's class of that name. QK and
//! OV circuits are `d_model × d_model` matrices of rank `d_head`; keeping them factored makes their
//! products, SVD, eigenvalues and norm cheap.

use crate::error::{GrokError, Result};
pub use crate::linalg::{Matrix, Svd};

/// The product `a · b` (`m × k` times `k × n`), never formed unless asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct FactoredMatrix {
    /// Left factor, `m × k`.
    pub a: Matrix,
    /// Right factor, `k × n`.
    pub b: Matrix,
}

impl FactoredMatrix {
    /// `a · b`; the inner dimensions must agree.
    pub fn new(a: Matrix, b: Matrix) -> Result<Self> {
        if a.cols != b.rows {
            return Err(GrokError::tensor(
                "FactoredMatrix",
                format!("A is {}×{} but B is {}×{}", a.rows, a.cols, b.rows, b.cols),
            ));
        }
        Ok(FactoredMatrix { a, b })
    }

    /// `(m, n)`, the shape of the product.
    pub fn shape(&self) -> (usize, usize) {
        (self.a.rows, self.b.cols)
    }

    /// The inner dimension `k` (an upper bound on the rank).
    pub fn inner_dim(&self) -> usize {
        self.a.cols
    }

    /// The product A·B, formed.
    pub fn ab(&self) -> Matrix {
        self.a
            .matmul(&self.b)
            .expect("inner dimensions checked at construction")
    }

    /// B·A (`k × k`): same non-zero eigenvalues as A·B. Needs a square product.
    pub fn ba(&self) -> Result<Matrix> {
        self.b.matmul(&self.a)
    }

    /// The transpose, Bᵀ·Aᵀ, still factored.
    pub fn t(&self) -> FactoredMatrix {
        FactoredMatrix {
            a: self.b.t(),
            b: self.a.t(),
        }
    }

    /// `(A·B)·M`, kept factored with the smaller inner dimension.
    pub fn matmul(&self, m: &Matrix) -> Result<FactoredMatrix> {
        // (A, B·M) has inner dimension k; (A·B, M) has inner dimension n.
        if self.inner_dim() <= self.b.cols {
            FactoredMatrix::new(self.a.clone(), self.b.matmul(m)?)
        } else {
            FactoredMatrix::new(self.ab(), m.clone())
        }
    }

    /// `M·(A·B)`, kept factored with the smaller inner dimension.
    pub fn rmatmul(&self, m: &Matrix) -> Result<FactoredMatrix> {
        // (M·A, B) has inner dimension k; (M, A·B) has inner dimension m.
        if self.inner_dim() <= self.a.rows {
            FactoredMatrix::new(m.matmul(&self.a)?, self.b.clone())
        } else {
            FactoredMatrix::new(m.clone(), self.ab())
        }
    }

    /// `(A·B)·(C·D)`, keeping the smaller of the two inner dimensions.
    pub fn matmul_factored(&self, other: &FactoredMatrix) -> Result<FactoredMatrix> {
        let mid = self.b.matmul(&other.a)?;
        if self.inner_dim() <= other.inner_dim() {
            FactoredMatrix::new(self.a.clone(), mid.matmul(&other.b)?)
        } else {
            FactoredMatrix::new(self.a.matmul(&mid)?, other.b.clone())
        }
    }

    /// `(A·B)·v` for a vector `v` of length n.
    pub fn matvec(&self, v: &[f32]) -> Result<Vec<f32>> {
        let col = Matrix::new(v.len(), 1, v.to_vec())?;
        Ok(self.a.matmul(&self.b.matmul(&col)?)?.data)
    }

    /// Thin SVD without forming A·B: QR of A and of Bᵀ, then the SVD of the small `Ra·Rbᵀ`.
    pub fn svd(&self) -> Result<Svd> {
        let qa = self.a.to_faer().qr();
        let qb = self.b.t().to_faer().qr();
        let (q_a, r_a) = (qa.compute_thin_Q(), qa.thin_R().to_owned());
        let (q_b, r_b) = (qb.compute_thin_Q(), qb.thin_R().to_owned());
        let core = &r_a * r_b.transpose();
        let svd = core.thin_svd().map_err(|e| {
            GrokError::tensor("FactoredMatrix", format!("SVD did not converge: {e:?}"))
        })?;
        let u = &q_a * svd.U();
        let v = &q_b * svd.V();
        let s = (0..svd.S().dim()).map(|i| svd.S()[i] as f32).collect();
        Ok(Svd {
            u: Matrix::from_faer(u.as_ref()),
            s,
            v: Matrix::from_faer(v.as_ref()),
        })
    }

    /// Singular values, descending.
    pub fn singular_values(&self) -> Result<Vec<f32>> {
        Ok(self.svd()?.s)
    }

    /// Eigenvalues `(re, im)` of a square A·B, from the `k × k` matrix B·A (A·B's other eigenvalues are 0).
    pub fn eigenvalues(&self) -> Result<Vec<(f64, f64)>> {
        let (m, n) = self.shape();
        if m != n {
            return Err(GrokError::tensor(
                "FactoredMatrix",
                format!("eigenvalues need a square product; this one is {m}×{n}"),
            ));
        }
        let ev = self.ba()?.to_faer().eigenvalues().map_err(|e| {
            GrokError::tensor(
                "FactoredMatrix",
                format!("eigen decomposition failed: {e:?}"),
            )
        })?;
        Ok(ev.into_iter().map(|c| (c.re, c.im)).collect())
    }

    /// Frobenius norm, from `trace((AᵀA)(BBᵀ))` without forming A·B.
    pub fn norm(&self) -> f32 {
        let ata = self.a.t().matmul(&self.a).expect("square");
        let bbt = self.b.matmul(&self.b.t()).expect("square");
        let k = self.inner_dim();
        let tr: f64 = (0..k)
            .flat_map(|i| (0..k).map(move |j| (i, j)))
            .map(|(i, j)| ata.at(i, j) as f64 * bbt.at(j, i) as f64)
            .sum();
        tr.max(0.0).sqrt() as f32
    }

    /// The top-left `r × c` block of A·B, computed from the needed rows and columns only.
    pub fn corner(&self, r: usize, c: usize) -> Matrix {
        let a = self.a.corner(r, self.a.cols);
        let b = self.b.corner(self.b.rows, c);
        a.matmul(&b).expect("inner dimensions agree")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mat(rows: usize, cols: usize, seed: f32) -> Matrix {
        Matrix::new(
            rows,
            cols,
            (0..rows * cols)
                .map(|i| ((i as f32 + 1.0) * seed).sin())
                .collect(),
        )
        .unwrap()
    }

    fn close(a: &Matrix, b: &Matrix, tol: f32) -> bool {
        a.rows == b.rows
            && a.cols == b.cols
            && a.data.iter().zip(&b.data).all(|(x, y)| (x - y).abs() < tol)
    }

    #[test]
    fn products_match_the_formed_matrix() {
        let f = FactoredMatrix::new(mat(6, 2, 0.3), mat(2, 5, 0.7)).unwrap();
        let ab = f.ab();
        let m = mat(5, 4, 1.1);
        assert!(close(
            &f.matmul(&m).unwrap().ab(),
            &ab.matmul(&m).unwrap(),
            1e-5
        ));
        assert_eq!(f.matmul(&m).unwrap().inner_dim(), 2);
        let l = mat(3, 6, 0.9);
        assert!(close(
            &f.rmatmul(&l).unwrap().ab(),
            &l.matmul(&ab).unwrap(),
            1e-5
        ));
        let g = FactoredMatrix::new(mat(5, 3, 0.2), mat(3, 4, 0.5)).unwrap();
        let fg = f.matmul_factored(&g).unwrap();
        assert_eq!(fg.inner_dim(), 2);
        assert!(close(&fg.ab(), &ab.matmul(&g.ab()).unwrap(), 1e-5));
        assert!(close(&f.t().ab(), &ab.t(), 1e-6));
        assert!(close(&f.corner(2, 3), &ab.corner(2, 3), 1e-6));
        let v: Vec<f32> = (0..5).map(|i| i as f32).collect();
        let want: Vec<f32> = (0..6)
            .map(|i| (0..5).map(|j| ab.at(i, j) * v[j]).sum())
            .collect();
        assert!(f
            .matvec(&v)
            .unwrap()
            .iter()
            .zip(&want)
            .all(|(a, b)| (a - b).abs() < 1e-5));
        assert!(f.matmul(&mat(4, 4, 0.1)).is_err());
    }

    #[test]
    fn svd_reconstructs_and_norm_agrees() {
        let f = FactoredMatrix::new(mat(7, 3, 0.37), mat(3, 6, 0.61)).unwrap();
        let svd = f.svd().unwrap();
        assert_eq!(svd.s.len(), 3);
        assert!(svd.s.windows(2).all(|w| w[0] >= w[1]));
        let us = Matrix::new(
            7,
            3,
            (0..21).map(|i| svd.u.data[i] * svd.s[i % 3]).collect(),
        )
        .unwrap();
        assert!(close(&us.matmul(&svd.v.t()).unwrap(), &f.ab(), 1e-4));
        let frob = f.ab().data.iter().map(|x| x * x).sum::<f32>().sqrt();
        let from_s = svd.s.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((f.norm() - frob).abs() < 1e-4 && (from_s - frob).abs() < 1e-4);
    }

    #[test]
    fn eigenvalues_of_a_known_product() {
        // A·B = diag(2, 3) padded: A = [[1,0],[0,1],[0,0]], B = [[2,0,0],[0,3,0]].
        let a = Matrix::new(3, 2, vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0]).unwrap();
        let b = Matrix::new(2, 3, vec![2.0, 0.0, 0.0, 0.0, 3.0, 0.0]).unwrap();
        let mut ev: Vec<f64> = FactoredMatrix::new(a, b)
            .unwrap()
            .eigenvalues()
            .unwrap()
            .iter()
            .map(|e| e.0)
            .collect();
        ev.sort_by(f64::total_cmp);
        assert!((ev[0] - 2.0).abs() < 1e-9 && (ev[1] - 3.0).abs() < 1e-9);
    }
}
