//! Sixteen rows of a matrix turned column-major, in registers where the CPU has vector shuffles:
//! the layout that lets each row's serial sums (LayerNorm's mean and variance) run as one vector
//! operation per entry; and whole matrices transposed sixteen rows at a time that way (the weights
//! the fast engines multiply by on their other side). Only moves values, so every build gives the
//! same result.

use crate::linalg::kernels::{simd_build, SimdBuild};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{__m256, _mm256_shuffle_ps};

/// Rows one call turns column-major.
pub const ROWS: usize = 16;

/// The first [`ROWS`] rows of `x` (`d` wide) column-major into `t`: `t[j·ROWS + r] = x[r·d + j]`.
/// Returns `t`'s first `ROWS·d` entries.
///
/// # Panics
/// If `x` holds fewer than `ROWS·d` or `t` fewer than `ROWS·d` values.
#[inline(always)]
pub fn columns16<'t>(x: &[f32], d: usize, t: &'t mut [f32]) -> &'t [f32] {
    let (x, t) = (&x[..ROWS * d], &mut t[..ROWS * d]);
    let done = match simd_build() {
        // SAFETY: `simd_build` never exceeds what this CPU has; both read `x` and write `t` only
        // within the `ROWS·d` entries the slices above hold.
        #[cfg(target_arch = "x86_64")]
        SimdBuild::Avx512 => unsafe { avx512(x, d, t) },
        #[cfg(target_arch = "x86_64")]
        SimdBuild::Avx2 => unsafe { avx2(x, d, t) },
        _ => 0,
    };
    for (r, row) in x.chunks_exact(d).enumerate() {
        for (tj, &v) in t.chunks_exact_mut(ROWS).zip(row).skip(done) {
            tj[r] = v;
        }
    }
    t
}

/// `out` (`cols × rows`) = the transpose of row-major `m` (`rows × cols`), sixteen rows at a time
/// through [`columns16`] (a column-by-column copy reads each value from another cache line).
///
/// # Panics
/// If `m` or `out` holds fewer than `rows·cols` values.
pub fn transpose(m: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    let (m, out) = (&m[..rows * cols], &mut out[..rows * cols]);
    if m.is_empty() {
        return;
    }
    let mut t = vec![0.0; ROWS * cols];
    let full = rows - rows % ROWS;
    for r0 in (0..full).step_by(ROWS) {
        let t = columns16(&m[r0 * cols..], cols, &mut t);
        for (j, column) in t.chunks_exact(ROWS).enumerate() {
            out[j * rows + r0..][..ROWS].copy_from_slice(column);
        }
    }
    for (r, row) in m.chunks_exact(cols).enumerate().skip(full) {
        for (j, &v) in row.iter().enumerate() {
            out[j * rows + r] = v;
        }
    }
}

/// [`columns16`] on 16 × 16 blocks in AVX-512 registers: four rounds that each swap the
/// off-diagonal sub-blocks (8, 4, 2, then 1 wide) between pairs of rows with a two-source permute.
/// Returns the columns it turned (a multiple of 16); the caller turns the rest.
///
/// # Safety
/// The CPU must have AVX-512F; `x` and `t` must hold `ROWS·d` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512(x: &[f32], d: usize, t: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let (xp, tp) = (x.as_ptr(), t.as_mut_ptr());
    let blocks = d / 16;
    for jb in 0..blocks {
        let mut v = [_mm512_setzero_ps(); 16];
        for (r, vr) in v.iter_mut().enumerate() {
            *vr = _mm512_loadu_ps(xp.add(r * d + jb * 16));
        }
        swap_blocks::<8>(&mut v);
        swap_blocks::<4>(&mut v);
        swap_blocks::<2>(&mut v);
        swap_blocks::<1>(&mut v);
        for (k, vk) in v.iter().enumerate() {
            _mm512_storeu_ps(tp.add((jb * 16 + k) * ROWS), *vk);
        }
    }
    blocks * 16
}

/// One round of [`avx512`]: row i (bit `B` clear) takes row i+B's lanes below `B` in its lanes
/// with bit `B` set; row i+B takes row i's lanes with bit `B` set in its lanes below `B`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn swap_blocks<const B: usize>(v: &mut [std::arch::x86_64::__m512; 16]) {
    use std::arch::x86_64::{_mm512_loadu_si512, _mm512_permutex2var_ps};
    let (lo, hi) = (
        const { permute_index(B, false) },
        const { permute_index(B, true) },
    );
    // SAFETY: each index array holds 16 values.
    let (lo, hi) = unsafe {
        (
            _mm512_loadu_si512(lo.as_ptr().cast()),
            _mm512_loadu_si512(hi.as_ptr().cast()),
        )
    };
    for i in 0..16 {
        if i & B == 0 {
            let (a, c) = (v[i], v[i + B]);
            v[i] = _mm512_permutex2var_ps(a, lo, c);
            v[i + B] = _mm512_permutex2var_ps(a, hi, c);
        }
    }
}

/// The two-source permute's lane indices for [`avx512`]'s round `b`: of row i's new lanes
/// (`high` false) or row i+b's (`high` true), where 0..16 name lanes of row i and 16..32 of row i+b.
#[cfg(target_arch = "x86_64")]
const fn permute_index(b: usize, high: bool) -> [i32; 16] {
    let mut idx = [0i32; 16];
    let mut l = 0;
    while l < 16 {
        let set = l & b != 0;
        idx[l] = match (high, set) {
            (false, false) => l,
            (false, true) => 16 + l - b,
            (true, false) => l + b,
            (true, true) => 16 + l,
        } as i32;
        l += 1;
    }
    idx
}

/// [`columns16`] on 8 × 8 blocks in AVX registers (each group's two halves of eight rows): the
/// usual unpack, shuffle and lane-permute rounds. Returns the columns it turned (a multiple of 8).
///
/// # Safety
/// The CPU must have AVX; `x` and `t` must hold `ROWS·d` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn avx2(x: &[f32], d: usize, t: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let (xp, tp) = (x.as_ptr(), t.as_mut_ptr());
    let blocks = d / 8;
    for jb in 0..blocks {
        for half in 0..2 {
            let mut rows = [_mm256_setzero_ps(); 8];
            for (r, v) in rows.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(xp.add((half * 8 + r) * d + jb * 8));
            }
            let [r0, r1, r2, r3, r4, r5, r6, r7] = rows;
            let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
            let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
            let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
            let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
            let (s0, s1) = pairs(t0, t2);
            let (s2, s3) = pairs(t1, t3);
            let (s4, s5) = pairs(t4, t6);
            let (s6, s7) = pairs(t5, t7);
            let out = [
                _mm256_permute2f128_ps::<0x20>(s0, s4),
                _mm256_permute2f128_ps::<0x20>(s1, s5),
                _mm256_permute2f128_ps::<0x20>(s2, s6),
                _mm256_permute2f128_ps::<0x20>(s3, s7),
                _mm256_permute2f128_ps::<0x31>(s0, s4),
                _mm256_permute2f128_ps::<0x31>(s1, s5),
                _mm256_permute2f128_ps::<0x31>(s2, s6),
                _mm256_permute2f128_ps::<0x31>(s3, s7),
            ];
            for (k, o) in out.iter().enumerate() {
                _mm256_storeu_ps(tp.add((jb * 8 + k) * ROWS + half * 8), *o);
            }
        }
    }
    blocks * 8
}

/// The low pairs and the high pairs of `a` then of `b`, in each 128-bit half
/// (lanes a0 a1 b0 b1 | a4 a5 b4 b5, and a2 a3 b2 b3 | a6 a7 b6 b7).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
fn pairs(a: __m256, b: __m256) -> (__m256, __m256) {
    (
        _mm256_shuffle_ps::<0x44>(a, b),
        _mm256_shuffle_ps::<0xEE>(a, b),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`transpose`] of shapes with and without whole groups of sixteen rows.
    #[test]
    fn transposes_any_shape() {
        for (rows, cols) in [
            (0, 4),
            (4, 0),
            (1, 1),
            (3, 5),
            (16, 16),
            (17, 9),
            (40, 33),
            (64, 256),
        ] {
            let m: Vec<f32> = (0..rows * cols).map(|i| i as f32 - 7.5).collect();
            let mut out = vec![f32::NAN; rows * cols];
            transpose(&m, rows, cols, &mut out);
            for r in 0..rows {
                for j in 0..cols {
                    assert_eq!(
                        out[j * rows + r],
                        m[r * cols + j],
                        "{rows}×{cols} at ({r}, {j})"
                    );
                }
            }
        }
    }

    /// Every kernel this CPU runs gives the plain transpose, for widths with and without a tail
    /// beyond the vector blocks.
    #[test]
    fn every_kernel_turns_rows_into_columns() {
        for d in [1, 7, 8, 13, 16, 24, 37, 64, 80] {
            let x: Vec<f32> = (0..ROWS * d + 5).map(|i| i as f32 * 0.5 - 3.0).collect();
            let check = |t: &[f32], name: &str, done: usize| {
                for r in 0..ROWS {
                    for j in 0..done {
                        assert_eq!(t[j * ROWS + r], x[r * d + j], "{name}, d {d}, row {r}");
                    }
                }
            };
            let mut t = vec![f32::NAN; ROWS * d + 3];
            check(columns16(&x, d, &mut t), "dispatched", d);
            #[cfg(target_arch = "x86_64")]
            {
                type Kernel = unsafe fn(&[f32], usize, &mut [f32]) -> usize;
                let kernels: [(&str, bool, Kernel, usize); 2] = [
                    ("avx2", is_x86_feature_detected!("avx"), avx2, 8),
                    ("avx512", is_x86_feature_detected!("avx512f"), avx512, 16),
                ];
                for (name, _, kernel, block) in kernels.into_iter().filter(|k| k.1) {
                    let mut t = vec![f32::NAN; ROWS * d];
                    // SAFETY: the CPU has the kernel's features; both slices hold ROWS·d values.
                    let done = unsafe { kernel(&x[..ROWS * d], d, &mut t) };
                    assert_eq!(done, d - d % block, "{name}");
                    check(&t, name, done);
                }
            }
        }
    }
}
