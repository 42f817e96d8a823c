//! The quantizers of a BitLinear layer, on plain slices: what the forward pass uses in place of a
//! latent weight, and the 8-bit activation quantizer of BitNet b1.58. Every engine and the analysis
//! share these, so "the weights the model uses" has one definition.

use serde::{Deserialize, Serialize};

/// How a BitLinear layer quantizes its (centred) latent weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quant {
    /// sign(c) ∈ {−1, 0, +1} (0 only where c is exactly 0), times β = mean|c| when scaled.
    Binary,
    /// BitNet b1.58's absmean rule: γ = max(mean|c|, 1e-5), round(c/γ) clipped to [−1, 1], times γ.
    Ternary,
}

impl Quant {
    /// What the quantizer does, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Quant::Binary => "binarized by sign",
            Quant::Ternary => "ternarized by absmean round-and-clip",
        }
    }
}

/// The floor of the ternary scale γ (the seed's `clamp_(min=1e-5)`).
pub const TERNARY_MIN_SCALE: f32 = 1e-5;

/// A quantized weight: the level of every element (−1, 0 or +1) and the one scale that multiplies
/// them, so the value the forward uses is `level · scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    /// −1, 0 or +1 per element, row-major like the latent weight.
    pub levels: Vec<i8>,
    /// The factor every level is multiplied by (1 for unscaled binary weights).
    pub scale: f32,
}

impl Quantized {
    /// The weight the forward pass uses, `level · scale`.
    pub fn values(&self) -> Vec<f32> {
        self.levels.iter().map(|&l| self.level_value(l)).collect()
    }

    /// The value one level stands for (for ternary weights `scale` is `1 / (1/γ)` as torch forms it,
    /// so ±scale equals torch's `±1 / (1/γ)` to the last bit).
    fn level_value(&self, level: i8) -> f32 {
        f32::from(level) * self.scale
    }
}

/// `w − mean(w)` over the whole matrix (the seed's `weight_group - weight_group.mean()` with one
/// group). The mean is accumulated in f64.
pub fn centre(w: &[f32]) -> Vec<f32> {
    let mean = (w.iter().map(|&x| f64::from(x)).sum::<f64>() / w.len().max(1) as f64) as f32;
    w.iter().map(|&x| x - mean).collect()
}

/// Mean of |c|, accumulated in f64.
fn abs_mean(c: &[f32]) -> f32 {
    (c.iter().map(|&x| f64::from(x.abs())).sum::<f64>() / c.len().max(1) as f64) as f32
}

/// Quantizes a centred weight `c`. `beta` scales binary weights by mean|c| (the BitNet paper's β);
/// ternary weights always carry their γ.
pub fn quantize(c: &[f32], quant: Quant, beta: bool) -> Quantized {
    match quant {
        Quant::Binary => Quantized {
            levels: c.iter().map(|&x| sign(x)).collect(),
            scale: if beta { abs_mean(c) } else { 1.0 },
        },
        Quant::Ternary => {
            // torch: scale = 1 / γ; (c · scale).round().clamp(−1, 1) / scale.
            let gamma = abs_mean(c).max(TERNARY_MIN_SCALE);
            let inv = 1.0 / gamma;
            let levels = c
                .iter()
                .map(|&x| (x * inv).round_ties_even().clamp(-1.0, 1.0) as i8)
                .collect();
            Quantized {
                levels,
                scale: 1.0 / inv,
            }
        }
    }
}

/// The weight the forward uses for latent weight `w`: centred, then quantized.
pub fn effective(w: &[f32], quant: Quant, beta: bool) -> Vec<f32> {
    quantize(&centre(w), quant, beta).values()
}

/// torch.sign: −1, 0 or +1 (0 for ±0; NaN never reaches here, loaded weights are checked).
fn sign(x: f32) -> i8 {
    if x > 0.0 {
        1
    } else if x < 0.0 {
        -1
    } else {
        0
    }
}

/// BitNet b1.58's per-token activation quantizer with `bits` bits, in place on rows of `width`:
/// s = (2^(bits−1) − 1) / max(max|x|, 1e-5); x ← clamp(round(x·s), −2^(bits−1), 2^(bits−1) − 1) / s.
pub fn quantize_activations(x: &mut [f32], width: usize, bits: u32) {
    let q_max = ((1u32 << (bits - 1)) - 1) as f32;
    for row in x.chunks_mut(width.max(1)) {
        let max = row.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        let s = q_max / max.max(TERNARY_MIN_SCALE);
        for v in row.iter_mut() {
            *v = (*v * s).round_ties_even().clamp(-q_max - 1.0, q_max) / s;
        }
    }
}

/// Count of elements at −1, 0 and +1.
pub fn level_counts(levels: &[i8]) -> [usize; 3] {
    let mut counts = [0; 3];
    for &l in levels {
        counts[(l + 1) as usize] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_is_the_sign_of_the_centred_weight() {
        let w = [0.5, -0.25, 0.25, 1.5];
        // mean 0.5: c = [0, -0.75, -0.25, 1.0]; sign(0) is 0 as torch.sign gives.
        let q = quantize(&centre(&w), Quant::Binary, false);
        assert_eq!(q.levels, [0, -1, -1, 1]);
        assert_eq!(q.scale, 1.0);
        let q = quantize(&centre(&w), Quant::Binary, true);
        assert_eq!(q.scale, 0.5, "β = mean|c| = (0 + 0.75 + 0.25 + 1) / 4");
        assert_eq!(q.values(), [0.0, -0.5, -0.5, 0.5]);
    }

    #[test]
    fn ternary_rounds_half_to_even_and_clips() {
        // mean|c| = 1.5: c/γ = [−1, −1/3, 1/3, 1, 5/3, −5/3] → [−1, 0, 0, 1, 1 (clipped), −1].
        let q = quantize(&[-1.5, -0.5, 0.5, 1.5, 2.5, -2.5], Quant::Ternary, false);
        assert_eq!(q.levels, [-1, 0, 0, 1, 1, -1]);
        assert!((q.scale - 1.5).abs() < 1e-6);
        // γ = 1 makes c/γ exact ties: ±0.5 round to 0 and ±1.5 to ±2 (then clipped), as torch.round.
        let q = quantize(&[0.5, -0.5, 1.5, -1.5], Quant::Ternary, false);
        assert_eq!(q.scale, 1.0);
        assert_eq!(q.levels, [0, 0, 1, -1]);
        let q = quantize(&[2.5, -2.5, 0.5, -0.5, 0.0, 0.0], Quant::Ternary, false);
        assert_eq!(q.levels, [1, -1, 0, 0, 0, 0]);
    }

    #[test]
    fn an_all_equal_matrix_quantizes_to_zero() {
        let w = vec![0.3f32; 12];
        let c = centre(&w);
        assert!(c.iter().all(|&x| x == 0.0));
        assert_eq!(quantize(&c, Quant::Binary, false).levels, vec![0; 12]);
        let q = quantize(&c, Quant::Ternary, false);
        assert_eq!(q.levels, vec![0; 12]);
        assert_eq!(
            q.scale, TERNARY_MIN_SCALE,
            "γ floors at 1e-5, never divides by 0"
        );
        assert!(effective(&w, Quant::Binary, true).iter().all(|&x| x == 0.0));
        assert!(effective(&[], Quant::Ternary, false).is_empty());
    }

    #[test]
    fn activations_quantize_per_token_to_8_bits() {
        let mut x = vec![1.0, -0.5, 0.25, 0.0, 0.0, 0.0];
        quantize_activations(&mut x, 3, 8);
        // Row 1: s = 127, so 1 → 1, −0.5 → −63.5 → −64 (half to even) / 127, 0.25 → 31.75 → 32 / 127.
        assert_eq!(x[0], 1.0);
        assert_eq!(x[1], -64.0 / 127.0);
        assert_eq!(x[2], 32.0 / 127.0);
        assert_eq!(&x[3..], &[0.0, 0.0, 0.0], "an all-zero token stays zero");
        assert_eq!(level_counts(&[-1, 0, 1, 1]), [1, 1, 2]);
    }
}
