//! The f32 Cephes `log` and `sincos` of PyTorch's `avx_mathfun.h`, one lane at a time, with the
//! fused multiply-adds exactly where GCC placed them in the shipped AVX2 kernel (objdump of
//! `libtorch_cpu.so`; see `shared/torch-rng/NOTES.md`). `mul_add` is a correctly rounded fused
//! multiply-add on every target, so the results are the kernel's bit for bit.

/// The kernel's constants, given by their bit patterns so no decimal rounding can differ.
const fn bits<const N: usize>(b: [u32; N]) -> [f32; N] {
    let mut out = [0.0; N];
    let mut i = 0;
    while i < N {
        out[i] = f32::from_bits(b[i]);
        i += 1;
    }
    out
}

/// `log256_ps` for one lane: ln(x), NaN for x ≤ 0.
pub fn log_f32(x: f32) -> f32 {
    const P: [f32; 9] = bits([
        0x3d90_21bb,
        0xbdeb_d1b8,
        0x3def_251a,
        0xbdfe_5d4f,
        0x3e11_e9bf,
        0xbe2a_ae50,
        0x3e4c_ceac,
        0xbe7f_fffc,
        0x3eaa_aaaa,
    ]);
    const Q1: f32 = f32::from_bits(0xb95e_8083);
    const Q2: f32 = f32::from_bits(0x3f31_8000);
    const SQRTHF: f32 = f32::from_bits(0x3f35_04f3);
    if x <= 0.0 || x.is_nan() {
        return f32::NAN;
    }
    let x = x.max(f32::MIN_POSITIVE);
    let bits = x.to_bits();
    let exponent = (bits >> 23) as i32 - 0x7F;
    let mut x = f32::from_bits((bits & !0x7F80_0000) | 0x3F00_0000);
    let mut e = exponent as f32 + 1.0;
    let below = x < SQRTHF;
    let tmp = if below { x } else { 0.0 };
    x -= 1.0;
    e -= if below { 1.0 } else { 0.0 };
    x += tmp;
    let z = x * x;
    let mut y = P[0];
    for &p in &P[1..] {
        y = y.mul_add(x, p);
    }
    y *= x;
    y = y.mul_add(z, e * Q1);
    y = (-z).mul_add(0.5, y);
    x += y;
    e.mul_add(Q2, x)
}

/// `sincos256_ps` for one lane: (sin x, cos x).
pub fn sincos_f32(x: f32) -> (f32, f32) {
    const FOPI: f32 = f32::from_bits(0x3fa2_f983); // 4/π
    const DP: [f32; 3] = bits([0xbf49_0000, 0xb97d_a000, 0xb322_2169]); // −π/4 in three parts
    const SIN: [f32; 3] = bits([0xb94c_a1f9, 0x3c08_839e, 0xbe2a_aaa3]);
    const COS: [f32; 3] = bits([0x37cc_f5ce, 0xbab6_061a, 0x3d2a_aaa5]);
    let bits = x.to_bits();
    let mut sign_sin = bits & 0x8000_0000;
    let mut x = f32::from_bits(bits & 0x7FFF_FFFF);
    let j = (((x * FOPI) as i32) + 1) & !1; // truncating conversion, as cvttps
    let y = j as f32;
    let j = j as u32;
    let swap_sign_sin = (j & 4) << 29;
    let use_sin_poly = j & 2 == 0;
    for dp in DP {
        x = y.mul_add(dp, x);
    }
    let sign_cos = (!(j.wrapping_sub(2)) & 4) << 29;
    sign_sin ^= swap_sign_sin;
    let z = x * x;
    let mut yc = COS[0].mul_add(z, COS[1]);
    yc = yc.mul_add(z, COS[2]);
    yc *= z;
    yc = yc.mul_add(z, -(z * 0.5));
    yc += 1.0;
    let mut ys = SIN[0].mul_add(z, SIN[1]);
    ys = ys.mul_add(z, SIN[2]);
    ys *= z;
    ys = ys.mul_add(x, x);
    let (s, c) = if use_sin_poly { (ys, yc) } else { (yc, ys) };
    (
        f32::from_bits(s.to_bits() ^ sign_sin),
        f32::from_bits(c.to_bits() ^ sign_cos),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_to_the_exact_functions() {
        for i in 1..2000 {
            let x = i as f32 / 1000.0;
            assert!(
                (log_f32(x) - x.ln()).abs() <= 2e-7 * x.ln().abs().max(1.0),
                "log {x}"
            );
            let (s, c) = sincos_f32(x * 3.2);
            assert!((s - (x * 3.2).sin()).abs() < 3e-7, "sin {x}");
            assert!((c - (x * 3.2).cos()).abs() < 3e-7, "cos {x}");
        }
        assert!(log_f32(0.0).is_nan() && log_f32(-1.0).is_nan());
    }
}
