//! Small dense kernels for the fast engine: a row-major matmul on `gemm` and elementwise helpers.

/// `c[m×n] = (acc ? c : 0) + op(a)·op(b)`, all row-major; `ta`/`tb` mean `a` is stored `[k×m]` / `b` is
/// stored `[n×k]`. Single-threaded: the engine parallelises over batch chunks itself.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    acc: bool,
) {
    assert!(
        c.len() >= m * n && a.len() >= m * k && b.len() >= k * n,
        "matmul buffer too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let (a_cs, a_rs) = if ta { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if tb { (k as isize, 1) } else { (1, n as isize) };
    // SAFETY: the asserts above bound every index the strides reach; buffers do not alias.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            acc,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Adds `bias[n]` to every row of `x[rows×n]`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
    }
}

/// `out[n] += Σ_rows x[rows×n]`.
pub fn add_column_sums(out: &mut [f32], x: &[f32]) {
    for row in x.chunks_exact(out.len()) {
        out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
    }
}

const GELU_C: f32 = 0.797_884_6; // √(2/π)

/// GELU, tanh approximation (TransformerLens `gelu_new`).
pub fn gelu_new(x: f32) -> f32 {
    0.5 * x * (1.0 + (GELU_C * (x + 0.044715 * x * x * x)).tanh())
}

/// Derivative of [`gelu_new`].
pub fn gelu_new_grad(x: f32) -> f32 {
    let u = GELU_C * (x + 0.044715 * x * x * x);
    let t = u.tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * 0.044715 * x * x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    c[i * n + j] += av * bv;
                }
            }
        }
        c
    }

    #[test]
    fn matmul_matches_naive_in_every_layout() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.91).cos()).collect();
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let want = naive(&a, &b, m, n, k, ta, tb);
            let mut c = vec![1.0; m * n];
            matmul(&mut c, &a, &b, m, n, k, ta, tb, true);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - (y + 1.0)).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn gelu_grad_matches_finite_difference() {
        for x in [-3.0f32, -0.5, 0.0, 0.7, 2.5] {
            let h = 1e-2;
            let fd = (gelu_new(x + h) - gelu_new(x - h)) / (2.0 * h);
            assert!((fd - gelu_new_grad(x)).abs() < 1e-3, "x={x}");
        }
    }
}
