//! The bottom layer: a small dense row-major matrix type and the f32 kernels the engines and the
//! analysis share (a `gemm`-backed matmul, bias and activation passes, a register transpose), and
//! the team of threads the engines run their parallel phases on.

pub mod kernels;
pub mod team;
pub mod transpose;

use faer::Mat;

use crate::error::{GrokError, Result};

/// A dense row-major f32 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl Matrix {
    /// A `rows × cols` matrix from row-major `data`.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(GrokError::tensor(
                "matrix",
                format!("{} values do not form {rows}×{cols}", data.len()),
            ));
        }
        Ok(Matrix { rows, cols, data })
    }

    /// Element `(i, j)`.
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.cols + j]
    }

    /// The transpose.
    pub fn t(&self) -> Matrix {
        let mut data = vec![0.0; self.data.len()];
        for i in 0..self.rows {
            for j in 0..self.cols {
                data[j * self.rows + i] = self.at(i, j);
            }
        }
        Matrix {
            rows: self.cols,
            cols: self.rows,
            data,
        }
    }

    /// `self · other`, or an error naming both shapes.
    pub fn matmul(&self, other: &Matrix) -> Result<Matrix> {
        if self.cols != other.rows {
            return Err(GrokError::tensor(
                "matmul",
                format!(
                    "cannot multiply {}×{} by {}×{}",
                    self.rows, self.cols, other.rows, other.cols
                ),
            ));
        }
        let mut data = vec![0.0; self.rows * other.cols];
        kernels::matmul(
            &mut data,
            &self.data,
            &other.data,
            self.rows,
            other.cols,
            self.cols,
            false,
            false,
            false,
        );
        Ok(Matrix {
            rows: self.rows,
            cols: other.cols,
            data,
        })
    }

    /// The first `r` rows and `c` columns.
    pub fn corner(&self, r: usize, c: usize) -> Matrix {
        let (r, c) = (r.min(self.rows), c.min(self.cols));
        let data = (0..r)
            .flat_map(|i| (0..c).map(move |j| (i, j)))
            .map(|(i, j)| self.at(i, j))
            .collect();
        Matrix {
            rows: r,
            cols: c,
            data,
        }
    }

    /// Thin SVD of this matrix (f64 internally).
    pub fn svd(&self) -> Result<Svd> {
        let svd = self
            .to_faer()
            .thin_svd()
            .map_err(|e| GrokError::tensor("matrix", format!("SVD did not converge: {e:?}")))?;
        Ok(Svd {
            u: Matrix::from_faer(svd.U()),
            s: (0..svd.S().dim()).map(|i| svd.S()[i] as f32).collect(),
            v: Matrix::from_faer(svd.V()),
        })
    }

    /// The first `n` columns (all of them when `n >= cols`).
    pub fn first_cols(&self, n: usize) -> Matrix {
        if n >= self.cols {
            return self.clone();
        }
        let data = self
            .data
            .chunks_exact(self.cols)
            .flat_map(|row| row[..n].iter().copied())
            .collect();
        Matrix {
            rows: self.rows,
            cols: n,
            data,
        }
    }

    /// The rows listed in `rows`, in that order.
    pub fn select_rows(&self, rows: &[usize]) -> Matrix {
        let data = rows
            .iter()
            .flat_map(|&r| {
                self.data[r * self.cols..(r + 1) * self.cols]
                    .iter()
                    .copied()
            })
            .collect();
        Matrix {
            rows: rows.len(),
            cols: self.cols,
            data,
        }
    }

    pub(crate) fn to_faer(&self) -> Mat<f64> {
        Mat::from_fn(self.rows, self.cols, |i, j| self.at(i, j) as f64)
    }

    pub(crate) fn from_faer(m: faer::MatRef<'_, f64>) -> Matrix {
        let data = (0..m.nrows())
            .flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)] as f32))
            .collect();
        Matrix {
            rows: m.nrows(),
            cols: m.ncols(),
            data,
        }
    }
}

/// Singular value decomposition `A·B = U · diag(S) · Vᵀ` (thin).
#[derive(Debug, Clone)]
pub struct Svd {
    /// Left singular vectors as columns, `m × r`.
    pub u: Matrix,
    /// Singular values, descending.
    pub s: Vec<f32>,
    /// Right singular vectors as columns, `n × r`.
    pub v: Matrix,
}

/// Largest singular value of the row-major `rows × cols` matrix `w`, by power iteration on `wᵀw` in
/// f64. `v` is the start vector and is left holding the top right singular vector, so a caller that
/// tracks a slowly changing matrix (a weight during training) converges in a few iterations.
pub fn spectral_norm(w: &[f32], rows: usize, cols: usize, v: &mut Vec<f64>) -> f64 {
    if rows == 0 || cols == 0 {
        return 0.0;
    }
    if v.len() != cols || v.iter().all(|&x| x == 0.0) {
        *v = (0..cols)
            .map(|j| 1.0 + (j as f64 * 0.618).fract())
            .collect();
    }
    let mut u = vec![0.0f64; rows];
    let mut sigma = 0.0;
    for _ in 0..1000 {
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return 0.0;
        }
        v.iter_mut().for_each(|x| *x /= norm);
        for (i, ui) in u.iter_mut().enumerate() {
            *ui = w[i * cols..(i + 1) * cols]
                .iter()
                .zip(v.iter())
                .map(|(&a, &b)| a as f64 * b)
                .sum();
        }
        let next = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter_mut().for_each(|x| *x = 0.0);
        for (i, &ui) in u.iter().enumerate() {
            for (vj, &a) in v.iter_mut().zip(&w[i * cols..(i + 1) * cols]) {
                *vj += a as f64 * ui;
            }
        }
        let converged = (next - sigma).abs() <= 1e-10 * next;
        sigma = next;
        if converged {
            break;
        }
    }
    sigma
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spectral_norm_matches_the_svd() {
        let (r, c) = (7, 5);
        let data: Vec<f32> = (0..r * c)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let m = Matrix::new(r, c, data.clone()).unwrap();
        let top = m.svd().unwrap().s[0] as f64;
        let mut v = Vec::new();
        let s = spectral_norm(&data, r, c, &mut v);
        assert!((s - top).abs() < 1e-4 * top, "{s} vs {top}");
        // Warm start from the previous vector gives the same answer.
        assert!((spectral_norm(&data, r, c, &mut v) - s).abs() < 1e-9 * s);
        assert_eq!(spectral_norm(&[0.0; 6], 2, 3, &mut Vec::new()), 0.0);
    }
}
