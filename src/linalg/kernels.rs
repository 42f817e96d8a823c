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
    if ta && !tb && other_way_round(m, n, k) {
        return matmul_tn_other_way_round(c, a, b, (m, n, k), acc);
    }
    let a_strides = if ta { (1, m) } else { (k, 1) };
    let b_strides = if tb { (1, k) } else { (n, 1) };
    matmul_strided(c, n, a, a_strides, b, b_strides, (m, n, k), acc);
}

/// Whether `aᵀ·b` (`a` stored `[k×m]`: a weight's gradient, summed over `k` rows of a batch) is
/// better taken as `(bᵀ·a)ᵀ`. `gemm` works column-major, so for a row-major `aᵀ·b` it copies `a`
/// into panels of six columns, read down all `k` rows (a strided copy: a fifth of a `[64, 256]`
/// gradient's time over 6 400 rows on a Zen 4), whenever the output's `n` columns span more than
/// two of its microkernel's row blocks; `bᵀ·a` copies neither operand that way when `m` spans at
/// most two, and wastes no lanes when `m` is a whole number of vectors. It pays where the sum runs
/// over at least twice as many rows as the output has columns: below that the transposes cost more
/// than the copy they save (on a Zen 4, `[128, 384]` over 114 rows 5 % slower, over 3 rows 2×).
/// Only products on `gemm`'s general path qualify ([`general_path`]); there both take each output
/// as the same chain of multiply-adds over `k`, cut into the same blocks (swapping `m` and `n`
/// keeps whether both are at most 64), so the bits are the same.
fn other_way_round(m: usize, n: usize, k: usize) -> bool {
    let Some((lanes, rows)) = gemm_f32_tile() else {
        return false;
    };
    general_path(m, n, k) && m.is_multiple_of(lanes) && m <= 2 * rows && n > 2 * rows && k >= 2 * n
}

/// Whether `gemm` takes an `m×n×k` product down its general path, where each output is one chain
/// of multiply-adds over `k` in order, cut into blocks by `k` alone up to 512 (past it, also by
/// whether both `m` and `n` are at most 64). Its paths for small products (at most 256 outputs,
/// one row or column, or k ≤ 2) choose their order of sums by the operands' strides and sizes.
pub fn general_path(m: usize, n: usize, k: usize) -> bool {
    m > 1 && n > 1 && k > 2 && m * n > 256
}

/// `gemm`'s f32 microkernel on this CPU: (lanes of a vector, rows of its tile) — (16, 64) with
/// AVX-512, (8, 16) with AVX2 + FMA; `None` where not known, which turns [`other_way_round`] off.
/// `gemm` picks its kernels from the CPU whatever `GROKLENS_SIMD` says, hence the detected build.
fn gemm_f32_tile() -> Option<(usize, usize)> {
    match SimdBuild::detected() {
        SimdBuild::Avx512 => Some((16, 64)),
        SimdBuild::Avx2 => Some((8, 16)),
        SimdBuild::Baseline => None,
    }
}

thread_local! {
    /// [`matmul_tn_other_way_round`]'s `bᵀ·a`, kept per thread between products.
    static OTHER_WAY_ROUND: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `c[m×n] = (acc ? c : 0) + aᵀ·b` (`a` stored `[k×m]`) as `(bᵀ·a)ᵀ` through a per-thread scratch
/// ([`other_way_round`] says when).
fn matmul_tn_other_way_round(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
    acc: bool,
) {
    OTHER_WAY_ROUND.with_borrow_mut(|t| {
        t.resize(n * m, 0.0);
        if acc {
            super::transpose::transpose(c, m, n, t);
        }
        matmul_strided(t, m, b, (1, n), a, (m, 1), (n, m, k), acc);
        super::transpose::transpose(t, n, m, c);
    });
}

/// `c = (acc ? c : 0) + a·b` for `a` (`m×k`) and `b` (`k×n`) read through strides (element `(i, p)` of
/// `a` is `a[i·a_rs + p·a_cs]`, of `b` `b[p·b_rs + j·b_cs]`) into `c` with row stride `c_rs`: a
/// transposed or interleaved operand (one head's Q, K or V inside a `[pos, 3·hd]` block) needs no copy.
/// Single-threaded, like [`matmul`].
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided(
    c: &mut [f32],
    c_rs: usize,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    (m, n, k): (usize, usize, usize),
    acc: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        last(m, c_rs, n, 1) < c.len()
            && (k == 0 || (last(m, a_rs, k, a_cs) < a.len() && last(k, b_rs, n, b_cs) < b.len())),
        "matmul_strided: a stride reaches past its buffer"
    );
    if k == 0 {
        if !acc {
            (0..m).for_each(|i| c[i * c_rs..i * c_rs + n].fill(0.0));
        }
        return;
    }
    // SAFETY: the assert above bounds every index the strides reach; `c` does not alias `a` or `b`
    // (it is borrowed mutably while they are borrowed shared).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            c_rs as isize,
            acc,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// A build of the fast engines' dispatched passes (the optimizer step, each chunk's forward and
/// backward): the same source compiled for more and more vector features. Every build does the same
/// IEEE operations in the same order, only more lanes at a time, so results are bit-identical
/// whichever runs (`tests/simd_builds.rs` checks it on every build the machine has).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdBuild {
    /// Baseline x86-64 (SSE2), or whatever the target is elsewhere.
    Baseline = 0,
    /// AVX2 + FMA (Haswell, Zen 1 and later).
    Avx2 = 1,
    /// AVX-512 F/VL/BW/DQ on top of AVX2 + FMA (Zen 4, Sapphire Rapids, Ice Lake…).
    Avx512 = 2,
}

impl SimdBuild {
    /// Every build, oldest first.
    pub const ALL: [SimdBuild; 3] = [SimdBuild::Baseline, SimdBuild::Avx2, SimdBuild::Avx512];

    /// Its name, as `GROKLENS_SIMD` takes it and `bench` prints it.
    pub fn name(self) -> &'static str {
        match self {
            SimdBuild::Baseline => "baseline",
            SimdBuild::Avx2 => "avx2",
            SimdBuild::Avx512 => "avx512",
        }
    }

    /// The best build this CPU runs (std checks once and caches the answer).
    pub fn detected() -> SimdBuild {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                let avx512 =
                    has!("avx512f") && has!("avx512vl") && has!("avx512bw") && has!("avx512dq");
                return if avx512 {
                    SimdBuild::Avx512
                } else {
                    SimdBuild::Avx2
                };
            }
        }
        SimdBuild::Baseline
    }

    /// The builds this CPU can run, oldest first.
    pub fn supported() -> Vec<SimdBuild> {
        let best = SimdBuild::detected();
        SimdBuild::ALL.into_iter().filter(|b| *b <= best).collect()
    }
}

/// The most recent build the passes may use: `u8::MAX` = no limit; set by [`limit_simd_build`].
static SIMD_LIMIT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

/// Caps the build the passes use at `limit` (`None` lifts the cap): for comparing builds (tests,
/// benchmarks). Process-wide; the builds give the same numbers, so a pass that runs meanwhile is
/// unaffected but for speed.
pub fn limit_simd_build(limit: Option<SimdBuild>) {
    let v = limit.map_or(u8::MAX, |b| b as u8);
    SIMD_LIMIT.store(v, std::sync::atomic::Ordering::Relaxed);
}

/// `GROKLENS_SIMD` (`baseline`, `avx2`, `avx512`) as a cap (read once, by [`simd_build`]); an
/// unknown value is warned about and ignored (the passes then use the CPU's best build).
fn env_limit() -> Option<SimdBuild> {
    let v = std::env::var("GROKLENS_SIMD").ok()?;
    let found = SimdBuild::ALL.into_iter().find(|b| b.name() == v.trim());
    if found.is_none() {
        eprintln!(
            "warning: GROKLENS_SIMD={v} is not one of baseline, avx2, avx512; using the CPU's best build"
        );
    }
    found
}

/// The build the dispatched passes run now: the CPU's best, capped by [`limit_simd_build`] and
/// `GROKLENS_SIMD`.
#[inline]
pub fn simd_build() -> SimdBuild {
    // The CPU's best build capped by the environment, found once (entry points ask on every chunk).
    static BEST: std::sync::OnceLock<SimdBuild> = std::sync::OnceLock::new();
    let build = *BEST.get_or_init(|| {
        let detected = SimdBuild::detected();
        env_limit().map_or(detected, |env| detected.min(env))
    });
    match SIMD_LIMIT.load(std::sync::atomic::Ordering::Relaxed) {
        0 => SimdBuild::Baseline,
        1 => build.min(SimdBuild::Avx2),
        _ => build,
    }
}

/// Defines `$name`, which runs `$body` (an `#[inline(always)]` method or function whose callees are
/// inlined too) in the build [`simd_build`] picks, plus `$avx2` and `$avx512`, the AVX2 + FMA and
/// AVX-512 copies.
macro_rules! simd_dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident / $avx2:ident / $avx512:ident => $body:ident(
        $($arg:ident: $ty:ty),* $(,)?
    ) $(-> $ret:ty)?) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            match $crate::linalg::kernels::simd_build() {
                // SAFETY: `simd_build` never exceeds what this CPU has.
                $crate::linalg::kernels::SimdBuild::Avx512 => return unsafe { $avx512($($arg),*) },
                $crate::linalg::kernels::SimdBuild::Avx2 => return unsafe { $avx2($($arg),*) },
                $crate::linalg::kernels::SimdBuild::Baseline => {}
            }
            $body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        #[inline(never)]
        unsafe fn $avx2($($arg: $ty),*) $(-> $ret)? {
            $body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512bw,avx512dq")]
        #[inline(never)]
        unsafe fn $avx512($($arg: $ty),*) $(-> $ret)? {
            $body($($arg),*)
        }
    };
    ($(#[$doc:meta])* $vis:vis fn $name:ident / $avx2:ident / $avx512:ident => $body:ident(
        &self $(, $arg:ident: $ty:ty)* $(,)?
    ) $(-> $ret:ty)?) => {
        $(#[$doc])*
        $vis fn $name(&self $(, $arg: $ty)*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            match $crate::linalg::kernels::simd_build() {
                // SAFETY: `simd_build` never exceeds what this CPU has.
                $crate::linalg::kernels::SimdBuild::Avx512 => return unsafe { self.$avx512($($arg),*) },
                $crate::linalg::kernels::SimdBuild::Avx2 => return unsafe { self.$avx2($($arg),*) },
                $crate::linalg::kernels::SimdBuild::Baseline => {}
            }
            self.$body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2(&self $(, $arg: $ty)*) $(-> $ret)? {
            self.$body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512bw,avx512dq")]
        unsafe fn $avx512(&self $(, $arg: $ty)*) $(-> $ret)? {
            self.$body($($arg),*)
        }
    };
    ($(#[$doc:meta])* $vis:vis fn $name:ident / $avx2:ident / $avx512:ident => $body:ident(
        &mut self $(, $arg:ident: $ty:ty)* $(,)?
    ) $(-> $ret:ty)?) => {
        $(#[$doc])*
        $vis fn $name(&mut self $(, $arg: $ty)*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            match $crate::linalg::kernels::simd_build() {
                // SAFETY: `simd_build` never exceeds what this CPU has.
                $crate::linalg::kernels::SimdBuild::Avx512 => return unsafe { self.$avx512($($arg),*) },
                $crate::linalg::kernels::SimdBuild::Avx2 => return unsafe { self.$avx2($($arg),*) },
                $crate::linalg::kernels::SimdBuild::Baseline => {}
            }
            self.$body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2(&mut self $(, $arg: $ty)*) $(-> $ret)? {
            self.$body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512bw,avx512dq")]
        unsafe fn $avx512(&mut self $(, $arg: $ty)*) $(-> $ret)? {
            self.$body($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

/// Adds `bias[n]` to every row of `x[rows×n]`.
#[inline(always)]
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
    }
}

/// Columns a pass summing down the rows keeps in registers from row to row (four AVX-512
/// vectors): adding each row into `out` in memory instead makes every row's additions wait for the
/// previous row's stores.
pub const COLUMN_BLOCK: usize = 64;

/// `out[n] += Σ_rows x[rows×n]`, each column's sum in row order, [`COLUMN_BLOCK`] columns at a time.
#[inline(always)]
pub fn add_column_sums(out: &mut [f32], x: &[f32]) {
    let n = out.len();
    for (c0, out) in (0..n)
        .step_by(COLUMN_BLOCK)
        .zip(out.chunks_mut(COLUMN_BLOCK))
    {
        if let Ok(out) = <&mut [f32; COLUMN_BLOCK]>::try_from(&mut *out) {
            let mut acc = *out;
            for row in x.chunks_exact(n) {
                let row: &[f32; COLUMN_BLOCK] = row[c0..][..COLUMN_BLOCK].try_into().unwrap();
                acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
            *out = acc;
        } else {
            for row in x.chunks_exact(n) {
                out.iter_mut().zip(&row[c0..]).for_each(|(o, v)| *o += v);
            }
        }
    }
}

/// e^x for f32 as Cephes' `expf` computes it (x = n·ln2 + r, |r| ≤ ln2/2, degree-5 polynomial, scale
/// by 2^n), within ~2 ulp of the correctly rounded value; written without branches or calls so loops
/// over slices vectorise. Inputs below −87 (where e^x leaves the normal range) give 0.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let below = x < EXP_MIN;
    let x = x.clamp(EXP_MIN, EXP_MAX);
    let n = exp_n(x);
    let r = exp_r(x, n);
    let mut y = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        y = y * r + c;
    }
    let y = exp_finish(y, r) * pow2(n);
    if below {
        0.0
    } else {
        y
    }
}

/// Where [`exp_f32`] clamps its input (below the minimum it returns 0).
const EXP_MIN: f32 = -87.0;
const EXP_MAX: f32 = 88.0;
/// The polynomial's coefficients, highest power first.
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// n = round(x / ln2) (as `floor(x·log2 e + 0.5)`).
#[inline(always)]
fn exp_n(x: f32) -> f32 {
    (x * std::f32::consts::LOG2_E + 0.5).floor()
}

/// r = x − n·ln2 with ln2 in two parts (Cody–Waite), so r keeps its low bits.
#[inline(always)]
fn exp_r(x: f32, n: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    x - n * LN2_HI - n * LN2_LO
}

/// e^r from the polynomial's value `y`: y·r² + r + 1.
#[inline(always)]
fn exp_finish(y: f32, r: f32) -> f32 {
    y * r * r + r + 1.0
}

/// Entries [`exp_slice`] computes side by side.
const EXP_BLOCK: usize = 32;

simd_dispatch! {
    /// `x ← exp_f32(x)` for every entry, with [`exp_f32`]'s bits: [`EXP_BLOCK`] entries at a
    /// time, each step applied to the whole block before the next, so four vectors' dependency
    /// chains run side by side. In a plain loop LLVM vectorises `exp_f32` one vector at a time, and
    /// its chain of ~20 dependent operations fills a small core's scheduler (AMD Zen 1 splits each
    /// AVX operation in two) and waits on its own latency.
    ///
    /// Compiled on its own for the build [`simd_build`] names rather than inlined into the caller:
    /// inlined into the fast engine's large per-build passes, LLVM kept the block's arrays on the
    /// stack and the cross-entropy's exponentials took twice as long (seed 003's loss, Zen 4).
    pub fn exp_slice / exp_slice_avx2 / exp_slice_avx512 => exp_slice_body(xs: &mut [f32])
}

/// [`exp_slice`]'s work, for the build it is compiled into.
#[inline(always)]
fn exp_slice_body(xs: &mut [f32]) {
    let mut blocks = xs.chunks_exact_mut(EXP_BLOCK);
    for block in &mut blocks {
        exp_block(block.try_into().expect("chunks_exact gives whole blocks"));
    }
    blocks
        .into_remainder()
        .iter_mut()
        .for_each(|v| *v = exp_f32(*v));
}

/// [`exp_f32`] on a block, one step at a time.
#[inline(always)]
fn exp_block(x: &mut [f32; EXP_BLOCK]) {
    let mut below = [false; EXP_BLOCK];
    for (b, v) in below.iter_mut().zip(x.iter_mut()) {
        *b = *v < EXP_MIN;
        *v = v.clamp(EXP_MIN, EXP_MAX);
    }
    let mut n = [0.0f32; EXP_BLOCK];
    n.iter_mut().zip(x.iter()).for_each(|(n, &v)| *n = exp_n(v));
    let mut r = [0.0f32; EXP_BLOCK];
    for ((r, &v), &n) in r.iter_mut().zip(x.iter()).zip(&n) {
        *r = exp_r(v, n);
    }
    let mut y = [EXP_POLY[0]; EXP_BLOCK];
    for c in &EXP_POLY[1..] {
        y.iter_mut().zip(&r).for_each(|(y, &r)| *y = *y * r + c);
    }
    for (i, v) in x.iter_mut().enumerate() {
        let e = exp_finish(y[i], r[i]) * pow2(n[i]);
        *v = if below[i] { 0.0 } else { e };
    }
}

/// 2^n for an integer-valued `n` in −127..=128 (0 at −127, infinity at 128), built from n's bits:
/// `n + 127 + 2^23` holds the integer n + 127 in its low mantissa bits, which the shift moves into
/// the exponent field (the rest shifts out). The bits of `(n as i32 + 127) << 23` without a
/// float-to-int conversion, which LLVM does not vectorise (it made [`exp_f32`] ~1.5× slower).
#[inline(always)]
fn pow2(n: f32) -> f32 {
    f32::from_bits((n + (127.0 + 8_388_608.0)).to_bits() << 23)
}

const GELU_C: f32 = 0.797_884_6; // √(2/π)

/// GELU, tanh approximation (TransformerLens `gelu_new`).
#[inline(always)]
pub fn gelu_new(x: f32) -> f32 {
    0.5 * x * (1.0 + (GELU_C * (x + 0.044715 * x * x * x)).tanh())
}

/// Derivative of [`gelu_new`].
#[inline(always)]
pub fn gelu_new_grad(x: f32) -> f32 {
    let u = GELU_C * (x + 0.044715 * x * x * x);
    let t = u.tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * 0.044715 * x * x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`add_column_sums`] adds each column's rows in row order (the bits of the plain row-by-row
    /// loop), for widths below, at and past [`COLUMN_BLOCK`] with and without a tail.
    #[test]
    fn column_sums_keep_the_row_order() {
        for n in [
            1,
            5,
            COLUMN_BLOCK - 1,
            COLUMN_BLOCK,
            COLUMN_BLOCK + 7,
            3 * COLUMN_BLOCK,
            300,
        ] {
            let x: Vec<f32> = (0..n * 37)
                .map(|i| ((i * 7919 % 613) as f32 - 306.0) * 1.37e-3)
                .collect();
            let start: Vec<f32> = (0..n).map(|j| j as f32 * 0.1).collect();
            let mut want = start.clone();
            for row in x.chunks_exact(n) {
                want.iter_mut().zip(row).for_each(|(o, v)| *o += v);
            }
            let mut got = start;
            add_column_sums(&mut got, &x);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "width {n}");
        }
    }

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

    /// A weight gradient `aᵀ·b` taken the other way round ([`other_way_round`]) has the bits of
    /// `gemm`'s `aᵀ·b` itself, written over or added to what `c` held, for shapes each side of
    /// both builds' boundaries (a whole vector or not, one or two tiles, few rows or many, one or
    /// several blocks of `k`); and at least one of them does go the other way wherever `gemm`'s tile
    /// is known.
    #[test]
    fn weight_gradients_taken_the_other_way_round_keep_the_bits() {
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i + seed) * 7919 % 1013) as f32 - 506.0) * 1.1e-3)
                .collect()
        };
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let shapes = [
            (32, 300, 700),
            (64, 256, 1500),
            (16, 40, 90),
            (24, 129, 300),
            (128, 512, 1100),
            (33, 300, 700),
            (128, 384, 114),
            (160, 300, 700),
            (8, 33, 3),
        ];
        let mut taken = 0;
        for (m, n, k) in shapes {
            let (a, b) = (values(k * m, 1), values(k * n, 2));
            for acc in [false, true] {
                let start = values(m * n, 3);
                let mut want = start.clone();
                matmul_strided(&mut want, n, &a, (1, m), &b, (n, 1), (m, n, k), acc);
                let mut got = start;
                matmul(&mut got, &a, &b, m, n, k, true, false, acc);
                assert_eq!(bits(&got), bits(&want), "{m}×{n}×{k}, acc {acc}");
            }
            taken += other_way_round(m, n, k) as usize;
        }
        if gemm_f32_tile().is_some() {
            assert!(taken > 0, "no shape went the other way round");
        }
    }

    #[test]
    fn exp_matches_the_standard_library() {
        let mut worst = 0.0f64;
        for i in 0..200_000 {
            let x = -87.0 + i as f32 * (87.0 + 20.0) / 200_000.0;
            let want = (x as f64).exp();
            let rel = ((exp_f32(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-200.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        // The clamped top of the range: e^88 (finite), not infinity.
        assert_eq!(exp_f32(f32::INFINITY), exp_f32(88.0));
        assert!(exp_f32(88.0).is_finite());
    }

    /// [`exp_slice`] gives [`exp_f32`]'s bits for every kind of input, tail past the blocks included.
    #[test]
    fn exp_slice_gives_exp_f32s_bits() {
        // Every 251st bit pattern (all signs, exponents, NaNs and infinities among them) and the
        // edges, in a slice whose length leaves a tail past the last whole block.
        let mut xs: Vec<f32> = (0..=u32::MAX / 251)
            .map(|i| f32::from_bits(i * 251))
            .collect();
        let edges = [EXP_MIN, EXP_MAX, -87.000_01, 88.000_01, 0.0, -0.0, f32::NAN];
        xs.extend(edges.iter().chain(&[f32::INFINITY, f32::NEG_INFINITY]));
        assert_ne!(xs.len() % EXP_BLOCK, 0);
        let want: Vec<u32> = xs.iter().map(|&x| exp_f32(x).to_bits()).collect();
        exp_slice(&mut xs);
        let got: Vec<u32> = xs.iter().map(|x| x.to_bits()).collect();
        assert!(want == got, "exp_slice differs from exp_f32");
    }

    /// [`pow2`] gives the bits of the integer conversion for every n the clamped range reaches.
    #[test]
    fn pow2_gives_the_integer_conversions_bits() {
        for i in -127..=128 {
            let want = f32::from_bits(((i + 127) as u32) << 23);
            assert_eq!(pow2(i as f32).to_bits(), want.to_bits(), "n = {i}");
        }
        assert_eq!(pow2(0.0), 1.0);
        assert_eq!(pow2(-3.0), 0.125);
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
